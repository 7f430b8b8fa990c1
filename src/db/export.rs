//! Queries behind `facedb export`: the faces of each photo for XMP sidecars (with the ledger of
//! sidecars facedb wrote, migration 0010), and the tables written as Parquet.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};

use super::{blob_to_vector, now_rfc3339};

/// A stored face as a region: its box in the photo's upright (indexed) pixels.
#[derive(Debug, Clone)]
pub struct StoredRegion {
    pub face_id: i64,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    /// The person's name, when the face is in a named person (`facedb people name`).
    pub name: Option<String>,
}

/// One present file of a decoded photo, with what is needed to place regions in its pixels.
#[derive(Debug, Clone)]
pub struct PhotoFaces {
    pub image_id: i64,
    pub path: String,
    pub path_raw: Option<Vec<u8>>,
    /// Upright size: EXIF orientation applied, then turned by `rotation` (as faces are stored).
    pub width: u32,
    pub height: u32,
    /// EXIF orientation 1-8 as found in the file.
    pub orientation: u8,
    /// Degrees clockwise facedb turned a sideways photo that had no EXIF orientation.
    pub rotation: u16,
    /// The file as indexed (stat data and content hash): a photo changed since then is not the
    /// one these faces were found in.
    pub indexed: IndexedFile,
    /// Faces of the photo's current detector, highest score first.
    pub faces: Vec<StoredRegion>,
}

/// A file's stat data when it was last indexed, and the blake3 of the photo read then.
#[derive(Debug, Clone, Default)]
pub struct IndexedFile {
    pub size: i64,
    pub mtime_ns: i64,
    pub inode: i64,
    /// `None`: indexed before ctimes were recorded (migration 0014).
    pub ctime_ns: Option<i64>,
    /// When the stat data was taken (an mtime this close proves nothing: the racy rule of index).
    pub checked_ns: i64,
    pub blake3: String,
}

/// Every present file of every decoded photo with its current faces (photos without faces too,
/// so a sidecar facedb wrote earlier can lose regions that are gone), ordered by path.
pub fn photo_faces(conn: &Connection) -> Result<Vec<PhotoFaces>> {
    let mut stmt = conn.prepare(
        "SELECT i.id AS image_id, f.path, f.path_raw, i.width, i.height, coalesce(i.orientation, 1) AS orientation, i.rotation,
                f.size, f.mtime_ns, f.inode, f.ctime_ns, f.checked_ns, i.blake3,
                fc.id AS face_id, fc.x, fc.y, fc.w, fc.h, p.name
         FROM files f JOIN images i ON i.id = f.image_id
         LEFT JOIN faces fc ON fc.image_id = i.id AND fc.detector_id = i.detector_id
         LEFT JOIN person_faces pf ON pf.face_id = fc.id LEFT JOIN people p ON p.id = pf.person_id
         WHERE f.missing = 0 AND i.status = 'ok' AND i.width > 0 AND i.height > 0
         ORDER BY f.path, fc.idx",
    )?;
    let mut rows = stmt.query([])?;
    let mut out: Vec<PhotoFaces> = Vec::new();
    while let Some(r) = rows.next()? {
        let path: String = r.get("path")?;
        if out.last().is_none_or(|p| p.path != path) {
            out.push(PhotoFaces {
                image_id: r.get("image_id")?,
                path,
                path_raw: r.get("path_raw")?,
                width: r.get("width")?,
                height: r.get("height")?,
                orientation: r.get::<_, i64>("orientation")?.clamp(1, 8) as u8,
                rotation: r.get::<_, i64>("rotation")?.rem_euclid(360) as u16,
                indexed: IndexedFile {
                    size: r.get("size")?,
                    mtime_ns: r.get("mtime_ns")?,
                    inode: r.get("inode")?,
                    ctime_ns: r.get("ctime_ns")?,
                    checked_ns: r.get("checked_ns")?,
                    blake3: r.get("blake3")?,
                },
                faces: Vec::new(),
            });
        }
        let Some(face_id) = r.get::<_, Option<i64>>("face_id")? else { continue };
        let region = StoredRegion { face_id, x: r.get("x")?, y: r.get("y")?, w: r.get("w")?, h: r.get("h")?, name: r.get("name")? };
        if let Some(photo) = out.last_mut() {
            photo.faces.push(region);
        }
    }
    Ok(out)
}

/// What the ledger says facedb wrote at a sidecar path.
#[derive(Debug, Clone)]
pub struct SidecarEntry {
    pub blake3: String,
    pub pending: Option<String>,
}

impl SidecarEntry {
    /// Whether `hash` is bytes facedb wrote there (or was writing when it was stopped).
    pub fn wrote(&self, hash: &str) -> bool {
        self.blake3 == hash || self.pending.as_deref() == Some(hash)
    }
}

pub fn sidecar_ledger(conn: &Connection) -> Result<HashMap<String, SidecarEntry>> {
    let mut stmt = conn.prepare("SELECT path, blake3, pending FROM xmp_sidecars")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, SidecarEntry { blake3: r.get(1)?, pending: r.get(2)? })))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Recorded before the new bytes are renamed into place: a run killed after the rename still
/// recognises the file as its own.
pub fn sidecar_pending(conn: &Connection, path: &str, hash: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO xmp_sidecars (path, blake3, pending, regions, written_at) VALUES (?1, '', ?2, 0, ?3)
         ON CONFLICT (path) DO UPDATE SET pending = excluded.pending",
        params![path, hash, now_rfc3339()],
    )?;
    Ok(())
}

