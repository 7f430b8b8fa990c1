//! A cached copy of one embedder's vectors beside the database (`<db>.vectors`), so `match` reads
//! one contiguous file instead of decoding a million SQLite rows, and streams it in chunks
//! instead of holding it.
//!
//! The cache may only make `match` faster, never change its result, so it proves what it
//! mirrors before it is used:
//! - its key names the database id, the random state token that triggers replace on every change
//!   the cache could see (migration 0003: two histories diverging from one copy never share a
//!   token), the embedder's id and model file hash, and the dimension;
//! - the header, the face records and the table of chunk checksums carry blake3 digests, checked
//!   on open, and every chunk of vectors is checked against its CRC-32 as it is streamed (CRC-32
//!   runs at ~4 GB/s here against blake3's ~1.3 GB/s: it keeps the 1 M-face re-match under a
//!   second, and it catches any damage short of a deliberate forgery).
//!
//! Anything that does not prove itself is rebuilt from SQLite; a chunk found damaged in the middle
//! of a scan is rebuilt too and the scan goes on from the rebuilt file, so the caller always sees
//! every vector exactly once and only vectors that match the database. There is no append path:
//! an older cache cannot cheaply prove its faces still mirror the database (a restored copy that
//! gains new faces reuses their ids), so any change rebuilds it. Deleting it is always safe.
//!
//! Layout, little-endian: header, then `count * dim` f32 vectors, then `count` face records,
//! then one CRC-32 per chunk of `CHUNK_FACES` vectors.
//! Header: magic, key digest, count (u64), dim (u32), chunk faces (u32), digest of the face
//! records, digest of the chunk table, digest of the header bytes before it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use crate::matching::{FaceRow, Vectors};

const MAGIC: &[u8; 8] = b"FACEDBV2";
const DIGEST_LEN: usize = 32;
const HEADER_LEN: usize = 8 + DIGEST_LEN + 8 + 4 + 4 + 3 * DIGEST_LEN;
const FACE_RECORD_LEN: usize = 8 + 8 + 4 * 4;
/// Faces per read while streaming (2 MiB of 128-d vectors) and per checksum.
const CHUNK_FACES: usize = 4096;
const CHUNK_SUM_LEN: usize = 4;

type Digest = [u8; DIGEST_LEN];

/// What the cache must mirror: one database state, one embedder, one dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    database_id: String,
    state: String,
    embedder_id: i64,
    embedder_blake3: String,
    dim: usize,
}

impl Key {
    fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"facedb vector cache 2\0");
        for part in [&self.database_id, &self.state, &self.embedder_blake3] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&self.embedder_id.to_le_bytes());
        h.update(&(self.dim as u64).to_le_bytes());
        *h.finalize().as_bytes()
    }
}

/// Where a cache built by this call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheWrite {
    /// Beside the database, for later runs.
    Save,
    /// An unnamed temporary file, gone when closed (`match --dry-run` writes nothing).
    Temporary,
}

/// Stored faces of one embedder with their vectors on disk.
pub struct FaceMatrix<'c> {
    pub faces: Vec<FaceRow>,
    /// `faces[i]`'s vector is the i-th in here.
    pub vectors: VectorFile<'c>,
    refresh: Refresh,
    /// Something the user should know (the cache could not be saved), to print once.
    pub warning: Option<String>,
}

impl FaceMatrix<'_> {
    /// What it took to bring the cache up to date, including a rebuild during a scan.
    pub fn refresh(&self) -> Refresh {
        if self.vectors.repaired {
            Refresh::Rebuilt
        } else {
            self.refresh
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The cache proved current.
    None,
    /// Rebuilt from SQLite (first use, a change, or a cache that failed a check).
    Rebuilt,
}

impl Refresh {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresh::None => "current",
            Refresh::Rebuilt => "rebuilt",
        }
    }
}

/// How to rebuild the cache if a chunk fails its checksum mid-scan.
struct Source<'c> {
    conn: &'c Connection,
    key: Key,
    path: PathBuf,
    write: CacheWrite,
}

/// The vector section of a verified cache file, streamed (and checked) on each scan.
pub struct VectorFile<'c> {
    file: File,
    dim: usize,
    count: usize,
    chunk_sums: Vec<u32>,
    faces_digest: Digest,
    source: Option<Source<'c>>,
    repaired: bool,
}

pub fn cache_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().unwrap_or_default().to_os_string();
    name.push(".vectors");
    db_path.with_file_name(name)
}

/// Removes the cache beside the database when it is facedb's (a regular file starting with the
/// cache's magic; a link or anything else is left alone), so it keeps no copy of vectors the
/// database no longer holds (`facedb forget`); the next `match` rebuilds it. Returns whether one
/// was removed.
pub fn erase(db_path: &Path) -> Result<bool> {
    use std::io::Read;
    let path = cache_path(db_path);
    let Ok(file) = open_existing(&path) else { return Ok(false) };
    let mut magic = [0u8; MAGIC.len()];
    if file.take(MAGIC.len() as u64).read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok(false);
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove the vector cache {}; delete it by hand", path.display()))?;
    Ok(true)
}

