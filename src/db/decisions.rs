//! What the user decided about faces (`decisions`, migration 0006): written by `facedb reject`,
//! by `match` for crops deleted from its output folder, and by the review page (issue 14); read
//! by every later `match` of the same person.
//!
//! A person is the set of reference keys of a run (`refs.blake3`: a photo's content hash, or
//! `face:<photo blake3>:<face idx>` for a stored face used as a reference). A decision applies to
//! a run whose references share a key with it, so adding a reference photo keeps the decisions.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::{blob_to_vector, now_rfc3339, Embedder, ModelId, RunId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
    DifferentPerson,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
            Verdict::DifferentPerson => "different_person",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Verdict::Accept, Verdict::Reject, Verdict::DifferentPerson].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cli,
    DeletedCrop,
    Review,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::DeletedCrop => "deleted-crop",
            Source::Review => "review",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Source::Cli, Source::DeletedCrop, Source::Review].into_iter().find(|v| v.as_str() == s)
    }
}

/// The person a decision is about: a sorted set of reference keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person(pub BTreeSet<String>);

impl Person {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self(keys.into_iter().collect())
    }

    fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(&self.0)?)
    }

    /// Whether a decision made for `self` applies to a run with references `run`: they share a
    /// reference, or neither has any (`match --all`).
    pub fn applies_to(&self, run: &Person) -> bool {
        if self.0.is_empty() || run.0.is_empty() {
            return self.0.is_empty() && run.0.is_empty();
        }
        self.0.intersection(&run.0).next().is_some()
    }
}

pub struct NewDecision<'a> {
    pub face_id: i64,
    pub person: &'a Person,
    pub verdict: Verdict,
    pub source: Source,
    pub run_id: Option<RunId>,
    pub detail: Option<&'a str>,
}

pub fn insert(conn: &Connection, d: &NewDecision) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO decisions (face_id, person, verdict, source, run_id, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![d.face_id, d.person.to_json()?, d.verdict.as_str(), d.source.as_str(), d.run_id, d.detail, now_rfc3339()])?;
    Ok(conn.last_insert_rowid())
}

/// A stored decision that applies to a run.
#[derive(Debug, Clone)]
pub struct Applied {
    pub face_id: i64,
    pub verdict: Verdict,
    pub source: Source,
}

/// The decisions that apply to a run with references `run`: per face, the latest one.
pub fn applying(conn: &Connection, run: &Person) -> Result<Vec<Applied>> {
    let mut stmt = conn.prepare("SELECT face_id, person, verdict, source FROM decisions ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?;
    let mut latest: std::collections::BTreeMap<i64, Applied> = Default::default();
    for row in rows {
        let (face_id, person, verdict, source) = row?;
        // A row written by hand with an unknown value is skipped, not fatal.
        let (Ok(keys), Some(verdict), Some(source)) =
            (serde_json::from_str::<BTreeSet<String>>(&person), Verdict::parse(&verdict), Source::parse(&source))
        else {
            continue;
        };
        if Person(keys).applies_to(run) {
            let face_id = current_face(conn, face_id)?.unwrap_or(face_id);
            latest.insert(face_id, Applied { face_id, verdict, source });
        }
    }
    Ok(latest.into_values().collect())
}

/// The face a decision now means: itself while its photo's faces are the ones it was detected
/// with; after the photo was detected again (another detector, model file or procedure), the
/// new face of the same photo whose box overlaps it most (intersection over union at least 0.5),
/// so a model change does not silently undo what the user decided. `None`: no such face.
pub fn current_face(conn: &Connection, face_id: i64) -> Result<Option<i64>> {
    let old: Option<(i64, i64, Option<i64>, [f64; 4])> = conn
        .query_row(
            "SELECT fc.image_id, fc.detector_id, i.detector_id, fc.x, fc.y, fc.w, fc.h FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1",
            [face_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?])),
        )
        .optional()?;
    let Some((image_id, detector, image_detector, old_box)) = old else { return Ok(None) };
    let Some(image_detector) = image_detector.filter(|d| *d != detector) else { return Ok(Some(face_id)) };
    let mut stmt = conn.prepare("SELECT id, x, y, w, h FROM faces WHERE image_id = ?1 AND detector_id = ?2")?;
    let candidates =
        stmt.query_map(params![image_id, image_detector], |r| Ok((r.get::<_, i64>(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])))?;
    let mut best: Option<(f64, i64)> = None;
    for c in candidates {
        let (id, b): (i64, [f64; 4]) = c?;
        let overlap = iou(&old_box, &b);
        if overlap >= 0.5 && best.is_none_or(|(o, _)| overlap > o) {
            best = Some((overlap, id));
        }
    }
    Ok(best.map(|(_, id)| id))
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = w.max(0.0) * h.max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// A face's stored embedding from `embedder`.
pub fn face_vector(conn: &Connection, face_id: i64, embedder: Embedder) -> Result<Option<Vec<f32>>> {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT vector FROM embeddings WHERE face_id = ?1 AND model_id = ?2", params![face_id, embedder.id], |r| r.get(0))
        .optional()?;
    Ok(blob.and_then(|b| blob_to_vector(&b)).filter(|v| v.len() == embedder.dim))
}

