//! `facedb index`: walk -> stat cache -> hash -> analyse (workers) -> store (this thread).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use super::{database_path, progress, Globals, EXIT_FILES_FAILED, EXIT_INTERRUPTED};
use crate::cli::IndexArgs;
use crate::commands::outln;
use crate::db::write::{self, RunCounters};
use crate::db::{read, Db, LogLevel, ModelId, RunId, RunStatus, DB_FILE};
use crate::models::runtime::{LazyDetector, LazyEmbedder, Loading, ORT_VERSION};
use crate::models::sface::Embedding;
use crate::models::ModelFiles;
use crate::pipeline::decode::Decoders;
use crate::pipeline::detect::{DetectParams, Detection, PassStats};
use crate::pipeline::quality::Quality;
use crate::pipeline::shard::Shard;
use crate::pipeline::walk::{self, FileEntry, Stat};
use crate::pipeline::{
    analyze, decode, embed, hash, ms_since, prepare, thread_cpu_time, AnalyzedImage, EmbedderSource, PreparedImage, StageClock, StageTimes,
};

/// Commit at least this often, so an interrupted run keeps nearly all of its work.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const COMMIT_ROWS: usize = 256;
/// A file modified this close to when it was last stat'ed may have changed within the same
/// timestamp tick; like git's racy-clean rule, such entries are re-hashed.
pub(crate) const RACY_NS: i64 = 2_000_000_000;

/// Once the first Ctrl-C is seen, the run stops within this time even if a worker is still in
/// the middle of a big photo (everything committed stays; in-flight work is redone next run).
const INTERRUPT_GRACE: Duration = Duration::from_millis(700);

/// One file to read, and what to redo for its image if its content is what the database has.
struct Job {
    file: FileEntry,
    redo: Option<Redo>,
}

/// An image whose faces came from another model than the current one.
struct Redo {
    image_id: i64,
    blake3: String,
    /// `Some`: embed and score these stored faces again. `None`: detect again.
    faces: Option<Vec<(i64, Detection)>>,
    /// Degrees the photo was turned when indexed (stored coordinates are in the turned image).
    rotation: u16,
}

/// Why a file could not be indexed: `content` failures are final for those bytes,
/// `environment` ones are retried when the environment changes.
struct Failure {
    kind: &'static str,
    message: String,
}

enum Redone {
    Embedded { vectors: Vec<(i64, Embedding)>, quality: Vec<(i64, Quality)>, calls: u32 },
    Detected(AnalyzedImage),
}

/// What a worker learned about one file.
enum Outcome {
    Analyzed(Analyzed),
    /// Content another path (earlier run or another worker) already has.
    KnownContent {
        file: FileEntry,
        stat: Option<Stat>,
        blake3: String,
        size: u64,
        read_ms: f64,
    },
    /// A stored image's faces redone with the current models.
    Redone {
        file: FileEntry,
        stat: Option<Stat>,
        image_id: i64,
        size: u64,
        result: Result<Redone, Failure>,
        times: StageTimes,
    },
    Unreadable {
        file: FileEntry,
        error: String,
    },
}

/// A new content whose faces go to the embedder thread (`run_embedder`) before the writer.
struct ToEmbed {
    file: FileEntry,
    stat: Option<Stat>,
    blake3: String,
    size: u64,
    image: PreparedImage,
    times: StageTimes,
}

/// A content analysed for the first time (or tried again after a failure).
struct Analyzed {
    file: FileEntry,
    stat: Option<Stat>,
    blake3: String,
    size: u64,
    result: Result<AnalyzedImage, Failure>,
    times: StageTimes,
}

/// What the run's stages share.
struct Run<'a> {
    conn: &'a Connection,
    run_id: RunId,
    detector_id: ModelId,
    embedder_id: ModelId,
    params: DetectParams,
    decoders: &'a Decoders,
    interrupted: &'a AtomicBool,
    env: Environment<'a>,
    /// Contents of earlier failures being tried again.
    retry: HashSet<String>,
    quiet: bool,
    /// The part of the folder this run owns; paths outside it are neither read nor marked missing.
    shard: Shard,
    timeline: &'a Timeline,
}

/// Start-up and scheduling times, printed on stderr at the end when `FACEDB_TIMINGS` is set:
/// when each start-up step ended, and what each worker spent waiting.
struct Timeline {
    start: Instant,
    events: Option<Mutex<Vec<(f64, String)>>>,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Self { start, events: std::env::var_os("FACEDB_TIMINGS").map(|_| Mutex::default()) }
    }

    /// Notes that `what` happened now (the text is made only when timings are on).
    fn mark(&self, what: impl FnOnce() -> String) {
        if let Some(events) = &self.events {
            let at = ms_since(self.start);
            let what = format!("{} (RSS {})", what(), resident_mib());
            events.lock().unwrap_or_else(|p| p.into_inner()).push((at, what));
        }
    }

    fn print(&self) {
        let Some(events) = &self.events else { return };
        let mut events = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, what) in events {
            eprintln!("facedb timings: {at:8.1} ms  {what}");
        }
    }
}

/// The process's resident memory now ("VmRSS" of /proc/self/status), for `FACEDB_TIMINGS`.
fn resident_mib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.map_or_else(|| "unknown".to_string(), |k| format!("{} MiB", k / 1024))
}

/// What one worker spent its time on, for `FACEDB_TIMINGS`.
#[derive(Default)]
struct WorkerTimes {
    photos: u32,
    waited_for_work: Duration,
    waited_for_writer: Duration,
    /// Time blocked handing faces to the embedder thread (its queue full).
    waited_for_embedder: Duration,
    passes: PassStats,
}

/// What the embedder thread spent its time on, for `FACEDB_TIMINGS`.
#[derive(Default)]
struct EmbedderTimes {
    photos: u32,
    faces: usize,
    /// Embedding (wall time, the first fetch of the session and turns on it excluded).
    busy: Duration,
    /// CPU time of the thread: less than `busy` when the workers had the cores.
    cpu: Duration,
    waited_for_work: Duration,
    waited_for_writer: Duration,
}

