//! Queries behind index (caches), match (embeddings, references) and report.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::ids::{ModelId, RunId};
use super::rows::{self, FromRow};
use super::states::{DecisionKind, LogLevel};
use super::{blob_to_vector, Embedder};
use crate::matching::FaceRow;
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
    /// `None`: the row was written before facedb recorded ctimes (migration 0014).
    pub ctime_ns: Option<i64>,
}

impl FromRow for CachedFile {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(CachedFile {
            image_id: r.get("image_id")?,
            size: r.get("size")?,
            mtime_ns: r.get("mtime_ns")?,
            inode: r.get("inode")?,
            checked_ns: r.get("checked_ns")?,
            missing: r.get("missing")?,
            ctime_ns: r.get("ctime_ns")?,
        })
    }
}

/// All file rows in one scan (a no-op re-index touches SQLite with this one query). Columns are
/// looked up by name once for the statement, not once per row.
pub fn file_cache(conn: &Connection) -> Result<HashMap<String, CachedFile>> {
    let mut stmt = conn.prepare("SELECT path, image_id, size, mtime_ns, inode, checked_ns, missing, ctime_ns FROM files")?;
    let ix = |name: &str| stmt.column_index(name);
    let (path, image_id, size, mtime_ns, inode, checked_ns, missing, ctime_ns) =
        (ix("path")?, ix("image_id")?, ix("size")?, ix("mtime_ns")?, ix("inode")?, ix("checked_ns")?, ix("missing")?, ix("ctime_ns")?);
    let mut out = HashMap::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let c = CachedFile {
            image_id: r.get(image_id)?,
            size: r.get(size)?,
            mtime_ns: r.get(mtime_ns)?,
            inode: r.get(inode)?,
            checked_ns: r.get(checked_ns)?,
            missing: r.get(missing)?,
            ctime_ns: r.get(ctime_ns)?,
        };
        out.insert(r.get(path)?, c);
    }
    Ok(out)
}

/// Present paths that could not be indexed: unreadable files and files whose content failed.
/// The same count as `totals().failed`, without joining every file to its image (30 ms at the
/// end of a no-op re-index of 100 000 files, now under 1 ms).
pub fn failed_count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM files WHERE image_id IS NULL AND missing = 0)
              + (SELECT count(*) FROM images i JOIN files f ON f.image_id = i.id WHERE i.status = 'failed' AND f.missing = 0) AS failed",
        [],
        |r| r.get("failed"),
    )?)
}

