//! Crop geometry (pure), rendering, encoding and crop file names (`output` writes the files).

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::Serialize;

use crate::pipeline::align::bilinear;

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

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CropSpec {
    /// Fraction of the face box added on every side.
    pub margin: f32,
    pub square: bool,
    /// Long side (or square side) of the output; `None` keeps source resolution.
    pub size: Option<u32>,
    /// Allow `size` to enlarge a smaller crop.
    pub upscale: bool,
    /// Rotate so the eyes are level.
    pub align: bool,
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
    /// Source pixels covered (for rotated crops, the clamped bounding box of the rotated region).
    pub rect: Rect,
    /// Rotation in degrees (0 unless aligned): the region is turned by this much about `center`.
    pub angle: f32,
    pub center: [f32; 2],
    /// Size of the region in source pixels before any resize.
    pub region: [f32; 2],
    pub out_w: u32,
    pub out_h: u32,
}

/// Where to cut, how to turn, and what size to write.
pub fn plan(face: &FaceGeometry, spec: &CropSpec, image_w: u32, image_h: u32) -> CropPlan {
    let m = spec.margin.max(0.0);
    let (cx, cy) = (face.x + face.w / 2.0, face.y + face.h / 2.0);
    let (mut rw, mut rh) = (face.w * (1.0 + 2.0 * m), face.h * (1.0 + 2.0 * m));
    if spec.square {
        rw = rw.max(rh);
        rh = rw;
    }
    let (rect, angle, center, region) = if spec.align {
        let [re, le, ..] = face.landmarks;
        let angle = (le[1] - re[1]).atan2(le[0] - re[0]).to_degrees();
        let angle = if angle.is_finite() { angle } else { 0.0 };
        (rotated_bounds(cx, cy, rw, rh, angle, image_w, image_h), angle, [cx, cy], [rw, rh])
    } else if spec.square {
        // Keep it square: shrink to fit the photo, then slide inside it.
        let side = rw.min(image_w as f32).min(image_h as f32).round().max(1.0) as u32;
        let x0 = ((cx - side as f32 / 2.0).round() as i64).clamp(0, i64::from(image_w - side)) as u32;
        let y0 = ((cy - side as f32 / 2.0).round() as i64).clamp(0, i64::from(image_h - side)) as u32;
        let rect = [x0, y0, side, side];
        (rect, 0.0, [x0 as f32 + side as f32 / 2.0, y0 as f32 + side as f32 / 2.0], [side as f32; 2])
    } else {
        let rect = clamped(cx - rw / 2.0, cy - rh / 2.0, rw, rh, image_w, image_h);
        (rect, 0.0, [rect[0] as f32 + rect[2] as f32 / 2.0, rect[1] as f32 + rect[3] as f32 / 2.0], [rect[2] as f32, rect[3] as f32])
    };
    let (out_w, out_h) = output_size(region[0], region[1], spec.size, spec.upscale);
    CropPlan { rect, angle, center, region, out_w, out_h }
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

fn rotated_bounds(cx: f32, cy: f32, w: f32, h: f32, angle_deg: f32, image_w: u32, image_h: u32) -> Rect {
    let (s, c) = angle_deg.to_radians().sin_cos();
    let (hw, hh) = ((w * c).abs() / 2.0 + (h * s).abs() / 2.0, (w * s).abs() / 2.0 + (h * c).abs() / 2.0);
    clamped(cx - hw, cy - hh, 2.0 * hw, 2.0 * hh, image_w, image_h)
}

/// Output size for a region: `size` on the long side, never enlarging unless `upscale`.
pub fn output_size(w: f32, h: f32, size: Option<u32>, upscale: bool) -> (u32, u32) {
    let long = w.max(h).max(1.0);
    let scale = match size {
        Some(n) if n > 0 => {
            let s = n as f32 / long;
            if s > 1.0 && !upscale {
                1.0
            } else {
                s
            }
        }
        _ => 1.0,
    };
    (((w * scale).round() as u32).max(1), ((h * scale).round() as u32).max(1))
}

/// Cuts (and turns) the region out of the photo and resizes it to the planned size. Parts of a
/// rotated region outside the photo are black.
pub fn render(image: &RgbImage, plan: &CropPlan) -> RgbImage {
    let region = if plan.angle == 0.0 {
        let [x, y, w, h] = plan.rect;
        imageops::crop_imm(image, x, y, w, h).to_image()
    } else {
        let (rw, rh) = (plan.region[0].round().max(1.0) as u32, plan.region[1].round().max(1.0) as u32);
        let (s, c) = plan.angle.to_radians().sin_cos();
        RgbImage::from_fn(rw, rh, |u, v| {
            let (lx, ly) = (u as f32 + 0.5 - rw as f32 / 2.0, v as f32 + 0.5 - rh as f32 / 2.0);
            let (sx, sy) = (plan.center[0] + lx * c - ly * s - 0.5, plan.center[1] + lx * s + ly * c - 0.5);
            image::Rgb(bilinear(image, f64::from(sx), f64::from(sy)))
        })
    };
    if region.dimensions() == (plan.out_w, plan.out_h) {
        region
    } else {
        imageops::resize(&region, plan.out_w, plan.out_h, FilterType::Lanczos3)
    }
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
        CropSpec { margin, square: false, size: None, upscale: false, align: false }
    }

    #[test]
    fn margin_grows_box_and_clamps_to_image() {
        assert_eq!(plan(&face(100.0, 100.0, 50.0, 60.0), &spec(0.2), 1000, 1000).rect, [90, 88, 70, 84]);
        assert_eq!(plan(&face(5.0, 5.0, 50.0, 50.0), &spec(0.5), 60, 70).rect, [0, 0, 60, 70]);
        let p = plan(&face(10.0, 10.0, 20.0, 20.0), &spec(0.0), 100, 100);
        assert_eq!((p.rect, p.out_w, p.out_h), ([10, 10, 20, 20], 20, 20));
    }

    #[test]
    fn squares_stay_square_and_slide_inside_the_border() {
        let sq = CropSpec { square: true, ..spec(0.25) };
        // 40x60 box + 25% margins -> 60x90 -> square 90, centred on (120, 130).
        assert_eq!(plan(&face(100.0, 100.0, 40.0, 60.0), &sq, 1000, 1000).rect, [75, 85, 90, 90]);
        // Near the top-left corner: slides right/down instead of being cut.
        assert_eq!(plan(&face(0.0, 0.0, 40.0, 60.0), &sq, 1000, 1000).rect, [0, 0, 90, 90]);
        // Near the bottom-right corner.
        assert_eq!(plan(&face(960.0, 940.0, 40.0, 60.0), &sq, 1000, 1000).rect, [910, 910, 90, 90]);
        // Larger than the photo: shrinks to the short side, still square.
        assert_eq!(plan(&face(10.0, 10.0, 80.0, 80.0), &sq, 200, 100).rect, [0, 0, 100, 100]);
    }

    #[test]
    fn size_never_upscales_unless_asked() {
        assert_eq!(output_size(90.0, 60.0, Some(45), false), (45, 30));
        assert_eq!(output_size(90.0, 60.0, Some(180), false), (90, 60));
        assert_eq!(output_size(90.0, 60.0, Some(180), true), (180, 120));
        assert_eq!(output_size(90.0, 60.0, None, true), (90, 60));
        let p = plan(&face(100.0, 100.0, 40.0, 60.0), &CropSpec { square: true, size: Some(512), ..spec(0.25) }, 1000, 1000);
        assert_eq!((p.out_w, p.out_h), (90, 90));
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
        let out = render(&img, &p);
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