/// What a failure's retry depends on: facedb, ONNX Runtime, the model files, libjpeg-turbo and
/// libheif. Computed on first use (finding libheif loads it).
struct Environment<'a> {
    files: &'a ModelFiles,
    decoders: &'a Decoders,
    text: std::cell::OnceCell<String>,
}

impl Environment<'_> {
    fn get(&self) -> &str {
        self.text.get_or_init(|| {
            let heif = self.decoders.heif().map_or_else(|_| "missing".to_string(), |h| h.path().display().to_string());
            format!(
                "facedb {}; onnxruntime {ORT_VERSION}; detector {}; embedder {}; jpeg {}; libheif {heif}",
                env!("CARGO_PKG_VERSION"),
                self.files.detector_hash,
                self.files.embedder_hash,
                self.decoders.jpeg_identity()
            )
        })
    }
}

pub fn run(globals: &Globals, args: IndexArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let timeline = Timeline::new(started);
    let interrupted = interrupt_flag();
    let root = dataset_root(globals, args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    if args.shard.is_some() && globals.db.is_none() {
        bail!("--shard needs its own database: add --db shard-K.sqlite (one file per shard; `facedb merge` joins them)");
    }
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let (db, _lock) = open_locked(globals, &root, &db_file, args.shard)?;
    let conn = &db.conn;
    timeline.mark(|| "database opened and locked".into());

    let files = ModelFiles::locate(globals.models.as_deref(), globals.device)?;
    timeline.mark(|| "model files read and hashed".into());
    let decoders = Decoders::new(Some(&files.dir));
    let params =
        DetectParams { max_side: args.detect_size.max(320), score_threshold: args.min_score.clamp(0.0, 1.0), ..DetectParams::default() };
    let (detector_id, embedder_id) = register_models(conn, &files, &params, &decoders)?;
    let args_json = serde_json::json!({"dir": root.to_string_lossy(), "detect_size": params.max_side, "min_score": params.score_threshold, "retry_failed": args.retry_failed, "shard": shard.to_string()}).to_string();
    let run_id = write::begin_run(conn, "index", &args_json, Some(ORT_VERSION), Some(detector_id), Some(embedder_id))?;
    rekey_paths(conn)?;
    let mut ctx = Run {
        conn,
        run_id,
        detector_id,
        embedder_id,
        params,
        decoders: &decoders,
        interrupted: &interrupted,
        env: Environment { files: &files, decoders: &decoders, text: Default::default() },
        retry: HashSet::new(),
        quiet: globals.quiet,
        shard,
        timeline: &timeline,
    };

    let mut counters = RunCounters::default();
    // Walk the folder while the stat cache loads: both are big on a no-op re-index.
    let (walked, cache) = std::thread::scope(|s| {
        let walker = s.spawn(|| walk::walk_until(&root, &interrupted));
        let cache = read::file_cache(conn);
        (walker.join(), cache)
    });
    // A failed walk must not look like an empty folder (that would mark every file missing).
    let walked = walked.map_err(|_| anyhow!("listing {} failed", root.display()))?;
    let cache = cache?;
    // The dataset folder itself unreadable would otherwise mark every indexed photo missing.
    if let Some(p) = walked.problems.iter().find(|p| p.rel.is_empty()) {
        write::finish_run(conn, run_id, RunStatus::Error, &counters)?;
        bail!("{}: {}", root.display(), p.error);
    }
    if walked.interrupted || interrupted.load(Ordering::SeqCst) {
        return finish(globals, &ctx, &root, &counters, RunStatus::Interrupted, started);
    }
    if walked.files.is_empty() && walked.problems.is_empty() && walked.skipped.is_empty() && !globals.quiet {
        say_no_photos(&root, &cache);
    }
    let walked = walked.only(|rel| shard.owns(rel));
    let (work, mut known) = plan(&mut ctx, walked, &cache, &mut counters, args.retry_failed)?;
    timeline.mark(|| format!("walked and planned: {} files to read", work.len()));

    let status = if work.is_empty() {
        RunStatus::Ok
    } else {
        let jobs = args.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
        process(&ctx, &files, work, jobs, &mut known, &cache, &mut counters)?
    };
    finish(globals, &ctx, &root, &counters, status, started)
}

/// Says when JPEGs are decoded by the slower built-in decoder, and when the database holds JPEGs
/// whose faces another decoder's pixels gave (they differ by a level or two; not re-detected).
/// Said with the summary, so a fatal error stays one line.
fn say_decoders(conn: &Connection, decoders: &Decoders, detector_hash: &str) -> Result<()> {
    if decoders.turbojpeg().is_none() {
        eprintln!("facedb: {}", decoders.describe_jpeg());
    }
    let others = read::jpegs_by_other_decoder(conn, detector_hash, &decoders.jpeg_identity())?;
    if others > 0 {
        eprintln!(
            "facedb: {others} JPEG photos in this database were decoded by another JPEG decoder than now ({}); their faces stay as found (`facedb info` says which decoder)",
            decoders.jpeg_identity()
        );
    }
    Ok(())
}

/// Says when the database holds photos detected with another `--detect-size`, so one dataset
/// does not mix two detection settings unnoticed.
fn say_detect_size(conn: &Connection, detector_hash: &str, max_side: u32) -> Result<()> {
    let others = read::images_by_other_detect_size(conn, detector_hash, max_side)?;
    if others > 0 {
        eprintln!(
            "facedb: {others} photos in this database were detected with another --detect-size than now ({max_side}; the default was 1280 before 2026-12-02); their faces stay as found"
        );
    }
    Ok(())
}

/// An empty folder, or one without photos, is said so (an index of nothing looks like success).
fn say_no_photos(root: &Path, cache: &HashMap<String, read::CachedFile>) {
    let before = cache.values().filter(|c| !c.missing).count();
    let gone = if before > 0 { format!("; the {before} indexed before are no longer there and are marked missing") } else { String::new() };
    eprintln!("facedb: no photos in {} (looked for {} files){gone}", root.display(), walk::PHOTO_EXTENSIONS.join(", "));
}

/// Records the end of the run, prints its summary and picks the exit code.
fn finish(globals: &Globals, ctx: &Run, root: &Path, counters: &RunCounters, status: RunStatus, started: Instant) -> Result<ExitCode> {
    let conn = ctx.conn;
    let failed = read::failed_count(conn)?;
    let unlisted = read::walk_issues(conn)?.iter().filter(|(_, kind, _)| kind == "error").count() as i64;
    let failed_now = failed + unlisted;
    let final_status = if status == RunStatus::Interrupted {
        status
    } else if failed_now > 0 {
        RunStatus::Failures
    } else {
        RunStatus::Ok
    };
    write::finish_run(conn, ctx.run_id, final_status, counters)?;
    write::finish_index_run(conn, ctx.run_id, counters)?;
    // Fold the WAL back so the single file is complete for copying and other tools.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    ctx.timeline.mark(|| "run recorded, WAL checkpointed".into());
    ctx.timeline.print();

    if globals.json {
        let secs = started.elapsed().as_secs_f64();
        let summary = serde_json::json!({
            "command": "index", "dataset": root.to_string_lossy(), "run_id": ctx.run_id, "status": final_status,
            "counters": counters, "failed_files_in_folder": failed_now, "seconds": secs,
            "new_photos_per_second": counters.images_new as f64 / secs.max(1e-9), "jpeg_decoder": ctx.decoders.jpeg_identity(),
        });
        outln!("{summary}");
    } else if !globals.quiet {
        print_summary(root, counters, failed_now, started.elapsed(), status == RunStatus::Interrupted);
        say_decoders(conn, ctx.decoders, &ctx.env.files.detector_hash)?;
        say_detect_size(conn, &ctx.env.files.detector_hash, ctx.params.max_side)?;
    }
    Ok(if status == RunStatus::Interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if failed_now > 0 {
        ExitCode::from(EXIT_FILES_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// First Ctrl-C: stop taking new files, commit, and leave within `INTERRUPT_GRACE`. Second
/// Ctrl-C: leave at once. Leaving early is safe: SQLite's WAL drops an unfinished transaction.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    // Only fails if a handler is already set (tests calling twice); harmless then.
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            eprintln!("facedb: interrupted again; stopping now");
            hard_exit();
        }
        std::thread::spawn(|| {
            std::thread::sleep(INTERRUPT_GRACE);
            eprintln!("facedb: interrupted; stopping now (work in progress is redone on the next run)");
            hard_exit();
        });
    });
    flag
}

/// Exits without running destructors: ONNX Runtime's static destructors must not run while
/// worker threads still use their sessions.
fn hard_exit() -> ! {
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(i32::from(EXIT_INTERRUPTED)) }
}

