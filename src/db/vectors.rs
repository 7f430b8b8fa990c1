//! A cached copy of one embedder's vectors beside the database (`<db>.vectors`), so `match` reads
//! one contiguous file instead of decoding a million SQLite rows, and streams it in chunks
//! instead of holding it.
//!
//! The cache is a pure function of the database: it is keyed by the database's id and the
//! generation counter that triggers bump on every change to embeddings (migration 0002). When
//! only appends happened since it was written (the triggers' second counter, rewrites, is
//! unchanged), the new faces are appended to a copy; otherwise it is rebuilt from SQLite.
//! Deleting it is always safe.
//!
//! Layout, little-endian: header (magic, database id, generation, embedder id, face count,
//! dimension), then `count * dim` f32 vectors, then `count` face records.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use crate::matching::{FaceRow, Vectors};

const MAGIC: &[u8; 8] = b"FACEDBV1";
const HEADER_LEN: u64 = 8 + 32 + 8 + 8 + 8 + 8 + 4 + 4;
const FACE_RECORD_LEN: usize = 8 + 8 + 4 * 4;
/// Faces per read while streaming (2 MiB of 128-d vectors).
const CHUNK_FACES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    database_id: String,
    generation: i64,
    /// Changes that were not appends; while equal, an older cache is extended, not rebuilt.
    rewrites: i64,
    embedder_id: i64,
}

/// Stored faces of one embedder with their vectors on disk.
pub struct FaceMatrix {
    pub faces: Vec<FaceRow>,
    /// `faces[i]`'s vector is the i-th in here.
    pub vectors: VectorFile,
    /// What this call had to do to bring the cache up to date.
    pub refresh: Refresh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The cache was current.
    None,
    /// Faces added since were appended.
    Appended,
    /// Rebuilt from SQLite (first use, a non-append change, or a damaged file).
    Rebuilt,
}

impl Refresh {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresh::None => "current",
            Refresh::Appended => "appended",
            Refresh::Rebuilt => "rebuilt",
        }
    }
}

/// The vector section of an open cache file, streamed on each scan.
pub struct VectorFile {
    file: File,
    dim: usize,
    count: usize,
}

pub fn cache_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().unwrap_or_default().to_os_string();
    name.push(".vectors");
    db_path.with_file_name(name)
}

/// Opens the cache for `embedder_id`, rebuilding it first if the database changed since it was
/// written. `conn` should be inside a transaction so the key and the rows come from one snapshot.
pub fn load(conn: &Connection, db_path: &Path, embedder_id: i64, dim: usize) -> Result<FaceMatrix> {
    let key = current_key(conn, embedder_id)?;
    let path = cache_path(db_path);
    let appended = match open_cached(&path, &key, dim) {
        Ok((m, true)) => return Ok(m),
        // Only faces were added since: copy the old vectors, append the new rows.
        Ok((old, false)) => write_cache(conn, &path, &key, dim, Some(old)).is_ok(),
        Err(_) => false,
    };
    let refresh = if appended {
        Refresh::Appended
    } else {
        write_cache(conn, &path, &key, dim, None).with_context(|| format!("writing the vector cache {}", path.display()))?;
        Refresh::Rebuilt
    };
    let (mut m, current) = open_cached(&path, &key, dim).with_context(|| format!("reading the vector cache {}", path.display()))?;
    if !current {
        bail!("the vector cache {} did not take; delete it and retry", path.display());
    }
    m.refresh = refresh;
    Ok(m)
}

fn current_key(conn: &Connection, embedder_id: i64) -> Result<Key> {
    let get = |k: &str| conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, rusqlite::types::Value>(0));
    let database_id = match get("database_id")? {
        rusqlite::types::Value::Text(s) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => s,
        other => bail!("database meta 'database_id' is malformed ({other:?})"),
    };
    let counter = |k: &str| -> Result<i64> {
        match get(k)? {
            rusqlite::types::Value::Integer(g) => Ok(g),
            other => bail!("database meta '{k}' is malformed ({other:?})"),
        }
    };
    Ok(Key { database_id, generation: counter("embeddings_generation")?, rewrites: counter("embeddings_rewrites")?, embedder_id })
}