/// Opens the cache for `embedder_id`, rebuilding it first unless it proves it mirrors the
/// database as `conn` sees it. `conn` should be inside a transaction so the key, the rows and any
/// rebuild during a later scan come from one snapshot; the matrix borrows it for that reason.
pub fn load<'c>(conn: &'c Connection, db_path: &Path, embedder_id: i64, dim: usize, write: CacheWrite) -> Result<FaceMatrix<'c>> {
    let (key, mut warning) = current_key(conn, embedder_id, dim)?;
    let path = cache_path(db_path);
    let mut source = Source { conn, key, path, write };
    if warning.is_some() {
        source.write = CacheWrite::Temporary;
    }
    // Never replace what facedb would not have written there (a link, a FIFO, a folder): keep
    // this run's cache in a temporary file instead.
    if let Ok(meta) = std::fs::symlink_metadata(&source.path) {
        if !meta.file_type().is_file() {
            if write == CacheWrite::Save {
                warning = warning.or(Some(format!(
                    "{} is not a regular file, so the vector cache is not saved; remove it to let facedb cache vectors",
                    source.path.display()
                )));
            }
            source.write = CacheWrite::Temporary;
        }
    }
    let (faces, vectors, refresh) = match open_existing(&source.path).and_then(|f| open_verified(f, &source.key)) {
        Ok((faces, v)) => (faces, v, Refresh::None),
        Err(_) => {
            let (file, note) = build(&mut source)?;
            warning = warning.or(note);
            let (faces, v) = open_verified(file, &source.key).context("the vector cache just built fails its own checks")?;
            (faces, v, Refresh::Rebuilt)
        }
    };
    Ok(FaceMatrix { faces, vectors: VectorFile { source: Some(source), ..vectors }, refresh, warning })
}

/// Opens the existing cache for reading without blocking on a FIFO or following a link.
fn open_existing(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path)?;
    if !file.metadata()?.file_type().is_file() {
        bail!("not a regular file");
    }
    Ok(file)
}

