//! A cached copy of one embedder's vectors beside the database (`<db>.vectors`), so `match` reads
//! one file instead of decoding millions of SQLite rows, and streams it in chunks instead of
//! holding it (pread, never a mapping that would count in the resident size).
//!
//! Each vector is kept twice: a compact i16 copy (per-vector scale, with a proven bound on the
//! distance error, see [`quantize`]) that `match` scans to estimate every distance, and the exact
//! f32 row, read only for the faces whose estimate cannot decide (those near the threshold, or
//! whose histogram bin or closest face in their photo the bound leaves open; `matching`). The
//! bins left open (about 1 % of far faces) are settled from the f32 row on the estimating
//! threads ([`Blocks::settle_bins`]: bound 0, the exact distance), and a streamed `match` has the
//! next window estimated there while it decides the current one ([`Vectors::ahead`]), so both
//! cores work through the whole scan.
//!
//! The cache may only make `match` faster, never change its result, so it proves what it
//! mirrors before it is used:
//! - its key names the database id, the embedder's id and model file hash, and the dimension;
//! - it names the last entry of the database's change log (`vector_log`, migration 0012) that it
//!   mirrors, by seq and random tag. That entry must still be there with that tag (a copy
//!   restored and changed again has another tag there, or none) and the entries after it must be
//!   contiguous; they are then exactly the changes since, and are applied or make it rebuild.
//!   The log proves nothing when its last entry is older than the last seq SQLite handed out (its
//!   tail deleted), when it is empty, or when its table or triggers differ from migration 0013's
//!   text (`repair_log` recreates them at every writable open); then the cache is rebuilt and a
//!   baseline entry written, so the next match can prove it again;
//! - it names the embedder's embedding count and highest face id, which must still hold for the
//!   faces no log entry names (rows dropped or added where no trigger fires: a dump reloaded);
//!   SQLite counts them from the index's pages when no other embedder has rows ([`Census::of`]:
//!   the same number, ~25 ms at ten million faces instead of 0.65 s);
//! - the header, the face records and the table of chunk checksums carry blake3 digests, checked
//!   on open; every compact chunk is checked against its CRC-32 as it is streamed, and every
//!   exact row against its own CRC-32 when it is read (CRC-32 runs at ~4 GB/s here against
//!   blake3's ~1.3 GB/s, and catches any damage short of a deliberate forgery). An exact row that
//!   is never read is never trusted, so its damage cannot change a result.
//!
//! Anything that does not prove itself is rebuilt from SQLite; a chunk or row found damaged in
//! the middle of a scan is rebuilt too and the scan goes on from the rebuilt file, so the caller
//! always sees every vector exactly once and only vectors that match the database.
//!
//! Bringing it up to date: new faces (all newer than any the cache holds: an `index` of new
//! photos) are appended as a new segment. Every other face the log names, directly or through its
//! photo, is looked up in the cache (binary search: the segments hold faces in face id order) and
//! in SQLite, and the cache's PATCH is rewritten: a face no longer held (removed, its photo gone,
//! another detector) is VOID, one held again (its photo back) live again, one re-scored or moved
//! to another photo gets a REPLACED record; its vector must be the cached bytes. `match` then
//! sees the live faces only, numbered in the segments' order, so the order and the records are
//! exactly a rebuild's (the property test compares them after random changes), and photos are
//! checked for running together among the live faces only. A face to hold that the cache never
//! held (no place in face id order), a changed vector, a model edited, more than a tenth of the
//! faces void, a file an eighth garbage (patches written over) or more than `MAX_SEGMENTS`
//! segments rebuild it. The census proof subtracts what each face the log names had then (live
//! in the cache: one; void, or held nowhere with an embedding: noted in the patch, which a
//! rebuild writes too) and adds what it has now. An update writes the segment and the new patch past everything the current header
//! names, syncs, then writes the header slot not in use and syncs again: a crash in between
//! leaves the previous header, which still proves the previous state (bytes past what it names
//! are ignored, and cut by the next update). Updates hold an exclusive `flock` on the file;
//! readers never need one (written bytes never change).
//! `match` then deletes the log entries before the one its saved cache names: the log stays short.
//! Deleting the cache is always safe.
//!
//! Layout, little-endian: two header slots of `SLOT_LEN` bytes (the valid one of the higher
//! generation counts), then segments. A segment holds, per chunk of `CHUNK_FACES` faces (the last
//! one shorter), a compact block (per face: scale f32, bound f32, `dim` i16) followed by an exact
//! block (per face: `dim` f32 and the CRC-32 of their bytes); then its face records; then one
//! CRC-32 per compact block. A patch: void, replaced and held-nowhere counts (u64), per void face
//! its position (u64, top bit: it still had an embedding), per replaced face its position and
//! record, per face held nowhere that had an embedding its id.
//! Header slot: magic, generation, key digest, log seq and tag, highest face and image id held,
//! dim (u32), chunk faces (u32), segment count (u32), `MAX_SEGMENTS` x (offset, faces, digest of
//! the face records, digest of the chunk checksums), embedding count and highest embedded face
//! id, the patch's offset, length and digest, digest of the slot's bytes before it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OptionalExtension};

use crate::matching::{EstimateAhead, Estimates, FaceRow, Vectors};

const MAGIC: &[u8; 8] = b"FACEDBV5";
/// Earlier layouts' magics: `erase` still removes such a file.
const MAGIC_V3: &[u8; 8] = b"FACEDBV3";
const MAGIC_V4: &[u8; 8] = b"FACEDBV4";
const DIGEST_LEN: usize = 32;
const SLOT_LEN: usize = 2048;
const MAX_SEGMENTS: usize = 16;
const SEGMENT_ENTRY_LEN: usize = 8 + 8 + 2 * DIGEST_LEN;
const SLOT_FIELDS_LEN: usize = 8 + 8 + DIGEST_LEN + 4 * 8 + 3 * 4 + MAX_SEGMENTS * SEGMENT_ENTRY_LEN + 2 * 8 + PATCH_ENTRY_LEN;
/// A header's patch: offset, length, digest.
const PATCH_ENTRY_LEN: usize = 8 + 8 + DIGEST_LEN;
/// Bytes of a patch's void entry (position, and whether the face had an embedding, in the top
/// bit) and of a replacement (position, face record).
const VOID_LEN: usize = 8;
const REPLACED_LEN: usize = 8 + FACE_RECORD_LEN;
const _: () = assert!(SLOT_FIELDS_LEN + DIGEST_LEN <= SLOT_LEN);
const BODY_START: u64 = 2 * SLOT_LEN as u64;
const FACE_RECORD_LEN: usize = 8 + 8 + 4 * 4;
/// Faces per read while streaming (1 MiB of compact 128-d vectors) and per checksum.
const CHUNK_FACES: usize = 4096;
const CHUNK_SUM_LEN: usize = 4;
/// i16 slots before a compact vector's values: its scale and its bound, two f32.
const COMPACT_HEAD_SLOTS: usize = 4;
/// Log entries after the cache's beyond which rebuilding may be cheaper than looking each one up
/// (or half the faces held, if more: two entries a new photo, two queries each, against a
/// rebuild's ~4 us a face).
const MAX_LOG_ENTRIES: u64 = 200_000;

/// Bytes of one face in a compact block and in an exact block.
fn compact_len(dim: usize) -> usize {
    2 * (COMPACT_HEAD_SLOTS + dim)
}
fn exact_len(dim: usize) -> usize {
    4 * dim + CHUNK_SUM_LEN
}

type Digest = [u8; DIGEST_LEN];

/// What the cache must mirror: one database, one embedder, one dimension (the state within
/// that database is proven by the change log).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    database_id: String,
    embedder_id: i64,
    embedder_blake3: String,
    dim: usize,
}

impl Key {
    fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"facedb vector cache 4\0");
        for part in [&self.database_id, &self.embedder_blake3] {
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
    /// Empty from [`open`] (read them with [`VectorFile::records`] or [`VectorFile::faces`]).
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
    /// Brought up to date by appending the faces added since.
    Appended,
    /// Brought up to date by writing which faces are void or re-scored since (and appending any
    /// added).
    Patched,
    /// Rebuilt from SQLite (first use, a change, or a cache that failed a check).
    Rebuilt,
}

impl Refresh {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresh::None => "current",
            Refresh::Appended => "appended",
            Refresh::Patched => "patched",
            Refresh::Rebuilt => "rebuilt",
        }
    }
}

/// The change log entry a cache mirrors up to: its seq and random tag (seq 0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LogMark {
    seq: i64,
    tag: i64,
}

/// How to rebuild the cache if a chunk fails its checksum mid-scan.
struct Source<'c> {
    conn: &'c Connection,
    key: Key,
    /// The log entry and census of the snapshot a rebuild writes (the caller's transaction).
    head: LogMark,
    census: Census,
    path: PathBuf,
    write: CacheWrite,
}

/// One segment as a header slot lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    count: u64,
    records: Digest,
    sums: Digest,
}

/// A header slot's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    generation: u64,
    key: Digest,
    mark: LogMark,
    max_face: i64,
    max_image: i64,
    segments: Vec<Segment>,
    dim: usize,
    census: Census,
    /// Where the patch of void and replaced faces is (length 0: none).
    patch: PatchRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PatchRef {
    offset: u64,
    len: u64,
    digest: Digest,
}

/// What the segments' faces have become since they were written, as of the header's log entry:
/// faces whose record and vector are void (removed, their photo gone, no longer counted), and
/// faces whose record changed while their vector did not (re-scored). The whole set is written
/// anew, past everything the current header names, by each update that changes it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Voids {
    /// Void positions (in the segments' order), ascending.
    void: Vec<usize>,
    /// Per void position: whether the face still had an embedding of this embedder then (what the
    /// census proof must subtract when the log names it again).
    embedded: Vec<bool>,
    /// Positions whose record is replaced, ascending, none void.
    replaced: Vec<(usize, FaceRow)>,
    /// Faces the segments never held that had an embedding of this embedder then (their photo
    /// gone or of another detector, a malformed vector), ascending: with the void flags, what
    /// every face had, for the census proof.
    unheld: Vec<i64>,
}

impl Voids {
    fn is_empty(&self) -> bool {
        self.void.is_empty() && self.replaced.is_empty()
    }

    /// Void positions before `p`.
    fn before(&self, p: usize) -> usize {
        self.void.partition_point(|&x| x < p)
    }

    fn is_void(&self, p: usize) -> Option<bool> {
        self.void.binary_search(&p).ok().map(|k| self.embedded[k])
    }

