//! `match --best N`: of the matched faces, the few a trainer wants (pure; no I/O).
//!
//! 1. **Near-duplicates** (burst shots, re-encodes, resized or slightly cropped copies) are
//!    grouped: two faces are copies when their embeddings are within `DUP_EMBEDDING` AND their
//!    face hashes (dHash of the aligned face, `pipeline::fingerprint`) within `DUP_HASH_BITS`.
//!    Either alone is not enough: a face and its mirror image embed 0.05-0.08 apart (but hash far
//!    apart), and aligned faces of different people can share many hash bits. Each group competes
//!    through its best face only.
//! 2. **Quality**: one score in 0..1 per face (`quality`).
//! 3. **Variety**: greedy max-min diversity over the embedding plus pose, expression, light and
//!    framing (`features`): the best face first, then each time the face whose quality times its
//!    distance to the nearest face already picked is highest. Deterministic: faces are visited
//!    in face id order and ties go to the lower id.

use rayon::prelude::*;

use crate::matching::cosine_distance;
use crate::models::sface::align::TEMPLATE;
use crate::pipeline::quality::SHARP;

/// Embeddings of near-duplicates are at most this far apart (cosine distance). Measured with
/// SFace on the test portraits (tests/it/best.rs): obama.jpg re-encoded at JPEG 70 or resized to
/// 90 % 0.01-0.02 from the original, cropped by 5 % or as the next frame of a burst (shifted,
/// brighter) 0.03-0.05, obama2.jpg darkened and blurred 0.09; other photos of the same person
/// 0.19-0.60; a mirror image 0.09 and the photo cut to half its width 0.10-0.13 (not caught:
/// their hashes are far).
pub const DUP_EMBEDDING: f32 = 0.10;
/// Face hashes of near-duplicates differ in at most this many of 64 bits. Measured on the same
/// photos with the detector of 2026-12-02 (every face refined at 96 px; tests/it/best.rs prints
/// them): re-encoded at JPEG 70 5 bits, resized 6, the next burst frame 6, darkened and blurred
/// 6, cropped by 5 % 9, the test set's PNG copy of obama2.jpg 10 (YuNet puts its eyes 16 px from
/// the JPEG's on a 280 px face); the photo cut to half its width 19, turned 25 degrees 17,
/// mirrored 21, other photos of the same person 26-31. The cut sits between 10 and 17-19; at 9
/// (set when copies measured 0-7) the PNG copy and a 5 % crop were at or past it.
pub const DUP_HASH_BITS: u32 = 11;
/// Face size (shorter side of the box, px) that fills a crop without enlarging when no --size
/// is given: 256 px is what 512 px training crops with the default margin need.
pub const DEFAULT_USEFUL_FACE: f32 = 256.0;

/// What selection knows about one matched face.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub face_id: i64,
    /// L2-normalised embedding (`None`: the face could not be aligned; it has no near-duplicates).
    pub embedding: Option<Vec<f32>>,
    /// dHash of the aligned face (`None`: not computed, the photo could not be read).
    pub hash: Option<u64>,
    pub size_px: f32,
    pub sharpness: f32,
    pub det_score: f32,
    pub yaw: f32,
    pub brightness: f32,
    pub landmarks: [[f32; 2]; 5],
    /// Shorter side of the photo, px.
    pub photo_short_side: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// At most this many faces are picked.
    pub n: usize,
    /// Faces at least this big (px) get the full size term: smaller ones would need enlarging.
    pub useful_face_px: f32,
}

/// Why a face was passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassedOver {
    /// A near-duplicate of this (better) face, which represents the group.
    NearDuplicate(i64),
    NotAmongBest,
}

impl PassedOver {
    pub fn reason(self, n: usize) -> String {
        match self {
            PassedOver::NearDuplicate(of) => format!("near-duplicate of face {of}"),
            PassedOver::NotAmongBest => format!("not among the best {n}"),
        }
    }
}

/// The verdict on one face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub face_id: i64,
    /// Quality 0..1.
    pub score: f32,
    /// The lowest face id of the face's near-duplicate group (its own id when alone).
    pub group_id: i64,
    pub group_size: u32,
    /// 1 = picked first; `None`: passed over.
    pub rank: Option<u32>,
    pub passed_over: Option<PassedOver>,
}

