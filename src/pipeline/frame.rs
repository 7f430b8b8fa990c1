//! A photo's pixels as the stages need them: a reduced decode (1/2, 1/4 or 1/8 through
//! libjpeg-turbo's DCT scaling) serves the detector passes and the faces big enough in it, and the
//! full-resolution image is decoded only when a stage needs it (a pass bigger than the reduced
//! copy, refinement of a small face, alignment of a face too small in the reduced copy).
//! Where a stage needs full resolution only around a face, only the rows down to that face are
//! decoded (`TurboJpeg::decode_top_rows`) and the face's region is cut from them, pixel for pixel
//! what the full decode holds there (`tests::regions_are_the_full_decodes_pixels`).
//! Coordinates are always in full-resolution pixels of the upright (and turned) photo.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};

use anyhow::{anyhow, Result};
use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

use super::decode::{Decoded, Decoders};
use super::quality::SHARPNESS_SIDE;
use super::turbojpeg::TOP_ROWS_MARGIN;
use crate::models::sface::align::{Pixels, Similarity, ALIGNED_SIZE, TEMPLATE};
use crate::models::yunet::{to_input, Detection, Input};

/// Part of an image as a stage reads it: the whole reduced or full image, or a region decoded at
/// full resolution around a face, read in the whole image's coordinates (`Pixels`).
pub struct View<'f> {
    image: Cow<'f, RgbImage>,
    /// Where `image`'s top-left pixel sits in the whole image.
    origin: (u32, u32),
    /// The whole image's size.
    size: (u32, u32),
    /// Pixels per full-resolution pixel.
    pub factor: f32,
}

impl View<'_> {
    fn whole(image: &RgbImage, factor: f32) -> View<'_> {
        View { size: image.dimensions(), image: Cow::Borrowed(image), origin: (0, 0), factor }
    }

    /// The `w` x `h` pixels at `(x, y)` (whole-image coordinates, inside what this view holds).
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> RgbImage {
        image::imageops::crop_imm(&*self.image, x - self.origin.0, y - self.origin.1, w, h).to_image()
    }
}

impl Pixels for View<'_> {
    fn dimensions(&self) -> (u32, u32) {
        self.size
    }

    fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        self.image.get_pixel(x - self.origin.0, y - self.origin.1).0
    }
}

/// A rectangle `[x0, x1) x [y0, y1)` of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

pub struct Frame<'a> {
    /// The upright, turned image at 1/`denom` of full size (the full image when `denom` is 1).
    reduced: RgbImage,
    denom: u32,
    /// Upright, turned full size.
    size: (u32, u32),
    /// Degrees the photo is turned (clockwise) after EXIF orientation.
    rotation: u16,
    full: OnceCell<RgbImage>,
    /// The top rows of the stored (not yet oriented) full-resolution image, full width, decoded
    /// for regions when the full image is not (`region`); grown when a region lies lower.
    top: RefCell<Option<RgbImage>>,
    /// Milliseconds spent decoding the full image on demand, not yet counted (`take_decode_ms`).
    late_decode_ms: std::cell::Cell<f64>,
    /// Where the full image comes from when it is needed.
    source: Option<(&'a [u8], &'a Decoders)>,
    pub format: &'static str,
    pub orientation: u8,
    /// The decode's share of the workers' memory budget, held while these pixels live (a
    /// turned copy of the frame shares it).
    memory: Option<std::rc::Rc<super::decode::MemoryShare>>,
}

/// The frame's pixels go back to this thread's spare buffers for its next photo; not the
/// full-width rows regions were cut from (see `buffers::MAX_KEPT`).
impl Drop for Frame<'_> {
    fn drop(&mut self) {
        let images = [Some(std::mem::take(&mut self.reduced)), self.full.take()];
        for image in images.into_iter().flatten() {
            super::buffers::recycle(image.into_raw());
        }
    }
}