/// Recorded once the bytes are in place.
pub fn sidecar_written(conn: &Connection, path: &str, hash: &str, regions: usize) -> Result<()> {
    conn.execute(
        "UPDATE xmp_sidecars SET blake3 = ?2, pending = NULL, regions = ?3, written_at = ?4 WHERE path = ?1",
        params![path, hash, regions as i64, now_rfc3339()],
    )?;
    Ok(())
}

/// The embedder whose vectors are exported: that of the latest `index` (or `merge` of shards).
pub fn current_embedder(conn: &Connection) -> Result<Option<(i64, String, String)>> {
    Ok(conn
        .query_row(
            "SELECT m.id, m.name, m.file_blake3 FROM runs r JOIN models m ON m.id = r.embedder_id
             WHERE r.command IN ('index', 'merge') ORDER BY r.id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// A row of `images.parquet`.
pub struct ImageRow {
    pub image_id: i64,
    pub blake3: String,
    pub size_bytes: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub format: Option<String>,
    pub orientation: Option<i32>,
    pub rotation: i32,
    pub status: String,
    pub error: Option<String>,
}

pub fn images(conn: &Connection) -> Result<Vec<ImageRow>> {
    let mut stmt =
        conn.prepare("SELECT id, blake3, size_bytes, width, height, format, orientation, rotation, status, error FROM images ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(ImageRow {
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
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A row of `files.parquet`.
pub struct FileRow {
    pub path: String,
    pub path_raw: Option<Vec<u8>>,
    pub image_id: Option<i64>,
    pub size: i64,
    pub mtime_ns: i64,
    pub missing: bool,
    pub error: Option<String>,
}

pub fn files(conn: &Connection) -> Result<Vec<FileRow>> {
    let mut stmt = conn.prepare("SELECT path, path_raw, image_id, size, mtime_ns, missing, error FROM files ORDER BY path")?;
    let rows = stmt.query_map([], |r| {
        Ok(FileRow {
            path: r.get("path")?,
            path_raw: r.get("path_raw")?,
            image_id: r.get("image_id")?,
            size: r.get("size")?,
            mtime_ns: r.get("mtime_ns")?,
            missing: r.get("missing")?,
            error: r.get("error")?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A row of `faces.parquet`: a face of its photo's current detector.
pub struct FaceRow {
    pub face_id: i64,
    pub image_id: i64,
    pub idx: i32,
    /// x, y, w, h in upright pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Right eye, left eye, nose, right and left mouth corner: x, y each.
    pub landmarks: [f32; 10],
    /// size_px, sharpness, yaw, roll, brightness.
    pub quality: [f32; 5],
    pub person_id: Option<i64>,
    pub person: Option<String>,
}

/// Up to `limit` faces with ids over `after`, by id (a page: memory stays flat at any size).
pub fn faces(conn: &Connection, after: i64, limit: usize) -> Result<Vec<FaceRow>> {
    let mut stmt = conn.prepare(
        "SELECT fc.id, fc.image_id, fc.idx, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json,
                fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness, pf.person_id, p.name
         FROM faces fc JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
         LEFT JOIN person_faces pf ON pf.face_id = fc.id LEFT JOIN people p ON p.id = pf.person_id
         WHERE fc.id > ?1 ORDER BY fc.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        // A damaged landmarks text is exported as NaNs rather than failing the whole export.
        let lm: Option<[[f32; 2]; 5]> = serde_json::from_str(&r.get::<_, String>("landmarks_json")?).ok();
        let landmarks = lm.map_or([f32::NAN; 10], |l| std::array::from_fn(|i| l[i / 2][i % 2]));
        Ok(FaceRow {
            face_id: r.get("id")?,
            image_id: r.get("image_id")?,
            idx: r.get("idx")?,
            bbox: [r.get("x")?, r.get("y")?, r.get("w")?, r.get("h")?],
            score: r.get("score")?,
            landmarks,
            quality: [r.get("size_px")?, r.get("sharpness")?, r.get("yaw")?, r.get("roll")?, r.get("brightness")?],
            person_id: r.get("person_id")?,
            person: r.get("name")?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A face id and its embedding.
pub type EmbeddingRow = (i64, Vec<f32>);

/// Embeddings by `embedder_id` of current faces with ids over `after`, by face id, up to `limit`
/// (a page); a damaged vector (not `dim` values) is left out, as match leaves it out. Returns the
/// rows, how many were left out, and the last face id read (`None`: nothing left).
pub fn embeddings(
    conn: &Connection,
    embedder_id: i64,
    dim: usize,
    after: i64,
    limit: usize,
) -> Result<(Vec<EmbeddingRow>, usize, Option<i64>)> {
    let mut stmt = conn.prepare(
        "SELECT e.face_id, e.vector FROM embeddings e
         JOIN faces fc ON fc.id = e.face_id JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
         WHERE e.model_id = ?1 AND e.face_id > ?2 ORDER BY e.face_id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![embedder_id, after, limit as i64])?;
    let (mut out, mut damaged, mut last) = (Vec::new(), 0, None);
    while let Some(r) = rows.next()? {
        let face_id: i64 = r.get(0)?;
        last = Some(face_id);
        let blob: Vec<u8> = r.get(1)?;
        match blob_to_vector(&blob).filter(|v| v.len() == dim) {
            Some(v) => out.push((face_id, v)),
            None => damaged += 1,
        }
    }
    Ok((out, damaged, last))
}
