//! Queries behind index (caches), match (embeddings, references) and report.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::blob_to_vector;
use crate::matching::FaceRow;
use crate::models::sface::EMBEDDING_DIM;

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
    let mut stmt = conn
        .prepare("SELECT path, image_id, size, mtime_ns, inode, checked_ns, missing FROM files")?;
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

/// All stored embeddings of one model, contiguous: `vectors[i*128..]` belongs to `faces[i]`,
/// faces of one photo adjacent. One scan; nothing per photo.
pub struct EmbeddingTable {
    pub faces: Vec<FaceRow>,
    pub vectors: Vec<f32>,
}

pub fn embeddings(conn: &Connection, embedder_id: i64) -> Result<EmbeddingTable> {
    let mut stmt = conn.prepare(
        "SELECT f.image_id, e.face_id, f.size_px, f.sharpness, f.yaw, f.score, e.vector
         FROM embeddings e JOIN faces f ON f.id = e.face_id
         JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id
         WHERE e.model_id = ?1 ORDER BY f.image_id, e.face_id",
    )?;
    let mut rows = stmt.query([embedder_id])?;
    let mut table = EmbeddingTable {
        faces: Vec::new(),
        vectors: Vec::new(),
    };
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(6)?.as_blob()?;
        // A malformed vector (hand-edited database) is skipped rather than trusted.
        let Some(v) = blob_to_vector(blob).filter(|v| v.len() == EMBEDDING_DIM) else {
            continue;
        };
        table.faces.push(FaceRow {
            image_id: r.get(0)?,
            face_id: r.get(1)?,
            size_px: r.get(2)?,
            sharpness: r.get(3)?,
            yaw: r.get(4)?,
            score: r.get(5)?,
        });
        table.vectors.extend_from_slice(&v);
    }
    Ok(table)
}

/// Every face of every decoded photo (for `match --all`), ordered by photo.
pub fn all_faces(conn: &Connection) -> Result<Vec<FaceRow>> {
    let mut stmt = conn.prepare(
        "SELECT f.image_id, f.id, f.size_px, f.sharpness, f.yaw, f.score FROM faces f
         JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id ORDER BY f.image_id, f.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(FaceRow {
            image_id: r.get(0)?,
            face_id: r.get(1)?,
            size_px: r.get(2)?,
            sharpness: r.get(3)?,
            yaw: r.get(4)?,
            score: r.get(5)?,
        })
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

pub fn find_ref(
    conn: &Connection,
    blake3: &str,
    detector_id: i64,
    embedder_id: i64,
) -> Result<Option<RefRow>> {
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
    /// Present paths to the photo: (relative path, raw bytes when not UTF-8).
    pub paths: Vec<(String, Option<Vec<u8>>)>,
}

pub fn face_info(conn: &Connection, face_id: i64) -> Result<FaceInfo> {
    let mut info = conn.query_row(
        "SELECT fc.id, fc.image_id, i.blake3, i.width, i.height, fc.x, fc.y, fc.w, fc.h, fc.score, fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness, fc.landmarks_json
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
                paths: Vec::new(),
            })
        },
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT path, path_raw FROM files WHERE image_id = ?1 AND missing = 0 ORDER BY path",
    )?;
    info.paths = stmt
        .query_map([info.image_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
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
    let cond = if several {
        "face_count > 1"
    } else {
        "face_count = 0"
    };
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
    let mut stmt = conn.prepare("SELECT image_id, min(path) FROM files WHERE missing = 0 AND image_id IS NOT NULL GROUP BY image_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
