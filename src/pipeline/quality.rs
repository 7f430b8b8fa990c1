//! Per-face quality measures, computed from the full-resolution upright image.

use serde::Serialize;

use super::detect::Detection;
use crate::models::sface::align::Pixels;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    /// Shorter side of the face box in original-image pixels.
    pub size_px: f32,
    /// Detail at a fixed face scale, independent of resolution and exposure (see
    /// `sharpness_and_brightness`): under `BLURRY` (25) blurred, from `SHARP` (50) sharp.
    pub sharpness: f32,
    /// Head turn left/right in degrees from the nose's offset against the eye line (0 = frontal).
    pub yaw: f32,
    /// In-plane tilt of the eye line in degrees.
    pub roll: f32,
    /// Mean luma (0-255) over the face box.
    pub brightness: f32,
}

pub fn measure<P: Pixels>(image: &P, face: &Detection) -> Quality {
    let (yaw, roll) = pose(&face.landmarks);
    let (sharpness, brightness) = sharpness_and_brightness(image, face);
    Quality { size_px: face.w.min(face.h), sharpness, yaw, roll, brightness }
}

/// Yaw and roll in degrees from five landmarks.
pub fn pose(lm: &[[f32; 2]; 5]) -> (f32, f32) {
    let [re, le, nose, _, _] = *lm;
    let (dx, dy) = (le[0] - re[0], le[1] - re[1]);
    let eye_dist = (dx * dx + dy * dy).sqrt();
    if !(eye_dist > 1e-3) {
        return (0.0, 0.0);
    }
    let roll = dy.atan2(dx).to_degrees();
    // Nose offset from the eye midpoint along the eye axis, in half inter-ocular distances: the
    // nose tip sits about that far in front of the eye plane, so offset ≈ tan(yaw).
    let (mx, my) = ((re[0] + le[0]) / 2.0, (re[1] + le[1]) / 2.0);
    let along = ((nose[0] - mx) * dx + (nose[1] - my) * dy) / eye_dist;
    let yaw = (along / (eye_dist / 2.0)).atan().to_degrees();
    (yaw, roll)
}

/// Version of these measures stored with each image (`images.quality_version`): 2 is the
/// fixed-scale, contrast-normalised sharpness; images scored by an older one are re-scored.
pub const QUALITY_VERSION: i64 = 2;

/// Sharpness bands (see `sharpness_and_brightness`): under `BLURRY` a face is blurred, from
/// `SHARP` on it is sharp, soft in between. Measured (tests/it/quality_scores.rs) on the test
/// portraits: originals 59-83, the same upscaled 4x or at 30 % exposure within 1 of that, JPEG
/// quality 15 61-83, shrunk to a 48 px face 46-67, blurred with sigma 3 % of the face width 11-19.
pub const BLURRY: f32 = 25.0;
pub const SHARP: f32 = 50.0;

/// Side of the square the face is resampled to before its sharpness is measured: one fixed face
/// scale, so the score describes the face, not the photo's resolution (a 450 px face scored 2.3
/// at full resolution and 74 at 256 px with the old full-resolution measure).
pub const SHARPNESS_SIDE: u32 = 64;

/// Sharpness and brightness of the face box. Sharpness is the standard deviation of the
/// 4-neighbour Laplacian of luma on the face resampled to `SHARPNESS_SIDE` pixels (area-averaged
/// when shrinking), divided by the standard deviation of that luma, times 100: resolution drops
/// out through the fixed scale, exposure and contrast through the ratio (a face at a third of the
/// light scores what it scored before).
fn sharpness_and_brightness<P: Pixels>(image: &P, face: &Detection) -> (f32, f32) {
    let (w, h) = image.dimensions();
    let x0 = face.x.max(0.0).floor() as u32;
    let y0 = face.y.max(0.0).floor() as u32;
    let x1 = ((face.x + face.w).ceil().max(0.0) as u32).min(w);
    let y1 = ((face.y + face.h).ceil().max(0.0) as u32).min(h);
    if x1 <= x0 + 2 || y1 <= y0 + 2 {
        return (0.0, 0.0);
    }
    // Luma in 0-1: `image` clamps float pixels to that range when it resamples.
    let luma = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_fn(x1 - x0, y1 - y0, |x, y| {
        let p = image.rgb(x0 + x, y0 + y);
        image::Luma([(0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) / 255.0])
    });
    let brightness = 255.0 * luma.pixels().map(|p| f64::from(p[0])).sum::<f64>() / f64::from(luma.width() * luma.height());
    let side = SHARPNESS_SIDE;
    // Triangle is `image`'s area-correct filter: its support widens with the shrink factor.
    let patch = image::imageops::resize(&luma, side, side, image::imageops::FilterType::Triangle);
    let n = side as usize;
    let px = |x: usize, y: usize| 255.0 * f64::from(patch.get_pixel(x as u32, y as u32)[0]);
    let (mut lap, mut lum) = (Moments::default(), Moments::default());
    for y in 1..n - 1 {
        for x in 1..n - 1 {
            let c = px(x, y);
            lap.add(px(x - 1, y) + px(x + 1, y) + px(x, y - 1) + px(x, y + 1) - 4.0 * c);
            lum.add(c);
        }
    }
    // Below one grey level of spread the patch is flat (a wall, a blown-out face): no detail.
    let spread = lum.std();
    let sharpness = if spread > 1.0 { 100.0 * lap.std() / spread } else { 0.0 };
    (sharpness as f32, brightness as f32)
}