/// Quality of a face for training, 0..1: the product of one term per property, each 0..1, so a
/// face bad in one respect cannot buy it back with another.
/// - size / `useful_face_px` (capped at 1): a smaller face must be enlarged, which invents detail;
/// - sharpness / `SHARP` (capped at 1): the measure is resolution- and exposure-independent,
///   under 25 blurred, so a blurred face scores under 0.5;
/// - pose, square-rooted: a frontal face scores 1, 60 degrees or more of yaw or pitch 0.5; turned
///   faces are useful for variety, so they are only discounted;
/// - exposure, square-rooted: mean luma of the face near mid-grey scores 1, a face in deep
///   shadow or blown out near 0 (the embedding and the hash ignore light, the trainer does not);
/// - detection score, square-rooted: YuNet scores 0.9+ on clear faces, 0.6-0.7 on partly hidden
///   or odd ones, 0.5 or less maps to 0.
pub fn quality(f: &Face, useful_face_px: f32) -> f32 {
    let unit = |x: f32| if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 };
    let size = unit(f.size_px / useful_face_px.max(1.0));
    let sharp = unit(f.sharpness / SHARP);
    let (pitch, _) = pitch_and_smile(&f.landmarks);
    let turn = f.yaw.abs().max(pitch.abs());
    let pose = unit(1.0 - 0.5 * (turn / 60.0).min(1.0));
    let exposure = unit(1.0 - ((f.brightness - 128.0) / 128.0).powi(2));
    let detection = unit((f.det_score - 0.5) / 0.4);
    size * sharp * (pose * exposure * detection).sqrt()
}

/// Head pitch (degrees, positive looking down) and smile (mouth width over eye distance) from
/// the five landmarks. Pitch: the nose tip stands in front of the eye-mouth plane, so nodding
/// moves it along the eye-to-mouth axis; its position there, against the template's, gives
/// the angle (a proxy good to about 10 degrees). Smile: a smile widens the mouth against the
/// eyes (the template's ratio is 0.83).
pub fn pitch_and_smile(lm: &[[f32; 2]; 5]) -> (f32, f32) {
    let raw = |lm: &[[f32; 2]; 5]| -> Option<(f32, f32)> {
        let [re, le, nose, rm, lmo] = *lm;
        let (dx, dy) = (le[0] - re[0], le[1] - re[1]);
        let eye = (dx * dx + dy * dy).sqrt();
        if !(eye > 1e-3) {
            return None;
        }
        // Unit vector down the face, perpendicular to the eye line.
        let (vx, vy) = (-dy / eye, dx / eye);
        let (mx, my) = ((re[0] + le[0]) / 2.0, (re[1] + le[1]) / 2.0);
        let down = |p: [f32; 2]| (p[0] - mx) * vx + (p[1] - my) * vy;
        let mouth = down([(rm[0] + lmo[0]) / 2.0, (rm[1] + lmo[1]) / 2.0]);
        if !(mouth > 1e-3) {
            return None;
        }
        let width = ((lmo[0] - rm[0]).powi(2) + (lmo[1] - rm[1]).powi(2)).sqrt();
        Some((down(nose) / mouth, width / eye))
    };
    let (Some((r, smile)), Some((r0, _))) = (raw(lm), raw(&TEMPLATE)) else { return (0.0, 0.0) };
    // The nose tip stands about 0.45 eye-to-mouth lengths in front of that axis.
    (((r - r0) / 0.45).atan().to_degrees(), smile)
}

/// Attribute weight in the diversity space, against the embedding (two photos of the same
/// person embed about 0.7 apart there): 45 degrees of yaw, 30 of pitch, a smile against a
/// neutral mouth, half the luma range or a close-up against a half-body shot each add 0.35.
const ATTRIBUTE_WEIGHT: f32 = 0.35;
const ATTRIBUTES: usize = 5;

