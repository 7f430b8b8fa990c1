//! A cached copy of one embedder's vectors beside the database (`<db>.vectors`), so `match` reads
//! one file instead of decoding millions of SQLite rows, and streams it in chunks instead of
//! holding it (pread, never a mapping that would count in the resident size).
//!
//! Each vector is kept twice: a compact i16 copy (per-vector scale, with a proven bound on the
//! distance error, see [`quantize`]) that `match` scans to estimate every distance, and the exact
//! f32 row, read only for the faces whose estimate cannot decide (those near the threshold, or
//! whose histogram bin or closest face in their photo the bound leaves open; `matching`).
//!
//! The cache may only make `match` faster, never change its result, so it proves what it
//! mirrors before it is used:
//! - its key names the database id, the random state token that triggers replace on every change
//!   the cache could see (migration 0003: two histories diverging from one copy never share a
//!   token), the embedder's id and model file hash, and the dimension;
//! - the header, the face records and the table of chunk checksums carry blake3 digests, checked
//!   on open; every compact chunk is checked against its CRC-32 as it is streamed, and every
//!   exact row against its own CRC-32 when it is read (CRC-32 runs at ~4 GB/s here against
//!   blake3's ~1.3 GB/s, and catches any damage short of a deliberate forgery). An exact row that
//!   is never read is never trusted, so its damage cannot change a result.
//!
//! Anything that does not prove itself is rebuilt from SQLite; a chunk or row found damaged in
//! the middle of a scan is rebuilt too and the scan goes on from the rebuilt file, so the caller
//! always sees every vector exactly once and only vectors that match the database. There is no
//! append path: an older cache cannot cheaply prove its faces still mirror the database (a
//! restored copy that gains new faces reuses their ids), so any change rebuilds it. Deleting it
//! is always safe.
//!
//! Layout, little-endian: header; then per chunk of `CHUNK_FACES` faces (the last one shorter) a
//! compact block (per face: scale f32, bound f32, `dim` i16) followed by an exact block (per
//! face: `dim` f32 and the CRC-32 of their bytes); then `count` face records; then one CRC-32 per
//! compact block.
//! Header: magic, key digest, count (u64), dim (u32), chunk faces (u32), digest of the face
//! records, digest of the chunk table, digest of the header bytes before it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use crate::matching::{Estimates, FaceRow, Vectors};

const MAGIC: &[u8; 8] = b"FACEDBV3";
const DIGEST_LEN: usize = 32;
const HEADER_LEN: usize = 8 + DIGEST_LEN + 8 + 4 + 4 + 3 * DIGEST_LEN;
const FACE_RECORD_LEN: usize = 8 + 8 + 4 * 4;
/// Faces per read while streaming (1 MiB of compact 128-d vectors) and per checksum.
const CHUNK_FACES: usize = 4096;
const CHUNK_SUM_LEN: usize = 4;
/// i16 slots before a compact vector's values: its scale and its bound, two f32.
const COMPACT_HEAD_SLOTS: usize = 4;

