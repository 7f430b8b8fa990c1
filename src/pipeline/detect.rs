//! Face detection policy: which passes YuNet runs (one whole-frame pass for a small photo; for
//! a big one a detail pass for most faces and an overview pass for those filling the frame, a
//! closer pass when small faces crowd), merged with NMS, then a second look at every face where
//! it is 96 px for its box and landmarks. Coordinates come back in pixels of the upright
//! full-resolution image; the model's tensor layout and output decoding are
//! [`crate::models::yunet`]'s.

use anyhow::Result;

use super::frame::{at_scale, Frame};
pub use crate::models::yunet::Detection;
use crate::models::yunet::{YuNet, ALIGN, INPUT_SIZE};

#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Long side of the detail pass of photos over 800 px, which finds every face up to half
    /// the photo's side.
    pub max_side: u32,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl Default for DetectParams {
    /// `max_side` 960, not 1280: on `scripts/eval.sh` (2026-12-02) both give P 1.000 R 0.983 at
    /// the defaults and 1.000/1.000 with the filters off (groups 16/16, every kind the same), the
    /// largest genuine distance 0.42 and the smallest impostor one 0.71 (0.70 at 1280), at 15 %
    /// less index CPU time (then with a whole-frame pass at 640 px too, replaced by the 320 px
    /// overview pass on 2026-12-02, see `DETAIL_MAX_FACE`). Group photos with faces under 100 px
    /// (of 4000) still get the closer pass, at 1440 px. The size is stored with the detector's parameters; photos detected at
    /// another size keep their faces (only a new detector file detects again), and `index` says
    /// how many there are.
    fn default() -> Self {
        Self { max_side: 960, score_threshold: 0.6, nms_iou: 0.3 }
    }
}

/// The detection procedure, stored with the detector's parameters so every photo's faces say how
/// they were found (only a new detector file detects photos again). `reduced`: passes read a
/// DCT-reduced decode when it is big enough (`Frame`).
pub const PASSES: &str = "detail+overview+closer+refine-all+reduced";

pub struct DetectOutcome {
    pub faces: Vec<Detection>,
    pub detector_calls: u32,
    pub stats: PassStats,
}

/// What each kind of pass cost and found (for `FACEDB_TIMINGS`; summed over photos by the caller).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassStats {
    /// Calls and milliseconds (resize, inference, output decoding) per kind of pass, in the
    /// order of [`PassStats::KINDS`].
    pub calls: [u32; 5],
    pub ms: [f64; 5],
    /// Faces the closer pass added.
    pub closer_found: u32,
    /// Refinements that found the face again (its box and landmarks replaced).
    pub refined: u32,
}

impl PassStats {
    pub const KINDS: [&'static str; 5] = ["whole", "detail", "overview", "closer", "refine"];
    const WHOLE: usize = 0;
    const DETAIL: usize = 1;
    const OVERVIEW: usize = 2;
    const CLOSER: usize = 3;
    const REFINE: usize = 4;

    pub fn add(&mut self, o: &PassStats) {
        for k in 0..Self::KINDS.len() {
            self.calls[k] += o.calls[k];
            self.ms[k] += o.ms[k];
        }
        self.closer_found += o.closer_found;
        self.refined += o.refined;
    }

    fn time<T>(&mut self, kind: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = std::time::Instant::now();
        let out = f();
        self.calls[kind] += 1;
        self.ms[kind] += super::ms_since(t);
        out
    }
}

impl std::fmt::Display for PassStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, kind) in Self::KINDS.iter().enumerate() {
            write!(f, "{kind} {} calls {:.0} ms, ", self.calls[k], self.ms[k])?;
        }
        write!(f, "closer pass found {}, refinements took {}", self.closer_found, self.refined)
    }
}

/// Detects faces in an upright full-resolution image.
///
/// A photo up to 1.25x YuNet's 640 px input is seen whole at long side 640 (OpenCV's
/// FaceDetectorYN setting). A larger one is seen twice: a detail pass at long side `max_side`
/// (960 by default: 0.7 MP of input against 1.2 MP at 1280, measured the same recall and
/// precision on the evaluation set, see `DetectParams::default`) for every face up to half the
/// photo's side (`DETAIL_MAX_FACE`), and an overview pass at a third of that side (320 px) for
/// the larger ones, which YuNet sees there at 160 px and more. Where both see a face, the pass
/// suited to its size wins. A third pass, only when the detail pass saw faces near its lower
/// limit, looks at 1.5x that side for their smaller neighbours. Then every face is looked at
/// once more where it is 96 px, for its box and landmarks (the score stays the pass's).
pub fn detect(yunet: &mut YuNet, frame: &Frame, params: &DetectParams) -> Result<DetectOutcome> {
    detect_with(yunet, frame, params, true)
}

