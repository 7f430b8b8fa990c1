//! `facedb index`: walk -> stat cache -> hash -> analyse (workers) -> store (this thread).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::Connection;

use super::{database_path, progress, Globals, EXIT_FILES_FAILED, EXIT_INTERRUPTED};
use crate::cli::IndexArgs;
use crate::db::write::{self, RunCounters};
use crate::db::{read, Db};
use crate::models::{runtime::ORT_VERSION, ModelFiles, Models};
use crate::pipeline::detect::DetectParams;
use crate::pipeline::walk::{self, FileEntry, Stat};
use crate::pipeline::{analyze, hash, ms_since, AnalyzedImage, StageTimes};

/// Commit at least this often, so an interrupted run keeps nearly all of its work.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const COMMIT_ROWS: usize = 256;
/// A file modified this close to when it was last stat'ed may have changed within the same
/// timestamp tick; like git's racy-clean rule, such entries are re-hashed.
const RACY_NS: i64 = 2_000_000_000;

/// What a worker learned about one file.
enum Outcome {
    Analyzed {
        file: FileEntry,
        stat: Option<Stat>,
        blake3: String,
        size: u64,
        result: Result<AnalyzedImage, String>,
        times: StageTimes,
    },
    /// Content another path (earlier run or another worker) already has.
    KnownContent {
        file: FileEntry,
        stat: Option<Stat>,
        blake3: String,
        size: u64,
        read_ms: f64,
    },
    Unreadable {
        file: FileEntry,
        error: String,
    },
}