/// Bytes of one face in a compact block and in an exact block.
fn compact_len(dim: usize) -> usize {
    2 * (COMPACT_HEAD_SLOTS + dim)
}
fn exact_len(dim: usize) -> usize {
    4 * dim + CHUNK_SUM_LEN
}

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
    /// Exact rows read one by one (the faces estimates could not decide), for tests and tuning.
    exact_reads: usize,
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
    let vectors_len = count.checked_mul((compact_len(dim) + exact_len(dim)) as u64).context("size overflow")?;
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
    Ok((faces, VectorFile { file, dim, count, chunk_sums, faces_digest, source: None, repaired: false, exact_reads: 0 }))
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
    // One chunk's blocks are gathered, then written compact block first.
    let (mut compact, mut exact) = (Vec::with_capacity(CHUNK_FACES * compact_len(dim)), Vec::with_capacity(CHUNK_FACES * exact_len(dim)));
    let mut flush = |out: &mut BufWriter<&mut File>, compact: &mut Vec<u8>, exact: &mut Vec<u8>| -> Result<()> {
        sums.extend_from_slice(&crc32fast::hash(compact).to_le_bytes());
        out.write_all(compact)?;
        out.write_all(exact)?;
        compact.clear();
        exact.clear();
        Ok(())
    };
    let mut floats = vec![0f32; dim];
    for_each_face(conn, key.embedder_id, |face, blob| {
        // A malformed vector (hand-edited database) is skipped rather than trusted.
        if blob.len() != dim * 4 {
            return Ok(());
        }
        for (x, b) in floats.iter_mut().zip(blob.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        quantize(&floats, &mut compact);
        exact.extend_from_slice(blob);
        exact.extend_from_slice(&crc32fast::hash(blob).to_le_bytes());
        faces.push(face);
        if faces.len() % CHUNK_FACES == 0 {
            flush(&mut out, &mut compact, &mut exact)?;
        }
        Ok(())
    })?;
    if !compact.is_empty() {
        flush(&mut out, &mut compact, &mut exact)?;
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

/// Largest magnitude of a compact value.
const Q_MAX: f32 = i16::MAX as f32;

/// Appends the compact form of `v`: scale `s`, bound `b`, then `q_i = round(v_i / s)` as i16.
///
/// The bound. With `v^ = q * s` (exact in real numbers), `e = |v - v^|` and `n = |v|` (Euclidean
/// norms, computed in f64 and rounded up), and a reference `r` of norm `R`:
/// - Cauchy-Schwarz: `|v.r - v^.r| <= e * R`;
/// - the exact distance is f32 `1 - dot(v, r)` with `dot` summing in 8 lanes, so at most
///   `k = dim/8 + dim%8 + 9` additions deep after one rounded product, each off by at most
///   `u = 2^-24` relatively: `|dot - v.r| <= (k + 1) * u * n * R` (the standard bound for
///   recursive summation, Higham 3.1);
/// - the estimate sums `q_i * r_i` the same way (each `q_i` exact in f32) and multiplies by `s`:
///   at most `(k + 2) * u * (n + e) * R` from `v^.r`;
/// - `1 - x` and the clamp to [0, 2] add at most `2u * (1 + (n + e) * R)` over both sides.
///
/// So `|exact - estimate| <= R * (e + 2u(dim + 24)(n + e)) + 1e-6`, since
/// `2k + 5 <= 2(dim + 24)` (with room for the `1/(1 - ku)` of the exact bound) and `2u < 1e-6`; `b` is the part in brackets and the reader
/// multiplies by `R` and adds 1e-6. Measured on SFace vectors, `b` is about 4e-5.
/// A vector holding NaN or infinity gets NaN for both: no estimate, it is always read exactly.
fn quantize(v: &[f32], out: &mut Vec<u8>) {
    let finite = v.iter().all(|x| x.is_finite());
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if finite { max / Q_MAX } else { f32::NAN };
    let q = |x: f32| if scale > 0.0 { (x / scale).round().clamp(-Q_MAX, Q_MAX) as i16 } else { 0 };
    let (mut e2, mut n2) = (0f64, 0f64);
    for &x in v {
        let err = f64::from(x) - f64::from(q(x)) * f64::from(scale);
        e2 += err * err;
        n2 += f64::from(x) * f64::from(x);
    }
    let (e, n) = (e2.sqrt(), n2.sqrt());
    let u = f64::from(f32::EPSILON) / 2.0;
    let bound = (e + 2.0 * u * (v.len() as f64 + 24.0) * (n + e)) * (1.0 + 1e-6);
    // f64 -> f32 rounds to nearest (off by at most 2^-24 relatively), so the 1e-6 keeps it an
    // upper bound; NaN (a non-finite vector) stays NaN.
    let bound = if finite { bound as f32 } else { f32::NAN };
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&bound.to_le_bytes());
    for &x in v {
        out.extend_from_slice(&q(x).to_le_bytes());
    }
}

/// Dot product of a compact vector's values with `r`, summed like `matching::dot` (eight lanes),
/// so the rounding bound in [`quantize`] holds.
fn dot_compact(q: &[i16], r: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (q8, r8) = (q.chunks_exact(8), r.chunks_exact(8));
    let tail: f32 = q8.remainder().iter().zip(r8.remainder()).map(|(&x, y)| f32::from(x) * y).sum();
    for (x, y) in q8.zip(r8) {
        for k in 0..8 {
            lanes[k] += f32::from(x[k]) * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The estimated distance of a compact vector to the nearest of `refs` (infinite with none).
fn nearest_compact(scale: f32, q: &[i16], refs: &[Vec<f32>]) -> f32 {
    refs.iter()
        .map(|r| {
            let d = scale * dot_compact(q, r);
            if d.is_finite() {
                (1.0 - d).clamp(0.0, 2.0)
            } else {
                f32::INFINITY
            }
        })
        .min_by(f32::total_cmp)
        .unwrap_or(f32::INFINITY)
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
const _: () = assert!(cfg!(target_endian = "little"), "the vector cache's compact blocks are read as native i16");

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

/// The bytes of `slots`, so a chunk is read straight into them: no copy and no conversion pass.
fn slots_as_bytes_mut(slots: &mut [i16]) -> &mut [u8] {
    // SAFETY: i16 has no padding and every bit pattern is a valid i16; u8 needs no alignment.
    unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(slots)) }
}

fn f32_at(slots: &[i16], k: usize) -> f32 {
    let (a, b) = (slots[k].to_le_bytes(), slots[k + 1].to_le_bytes());
    f32::from_le_bytes([a[0], a[1], b[0], b[1]])
}

impl VectorFile<'_> {
    /// How many exact rows were read one by one so far.
    pub fn exact_reads(&self) -> usize {
        self.exact_reads
    }

    /// Faces in chunk `k` and where the chunk starts.
    fn chunk(&self, k: usize) -> (usize, u64) {
        let n = CHUNK_FACES.min(self.count - k * CHUNK_FACES);
        let per_face = (compact_len(self.dim) + exact_len(self.dim)) as u64;
        (n, HEADER_LEN as u64 + (k * CHUNK_FACES) as u64 * per_face)
    }

    /// Reads chunk `k`'s compact block into `slots` and says whether it matches its checksum (a
    /// read error, e.g. a file truncated under us, counts as a mismatch).
    fn read_compact(&self, k: usize, slots: &mut [i16]) -> bool {
        let (_, offset) = self.chunk(k);
        let bytes = slots_as_bytes_mut(slots);
        self.file.read_exact_at(bytes, offset).is_ok() && self.chunk_sums.get(k) == Some(&crc32fast::hash(bytes))
    }

    /// Reads the exact rows of faces `first..first + out.len() / dim` (all in one chunk) into
    /// `out`, each checked against its own checksum.
    fn read_exact(&self, first: usize, out: &mut [f32], raw: &mut Vec<u8>) -> bool {
        let (dim, row) = (self.dim, exact_len(self.dim));
        let (k, j) = (first / CHUNK_FACES, first % CHUNK_FACES);
        let (n, start) = self.chunk(k);
        let rows = out.len() / dim;
        if j + rows > n {
            return false;
        }
        raw.resize(rows * row, 0);
        let offset = start + (n * compact_len(dim) + j * row) as u64;
        if self.file.read_exact_at(raw, offset).is_err() {
            return false;
        }
        raw.chunks_exact(row).zip(out.chunks_exact_mut(dim)).all(|(r, v)| {
            let (values, sum) = r.split_at(4 * dim);
            for (x, b) in v.iter_mut().zip(values.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            sum == crc32fast::hash(values).to_le_bytes()
        })
    }

    /// Reads exact rows, rebuilding a cache whose rows fail their checksums once.
    fn read_exact_or_repair(&mut self, first: usize, out: &mut [f32], raw: &mut Vec<u8>) -> Result<()> {
        if !self.read_exact(first, out, raw) {
            self.repair().context("rebuilding the damaged vector cache")?;
            if !self.read_exact(first, out, raw) {
                bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
            }
        }
        Ok(())
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

/// The largest norm among `sets`, rounded up (the `R` of the bound in [`quantize`]); `None` when
/// one is not finite (then no estimate is made).
fn largest_norm(sets: &[&[Vec<f32>]]) -> Option<f32> {
    let mut largest = 0f64;
    for r in sets.iter().flat_map(|s| s.iter()) {
        let n = r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        if !n.is_finite() || r.iter().any(|x| !x.is_finite()) {
            return None;
        }
        largest = largest.max(n);
    }
    Some((largest * (1.0 + 1e-6)) as f32)
}

impl Vectors for VectorFile<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let mut floats = vec![0f32; CHUNK_FACES * self.dim];
        let mut raw = Vec::new();
        let mut first = 0;
        while first < self.count {
            let n = CHUNK_FACES.min(self.count - first);
            let chunk = &mut floats[..n * self.dim];
            // Checked before it is visited: a damaged row never reaches the caller.
            self.read_exact_or_repair(first, chunk, &mut raw)?;
            visit(first, chunk);
            first += n;
        }
        Ok(())
    }

    fn estimate(&mut self, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> Result<Option<Estimates>> {
        let dim = self.dim;
        if refs.iter().chain(negatives).any(|r| r.len() != dim) {
            return Ok(None);
        }
        let Some(norm) = largest_norm(&[refs, negatives]) else { return Ok(None) };
        let mut est = Estimates { pos: Vec::with_capacity(self.count), neg: Vec::new(), bound: Vec::with_capacity(self.count) };
        if !negatives.is_empty() {
            est.neg.reserve_exact(self.count);
        }
        let per_face = COMPACT_HEAD_SLOTS + dim;
        let mut slots = vec![0i16; CHUNK_FACES * per_face];
        let mut first = 0;
        while first < self.count {
            let k = first / CHUNK_FACES;
            let (n, _) = self.chunk(k);
            let chunk = &mut slots[..n * per_face];
            if !self.read_compact(k, chunk) {
                self.repair().context("rebuilding the damaged vector cache")?;
                if !self.read_compact(k, chunk) {
                    bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
                }
            }
            for face in chunk.chunks_exact(per_face) {
                let (scale, bound) = (f32_at(face, 0), f32_at(face, 2));
                let q = &face[COMPACT_HEAD_SLOTS..];
                est.pos.push(nearest_compact(scale, q, refs));
                if !negatives.is_empty() {
                    est.neg.push(nearest_compact(scale, q, negatives));
                }
                // See `quantize` for the bound; NaN for a vector that has no estimate.
                est.bound.push(if scale.is_finite() { bound * norm + 1e-6 } else { f32::NAN });
            }
            first += n;
        }
        Ok(Some(est))
    }

    fn fetch(&mut self, wanted: &[usize]) -> Result<Vec<Vec<f32>>> {
        let mut raw = Vec::new();
        let mut out = Vec::with_capacity(wanted.len());
        for &i in wanted {
            if i >= self.count {
                bail!("face {i} is not in the vector cache");
            }
            let mut v = vec![0f32; self.dim];
            self.read_exact_or_repair(i, &mut v, &mut raw)?;
            self.exact_reads += 1;
            out.push(v);
        }
        Ok(out)
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

        /// Loads through the cache and scans every vector, exact and compact (checking every
        /// estimate against its bound).
        pub fn load(&self) -> Result<(Vec<FaceRow>, Vec<f32>, Refresh)> {
            let tx = self.db.conn.unchecked_transaction()?;
            let mut m = load(&tx, &self.db_path, 2, DIM, CacheWrite::Save)?;
            check_estimates(&mut m.vectors)?;
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

    /// Estimates every distance to two references from the compact copy and checks each against
    /// the exact distance and its bound (a vector without an estimate must hold NaN or infinity).
    pub fn check_estimates(v: &mut dyn Vectors) -> Result<()> {
        let dim = v.dim();
        let refs = vec![vec![1.0 / (dim as f32).sqrt(); dim], (0..dim).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()];
        let Some(est) = v.estimate(&refs, &refs[1..])? else { bail!("no estimates") };
        let all = scan_all(v)?;
        anyhow::ensure!(est.pos.len() * dim == all.len() && est.neg.len() == est.pos.len() && est.bound.len() == est.pos.len());
        for (i, row) in all.chunks_exact(dim).enumerate() {
            if est.bound[i].is_nan() {
                anyhow::ensure!(row.iter().any(|x| !x.is_finite()), "face {i}: a finite vector without an estimate");
                continue;
            }
            let exact = refs.iter().map(|r| crate::matching::cosine_distance(row, r)).min_by(f32::total_cmp).unwrap_or(f32::INFINITY);
            let neg = crate::matching::cosine_distance(row, &refs[1]);
            for (x, e) in [(exact, est.pos[i]), (neg, est.neg[i])] {
                anyhow::ensure!((x - e).abs() <= est.bound[i], "face {i}: exact {x}, estimate {e}, bound {}", est.bound[i]);
            }
        }
        Ok(())
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
        check_estimates(&mut v)?;
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

    /// Decodes a compact record written by `quantize`.
    fn decode_compact(rec: &[u8]) -> (f32, f32, Vec<i16>) {
        let f = |o: usize| f32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        (f(0), f(4), rec[8..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect())
    }

    #[test]
    fn every_estimate_is_within_its_proven_bound() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let unit = |v: &mut Vec<f32>| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
        };
        let mut worst_unit_bound = 0f32;
        for dim in [1usize, 3, 128, 131] {
            for case in 0..4000 {
                let mut v: Vec<f32> = (0..dim).map(|_| next()).collect();
                let mut r: Vec<f32> = (0..dim).map(|_| next()).collect();
                unit(&mut r);
                match case % 6 {
                    0 | 1 => unit(&mut v),
                    2 => v[case % dim] = 40.0, // one spike: a coarse scale for the rest
                    3 => v.iter_mut().for_each(|x| *x *= 1e-30),
                    4 => v.iter_mut().for_each(|x| *x *= 1e4),
                    _ => {
                        unit(&mut v);
                        r = v.iter().map(|x| x * 3.0).collect(); // a reference that is not a unit
                    }
                }
                let mut rec = Vec::new();
                quantize(&v, &mut rec);
                let (scale, bound, q) = decode_compact(&rec);
                let refs = [r];
                let norm = largest_norm(&[&refs]).unwrap();
                let (exact, est) = (crate::matching::cosine_distance(&v, &refs[0]), nearest_compact(scale, &q, &refs));
                assert!((exact - est).abs() <= bound * norm + 1e-6, "dim {dim} case {case}: exact {exact} estimate {est} bound {bound}");
                if case % 6 < 2 && dim == 128 {
                    worst_unit_bound = worst_unit_bound.max(bound);
                }
            }
        }
        // SFace's unit vectors: the bound is tight enough that few far faces are read exactly.
        assert!(worst_unit_bound < 1e-4, "{worst_unit_bound}");
        for v in [vec![0.0; 128], vec![f32::NAN; 128], vec![f32::INFINITY; 128]] {
            let mut rec = Vec::new();
            quantize(&v, &mut rec);
            let (scale, bound, _) = decode_compact(&rec);
            assert_eq!((scale.is_nan(), bound.is_nan()), (v[0].is_nan() || v[0].is_infinite(), v[0] != 0.0));
        }
    }

    /// Matching through the compact copy (estimates, then exact rows where they cannot decide)
    /// decides exactly as matching on f32 vectors: faces placed right at the threshold, at the edge
    /// of the exact band and at histogram bin edges, within quantisation error of each.
    #[test]
    fn compact_matching_equals_exact_matching_at_every_edge() {
        use crate::histogram::RunHistogram;
        use crate::matching::{decide, Combine, Filters, InMemory, Options, EXACT_BAND};
        const D: usize = 128;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        // A unit vector at cosine distance `d` from e0, the rest spread over the other axes.
        let mut at = |d: f32| {
            let mut w: Vec<f32> = (0..D).map(|i| if i == 0 { 0.0 } else { next() }).collect();
            let n = w.iter().map(|x| x * x).sum::<f32>().sqrt();
            let c = 1.0 - d;
            let s = (1.0 - c * c).max(0.0).sqrt();
            w.iter_mut().for_each(|x| *x *= s / n);
            w[0] = c;
            w
        };
        let e0: Vec<f32> = (0..D).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
        let threshold = 0.4f32;
        let mut targets = Vec::new();
        for edge in [threshold, threshold + EXACT_BAND, 0.7, 0.9, 0.95, 1.0, 1.2] {
            for k in -40..=40 {
                targets.push(edge + k as f32 * 2e-6);
            }
        }
        for k in 0..3000 {
            targets.push(0.62 + (k % 1300) as f32 * 1e-3);
        }
        let mut fx = Fixture::new().unwrap();
        let mut vectors = Vec::new();
        fx.db.conn.execute_batch("BEGIN").unwrap();
        for &d in &targets {
            let v = at(d);
            fx.add_face(&v).unwrap();
            vectors.extend_from_slice(&v);
        }
        // Photos with two faces close to each other, far away: which one is closest needs care.
        for k in 0..200 {
            let d = 0.75 + k as f32 * 1e-3;
            for (second, v) in [(false, at(d)), (true, at(d + 3e-5 * (k % 3) as f32))] {
                let face = fx.add_face(&v).unwrap();
                if second && k % 2 == 1 {
                    fx.db
                        .conn
                        .execute(
                            "UPDATE faces SET image_id = (SELECT image_id FROM faces WHERE id = ?1 - 1), idx = 1 WHERE id = ?1",
                            [face],
                        )
                        .unwrap();
                }
                vectors.extend_from_slice(&v);
            }
        }
        fx.db.conn.execute_batch("COMMIT").unwrap();
        let negatives = [at(0.5)];
        let opts = Options { threshold, combine: Combine::Nearest, filters: Filters::NONE, allow_ambiguous: false, expand: None };
        let tx = fx.db.conn.unchecked_transaction().unwrap();
        let mut m = load(&tx, &fx.db_path, 2, D, CacheWrite::Save).unwrap();
        let compact = decide(&m.faces, &mut m.vectors, std::slice::from_ref(&e0), &negatives, &opts).unwrap();
        let exact = decide(&m.faces, &mut InMemory { vectors: &vectors, dim: D }, &[e0], &negatives, &opts).unwrap();
        assert_eq!(compact.len(), exact.len());
        for (c, x) in compact.iter().zip(&exact) {
            assert_eq!(
                (c.image_id, c.face_id, c.reason, c.ambiguous, c.same_face_copies, c.pass),
                (x.image_id, x.face_id, x.reason, x.ambiguous, x.same_face_copies, x.pass)
            );
            if x.distance <= threshold + EXACT_BAND {
                assert_eq!(
                    (c.distance.to_bits(), c.runner_up, c.negative_distance),
                    (x.distance.to_bits(), x.runner_up, x.negative_distance),
                    "{x:?}"
                );
            } else {
                assert_eq!((c.distance * 100.0).floor(), (x.distance * 100.0).floor(), "{x:?} {c:?}");
            }
        }
        let hist = |d: &[crate::matching::Decision]| RunHistogram::new(d.iter().map(|d| d.distance), threshold);
        assert_eq!(hist(&compact), hist(&exact));
        let dry =
            |d: &[crate::matching::Decision]| crate::matching::histogram(&d.iter().map(|d| d.distance).collect::<Vec<_>>(), 0.0, 1.2, 24);
        assert_eq!(dry(&compact), dry(&exact));
        let near = targets.iter().filter(|&&d| d <= threshold + EXACT_BAND + 1e-3).count();
        let read = m.vectors.exact_reads();
        assert!(read >= near && read < m.faces.len() / 2, "{read} exact rows read of {}, {near} near", m.faces.len());
    }
}
