//! Crop geometry (pure), rendering, encoding and crop file names (`output` writes the files).

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::Serialize;

use crate::models::sface::align::bilinear;

/// A pixel rectangle: x, y, width, height.
pub type Rect = [u32; 4];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpg,
    Png,
    /// Lossless WebP (the encoder available offline has no lossy mode).
    Webp,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }
}

/// What fills the part of a crop region that lies outside the photo (`--pad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pad {
    /// Mirror the photo at its border.
    Reflect,
    /// Repeat the border pixels.
    Edge,
    /// Black.
    Black,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CropSpec {
    /// Fraction of the face box added on every side.
    pub margin: f32,
    pub square: bool,
    /// Long side (or square side) of the output; `None` keeps source resolution.
    pub size: Option<u32>,
    /// Allow `size` to enlarge a smaller crop (without it such a face is rejected).
    pub upscale: bool,
    /// Rotate so the eyes are level.
    pub align: bool,
    /// `None`: a square or aligned region shrinks until it lies inside the photo. `Some`: the
    /// region keeps its full size and what lies outside the photo is filled this way.
    pub pad: Option<Pad>,
}

/// The face as stored: box and landmarks in upright source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceGeometry {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub landmarks: [[f32; 2]; 5],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CropPlan {
    /// Source pixels covered (for rotated or padded crops, the clamped bounding box of the region).
    pub rect: Rect,
    /// Rotation in degrees (0 unless aligned): the region is turned by this much about `center`.
    pub angle: f32,
    pub center: [f32; 2],
    /// Size of the region in source pixels before any resize.
    pub region: [f32; 2],
    pub out_w: u32,
    pub out_h: u32,
    /// How much `size` enlarges the region (output / region); 1 when it does not.
    pub upscale: f32,
    pub pad: Option<Pad>,
}

impl CropPlan {
    /// Reaching the asked size needs pixels the photo does not have.
    pub fn enlarges(&self) -> bool {
        self.upscale > 1.0
    }
}

/// A square or aligned crop that meets the photo's border may slide off the face's centre only
/// until the face keeps this fraction of its margin on the near side; past that it shrinks
/// (never below the face box). 0 was the old rule: a face 5 px from the border, 40x60 at margin
/// 0.25, got a 90 px square with the face in its first 45 px and the other half whatever lay
/// beside it (often a neighbour's face). 1 centres exactly, so a face 5 px from the border gets a
/// crop barely larger than itself, tighter than any trainer's framing. At 0.5 that face gets a
/// 60 px square with 5 px on one side and 15 on the other: the face centre is at most a quarter
/// of the margin off the crop's centre (see `squares_near_the_border_*`).
pub const KEEP_MARGIN: f32 = 0.5;

