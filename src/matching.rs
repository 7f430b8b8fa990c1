//! Deciding, per photo, whether the person is in it and which face is theirs (pure; no I/O).

use serde::Serialize;

/// Default cosine-distance threshold for SFace. Same-person distances on the test portraits are
/// 0.10-0.26 and different-person ~0.88; OpenCV's suggested operating point for SFace is 0.637
/// and deepface uses 0.593. 0.60 sits just inside both (see README "Choosing a threshold").
pub const DEFAULT_THRESHOLD: f32 = 0.60;
/// `--expand` adds matched faces at most this far from the references (high confidence only).
pub const DEFAULT_EXPAND_THRESHOLD: f32 = 0.35;
/// Two faces of one photo this close to each other are the same face seen twice (a mirror, a
/// reflection, a photo of the photo), not two people. Measured with SFace on the test portraits:
/// a face and its mirror image 0.05-0.08, the same person in different photos 0.22-0.27,
/// different people 0.69-0.89. Look-alikes and twins usually sit above it, so they stay ambiguous.
pub const SAME_FACE_DISTANCE: f32 = 0.30;
/// `--expand` stops after this many passes even if the set still grows.
pub const MAX_PASSES: u32 = 5;

/// How several reference embeddings combine into one distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// Distance to the nearest reference.
    Nearest,
    /// Distance to the normalised mean of the references.
    Mean,
}

/// Why a photo's best face was not cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    TooFar,
    NegativeReference,
    Ambiguous,
    TooSmall,
    LowScore,
    TooBlurry,
    Pose,
    /// The crop would have to be enlarged to reach `--size` (and `--upscale` was not given).
    SmallerThanSize,
    /// The user said this face is not the person (`facedb reject`, a deleted crop, review).
    RejectedByUser,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooFar => "too far",
            Reason::NegativeReference => "negative reference",
            Reason::Ambiguous => "ambiguous",
            Reason::TooSmall => "too small",
            Reason::LowScore => "low detection score",
            Reason::TooBlurry => "too blurry",
            Reason::Pose => "pose",
            Reason::SmallerThanSize => "smaller than --size",
            Reason::RejectedByUser => "rejected by the user",
        }
    }
}

/// What matching needs to know about a stored face besides its embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceRow {
    pub image_id: i64,
    pub face_id: i64,
    pub size_px: f32,
    pub sharpness: f32,
    pub yaw: f32,
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Filters {
    pub min_face: f32,
    pub min_sharpness: f32,
    pub max_yaw: f32,
    pub min_score: f32,
}

impl Filters {
    pub const NONE: Filters = Filters { min_face: 0.0, min_sharpness: 0.0, max_yaw: 180.0, min_score: 0.0 };

    /// The first filter the face fails, if any.
    pub fn reject(&self, f: &FaceRow) -> Option<Reason> {
        if f.size_px < self.min_face {
            Some(Reason::TooSmall)
        } else if f.score < self.min_score {
            Some(Reason::LowScore)
        } else if f.sharpness < self.min_sharpness {
            Some(Reason::TooBlurry)
        } else if f.yaw.abs() > self.max_yaw {
            Some(Reason::Pose)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub threshold: f32,
    pub combine: Combine,
    pub filters: Filters,
    pub allow_ambiguous: bool,
    /// `Some(d)`: grow the reference set with matches within `d` and match again.
    pub expand: Option<f32>,
}

/// The verdict on one photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    pub image_id: i64,
    /// The face closest to the references.
    pub face_id: i64,
    pub distance: f32,
    /// The next-closest face in the same photo.
    pub runner_up: Option<(i64, f32)>,
    /// Distance of the best face to the nearest negative reference.
    pub negative_distance: Option<f32>,
    /// Another face in the photo is within the threshold and is someone else to the chosen face
    /// (a twin, a look-alike): which one is the person cannot be told.
    pub ambiguous: bool,
    /// Other faces within the threshold that are the chosen face seen again (a mirror, a
    /// reflection, a photo of the photo); the closest was chosen and the photo kept.
    pub same_face_copies: u32,
    /// Pass that first matched this photo (1 unless `--expand` found it later).
    pub pass: u32,
    /// `None`: matched.
    pub reason: Option<Reason>,
}

impl Decision {
    pub fn matched(&self) -> bool {
        self.reason.is_none()
    }
}

/// Cosine distance between L2-normalised vectors, 0 (same direction) to 2 (opposite); infinite
/// when a vector holds NaN or infinity (a damaged or hand-edited one), which is never a match.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    let d = dot(a, b);
    if !d.is_finite() {
        // Not clamped: NaN passes every `distance > threshold` test and -inf would clamp to 0.
        return f32::INFINITY;
    }
    // Clamped: rounding can put identical vectors a hair below zero.
    (1.0 - d).clamp(0.0, 2.0)
}

/// Dot product with eight independent sums, so the compiler can keep them in SIMD lanes (a single
/// running sum must be added in order and cannot be vectorised).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The distance to the nearest of `refs` (infinite with none), as every exact path computes it.
pub(crate) fn nearest(face: &[f32], refs: &[Vec<f32>]) -> f32 {
    refs.iter().map(|r| cosine_distance(face, r)).min_by(f32::total_cmp).unwrap_or(f32::INFINITY)
}

/// The normalised mean of the vectors (`None` for an empty set).
pub fn mean_vector(vs: &[Vec<f32>]) -> Option<Vec<f32>> {
    let first = vs.first()?;
    let mut m = vec![0f32; first.len()];
    for v in vs {
        m.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| m.iter().map(|x| x / norm).collect())
}

/// Embeddings in face order (`dim` floats per face), visited in consecutive chunks, so a matrix
/// bigger than memory can stream from disk instead of being held.
pub trait Vectors {
    fn dim(&self) -> usize;
    /// Calls `visit(first_face_index, chunk)` for consecutive chunks that cover every face once.
    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> anyhow::Result<()>;
    /// [`Vectors::scan`] of the faces in `range` only (indices stay the store's).
    fn scan_range(&mut self, range: std::ops::Range<usize>, visit: &mut dyn FnMut(usize, &[f32])) -> anyhow::Result<()> {
        let dim = self.dim().max(1);
        self.scan(&mut |first, chunk| {
            let (lo, hi) = (range.start.max(first), range.end.min(first + chunk.len() / dim));
            if lo < hi {
                visit(lo, &chunk[(lo - first) * dim..(hi - first) * dim]);
            }
        })
    }
    /// Distances estimated from a compact copy of the vectors, each with a proven bound on how far
    /// the exact [`cosine_distance`] can be from it; `None` where only exact vectors are kept.
    fn estimate(&mut self, _refs: &[Vec<f32>], _negatives: &[Vec<f32>]) -> anyhow::Result<Option<Estimates>> {
        Ok(None)
    }
    /// [`Vectors::estimate`] of the faces in `range` only (the estimates start at `range.start`).
    fn estimate_in(
        &mut self,
        _range: std::ops::Range<usize>,
        _refs: &[Vec<f32>],
        _negatives: &[Vec<f32>],
    ) -> anyhow::Result<Option<Estimates>> {
        Ok(None)
    }
    /// An estimator of this store's faces that borrows nothing from it (its own file descriptor),
    /// so the next window is estimated on the other core while this one is decided; `None` where
    /// estimates are made in place only.
    fn ahead(&self) -> Option<Box<dyn EstimateAhead>> {
        None
    }
    /// The exact vectors of the faces at `wanted` indices, in the order asked (one scan here; a
    /// store with random access reads just those).
    fn fetch(&mut self, wanted: &[usize]) -> anyhow::Result<Vec<Vec<f32>>> {
        let dim = self.dim();
        let slot: std::collections::HashMap<usize, usize> = wanted.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        let mut out = vec![Vec::new(); wanted.len()];
        self.scan(&mut |first, chunk| {
            for (j, v) in chunk.chunks_exact(dim).enumerate() {
                if let Some(&k) = slot.get(&(first + j)) {
                    out[k] = v.to_vec();
                }
            }
        })?;
        Ok(out)
    }
}