/// A face's stored face hash (`pipeline::fingerprint`), if it has one yet.
pub fn face_hash(conn: &Connection, face_id: i64) -> Result<Option<u64>> {
    let hash: Option<Option<i64>> = conn.query_row("SELECT face_hash FROM faces WHERE id = ?1", [face_id], |r| r.get(0)).optional()?;
    // SQLite integers are signed: the bits, reinterpreted (as `db::write` stores them).
    Ok(hash.flatten().map(|h| h as u64))
}

/// Stores a face as a reference under `key` (see [`face_key`]), with its own box and embedding.
pub fn insert_face_ref(
    conn: &Connection,
    key: &str,
    face_id: i64,
    (detector_id, embedder_id): (ModelId, ModelId),
    vector: &[f32],
) -> Result<()> {
    conn.execute(
        "INSERT INTO refs (blake3, path, width, height, faces_in_photo, x, y, w, h, score, landmarks_json, detector_id, embedder_id, vector, created_at)
         SELECT ?1, 'face:' || fc.id, i.width, i.height, 1, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json, ?2, ?3, ?4, ?5
         FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?6",
        params![key, detector_id, embedder_id, super::vector_to_blob(vector), now_rfc3339(), face_id],
    )?;
    Ok(())
}

/// The reference key of a stored face: stable across runs and re-indexing of the same content.
pub fn face_key(conn: &Connection, face_id: i64) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT i.blake3, fc.idx FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1", [face_id], |r| {
            Ok(format!("face:{}:{}", r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?)
}

/// The reference keys (person) of a match run.
pub fn run_person(conn: &Connection, run_id: RunId) -> Result<Person> {
    let ids: Option<String> = conn.query_row("SELECT ref_ids_json FROM match_runs WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?;
    let Some(ids) = ids else { bail!("run {run_id} is not a match run") };
    let mut stmt = conn.prepare("SELECT blake3 FROM refs WHERE id IN (SELECT value FROM json_each(?1))")?;
    let keys = stmt.query_map([ids], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Person::new(keys))
}

/// The latest finished match run that decided about `face_id`.
pub fn latest_run_with_face(conn: &Connection, face_id: i64) -> Result<Option<RunId>> {
    Ok(conn
        .query_row(
            "SELECT r.run_id FROM match_results r JOIN match_runs m ON m.run_id = r.run_id WHERE r.face_id = ?1 ORDER BY r.run_id DESC LIMIT 1",
            [face_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Match runs, newest first, with the output folder each wrote into (as recorded).
pub fn match_run_folders(conn: &Connection) -> Result<Vec<(RunId, String)>> {
    let mut stmt = conn.prepare(
        "SELECT m.run_id, m.out_dir FROM match_runs m JOIN runs r ON r.id = m.run_id WHERE r.status IN ('ok', 'failures') ORDER BY m.run_id DESC",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The face a run wrote to `crop_path` (relative to its output folder).
pub fn face_of_crop(conn: &Connection, run_id: RunId, crop_path: &str) -> Result<Option<i64>> {
    Ok(conn
        .query_row("SELECT face_id FROM match_results WHERE run_id = ?1 AND crop_path = ?2", params![run_id, crop_path], |r| r.get(0))
        .optional()?)
}

/// Whether a face exists.
pub fn face_exists(conn: &Connection, face_id: i64) -> Result<bool> {
    Ok(conn.query_row("SELECT count(*) FROM faces WHERE id = ?1", [face_id], |r| r.get::<_, i64>(0))? > 0)
}

pub fn set_applied(conn: &Connection, run_id: RunId, applied: usize) -> Result<()> {
    conn.execute("UPDATE match_runs SET decisions_applied = ?2 WHERE run_id = ?1", params![run_id, applied as i64])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(keys: &[&str]) -> Person {
        Person::new(keys.iter().map(|k| k.to_string()))
    }

    #[test]
    fn a_decision_follows_the_person_through_added_references() {
        assert!(p(&["a", "b"]).applies_to(&p(&["b", "c"])), "one shared reference is the same person");
        assert!(!p(&["a"]).applies_to(&p(&["c"])));
        assert!(p(&[]).applies_to(&p(&[])), "--all decisions apply to --all runs");
        assert!(!p(&[]).applies_to(&p(&["a"])) && !p(&["a"]).applies_to(&p(&[])));
    }
}
