//! The YuNet detector: its input tensor (BGR planar, sides padded to multiples of 32), the session,
//! and the decoding of its per-stride outputs into detections, as OpenCV's FaceDetectorYN does.
//! Which passes run on which copy of a photo is policy, kept in pipeline/detect.rs.

use anyhow::{anyhow, ensure, Result};
use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor;

/// Long side of the whole-frame pass and side of a tile, in pixels.
pub const INPUT_SIZE: usize = 640;
/// Input sides must be multiples of this (the coarsest stride).
pub const ALIGN: usize = 32;
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Raw outputs for one stride: `rows * cols` cells, row-major.
pub struct StrideOutput {
    pub stride: usize,
    pub cols: usize,
    pub cls: Vec<f32>,
    pub obj: Vec<f32>,
    pub bbox: Vec<f32>,
    pub kps: Vec<f32>,
}

/// One face as YuNet reports it: box, confidence and five landmarks.
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

pub struct YuNet {
    session: Session,
    /// Time spent resizing photos into the input, for `FACEDB_TIMINGS`.
    prep: std::time::Duration,
}

impl YuNet {
    pub fn new(session: Session) -> Result<Self> {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for stride in STRIDES {
            for head in ["cls", "obj", "bbox", "kps"] {
                let name = format!("{head}_{stride}");
                ensure!(names.contains(&name.as_str()), "YuNet model lacks output {name}; is it the right file?");
            }
        }
        Ok(Self { session, prep: std::time::Duration::ZERO })
    }

    /// Faces in `image` resized to long side `long_side`, scoring at least `score_threshold`,
    /// in pixels of `image` (before any merging or NMS).
    pub fn detect(&mut self, image: &RgbImage, long_side: u32, score_threshold: f32) -> Result<Vec<Detection>> {
        self.detect_scaled(image, 1.0, long_side, score_threshold)
    }

    /// Faces in `image` (a copy of a photo at `factor` times its size) resized to long side
    /// `long_side`, in pixels of the photo.
    pub fn detect_scaled(&mut self, image: &RgbImage, factor: f32, long_side: u32, score_threshold: f32) -> Result<Vec<Detection>> {
        // A fresh buffer each time: keeping one per worker saved the kernel zeroing fresh pages
        // but cost as much in zeroing it here, and 20-25 MiB of peak RSS with 2 workers.
        let t = std::time::Instant::now();
        let mut input = to_input(image, long_side);
        self.prep += t.elapsed();
        input.scale *= factor;
        self.detect_input(input, score_threshold)
    }

    /// Faces in a prepared input (see [`to_input`]), in the pixels of the image it was made from
    /// divided by `input.scale`.
    pub fn detect_input(&mut self, input: Input, score_threshold: f32) -> Result<Vec<Detection>> {
        let raw = self.run(input.data, input.height, input.width)?;
        Ok(decode(&raw, score_threshold).into_iter().map(|d| scaled(&d, 1.0 / input.scale)).collect())
    }

    /// Time spent resizing photos into the detector's input so far.
    pub fn prep_time(&self) -> std::time::Duration {
        self.prep
    }

