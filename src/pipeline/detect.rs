//! Face detection with YuNet: a whole-frame pass for large faces plus overlapping tiles of a
//! downscaled copy for small ones, merged with NMS. Coordinates come back in pixels of the
//! upright full-resolution image.

use anyhow::Result;
use image::RgbImage;

use super::frame::{at_scale, Frame};
use crate::models::yunet::{StrideOutput, YuNet, ALIGN, INPUT_SIZE};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
    /// Right eye, left eye (image-left first), nose tip, right and left mouth corners.
    pub landmarks: [[f32; 2]; 5],
}

#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Long side of the downscaled copy that tiles are cut from, in pixels.
    pub max_side: u32,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self { max_side: 1280, score_threshold: 0.6, nms_iou: 0.3 }
    }
}

/// Faces at most this big (pixels of the detail pass's input) are taken from the detail pass;
/// larger ones are the whole-frame pass's job, where YuNet sees them at a size it handles well.
const DETAIL_MAX_FACE: f32 = 160.0;

/// The detection procedure, stored with the detector model: photos detected by an older one are
/// detected again. `reduced` : passes read a DCT-reduced decode when it is big enough (`Frame`).
pub const PASSES: &str = "whole640+detail+closer+refine+reduced";

pub struct DetectOutcome {
    pub faces: Vec<Detection>,
    pub detector_calls: u32,
}

/// Detects faces in an upright full-resolution image.
///
/// Pass 1 runs on the whole frame at long side 640 (OpenCV's FaceDetectorYN setting, so
/// landmarks and embeddings match it). Pass 2, for photos larger than that, runs once more at
/// long side `max_side` and contributes only small faces that pass 1 missed. Pass 3, only when
/// pass 2 saw faces near its lower limit, looks at 1.5x that side for their smaller neighbours.
pub fn detect(yunet: &mut YuNet, frame: &Frame, params: &DetectParams) -> Result<DetectOutcome> {
    let (w, h) = frame.dimensions();
    let long = w.max(h);
    let mut calls = 0;
    let mut run = |long_side: u32| -> Result<Vec<Detection>> {
        // From the reduced decode when it is big enough (see `Frame`).
        let input = frame.input(long_side)?;
        let raw = yunet.run(input.data, input.height, input.width)?;
        calls += 1;
        Ok(decode(&raw, params.score_threshold).into_iter().map(|d| scaled(&d, 1.0 / input.scale)).collect())
    };
    let whole = nms(run(INPUT_SIZE as u32)?, params.nms_iou);
    let detail_side = params.max_side.min(long);
    let (detail, detail_scale) = if detail_side > INPUT_SIZE as u32 * 5 / 4 {
        let to_detail = detail_side as f32 / long as f32;
        let small: Vec<Detection> = run(detail_side)?.into_iter().filter(|d| d.w.max(d.h) * to_detail <= DETAIL_MAX_FACE).collect();
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
        let small: Vec<Detection> = run(closer_side)?.into_iter().filter(|d| d.w.max(d.h) * to_closer <= CLOSER_MAX_FACE).collect();
        for d in nms(small, params.nms_iou) {
            if !merged.iter().any(|(k, _)| iou(k, &d) > params.nms_iou || containment(k, &d) > 0.8) {
                merged.push((d, to_closer));
            }
        }
        merged.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
    }
    let mut faces = Vec::with_capacity(merged.len());
    for (d, seen_at) in merged {
        // A face the detector saw at a few dozen pixels has landmarks good to a pixel of that
        // scale, several pixels of the photo: look again at the photo's own resolution.
        let d = if d.w.max(d.h) * seen_at < REFINE_BELOW && seen_at < 0.8 {
            calls += 1;
            // On the reduced decode when the face is at least `REFINED_FACE` there (never enlarged).
            let (image, factor) = frame.source_for_side(d.w.max(d.h), REFINED_FACE)?;
            refine(yunet, image, &at_scale(&d, factor))?.map_or(d, |r| at_scale(&r, 1.0 / factor))
        } else {
            d
        };
        if let Some(d) = clamp_to_image(d, w, h) {
            faces.push(d);
        }
    }
    Ok(DetectOutcome { faces, detector_calls: calls })
}