    /// The position of the `v`-th live face (`void[k] - k` faces are live before `void[k]`).
    fn position(&self, v: usize) -> usize {
        let (mut lo, mut hi) = (0, self.void.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.void[mid] - mid <= v {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        v + lo
    }

    /// The positions that live faces `range` span (void ones among them included), in a cache
    /// of `count` positions.
    fn span(&self, range: std::ops::Range<usize>, count: usize) -> std::ops::Range<usize> {
        let live = count - self.void.len();
        let at = |v: usize| if v < live { self.position(v) } else { count };
        let start = at(range.start);
        start..at(range.end).max(start)
    }

    /// Drops the void positions of `span` from estimates made for every position of it.
    fn squeeze(&self, span: std::ops::Range<usize>, est: &mut Estimates) {
        let (k0, k1) = (self.before(span.start), self.before(span.end));
        if k0 == k1 {
            return;
        }
        let keep = |v: &mut Vec<f32>| {
            let (mut k, mut w) = (k0, 0);
            for i in 0..v.len() {
                if k < k1 && self.void[k] == span.start + i {
                    k += 1;
                    continue;
                }
                v[w] = v[i];
                w += 1;
            }
            v.truncate(w);
        };
        keep(&mut est.pos);
        if !est.neg.is_empty() {
            keep(&mut est.neg);
        }
        keep(&mut est.bound);
    }

    fn record(&self, p: usize, stored: FaceRow) -> FaceRow {
        match self.replaced.binary_search_by_key(&p, |r| r.0) {
            Ok(k) => self.replaced[k].1,
            Err(_) => stored,
        }
    }

    fn set_void(&mut self, p: usize, embedded: bool) {
        self.set_record(p, None);
        match self.void.binary_search(&p) {
            Ok(k) => self.embedded[k] = embedded,
            Err(k) => {
                self.void.insert(k, p);
                self.embedded.insert(k, embedded);
            }
        }
    }

    /// Notes whether face `id`, held nowhere in the segments, has an embedding.
    fn set_unheld(&mut self, id: i64, embedded: bool) {
        match (self.unheld.binary_search(&id), embedded) {
            (Err(k), true) => self.unheld.insert(k, id),
            (Ok(k), false) => {
                self.unheld.remove(k);
            }
            _ => {}
        }
    }

    fn set_live(&mut self, p: usize) {
        if let Ok(k) = self.void.binary_search(&p) {
            self.void.remove(k);
            self.embedded.remove(k);
        }
    }

    fn set_record(&mut self, p: usize, record: Option<FaceRow>) {
        match (self.replaced.binary_search_by_key(&p, |r| r.0), record) {
            (Ok(k), Some(r)) => self.replaced[k].1 = r,
            (Ok(k), None) => {
                self.replaced.remove(k);
            }
            (Err(k), Some(r)) => self.replaced.insert(k, (p, r)),
            (Err(_), None) => {}
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + self.void.len() * VOID_LEN + self.replaced.len() * REPLACED_LEN + self.unheld.len() * 8);
        b.extend_from_slice(&(self.void.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.replaced.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.unheld.len() as u64).to_le_bytes());
        for (&p, &e) in self.void.iter().zip(&self.embedded) {
            b.extend_from_slice(&(p as u64 | u64::from(e) << 63).to_le_bytes());
        }
        for (p, r) in &self.replaced {
            b.extend_from_slice(&(*p as u64).to_le_bytes());
            b.extend_from_slice(&encode_face(r));
        }
        for id in &self.unheld {
            b.extend_from_slice(&id.to_le_bytes());
        }
        b
    }

    /// Decodes a patch whose digest was checked, for a cache of `count` faces; `None` when it
    /// does not describe one (positions out of range, unsorted, or replaced and void at once).
    fn decode(b: &[u8], count: usize) -> Option<Self> {
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let (n_void, n_replaced) = (usize::try_from(u64_at(0)?).ok()?, usize::try_from(u64_at(8)?).ok()?);
        let n_unheld = usize::try_from(u64_at(16)?).ok()?;
        let len = n_void.checked_mul(VOID_LEN)?.checked_add(n_replaced.checked_mul(REPLACED_LEN)?)?;
        if len.checked_add(n_unheld.checked_mul(8)?)?.checked_add(24)? != b.len() || n_void > count || n_replaced > count {
            return None;
        }
        let mut out = Voids::default();
        for k in 0..n_void {
            let x = u64_at(24 + k * VOID_LEN)?;
            out.void.push(usize::try_from(x & !(1 << 63)).ok()?);
            out.embedded.push(x >> 63 == 1);
        }
        let at = 24 + n_void * VOID_LEN;
        for k in 0..n_replaced {
            let o = at + k * REPLACED_LEN;
            out.replaced.push((usize::try_from(u64_at(o)?).ok()?, decode_face(&b[o + 8..o + REPLACED_LEN])));
        }
        let at = at + n_replaced * REPLACED_LEN;
        for k in 0..n_unheld {
            out.unheld.push(u64_at(at + 8 * k)? as i64);
        }
        let ascending = out.void.windows(2).all(|w| w[0] < w[1])
            && out.replaced.windows(2).all(|w| w[0].0 < w[1].0)
            && out.unheld.windows(2).all(|w| w[0] < w[1]);
        let in_range = out.void.last().is_none_or(|&p| p < count) && out.replaced.last().is_none_or(|r| r.0 < count);
        (ascending && in_range && out.replaced.iter().all(|r| out.is_void(r.0).is_none())).then_some(out)
    }
}

/// The embedder's embeddings as SQLite counts them (over the `embeddings_model` index): how many
/// and the highest face id. A cheap second proof beside the log: rows dropped or added outside
/// any trigger (a database dumped and reloaded by hand) change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Census {
    count: i64,
    max_face: i64,
}

impl Census {
    /// The count without reading the rows when every embedding is this embedder's (nearly
    /// always): SQLite answers a bare `count(*)` by adding up the cells of each page of the
    /// smallest index (2.5-3 ms at a million faces against 65-75 ms for the filtered count, which
    /// visits every row: 0.65 s at ten million). Whether another embedder has rows is two probes of
    /// `embeddings_model`, and the highest face id one more; with other embedders' rows present it
    /// counts this one's over the index. The same number either way, from the same snapshot.
    fn of(conn: &Connection, embedder_id: i64) -> Result<Self> {
        let (all, others, max): (i64, bool, Option<i64>) = conn.query_row(
            "SELECT (SELECT count(*) FROM embeddings),
                    EXISTS (SELECT 1 FROM embeddings WHERE model_id < ?1) OR EXISTS (SELECT 1 FROM embeddings WHERE model_id > ?1),
                    (SELECT max(face_id) FROM embeddings WHERE model_id = ?1)",
            [embedder_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let count =
            if others { conn.query_row("SELECT count(*) FROM embeddings WHERE model_id = ?1", [embedder_id], |r| r.get(0))? } else { all };
        Ok(Census { count, max_face: max.unwrap_or(i64::MIN) })
    }

    /// Only the embeddings of faces up to `face`, from the whole census `all`: it counts the few
    /// rows above `face` (the faces an index just added) instead of the many below.
    fn up_to(conn: &Connection, embedder_id: i64, face: i64, all: Census) -> Result<Self> {
        let (above, max): (i64, Option<i64>) = conn.query_row(
            "SELECT (SELECT count(*) FROM embeddings WHERE model_id = ?1 AND face_id > ?2),
                    (SELECT max(face_id) FROM embeddings WHERE model_id = ?1 AND face_id <= ?2)",
            [embedder_id, face],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Census { count: all.count - above, max_face: max.unwrap_or(i64::MIN) })
    }
}

/// One compact block and where its faces sit in the cache's order.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    first: usize,
    n: usize,
    offset: u64,
    sum: u32,
    /// Where its face records are, and their CRC-32 as verified on open (records are streamed
    /// to `match` instead of held, and must be what was verified).
    records: u64,
    records_sum: u32,
}

/// The vector section of a verified cache file, streamed (and checked) on each scan.
pub struct VectorFile<'c> {
    file: File,
    dim: usize,
    count: usize,
    chunks: Vec<Chunk>,
    header: Header,
    /// Which slot `header` was read from.
    slot: usize,
    source: Option<Source<'c>>,
    repaired: bool,
    /// Exact rows read one by one (the faces estimates could not decide), for tests and tuning.
    exact_reads: usize,
    /// Whether each photo's faces are consecutive, as appended so far (live faces only).
    runs: PhotoRuns,
    /// Faces void or re-scored since their segment was written: `match` sees the live faces
    /// only, numbered from 0 in the segments' order (face id order, as a rebuild writes them).
    voids: Voids,
}

/// Whether each photo's faces are consecutive in the cache's order (face id order, in which an
/// `index` writes a photo's faces together), tracked with one bit per image id seen.
#[derive(Debug, Clone, Default)]
struct PhotoRuns {
    seen: Vec<u64>,
    last: Option<i64>,
    faces: usize,
    broken: bool,
}

impl PhotoRuns {
    fn push(&mut self, image_id: i64) {
        self.faces += 1;
        if self.broken || self.last == Some(image_id) {
            return;
        }
        self.last = Some(image_id);
        // Ids far beyond the faces held (a hand-edited database) are not tracked: not grouped.
        let Some(bit) = usize::try_from(image_id).ok().filter(|&b| b < 8 * self.faces + (1 << 20)) else {
            self.broken = true;
            return;
        };
        if self.seen.len() <= bit / 64 {
            self.seen.resize(bit / 64 + 1, 0);
        }
        let (word, mask) = (&mut self.seen[bit / 64], 1u64 << (bit % 64));
        self.broken = *word & mask != 0;
        *word |= mask;
    }
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
    if file.take(MAGIC.len() as u64).read_exact(&mut magic).is_err() || (&magic != MAGIC && &magic != MAGIC_V3 && &magic != MAGIC_V4) {
        return Ok(false);
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove the vector cache {}; delete it by hand", path.display()))?;
    Ok(true)
}

/// Opens the cache for `embedder_id`, bringing it up to date first unless it proves it mirrors
/// the database as `conn` sees it. `conn` should be inside a transaction so the key, the rows and
/// any rebuild during a later scan come from one snapshot; the matrix borrows it for that reason.
/// With `CacheWrite::Save`, log entries older than the saved cache's are deleted through `conn`.
pub fn load<'c>(conn: &'c Connection, db_path: &Path, embedder_id: i64, dim: usize, write: CacheWrite) -> Result<FaceMatrix<'c>> {
    let mut m = open(conn, db_path, embedder_id, dim, write)?;
    m.faces = m.vectors.faces()?;
    Ok(m)
}

/// [`load`], without reading the face records into `faces` (empty): `match` streams them
/// ([`VectorFile::records`]), so its memory does not grow with the faces stored.
pub fn open<'c>(conn: &'c Connection, db_path: &Path, embedder_id: i64, dim: usize, write: CacheWrite) -> Result<FaceMatrix<'c>> {
    let (key, mut warning) = current_key(conn, embedder_id, dim)?;
    let path = cache_path(db_path);
    // A log whose table or triggers are not facedb's proves nothing (`repair_log`, run at every
    // writable open, recreates them where it can): rebuilt every time, never saved.
    let intact = log_intact(conn)?;
    if !intact {
        warning = warning.or(Some(LOG_BROKEN.to_string()));
    }
    let census = Census::of(conn, embedder_id)?;
    let mut source = Source { conn, key, head: LogMark::default(), census, path, write };
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
    // A log emptied or cut short by hand (its last entry older than the last seq SQLite handed
    // out) proves nothing either. A baseline entry lets the cache rebuilt now be proven by the
    // next match instead of rebuilding until the next index.
    let mut proven = intact && warning.is_none();
    if intact {
        source.head = log_head(conn)?;
        if source.head.seq == 0 || source.head.seq < last_log_seq(conn)? {
            proven = false;
            if source.write == CacheWrite::Save && conn.execute(BASELINE, []).is_ok() {
                source.head = log_head(conn)?;
            }
        }
    }
    // The face records are not read here: `match` streams them ([`VectorFile::records`]).
    let existing = open_existing(&source.path).and_then(|f| open_verified(f, &source.key));
    let (_, vectors, refresh) = match existing.map(|v| {
        let plan = if proven { plan(conn, &v, &source, embedder_id) } else { Plan::Rebuild };
        (Vec::new(), v, plan)
    }) {
        Ok((faces, v, Plan::Current)) => (faces, v, Refresh::None),
        // Nothing to append (entries for photos it already mirrors unchanged): the cache is
        // current; saving only moves its mark.
        Ok((faces, v, Plan::Update(new, voids))) if new.is_empty() && voids == v.voids && source.write != CacheWrite::Save => {
            (faces, v, Refresh::None)
        }
        Ok((faces, v, Plan::Update(new, voids))) if source.write == CacheWrite::Save => {
            let refresh = match (new.is_empty(), voids == v.voids) {
                (true, true) => Refresh::None,
                (false, true) => Refresh::Appended,
                (_, false) => Refresh::Patched,
            };
            match update(&source, (faces, v), &new, &voids) {
                Ok((faces, v)) => (faces, v, refresh),
                Err(_) => rebuild(&mut source, &mut warning)?,
            }
        }
        _ => rebuild(&mut source, &mut warning)?,
    };
    if source.write == CacheWrite::Save && vectors.header.mark.seq > 0 {
        // The entries before the one the saved cache names are needed by no cache (a rebuild is
        // still safe if another process's older cache lands after this: it fails its proof).
        // Errors (a read-only database) only leave the log longer.
        let _ = conn.execute("DELETE FROM vector_log WHERE seq < ?1", [vectors.header.mark.seq]);
    }
    Ok(FaceMatrix { faces: Vec::new(), vectors: VectorFile { source: Some(source), ..vectors }, refresh, warning })
}

fn rebuild<'c>(source: &mut Source, warning: &mut Option<String>) -> Result<(Vec<FaceRow>, VectorFile<'c>, Refresh)> {
    let (file, note) = build(source)?;
    if warning.is_none() {
        *warning = note;
    }
    let v = open_verified(file, &source.key).context("the vector cache just built fails its own checks")?;
    Ok((Vec::new(), v, Refresh::Rebuilt))
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
        (Some(database_id), Some(_)) => Ok((Key { database_id, embedder_id, embedder_blake3, dim }, None)),
        // A hand-edited meta table: no cache can prove it mirrors this database, so none is used
        // or saved (a key no file carries), and matching goes on from SQLite.
        _ => Ok((
            Key { database_id: format!("{:016x}", random_u64()), embedder_id, embedder_blake3, dim },
            Some("the database's 'meta' table lacks a valid database_id or cache_state, so the vector cache is rebuilt on every match; restore the database from a backup".to_string()),
        )),
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// Why the vector cache is not saved when the change log is broken.
const LOG_BROKEN: &str = "the database's vector_log table or its triggers are missing or altered and could not be recreated (read-only?), so the vector cache is rebuilt on every match; open the database once with write access (`facedb index`)";

/// An entry naming everything: every cache saved before it rebuilds.
const BASELINE: &str = "INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random())";

/// The change log's table as migration 0012 creates it.
const LOG_TABLE: &str = "CREATE TABLE IF NOT EXISTS vector_log (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    id   INTEGER,
    tag  INTEGER NOT NULL
)";

/// Migration 0013 holds every trigger of the change log, each `CREATE TRIGGER name ... END;`,
/// which is how SQLite keeps its text in sqlite_master (without the semicolon).
const LOG_TRIGGERS: &str = include_str!("../../migrations/0013_vector_log_triggers.sql");

/// The change log's triggers by name, with their text as sqlite_master must hold it.
fn expected_triggers() -> std::collections::BTreeMap<&'static str, &'static str> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = LOG_TRIGGERS;
    while let Some(start) = rest.find("CREATE TRIGGER ") {
        let body = &rest[start..];
        let Some(end) = body.find("END;") else { break };
        let sql = &body[..end + "END".len()];
        if let Some(name) = sql.split_whitespace().nth(2) {
            out.insert(name, sql);
        }
        rest = &body[end..];
    }
    out
}

