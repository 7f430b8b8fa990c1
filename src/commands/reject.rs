//! `facedb reject FACE_ID|CROP_PATH [--ref ...]`: the user says a face is not the person. The
//! decision is stored (`decisions`, source `cli`); every later match of the person leaves the
//! face out and uses it as a negative reference.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use super::{find::face_ref, find_dataset, open_database, outln, Globals};
use crate::cli::RejectArgs;
use crate::db::decisions::{self, NewDecision, Person, Source, Verdict};
use crate::db::RunId;
use crate::pipeline::hash;
use crate::util::{display_path, read_photo_file};

pub fn run(globals: &Globals, args: RejectArgs) -> Result<ExitCode> {
    let face_id: Option<i64> = args.target.parse().ok();
    let crop = Path::new(&args.target);
    let root = match (&args.dir, face_id) {
        (Some(dir), _) => find_dataset(globals, Some(dir))?,
        (None, None) => crop_dataset(crop).map_or_else(|| find_dataset(globals, None), Ok)?,
        (None, Some(_)) => find_dataset(globals, None)?,
    };
    let db = open_database(globals, &root, true)?;
    let (face_id, run_id) = match face_id {
        Some(id) => {
            if !decisions::face_exists(&db.conn, id)? {
                bail!("no face {id} in {}; see the face_id column of manifest.csv or `facedb info PHOTO`", display_path(&root));
            }
            (id, decisions::latest_run_with_face(&db.conn, id)?)
        }
        None => resolve_crop(&db.conn, crop)?,
    };
    let person = if args.refs.is_empty() {
        match run_id {
            Some(run) => decisions::run_person(&db.conn, run)?,
            None => Person::default(),
        }
    } else {
        person_of_refs(&db.conn, &args.refs)?
    };
    if person.0.is_empty() {
        bail!("no match run with references decided about face {face_id}; pass --ref PHOTO (or face:ID) to say whose face it is not");
    }
    let d = NewDecision { face_id, person: &person, verdict: Verdict::Reject, source: Source::Cli, run_id, detail: None };
    let id = decisions::insert(&db.conn, &d)?;
    if globals.json {
        let keys: Vec<&String> = person.0.iter().collect();
        outln!("{}", serde_json::json!({"command": "reject", "decision_id": id, "face_id": face_id, "person": keys, "run_id": run_id}));
    } else if !globals.quiet {
        eprintln!(
            "face {face_id} rejected for the person of {} reference(s): every later match of them leaves it out and uses it as a negative (decision {id})",
            person.0.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The dataset a crop belongs to, named by the ledger of its output folder (the crop's folder, or
/// the one above it for a layout subfolder).
fn crop_dataset(crop: &Path) -> Option<PathBuf> {
    let parent = match crop.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let owner = crate::output::folder_owner(parent).or_else(|| parent.parent().and_then(crate::output::folder_owner))?;
    let dataset = PathBuf::from(owner.dataset);
    dataset.is_dir().then_some(dataset)
}

/// The face a crop file holds (the file may be deleted already): the match run that wrote it
/// into its folder (a layout subfolder included), else the face id in its name.
fn resolve_crop(conn: &Connection, crop: &Path) -> Result<(i64, Option<RunId>)> {
    let name = crop.file_name().and_then(|n| n.to_str()).with_context(|| format!("{} is not a crop file name", display_path(crop)))?;
    let parent = match crop.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent.canonicalize().with_context(|| format!("{} is not in a folder that exists", display_path(crop)))?;
    let mut candidates = vec![(parent.clone(), name.to_string())];
    if let (Some(up), Some(sub)) = (parent.parent(), parent.file_name().and_then(|s| s.to_str())) {
        candidates.push((up.to_path_buf(), format!("{sub}/{name}")));
    }
    for (run, dir) in decisions::match_run_folders(conn)? {
        let Ok(dir) = Path::new(&dir).canonicalize() else { continue };
        for (_, rel) in candidates.iter().filter(|(folder, _)| *folder == dir) {
            if let Some(face) = decisions::face_of_crop(conn, run, rel)? {
                return Ok((face, Some(run)));
            }
        }
    }
    let by_name = super::find::face_in_crop_name(name).filter(|&id| decisions::face_exists(conn, id).unwrap_or(false));
    match by_name {
        Some(id) => Ok((id, decisions::latest_run_with_face(conn, id)?)),
        None => bail!("{} is not a crop a match run wrote; pass the face id instead (manifest.csv's face_id column)", display_path(crop)),
    }
}

/// The person named by `--ref`: photos by content hash, stored faces by their key.
fn person_of_refs(conn: &Connection, refs: &[PathBuf]) -> Result<Person> {
    let mut keys = Vec::new();
    for r in refs {
        if let Some(id) = face_ref(r) {
            keys.push(decisions::face_key(conn, id)?.with_context(|| format!("--ref face:{id}: no such face"))?);
        } else {
            let bytes = read_photo_file(r).with_context(|| format!("reading --ref {}", display_path(r)))?;
            keys.push(hash::content_hash(&bytes));
        }
    }
    Ok(Person::new(keys))
}