/// The point in the diversity space: the embedding followed by yaw, pitch, expression, light and
/// framing (face size against the photo: close-up or wide shot, a proxy for background). No
/// date: `index` stores no capture date.
fn features(f: &Face, dim: usize, out: &mut [f32]) {
    if let Some(e) = f.embedding.as_ref().filter(|e| e.len() == dim) {
        out[..dim].copy_from_slice(e);
    }
    let (pitch, smile) = pitch_and_smile(&f.landmarks);
    let framing = (f.size_px / f.photo_short_side.max(1.0)).max(1e-3).log2() / 2.0;
    let attrs = [f.yaw / 45.0, pitch / 30.0, (smile - 0.83) / 0.15, (f.brightness - 128.0) / 64.0, framing];
    for (o, a) in out[dim..].iter_mut().zip(attrs) {
        *o = if a.is_finite() { ATTRIBUTE_WEIGHT * a.clamp(-4.0, 4.0) } else { 0.0 };
    }
}

/// Selects at most `params.n` faces; one `Choice` per face, in face id order.
pub fn select(faces: &[Face], params: &Params) -> Vec<Choice> {
    let mut order: Vec<usize> = (0..faces.len()).collect();
    order.sort_by_key(|&i| faces[i].face_id);
    let faces: Vec<&Face> = order.iter().map(|&i| &faces[i]).collect();
    let scores: Vec<f32> = faces.iter().map(|f| quality(f, params.useful_face_px)).collect();
    let groups = near_duplicate_groups(&faces);
    let mut choices: Vec<Choice> = faces
        .iter()
        .zip(&scores)
        .map(|(f, &score)| Choice { face_id: f.face_id, score, group_id: f.face_id, group_size: 1, rank: None, passed_over: None })
        .collect();
    // Each group is represented by its best face (ties: the lowest id, the first seen).
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &root) in groups.iter().enumerate() {
        members.entry(root).or_default().push(i);
    }
    let mut candidates = Vec::with_capacity(members.len());
    for list in members.values() {
        let best = list.iter().copied().reduce(|a, b| if scores[b] > scores[a] { b } else { a }).unwrap_or(list[0]);
        let group_id = faces[list[0]].face_id;
        for &i in list {
            choices[i].group_id = group_id;
            choices[i].group_size = list.len() as u32;
            if i != best {
                choices[i].passed_over = Some(PassedOver::NearDuplicate(faces[best].face_id));
            }
        }
        candidates.push(best);
    }
    candidates.sort_unstable();
    for (rank, i) in max_min_diversity(&faces, &scores, &candidates, params.n).into_iter().enumerate() {
        choices[i].rank = Some(rank as u32 + 1);
    }
    for &i in &candidates {
        if choices[i].rank.is_none() {
            choices[i].passed_over = Some(PassedOver::NotAmongBest);
        }
    }
    choices
}

/// Union-find root per face (indices into `faces`): faces joined when both their embeddings
/// and their hashes are close. Pairs are found by multi-index hashing: the 64 bits are cut into
/// `HASH_BLOCKS` blocks, and since two hashes within `DUP_HASH_BITS` bits cannot differ in 2 or
/// more bits of every block, they agree on some block up to one bit. Each block's values index
/// a table directly (11 bits at most), so a face looks up its own value and its one-bit
/// neighbours: exact, and about 70 lookups of a dozen faces each for spread hashes.
fn near_duplicate_groups(faces: &[&Face]) -> Vec<usize> {
    let hashed: Vec<(usize, u64)> =
        faces.iter().enumerate().filter(|(_, f)| f.embedding.is_some()).filter_map(|(i, f)| f.hash.map(|h| (i, h))).collect();
    let pairs: Vec<(usize, usize)> =
        (0..HASH_BLOCKS).into_par_iter().flat_map_iter(|b| block_pairs(&hashed, b)).filter(|&(i, j)| close(faces[i], faces[j])).collect();
    let mut parent: Vec<usize> = (0..faces.len()).collect();
    for (i, j) in pairs {
        union(&mut parent, i, j);
    }
    (0..faces.len()).map(|i| find(&mut parent, i)).collect()
}

/// Blocks of the hash for `near_duplicate_groups`: 2 x 6 > `DUP_HASH_BITS`.
const HASH_BLOCKS: usize = 6;
const _: () = assert!(2 * HASH_BLOCKS as u32 > DUP_HASH_BITS);