/// The triggers that are, or pretend to be, the change log's: named like them or on its table.
fn found_triggers(conn: &Connection) -> Result<std::collections::BTreeMap<String, Option<String>>> {
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND (name LIKE 'vector_log%' OR tbl_name = 'vector_log')")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the change log's table is there and its triggers are exactly facedb's: a trigger
/// dropped or edited by hand lets changes go unlogged, so the log would prove nothing.
fn log_intact(conn: &Connection) -> Result<bool> {
    let table: i64 = conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'vector_log'", [], |r| r.get(0))?;
    let (found, expected) = (found_triggers(conn)?, expected_triggers());
    Ok(table == 1
        && found.len() == expected.len()
        && expected.iter().all(|(name, sql)| found.get(*name).is_some_and(|s| s.as_deref() == Some(*sql))))
}

/// Recreates the change log's table and triggers when they are not facedb's (dropped or edited
/// by hand), with a baseline entry so every saved cache rebuilds. Returns a one-line warning
/// when it did. Runs at every writable open: `index` needs the table its triggers write.
pub fn repair_log(conn: &Connection) -> Result<Option<String>> {
    if log_intact(conn)? {
        return Ok(None);
    }
    let tx = conn.unchecked_transaction()?;
    for name in found_triggers(&tx)?.keys() {
        tx.execute_batch(&format!("DROP TRIGGER \"{}\"", name.replace('"', "\"\"")))?;
    }
    tx.execute_batch(LOG_TABLE)?;
    for sql in expected_triggers().values() {
        tx.execute_batch(sql)?;
    }
    tx.execute(BASELINE, [])?;
    tx.commit()?;
    Ok(Some(
        "the vector_log table or its triggers were missing or altered; facedb recreated them, and the next match rebuilds the vector cache"
            .to_string(),
    ))
}

/// The last seq SQLite handed out to the change log (0 if none).
fn last_log_seq(conn: &Connection) -> Result<i64> {
    let seq = conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'", [], |r| r.get(0)).optional()?;
    Ok(seq.unwrap_or(0))
}

/// The last entry of the change log in this snapshot (seq 0 when it is empty).
fn log_head(conn: &Connection) -> Result<LogMark> {
    let mark = conn
        .query_row("SELECT seq, tag FROM vector_log ORDER BY seq DESC LIMIT 1", [], |r| Ok(LogMark { seq: r.get(0)?, tag: r.get(1)? }))
        .optional()?;
    Ok(mark.unwrap_or_default())
}

/// What a verified cache needs to mirror the database.
enum Plan {
    Current,
    /// These faces (face id order, all newer than the cache's) are to be appended, and the
    /// cache's void and replaced faces are to become these.
    Update(Vec<(FaceRow, Vec<u8>)>, Voids),
    Rebuild,
}

/// Proves from the change log what happened since the cache's entry: nothing, new faces
/// (returned with their vectors) and changes to faces it holds that keep each held face's vector
/// (returned as the patch to write), or anything else (rebuild).
fn plan(conn: &Connection, cache: &VectorFile, source: &Source, embedder_id: i64) -> Plan {
    plan_checked(conn, cache, source, embedder_id).unwrap_or(Plan::Rebuild)
}

fn plan_checked(conn: &Connection, cache: &VectorFile, source: &Source, embedder_id: i64) -> Result<Plan> {
    let header = &cache.header;
    let (mark, head, dim) = (header.mark, source.head, source.key.dim);
    let tag: Option<i64> = conn.query_row("SELECT tag FROM vector_log WHERE seq = ?1", [mark.seq], |r| r.get(0)).optional()?;
    if mark.seq <= 0 || tag != Some(mark.tag) {
        return Ok(Plan::Rebuild);
    }
    // Entries are never deleted after a cache's own (only before), so a gap means a hand edit.
    let after: i64 = conn.query_row("SELECT count(*) FROM vector_log WHERE seq > ?1", [mark.seq], |r| r.get(0))?;
    if after != head.seq - mark.seq {
        return Ok(Plan::Rebuild);
    }
    // The embeddings the log names no change of must be those the cache counted (rows dropped
    // or added by a dump and reload fire no trigger).
    if after == 0 {
        return Ok(if source.census == header.census { Plan::Current } else { Plan::Rebuild });
    }
    let held: u64 = header.segments.iter().map(|s| s.count).sum();
    if after as u64 > MAX_LOG_ENTRIES.max(held / 2) || header.segments.len() >= MAX_SEGMENTS {
        return Ok(Plan::Rebuild);
    }
    let (mut faces, mut images, mut named, mut known) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stmt = conn.prepare("SELECT kind, id FROM vector_log WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = stmt.query([mark.seq])?;
    while let Some(r) = rows.next()? {
        // New faces and images are appended; older ones are looked up (`patched`).
        match (r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?) {
            (1, Some(id)) if id > header.max_face => faces.push(id),
            (1, Some(id)) => named.push(id),
            (2, Some(id)) if id > header.max_image => images.push(id),
            (2, Some(id)) => known.push(id),
            _ => return Ok(Plan::Rebuild),
        }
    }
    if !census_holds(conn, cache, source, embedder_id, &named)? {
        return Ok(Plan::Rebuild);
    }
    let Some(mut voids) = patched(conn, cache, embedder_id, dim, &named, &known)? else { return Ok(Plan::Rebuild) };
    // Compaction: past a tenth of the faces void, or a file an eighth garbage (patches written
    // over; a killed update's bytes past the end are cut anyway), a rebuild costs less than it
    // saves.
    let used = header.segments.iter().filter_map(|s| segment_len(s.count, dim)).sum::<u64>() + header.patch.len;
    let garbage = committed_end(header).saturating_sub(BODY_START + used);
    if voids.void.len() as u64 * 10 > held || garbage > used / 8 {
        return Ok(Plan::Rebuild);
    }
    let new = changed_faces(conn, embedder_id, dim, &faces, &images)?;
    if new.iter().any(|(f, _)| f.face_id <= header.max_face) {
        return Ok(Plan::Rebuild);
    }
    // Newer faces with an embedding that are not appended are held nowhere: noted for the census.
    let appended: std::collections::HashSet<i64> = new.iter().map(|(f, _)| f.face_id).collect();
    let mut has = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = ?1 AND face_id = ?2)")?;
    for &id in faces.iter().filter(|id| !appended.contains(id)) {
        voids.set_unheld(id, has.query_row([embedder_id, id], |r| r.get(0))?);
    }
    Ok(Plan::Update(new, voids))
}

/// The census proof when the log names faces the cache may hold (`named`, none newer than its
/// newest): the embeddings up to the highest it counted must be those it counted, less those of
/// the named faces then, plus theirs now. What a named face had then is known: live in the cache,
/// one; void, or held nowhere, as the patch notes.
fn census_holds(conn: &Connection, cache: &VectorFile, source: &Source, embedder_id: i64, named: &[i64]) -> Result<bool> {
    let top = cache.header.census.max_face;
    let now = Census::up_to(conn, embedder_id, top, source.census)?;
    let mut expected = cache.header.census.count;
    let mut has = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = ?1 AND face_id = ?2)")?;
    let (mut seen, mut block) = (std::collections::BTreeSet::new(), (0, Vec::new()));
    for &id in named.iter().filter(|&&id| id <= top) {
        if !seen.insert(id) {
            continue;
        }
        let had = match cache.find_face(id, &mut block)? {
            Some((p, _)) => cache.voids.is_void(p).unwrap_or(true),
            None => cache.voids.unheld.binary_search(&id).is_ok(),
        };
        let has: bool = has.query_row([embedder_id, id], |r| r.get(0))?;
        expected += i64::from(has) - i64::from(had);
    }
    Ok(now.count == expected && (now.max_face == top || seen.contains(&top)))
}

/// The cache's patch after the changes to the `named` faces and the faces of the `images` (none
/// newer than the cache's newest): a face no longer held becomes void, one held again live, one
/// re-scored gets its new record. `None` when that cannot hold: a face to hold that the cache
/// never held (its place in face id order is taken), or one whose vector changed.
fn patched(conn: &Connection, cache: &VectorFile, embedder_id: i64, dim: usize, named: &[i64], images: &[i64]) -> Result<Option<Voids>> {
    let mut ids: std::collections::BTreeSet<i64> = named.iter().copied().collect();
    let mut of_image = conn.prepare_cached("SELECT id FROM faces WHERE image_id = ?1")?;
    for &image in images {
        for id in of_image.query_map([image], |r| r.get(0))? {
            ids.insert(id?);
        }
    }
    let mut has = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = ?1 AND face_id = ?2)")?;
    let (mut voids, mut block) = (cache.voids.clone(), (0, Vec::new()));
    for id in ids.into_iter().filter(|&id| id <= cache.header.max_face) {
        let slot = cache.find_face(id, &mut block)?;
        match (slot, changed_faces(conn, embedder_id, dim, &[id], &[])?.pop()) {
            (None, None) => voids.set_unheld(id, has.query_row([embedder_id, id], |r| r.get(0))?),
            (None, Some(_)) => return Ok(None),
            (Some((p, _)), None) => voids.set_void(p, has.query_row([embedder_id, id], |r| r.get(0))?),
            (Some((p, stored)), Some((row, blob))) => {
                if !cache.exact_row_is(p, &blob) {
                    return Ok(None);
                }
                voids.set_live(p);
                voids.set_record(p, (encode_face(&row) != encode_face(&stored)).then_some(row));
            }
        }
    }
    Ok(Some(voids))
}

/// A face record from the first six columns of the cache's face query (image id, face id, size,
/// sharpness, yaw, score), as every query of this module selects them.
fn face_row(r: &rusqlite::Row) -> rusqlite::Result<FaceRow> {
    Ok(FaceRow { image_id: r.get(0)?, face_id: r.get(1)?, size_px: r.get(2)?, sharpness: r.get(3)?, yaw: r.get(4)?, score: r.get(5)? })
}

