//! `facedb forget PHOTO|FACE_ID|--person NAME`: erase a photo's faces (or one face) for good. Face embeddings
//! are biometric data; after this no byte of them is left in the database file, its `-wal` or the
//! vector cache, and `index` never stores those faces again (the request is kept by content
//! hash in `forgotten`, migration 0009).
//!
//! Order, so an interrupted run leaves a consistent state and a re-run finishes the job: the
//! crops first (through each output folder's ledger: only files facedb wrote, still as it wrote
//! them), then the rows in one transaction, then the XMP sidecars facedb wrote (rewritten from
//! what is left), then the cache file, then VACUUM and an emptied log.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::find::layout::METADATA_JSONL;
use super::find::{MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV};
use super::{database_path, find_dataset, info::dataset_holding, open_database, outln, Globals, EXIT_FILES_FAILED};
use crate::cli::ForgetArgs;
use crate::db::forget::{self, Erased, Target, WrittenCrop};
use crate::db::{people, read, vectors, Db};
use crate::output::{OutputDir, Owner};
use crate::pipeline::hash;
use crate::util::{display_path, read_photo_file};

pub fn run(globals: &Globals, args: ForgetArgs) -> Result<ExitCode> {
    let as_path = PathBuf::from(args.target.as_deref().unwrap_or_default());
    let root = match &args.dir {
        Some(d) => find_dataset(globals, Some(d))?,
        None => dataset_holding(&as_path).map_or_else(|| find_dataset(globals, None), Ok)?,
    };
    let mut db = open_database(globals, &root, true)?;
    let targets = match (&args.person, &args.target) {
        (Some(name), _) => people::faces_of(&db.conn, name)?
            .into_iter()
            .filter_map(|face| forget::face_target(&db.conn, face).transpose())
            .collect::<Result<Vec<Target>>>()?,
        (None, Some(text)) => vec![resolve(&db, &root, text)?],
        (None, None) => bail!("name a photo, a face id or --person NAME to forget"),
    };
    let mut erased = Erased::default();
    let mut crops_removed = 0;
    for target in &targets {
        let crops = forget::crops_of(&mut db.conn, target)?;
        let faces = forget::faces_of(&mut db.conn, target)?;
        crops_removed += remove_crops(&db, &root, &crops, &faces, globals)?;
        erased += forget::erase(&mut db.conn, target)?;
    }
    if let Some(name) = &args.person {
        people::remove(&db.conn, name)?;
    }
    // After the rows, so each sidecar is rewritten from what is left stored; a re-run of an
    // interrupted forget (or `export xmp`) rewrites it again.
    let photos: HashSet<i64> = targets.iter().map(|t| t.image_id).collect();
    // Never fatal: the cache and the compaction below must still run.
    let (sidecars, sidecar_failures) = super::export::xmp::strip_forgotten(&db.conn, &root, &photos).unwrap_or_else(|e| {
        (
            0,
            vec![format!(
                "XMP sidecars of the forgotten faces not checked ({e:#}); run `facedb export xmp {}` to take their regions out",
                display_path(&root)
            )],
        )
    });
    for failure in &sidecar_failures {
        eprintln!("{failure}");
    }
    let db_file = database_path(globals, &root);
    let cache_removed = vectors::erase(&db_file)?;
    let leftovers = vectors::erase_leftovers(&db_file);
    warn_leftovers(&vectors::cache_path(&db_file), &leftovers);
    forget::compact(&db.conn).with_context(|| format!("compacting {}", display_path(&db_file)))?;
    let what = args.person.as_ref().map(|n| format!("person {n}")).or(args.target).unwrap_or_default();
    summary(globals, &what, &erased, Removed { crops: crops_removed, sidecars, cache: cache_removed, parts: leftovers.parts_removed })?;
    Ok(if sidecar_failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FILES_FAILED) })
}

/// The photo (a file, by path in the dataset or else by content) or the face id named.
fn resolve(db: &Db, root: &Path, text: &str) -> Result<Target> {
    let conn = &db.conn;
    let as_path = Path::new(text);
    let image_id = if as_path.is_file() {
        let by_path = as_path
            .canonicalize()
            .ok()
            .and_then(|c| c.strip_prefix(root).ok().and_then(|rel| rel.to_str()).map(str::to_string))
            .map(|rel| read::image_id_for_path(conn, &rel))
            .transpose()?
            .flatten();
        match by_path {
            Some(id) => Some(id),
            None => read::image_id_for_hash(conn, &hash::content_hash(&read_photo_file(as_path)?))?,
        }
    } else if let Ok(face_id) = text.parse::<i64>() {
        return forget::face_target(conn, face_id)?.with_context(|| {
            format!("no face {face_id} in {}; see the face_id column of manifest.csv or `facedb info PHOTO`", display_path(root))
        });
    } else {
        read::image_id_for_path(conn, text)?
    };
    let Some(image_id) = image_id else {
        bail!("{text} is not a photo of {} (nothing stored to forget); pass a photo of the dataset or a face id", display_path(root));
    };
    forget::photo_target(conn, image_id)?.with_context(|| format!("{text}: image {image_id} vanished while forgetting; run it again"))
}