/// [`detect`] without refining each face: boxes and scores as the passes saw them, for a probe
/// that only weighs how clearly a photo shows faces.
pub fn detect_unrefined(yunet: &mut YuNet, frame: &Frame, params: &DetectParams) -> Result<DetectOutcome> {
    detect_with(yunet, frame, params, false)
}

fn detect_with(yunet: &mut YuNet, frame: &Frame, params: &DetectParams, refine_faces: bool) -> Result<DetectOutcome> {
    let (w, h) = frame.dimensions();
    let long = w.max(h);
    let mut stats = PassStats::default();
    let mut run = |kind: usize, long_side: u32, stats: &mut PassStats| -> Result<Vec<Detection>> {
        // From the reduced decode when it is big enough (see `Frame`).
        let (image, factor) = frame.source_for(long_side)?;
        stats.time(kind, || yunet.detect_scaled(image, factor, long_side, params.score_threshold))
    };
    let detail_side = params.max_side.min(long);
    let (mut merged, detail_scale) = if detail_side > INPUT_SIZE as u32 * 5 / 4 {
        let to_detail = detail_side as f32 / long as f32;
        // The largest face the detail pass keeps, as a fraction of the photo's long side.
        let detail_limit = DETAIL_MAX_FACE.min(DETAIL_MAX_INPUT_FACE / detail_side as f32);
        // A third of the detail pass's side, so the overview sees faces over that limit at the
        // same input size whatever `--detect-size` is.
        let overview_side = (detail_side / 3).next_multiple_of(ALIGN as u32).max(OVERVIEW_SIDE);
        let fraction = |d: &Detection| d.w.max(d.h) / long as f32;
        let (detail, oversized): (Vec<Detection>, Vec<Detection>) =
            run(PassStats::DETAIL, detail_side, &mut stats)?.into_iter().partition(|d| fraction(d) <= detail_limit);
        let (detail, oversized) = (nms(detail, params.nms_iou), nms(oversized, params.nms_iou));
        let overview: Vec<Detection> = run(PassStats::OVERVIEW, overview_side, &mut stats)?
            .into_iter()
            .filter(|d| fraction(d) >= OVERVIEW_MIN_SHARE * detail_limit)
            .collect();
        // Ranks: 0, an overview face over the limit, or one no detail face saw whole (a part
        // of it the detail pass fired on then goes, contained in it); 1, the detail pass's
        // faces; 2, other overview faces (each overlaps a detail face and loses to it); 3, a
        // face the detail pass saw over its limit, kept only where nothing else is.
        let overview_rank = |d: &Detection| {
            let seen_whole = detail.iter().any(|k| iou(k, d) > params.nms_iou);
            if fraction(d) > detail_limit || !seen_whole {
                0
            } else {
                2
            }
        };
        let to_overview = overview_side as f32 / long as f32;
        let overview: Vec<(Detection, u8, f32)> =
            nms(overview, params.nms_iou).into_iter().map(|d| (d, overview_rank(&d), to_overview)).collect();
        let candidates = overview
            .into_iter()
            .chain(detail.into_iter().map(|d| (d, 1, to_detail)))
            .chain(oversized.into_iter().map(|d| (d, 3, to_detail)));
        (merge_by_rank(candidates, params.nms_iou), to_detail)
    } else {
        let whole = nms(run(PassStats::WHOLE, INPUT_SIZE as u32, &mut stats)?, params.nms_iou);
        let to_whole = INPUT_SIZE as f32 / long.max(1) as f32;
        (whole.into_iter().map(|d| (d, to_whole)).collect(), 1.0)
    };
    // Small faces rarely come alone: where the detail pass saw faces near the smallest it finds
    // reliably, its neighbours of the same size may sit just under it. Look once more, closer.
    let closer_side = (detail_side * CLOSER_STEP_NUM / CLOSER_STEP_DEN).min(long);
    // Measured at the detail pass's scale, whichever pass found the face: a face the overview
    // pass saw may be large for the detail pass, and then nothing smaller hides near it.
    let crowd_of_small = merged.iter().any(|(d, _)| d.w.max(d.h) * detail_scale < CLOSER_TRIGGER);
    if crowd_of_small && detail_scale < 1.0 && closer_side > detail_side {
        let to_closer = closer_side as f32 / long as f32;
        let small: Vec<Detection> =
            run(PassStats::CLOSER, closer_side, &mut stats)?.into_iter().filter(|d| d.w.max(d.h) * to_closer <= CLOSER_MAX_FACE).collect();
        for d in nms(small, params.nms_iou) {
            if !merged.iter().any(|(k, _)| iou(k, &d) > params.nms_iou || containment(k, &d) > 0.8) {
                merged.push((d, to_closer));
                stats.closer_found += 1;
            }
        }
        merged.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
    }
    let mut faces = Vec::with_capacity(merged.len());
    for (d, seen_at) in merged {
        // Every face is looked at once more where it is `REFINED_FACE` px: its box and landmarks
        // then come from the same view of it whatever the photo's size and whichever pass
        // found it (a resized copy of a photo gives the same aligned face, and `match --best`
        // groups the two), and a face a pass saw at a few dozen pixels gets landmarks good to
        // a pixel of the photo. Measured on `scripts/eval.sh` (2026-12-02), against the passes'
        // own landmarks for faces seen over 64 px: the largest genuine distance 0.39 -> 0.35,
        // the smallest impostor one 0.71 -> 0.73.
        let d = if refine_faces {
            // On the reduced decode when the face is at least `REFINED_FACE` there, else on
            // full-resolution pixels (a face smaller than `REFINED_FACE` is enlarged, up to 4x).
            // Region decoding the crop needs counts here.
            let factor = frame.scale_for_side(d.w.max(d.h), REFINED_FACE);
            let refined = stats.time(PassStats::REFINE, || refine(yunet, frame, factor, &at_scale(&d, factor)))?;
            stats.refined += u32::from(refined.is_some());
            match refined.map(|r| at_scale(&r, 1.0 / factor)) {
                // A face the pass saw big has landmarks to trust: a second look that disagrees
                // with them (YuNet put a face tilted 20 degrees at 6 when it was 96 px) is wrong.
                Some(r) if d.w.max(d.h) * seen_at >= TRUSTED_FACE && !agrees(&d, &r) => d,
                Some(r) => r,
                None => d,
            }
        } else {
            d
        };
        if let Some(d) = clamp_to_image(d, w, h) {
            faces.push(d);
        }
    }
    // Two faces may have refined onto one.
    let faces = nms(faces, params.nms_iou);
    Ok(DetectOutcome { faces, detector_calls: stats.calls.iter().sum(), stats })
}