/// Where to cut, how to turn, and what size to write.
pub fn plan(face: &FaceGeometry, spec: &CropSpec, image_w: u32, image_h: u32) -> CropPlan {
    let m = spec.margin.max(0.0);
    let c = [face.x + face.w / 2.0, face.y + face.h / 2.0];
    let (mut rw, mut rh) = ((face.w * (1.0 + 2.0 * m)).max(1.0), (face.h * (1.0 + 2.0 * m)).max(1.0));
    if spec.square {
        rw = rw.max(rh);
        rh = rw;
    }
    let angle = if spec.align { eye_angle(face) } else { 0.0 };
    let face_half = [face.w.max(0.0) / 2.0, face.h.max(0.0) / 2.0];
    let (w, h) = (image_w.max(1) as f32, image_h.max(1) as f32);
    let (rect, center, region) = match (spec.pad, angle != 0.0) {
        // Padded: the full region, centred on the face; the outside is filled when rendering.
        (Some(_), true) => (rotated_bounds(c, [rw, rh], angle, image_w, image_h), c, [rw, rh]),
        (Some(_), false) => {
            let (x0, y0) = ((c[0] - rw / 2.0).round(), (c[1] - rh / 2.0).round());
            let (rw, rh) = (rw.round(), rh.round());
            (clamped(x0, y0, rw, rh, image_w, image_h), [x0 + rw / 2.0, y0 + rh / 2.0], [rw, rh])
        }
        // Turned: sample centres stay a pixel inside the border, so no sample reaches outside.
        (None, true) => {
            let (lo, hi) = if w > 2.0 && h > 2.0 { ([1.0, 1.0], [w - 1.0, h - 1.0]) } else { ([0.0; 2], [w, h]) };
            let (center, region) = fit(c, [rw, rh], angle, face_half, lo, hi);
            (rotated_bounds(center, region, angle, image_w, image_h), center, region)
        }
        (None, false) if spec.square => {
            let (center, region) = fit(c, [rw, rh], 0.0, face_half, [0.0; 2], [w, h]);
            let side = region[0].round().clamp(1.0, w.min(h));
            let x0 = (center[0] - side / 2.0).round().clamp(0.0, w - side);
            let y0 = (center[1] - side / 2.0).round().clamp(0.0, h - side);
            ([x0 as u32, y0 as u32, side as u32, side as u32], [x0 + side / 2.0, y0 + side / 2.0], [side; 2])
        }
        // Plain: the box plus margins, cut at the photo's border.
        (None, false) => {
            let rect = clamped(c[0] - rw / 2.0, c[1] - rh / 2.0, rw, rh, image_w, image_h);
            let [x, y, cw, ch] = rect.map(|v| v as f32);
            (rect, [x + cw / 2.0, y + ch / 2.0], [cw, ch])
        }
    };
    let (out_w, out_h, upscale) = output_size(region[0], region[1], spec.size);
    CropPlan { rect, angle, center, region, out_w, out_h, upscale, pad: spec.pad }
}

/// Angle of the eye line in degrees (0 when the landmarks are degenerate).
fn eye_angle(face: &FaceGeometry) -> f32 {
    let [re, le, ..] = face.landmarks;
    let angle = (le[1] - re[1]).atan2(le[0] - re[0]).to_degrees();
    if angle.is_finite() {
        angle
    } else {
        0.0
    }
}

/// Shrinks a region (keeping its shape) turned by `angle` about the face centre `c`, and slides
/// it, until its bounding box lies within `lo..hi`: it slides off the face's centre only as far
/// as [`KEEP_MARGIN`] allows, never shrinks below the face box unless the photo is smaller.
fn fit(c: [f32; 2], region: [f32; 2], angle: f32, face_half: [f32; 2], lo: [f32; 2], hi: [f32; 2]) -> ([f32; 2], [f32; 2]) {
    let (s, co) = angle.to_radians().sin_cos();
    let (s, co) = (s.abs(), co.abs());
    // Half extents of the turned region's bounding box at scale 1.
    let e = [(region[0] * co + region[1] * s) / 2.0, (region[0] * s + region[1] * co) / 2.0];
    let (mut k_fit, mut k_centred) = (f32::INFINITY, f32::INFINITY);
    for i in 0..2 {
        k_fit = k_fit.min((hi[i] - lo[i]).max(0.0) / (2.0 * e[i]));
        // Distance to the nearer border must hold KEEP_MARGIN of the margin plus the rest of the
        // half region that may slide: K*k*e + (1-K)*f <= near.
        let near = (c[i] - lo[i]).min(hi[i] - c[i]);
        k_centred = k_centred.min((near - (1.0 - KEEP_MARGIN) * face_half[i]) / (KEEP_MARGIN * e[i]));
    }
    let k_face = (2.0 * face_half[0] / region[0]).max(2.0 * face_half[1] / region[1]).min(1.0);
    let k = k_fit.min(k_centred.min(1.0).max(k_face));
    let k = if k.is_finite() && k > 0.0 { k } else { 1e-3 };
    // `max` then `min` (not `clamp`): never panics when rounding makes the range empty.
    let center = [0, 1].map(|i| c[i].max(lo[i] + k * e[i]).min(hi[i] - k * e[i]));
    (center, region.map(|r| r * k))
}

