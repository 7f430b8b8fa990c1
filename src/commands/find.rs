//! `facedb match`: reference embedding (cached by content hash) -> one scan of stored
//! embeddings -> best face per photo -> decisions (stored) -> crops + manifest.
//! (Named `find` because `match` is a Rust keyword.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;

use super::{database_path, find_dataset, progress, Globals};
use crate::cli::MatchArgs;
use crate::crop::{self, Rect};
use crate::db::read::{self, FaceInfo};
use crate::db::write::{self, MatchRow, NewRef, RunCounters};
use crate::db::Db;
use crate::matching::{self, Candidate};
use crate::models::sface::EMBEDDING_DIM;
use crate::models::{runtime::ORT_VERSION, ModelFiles};
use crate::pipeline::detect::DetectParams;
use crate::pipeline::walk::{self, OUTPUT_MARKER};
use crate::pipeline::{analyze, decode, hash, largest, StageTimes};

pub const MANIFEST: &str = "manifest.csv";

pub fn run(globals: &Globals, args: MatchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if !(0.0..=2.0).contains(&args.threshold) {
        bail!(
            "--threshold {} is outside 0-2 (cosine distance; the default is {})",
            args.threshold,
            matching::DEFAULT_THRESHOLD
        );
    }
    let root = find_dataset(args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    if !db_file.is_file() {
        bail!(
            "no database at {}; run `facedb index {}` first",
            db_file.display(),
            root.display()
        );
    }
    let db = Db::open(&db_file)?;
    let conn = &db.conn;
    let files = ModelFiles::locate(globals.models.as_deref())?;
    // The detector row is the one the dataset was indexed with (same params); the reference is
    // detected with default params, which are recorded as its own model row.
    let detector_id = write::ensure_model(
        conn,
        "detector",
        &files.detector_name,
        &files.detector_hash,
        &crate::commands::index::detector_params_json(&DetectParams::default()),
    )?;
    let embedder_id = write::ensure_model(
        conn,
        "embedder",
        &files.embedder_name,
        &files.embedder_hash,
        "{}",
    )?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("facedb-crops"));
    let args_json = serde_json::json!({
        "dir": root.to_string_lossy(), "ref": args.reference.to_string_lossy(), "threshold": args.threshold,
        "out": out_dir.to_string_lossy(), "margin": args.margin
    })
    .to_string();
    let run_id = write::begin_run(
        conn,
        "match",
        &args_json,
        Some(ORT_VERSION),
        Some(detector_id),
        Some(embedder_id),
    )?;
    let mut counters = RunCounters::default();

    let (ref_id, ref_vector, ref_calls) = reference(
        conn,
        &files,
        &args.reference,
        detector_id,
        embedder_id,
        run_id,
        globals.quiet,
    )?;
    conn.execute(
        "UPDATE runs SET ref_model_calls = ?2 WHERE id = ?1",
        rusqlite::params![run_id, ref_calls],
    )?;
    let refs = vec![ref_vector];

    let table = read::embeddings(conn, embedder_id)?;
    let candidates = matching::best_per_image(&table.faces, &table.vectors, EMBEDDING_DIM, &refs);
    let (matched, rejected): (Vec<Candidate>, Vec<Candidate>) = candidates
        .iter()
        .partition(|c| c.distance <= args.threshold);

    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output folder {}", out_dir.display()))?;
    std::fs::write(
        out_dir.join(OUTPUT_MARKER),
        b"facedb writes crops here; `facedb index` skips this folder\n",
    )
    .with_context(|| format!("writing to {}", out_dir.display()))?;
    let bar = progress(matched.len() as u64, globals.quiet, "cropping");
    let crops: Vec<(Candidate, Result<Crop>)> = matched
        .par_iter()
        .map(|c| {
            let r = make_crop(&db_file, &root, &out_dir, c, args.margin);
            bar.inc(1);
            (*c, r)
        })
        .collect();
    bar.finish_and_clear();

    let tx = conn.unchecked_transaction()?;
    write::insert_match_run(
        &tx,
        run_id,
        args.threshold,
        args.margin,
        &out_dir.to_string_lossy(),
        &[ref_id],
    )?;
    let mut manifest = csv::Writer::from_path(out_dir.join(format!("{MANIFEST}.part")))
        .context("writing the manifest")?;
    manifest.write_record(MANIFEST_COLUMNS)?;
    let mut written = 0u64;
    let mut crop_failures = 0u64;
    for (c, result) in &crops {
        match result {
            Ok(crop) => {
                written += 1;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &row(c, true, None, Some(&crop.path_string()), Some(crop.rect)),
                )?;
                manifest.write_record(crop.manifest_record(c, &out_dir))?;
            }
            Err(e) => {
                crop_failures += 1;
                let reason = format!("crop failed: {e:#}");
                write::log(&tx, run_id, Some(c.image_id), None, "error", &reason)?;
                write::insert_match_result(&tx, run_id, &row(c, true, Some(&reason), None, None))?;
            }
        }
    }
    for c in &rejected {
        write::insert_match_result(&tx, run_id, &row(c, false, Some("too far"), None, None))?;
    }
    manifest.flush()?;
    drop(manifest);
    std::fs::rename(
        out_dir.join(format!("{MANIFEST}.part")),
        out_dir.join(MANIFEST),
    )
    .context("writing the manifest")?;
    write::finish_match_run(&tx, run_id, candidates.len() as u64, written)?;
    counters.files_failed = crop_failures;
    write::finish_run(
        &tx,
        run_id,
        if crop_failures > 0 { "failures" } else { "ok" },
        &counters,
    )?;
    tx.commit()?;

    if !globals.quiet {
        eprintln!(
            "facedb match {} --ref {}",
            root.display(),
            args.reference.display()
        );
        eprintln!(
            "  {} of {} photos with faces matched (threshold {:.2}, cosine distance); {} rejected",
            matched.len(),
            candidates.len(),
            args.threshold,
            rejected.len()
        );
        eprintln!(
            "  {written} crops and {MANIFEST} in {} ({:.2} s)",
            out_dir.display(),
            started.elapsed().as_secs_f64()
        );
        if crop_failures > 0 {
            eprintln!("  {crop_failures} crop(s) failed (source file moved or unreadable); see `facedb report`");
        }
    }
    Ok(if crop_failures > 0 {
        ExitCode::from(super::EXIT_FILES_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn row<'a>(
    c: &Candidate,
    matched: bool,
    reason: Option<&'a str>,
    crop_path: Option<&'a str>,
    crop_rect: Option<Rect>,
) -> MatchRow<'a> {
    MatchRow {
        image_id: c.image_id,
        face_id: c.face_id,
        distance: c.distance,
        runner_up: c.runner_up,
        matched,
        reason,
        crop_path,
        crop_rect,
    }
}

/// The reference embedding: from the database when this photo was embedded before, otherwise
/// decoded, detected and embedded now (once) and stored. Returns (ref id, vector, model calls).
fn reference(
    conn: &rusqlite::Connection,
    files: &ModelFiles,
    path: &Path,
    detector_id: i64,
    embedder_id: i64,
    run_id: i64,
    quiet: bool,
) -> Result<(i64, Vec<f32>, i64)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read reference photo {}", path.display()))?;
    let blake3 = hash::content_hash(&bytes);
    if let Some(r) = read::find_ref(conn, &blake3, detector_id, embedder_id)? {
        if r.faces_in_photo > 1 && !quiet {
            eprintln!(
                "note: {} has {} faces; using the largest",
                path.display(),
                r.faces_in_photo
            );
        }
        return Ok((r.id, r.vector, 0));
    }
    let models = files.load()?;
    let (mut detector, mut embedder) = (models.detector()?, models.embedder()?);
    let mut times = StageTimes::default();
    let img = analyze(
        &bytes,
        &mut detector,
        &mut embedder,
        &DetectParams::default(),
        &mut times,
    )
    .with_context(|| format!("reference photo {}", path.display()))?;
    let calls = i64::from(img.detector_calls + img.embedder_calls);
    let Some(face) = largest(&img.faces) else {
        bail!("no face found in {}; pass a photo where the face is clearly visible and at least 40 px wide", path.display());
    };
    let Some(vector) = face.embedding else {
        bail!("the face in {} could not be aligned (landmarks degenerate); pass a clearer, more frontal photo", path.display());
    };
    if img.faces.len() > 1 && !quiet {
        eprintln!(
            "note: {} has {} faces; using the largest ({}x{} px)",
            path.display(),
            img.faces.len(),
            face.detection.w.round(),
            face.detection.h.round()
        );
    }
    let path_str = path.to_string_lossy();
    let new = NewRef {
        blake3: &blake3,
        path: &path_str,
        width: img.width,
        height: img.height,
        faces_in_photo: img.faces.len(),
        face,
        vector: &vector,
    };
    let id = write::insert_ref(conn, &new, detector_id, embedder_id)?;
    write::log(
        conn,
        run_id,
        None,
        Some(&path_str),
        "info",
        &format!(
            "reference embedded: {} face(s), largest used",
            img.faces.len()
        ),
    )?;
    Ok((id, vector.to_vec(), calls))
}

