//! A 64-bit perceptual hash of a face: the difference hash (dHash) of its aligned 112x112 crop,
//! the image SFace embeds. Alignment maps the five landmarks onto one template, so a copy of a
//! photo (re-encoded, resized, slightly cropped) yields nearly the same aligned face and so
//! nearly the same bits, while another photo of the same person (other light, other expression)
//! moves many of them. `match --best` uses it, together with the embedding, to find
//! near-duplicates. Measured on the test portraits (tests/it/best.rs): copies 0-7 bits apart (the
//! landmarks of two detections differ by a pixel or so, which moves the aligned face), other
//! photos of the same person 25-32. A pHash (lowest 8x8 DCT terms of the same face) was tried:
//! copies 0-11 bits, others 25-35, a narrower gap.

use crate::models::sface::align::{self, AlignedFace, ALIGNED_SIZE};

/// dHash of the aligned face: luma area-averaged onto a 9x8 grid, one bit per horizontal
/// neighbour pair (1 where the left cell is brighter), rows top to bottom.
pub fn dhash(face: &AlignedFace) -> u64 {
    const COLS: usize = 9;
    const ROWS: usize = 8;
    let mut sum = [[0f64; COLS]; ROWS];
    let mut count = [[0u32; COLS]; ROWS];
    for y in 0..ALIGNED_SIZE {
        let row = y * ROWS / ALIGNED_SIZE;
        for x in 0..ALIGNED_SIZE {
            let col = x * COLS / ALIGNED_SIZE;
            let o = (y * ALIGNED_SIZE + x) * 3;
            let [r, g, b] = [face.rgb[o], face.rgb[o + 1], face.rgb[o + 2]].map(f64::from);
            sum[row][col] += 0.299 * r + 0.587 * g + 0.114 * b;
            count[row][col] += 1;
        }
    }
    let mut bits = 0u64;
    for row in 0..ROWS {
        for col in 0..COLS - 1 {
            let left = sum[row][col] / f64::from(count[row][col].max(1));
            let right = sum[row][col + 1] / f64::from(count[row][col + 1].max(1));
            bits = (bits << 1) | u64::from(left > right);
        }
    }
    bits
}

/// The face hash of the face with these landmarks in `image` (`None`: degenerate landmarks).
pub fn face_hash<P: align::Pixels>(image: &P, landmarks: &[[f32; 2]; 5]) -> Option<u64> {
    align::align(image, landmarks).map(|a| dhash(&a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sface::align::TEMPLATE;
    use image::RgbImage;

    #[test]
    fn a_gradient_sets_every_bit_and_its_mirror_none() {
        let falling = RgbImage::from_fn(112, 112, |x, _| image::Rgb([255 - (2 * x) as u8; 3]));
        assert_eq!(face_hash(&falling, &TEMPLATE), Some(u64::MAX));
        let rising = RgbImage::from_fn(112, 112, |x, _| image::Rgb([(2 * x) as u8; 3]));
        assert_eq!(face_hash(&rising, &TEMPLATE), Some(0));
        assert_eq!(face_hash(&rising, &[[1.0, 1.0]; 5]), None);
    }
}