pub fn run(globals: &Globals, args: IndexArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let dir = args.dir.clone().unwrap_or_else(|| ".".into());
    if !dir.is_dir() {
        bail!("{} is not a directory; pass the photo folder to index", dir.display());
    }
    let root = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let db_file = database_path(globals, &root);
    // Opened (and so checked to be facedb's own, regular file) before its lock file is made.
    let db = Db::open(&db_file).map_err(|e| {
        if globals.db.is_none() {
            anyhow!("{e:#}; if {} is read-only, pass --db PATH to keep the database elsewhere", root.display())
        } else {
            e
        }
    })?;
    let _lock = lock_dataset(&db_file)?;
    if let Some(warning) = db.check_dataset(&root, &db_file)? {
        if !globals.quiet {
            eprintln!("{warning}");
        }
    }
    let conn = &db.conn;

    let files = ModelFiles::locate(globals.models.as_deref(), globals.device)?;
    let params =
        DetectParams { max_side: args.detect_size.max(320), score_threshold: args.min_score.clamp(0.0, 1.0), ..DetectParams::default() };
    let detector_id = write::ensure_model(conn, "detector", &files.detector_name, &files.detector_hash, &detector_params_json(&params))?;
    let embedder_id = write::ensure_model(conn, "embedder", &files.embedder_name, &files.embedder_hash, "{}")?;
    let args_json =
        serde_json::json!({"dir": root.to_string_lossy(), "detect_size": params.max_side, "min_score": params.score_threshold}).to_string();
    let run_id = write::begin_run(conn, "index", &args_json, Some(ORT_VERSION), Some(detector_id), Some(embedder_id))?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only fails if a handler is already set (tests calling twice); harmless then.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let mut counters = RunCounters::default();
    // Walk the folder while the stat cache loads: both are big on a no-op re-index.
    let (walked, cache) = std::thread::scope(|s| {
        let walker = s.spawn(|| walk::walk(&root));
        let cache = read::file_cache(conn);
        (walker.join(), cache)
    });
    // A failed walk must not look like an empty folder (that would mark every file missing).
    let (entries, problems) = walked.map_err(|_| anyhow!("listing {} failed", root.display()))?;
    let cache = cache?;
    counters.files_seen = entries.len() as u64 + problems.len() as u64;

    let tx = conn.unchecked_transaction()?;
    for p in &problems {
        write::log(&tx, run_id, None, Some(&p.rel), "error", &p.error)?;
        counters.files_failed += 1;
    }
    let seen: HashSet<&str> = entries.iter().map(|e| e.rel.as_str()).collect();
    for (path, c) in &cache {
        if !c.missing && !seen.contains(path.as_str()) {
            write::set_missing(&tx, path, true)?;
        }
    }
    let mut work = Vec::new();
    for e in entries {
        match cache.get(&e.rel) {
            Some(c) if is_unchanged(c, &e.stat) => {
                counters.files_unchanged += 1;
                if c.missing {
                    write::set_missing(&tx, &e.rel, false)?;
                }
            }
            _ => work.push(e),
        }
    }
    tx.commit()?;

    let mut known = read::image_hashes(conn)?;
    let status = if work.is_empty() {
        "ok"
    } else {
        let models = files.load()?;
        let claimed: HashSet<String> = known.keys().cloned().collect();
        let jobs = args.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
        process(
            conn,
            &models,
            work,
            &params,
            jobs,
            claimed,
            &mut known,
            &cache,
            run_id,
            detector_id,
            embedder_id,
            &mut counters,
            &interrupted,
            globals.quiet,
        )?
    };

    let totals = read::totals(conn)?;
    let final_status = if status == "interrupted" {
        status
    } else if totals.failed > 0 {
        "failures"
    } else {
        "ok"
    };
    write::finish_run(conn, run_id, final_status, &counters)?;
    // Fold the WAL back so the single file is complete for copying and other tools.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");

    if globals.json {
        let secs = started.elapsed().as_secs_f64();
        let summary = serde_json::json!({
            "command": "index", "dataset": root.to_string_lossy(), "run_id": run_id, "status": final_status,
            "counters": counters, "failed_files_in_folder": totals.failed, "seconds": secs,
            "new_photos_per_second": counters.images_new as f64 / secs.max(1e-9),
        });
        println!("{summary}");
    } else if !globals.quiet {
        print_summary(&root, &counters, totals.failed, started.elapsed(), status == "interrupted");
    }
    Ok(if status == "interrupted" {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if totals.failed > 0 {
        ExitCode::from(EXIT_FILES_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn detector_params_json(p: &DetectParams) -> String {
    serde_json::json!({"max_side": p.max_side, "score_threshold": p.score_threshold, "nms_iou": p.nms_iou}).to_string()
}

/// One index at a time per database: a second one is refused with a clear message.
fn lock_dataset(db_file: &Path) -> Result<File> {
    let lock_path = db_file.with_extension("lock");
    let file = File::options().create(true).truncate(false).write(true).open(&lock_path).with_context(|| {
        format!("cannot create {}; if the folder is read-only, pass --db PATH to keep the database elsewhere", lock_path.display())
    })?;
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

fn is_unchanged(c: &read::CachedFile, s: &Stat) -> bool {
    c.image_id.is_some()
        && c.size == s.size as i64
        && c.mtime_ns == s.mtime_ns
        && c.inode == s.inode as i64
        && c.mtime_ns < c.checked_ns - RACY_NS
}

#[allow(clippy::too_many_arguments)]
fn process(
    conn: &Connection,
    models: &Models,
    work: Vec<FileEntry>,
    params: &DetectParams,
    jobs: usize,
    claimed: HashSet<String>,
    known: &mut HashMap<String, i64>,
    cache: &HashMap<String, read::CachedFile>,
    run_id: i64,
    detector_id: i64,
    embedder_id: i64,
    counters: &mut RunCounters,
    interrupted: &AtomicBool,
    quiet: bool,
) -> Result<&'static str> {
    let bar = progress(work.len() as u64, quiet, "indexing");
    let total = work.len();
    let (work_tx, work_rx) = bounded::<FileEntry>(jobs * 4);
    let (out_tx, out_rx) = bounded::<Outcome>(jobs * 4);
    let claimed = Mutex::new(claimed);

    std::thread::scope(|scope| -> Result<&'static str> {
        let mut workers = Vec::new();
        for _ in 0..jobs.min(total) {
            let (rx, tx, claimed) = (work_rx.clone(), out_tx.clone(), &claimed);
            // Each worker builds its own sessions, so the cores load the models in parallel.
            workers.push(scope.spawn(move || -> Result<()> {
                let (mut detector, mut embedder) = (models.detector()?, models.embedder()?);
                worker(rx, tx, claimed, &mut detector, &mut embedder, params, interrupted);
                Ok(())
            }));
        }
        drop(out_tx);
        drop(work_rx);
        scope.spawn(move || {
            for e in work {
                if interrupted.load(Ordering::SeqCst) || work_tx.send(e).is_err() {
                    break;
                }
            }
        });

        let result = store(conn, &out_rx, known, cache, run_id, detector_id, embedder_id, counters, &bar);
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
        result?;
        if let Some(e) = worker_error {
            return Err(e);
        }
        Ok(if interrupted.load(Ordering::SeqCst) { "interrupted" } else { "ok" })
    })
}

fn worker(
    rx: Receiver<FileEntry>,
    tx: Sender<Outcome>,
    claimed: &Mutex<HashSet<String>>,
    detector: &mut crate::models::yunet::YuNet,
    embedder: &mut crate::models::sface::SFace,
    params: &DetectParams,
    interrupted: &AtomicBool,
) {
    for file in rx {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let t = Instant::now();
        let bytes = match std::fs::read(&file.abs) {
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
        let is_new = claimed.lock().map(|mut c| c.insert(blake3.clone())).unwrap_or(true);
        let outcome = if is_new {
            let mut times = StageTimes { read_hash: read_ms, ..StageTimes::default() };
            // A bug tripped by one strange file must cost that file, not the run.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyze(&bytes, detector, embedder, params, &mut times)))
                .unwrap_or_else(|panic| {
                    let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                    Err(anyhow::anyhow!("internal error while analysing this file ({}); please report it", why.unwrap_or_default()))
                })
                .map_err(|e| format!("{e:#}"));
            Outcome::Analyzed { file, stat, blake3, size, result, times }
        } else {
            Outcome::KnownContent { file, stat, blake3, size, read_ms }
        };
        if tx.send(outcome).is_err() {
            break;
        }
    }
}

/// The single writer: applies outcomes in batched transactions.
#[allow(clippy::too_many_arguments)]
fn store(
    conn: &Connection,
    rx: &Receiver<Outcome>,
    known: &mut HashMap<String, i64>,
    cache: &HashMap<String, read::CachedFile>,
    run_id: i64,
    detector_id: i64,
    embedder_id: i64,
    counters: &mut RunCounters,
    bar: &super::Progress,
) -> Result<()> {
    // Paths whose content was claimed by a worker that has not reported yet.
    let mut waiting: HashMap<String, Vec<(FileEntry, Option<Stat>)>> = HashMap::new();
    let mut tx = conn.unchecked_transaction()?;
    let (mut rows, mut last_commit) = (0usize, Instant::now());
    for outcome in rx {
        let checked = now_ns();
        match outcome {
            Outcome::Unreadable { file, error } => {
                write::upsert_file(&tx, run_id, &file, None, checked, None, Some(&error))?;
                write::log(&tx, run_id, None, Some(&file.rel), "error", &error)?;
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
            Outcome::Analyzed { file, stat, blake3, size, result, times } => {
                counters.bytes_read += size;
                counters.stage_ms.add(&times);
                let t = Instant::now();
                let image_id = match result {
                    Ok(img) => {
                        counters.images_new += 1;
                        counters.faces_found += img.faces.len() as u64;
                        counters.detector_calls += u64::from(img.detector_calls);
                        counters.embedder_calls += u64::from(img.embedder_calls);
                        let id = write::insert_image(&tx, run_id, &blake3, size, &img, &times, detector_id, embedder_id)?;
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
                        write::log(&tx, run_id, Some(id), Some(&file.rel), "info", &msg)?;
                        id
                    }
                    Err(error) => {
                        counters.files_failed += 1;
                        let id = write::insert_failed_image(&tx, run_id, &blake3, size, &error)?;
                        write::log(&tx, run_id, Some(id), Some(&file.rel), "error", &error)?;
                        id
                    }
                };
                if stat.is_none() {
                    write::log(
                        &tx,
                        run_id,
                        Some(image_id),
                        Some(&file.rel),
                        "warn",
                        "file changed while being indexed; it will be read again next run",
                    )?;
                }
                write::upsert_file(&tx, run_id, &file, stat, checked, Some(image_id), None)?;
                known.insert(blake3.clone(), image_id);
                for (f, s) in waiting.remove(&blake3).unwrap_or_default() {
                    link(&tx, run_id, &f, s, checked, image_id, counters)?;
                }
                counters.stage_ms.store += ms_since(t);
            }
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

fn link(
    conn: &Connection,
    run_id: i64,
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
        "info",
        "content already indexed (copy, rename or re-save); linked without decoding",
    )
}

fn print_summary(root: &Path, c: &RunCounters, failed_now: i64, elapsed: Duration, interrupted: bool) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { c.images_new as f64 / secs } else { 0.0 };
    eprintln!("facedb index {}", root.display());
    eprintln!(
        "  photos seen {}: {} new, {} linked (content already known), {} unchanged, {} failed",
        c.files_seen, c.images_new, c.files_linked, c.files_unchanged, c.files_failed
    );
    eprintln!("  faces found {} ({} detector and {} embedder calls)", c.faces_found, c.detector_calls, c.embedder_calls);
    eprintln!("  time {secs:.1} s ({rate:.2} new photos/s)");
    if interrupted {
        eprintln!("  interrupted: everything processed so far is saved; run the same command again to finish");
    }
    if failed_now > 0 {
        eprintln!("  {failed_now} file(s) in the folder could not be indexed; `facedb report` lists them with the reason");
    }
}
