//! Queries behind index (caches), match (embeddings, references) and report.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::blob_to_vector;
use crate::matching::FaceRow;
use crate::models::sface::EMBEDDING_DIM;
use crate::pipeline::shard::Shard;

/// The stat cache row of one path.
#[derive(Debug, Clone)]
pub struct CachedFile {
    pub image_id: Option<i64>,
    pub size: i64,
    pub mtime_ns: i64,
    pub inode: i64,
    pub checked_ns: i64,
    pub missing: bool,
}

/// All file rows in one scan (a no-op re-index touches SQLite with this one query).
pub fn file_cache(conn: &Connection) -> Result<HashMap<String, CachedFile>> {
    let mut stmt = conn.prepare("SELECT path, image_id, size, mtime_ns, inode, checked_ns, missing FROM files")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            CachedFile {
                image_id: r.get(1)?,
                size: r.get(2)?,
                mtime_ns: r.get(3)?,
                inode: r.get(4)?,
                checked_ns: r.get(5)?,
                missing: r.get(6)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// blake3 -> image id for all known content.
pub fn image_hashes(conn: &Connection) -> Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT blake3, id FROM images")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every face of every decoded photo that still has a present file (for `match --all`), ordered
/// by photo.
pub fn all_faces(conn: &Connection) -> Result<Vec<FaceRow>> {
    let mut stmt = conn.prepare(
        "SELECT f.image_id, f.id, f.size_px, f.sharpness, f.yaw, f.score FROM faces f
         JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id
         WHERE EXISTS (SELECT 1 FROM files p WHERE p.image_id = f.image_id AND p.missing = 0) ORDER BY f.image_id, f.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(FaceRow { image_id: r.get(0)?, face_id: r.get(1)?, size_px: r.get(2)?, sharpness: r.get(3)?, yaw: r.get(4)?, score: r.get(5)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct RefRow {
    pub id: i64,
    pub blake3: String,
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub faces_in_photo: i64,
    pub face: [f32; 4],
    #[serde(skip)]
    pub vector: Vec<f32>,
}

pub fn find_ref(conn: &Connection, blake3: &str, detector_id: i64, embedder_id: i64) -> Result<Option<RefRow>> {
    let row = conn
        .query_row(
            "SELECT id, blake3, path, width, height, faces_in_photo, x, y, w, h, vector FROM refs
             WHERE blake3 = ?1 AND detector_id = ?2 AND embedder_id = ?3",
            params![blake3, detector_id, embedder_id],
            |r| {
                Ok((
                    RefRow {
                        id: r.get(0)?,
                        blake3: r.get(1)?,
                        path: r.get(2)?,
                        width: r.get(3)?,
                        height: r.get(4)?,
                        faces_in_photo: r.get(5)?,
                        face: [r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?],
                        vector: Vec::new(),
                    },
                    r.get::<_, Vec<u8>>(10)?,
                ))
            },
        )
        .optional()?;
    Ok(row.and_then(|(mut refrow, blob)| {
        refrow.vector = blob_to_vector(&blob).filter(|v| v.len() == EMBEDDING_DIM)?;
        Some(refrow)
    }))
}

/// What cropping and the manifest need about a face.
#[derive(Debug, Clone)]
pub struct FaceInfo {
    pub face_id: i64,
    pub image_id: i64,
    pub blake3: String,
    pub width: u32,
    pub height: u32,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
    pub size_px: f32,
    pub sharpness: f32,
    pub yaw: f32,
    pub roll: f32,
    pub brightness: f32,
    pub landmarks: [[f32; 2]; 5],
    /// Degrees the photo was turned when indexed (face coordinates are in the turned image).
    pub rotation: u16,
    /// Present paths to the photo: (relative path, raw bytes when not UTF-8).
    pub paths: Vec<(String, Option<Vec<u8>>)>,
}

pub fn face_info(conn: &Connection, face_id: i64) -> Result<FaceInfo> {
    let mut info = conn.query_row(
        "SELECT fc.id, fc.image_id, i.blake3, i.width, i.height, fc.x, fc.y, fc.w, fc.h, fc.score, fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness, fc.landmarks_json, i.rotation
         FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1",
        [face_id],
        |r| {
            Ok(FaceInfo {
                face_id: r.get(0)?,
                image_id: r.get(1)?,
                blake3: r.get(2)?,
                width: r.get(3)?,
                height: r.get(4)?,
                x: r.get(5)?,
                y: r.get(6)?,
                w: r.get(7)?,
                h: r.get(8)?,
                score: r.get(9)?,
                size_px: r.get(10)?,
                sharpness: r.get(11)?,
                yaw: r.get(12)?,
                roll: r.get(13)?,
                brightness: r.get(14)?,
                landmarks: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or([[0.0; 2]; 5]),
                rotation: r.get(16)?,
                paths: Vec::new(),
            })
        },
    )?;
    let mut stmt = conn.prepare_cached("SELECT path, path_raw FROM files WHERE image_id = ?1 AND missing = 0 ORDER BY path")?;
    info.paths = stmt.query_map([info.image_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(info)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Totals {
    pub files: i64,
    pub images: i64,
    pub images_ok: i64,
    pub failed: i64,
    pub faces: i64,
    pub no_face: i64,
    pub several_faces: i64,
}

pub fn totals(conn: &Connection) -> Result<Totals> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM files WHERE missing = 0),
                (SELECT count(*) FROM images),
                (SELECT count(*) FROM images WHERE status = 'ok'),
                (SELECT count(*) FROM files f LEFT JOIN images i ON i.id = f.image_id WHERE f.missing = 0 AND (f.image_id IS NULL OR i.status = 'failed')),
                (SELECT count(*) FROM faces),
                (SELECT count(*) FROM photos_v WHERE status = 'ok' AND face_count = 0),
                (SELECT count(*) FROM photos_v WHERE status = 'ok' AND face_count > 1)",
        [],
        |r| Ok(Totals { files: r.get(0)?, images: r.get(1)?, images_ok: r.get(2)?, failed: r.get(3)?, faces: r.get(4)?, no_face: r.get(5)?, several_faces: r.get(6)? }),
    )?)
}

/// (path, face count) of present photos with exactly zero or more than one face.
pub fn photos_by_face_count(conn: &Connection, several: bool) -> Result<Vec<(String, i64)>> {
    let cond = if several { "face_count > 1" } else { "face_count = 0" };
    let mut stmt = conn.prepare(&format!(
        "SELECT f.path, p.face_count FROM photos_v p JOIN files f ON f.image_id = p.image_id AND f.missing = 0
         WHERE p.status = 'ok' AND p.{cond} ORDER BY f.path"
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// (path, error) of present files that could not be read or decoded.
pub fn failed_files(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT f.path, coalesce(f.error, i.error, 'unknown error') FROM files f LEFT JOIN images i ON i.id = f.image_id
         WHERE f.missing = 0 AND (f.image_id IS NULL OR i.status = 'failed') ORDER BY f.path",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// image id -> its first present path (one scan), for listings.
pub fn image_paths(conn: &Connection) -> Result<HashMap<i64, String>> {
    // Scanned in path order (the primary key), so the first path seen per image is the smallest.
    let mut stmt = conn.prepare("SELECT image_id, path FROM files WHERE missing = 0 AND image_id IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    let mut out: HashMap<i64, String> = HashMap::new();
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_insert(r.get(1)?);
    }
    Ok(out)
}

/// image id -> its first present path, for just these images (a handful of lookups, or one
/// scan when asked for many).
pub fn paths_of_images(conn: &Connection, ids: &[i64]) -> Result<HashMap<i64, String>> {
    if ids.len() > 20_000 {
        let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
        let mut all = image_paths(conn)?;
        all.retain(|id, _| wanted.contains(id));
        return Ok(all);
    }
    let mut stmt = conn.prepare_cached("SELECT min(path) FROM files WHERE image_id = ?1 AND missing = 0")?;
    let mut out = HashMap::new();
    for &id in ids {
        if let Some(path) = stmt.query_row([id], |r| r.get::<_, Option<String>>(0))? {
            out.insert(id, path);
        }
    }
    Ok(out)
}

/// A match run as `report` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MatchRunSummary {
    pub run_id: i64,
    pub started_at: String,
    pub mode: String,
    pub threshold: f64,
    pub combine: String,
    pub out_dir: String,
    pub references: Vec<String>,
    pub negatives: Vec<String>,
    pub photos: i64,
    pub matched: i64,
    pub rejected: i64,
    pub ambiguous: i64,
}

pub fn match_runs(conn: &Connection) -> Result<Vec<MatchRunSummary>> {
    let mut stmt = conn.prepare(
        "SELECT m.run_id, r.started_at, m.mode, m.threshold, m.combine, m.out_dir, m.ref_ids_json, m.neg_ref_ids_json, m.photos, m.matched, m.rejected, m.ambiguous
         FROM match_runs m JOIN runs r ON r.id = m.run_id ORDER BY m.run_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            MatchRunSummary {
                run_id: r.get(0)?,
                started_at: r.get(1)?,
                mode: r.get(2)?,
                threshold: r.get(3)?,
                combine: r.get(4)?,
                out_dir: r.get(5)?,
                references: Vec::new(),
                negatives: Vec::new(),
                photos: r.get(8)?,
                matched: r.get(9)?,
                rejected: r.get(10)?,
                ambiguous: r.get(11)?,
            },
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (mut m, pos, neg) = row?;
        m.references = ref_paths(conn, &pos)?;
        m.negatives = ref_paths(conn, &neg)?;
        out.push(m);
    }
    Ok(out)
}

fn ref_paths(conn: &Connection, ids_json: &str) -> Result<Vec<String>> {
    let ids: Vec<i64> = serde_json::from_str(ids_json).unwrap_or_default();
    let mut stmt = conn.prepare_cached("SELECT path FROM refs WHERE id = ?1")?;
    ids.iter().map(|id| Ok(stmt.query_row([id], |r| r.get(0)).optional()?.unwrap_or_else(|| format!("ref #{id}")))).collect()
}

/// One stored decision with what a contact sheet shows.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub face_id: i64,
    pub image_id: i64,
    pub path: Option<String>,
    pub distance: Option<f64>,
    pub runner_up_distance: Option<f64>,
    pub ambiguous: bool,
    pub pass: i64,
    pub decision: String,
    pub reason: Option<String>,
    pub crop_path: Option<String>,
    pub face: [f64; 4],
    pub size_px: f64,
    pub sharpness: f64,
    pub yaw: f64,
    pub score: f64,
    /// Degrees the photo was turned when indexed (face coordinates are in the turned image).
    pub rotation: u16,
}

pub fn match_results(conn: &Connection, run_id: i64) -> Result<Vec<ResultRow>> {
    let mut stmt = conn.prepare(
        "SELECT r.face_id, r.image_id, (SELECT min(f.path) FROM files f WHERE f.image_id = r.image_id AND f.missing = 0),
                r.distance, r.runner_up_distance, r.ambiguous, r.pass, r.decision, r.reason, r.crop_path,
                fc.x, fc.y, fc.w, fc.h, fc.size_px, fc.sharpness, fc.yaw, fc.score,
                (SELECT i.rotation FROM images i WHERE i.id = r.image_id)
         FROM match_results r JOIN faces fc ON fc.id = r.face_id WHERE r.run_id = ?1
         ORDER BY r.distance IS NULL, r.distance, r.face_id",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        Ok(ResultRow {
            face_id: r.get(0)?,
            image_id: r.get(1)?,
            path: r.get(2)?,
            distance: r.get(3)?,
            runner_up_distance: r.get(4)?,
            ambiguous: r.get(5)?,
            pass: r.get(6)?,
            decision: r.get(7)?,
            reason: r.get(8)?,
            crop_path: r.get(9)?,
            face: [r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?],
            size_px: r.get(14)?,
            sharpness: r.get(15)?,
            yaw: r.get(16)?,
            score: r.get(17)?,
            rotation: r.get(18)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Shorter-side sizes and sharpness of every face, for distributions.
pub fn face_measures(conn: &Connection) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut stmt = conn.prepare("SELECT size_px, sharpness FROM faces")?;
    let rows: Vec<(f64, f64)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().unzip())
}

/// Everything stored about one image, for `facedb info`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub image_id: i64,
    pub blake3: String,
    pub size_bytes: i64,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub format: Option<String>,
    pub orientation: Option<i64>,
    pub status: String,
    pub error: Option<String>,
    pub indexed_at: String,
    /// The JPEG decoder whose pixels the faces were found in (`None`: not a JPEG).
    pub jpeg_decoder: Option<String>,
    pub paths: Vec<String>,
    pub faces: Vec<FaceDetail>,
    pub logs: Vec<LogLine>,
    pub match_decisions: Vec<MatchLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatchLine {
    pub run_id: i64,
    pub at: String,
    pub face_id: i64,
    pub distance: Option<f64>,
    pub decision: String,
    pub reason: Option<String>,
    pub crop_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaceDetail {
    pub face_id: i64,
    pub idx: i64,
    pub box_xywh: [f64; 4],
    pub score: f64,
    pub landmarks: serde_json::Value,
    pub size_px: f64,
    pub sharpness: f64,
    pub yaw: f64,
    pub roll: f64,
    pub brightness: f64,
    pub embedded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub run_id: i64,
    pub command: String,
    pub at: String,
    pub level: String,
    pub path: Option<String>,
    pub message: String,
}

pub fn image_id_for_path(conn: &Connection, rel: &str) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT image_id FROM files WHERE path = ?1", [rel], |r| r.get(0)).optional()?.flatten())
}

pub fn image_id_for_hash(conn: &Connection, blake3: &str) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT id FROM images WHERE blake3 = ?1", [blake3], |r| r.get(0)).optional()?)
}

pub fn image_id_for_face(conn: &Connection, face_id: i64) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT image_id FROM faces WHERE id = ?1", [face_id], |r| r.get(0)).optional()?)
}

/// A `logs` row joined with its run: (run_id, command, at, level, path, message).
fn log_line(r: &rusqlite::Row) -> rusqlite::Result<LogLine> {
    Ok(LogLine { run_id: r.get(0)?, command: r.get(1)?, at: r.get(2)?, level: r.get(3)?, path: r.get(4)?, message: r.get(5)? })
}

/// Log lines about a path that never became an image (unreadable files).
pub fn logs_for_path(conn: &Connection, rel: &str) -> Result<Vec<LogLine>> {
    let mut stmt = conn.prepare(
        "SELECT l.run_id, r.command, l.at, l.level, l.path, l.message FROM logs l JOIN runs r ON r.id = l.run_id WHERE l.path = ?1 ORDER BY l.id",
    )?;
    let rows = stmt.query_map([rel], log_line)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn image_info(conn: &Connection, image_id: i64) -> Result<ImageInfo> {
    let mut info = conn.query_row(
        "SELECT id, blake3, size_bytes, width, height, format, orientation, status, error, created_at,
                CASE WHEN format = 'jpeg' THEN (SELECT coalesce(json_extract(m.params_json, '$.jpeg'), 'image-rs') FROM models m WHERE m.id = images.detector_id) END
         FROM images WHERE id = ?1",
        [image_id],
        |r| {
            Ok(ImageInfo {
                image_id: r.get(0)?,
                blake3: r.get(1)?,
                size_bytes: r.get(2)?,
                width: r.get(3)?,
                height: r.get(4)?,
                format: r.get(5)?,
                orientation: r.get(6)?,
                status: r.get(7)?,
                error: r.get(8)?,
                indexed_at: r.get(9)?,
                jpeg_decoder: r.get(10)?,
                paths: Vec::new(),
                faces: Vec::new(),
                logs: Vec::new(),
                match_decisions: Vec::new(),
            })
        },
    )?;
    let mut stmt =
        conn.prepare("SELECT path || CASE WHEN missing = 1 THEN ' (missing)' ELSE '' END FROM files WHERE image_id = ?1 ORDER BY path")?;
    info.paths = stmt.query_map([image_id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT fc.id, fc.idx, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json, fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness,
                EXISTS (SELECT 1 FROM embeddings e WHERE e.face_id = fc.id)
         FROM faces fc WHERE fc.image_id = ?1 ORDER BY fc.idx",
    )?;
    info.faces = stmt
        .query_map([image_id], |r| {
            Ok(FaceDetail {
                face_id: r.get(0)?,
                idx: r.get(1)?,
                box_xywh: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                score: r.get(6)?,
                landmarks: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
                size_px: r.get(8)?,
                sharpness: r.get(9)?,
                yaw: r.get(10)?,
                roll: r.get(11)?,
                brightness: r.get(12)?,
                embedded: r.get(13)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT l.run_id, r.command, l.at, l.level, l.path, l.message FROM logs l JOIN runs r ON r.id = l.run_id
         WHERE l.image_id = ?1
            OR l.path IN (SELECT path FROM files WHERE image_id = ?1)
         ORDER BY l.id",
    )?;
    info.logs = stmt.query_map([image_id], log_line)?.collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT m.run_id, r.started_at, m.face_id, m.distance, m.decision, m.reason, m.crop_path FROM match_results m JOIN runs r ON r.id = m.run_id
         WHERE m.image_id = ?1 ORDER BY m.run_id, m.face_id",
    )?;
    info.match_decisions = stmt
        .query_map([image_id], |r| {
            Ok(MatchLine {
                run_id: r.get(0)?,
                at: r.get(1)?,
                face_id: r.get(2)?,
                distance: r.get(3)?,
                decision: r.get(4)?,
                reason: r.get(5)?,
                crop_path: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(info)
}

/// This database's random id (migration 0002), which output folders record as their owner.
pub fn database_id(conn: &Connection) -> Result<String> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = 'database_id'", [], |r| r.get(0))?)
}

/// (embeddings made by `embedder_id`, all embeddings).
pub fn embedding_counts(conn: &Connection, embedder_id: i64) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM embeddings WHERE model_id = ?1), (SELECT count(*) FROM embeddings)",
        [embedder_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// A failed image and why it failed (kind and environment are NULL for failures stored before
/// migration 0004).
#[derive(Debug, Clone)]
pub struct FailedImage {
    pub image_id: i64,
    pub blake3: String,
    pub kind: Option<String>,
    pub env: Option<String>,
}

pub fn failed_images(conn: &Connection) -> Result<Vec<FailedImage>> {
    let mut stmt = conn.prepare("SELECT id, blake3, failure_kind, failure_env FROM images WHERE status = 'failed'")?;
    let rows = stmt.query_map([], |r| Ok(FailedImage { image_id: r.get(0)?, blake3: r.get(1)?, kind: r.get(2)?, env: r.get(3)? }))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An image whose faces were made by another model than the current one.
#[derive(Debug, Clone)]
pub struct StaleImage {
    pub image_id: i64,
    pub blake3: String,
    /// The detector file changed: detect again. Otherwise the embedder or the quality measure
    /// did: embed and score the stored faces again.
    pub redetect: bool,
    /// Degrees the photo was turned when indexed.
    pub rotation: u16,
}

/// JPEG images detected by this detector file from another JPEG decoder's pixels than `jpeg`
/// (`decode::Decoders::jpeg_identity`; databases from before it was recorded used the image crate).
pub fn jpegs_by_other_decoder(conn: &Connection, detector_hash: &str, jpeg: &str) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM images i JOIN models m ON m.id = i.detector_id
         WHERE i.status = 'ok' AND i.format = 'jpeg' AND m.file_blake3 = ?1 AND coalesce(json_extract(m.params_json, '$.jpeg'), 'image-rs') <> ?2",
        params![detector_hash, jpeg],
        |r| r.get(0),
    )?)
}

/// Decoded images whose detector file is not `detector_hash`, or whose faces were not embedded
/// by `embedder_id`. Written as ORs of index lookups, so a no-op re-index does not scan.
pub fn stale_images(conn: &Connection, detector_hash: &str, embedder_id: i64) -> Result<Vec<StaleImage>> {
    let mut stmt = conn.prepare(
        "SELECT i.id, i.blake3, i.detector_id IN (SELECT id FROM models WHERE kind = 'detector' AND file_blake3 <> ?1), i.rotation FROM images i
         WHERE i.status = 'ok' AND (i.detector_id IN (SELECT id FROM models WHERE kind = 'detector' AND file_blake3 <> ?1)
             OR i.embedder_id < ?2 OR i.embedder_id > ?2 OR i.embedder_id IS NULL OR i.quality_version < ?3)",
    )?;
    let rows = stmt.query_map(params![detector_hash, embedder_id, crate::pipeline::quality::QUALITY_VERSION], |r| {
        Ok(StaleImage { image_id: r.get(0)?, blake3: r.get(1)?, redetect: r.get(2)?, rotation: r.get(3)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// (face id, detection) of an image's current faces (those of its detector), to embed and
/// score again.
pub fn stored_detections(conn: &Connection, image_id: i64) -> Result<Vec<(i64, crate::pipeline::detect::Detection)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fc.id, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json FROM faces fc
         JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
         WHERE fc.image_id = ?1 ORDER BY fc.idx",
    )?;
    let rows = stmt.query_map([image_id], |r| {
        Ok((
            r.get::<_, i64>("id")?,
            [r.get::<_, f32>("x")?, r.get("y")?, r.get("w")?, r.get("h")?, r.get("score")?],
            r.get::<_, String>("landmarks_json")?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, [x, y, w, h, score], json) = row?;
        // A face whose stored landmarks do not parse is left without a new embedding.
        if let Ok(landmarks) = serde_json::from_str(&json) {
            out.push((id, crate::pipeline::detect::Detection { x, y, w, h, score, landmarks }));
        }
    }
    Ok(out)
}

/// A path the last walk could not index: (path, 'error' | 'skipped', reason).
pub fn walk_issues(conn: &Connection) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare("SELECT path, kind, reason FROM walk_issues ORDER BY path")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Rows whose key may not be exact (stored with raw bytes, or holding a backslash).
pub fn files_to_rekey(conn: &Connection) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    let mut stmt = conn.prepare("SELECT path, path_raw FROM files WHERE path_raw IS NOT NULL OR instr(path, '\\') > 0")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the files rows were already moved to exact keys (see `write::mark_path_keys_exact`).
pub fn path_keys_exact(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'path_keys' AND value = 'exact')", [], |r| r.get(0))?)
}

/// The shard (`index --shard K/N`) this database holds; `None` for a whole folder.
pub fn shard(conn: &Connection) -> Result<Option<Shard>> {
    let text: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = 'shard'", [], |r| r.get(0)).optional()?;
    text.map(|t| Shard::parse(&t).map_err(|e| anyhow::anyhow!("meta.shard: {e}"))).transpose()
}

pub fn has_files(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM files)", [], |r| r.get(0))?)
}
