//! The YuNet detector: its input tensor (BGR planar, sides padded to multiples of 32), the session,
//! and the decoding of its per-stride outputs into detections, as OpenCV's FaceDetectorYN does.
//! Which passes run on which copy of a photo is policy, kept in pipeline/detect.rs.

use anyhow::{anyhow, ensure, Result};
use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;

/// Long side of the whole-frame pass of a photo up to 800 px (OpenCV's setting), in pixels.
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
    /// The buffer inputs up to [`KEPT_INPUT_LEN`] are made in, kept from call to call (shapes
    /// differ; `resize_into` writes every value): a fresh one has the kernel fault in and
    /// zero-fill its pages (~25 000 page faults on 40 photos of 12 MP).
    input: Vec<f32>,
}

/// The largest input made in the buffer kept by `YuNet`: the whole-frame pass's (640 px on the
/// long side), the overview pass, rotation probes and refinement crops. Larger ones (the detail
/// and closer passes, 8.5 MB and more) get a fresh buffer, freed when the call ends: keeping
/// those too saved ~80 000 more page faults (~0.4 s of system time) on 40 photos of 12 MP but
/// raised peak RSS by 17 MiB with 2 workers (the buffers are not live at the peak otherwise).
const KEPT_INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;

impl YuNet {
    pub fn new(session: Session) -> Result<Self> {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for stride in STRIDES {
            for head in ["cls", "obj", "bbox", "kps"] {
                let name = format!("{head}_{stride}");
                ensure!(names.contains(&name.as_str()), "YuNet model lacks output {name}; is it the right file?");
            }
        }
        Ok(Self { session, prep: std::time::Duration::ZERO, input: Vec::new() })
    }

    /// Faces in `image` resized to long side `long_side`, scoring at least `score_threshold`,
    /// in pixels of `image` (before any merging or NMS).
    pub fn detect(&mut self, image: &RgbImage, long_side: u32, score_threshold: f32) -> Result<Vec<Detection>> {
        self.detect_scaled(image, 1.0, long_side, score_threshold)
    }

    /// Faces in `image` (a copy of a photo at `factor` times its size) resized to long side
    /// `long_side`, in pixels of the photo.
    pub fn detect_scaled(&mut self, image: &RgbImage, factor: f32, long_side: u32, score_threshold: f32) -> Result<Vec<Detection>> {
        let t = std::time::Instant::now();
        let needed = input_shape(image.width(), image.height(), long_side).values();
        let mut fresh = if needed > KEPT_INPUT_LEN { crate::pipeline::buffers::fresh_zeroed(needed) } else { Vec::new() };
        let input = if needed > KEPT_INPUT_LEN { &mut fresh } else { &mut self.input };
        let shape = resize_into(image, long_side, input);
        self.prep += t.elapsed();
        let scale = shape.scale * factor;
        let raw = run_session(&mut self.session, input, shape.height, shape.width)?;
        Ok(decode(&raw, score_threshold).into_iter().map(|d| scaled(&d, 1.0 / scale)).collect())
    }

    /// Faces in a prepared input (see [`to_input`]), in the pixels of the image it was made from
    /// divided by `input.scale`.
    pub fn detect_input(&mut self, input: Input, score_threshold: f32) -> Result<Vec<Detection>> {
        let raw = self.run(&input.data, input.height, input.width)?;
        Ok(decode(&raw, score_threshold).into_iter().map(|d| scaled(&d, 1.0 / input.scale)).collect())
    }

    /// Time spent resizing photos into the detector's input so far.
    pub fn prep_time(&self) -> std::time::Duration {
        self.prep
    }

    /// Runs the network on a 1x3xHxW BGR tensor (values 0..255; H and W multiples of 32).
    pub fn run(&mut self, input: &[f32], height: usize, width: usize) -> Result<Vec<StrideOutput>> {
        run_session(&mut self.session, input, height, width)
    }
}

/// [`YuNet::run`] on the session alone, so that the input may be another field of the `YuNet`.
fn run_session(session: &mut Session, input: &[f32], height: usize, width: usize) -> Result<Vec<StrideOutput>> {
    ensure!(
        height.is_multiple_of(ALIGN) && width.is_multiple_of(ALIGN) && height > 0 && width > 0,
        "YuNet input sides must be multiples of {ALIGN}"
    );
    ensure!(input.len() == 3 * height * width, "YuNet input has the wrong size");
    // A view: ORT reads the values where they are, neither copied nor taken.
    let tensor = TensorRef::from_array_view(([1usize, 3, height, width], input)).map_err(|e| anyhow!("YuNet input: {e}"))?;
    let outputs = session.run(ort::inputs!["input" => tensor]).map_err(|e| anyhow!("YuNet inference: {e}"))?;
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

/// A detector input: BGR planar f32, sides padded up to multiples of 32 with black.
pub struct Input {
    pub data: Vec<f32>,
    pub width: usize,
    pub height: usize,
    /// Image pixels -> input pixels.
    pub scale: f32,
}

/// Resizes the image so its long side is `long_side` and pads it (right/bottom) to multiples of 32,
/// into a buffer of its own (see [`resize_into`]).
pub fn to_input(image: &RgbImage, long_side: u32) -> Input {
    let shape = input_shape(image.width(), image.height(), long_side);
    let mut data = crate::pipeline::buffers::fresh_zeroed(shape.values());
    let InputShape { width, height, scale, .. } = resize_into(image, long_side, &mut data);
    Input { data, width, height, scale }
}

/// The size of a detector input, and of the resized image inside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputShape {
    pub width: usize,
    pub height: usize,
    /// Image pixels -> input pixels.
    pub scale: f32,
    /// Width and height of the resized image (the rest is padding).
    pub image_width: usize,
    pub image_height: usize,
}

