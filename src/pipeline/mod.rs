//! The indexing pipeline, one file per stage:
//! walk -> hash -> decode -> detect -> align -> embed -> quality -> (store, in `db`).

pub mod buffers;
pub mod decode;
pub mod detect;
pub mod embed;
pub mod fingerprint;
pub mod frame;
pub mod hash;
pub mod heif;
pub mod quality;
pub mod shard;
pub mod thumbnail;
pub mod turbojpeg;
pub mod walk;

use std::time::Instant;

use anyhow::Result;

use crate::models::{sface::SFace, yunet::YuNet};
use detect::{DetectParams, Detection, PassStats};
use embed::FaceRecord;
use frame::Frame;

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

/// A reading of the calling thread's CPU clock, for stage costs (`StageTimes`). They are CPU
/// time, not wall time: with more runnable threads than cores (the workers and the embedder
/// thread) a stage's wall time also counts the time its thread waited for a core.
#[derive(Debug, Clone, Copy)]
pub struct StageClock(std::time::Duration);

impl StageClock {
    pub fn now() -> Self {
        Self(thread_cpu_time())
    }

    /// Milliseconds of this thread's CPU time since `self` (read on the same thread).
    pub fn ms(self) -> f64 {
        thread_cpu_time().saturating_sub(self.0).as_secs_f64() * 1000.0
    }
}

/// CPU time the calling thread has used (zero if the clock cannot be read).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a live, writable timespec owned by this frame; clock_gettime writes only it.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !read {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// What indexing learned about one image's content.
pub struct AnalyzedImage {
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub orientation: u8,
    /// Degrees (0, 90, 180 or 270, clockwise) the upright image was turned to find faces in a sideways
    /// photo without EXIF orientation; face coordinates are in the turned image.
    pub rotation: u16,
    pub faces: Vec<FaceRecord>,
    pub detector_calls: u32,
    pub embedder_calls: u32,
    /// What the detector passes cost and found.
    pub passes: PassStats,
}

/// Where `analyze` gets its embedder when a photo has faces to embed: a session at hand, or one
/// still being made on another thread (`models::LazyEmbedder`), waited for only then.
pub trait EmbedderSource {
    fn embedder(&mut self) -> Result<&mut SFace>;
}

impl EmbedderSource for SFace {
    fn embedder(&mut self) -> Result<&mut SFace> {
        Ok(self)
    }
}

/// Where `analyze` gets its detector once a photo is decoded: a session at hand, or one made
/// when the models have loaded (`models::LazyDetector`).
pub trait DetectorSource {
    fn detector(&mut self) -> Result<&mut YuNet>;
}

impl DetectorSource for YuNet {
    fn detector(&mut self) -> Result<&mut YuNet> {
        Ok(self)
    }
}

/// Decode -> detect -> align -> embed -> quality for one image's bytes ([`prepare`], then
/// [`PreparedImage::embed`]).
pub fn analyze(
    bytes: &[u8],
    decoders: &decode::Decoders,
    detector: &mut impl DetectorSource,
    embedder: &mut impl EmbedderSource,
    params: &DetectParams,
    times: &mut StageTimes,
) -> Result<AnalyzedImage> {
    prepare(bytes, decoders, detector, params, times)?.embed(embedder, times)
}

/// An image decoded and detected, its faces aligned, hashed and scored: all but the embeddings,
/// which need the SFace session and nothing of the decoded image.
pub struct PreparedImage {
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub orientation: u8,
    pub rotation: u16,
    pub faces: Vec<embed::PreparedFace>,
    pub detector_calls: u32,
    pub passes: PassStats,
}

impl PreparedImage {
    /// Whether [`PreparedImage::embed`] needs the embedder (a photo without faces does not wait for it).
    pub fn needs_embedder(&self) -> bool {
        !self.faces.is_empty()
    }

    /// Embeds the faces (their time counts as `align_embed`).
    pub fn embed(self, embedder: &mut impl EmbedderSource, times: &mut StageTimes) -> Result<AnalyzedImage> {
        let (faces, embedder_calls) =
            if self.needs_embedder() { embed::embed_prepared(self.faces, embedder.embedder()?, times)? } else { (Vec::new(), 0) };
        Ok(AnalyzedImage {
            width: self.width,
            height: self.height,
            format: self.format,
            orientation: self.orientation,
            rotation: self.rotation,
            faces,
            detector_calls: self.detector_calls,
            embedder_calls,
            passes: self.passes,
        })
    }
}