impl<'a> Frame<'a> {
    /// Decodes `bytes` reduced where that is possible (see `Decoders::decode_reduced`).
    pub fn decode(bytes: &'a [u8], decoders: &'a Decoders) -> Result<Self> {
        let Decoded { rgb, format, orientation, denom, full_size, memory } = decoders.decode_reduced(bytes)?;
        let (reduced, full) = if denom == 1 { (RgbImage::new(0, 0), full_with(rgb)) } else { (rgb, OnceCell::new()) };
        Ok(Self {
            reduced,
            denom,
            size: full_size,
            rotation: 0,
            full,
            top: Default::default(),
            late_decode_ms: Default::default(),
            source: Some((bytes, decoders)),
            format,
            orientation,
            memory: memory.map(std::rc::Rc::new),
        })
    }

    /// A frame of an image already decoded in full.
    pub fn from_image(rgb: RgbImage) -> Self {
        let size = rgb.dimensions();
        Self {
            reduced: RgbImage::new(0, 0),
            denom: 1,
            size,
            rotation: 0,
            full: full_with(rgb),
            top: Default::default(),
            late_decode_ms: Default::default(),
            source: None,
            format: "other",
            orientation: 1,
            memory: None,
        }
    }

    /// The same photo turned clockwise by `degrees` (90, 180, 270; coordinates follow).
    pub fn turned(&self, degrees: u16) -> Frame<'a> {
        let turn = |rgb: &RgbImage| super::rotate(rgb, degrees);
        let size = if degrees % 180 == 90 { (self.size.1, self.size.0) } else { self.size };
        let rotation = (self.rotation + degrees) % 360;
        let full = OnceCell::new();
        if let Some(f) = self.full.get() {
            let _ = full.set(turn(f));
        }
        let reduced = if self.denom == 1 { RgbImage::new(0, 0) } else { turn(&self.reduced) };
        let late_decode_ms = std::cell::Cell::new(self.late_decode_ms.take());
        Frame {
            reduced,
            denom: self.denom,
            size,
            rotation,
            full,
            top: Default::default(),
            late_decode_ms,
            source: self.source,
            format: self.format,
            orientation: self.orientation,
            memory: self.memory.clone(),
        }
    }

    /// Milliseconds spent decoding the full image since the last call.
    pub fn take_decode_ms(&self) -> f64 {
        self.late_decode_ms.take()
    }

    /// Upright (and turned) full-resolution size.
    pub fn dimensions(&self) -> (u32, u32) {
        self.size
    }

    /// Degrees the photo is turned after EXIF orientation.
    pub fn rotation(&self) -> u16 {
        self.rotation
    }

    /// The full-resolution image, decoded on first use.
    pub fn full(&self) -> Result<&RgbImage> {
        if let Some(f) = self.full.get() {
            return Ok(f);
        }
        let (bytes, decoders) = self.source.ok_or_else(|| anyhow!("no full-resolution image to decode"))?;
        let t = super::StageClock::now();
        let rgb = decoders.decode_within_share(bytes)?.rgb;
        let rgb = if self.rotation == 0 { rgb } else { super::rotate(&rgb, self.rotation) };
        self.late_decode_ms.set(self.late_decode_ms.get() + t.ms());
        // Regions are cut from the full image from now on.
        self.top.take();
        if rgb.dimensions() != self.size {
            return Err(anyhow!("the photo decoded to {:?} in full but its header says {:?}", rgb.dimensions(), self.size));
        }
        Ok(self.full.get_or_init(|| rgb))
    }

    /// The cheapest image holding at least `long_side` pixels on its long side, with its pixels
    /// per full-resolution pixel.
    pub fn source_for(&self, long_side: u32) -> Result<(&RgbImage, f32)> {
        if self.denom > 1 && self.reduced.width().max(self.reduced.height()) >= long_side {
            return Ok((&self.reduced, 1.0 / self.denom as f32));
        }
        Ok((self.full()?, 1.0))
    }

    /// A detector input of long side `long_side`, its scale in input pixels per full-resolution pixel.
    pub fn input(&self, long_side: u32) -> Result<Input> {
        let (image, factor) = self.source_for(long_side)?;
        let mut input = to_input(image, long_side);
        input.scale *= factor;
        Ok(input)
    }

    /// Pixels per full-resolution pixel of the image to look closer at a face of `side`
    /// full-resolution pixels on, when it is to be seen at `needed` pixels: the reduced copy's
    /// when the face is that big there, else 1 (full resolution).
    pub fn scale_for_side(&self, side: f32, needed: f32) -> f32 {
        let factor = 1.0 / self.denom as f32;
        if self.denom > 1 && side * factor >= needed {
            factor
        } else {
            1.0
        }
    }

    /// Size of the image at `factor` (1: full resolution, else the reduced copy).
    pub fn size_at(&self, factor: f32) -> (u32, u32) {
        if factor < 1.0 && self.denom > 1 {
            self.reduced.dimensions()
        } else {
            self.size
        }
    }

    /// The `w` x `h` pixels at `(x, y)` of the image at `factor` (see `size_at`), inside it.
    pub fn crop(&self, factor: f32, x: u32, y: u32, w: u32, h: u32) -> Result<RgbImage> {
        if factor < 1.0 && self.denom > 1 {
            return Ok(image::imageops::crop_imm(&self.reduced, x, y, w, h).to_image());
        }
        Ok(self.region(Rect { x0: x, y0: y, x1: x + w, y1: y + h })?.crop(x, y, w, h))
    }

    /// The image to align and score `face` on: the reduced copy when SFace's 112 px crop and the
    /// 64 px sharpness patch are shrunk from it, never enlarged (as they are from the full image),
    /// else the full-resolution region that alignment and scoring read (`face_window`).
    /// Decided per face from its box alone, so `match --best` fingerprints a stored face on the
    /// same pixels `index` did.
    pub fn source_for_face(&self, face: &Detection) -> Result<View<'_>> {
        let factor = 1.0 / self.denom as f32;
        let local = at_scale(face, factor);
        let shrinks = Similarity::fit(&local.landmarks, &TEMPLATE).is_some_and(|s| s.a.hypot(s.b) <= 1.0);
        if self.denom > 1 && shrinks && local.w.min(local.h) >= SHARPNESS_SIDE as f32 {
            return Ok(View::whole(&self.reduced, factor));
        }
        self.region(face_window(face, self.size))
    }

    /// Full-resolution pixels of `rect` (clamped to the image): the full image when it is
    /// decoded, else the region decoded from the rows down to it, else (a progressive JPEG, a
    /// library without the needed call) the full image, decoded now.
    pub fn region(&self, rect: Rect) -> Result<View<'_>> {
        if let Some(full) = self.full.get() {
            return Ok(View::whole(full, 1.0));
        }
        let (w, h) = self.size;
        let rect = Rect { x0: rect.x0.min(w), y0: rect.y0.min(h), x1: rect.x1.min(w), y1: rect.y1.min(h) };
        if rect.x1 > rect.x0 && rect.y1 > rect.y0 {
            if let Some(image) = self.decode_region(rect)? {
                return Ok(View { image: Cow::Owned(image), origin: (rect.x0, rect.y0), size: self.size, factor: 1.0 });
            }
        }
        Ok(View::whole(self.full()?, 1.0))
    }

    /// `rect` cut from the top rows of the stored image (decoded as far down as it reaches,
    /// kept for the next region), then oriented and turned like the full image; `None` when
    /// the photo cannot be decoded that way.
    fn decode_region(&self, rect: Rect) -> Result<Option<RgbImage>> {
        let Some((bytes, decoders)) = self.source else { return Ok(None) };
        let Some(turbo) = decoders.turbojpeg().filter(|_| self.denom > 1) else { return Ok(None) };
        let t = super::StageClock::now();
        let orientation = Orientation::from_exif(self.orientation).unwrap_or(Orientation::NoTransforms);
        let (stored_size, stored) = self.to_stored(rect);
        let mut top = self.top.borrow_mut();
        if top.as_ref().is_none_or(|t| t.height() < (stored.y1 + TOP_ROWS_MARGIN).min(stored_size.1)) {
            let rows = (stored.y1 + TOP_ROWS_MARGIN).next_multiple_of(16).min(stored_size.1);
            let Some(decoded) = turbo.decode_top_rows(bytes, rows)? else { return Ok(None) };
            if decoded.width() != stored_size.0 {
                return Err(anyhow!("the photo decoded {} px wide but its header says {}", decoded.width(), stored_size.0));
            }
            *top = Some(decoded);
        }
        let Some(rows) = top.as_ref() else { return Ok(None) };
        let cut = image::imageops::crop_imm(rows, stored.x0, stored.y0, stored.x1 - stored.x0, stored.y1 - stored.y0).to_image();
        let mut cut = DynamicImage::ImageRgb8(cut);
        cut.apply_orientation(orientation);
        let cut = super::rotate(&cut.into_rgb8(), self.rotation);
        self.late_decode_ms.set(self.late_decode_ms.get() + t.ms());
        Ok(Some(cut))
    }

    /// The stored image's size and where `rect` (upright, turned coordinates) lies in it.
    fn to_stored(&self, rect: Rect) -> ((u32, u32), Rect) {
        let mut size = self.size;
        let mut corners = [(rect.x0, rect.y0), (rect.x1 - 1, rect.y1 - 1)];
        // Undo the turn, then the EXIF orientation, last step first.
        let mut steps: Vec<Step> = match self.rotation {
            90 => vec![Step::Rot90],
            180 => vec![Step::Rot180],
            270 => vec![Step::Rot270],
            _ => vec![],
        };
        steps.extend(match self.orientation {
            2 => vec![Step::FlipH],
            3 => vec![Step::Rot180],
            4 => vec![Step::FlipV],
            5 => vec![Step::FlipH, Step::Rot90],
            6 => vec![Step::Rot90],
            7 => vec![Step::FlipH, Step::Rot270],
            8 => vec![Step::Rot270],
            _ => vec![],
        });
        for step in steps {
            corners = corners.map(|p| step.source_of(p, size));
            if matches!(step, Step::Rot90 | Step::Rot270) {
                size = (size.1, size.0);
            }
        }
        let [(ax, ay), (bx, by)] = corners;
        (size, Rect { x0: ax.min(bx), y0: ay.min(by), x1: ax.max(bx) + 1, y1: ay.max(by) + 1 })
    }
}