/// [`Vectors::estimate_in`] of a store, from another thread (see [`Vectors::ahead`]).
pub trait EstimateAhead: Send {
    /// The same estimates as the store's own; `None` where it cannot make them without the store
    /// (a damaged chunk: the store then estimates those faces itself, and repairs).
    fn estimate_in(&self, range: std::ops::Range<usize>, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> Option<Estimates>;
}

/// Estimates made ahead for a window, and the references they were made against.
struct Ready<'r> {
    refs: &'r [Vec<f32>],
    negatives: &'r [Vec<f32>],
    estimates: Estimates,
}

/// The faces of `inner` in `offset..offset + len`, as a store of their own (face `i` here is
/// face `offset + i` there): one window of a streamed match.
struct Window<'v, 'r> {
    inner: &'v mut dyn Vectors,
    offset: usize,
    len: usize,
    /// Estimated while the previous window was decided; used only if asked for with the same
    /// references (otherwise estimated here).
    ready: Option<Ready<'r>>,
}

impl Vectors for Window<'_, '_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> anyhow::Result<()> {
        let offset = self.offset;
        self.inner.scan_range(offset..offset + self.len, &mut |first, chunk| visit(first - offset, chunk))
    }
    fn estimate(&mut self, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> anyhow::Result<Option<Estimates>> {
        match self.ready.take() {
            Some(r) if r.refs == refs && r.negatives == negatives => Ok(Some(r.estimates)),
            _ => self.inner.estimate_in(self.offset..self.offset + self.len, refs, negatives),
        }
    }
    fn fetch(&mut self, wanted: &[usize]) -> anyhow::Result<Vec<Vec<f32>>> {
        let global: Vec<usize> = wanted.iter().map(|&i| i + self.offset).collect();
        self.inner.fetch(&global)
    }
}

/// Stored faces in their vectors' order, read a run at a time (a cache streams them from disk
/// instead of holding them: 32 bytes a face).
pub trait FaceList {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether each photo's faces are consecutive (then photos can be decided as they pass).
    fn grouped(&self) -> bool;
    /// Appends the faces from `first` on to `out`: at least one while `first < len`.
    fn read(&mut self, first: usize, out: &mut Vec<FaceRow>) -> anyhow::Result<()>;
}

/// Faces already in memory, handed out `run` at a time.
pub struct FacesInMemory<'a> {
    pub faces: &'a [FaceRow],
    pub run: usize,
}

impl FaceList for FacesInMemory<'_> {
    fn len(&self) -> usize {
        self.faces.len()
    }
    fn grouped(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        self.faces.chunk_by(|a, b| a.image_id == b.image_id).all(|run| seen.insert(run[0].image_id))
    }
    fn read(&mut self, first: usize, out: &mut Vec<FaceRow>) -> anyhow::Result<()> {
        out.extend_from_slice(&self.faces[first..(first + self.run.max(1)).min(self.faces.len())]);
        Ok(())
    }
}

/// Per face, in face order: estimated distances to the references (`pos`) and to the negatives
/// (`neg`, empty without negatives), and `bound[i]`: the exact distance of face i to either set
/// is within `bound[i]` of its estimate (NaN estimates and bounds: no estimate, read it exactly;
/// a bound of exactly 0: both are the exact distances, [`nearest`] of the f32 row, which a store
/// may compute where an estimate's bound leaves the 0.01 bin open).
#[derive(Debug, Default)]
pub struct Estimates {
    pub pos: Vec<f32>,
    pub neg: Vec<f32>,
    pub bound: Vec<f32>,
}

/// Distances at or under `threshold + EXACT_BAND` are always the exact f32 ones: everything a
/// match lists or stores lies there (see `NEAR_MISS_BAND` and `DRY_RUN_BAND` in `commands::find`).
/// Farther, an estimate stands in when its bound proves the photo's closest face and the
/// distance's 0.01 histogram bin, the only things read from a far photo.
pub const EXACT_BAND: f32 = 0.2;
/// An estimate stays this far from any multiple of 0.01 to stand in for the exact distance: the
/// histograms' bin edges (`histogram::RunHistogram`'s own slack is 1e-6, the dry run's bins are
/// computed in f32).
const BIN_EDGE_MARGIN: f64 = 1e-5;

/// Whether every distance within `bound` of `d` falls in the same 0.01 bin, away from its edges.
pub(crate) fn one_bin(d: f32, bound: f32) -> bool {
    let (lo, hi) = (f64::from(d) - f64::from(bound), f64::from(d) + f64::from(bound));
    let cell = (f64::from(d) * 100.0).floor();
    lo > cell / 100.0 + BIN_EDGE_MARGIN && hi < (cell + 1.0) / 100.0 - BIN_EDGE_MARGIN
}

/// Vectors already in memory, one chunk.
pub struct InMemory<'a> {
    pub vectors: &'a [f32],
    pub dim: usize,
}

impl Vectors for InMemory<'_> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn scan(&mut self, visit: &mut dyn FnMut(usize, &[f32])) -> anyhow::Result<()> {
        visit(0, self.vectors);
        Ok(())
    }
    fn scan_range(&mut self, range: std::ops::Range<usize>, visit: &mut dyn FnMut(usize, &[f32])) -> anyhow::Result<()> {
        let end = range.end.min(self.vectors.len() / self.dim.max(1));
        if range.start < end {
            visit(range.start, &self.vectors[range.start * self.dim..end * self.dim]);
        }
        Ok(())
    }
}

