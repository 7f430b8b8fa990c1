//! `facedb export xmp|parquet`: read-only views of the database handed to other tools (the XMP
//! sidecar ledger aside, which records what facedb wrote so it never overwrites anyone else's).

mod parquet;
pub mod xmp;

use std::process::ExitCode;

use anyhow::Result;

use super::Globals;
use crate::cli::{ExportArgs, ExportFormat};

pub fn run(globals: &Globals, args: ExportArgs) -> Result<ExitCode> {
    match args.format {
        ExportFormat::Xmp(a) => xmp::run(globals, a),
        ExportFormat::Parquet(a) => parquet::run(globals, a),
    }
}