/// One of the steps that make the upright, turned image from the stored one (as
/// `DynamicImage::apply_orientation` and `pipeline::rotate` do them).
#[derive(Debug, Clone, Copy)]
enum Step {
    Rot90,
    Rot180,
    Rot270,
    FlipH,
    FlipV,
}

impl Step {
    /// The pixel of the step's input that lands on `(x, y)` of its output of size `(w, h)`.
    fn source_of(self, (x, y): (u32, u32), (w, h): (u32, u32)) -> (u32, u32) {
        match self {
            Step::Rot90 => (y, w - 1 - x),
            Step::Rot180 => (w - 1 - x, h - 1 - y),
            Step::Rot270 => (h - 1 - y, x),
            Step::FlipH => (w - 1 - x, y),
            Step::FlipV => (x, h - 1 - y),
        }
    }
}

/// The full-resolution pixels alignment and scoring read for `face` in an image of `size`:
/// the box (quality), and the bounding box of SFace's 112 px grid mapped back into the photo
/// (bilinear reads the pixel under a point and its right and lower neighbours), two pixels wider
/// for rounding; clamped to the image.
pub fn face_window(face: &Detection, (w, h): (u32, u32)) -> Rect {
    let (mut x0, mut y0) = (f64::from(face.x), f64::from(face.y));
    let (mut x1, mut y1) = (f64::from(face.x + face.w), f64::from(face.y + face.h));
    if let Some(inv) = Similarity::fit(&face.landmarks, &TEMPLATE).and_then(|s| s.inverse()) {
        let last = (ALIGNED_SIZE - 1) as f64;
        for (u, v) in [(0.0, 0.0), (last, 0.0), (0.0, last), (last, last)] {
            let (x, y) = inv.apply(u, v);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1.0), y1.max(y + 1.0));
        }
    }
    let clamp = |v: f64, limit: u32| if v.is_nan() { 0 } else { v.clamp(0.0, f64::from(limit)) as u32 };
    let window = Rect {
        x0: clamp(x0.floor() - 2.0, w),
        y0: clamp(y0.floor() - 2.0, h),
        x1: clamp(x1.ceil() + 2.0, w),
        y1: clamp(y1.ceil() + 2.0, h),
    };
    if [x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
        window
    } else {
        Rect { x0: 0, y0: 0, x1: w, y1: h }
    }
}

