//! `facedb merge`: joins shard databases (`index --shard K/N`) into one, by content hash.
//!
//! Only index data travels: models, images, faces, embeddings, files (the stat cache, so a later
//! `index` of the merged folder reads nothing again), walk issues, and what `facedb forget` erased
//! (`forgotten`: a face forgotten in one shard is not brought back by another shard's copy of
//! its photo, nor kept where the target held it). Match-time data (refs, match
//! runs, decisions) belongs to the database it was made in; shard logs stay in the shards (the
//! merge logs one line per shard). Each shard is read through its own read-only connection, so
//! any number of shards join inside one transaction of the target (ATTACH allows 10, and not
//! inside a transaction).

use std::collections::HashMap;

use anyhow::{Context, Result};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{write, RunId};
use crate::pipeline::shard::Shard;

/// A model as its identity (the row id differs between databases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    pub kind: String,
    pub name: String,
    pub file_blake3: String,
    pub params_json: String,
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (file {}, params {})", self.kind, self.name, &self.file_blake3[..self.file_blake3.len().min(12)], self.params_json)
    }
}

/// What must agree between shards before they are joined.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub root: Option<String>,
    pub shard: Option<Shard>,
    /// Detector and embedder of the latest index (or merge) run.
    pub models: Option<(ModelKey, ModelKey)>,
    /// Status of the latest index run (`ok`, `failures`, `interrupted`, `running`, `error`).
    pub last_status: Option<String>,
}

pub fn provenance(conn: &Connection) -> Result<Provenance> {
    let root = conn.query_row("SELECT value FROM meta WHERE key = 'dataset_root'", [], |r| r.get::<_, String>(0)).optional()?;
    let last = conn
        .query_row(
            "SELECT detector_id, embedder_id, status FROM runs WHERE command IN ('index', 'merge') AND detector_id IS NOT NULL
             AND embedder_id IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)),
        )
        .optional()?;
    let (models, last_status) = match last {
        Some((d, e, status)) => (Some((model_key(conn, d)?, model_key(conn, e)?)), Some(status)),
        None => (None, None),
    };
    Ok(Provenance { root, shard: super::read::shard(conn)?, models, last_status })
}

fn model_key(conn: &Connection, id: i64) -> Result<ModelKey> {
    Ok(conn.query_row("SELECT kind, name, file_blake3, params_json FROM models WHERE id = ?1", [id], |r| {
        Ok(ModelKey { kind: r.get(0)?, name: r.get(1)?, file_blake3: r.get(2)?, params_json: r.get(3)? })
    })?)
}

pub fn set_dataset_root(conn: &Connection, root: &str) -> Result<()> {
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dataset_root', ?1)", [root])?;
    Ok(())
}

/// What one shard added to the target.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Merged {
    pub images_new: u64,
    pub images_known: u64,
    /// Contents the target held as failed that the shard has since indexed (a retried failure).
    pub images_replaced: u64,
    pub faces_new: u64,
    /// Faces of the shard not copied because a shard forgot them (`forgotten`).
    pub faces_forgotten: u64,
    pub files_changed: u64,
    pub files: u64,
}

/// Shard row ids -> target row ids.
#[derive(Default)]
struct IdMap {
    models: HashMap<i64, i64>,
    images: HashMap<i64, i64>,
}

const IMAGE_COLUMNS: &str = "blake3, size_bytes, width, height, format, orientation, status, error, stage_ms_json, created_at, \
     failure_kind, failure_env, rotation, quality_version, detector_id, embedder_id";
const FACE_COLUMNS: &str = "idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness, face_hash, detector_id";

/// Copies one shard's index data into `tx` (the target, inside its transaction). A content the
/// target already has keeps its row (same models, so the same faces); new contents come with
/// their faces and embeddings; every path takes the shard's row (the shard owns it). Merging
/// the same shard again changes no row.
pub fn merge_shard(tx: &Connection, shard: &Connection, owns: Shard, run_id: RunId) -> Result<Merged> {
    let mut map = IdMap::default();
    let mut stats = Merged::default();
    copy_models(tx, shard, &mut map)?;
    copy_images(tx, shard, run_id, &mut map, &mut stats)?;
    copy_files(tx, shard, run_id, &map, &mut stats)?;
    copy_walk_issues(tx, shard, owns, run_id)?;
    Ok(stats)
}

