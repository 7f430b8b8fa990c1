//! Locating the model files and the ONNX Runtime library, and creating per-worker sessions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::{patch, sface::SFace, yunet::YuNet};

pub const YUNET_FILE: &str = "face_detection_yunet_2023mar_int8bq.onnx";
pub const SFACE_FILE: &str = "face_recognition_sface_2021dec_int8bq.onnx";
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.31.1";
pub const ORT_VERSION: &str = "1.31.1";
/// Environment variable naming the models directory (same as `--models`).
pub const MODELS_ENV: &str = "FACEDB_MODELS";
/// Environment variable naming the ONNX Runtime library file, overriding `<models>/libonnxruntime…`.
pub const ORT_LIB_ENV: &str = "FACEDB_ORT_LIB";

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// NVIDIA GPU through ONNX Runtime's CUDA execution provider.
    Cuda,
}

/// Sub-folder of the models folder holding ONNX Runtime's GPU build (`scripts/setup.sh --gpu`).
pub const CUDA_DIR: &str = "cuda";

/// Says once per process that CUDA is not used, and why.
fn warn_cpu_fallback(why: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("facedb: --device cuda: {why}; running on the CPU instead"));
}

/// The files on disk and their identities (blake3 of the file as shipped, before any patch).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub ort_lib: PathBuf,
    /// The device asked for, after falling back to the CPU when the GPU build is missing.
    pub device: Device,
    pub detector_name: String,
    pub detector_hash: String,
    pub embedder_name: String,
    pub embedder_hash: String,
    detector_bytes: Vec<u8>,
    /// The SFace file as read for its hash, until `load` takes it: its session is made once, and
    /// holding the bytes for the whole run (twice, before) kept ~21 MB resident.
    embedder_bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

/// Directories searched for models, in order, when neither `--models` nor `FACEDB_MODELS` is set:
/// `./models`, `models/` beside any ancestor of the executable (a repo checkout's
/// `target/release/facedb`), and the user data directory (`~/.local/share/facedb/models`).
pub fn default_model_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("models")];
    if let Ok(exe) = std::env::current_exe() {
        for ancestor in exe.ancestors().skip(1) {
            dirs.push(ancestor.join("models"));
        }
    }
    if let Some(data) = user_data_dir() {
        dirs.push(data.join("facedb").join("models"));
    }
    dirs
}

pub fn user_data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share"))
}

/// The models folder `locate` would use, without reading the models (`None` if there is none).
pub fn models_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(dir) => Some(dir.to_path_buf()),
        None => default_model_dirs().into_iter().find(|d| d.join(YUNET_FILE).is_file() && d.join(SFACE_FILE).is_file()),
    }
}