/// A face the detail pass saw under this many input pixels (YuNet finds faces down to ~12 px
/// there, unreliably under ~18) makes the photo worth a closer pass.
const CLOSER_TRIGGER: f32 = 24.0;
/// The closer pass: 1.5x the detail pass's side (2.25x its pixels), so a 40 px face of a 12 MP
/// photo is seen at 19 px instead of 13 (measured on the evaluation set: the 44 px face that the
/// 1280 px pass missed is found at 1920 px). It runs only on photos with small faces.
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
fn refine(yunet: &mut YuNet, image: &RgbImage, face: &Detection) -> Result<Option<Detection>> {
    let (w, h) = image.dimensions();
    let side = face.w.max(face.h) * REFINE_CONTEXT;
    let (cx, cy) = (face.x + face.w / 2.0, face.y + face.h / 2.0);
    let x0 = (cx - side / 2.0).floor().clamp(0.0, w.saturating_sub(1) as f32) as u32;
    let y0 = (cy - side / 2.0).floor().clamp(0.0, h.saturating_sub(1) as f32) as u32;
    let cw = (side.ceil() as u32).min(w - x0).max(1);
    let ch = (side.ceil() as u32).min(h - y0).max(1);
    let crop = image::imageops::crop_imm(image, x0, y0, cw, ch).to_image();
    let target = ((REFINED_FACE * REFINE_CONTEXT) as u32).max(ALIGN as u32);
    let long_side = target.min(cw.max(ch).max(ALIGN as u32) * 4);
    let input = to_input(&crop, long_side);
    let raw = yunet.run(input.data, input.height, input.width)?;
    let local = Detection { x: face.x - x0 as f32, y: face.y - y0 as f32, ..*face };
    let best = decode(&raw, 0.3)
        .into_iter()
        .map(|d| scaled(&d, 1.0 / input.scale))
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

/// A detector input: BGR planar f32, sides padded up to multiples of 32 with black.
pub struct Input {
    pub data: Vec<f32>,
    pub width: usize,
    pub height: usize,
    /// Image pixels -> input pixels.
    pub scale: f32,
}

/// Resizes the image so its long side is `long_side` and pads it (right/bottom) to multiples of 32.
/// Resampling (OpenCV's INTER_LINEAR rule) and the BGR planar layout happen in one pass.
pub fn to_input(image: &RgbImage, long_side: u32) -> Input {
    let (w, h) = image.dimensions();
    let scale = long_side as f32 / w.max(h).max(1) as f32;
    let nw = ((w as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    let nh = ((h as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    let (width, height) = (nw.div_ceil(ALIGN) * ALIGN, nh.div_ceil(ALIGN) * ALIGN);
    let plane = width * height;
    let mut data = vec![0f32; 3 * plane];
    // Byte offsets of the two source pixels and the weight of the second, per output column.
    let xs: Vec<(usize, usize, f32)> = taps(nw, w).into_iter().map(|(x0, x1, f)| (x0 * 3, x1 * 3, f)).collect();
    let raw = image.as_raw();
    let stride = w as usize * 3;
    let (blue, rest) = data.split_at_mut(plane);
    let (green, red) = rest.split_at_mut(plane);
    for (y, &(y0, y1, fy)) in taps(nh, h).iter().enumerate() {
        let (r0, r1) = (&raw[y0 * stride..(y0 + 1) * stride], &raw[y1 * stride..(y1 + 1) * stride]);
        let row = y * width..y * width + nw;
        let (b_row, g_row, r_row) = (&mut blue[row.clone()], &mut green[row.clone()], &mut red[row]);
        for (x, &(a, b, fx)) in xs.iter().enumerate() {
            let (p0, p1, q0, q1) = (&r0[a..a + 3], &r0[b..b + 3], &r1[a..a + 3], &r1[b..b + 3]);
            let sample = |c: usize| {
                let top = f32::from(p0[c]) + (f32::from(p1[c]) - f32::from(p0[c])) * fx;
                let bottom = f32::from(q0[c]) + (f32::from(q1[c]) - f32::from(q0[c])) * fx;
                // Rounded like OpenCV's 8-bit resize output.
                (top + (bottom - top) * fy).round()
            };
            r_row[x] = sample(0);
            g_row[x] = sample(1);
            b_row[x] = sample(2);
        }
    }
    Input { data, width, height, scale }
}

/// For each output index: the two source indices and the weight of the second
/// (half-pixel centres, no antialiasing, clamped at the edges).
fn taps(out_len: usize, in_len: u32) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|d| {
            let f = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (f.floor() as u32).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0 as usize, i1 as usize, f - i0 as f32)
        })
        .collect()
}

/// Decodes YuNet's raw outputs as OpenCV's FaceDetectorYN does (coordinates in input pixels).
pub fn decode(outputs: &[StrideOutput], score_threshold: f32) -> Vec<Detection> {
    let mut dets = Vec::new();
    for out in outputs {
        let s = out.stride as f32;
        let cols = out.cols;
        for i in 0..out.cls.len() {
            let score = (out.cls[i].clamp(0.0, 1.0) * out.obj[i].clamp(0.0, 1.0)).sqrt();
            if !(score >= score_threshold) {
                continue;
            }
            let (col, row) = ((i % cols) as f32, (i / cols) as f32);
            let b = &out.bbox[i * 4..i * 4 + 4];
            let (cx, cy) = ((col + b[0]) * s, (row + b[1]) * s);
            let (bw, bh) = (b[2].exp() * s, b[3].exp() * s);
            if !(bw.is_finite() && bh.is_finite() && cx.is_finite() && cy.is_finite()) {
                continue;
            }
            let k = &out.kps[i * 10..i * 10 + 10];
            let landmarks = std::array::from_fn(|n| [(k[2 * n] + col) * s, (k[2 * n + 1] + row) * s]);
            dets.push(Detection { x: cx - bw / 2.0, y: cy - bh / 2.0, w: bw, h: bh, score, landmarks });
        }
    }
    dets
}

fn scaled(d: &Detection, factor: f32) -> Detection {
    Detection {
        x: d.x * factor,
        y: d.y * factor,
        w: d.w * factor,
        h: d.h * factor,
        score: d.score,
        landmarks: d.landmarks.map(|[a, b]| [a * factor, b * factor]),
    }
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

    #[test]
    fn input_is_resized_and_padded_to_multiples_of_32() {
        let img = RgbImage::from_pixel(1000, 500, image::Rgb([10, 20, 30]));
        let input = to_input(&img, 640);
        assert_eq!((input.width, input.height, input.scale), (640, 320, 0.64));
        let small = to_input(&RgbImage::from_pixel(100, 71, image::Rgb([10, 20, 30])), 640);
        assert_eq!((small.width, small.height), (640, 480));
        // BGR planes; padding is black.
        let plane = small.width * small.height;
        assert_eq!((small.data[0], small.data[plane], small.data[2 * plane]), (30.0, 20.0, 10.0));
        assert_eq!(small.data[plane - 1], 0.0);
    }

    #[test]
    fn bilinear_resize_matches_opencv_half_pixel_rule() {
        let mut img = RgbImage::new(4, 1);
        for x in 0..4 {
            img.put_pixel(x, 0, image::Rgb([x as u8 * 60, 0, 0]));
        }
        let input = to_input(&img, 2);
        let red = 2 * input.width * input.height; // BGR planes: red is the third
                                                  // Centres of output pixels map to source x = 0.5 and 2.5.
        assert_eq!((input.data[red], input.data[red + 1]), (30.0, 150.0));
    }

    #[test]
    fn decode_matches_opencv_formula() {
        let mut outs: Vec<StrideOutput> = [8usize, 16, 32]
            .iter()
            .map(|&s| {
                let n = (INPUT_SIZE / s).pow(2);
                StrideOutput {
                    stride: s,
                    cols: INPUT_SIZE / s,
                    cls: vec![0.0; n],
                    obj: vec![0.0; n],
                    bbox: vec![0.0; n * 4],
                    kps: vec![0.0; n * 10],
                }
            })
            .collect();
        // Cell row 2, col 3 of stride 32 (cols = 20): i = 43.
        let o = &mut outs[2];
        o.cls[43] = 0.81;
        o.obj[43] = 1.0;
        o.bbox[172..176].copy_from_slice(&[0.5, 0.25, 0.0, (2.0f32).ln()]);
        o.kps[430] = 1.0;
        let d = decode(&outs, 0.5);
        assert_eq!(d.len(), 1);
        let d = d[0];
        assert!((d.score - 0.9).abs() < 1e-6);
        assert!((d.w - 32.0).abs() < 1e-4 && (d.h - 64.0).abs() < 1e-4);
        assert!((d.x - (3.5 * 32.0 - 16.0)).abs() < 1e-4 && (d.y - (2.25 * 32.0 - 32.0)).abs() < 1e-4);
        assert_eq!(d.landmarks[0], [4.0 * 32.0, 2.0 * 32.0]);
    }
}