/// blake3 -> image id for all known content.
pub fn image_hashes(conn: &Connection) -> Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT blake3, id FROM images")?;
    let rows = stmt.query_map([], |r| Ok((r.get("blake3")?, r.get("id")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every face of every decoded photo that still has a present file (for `match --all`), ordered
/// by photo.
pub fn all_faces(conn: &Connection) -> Result<Vec<FaceRow>> {
    rows::all(
        conn,
        "SELECT f.image_id, f.id AS face_id, f.size_px, f.sharpness, f.yaw, f.score FROM faces f
         JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id
         WHERE EXISTS (SELECT 1 FROM files p WHERE p.image_id = f.image_id AND p.missing = 0) ORDER BY f.image_id, f.id",
        [],
    )
}

impl FromRow for FaceRow {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(FaceRow {
            image_id: r.get("image_id")?,
            face_id: r.get("face_id")?,
            size_px: r.get("size_px")?,
            sharpness: r.get("sharpness")?,
            yaw: r.get("yaw")?,
            score: r.get("score")?,
        })
    }
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

impl FromRow for RefRow {
    /// The vector is read as stored; [`find_ref`] keeps it only at the embedder's width.
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(RefRow {
            id: r.get("id")?,
            blake3: r.get("blake3")?,
            path: r.get("path")?,
            width: r.get("width")?,
            height: r.get("height")?,
            faces_in_photo: r.get("faces_in_photo")?,
            face: [r.get("x")?, r.get("y")?, r.get("w")?, r.get("h")?],
            vector: blob_to_vector(&r.get::<_, Vec<u8>>("vector")?).unwrap_or_default(),
        })
    }
}

pub fn find_ref(conn: &Connection, blake3: &str, detector_id: ModelId, embedder: Embedder) -> Result<Option<RefRow>> {
    let row: Option<RefRow> = rows::one(
        conn,
        "SELECT id, blake3, path, width, height, faces_in_photo, x, y, w, h, vector FROM refs
         WHERE blake3 = ?1 AND detector_id = ?2 AND embedder_id = ?3",
        params![blake3, detector_id, embedder.id],
    )?;
    Ok(row.filter(|r| r.vector.len() == embedder.dim))
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

impl FromRow for FaceInfo {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(FaceInfo {
            face_id: r.get("face_id")?,
            image_id: r.get("image_id")?,
            blake3: r.get("blake3")?,
            width: r.get("width")?,
            height: r.get("height")?,
            x: r.get("x")?,
            y: r.get("y")?,
            w: r.get("w")?,
            h: r.get("h")?,
            score: r.get("score")?,
            size_px: r.get("size_px")?,
            sharpness: r.get("sharpness")?,
            yaw: r.get("yaw")?,
            roll: r.get("roll")?,
            brightness: r.get("brightness")?,
            landmarks: serde_json::from_str(&r.get::<_, String>("landmarks_json")?).unwrap_or([[0.0; 2]; 5]),
            rotation: r.get("rotation")?,
            paths: Vec::new(),
        })
    }
}

pub fn face_info(conn: &Connection, face_id: i64) -> Result<FaceInfo> {
    let mut info: FaceInfo = rows::one(
        conn,
        "SELECT fc.id AS face_id, fc.image_id, i.blake3, i.width, i.height, fc.x, fc.y, fc.w, fc.h, fc.score, fc.size_px, fc.sharpness,
                fc.yaw, fc.roll, fc.brightness, fc.landmarks_json, i.rotation
         FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1",
        [face_id],
    )?
    .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let mut stmt = conn.prepare_cached("SELECT path, path_raw FROM files WHERE image_id = ?1 AND missing = 0 ORDER BY path")?;
    info.paths = stmt.query_map([info.image_id], |r| Ok((r.get("path")?, r.get("path_raw")?)))?.collect::<rusqlite::Result<_>>()?;
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

impl FromRow for Totals {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(Totals {
            files: r.get("files")?,
            images: r.get("images")?,
            images_ok: r.get("images_ok")?,
            failed: r.get("failed")?,
            faces: r.get("faces")?,
            no_face: r.get("no_face")?,
            several_faces: r.get("several_faces")?,
        })
    }
}

pub fn totals(conn: &Connection) -> Result<Totals> {
    let totals = rows::one(
        conn,
        "SELECT (SELECT count(*) FROM files WHERE missing = 0) AS files,
                (SELECT count(*) FROM images) AS images,
                (SELECT count(*) FROM images WHERE status = 'ok') AS images_ok,
                (SELECT count(*) FROM files f LEFT JOIN images i ON i.id = f.image_id
                  WHERE f.missing = 0 AND (f.image_id IS NULL OR i.status = 'failed')) AS failed,
                (SELECT count(*) FROM faces) AS faces,
                (SELECT count(*) FROM photos_v WHERE status = 'ok' AND face_count = 0
                  AND blake3 NOT IN (SELECT blake3 FROM forgotten)) AS no_face,
                (SELECT count(*) FROM photos_v WHERE status = 'ok' AND face_count > 1) AS several_faces",
        [],
    )?;
    Ok(totals.ok_or(rusqlite::Error::QueryReturnedNoRows)?)
}

/// (path, face count) of present photos with exactly zero or more than one face.
/// A photo whose faces were all forgotten is not one "with no face": see `forgotten_photos`.
pub fn photos_by_face_count(conn: &Connection, several: bool) -> Result<Vec<(String, i64)>> {
    let cond = if several { "face_count > 1" } else { "face_count = 0 AND p.blake3 NOT IN (SELECT blake3 FROM forgotten)" };
    let mut stmt = conn.prepare(&format!(
        "SELECT f.path, p.face_count FROM photos_v p JOIN files f ON f.image_id = p.image_id AND f.missing = 0
         WHERE p.status = 'ok' AND p.{cond} ORDER BY f.path"
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get("path")?, r.get("face_count")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Present photos left without a face because `facedb forget` erased them.
pub fn forgotten_photos(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT f.path FROM photos_v p JOIN files f ON f.image_id = p.image_id AND f.missing = 0
         WHERE p.status = 'ok' AND p.face_count = 0 AND p.blake3 IN (SELECT blake3 FROM forgotten) ORDER BY f.path",
    )?;
    let rows = stmt.query_map([], |r| r.get("path"))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// (path, error) of present files that could not be read or decoded.
pub fn failed_files(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT f.path, coalesce(f.error, i.error, 'unknown error') AS error FROM files f LEFT JOIN images i ON i.id = f.image_id
         WHERE f.missing = 0 AND (f.image_id IS NULL OR i.status = 'failed') ORDER BY f.path",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get("path")?, r.get("error")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// image id -> its first present path (one scan), for listings.
pub fn image_paths(conn: &Connection) -> Result<HashMap<i64, String>> {
    // Scanned in path order (the primary key), so the first path seen per image is the smallest.
    let mut stmt = conn.prepare("SELECT image_id, path FROM files WHERE missing = 0 AND image_id IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    let mut out: HashMap<i64, String> = HashMap::new();
    while let Some(r) = rows.next()? {
        out.entry(r.get("image_id")?).or_insert(r.get("path")?);
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
    let mut stmt = conn.prepare_cached("SELECT min(path) AS path FROM files WHERE image_id = ?1 AND missing = 0")?;
    let mut out = HashMap::new();
    for &id in ids {
        if let Some(path) = stmt.query_row([id], |r| r.get::<_, Option<String>>("path"))? {
            out.insert(id, path);
        }
    }
    Ok(out)
}

/// A match run as `report` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MatchRunSummary {
    pub run_id: RunId,
    /// `match --name`, if the run was given one.
    pub name: Option<String>,
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

/// A match run's row with its reference ids as stored (JSON lists), before they become paths.
struct MatchRunRow {
    summary: MatchRunSummary,
    ref_ids_json: String,
    neg_ref_ids_json: String,
}

impl FromRow for MatchRunRow {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        let summary = MatchRunSummary {
            run_id: r.get("run_id")?,
            name: r.get("name")?,
            started_at: r.get("started_at")?,
            mode: r.get("mode")?,
            threshold: r.get("threshold")?,
            combine: r.get("combine")?,
            out_dir: r.get("out_dir")?,
            references: Vec::new(),
            negatives: Vec::new(),
            photos: r.get("photos")?,
            matched: r.get("matched")?,
            rejected: r.get("rejected")?,
            ambiguous: r.get("ambiguous")?,
        };
        Ok(MatchRunRow { summary, ref_ids_json: r.get("ref_ids_json")?, neg_ref_ids_json: r.get("neg_ref_ids_json")? })
    }
}

pub fn match_runs(conn: &Connection) -> Result<Vec<MatchRunSummary>> {
    let found: Vec<MatchRunRow> = rows::all(
        conn,
        "SELECT m.run_id, m.name, r.started_at, m.mode, m.threshold, m.combine, m.out_dir, m.ref_ids_json, m.neg_ref_ids_json, m.photos, m.matched, m.rejected, m.ambiguous
         FROM match_runs m JOIN runs r ON r.id = m.run_id ORDER BY m.run_id",
        [],
    )?;
    let mut out = Vec::with_capacity(found.len());
    for row in found {
        let mut m = row.summary;
        m.references = ref_paths(conn, &row.ref_ids_json)?;
        m.negatives = ref_paths(conn, &row.neg_ref_ids_json)?;
        out.push(m);
    }
    Ok(out)
}

fn ref_paths(conn: &Connection, ids_json: &str) -> Result<Vec<String>> {
    let ids: Vec<i64> = serde_json::from_str(ids_json).unwrap_or_default();
    let mut stmt = conn.prepare_cached("SELECT path FROM refs WHERE id = ?1")?;
    ids.iter().map(|id| Ok(stmt.query_row([id], |r| r.get("path")).optional()?.unwrap_or_else(|| format!("ref #{id}")))).collect()
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
    pub decision: DecisionKind,
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

impl FromRow for ResultRow {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(ResultRow {
            face_id: r.get("face_id")?,
            image_id: r.get("image_id")?,
            path: r.get("path")?,
            distance: r.get("distance")?,
            runner_up_distance: r.get("runner_up_distance")?,
            ambiguous: r.get("ambiguous")?,
            pass: r.get("pass")?,
            decision: r.get("decision")?,
            reason: r.get("reason")?,
            crop_path: r.get("crop_path")?,
            face: [r.get("x")?, r.get("y")?, r.get("w")?, r.get("h")?],
            size_px: r.get("size_px")?,
            sharpness: r.get("sharpness")?,
            yaw: r.get("yaw")?,
            score: r.get("score")?,
            rotation: r.get("rotation")?,
        })
    }
}

pub fn match_results(conn: &Connection, run_id: RunId) -> Result<Vec<ResultRow>> {
    rows::all(
        conn,
        "SELECT r.face_id, r.image_id, (SELECT min(f.path) FROM files f WHERE f.image_id = r.image_id AND f.missing = 0) AS path,
                r.distance, r.runner_up_distance, r.ambiguous, r.pass, r.decision, r.reason, r.crop_path,
                fc.x, fc.y, fc.w, fc.h, fc.size_px, fc.sharpness, fc.yaw, fc.score,
                (SELECT i.rotation FROM images i WHERE i.id = r.image_id) AS rotation
         FROM match_results r JOIN faces fc ON fc.id = r.face_id WHERE r.run_id = ?1
         ORDER BY r.distance IS NULL, r.distance, r.face_id",
        [run_id],
    )
}

/// Shorter-side sizes and sharpness of every face, for distributions.
pub fn face_measures(conn: &Connection) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut stmt = conn.prepare("SELECT size_px, sharpness FROM faces")?;
    let rows: Vec<(f64, f64)> = stmt.query_map([], |r| Ok((r.get("size_px")?, r.get("sharpness")?)))?.collect::<rusqlite::Result<_>>()?;
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
    /// Degrees facedb turned the photo (clockwise, after EXIF orientation) because its faces
    /// were found that way: a sideways or upside-down photo without an orientation tag.
    pub rotation: u16,
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
    pub run_id: RunId,
    pub at: String,
    pub face_id: i64,
    pub distance: Option<f64>,
    pub decision: DecisionKind,
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
    pub run_id: RunId,
    pub command: String,
    pub at: String,
    pub level: LogLevel,
    pub path: Option<String>,
    pub message: String,
}

pub fn image_id_for_path(conn: &Connection, rel: &str) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT image_id FROM files WHERE path = ?1", [rel], |r| r.get("image_id")).optional()?.flatten())
}

pub fn image_id_for_hash(conn: &Connection, blake3: &str) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT id FROM images WHERE blake3 = ?1", [blake3], |r| r.get("id")).optional()?)
}

pub fn image_id_for_face(conn: &Connection, face_id: i64) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT image_id FROM faces WHERE id = ?1", [face_id], |r| r.get("image_id")).optional()?)
}

/// A `logs` row joined with its run.
impl FromRow for LogLine {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(LogLine {
            run_id: r.get("run_id")?,
            command: r.get("command")?,
            at: r.get("at")?,
            level: r.get("level")?,
            path: r.get("path")?,
            message: r.get("message")?,
        })
    }
}

/// Log lines about a path that never became an image (unreadable files).
pub fn logs_for_path(conn: &Connection, rel: &str) -> Result<Vec<LogLine>> {
    rows::all(
        conn,
        "SELECT l.run_id, r.command, l.at, l.level, l.path, l.message FROM logs l JOIN runs r ON r.id = l.run_id WHERE l.path = ?1 ORDER BY l.id",
        [rel],
    )
}

impl FromRow for ImageInfo {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(ImageInfo {
            image_id: r.get("id")?,
            blake3: r.get("blake3")?,
            size_bytes: r.get("size_bytes")?,
            width: r.get("width")?,
            height: r.get("height")?,
            format: r.get("format")?,
            orientation: r.get("orientation")?,
            rotation: r.get("rotation")?,
            status: r.get("status")?,
            error: r.get("error")?,
            indexed_at: r.get("created_at")?,
            jpeg_decoder: r.get("jpeg_decoder")?,
            paths: Vec::new(),
            faces: Vec::new(),
            logs: Vec::new(),
            match_decisions: Vec::new(),
        })
    }
}

impl FromRow for FaceDetail {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(FaceDetail {
            face_id: r.get("id")?,
            idx: r.get("idx")?,
            box_xywh: [r.get("x")?, r.get("y")?, r.get("w")?, r.get("h")?],
            score: r.get("score")?,
            landmarks: serde_json::from_str(&r.get::<_, String>("landmarks_json")?).unwrap_or_default(),
            size_px: r.get("size_px")?,
            sharpness: r.get("sharpness")?,
            yaw: r.get("yaw")?,
            roll: r.get("roll")?,
            brightness: r.get("brightness")?,
            embedded: r.get("embedded")?,
        })
    }
}