fn copy_models(tx: &Connection, shard: &Connection, map: &mut IdMap) -> Result<()> {
    let mut stmt = shard.prepare("SELECT id, kind, name, file_blake3, params_json FROM models")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
    for row in rows {
        let (id, kind, name, file, params): (i64, String, String, String, String) = row?;
        map.models.insert(id, write::ensure_model(tx, &kind, &name, &file, &params)?.0);
    }
    Ok(())
}

/// A model column's value in the target's ids (NULL stays NULL).
fn mapped(models: &HashMap<i64, i64>, v: &Value) -> Result<Value> {
    match v {
        Value::Integer(id) => models.get(id).map(|m| Value::Integer(*m)).context("a row names a model the shard does not hold"),
        other => Ok(other.clone()),
    }
}

fn copy_images(tx: &Connection, shard: &Connection, run_id: RunId, map: &mut IdMap, stats: &mut Merged) -> Result<()> {
    let mut stmt = shard.prepare(&format!("SELECT id, {IMAGE_COLUMNS} FROM images ORDER BY id"))?;
    let mut rows = stmt.query([])?;
    let n = IMAGE_COLUMNS.split(',').count();
    let placeholders = (1..=n + 1).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let insert = format!("INSERT INTO images ({IMAGE_COLUMNS}, run_id) VALUES ({placeholders})");
    while let Some(r) = rows.next()? {
        let shard_id: i64 = r.get(0)?;
        let blake3: String = r.get(1)?;
        let shard_ok = r.get::<_, String>(7)? == "ok";
        let known: Option<(i64, String)> = tx
            .prepare_cached("SELECT id, status FROM images WHERE blake3 = ?1")?
            .query_row([&blake3], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut values: Vec<Value> = (1..=n).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<_>>()?;
        // The last two columns are the detector and embedder.
        for v in values.iter_mut().skip(n - 2) {
            *v = mapped(&map.models, v)?;
        }
        values.push(Value::Integer(run_id.0));
        let id = match known {
            // Same models on both sides, so a known content has the same faces, unless the
            // target kept an earlier failure that the shard's retry has since indexed.
            Some((id, status)) if !(status == "failed" && shard_ok) => {
                map.images.insert(shard_id, id);
                stats.images_known += 1;
                continue;
            }
            Some((id, _)) => {
                replace_failed(tx, id, values)?;
                stats.images_replaced += 1;
                id
            }
            None => {
                tx.prepare_cached(&insert)?.execute(params_from_iter(values))?;
                stats.images_new += 1;
                tx.last_insert_rowid()
            }
        };
        map.images.insert(shard_id, id);
        let (copied, forgotten) = copy_faces(tx, shard, shard_id, id, &map.models)?;
        stats.faces_new += copied;
        stats.faces_forgotten += forgotten;
    }
    Ok(())
}

/// Overwrites a failed image row (keeping its id, which files point to) with the shard's row.
fn replace_failed(tx: &Connection, id: i64, values: Vec<Value>) -> Result<()> {
    let columns: Vec<String> = IMAGE_COLUMNS.split(',').map(|c| c.trim().to_string()).chain(["run_id".to_string()]).collect();
    let set = columns.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 1)).collect::<Vec<_>>().join(", ");
    let mut values = values;
    values.push(Value::Integer(id));
    tx.execute(&format!("UPDATE images SET {set} WHERE id = ?{}", columns.len() + 1), params_from_iter(values))?;
    Ok(())
}

