//! One module per subcommand; `run` dispatches and returns the process exit code.

pub mod export;
pub mod find;
pub mod forget;
pub mod index;
pub mod info;
pub mod merge;
pub mod people;
pub mod people_sheet;
pub mod reject;
pub mod report;
pub mod review;
pub mod sql;
pub mod version;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Cli, Command};
use crate::db::{db_path, Db, DB_FILE};

/// `println!` that hands a write error back instead of panicking: with `| head` the pipe closes
/// early, and `main` ends such a run quietly with exit 0, as ripgrep does.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use outln;

/// Refuses an output folder `arg` (as the user gave it) inside a folder that is a symbolic
/// link: writing there would land somewhere else than the path says. (The output folder itself
/// being a link is `OutputDir::open`'s to refuse.)
pub fn refuse_linked_output(path: &Path, arg: &str) -> Result<()> {
    if let Some(link) = crate::output::linked_folder(path, Path::new("/")).filter(|link| link != path) {
        anyhow::bail!(
            "{arg} {}: {} is a symbolic link; facedb never writes through links: pass the real folder's path",
            crate::util::display_path(path),
            crate::util::display_path(&link)
        );
    }
    Ok(())
}

/// Exit codes: 0 ok, 1 some files failed, 2 usage or fatal error (clap also uses 2).
pub const EXIT_FILES_FAILED: u8 = 1;
pub const EXIT_INTERRUPTED: u8 = 130;

pub struct Globals {
    pub models: Option<PathBuf>,
    pub device: crate::models::runtime::Device,
    pub db: Option<PathBuf>,
    pub quiet: bool,
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let globals = Globals { models: cli.models, device: cli.device, db: cli.db, quiet: cli.quiet, json: cli.json };
    if cli.version {
        version::print(&globals)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = cli.command else {
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    match command {
        Command::Index(args) => index::run(&globals, args),
        Command::Match(args) => find::run(&globals, args),
        Command::Merge(args) => merge::run(&globals, args),
        Command::Report(args) => report::run(&globals, args),
        Command::Info(args) => info::run(&globals, args),
        Command::Reject(args) => reject::run(&globals, args),
        Command::Review(args) => review::run(&globals, args),
        Command::People(args) => people::run(&globals, args),
        Command::Forget(args) => forget::run(&globals, args),
        Command::Export(args) => export::run(&globals, args),
        Command::Sql(args) => sql::run(&globals, args),
        Command::Models(args) => version::models(&globals, args),
        Command::Completions { shell } => {
            // Rendered to memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "facedb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The dataset directory: `dir` if given (or the dataset holding it), else the nearest ancestor
/// of the current directory holding a facedb.sqlite. Only `index` makes a database; every other
/// command refuses a folder without one, so a typo or a subfolder never gets an empty database.
pub fn find_dataset(globals: &Globals, dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        if !d.is_dir() {
            bail!("{} is not a directory", d.display());
        }
        let root = d.canonicalize().with_context(|| format!("resolving {}", d.display()))?;
        return dataset_holding_dir(globals, d, root);
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for ancestor in cwd.ancestors() {
        if ancestor.join(DB_FILE).is_file() {
            return Ok(ancestor.to_path_buf());
        }
    }
    bail!(
        "no {DB_FILE} in {} or any parent; pass the dataset folder (`DIR` for index, match, people, report, review, export xmp, sql; `--dir DIR` for people name|merge|move|split|sheet, info, reject, forget, export parquet), run from inside it, or run `facedb index DIR` first",
        cwd.display()
    )
}

/// A folder given on the command line: its own database (or `--db`), else the dataset it lies
/// inside (as `index` does for a subfolder), else a refusal that creates nothing.
fn dataset_holding_dir(globals: &Globals, given: &Path, root: PathBuf) -> Result<PathBuf> {
    if globals.db.is_some() || root.join(DB_FILE).exists() {
        return Ok(root);
    }
    let Some(dataset) = root.ancestors().skip(1).find(|a| crate::db::is_facedb_database(&a.join(DB_FILE))) else {
        bail!("no database at {}; run `facedb index {}` first", root.join(DB_FILE).display(), given.display());
    };
    if !globals.quiet {
        eprintln!(
            "facedb: {} is inside the dataset {}; using its database {} (the whole dataset)",
            root.display(),
            dataset.display(),
            dataset.join(DB_FILE).display()
        );
    }
    Ok(dataset.to_path_buf())
}

pub fn database_path(globals: &Globals, dataset: &Path) -> PathBuf {
    globals.db.clone().unwrap_or_else(|| db_path(dataset))
}

/// Opens the dataset's database (read-only or for writing) and warns when it was made for
/// another folder.
pub fn open_database(globals: &Globals, root: &Path, write: bool) -> Result<Db> {
    let path = database_path(globals, root);
    // `Db::open` would create the file: only `index` may make a database.
    if !path.exists() {
        bail!("no database at {}; run `facedb index {}` first", path.display(), root.display());
    }
    let db = if write { Db::open(&path)? } else { Db::open_read_only(&path)? };
    if let Some(warning) = db.check_dataset(root, &path)? {
        if !globals.quiet {
            eprintln!("{warning}");
        }
    }
    Ok(db)
}

/// Progress: a bar with rate and ETA on a terminal, a plain line every 10 s otherwise (logs,
/// CI), nothing with --quiet.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<std::sync::Mutex<(std::time::Instant, u64)>>,
    started: std::time::Instant,
    total: u64,
    what: &'static str,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(state) = &self.plain {
            let Ok(mut s) = state.lock() else { return };
            s.1 += n;
            if s.0.elapsed() >= Duration::from_secs(10) {
                s.0 = std::time::Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                let rate = s.1 as f64 / secs.max(1e-9);
                let eta = (self.total.saturating_sub(s.1)) as f64 / rate.max(1e-9);
                eprintln!("{}: {}/{} ({rate:.1}/s, ETA {eta:.0} s)", self.what, s.1, self.total);
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn progress(len: u64, quiet: bool, what: &'static str) -> Progress {
    let terminal = std::io::stderr().is_terminal();
    let bar = if quiet || !terminal {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
        if let Ok(style) = ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{wide_msg}}"))
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    let now = std::time::Instant::now();
    Progress { bar, plain: (!quiet && !terminal).then(|| std::sync::Mutex::new((now, 0))), started: now, total: len, what }
}