/// The dataset a folder belongs to: the folder itself, unless it lies inside an indexed dataset
/// (an ancestor holding facedb's database), which is then indexed whole, as `match` would use
/// it. Indexing only the subfolder into the parent's database would need every other path
/// left alone; the whole dataset is as cheap (unchanged files are only stat'ed) and simpler.
fn dataset_root(globals: &Globals, dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{} is not a directory; pass the photo folder to index", dir.display());
    }
    let root = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    if globals.db.is_some() || root.join(DB_FILE).exists() {
        return Ok(root);
    }
    let Some(dataset) = root.ancestors().skip(1).find(|a| crate::db::is_facedb_database(&a.join(DB_FILE))) else {
        return Ok(root);
    };
    if !globals.quiet {
        eprintln!(
            "facedb: {} is inside the dataset {} (database {}); indexing the whole dataset",
            root.display(),
            dataset.display(),
            dataset.join(DB_FILE).display()
        );
    }
    Ok(dataset.to_path_buf())
}

/// Moves rows keyed by lossy UTF-8 (before keys were exact) to their exact keys, once per
/// database: every row written since has its exact key.
fn rekey_paths(conn: &Connection) -> Result<()> {
    if read::path_keys_exact(conn)? {
        return Ok(());
    }
    let rows = read::files_to_rekey(conn)?;
    let tx = conn.unchecked_transaction()?;
    write::mark_path_keys_exact(&tx)?;
    for (path, raw) in rows {
        let bytes = raw.unwrap_or_else(|| path.as_bytes().to_vec());
        let (key, raw) = walk::path_key(&bytes);
        if key != path {
            write::rekey_file(&tx, &path, &key, raw.as_deref())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Stores what the walk found, marks vanished paths missing, and lists the files to read:
/// changed ones, earlier failures that may now work, and images made by other models.
fn plan(
    ctx: &mut Run,
    walked: walk::Walked,
    cache: &HashMap<String, read::CachedFile>,
    counters: &mut RunCounters,
    retry_all: bool,
) -> Result<(Vec<Job>, HashMap<String, i64>)> {
    let conn = ctx.conn;
    let walk::Walked { files: entries, problems, skipped, .. } = walked;
    counters.files_seen = (entries.len() + problems.len() + skipped.len()) as u64;
    counters.files_skipped = skipped.len() as u64;

    let tx = conn.unchecked_transaction()?;
    for p in &problems {
        write::log(&tx, ctx.run_id, None, Some(&p.rel), LogLevel::Error, &p.error)?;
        counters.files_failed += 1;
    }
    for p in &skipped {
        write::log(&tx, ctx.run_id, None, Some(&p.rel), LogLevel::Warn, &format!("skipped: {}", p.error))?;
    }
    let issues: Vec<(&str, &str, &str)> = problems
        .iter()
        .map(|p| (p.rel.as_str(), "error", p.error.as_str()))
        .chain(skipped.iter().map(|p| (p.rel.as_str(), "skipped", p.error.as_str())))
        .collect();
    write::replace_walk_issues(&tx, ctx.run_id, &issues)?;
    mark_vanished(&tx, ctx.shard, &entries, cache)?;

    let failed = read::failed_images(conn)?;
    let retry_ids: HashSet<i64> = failed
        .into_iter()
        .filter(|f| retry_all || (f.kind.as_deref() != Some("content") && f.env.as_deref() != Some(ctx.env.get())))
        .map(|f| {
            ctx.retry.insert(f.blake3);
            f.image_id
        })
        .collect();
    let mut stale: HashMap<i64, read::StaleImage> =
        read::stale_images(conn, &ctx.env.files.detector_hash, ctx.embedder_id)?.into_iter().map(|s| (s.image_id, s)).collect();

    let now = now_ns();
    let mut work = Vec::new();
    for e in entries {
        let c = cache.get(&e.rel);
        let image_id = c.and_then(|c| c.image_id);
        // One path per stale image carries its redo; the worker checks the content first.
        let redo = match image_id.and_then(|id| stale.remove(&id)) {
            Some(s) => {
                let faces = if s.redetect { None } else { Some(read::stored_detections(conn, s.image_id)?) };
                Some(Redo { image_id: s.image_id, blake3: s.blake3, faces, rotation: s.rotation })
            }
            None => None,
        };
        match c {
            Some(c) if redo.is_none() && !image_id.is_some_and(|id| retry_ids.contains(&id)) && is_unchanged(c, &e.stat, now) => {
                counters.files_unchanged += 1;
                if c.missing {
                    write::set_missing(&tx, &e.rel, false)?;
                }
                if c.ctime_ns.is_none() {
                    write::set_ctime(&tx, &e.rel, e.stat.ctime_ns)?;
                }
            }
            _ => work.push(Job { file: e, redo }),
        }
    }
    tx.commit()?;
    Ok((work, read::image_hashes(conn)?))
}

/// Marks the cached paths this run owns that the walk no longer found as missing. When every
/// such path was found (counted, no set built) there is nothing to mark: the usual case, where
/// hashing 100 000 paths into a set cost ~45 ms of CPU and the count ~15.
fn mark_vanished(tx: &Connection, shard: Shard, entries: &[FileEntry], cache: &HashMap<String, read::CachedFile>) -> Result<()> {
    let owned_present = |path: &str, c: &read::CachedFile| !c.missing && shard.owns(path);
    let expected = cache.iter().filter(|(path, c)| owned_present(path, c)).count();
    let found = entries.iter().filter(|e| cache.get(&e.rel).is_some_and(|c| owned_present(&e.rel, c))).count();
    if found == expected {
        return Ok(());
    }
    let seen: HashSet<&str> = entries.iter().map(|e| e.rel.as_str()).collect();
    for (path, c) in cache {
        if owned_present(path, c) && !seen.contains(path.as_str()) {
            write::set_missing(tx, path, true)?;
        }
    }
    Ok(())
}

/// The detector (with the parameters it runs with) and embedder rows, added if new: what
/// `index` stores and what `match` embeds its references with.
pub fn register_models(conn: &Connection, files: &ModelFiles, params: &DetectParams, decoders: &Decoders) -> Result<(ModelId, ModelId)> {
    let detector_id =
        write::ensure_model(conn, "detector", &files.detector_name, &files.detector_hash, &detector_params_json(params, decoders))?;
    let embedder_id = write::ensure_model(conn, "embedder", &files.embedder_name, &files.embedder_hash, "{}")?;
    Ok((detector_id, embedder_id))
}

pub fn detector_params_json(p: &DetectParams, decoders: &Decoders) -> String {
    // `passes` names the detection procedure: a change in it changes the detector's identity, so
    // photos detected the old way are detected again (see `commands::index`'s re-detect rule).
    // `jpeg` names the JPEG decoder whose pixels the detector saw (`decode::Decoders`).
    serde_json::json!({"max_side": p.max_side, "score_threshold": p.score_threshold, "nms_iou": p.nms_iou, "passes": crate::pipeline::detect::PASSES, "jpeg": decoders.jpeg_identity()}).to_string()
}

/// One index at a time per database: a second one is refused with a clear message.
/// The database, opened (and so checked to be facedb's own, regular file) before its lock file
/// is made, then locked for this run and checked to belong to this folder and shard.
fn open_locked(globals: &Globals, root: &Path, db_file: &Path, shard: Option<Shard>) -> Result<(Db, File)> {
    let db = Db::open(db_file).map_err(|e| {
        if globals.db.is_none() {
            anyhow!("{e:#}; if {} is read-only, pass --db PATH to keep the database elsewhere", root.display())
        } else {
            e
        }
    })?;
    let lock = lock_dataset(db_file)?;
    if let Some(warning) = db.check_dataset(root, db_file)? {
        if !globals.quiet {
            eprintln!("{warning}");
        }
    }
    db.check_shard(shard, db_file)?;
    Ok((db, lock))
}

pub(crate) fn lock_dataset(db_file: &Path) -> Result<File> {
    let lock_path = db_file.with_extension("lock");
    // Never through a link: a link planted as the lock file would make index create its target.
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open the lock file {} (a link, a FIFO, or a read-only folder?); remove it if it is not facedb's, or pass --db PATH to keep the database elsewhere",
                lock_path.display()
            )
        })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        bail!("{} is not a regular file; remove it (facedb keeps its lock there)", lock_path.display());
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another `facedb index` is already running on {}; wait for it to finish", db_file.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", lock_path.display())),
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Whether a path's stat data proves it unchanged. Like git's racy-clean rule, a file whose
/// mtime is within `RACY_NS` of when it was checked may have changed within the same tick and
/// is read again. An mtime in the future stays trustworthy until the clock reaches it (any
/// write before then stamps a different mtime), so such photos are not re-read every run.
fn is_unchanged(c: &read::CachedFile, s: &Stat, now: i64) -> bool {
    let same = c.image_id.is_some()
        && c.size == s.size as i64
        && c.mtime_ns == s.mtime_ns
        && c.inode == s.inode as i64
        && c.ctime_ns.is_none_or(|ctime| ctime == s.ctime_ns);
    let settled = c.mtime_ns < c.checked_ns - RACY_NS || (c.mtime_ns > c.checked_ns + RACY_NS && c.mtime_ns > now + RACY_NS);
    same && settled
}