/// Per face: the distance to the references and, if any, to the nearest negative reference.
pub fn distances(vectors: &mut dyn Vectors, refs: &[Vec<f32>], negatives: &[Vec<f32>]) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let dim = vectors.dim();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    vectors.scan(&mut |_, chunk| {
        for v in chunk.chunks_exact(dim) {
            pos.push(nearest(v, refs));
            if !negatives.is_empty() {
                neg.push(nearest(v, negatives));
            }
        }
    })?;
    Ok((pos, neg))
}

/// The vectors of the faces at `wanted` indices, in the order asked.
pub fn gather(vectors: &mut dyn Vectors, wanted: &[usize]) -> anyhow::Result<Vec<Vec<f32>>> {
    vectors.fetch(wanted)
}

/// [`distances`] as `evaluate` reads them: exact for every face of a photo that a decision could
/// list, store or rank differently; for the other (far) photos, estimates whose bound proves
/// both which face is closest and its 0.01 bin. So decisions equal those made from exact
/// distances everywhere, while only the faces near the threshold are read in f32.
fn distances_that_count(
    faces: &[FaceRow],
    order: Option<&[usize]>,
    vectors: &mut dyn Vectors,
    round: &Round,
    opts: &Options,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    // A suspicious threshold prints the widest gap over every distance: all exact then.
    let estimates = if opts.threshold > SUSPICIOUS_THRESHOLD { None } else { vectors.estimate(round.refs, round.negatives)? };
    let Some(Estimates { mut pos, mut neg, bound }) = estimates else {
        return distances(vectors, round.refs, round.negatives);
    };
    if pos.len() != faces.len() || bound.len() != faces.len() || (!round.negatives.is_empty() && neg.len() != faces.len()) {
        anyhow::bail!("the vector cache's estimates do not cover every face; delete the cache file beside the database");
    }
    let exact_upto = opts.threshold + EXACT_BAND;
    let mut wanted = Vec::new();
    for_each_photo(faces, order, |group: &[usize]| {
        let far = |i: usize| pos[i].is_finite() && bound[i].is_finite() && pos[i] - bound[i] > exact_upto;
        let proven = group.iter().all(|&i| far(i) && !round.rejected.contains(&faces[i].face_id)) && {
            let best = group.iter().copied().min_by(|&a, &b| pos[a].total_cmp(&pos[b])).unwrap_or(group[0]);
            let best_hi = pos[best] + bound[best];
            (bound[best] == 0.0 || one_bin(pos[best], bound[best])) && group.iter().all(|&j| j == best || pos[j] - bound[j] > best_hi)
        };
        if !proven {
            wanted.extend_from_slice(group);
        }
    });
    wanted.sort_unstable();
    for (&i, v) in wanted.iter().zip(vectors.fetch(&wanted)?) {
        pos[i] = nearest(&v, round.refs);
        if !round.negatives.is_empty() {
            neg[i] = nearest(&v, round.negatives);
        }
    }
    Ok((pos, neg))
}

/// One decision per photo with at least one embedded face; `vectors` holds `faces[i]`'s
/// embedding at index `i`. Faces need not be ordered: they are grouped by photo here.
pub fn decide(
    faces: &[FaceRow],
    vectors: &mut dyn Vectors,
    positives: &[Vec<f32>],
    negatives: &[Vec<f32>],
    opts: &Options,
) -> anyhow::Result<Vec<Decision>> {
    decide_with(faces, vectors, positives, negatives, opts, &std::collections::HashSet::new())
}

/// Far photos, counted instead of kept: their best face is farther than the threshold plus
/// [`EXACT_BAND`], so nothing lists, stores or crops them, and all that is read from them is
/// their distance (for the histograms). At ten million photos a `Decision` each cost 640 MB.
#[derive(Debug, Default)]
pub struct FarPhotos {
    /// The best distance of each far photo (possibly an estimate, in the right 0.01 bin).
    pub distances: Vec<f32>,
}

/// What a match keeps of the stored faces (see [`decide_counting_far`]).
#[derive(Debug, Default)]
pub struct Counted {
    pub decisions: Vec<Decision>,
    pub far: FarPhotos,
    /// How many of the faces the user rejected for this person.
    pub rejected_faces: usize,
    /// The faces of `decisions`: face id -> (index in the vectors, stored row).
    pub rows: std::collections::HashMap<i64, (usize, FaceRow)>,
}

impl Counted {
    /// Notes the rows of the decisions from `from` on, among `faces` (vector indices from `offset`).
    fn note(&mut self, faces: &[FaceRow], offset: usize, from: usize, rejected: &std::collections::HashSet<i64>) {
        // Most windows decide nothing worth keeping (every photo far): no lookups then.
        if self.decisions.len() > from {
            let decided: std::collections::HashSet<i64> = self.decisions[from..].iter().map(|d| d.face_id).collect();
            for (i, f) in faces.iter().enumerate() {
                if decided.contains(&f.face_id) {
                    self.rows.insert(f.face_id, (offset + i, *f));
                }
            }
        }
        if !rejected.is_empty() {
            self.rejected_faces += faces.iter().filter(|f| rejected.contains(&f.face_id)).count();
        }
    }
}

/// Faces per window of a streamed match (8 MB of rows, 3 MB of estimates; smaller windows
/// spend more on waking and idling the estimating threads between windows).
const WINDOW_FACES: usize = 1 << 18;

/// [`decide_with`], keeping decisions only for photos that can matter: far photos (see
/// [`FarPhotos`]) are counted, unless their face is in `keep` (the faces of crops an earlier run
/// wrote, whose reason is reported). Every photo is kept with `--expand` (a later pass compares
/// all decisions) or a threshold above [`SUSPICIOUS_THRESHOLD`] (whose warning reads them all).
///
/// When each photo's faces are consecutive (a cache's order), the faces stream past a window at a
/// time and each photo is decided as it passes, so memory does not grow with the faces stored:
/// only with the decisions kept and the far photos counted. Decisions come in image id order.
pub fn decide_counting_far(
    faces: &mut dyn FaceList,
    vectors: &mut dyn Vectors,
    refs: (&[Vec<f32>], &[Vec<f32>]),
    opts: &Options,
    rejected: &std::collections::HashSet<i64>,
    keep: &std::collections::HashSet<i64>,
) -> anyhow::Result<Counted> {
    decide_in_windows(faces, vectors, refs, opts, (rejected, keep), WINDOW_FACES)
}