/// The key of the database as `conn` sees it, and a warning when it cannot have one.
fn current_key(conn: &Connection, embedder_id: i64, dim: usize) -> Result<(Key, Option<String>)> {
    use rusqlite::types::Value;
    let (database_id, state, embedder_blake3): (Value, Value, Value) = conn.query_row(
        "SELECT (SELECT value FROM meta WHERE key = 'database_id'), (SELECT value FROM meta WHERE key = 'cache_state'),
                (SELECT file_blake3 FROM models WHERE id = ?1 AND kind = 'embedder')",
        [embedder_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let Value::Text(embedder_blake3) = embedder_blake3 else {
        bail!("embedder model {embedder_id} is not registered in the database");
    };
    let token = |v: Value| match v {
        Value::Text(s) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Some(s),
        _ => None,
    };
    match (token(database_id), token(state)) {
        (Some(database_id), Some(state)) => Ok((Key { database_id, state, embedder_id, embedder_blake3, dim }, None)),
        // A hand-edited meta table: no cache can prove it mirrors this database, so none is used
        // or saved (a key no file carries), and matching goes on from SQLite.
        _ => Ok((
            Key { database_id: String::new(), state: format!("{:016x}", random_u64()), embedder_id, embedder_blake3, dim },
            Some("the database's 'meta' table lacks a valid database_id or cache_state, so the vector cache is rebuilt on every match; restore the database from a backup".to_string()),
        )),
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// Checks everything but the vector chunks (those are checked as they are streamed) and reads the
/// face records. Never trusts a length before comparing it with the file's real size.
fn open_verified<'c>(mut file: File, key: &Key) -> Result<(Vec<FaceRow>, VectorFile<'c>)> {
    let dim = key.dim;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        bail!("not a regular file");
    }
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, 0).context("cache shorter than its header")?;
    let (fields, header_digest) = h.split_at(HEADER_LEN - DIGEST_LEN);
    if &h[..8] != MAGIC || blake3::hash(fields).as_bytes() != header_digest {
        bail!("not a facedb vector cache, or its header is damaged");
    }
    if h[8..40] != key.digest() {
        bail!("the cache mirrors another database state, embedder or dimension");
    }
    let count = u64::from_le_bytes(h[40..48].try_into()?);
    let stored_dim = u32::from_le_bytes(h[48..52].try_into()?);
    let chunk_faces = u32::from_le_bytes(h[52..56].try_into()?);
    if stored_dim as usize != dim || chunk_faces as usize != CHUNK_FACES || dim == 0 {
        bail!("cache layout differs");
    }
    let chunks = count.div_ceil(CHUNK_FACES as u64);
    let vectors_len = count.checked_mul(dim as u64 * 4).context("size overflow")?;
    let faces_len = count.checked_mul(FACE_RECORD_LEN as u64).context("size overflow")?;
    let sums_len = chunks * CHUNK_SUM_LEN as u64;
    let expected =
        [vectors_len, faces_len, sums_len].iter().try_fold(HEADER_LEN as u64, |a, &b| a.checked_add(b)).context("size overflow")?;
    if meta.len() != expected {
        bail!("cache has the wrong length");
    }
    // Lengths are now bounded by the file's real size, so these allocations are too.
    let mut faces_raw = vec![0u8; usize::try_from(faces_len)?];
    file.read_exact_at(&mut faces_raw, HEADER_LEN as u64 + vectors_len)?;
    let faces_digest = *blake3::hash(&faces_raw).as_bytes();
    if faces_digest[..] != h[56..88] {
        bail!("cache face records are damaged");
    }
    let mut sums_raw = vec![0u8; usize::try_from(sums_len)?];
    file.read_exact_at(&mut sums_raw, HEADER_LEN as u64 + vectors_len + faces_len)?;
    if blake3::hash(&sums_raw).as_bytes()[..] != h[88..120] {
        bail!("cache chunk checksums are damaged");
    }
    let faces: Vec<FaceRow> = faces_raw.chunks_exact(FACE_RECORD_LEN).map(decode_face).collect();
    let chunk_sums = sums_raw.chunks_exact(CHUNK_SUM_LEN).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    file.seek(SeekFrom::Start(0))?;
    let count = faces.len();
    Ok((faces, VectorFile { file, dim, count, chunk_sums, faces_digest, source: None, repaired: false }))
}

/// Builds the cache for `source.key` from SQLite: saved beside the database (written under a
/// private temporary name, then renamed into place, so readers never see half a cache), or into
/// an unnamed temporary file. If it cannot be saved, this run goes on with a temporary one.
/// Returns the file and, if saving failed, why.
fn build(source: &mut Source) -> Result<(File, Option<String>)> {
    if source.write == CacheWrite::Save {
        match save(source) {
            Ok(file) => return Ok((file, None)),
            Err(e) => {
                source.write = CacheWrite::Temporary;
                let note = format!("could not save the vector cache {} ({e:#}); matching goes on without saving it", source.path.display());
                let file = build_temporary(source)?;
                return Ok((file, Some(note)));
            }
        }
    }
    Ok((build_temporary(source)?, None))
}

fn build_temporary(source: &Source) -> Result<File> {
    let mut file = tempfile::tempfile().context("creating a temporary file for the vector cache")?;
    write_cache(source.conn, &source.key, &mut file).context("building the vector cache in a temporary file")?;
    Ok(file)
}

fn save(source: &Source) -> Result<File> {
    remove_stale_parts(&source.path);
    // A fresh random suffix: O_EXCL never meets a leftover, and two concurrent builders each
    // finish a whole cache; O_NOFOLLOW never writes through a planted link.
    let nonce = random_u64();
    let mut name = source.path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{nonce:016x}.part", std::process::id()));
    let tmp = source.path.with_file_name(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let result = write_cache(source.conn, &source.key, &mut file).and_then(|()| {
        file.sync_all()?;
        std::fs::rename(&tmp, &source.path)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| file)
}

/// Removes the temporary caches (`<cache>.<pid>-<nonce>.part`, names only facedb makes) left by
/// builders that died (kill -9, power loss): each is as big as the cache. A live builder's is kept.
fn remove_stale_parts(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(name)).and_then(|n| n.strip_prefix('.')) else {
            continue;
        };
        let Some((pid, nonce)) = rest.strip_suffix(".part").and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (Ok(pid), true) = (pid.parse::<libc::pid_t>(), nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit())) else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let dead = pid > 0 && unsafe { libc::kill(pid, 0) } == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes the whole cache for `key` into `file` (empty, at offset 0): the rows come from the
/// caller's snapshot, in face id order.
fn write_cache(conn: &Connection, key: &Key, file: &mut File) -> Result<()> {
    let dim = key.dim;
    let mut out = BufWriter::with_capacity(1 << 20, &mut *file);
    out.write_all(&[0u8; HEADER_LEN])?;
    let mut faces = Vec::new();
    let mut sums = Vec::new();
    let mut chunk = crc32fast::Hasher::new();
    let mut in_chunk = 0;
    for_each_face(conn, key.embedder_id, |face, blob| {
        // A malformed vector (hand-edited database) is skipped rather than trusted.
        if blob.len() != dim * 4 {
            return Ok(());
        }
        out.write_all(blob)?;
        chunk.update(blob);
        faces.push(face);
        in_chunk += 1;
        if in_chunk == CHUNK_FACES {
            sums.extend_from_slice(&std::mem::take(&mut chunk).finalize().to_le_bytes());
            in_chunk = 0;
        }
        Ok(())
    })?;
    if in_chunk > 0 {
        sums.extend_from_slice(&chunk.finalize().to_le_bytes());
    }
    let mut faces_hash = blake3::Hasher::new();
    for f in &faces {
        let rec = encode_face(f);
        out.write_all(&rec)?;
        faces_hash.update(&rec);
    }
    out.write_all(&sums)?;
    out.flush()?;
    drop(out);
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&key.digest());
    h.extend_from_slice(&(faces.len() as u64).to_le_bytes());
    h.extend_from_slice(&u32::try_from(dim)?.to_le_bytes());
    h.extend_from_slice(&(CHUNK_FACES as u32).to_le_bytes());
    h.extend_from_slice(faces_hash.finalize().as_bytes());
    h.extend_from_slice(blake3::hash(&sums).as_bytes());
    let header_digest = blake3::hash(&h);
    h.extend_from_slice(header_digest.as_bytes());
    file.write_all_at(&h, 0)?;
    Ok(())
}

/// Every face the cache holds, with its vector blob, in face id order: faces found by their
/// image's current detector (older detections are kept but no longer count), of photos with at
/// least one present file (a deleted photo must not stay matched).
fn for_each_face(conn: &Connection, embedder_id: i64, mut visit: impl FnMut(FaceRow, &[u8]) -> Result<()>) -> Result<()> {
    // Photos that count, with their current detector: two sequential scans here and a lookup
    // per face (at 1 M faces, probing images and files per face in the join doubled the rebuild).
    let mut current = ImageMap::new(conn)?;
    let mut stmt = conn.prepare("SELECT image_id FROM files WHERE missing = 0 AND image_id IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        current.set(r.get(0)?, PRESENT);
    }
    let mut stmt = conn.prepare("SELECT id, detector_id FROM images WHERE detector_id IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id = r.get(0)?;
        if current.get(id) == PRESENT {
            current.set(id, r.get(1)?);
        }
    }
    let mut stmt = conn.prepare(
        // Primary-key order, no sort; `decide` groups faces by photo itself.
        "SELECT f.image_id, e.face_id, f.size_px, f.sharpness, f.yaw, f.score, e.vector, f.detector_id
         FROM embeddings e JOIN faces f ON f.id = e.face_id WHERE e.model_id = ?1 ORDER BY e.face_id",
    )?;
    let mut rows = stmt.query([embedder_id])?;
    while let Some(r) = rows.next()? {
        let face =
            FaceRow { image_id: r.get(0)?, face_id: r.get(1)?, size_px: r.get(2)?, sharpness: r.get(3)?, yaw: r.get(4)?, score: r.get(5)? };
        if current.get(face.image_id) != r.get::<_, i64>(7)? {
            continue;
        }
        // A vector that is not a blob (hand-edited database) is skipped like a malformed one.
        let blob = r.get_ref(6)?.as_blob().unwrap_or(&[]);
        visit(face, blob)?;
    }
    Ok(())
}

/// Not in an `ImageMap`.
const ABSENT: i64 = i64::MIN;
/// In an `ImageMap` with no detector yet (no real model id is this).
const PRESENT: i64 = i64::MIN + 1;

/// Image id -> a value: a vector indexed by id when ids are dense (rowids nearly always are; no
/// hashing at a million photos), a hash map otherwise (a hand-edited database).
enum ImageMap {
    Dense(Vec<i64>),
    Sparse(std::collections::HashMap<i64, i64>),
}

impl ImageMap {
    fn new(conn: &Connection) -> Result<Self> {
        let (min, max, n): (Option<i64>, Option<i64>, i64) =
            conn.query_row("SELECT min(id), max(id), count(*) FROM images", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(match (min, max) {
            (Some(lo), Some(hi)) if lo >= 0 && hi <= 2 * n + 4096 => ImageMap::Dense(vec![ABSENT; usize::try_from(hi)? + 1]),
            _ => ImageMap::Sparse(std::collections::HashMap::new()),
        })
    }

    fn get(&self, id: i64) -> i64 {
        match self {
            ImageMap::Dense(v) => usize::try_from(id).ok().and_then(|i| v.get(i)).copied().unwrap_or(ABSENT),
            ImageMap::Sparse(m) => m.get(&id).copied().unwrap_or(ABSENT),
        }
    }

    fn set(&mut self, id: i64, value: i64) {
        if let ImageMap::Dense(v) = self {
            match usize::try_from(id).ok().and_then(|i| v.get_mut(i)) {
                Some(slot) => {
                    *slot = value;
                    return;
                }
                // An id outside the range counted above (not in this snapshot's images): keep it
                // anyway, so nothing is silently dropped.
                None => *self = ImageMap::Sparse(v.iter().enumerate().filter(|(_, &x)| x != ABSENT).map(|(i, &x)| (i as i64, x)).collect()),
            }
        }
        if let ImageMap::Sparse(m) = self {
            m.insert(id, value);
        }
    }
}

// The file holds little-endian f32, as every target facedb builds for does in memory.
const _: () = assert!(cfg!(target_endian = "little"), "the vector cache is read as native f32");

/// The floats' bytes, so a chunk is read straight into them: no copy and no conversion pass
/// (that pass cost as much as checksumming the chunk).
fn as_bytes_mut(floats: &mut [f32]) -> &mut [u8] {
    // SAFETY: f32 has no padding and every bit pattern is a valid f32; u8 needs no alignment.
    unsafe { std::slice::from_raw_parts_mut(floats.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(floats)) }
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

impl VectorFile<'_> {
    /// Reads chunk `k` into `floats` and says whether it matches its checksum (a read error, e.g.
    /// a file truncated under us, counts as a mismatch).
    fn read_chunk(&self, k: usize, floats: &mut [f32]) -> bool {
        let offset = HEADER_LEN as u64 + (k * CHUNK_FACES * self.dim * 4) as u64;
        let bytes = as_bytes_mut(floats);
        self.file.read_exact_at(bytes, offset).is_ok() && self.chunk_sums.get(k) == Some(&crc32fast::hash(bytes))
    }

    /// Replaces a cache that failed a chunk checksum by one rebuilt from the same snapshot. The
    /// face records were verified on open, so the rebuilt file must hold exactly the same faces.
    fn repair(&mut self) -> Result<()> {
        let Some(source) = self.source.as_mut() else {
            bail!("the vector cache is damaged");
        };
        let (file, _) = build(source)?;
        let (_, fresh) = open_verified(file, &source.key).context("the vector cache just built fails its own checks")?;
        if fresh.faces_digest != self.faces_digest || fresh.count != self.count {
            bail!("the database changed during the match; run it again");
        }
        self.file = fresh.file;
        self.chunk_sums = fresh.chunk_sums;
        self.repaired = true;
        Ok(())
    }
}

impl Vectors for VectorFile<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let mut floats = vec![0f32; CHUNK_FACES * self.dim];
        let mut first = 0;
        while first < self.count {
            let k = first / CHUNK_FACES;
            let n = CHUNK_FACES.min(self.count - first);
            let chunk = &mut floats[..n * self.dim];
            // Checked before it is visited: a damaged chunk never reaches the caller.
            if !self.read_chunk(k, chunk) {
                self.repair().context("rebuilding the damaged vector cache")?;
                if !self.read_chunk(k, chunk) {
                    bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
                }
            }
            visit(first, chunk);
            first += n;
        }
        Ok(())
    }
}