fn full_with(rgb: RgbImage) -> OnceCell<RgbImage> {
    let cell = OnceCell::new();
    let _ = cell.set(rgb);
    cell
}

/// `d` in the pixels of an image `factor` times the full resolution.
pub fn at_scale(d: &Detection, factor: f32) -> Detection {
    crate::models::yunet::scaled(d, factor)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    use super::*;
    use crate::models::sface::align;

    fn decoders() -> Decoders {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let decoders = Decoders::new(Some(&models));
        assert!(decoders.turbojpeg().is_some(), "libturbojpeg not in {}/turbojpeg: run scripts/setup.sh", models.display());
        decoders
    }

    /// A real portrait enlarged to an odd size that is decoded reduced (long side >= 3840, 1/2).
    fn big_photo() -> RgbImage {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photos/obama3.jpg");
        let img = image::open(path).unwrap().into_rgb8();
        image::imageops::resize(&img, 2401, 3907, image::imageops::FilterType::Triangle)
    }

    fn jpeg(img: &RgbImage, sampling: SamplingFactor, progressive: bool, restart: u16, orientation: u16) -> Vec<u8> {
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out, 90);
        enc.set_sampling_factor(sampling);
        enc.set_progressive(progressive);
        if restart > 0 {
            enc.set_restart_interval(restart);
        }
        enc.add_app_segment(1, &exif).unwrap();
        enc.encode(img.as_raw(), img.width() as u16, img.height() as u16, ColorType::Rgb).unwrap();
        out
    }

    fn assert_same(view: &View, full: &RgbImage, r: Rect, case: &str) {
        assert_eq!(view.dimensions(), full.dimensions(), "{case}");
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                assert_eq!(view.rgb(x, y), full.get_pixel(x, y).0, "{case}: pixel ({x}, {y}) of {r:?}");
            }
        }
    }

    /// Rectangles of an image of size `(w, h)`, in an order that makes the decoded rows grow:
    /// a corner, the middle, one higher again (kept rows), the bottom-right edge.
    fn rects((w, h): (u32, u32)) -> Vec<Rect> {
        vec![
            Rect { x0: 0, y0: 0, x1: 61, y1: 47 },
            Rect { x0: w / 3, y0: h / 3, x1: w / 3 + 301, y1: h / 3 + 257 },
            Rect { x0: w / 2, y0: h / 4, x1: w / 2 + 17, y1: h / 4 + 333 },
            Rect { x0: w - 45, y0: h / 2 + 5, x1: w, y1: h / 2 + 200 },
            Rect { x0: w - 130, y0: h - 70, x1: w, y1: h },
        ]
    }

    /// Tests that decode with libjpeg-turbo from `models/` (`scripts/setup.sh`): the unit tier of
    /// `scripts/test.sh`, which runs before the models are fetched, skips `needs_models`.
    mod needs_models {
        use super::*;

        #[test]
        fn regions_are_the_full_decodes_pixels() {
            let decoders = decoders();
            let photo = big_photo();
            let kinds = [
                ("4:2:0", SamplingFactor::F_2_2, false, 0),
                ("4:4:4", SamplingFactor::F_1_1, false, 0),
                ("4:2:2", SamplingFactor::F_2_1, false, 0),
                ("4:4:0", SamplingFactor::F_1_2, false, 0),
                ("4:2:0 restart 7", SamplingFactor::F_2_2, false, 7),
                ("4:2:0 progressive", SamplingFactor::F_2_2, true, 0),
            ];
            for (name, sampling, progressive, restart) in kinds {
                for orientation in [1, 6, 3, 5, 8] {
                    let bytes = jpeg(&photo, sampling, progressive, restart, orientation);
                    let full = decoders.decode(&bytes).unwrap().rgb;
                    for turn in [0, 90, 270] {
                        let case = format!("{name}, EXIF orientation {orientation}, turned {turn}");
                        let frame = Frame::decode(&bytes, &decoders).unwrap().turned(turn);
                        assert_eq!(frame.denom, 2, "{case}");
                        let full = crate::pipeline::rotate(&full, turn);
                        for r in rects(full.dimensions()) {
                            assert_same(&frame.region(r).unwrap(), &full, r, &case);
                            // Only a progressive JPEG needs the whole image decoded.
                            assert_eq!(frame.full.get().is_some(), progressive, "{case}");
                            let crop = frame.crop(1.0, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0).unwrap();
                            assert_eq!(crop, image::imageops::crop_imm(&full, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0).to_image(), "{case}");
                        }
                    }
                }
            }
        }

        #[test]
        fn faces_align_and_score_on_a_region_as_on_the_full_image() {
            let decoders = decoders();
            let bytes = jpeg(&big_photo(), SamplingFactor::F_2_2, false, 0, 6);
            let frame = Frame::decode(&bytes, &decoders).unwrap();
            let full = decoders.decode(&bytes).unwrap().rgb;
            let (w, h) = full.dimensions();
            // 120 px faces (too small for the 1/2 copy), tilted, in the middle and over each edge.
            for (cx, cy) in
                [(w as f32 / 2.0, h as f32 / 3.0), (10.0, 20.0), (w as f32 - 15.0, h as f32 - 5.0), (w as f32 / 3.0, h as f32 - 50.0)]
            {
                let (c, s) = (0.3f32.cos() * 1.1, 0.3f32.sin() * 1.1);
                let landmarks = TEMPLATE.map(|[x, y]| [cx + c * (x - 56.0) - s * (y - 56.0), cy + s * (x - 56.0) + c * (y - 56.0)]);
                let face = Detection { x: cx - 60.0, y: cy - 60.0, w: 120.0, h: 120.0, score: 0.9, landmarks };
                let view = frame.source_for_face(&face).unwrap();
                assert_eq!(view.factor, 1.0);
                assert!(matches!(view.image, Cow::Owned(_)), "a region, not the whole image");
                assert_eq!(align::align(&view, &landmarks).unwrap().rgb, align::align(&full, &landmarks).unwrap().rgb, "at ({cx}, {cy})");
                assert_eq!(
                    crate::pipeline::quality::measure(&view, &face),
                    crate::pipeline::quality::measure(&full, &face),
                    "at ({cx}, {cy})"
                );
            }
            assert!(frame.full.get().is_none());
        }
    }

    #[test]
    fn only_sequential_jpegs_are_cut_by_rows() {
        use crate::pipeline::turbojpeg::sequential_frame_header;
        let photo = RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]));
        let baseline = jpeg(&photo, SamplingFactor::F_2_2, false, 0, 1);
        let at = sequential_frame_header(&baseline).unwrap();
        assert_eq!(&baseline[at..at + 2], &[0xFF, 0xC0]);
        assert_eq!(sequential_frame_header(&jpeg(&photo, SamplingFactor::F_2_2, true, 0, 1)), None);
        assert_eq!(sequential_frame_header(&baseline[..at]), None);
        assert_eq!(sequential_frame_header(b"\x89PNG\r\n"), None);
    }
}