fn process(
    ctx: &Run,
    files: &ModelFiles,
    work: Vec<Job>,
    jobs: usize,
    known: &mut HashMap<String, i64>,
    cache: &HashMap<String, read::CachedFile>,
    counters: &mut RunCounters,
) -> Result<RunStatus> {
    let bar = progress(work.len() as u64, ctx.quiet, "indexing");
    let total = work.len();
    let (work_tx, work_rx) = bounded::<Job>(jobs * 4);
    let (out_tx, out_rx) = bounded::<Outcome>(jobs * 4);
    // Photos with faces, prepared by the workers, for the one thread that embeds them.
    let (embed_tx, embed_rx) = bounded::<ToEmbed>(jobs * 4);
    // Contents already stored are only linked, except earlier failures being tried again.
    let claimed = Mutex::new(known.keys().filter(|h| !ctx.retry.contains(*h)).cloned().collect::<HashSet<String>>());
    let (interrupted, timeline) = (ctx.interrupted, ctx.timeline);
    let loading = Loading::default();
    let shared = Shared { loading: &loading, decoders: ctx.decoders, params: &ctx.params, claimed: &claimed, interrupted, timeline };

    std::thread::scope(|scope| -> Result<RunStatus> {
        // The models load and the shared SFace session is made while the other workers read and
        // decode their first photos (they wait at their first detection and their first face).
        // Each worker makes its own detector session; one embedder thread runs the SFace
        // session, so a worker goes on with its next photo instead of waiting for its turn on it.
        // With a core to spare (fewer photos than workers), the models load on a thread of their
        // own. Otherwise the first worker loads them before its first photo: a thread of its own
        // then cost 11 % more page faults and 10-15 MiB more peak RSS (40 photos, 2 workers;
        // the memory it freed was not reused by the workers), for no gain in CPU time.
        let n = jobs.min(total);
        let own_thread = n < jobs;
        let loader = own_thread.then(|| scope.spawn(|| load(files, &loading, timeline)));
        let shared = &shared;
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let (rx, tx, to_embedder) = (work_rx.clone(), out_tx.clone(), embed_tx.clone());
                let loads = !own_thread && i == 0;
                scope.spawn(move || {
                    if loads {
                        load(files, shared.loading, shared.timeline)?;
                    }
                    run_worker(i, rx, tx, to_embedder, shared)
                })
            })
            .collect();
        let embedder = {
            let tx = out_tx.clone();
            scope.spawn(move || run_embedder(embed_rx, tx, shared))
        };
        drop(out_tx);
        drop(embed_tx);
        drop(work_rx);
        scope.spawn(move || {
            for e in work {
                if interrupted.load(Ordering::SeqCst) || work_tx.send(e).is_err() {
                    break;
                }
            }
        });

        let result = store(ctx, &out_rx, known, cache, counters, &bar);
        timeline.mark(|| "writer done".into());
        bar.finish();
        // Stop the feeder and workers if storing failed, then surface the first error.
        interrupted.store(interrupted.load(Ordering::SeqCst) || result.is_err(), Ordering::SeqCst);
        drop(out_rx);
        let mut worker_error = None;
        for w in workers {
            if let Err(e) = w.join().map_err(|_| anyhow!("an indexing worker panicked"))? {
                worker_error.get_or_insert(e);
            }
        }
        // Joined after the workers: it ends once they have all let go of its queue.
        if let Err(e) = embedder.join().map_err(|_| anyhow!("the embedder thread panicked"))? {
            worker_error.get_or_insert(e);
        }
        result?;
        if let Some(e) = worker_error {
            return Err(e);
        }
        // A damaged model file stops the run even when no photo needed the model.
        if let Some(loader) = loader {
            loader.join().map_err(|_| anyhow!("loading the models panicked"))??;
        }
        Ok(if interrupted.load(Ordering::SeqCst) { RunStatus::Interrupted } else { RunStatus::Ok })
    })
}

