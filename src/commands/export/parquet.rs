//! `facedb export parquet OUT`: images, files, faces and embeddings as Parquet files (schema in
//! the README), written through the output folder's ledger like crops.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::ParquetArgs;
use crate::commands::{database_path, find_dataset, open_database, outln, Globals};
use crate::db::export;
use crate::db::read;
use crate::output::{OutputDir, Owner, Staged};
use crate::parquet_file::{write_table, Column, TableWriter, Values};

/// Rows per row group of faces and embeddings: 65 536 embeddings are 32 MiB.
const PAGE: usize = 65_536;

const TABLES: [&str; 4] = ["images.parquet", "files.parquet", "faces.parquet", "embeddings.parquet"];

#[derive(Debug, serde::Serialize)]
struct Summary {
    command: &'static str,
    out: String,
    images: usize,
    files: usize,
    faces: usize,
    embeddings: usize,
    /// Stored vectors of the wrong length, left out (as match leaves them out).
    damaged_embeddings: usize,
    embedder: Option<String>,
}

pub fn run(globals: &Globals, args: ParquetArgs) -> Result<ExitCode> {
    let root = find_dataset(globals, args.dir.as_deref())?;
    let db = open_database(globals, &root, false)?;
    let owner = Owner { database_id: read::database_id(&db.conn)?, dataset: root.to_string_lossy().into_owned() };
    crate::commands::refuse_linked_output(&args.out, "OUT")?;
    let out = OutputDir::open_as(&args.out, &root, &database_path(globals, &root), owner, "OUT")?;
    // All four checked before any is written: a refusal leaves the folder as it was.
    out.check_free(TABLES)?;
    let mut summary = Summary {
        command: "export parquet",
        out: crate::util::display_path(&args.out),
        images: 0,
        files: 0,
        faces: 0,
        embeddings: 0,
        damaged_embeddings: 0,
        embedder: None,
    };
    let images = export::images(&db.conn)?;
    summary.images = images.len();
    // All four are written under temp names first and renamed only then: stopped (Ctrl-C, a full
    // disk) before, the folder holds the previous export whole, never tables of two exports.
    let mut staged = vec![save(&out, "images.parquet", &image_columns(images), Vec::new())?];
    let files = export::files(&db.conn)?;
    summary.files = files.len();
    staged.push(save(&out, "files.parquet", &file_columns(files), Vec::new())?);
    let (faces, count) = save_faces(&out, &db.conn)?;
    summary.faces = count;
    staged.push(faces);
    staged.push(save_embeddings(&out, &db.conn, &mut summary)?);
    for file in staged {
        file.place()?;
    }
    out.finish()?;
    if globals.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else if !globals.quiet {
        eprintln!(
            "wrote {} images, {} files, {} faces and {} embeddings as Parquet into {}",
            summary.images, summary.files, summary.faces, summary.embeddings, summary.out
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Faces in row groups of `PAGE` (memory stays flat at any number of faces). Returns the count.
fn save_faces<'a>(out: &'a OutputDir, conn: &rusqlite::Connection) -> Result<(Staged<'a>, usize)> {
    let file = out.create("faces.parquet")?;
    let mut table = TableWriter::new(file, &face_columns(Vec::new()), Vec::new())?;
    let (mut after, mut count) = (0, 0);
    loop {
        let page = export::faces(conn, after, PAGE)?;
        let Some(last) = page.last().map(|f| f.face_id) else { break };
        (after, count) = (last, count + page.len());
        table.write_group(&face_columns(page))?;
    }
    let mut file = table.finish().context("writing faces.parquet")?;
    file.flush()?;
    Ok((file.stage()?, count))
}

/// Embeddings of the latest index's embedder, in row groups of `PAGE`.
fn save_embeddings<'a>(out: &'a OutputDir, conn: &rusqlite::Connection, summary: &mut Summary) -> Result<Staged<'a>> {
    let embedder = export::current_embedder(conn)?;
    let mut metadata = vec![("facedb:embedding_dim".to_string(), crate::models::sface::EMBEDDING_DIM.to_string())];
    if let Some((_, name, hash)) = &embedder {
        metadata.push(("facedb:embedder".into(), format!("{name} {hash}")));
        summary.embedder = Some(name.clone());
    }
    // Read back by pyarrow, arrow-rs and Polars as a fixed-size list of 128 floats.
    let template = embedding_columns(Vec::new());
    metadata.extend(crate::parquet_file::arrow_schema(&template).map(|s| ("ARROW:schema".to_string(), s)));
    let file = out.create("embeddings.parquet")?;
    let mut table = TableWriter::new(file, &template, metadata)?;
    let mut after = 0;
    while let Some((id, _, _)) = &embedder {
        let (rows, damaged, last) = export::embeddings(conn, *id, crate::models::sface::SFace::DIM, after, PAGE)?;
        let Some(last) = last else { break };
        after = last;
        summary.embeddings += rows.len();
        summary.damaged_embeddings += damaged;
        if !rows.is_empty() {
            table.write_group(&embedding_columns(rows))?;
        }
    }
    let mut file = table.finish().context("writing embeddings.parquet")?;
    file.flush()?;
    file.stage()
}

