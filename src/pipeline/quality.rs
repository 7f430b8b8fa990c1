//! Per-face quality measures, computed on the full-resolution upright image.

use image::RgbImage;
use serde::Serialize;

use super::detect::Detection;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    /// Shorter side of the face box in original-image pixels.
    pub size_px: f32,
    /// Variance of the 4-neighbour Laplacian of luma over the face box at original resolution.
    /// Roughly: < 20 blurry, 20-100 soft, > 100 sharp (for 8-bit photos).
    pub sharpness: f32,
    /// Head turn left/right in degrees from the nose's offset against the eye line (0 = frontal).
    pub yaw: f32,
    /// In-plane tilt of the eye line in degrees.
    pub roll: f32,
    /// Mean luma (0-255) over the face box.
    pub brightness: f32,
}

pub fn measure(image: &RgbImage, face: &Detection) -> Quality {
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

fn sharpness_and_brightness(image: &RgbImage, face: &Detection) -> (f32, f32) {
    let (w, h) = image.dimensions();
    let x0 = face.x.max(0.0).floor() as u32;
    let y0 = face.y.max(0.0).floor() as u32;
    let x1 = ((face.x + face.w).ceil().max(0.0) as u32).min(w);
    let y1 = ((face.y + face.h).ceil().max(0.0) as u32).min(h);
    if x1 <= x0 + 2 || y1 <= y0 + 2 {
        return (0.0, 0.0);
    }
    let bw = (x1 - x0) as usize;
    let luma: Vec<f32> = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .map(|(x, y)| {
            let p = image.get_pixel(x, y);
            0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
        })
        .collect();
    let bh = luma.len() / bw;
    let brightness = luma.iter().sum::<f32>() / luma.len() as f32;
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    for y in 1..bh - 1 {
        for x in 1..bw - 1 {
            let c = luma[y * bw + x];
            let lap = luma[(y - 1) * bw + x] + luma[(y + 1) * bw + x] + luma[y * bw + x - 1] + luma[y * bw + x + 1] - 4.0 * c;
            sum += f64::from(lap);
            sum_sq += f64::from(lap) * f64::from(lap);
            n += 1.0;
        }
    }
    let mean = sum / n;
    ((sum_sq / n - mean * mean).max(0.0) as f32, brightness)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::align::TEMPLATE;

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

    #[test]
    fn sharp_pattern_beats_flat_and_blurred() {
        let mut checker = RgbImage::new(64, 64);
        for (x, y, p) in checker.enumerate_pixels_mut() {
            let v = if (x / 2 + y / 2) % 2 == 0 { 255 } else { 0 };
            *p = image::Rgb([v, v, v]);
        }
        let blurred = image::imageops::blur(&checker, 3.0);
        let flat = RgbImage::from_pixel(64, 64, image::Rgb([120, 120, 120]));
        let f = face(0.0, 0.0, 64.0, 64.0);
        let (s_sharp, s_blur, s_flat) = (measure(&checker, &f).sharpness, measure(&blurred, &f).sharpness, measure(&flat, &f).sharpness);
        assert!(s_sharp > 10.0 * s_blur && s_blur > s_flat, "{s_sharp} {s_blur} {s_flat}");
        assert!((measure(&flat, &f).brightness - 120.0).abs() < 0.5);
    }

    #[test]
    fn boxes_outside_the_image_are_safe() {
        let img = RgbImage::new(10, 10);
        assert_eq!(measure(&img, &face(50.0, 50.0, 5.0, 5.0)).sharpness, 0.0);
        assert_eq!(measure(&img, &face(-5.0, -5.0, 3.0, 3.0)).sharpness, 0.0);
    }
}