/// Loads the runtime and the models, then makes the shared SFace session.
fn load(files: &ModelFiles, loading: &Loading, timeline: &Timeline) -> Result<()> {
    let t = Instant::now();
    // Whatever happens (a panic included), the workers must not wait forever.
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| files.load()))
        .unwrap_or_else(|_| Err(anyhow!("loading the models failed unexpectedly; please report it")));
    timeline.mark(|| format!("runtime loaded, YuNet patched ({:.0} ms)", ms_since(t)));
    loading.set(loaded);
    let t = Instant::now();
    let made = loading.wait()?.embedder().map(drop);
    timeline.mark(|| format!("SFace session made ({:.0} ms)", ms_since(t)));
    made
}

/// What every worker shares.
struct Shared<'a> {
    loading: &'a Loading,
    decoders: &'a Decoders,
    params: &'a DetectParams,
    claimed: &'a Mutex<HashSet<String>>,
    interrupted: &'a AtomicBool,
    timeline: &'a Timeline,
}

/// What a worker analyses photos with.
struct Sessions<'a> {
    detector: LazyDetector<'a>,
    embedder: LazyEmbedder<'a>,
    decoders: &'a Decoders,
    params: &'a DetectParams,
}

/// One worker: its own detector session (made when its first photo is decoded), and photos
/// until the work ends. Their faces are embedded by the embedder thread, except when a stored
/// image is redone: the worker then fetches the shared embedder itself.
fn run_worker(i: usize, rx: Receiver<Job>, tx: Sender<Outcome>, to_embedder: Sender<ToEmbed>, s: &Shared) -> Result<()> {
    let mut m = Sessions { detector: s.loading.detector(), embedder: s.loading.embedder(), decoders: s.decoders, params: s.params };
    let w = worker(rx, tx, to_embedder, s, &mut m)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ((detector, yunet), (embedder, turns)) = (m.detector.fetched(), m.embedder.fetched());
    let resize = yunet.map_or(Duration::ZERO, |y| y.prep_time());
    s.timeline.mark(|| {
        format!(
            "worker {i}: done, {} photos; waited for work {:.0} ms, for the writer {:.0} ms, for the embedder thread {:.0} ms, for the models {:.0} ms; made its YuNet session in {:.0} ms; redoing stored faces, waited for the SFace session {:.0} ms, for turns on it {:.0} ms; detector input resizing {:.0} ms; {}",
            w.photos,
            ms(w.waited_for_work),
            ms(w.waited_for_writer),
            ms(w.waited_for_embedder),
            ms(detector.loading),
            ms(detector.session),
            ms(embedder.loading + embedder.session),
            ms(turns),
            ms(resize),
            w.passes
        )
    });
    Ok(())
}