/// Running mean and variance.
#[derive(Default)]
struct Moments {
    n: f64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn add(&mut self, v: f64) {
        self.n += 1.0;
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn std(&self) -> f64 {
        if self.n == 0.0 {
            return 0.0;
        }
        let mean = self.sum / self.n;
        (self.sum_sq / self.n - mean * mean).max(0.0).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sface::align::TEMPLATE;
    use image::RgbImage;

    fn face(x: f32, y: f32, w: f32, h: f32) -> Detection {
        Detection { x, y, w, h, score: 0.9, landmarks: TEMPLATE }
    }

    #[test]
    fn frontal_template_has_near_zero_pose() {
        let (yaw, roll) = pose(&TEMPLATE);
        assert!(yaw.abs() < 2.0 && roll.abs() < 1.0, "{yaw} {roll}");
        let mut turned = TEMPLATE;
        turned[2][0] += 17.6; // nose one half eye-distance toward the left eye
        assert!((pose(&turned).0 - 45.0).abs() < 3.0);
    }

    /// Detail at every scale, like skin, hair and eyes: noise softened by a 1 px blur.
    fn texture(side: u32) -> RgbImage {
        let mut state = 12345u32;
        let noise = RgbImage::from_fn(side, side, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = (state >> 24) as u8;
            image::Rgb([v, v, v])
        });
        image::imageops::blur(&noise, 1.0)
    }

    #[test]
    fn sharpness_ignores_resolution_and_exposure_but_not_blur() {
        let base = texture(200);
        let whole = |img: &RgbImage| measure(img, &face(0.0, 0.0, img.width() as f32, img.height() as f32));
        let s = whole(&base).sharpness;
        let upscaled = image::imageops::resize(&base, 600, 600, image::imageops::FilterType::Triangle);
        let dark = RgbImage::from_fn(200, 200, |x, y| image::Rgb(base.get_pixel(x, y).0.map(|v| (f32::from(v) * 0.35) as u8)));
        // A blur of 3 % of the face width, what a missed focus or a shaken hand does.
        let blurred = image::imageops::blur(&base, 6.0);
        let (up, dk, bl) = (whole(&upscaled).sharpness, whole(&dark).sharpness, whole(&blurred).sharpness);
        eprintln!("sharpness: base {s} upscaled {up} dark {dk} blurred {bl}");
        assert!((up / s - 1.0).abs() < 0.2, "upscaled 3x: {up} vs {s}");
        assert!((dk / s - 1.0).abs() < 0.15, "dark: {dk} vs {s}");
        assert!(bl < 0.5 * s, "blurred: {bl} vs {s}");
        let flat = RgbImage::from_pixel(64, 64, image::Rgb([120, 120, 120]));
        assert_eq!(whole(&flat).sharpness, 0.0);
        assert!((whole(&flat).brightness - 120.0).abs() < 0.5);
    }

    #[test]
    fn boxes_outside_the_image_are_safe() {
        let img = RgbImage::new(10, 10);
        assert_eq!(measure(&img, &face(50.0, 50.0, 5.0, 5.0)).sharpness, 0.0);
        assert_eq!(measure(&img, &face(-5.0, -5.0, 3.0, 3.0)).sharpness, 0.0);
    }
}
