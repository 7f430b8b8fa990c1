//! `facedb match`: references (embedded once, cached by content hash) -> one scan of stored
//! embeddings -> a decision per photo -> crops, manifests and stored results.
//! (Named `find` because `match` is a Rust keyword.)
//!
//! [`run`] reads as the steps in order; each lives in its own module: [`references`], [`decide`],
//! [`output`] (crops and manifests), [`record`] (the run's rows) and [`summary`] (what is printed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use super::{database_path, find_dataset, progress, Globals};
use crate::cli::MatchArgs;
use crate::crop::CropSpec;
use crate::db::{read, write, Db, Embedder, ModelId, RunId, RunStatus};
use crate::matching::Filters;
use crate::models::sface::SFace;
use crate::models::{runtime::ORT_VERSION, ModelFiles};
use crate::output::{OutputDir, Owner};
use crate::pipeline::decode::Decoders;
use crate::pipeline::detect::DetectParams;
use crate::util::display_path;

mod best;
mod curation;
mod decide;
pub(crate) mod layout;
mod output;
mod record;
mod references;
mod summary;

pub use decide::NEAR_MISS_BAND;
pub use layout::{LayoutKind, METADATA_JSONL};
pub use output::{MANIFEST_COLUMNS, REJECTED_COLUMNS};
pub use references::face_ref;

pub const MANIFEST_CSV: &str = "manifest.csv";
pub const MANIFEST_JSONL: &str = "manifest.jsonl";
pub const REJECTED_CSV: &str = "rejected.csv";

pub fn run(globals: &Globals, args: MatchArgs) -> Result<ExitCode> {
    let mut ctx = Ctx::new(globals, args)?;
    let (db, _scratch) = open_database(&ctx.db_file, ctx.args.dry_run)?;
    // One transaction for the whole run: a crash leaves no half-recorded match, and --dry-run
    // simply rolls it back, so it writes nothing.
    let tx = db.conn.unchecked_transaction()?;
    super::people::add_person_refs(&tx, &mut ctx.args)?;
    let ids = ctx.begin_run(&tx)?;
    let refs = references::load(&tx, &ctx, &ids)?;
    // The output folder is taken before deciding: crops the user deleted from it are rejections
    // this run must already respect. --dry-run writes nothing and takes no folder.
    let out = if ctx.args.dry_run { None } else { Some(ctx.open_output(&tx)?) };
    let decided = decide::decide(&tx, &ctx, &ids, &refs, out.as_ref())?;
    let Some(out) = out else {
        summary::dry_run(&tx, &ctx, &decided)?;
        drop(tx); // rolled back: nothing written
        return Ok(ExitCode::SUCCESS);
    };
    // Check every name this run writes before anything is written (or committed): a refusal
    // leaves the folder and the database as they were. Crops the user edited are theirs: kept.
    let plan = output::Plan::new(&tx, &ctx, &out, &decided)?;
    // Commit the run row and any new references now: cropping can take minutes and must not
    // hold the write lock that a concurrent `index` needs. The results go in one transaction below.
    tx.commit()?;
    let mut run_guard = write::RunGuard::new(&db.conn, ids.run_id);
    record_interrupt(&ctx.db_file, ids.run_id);
    let bar = progress(plan.to_crop.len() as u64, globals.quiet, "cropping");
    let crops = plan.crop(&ctx, &out, &bar);
    bar.finish();

    let done = record::Outcome { ctx: &ctx, ids: &ids, refs: &refs, decided: &decided, plan: &plan, crops: &crops };
    let tx = db.conn.unchecked_transaction()?;
    let tally = done.record_results(&tx, &out)?;
    let curation = done.finish_folder(out)?;
    done.finish_run(&tx, &tally, &curation)?;
    tx.commit()?;
    run_guard.finished();
    summary::print(&done, &tally, &curation)?;
    Ok(if tally.crop_failures > 0 { ExitCode::from(super::EXIT_FILES_FAILED) } else { ExitCode::SUCCESS })
}

