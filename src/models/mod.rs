//! The models and the ONNX Runtime library: where they are found, how they are identified, and
//! one wrapper per model. Everything else receives loaded sessions.

pub mod patch;
pub mod runtime;
pub mod sface;
pub mod yunet;

pub use runtime::{ModelFiles, Models};