/// The faces the cache must hold among `faces` and the faces of `images`, by the rule of
/// [`for_each_face`], in face id order, each once.
fn changed_faces(conn: &Connection, embedder_id: i64, dim: usize, faces: &[i64], images: &[i64]) -> Result<Vec<(FaceRow, Vec<u8>)>> {
    const RULE: &str = "SELECT f.image_id, e.face_id, f.size_px, f.sharpness, f.yaw, f.score, e.vector
         FROM faces f JOIN embeddings e ON e.face_id = f.id AND e.model_id = ?2
         JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id
         WHERE EXISTS (SELECT 1 FROM files p WHERE p.image_id = f.image_id AND p.missing = 0) AND ";
    let mut out = std::collections::BTreeMap::new();
    for (ids, column) in [(faces, "f.id"), (images, "f.image_id")] {
        let mut stmt = conn.prepare_cached(&format!("{RULE}{column} = ?1"))?;
        let mut seen = std::collections::HashSet::new();
        for &id in ids.iter().filter(|&&id| seen.insert(id)) {
            let mut rows = stmt.query([id, embedder_id])?;
            while let Some(r) = rows.next()? {
                let blob = r.get_ref(6)?.as_blob().unwrap_or(&[]);
                // A malformed vector is skipped, as a rebuild skips it.
                if blob.len() != dim * 4 {
                    continue;
                }
                let face = face_row(r)?;
                out.insert(face.face_id, (face, blob.to_vec()));
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Reads and checks one header slot.
fn read_slot(file: &File, slot: usize) -> Option<Header> {
    let mut h = [0u8; SLOT_LEN];
    file.read_exact_at(&mut h, (slot * SLOT_LEN) as u64).ok()?;
    let (fields, digest) = (&h[..SLOT_FIELDS_LEN], &h[SLOT_FIELDS_LEN..SLOT_FIELDS_LEN + DIGEST_LEN]);
    if &h[..8] != MAGIC || blake3::hash(fields).as_bytes() != digest {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let digest_at = |o: usize| -> Digest { h[o..o + DIGEST_LEN].try_into().unwrap_or_default() };
    let o = 16 + DIGEST_LEN;
    let (dim, chunk_faces, segments) = (u32_at(o + 32), u32_at(o + 36), u32_at(o + 40) as usize);
    if chunk_faces as usize != CHUNK_FACES || dim == 0 || segments > MAX_SEGMENTS {
        return None;
    }
    let census_at = o + 44 + MAX_SEGMENTS * SEGMENT_ENTRY_LEN;
    let segments = (0..segments)
        .map(|k| {
            let s = o + 44 + k * SEGMENT_ENTRY_LEN;
            Segment { offset: u64_at(s), count: u64_at(s + 8), records: digest_at(s + 16), sums: digest_at(s + 16 + DIGEST_LEN) }
        })
        .collect();
    Some(Header {
        generation: u64_at(8),
        key: digest_at(16),
        mark: LogMark { seq: u64_at(o) as i64, tag: u64_at(o + 8) as i64 },
        max_face: u64_at(o + 16) as i64,
        max_image: u64_at(o + 24) as i64,
        segments,
        dim: dim as usize,
        census: Census { count: u64_at(census_at) as i64, max_face: u64_at(census_at + 8) as i64 },
        patch: PatchRef { offset: u64_at(census_at + 16), len: u64_at(census_at + 24), digest: digest_at(census_at + 32) },
    })
}

/// The bytes of a header slot.
fn encode_slot(h: &Header) -> Result<Vec<u8>> {
    let mut b = Vec::with_capacity(SLOT_LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&h.generation.to_le_bytes());
    b.extend_from_slice(&h.key);
    for v in [h.mark.seq, h.mark.tag, h.max_face, h.max_image] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&u32::try_from(h.dim)?.to_le_bytes());
    b.extend_from_slice(&(CHUNK_FACES as u32).to_le_bytes());
    b.extend_from_slice(&(h.segments.len() as u32).to_le_bytes());
    for k in 0..MAX_SEGMENTS {
        match h.segments.get(k) {
            Some(s) => {
                b.extend_from_slice(&s.offset.to_le_bytes());
                b.extend_from_slice(&s.count.to_le_bytes());
                b.extend_from_slice(&s.records);
                b.extend_from_slice(&s.sums);
            }
            None => b.extend_from_slice(&[0u8; SEGMENT_ENTRY_LEN]),
        }
    }
    b.extend_from_slice(&h.census.count.to_le_bytes());
    b.extend_from_slice(&h.census.max_face.to_le_bytes());
    b.extend_from_slice(&h.patch.offset.to_le_bytes());
    b.extend_from_slice(&h.patch.len.to_le_bytes());
    b.extend_from_slice(&h.patch.digest);
    debug_assert_eq!(b.len(), SLOT_FIELDS_LEN);
    let digest = blake3::hash(&b);
    b.extend_from_slice(digest.as_bytes());
    b.resize(SLOT_LEN, 0);
    Ok(b)
}

/// Bytes of a segment of `count` faces.
fn segment_len(count: u64, dim: usize) -> Option<u64> {
    let chunks = count.div_ceil(CHUNK_FACES as u64);
    let per_face = (compact_len(dim) + exact_len(dim) + FACE_RECORD_LEN) as u64;
    count.checked_mul(per_face)?.checked_add(chunks * CHUNK_SUM_LEN as u64)
}

/// Checks everything but the vector chunks (those are checked as they are streamed), reading the
/// face records through once (noting each chunk's CRC-32 for when they are streamed again, and
/// whether each photo's faces are consecutive). Never trusts a length before comparing it with
/// the file's real size.
fn open_verified<'c>(mut file: File, key: &Key) -> Result<VectorFile<'c>> {
    let dim = key.dim;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        bail!("not a regular file");
    }
    // The valid slot of the higher generation: a torn write of the newer one leaves the older,
    // whose segments are still there (segments are only ever added past them).
    let (slot, header) = [0, 1]
        .into_iter()
        .filter_map(|s| read_slot(&file, s).map(|h| (s, h)))
        .max_by_key(|(_, h)| h.generation)
        .context("not a facedb vector cache, or its header is damaged")?;
    if header.key != key.digest() || header.dim != dim {
        bail!("the cache mirrors another database, embedder or dimension");
    }
    let (mut chunks, mut runs) = (Vec::new(), PhotoRuns::default());
    let (mut max_face, mut max_image, mut sorted) = (i64::MIN, i64::MIN, true);
    let voids = read_patch(&file, &header, meta.len())?;
    let (mut at, mut next_void, mut next_replaced) = (0usize, 0usize, 0usize);
    for s in &header.segments {
        let len = segment_len(s.count, dim).context("size overflow")?;
        if s.offset < BODY_START || s.offset.checked_add(len).is_none_or(|end| end > meta.len()) {
            bail!("cache has the wrong length");
        }
        let count = usize::try_from(s.count)?;
        let n_chunks = count.div_ceil(CHUNK_FACES);
        let vectors_len = (count * (compact_len(dim) + exact_len(dim))) as u64;
        // Lengths are now bounded by the file's real size, so these allocations are too. Records
        // are read a chunk's worth at a time and not kept: `match` streams them again.
        let first = count_before(&chunks);
        let mut block = vec![0u8; CHUNK_FACES * FACE_RECORD_LEN];
        let mut record_sums = Vec::with_capacity(n_chunks);
        let (records_at, file_ref) = (s.offset + vectors_len, &file);
        // The records' digest on another core while this one checksums and reads each chunk's
        // (0.3 s of a single core at ten million faces, before).
        let digest = std::thread::scope(|scope| -> Result<blake3::Hash> {
            let hashing = scope.spawn(move || digest_of(file_ref, records_at, count * FACE_RECORD_LEN));
            for k in 0..n_chunks {
                let n = CHUNK_FACES.min(count - k * CHUNK_FACES);
                let records = &mut block[..n * FACE_RECORD_LEN];
                file_ref.read_exact_at(records, records_at + (k * CHUNK_FACES * FACE_RECORD_LEN) as u64)?;
                record_sums.push(crc32fast::hash(records));
                for f in records.chunks_exact(FACE_RECORD_LEN).map(decode_face) {
                    sorted &= f.face_id >= max_face;
                    (max_face, max_image) = (max_face.max(f.face_id), max_image.max(f.image_id));
                    // Photos must be consecutive among the faces `match` sees: the live ones.
                    if voids.void.get(next_void) == Some(&at) {
                        next_void += 1;
                    } else if let Some(&(p, r)) = voids.replaced.get(next_replaced).filter(|r| r.0 == at) {
                        next_replaced += 1;
                        // A replacement re-scores its face, never names another.
                        sorted &= r.face_id == f.face_id;
                        runs.push(r.image_id);
                        debug_assert_eq!(p, at);
                    } else {
                        runs.push(f.image_id);
                    }
                    at += 1;
                }
            }
            hashing.join().map_err(|_| anyhow::anyhow!("hashing the vector cache's face records failed"))?
        })?;
        let mut sums = vec![0u8; n_chunks * CHUNK_SUM_LEN];
        file.read_exact_at(&mut sums, records_at + (count * FACE_RECORD_LEN) as u64)?;
        if digest.as_bytes() != &s.records || blake3::hash(&sums).as_bytes() != &s.sums {
            bail!("cache face records or chunk checksums are damaged");
        }
        let sums = sums.chunks_exact(CHUNK_SUM_LEN).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        push_chunks(&mut chunks, first, s, dim, sums.zip(record_sums));
    }
    let count = count_before(&chunks);
    // The highest ids are what an append is checked against, so they must be the records' own.
    if (max_face, max_image) != (header.max_face, header.max_image) || !sorted {
        bail!("cache header does not describe its faces");
    }
    if voids.void.last().is_some_and(|&p| p >= count) || voids.replaced.last().is_some_and(|r| r.0 >= count) {
        bail!("cache patch names faces it does not hold");
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(VectorFile { file, dim, count, chunks, header, slot, source: None, repaired: false, exact_reads: 0, runs, voids })
}

/// The header's patch, checked against its digest (none: nothing void or replaced).
fn read_patch(file: &File, header: &Header, file_len: u64) -> Result<Voids> {
    let PatchRef { offset, len, digest } = header.patch;
    if len == 0 {
        return Ok(Voids::default());
    }
    if offset < BODY_START || offset.checked_add(len).is_none_or(|end| end > file_len) {
        bail!("cache has the wrong length");
    }
    let mut bytes = vec![0u8; usize::try_from(len)?];
    file.read_exact_at(&mut bytes, offset)?;
    let held = header.segments.iter().map(|s| s.count).sum::<u64>();
    match Voids::decode(&bytes, usize::try_from(held)?) {
        Some(v) if blake3::hash(&bytes).as_bytes() == &digest => Ok(v),
        _ => bail!("cache patch is damaged"),
    }
}

/// The blake3 digest of `len` bytes of `file` from `offset`, read a mebibyte at a time.
fn digest_of(file: &File, offset: u64, len: usize) -> Result<blake3::Hash> {
    let (mut h, mut buf, mut done) = (blake3::Hasher::new(), vec![0u8; (1 << 20).min(len)], 0);
    while done < len {
        let piece = &mut buf[..(len - done).min(1 << 20)];
        file.read_exact_at(piece, offset + done as u64)?;
        h.update(piece);
        done += piece.len();
    }
    Ok(h.finalize())
}

/// Faces held by `chunks`.
fn count_before(chunks: &[Chunk]) -> usize {
    chunks.last().map_or(0, |c| c.first + c.n)
}

/// The chunks of segment `s` (its faces from `first` on), with their compact and record checksums.
fn push_chunks(chunks: &mut Vec<Chunk>, first: usize, s: &Segment, dim: usize, sums: impl Iterator<Item = (u32, u32)>) {
    let count = s.count as usize;
    let vectors_len = (count * (compact_len(dim) + exact_len(dim))) as u64;
    for (k, (sum, records_sum)) in sums.enumerate() {
        let n = CHUNK_FACES.min(count - k * CHUNK_FACES);
        let offset = s.offset + (k * CHUNK_FACES * (compact_len(dim) + exact_len(dim))) as u64;
        let records = s.offset + vectors_len + (k * CHUNK_FACES * FACE_RECORD_LEN) as u64;
        chunks.push(Chunk { first: first + k * CHUNK_FACES, n, offset, sum, records, records_sum });
    }
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
    write_cache(source, &mut file).context("building the vector cache in a temporary file")?;
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
    let result = write_cache(source, &mut file).and_then(|()| {
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
    for (part, pid) in part_files(path) {
        // SAFETY: signal 0 only asks whether the process exists.
        let dead = pid > 0 && unsafe { libc::kill(pid, 0) } == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            let _ = std::fs::remove_file(part);
        }
    }
}

/// The regular files named like a builder's temporary cache of `path`, with the builder's pid.
fn part_files(path: &Path) -> Vec<(PathBuf, libc::pid_t)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
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
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push((entry.path(), pid));
        }
    }
    out
}

/// What `forget` found beside the cache besides the cache itself.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Unfinished caches removed (a killed build's, or a running one's: it then fails to save).
    pub parts_removed: usize,
    /// Those that could not be removed.
    pub parts_kept: Vec<PathBuf>,
    /// The cache path is a link: never followed, so its target may still hold the vectors.
    pub link: Option<PathBuf>,
}

/// Removes every unfinished cache of the database (each may hold the vectors of faces just
/// forgotten) and reports a link at the cache path, which it never follows.
pub fn erase_leftovers(db_path: &Path) -> Leftovers {
    let path = cache_path(db_path);
    let mut out = Leftovers::default();
    for (part, _) in part_files(&path) {
        match std::fs::remove_file(&part) {
            Ok(()) => out.parts_removed += 1,
            Err(_) => out.parts_kept.push(part),
        }
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        out.link = Some(std::fs::read_link(&path).unwrap_or(path));
    }
    out
}

/// Writes one segment at the writer's position: chunks of compact and exact blocks, then the
/// face records, then the chunk checksums.
struct SegmentWriter<'f> {
    out: BufWriter<&'f mut File>,
    offset: u64,
    records: Vec<u8>,
    sums: Vec<u8>,
    compact: Vec<u8>,
    exact: Vec<u8>,
    floats: Vec<f32>,
    count: usize,
    max_face: i64,
    max_image: i64,
}