pub(crate) fn decide_in_windows(
    faces: &mut dyn FaceList,
    vectors: &mut dyn Vectors,
    (positives, negatives): (&[Vec<f32>], &[Vec<f32>]),
    opts: &Options,
    (rejected, keep): (&std::collections::HashSet<i64>, &std::collections::HashSet<i64>),
    window: usize,
) -> anyhow::Result<Counted> {
    let n = faces.len();
    let round = Round { refs: positives, negatives, pass: 1, rejected };
    let mut counted = Counted::default();
    let keep = &SortedIds::new(keep);
    let keep_all = opts.expand.is_some() || opts.threshold > SUSPICIOUS_THRESHOLD;
    if keep_all || !faces.grouped() {
        let mut all = Vec::with_capacity(n);
        while all.len() < n {
            read_more(faces, all.len(), &mut all)?;
        }
        counted.decisions = if keep_all {
            decide_with(&all, vectors, positives, negatives, opts, rejected)?
        } else {
            let order = order_by_photo(&all);
            evaluate(&all, order.as_deref(), vectors, &round, opts, Some((&mut counted.far, keep)))?
        };
        counted.note(&all, 0, 0, rejected);
        return Ok(counted);
    }
    // The references as `evaluate` combines them, so the estimates made ahead are those it asks for.
    let combined_refs = combined(positives, opts.combine);
    let (mut first, mut buf) = (0usize, Vec::new());
    // `buf` holds faces from `first`: the window being decided (`..cut`), then the next one.
    let mut cut = window_end(faces, first, &mut buf, 0, window)?;
    let mut ready = None;
    while first < n {
        let next = window_end(faces, first, &mut buf, cut, window)?;
        let ahead = vectors.ahead().filter(|_| next > cut);
        let (part, later) = (&buf[..cut], first + cut..first + next);
        let refs = (&combined_refs[..], negatives);
        let from = counted.decisions.len();
        // The next window's estimates (both cores) while this one is decided (this thread).
        let (decided, estimated) = std::thread::scope(|s| {
            // A thread that cannot be started (a process limit) only means no estimates ahead.
            let job = ahead.and_then(|a| std::thread::Builder::new().spawn_scoped(s, move || a.estimate_in(later, refs.0, refs.1)).ok());
            let mut win = Window { inner: &mut *vectors, offset: first, len: cut, ready: ready.take() };
            let decided = evaluate(part, None, &mut win, &round, opts, Some((&mut counted.far, keep)));
            (decided, job.and_then(|j| j.join().ok().flatten()))
        });
        counted.decisions.extend(decided?);
        counted.note(part, first, from, rejected);
        ready = estimated.map(|estimates| Ready { refs: refs.0, negatives: refs.1, estimates });
        buf.drain(..cut);
        first += cut;
        cut = next - cut;
    }
    // As `evaluate` orders them when it sees all faces at once.
    counted.decisions.sort_by_key(|d| d.image_id);
    Ok(counted)
}

/// The end (in `buf`, which holds faces from `first`) of the window that starts at `start`: up to
/// the start of the buffer's last photo (whose faces may go on past it) once the window holds
/// `window` faces; everything at the end. Reads more faces into `buf` as needed.
fn window_end(faces: &mut dyn FaceList, first: usize, buf: &mut Vec<FaceRow>, start: usize, window: usize) -> anyhow::Result<usize> {
    loop {
        let end = first + buf.len();
        if end >= faces.len() {
            return Ok(buf.len());
        }
        if buf.len() >= start + window {
            let last = buf.last().map(|f: &FaceRow| f.image_id);
            let photo = buf.iter().rposition(|f| Some(f.image_id) != last).map_or(0, |i| i + 1);
            if photo > start {
                return Ok(photo);
            }
        }
        read_more(faces, end, buf)?;
    }
}

/// [`FaceList::read`], refusing a list that hands out nothing (it would never end).
fn read_more(faces: &mut dyn FaceList, first: usize, out: &mut Vec<FaceRow>) -> anyhow::Result<()> {
    let before = out.len();
    faces.read(first, out)?;
    if out.len() == before {
        anyhow::bail!("face {first} of {} could not be read", faces.len());
    }
    Ok(())
}

/// Face indices grouped by photo, when the faces are not already (`None`: they are; a cache
/// holds them so, and at ten million faces an identity order cost 80 MB).
fn order_by_photo(faces: &[FaceRow]) -> Option<Vec<usize>> {
    if faces.is_sorted_by_key(|f| f.image_id) {
        return None;
    }
    let mut order: Vec<usize> = (0..faces.len()).collect();
    order.sort_by_key(|&i| (faces[i].image_id, faces[i].face_id));
    Some(order)
}

/// Calls `visit` with the face indices of each photo in turn: runs of `order`, or of `faces`
/// themselves when there is no order.
fn for_each_photo(faces: &[FaceRow], order: Option<&[usize]>, mut visit: impl FnMut(&[usize])) {
    if let Some(order) = order {
        order.chunk_by(|&a, &b| faces[a].image_id == faces[b].image_id).for_each(visit);
        return;
    }
    let (mut group, mut start) = (Vec::new(), 0);
    for run in faces.chunk_by(|a, b| a.image_id == b.image_id) {
        group.clear();
        group.extend(start..start + run.len());
        visit(&group);
        start += run.len();
    }
}

/// [`decide`], with faces the user rejected for this person: such a face is never chosen (the
/// photo's next face may be, "this face, not the other one"); a photo whose closest face within
/// the threshold is rejected and whose other faces do not match is decided about the rejected
/// face, with [`Reason::RejectedByUser`], so it is listed.
pub fn decide_with(
    faces: &[FaceRow],
    vectors: &mut dyn Vectors,
    positives: &[Vec<f32>],
    negatives: &[Vec<f32>],
    opts: &Options,
    rejected: &std::collections::HashSet<i64>,
) -> anyhow::Result<Vec<Decision>> {
    let order = order_by_photo(faces);
    let mut refs = positives.to_vec();
    let mut decisions = evaluate(faces, order.as_deref(), vectors, &Round { refs: &refs, negatives, pass: 1, rejected }, opts, None)?;
    let Some(expand_within) = opts.expand else {
        return Ok(decisions);
    };
    let index: std::collections::HashMap<i64, usize> = faces.iter().enumerate().map(|(i, f)| (f.face_id, i)).collect();
    let mut added: std::collections::HashSet<i64> = std::collections::HashSet::new();
    for pass in 2..=MAX_PASSES {
        let new: Vec<usize> = decisions
            .iter()
            .filter(|d| d.matched() && d.distance <= expand_within && added.insert(d.face_id))
            .filter_map(|d| index.get(&d.face_id).copied())
            .collect();
        if new.is_empty() {
            break;
        }
        refs.extend(gather(vectors, &new)?);
        let next = evaluate(faces, order.as_deref(), vectors, &Round { refs: &refs, negatives, pass, rejected }, opts, None)?;
        decisions = next
            .into_iter()
            .zip(&decisions)
            .map(|(mut n, old)| {
                if n.matched() && old.matched() {
                    n.pass = old.pass;
                }
                n
            })
            .collect();
    }
    // Faces that joined the references would measure 0 against themselves: report every
    // distance against the references the user gave (the `pass` column says how it was found).
    if !added.is_empty() {
        let (dist, _) = distances(vectors, &combined(positives, opts.combine), &[])?;
        let original = |face_id: i64| index.get(&face_id).and_then(|&i| dist.get(i)).map_or(f32::INFINITY, |&x| sane(x));
        for d in &mut decisions {
            d.distance = original(d.face_id);
            d.runner_up = d.runner_up.map(|(id, _)| (id, original(id)));
        }
    }
    Ok(decisions)
}

