//! Five-point alignment to SFace's 112x112 template (what OpenCV's FaceRecognizerSF::alignCrop
//! does): least-squares similarity transform, bilinear sampling, black outside the image.

use image::RgbImage;

pub const ALIGNED_SIZE: usize = 112;

/// An image read pixel by pixel in its own coordinates: a whole `RgbImage`, or a region of a
/// photo decoded around a face (`pipeline::frame::View`) that answers in the photo's coordinates,
/// so alignment and quality read the same pixels with the same arithmetic either way.
pub trait Pixels {
    /// Width and height of the whole image.
    fn dimensions(&self) -> (u32, u32);
    /// The pixel at `(x, y)`, inside `dimensions()`.
    fn rgb(&self, x: u32, y: u32) -> [u8; 3];
}

impl Pixels for RgbImage {
    fn dimensions(&self) -> (u32, u32) {
        image::ImageBuffer::dimensions(self)
    }

    fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        self.get_pixel(x, y).0
    }
}

/// ArcFace template: right eye, left eye, nose, right and left mouth corners (112x112 pixels).
pub const TEMPLATE: [[f32; 2]; 5] = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

pub struct AlignedFace {
    /// 112x112 RGB, row-major.
    pub rgb: Vec<u8>,
}

/// Similarity transform `[a -b tx; b a ty]` mapping image points to template points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// Least-squares fit of src -> dst (rotation, uniform scale, translation; never a reflection).
    pub fn fit(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> Option<Self> {
        let n = src.len() as f64;
        let mean = |p: &[[f32; 2]; 5]| {
            let (sx, sy) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + f64::from(q[0]), y + f64::from(q[1])));
            (sx / n, sy / n)
        };
        let (mx, my) = mean(src);
        let (nx, ny) = mean(dst);
        let (mut num_a, mut num_b, mut den) = (0.0, 0.0, 0.0);
        for (p, q) in src.iter().zip(dst) {
            let (px, py) = (f64::from(p[0]) - mx, f64::from(p[1]) - my);
            let (qx, qy) = (f64::from(q[0]) - nx, f64::from(q[1]) - ny);
            num_a += px * qx + py * qy;
            num_b += px * qy - py * qx;
            den += px * px + py * py;
        }
        if !(den > 1e-9) || !den.is_finite() {
            return None;
        }
        let (a, b) = (num_a / den, num_b / den);
        Some(Self { a, b, tx: nx - (a * mx - b * my), ty: ny - (b * mx + a * my) })
    }

    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        (self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty)
    }

    pub fn inverse(&self) -> Option<Self> {
        let det = self.a * self.a + self.b * self.b;
        if !(det > 1e-18) {
            return None;
        }
        let (a, b) = (self.a / det, -self.b / det);
        Some(Self { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) })
    }
}

/// Warps the face to 112x112. `None` when the landmarks are degenerate.
pub fn align<P: Pixels>(image: &P, landmarks: &[[f32; 2]; 5]) -> Option<AlignedFace> {
    let inv = Similarity::fit(landmarks, &TEMPLATE)?.inverse()?;
    let mut rgb = vec![0u8; ALIGNED_SIZE * ALIGNED_SIZE * 3];
    for v in 0..ALIGNED_SIZE {
        for u in 0..ALIGNED_SIZE {
            let (sx, sy) = inv.apply(u as f64, v as f64);
            let px = bilinear(image, sx, sy);
            let o = (v * ALIGNED_SIZE + u) * 3;
            rgb[o..o + 3].copy_from_slice(&px);
        }
    }
    Some(AlignedFace { rgb })
}

/// Bilinear sample with zero (black) outside the image, like warpAffine's BORDER_CONSTANT.
pub fn bilinear<P: Pixels>(image: &P, x: f64, y: f64) -> [u8; 3] {
    if !x.is_finite() || !y.is_finite() {
        return [0; 3];
    }
    let (w, h) = image.dimensions();
    let (w, h) = (i64::from(w), i64::from(h));
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let mut acc = [0f64; 3];
    for (dx, dy, wgt) in [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)] {
        let (xi, yi) = (x0 + dx, y0 + dy);
        if xi < 0 || yi < 0 || xi >= w || yi >= h || wgt == 0.0 {
            continue;
        }
        let p = image.rgb(xi as u32, yi as u32);
        for c in 0..3 {
            acc[c] += wgt * f64::from(p[c]);
        }
    }
    acc.map(|v| v.round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_known_similarity() {
        let t = Similarity { a: 0.5 * 0.3f64.cos(), b: 0.5 * 0.3f64.sin(), tx: 12.0, ty: -7.0 };
        let inv = t.inverse().unwrap();
        let src: [[f32; 2]; 5] = TEMPLATE.map(|[x, y]| {
            let (sx, sy) = inv.apply(f64::from(x), f64::from(y));
            [sx as f32, sy as f32]
        });
        let fit = Similarity::fit(&src, &TEMPLATE).unwrap();
        assert!((fit.a - t.a).abs() < 1e-4 && (fit.b - t.b).abs() < 1e-4);
        assert!((fit.tx - t.tx).abs() < 1e-2 && (fit.ty - t.ty).abs() < 1e-2);
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        assert!(Similarity::fit(&[[5.0, 5.0]; 5], &TEMPLATE).is_none());
        assert!(align(&RgbImage::new(10, 10), &[[f32::NAN, 0.0]; 5]).is_none());
    }

    #[test]
    fn identity_alignment_copies_pixels_and_blacks_outside() {
        let mut img = RgbImage::new(112, 112);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8, y as u8, 200]);
        }
        let a = align(&img, &TEMPLATE).unwrap();
        assert_eq!(&a.rgb[(50 * 112 + 60) * 3..(50 * 112 + 60) * 3 + 3], &[60, 50, 200]);
        // Shift the landmarks 200 px right: the face is off-image, so the crop is black.
        let shifted = TEMPLATE.map(|[x, y]| [x + 200.0, y]);
        assert!(align(&img, &shifted).unwrap().rgb.iter().all(|&v| v == 0));
    }
}