/// Pairs (as `hashed` entries' face indices, lower position first) whose block `b` differs in
/// at most one bit and whose whole hashes are within `DUP_HASH_BITS`.
fn block_pairs(hashed: &[(usize, u64)], b: usize) -> Vec<(usize, usize)> {
    let (lo, hi) = (b * 64 / HASH_BLOCKS, (b + 1) * 64 / HASH_BLOCKS);
    let width = hi - lo;
    let key = |h: u64| ((h >> lo) & ((1u64 << width) - 1)) as usize;
    // Counting sort into a table indexed by the block's value: start[v]..start[v + 1].
    let mut start = vec![0u32; (1 << width) + 1];
    for &(_, h) in hashed {
        start[key(h) + 1] += 1;
    }
    for v in 1..start.len() {
        start[v] += start[v - 1];
    }
    // The hashes themselves go in the table, so a bucket is read in one sequential sweep.
    let mut members = vec![(0u64, 0u32); hashed.len()];
    let mut next = start.clone();
    for (pos, &(_, h)) in hashed.iter().enumerate() {
        members[next[key(h)] as usize] = (h, pos as u32);
        next[key(h)] += 1;
    }
    let mut found = Vec::new();
    for (pos, &(i, h)) in hashed.iter().enumerate() {
        let own = key(h);
        for probe in std::iter::once(own).chain((0..width).map(|bit| own ^ (1 << bit))) {
            for &(other, m) in &members[start[probe] as usize..start[probe + 1] as usize] {
                // Each pair once per block (a face sits in one bucket): from its lower position.
                if (h ^ other).count_ones() <= DUP_HASH_BITS && (m as usize) > pos {
                    found.push((i, hashed[m as usize].0));
                }
            }
        }
    }
    found
}