/// The references as matching uses them: each one, or their normalised mean.
fn combined(refs: &[Vec<f32>], combine: Combine) -> Vec<Vec<f32>> {
    match combine {
        Combine::Nearest => refs.to_vec(),
        Combine::Mean => mean_vector(refs).into_iter().collect(),
    }
}

/// References that disagree with the rest: for each reference, its median distance to the
/// others, listed when above `threshold` (a folder of references holding two people, or a
/// reference photo of someone else). Needs at least three references to tell which is odd; with
/// two that disagree, both are listed.
pub fn odd_references(refs: &[Vec<f32>], threshold: f32) -> Vec<(usize, f32)> {
    if refs.len() < 2 {
        return Vec::new();
    }
    let mut odd: Vec<(usize, f32)> = refs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut ds: Vec<f32> = refs.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, b)| sane(cosine_distance(a, b))).collect();
            ds.sort_by(f32::total_cmp);
            (i, ds[ds.len() / 2])
        })
        .filter(|&(_, median)| median > threshold)
        .collect();
    odd.sort_by(|a, b| b.1.total_cmp(&a.1));
    odd
}

/// One matching pass: the references so far, the negatives, and the user's rejections.
struct Round<'a> {
    refs: &'a [Vec<f32>],
    negatives: &'a [Vec<f32>],
    pass: u32,
    rejected: &'a std::collections::HashSet<i64>,
}

/// Far photos go to `far` unless their face is in its set (see [`decide_counting_far`]).
type FarSink<'a> = Option<(&'a mut FarPhotos, &'a SortedIds)>;

/// Face ids, sorted: looked up once per far photo, where hashing each id cost more than the rest
/// of deciding it (the set is small: the crops an earlier run wrote).
pub(crate) struct SortedIds(Vec<i64>);

impl SortedIds {
    fn new(ids: &std::collections::HashSet<i64>) -> Self {
        let mut v: Vec<i64> = ids.iter().copied().collect();
        v.sort_unstable();
        SortedIds(v)
    }

    fn contains(&self, id: i64) -> bool {
        self.0.binary_search(&id).is_ok()
    }
}

fn evaluate(
    faces: &[FaceRow],
    order: Option<&[usize]>,
    vectors: &mut dyn Vectors,
    round: &Round,
    opts: &Options,
    mut far: FarSink,
) -> anyhow::Result<Vec<Decision>> {
    let Round { refs, negatives, pass, rejected } = *round;
    let mean;
    let refs: &[Vec<f32>] = match opts.combine {
        Combine::Nearest => refs,
        Combine::Mean => {
            mean = mean_vector(refs).into_iter().collect::<Vec<_>>();
            &mean
        }
    };
    let (dist, neg) = distances_that_count(faces, order, vectors, &Round { refs, negatives, pass, rejected }, opts)?;
    let negative_of = |i: usize| neg.get(i).copied();
    let within = |d: f32| d <= opts.threshold;
    // The verdict on one photo; `contested_vectors` holds the vectors of faces in photos with more than
    // one face within the threshold.
    let verdict = |c: &Candidates, contested_vectors: &std::collections::HashMap<usize, Vec<f32>>| -> Option<Decision> {
        let Candidates { image_id, ref ranked, runner_up, user_rejected } = *c;
        let rejected_decision = |(i, d): (usize, f32), runner_up: Option<(i64, f32)>| Decision {
            image_id,
            face_id: faces[i].face_id,
            distance: d,
            runner_up,
            negative_distance: negative_of(i),
            ambiguous: false,
            same_face_copies: 0,
            pass,
            reason: Some(if within(d) { Reason::RejectedByUser } else { Reason::TooFar }),
        };
        let Some(&(best, distance)) = ranked.first() else {
            return user_rejected.map(|r| rejected_decision(r, None));
        };
        let negative_distance = negative_of(best);
        let (mut copies, mut others) = (0u32, 0u32);
        for &(i, _) in &ranked[1..] {
            let same = match (contested_vectors.get(&best), contested_vectors.get(&i)) {
                (Some(a), Some(b)) => sane(cosine_distance(a, b)) <= SAME_FACE_DISTANCE,
                _ => false,
            };
            if same {
                copies += 1;
            } else {
                others += 1;
            }
        }
        let ambiguous = others > 0;
        let reason = if !within(distance) {
            Some(Reason::TooFar)
        } else if negative_distance.is_some_and(|n| n < distance) {
            Some(Reason::NegativeReference)
        } else if ambiguous && !opts.allow_ambiguous {
            Some(Reason::Ambiguous)
        } else {
            opts.filters.reject(&faces[best])
        };
        // Nothing else in the photo is cropped: list the user's rejection if it was closer.
        if let Some(r) = user_rejected.filter(|&(_, d)| reason.is_some() && within(d) && d <= distance) {
            return Some(rejected_decision(r, Some((faces[best].face_id, distance))));
        }
        Some(Decision {
            image_id,
            face_id: faces[best].face_id,
            distance,
            runner_up,
            negative_distance,
            ambiguous,
            same_face_copies: copies,
            pass,
            reason,
        })
    };
    // Per photo: the closest face and the other faces within the threshold that no negative
    // reference explains (someone we were told it is not). Photos with one such face at most (nearly
    // all) are decided at once; the others wait for their vectors (holding every photo's
    // candidates until then cost a gigabyte at ten million photos).
    let mut out = Vec::new();
    let far_from = opts.threshold + EXACT_BAND;
    let mut waiting: Vec<(usize, Candidates)> = Vec::new();
    let none = std::collections::HashMap::new();
    // One list reused photo after photo (a contested photo keeps its own): an allocation per photo
    // cost more than deciding it.
    let mut scratch: Vec<(usize, f32)> = Vec::new();
    for_each_photo(faces, order, |group: &[usize]| {
        // Nearly every photo of an archive: one face, far, counted. Decided as below would decide
        // it (too far, its distance counted), without building its candidates and verdict.
        if let (&[i], Some((far, keep))) = (group, far.as_mut()) {
            let d = dist.get(i).map_or(f32::NAN, |&d| sane(d));
            if d > far_from && !rejected.contains(&faces[i].face_id) && !keep.contains(faces[i].face_id) {
                far.distances.push(d);
                return;
            }
        }
        let image_id = faces[group[0]].image_id;
        let mut ranked = std::mem::take(&mut scratch);
        ranked.clear();
        ranked.extend(group.iter().filter_map(|&i| dist.get(i).map(|&d| (i, sane(d)))));
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
        // The user's rejections are never chosen; the closest one is kept to be listed.
        let user_rejected = ranked.iter().find(|&&(i, _)| rejected.contains(&faces[i].face_id)).copied();
        ranked.retain(|&(i, _)| !rejected.contains(&faces[i].face_id));
        let runner_up = ranked.get(1).map(|&(i, d)| (faces[i].face_id, d));
        ranked.truncate(1 + ranked.iter().skip(1).take_while(|&&(_, d)| within(d)).count());
        let first = ranked.first().map(|r| r.0);
        ranked.retain(|&(i, d)| Some(i) == first || !negative_of(i).is_some_and(|n| n < d));
        let c = Candidates { image_id, ranked, runner_up, user_rejected };
        if c.ranked.len() > 1 {
            // A stand-in, replaced below (a contested photo always gets a decision).
            out.push(Decision {
                image_id,
                face_id: 0,
                distance: f32::NAN,
                runner_up: None,
                negative_distance: None,
                ambiguous: false,
                same_face_copies: 0,
                pass,
                reason: None,
            });
            waiting.push((out.len() - 1, c));
        } else {
            if let Some(d) = verdict(&c, &none) {
                match far.as_mut() {
                    Some((far, keep))
                        if d.reason == Some(Reason::TooFar)
                            && (d.distance.is_nan() || d.distance > far_from)
                            && !keep.contains(d.face_id) =>
                    {
                        far.distances.push(d.distance)
                    }
                    _ => out.push(d),
                }
            }
            scratch = c.ranked;
        }
    });
    // Whether the other faces within the threshold are the chosen face again or someone else
    // needs their vectors: one more read, for just those faces.
    let contested: Vec<usize> = waiting.iter().flat_map(|(_, p)| p.ranked.iter().map(|&(i, _)| i)).collect();
    let contested_vectors: std::collections::HashMap<usize, Vec<f32>> =
        if contested.is_empty() { Default::default() } else { contested.iter().copied().zip(gather(vectors, &contested)?).collect() };
    for (at, c) in waiting {
        if let Some(d) = verdict(&c, &contested_vectors) {
            out[at] = d;
        }
    }
    Ok(out)
}

