//! The indexing pipeline, one file per stage:
//! walk -> hash -> decode -> detect -> align -> embed -> quality -> (store, in `db`).

pub mod align;
pub mod decode;
pub mod detect;
pub mod embed;
pub mod hash;
pub mod heif;
pub mod quality;
pub mod walk;

use std::time::Instant;

use anyhow::Result;

use crate::models::{sface::SFace, yunet::YuNet};
use detect::{DetectParams, Detection};
use embed::FaceRecord;

/// Milliseconds spent in each stage (summed across photos by the run).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct StageTimes {
    pub read_hash: f64,
    pub decode: f64,
    pub detect: f64,
    pub align_embed: f64,
    pub quality: f64,
    pub store: f64,
}

impl StageTimes {
    pub fn add(&mut self, o: &StageTimes) {
        self.read_hash += o.read_hash;
        self.decode += o.decode;
        self.detect += o.detect;
        self.align_embed += o.align_embed;
        self.quality += o.quality;
        self.store += o.store;
    }
}

pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// What indexing learned about one image's content.
pub struct AnalyzedImage {
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub orientation: u8,
    pub faces: Vec<FaceRecord>,
    pub detector_calls: u32,
    pub embedder_calls: u32,
}

/// Decode -> detect -> align -> embed -> quality for one image's bytes.
pub fn analyze(
    bytes: &[u8],
    detector: &mut YuNet,
    embedder: &mut SFace,
    params: &DetectParams,
    times: &mut StageTimes,
) -> Result<AnalyzedImage> {
    let t = Instant::now();
    let decoded = decode::decode(bytes)?;
    times.decode += ms_since(t);

    let t = Instant::now();
    let outcome = detect::detect(detector, &decoded.rgb, params)?;
    times.detect += ms_since(t);

    let (faces, embedder_calls) = embed::embed_faces(&decoded.rgb, &outcome.faces, embedder, times)?;
    Ok(AnalyzedImage {
        width: decoded.rgb.width(),
        height: decoded.rgb.height(),
        format: decoded.format,
        orientation: decoded.orientation,
        faces,
        detector_calls: outcome.detector_calls,
        embedder_calls,
    })
}

/// The largest face (by box area), used for reference photos.
pub fn largest(faces: &[FaceRecord]) -> Option<&FaceRecord> {
    faces.iter().max_by(|a, b| area(&a.detection).total_cmp(&area(&b.detection)))
}

fn area(d: &Detection) -> f32 {
    d.w * d.h
}