impl FromRow for MatchLine {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(MatchLine {
            run_id: r.get("run_id")?,
            at: r.get("started_at")?,
            face_id: r.get("face_id")?,
            distance: r.get("distance")?,
            decision: r.get("decision")?,
            reason: r.get("reason")?,
            crop_path: r.get("crop_path")?,
        })
    }
}

pub fn image_info(conn: &Connection, image_id: i64) -> Result<ImageInfo> {
    let mut info: ImageInfo = rows::one(
        conn,
        "SELECT id, blake3, size_bytes, width, height, format, orientation, rotation, status, error, created_at,
                CASE WHEN format = 'jpeg' THEN (SELECT coalesce(json_extract(m.params_json, '$.jpeg'), 'image-rs') FROM models m WHERE m.id = images.detector_id) END AS jpeg_decoder
         FROM images WHERE id = ?1",
        [image_id],
    )?
    .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let mut stmt = conn.prepare(
        "SELECT path || CASE WHEN missing = 1 THEN ' (missing)' ELSE '' END AS listed FROM files WHERE image_id = ?1 ORDER BY path",
    )?;
    info.paths = stmt.query_map([image_id], |r| r.get("listed"))?.collect::<rusqlite::Result<_>>()?;
    info.faces = rows::all(
        conn,
        "SELECT fc.id, fc.idx, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json, fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness,
                EXISTS (SELECT 1 FROM embeddings e WHERE e.face_id = fc.id) AS embedded
         FROM faces fc WHERE fc.image_id = ?1 ORDER BY fc.idx",
        [image_id],
    )?;
    info.logs = rows::all(
        conn,
        "SELECT l.run_id, r.command, l.at, l.level, l.path, l.message FROM logs l JOIN runs r ON r.id = l.run_id
         WHERE l.image_id = ?1
            OR l.path IN (SELECT path FROM files WHERE image_id = ?1)
         ORDER BY l.id",
        [image_id],
    )?;
    info.match_decisions = rows::all(
        conn,
        "SELECT m.run_id, r.started_at, m.face_id, m.distance, m.decision, m.reason, m.crop_path FROM match_results m JOIN runs r ON r.id = m.run_id
         WHERE m.image_id = ?1 ORDER BY m.run_id, m.face_id",
        [image_id],
    )?;
    Ok(info)
}