/// Axis-aligned rectangle with edges rounded outward and clamped to the image (at least 1x1).
fn clamped(x: f32, y: f32, w: f32, h: f32, image_w: u32, image_h: u32) -> Rect {
    let span = |start: f32, len: f32, limit: u32| -> (u32, u32) {
        let limit = i64::from(limit.max(1));
        let lo = (start.floor() as i64).clamp(0, limit - 1);
        let hi = ((start + len).ceil() as i64).clamp(lo + 1, limit);
        (lo as u32, (hi - lo) as u32)
    };
    let (x0, cw) = span(x, w, image_w);
    let (y0, ch) = span(y, h, image_h);
    [x0, y0, cw, ch]
}

fn rotated_bounds(c: [f32; 2], region: [f32; 2], angle_deg: f32, image_w: u32, image_h: u32) -> Rect {
    let (s, co) = angle_deg.to_radians().sin_cos();
    let [w, h] = region;
    let (hw, hh) = ((w * co).abs() / 2.0 + (h * s).abs() / 2.0, (w * s).abs() / 2.0 + (h * co).abs() / 2.0);
    clamped(c[0] - hw, c[1] - hh, 2.0 * hw, 2.0 * hh, image_w, image_h)
}

/// Output size for a region: exactly `size` on the long side, and how much that enlarges the
/// region (1 when it does not: a region whose long side rounds to `size` or more).
pub fn output_size(w: f32, h: f32, size: Option<u32>) -> (u32, u32, f32) {
    let px = |v: f32| (v.round() as u32).max(1);
    let Some(n) = size.filter(|&n| n > 0) else { return (px(w), px(h), 1.0) };
    let long = w.max(h).max(1.0);
    let scale = n as f32 / long;
    let (ow, oh) = if w >= h { (n, px(h * scale).min(n)) } else { (px(w * scale).min(n), n) };
    (ow, oh, if px(long) < n { scale } else { 1.0 })
}

/// Cuts (and turns) the region out of the photo and resizes it to the planned size; also says
/// which fraction of the pixels lie outside the photo (filled as the plan's `pad` says; without
/// one the geometry keeps every sample inside, so the fraction is 0).
pub fn render(image: &RgbImage, plan: &CropPlan) -> (RgbImage, f32) {
    let (region, outside) = if plan.angle == 0.0 && plan.pad.is_none() {
        let [x, y, w, h] = plan.rect;
        (imageops::crop_imm(image, x, y, w, h).to_image(), 0u64)
    } else if plan.angle == 0.0 {
        render_padded(image, plan)
    } else {
        render_turned(image, plan)
    };
    let fraction = outside as f32 / (u64::from(region.width()) * u64::from(region.height())).max(1) as f32;
    let out = if region.dimensions() == (plan.out_w, plan.out_h) {
        region
    } else {
        imageops::resize(&region, plan.out_w, plan.out_h, FilterType::Lanczos3)
    };
    (out, fraction)
}

/// An axis-aligned region that may reach outside the photo: whole pixels, filled per `pad`.
fn render_padded(image: &RgbImage, plan: &CropPlan) -> (RgbImage, u64) {
    let (iw, ih) = (i64::from(image.width()), i64::from(image.height()));
    let (rw, rh) = (plan.region[0].round().max(1.0) as u32, plan.region[1].round().max(1.0) as u32);
    let x0 = (plan.center[0] - plan.region[0] / 2.0).round() as i64;
    let y0 = (plan.center[1] - plan.region[1] / 2.0).round() as i64;
    let mut outside = 0u64;
    let img = RgbImage::from_fn(rw, rh, |u, v| {
        let (i, j) = (x0 + i64::from(u), y0 + i64::from(v));
        if (0..iw).contains(&i) && (0..ih).contains(&j) {
            return *image.get_pixel(i as u32, j as u32);
        }
        outside += 1;
        match plan.pad {
            Some(Pad::Black) | None => image::Rgb([0, 0, 0]),
            Some(Pad::Edge) => *image.get_pixel(i.clamp(0, iw - 1) as u32, j.clamp(0, ih - 1) as u32),
            Some(Pad::Reflect) => *image.get_pixel(reflect_index(i, iw) as u32, reflect_index(j, ih) as u32),
        }
    });
    (img, outside)
}