/// One photo's faces within the threshold, closest first (the closest even when it is not), and
/// its runner-up face.
struct Candidates {
    image_id: i64,
    ranked: Vec<(usize, f32)>,
    runner_up: Option<(i64, f32)>,
    /// The closest face the user rejected for this person, if any.
    user_rejected: Option<(usize, f32)>,
}

/// A distance that cannot be computed (a NaN from a damaged vector) is as far as it gets: it
/// must never pass a `<=` test by accident or sort before real distances.
fn sane(d: f32) -> f32 {
    if d.is_nan() {
        f32::INFINITY
    } else {
        d
    }
}

/// A `--threshold` above this is most likely a similarity typed where a distance is expected
/// (similarity 0.8 is distance 0.2): it would accept nearly everyone.
pub const SUSPICIOUS_THRESHOLD: f32 = 0.8;

/// The widest empty stretch between consecutive finite distances (per photo, this run) within
/// 0.05-1.2: where a threshold would separate the person from everyone else best.
pub fn widest_gap(distances: &[f32]) -> Option<(f32, f32)> {
    let mut v: Vec<f32> = distances.iter().copied().filter(|d| d.is_finite() && (0.05..=1.2).contains(d)).collect();
    v.sort_by(f32::total_cmp);
    v.windows(2).map(|w| (w[0], w[1])).max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
}

