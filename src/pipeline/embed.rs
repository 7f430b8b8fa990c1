//! Align each detected face on the full-resolution image, embed it with SFace, and score it.

use std::time::Instant;

use anyhow::Result;

use super::detect::Detection;
use super::frame::{at_scale, Frame};
use super::quality::{self, Quality};
use super::{fingerprint, ms_since, StageTimes};
use crate::models::sface::align;
use crate::models::sface::{Embedding, SFace};

pub struct FaceRecord {
    pub detection: Detection,
    pub quality: Quality,
    /// `None` when the landmarks were degenerate and the face could not be aligned.
    pub embedding: Option<Embedding>,
    /// dHash of the aligned face (`fingerprint`), `None` with the embedding.
    pub face_hash: Option<u64>,
}

/// Aligns, embeds and scores `faces` (full-resolution coordinates), each on the reduced decode
/// when it is big enough there, else on the full-resolution region around it
/// (`Frame::source_for_face`).
pub fn embed_faces(frame: &Frame, faces: &[Detection], embedder: &mut SFace, times: &mut StageTimes) -> Result<(Vec<FaceRecord>, u32)> {
    let mut out = Vec::with_capacity(faces.len());
    let mut calls = 0;
    for face in faces {
        let t = Instant::now();
        let image = frame.source_for_face(face)?;
        times.decode += ms_since(t);
        let local = at_scale(face, image.factor);
        let t = Instant::now();
        let (embedding, face_hash) = match align::align(&image, &local.landmarks) {
            Some(aligned) => {
                calls += 1;
                (Some(embedder.embed(&aligned)?), Some(fingerprint::dhash(&aligned)))
            }
            None => (None, None),
        };
        times.align_embed += ms_since(t);
        let t = Instant::now();
        // Size in full-resolution pixels, whatever image the rest was measured on.
        let quality = Quality { size_px: face.w.min(face.h), ..quality::measure(&image, &local) };
        times.quality += ms_since(t);
        out.push(FaceRecord { detection: *face, quality, embedding, face_hash });
    }
    Ok((out, calls))
}
