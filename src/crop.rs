//! Crop geometry (pure) and writing crop files.

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;

/// A pixel rectangle: x, y, width, height.
pub type Rect = [u32; 4];

/// The face box grown by `margin` x its size on every side, rounded outward, clamped to the image.
pub fn crop_rect(x: f32, y: f32, w: f32, h: f32, margin: f32, image_w: u32, image_h: u32) -> Rect {
    let m = margin.max(0.0);
    let span = |start: f32, len: f32, limit: u32| -> (u32, u32) {
        let limit = i64::from(limit.max(1));
        let lo = ((start - len * m).floor() as i64).clamp(0, limit - 1);
        let hi = ((start + len * (1.0 + m)).ceil() as i64).clamp(lo + 1, limit);
        (lo as u32, (hi - lo) as u32)
    };
    let (x0, cw) = span(x, w, image_w);
    let (y0, ch) = span(y, h, image_h);
    [x0, y0, cw, ch]
}

/// A file name that is safe anywhere: the source's stem reduced to [A-Za-z0-9._-], plus face id.
pub fn crop_file_name(source_rel: &str, face_id: i64) -> String {
    let stem = Path::new(source_rel)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let clean = clean.trim_matches('_');
    format!(
        "{}_face{face_id}.jpg",
        if clean.is_empty() { "photo" } else { clean }
    )
}

pub fn write_crop(image: &RgbImage, rect: Rect, path: &Path) -> Result<()> {
    let [x, y, w, h] = rect;
    let crop = image::imageops::crop_imm(image, x, y, w, h).to_image();
    let tmp = path.with_extension("jpg.part");
    crop.save_with_format(&tmp, image::ImageFormat::Jpeg)
        .with_context(|| format!("writing crop {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing crop {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_grows_box_and_clamps_to_image() {
        assert_eq!(
            crop_rect(100.0, 100.0, 50.0, 60.0, 0.2, 1000, 1000),
            [90, 88, 70, 84]
        );
        assert_eq!(crop_rect(5.0, 5.0, 50.0, 50.0, 0.5, 60, 70), [0, 0, 60, 70]);
        assert_eq!(
            crop_rect(10.0, 10.0, 20.0, 20.0, 0.0, 100, 100),
            [10, 10, 20, 20]
        );
    }

    #[test]
    fn crop_names_are_safe() {
        assert_eq!(crop_file_name("a/b/IMG 001.JPG", 7), "IMG_001_face7.jpg");
        assert_eq!(crop_file_name("../../etc/passwd", 3), "passwd_face3.jpg");
        assert_eq!(crop_file_name("...jpg", 1), "photo_face1.jpg");
    }
}