impl<'f> SegmentWriter<'f> {
    fn new(file: &'f mut File, offset: u64, dim: usize) -> Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            offset,
            records: Vec::new(),
            sums: Vec::new(),
            compact: Vec::with_capacity(CHUNK_FACES * compact_len(dim)),
            exact: Vec::with_capacity(CHUNK_FACES * exact_len(dim)),
            floats: vec![0f32; dim],
            count: 0,
            max_face: i64::MIN,
            max_image: i64::MIN,
        })
    }

    /// Adds one face (its vector's blob must be `dim` f32).
    fn push(&mut self, face: &FaceRow, blob: &[u8]) -> Result<()> {
        for (x, b) in self.floats.iter_mut().zip(blob.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        quantize(&self.floats, &mut self.compact);
        self.exact.extend_from_slice(blob);
        self.exact.extend_from_slice(&crc32fast::hash(blob).to_le_bytes());
        self.records.extend_from_slice(&encode_face(face));
        self.count += 1;
        self.max_face = self.max_face.max(face.face_id);
        self.max_image = self.max_image.max(face.image_id);
        if self.count.is_multiple_of(CHUNK_FACES) {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<()> {
        self.sums.extend_from_slice(&crc32fast::hash(&self.compact).to_le_bytes());
        self.out.write_all(&self.compact)?;
        self.out.write_all(&self.exact)?;
        self.compact.clear();
        self.exact.clear();
        Ok(())
    }

    /// Writes the records and checksums; returns the segment, the highest ids it holds and the
    /// checksum of each compact block.
    fn finish(mut self) -> Result<(Segment, i64, i64, Vec<u32>)> {
        if !self.compact.is_empty() {
            self.flush_chunk()?;
        }
        self.out.write_all(&self.records)?;
        self.out.write_all(&self.sums)?;
        self.out.flush()?;
        let segment = Segment {
            offset: self.offset,
            count: self.count as u64,
            records: *blake3::hash(&self.records).as_bytes(),
            sums: *blake3::hash(&self.sums).as_bytes(),
        };
        let sums = self.sums.chunks_exact(CHUNK_SUM_LEN).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok((segment, self.max_face, self.max_image, sums))
    }
}

/// Writes the whole cache for `key` into `file` (empty): the rows come from the caller's
/// snapshot, in face id order, as one segment, named after the snapshot's last log entry.
fn write_cache(source: &Source, file: &mut File) -> Result<()> {
    let (conn, key) = (source.conn, &source.key);
    let dim = key.dim;
    let mut w = SegmentWriter::new(file, BODY_START, dim)?;
    let mut voids = Voids::default();
    for_each_face(conn, key.embedder_id, |face, blob, counts| {
        // A malformed vector (hand-edited database) is skipped rather than trusted.
        if counts && blob.len() == dim * 4 {
            w.push(&face, blob)?;
        } else {
            voids.unheld.push(face.face_id);
        }
        Ok(())
    })?;
    let (segment, max_face, max_image, _) = w.finish()?;
    let mut patch = PatchRef::default();
    if !voids.unheld.is_empty() {
        let bytes = voids.encode();
        let at = BODY_START + segment_len(segment.count, dim).context("size overflow")?;
        file.write_all_at(&bytes, at)?;
        patch = PatchRef { offset: at, len: bytes.len() as u64, digest: *blake3::hash(&bytes).as_bytes() };
    }
    let header = Header {
        generation: 1,
        key: key.digest(),
        mark: source.head,
        max_face,
        max_image,
        segments: vec![segment],
        dim,
        census: source.census,
        patch,
    };
    file.write_all_at(&encode_slot(&header)?, 0)?;
    // The other slot stays zero: never valid.
    file.write_all_at(&[0u8; SLOT_LEN], SLOT_LEN as u64)?;
    Ok(())
}

/// Appends `new` to the saved cache `v` as one more segment and, when `voids` differs from its
/// patch, writes `voids` as the new patch past it; then makes the other header slot name them
/// and `head`. Holds an exclusive lock on the file, and gives up (the caller rebuilds) if another
/// process changed the file since `v` was verified.
fn update<'c>(
    source: &Source,
    (mut faces, mut v): (Vec<FaceRow>, VectorFile<'c>),
    new: &[(FaceRow, Vec<u8>)],
    voids: &Voids,
) -> Result<(Vec<FaceRow>, VectorFile<'c>)> {
    let dim = v.dim;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&source.path)
        .context("opening the vector cache to append")?;
    let (meta, seen) = (file.metadata()?, v.file.metadata()?);
    if !meta.file_type().is_file() || (meta.dev(), meta.ino()) != (seen.dev(), seen.ino()) {
        bail!("the vector cache was replaced meanwhile");
    }
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock the vector cache");
    }
    if read_slot(&file, v.slot).as_ref() != Some(&v.header)
        || read_slot(&file, 1 - v.slot).is_some_and(|h| h.generation > v.header.generation)
    {
        bail!("the vector cache changed meanwhile");
    }
    // Bytes past the committed segments and patch are a killed update's: cut them, never write
    // after them.
    let end = committed_end(&v.header);
    file.set_len(end)?;
    let mut header = v.header.clone();
    header.generation += 1;
    header.mark = source.head;
    header.census = source.census;
    // Nothing new (entries for photos mirrored unchanged): only the mark moves.
    let mut appended = None;
    if !new.is_empty() {
        let mut w = SegmentWriter::new(&mut file, end, dim)?;
        for (face, blob) in new {
            w.push(face, blob)?;
        }
        let (segment, max_face, max_image, sums) = w.finish()?;
        file.sync_data()?;
        header.max_face = header.max_face.max(max_face);
        header.max_image = header.max_image.max(max_image);
        header.segments.push(segment);
        appended = Some((segment, sums));
    }
    let repatched = *voids != v.voids;
    if repatched {
        // Past everything either header names: the current header's patch stays whole until the
        // new header is synced.
        let bytes = voids.encode();
        let at = header.segments.last().map_or(end, |s| s.offset + segment_len(s.count, dim).unwrap_or(0)).max(end);
        file.write_all_at(&bytes, at)?;
        file.sync_data()?;
        header.patch = PatchRef { offset: at, len: bytes.len() as u64, digest: *blake3::hash(&bytes).as_bytes() };
    }
    file.write_all_at(&encode_slot(&header)?, ((1 - v.slot) * SLOT_LEN) as u64)?;
    file.sync_data()?;
    if repatched {
        // Which photos run together among the live faces changed: read the records again, on
        // the locked descriptor (as the append below keeps it), so it is this file's state.
        let fresh = open_verified(file, &source.key).context("the vector cache just updated fails its own checks")?;
        return Ok((Vec::new(), fresh));
    }
    // What was verified plus what was just written (reading every record again cost 0.1 s a
    // million faces).
    if let Some((segment, sums)) = appended {
        faces.extend(new.iter().map(|(f, _)| *f));
        v.add_appended(&segment, sums, new.iter().map(|(f, _)| f));
    }
    (v.file, v.header, v.slot) = (file, header, 1 - v.slot);
    Ok((faces, v))
}

/// Where the segments and patch `h` names end (bytes past it belong to no header).
fn committed_end(h: &Header) -> u64 {
    let segments = h.segments.iter().filter_map(|s| s.offset.checked_add(segment_len(s.count, h.dim)?));
    segments.fold(h.patch.offset.saturating_add(h.patch.len).max(BODY_START), u64::max)
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
fn for_each_face(conn: &Connection, embedder_id: i64, mut visit: impl FnMut(FaceRow, &[u8], bool) -> Result<()>) -> Result<()> {
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
        let face = face_row(r)?;
        // Faces that do not count are still visited: the census proof notes them.
        let counts = current.get(face.image_id) == r.get::<_, i64>(7)?;
        // A vector that is not a blob (hand-edited database) is skipped like a malformed one.
        let blob = r.get_ref(6)?.as_blob().unwrap_or(&[]);
        visit(face, blob, counts)?;
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
    // Through a fixed-size array: no bounds check per byte (10 M records a match).
    let mut r = [0u8; FACE_RECORD_LEN];
    r.copy_from_slice(&b[..FACE_RECORD_LEN]);
    let i64_at = |o: usize| i64::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3], r[o + 4], r[o + 5], r[o + 6], r[o + 7]]);
    let f32_at = |o: usize| f32::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
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

/// Reads chunk `c`'s compact block into `slots` and says whether it matches its checksum (a
/// read error, e.g. a file truncated under us, counts as a mismatch).
fn read_compact(file: &File, c: &Chunk, slots: &mut [i16]) -> bool {
    let bytes = slots_as_bytes_mut(slots);
    file.read_exact_at(bytes, c.offset).is_ok() && crc32fast::hash(bytes) == c.sum
}

/// Per face of one compact block: the estimated distances and the bound, into the slices
/// (`neg` empty without negatives).
struct Estimator<'a> {
    refs: &'a [Vec<f32>],
    negatives: &'a [Vec<f32>],
    norm: f32,
    dim: usize,
}

impl Estimator<'_> {
    fn fill(&self, slots: &[i16], pos: &mut [f32], neg: &mut [f32], bound: &mut [f32]) {
        let per_face = COMPACT_HEAD_SLOTS + self.dim;
        for (j, face) in slots.chunks_exact(per_face).enumerate().take(pos.len()) {
            let (scale, b) = (f32_at(face, 0), f32_at(face, 2));
            let q = &face[COMPACT_HEAD_SLOTS..];
            pos[j] = nearest_compact(scale, q, self.refs);
            if let Some(n) = neg.get_mut(j) {
                *n = nearest_compact(scale, q, self.negatives);
            }
            // See `quantize` for the bound; NaN for a vector that has no estimate.
            bound[j] = if scale.is_finite() { b * self.norm + 1e-6 } else { f32::NAN };
        }
    }
}

impl VectorFile<'_> {
    /// How many exact rows were read one by one so far.
    pub fn exact_reads(&self) -> usize {
        self.exact_reads
    }

    /// The chunk holding face `i` (< count).
    fn chunk_of(&self, i: usize) -> usize {
        self.chunks.partition_point(|c| c.first + c.n <= i)
    }

    /// Reads the exact rows of faces `first..first + out.len() / dim` (all in one chunk) into
    /// `out`, each checked against its own checksum.
    fn read_exact(&self, first: usize, out: &mut [f32], raw: &mut Vec<u8>) -> bool {
        let (dim, row) = (self.dim, exact_len(self.dim));
        let Some(c) = self.chunks.get(self.chunk_of(first)) else { return false };
        let j = first - c.first;
        let rows = out.len() / dim;
        if j + rows > c.n {
            return false;
        }
        raw.resize(rows * row, 0);
        let offset = c.offset + (c.n * compact_len(dim) + j * row) as u64;
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

    /// The position and stored record of face `id`, found by binary search (the segments hold
    /// faces in face id order); `block` keeps the last chunk of records read (its index + 1).
    fn find_face(&self, id: i64, block: &mut (usize, Vec<u8>)) -> Result<Option<(usize, FaceRow)>> {
        let first_id = |c: &Chunk| -> Result<i64> {
            let mut b = [0u8; FACE_RECORD_LEN];
            self.file.read_exact_at(&mut b, c.records)?;
            Ok(decode_face(&b).face_id)
        };
        // The last chunk starting at or below `id` (only a guide: the chunk read is checked).
        let (mut lo, mut hi) = (0, self.chunks.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if first_id(&self.chunks[mid])? <= id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(k) = lo.checked_sub(1) else { return Ok(None) };
        let c = self.chunks[k];
        if block.0 != k + 1 {
            block.1.resize(c.n * FACE_RECORD_LEN, 0);
            if self.file.read_exact_at(&mut block.1, c.records).is_err() || crc32fast::hash(&block.1) != c.records_sum {
                bail!("the vector cache's face records changed");
            }
            block.0 = k + 1;
        }
        let records: Vec<FaceRow> = block.1.chunks_exact(FACE_RECORD_LEN).map(decode_face).collect();
        let j = records.partition_point(|f| f.face_id < id);
        Ok(records.get(j).filter(|f| f.face_id == id).map(|&f| (c.first + j, f)))
    }

    /// Whether the exact row at position `p` holds exactly `blob`'s bytes (checked against its
    /// CRC-32).
    fn exact_row_is(&self, p: usize, blob: &[u8]) -> bool {
        let (mut v, mut raw) = (vec![0f32; self.dim], Vec::new());
        blob.len() == 4 * self.dim
            && self.read_exact(p, &mut v, &mut raw)
            && v.iter().flat_map(|x| x.to_le_bytes()).eq(blob.iter().copied())
    }

    /// Faces `match` sees: those not void.
    fn live(&self) -> usize {
        self.count - self.voids.void.len()
    }

    /// Reads live face `i`'s exact row, rebuilding a cache whose rows fail their checksums once
    /// (a rebuilt one holds no void faces: its positions are the live faces' numbers).
    fn read_exact_or_repair(&mut self, i: usize, out: &mut [f32], raw: &mut Vec<u8>) -> Result<()> {
        if !self.read_exact(self.voids.position(i), out, raw) {
            self.repair().context("rebuilding the damaged vector cache")?;
            if !self.read_exact(self.voids.position(i), out, raw) {
                bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
            }
        }
        Ok(())
    }

    /// Replaces a cache that failed a chunk checksum by one rebuilt from the same snapshot. The
    /// face records were verified on open, and a cache holds its faces in face id order as a
    /// rebuild does, so the rebuilt file must hold exactly the same faces in the same places.
    fn repair(&mut self) -> Result<()> {
        let Some(source) = self.source.as_mut() else {
            bail!("the vector cache is damaged");
        };
        let (file, _) = build(source)?;
        let fresh = open_verified(file, &source.key).context("the vector cache just built fails its own checks")?;
        if fresh.count != self.live() || fresh.records_digest()? != self.records_digest()? {
            bail!("the database changed during the match; run it again");
        }
        (self.count, self.voids) = (fresh.count, fresh.voids);
        self.file = fresh.file;
        self.chunks = fresh.chunks;
        self.header = fresh.header;
        self.slot = fresh.slot;
        self.repaired = true;
        Ok(())
    }

    /// A digest of every live face record in order (as replaced), each chunk checked against
    /// the CRC-32 it had when verified (a repair compares the two files' digests; taken then
    /// only, not on every open).
    fn records_digest(&self) -> Result<blake3::Hash> {
        let (mut h, mut records, mut block) = (blake3::Hasher::new(), self.records()?, Vec::new());
        let mut done = 0;
        while done < self.live() {
            block.clear();
            records.read_chunk(done, &mut block)?;
            for f in &block {
                h.update(&encode_face(f));
            }
            done += block.len();
        }
        Ok(h.finalize())
    }

    /// Takes in a segment just appended, holding `faces` (the records it wrote).
    fn add_appended<'f>(&mut self, segment: &Segment, sums: Vec<u32>, faces: impl Iterator<Item = &'f FaceRow>) {
        let mut record_sums = Vec::with_capacity(sums.len());
        let mut block = Vec::with_capacity(CHUNK_FACES * FACE_RECORD_LEN);
        for f in faces {
            block.extend_from_slice(&encode_face(f));
            self.runs.push(f.image_id);
            if block.len() == CHUNK_FACES * FACE_RECORD_LEN {
                record_sums.push(crc32fast::hash(&block));
                block.clear();
            }
        }
        if !block.is_empty() {
            record_sums.push(crc32fast::hash(&block));
        }
        push_chunks(&mut self.chunks, self.count, segment, self.dim, sums.into_iter().zip(record_sums));
        self.count = count_before(&self.chunks);
    }

    /// Whether each photo's faces are consecutive in the cache (true unless the database was
    /// edited by hand or a photo gained faces later): `match` can then decide photo by photo
    /// as the records stream past.
    pub fn grouped_by_photo(&self) -> bool {
        !self.runs.broken
    }

    /// Every face record, in the vectors' order.
    pub fn faces(&self) -> Result<Vec<FaceRow>> {
        let mut records = self.records()?;
        let mut faces = Vec::with_capacity(self.live());
        while faces.len() < self.live() {
            records.read_chunk(faces.len(), &mut faces)?;
        }
        Ok(faces)
    }

    /// A reader of the face records, one chunk at a time (on its own descriptor, so it reads
    /// the records verified on open even if a repair replaces the file meanwhile).
    pub fn records(&self) -> Result<Records> {
        let chunks = self.chunks.iter().map(|c| (c.first, c.n, c.records, c.records_sum)).collect();
        Ok(Records { file: self.file.try_clone()?, chunks, grouped: self.grouped_by_photo(), block: Vec::new(), voids: self.voids.clone() })
    }

    /// Estimates faces `first..end` one chunk after another into `est` (which starts at face
    /// `base`), rebuilding a damaged cache once.
    fn estimate_range(&mut self, e: &Estimator, range: std::ops::Range<usize>, est: &mut Estimates, base: usize) -> Result<()> {
        let per_face = COMPACT_HEAD_SLOTS + self.dim;
        let mut slots = vec![0i16; CHUNK_FACES * per_face];
        let mut first = range.start;
        while first < range.end {
            let c = self.chunks[self.chunk_of(first)];
            let chunk = &mut slots[..c.n * per_face];
            if !read_compact(&self.file, &c, chunk) {
                self.repair().context("rebuilding the damaged vector cache")?;
                let c = self.chunks[self.chunk_of(first)];
                if !read_compact(&self.file, &c, &mut slots[..c.n * per_face]) {
                    bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
                }
                continue;
            }
            let end = range.end.min(c.first + c.n);
            let faces = &chunk[(first - c.first) * per_face..];
            let (a, b) = (first - base, end - base);
            let neg = if est.neg.is_empty() { &mut [][..] } else { &mut est.neg[a..b] };
            e.fill(faces, &mut est.pos[a..b], neg, &mut est.bound[a..b]);
            first = end;
        }
        Ok(())
    }
}

