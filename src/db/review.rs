//! What the review page and the contact sheet read and write beyond `read.rs` (issue 14): each
//! match run's stored histogram (migration 0008), its name, its references and the decisions
//! made about its faces.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::decisions::{self, Verdict};
use super::RunId;
use crate::histogram::RunHistogram;

pub fn insert_histogram(conn: &Connection, run_id: RunId, h: &RunHistogram) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO match_histograms (run_id, bin_width, counts_json, non_finite, within) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, h.bin_width, serde_json::to_string(&h.counts)?, h.non_finite as i64, h.within as i64],
    )?;
    Ok(())
}

/// The run's stored histogram; None for runs made before migration 0008 (or `--all` without a
/// reference, which has no distances).
pub fn histogram(conn: &Connection, run_id: RunId) -> Result<Option<RunHistogram>> {
    let row: Option<(f64, String, i64, i64)> = conn
        .query_row("SELECT bin_width, counts_json, non_finite, within FROM match_histograms WHERE run_id = ?1", [run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((bin_width, counts, non_finite, within)) = row else { return Ok(None) };
    // A row edited by hand into something unreadable is treated as absent, not fatal.
    let Ok(counts) = serde_json::from_str::<Vec<u64>>(&counts) else { return Ok(None) };
    Ok(Some(RunHistogram { bin_width, counts, non_finite: non_finite.max(0) as u64, within: within.max(0) as u64 }))
}

pub fn set_run_name(conn: &Connection, run_id: RunId, name: &str) -> Result<()> {
    conn.execute("UPDATE match_runs SET name = ?2 WHERE run_id = ?1", params![run_id, name])?;
    Ok(())
}

/// A run named by number or by `match --name` (the latest run of that name).
pub fn resolve_run(conn: &Connection, run: &str) -> Result<RunId> {
    if let Ok(id) = run.parse::<i64>() {
        return Ok(RunId(id));
    }
    let id: Option<RunId> =
        conn.query_row("SELECT max(run_id) AS run_id FROM match_runs WHERE name = ?1", [run], |r| r.get("run_id")).optional()?.flatten();
    match id {
        Some(id) => Ok(id),
        None => bail!("no match run named {run:?}; `facedb report` lists the runs (name one with `facedb match --name`)"),
    }
}

/// The arguments a match run was started with (runs.args_json).
pub fn run_args(conn: &Connection, run_id: RunId) -> Result<serde_json::Value> {
    let s: Option<String> = conn.query_row("SELECT args_json FROM runs WHERE id = ?1", [run_id], |r| r.get(0)).optional()?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null))
}

/// A reference of a run, with where its face can be shown from.
#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    pub id: i64,
    pub path: String,
    pub negative: bool,
    /// The stored face it is (`face:ID` references).
    pub face_id: Option<i64>,
    /// A dataset photo with the same content, if the reference photo is one.
    pub image_id: Option<i64>,
    pub face: [f64; 4],
}