fn header(key: &Key, count: u64, dim: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(key.database_id.as_bytes());
    h.extend_from_slice(&key.generation.to_le_bytes());
    h.extend_from_slice(&key.rewrites.to_le_bytes());
    h.extend_from_slice(&key.embedder_id.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h.extend_from_slice(&(dim as u32).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// The cache file and whether it is current (`false`: same database and embedder, older
/// generation, no rewrites since, so it can be extended).
fn open_cached(path: &Path, key: &Key, dim: usize) -> Result<(FaceMatrix, bool)> {
    let mut file = File::open(path)?;
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut h)?;
    let count = u64::from_le_bytes(h[64..72].try_into()?);
    let generation = i64::from_le_bytes(h[40..48].try_into()?);
    let current = h[..] == header(key, count, dim)[..];
    let older = Key { generation, ..key.clone() };
    if !current && !(generation < key.generation && h[..] == header(&older, count, dim)[..]) {
        bail!("stale or foreign cache");
    }
    let vectors_len = count.checked_mul((dim * 4) as u64).context("size overflow")?;
    let faces_len = count.checked_mul(FACE_RECORD_LEN as u64).context("size overflow")?;
    if file.metadata()?.len() != HEADER_LEN + vectors_len + faces_len {
        bail!("cache has the wrong length");
    }
    file.seek(SeekFrom::Start(HEADER_LEN + vectors_len))?;
    let mut raw = vec![0u8; usize::try_from(faces_len)?];
    file.read_exact(&mut raw)?;
    let faces: Vec<FaceRow> = raw.chunks_exact(FACE_RECORD_LEN).map(decode_face).collect();
    let count = faces.len();
    Ok((FaceMatrix { faces, vectors: VectorFile { file, dim, count }, refresh: Refresh::None }, current))
}

/// Writes the cache for `key`: every row from SQLite, or with `base`, an older cache's vectors
/// copied as they are plus the rows added after its highest face id.
fn write_cache(conn: &Connection, path: &Path, key: &Key, dim: usize, base: Option<FaceMatrix>) -> Result<()> {
    // A private temporary name, renamed into place: readers never see a half-written cache, and
    // two concurrent builders each finish a whole one.
    let tmp = path.with_extension(format!("vectors.{}.part", std::process::id()));
    let result = (|| -> Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(&header(key, 0, dim))?;
        let (mut faces, after_id) = match base {
            Some(old) => {
                let mut src = old.vectors.file;
                src.seek(SeekFrom::Start(HEADER_LEN))?;
                let len = (old.faces.len() * dim * 4) as u64;
                if std::io::copy(&mut (&mut src).take(len), &mut out)? != len {
                    bail!("old cache ended early");
                }
                let after = old.faces.iter().map(|f| f.face_id).max().unwrap_or(i64::MIN);
                (old.faces, after)
            }
            None => (Vec::new(), i64::MIN),
        };
        let mut stmt = conn.prepare(
            // Primary-key order, no sort; `decide` groups faces by photo itself.
            "SELECT f.image_id, e.face_id, f.size_px, f.sharpness, f.yaw, f.score, e.vector
             FROM embeddings e JOIN faces f ON f.id = e.face_id
             WHERE e.model_id = ?1 AND e.face_id > ?2 ORDER BY e.face_id",
        )?;
        let mut rows = stmt.query([key.embedder_id, after_id])?;
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(6)?.as_blob()?;
            // A malformed vector (hand-edited database) is skipped rather than trusted.
            if blob.len() != dim * 4 {
                continue;
            }
            out.write_all(blob)?;
            faces.push(FaceRow {
                image_id: r.get(0)?,
                face_id: r.get(1)?,
                size_px: r.get(2)?,
                sharpness: r.get(3)?,
                yaw: r.get(4)?,
                score: r.get(5)?,
            });
        }
        for f in &faces {
            out.write_all(&encode_face(f))?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(key, faces.len() as u64, dim))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn encode_face(f: &FaceRow) -> [u8; FACE_RECORD_LEN] {
    let mut b = [0u8; FACE_RECORD_LEN];
    b[0..8].copy_from_slice(&f.image_id.to_le_bytes());
    b[8..16].copy_from_slice(&f.face_id.to_le_bytes());
    for (k, v) in [f.size_px, f.sharpness, f.yaw, f.score].iter().enumerate() {
        b[16 + 4 * k..20 + 4 * k].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode_face(b: &[u8]) -> FaceRow {
    let i64_at = |o: usize| i64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
    let f32_at = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    FaceRow { image_id: i64_at(0), face_id: i64_at(8), size_px: f32_at(16), sharpness: f32_at(20), yaw: f32_at(24), score: f32_at(28) }
}

impl Vectors for VectorFile {
    fn dim(&self) -> usize {
        self.dim
    }

    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.file.seek(SeekFrom::Start(HEADER_LEN))?;
        let mut raw = vec![0u8; CHUNK_FACES * self.dim * 4];
        let mut floats = Vec::with_capacity(CHUNK_FACES * self.dim);
        let mut first = 0;
        while first < self.count {
            let n = CHUNK_FACES.min(self.count - first);
            let bytes = &mut raw[..n * self.dim * 4];
            self.file.read_exact(bytes).context("reading the vector cache")?;
            floats.clear();
            floats.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            visit(first, &floats);
            first += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{vector_to_blob, Db};

    fn add_face(conn: &Connection, image_id: i64, face_id: i64, v: &[f32]) {
        conn.execute(
            "INSERT INTO faces (id, image_id, detector_id, idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness)
             VALUES (?1, ?2, 1, ?1, 0, 0, 50, 50, 0.9, '[]', 50, 100, 0, 0, 128)",
            rusqlite::params![face_id, image_id],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, 2, ?2)",
            rusqlite::params![face_id, vector_to_blob(v)],
        )
        .unwrap();
    }

    fn collect(m: &mut FaceMatrix) -> Vec<f32> {
        let mut all = Vec::new();
        m.vectors
            .scan(&mut |first, chunk| {
                assert_eq!(first * 3, all.len());
                all.extend_from_slice(chunk);
            })
            .unwrap();
        all
    }

    /// A new database with one detector (id 1) and one embedder (id 2) registered.
    fn fresh_db() -> (tempfile::TempDir, std::path::PathBuf, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("facedb.sqlite");
        let db = Db::open(&db_path).unwrap();
        db.conn
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO models (id, kind, name, file_blake3, params_json) VALUES (1, 'detector', 'd', 'x', '{}'), (2, 'embedder', 'e', 'y', '{}');",
            )
            .unwrap();
        (dir, db_path, db)
    }

    #[test]
    fn built_once_then_reused_appended_or_rebuilt() {
        let (_dir, db_path, db) = fresh_db();
        let c = &db.conn;
        add_face(c, 7, 1, &[1.0, 0.0, 0.0]);
        add_face(c, 8, 2, &[0.0, 1.0, 0.0]);

        let mut m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Rebuilt);
        assert_eq!(m.faces.iter().map(|f| (f.image_id, f.face_id)).collect::<Vec<_>>(), vec![(7, 1), (8, 2)]);
        assert_eq!(collect(&mut m), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(load(c, &db_path, 2, 3).unwrap().refresh, Refresh::None, "unchanged database reuses the cache");

        // New faces (higher ids) are appended to the old cache, not rebuilt.
        add_face(c, 10, 5, &[0.0, 0.0, 1.0]);
        let mut m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Appended);
        assert_eq!(m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>(), vec![1, 2, 5]);
        assert_eq!(collect(&mut m), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(load(c, &db_path, 2, 3).unwrap().refresh, Refresh::None);
        // One below the highest id cannot be appended: rebuilt, in id order.
        add_face(c, 11, 4, &[0.0, 0.6, 0.8]);
        let mut m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Rebuilt);
        assert_eq!(m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert_eq!(collect(&mut m)[6..9], [0.0, 0.6, 0.8]);
        c.execute_batch("DELETE FROM embeddings WHERE face_id IN (4, 5); DELETE FROM faces WHERE id IN (4, 5);").unwrap();

        // A hand-written update is seen too (trigger), as is a new face.
        c.execute("UPDATE embeddings SET vector = ?1 WHERE face_id = 2", [vector_to_blob(&[0.0, 0.0, 1.0])]).unwrap();
        add_face(c, 9, 3, &[0.6, 0.8, 0.0]);
        let mut m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Rebuilt);
        assert_eq!(collect(&mut m), vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.0]);

        c.execute("DELETE FROM embeddings WHERE face_id = 1", []).unwrap();
        let m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Rebuilt);
        assert_eq!(m.faces.len(), 2);

        // A damaged cache file is rebuilt, not trusted.
        let p = cache_path(&db_path);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 5).unwrap();
        let mut m = load(c, &db_path, 2, 3).unwrap();
        assert_eq!(m.refresh, Refresh::Rebuilt);
        assert_eq!(collect(&mut m).len(), 6);
        // Another embedder id gets its own (empty) matrix.
        assert!(load(c, &db_path, 1, 3).unwrap().faces.is_empty());
    }

    #[test]
    fn streams_in_chunks_covering_every_face() {
        let (_dir, db_path, db) = fresh_db();
        let c = &db.conn;
        let n = CHUNK_FACES * 2 + 5;
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..n {
            add_face(&tx, i as i64 / 2, i as i64 + 1, &[i as f32, 0.0, 1.0]);
        }
        tx.commit().unwrap();
        let mut m = load(c, &db_path, 2, 3).unwrap();
        let mut chunks = 0;
        let mut seen = 0;
        m.vectors
            .scan(&mut |first, chunk| {
                assert_eq!(first, seen);
                assert_eq!(chunk[0], first as f32);
                seen += chunk.len() / 3;
                chunks += 1;
            })
            .unwrap();
        assert_eq!((seen, chunks), (n, 3));
    }
}