thread_local! {
    /// A compact block being estimated, per estimating thread.
    static COMPACT_SLOTS: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The face records of a [`VectorFile`], streamed and checked against the checksums taken when
/// they were verified.
pub struct Records {
    file: File,
    /// Per chunk: first face, faces, offset of its records and their CRC-32.
    chunks: Vec<(usize, usize, u64, u32)>,
    grouped: bool,
    block: Vec<u8>,
    voids: Voids,
}

impl Records {
    /// Appends the live faces from live face `first` to the end of its chunk to `out` (of the
    /// next chunk holding one, when the rest of its chunk is void), as replaced.
    fn read_chunk(&mut self, first: usize, out: &mut Vec<FaceRow>) -> Result<()> {
        let mut p = self.voids.position(first);
        loop {
            let k = self.chunks.partition_point(|c| c.0 + c.1 <= p);
            let Some(&(start, n, offset, sum)) = self.chunks.get(k) else { bail!("face {first} is not in the vector cache") };
            self.block.resize(n * FACE_RECORD_LEN, 0);
            if self.file.read_exact_at(&mut self.block, offset).is_err() || crc32fast::hash(&self.block) != sum {
                bail!("the vector cache changed during the match; run it again");
            }
            let before = out.len();
            let records = self.block[(p - start) * FACE_RECORD_LEN..].chunks_exact(FACE_RECORD_LEN).map(decode_face);
            if self.voids.is_empty() {
                out.extend(records);
            } else {
                let voids = &self.voids;
                let mut k = voids.before(p);
                for (at, f) in (p..).zip(records) {
                    if voids.void.get(k) == Some(&at) {
                        k += 1;
                    } else {
                        out.push(voids.record(at, f));
                    }
                }
            }
            if out.len() > before {
                return Ok(());
            }
            p = start + n;
        }
    }
}

impl crate::matching::FaceList for Records {
    fn len(&self) -> usize {
        self.chunks.last().map_or(0, |c| c.0 + c.1) - self.voids.void.len()
    }
    fn grouped(&self) -> bool {
        self.grouped
    }
    fn read(&mut self, first: usize, out: &mut Vec<FaceRow>) -> Result<()> {
        self.read_chunk(first, out)
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

/// The compact blocks of a verified cache, as [`VectorFile::estimate_in`] and [`Ahead`] read them.
struct Blocks<'a> {
    file: &'a File,
    chunks: &'a [Chunk],
    dim: usize,
    count: usize,
}

impl Blocks<'_> {
    /// Estimates of the faces in `range` and the parts of it in chunks that failed their checksum
    /// (not estimated); `None` where no estimate can be made (a reference not finite or of another
    /// dimension).
    fn estimate(
        &self,
        range: std::ops::Range<usize>,
        refs: &[Vec<f32>],
        negatives: &[Vec<f32>],
    ) -> Option<(Estimates, Vec<std::ops::Range<usize>>)> {
        use rayon::prelude::*;
        let dim = self.dim;
        let range = range.start.min(self.count)..range.end.min(self.count);
        let len = range.len();
        if refs.iter().chain(negatives).any(|r| r.len() != dim) {
            return None;
        }
        let norm = largest_norm(&[refs, negatives])?;
        let e = Estimator { refs, negatives, norm, dim };
        let mut est = Estimates { pos: vec![0.0; len], neg: Vec::new(), bound: vec![0.0; len] };
        if !negatives.is_empty() {
            est.neg = vec![0.0; len];
        }
        // One slice per chunk (the part of it in `range`), so the chunks are read (pread) and
        // estimated on every core.
        let mut jobs = Vec::with_capacity(self.chunks.len());
        let (mut pos, mut neg, mut bound) = (&mut est.pos[..], &mut est.neg[..], &mut est.bound[..]);
        let first_chunk = if len == 0 { self.chunks.len() } else { self.chunks.partition_point(|c| c.first + c.n <= range.start) };
        for c in self.chunks[first_chunk..].iter().take_while(|c| c.first < range.end) {
            let part = c.first.max(range.start)..(c.first + c.n).min(range.end);
            let (p, rest) = std::mem::take(&mut pos).split_at_mut(part.len());
            pos = rest;
            let (b, rest) = std::mem::take(&mut bound).split_at_mut(part.len());
            bound = rest;
            let n = if neg.is_empty() {
                &mut [][..]
            } else {
                let (n, rest) = std::mem::take(&mut neg).split_at_mut(part.len());
                neg = rest;
                n
            };
            jobs.push((*c, part, p, n, b));
        }
        let (file, per_face) = (self.file, COMPACT_HEAD_SLOTS + dim);
        let damaged = jobs
            .into_par_iter()
            .map(|(c, part, p, n, b)| {
                // One buffer per thread for the whole run: a match estimates window after window,
                // and a buffer per job cost a page fault per page each time.
                COMPACT_SLOTS.with_borrow_mut(|slots| {
                    slots.resize(CHUNK_FACES * per_face, 0);
                    let chunk = &mut slots[..c.n * per_face];
                    if !read_compact(file, &c, chunk) {
                        return Some(part);
                    }
                    e.fill(&chunk[(part.start - c.first) * per_face..], p, n, b);
                    self.settle_bins(&e, &c, part.start - c.first, (p, n, b));
                    None
                })
            })
            .flatten()
            .collect();
        Some((est, damaged))
    }
}

impl Blocks<'_> {
    /// Replaces the estimates (faces `j0..` of chunk `c`) whose bound leaves their 0.01 bin open
    /// (about 1 % of far faces) by the exact distances, bound 0, read here on the estimating
    /// threads instead of one by one by the thread deciding. A row failing its checksum keeps its
    /// estimate (it is read, and the cache repaired, where a decision needs it).
    fn settle_bins(&self, e: &Estimator, c: &Chunk, j0: usize, (pos, neg, bound): (&mut [f32], &mut [f32], &mut [f32])) {
        let (dim, row) = (self.dim, exact_len(self.dim));
        let (mut raw, mut v) = (vec![0u8; row], vec![0f32; dim]);
        for j in 0..pos.len() {
            if !bound[j].is_finite() || crate::matching::one_bin(pos[j], bound[j]) {
                continue;
            }
            let offset = c.offset + (c.n * compact_len(dim) + (j0 + j) * row) as u64;
            if self.file.read_exact_at(&mut raw, offset).is_err() {
                continue;
            }
            let (values, sum) = raw.split_at(4 * dim);
            if sum != crc32fast::hash(values).to_le_bytes() {
                continue;
            }
            for (x, b) in v.iter_mut().zip(values.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            pos[j] = crate::matching::nearest(&v, e.refs);
            if let Some(n) = neg.get_mut(j) {
                *n = crate::matching::nearest(&v, e.negatives);
            }
            bound[j] = 0.0;
        }
    }
}

/// Estimates a verified cache's faces on a descriptor of its own, while the cache itself reads
/// exact rows for the window being decided ([`Vectors::ahead`]). It never repairs: a damaged chunk
/// leaves the window to [`VectorFile::estimate_in`], which does. A repair meanwhile replaces the
/// file, not what this one read: the same faces in the same places, every block checked.
struct Ahead {
    file: File,
    chunks: Vec<Chunk>,
    dim: usize,
    count: usize,
    voids: Voids,
}

impl EstimateAhead for Ahead {
    fn estimate_in(&self, range: std::ops::Range<usize>, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> Option<Estimates> {
        let blocks = Blocks { file: &self.file, chunks: &self.chunks, dim: self.dim, count: self.count };
        let span = self.voids.span(range, self.count);
        let (mut est, damaged) = blocks.estimate(span.clone(), refs, negatives)?;
        if !damaged.is_empty() {
            return None;
        }
        self.voids.squeeze(span, &mut est);
        Some(est)
    }
}

impl Vectors for VectorFile<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.scan_range(0..self.live(), visit)
    }

    fn scan_range(&mut self, range: std::ops::Range<usize>, visit: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let mut floats = vec![0f32; CHUNK_FACES * self.dim];
        let mut raw = Vec::new();
        let (mut first, mut repaired_at) = (range.start, None);
        while first < range.end.min(self.live()) {
            // Live faces from `first` up to the next void one or the end of the chunk.
            let p = self.voids.position(first);
            let c = self.chunks[self.chunk_of(p)];
            let next_void = self.voids.void.get(self.voids.before(p)).copied().unwrap_or(usize::MAX);
            let n = (c.first + c.n).min(next_void).min(p + (range.end - first)) - p;
            let chunk = &mut floats[..n * self.dim];
            // Checked before it is visited: a damaged row never reaches the caller.
            if !self.read_exact(p, chunk, &mut raw) {
                if repaired_at == Some(first) {
                    bail!("the rebuilt vector cache fails its checksum; is the disk failing?");
                }
                // A rebuilt file may cut chunks elsewhere: the chunk is looked up again.
                self.repair().context("rebuilding the damaged vector cache")?;
                repaired_at = Some(first);
                continue;
            }
            visit(first, chunk);
            first += n;
        }
        Ok(())
    }

    fn estimate(&mut self, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> Result<Option<Estimates>> {
        self.estimate_in(0..self.live(), refs, negatives)
    }

    fn estimate_in(&mut self, range: std::ops::Range<usize>, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> Result<Option<Estimates>> {
        let span = self.voids.span(range.clone(), self.count);
        let blocks = Blocks { file: &self.file, chunks: &self.chunks, dim: self.dim, count: self.count };
        let Some((mut est, damaged)) = blocks.estimate(span.clone(), refs, negatives) else { return Ok(None) };
        if !self.voids.void.is_empty() {
            if damaged.is_empty() {
                self.voids.squeeze(span, &mut est);
                return Ok(Some(est));
            }
            // A rebuilt file holds no void faces: estimate the whole range from it.
            self.repair().context("rebuilding the damaged vector cache")?;
            return self.estimate_in(range, refs, negatives);
        }
        // A damaged chunk: rebuild the cache (once) and estimate those faces from the new file.
        if let (false, Some(norm)) = (damaged.is_empty(), largest_norm(&[refs, negatives])) {
            let e = Estimator { refs, negatives, norm, dim: self.dim };
            for part in damaged {
                self.estimate_range(&e, part, &mut est, range.start.min(self.count))?;
            }
        }
        Ok(Some(est))
    }

    fn ahead(&self) -> Option<Box<dyn EstimateAhead>> {
        let file = self.file.try_clone().ok()?;
        Some(Box::new(Ahead { file, chunks: self.chunks.clone(), dim: self.dim, count: self.count, voids: self.voids.clone() }))
    }

    fn fetch(&mut self, wanted: &[usize]) -> Result<Vec<Vec<f32>>> {
        let mut raw = Vec::new();
        let mut out = Vec::with_capacity(wanted.len());
        for &i in wanted {
            if i >= self.live() {
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
                faces.push(super::face_row(r)?);
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
        let mut v = open_verified(file, &key)?;
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
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
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
                    let (a, b) = (BODY_START as usize, BODY_START as usize + chunk);
                    let (x, y) = bytes[a..b + chunk].split_at_mut(chunk);
                    x.swap_with_slice(y);
                }
                3 => bytes.truncate((next() as usize) % len),
                _ => {
                    // Random bytes over the whole body, header kept.
                    for b in &mut bytes[BODY_START as usize..] {
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

    /// A streamed match estimates the next window on another thread while it decides this one;
    /// a compact block damaged after the cache was opened sends that window back to the cache,
    /// which repairs itself: the decisions and counted distances equal an undamaged run's, and
    /// those near the threshold equal matching on the f32 vectors.
    #[test]
    fn a_streamed_match_estimating_ahead_survives_a_block_damaged_meanwhile() {
        use crate::matching::{decide, decide_in_windows, Combine, Filters, InMemory, Options, Reason, EXACT_BAND};
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(CHUNK_FACES * 3 + 5).unwrap();
        // The fixture's vectors are not unit: at 0.7, some match, some are far, some in between.
        let refs = [vec![0.6f32, 0.8, 0.0]];
        let opts = Options { threshold: 0.7, combine: Combine::Nearest, filters: Filters::NONE, allow_ambiguous: false, expand: None };
        let none = std::collections::HashSet::new();
        let run = |damage: bool| {
            let tx = fx.db.conn.unchecked_transaction().unwrap();
            let mut m = open(&tx, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
            if damage {
                // The third chunk's compact block, after it was verified on open.
                let c = m.vectors.chunks[2];
                let f = std::fs::OpenOptions::new().write(true).open(fx.cache_path()).unwrap();
                f.write_all_at(&[0x5a; 64], c.offset + 40).unwrap();
            }
            let mut records = m.vectors.records().unwrap();
            let c = decide_in_windows(&mut records, &mut m.vectors, (&refs, &[]), &opts, (&none, &none), 1000).unwrap();
            let refresh = m.refresh();
            drop(m);
            tx.commit().unwrap();
            (c, refresh)
        };
        let (clean, refresh) = run(false);
        assert_eq!(refresh, Refresh::Rebuilt, "first use");
        let (damaged, refresh) = run(true);
        assert_eq!(refresh, Refresh::Rebuilt, "repaired during the scan");
        assert_eq!(damaged.decisions, clean.decisions);
        let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&damaged.far.distances), bits(&clean.far.distances));
        assert_eq!(clean.decisions.len() + clean.far.distances.len(), CHUNK_FACES * 3 + 5, "every photo decided once");
        let (faces, vectors) = fx.truth().unwrap();
        let exact = decide(&faces, &mut InMemory { vectors: &vectors, dim: DIM }, &refs, &[], &opts).unwrap();
        let far = |d: &&crate::matching::Decision| d.reason == Some(Reason::TooFar) && d.distance > opts.threshold + EXACT_BAND;
        assert_eq!(clean.decisions, exact.iter().filter(|d| !far(d)).copied().collect::<Vec<_>>());
        assert!(clean.decisions.iter().any(|d| d.matched()) && clean.far.distances.len() > 1000, "some match, many are far");
    }

    /// Property: any mix of new faces, faces removed or re-scored or moved to another photo,
    /// photos gone and back, detectors changed and vectors edited, loaded through the saved cache
    /// after each round, holds exactly what SQLite holds (what a rebuild writes), estimates within
    /// their bounds, and a streamed match decides as matching on SQLite's rows; most rounds are
    /// patched, none appended past a bound or left with too many void faces.
    #[test]
    fn property_patched_caches_equal_a_rebuild() {
        use crate::matching::{decide, decide_in_windows, Combine, Filters, InMemory, Options, Reason, EXACT_BAND};
        let mut fx = Fixture::new().unwrap();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        fx.add_random_faces(CHUNK_FACES * 3 + 5).unwrap();
        // Photos of two or three faces, consecutive in face id order as `index` writes them.
        fx.db.conn.execute("UPDATE faces SET image_id = image_id - 1, idx = id WHERE id % 3 = 0 OR id % 7 = 0", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        let refs = [vec![0.6f32, 0.8, 0.0]];
        let opts = Options { threshold: 0.7, combine: Combine::Nearest, filters: Filters::NONE, allow_ambiguous: false, expand: None };
        let none = std::collections::HashSet::new();
        let mut seen = std::collections::BTreeMap::new();
        for round in 0..40 {
            let c = &fx.db.conn;
            let held: i64 = c.query_row("SELECT max(id) FROM faces", [], |r| r.get(0)).unwrap();
            let mut done = Vec::new();
            for _ in 0..next() % 6 + 1 {
                let face = (next() % held as u64) as i64 + 1;
                let kind = next() % 20;
                let sql = match kind {
                    0..=3 => "UPDATE faces SET sharpness = sharpness + 1, score = score / 2 WHERE id = ?1",
                    4..=6 => "DELETE FROM embeddings WHERE face_id = ?1",
                    7..=10 => "UPDATE files SET missing = 1 - missing WHERE image_id = (SELECT image_id FROM faces WHERE id = ?1)",
                    11 => "UPDATE faces SET image_id = (SELECT image_id FROM faces WHERE id = ?1 + 1), idx = ?1 + 1000000 WHERE id = ?1",
                    12 => "UPDATE embeddings SET vector = zeroblob(12) WHERE face_id = ?1",
                    13 => "UPDATE faces SET size_px = 50 WHERE id = ?1",
                    14 | 15 => {
                        fx.add_random_faces((next() % 40) as usize + 1).unwrap();
                        continue;
                    }
                    16 => {
                        fx.toggle_random().unwrap();
                        continue;
                    }
                    _ => {
                        "INSERT INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run)
                          SELECT 'copy' || ?1 || '-' || random(), image_id, 1, 0, 0, 0, 1, 1 FROM faces WHERE id = ?1"
                    }
                };
                fx.db.conn.execute(sql, [face]).unwrap();
                done.push((kind, face));
            }
            let truth = fx.truth().unwrap();
            let (faces, vectors, refresh) = load_committed(&fx);
            assert!(same(&(faces, vectors), &truth), "round {round}: {done:?} ({refresh:?})");
            *seen.entry(refresh.as_str()).or_insert(0) += 1;
            // A streamed match through the patched cache decides as matching on SQLite's rows.
            let tx = fx.db.conn.unchecked_transaction().unwrap();
            let mut m = open(&tx, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
            assert_eq!(m.refresh(), Refresh::None, "round {round}: current after the update");
            let h = &m.vectors.header;
            assert!(m.vectors.voids.void.len() as u64 * 10 <= h.segments.iter().map(|s| s.count).sum::<u64>());
            let mut records = m.vectors.records().unwrap();
            let streamed = decide_in_windows(&mut records, &mut m.vectors, (&refs, &[]), &opts, (&none, &none), 700).unwrap();
            drop(m);
            tx.commit().unwrap();
            let exact = decide(&truth.0, &mut InMemory { vectors: &truth.1, dim: DIM }, &refs, &[], &opts).unwrap();
            let far = |d: &&crate::matching::Decision| d.reason == Some(Reason::TooFar) && d.distance > opts.threshold + EXACT_BAND;
            assert_eq!(streamed.decisions, exact.iter().filter(|d| !far(d)).copied().collect::<Vec<_>>(), "round {round}");
            assert_eq!(streamed.decisions.len() + streamed.far.distances.len(), exact.len(), "round {round}: every photo once");
        }
        assert!(seen.get("patched").copied().unwrap_or(0) >= 20, "most changes are patched in: {seen:?}");
    }

    /// An update killed after writing its segment or patch but before the header leaves the
    /// previous header in force (bytes past it are ignored, then cut); a torn newest header falls
    /// back to the older one, whose log entry is gone: rebuilt; a database restored from a copy
    /// taken before faces were made void never reuses the patched cache.
    #[test]
    fn a_killed_patch_a_torn_header_or_a_restored_copy_is_never_trusted() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(CHUNK_FACES + 300).unwrap();
        let backup = fx.dir.path().join("backup.sqlite");
        load_committed(&fx);
        fx.backup(&backup).unwrap();
        fx.db.conn.execute("DELETE FROM embeddings WHERE face_id IN (3, 4000)", []).unwrap();
        fx.db.conn.execute("UPDATE faces SET score = 0.5 WHERE id = 10", []).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Patched);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        let patch = stored_header(&fx).patch;
        assert!(patch.len > 0);
        // Killed mid-update: a patch's worth of garbage past the header's patch.
        let mut file = std::fs::OpenOptions::new().append(true).open(fx.cache_path()).unwrap();
        file.write_all(&[0xA5; 3000]).unwrap();
        drop(file);
        assert_eq!(load_committed(&fx).2, Refresh::None, "bytes past the header are ignored");
        fx.db.conn.execute("UPDATE files SET missing = 1 WHERE image_id = 20", []).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Patched);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        let h = stored_header(&fx);
        assert_eq!(std::fs::metadata(fx.cache_path()).unwrap().len(), h.patch.offset + h.patch.len, "the leftover bytes were cut");
        // The patch damaged: the header's digest catches it, and the cache is rebuilt.
        let mut bytes = std::fs::read(fx.cache_path()).unwrap();
        bytes[h.patch.offset as usize + 17] ^= 1;
        std::fs::write(fx.cache_path(), &bytes).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // The photo back: its face is live again, from the same bytes.
        fx.db.conn.execute("UPDATE files SET missing = 1 WHERE image_id = 30", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Patched);
        fx.db.conn.execute("UPDATE files SET missing = 0 WHERE image_id = 30", []).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Patched);
        assert!(same(&(faces.clone(), vectors), &fx.truth().unwrap()));
        assert!(stored_header(&fx).patch.len > 0 && faces.iter().any(|f| f.image_id == 30));
        // The newest header torn: the older one names a log entry since deleted.
        fx.db.conn.execute("UPDATE faces SET yaw = 3 WHERE id = 40", []).unwrap();
        load_committed(&fx);
        let h = stored_header(&fx);
        let mut bytes = std::fs::read(fx.cache_path()).unwrap();
        let slot = if read_slot(&File::open(fx.cache_path()).unwrap(), 0).is_some_and(|s| s.generation == h.generation) { 0 } else { 1 };
        bytes[slot * SLOT_LEN + 100] ^= 0xFF;
        std::fs::write(fx.cache_path(), &bytes).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // Patched again, then the copy from before any of it restored: its log lacks the entry.
        fx.db.conn.execute("DELETE FROM embeddings WHERE face_id = 50", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Patched);
        fx.restore(&backup).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces.clone(), vectors), &fx.truth().unwrap()));
        assert!(faces.iter().any(|f| f.face_id == 3), "the restored copy's faces are all back");
    }

    /// The census proof holds beside patches: a face held nowhere (its photo gone at the rebuild)
    /// re-scored changes nothing it holds (the patch notes it had an embedding), while one dropped
    /// without a trigger beside a logged change, of a held face or of one held nowhere, rebuilds.
    #[test]
    fn the_census_proof_holds_beside_patched_changes() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(100).unwrap();
        let c = &fx.db.conn;
        c.execute("UPDATE files SET missing = 1 WHERE image_id = 5", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        assert!(stored_header(&fx).patch.len > 0, "face 5 is noted as held nowhere");
        c.execute("UPDATE faces SET sharpness = 7 WHERE id = 5", []).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::None, "nothing it holds changed, and it knew what face 5 had");
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        for victim in [20, 5] {
            delete_embeddings_without_trigger(c, &format!("face_id = {victim}"));
            c.execute("UPDATE faces SET score = score / 2 WHERE id = 30", []).unwrap();
            let (faces, vectors, refresh) = load_committed(&fx);
            assert_eq!(refresh, Refresh::Rebuilt, "face {victim}");
            assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        }
    }

    /// A xorshift64 stream: reproducible random numbers for the property tests.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Deletes the embeddings matching `filter` with the delete trigger dropped (no log entry, as
    /// when a dump is reloaded by hand), then puts the trigger back as migration 0013 wrote it.
    fn delete_embeddings_without_trigger(c: &Connection, filter: &str) {
        c.execute_batch(&format!("DROP TRIGGER vector_log_embeddings_delete; DELETE FROM embeddings WHERE {filter}")).unwrap();
        c.execute_batch(expected_triggers()["vector_log_embeddings_delete"]).unwrap();
    }

    /// The cache's header as stored (the valid slot of the higher generation).
    fn stored_header(fx: &Fixture) -> Header {
        let file = File::open(fx.cache_path()).unwrap();
        [0, 1].into_iter().filter_map(|s| read_slot(&file, s)).max_by_key(|h| h.generation).unwrap()
    }

    fn log_len(fx: &Fixture) -> i64 {
        fx.db.conn.query_row("SELECT count(*) FROM vector_log", [], |r| r.get(0)).unwrap()
    }

    /// Loads inside a transaction that commits, as `match` does (so the log is pruned).
    fn load_committed(fx: &Fixture) -> (Vec<FaceRow>, Vec<f32>, Refresh) {
        let tx = fx.db.conn.unchecked_transaction().unwrap();
        let mut m = load(&tx, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
        fuzzing::check_estimates(&mut m.vectors).unwrap();
        let all = scan_all(&mut m.vectors).unwrap();
        let (faces, refresh) = (std::mem::take(&mut m.faces), m.refresh());
        drop(m);
        tx.commit().unwrap();
        (faces, all, refresh)
    }

    #[test]
    fn new_faces_are_appended_and_the_log_stays_short() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(CHUNK_FACES + 10).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        assert_eq!(log_len(&fx), 1, "a saved cache keeps only the entry it names");
        let size = std::fs::metadata(fx.cache_path()).unwrap().len();
        for round in 1..MAX_SEGMENTS {
            fx.add_random_faces(round * 7).unwrap();
            let (faces, vectors, refresh) = load_committed(&fx);
            assert_eq!(refresh, Refresh::Appended, "round {round}");
            assert!(same(&(faces, vectors), &fx.truth().unwrap()), "round {round}");
            assert_eq!((stored_header(&fx).segments.len(), log_len(&fx)), (round + 1, 1));
            assert_eq!(load_committed(&fx).2, Refresh::None);
        }
        assert!(std::fs::metadata(fx.cache_path()).unwrap().len() > size);
        // Segments are bounded: one more change rebuilds into one.
        fx.add_random_faces(3).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!((refresh, stored_header(&fx).segments.len()), (Refresh::Rebuilt, 1));
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // A photo going missing, a face removed, a re-scored face are patched in; a changed
        // vector rebuilds.
        for (sql, expected) in [
            ("UPDATE files SET missing = 1 WHERE image_id = 3", Refresh::Patched),
            ("DELETE FROM embeddings WHERE face_id = 5", Refresh::Patched),
            ("UPDATE faces SET sharpness = 1 WHERE id = 7", Refresh::Patched),
            ("UPDATE embeddings SET vector = zeroblob(12) WHERE face_id = 8", Refresh::Rebuilt),
        ] {
            fx.db.conn.execute(sql, []).unwrap();
            let (faces, vectors, refresh) = load_committed(&fx);
            assert_eq!(refresh, expected, "{sql}");
            assert!(same(&(faces, vectors), &fx.truth().unwrap()), "{sql}");
        }
        // --dry-run never writes: a stale cache is rebuilt in a temporary file, the saved one kept.
        fx.add_random_faces(2).unwrap();
        let before = std::fs::read(fx.cache_path()).unwrap();
        let mut m = load(&fx.db.conn, &fx.db_path, 2, DIM, CacheWrite::Temporary).unwrap();
        assert_eq!((m.refresh(), m.faces.len()), (Refresh::Rebuilt, fx.truth().unwrap().0.len()));
        assert_eq!(collect(&mut m).len(), m.faces.len() * DIM);
        drop(m);
        assert!(std::fs::read(fx.cache_path()).unwrap() == before);
    }

    /// A copy restored from a backup and given other faces under the same ids, or a log edited
    /// by hand, never reuses or extends the cache.
    #[test]
    fn a_restored_copy_or_an_edited_log_never_reuses_the_cache() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(50).unwrap();
        let backup = fx.dir.path().join("backup.sqlite");
        fx.backup(&backup).unwrap();
        load_committed(&fx);
        fx.add_random_faces(20).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Appended);
        // The backup holds the entry the first cache named; it gains 20 other faces (ids 51-70).
        fx.restore(&backup).unwrap();
        fx.set_next_face(51);
        fx.add_random_faces(20).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // A copy taken at the cache's entry, restored and given new faces, is extended.
        let copy = fx.dir.path().join("copy.sqlite");
        fx.backup(&copy).unwrap();
        fx.restore(&copy).unwrap();
        fx.add_random_faces(5).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Appended);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // An entry deleted by hand after the cache's one hides a change: seen as a gap.
        load_committed(&fx);
        fx.add_random_faces(3).unwrap();
        fx.db.conn.execute("DELETE FROM vector_log WHERE seq = (SELECT max(seq) - 1 FROM vector_log)", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        assert!(fx.db.conn.execute("UPDATE vector_log SET tag = 0", []).is_err(), "the log is append-only");
    }

    #[test]
    fn an_interrupted_append_or_a_torn_header_is_never_trusted() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(CHUNK_FACES + 3).unwrap();
        load_committed(&fx);
        fx.add_random_faces(40).unwrap();
        // Killed after writing part of a segment, before the header: the old header still holds.
        let mut file = std::fs::OpenOptions::new().append(true).open(fx.cache_path()).unwrap();
        file.write_all(&[0xA5; 5000]).unwrap();
        drop(file);
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Appended, "appended past the leftover bytes");
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // The newest header slot torn: the older one names an entry since deleted, so rebuilt.
        fx.add_random_faces(4).unwrap();
        load_committed(&fx);
        let h = stored_header(&fx);
        let mut bytes = std::fs::read(fx.cache_path()).unwrap();
        let slot = if read_slot(&File::open(fx.cache_path()).unwrap(), 0).is_some_and(|s| s.generation == h.generation) { 0 } else { 1 };
        bytes[slot * SLOT_LEN + 100] ^= 0xFF;
        std::fs::write(fx.cache_path(), &bytes).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // A damaged chunk of an appended segment is caught while streaming and rebuilt.
        fx.add_random_faces(30).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Appended);
        let last = *stored_header(&fx).segments.last().unwrap();
        let mut bytes = std::fs::read(fx.cache_path()).unwrap();
        bytes[last.offset as usize + 9] ^= 1;
        std::fs::write(fx.cache_path(), &bytes).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
    }

    /// Hostile tests H3: edits that once hid from the log, or made it prove nothing for good.
    #[test]
    fn a_log_that_cannot_prove_the_cache_rebuilds_it_once() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(40).unwrap();
        let c = &fx.db.conn;
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        // A photo marked missing through REPLACE (no delete trigger fires) is logged, and patched in.
        c.execute(
            "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run, missing)
             SELECT path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run, 1 FROM files WHERE image_id = 3",
            [],
        )
        .unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Patched);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // The log's tail deleted after a change: the last seq handed out is past its end.
        c.execute("UPDATE embeddings SET vector = (SELECT vector FROM embeddings WHERE face_id = 9) WHERE face_id = 8", []).unwrap();
        let mark = stored_header(&fx).mark.seq;
        c.execute("DELETE FROM vector_log WHERE seq > ?1", [mark]).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // ...and the baseline entry it wrote proves the rebuilt cache next time.
        assert_eq!(load_committed(&fx).2, Refresh::None);
        // An emptied log: rebuilt once, then current (not rebuilt until the next index).
        c.execute("DELETE FROM vector_log", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        assert_eq!((load_committed(&fx).2, log_len(&fx)), (Refresh::None, 1));
        // A trigger dropped: the log proves nothing, nothing is saved, until it is recreated.
        c.execute_batch("DROP TRIGGER vector_log_embeddings_update").unwrap();
        c.execute("UPDATE embeddings SET vector = (SELECT vector FROM embeddings WHERE face_id = 11) WHERE face_id = 10", []).unwrap();
        let before = std::fs::read(fx.cache_path()).unwrap();
        let tx = c.unchecked_transaction().unwrap();
        let mut m = load(&tx, &fx.db_path, 2, DIM, CacheWrite::Save).unwrap();
        assert_eq!(m.refresh(), Refresh::Rebuilt);
        assert!(m.warning.as_deref().is_some_and(|w| w.contains("vector_log")));
        assert!(same(&(std::mem::take(&mut m.faces), collect(&mut m)), &fx.truth().unwrap()));
        drop(m);
        drop(tx);
        assert!(std::fs::read(fx.cache_path()).unwrap() == before, "not saved");
        assert!(repair_log(c).unwrap().is_some() && repair_log(c).unwrap().is_none());
        assert_eq!(load_committed(&fx).2, Refresh::Rebuilt);
        assert_eq!(load_committed(&fx).2, Refresh::None);
        // An embedding dropped without any trigger firing (a dump reloaded by hand): the census.
        delete_embeddings_without_trigger(c, "face_id = 12");
        assert!(log_intact(c).unwrap());
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
    }

    /// The census's page-count shortcut counts what the filtered count counts, with or without
    /// other embedders' rows (below and above this one's id), and still catches an embedding
    /// dropped where no trigger fires while another embedder's rows are there.
    #[test]
    fn the_census_counts_the_same_with_or_without_other_embedders() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(40).unwrap();
        let c = &fx.db.conn;
        let filtered = |model: i64| -> Census {
            let (count, max): (i64, Option<i64>) = c
                .query_row("SELECT count(*), max(face_id) FROM embeddings WHERE model_id = ?1", [model], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            Census { count, max_face: max.unwrap_or(i64::MIN) }
        };
        assert_eq!(Census::of(c, 2).unwrap(), Census { count: 40, max_face: 40 });
        assert_eq!(Census::of(c, 7).unwrap(), filtered(7), "no rows: nothing counted");
        c.execute_batch("INSERT INTO models (id, kind, name, file_blake3, params_json) VALUES (5, 'embedder', 'e5', 'w', '{}')").unwrap();
        let blob = vector_to_blob(&[0.6, 0.8, 0.0]);
        for (face, model) in [(3, 5), (4, 5), (39, 5), (5, 1)] {
            c.execute("INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, ?2, ?3)", rusqlite::params![face, model, blob])
                .unwrap();
        }
        for model in [1, 2, 5, 7] {
            assert_eq!(Census::of(c, model).unwrap(), filtered(model), "model {model}");
        }
        assert_eq!(Census::of(c, 2).unwrap().count, 40);
        load_committed(&fx);
        assert_eq!(load_committed(&fx).2, Refresh::None);
        delete_embeddings_without_trigger(c, "face_id = 12 AND model_id = 2");
        assert!(log_intact(c).unwrap());
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Rebuilt);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
    }

    #[test]
    fn the_log_triggers_are_read_from_migration_0013_as_sqlite_keeps_them() {
        let fx = Fixture::new().unwrap();
        assert_eq!(expected_triggers().len(), 15);
        assert!(log_intact(&fx.db.conn).unwrap());
        // An extra trigger on the log (one that could delete entries) is not facedb's either.
        fx.db.conn.execute_batch("CREATE TRIGGER vector_log_sneak AFTER INSERT ON vector_log BEGIN SELECT 1; END").unwrap();
        assert!(!log_intact(&fx.db.conn).unwrap());
        assert!(repair_log(&fx.db.conn).unwrap().is_some());
        assert!(log_intact(&fx.db.conn).unwrap());
        fx.db.conn.execute_batch("DROP TABLE vector_log").unwrap();
        assert!(repair_log(&fx.db.conn).unwrap().is_some());
        assert!(log_intact(&fx.db.conn).unwrap() && log_len(&fx) == 1);
    }

    /// A copy of a cached photo under a new name changes no face: nothing appended, no rebuild.
    /// Bytes a killed append left are cut before the next append writes.
    #[test]
    fn a_known_photo_under_a_new_name_is_no_change_and_orphan_bytes_are_cut() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(30).unwrap();
        load_committed(&fx);
        fx.db
            .conn
            .execute(
                "INSERT INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run) VALUES ('copy.jpg', 4, 1, 0, 0, 0, 1, 1)",
                [],
            )
            .unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!((refresh, log_len(&fx), stored_header(&fx).segments.len()), (Refresh::None, 1, 1));
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        // The copy's file going missing changes nothing either; the last present file makes its
        // face void.
        fx.db.conn.execute("UPDATE files SET missing = 1 WHERE path = 'copy.jpg'", []).unwrap();
        assert_eq!(load_committed(&fx).2, Refresh::None);
        fx.db.conn.execute("UPDATE files SET missing = 1 WHERE image_id = 4", []).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Patched);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));

        let committed = std::fs::metadata(fx.cache_path()).unwrap().len();
        let mut file = std::fs::OpenOptions::new().append(true).open(fx.cache_path()).unwrap();
        file.write_all(&[0xA5; 5000]).unwrap();
        drop(file);
        fx.add_random_faces(7).unwrap();
        let (faces, vectors, refresh) = load_committed(&fx);
        assert_eq!(refresh, Refresh::Appended);
        assert!(same(&(faces, vectors), &fx.truth().unwrap()));
        assert_eq!(std::fs::metadata(fx.cache_path()).unwrap().len(), committed + segment_len(7, DIM).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_loader() {
        let mut fx = Fixture::new().unwrap();
        fx.add_random_faces(20).unwrap();
        fx.load().unwrap();
        let good = std::fs::read(fx.cache_path()).unwrap();
        assert_eq!(fuzzing::load_bytes(&fx, &good).unwrap().len(), 20 * DIM);
        for n in [0, 1, 8, SLOT_LEN - 1, SLOT_LEN, BODY_START as usize - 1, BODY_START as usize + 1, good.len() - 1] {
            assert!(fuzzing::load_bytes(&fx, &good[..n]).is_err());
        }
        let mut bad = good.clone();
        bad[BODY_START as usize + 5] ^= 1;
        assert!(fuzzing::load_bytes(&fx, &bad).is_err(), "a flipped vector bit is caught while streaming");
    }

    /// Decodes a compact record written by `quantize`.
    fn decode_compact(rec: &[u8]) -> (f32, f32, Vec<i16>) {
        let f = |o: usize| f32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        (f(0), f(4), rec[8..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect())
    }

    #[test]
    fn every_estimate_is_within_its_proven_bound() {
        let mut bits = xorshift(0x1234_5678_9abc_def1u64);
        let mut next = move || (bits() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
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
        use crate::matching::{decide, Combine, Filters, InMemory, Options, Reason, EXACT_BAND};
        const D: usize = 128;
        let mut bits = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut next = move || (bits() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
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
        let exact = decide(&m.faces, &mut InMemory { vectors: &vectors, dim: D }, std::slice::from_ref(&e0), &negatives, &opts).unwrap();
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
        // Streamed from the records, windows straddling chunks: the same decisions, far photos counted.
        let mut records = m.vectors.records().unwrap();
        assert!(crate::matching::FaceList::grouped(&records));
        let none = std::collections::HashSet::new();
        let refs = (std::slice::from_ref(&e0), &negatives[..]);
        let streamed = crate::matching::decide_in_windows(&mut records, &mut m.vectors, refs, &opts, (&none, &none), 1000).unwrap();
        let far = |d: &&crate::matching::Decision| d.reason == Some(Reason::TooFar) && d.distance > threshold + EXACT_BAND;
        assert_eq!(streamed.decisions, compact.iter().filter(|d| !far(d)).copied().collect::<Vec<_>>());
        let far_bits = |d: &mut dyn Iterator<Item = f32>| d.map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(far_bits(&mut streamed.far.distances.iter().copied()), far_bits(&mut compact.iter().filter(far).map(|d| d.distance)));
        assert_eq!(streamed.rows.len(), streamed.decisions.len());
    }
}
