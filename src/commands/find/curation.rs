//! Curation that sticks: the user's decisions (`facedb reject`, crops deleted from the output
//! folder, review) shape every later match of the same person, and the crops they edited stay.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use anyhow::Result;
use rusqlite::Connection;

use crate::db::decisions::{self, NewDecision, Person, Source, Verdict};
use crate::db::read::RefRow;
use crate::db::Embedder;
use crate::matching::Decision;
use crate::output::OutputDir;
use crate::select;

/// The decisions that apply to this run.
#[derive(Default)]
pub(super) struct Curated {
    /// Faces the user rejected for this person: never cropped.
    pub excluded: HashSet<i64>,
    /// Embeddings of faces the user said are not the person: extra negative references.
    pub negatives: Vec<Vec<f32>>,
    /// Crops found deleted from the output folder by this run (now stored as rejections).
    pub deleted_crops: usize,
    /// Crops gone together with most of the folder: taken as a fresh start, not as rejections.
    pub cleared_crops: usize,
    /// Crops whose bytes are still in the folder under another name (renamed or moved).
    pub moved_crops: usize,
    /// Embeddings of faces whose crop the user deleted ("not this picture"): copies of the same
    /// picture elsewhere (re-encodes, resized copies) are left out too.
    pub deleted_pictures: Vec<(Vec<f32>, Option<u64>)>,
    /// Matched faces left out this run as copies of such a picture (face ids, ascending).
    pub copies_of_deleted: Vec<i64>,
}

/// The matched faces that are copies of a picture whose crop the user deleted, by `--best`'s
/// rule for near-duplicates (`select::DUP_EMBEDDING` and, where both faces have a face hash,
/// `select::DUP_HASH_BITS`): re-encodes and resized copies, not the picture's mirror image (0.06
/// apart in embedding, but a different crop to a trainer) nor the person's other photos.
pub(super) fn copies_of_deleted(conn: &Connection, curated: &Curated, decisions: &[Decision], embedder: Embedder) -> Result<HashSet<i64>> {
    let mut copies = HashSet::new();
    if curated.deleted_pictures.is_empty() {
        return Ok(copies);
    }
    for d in decisions.iter().filter(|d| d.matched()) {
        let Some(v) = decisions::face_vector(conn, d.face_id, embedder)? else { continue };
        let hash = decisions::face_hash(conn, d.face_id)?;
        let near = curated.deleted_pictures.iter().any(|(p, deleted_hash)| {
            let close = crate::matching::cosine_distance(p, &v) <= select::DUP_EMBEDDING;
            let same_look = match (deleted_hash, hash) {
                (Some(a), Some(b)) => (a ^ b).count_ones() <= select::DUP_HASH_BITS,
                _ => true,
            };
            close && same_look
        });
        if near {
            copies.insert(d.face_id);
        }
    }
    Ok(copies)
}

/// More than this many crops gone at once, and more than half of what facedb had written there,
/// is a folder cleared or renamed (a fresh start), not one rejection per face: a user curating
/// deletes the few crops they do not want.
const MASS_DELETION: usize = 3;

/// The person of a run: its references' keys (see [`crate::db::decisions`]).
pub(super) fn person_of(refs: &[RefRow]) -> Person {
    Person::new(refs.iter().map(|r| r.blake3.clone()))
}

/// The face id in a crop name (`<stem>_face<ID>.<ext>`, possibly under a layout subfolder).
/// The face id in a crop image's name; `None` for anything else (a caption `.txt` beside it is
/// not the face: deleting or keeping a caption says nothing about who is in the photo).
pub(super) fn face_in_name(name: &str) -> Option<i64> {
    let leaf = name.rsplit('/').next()?;
    if !crate::crop::is_crop_name(leaf) {
        return None;
    }
    leaf.rsplit_once('.')?.0.rsplit_once("_face")?.1.parse().ok()
}