/// Reads, hashes and analyses jobs until there are none (or the run is interrupted): photos with
/// faces go to the embedder thread, the others to the writer. Fails only when a model cannot be
/// made, which is no photo's fault.
fn worker(rx: Receiver<Job>, tx: Sender<Outcome>, to_embedder: Sender<ToEmbed>, s: &Shared, m: &mut Sessions) -> Result<WorkerTimes> {
    let mut w = WorkerTimes::default();
    loop {
        let waiting = Instant::now();
        let Ok(Job { file, redo }) = rx.recv() else { break };
        w.waited_for_work += waiting.elapsed();
        if s.interrupted.load(Ordering::SeqCst) {
            break;
        }
        let t = Instant::now();
        let bytes = match walk::read_regular(&file.abs) {
            Ok(b) => b,
            Err(e) => {
                let error = format!("cannot read: {e}");
                if tx.send(Outcome::Unreadable { file, error }).is_err() {
                    break;
                }
                continue;
            }
        };
        let blake3 = hash::content_hash(&bytes);
        let read_ms = ms_since(t);
        // A file that changed while we read it gets no stat cache entry, so the next run rereads it.
        let stat = std::fs::metadata(&file.abs).ok().map(|m| Stat::of(&m)).filter(|s| *s == file.stat);
        let size = bytes.len() as u64;
        let mut times = StageTimes { read_hash: read_ms, ..StageTimes::default() };
        let outcome = match redo.filter(|r| r.blake3 == blake3) {
            Some(redo) => {
                let result = contained(|| redo_image(&bytes, &redo, m, &mut times));
                Some(Outcome::Redone { file, stat, image_id: redo.image_id, size, result, times })
            }
            None if s.claimed.lock().map(|mut c| c.insert(blake3.clone())).unwrap_or(true) => {
                let prepared = contained(|| prepare(&bytes, m.decoders, &mut m.detector, m.params, &mut times).map_err(Failure::of));
                if let Ok(image) = &prepared {
                    w.passes.add(&image.passes);
                }
                match prepared {
                    Ok(image) if image.needs_embedder() => {
                        let sending = Instant::now();
                        // Closed only when the embedder thread stopped (its error ends the run)
                        // or the writer did.
                        if to_embedder.send(ToEmbed { file, stat, blake3, size, image, times }).is_err() {
                            break;
                        }
                        w.waited_for_embedder += sending.elapsed();
                        None
                    }
                    // Without faces, `embed` fetches no embedder: straight to the writer.
                    prepared => {
                        let result = prepared.and_then(|image| image.embed(&mut m.embedder, &mut times).map_err(Failure::of));
                        Some(Outcome::Analyzed(Analyzed { file, stat, blake3, size, result, times }))
                    }
                }
            }
            None => Some(Outcome::KnownContent { file, stat, blake3, size, read_ms }),
        };
        crate::pipeline::buffers::recycle(bytes);
        if let Some(why) = m.detector.failed().or(m.embedder.failed()) {
            bail!("{why}");
        }
        w.photos += 1;
        // Handed to the embedder thread, which passes it on to the writer.
        let Some(outcome) = outcome else { continue };
        let sending = Instant::now();
        if tx.send(outcome).is_err() {
            break;
        }
        w.waited_for_writer += sending.elapsed();
    }
    Ok(w)
}

/// The embedder thread: embeds the faces the workers prepared on the shared SFace session
/// (fetched at the first face) and hands each photo on to the writer. Fails only when the
/// session cannot be made, which is no photo's fault.
fn run_embedder(rx: Receiver<ToEmbed>, tx: Sender<Outcome>, s: &Shared) -> Result<()> {
    let mut embedder = s.loading.embedder();
    let mut e = EmbedderTimes::default();
    let cpu_start = thread_cpu_time();
    loop {
        let waiting = Instant::now();
        let Ok(ToEmbed { file, stat, blake3, size, image, mut times }) = rx.recv() else { break };
        e.waited_for_work += waiting.elapsed();
        if s.interrupted.load(Ordering::SeqCst) {
            break;
        }
        let t = Instant::now();
        e.faces += image.faces.len();
        let result = contained(|| image.embed(&mut embedder, &mut times).map_err(Failure::of));
        if let Some(why) = embedder.failed() {
            bail!("{why}");
        }
        e.busy += t.elapsed();
        e.photos += 1;
        let sending = Instant::now();
        if tx.send(Outcome::Analyzed(Analyzed { file, stat, blake3, size, result, times })).is_err() {
            break;
        }
        e.waited_for_writer += sending.elapsed();
    }
    e.cpu = thread_cpu_time().saturating_sub(cpu_start);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (fetched, turns) = embedder.fetched();
    let fetching = fetched.loading + fetched.session;
    s.timeline.mark(|| {
        format!(
            "embedder thread: embedded {} faces of {} photos; busy {:.0} ms ({:.0} ms of CPU), idle {:.0} ms (waited for work {:.0} ms, for the writer {:.0} ms, for the SFace session {:.0} ms, for turns on it {:.0} ms)",
            e.faces,
            e.photos,
            ms(e.busy.saturating_sub(fetching + turns)),
            ms(e.cpu),
            ms(e.waited_for_work + e.waited_for_writer + fetching + turns),
            ms(e.waited_for_work),
            ms(e.waited_for_writer),
            ms(fetching),
            ms(turns)
        )
    });
    Ok(())
}

/// A bug tripped by one strange file must cost that file, not the run. A panic is facedb's
/// fault, so it counts as the environment: retried when facedb changes.
fn contained<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(Failure {
            kind: "environment",
            message: format!("internal error while analysing this file ({}); please report it", why.unwrap_or_default()),
        })
    })
}

impl Failure {
    /// Decoding says whose fault its errors are; anything else (the models failing on a decoded
    /// image: memory, a broken runtime) is the environment's.
    fn of(e: anyhow::Error) -> Self {
        let content = decode::is_content(&e) && !decode::is_environment(&e);
        Self { kind: if content { "content" } else { "environment" }, message: format!("{e:#}") }
    }
}