fn close(a: &Face, b: &Face) -> bool {
    match (&a.embedding, &b.embedding) {
        (Some(x), Some(y)) => cosine_distance(x, y) <= DUP_EMBEDDING,
        _ => false,
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Joins two sets under the lower index, so a group's root is its lowest face id.
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    parent[ra.max(rb)] = ra.min(rb);
}

/// Greedy max-min diversity weighted by quality, over `candidates` (indices, ascending).
/// Returns the picked indices in pick order.
fn max_min_diversity(faces: &[&Face], scores: &[f32], candidates: &[usize], n: usize) -> Vec<usize> {
    let dim = faces.iter().find_map(|f| f.embedding.as_ref().map(Vec::len)).unwrap_or(0);
    let stride = dim + ATTRIBUTES;
    let mut points = vec![0f32; candidates.len() * stride];
    points.par_chunks_mut(stride).zip(candidates.par_iter()).for_each(|(p, &i)| features(faces[i], dim, p));
    // Squared distance to the nearest pick so far (infinite before the first pick).
    let mut nearest = vec![f32::INFINITY; candidates.len()];
    let mut taken = vec![false; candidates.len()];
    let mut picked = Vec::with_capacity(n.min(candidates.len()));
    while picked.len() < n {
        let value = |k: usize| {
            let q = scores[candidates[k]];
            if nearest[k].is_infinite() {
                q
            } else {
                q * nearest[k].sqrt()
            }
        };
        // Strictly greater wins, so among equals the first (lowest face id) stays.
        let mut best: Option<(usize, f32)> = None;
        for k in (0..candidates.len()).filter(|&k| !taken[k]) {
            let v = value(k);
            if best.is_none_or(|(_, bv)| v.total_cmp(&bv).is_gt()) {
                best = Some((k, v));
            }
        }
        let Some((k, _)) = best else { break };
        taken[k] = true;
        picked.push(candidates[k]);
        let chosen = &points[k * stride..(k + 1) * stride];
        nearest.par_iter_mut().zip(points.par_chunks(stride)).for_each(|(d, p)| *d = d.min(squared_distance(p, chosen)));
    }
    picked
}

/// Squared Euclidean distance with eight independent sums (kept in SIMD lanes).
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += (x[k] - y[k]) * (x[k] - y[k]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector leaning toward axis `axis` by `lean` (0: exactly the axis).
    fn unit(axis: usize, other: usize, lean: f32) -> Vec<f32> {
        let mut v = vec![0f32; 128];
        v[axis] = 1.0;
        v[other] += lean;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn face(face_id: i64, embedding: Vec<f32>, hash: u64) -> Face {
        Face {
            face_id,
            embedding: Some(embedding),
            hash: Some(hash),
            size_px: 300.0,
            sharpness: 70.0,
            det_score: 0.92,
            yaw: 0.0,
            brightness: 128.0,
            landmarks: TEMPLATE,
            photo_short_side: 900.0,
        }
    }

    const P: Params = Params { n: 3, useful_face_px: DEFAULT_USEFUL_FACE };

    #[test]
    fn quality_rewards_size_sharpness_pose_light_and_score() {
        let good = face(1, unit(0, 1, 0.0), 0);
        let q = quality(&good, 256.0);
        assert!((q - 1.0).abs() < 1e-3, "{q}");
        let worse = |edit: &dyn Fn(&mut Face)| {
            let mut f = good.clone();
            edit(&mut f);
            quality(&f, 256.0)
        };
        let small = worse(&|f| f.size_px = 64.0);
        let blurry = worse(&|f| f.sharpness = 15.0);
        let turned = worse(&|f| f.yaw = 60.0);
        let dark = worse(&|f| f.brightness = 20.0);
        let weak = worse(&|f| f.det_score = 0.6);
        for (what, v) in [("small", small), ("blurry", blurry), ("turned", turned), ("dark", dark), ("weak", weak)] {
            assert!((0.0..0.8).contains(&v), "{what}: {v}");
        }
        assert!((small - 0.25).abs() < 1e-3 && (blurry - 0.3).abs() < 1e-3, "{small} {blurry}");
        assert!((turned - 0.5f32.sqrt()).abs() < 1e-3, "{turned}");
        let nan = worse(&|f| f.sharpness = f32::NAN);
        assert_eq!(nan, 0.0);
    }

    #[test]
    fn pitch_and_smile_read_the_landmarks() {
        let (pitch, smile) = pitch_and_smile(&TEMPLATE);
        assert!(pitch.abs() < 0.01 && (smile - 0.83).abs() < 0.01, "{pitch} {smile}");
        let mut down = TEMPLATE;
        down[2][1] += 8.0; // nose tip lower between eyes and mouth: looking down
        assert!(pitch_and_smile(&down).0 > 15.0);
        let mut wide = TEMPLATE;
        wide[3][0] -= 4.0;
        wide[4][0] += 4.0;
        assert!(pitch_and_smile(&wide).1 > 1.0);
        assert_eq!(pitch_and_smile(&[[1.0, 1.0]; 5]), (0.0, 0.0));
    }

    #[test]
    fn near_duplicates_need_both_the_embedding_and_the_hash() {
        let faces = vec![
            face(10, unit(0, 1, 0.0), 0xFFFF_0000_FFFF_0000),
            face(11, unit(0, 1, 0.1), 0xFFFF_0000_FFFF_0001),  // copy of 10: both close
            face(12, unit(0, 1, 0.2), 0x0000_FFFF_0000_FFFF),  // mirror of 10: embedding close, hash far
            face(13, unit(2, 1, 0.0), 0xFFFF_0000_FFFF_0003),  // someone else: hash close, embedding far
            face(14, unit(0, 1, 0.05), 0xFFFF_0000_FFFF_0007), // copy of 11, joins the group
        ];
        let choices = select(&faces, &Params { n: 10, ..P });
        let group = |id: i64| choices.iter().find(|c| c.face_id == id).map(|c| (c.group_id, c.group_size)).unwrap();
        assert_eq!(group(10), (10, 3));
        assert_eq!(group(11), (10, 3));
        assert_eq!(group(14), (10, 3));
        assert_eq!(group(12), (12, 1));
        assert_eq!(group(13), (13, 1));
        let picked: Vec<i64> = choices.iter().filter(|c| c.rank.is_some()).map(|c| c.face_id).collect();
        assert_eq!(picked.len(), 3, "one per group: {choices:?}");
        let copies = choices.iter().filter(|c| matches!(c.passed_over, Some(PassedOver::NearDuplicate(10)))).count();
        assert_eq!(copies, 2, "{choices:?}");
    }

    #[test]
    fn the_best_copy_represents_its_group() {
        let mut blurred = face(20, unit(0, 1, 0.0), 5);
        blurred.sharpness = 20.0;
        let sharp = face(21, unit(0, 1, 0.05), 5);
        let c = select(&[blurred, sharp], &P);
        assert_eq!(c[0].passed_over, Some(PassedOver::NearDuplicate(21)));
        assert_eq!((c[1].rank, c[1].group_id), (Some(1), 20));
        assert_eq!(PassedOver::NearDuplicate(21).reason(5), "near-duplicate of face 21");
    }

    #[test]
    fn picks_are_varied_then_good_and_deterministic() {
        // Three looks; look A has two good different photos, B and C one each. With n = 3 one
        // face per look beats two of look A.
        let mut faces = vec![
            face(1, unit(0, 1, 0.0), 0x1111),
            face(2, unit(0, 3, 0.5), 0xFFFF_FFFF_0000_0000),
            face(3, unit(4, 5, 0.0), 0x3333_0000_0000_0000),
            face(4, unit(6, 7, 0.0), 0x4444_4444_0000_0000),
        ];
        faces[3].sharpness = 40.0; // C is a little soft but the only one of its kind
        let first = select(&faces, &P);
        let rank = |c: &[Choice], id: i64| c.iter().find(|x| x.face_id == id).and_then(|x| x.rank);
        assert_eq!(rank(&first, 1), Some(1), "the best face first: {first:?}");
        assert!(rank(&first, 3).is_some() && rank(&first, 4).is_some(), "{first:?}");
        assert_eq!(rank(&first, 2), None);
        assert_eq!(first.iter().find(|c| c.face_id == 2).unwrap().passed_over, Some(PassedOver::NotAmongBest));
        // Input order does not matter; equal faces go to the lower id.
        faces.reverse();
        assert_eq!(select(&faces, &P), first);
        let twins = [face(8, unit(9, 1, 0.0), 1), face(7, unit(10, 1, 0.0), u64::MAX)];
        let c = select(&twins, &Params { n: 1, ..P });
        assert_eq!((c[0].face_id, c[0].rank), (7, Some(1)));
    }

    #[test]
    fn fewer_faces_than_n_and_faces_without_embedding_or_hash() {
        let mut lone = face(5, unit(0, 1, 0.0), 0);
        lone.embedding = None;
        let mut unhashed = face(6, unit(0, 1, 0.0), 0);
        unhashed.hash = None;
        let c = select(&[lone, unhashed, face(7, unit(0, 1, 0.0), 0)], &Params { n: 50, ..P });
        assert!(c.iter().all(|x| x.rank.is_some() && x.group_size == 1), "{c:?}");
        assert!(select(&[], &P).is_empty());
        assert!(select(&[face(1, unit(0, 1, 0.0), 0)], &Params { n: 0, ..P }).iter().all(|c| c.rank.is_none()));
    }

    #[test]
    fn the_hash_index_finds_exactly_the_pairs_within_the_bits() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut hashes: Vec<u64> = (0..1500).map(|_| next()).collect();
        // Copies with 0 to 12 bits flipped, around the limit of 9.
        for k in 0..600 {
            let mut h = hashes[k];
            for _ in 0..(k % 13) {
                h ^= 1 << (next() % 64);
            }
            hashes.push(h);
        }
        let hashed: Vec<(usize, u64)> = hashes.iter().copied().enumerate().collect();
        let mut found: Vec<(usize, usize)> = (0..HASH_BLOCKS).flat_map(|b| block_pairs(&hashed, b)).collect();
        found.sort_unstable();
        found.dedup();
        let mut expected = Vec::new();
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                if (hashes[i] ^ hashes[j]).count_ones() <= DUP_HASH_BITS {
                    expected.push((i, j));
                }
            }
        }
        assert!(expected.len() > 300, "the test has pairs to find: {}", expected.len());
        assert_eq!(found, expected);
    }

    /// `cargo test --release --lib select::tests::bench_100k -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_100k() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let n = 100_000;
        let faces: Vec<Face> = (0..n)
            .map(|i| {
                let mut v: Vec<f32> = (0..128).map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                let mut f = face(i, v, next());
                f.yaw = (next() % 90) as f32 - 45.0;
                f.sharpness = (next() % 90) as f32;
                f
            })
            .collect();
        let t = std::time::Instant::now();
        let c = select(&faces, &Params { n: 50, useful_face_px: DEFAULT_USEFUL_FACE });
        let secs = t.elapsed().as_secs_f64();
        eprintln!("select --best 50 over {n} faces: {secs:.3} s");
        assert_eq!(c.iter().filter(|c| c.rank.is_some()).count(), 50);
    }
}