/// This database's random id (migration 0002), which output folders record as their owner.
pub fn database_id(conn: &Connection) -> Result<String> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = 'database_id'", [], |r| r.get("value"))?)
}

/// Whether any embedding of `embedder_id`, and any at all, is stored: stops at the first row
/// (counting them read every embedding, 5 GB at 10 million faces, on every match).
pub fn embeddings_exist(conn: &Connection, embedder_id: ModelId) -> Result<(bool, bool)> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = ?1) AS current, EXISTS (SELECT 1 FROM embeddings) AS every",
        [embedder_id],
        |r| Ok((r.get("current")?, r.get("every")?)),
    )?)
}

/// (embeddings made by `embedder_id`, all embeddings).
pub fn embedding_counts(conn: &Connection, embedder_id: ModelId) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM embeddings WHERE model_id = ?1) AS current, (SELECT count(*) FROM embeddings) AS every",
        [embedder_id],
        |r| Ok((r.get("current")?, r.get("every")?)),
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

impl FromRow for FailedImage {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(FailedImage { image_id: r.get("id")?, blake3: r.get("blake3")?, kind: r.get("failure_kind")?, env: r.get("failure_env")? })
    }
}

pub fn failed_images(conn: &Connection) -> Result<Vec<FailedImage>> {
    rows::all(conn, "SELECT id, blake3, failure_kind, failure_env FROM images WHERE status = 'failed'", [])
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

/// Images detected by this detector file with another small-face pass size than `max_side`
/// (`--detect-size`; its default went from 1280 to 960): their faces stay as found.
pub fn images_by_other_detect_size(conn: &Connection, detector_hash: &str, max_side: u32) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM images i JOIN models m ON m.id = i.detector_id
         WHERE i.status = 'ok' AND m.file_blake3 = ?1 AND json_extract(m.params_json, '$.max_side') <> ?2",
        params![detector_hash, max_side],
        |r| r.get(0),
    )?)
}