    /// Runs the network on a 1x3xHxW BGR tensor (values 0..255; H and W multiples of 32).
    pub fn run(&mut self, input: Vec<f32>, height: usize, width: usize) -> Result<Vec<StrideOutput>> {
        ensure!(
            height.is_multiple_of(ALIGN) && width.is_multiple_of(ALIGN) && height > 0 && width > 0,
            "YuNet input sides must be multiples of {ALIGN}"
        );
        ensure!(input.len() == 3 * height * width, "YuNet input has the wrong size");
        let tensor = Tensor::from_array((vec![1i64, 3, height as i64, width as i64], input)).map_err(|e| anyhow!("YuNet input: {e}"))?;
        let outputs = self.session.run(ort::inputs!["input" => tensor]).map_err(|e| anyhow!("YuNet inference: {e}"))?;
        let get = |name: String| -> Result<Vec<f32>> {
            let (_, data) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(|e| anyhow!("YuNet output {name}: {e}"))?;
            Ok(data.to_vec())
        };
        STRIDES
            .iter()
            .map(|&stride| {
                let out = StrideOutput {
                    stride,
                    cols: width / stride,
                    cls: get(format!("cls_{stride}"))?,
                    obj: get(format!("obj_{stride}"))?,
                    bbox: get(format!("bbox_{stride}"))?,
                    kps: get(format!("kps_{stride}"))?,
                };
                let cells = (width / stride) * (height / stride);
                ensure!(
                    out.cls.len() == cells && out.obj.len() == cells && out.bbox.len() == cells * 4 && out.kps.len() == cells * 10,
                    "YuNet output shapes for stride {stride} are not as expected"
                );
                Ok(out)
            })
            .collect()
    }
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
/// Resampling follows OpenCV's INTER_LINEAR rule, with the BGR planar layout written directly.
/// Separable: each source row is interpolated horizontally once (not once per output row that
/// reads it) and then blended vertically, with the same f32 operations in the same order as a
/// per-pixel bilinear sample, so the input is bit for bit what it was (4x less CPU at 1280 px).
pub fn to_input(image: &RgbImage, long_side: u32) -> Input {
    let (w, h) = image.dimensions();
    let scale = long_side as f32 / w.max(h).max(1) as f32;
    let nw = ((w as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    let nh = ((h as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    let (width, height) = (nw.div_ceil(ALIGN) * ALIGN, nh.div_ceil(ALIGN) * ALIGN);
    let plane = width * height;
    let mut data = vec![0f32; 3 * plane];
    if w == 0 || h == 0 {
        return Input { data, width, height, scale };
    }
    // Byte offsets of the two source pixels and the weight of the second, per output column.
    let xs: Vec<(usize, usize, f32)> = taps(nw, w).into_iter().map(|(x0, x1, f)| (x0 * 3, x1 * 3, f)).collect();
    let raw = image.as_raw();
    let stride = w as usize * 3;
    // One source row interpolated horizontally, as three planes (R, G, B) of `nw` values.
    let horizontal = |y: usize, out: &mut [f32]| {
        let row = &raw[y * stride..(y + 1) * stride];
        let (r, rest) = out.split_at_mut(nw);
        let (g, b) = rest.split_at_mut(nw);
        for (x, &(a, c, fx)) in xs.iter().enumerate() {
            let (p0, p1) = (&row[a..a + 3], &row[c..c + 3]);
            let lerp = |k: usize| f32::from(p0[k]) + (f32::from(p1[k]) - f32::from(p0[k])) * fx;
            (r[x], g[x], b[x]) = (lerp(0), lerp(1), lerp(2));
        }
    };
    // The two source rows an output row reads; consecutive output rows mostly share them.
    let mut rows = [vec![0f32; 3 * nw], vec![0f32; 3 * nw]];
    let mut held = [usize::MAX; 2];
    for (y, &(y0, y1, fy)) in taps(nh, h).iter().enumerate() {
        for need in [y0, y1] {
            if !held.contains(&need) {
                let slot = usize::from(held[0] == y0 || held[0] == y1);
                horizontal(need, &mut rows[slot]);
                held[slot] = need;
            }
        }
        let (top, bottom) = (&rows[usize::from(held[0] != y0)], &rows[usize::from(held[0] != y1)]);
        // Planes are B, G, R; the interpolated rows hold R, G, B.
        for (plane_index, channel) in [(0, 2), (1, 1), (2, 0)] {
            let out = &mut data[plane_index * plane + y * width..plane_index * plane + y * width + nw];
            let (t, b) = (&top[channel * nw..(channel + 1) * nw], &bottom[channel * nw..(channel + 1) * nw]);
            for ((o, &t), &b) in out.iter_mut().zip(t).zip(b) {
                *o = round_half_away(t + (b - t) * fy);
            }
        }
    }
    Input { data, width, height, scale }
}

/// `v.round()` (half away from zero, like OpenCV's 8-bit resize output) for 0 <= v < 2^22,
/// without a libm call, so the loop vectorises: adding and taking away 2^23 rounds to the nearest
/// integer (ties to even, exactly), and a tie rounded down is then moved up.
#[inline]
fn round_half_away(v: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let nearest = (v + TWO_23) - TWO_23;
    nearest + if v - nearest == 0.5 { 1.0 } else { 0.0 }
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
fn decode(outputs: &[StrideOutput], score_threshold: f32) -> Vec<Detection> {
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

/// `d` in the pixels of an image `factor` times the one it was found in.
pub fn scaled(d: &Detection, factor: f32) -> Detection {
    Detection {
        x: d.x * factor,
        y: d.y * factor,
        w: d.w * factor,
        h: d.h * factor,
        score: d.score,
        landmarks: d.landmarks.map(|[a, b]| [a * factor, b * factor]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The per-pixel bilinear sample `to_input` computed before it became separable.
    fn to_input_per_pixel(image: &RgbImage, long_side: u32) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let scale = long_side as f32 / w.max(h) as f32;
        let nw = ((w as f32 * scale).round() as u32).clamp(1, long_side) as usize;
        let nh = ((h as f32 * scale).round() as u32).clamp(1, long_side) as usize;
        let (width, height) = (nw.div_ceil(ALIGN) * ALIGN, nh.div_ceil(ALIGN) * ALIGN);
        let plane = width * height;
        let mut data = vec![0f32; 3 * plane];
        for (y, &(y0, y1, fy)) in taps(nh, h).iter().enumerate() {
            for (x, &(x0, x1, fx)) in taps(nw, w).iter().enumerate() {
                let px = |xx: usize, yy: usize| image.get_pixel(xx as u32, yy as u32).0;
                let (p0, p1, q0, q1) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
                for c in 0..3 {
                    let top = f32::from(p0[c]) + (f32::from(p1[c]) - f32::from(p0[c])) * fx;
                    let bottom = f32::from(q0[c]) + (f32::from(q1[c]) - f32::from(q0[c])) * fx;
                    data[(2 - c) * plane + y * width + x] = (top + (bottom - top) * fy).round();
                }
            }
        }
        data
    }

    #[test]
    fn separable_resize_is_bit_for_bit_the_per_pixel_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        // Shrinking (by more and less than 2x), enlarging, odd sizes and a one-pixel row.
        for (w, h, side) in [(2000u32, 1500u32, 1280u32), (2000, 1500, 640), (301, 517, 640), (97, 61, 288), (1000, 1, 640), (5, 7, 3)] {
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb([noise(), noise(), noise()]));
            let fast = to_input(&img, side).data;
            let slow = to_input_per_pixel(&img, side);
            assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{w}x{h} at {side}");
            assert_eq!(fast.len(), slow.len());
        }
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