struct Crop {
    info: FaceInfo,
    source: String,
    file_name: String,
    rect: Rect,
}

impl Crop {
    fn path_string(&self) -> String {
        self.file_name.clone()
    }

    fn manifest_record(&self, c: &Candidate, out_dir: &Path) -> Vec<String> {
        let i = &self.info;
        let [cx, cy, cw, ch] = self.rect;
        vec![
            out_dir.join(&self.file_name).to_string_lossy().into_owned(),
            self.source.clone(),
            i.blake3.clone(),
            i.face_id.to_string(),
            format!("{:.4}", c.distance),
            format!("{:.1}", i.x),
            format!("{:.1}", i.y),
            format!("{:.1}", i.w),
            format!("{:.1}", i.h),
            cx.to_string(),
            cy.to_string(),
            cw.to_string(),
            ch.to_string(),
            format!("{:.3}", i.score),
            format!("{:.1}", i.size_px),
            format!("{:.1}", i.sharpness),
            format!("{:.1}", i.yaw),
            format!("{:.1}", i.roll),
            format!("{:.1}", i.brightness),
            format!("{}x{}", i.width, i.height),
        ]
    }
}

pub const MANIFEST_COLUMNS: [&str; 20] = [
    "crop_path",
    "source_path",
    "source_blake3",
    "face_id",
    "distance",
    "face_x",
    "face_y",
    "face_w",
    "face_h",
    "crop_x",
    "crop_y",
    "crop_w",
    "crop_h",
    "det_score",
    "size_px",
    "sharpness",
    "yaw",
    "roll",
    "brightness",
    "source_size",
];