/// What every step of one match reads: the arguments and where the dataset, its database and
/// the output folder are.
struct Ctx<'g> {
    globals: &'g Globals,
    args: MatchArgs,
    root: PathBuf,
    db_file: PathBuf,
    out_dir: PathBuf,
    spec: CropSpec,
    filters: Filters,
    /// The decoders `index` uses (libjpeg-turbo from the models folder when present).
    decoders: Decoders,
    started: Instant,
}

/// The run's row and the models it uses.
struct RunIds {
    files: ModelFiles,
    detector_id: ModelId,
    embedder: Embedder,
    run_id: RunId,
}

impl<'g> Ctx<'g> {
    fn new(globals: &'g Globals, mut args: MatchArgs) -> Result<Self> {
        let started = Instant::now();
        // --list is a dry run that prints the decisions instead of the histogram.
        args.dry_run |= args.list;
        if args.layout == LayoutKind::Plain && (args.token.is_some() || args.caption.is_some()) {
            bail!("--token and --caption name the person for a trainer; add --layout kohya or --layout imagefolder (the plain layout writes no captions)");
        }
        let root = find_dataset(globals, args.dir.as_deref())?;
        let db_file = database_path(globals, &root);
        if !db_file.is_file() {
            bail!("no database at {}; run `facedb index {}` first", display_path(&db_file), display_path(&root));
        }
        // Stored absolute: `forget` and `review` find the crops from any working directory.
        if let Some(out) = &args.out {
            crate::commands::refuse_linked_output(out, "--out")?;
        }
        let out_dir = match &args.out {
            Some(out) => std::path::absolute(out).with_context(|| format!("--out {}: cannot tell where it is", display_path(out)))?,
            None => root.join("facedb-crops"),
        };
        let spec =
            CropSpec { margin: args.margin, square: args.square, size: args.size, upscale: args.upscale, align: args.align, pad: args.pad };
        let filters =
            Filters { min_face: args.min_face, min_sharpness: args.min_sharpness, max_yaw: args.max_yaw, min_score: args.min_score };
        let decoders = Decoders::new(crate::models::runtime::models_dir(globals.models.as_deref()).as_deref());
        Ok(Self { globals, args, root, db_file, out_dir, spec, filters, decoders, started })
    }

    /// Registers the models, refuses a database with no embedding from the embedder in use,
    /// and records the run.
    fn begin_run(&self, conn: &Connection) -> Result<RunIds> {
        let files = ModelFiles::locate(self.globals.models.as_deref(), self.globals.device)?;
        let (detector_id, embedder_id) = super::index::register_models(conn, &files, &DetectParams::default(), &self.decoders)?;
        if !self.args.refs.is_empty() || !self.args.all {
            check_embeddings(conn, &files, embedder_id, &self.root)?;
        }
        let args_json = self.args_json()?;
        let run_id = write::begin_run(conn, "match", &args_json, Some(ORT_VERSION), Some(detector_id), Some(embedder_id))?;
        // The width of the vectors comes from the embedder itself.
        let embedder = Embedder { id: embedder_id, dim: SFace::DIM };
        Ok(RunIds { files, detector_id, embedder, run_id })
    }

    /// The options that shape the crops, as stored with the match run.
    fn options_json(&self) -> serde_json::Value {
        let a = &self.args;
        serde_json::json!({"filters": self.filters, "crop": self.spec, "format": a.format, "quality": a.quality, "allow_ambiguous": a.allow_ambiguous, "best": a.best})
    }

