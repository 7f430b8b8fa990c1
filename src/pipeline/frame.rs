//! A photo's pixels as the stages need them: a reduced decode (1/2, 1/4 or 1/8 through
//! libjpeg-turbo's DCT scaling) serves the detector passes and the faces big enough in it, and the
//! full-resolution image is decoded only when a stage needs it (a pass bigger than the reduced
//! copy, refinement of a small face, alignment of a face too small in the reduced copy).
//! Coordinates are always in full-resolution pixels of the upright (and turned) photo.

use std::cell::OnceCell;

use anyhow::{anyhow, Result};
use image::RgbImage;

use super::decode::{Decoded, Decoders};
use super::quality::SHARPNESS_SIDE;
use crate::models::sface::align::{Similarity, TEMPLATE};
use crate::models::yunet::{to_input, Detection, Input};

pub struct Frame<'a> {
    /// The upright, turned image at 1/`denom` of full size (the full image when `denom` is 1).
    reduced: RgbImage,
    denom: u32,
    /// Upright, turned full size.
    size: (u32, u32),
    /// Degrees the photo is turned (clockwise) after EXIF orientation.
    rotation: u16,
    full: OnceCell<RgbImage>,
    /// Milliseconds spent decoding the full image on demand, not yet counted (`take_decode_ms`).
    late_decode_ms: std::cell::Cell<f64>,
    /// Where the full image comes from when it is needed.
    source: Option<(&'a [u8], &'a Decoders)>,
    pub format: &'static str,
    pub orientation: u8,
}

impl<'a> Frame<'a> {
    /// Decodes `bytes` reduced where that is possible (see `Decoders::decode_reduced`).
    pub fn decode(bytes: &'a [u8], decoders: &'a Decoders) -> Result<Self> {
        let Decoded { rgb, format, orientation, denom, full_size } = decoders.decode_reduced(bytes)?;
        let (reduced, full) = if denom == 1 { (RgbImage::new(0, 0), full_with(rgb)) } else { (rgb, OnceCell::new()) };
        Ok(Self {
            reduced,
            denom,
            size: full_size,
            rotation: 0,
            full,
            late_decode_ms: Default::default(),
            source: Some((bytes, decoders)),
            format,
            orientation,
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
            late_decode_ms: Default::default(),
            source: None,
            format: "other",
            orientation: 1,
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
            late_decode_ms,
            source: self.source,
            format: self.format,
            orientation: self.orientation,
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
        let t = std::time::Instant::now();
        let rgb = decoders.decode(bytes)?.rgb;
        let rgb = if self.rotation == 0 { rgb } else { super::rotate(&rgb, self.rotation) };
        self.late_decode_ms.set(self.late_decode_ms.get() + super::ms_since(t));
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

    /// The image to look closer at a face of `side` full-resolution pixels on, when it is to be
    /// seen at `needed` pixels: the reduced copy when the face is that big there, else the full image.
    pub fn source_for_side(&self, side: f32, needed: f32) -> Result<(&RgbImage, f32)> {
        let factor = 1.0 / self.denom as f32;
        if self.denom > 1 && side * factor >= needed {
            return Ok((&self.reduced, factor));
        }
        Ok((self.full()?, 1.0))
    }

    /// The image to align and score `face` on, and its pixels per full-resolution pixel: the
    /// reduced copy when SFace's 112 px crop and the 64 px sharpness patch are shrunk from it,
    /// never enlarged (as they are from the full image), else the full image.
    /// Decided per face from its box alone, so `match --best` fingerprints a stored face on the
    /// same pixels `index` did.
    pub fn source_for_face(&self, face: &Detection) -> Result<(&RgbImage, f32)> {
        let factor = 1.0 / self.denom as f32;
        let local = at_scale(face, factor);
        let shrinks = Similarity::fit(&local.landmarks, &TEMPLATE).is_some_and(|s| s.a.hypot(s.b) <= 1.0);
        if self.denom > 1 && shrinks && local.w.min(local.h) >= SHARPNESS_SIDE as f32 {
            return Ok((&self.reduced, factor));
        }
        Ok((self.full()?, 1.0))
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
