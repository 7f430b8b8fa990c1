//! `facedb --version` (facedb, schema, ONNX Runtime, model hashes) and `facedb models install`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::{outln, Globals};
use crate::cli::{ModelsAction, ModelsArgs};
use crate::db::SCHEMA_VERSION;
use crate::models::runtime::{self, ModelFiles, ORT_LIB_FILE, ORT_VERSION, SFACE_FILE, YUNET_FILE};
use crate::pipeline::decode::Decoders;
use crate::pipeline::{heif, turbojpeg};

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
    let decoders = Decoders::new(runtime::models_dir(globals.models.as_deref()).as_deref());
    outln!("{}", decoders.describe_jpeg());
    match decoders.heif() {
        Ok(h) => outln!("HEIC/HEIF via libheif ({})", h.path().display()),
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
    // libheif for HEIC photos and libjpeg-turbo, where setup.sh put them (optional: without them
    // HEIC files are not read and JPEGs decode more slowly).
    for sub in [heif::HEIF_DIR, turbojpeg::TURBOJPEG_DIR] {
        let lib_src = from.join(sub);
        if !lib_src.is_dir() {
            continue;
        }
        let lib_dest = dest.join(sub);
        std::fs::create_dir_all(&lib_dest).with_context(|| format!("creating {}", lib_dest.display()))?;
        for entry in std::fs::read_dir(&lib_src)? {
            let src = entry?.path();
            let Some(name) = src.file_name().filter(|_| src.is_file()) else { continue };
            let tmp = lib_dest.join(format!("{}.part", name.to_string_lossy()));
            std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
            std::fs::rename(&tmp, lib_dest.join(name))?;
        }
    }
    // Verify what was installed loads the same way the binary will find it.
    let m = ModelFiles::locate(Some(&dest), runtime::Device::Cpu)?;
    outln!("installed to {}\ndetector blake3 {}\nembedder blake3 {}", dest.display(), m.detector_hash, m.embedder_hash);
    Ok(ExitCode::SUCCESS)
}