impl ModelFiles {
    /// Finds and reads the model files. `explicit` comes from `--models` / `FACEDB_MODELS`.
    pub fn locate(explicit: Option<&Path>, device: Device) -> Result<Self> {
        let dir = match explicit {
            Some(dir) => {
                if !dir.join(YUNET_FILE).is_file() || !dir.join(SFACE_FILE).is_file() {
                    bail!(
                        "models not found in {}: expected {YUNET_FILE} and {SFACE_FILE}; run scripts/setup.sh or point --models at the folder holding them",
                        dir.display()
                    );
                }
                dir.to_path_buf()
            }
            None => {
                let candidates = default_model_dirs();
                candidates.iter().find(|d| d.join(YUNET_FILE).is_file() && d.join(SFACE_FILE).is_file()).cloned().ok_or_else(|| {
                    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
                    anyhow!(
                        "models not found (looked in {}); run scripts/setup.sh, or pass --models DIR / set {MODELS_ENV}",
                        looked.join(", ")
                    )
                })?
            }
        };
        let gpu_lib = dir.join(CUDA_DIR).join(ORT_LIB_FILE);
        let (ort_lib, device) = match (std::env::var_os(ORT_LIB_ENV).filter(|v| !v.is_empty()), device) {
            (Some(p), device) => (PathBuf::from(p), device),
            (None, Device::Cuda) if gpu_lib.is_file() => (gpu_lib, Device::Cuda),
            (None, Device::Cuda) => {
                warn_cpu_fallback(&format!(
                    "ONNX Runtime's GPU build is not installed ({} is missing; run `scripts/setup.sh --gpu` or set {ORT_LIB_ENV} to onnxruntime-gpu's library)",
                    gpu_lib.display()
                ));
                (dir.join(ORT_LIB_FILE), Device::Cpu)
            }
            (None, Device::Cpu) => (dir.join(ORT_LIB_FILE), Device::Cpu),
        };
        let read = |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("reading model {}", dir.join(name).display()));
        let detector_bytes = read(YUNET_FILE)?;
        let embedder_bytes = read(SFACE_FILE)?;
        Ok(Self {
            detector_hash: blake3::hash(&detector_bytes).to_hex().to_string(),
            embedder_hash: blake3::hash(&embedder_bytes).to_hex().to_string(),
            detector_name: YUNET_FILE.trim_end_matches(".onnx").to_string(),
            embedder_name: SFACE_FILE.trim_end_matches(".onnx").to_string(),
            dir,
            ort_lib,
            device,
            detector_bytes,
            embedder_bytes: Arc::new(Mutex::new(Some(embedder_bytes))),
        })
    }

    /// Loads the runtime (once per process) and prepares the model bytes for session creation.
    pub fn load(&self) -> Result<Models> {
        let env = environment(&self.ort_lib)?;
        let (detector, _patched_nodes) = patch::patch_yunet(&self.detector_bytes)
            .with_context(|| format!("reading {} as an ONNX model", self.dir.join(YUNET_FILE).display()))?;
        let taken = self.embedder_bytes.lock().unwrap_or_else(|p| p.into_inner()).take();
        let embedder = match taken {
            Some(bytes) => bytes,
            None => self.read_again(SFACE_FILE, &self.embedder_hash)?,
        };
        Ok(Models { dir: self.dir.clone(), env, detector, device: self.device, embedder: Mutex::new(Embedder::Bytes(embedder)) })
    }

    /// A model file read again (a second `load`), refused unless it is still the file whose hash
    /// this run records.
    fn read_again(&self, name: &str, hash: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading model {}", path.display()))?;
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            bail!("{} changed while facedb was running; run the command again", path.display());
        }
        Ok(bytes)
    }
}

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