fn save<'a>(out: &'a OutputDir, name: &str, columns: &[Column], metadata: Vec<(String, String)>) -> Result<Staged<'a>> {
    let file = out.create(name)?;
    let mut file = write_table(file, columns, metadata).with_context(|| format!("writing {}", Path::new(name).display()))?;
    file.flush()?;
    file.stage()
}

fn image_columns(rows: Vec<export::ImageRow>) -> Vec<Column> {
    vec![
        Column::new("image_id", Values::I64(rows.iter().map(|r| r.image_id).collect())),
        Column::new("blake3", Values::Str(rows.iter().map(|r| r.blake3.clone()).collect())),
        Column::new("size_bytes", Values::I64(rows.iter().map(|r| r.size_bytes).collect())),
        Column::new("width", Values::OptI32(rows.iter().map(|r| r.width).collect())),
        Column::new("height", Values::OptI32(rows.iter().map(|r| r.height).collect())),
        Column::new("format", Values::OptStr(rows.iter().map(|r| r.format.clone()).collect())),
        Column::new("orientation", Values::OptI32(rows.iter().map(|r| r.orientation).collect())),
        Column::new("rotation", Values::I32(rows.iter().map(|r| r.rotation).collect())),
        Column::new("status", Values::Str(rows.iter().map(|r| r.status.clone()).collect())),
        Column::new("error", Values::OptStr(rows.into_iter().map(|r| r.error).collect())),
    ]
}

fn file_columns(rows: Vec<export::FileRow>) -> Vec<Column> {
    vec![
        Column::new("path", Values::Str(rows.iter().map(|r| r.path.clone()).collect())),
        Column::new("path_raw", Values::OptBytes(rows.iter().map(|r| r.path_raw.clone()).collect())),
        Column::new("image_id", Values::OptI64(rows.iter().map(|r| r.image_id).collect())),
        Column::new("size", Values::I64(rows.iter().map(|r| r.size).collect())),
        Column::new("mtime_ns", Values::I64(rows.iter().map(|r| r.mtime_ns).collect())),
        Column::new("missing", Values::Bool(rows.iter().map(|r| r.missing).collect())),
        Column::new("error", Values::OptStr(rows.into_iter().map(|r| r.error).collect())),
    ]
}

const BOX: [&str; 4] = ["x", "y", "w", "h"];
const LANDMARKS: [&str; 10] = [
    "right_eye_x",
    "right_eye_y",
    "left_eye_x",
    "left_eye_y",
    "nose_x",
    "nose_y",
    "right_mouth_x",
    "right_mouth_y",
    "left_mouth_x",
    "left_mouth_y",
];
const QUALITY: [&str; 5] = ["size_px", "sharpness", "yaw", "roll", "brightness"];

fn face_columns(rows: Vec<export::FaceRow>) -> Vec<Column> {
    let floats = |name: &'static str, get: &dyn Fn(&export::FaceRow) -> f32| Column::new(name, Values::F32(rows.iter().map(get).collect()));
    let mut columns = vec![
        Column::new("face_id", Values::I64(rows.iter().map(|r| r.face_id).collect())),
        Column::new("image_id", Values::I64(rows.iter().map(|r| r.image_id).collect())),
        Column::new("idx", Values::I32(rows.iter().map(|r| r.idx).collect())),
    ];
    columns.extend(BOX.iter().enumerate().map(|(i, n)| floats(n, &|r| r.bbox[i])));
    columns.push(floats("score", &|r| r.score));
    columns.extend(LANDMARKS.iter().enumerate().map(|(i, n)| floats(n, &|r| r.landmarks[i])));
    columns.extend(QUALITY.iter().enumerate().map(|(i, n)| floats(n, &|r| r.quality[i])));
    columns.push(Column::new("person_id", Values::OptI64(rows.iter().map(|r| r.person_id).collect())));
    columns.push(Column::new("person", Values::OptStr(rows.into_iter().map(|r| r.person).collect())));
    columns
}

fn embedding_columns(rows: Vec<(i64, Vec<f32>)>) -> Vec<Column> {
    let dim = crate::models::sface::EMBEDDING_DIM;
    // Only vectors of the embedder's length: a list column of fixed length per row.
    let rows: Vec<(i64, Vec<f32>)> = rows.into_iter().filter(|(_, v)| v.len() == dim).collect();
    vec![
        Column::new("face_id", Values::I64(rows.iter().map(|(id, _)| *id).collect())),
        Column::new("embedding", Values::F32List { values: rows.into_iter().flat_map(|(_, v)| v).collect(), len: dim }),
    ]
}