/// Redoes a stored image's faces with the current models: embeds its stored faces again (the
/// embedder changed), or detects again (the detector changed).
fn redo_image(bytes: &[u8], redo: &Redo, m: &mut Sessions, times: &mut StageTimes) -> Result<Redone, Failure> {
    let Some(faces) = &redo.faces else {
        return analyze(bytes, m.decoders, &mut m.detector, &mut m.embedder, m.params, times).map(Redone::Detected).map_err(Failure::of);
    };
    let t = StageClock::now();
    let frame = crate::pipeline::frame_as_indexed(bytes, redo.rotation, m.decoders).map_err(Failure::of)?;
    times.decode += t.ms();
    // The same pixels and measures as a first index of the photo (faces that could not be
    // aligned before cannot be now: same pixels, same landmarks).
    let detections: Vec<Detection> = faces.iter().map(|(_, d)| *d).collect();
    let embedder = m.embedder.embedder().map_err(|e| Failure { kind: "environment", message: format!("{e:#}") })?;
    let (records, calls) = embed::embed_faces(&frame, &detections, embedder, times).map_err(|e| {
        if decode::is_content(&e) {
            Failure::of(e)
        } else {
            Failure { kind: "environment", message: format!("{e:#}") }
        }
    })?;
    let ids = faces.iter().map(|(face_id, _)| *face_id);
    let vectors = ids.clone().zip(&records).filter_map(|(id, r)| r.embedding.map(|v| (id, v))).collect();
    let quality = ids.zip(&records).map(|(id, r)| (id, r.quality)).collect();
    Ok(Redone::Embedded { vectors, quality, calls })
}

/// The single writer: applies outcomes in batched transactions. On Ctrl-C it commits what it
/// has, records the run as interrupted, and returns without waiting for the workers.
fn store(
    ctx: &Run,
    rx: &Receiver<Outcome>,
    known: &mut HashMap<String, i64>,
    cache: &HashMap<String, read::CachedFile>,
    counters: &mut RunCounters,
    bar: &super::Progress,
) -> Result<()> {
    let (conn, run_id) = (ctx.conn, ctx.run_id);
    // Paths whose content was claimed by a worker that has not reported yet.
    let mut waiting: HashMap<String, Vec<(FileEntry, Option<Stat>)>> = HashMap::new();
    let mut tx = conn.unchecked_transaction()?;
    let (mut rows, mut last_commit) = (0usize, Instant::now());
    loop {
        if ctx.interrupted.load(Ordering::SeqCst) {
            write::finish_run(&tx, run_id, RunStatus::Interrupted, counters)?;
            write::finish_index_run(&tx, run_id, counters)?;
            break;
        }
        let outcome = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(o) => o,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let checked = now_ns();
        match outcome {
            Outcome::Unreadable { file, error } => {
                write::upsert_file(&tx, run_id, &file, None, checked, None, Some(&error))?;
                write::log(&tx, run_id, None, Some(&file.rel), LogLevel::Error, &error)?;
                counters.files_failed += 1;
            }
            Outcome::KnownContent { file, stat, blake3, size, read_ms } => {
                counters.bytes_read += size;
                counters.stage_ms.read_hash += read_ms;
                match known.get(&blake3) {
                    // Same path, same content: re-verified (its timestamp was too recent to trust).
                    Some(&image_id) if cache.get(&file.rel).and_then(|c| c.image_id) == Some(image_id) => {
                        counters.files_unchanged += 1;
                        write::upsert_file(&tx, run_id, &file, stat, checked, Some(image_id), None)?;
                    }
                    Some(&image_id) => link(&tx, run_id, &file, stat, checked, image_id, counters)?,
                    None => waiting.entry(blake3).or_default().push((file, stat)),
                }
            }
            Outcome::Redone { file, stat, image_id, size, result, times } => {
                counters.bytes_read += size;
                counters.stage_ms.add(&times);
                store_redone(ctx, &tx, &file, image_id, result, counters)?;
                write::upsert_file(&tx, run_id, &file, stat, checked, Some(image_id), None)?;
            }
            Outcome::Analyzed(a) => store_new(ctx, &tx, a, checked, known, &mut waiting, counters)?,
        }
        bar.inc(1);
        rows += 1;
        if rows >= COMMIT_ROWS || last_commit.elapsed() >= COMMIT_EVERY {
            tx.commit()?;
            tx = conn.unchecked_transaction()?;
            (rows, last_commit) = (0, Instant::now());
        }
    }
    tx.commit()?;
    Ok(())
}

/// A new content with its file, and the other paths with the same content that waited for it.
fn store_new(
    ctx: &Run,
    tx: &Connection,
    a: Analyzed,
    checked: i64,
    known: &mut HashMap<String, i64>,
    waiting: &mut HashMap<String, Vec<(FileEntry, Option<Stat>)>>,
    counters: &mut RunCounters,
) -> Result<()> {
    let run_id = ctx.run_id;
    counters.bytes_read += a.size;
    counters.stage_ms.add(&a.times);
    let t = Instant::now();
    let image_id = store_analyzed(ctx, tx, &a, known.get(&a.blake3).copied(), counters)?;
    let Analyzed { file, stat, blake3, .. } = a;
    if stat.is_none() {
        write::log(
            tx,
            run_id,
            Some(image_id),
            Some(&file.rel),
            LogLevel::Warn,
            "file changed while being indexed; it will be read again next run",
        )?;
    }
    write::upsert_file(tx, run_id, &file, stat, checked, Some(image_id), None)?;
    known.insert(blake3.clone(), image_id);
    for (f, s) in waiting.remove(&blake3).unwrap_or_default() {
        link(tx, run_id, &f, s, checked, image_id, counters)?;
    }
    counters.stage_ms.store += ms_since(t);
    Ok(())
}