/// Mirror index into `0..n` without repeating the border pixel (-1 -> 1, n -> n-2).
fn reflect_index(i: i64, n: i64) -> i64 {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    if m >= n {
        period - m
    } else {
        m
    }
}

/// A turned region, sampled bilinearly; samples outside the photo are filled per `pad` (without
/// one they are clamped to the border, which the geometry limits to under a pixel).
fn render_turned(image: &RgbImage, plan: &CropPlan) -> (RgbImage, u64) {
    let (iw, ih) = (image.width() as f32, image.height() as f32);
    let (rw, rh) = (plan.region[0].round().max(1.0) as u32, plan.region[1].round().max(1.0) as u32);
    let (s, c) = plan.angle.to_radians().sin_cos();
    let mirror = |p: f32, n: f32| {
        let m = p.rem_euclid(2.0 * n);
        if m > n {
            2.0 * n - m
        } else {
            m
        }
    };
    let mut outside = 0u64;
    let img = RgbImage::from_fn(rw, rh, |u, v| {
        let (lx, ly) = (u as f32 + 0.5 - rw as f32 / 2.0, v as f32 + 0.5 - rh as f32 / 2.0);
        // Continuous source position (pixel i spans i..i+1).
        let (mut px, mut py) = (plan.center[0] + lx * c - ly * s, plan.center[1] + lx * s + ly * c);
        if !(0.0..=iw).contains(&px) || !(0.0..=ih).contains(&py) {
            outside += 1;
            match plan.pad {
                Some(Pad::Black) => return image::Rgb([0, 0, 0]),
                Some(Pad::Reflect) => (px, py) = (mirror(px, iw), mirror(py, ih)),
                Some(Pad::Edge) | None => {}
            }
        }
        // Clamped to the outermost pixel centres: the border never blends with black.
        let (sx, sy) = ((px - 0.5).clamp(0.0, iw - 1.0), (py - 0.5).clamp(0.0, ih - 1.0));
        image::Rgb(bilinear(image, f64::from(sx), f64::from(sy)))
    });
    (img, outside)
}

/// A file name that is safe anywhere: the source's stem reduced to [A-Za-z0-9_-] (never starting
/// with `-`, so no tool reads it as an option), plus the face id, unique within a database.
pub fn crop_file_name(source_rel: &str, face_id: i64, format: Format) -> String {
    let stem = Path::new(source_rel).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(80).collect();
    let clean = clean.trim_start_matches(['_', '-']).trim_end_matches('_');
    format!("{}_face{face_id}.{}", if clean.is_empty() { "photo" } else { clean }, format.extension())
}

