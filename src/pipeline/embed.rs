//! Align each detected face on the full-resolution image, score it, and embed it with SFace.
//! Split in two so the embedding can run on another thread than the rest ([`prepare_faces`]
//! needs the frame; [`embed_prepared`] only the aligned faces and the session).

use anyhow::Result;

use super::detect::Detection;
use super::frame::{at_scale, Frame};
use super::quality::{self, Quality};
use super::{fingerprint, StageClock, StageTimes};
use crate::models::sface::align::{self, AlignedFace};
use crate::models::sface::{Embedding, SFace};

pub struct FaceRecord {
    pub detection: Detection,
    pub quality: Quality,
    /// `None` when the landmarks were degenerate and the face could not be aligned.
    pub embedding: Option<Embedding>,
    /// dHash of the aligned face (`fingerprint`), `None` with the embedding.
    pub face_hash: Option<u64>,
}

/// A face aligned, hashed and scored, waiting for its embedding.
pub struct PreparedFace {
    pub detection: Detection,
    pub quality: Quality,
    /// `None` when the landmarks were degenerate and the face could not be aligned.
    pub aligned: Option<AlignedFace>,
    pub face_hash: Option<u64>,
}

/// Aligns, hashes and scores `faces` (full-resolution coordinates), each on the reduced decode
/// when it is big enough there, else on the full-resolution region around it
/// (`Frame::source_for_face`).
pub fn prepare_faces(frame: &Frame, faces: &[Detection], times: &mut StageTimes) -> Result<Vec<PreparedFace>> {
    let mut out = Vec::with_capacity(faces.len());
    for face in faces {
        let t = StageClock::now();
        let image = frame.source_for_face(face)?;
        times.decode += t.ms();
        let local = at_scale(face, image.factor);
        let t = StageClock::now();
        let aligned = align::align(&image, &local.landmarks);
        let face_hash = aligned.as_ref().map(fingerprint::dhash);
        times.align_embed += t.ms();
        let t = StageClock::now();
        // Size in full-resolution pixels, whatever image the rest was measured on.
        let quality = Quality { size_px: face.w.min(face.h), ..quality::measure(&image, &local) };
        times.quality += t.ms();
        out.push(PreparedFace { detection: *face, quality, aligned, face_hash });
    }
    Ok(out)
}

/// Embeds the aligned faces (their time counts as `align_embed`); returns the records and the
/// number of embedder calls.
pub fn embed_prepared(faces: Vec<PreparedFace>, embedder: &mut SFace, times: &mut StageTimes) -> Result<(Vec<FaceRecord>, u32)> {
    let t = StageClock::now();
    let mut calls = 0;
    let mut out = Vec::with_capacity(faces.len());
    for PreparedFace { detection, quality, aligned, face_hash } in faces {
        let embedding = match aligned {
            Some(aligned) => {
                calls += 1;
                Some(embedder.embed(&aligned)?)
            }
            None => None,
        };
        out.push(FaceRecord { detection, quality, embedding, face_hash });
    }
    times.align_embed += t.ms();
    Ok((out, calls))
}

/// Aligns, scores and embeds `faces` on this thread ([`prepare_faces`], then [`embed_prepared`]).
pub fn embed_faces(frame: &Frame, faces: &[Detection], embedder: &mut SFace, times: &mut StageTimes) -> Result<(Vec<FaceRecord>, u32)> {
    embed_prepared(prepare_faces(frame, faces, times)?, embedder, times)
}