/// Counts of `values` in `bins` equal-width bins over `[lo, hi)`; values outside go to the ends.
pub fn histogram(values: &[f32], lo: f32, hi: f32, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins.max(1)];
    let width = (hi - lo) / counts.len() as f32;
    for v in values.iter().filter(|v| v.is_finite()) {
        let i = ((v - lo) / width).floor().clamp(0.0, (counts.len() - 1) as f32) as usize;
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(image_id: i64, face_id: i64) -> FaceRow {
        FaceRow { image_id, face_id, size_px: 200.0, sharpness: 100.0, yaw: 0.0, score: 0.9 }
    }

    fn opts(threshold: f32) -> Options {
        Options { threshold, combine: Combine::Nearest, filters: Filters::NONE, allow_ambiguous: false, expand: None }
    }

    fn unit(angle_deg: f32) -> Vec<f32> {
        let a = angle_deg.to_radians();
        vec![a.cos(), a.sin()]
    }

    fn run(faces: &[FaceRow], vectors: &[f32], positives: &[Vec<f32>], negatives: &[Vec<f32>], o: &Options) -> Vec<Decision> {
        decide(faces, &mut InMemory { vectors, dim: 2 }, positives, negatives, o).unwrap()
    }

    fn flat(vs: &[Vec<f32>]) -> Vec<f32> {
        vs.iter().flatten().copied().collect()
    }

    #[test]
    fn a_rejected_face_is_never_chosen_and_is_listed_when_nothing_else_matches() {
        // Photo 1: a couple, the rejected face 10 is the closer one; photo 2: only face 20, rejected.
        let faces = [row(1, 10), row(1, 11), row(2, 20), row(3, 30)];
        let vectors = flat(&[unit(5.0), unit(-50.0), unit(3.0), unit(10.0)]);
        let rejected: std::collections::HashSet<i64> = [10, 20].into();
        let d = decide_with(&faces, &mut InMemory { vectors: &vectors, dim: 2 }, &[unit(0.0)], &[], &opts(0.4), &rejected).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].face_id, d[0].reason, d[0].ambiguous), (11, None, false), "the other face of the couple is the person");
        assert_eq!((d[1].face_id, d[1].reason), (20, Some(Reason::RejectedByUser)));
        assert_eq!((d[2].face_id, d[2].reason), (30, None));
        let plain = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.4));
        assert_eq!((plain[0].face_id, plain[0].ambiguous, plain[1].reason), (10, true, None), "without the rejections");
    }

    #[test]
    fn picks_closest_face_per_photo_with_runner_up() {
        let faces = [row(1, 10), row(1, 11), row(1, 12), row(2, 20)];
        let vectors = flat(&[unit(90.0), unit(0.0), unit(60.0), unit(180.0)]);
        let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.4));
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].face_id, d[0].reason, d[0].ambiguous), (11, None, false));
        let (ru, rd) = d[0].runner_up.unwrap();
        assert_eq!(ru, 12);
        assert!((rd - 0.5).abs() < 1e-5);
        assert_eq!((d[1].face_id, d[1].reason), (20, Some(Reason::TooFar)));
    }

    #[test]
    fn someone_else_within_threshold_is_ambiguous() {
        // Both 40 degrees from the reference (distance 0.23), 80 degrees apart (0.83): two people.
        let faces = [row(1, 10), row(1, 11)];
        let vectors = flat(&[unit(40.0), unit(-41.0)]);
        let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.3));
        assert!(d[0].ambiguous);
        assert_eq!((d[0].reason, d[0].same_face_copies), (Some(Reason::Ambiguous), 0));
        let allowed = Options { allow_ambiguous: true, ..opts(0.3) };
        assert_eq!(run(&faces, &vectors, &[unit(0.0)], &[], &allowed)[0].reason, None);
    }

    #[test]
    fn the_same_face_seen_twice_is_kept_and_flagged() {
        // A face and its mirror image: both near the reference and 10 degrees (0.015) apart. The
        // closer one is chosen; a third face, someone else, still makes a photo ambiguous.
        let faces = [row(1, 10), row(1, 11), row(2, 20), row(2, 21), row(2, 22)];
        let vectors = flat(&[unit(35.0), unit(25.0), unit(25.0), unit(35.0), unit(-40.0)]);
        let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.3));
        assert_eq!((d[0].face_id, d[0].reason, d[0].ambiguous, d[0].same_face_copies), (11, None, false, 1));
        assert_eq!((d[1].face_id, d[1].reason, d[1].ambiguous, d[1].same_face_copies), (20, Some(Reason::Ambiguous), true, 1));
    }

    #[test]
    fn a_nan_distance_never_matches() {
        let faces = [row(1, 10), row(1, 11), row(2, 20)];
        let nan = f32::NAN;
        let vectors = [nan, nan, 1.0, 0.0, -nan, nan];
        let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.6));
        assert_eq!((d[0].face_id, d[0].reason, d[0].ambiguous), (11, None, false));
        assert_eq!(d[1].reason, Some(Reason::TooFar));
    }

    #[test]
    fn closer_to_a_negative_is_rejected() {
        let faces = [row(1, 10)];
        let vectors = unit(40.0);
        assert_eq!(run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.6))[0].reason, None);
        let d = run(&faces, &vectors, &[unit(0.0)], &[unit(45.0)], &opts(0.6));
        assert_eq!(d[0].reason, Some(Reason::NegativeReference));
    }

    #[test]
    fn filters_reject_with_their_reason() {
        let f = Filters { min_face: 64.0, min_sharpness: 20.0, max_yaw: 45.0, min_score: 0.8 };
        let mut small = row(1, 1);
        small.size_px = 30.0;
        let mut blurry = row(2, 2);
        blurry.sharpness = 5.0;
        let mut turned = row(3, 3);
        turned.yaw = -60.0;
        let faces = [small, blurry, turned];
        let vectors = flat(&[unit(0.0), unit(0.0), unit(0.0)]);
        let o = Options { filters: f, ..opts(0.6) };
        let reasons: Vec<_> = run(&faces, &vectors, &[unit(0.0)], &[], &o).iter().map(|d| d.reason).collect();
        assert_eq!(reasons, vec![Some(Reason::TooSmall), Some(Reason::TooBlurry), Some(Reason::Pose)]);
    }

    #[test]
    fn expand_reaches_faces_the_first_reference_cannot() {
        // A chain: ref at 0 deg; photos at 30, 60, 90 deg. Threshold 0.2 (~37 deg).
        let faces = [row(1, 1), row(2, 2), row(3, 3)];
        let vectors = flat(&[unit(30.0), unit(60.0), unit(90.0)]);
        let base = opts(0.2);
        let once = run(&faces, &vectors, &[unit(0.0)], &[], &base);
        assert_eq!(once.iter().filter(|d| d.matched()).count(), 1);
        let grown = run(&faces, &vectors, &[unit(0.0)], &[], &Options { expand: Some(0.2), ..base });
        let passes: Vec<_> = grown.iter().map(|d| (d.matched(), d.pass)).collect();
        assert_eq!(passes, vec![(true, 1), (true, 2), (true, 3)]);
        // Distances are to the reference the user gave, not to the faces that joined it.
        for (d, angle) in grown.iter().zip([30.0f32, 60.0, 90.0]) {
            assert!((d.distance - (1.0 - angle.to_radians().cos())).abs() < 1e-5, "{d:?}");
        }
    }

    #[test]
    fn a_reference_of_someone_else_is_named() {
        let refs = [unit(0.0), unit(10.0), unit(-8.0), unit(100.0)];
        let odd = odd_references(&refs, 0.6);
        assert_eq!(odd.iter().map(|o| o.0).collect::<Vec<_>>(), vec![3]);
        assert!(odd_references(&refs[..3], 0.6).is_empty());
        assert_eq!(odd_references(&[unit(0.0), unit(100.0)], 0.6).len(), 2);
        assert!(odd_references(&[unit(0.0)], 0.6).is_empty());
    }

    #[test]
    fn mean_combine_uses_the_centroid() {
        let refs = [unit(0.0), unit(90.0)];
        let m = mean_vector(&refs).unwrap();
        assert!((cosine_distance(&m, &unit(45.0))).abs() < 1e-6);
        let faces = [row(1, 1)];
        let o = Options { combine: Combine::Mean, ..opts(0.1) };
        assert_eq!(run(&faces, &unit(45.0), &refs, &[], &o)[0].reason, None);
        assert_eq!(run(&faces, &unit(45.0), &refs, &[], &opts(0.1))[0].reason, Some(Reason::TooFar));
    }

    #[test]
    fn photos_are_grouped_even_when_faces_come_unordered() {
        let faces = [row(2, 20), row(1, 10), row(2, 21), row(1, 11)];
        let vectors = flat(&[unit(80.0), unit(10.0), unit(5.0), unit(90.0)]);
        let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(0.3));
        let picked: Vec<_> = d.iter().map(|d| (d.image_id, d.face_id, d.reason)).collect();
        assert_eq!(picked, vec![(1, 10, None), (2, 21, None)]);
    }

    #[test]
    fn nan_or_infinite_distances_are_never_a_match() {
        let nan = [f32::NAN, 0.0];
        let neg_nan = [-f32::NAN, 0.0];
        let inf = [f32::INFINITY, 0.0];
        let neg_inf = [f32::NEG_INFINITY, 1.0];
        let faces = [row(1, 10), row(2, 20), row(3, 30), row(4, 40), row(5, 50), row(5, 51)];
        // Photo 5: a damaged face beside a real one; the real one is picked and nothing is ambiguous.
        let vectors = flat(&[nan.to_vec(), neg_nan.to_vec(), inf.to_vec(), neg_inf.to_vec(), neg_nan.to_vec(), unit(10.0)]);
        for threshold in [0.6, 2.0] {
            let d = run(&faces, &vectors, &[unit(0.0)], &[], &opts(threshold));
            let got: Vec<_> = d.iter().map(|d| (d.face_id, d.reason, d.ambiguous)).collect();
            assert_eq!(
                got,
                vec![
                    (10, Some(Reason::TooFar), false),
                    (20, Some(Reason::TooFar), false),
                    (30, Some(Reason::TooFar), false),
                    (40, Some(Reason::TooFar), false),
                    (51, None, false)
                ],
                "threshold {threshold}"
            );
            assert!(d[..4].iter().all(|d| d.distance == f32::INFINITY));
        }
        // A damaged reference or negative matches nothing and rejects nothing.
        let good = [row(1, 10)];
        assert_eq!(run(&good, &unit(0.0), &[nan.to_vec()], &[], &opts(2.0))[0].reason, Some(Reason::TooFar));
        assert_eq!(run(&good, &unit(0.0), &[unit(0.0)], &[neg_nan.to_vec()], &opts(0.6))[0].reason, None);
        let mean = Options { combine: Combine::Mean, ..opts(2.0) };
        assert_eq!(run(&good, &unit(0.0), &[unit(0.0), nan.to_vec()], &[], &mean)[0].reason, Some(Reason::TooFar));
        assert_eq!(cosine_distance(&inf, &unit(0.0)), f32::INFINITY);
    }

    #[test]
    fn dot_matches_a_plain_sum_for_any_length() {
        for n in [0, 1, 7, 8, 9, 128, 131] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn the_widest_gap_is_where_people_separate() {
        assert_eq!(widest_gap(&[0.2, 0.25, 0.3, 0.85, 0.9, f32::NAN, 1.5]), Some((0.3, 0.85)));
        assert_eq!(widest_gap(&[0.3]), None);
    }

    #[test]
    fn far_photos_are_counted_with_their_distances_not_kept() {
        // Photos at 0-170 degrees from the reference; a rejected face and a kept one among the far.
        let faces: Vec<FaceRow> = (0..18).map(|i| row(i, 100 + i)).collect();
        let vectors = flat(&(0..18).map(|i| unit(i as f32 * 10.0)).collect::<Vec<_>>());
        let rejected: std::collections::HashSet<i64> = [115].into();
        let keep: std::collections::HashSet<i64> = [116].into();
        let o = opts(0.3);
        let all = decide_with(&faces, &mut InMemory { vectors: &vectors, dim: 2 }, &[unit(0.0)], &[], &o, &rejected).unwrap();
        let list = &mut FacesInMemory { faces: &faces, run: 5 };
        let Counted { decisions: kept, far, rejected_faces, rows } =
            decide_in_windows(list, &mut InMemory { vectors: &vectors, dim: 2 }, (&[unit(0.0)], &[]), &o, (&rejected, &keep), 4).unwrap();
        assert_eq!(rejected_faces, 1);
        assert!(kept.iter().all(|d| rows[&d.face_id] == ((d.face_id - 100) as usize, faces[(d.face_id - 100) as usize])));
        let beyond = |d: &Decision| d.reason == Some(Reason::TooFar) && d.distance > 0.3 + EXACT_BAND && d.face_id != 116;
        assert_eq!(kept, all.iter().filter(|d| !beyond(d)).copied().collect::<Vec<_>>());
        assert_eq!(far.distances, all.iter().filter(|d| beyond(d)).map(|d| d.distance).collect::<Vec<_>>());
        assert!(far.distances.len() >= 8 && kept.iter().any(|d| d.face_id == 116), "{kept:?}");
        // With --expand every photo is kept.
        let grown = Options { expand: Some(0.2), ..o };
        let list = &mut FacesInMemory { faces: &faces, run: 5 };
        let Counted { decisions: kept, far, .. } =
            decide_counting_far(list, &mut InMemory { vectors: &vectors, dim: 2 }, (&[unit(0.0)], &[]), &grown, &rejected, &keep).unwrap();
        assert_eq!((kept.len(), far.distances.len()), (18, 0));
    }

    /// Photos decided window by window, as the faces stream past, are decided as with every face
    /// at once: photos of several faces across window and read boundaries, contested photos,
    /// rejected faces, and photos whose ids do not follow the faces' order.
    #[test]
    fn streamed_windows_decide_as_all_faces_at_once() {
        let mut faces = Vec::new();
        let mut angles = Vec::new();
        for p in 0..40i64 {
            // Image ids out of order, each photo's faces together: still streamed.
            let image = (p * 7) % 40;
            for k in 0..(1 + p % 4) {
                faces.push(row(image, 1000 + faces.len() as i64));
                angles.push(((p * 13 + k * 29) % 90) as f32 + if k == 1 { 1.0 } else { 0.0 });
            }
        }
        let vectors = flat(&angles.iter().map(|&a| unit(a)).collect::<Vec<_>>());
        let rejected: std::collections::HashSet<i64> = [1003, 1010].into();
        let keep = std::collections::HashSet::new();
        let o = opts(0.15);
        let all = decide_with(&faces, &mut InMemory { vectors: &vectors, dim: 2 }, &[unit(0.0)], &[], &o, &rejected).unwrap();
        let far = |d: &Decision| d.reason == Some(Reason::TooFar) && d.distance > 0.15 + EXACT_BAND;
        for (window, run) in [(1, 1), (3, 2), (5, 7), (1000, 3)] {
            let list = &mut FacesInMemory { faces: &faces, run };
            assert!(list.grouped());
            let c =
                decide_in_windows(list, &mut InMemory { vectors: &vectors, dim: 2 }, (&[unit(0.0)], &[]), &o, (&rejected, &keep), window)
                    .unwrap();
            assert_eq!(c.decisions, all.iter().filter(|d| !far(d)).copied().collect::<Vec<_>>(), "window {window} run {run}");
            let mut got = c.far.distances.clone();
            let mut want: Vec<f32> = all.iter().filter(|d| far(d)).map(|d| d.distance).collect();
            got.sort_by(f32::total_cmp);
            want.sort_by(f32::total_cmp);
            assert_eq!(got, want);
            assert_eq!(c.rejected_faces, 2);
        }
        // A photo whose faces are apart is not streamed, and still decided the same.
        let end = faces.len() - 1;
        faces.swap(0, end);
        let mut swapped = vectors.clone();
        let last = swapped.len() - 2;
        let (a, b) = swapped.split_at_mut(last);
        a[..2].swap_with_slice(b);
        let list = &mut FacesInMemory { faces: &faces, run: 3 };
        assert!(!list.grouped());
        let all = decide_with(&faces, &mut InMemory { vectors: &swapped, dim: 2 }, &[unit(0.0)], &[], &o, &rejected).unwrap();
        let c =
            decide_in_windows(list, &mut InMemory { vectors: &swapped, dim: 2 }, (&[unit(0.0)], &[]), &o, (&rejected, &keep), 3).unwrap();
        assert_eq!(c.decisions, all.iter().filter(|d| !far(d)).copied().collect::<Vec<_>>());
    }

    #[test]
    fn histogram_bins_and_clamps() {
        assert_eq!(histogram(&[0.05, 0.15, 0.15, 0.95, 2.0, -1.0], 0.0, 1.0, 10), vec![2, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