/// Stores a newly analysed content (or an earlier failure tried again, `previous`); returns
/// its image id.
fn store_analyzed(ctx: &Run, tx: &Connection, a: &Analyzed, previous: Option<i64>, counters: &mut RunCounters) -> Result<i64> {
    let (run_id, file, blake3, times) = (ctx.run_id, &a.file, a.blake3.as_str(), &a.times);
    if ctx.retry.contains(blake3) {
        counters.images_retried += 1;
    }
    match &a.result {
        Ok(img) => {
            counters.images_new += 1;
            counters.faces_found += img.faces.len() as u64;
            counters.detector_calls += u64::from(img.detector_calls);
            counters.embedder_calls += u64::from(img.embedder_calls);
            let id = match previous {
                Some(id) => {
                    write::replace_failed_image(tx, id, run_id, img, times, ctx.detector_id, ctx.embedder_id)?;
                    id
                }
                None => {
                    let id = write::insert_image(
                        tx,
                        run_id,
                        blake3,
                        a.size,
                        img,
                        times,
                        write::ModelIds { detector: ctx.detector_id, embedder: ctx.embedder_id },
                    )?;
                    write::set_image_embedder(tx, id, Some(ctx.embedder_id))?;
                    id
                }
            };
            let msg = format!(
                "indexed {}x{} {} (orientation {}): {} face(s), {} detector and {} embedder calls",
                img.width,
                img.height,
                img.format,
                img.orientation,
                img.faces.len(),
                img.detector_calls,
                img.embedder_calls
            );
            write::log(tx, run_id, Some(id), Some(&file.rel), LogLevel::Info, &msg)?;
            Ok(id)
        }
        Err(failure) => {
            counters.files_failed += 1;
            let id = write::insert_failed_image(tx, run_id, blake3, a.size, &failure.message)?;
            write::set_failure_kind(tx, id, failure.kind, ctx.env.get())?;
            write::log(tx, run_id, Some(id), Some(&file.rel), LogLevel::Error, &failure.message)?;
            Ok(id)
        }
    }
}

fn store_redone(
    ctx: &Run,
    tx: &Connection,
    file: &FileEntry,
    image_id: i64,
    result: Result<Redone, Failure>,
    counters: &mut RunCounters,
) -> Result<()> {
    let run_id = ctx.run_id;
    match result {
        Ok(Redone::Embedded { vectors, quality, calls }) => {
            counters.images_reembedded += 1;
            counters.embedder_calls += u64::from(calls);
            write::add_embeddings(tx, image_id, ctx.embedder_id, &vectors)?;
            write::rescore_faces(tx, image_id, &quality)?;
            let msg = format!("embedded and scored the stored faces again (new embedder or quality measure): {calls} embedder calls");
            write::log(tx, run_id, Some(image_id), Some(&file.rel), LogLevel::Info, &msg)
        }
        Ok(Redone::Detected(img)) => {
            counters.images_redetected += 1;
            counters.faces_found += img.faces.len() as u64;
            counters.detector_calls += u64::from(img.detector_calls);
            counters.embedder_calls += u64::from(img.embedder_calls);
            write::replace_detection(tx, image_id, &img, ctx.detector_id, ctx.embedder_id)?;
            let msg = format!("detected again with the new detector: {} face(s), {} detector calls", img.faces.len(), img.detector_calls);
            write::log(tx, run_id, Some(image_id), Some(&file.rel), LogLevel::Info, &msg)
        }
        // The earlier faces stay; the image stays marked for a redo and is tried next run.
        Err(failure) => write::log(
            tx,
            run_id,
            Some(image_id),
            Some(&file.rel),
            LogLevel::Warn,
            &format!("could not redo with the new models: {}", failure.message),
        ),
    }
}

fn link(
    conn: &Connection,
    run_id: RunId,
    file: &FileEntry,
    stat: Option<Stat>,
    checked: i64,
    image_id: i64,
    counters: &mut RunCounters,
) -> Result<()> {
    counters.files_linked += 1;
    write::upsert_file(conn, run_id, file, stat, checked, Some(image_id), None)?;
    write::log(
        conn,
        run_id,
        Some(image_id),
        Some(&file.rel),
        LogLevel::Info,
        "content already indexed (copy, rename or re-save); linked without decoding",
    )
}

fn print_summary(root: &Path, c: &RunCounters, failed_now: i64, elapsed: Duration, interrupted: bool) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { c.images_new as f64 / secs } else { 0.0 };
    eprintln!("facedb index {}", root.display());
    eprintln!(
        "  photos seen {}: {} new, {} linked (content already known), {} unchanged, {} failed, {} skipped (not regular files)",
        c.files_seen, c.images_new, c.files_linked, c.files_unchanged, c.files_failed, c.files_skipped
    );
    if c.images_reembedded + c.images_redetected + c.images_retried > 0 {
        eprintln!(
            "  models or environment changed: {} re-embedded, {} re-detected, {} earlier failures retried",
            c.images_reembedded, c.images_redetected, c.images_retried
        );
    }
    eprintln!("  faces found {} ({} detector and {} embedder calls)", c.faces_found, c.detector_calls, c.embedder_calls);
    eprintln!("  time {secs:.1} s ({rate:.2} new photos/s)");
    if interrupted {
        eprintln!("  interrupted: everything processed so far is saved; run the same command again to finish");
    }
    if failed_now > 0 {
        eprintln!("  {failed_now} file(s) or folder(s) in the dataset could not be indexed; `facedb report` lists them with the reason");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racy_timestamps_are_rechecked_but_future_ones_only_once_the_clock_reaches_them() {
        let now = 1_000_000_000_000i64;
        let cached = |mtime_ns, checked_ns| read::CachedFile {
            image_id: Some(1),
            size: 10,
            mtime_ns,
            inode: 7,
            checked_ns,
            missing: false,
            ctime_ns: Some(mtime_ns),
        };
        let stat = |mtime_ns| Stat { size: 10, mtime_ns, inode: 7, ctime_ns: mtime_ns };
        let hour = 3_600_000_000_000i64;
        assert!(is_unchanged(&cached(now - hour, now - 10), &stat(now - hour), now));
        // Modified in the second it was checked: may have changed within the tick.
        assert!(!is_unchanged(&cached(now - 1_000, now), &stat(now - 1_000), now));
        // An hour in the future: trusted until the clock gets there.
        assert!(is_unchanged(&cached(now + hour, now - 10), &stat(now + hour), now));
        assert!(!is_unchanged(&cached(now + hour, now - 10), &stat(now + hour), now + hour));
        assert!(!is_unchanged(&cached(now + hour, now - 10), &stat(now + hour + 1), now));
        // Same size, mtime and inode, another ctime: written in place with its mtime put back.
        let edited = Stat { ctime_ns: now - 5, ..stat(now - hour) };
        assert!(!is_unchanged(&cached(now - hour, now - 10), &edited, now));
        // A row from before ctimes were recorded is trusted as it was then.
        assert!(is_unchanged(&read::CachedFile { ctime_ns: None, ..cached(now - hour, now - 10) }, &edited, now));
    }
}