fn environment(lib: &Path) -> Result<Environment> {
    ENV.get_or_init(|| {
        if !lib.is_file() {
            return Err(format!("ONNX Runtime library not found at {}; run scripts/setup.sh or set {ORT_LIB_ENV}", lib.display()));
        }
        let builder = ort::init_from(lib).map_err(|e| format!("loading ONNX Runtime from {}: {e}", lib.display()))?;
        builder.with_name("facedb").build().map_err(|e| format!("starting ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Model bytes ready to become sessions; cheap to share across worker threads.
pub struct Models {
    dir: PathBuf,
    env: Environment,
    detector: Vec<u8>,
    device: Device,
    /// The one SFace session every worker embeds with (see `embedder`), or the bytes it is made
    /// from until then.
    embedder: Mutex<Embedder>,
}

enum Embedder {
    Bytes(Vec<u8>),
    Made(SFace),
}

impl Models {
    fn session(&self, bytes: &[u8], what: &str) -> Result<Session> {
        if self.device == Device::Cuda {
            // TF32 off: GPU embeddings then agree with CPU ones to float rounding, so one
            // database can mix runs from both.
            // Heuristic convolution algorithms: with ORT's default exhaustive search, detection
            // ran at 0.43 photos/s on an H100 against 3.4 with this (one worker, 12 MP photos).
            let cuda = ort::ep::CUDA::default()
                .with_tf32(false)
                .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                .build()
                .error_on_failure();
            let gpu = self.builder(what)?.with_execution_providers([cuda]).map_err(|e| anyhow!("{e}"));
            match gpu.and_then(|mut b| b.commit_from_memory(bytes).map_err(|e| anyhow!("{e}"))) {
                Ok(session) => return Ok(session),
                Err(e) => warn_cpu_fallback(&format!(
                    "CUDA could not start ({}); the CUDA 13 and cuDNN 9 libraries must be findable (e.g. LD_LIBRARY_PATH)",
                    e.to_string().trim()
                )),
            }
        }
        let mut builder = self.builder(what)?;
        builder.commit_from_memory(bytes).map_err(|err| {
            anyhow!(
                "loading {what}: {}; the file may be damaged: run scripts/setup.sh again (it checks every sha256)",
                err.to_string().trim_end_matches('.')
            )
        })
    }

    /// Session options shared by every device.
    fn builder(&self, what: &str) -> Result<ort::session::builder::SessionBuilder> {
        // One intra-op thread per session: parallelism comes from one worker per core, and ORT's
        // spinning pool threads slow down badly when oversubscribed.
        let e = |err: ort::Error<_>| anyhow!("creating {what} session: {err}");
        let builder = Session::builder(&self.env)
            .map_err(|err| anyhow!("creating {what} session: {err}"))?
            .with_intra_threads(1)
            .map_err(e)?
            .with_inter_threads(1)
            .map_err(|err| anyhow!("creating {what} session: {err}"))?
            .with_intra_op_spinning(false)
            .map_err(|err| anyhow!("creating {what} session: {err}"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|err| anyhow!("creating {what} session: {err}"))?
            // Both models are int8 with DequantizeLinear on constant weights. Without the QDQ
            // transformers ORT folds those into f32 weights at load time: measured here, YuNet
            // 22 -> 15 ms at 640x480 and SFace 45 -> 32 ms per face, embeddings unchanged
            // (tests/it/opencv_parity.rs).
            .with_config_entry("session.disable_quant_qdq", "1")
            .map_err(|err| anyhow!("creating {what} session: {err}"))?
            // Memory patterns are planned per input shape and kept; photos come in many shapes.
            // Off: index peak RSS 558 -> 456 MiB with 2 workers, same speed. The CPU arena keeps
            // its chunks between runs; giving them back after each YuNet run (run option
            // `memory.enable_memory_arena_shrinkage`) took peak RSS 318 -> 280 MiB but cost 20 %
            // more CPU (the chunks are mapped and faulted in again every run), and the arena off
            // twice the system time (a mmap per tensor).
            .with_memory_pattern(false)
            .map_err(|err| anyhow!("creating {what} session: {err}"))?;
        Ok(builder)
    }

    pub fn detector(&self) -> Result<YuNet> {
        YuNet::new(self.session(&self.detector, &format!("YuNet detector {}", self.dir.join(YUNET_FILE).display()))?)
    }

    /// One SFace session for the process, made on first use: each session holds its own f32
    /// copy of the weights (~38 MB). Index of 20 photos, 2 workers: peak RSS 377 -> 317-319 MiB,
    /// CPU time 4.5-4.6 -> 4.0-4.2 s, per-photo embed time unchanged. `index` runs it on one
    /// embedder thread (workers redoing stored faces take turns on it too).
    pub fn embedder(&self) -> Result<SFace> {
        let mut shared = self.embedder.lock().unwrap_or_else(|p| p.into_inner());
        let sface = match &*shared {
            Embedder::Made(sface) => return Ok(sface.clone()),
            Embedder::Bytes(bytes) => SFace::new(self.session(bytes, &format!("SFace embedder {}", self.dir.join(SFACE_FILE).display()))?)?,
        };
        // The bytes are not needed again.
        *shared = Embedder::Made(sface.clone());
        Ok(sface)
    }
}

/// Models being loaded on a thread of their own (`ModelFiles::load`, then the shared SFace
/// session): the workers read, hash and decode their first photos meanwhile, and wait only when
/// a photo needs a model ([`LazyDetector`], [`LazyEmbedder`]).
#[derive(Default)]
pub struct Loading(OnceLock<std::result::Result<Models, String>>);

impl Loading {
    pub fn set(&self, loaded: Result<Models>) {
        let _ = self.0.set(loaded.map_err(|e| format!("{e:#}")));
    }

    /// The models once loaded, or why they could not be.
    pub fn wait(&self) -> Result<&Models> {
        self.0.wait().as_ref().map_err(|why| anyhow!("{why}"))
    }

    /// A worker's detector session, made when its first photo is decoded.
    pub fn detector(&self) -> LazyDetector<'_> {
        LazyDetector { loading: self, yunet: None, waited: Default::default(), failed: None }
    }

    /// The shared embedder for a worker, fetched at its first face.
    pub fn embedder(&self) -> LazyEmbedder<'_> {
        LazyEmbedder { loading: self, sface: None, waited: Default::default(), failed: None }
    }
}

/// Time spent waiting for a model and making its session (the first fetch), for `FACEDB_TIMINGS`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    pub loading: std::time::Duration,
    pub session: std::time::Duration,
}

/// A worker's own YuNet session, made on first use. A failure to make it is no photo's fault:
/// [`LazyDetector::failed`] says why, and the caller stops the run with it.
pub struct LazyDetector<'a> {
    loading: &'a Loading,
    yunet: Option<YuNet>,
    waited: Fetched,
    failed: Option<String>,
}

impl LazyDetector<'_> {
    pub fn fetched(&self) -> (Fetched, Option<&YuNet>) {
        (self.waited, self.yunet.as_ref())
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

impl crate::pipeline::DetectorSource for LazyDetector<'_> {
    fn detector(&mut self) -> Result<&mut YuNet> {
        let yunet = match self.yunet.take() {
            Some(yunet) => yunet,
            None => fetch(self.loading, &mut self.waited, &mut self.failed, Models::detector)?,
        };
        Ok(self.yunet.insert(yunet))
    }
}

/// The shared SFace session, fetched when the first face is to be embedded: making it costs
/// ~0.1 s of CPU (its int8 weights folded to f32), which the loading thread spends while the
/// workers decode and detect their first photos. A failure to make it is no photo's fault:
/// [`LazyEmbedder::failed`] says why, and the caller stops the run with it.
pub struct LazyEmbedder<'a> {
    loading: &'a Loading,
    sface: Option<SFace>,
    waited: Fetched,
    failed: Option<String>,
}

impl LazyEmbedder<'_> {
    /// Time spent fetching the session, and then waiting for other workers' runs on it.
    pub fn fetched(&self) -> (Fetched, std::time::Duration) {
        (self.waited, self.sface.as_ref().map_or(std::time::Duration::ZERO, SFace::waited))
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

impl crate::pipeline::EmbedderSource for LazyEmbedder<'_> {
    fn embedder(&mut self) -> Result<&mut SFace> {
        let sface = match self.sface.take() {
            Some(sface) => sface,
            // Waits for the loading thread, which holds `Models::embedder`'s lock while making it.
            None => fetch(self.loading, &mut self.waited, &mut self.failed, Models::embedder)?,
        };
        Ok(self.sface.insert(sface))
    }
}

/// Waits for the models and makes (or fetches) a session with `make`, timing both and keeping
/// the reason of a failure.
fn fetch<T>(loading: &Loading, waited: &mut Fetched, failed: &mut Option<String>, make: impl FnOnce(&Models) -> Result<T>) -> Result<T> {
    let t = std::time::Instant::now();
    let made = loading.wait().and_then(|models| {
        waited.loading = t.elapsed();
        make(models)
    });
    waited.session = t.elapsed() - waited.loading;
    made.inspect_err(|e| *failed = Some(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    mod needs_models {
        use super::super::*;

        /// The models folder of this checkout, copied so the test can swap a file.
        fn copied_models() -> tempfile::TempDir {
            let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
            let dir = tempfile::tempdir().unwrap();
            for name in [YUNET_FILE, SFACE_FILE, ORT_LIB_FILE] {
                std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
            }
            dir
        }

        #[test]
        fn a_second_load_reads_the_embedder_again_and_refuses_a_swapped_file() {
            let dir = copied_models();
            let files = ModelFiles::locate(Some(dir.path()), Device::Cpu).unwrap();
            let first = files.load().unwrap();
            first.embedder().unwrap();
            // The bytes went to the first load; the second reads the same file again.
            files.load().unwrap().embedder().unwrap();
            let sface = dir.path().join(SFACE_FILE);
            let mut bytes = std::fs::read(&sface).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&sface, bytes).unwrap();
            let err = files.load().err().expect("a swapped model file was loaded").to_string();
            assert!(err.contains(SFACE_FILE) && err.contains("changed while facedb was running"), "{err}");
        }
    }
}