/// The smallest long side of the overview pass of a big photo, which finds the faces too large
/// for the detail pass: at 320 px (a quarter of the input of a 640 px pass, ~2.5 ms of YuNet
/// against ~10) a face of half the photo is 160 px. It grows with `--detect-size` (a third of
/// the detail pass's side).
const OVERVIEW_SIDE: u32 = 320;
/// The detail pass keeps faces up to this fraction of the photo's long side, and at most
/// `DETAIL_MAX_INPUT_FACE` px of its input (both 480 px at 960): YuNet, trained at 640 px,
/// localises faces of a few hundred pixels well; larger ones are the overview pass's.
/// Measured on `scripts/eval.sh` (2026-12-02): handing over at a quarter (240 px at 960, 80 at
/// 320) took the mirror-pair portrait's face from the overview pass with its eyes 40 % too
/// close together and the largest genuine distance from 0.42 to 0.55; at a half it is 0.39
/// (0.35 with every face refined).
const DETAIL_MAX_FACE: f32 = 0.5;
const DETAIL_MAX_INPUT_FACE: f32 = 480.0;
/// The overview pass also keeps faces down to this share of the detail pass's limit (0.4 of
/// the photo, 128 px at 320), for a face the detail pass saw just over its limit (its box a
/// little larger than the overview's). Not smaller: at 320 px YuNet also fires on what is no
/// face (0.74 on the seam between two portraits side by side, 0.26 of the photo's side, where
/// the detail pass saw nothing).
const OVERVIEW_MIN_SHARE: f32 = 0.8;