/// Decoded images whose detector file is not `detector_hash`, or whose faces were not embedded
/// by `embedder_id`. Written as ORs of index lookups, so a no-op re-index does not scan.
impl FromRow for StaleImage {
    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(StaleImage { image_id: r.get("id")?, blake3: r.get("blake3")?, redetect: r.get("redetect")?, rotation: r.get("rotation")? })
    }
}

pub fn stale_images(conn: &Connection, detector_hash: &str, embedder_id: ModelId) -> Result<Vec<StaleImage>> {
    rows::all(
        conn,
        "SELECT i.id, i.blake3, i.detector_id IN (SELECT id FROM models WHERE kind = 'detector' AND file_blake3 <> ?1) AS redetect, i.rotation
         FROM images i
         WHERE i.status = 'ok' AND (i.detector_id IN (SELECT id FROM models WHERE kind = 'detector' AND file_blake3 <> ?1)
             OR i.embedder_id < ?2 OR i.embedder_id > ?2 OR i.embedder_id IS NULL OR i.quality_version < ?3)",
        params![detector_hash, embedder_id, crate::pipeline::quality::QUALITY_VERSION],
    )
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
    let rows = stmt.query_map([], |r| Ok((r.get("path")?, r.get("kind")?, r.get("reason")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Rows whose key may not be exact (stored with raw bytes, or holding a backslash).
pub fn files_to_rekey(conn: &Connection) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    let mut stmt = conn.prepare("SELECT path, path_raw FROM files WHERE path_raw IS NOT NULL OR instr(path, '\\') > 0")?;
    let rows = stmt.query_map([], |r| Ok((r.get("path")?, r.get("path_raw")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the files rows were already moved to exact keys (see `write::mark_path_keys_exact`).
pub fn path_keys_exact(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'path_keys' AND value = 'exact') AS exact", [], |r| r.get("exact"))?)
}

/// The shard (`index --shard K/N`) this database holds; `None` for a whole folder.
pub fn shard(conn: &Connection) -> Result<Option<Shard>> {
    let text: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = 'shard'", [], |r| r.get("value")).optional()?;
    text.map(|t| Shard::parse(&t).map_err(|e| anyhow::anyhow!("meta.shard: {e}"))).transpose()
}

pub fn has_files(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM files) AS any", [], |r| r.get("any"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixture::{self, face, DIM};
    use crate::db::write::{self, NewRef};

    #[test]
    fn rows_come_back_by_column_name_from_a_migrated_database() {
        let f = fixture::indexed().unwrap();
        let conn = &f.db.conn;
        let cache = file_cache(conn).unwrap();
        let a = &cache["photos/a.jpg"];
        assert_eq!((a.image_id, a.size, a.mtime_ns, a.inode, a.checked_ns, a.missing), (Some(f.image), 1234, 5, 9, 6, false));
        let faces = all_faces(conn).unwrap();
        assert_eq!(faces.iter().map(|r| (r.image_id, r.size_px)).collect::<Vec<_>>(), vec![(f.image, 40.0), (f.image, 80.0)]);
        let info = face_info(conn, faces[1].face_id).unwrap();
        assert_eq!((info.image_id, info.blake3.as_str(), info.width, info.height, info.x, info.w), (f.image, "b3", 200, 100, 100.0, 80.0));
        assert_eq!((info.landmarks[0], info.paths.clone()), ([101.0, 12.0], vec![("photos/a.jpg".to_string(), None)]));
        let t = totals(conn).unwrap();
        assert_eq!((t.files, t.images, t.images_ok, t.failed, t.faces, t.no_face, t.several_faces), (1, 1, 1, 0, 2, 0, 1));
        assert_eq!(photos_by_face_count(conn, true).unwrap(), vec![("photos/a.jpg".to_string(), 2)]);
        assert_eq!(paths_of_images(conn, &[f.image, 999]).unwrap(), HashMap::from([(f.image, "photos/a.jpg".to_string())]));
        assert!(face_info(conn, 999).is_err(), "a missing face is an error, not a default row");
    }

    #[test]
    fn image_info_holds_faces_logs_and_decisions_with_typed_states() {
        let f = fixture::indexed().unwrap();
        let conn = &f.db.conn;
        write::log(conn, f.run, Some(f.image), Some("photos/a.jpg"), LogLevel::Warn, "odd").unwrap();
        let info = image_info(conn, f.image).unwrap();
        assert_eq!((info.image_id, info.status.as_str(), info.paths.clone()), (f.image, "ok", vec!["photos/a.jpg".to_string()]));
        assert_eq!(info.faces.iter().map(|d| (d.idx, d.embedded)).collect::<Vec<_>>(), vec![(0, false), (1, false)]);
        let log = &info.logs[0];
        assert_eq!((log.run_id, log.command.as_str(), log.level, log.message.as_str()), (f.run, "index", LogLevel::Warn, "odd"));
        assert_eq!(logs_for_path(conn, "photos/a.jpg").unwrap().len(), 1);
        assert_eq!(stale_images(conn, "d0", f.models.embedder).unwrap().len(), 1, "faces without embeddings are stale");
        assert_eq!(embedding_counts(conn, f.models.embedder).unwrap(), (0, 0));
    }

    #[test]
    fn a_reference_is_found_only_at_the_embedders_width() {
        let f = fixture::indexed().unwrap();
        let conn = &f.db.conn;
        let face = face(1.0, 50.0);
        let vector = [0.5f32; DIM];
        let new = NewRef { blake3: "r1", path: "/refs/me.jpg", width: 60, height: 60, faces_in_photo: 1, face: &face, vector: &vector };
        let id = write::insert_ref(conn, &new, f.models.detector, f.models.embedder).unwrap();
        let embedder = Embedder { id: f.models.embedder, dim: DIM };
        let r = find_ref(conn, "r1", f.models.detector, embedder).unwrap().unwrap();
        assert_eq!((r.id, r.path.as_str(), r.face, r.vector.clone()), (id, "/refs/me.jpg", [1.0, 10.0, 50.0, 50.0], vector.to_vec()));
        assert!(find_ref(conn, "r1", f.models.detector, Embedder { dim: 128, ..embedder }).unwrap().is_none());
        assert!(find_ref(conn, "r1", f.models.embedder, embedder).unwrap().is_none(), "another detector's reference");
    }
}