/// Removes the crops match runs wrote of the forgotten faces, folder by folder, each through its
/// ledger. A folder that is gone or no longer facedb's is skipped with a warning: facedb never
/// deletes what it cannot prove it wrote.
fn remove_crops(db: &Db, root: &Path, crops: &[WrittenCrop], faces: &BTreeSet<i64>, globals: &Globals) -> Result<usize> {
    let mut by_folder: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in crops {
        by_folder.entry(c.out_dir.as_str()).or_default().insert(c.name.clone());
    }
    let owner = Owner { database_id: read::database_id(&db.conn)?, dataset: root.to_string_lossy().into_owned() };
    let db_file = database_path(globals, root);
    let mut removed = 0;
    for (folder, names) in by_folder {
        let folder = Path::new(folder);
        if !folder.is_dir() {
            if folder.is_relative() {
                // Recorded as typed by an older facedb, relative to the folder `match` ran in
                // (found here only from that folder; the ledger proves a folder found is it).
                eprintln!(
                    "warning: {} crop(s) of the forgotten faces were written to {}, relative to the folder `facedb match` ran in, which is not here: delete {} there by hand",
                    names.len(),
                    display_path(folder),
                    names.iter().take(3).cloned().collect::<Vec<_>>().join(", ") + if names.len() > 3 { ", …" } else { "" }
                );
            }
            continue;
        }
        let removal = OutputDir::open(folder, root, &db_file, owner.clone()).and_then(|out| {
            strip_manifests(&out, &names, faces)?;
            out.remove(&names)
        });
        match removal {
            Ok(n) => removed += n,
            Err(e) if !globals.quiet => eprintln!("warning: crops in {} left as they are: {e:#}", display_path(folder)),
            Err(_) => {}
        }
    }
    Ok(removed)
}

/// Takes the rows of the forgotten faces and their crops out of the manifests facedb wrote in
/// `out` (manifest.csv, manifest.jsonl, rejected.csv, an imagefolder's metadata.jsonl): the
/// folder then still lists exactly its crops, and no row keeps a forgotten face's box, landmarks
/// or source.
fn strip_manifests(out: &OutputDir, crops: &BTreeSet<String>, faces: &BTreeSet<i64>) -> Result<()> {
    let forgotten =
        |face: Option<i64>, crop: Option<&str>| face.is_some_and(|f| faces.contains(&f)) || crop.is_some_and(|c| crops.contains(c));
    for name in [MANIFEST_CSV, REJECTED_CSV] {
        out.rewrite(name, |bytes| {
            let mut rows = csv::Reader::from_reader(bytes);
            let headers = rows.headers()?.clone();
            let column = |title: &str| headers.iter().position(|h| h == title);
            let (face_at, crop_at) = (column("face_id"), column("crop_path"));
            let mut kept = csv::Writer::from_writer(Vec::new());
            kept.write_record(&headers)?;
            for row in rows.records() {
                let row = row?;
                let face = face_at.and_then(|i| row.get(i)).and_then(|f| f.parse().ok());
                if !forgotten(face, crop_at.and_then(|i| row.get(i))) {
                    kept.write_record(&row)?;
                }
            }
            kept.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
        })?;
    }
    for (name, crop_key) in [(MANIFEST_JSONL, "crop_path"), (METADATA_JSONL, "file_name")] {
        out.rewrite(name, |bytes| {
            let mut kept = Vec::with_capacity(bytes.len());
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if line.trim_ascii().is_empty() {
                    kept.extend_from_slice(line);
                    continue;
                }
                let row: serde_json::Value = serde_json::from_slice(line.trim_ascii())?;
                let face = row.get("face_id").and_then(|f| f.as_i64().or_else(|| f.as_str().and_then(|s| s.parse().ok())));
                if !forgotten(face, row.get(crop_key).and_then(|c| c.as_str())) {
                    kept.extend_from_slice(line);
                }
            }
            Ok(kept)
        })?;
    }
    Ok(())
}

/// What forget took out of files beside the database.
struct Removed {
    crops: usize,
    /// Sidecars facedb wrote that were rewritten without the forgotten faces.
    sidecars: usize,
    cache: bool,
    /// Unfinished vector caches (`<cache>.*.part`) removed.
    parts: usize,
}

/// What forget could not remove that may still hold the forgotten vectors, one line each
/// (said even with --quiet: the user has to act).
fn warn_leftovers(cache: &Path, leftovers: &vectors::Leftovers) {
    if let Some(target) = &leftovers.link {
        eprintln!(
            "warning: {} is a link, left alone; its target {} may still hold the forgotten faces' vectors: delete it by hand",
            display_path(cache),
            display_path(target)
        );
    }
    for part in &leftovers.parts_kept {
        eprintln!(
            "warning: cannot remove {}, an unfinished vector cache that may hold the forgotten faces' vectors: delete it by hand",
            display_path(part)
        );
    }
}

fn summary(globals: &Globals, target: &str, e: &Erased, removed: Removed) -> Result<()> {
    let Removed { crops: crops_removed, sidecars, cache: cache_removed, parts } = removed;
    if globals.json {
        outln!(
            "{}",
            serde_json::json!({"command": "forget", "target": target, "erased": e, "crops_removed": crops_removed, "sidecars_rewritten": sidecars, "vector_cache_removed": cache_removed, "vector_cache_parts_removed": parts})
        );
    } else if !globals.quiet {
        eprintln!(
            "forgot {target}: {} face(s), {} embedding(s), {} reference(s), {} match result(s), {} decision(s), {crops_removed} crop file(s), {sidecars} XMP sidecar(s) rewritten; database compacted{}{}; `facedb index` will not store these faces again",
            e.faces,
            e.embeddings,
            e.references,
            e.match_results,
            e.decisions,
            if cache_removed { ", vector cache removed (the next match rebuilds it)" } else { "" },
            if parts > 0 { format!(", {parts} unfinished vector cache file(s) removed") } else { String::new() }
        );
    }
    Ok(())
}