/// Faces from several passes, each with its pass's rank for its size (0 first): each face is
/// kept unless it overlaps one kept before it, by rank, then by score; the result by score.
fn merge_by_rank(candidates: impl Iterator<Item = (Detection, u8, f32)>, iou_threshold: f32) -> Vec<(Detection, f32)> {
    let mut ordered: Vec<(Detection, u8, f32)> = candidates.collect();
    ordered.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.score.total_cmp(&a.0.score)));
    let mut kept: Vec<(Detection, f32)> = Vec::with_capacity(ordered.len());
    for (d, _, seen_at) in ordered {
        if !kept.iter().any(|(k, _)| iou(k, &d) > iou_threshold || containment(k, &d) > 0.8) {
            kept.push((d, seen_at));
        }
    }
    kept.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
    kept
}

/// A face seen at least this big (pixels of its pass's input) has landmarks a second look must
/// agree with (see `agrees`).
const TRUSTED_FACE: f32 = 64.0;

/// Whether refined landmarks tell the same pose as the pass's: the eye line turned by at most
/// 8 degrees, the eyes as far apart within 20 %.
fn agrees(seen: &Detection, refined: &Detection) -> bool {
    let eyes = |d: &Detection| {
        let [[x0, y0], [x1, y1]] = [d.landmarks[0], d.landmarks[1]];
        ((y1 - y0).atan2(x1 - x0), (x1 - x0).hypot(y1 - y0))
    };
    let ((angle_a, apart_a), (angle_b, apart_b)) = (eyes(seen), eyes(refined));
    let turn = (angle_a - angle_b).abs().to_degrees();
    let ratio = apart_b / apart_a.max(f32::EPSILON);
    turn.min(360.0 - turn) <= 8.0 && (0.8..=1.25).contains(&ratio)
}

/// A face the detail pass saw under this many input pixels (YuNet finds faces down to ~12 px
/// there, unreliably under ~18) makes the photo worth a closer pass.
const CLOSER_TRIGGER: f32 = 24.0;
/// The closer pass: 1.5x the detail pass's side (2.25x its pixels), so a 40 px face of a 12 MP
/// photo is seen at 19 px instead of 13 (measured on the evaluation set: the 44 px face that the
/// 1280 px pass missed is found at 1920 px; with the 960 px default it runs at 1440 px, and the
/// 40-120 px faces of `tests/it/detect_recall.rs` are still all found). It runs only on photos
/// with small faces.
const CLOSER_STEP_NUM: u32 = 3;
const CLOSER_STEP_DEN: u32 = 2;
/// The closer pass contributes only faces this small (input pixels); larger ones were the
/// earlier passes' to find.
const CLOSER_MAX_FACE: f32 = 36.0;

/// The refinement crop is this many face sizes wide, resized so the face is `REFINED_FACE` px.
const REFINE_CONTEXT: f32 = 3.0;
const REFINED_FACE: f32 = 96.0;

/// Detects the face again on a crop of the full-resolution image around it, and returns the
/// detection there that overlaps it best (box and landmarks in image pixels).
fn refine(yunet: &mut YuNet, frame: &Frame, factor: f32, face: &Detection) -> Result<Option<Detection>> {
    let (w, h) = frame.size_at(factor);
    let side = face.w.max(face.h) * REFINE_CONTEXT;
    let (cx, cy) = (face.x + face.w / 2.0, face.y + face.h / 2.0);
    let x0 = (cx - side / 2.0).floor().clamp(0.0, w.saturating_sub(1) as f32) as u32;
    let y0 = (cy - side / 2.0).floor().clamp(0.0, h.saturating_sub(1) as f32) as u32;
    let cw = (side.ceil() as u32).min(w - x0).max(1);
    let ch = (side.ceil() as u32).min(h - y0).max(1);
    let crop = frame.crop(factor, x0, y0, cw, ch)?;
    let target = ((REFINED_FACE * REFINE_CONTEXT) as u32).max(ALIGN as u32);
    let long_side = target.min(cw.max(ch).max(ALIGN as u32) * 4);
    let local = Detection { x: face.x - x0 as f32, y: face.y - y0 as f32, ..*face };
    let best = yunet
        .detect(&crop, long_side, 0.3)?
        .into_iter()
        .map(|d| (iou(&d, &local), d))
        .filter(|(overlap, _)| *overlap > 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Ok(best.map(|(_, d)| Detection {
        x: d.x + x0 as f32,
        y: d.y + y0 as f32,
        // The score stays the one the pass that found the face gave: it is what the filters are
        // tuned on.
        score: face.score,
        landmarks: d.landmarks.map(|[a, b]| [a + x0 as f32, b + y0 as f32]),
        ..d
    }))
}

pub fn iou(a: &Detection, b: &Detection) -> f32 {
    let ix = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
    let iy = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
    if ix <= 0.0 || iy <= 0.0 {
        return 0.0;
    }
    let inter = ix * iy;
    inter / (a.w * a.h + b.w * b.h - inter)
}

/// Greedy non-maximum suppression, highest score first. A box mostly inside a kept box (a
/// partial face from a tile) is suppressed too.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        let overlaps = kept.iter().any(|k| iou(k, &d) > iou_threshold || containment(k, &d) > 0.8);
        if !overlaps {
            kept.push(d);
        }
    }
    kept
}

