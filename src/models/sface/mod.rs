//! The SFace embedder: five-point alignment to its 112x112 template ([`align`]), the session,
//! and its output as an L2-normalised 128-d vector.

pub mod align;

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, ensure, Result};
use ort::session::Session;
use ort::value::Tensor;

use align::{AlignedFace, ALIGNED_SIZE};

pub const EMBEDDING_DIM: usize = 128;
pub type Embedding = [f32; EMBEDDING_DIM];

/// A handle on one SFace session; clones share it (`Models::embedder`), each run taking its turn.
#[derive(Clone)]
pub struct SFace {
    session: Arc<Mutex<Session>>,
    /// Time this handle waited for another to finish its run (for `FACEDB_TIMINGS`).
    waited: std::time::Duration,
}

impl SFace {
    /// The width of every vector this model writes.
    pub const DIM: usize = EMBEDDING_DIM;

    pub fn new(session: Session) -> Result<Self> {
        ensure!(session.inputs().iter().any(|i| i.name() == "data"), "SFace model lacks input 'data'; is it the right file?");
        Ok(Self { session: Arc::new(Mutex::new(session)), waited: std::time::Duration::ZERO })
    }

    /// Embeds one aligned face. The graph normalises pixels itself; it wants RGB 0..255, NCHW.
    pub fn embed(&mut self, face: &AlignedFace) -> Result<Embedding> {
        let plane = ALIGNED_SIZE * ALIGNED_SIZE;
        let mut input = vec![0f32; 3 * plane];
        for (i, px) in face.rgb.chunks_exact(3).enumerate() {
            input[i] = f32::from(px[0]);
            input[plane + i] = f32::from(px[1]);
            input[2 * plane + i] = f32::from(px[2]);
        }
        let side = ALIGNED_SIZE as i64;
        let tensor = Tensor::from_array((vec![1i64, 3, side, side], input)).map_err(|e| anyhow!("SFace input: {e}"))?;
        // A poisoned lock only means another worker's run panicked; the session is not changed by a run.
        let t = std::time::Instant::now();
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        self.waited += t.elapsed();
        let outputs = session.run(ort::inputs!["data" => tensor]).map_err(|e| anyhow!("SFace inference: {e}"))?;
        let (_, data) = outputs["fc1"].try_extract_tensor::<f32>().map_err(|e| anyhow!("SFace output: {e}"))?;
        ensure!(data.len() == EMBEDDING_DIM, "SFace output has {} values, expected {EMBEDDING_DIM}", data.len());
        let mut v = [0f32; EMBEDDING_DIM];
        v.copy_from_slice(data);
        normalize(&mut v);
        Ok(v)
    }
}

impl SFace {
    /// Time this handle has waited for the shared session so far.
    pub fn waited(&self) -> std::time::Duration {
        self.waited
    }
}

pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