/// Whether `name` has the shape of [`crop_file_name`]'s names.
pub fn is_crop_name(name: &str) -> bool {
    let Some((stem, ext)) = name.rsplit_once('.') else { return false };
    let Some((prefix, id)) = stem.rsplit_once("_face") else { return false };
    [Format::Jpg, Format::Png, Format::Webp].iter().any(|f| f.extension() == ext)
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !prefix.is_empty()
        && !prefix.starts_with(['-', '_'])
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Encodes a crop into `w` (the output folder's writer makes that atomic).
pub fn encode(crop: &RgbImage, format: Format, quality: u8, w: &mut impl std::io::Write) -> Result<()> {
    let mut w = std::io::BufWriter::new(w);
    match format {
        Format::Jpg => crop.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality.clamp(1, 100)))?,
        Format::Png => crop.write_with_encoder(image::codecs::png::PngEncoder::new(&mut w))?,
        Format::Webp => crop.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut w))?,
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, h: f32) -> FaceGeometry {
        // Eyes level, 40% across the box.
        FaceGeometry {
            x,
            y,
            w,
            h,
            landmarks: [
                [x + 0.3 * w, y + 0.4 * h],
                [x + 0.7 * w, y + 0.4 * h],
                [x + 0.5 * w, y + 0.6 * h],
                [x + 0.35 * w, y + 0.8 * h],
                [x + 0.65 * w, y + 0.8 * h],
            ],
        }
    }

    fn spec(margin: f32) -> CropSpec {
        CropSpec { margin, square: false, size: None, upscale: false, align: false, pad: None }
    }

    /// A face whose eye line is tilted by `deg`.
    fn tilted(x: f32, y: f32, w: f32, h: f32, deg: f32) -> FaceGeometry {
        let mut f = face(x, y, w, h);
        let (s, c) = deg.to_radians().sin_cos();
        let (cx, cy) = (x + w / 2.0, y + 0.4 * h);
        f.landmarks[0] = [cx - 0.2 * w * c, cy - 0.2 * w * s];
        f.landmarks[1] = [cx + 0.2 * w * c, cy + 0.2 * w * s];
        f
    }

    #[test]
    fn margin_grows_box_and_clamps_to_image() {
        assert_eq!(plan(&face(100.0, 100.0, 50.0, 60.0), &spec(0.2), 1000, 1000).rect, [90, 88, 70, 84]);
        assert_eq!(plan(&face(5.0, 5.0, 50.0, 50.0), &spec(0.5), 60, 70).rect, [0, 0, 60, 70]);
        let p = plan(&face(10.0, 10.0, 20.0, 20.0), &spec(0.0), 100, 100);
        assert_eq!((p.rect, p.out_w, p.out_h), ([10, 10, 20, 20], 20, 20));
    }

    #[test]
    fn squares_near_the_border_shrink_instead_of_sliding_the_face_to_the_edge() {
        let sq = CropSpec { square: true, ..spec(0.25) };
        // 40x60 box + 25% margins -> 60x90 -> square 90, centred on (120, 130).
        assert_eq!(plan(&face(100.0, 100.0, 40.0, 60.0), &sq, 1000, 1000).rect, [75, 85, 90, 90]);
        // 20 px from the left border: slides 5 px, the face keeps 20 of its 25 px margin there.
        assert_eq!(plan(&face(20.0, 400.0, 40.0, 60.0), &sq, 1000, 1000).rect, [0, 385, 90, 90]);
        // 5 px from it: the old rule slid to [0, 385, 90, 90] (face in the left 45 px, the right
        // half whatever lies beside it); now it shrinks to 60 and the face keeps 5 of 10 px.
        assert_eq!(plan(&face(5.0, 400.0, 40.0, 60.0), &sq, 1000, 1000).rect, [0, 400, 60, 60]);
        // In a corner (the face touches the border): never smaller than the face box.
        assert_eq!(plan(&face(0.0, 0.0, 40.0, 60.0), &sq, 1000, 1000).rect, [0, 0, 60, 60]);
        assert_eq!(plan(&face(960.0, 940.0, 40.0, 60.0), &sq, 1000, 1000).rect, [940, 940, 60, 60]);
        // Larger than the photo: shrinks to the short side, still square.
        assert_eq!(plan(&face(10.0, 10.0, 80.0, 80.0), &sq, 200, 100).rect, [0, 0, 100, 100]);
    }

    #[test]
    fn size_is_exact_and_enlarging_is_measured() {
        assert_eq!(output_size(90.0, 60.0, Some(45)), (45, 30, 1.0));
        assert_eq!(output_size(90.0, 60.0, Some(180)), (180, 120, 2.0));
        assert_eq!(output_size(60.0, 90.0, Some(45)), (30, 45, 1.0));
        assert_eq!(output_size(90.0, 60.0, None), (90, 60, 1.0));
        // A region that rounds to the size is not an enlargement.
        assert_eq!(output_size(511.6, 300.0, Some(512)), (512, 300, 1.0));
        let p = plan(&face(100.0, 100.0, 40.0, 60.0), &CropSpec { square: true, size: Some(512), ..spec(0.25) }, 1000, 1000);
        assert_eq!((p.out_w, p.out_h), (512, 512));
        assert!(p.enlarges() && (p.upscale - 512.0 / 90.0).abs() < 1e-4, "{p:?}");
        let p = plan(&face(100.0, 100.0, 400.0, 600.0), &CropSpec { square: true, size: Some(512), ..spec(0.25) }, 1000, 1000);
        assert_eq!((p.out_w, p.out_h, p.upscale), (512, 512, 1.0));
    }

    /// A tiny deterministic generator, so the property tests need no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn unit(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        fn range(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * self.unit()
        }
    }

    /// The four corners of a plan's (turned) region in continuous source coordinates.
    fn corners(p: &CropPlan) -> [[f32; 2]; 4] {
        let (s, c) = p.angle.to_radians().sin_cos();
        let [hw, hh] = p.region.map(|r| r / 2.0);
        [[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]].map(|[x, y]| [p.center[0] + x * c - y * s, p.center[1] + x * s + y * c])
    }

    #[test]
    fn without_pad_every_crop_lies_inside_the_photo_and_has_no_invented_pixel() {
        let mut rng = Lcg(13);
        for case in 0..400 {
            let (iw, ih) = (rng.range(40.0, 320.0) as u32, rng.range(40.0, 320.0) as u32);
            let fw = rng.range(8.0, 0.8 * iw.min(ih) as f32);
            let fh = fw * rng.range(0.9, 1.4);
            let (fx, fy) = (rng.range(-0.2 * fw, iw as f32 - 0.8 * fw), rng.range(-0.2 * fh, ih as f32 - 0.8 * fh));
            let f = tilted(fx, fy, fw, fh, rng.range(-50.0, 50.0));
            let s = CropSpec { square: rng.unit() < 0.5, align: rng.unit() < 0.7, ..spec(rng.range(0.0, 1.0)) };
            let p = plan(&f, &s, iw, ih);
            let [x, y, w, h] = p.rect;
            assert!(x + w <= iw && y + h <= ih && w > 0 && h > 0, "case {case}: {p:?}");
            for [cx, cy] in corners(&p) {
                assert!((-1e-2..=iw as f32 + 1e-2).contains(&cx) && (-1e-2..=ih as f32 + 1e-2).contains(&cy), "case {case}: {p:?}");
            }
            if s.square {
                assert!((p.region[0] - p.region[1]).abs() < 1e-3 && p.out_w == p.out_h, "case {case}: {p:?}");
            }
            if !s.align && s.square {
                // The face keeps KEEP_MARGIN of its margin on every side, or sits at the border.
                let (lo, hi) = ([x as f32, y as f32], [(x + w) as f32, (y + h) as f32]);
                for (i, (start, len)) in [(fx, fw), (fy, fh)].into_iter().enumerate() {
                    // The part of the face inside the photo.
                    let bound = if i == 0 { iw } else { ih } as f32;
                    let (start, end) = (start.max(0.0), (start + len).min(bound));
                    let margin = (hi[i] - lo[i] - (end - start)) / 2.0;
                    let want = (KEEP_MARGIN * margin).min(start).min(bound - end);
                    let gaps = [start - lo[i], hi[i] - end];
                    assert!(gaps.iter().all(|g| *g + 1.0 >= want.min(margin)), "case {case} axis {i}: gaps {gaps:?} want {want}: {p:?}");
                }
            }
            // Rendered from a photo of one grey: any black would show.
            let grey = RgbImage::from_pixel(iw, ih, image::Rgb([200, 200, 200]));
            let (out, padded) = render(&grey, &p);
            assert_eq!((out.width(), out.height(), padded), (p.out_w, p.out_h, 0.0), "case {case}: {p:?}");
            assert!(out.pixels().all(|px| px.0.iter().all(|&v| v >= 199)), "case {case}: {p:?}");
        }
    }

    #[test]
    fn pad_keeps_the_full_region_and_fills_the_outside_as_asked() {
        let f = tilted(2.0, 30.0, 60.0, 60.0, 20.0);
        let grey = RgbImage::from_pixel(200, 150, image::Rgb([200, 200, 200]));
        let fitted = plan(&f, &CropSpec { align: true, ..spec(0.3) }, 200, 150);
        for pad in [Pad::Black, Pad::Edge, Pad::Reflect] {
            for align in [false, true] {
                let p = plan(&f, &CropSpec { align, pad: Some(pad), ..spec(0.3) }, 200, 150);
                assert_eq!(p.region.map(f32::round), [96.0, 96.0], "full size: {p:?}");
                let (out, padded) = render(&grey, &p);
                assert!(padded > 0.1 && padded < 0.6, "{pad:?} align {align}: {padded}");
                let black = out.pixels().filter(|px| px.0 == [0, 0, 0]).count() as f32 / (out.width() * out.height()) as f32;
                if pad == Pad::Black {
                    assert!((black - padded).abs() < 0.02, "{black} vs {padded}");
                } else {
                    assert_eq!(black, 0.0, "{pad:?}");
                }
            }
        }
        assert!(fitted.region[0] < 96.0, "without --pad the region shrinks: {fitted:?}");
        // Reflect mirrors without repeating the border pixel.
        assert_eq!([-2, -1, 0, 4, 5, 6].map(|i| reflect_index(i, 5)), [2, 1, 0, 4, 3, 2]);
        assert_eq!(reflect_index(-3, 1), 0);
    }

    #[test]
    fn aligned_crop_levels_the_eyes() {
        // Eyes on a line tilted by 30 degrees.
        let mut f = face(100.0, 100.0, 100.0, 100.0);
        let (s, c) = 30f32.to_radians().sin_cos();
        f.landmarks[0] = [150.0 - 20.0 * c, 150.0 - 20.0 * s];
        f.landmarks[1] = [150.0 + 20.0 * c, 150.0 + 20.0 * s];
        let p = plan(&f, &CropSpec { align: true, ..spec(0.0) }, 1000, 1000);
        assert!((p.angle - 30.0).abs() < 1e-3);
        assert_eq!((p.out_w, p.out_h), (100, 100));
        // Bounding box of a 100x100 square turned 30 degrees: 136.6 px wide, centred on 150.
        assert_eq!(p.rect, [81, 81, 138, 138]);

        // Render: two dots on the tilted eye line come out on one row.
        let mut img = RgbImage::new(300, 300);
        for [ex, ey] in [f.landmarks[0], f.landmarks[1]] {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    img.put_pixel((ex.round() as i32 + dx) as u32, (ey.round() as i32 + dy) as u32, image::Rgb([255, 255, 255]));
                }
            }
        }
        let (out, _) = render(&img, &p);
        let bright: Vec<(u32, u32)> = out.enumerate_pixels().filter(|(_, _, p)| p[0] > 128).map(|(x, y, _)| (x, y)).collect();
        let ys: Vec<u32> = bright.iter().map(|b| b.1).collect();
        assert!(!bright.is_empty());
        assert!(ys.iter().max().unwrap() - ys.iter().min().unwrap() <= 3, "{bright:?}");
    }

    #[test]
    fn crop_names_are_safe() {
        assert_eq!(crop_file_name("a/b/IMG 001.JPG", 7, Format::Jpg), "IMG_001_face7.jpg");
        assert_eq!(crop_file_name("../../etc/passwd", 3, Format::Png), "passwd_face3.png");
        assert_eq!(crop_file_name("...jpg", 1, Format::Webp), "photo_face1.webp");
        assert_eq!(crop_file_name("-rf --no-preserve-root.jpg", 2, Format::Jpg), "rf_--no-preserve-root_face2.jpg");
        assert_eq!(crop_file_name("--.jpg", 4, Format::Jpg), "photo_face4.jpg");
        for name in ["IMG_001_face7.jpg", "passwd_face3.png", "photo_face1.webp", "rf_--no-preserve-root_face2.jpg"] {
            assert!(is_crop_name(name), "{name}");
        }
        for name in ["-rf_face1.jpg", "a_face.jpg", "a_face1.gif", "a.jpg", "_face1.jpg", "a b_face1.jpg"] {
            assert!(!is_crop_name(name), "{name}");
        }
    }
}