/// Stores the crops the user deleted from the output folder as rejections for the person of the
/// run that wrote them, then loads every decision that applies to `person`.
pub(super) fn load(conn: &Connection, out: Option<&OutputDir>, person: &Person, embedder: Embedder) -> Result<Curated> {
    let mut curated = Curated::default();
    if let Some(out) = out {
        let c = out.curation();
        curated.moved_crops = c.moved.iter().filter(|n| face_in_name(n).is_some()).count();
        let gone = c.deleted.iter().filter(|n| face_in_name(n).is_some()).count();
        let written = gone + curated.moved_crops + c.edited.len() + out.owned().filter(|n| face_in_name(n).is_some()).count();
        if gone > MASS_DELETION && gone * 2 > written {
            curated.cleared_crops = gone;
        } else {
            curated.deleted_crops = record_deleted(conn, out, person)?;
        }
    }
    for d in decisions::applying(conn, person)? {
        if d.verdict == Verdict::Accept {
            continue;
        }
        curated.excluded.insert(d.face_id);
        // A deleted crop says "not this picture", not "not this person": as a negative it would
        // also push away the person's other photos (0.22-0.27 apart on the test portraits).
        if let Some(v) = decisions::face_vector(conn, d.face_id, embedder)? {
            if d.source == Source::DeletedCrop {
                curated.deleted_pictures.push((v, decisions::face_hash(conn, d.face_id)?));
            } else {
                curated.negatives.push(v);
            }
        }
    }
    Ok(curated)
}

fn record_deleted(conn: &Connection, out: &OutputDir, person: &Person) -> Result<usize> {
    let deleted: Vec<&String> = out.curation().deleted.iter().filter(|n| face_in_name(n).is_some()).collect();
    if deleted.is_empty() {
        return Ok(0);
    }
    // The run that wrote them: the latest finished match into this folder.
    let here = out.path().canonicalize().ok();
    let previous = decisions::match_run_folders(conn)?
        .into_iter()
        .find(|(_, dir)| here.is_some() && Path::new(dir).canonicalize().ok() == here)
        .map(|(run, _)| run);
    let their_person = match previous {
        Some(run) => decisions::run_person(conn, run)?,
        None => person.clone(),
    };
    let mut stored = 0;
    for name in deleted {
        let face = match previous {
            Some(run) => decisions::face_of_crop(conn, run, name)?,
            None => None,
        };
        let Some(face_id) = face.or_else(|| face_in_name(name)) else { continue };
        if !decisions::face_exists(conn, face_id)? {
            continue;
        }
        let d = NewDecision {
            face_id,
            person: &their_person,
            verdict: Verdict::Reject,
            source: Source::DeletedCrop,
            run_id: previous,
            detail: Some(name),
        };
        decisions::insert(conn, &d)?;
        stored += 1;
    }
    Ok(stored)
}

/// Crops facedb wrote into the folder before that this run does not write again, counted by why.
pub(super) fn dropped(out: &OutputDir, names: &HashMap<i64, String>, decisions: &[Decision]) -> BTreeMap<String, usize> {
    let new: BTreeSet<&str> = names.values().map(String::as_str).collect();
    let gone: Vec<i64> = out.owned().filter(|n| !new.contains(n)).filter_map(face_in_name).collect();
    // Only the faces of those crops: a map of every decision cost a fifth of a re-match at a million photos.
    let wanted: HashSet<i64> = gone.iter().copied().collect();
    let reason: HashMap<i64, &str> =
        decisions.iter().filter(|d| wanted.contains(&d.face_id)).map(|d| (d.face_id, d.reason.map_or("matched", |r| r.as_str()))).collect();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for face in gone {
        let why = if names.contains_key(&face) {
            "written under another name or layout"
        } else {
            reason.get(&face).copied().unwrap_or("no longer the chosen face of its photo (or the photo is gone)")
        };
        *by.entry(why.to_string()).or_default() += 1;
    }
    by
}