/// Support for the fuzz target and the property test: a database fixture and a loader that takes
/// arbitrary cache bytes. Not part of facedb's interface.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use crate::db::{vector_to_blob, Db};

    /// A database in a temporary folder with one detector (id 1) and one embedder (id 2).
    pub struct Fixture {
        pub dir: tempfile::TempDir,
        pub db_path: PathBuf,
        pub db: Db,
        next_face: i64,
        seed: u64,
    }

    pub const DIM: usize = 3;

    impl Fixture {
        pub fn new() -> Result<Self> {
            let dir = tempfile::tempdir()?;
            let db_path = dir.path().join("facedb.sqlite");
            let db = Db::open(&db_path)?;
            db.conn.execute_batch(
                "INSERT INTO runs (id, command, args_json, facedb_version, started_at) VALUES (1, 'index', '{}', 'test', '');
                 INSERT INTO models (id, kind, name, file_blake3, params_json) VALUES (1, 'detector', 'd', 'x', '{}'), (2, 'embedder', 'e', 'y', '{}');",
            )?;
            Ok(Self { dir, db_path, db, next_face: 1, seed: 0x9e37_79b9_7f4a_7c15 })
        }

        fn random(&mut self) -> u64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed
        }

        /// Adds a photo (image, present file) with one embedded face of vector `v`; returns the face id.
        pub fn add_face(&mut self, v: &[f32]) -> Result<i64> {
            let tag = self.random();
            let face_id = self.next_face;
            self.next_face += 1;
            let c = &self.db.conn;
            c.execute(
                "INSERT INTO images (blake3, size_bytes, status, detector_id, run_id, created_at) VALUES (?1, 1, 'ok', 1, 1, '')",
                [format!("{tag:016x}-{face_id}")],
            )?;
            let image_id = c.last_insert_rowid();
            c.execute(
                "INSERT INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run) VALUES (?1, ?2, 1, 0, 0, 0, 1, 1)",
                rusqlite::params![format!("p{tag:016x}-{face_id}.jpg"), image_id],
            )?;
            c.execute(
                "INSERT INTO faces (id, image_id, detector_id, idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness)
                 VALUES (?1, ?2, 1, 0, 0, 0, 50, 50, 0.9, '[]', 50, 100, 0, 0, 128)",
                rusqlite::params![face_id, image_id],
            )?;
            c.execute(
                "INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, 2, ?2)",
                rusqlite::params![face_id, vector_to_blob(v)],
            )?;
            Ok(face_id)
        }

        /// Adds `n` faces with pseudo-random vectors.
        pub fn add_random_faces(&mut self, n: usize) -> Result<()> {
            self.db.conn.execute_batch("BEGIN")?;
            for _ in 0..n {
                let v: Vec<f32> = (0..DIM).map(|_| (self.random() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
                self.add_face(&v)?;
            }
            self.db.conn.execute_batch("COMMIT")?;
            Ok(())
        }

        /// Saves a copy of the database as a user would back it up.
        pub fn backup(&self, to: &Path) -> Result<()> {
            self.db.conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
            Ok(())
        }

        /// Puts a copy back in place of the database, as a user restoring a backup would.
        pub fn restore(&mut self, from: &Path) -> Result<()> {
            let placeholder = Db::open(&self.dir.path().join("placeholder.sqlite"))?;
            drop(std::mem::replace(&mut self.db, placeholder));
            std::fs::copy(from, &self.db_path)?;
            self.db = Db::open(&self.db_path)?;
            Ok(())
        }

        /// Sets the next face id (a database restored from a copy hands out ids again).
        pub fn set_next_face(&mut self, id: i64) {
            self.next_face = id;
        }

        /// The faces and vectors the cache must hold, by the rule written out in plain SQL
        /// (independent of the faster code that builds the cache).
        pub fn truth(&self) -> Result<(Vec<FaceRow>, Vec<f32>)> {
            let mut faces = Vec::new();
            let mut vectors = Vec::new();
            let mut stmt = self.db.conn.prepare(
                "SELECT f.image_id, e.face_id, f.size_px, f.sharpness, f.yaw, f.score, e.vector
                 FROM embeddings e JOIN faces f ON f.id = e.face_id JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id
                 WHERE e.model_id = 2 AND length(e.vector) = ?1 AND EXISTS (SELECT 1 FROM files p WHERE p.image_id = f.image_id AND p.missing = 0)
                 ORDER BY e.face_id",
            )?;
            let mut rows = stmt.query([DIM * 4])?;
            while let Some(r) = rows.next()? {
                let blob: Vec<u8> = r.get(6)?;
                vectors.extend(blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                faces.push(FaceRow {
                    image_id: r.get(0)?,
                    face_id: r.get(1)?,
                    size_px: r.get(2)?,
                    sharpness: r.get(3)?,
                    yaw: r.get(4)?,
                    score: r.get(5)?,
                });
            }
            Ok((faces, vectors))
        }

        /// A random change of what counts: a photo's file goes missing or comes back, or an
        /// image's detector changes (models 1 and 3 are detectors).
        pub fn toggle_random(&mut self) -> Result<()> {
            let pick = self.random() % self.next_face.max(1) as u64;
            let c = &self.db.conn;
            c.execute(
                "INSERT OR IGNORE INTO models (id, kind, name, file_blake3, params_json) VALUES (3, 'detector', 'd2', 'z', '{}')",
                [],
            )?;
            if pick.is_multiple_of(2) {
                c.execute(
                    "UPDATE files SET missing = 1 - missing WHERE image_id = (SELECT image_id FROM faces WHERE id = ?1)",
                    [pick as i64],
                )?;
            } else {
                c.execute(
                    "UPDATE images SET detector_id = 4 - detector_id WHERE id = (SELECT image_id FROM faces WHERE id = ?1)",
                    [pick as i64],
                )?;
            }
            Ok(())
        }

        /// Loads through the cache and scans every vector.
        pub fn load(&self) -> Result<(Vec<FaceRow>, Vec<f32>, Refresh)> {
            let tx = self.db.conn.unchecked_transaction()?;
            let mut m = load(&tx, &self.db_path, 2, DIM, CacheWrite::Save)?;
            let all = scan_all(&mut m.vectors)?;
            let refresh = m.refresh();
            Ok((std::mem::take(&mut m.faces), all, refresh))
        }

        pub fn cache_path(&self) -> PathBuf {
            cache_path(&self.db_path)
        }
    }

    pub fn scan_all(v: &mut dyn Vectors) -> Result<Vec<f32>> {
        let mut all = Vec::new();
        v.scan(&mut |first, chunk| {
            assert_eq!(first * DIM, all.len(), "chunks arrive in order, each once");
            all.extend_from_slice(chunk);
        })?;
        Ok(all)
    }

    /// Same bits (NaN included), for comparing a cache's contents with SQLite's.
    pub fn same(a: &(Vec<FaceRow>, Vec<f32>), b: &(Vec<FaceRow>, Vec<f32>)) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let faces = |f: &[FaceRow]| f.iter().map(encode_face).collect::<Vec<_>>();
        faces(&a.0) == faces(&b.0) && bits(&a.1) == bits(&b.1)
    }

    /// Loads arbitrary bytes as a cache for the fixture's current state (without a source to
    /// rebuild from): must never panic, and whatever it accepts must scan without panicking.
    pub fn load_bytes(fixture: &Fixture, bytes: &[u8]) -> Result<Vec<f32>> {
        let mut file = tempfile::tempfile()?;
        file.write_all(bytes)?;
        let (key, _) = current_key(&fixture.db.conn, 2, DIM)?;
        let (_, mut v) = open_verified(file, &key)?;
        scan_all(&mut v)
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::{same, scan_all, Fixture, DIM};
    use super::*;
    use crate::db::vector_to_blob;

    fn collect(m: &mut FaceMatrix) -> Vec<f32> {
        scan_all(&mut m.vectors).unwrap()
    }

    #[test]
    fn built_once_reused_and_rebuilt_on_any_change() {
        let mut fx = Fixture::new().unwrap();
        fx.add_face(&[1.0, 0.0, 0.0]).unwrap();
        fx.add_face(&[0.0, 1.0, 0.0]).unwrap();
        let c = &fx.db.conn;
        let db_path = fx.db_path.clone();

        let mut m = load(c, &db_path, 2, 3, CacheWrite::Save).unwrap();
        assert_eq!(m.refresh(), Refresh::Rebuilt);
        assert_eq!(m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(collect(&mut m), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        drop(m);
        assert_eq!(load(c, &db_path, 2, 3, CacheWrite::Save).unwrap().refresh(), Refresh::None, "unchanged database reuses the cache");

        // A hand-written update is seen (trigger).
        c.execute("UPDATE embeddings SET vector = ?1 WHERE face_id = 2", [vector_to_blob(&[0.0, 0.0, 1.0])]).unwrap();
        let mut m = load(c, &db_path, 2, 3, CacheWrite::Save).unwrap();
        assert_eq!(m.refresh(), Refresh::Rebuilt);
        assert_eq!(collect(&mut m), vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        drop(m);

        // A missing file drops its photo's faces; coming back brings them back.
        c.execute("UPDATE files SET missing = 1 WHERE image_id = (SELECT image_id FROM faces WHERE id = 1)", []).unwrap();
        let m = load(c, &db_path, 2, 3, CacheWrite::Save).unwrap();
        assert_eq!((m.refresh(), m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>()), (Refresh::Rebuilt, vec![2]));
        drop(m);
        c.execute("UPDATE files SET missing = 0", []).unwrap();
        assert_eq!(load(c, &db_path, 2, 3, CacheWrite::Save).unwrap().faces.len(), 2);
        // A no-op update of those columns keeps the cache current.
        c.execute("UPDATE files SET missing = 0, last_run = 1", []).unwrap();
        assert_eq!(load(c, &db_path, 2, 3, CacheWrite::Save).unwrap().refresh(), Refresh::None);

        // Faces of an image's former detector are not matched.
        c.execute("INSERT INTO models (id, kind, name, file_blake3, params_json) VALUES (3, 'detector', 'd2', 'z', '{}')", []).unwrap();
        c.execute("UPDATE images SET detector_id = 3 WHERE id = (SELECT image_id FROM faces WHERE id = 2)", []).unwrap();
        let m = load(c, &db_path, 2, 3, CacheWrite::Save).unwrap();
        assert_eq!((m.refresh(), m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>()), (Refresh::Rebuilt, vec![1]));
        drop(m);

        // The embedder's file hash is part of the key.
        c.execute("UPDATE models SET file_blake3 = 'y2' WHERE id = 2", []).unwrap();
        assert_eq!(load(c, &db_path, 2, 3, CacheWrite::Save).unwrap().refresh(), Refresh::Rebuilt);
        // A hand-edited meta table: matching goes on from SQLite, nothing saved, with a warning.
        c.execute("DELETE FROM meta WHERE key = 'cache_state'", []).unwrap();
        let before = std::fs::read(cache_path(&db_path)).unwrap();
        for _ in 0..2 {
            let mut m = load(c, &db_path, 2, 3, CacheWrite::Save).unwrap();
            assert_eq!((m.refresh(), m.warning.is_some(), collect(&mut m)), (Refresh::Rebuilt, true, vec![1.0, 0.0, 0.0]));
        }
        assert!(std::fs::read(cache_path(&db_path)).unwrap() == before);
        // A detector's id is no embedder, and an unknown id is an error.
        assert!(load(c, &db_path, 1, 3, CacheWrite::Save).is_err());
        assert!(load(c, &db_path, 99, 3, CacheWrite::Save).is_err());
    }

    #[test]
    fn sparse_or_negative_image_ids_still_count() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(3).unwrap();
        fx.db
            .conn
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 UPDATE images SET id = -5 WHERE id = 1; UPDATE files SET image_id = -5 WHERE image_id = 1; UPDATE faces SET image_id = -5 WHERE image_id = 1;
                 UPDATE images SET id = 1 << 40 WHERE id = 2; UPDATE files SET image_id = 1 << 40 WHERE image_id = 2; UPDATE faces SET image_id = 1 << 40 WHERE image_id = 2;",
            )
            .unwrap();
        let (faces, vectors, _) = fx.load().unwrap();
        assert_eq!(faces.iter().map(|f| f.image_id).collect::<Vec<_>>(), vec![-5, 1 << 40, 3]);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
    }

    #[test]
    fn a_dead_builders_temporary_cache_is_removed_a_live_ones_kept() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(3).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let name = |pid: u32| fx.dir.path().join(format!("facedb.sqlite.vectors.{pid}-00112233aabbccdd.part"));
        let other = fx.dir.path().join("facedb.sqlite.vectors.notes.part");
        for p in [name(dead), name(std::process::id()), other.clone()] {
            std::fs::write(p, b"x").unwrap();
        }
        fx.load().unwrap();
        assert!(!name(dead).exists());
        assert!(name(std::process::id()).exists() && other.exists());
    }

    #[test]
    fn temporary_mode_never_writes_the_cache() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(10).unwrap();
        let mut m = load(&fx.db.conn, &fx.db_path, 2, DIM, CacheWrite::Temporary).unwrap();
        assert_eq!(collect(&mut m).len(), 10 * DIM);
        assert!(!fx.cache_path().exists());
        let names: Vec<_> = std::fs::read_dir(fx.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains(".vectors")), "{names:?}");
    }

    #[test]
    fn a_link_or_fifo_at_the_cache_path_is_left_alone() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(5).unwrap();
        let target = fx.dir.path().join("precious.txt");
        std::fs::write(&target, b"mine").unwrap();
        std::os::unix::fs::symlink(&target, fx.cache_path()).unwrap();
        let mut m = load(&fx.db.conn, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
        assert!(m.warning.as_deref().unwrap_or("").contains("not a regular file"));
        assert_eq!(collect(&mut m).len(), 5 * DIM);
        assert_eq!(std::fs::read(&target).unwrap(), b"mine");
        assert!(std::fs::symlink_metadata(fx.cache_path()).unwrap().file_type().is_symlink());
        std::fs::remove_file(fx.cache_path()).unwrap();
        let fifo = std::ffi::CString::new(fx.cache_path().into_os_string().into_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let mut m = load(&fx.db.conn, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
        assert_eq!(collect(&mut m).len(), 5 * DIM);
    }

    #[test]
    fn streams_in_chunks_covering_every_face() {
        let mut fx = Fixture::new().unwrap();
        let n = CHUNK_FACES * 2 + 5;
        fx.add_random_faces(n).unwrap();
        let mut m = load(&fx.db.conn, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
        let mut chunks = 0;
        let mut seen = 0;
        m.vectors
            .scan(&mut |first, chunk| {
                assert_eq!(first, seen);
                seen += chunk.len() / DIM;
                chunks += 1;
            })
            .unwrap();
        assert_eq!((seen, chunks), (n, 3));
    }

    /// Damages the cache at random offsets and lengths (zeros, random bytes, swapped chunks,
    /// truncation) and restores older copies of the database: whatever the cache holds, what
    /// `load` returns always equals a fresh read of SQLite.
    #[test]
    fn property_damaged_caches_and_restored_databases_never_change_the_result() {
        let mut fx = Fixture::new().unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        fx.add_random_faces(CHUNK_FACES * 2 + 17).unwrap();
        let backup = fx.dir.path().join("backup.sqlite");
        fx.backup(&backup).unwrap();
        let backup_next = CHUNK_FACES as i64 * 2 + 18;
        let mut rebuilt = 0;
        for round in 0..60 {
            match round % 6 {
                // Restore the old copy, then let it diverge with new faces (ids handed out again).
                0 => {
                    fx.restore(&backup).unwrap();
                    fx.set_next_face(backup_next);
                    fx.add_random_faces((next() % 300) as usize).unwrap();
                }
                1 => fx.add_random_faces((next() % 50) as usize + 1).unwrap(),
                2 | 3 => {
                    for _ in 0..next() % 20 {
                        fx.toggle_random().unwrap();
                    }
                }
                _ => {}
            }
            let truth = fx.truth().unwrap();
            let (faces, vectors, _) = fx.load().unwrap();
            assert!(same(&(faces, vectors), &truth), "round {round}: load after a database change");
            // Now damage the (current) cache and load again.
            let p = fx.cache_path();
            let mut bytes = std::fs::read(&p).unwrap();
            let len = bytes.len();
            match next() % 5 {
                0 => {
                    let at = (next() as usize) % len;
                    let n = ((next() as usize) % 5000 + 1).min(len - at);
                    bytes[at..at + n].fill(0);
                }
                1 => {
                    let at = (next() as usize) % len;
                    let n = ((next() as usize) % 64 + 1).min(len - at);
                    for b in &mut bytes[at..at + n] {
                        *b = next() as u8;
                    }
                }
                2 => {
                    let chunk = CHUNK_FACES * DIM * 4;
                    let (a, b) = (HEADER_LEN, HEADER_LEN + chunk);
                    let (x, y) = bytes[a..b + chunk].split_at_mut(chunk);
                    x.swap_with_slice(y);
                }
                3 => bytes.truncate((next() as usize) % len),
                _ => {
                    // Random bytes over the whole body, header kept.
                    for b in &mut bytes[HEADER_LEN..] {
                        *b = next() as u8;
                    }
                }
            }
            std::fs::write(&p, &bytes).unwrap();
            let (faces, vectors, refresh) = fx.load().unwrap();
            assert!(same(&(faces, vectors), &truth), "round {round}: load of a damaged cache");
            rebuilt += usize::from(refresh == Refresh::Rebuilt);
        }
        assert!(rebuilt >= 55, "nearly every damage is detected (a zeroed range can hit zero padding): {rebuilt}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_loader() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(20).unwrap();
        fx.load().unwrap();
        let good = std::fs::read(fx.cache_path()).unwrap();
        assert_eq!(fuzzing::load_bytes(&fx, &good).unwrap().len(), 20 * DIM);
        for n in [0, 1, 8, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 1, good.len() - 1] {
            assert!(fuzzing::load_bytes(&fx, &good[..n]).is_err());
        }
        let mut bad = good.clone();
        bad[HEADER_LEN + 5] ^= 1;
        assert!(fuzzing::load_bytes(&fx, &bad).is_err(), "a flipped vector bit is caught while streaming");
    }
}