    fn args_json(&self) -> Result<String> {
        // A path that is not UTF-8 is stored as text with U+FFFD in place of the bad bytes:
        // serialising the path itself fails, and `json!` would panic.
        let lossy = |paths: &[PathBuf]| paths.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>();
        let a = &self.args;
        Ok(serde_json::json!({
            "dir": self.root.to_string_lossy(), "ref": lossy(&a.refs), "not": lossy(&a.negatives), "threshold": a.threshold, "combine": a.combine,
            "expand": a.expand, "all": a.all, "dry_run": a.dry_run, "out": self.out_dir.to_string_lossy(), "options": self.options_json(),
            // What the review page needs to run this match again with another threshold.
            "layout": clap::ValueEnum::to_possible_value(&a.layout).map(|v| v.get_name().to_string()),
            "token": a.token, "caption": a.caption, "repeats": a.repeats, "name": a.name,
        })
        .to_string())
    }

    /// The output folder, owned by this database (two datasets in one folder are refused).
    fn open_output(&self, conn: &Connection) -> Result<OutputDir> {
        let owner = Owner { database_id: read::database_id(conn)?, dataset: self.root.to_string_lossy().into_owned() };
        OutputDir::open(&self.out_dir, &self.root, &self.db_file, owner)
    }

    /// What `--best N` counts as a useful face size: what fills `--size` without enlarging, after the margin.
    fn best_params(&self, n: u32) -> crate::select::Params {
        let useful_face_px = self.args.size.map_or(crate::select::DEFAULT_USEFUL_FACE, |s| s as f32 / (1.0 + 2.0 * self.args.margin));
        crate::select::Params { n: n as usize, useful_face_px }
    }
}

/// Ctrl-C while cropping: the run is recorded as interrupted before the process stops (the
/// crops it left are removed by the next run into this folder).
fn record_interrupt(db_file: &Path, run_id: RunId) {
    let db_file = db_file.to_path_buf();
    // Fails only if a handler is already set in this process; the next run then closes the run.
    let _ = ctrlc::set_handler(move || {
        if let Ok(db) = Db::open(&db_file) {
            let _ = write::abort_run(&db.conn, run_id, RunStatus::Interrupted);
        }
        std::process::exit(i32::from(super::EXIT_INTERRUPTED));
    });
}

/// The dataset's database, opened for writing. `--dry-run` writes nothing, so it also works
/// where the database cannot be written (a read-only folder or mount): it then runs on a private
/// copy in a temporary folder (`VACUUM INTO` reads the original without writing beside it), which
/// goes away with the returned guard.
fn open_database(db_file: &Path, dry_run: bool) -> Result<(Db, Option<tempfile::TempDir>)> {
    let err = match Db::open(db_file) {
        Ok(db) => return Ok((db, None)),
        Err(err) if dry_run => err,
        Err(err) => return Err(err),
    };
    let original = Db::open_read_only(db_file).map_err(|_| err)?;
    let scratch = tempfile::tempdir().context("making a temporary folder for a dry run on a read-only database")?;
    let copy = scratch.path().join(crate::db::DB_FILE);
    original.copy_to(&copy).with_context(|| format!("copying {} for a dry run", display_path(db_file)))?;
    Ok((Db::open(&copy)?, Some(scratch)))
}

/// With no stored embedding from the embedder in use (its model file was replaced), every photo
/// would be "not considered" and every earlier crop removed as stale: stop before that.
fn check_embeddings(conn: &Connection, files: &ModelFiles, embedder_id: ModelId, root: &Path) -> Result<()> {
    if let (false, true) = read::embeddings_exist(conn, embedder_id)? {
        let (_, all) = read::embedding_counts(conn, embedder_id)?;
        bail!(
            "the database holds no embeddings from the embedder model {} now in use (blake3 {}), only {all} from another version of it; run `facedb index {}` to re-embed the stored faces (nothing was matched, written or deleted)",
            files.embedder_name,
            files.embedder_hash.get(..16).unwrap_or(&files.embedder_hash),
            display_path(root)
        );
    }
    Ok(())
}

/// The face id in a crop file name match wrote.
pub fn face_in_crop_name(name: &str) -> Option<i64> {
    curation::face_in_name(name)
}