/// Decode -> detect -> align -> quality for one image's bytes: everything but SFace's run.
pub fn prepare(
    bytes: &[u8],
    decoders: &decode::Decoders,
    detector: &mut impl DetectorSource,
    params: &DetectParams,
    times: &mut StageTimes,
) -> Result<PreparedImage> {
    let t = StageClock::now();
    let mut frame = Frame::decode(bytes, decoders)?;
    times.decode += t.ms();

    let detector = detector.detector()?;
    let t = StageClock::now();
    let mut outcome = detect::detect(detector, &frame, params)?;
    // A photo without a clear face may be a sideways scan or a camera that wrote no EXIF
    // orientation (YuNet finds some faces lying on their side, weakly and with useless
    // landmarks): look again turned either way (faceswap's --rotate-images) and keep a turn
    // only if it shows faces clearly better.
    let upright = Evidence::of(&outcome.faces);
    // An upside-down face scores too (0.78-0.87 on the test portraits turned 180 degrees, against
    // 0.94-0.96 the right way up): a photo whose best face is not sure is also looked at turned
    // over, and kept turned only when that shows its faces surely better.
    let turns: &[u16] = if upright.clear == 0 {
        &[90, 180, 270]
    } else if upright.best_score < SURE_FACE {
        &[180]
    } else {
        &[]
    };
    let better = |e: &Evidence| {
        e.beats(&upright) || (upright.clear > 0 && e.clear >= upright.clear && e.best_score >= upright.best_score + TURNED_OVER_MARGIN)
    };
    if !turns.is_empty() {
        // Probe the turns on a small copy (one 640 px detector pass each, ~1/10 of a full
        // detection of a 12 MP photo, and no full-size rotation); only a turn that shows faces
        // clearly better is detected again at full resolution and kept if it still does.
        let (rgb, _) = frame.source_for(PROBE_SIDE)?;
        let scale = (PROBE_SIDE as f32 / rgb.width().max(rgb.height()).max(1) as f32).min(1.0);
        let side = |px: u32| ((px as f32 * scale).round() as u32).max(1);
        let probe = thumbnail::thumbnail(rgb, side(rgb.width()), side(rgb.height()));
        let probe_params = DetectParams { max_side: PROBE_SIDE, ..*params };
        let mut seen = Vec::with_capacity(turns.len());
        for &degrees in turns {
            let found = detect::detect_unrefined(detector, &Frame::from_image(rotate(&probe, degrees)), &probe_params)?;
            outcome.detector_calls += found.detector_calls;
            outcome.stats.add(&found.stats);
            seen.push((Evidence::of(&found.faces), degrees));
        }
        // A face the wrong way up can score too, so the turns compete with each other first.
        let best = seen.into_iter().max_by(|a, b| a.0.clear.cmp(&b.0.clear).then(a.0.best_score.total_cmp(&b.0.best_score)));
        if let Some((_, degrees)) = best.filter(|(evidence, _)| better(evidence)) {
            let turned = frame.turned(degrees);
            let found = detect::detect(detector, &turned, params)?;
            outcome.detector_calls += found.detector_calls;
            outcome.stats.add(&found.stats);
            if better(&Evidence::of(&found.faces)) {
                (frame, outcome.faces) = (turned, found.faces);
            }
        }
    }
    // A full-resolution decode a pass or a refinement asked for counts as decoding.
    let late_decode = frame.take_decode_ms();
    times.detect += t.ms() - late_decode;
    times.decode += late_decode;

    let faces = embed::prepare_faces(&frame, &outcome.faces, times)?;
    let (width, height) = frame.dimensions();
    Ok(PreparedImage {
        width,
        height,
        format: frame.format,
        orientation: frame.orientation,
        rotation: frame.rotation(),
        faces,
        detector_calls: outcome.detector_calls,
        passes: outcome.stats,
    })
}

/// How clearly a photo shows faces the right way up. Upright portraits score 0.92-0.95 with
/// YuNet; the same photos turned sideways gave 0.76 or nothing.
#[derive(Debug, Clone, Copy)]
struct Evidence {
    /// Faces scoring at least `CLEAR_FACE`.
    clear: usize,
    best_score: f32,
}

const CLEAR_FACE: f32 = 0.85;
/// A photo whose best face scores under this is also probed turned over (see `prepare`).
const SURE_FACE: f32 = 0.90;
/// How much better the best face must score turned over, with as many clear faces, to keep the
/// turn (the test portraits: +0.07 to +0.16).
const TURNED_OVER_MARGIN: f32 = 0.05;

/// Long side of the copy a photo without a clear face is probed on, turned either way.
const PROBE_SIDE: u32 = 640;

impl Evidence {
    fn of(faces: &[Detection]) -> Self {
        Self {
            clear: faces.iter().filter(|f| f.score >= CLEAR_FACE).count(),
            best_score: faces.iter().map(|f| f.score).fold(0.0, f32::max),
        }
    }

    /// More clear faces, or as many with a best score higher by a margin that noise between
    /// orientations does not reach.
    fn beats(&self, other: &Evidence) -> bool {
        self.clear > other.clear || (self.clear == other.clear && self.best_score > other.best_score + 0.1)
    }
}

/// The image turned clockwise by `degrees` (0, 90, 180 or 270; anything else leaves it as is).
pub fn rotate(image: &image::RgbImage, degrees: u16) -> image::RgbImage {
    match degrees {
        90 => image::imageops::rotate90(image),
        180 => image::imageops::rotate180(image),
        270 => image::imageops::rotate270(image),
        _ => image.clone(),
    }
}

/// A photo's frame the way indexing saw it (reduced decode, EXIF orientation, then turned by the
/// rotation stored for it), so stored faces are measured on the same pixels.
pub fn frame_as_indexed<'a>(bytes: &'a [u8], rotation: u16, decoders: &'a decode::Decoders) -> Result<Frame<'a>> {
    let frame = Frame::decode(bytes, decoders)?;
    Ok(if rotation == 0 { frame } else { frame.turned(rotation) })
}

/// Decodes a photo the way indexing saw it: EXIF orientation applied, then turned by the
/// rotation stored for it, so stored face coordinates apply.
pub fn decode_as_indexed(bytes: &[u8], rotation: u16, decoders: &decode::Decoders) -> Result<image::RgbImage> {
    let rgb = decoders.decode(bytes)?.rgb;
    Ok(if rotation == 0 { rgb } else { rotate(&rgb, rotation) })
}

/// The largest face (by box area), used for reference photos.
pub fn largest(faces: &[FaceRecord]) -> Option<&FaceRecord> {
    faces.iter().max_by(|a, b| area(&a.detection).total_cmp(&area(&b.detection)))
}

fn area(d: &Detection) -> f32 {
    d.w * d.h
}
