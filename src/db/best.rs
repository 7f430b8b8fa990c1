//! The SQL behind `match --best`: what selection reads about the matched faces, face hashes
//! computed late, and the stored selection (table `selection`, migration 0007).

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{params, Connection};

use super::RunId;
use crate::select::{Choice, Face};

/// Selection inputs of these faces (embeddings are not read here: the caller has them from the
/// vector cache). One statement for any number of faces: the ids travel as one JSON array.
pub fn faces_for_selection(conn: &Connection, face_ids: &[i64]) -> Result<Vec<Face>> {
    let mut stmt = conn.prepare(
        "SELECT fc.id, fc.face_hash, fc.size_px, fc.sharpness, fc.score, fc.yaw, fc.brightness, fc.landmarks_json,
                min(coalesce(i.width, 0), coalesce(i.height, 0))
         FROM json_each(?1) j JOIN faces fc ON fc.id = j.value JOIN images i ON i.id = fc.image_id",
    )?;
    let rows = stmt.query_map([serde_json::to_string(face_ids)?], |r| {
        Ok(Face {
            face_id: r.get(0)?,
            embedding: None,
            hash: r.get::<_, Option<i64>>(1)?.map(|h| h as u64),
            size_px: r.get(2)?,
            sharpness: r.get(3)?,
            det_score: r.get(4)?,
            yaw: r.get(5)?,
            brightness: r.get(6)?,
            // A damaged landmark list reads as degenerate: pitch and smile then count as neutral.
            landmarks: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or([[0.0; 2]; 5]),
            photo_short_side: r.get::<_, f64>(8)? as f32,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Stores face hashes computed after indexing (faces indexed before facedb stored them).
pub fn store_face_hashes(conn: &Connection, hashes: &[(i64, u64)]) -> Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE faces SET face_hash = ?2 WHERE id = ?1")?;
    for &(face_id, hash) in hashes {
        stmt.execute(params![face_id, hash as i64])?;
    }
    Ok(())
}

/// One row per matched face of the run.
pub fn insert_selection(conn: &Connection, run_id: RunId, choices: &[Choice], n: usize) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO selection (run_id, face_id, score, group_id, group_size, rank, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for c in choices {
        stmt.execute(params![run_id, c.face_id, c.score, c.group_id, c.group_size, c.rank, c.passed_over.map(|p| p.reason(n))])?;
    }
    Ok(())
}

/// A stored selection row, for the contact sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub score: f64,
    pub group_id: i64,
    pub group_size: i64,
    pub rank: Option<i64>,
    pub reason: Option<String>,
}

/// face id -> its selection row in this run (empty for a run without --best).
pub fn selection(conn: &Connection, run_id: RunId) -> Result<HashMap<i64, Selected>> {
    let mut stmt = conn.prepare("SELECT face_id, score, group_id, group_size, rank, reason FROM selection WHERE run_id = ?1")?;
    let rows = stmt.query_map([run_id], |r| {
        Ok((r.get(0)?, Selected { score: r.get(1)?, group_id: r.get(2)?, group_size: r.get(3)?, rank: r.get(4)?, reason: r.get(5)? }))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
