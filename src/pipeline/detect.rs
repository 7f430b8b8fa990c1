//! Face detection policy: which passes YuNet runs (a whole-frame pass for large faces, a
//! detail pass of a larger copy for small ones, a closer one and refinement when needed), merged
//! with NMS. Coordinates come back in pixels of the upright full-resolution image; the model's
//! tensor layout and output decoding are [`crate::models::yunet`]'s.

use anyhow::Result;

use super::frame::{at_scale, Frame};
pub use crate::models::yunet::Detection;
use crate::models::yunet::{YuNet, ALIGN, INPUT_SIZE};

#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Long side of the downscaled copy that tiles are cut from, in pixels.
    pub max_side: u32,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl Default for DetectParams {
    /// `max_side` 960, not 1280: on `scripts/eval.sh` (2026-12-02) both give P 1.000 R 0.983 at
    /// the defaults and 1.000/1.000 with the filters off (groups 16/16, every kind the same), the
    /// largest genuine distance 0.42 and the smallest impostor one 0.71 (0.70 at 1280), at 15 %
    /// less index CPU time. Group photos with faces under 100 px (of 4000) still get the closer
    /// pass, at 1440 px. The size is stored with the detector's parameters; photos detected at
    /// another size keep their faces (only a new detector file detects again), and `index` says
    /// how many there are.
    fn default() -> Self {
        Self { max_side: 960, score_threshold: 0.6, nms_iou: 0.3 }
    }
}

/// Faces at most this fraction of the detail pass's side (160 px at 1280, 120 at 960: 500 px of a
/// 4000 px photo either way) are taken from the detail pass; larger ones are the whole-frame
/// pass's job, where YuNet sees them at a size it handles well.
const DETAIL_MAX_FACE: f32 = 0.125;

/// The detection procedure, stored with the detector's parameters so every photo's faces say how
/// they were found (only a new detector file detects photos again). `reduced`: passes read a
/// DCT-reduced decode when it is big enough (`Frame`).
pub const PASSES: &str = "whole640+detail+closer+refine+reduced";

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
    pub calls: [u32; 4],
    pub ms: [f64; 4],
    /// Faces the closer pass added.
    pub closer_found: u32,
    /// Refinements that found the face again (its box and landmarks replaced).
    pub refined: u32,
}

impl PassStats {
    pub const KINDS: [&'static str; 4] = ["whole", "detail", "closer", "refine"];
    const WHOLE: usize = 0;
    const DETAIL: usize = 1;
    const CLOSER: usize = 2;
    const REFINE: usize = 3;

    pub fn add(&mut self, o: &PassStats) {
        for k in 0..4 {
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
/// Pass 1 runs on the whole frame at long side 640 (OpenCV's FaceDetectorYN setting, so
/// landmarks and embeddings match it). Pass 2, for photos larger than that, runs once more at
/// long side `max_side` (960 by default: 0.7 MP of input against 1.2 MP at 1280, measured the
/// same recall and precision on the evaluation set, see `DetectParams::default`) and contributes
/// only small faces that pass 1 missed. Pass 3, only when
/// pass 2 saw faces near its lower limit, looks at 1.5x that side for their smaller neighbours.
pub fn detect(yunet: &mut YuNet, frame: &Frame, params: &DetectParams) -> Result<DetectOutcome> {
    let (w, h) = frame.dimensions();
    let long = w.max(h);
    let mut stats = PassStats::default();
    let mut run = |kind: usize, long_side: u32, stats: &mut PassStats| -> Result<Vec<Detection>> {
        // From the reduced decode when it is big enough (see `Frame`).
        let (image, factor) = frame.source_for(long_side)?;
        stats.time(kind, || yunet.detect_scaled(image, factor, long_side, params.score_threshold))
    };
    let whole = nms(run(PassStats::WHOLE, INPUT_SIZE as u32, &mut stats)?, params.nms_iou);
    let detail_side = params.max_side.min(long);
    let (detail, detail_scale) = if detail_side > INPUT_SIZE as u32 * 5 / 4 {
        let to_detail = detail_side as f32 / long as f32;
        let small: Vec<Detection> = run(PassStats::DETAIL, detail_side, &mut stats)?
            .into_iter()
            .filter(|d| d.w.max(d.h) * to_detail <= DETAIL_MAX_FACE * detail_side as f32)
            .collect();
        (nms(small, params.nms_iou), to_detail)
    } else {
        (Vec::new(), 1.0)
    };
    // Whole-frame detections win over detail ones for the same face.
    let whole_scale = (INPUT_SIZE as f32 / long.max(1) as f32).min(1.0);
    let mut merged: Vec<(Detection, f32)> = merge_with_scale(whole, whole_scale, detail, detail_scale, params.nms_iou);
    // Small faces rarely come alone: where the detail pass saw faces near the smallest it finds
    // reliably, its neighbours of the same size may sit just under it. Look once more, closer.
    let closer_side = (detail_side * CLOSER_STEP_NUM / CLOSER_STEP_DEN).min(long);
    // Measured at the detail pass's scale, whichever pass found the face: a face the whole-frame
    // pass saw small may be large for the detail pass, and then nothing smaller hides near it.
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
        // A face the detector saw at a few dozen pixels has landmarks good to a pixel of that
        // scale, several pixels of the photo: look again at the photo's own resolution.
        let d = if d.w.max(d.h) * seen_at < REFINE_BELOW && seen_at < 0.8 {
            // On the reduced decode when the face is at least `REFINED_FACE` there (never enlarged).
            // Region decoding the crop needs (small faces on a reduced decode) counts here.
            let factor = frame.scale_for_side(d.w.max(d.h), REFINED_FACE);
            let refined = stats.time(PassStats::REFINE, || refine(yunet, frame, factor, &at_scale(&d, factor)))?;
            stats.refined += u32::from(refined.is_some());
            refined.map_or(d, |r| at_scale(&r, 1.0 / factor))
        } else {
            d
        };
        if let Some(d) = clamp_to_image(d, w, h) {
            faces.push(d);
        }
    }
    Ok(DetectOutcome { faces, detector_calls: stats.calls.iter().sum(), stats })
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

/// Faces seen smaller than this (pixels of the detector's input) get their landmarks refined.
const REFINE_BELOW: f32 = 64.0;
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
        // The score stays the one the whole-photo pass gave: it is what the filters are tuned on.
        score: face.score,
        landmarks: d.landmarks.map(|[a, b]| [a + x0 as f32, b + y0 as f32]),
        ..d
    }))
}

/// `merge`, remembering for each face the scale (input pixels per image pixel) it was seen at.
fn merge_with_scale(
    whole: Vec<Detection>,
    whole_scale: f32,
    detail: Vec<Detection>,
    detail_scale: f32,
    iou_threshold: f32,
) -> Vec<(Detection, f32)> {
    let n = whole.len();
    let mut out: Vec<(Detection, f32)> = whole.into_iter().map(|d| (d, whole_scale)).collect();
    for d in detail {
        if !out[..n].iter().any(|(k, _)| iou(k, &d) > iou_threshold || containment(k, &d) > 0.8) {
            out.push((d, detail_scale));
        }
    }
    out.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
    out
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

/// `primary` plus every `secondary` detection that overlaps none of them, by score.
pub fn merge(primary: Vec<Detection>, secondary: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    let mut out = primary;
    let n = out.len();
    for d in secondary {
        if !out[..n].iter().any(|k| iou(k, &d) > iou_threshold || containment(k, &d) > 0.8) {
            out.push(d);
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
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
}