impl InputShape {
    /// Values in the input: three planes of `width * height`.
    pub fn values(&self) -> usize {
        3 * self.width * self.height
    }
}

fn input_shape(w: u32, h: u32, long_side: u32) -> InputShape {
    let scale = long_side as f32 / w.max(h).max(1) as f32;
    let nw = ((w as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    let nh = ((h as f32 * scale).round() as u32).clamp(1, long_side) as usize;
    InputShape { width: nw.div_ceil(ALIGN) * ALIGN, height: nh.div_ceil(ALIGN) * ALIGN, scale, image_width: nw, image_height: nh }
}

/// Writes the image resized so its long side is `long_side`, padded (right/bottom) with black to
/// multiples of 32, as BGR planes into `data`, which is resized to fit: every value is written,
/// so a buffer reused from a call of another shape needs no clearing first.
/// Resampling follows OpenCV's INTER_LINEAR rule. Separable: each source row is interpolated
/// horizontally once (not once per output row that reads it) and then blended vertically, with
/// the same f32 operations in the same order as a per-pixel bilinear sample, so the input is bit
/// for bit what that gives.
pub fn resize_into(image: &RgbImage, long_side: u32, data: &mut Vec<f32>) -> InputShape {
    let (w, h) = image.dimensions();
    let shape = input_shape(w, h, long_side);
    let InputShape { width, height, image_width: nw, image_height: nh, .. } = shape;
    let plane = width * height;
    // Grows (zero-filled) only past the largest input so far; shrinking keeps the allocation.
    data.resize(3 * plane, 0.0);
    if w == 0 || h == 0 {
        data.fill(0.0);
        return shape;
    }
    if (nw, nh) == (w as usize, h as usize) {
        // Same size (the sideways probe's thumbnail): every tap is the pixel itself, weight 0
        // for its neighbour, so a plain conversion gives the same values.
        let mut planes: Vec<&mut [f32]> = data.chunks_exact_mut(plane).collect();
        for (y, row) in image.as_raw().chunks_exact(nw * 3).enumerate() {
            for (out_plane, channel) in planes.iter_mut().zip([2, 1, 0]) {
                let (out, padding) = out_plane[y * width..(y + 1) * width].split_at_mut(nw);
                for (o, px) in out.iter_mut().zip(row.chunks_exact(3)) {
                    *o = f32::from(px[channel]);
                }
                padding.fill(0.0);
            }
        }
        for out_plane in planes {
            out_plane[nh * width..].fill(0.0);
        }
        return shape;
    }
    let xs = taps(nw, w);
    // Byte offset of each output column's first source pixel; the second is the next pixel.
    let firsts: Vec<usize> = xs.iter().map(|&(x0, _, _)| x0 * 3).collect();
    let weights: Vec<f32> = xs.iter().map(|&(_, _, fx)| fx).collect();
    let raw = image.as_raw();
    let stride = w as usize * 3;
    // A source row with its last pixel once more after it, so that the pair of every column is
    // two adjacent pixels (where the rule clamps the second to the last pixel, it reads the same),
    // and two bytes more, so each pair of pixels can be read as the low bytes of an 8-byte word.
    let mut source = vec![0u8; stride + 5];
    let mut pixels = vec![0u32; 2 * nw];
    // One source row interpolated horizontally, as three planes (R, G, B) of `nw` values.
    let mut horizontal = |y: usize, out: &mut [f32]| {
        let row = &raw[y * stride..(y + 1) * stride];
        source[..stride].copy_from_slice(row);
        source[stride..stride + 3].copy_from_slice(&row[stride - 3..]);
        let (r, rest) = out.split_at_mut(nw);
        let (g, b) = rest.split_at_mut(nw);
        let (firsts_rgb, seconds_rgb) = pixels.split_at_mut(nw);
        interpolate_row(&source, &firsts, &weights, [firsts_rgb, seconds_rgb], [r, g, b]);
    };
    // The two source rows an output row reads; consecutive output rows mostly share them.
    let mut rows = [vec![0f32; 3 * nw], vec![0f32; 3 * nw]];
    let mut held = [usize::MAX; 2];
    let mut planes: Vec<&mut [f32]> = data.chunks_exact_mut(plane).collect();
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
        for (out_plane, channel) in planes.iter_mut().zip([2, 1, 0]) {
            let (out, padding) = out_plane[y * width..(y + 1) * width].split_at_mut(nw);
            let (t, b) = (&top[channel * nw..(channel + 1) * nw], &bottom[channel * nw..(channel + 1) * nw]);
            for ((o, &t), &b) in out.iter_mut().zip(t).zip(b) {
                *o = round_half_away(t + (b - t) * fy);
            }
            padding.fill(0.0);
        }
    }
    for out_plane in planes {
        out_plane[nh * width..].fill(0.0);
    }
    shape
}

/// Interpolates one source row (RGB bytes, see `resize_into` for its padding) at the columns
/// given by the byte offsets of their first pixels and the weights of the next, into R, G and B.
/// First the pair of pixels of every column is read with one 8-byte load, the first pixel into the
/// low bytes of `firsts_rgb` and the second into those of `seconds_rgb`; then each channel is
/// unpacked, converted and interpolated in one plain loop that compiles to vector operations
/// (byte by byte, the whole resize took ~35 % more CPU).
fn interpolate_row(
    source: &[u8],
    firsts: &[usize],
    weights: &[f32],
    [firsts_rgb, seconds_rgb]: [&mut [u32]; 2],
    [r, g, b]: [&mut [f32]; 3],
) {
    // Clamping changes no offset (a first pixel is at most the last one, and `source` holds 5
    // bytes after that one) but shows the compiler that the load needs no check.
    let last_load = source.len().saturating_sub(8);
    for ((&first, first_rgb), second_rgb) in firsts.iter().zip(firsts_rgb.iter_mut()).zip(seconds_rgb.iter_mut()) {
        let at = first.min(last_load);
        let pair = &source[at..at + 8];
        let pair = u64::from_le_bytes([pair[0], pair[1], pair[2], pair[3], pair[4], pair[5], pair[6], pair[7]]);
        (*first_rgb, *second_rgb) = (pair as u32, (pair >> 24) as u32);
    }
    for (out, shift) in [(r, 0), (g, 8), (b, 16)] {
        for (((o, &p0), &p1), &fx) in out.iter_mut().zip(&*firsts_rgb).zip(&*seconds_rgb).zip(weights) {
            // The same values and operations as `f32::from` of each byte.
            let (p0, p1) = (((p0 >> shift) & 0xff) as i32 as f32, ((p1 >> shift) & 0xff) as i32 as f32);
            *o = p0 + (p1 - p0) * fx;
        }
    }
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

    fn noise_image(w: u32, h: u32, seed: &mut u64) -> RgbImage {
        let mut noise = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        };
        RgbImage::from_fn(w, h, |_, _| image::Rgb([noise(), noise(), noise()]))
    }

    /// Shrinking (by more and less than 2x), enlarging, odd sizes, one-pixel rows and columns:
    /// the photos' reduced decodes (either way up) at the whole, detail and closer passes' sides,
    /// refinement crops of a few hundred pixels, and the same size (the sideways probe's
    /// thumbnail, which takes the plain conversion).
    const SHAPES: [(u32, u32, u32); 17] = [
        (640, 480, 640),
        (480, 640, 640),
        (288, 190, 288),
        (2000, 1500, 640),
        (2000, 1500, 960),
        (1500, 2000, 960),
        (2000, 1500, 1280),
        (1500, 2000, 1440),
        (300, 300, 640),
        (301, 517, 640),
        (287, 333, 288),
        (97, 61, 288),
        (1000, 1, 640),
        (1, 700, 640),
        (2, 2, 640),
        (1, 1, 1),
        (5, 7, 3),
    ];

    #[test]
    fn separable_resize_is_bit_for_bit_the_per_pixel_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for (w, h, side) in SHAPES {
            let img = noise_image(w, h, &mut seed);
            let fast = to_input(&img, side).data;
            let slow = to_input_per_pixel(&img, side);
            assert_eq!(fast.len(), slow.len(), "{w}x{h} at {side}");
            assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{w}x{h} at {side}");
        }
    }

    /// A buffer reused across shapes, as `YuNet` reuses its input, holds what a fresh one would:
    /// every value of the image and of the padding is written, whatever was there before.
    #[test]
    fn a_reused_input_buffer_is_bit_for_bit_a_fresh_one() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        // Garbage from an earlier, larger input: NaN, which no resized value or padding equals.
        let mut reused = vec![f32::NAN; 3 * 1440 * 1088];
        // Large to small and back, wide and tall, so the padding moves around over stale values.
        for (w, h, side) in SHAPES.iter().chain(SHAPES.iter().rev()).copied() {
            let img = noise_image(w, h, &mut seed);
            let fresh = to_input(&img, side);
            let shape = resize_into(&img, side, &mut reused);
            assert_eq!((shape.width, shape.height, shape.scale), (fresh.width, fresh.height, fresh.scale), "{w}x{h} at {side}");
            assert_eq!(reused.len(), fresh.data.len(), "{w}x{h} at {side}");
            assert!(reused.iter().zip(&fresh.data).all(|(a, b)| a.to_bits() == b.to_bits()), "{w}x{h} at {side}");
            reused.fill(f32::NAN);
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