pub fn run_refs(conn: &Connection, run_id: RunId) -> Result<Vec<RunRef>> {
    let mut stmt = conn.prepare(
        "SELECT r.id, r.path, j.neg, r.x, r.y, r.w, r.h, (SELECT i.id FROM images i WHERE i.blake3 = r.blake3)
         FROM (SELECT value AS id, 0 AS neg FROM json_each((SELECT ref_ids_json FROM match_runs WHERE run_id = ?1))
               UNION ALL SELECT value, 1 FROM json_each((SELECT neg_ref_ids_json FROM match_runs WHERE run_id = ?1))) j
         JOIN refs r ON r.id = j.id",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        let path: String = r.get(1)?;
        Ok(RunRef {
            id: r.get(0)?,
            face_id: path.strip_prefix("face:").and_then(|s| s.parse().ok()),
            path,
            negative: r.get(2)?,
            face: [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
            image_id: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Where a stored face is: its photo's path, rotation when indexed, and box.
#[derive(Debug, Clone, Serialize)]
pub struct FacePlace {
    pub image_id: i64,
    pub path: Option<String>,
    pub rotation: u16,
    pub face: [f64; 4],
}

pub fn face_place(conn: &Connection, face_id: i64) -> Result<Option<FacePlace>> {
    Ok(conn
        .query_row(
            "SELECT fc.image_id, (SELECT min(f.path) FROM files f WHERE f.image_id = fc.image_id AND f.missing = 0), i.rotation, fc.x, fc.y, fc.w, fc.h
             FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1",
            [face_id],
            |r| Ok(FacePlace { image_id: r.get(0)?, path: r.get(1)?, rotation: r.get(2)?, face: [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?] }),
        )
        .optional()?)
}

/// A photo's present path and rotation when indexed.
pub fn image_place(conn: &Connection, image_id: i64) -> Result<Option<(String, u16)>> {
    Ok(conn
        .query_row(
            "SELECT (SELECT min(f.path) FROM files f WHERE f.image_id = i.id AND f.missing = 0), i.rotation FROM images i WHERE i.id = ?1",
            [image_id],
            |r| Ok((r.get::<_, Option<String>>(0)?, r.get(1)?)),
        )
        .optional()?
        .and_then(|(p, rot)| p.map(|p| (p, rot))))
}

/// The standing verdict on each face for the run's person (latest decision wins).
pub fn verdicts(conn: &Connection, run_id: RunId) -> Result<BTreeMap<i64, (Verdict, &'static str)>> {
    let person = decisions::run_person(conn, run_id)?;
    Ok(decisions::applying(conn, &person)?.into_iter().map(|a| (a.face_id, (a.verdict, a.source.as_str()))).collect())
}

/// Faces accepted on the review page for this run: the ones "apply" adds as references.
pub fn accepted_in_review(conn: &Connection, run_id: RunId) -> Result<Vec<i64>> {
    Ok(verdicts(conn, run_id)?.into_iter().filter(|(_, (v, s))| *v == Verdict::Accept && *s == "review").map(|(f, _)| f).collect())
}

/// What a result row's badges need beyond `read::ResultRow`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResultExtras {
    /// The source rectangle the crop was cut from (may reach past the photo: padding).
    pub crop: Option<[i64; 4]>,
    /// The crop file's size.
    pub crop_out: Option<[i64; 2]>,
    /// The photo's size as indexed (turned by its rotation).
    pub photo: Option<[i64; 2]>,
    pub same_face_copies: i64,
}

pub fn result_extras(conn: &Connection, run_id: RunId) -> Result<BTreeMap<i64, ResultExtras>> {
    let mut stmt = conn.prepare(
        "SELECT r.face_id, r.crop_x, r.crop_y, r.crop_w, r.crop_h, r.crop_out_w, r.crop_out_h, i.width, i.height, i.rotation,
                coalesce(r.same_face_copies, 0)
         FROM match_results r JOIN images i ON i.id = r.image_id WHERE r.run_id = ?1",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        let crop =
            match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?, r.get::<_, Option<i64>>(4)?) {
                (Some(x), Some(y), Some(w), Some(h)) => Some([x, y, w, h]),
                _ => None,
            };
        let crop_out = r.get::<_, Option<i64>>(5)?.zip(r.get::<_, Option<i64>>(6)?).map(|(w, h)| [w, h]);
        let (w, h, rot): (Option<i64>, Option<i64>, i64) = (r.get(7)?, r.get(8)?, r.get(9)?);
        let photo = w.zip(h).map(|(w, h)| if rot % 180 == 90 { [h, w] } else { [w, h] });
        Ok((r.get::<_, i64>(0)?, ResultExtras { crop, crop_out, photo, same_face_copies: r.get(10)? }))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn run_name(conn: &Connection, run_id: RunId) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT name FROM match_runs WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?.flatten())
}