/// Fraction of the smaller box covered by the intersection.
fn containment(a: &Detection, b: &Detection) -> f32 {
    let ix = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
    let iy = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
    if ix <= 0.0 || iy <= 0.0 {
        return 0.0;
    }
    ix * iy / (a.w * a.h).min(b.w * b.h)
}

/// Clips a box to the image; drops boxes with nothing left inside.
fn clamp_to_image(mut d: Detection, w: u32, h: u32) -> Option<Detection> {
    let (x0, y0) = (d.x.max(0.0), d.y.max(0.0));
    let (x1, y1) = ((d.x + d.w).min(w as f32), (d.y + d.h).min(h as f32));
    if x1 - x0 < 1.0 || y1 - y0 < 1.0 {
        return None;
    }
    (d.x, d.y, d.w, d.h) = (x0, y0, x1 - x0, y1 - y0);
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, w: f32, h: f32, score: f32) -> Detection {
        Detection { x, y, w, h, score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_drops_contained() {
        let kept = nms(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.7),
                det(1.0, 1.0, 10.0, 10.0, 0.9),
                det(50.0, 50.0, 10.0, 10.0, 0.8),
                det(52.0, 52.0, 3.0, 3.0, 0.95),
            ],
            0.3,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.95);
        assert_eq!(kept[1].score, 0.9);
    }

    #[test]
    fn the_pass_suited_to_a_face_wins_and_a_face_one_pass_missed_is_kept() {
        let kept = merge_by_rank(
            [
                // A face the detail pass (rank 1) sees best, also seen, scoring higher, by the
                // overview pass (rank 2 at that size).
                (det(100.0, 100.0, 300.0, 300.0, 0.8), 1, 0.24),
                (det(105.0, 95.0, 310.0, 300.0, 0.95), 2, 0.08),
                // A face over half the frame (the overview's, rank 0), and a part of it the
                // detail pass fired on, scoring higher.
                (det(1500.0, 500.0, 2200.0, 2300.0, 0.9), 0, 0.08),
                (det(2000.0, 1000.0, 500.0, 500.0, 0.97), 1, 0.24),
                // One the detail pass missed.
                (det(3000.0, 200.0, 600.0, 700.0, 0.7), 2, 0.08),
            ]
            .into_iter(),
            0.3,
        );
        let scores: Vec<(f32, f32)> = kept.iter().map(|(d, seen_at)| (d.score, *seen_at)).collect();
        assert_eq!(scores, vec![(0.9, 0.08), (0.8, 0.24), (0.7, 0.08)]);
        assert_eq!(kept[1].0.x, 100.0, "the detail pass's box");
    }

    #[test]
    fn a_second_look_that_turns_the_eye_line_or_moves_the_eyes_apart_disagrees() {
        let with_eyes = |left: [f32; 2], right: [f32; 2]| {
            let mut d = det(0.0, 0.0, 100.0, 100.0, 0.9);
            d.landmarks[0] = left;
            d.landmarks[1] = right;
            d
        };
        let tilted = with_eyes([30.0, 40.0], [70.0, 40.0 + 40.0 * 20f32.to_radians().tan()]);
        assert!(agrees(&tilted, &tilted));
        assert!(agrees(&tilted, &with_eyes([31.0, 41.0], [71.0, 40.0 + 40.0 * 15f32.to_radians().tan()])));
        assert!(!agrees(&tilted, &with_eyes([30.0, 40.0], [70.0, 40.0 + 40.0 * 6f32.to_radians().tan()])));
        assert!(!agrees(&tilted, &with_eyes([20.0, 40.0], [80.0, 40.0 + 60.0 * 20f32.to_radians().tan()])));
    }
}