/// Copies an image's faces (of every detector it was seen by) and their embeddings, except the
/// faces forgotten (the target holds every shard's `forgotten` rows by now). Returns (copied, forgotten).
fn copy_faces(tx: &Connection, shard: &Connection, shard_image: i64, image: i64, models: &HashMap<i64, i64>) -> Result<(u64, u64)> {
    let mut faces = shard.prepare_cached(&format!("SELECT id, {FACE_COLUMNS} FROM faces WHERE image_id = ?1 ORDER BY id"))?;
    let mut rows = faces.query([shard_image])?;
    let n = FACE_COLUMNS.split(',').count();
    let placeholders = (1..=n + 1).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let insert = format!("INSERT INTO faces ({FACE_COLUMNS}, image_id) VALUES ({placeholders})");
    let (mut count, mut forgotten) = (0, 0);
    while let Some(r) = rows.next()? {
        let shard_face: i64 = r.get(0)?;
        if super::forget::is_forgotten(tx, image, [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?])? {
            forgotten += 1;
            continue;
        }
        let mut values: Vec<Value> = (1..=n).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<_>>()?;
        values[n - 1] = mapped(models, &values[n - 1])?;
        values.push(Value::Integer(image));
        tx.prepare_cached(&insert)?.execute(params_from_iter(values))?;
        let face = tx.last_insert_rowid();
        count += 1;
        let mut emb = shard.prepare_cached("SELECT model_id, vector FROM embeddings WHERE face_id = ?1 ORDER BY model_id")?;
        let vectors = emb.query_map([shard_face], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        for v in vectors {
            let (model, vector) = v?;
            let model = models.get(&model).context("an embedding names a model the shard does not hold")?;
            tx.prepare_cached("INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, ?2, ?3)")?
                .execute(params![face, model, vector])?;
        }
    }
    Ok((count, forgotten))
}

/// Copies the shard's `forgotten` rows the target does not hold yet (before any shard's faces,
/// so no shard brings back a face another forgot). Returns how many were new.
pub fn copy_forgotten(tx: &Connection, shard: &Connection) -> Result<u64> {
    let mut stmt = shard.prepare("SELECT blake3, x, y, w, h, at FROM forgotten ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut added = 0;
    while let Some(r) = rows.next()? {
        let (blake3, b, at): (String, [Option<f64>; 4], String) = (r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?], r.get(5)?);
        added += tx
            .prepare_cached(
                "INSERT INTO forgotten (blake3, x, y, w, h, at) SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE NOT EXISTS (SELECT 1 FROM forgotten WHERE blake3 = ?1 AND x IS ?2 AND y IS ?3 AND w IS ?4 AND h IS ?5)",
            )?
            .execute(params![blake3, b[0], b[1], b[2], b[3], at])? as u64;
    }
    Ok(added)
}

/// Every path of the shard takes the shard's row (stat cache, image, error, missing); a row
/// that already says the same is not written, so a second merge changes nothing.
fn copy_files(tx: &Connection, shard: &Connection, run_id: RunId, map: &IdMap, stats: &mut Merged) -> Result<()> {
    let mut stmt =
        shard.prepare("SELECT path, path_raw, image_id, size, mtime_ns, inode, checked_ns, error, missing, ctime_ns FROM files")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let image: Option<i64> = r.get(2)?;
        let image = image.map(|id| map.images.get(&id).copied().context("a file names an image the shard does not hold")).transpose()?;
        let changed = tx
            .prepare_cached(
                "INSERT INTO files (path, path_raw, image_id, size, mtime_ns, inode, checked_ns, error, first_run, last_run, missing, ctime_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)
                 ON CONFLICT (path) DO UPDATE SET path_raw = excluded.path_raw, image_id = excluded.image_id, size = excluded.size,
                     mtime_ns = excluded.mtime_ns, inode = excluded.inode, checked_ns = excluded.checked_ns, error = excluded.error,
                     last_run = excluded.last_run, missing = excluded.missing, ctime_ns = excluded.ctime_ns
                 WHERE (files.path_raw, files.image_id, files.size, files.mtime_ns, files.inode, files.checked_ns, files.error, files.missing,
                        files.ctime_ns)
                     IS NOT (excluded.path_raw, excluded.image_id, excluded.size, excluded.mtime_ns, excluded.inode, excluded.checked_ns,
                             excluded.error, excluded.missing, excluded.ctime_ns)",
            )?
            .execute(params![
                r.get::<_, String>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                image,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
                run_id,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<i64>>(9)?
            ])?;
        stats.files += 1;
        stats.files_changed += changed as u64;
    }
    Ok(())
}

/// The shard's walk issues replace the target's for the paths the shard owns (fixed ones go).
fn copy_walk_issues(tx: &Connection, shard: &Connection, owns: Shard, run_id: RunId) -> Result<()> {
    let mine: Vec<String> = {
        let mut stmt = tx.prepare("SELECT path FROM walk_issues")?;
        let paths = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        paths.into_iter().filter(|p| !p.is_empty() && owns.owns(p)).collect()
    };
    let theirs: Vec<(String, String, String)> = {
        let mut stmt = shard.prepare("SELECT path, kind, reason FROM walk_issues WHERE path <> ''")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for p in &mine {
        if !theirs.iter().any(|t| &t.0 == p) {
            tx.execute("DELETE FROM walk_issues WHERE path = ?1", [p])?;
        }
    }
    for (path, kind, reason) in &theirs {
        tx.execute(
            "INSERT INTO walk_issues (path, kind, reason, run_id) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (path) DO UPDATE SET kind = excluded.kind, reason = excluded.reason, run_id = excluded.run_id
             WHERE (walk_issues.kind, walk_issues.reason) IS NOT (excluded.kind, excluded.reason)",
            params![path, kind, reason, run_id],
        )?;
    }
    Ok(())
}
