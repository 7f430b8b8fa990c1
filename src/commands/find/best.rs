//! `match --best N`: the wiring around [`crate::select`] (the choice itself is pure and lives
//! there): gather what it needs, hash faces indexed before face hashes were stored, and keep the
//! verdicts for the crops, the manifest and the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::Result;
use rayon::prelude::*;
use rusqlite::Connection;

use crate::db::read::{self, FaceInfo};
use crate::matching::{self, Decision, Vectors};
use crate::pipeline::decode::Decoders;
use crate::pipeline::detect::Detection;
use crate::pipeline::frame::at_scale;
use crate::pipeline::{fingerprint, frame_as_indexed, hash, walk};
use crate::select::{self, Choice, Params};
use crate::util::read_photo_file;

pub(super) struct Best {
    pub n: usize,
    choices: HashMap<i64, Choice>,
    /// Faces whose hash was computed in this run (indexed before hashes were stored).
    hashed_now: usize,
    /// Time taken to choose, reading the inputs included.
    seconds: f64,
}

/// The embeddings of the matched faces; `faces[i]`'s vector is the i-th in `vectors`.
pub(super) fn matched_vectors(
    vectors: &mut dyn Vectors,
    index_of: &HashMap<i64, usize>,
    decisions: &[Decision],
) -> Result<HashMap<i64, Vec<f32>>> {
    let matched: HashSet<i64> = decisions.iter().filter(|d| d.matched()).map(|d| d.face_id).collect();
    let mut wanted: Vec<(usize, i64)> = matched.iter().filter_map(|id| index_of.get(id).map(|&i| (i, *id))).collect();
    wanted.sort_unstable();
    let indices: Vec<usize> = wanted.iter().map(|&(i, _)| i).collect();
    let found = matching::gather(vectors, &indices)?;
    Ok(wanted.iter().zip(found).map(|(&(_, id), v)| (id, v)).collect())
}

/// Chooses among the matched faces. Faces without a stored hash get one now (decode and align,
/// no model; stored, so only once).
pub(super) fn choose(
    conn: &Connection,
    root: &Path,
    decoders: &Decoders,
    params: Params,
    decisions: &[Decision],
    vectors: &HashMap<i64, Vec<f32>>,
) -> Result<Best> {
    let started = std::time::Instant::now();
    let ids: Vec<i64> = decisions.iter().filter(|d| d.matched()).map(|d| d.face_id).collect();
    let mut faces = crate::db::best::faces_for_selection(conn, &ids)?;
    let hashed_now = fill_missing_hashes(conn, root, decoders, &mut faces)?;
    for f in &mut faces {
        f.embedding = vectors.get(&f.face_id).filter(|v| !v.is_empty()).cloned();
    }
    let choices = select::select(&faces, &params).into_iter().map(|c| (c.face_id, c)).collect();
    Ok(Best { n: params.n, choices, hashed_now, seconds: started.elapsed().as_secs_f64() })
}

impl Best {
    pub fn picked(&self, face_id: i64) -> bool {
        self.choices.get(&face_id).is_some_and(|c| c.rank.is_some())
    }

    pub fn choice(&self, face_id: i64) -> Option<&Choice> {
        self.choices.get(&face_id)
    }

    /// Why a matched face was passed over (`None`: picked, or not a matched face).
    pub fn reason(&self, face_id: i64) -> Option<String> {
        self.choices.get(&face_id).and_then(|c| c.passed_over).map(|p| p.reason(self.n))
    }

    pub fn store(&self, conn: &Connection, run_id: crate::db::RunId) -> Result<()> {
        let mut all: Vec<Choice> = self.choices.values().copied().collect();
        all.sort_by_key(|c| c.face_id);
        crate::db::best::insert_selection(conn, run_id, &all, self.n)
    }

    /// For the `--json` summary.
    pub fn summary(&self) -> serde_json::Value {
        let picked = self.choices.values().filter(|c| c.rank.is_some()).count();
        let duplicates = self.choices.values().filter(|c| matches!(c.passed_over, Some(select::PassedOver::NearDuplicate(_)))).count();
        let groups = self.choices.values().filter(|c| c.group_size > 1 && c.group_id == c.face_id).count();
        serde_json::json!({"n": self.n, "matched": self.choices.len(), "picked": picked, "near_duplicates": duplicates,
            "near_duplicate_groups": groups, "faces_hashed": self.hashed_now, "seconds": self.seconds})
    }

    /// One line for the human summary.
    pub fn describe(&self) -> String {
        let s = self.summary();
        format!(
            "--best {}: picked {} of {} matched faces ({} near-duplicate(s) in {} group(s) passed over)",
            self.n, s["picked"], s["matched"], s["near_duplicates"], s["near_duplicate_groups"]
        )
    }
}

/// Computes and stores the face hash of faces indexed before facedb stored one. A face whose
/// photo cannot be read keeps none: it is then nobody's near-duplicate (it cannot be cropped
/// either, and says so).
fn fill_missing_hashes(conn: &Connection, root: &Path, decoders: &Decoders, faces: &mut [select::Face]) -> Result<usize> {
    let missing: Vec<i64> = faces.iter().filter(|f| f.hash.is_none()).map(|f| f.face_id).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let infos = missing.iter().map(|&id| read::face_info(conn, id)).collect::<Result<Vec<_>>>()?;
    let mut by_image: BTreeMap<i64, Vec<&FaceInfo>> = BTreeMap::new();
    for info in &infos {
        by_image.entry(info.image_id).or_default().push(info);
    }
    let groups: Vec<Vec<&FaceInfo>> = by_image.into_values().collect();
    let hashes: Vec<(i64, u64)> = groups.par_iter().flat_map_iter(|g| hash_photo(root, decoders, g)).collect();
    crate::db::best::store_face_hashes(conn, &hashes)?;
    let found: HashMap<i64, u64> = hashes.into_iter().collect();
    for f in faces.iter_mut() {
        f.hash = f.hash.or_else(|| found.get(&f.face_id).copied());
    }
    Ok(found.len())
}

/// Hashes of these faces of one photo, from the first present file with the indexed content,
/// decoded as indexing saw it (so the hash equals the one `index` stores for new photos).
fn hash_photo(root: &Path, decoders: &Decoders, faces: &[&FaceInfo]) -> Vec<(i64, u64)> {
    let Some(first) = faces.first() else { return Vec::new() };
    let bytes = first.paths.iter().find_map(|(rel, raw)| {
        read_photo_file(&walk::resolve(root, rel, raw.as_deref())).ok().filter(|b| hash::content_hash(b) == first.blake3)
    });
    let Some(bytes) = bytes else { return Vec::new() };
    let Ok(frame) = frame_as_indexed(&bytes, first.rotation, decoders) else { return Vec::new() };
    let hash = |f: &FaceInfo| {
        let face = Detection { x: f.x, y: f.y, w: f.w, h: f.h, score: f.score, landmarks: f.landmarks };
        // On the image `index` aligned this face on (see `Frame::source_for_face`).
        let view = frame.source_for_face(&face).ok()?;
        fingerprint::face_hash(&view, &at_scale(&face, view.factor).landmarks)
    };
    faces.iter().filter_map(|f| hash(f).map(|h| (f.face_id, h))).collect()
}
