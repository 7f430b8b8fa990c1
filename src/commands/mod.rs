//! One module per subcommand; `run` dispatches and returns the process exit code.

pub mod find;
pub mod index;
pub mod info;
pub mod report;
pub mod sql;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Cli, Command};
use crate::db::{db_path, DB_FILE};

/// Exit codes: 0 ok, 1 some files failed, 2 usage or fatal error (clap also uses 2).
pub const EXIT_FILES_FAILED: u8 = 1;
pub const EXIT_INTERRUPTED: u8 = 130;

pub struct Globals {
    pub models: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub quiet: bool,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let globals = Globals {
        models: cli.models,
        db: cli.db,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Index(args) => index::run(&globals, args),
        Command::Match(args) => find::run(&globals, args),
        Command::Report(args) => report::run(&globals, args),
        Command::Info(args) => info::run(&globals, args),
        Command::Sql(args) => sql::run(&globals, args),
    }
}

/// The dataset directory: `dir` if given, else the nearest ancestor of the current directory
/// holding a facedb.sqlite.
pub fn find_dataset(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        if !d.is_dir() {
            bail!("{} is not a directory", d.display());
        }
        return d
            .canonicalize()
            .with_context(|| format!("resolving {}", d.display()));
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for ancestor in cwd.ancestors() {
        if ancestor.join(DB_FILE).is_file() {
            return Ok(ancestor.to_path_buf());
        }
    }
    bail!("no {DB_FILE} in {} or any parent; pass the dataset folder, or run `facedb index DIR` first", cwd.display())
}

pub fn database_path(globals: &Globals, dataset: &Path) -> PathBuf {
    globals.db.clone().unwrap_or_else(|| db_path(dataset))
}

/// A progress bar with rate and ETA on a terminal; hidden otherwise or with --quiet.
pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{wide_msg}}"
    )) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
