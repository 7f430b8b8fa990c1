//! `facedb --version` (facedb, schema, ONNX Runtime, model hashes) and `facedb models install`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::{outln, Globals};
use crate::cli::{ModelsAction, ModelsArgs};
use crate::db::SCHEMA_VERSION;
use crate::models::runtime::{self, ModelFiles, ORT_LIB_FILE, ORT_VERSION, SFACE_FILE, YUNET_FILE};
use crate::pipeline::heif;

pub fn print(globals: &Globals) -> Result<()> {
    outln!("facedb {}", env!("CARGO_PKG_VERSION"));
    outln!("database schema {SCHEMA_VERSION}");
    match ModelFiles::locate(globals.models.as_deref(), globals.device) {
        Ok(m) => {
            outln!("ONNX Runtime {ORT_VERSION} ({})", m.ort_lib.display());
            outln!("detector {} blake3 {}", m.detector_name, m.detector_hash);
            outln!("embedder {} blake3 {}", m.embedder_name, m.embedder_hash);
            outln!("models in {}", m.dir.display());
        }
        Err(e) => {
            outln!("ONNX Runtime {ORT_VERSION} (expected as {ORT_LIB_FILE})");
            outln!("models: {e:#}");
        }
    }
    match heif::loaded_from() {
        Ok(path) => outln!("HEIC/HEIF via libheif ({})", path.display()),
        Err(e) => outln!("HEIC/HEIF: unavailable: {e:#}"),
    }
    Ok(())
}

pub fn models(_globals: &Globals, args: ModelsArgs) -> Result<ExitCode> {
    match args.action {
        ModelsAction::Install { from } => install(&from),
    }
}

fn install(from: &Path) -> Result<ExitCode> {
    let Some(data) = runtime::user_data_dir() else { bail!("cannot tell the user data folder: set HOME or XDG_DATA_HOME") };
    let dest = data.join("facedb").join("models");
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    for name in [YUNET_FILE, SFACE_FILE, ORT_LIB_FILE] {
        let src = from.join(name);
        if !src.is_file() {
            bail!("{} is missing; run scripts/setup.sh first or pass the folder holding {name}", src.display());
        }
        let tmp = dest.join(format!("{name}.part"));
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::rename(&tmp, dest.join(name))?;
    }
    // libheif for HEIC photos, where setup.sh put it (optional: only HEIC files need it).
    let heif_src = from.join(heif::HEIF_DIR);
    if heif_src.is_dir() {
        let heif_dest = dest.join(heif::HEIF_DIR);
        std::fs::create_dir_all(&heif_dest).with_context(|| format!("creating {}", heif_dest.display()))?;
        for entry in std::fs::read_dir(&heif_src)? {
            let src = entry?.path();
            let Some(name) = src.file_name().filter(|_| src.is_file()) else { continue };
            let tmp = heif_dest.join(format!("{}.part", name.to_string_lossy()));
            std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
            std::fs::rename(&tmp, heif_dest.join(name))?;
        }
    }
    // Verify what was installed loads the same way the binary will find it.
    let m = ModelFiles::locate(Some(&dest), runtime::Device::Cpu)?;
    outln!("installed to {}\ndetector blake3 {}\nembedder blake3 {}", dest.display(), m.detector_hash, m.embedder_hash);
    Ok(ExitCode::SUCCESS)
}