/// Reads the source photo at full resolution and writes the crop. Each call opens its own
/// read-only connection: rusqlite connections are not shared across threads.
fn make_crop(
    db_file: &Path,
    root: &Path,
    out_dir: &Path,
    c: &Candidate,
    margin: f32,
) -> Result<Crop> {
    let db = Db::open_read_only(db_file)?;
    let info = read::face_info(&db.conn, c.face_id)?;
    let (source, bytes) = info
        .paths
        .iter()
        .find_map(|(rel, raw)| {
            let p: PathBuf = walk::resolve(root, rel, raw.as_deref());
            std::fs::read(&p)
                .ok()
                .filter(|b| hash::content_hash(b) == info.blake3)
                .map(|b| (rel.clone(), b))
        })
        .ok_or_else(|| {
            anyhow!("no file with this content is left in the folder; re-run `facedb index`")
        })?;
    let decoded = decode::decode(&bytes)?;
    let rect = crop::crop_rect(
        info.x,
        info.y,
        info.w,
        info.h,
        margin,
        decoded.rgb.width(),
        decoded.rgb.height(),
    );
    let file_name = crop::crop_file_name(&source, info.face_id);
    crop::write_crop(&decoded.rgb, rect, &out_dir.join(&file_name))?;
    Ok(Crop {
        info,
        source,
        file_name,
        rect,
    })
}
