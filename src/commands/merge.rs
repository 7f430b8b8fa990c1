//! `facedb merge --db TARGET SHARD_DB...`: joins shard databases made by `index --shard K/N`.
//! Every shard is checked against the others (same folder, same N, same models, current schema)
//! before the target is touched; then all of them are merged in one transaction, so an error or
//! Ctrl-C leaves the target as it was, and a merge can be re-run as more shards finish.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{outln, Globals};
use crate::cli::MergeArgs;
use crate::db::merge::{self, Merged, ModelKey, Provenance};
use crate::db::write::{self, RunCounters};
use crate::db::{Db, LogLevel, RunId, RunStatus};
use crate::models::runtime::ORT_VERSION;

/// A shard database, opened read-only, with what it was made from.
struct ShardDb {
    path: PathBuf,
    db: Db,
    shard: crate::pipeline::shard::Shard,
    prov: Provenance,
}

/// What every shard (and the target) must share.
struct Common {
    root: String,
    count: u32,
    models: (ModelKey, ModelKey),
}

pub fn run(globals: &Globals, args: MergeArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let target = globals.db.clone().context("merge writes into the database given by --db: add --db DIR/facedb.sqlite")?;
    let shards = args.shards.iter().map(|p| open_shard(p, &target)).collect::<Result<Vec<_>>>()?;
    let common = agree(&shards)?;
    warn_unfinished(globals, &shards);
    let db = Db::open(&target)?;
    let _lock = super::index::lock_dataset(&target)?;
    check_target(&db, &target, &common)?;
    let (run_id, merged) = merge_all(&db, &shards, &common)?;
    // Fold the WAL back so the single file is complete for copying.
    let _ = db.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    report(globals, &target, run_id, &shards, &merged, started)?;
    Ok(ExitCode::SUCCESS)
}

fn open_shard(path: &Path, target: &Path) -> Result<ShardDb> {
    if path.canonicalize().ok().is_some_and(|p| target.canonicalize().ok() == Some(p)) {
        bail!("{} is the merge target (--db); pass the shard databases as arguments and a new or merged file with --db", path.display());
    }
    let db = Db::open_read_only(path)?;
    let prov = merge::provenance(&db.conn).with_context(|| format!("reading {}", path.display()))?;
    let Some(shard) = prov.shard else {
        bail!(
            "{} is not a shard database (indexed without --shard); index its part with `facedb index DIR --shard K/N --db FILE`",
            path.display()
        );
    };
    Ok(ShardDb { path: path.to_path_buf(), db, shard, prov })
}

/// The folder, shard count and models all shards share; the first that differs is named.
fn agree(shards: &[ShardDb]) -> Result<Common> {
    let Some(first) = shards.first() else { bail!("no shard databases given; pass shard-*.sqlite after merge") };
    let provenance = |s: &ShardDb| -> Result<(String, (ModelKey, ModelKey))> {
        let root = s.prov.root.clone().with_context(|| format!("{} records no dataset folder; run its index again", s.path.display()))?;
        let models = s.prov.models.clone().with_context(|| {
            format!("{} has no index run; run `facedb index DIR --shard {} --db {}`", s.path.display(), s.shard, s.path.display())
        })?;
        Ok((root, models))
    };
    let (root, models) = provenance(first)?;
    for s in &shards[1..] {
        let (r, m) = provenance(s)?;
        let (a, b) = (s.path.display(), first.path.display());
        if r != root {
            bail!("{a} indexes the folder {r} but {b} indexes {root}; index every shard from the same folder path (mount it at the same place)");
        }
        if s.shard.count != first.shard.count {
            bail!(
                "{a} is shard {} but {b} is shard {}; shards of one merge must share N: index {a} again with --shard K/{} into a new file",
                s.shard,
                first.shard,
                first.shard.count
            );
        }
        if m != models {
            let (mine, theirs) = if m.0 != models.0 { (&m.0, &models.0) } else { (&m.1, &models.1) };
            bail!("{a} was indexed with {mine} but {b} with {theirs}; index {a} again with the same --models, --detect-size and --min-score into a new file");
        }
    }
    Ok(Common { root, count: first.shard.count, models })
}

/// A shard whose last index did not finish holds part of its files: merging it is safe (a later
/// merge adds the rest), but the result is incomplete until then.
fn warn_unfinished(globals: &Globals, shards: &[ShardDb]) {
    for s in shards {
        let status = s.prov.last_status.as_deref().unwrap_or("none");
        if !matches!(status, "ok" | "failures") && !globals.quiet {
            eprintln!(
                "warning: the last index of {} (shard {}) is `{status}`, so it holds only part of its files; run it again and merge again",
                s.path.display(),
                s.shard
            );
        }
    }
}

fn check_target(db: &Db, target: &Path, common: &Common) -> Result<()> {
    let prov = merge::provenance(&db.conn)?;
    if let Some(s) = prov.shard {
        bail!("{} is shard {s} itself; pass --db the merged database (a new file, or DIR/facedb.sqlite)", target.display());
    }
    if let Some(root) = prov.root.filter(|r| r != &common.root) {
        bail!("{} indexes the folder {root}, the shards {}; pass --db a new file for the merged database", target.display(), common.root);
    }
    if let Some(models) = prov.models.filter(|m| m != &common.models) {
        let (mine, theirs) = if models.0 != common.models.0 { (&models.0, &common.models.0) } else { (&models.1, &common.models.1) };
        bail!(
            "{} holds faces of {mine} but the shards were indexed with {theirs}; merge into a new file (--db NEW.sqlite)",
            target.display()
        );
    }
    Ok(())
}

/// Everything in one transaction: the target changes all at once or not at all.
fn merge_all(db: &Db, shards: &[ShardDb], common: &Common) -> Result<(RunId, Vec<Merged>)> {
    let tx = db.conn.unchecked_transaction()?;
    let (d, e) = &common.models;
    let detector = write::ensure_model(&tx, &d.kind, &d.name, &d.file_blake3, &d.params_json)?;
    let embedder = write::ensure_model(&tx, &e.kind, &e.name, &e.file_blake3, &e.params_json)?;
    let names: Vec<String> = shards.iter().map(|s| s.path.display().to_string()).collect();
    let args = serde_json::json!({"dir": common.root, "shards": names, "shard_count": common.count}).to_string();
    let run_id = write::begin_run(&tx, "merge", &args, Some(ORT_VERSION), Some(detector), Some(embedder))?;
    merge::set_dataset_root(&tx, &common.root)?;
    // Every shard's forget requests first: none of them may be undone by another shard's copy.
    let mut forgotten = 0;
    for s in shards {
        forgotten += merge::copy_forgotten(&tx, &s.db.conn).with_context(|| format!("merging {}", s.path.display()))?;
    }
    let mut all = Vec::with_capacity(shards.len());
    let mut counters = RunCounters::default();
    for s in shards {
        let m = merge::merge_shard(&tx, &s.db.conn, s.shard, run_id).with_context(|| format!("merging {}", s.path.display()))?;
        let msg = format!(
            "merged shard {} from {}: {} new images ({} faces), {} already known, {} of {} paths changed",
            s.shard,
            s.path.display(),
            m.images_new,
            m.faces_new,
            m.images_known,
            m.files_changed,
            m.files
        );
        write::log(&tx, run_id, None, None, LogLevel::Info, &msg)?;
        counters.images_new += m.images_new;
        counters.faces_found += m.faces_new;
        counters.files_seen += m.files;
        all.push(m);
    }
    let erased = crate::db::forget::erase_forgotten_faces(&tx)?;
    if forgotten > 0 || erased > 0 {
        let msg = format!("{forgotten} forget request(s) from the shards; {erased} face(s) the target held were erased by them");
        write::log(&tx, run_id, None, None, LogLevel::Info, &msg)?;
    }
    write::finish_run(&tx, run_id, RunStatus::Ok, &counters)?;
    tx.commit()?;
    Ok((run_id, all))
}

fn report(globals: &Globals, target: &Path, run_id: RunId, shards: &[ShardDb], merged: &[Merged], started: Instant) -> Result<()> {
    let sum = |f: fn(&Merged) -> u64| merged.iter().map(f).sum::<u64>();
    if globals.json {
        let per: Vec<_> = shards
            .iter()
            .zip(merged)
            .map(|(s, m)| serde_json::json!({"path": s.path.to_string_lossy(), "shard": s.shard.to_string(), "merged": m}))
            .collect();
        let summary = serde_json::json!({"command": "merge", "database": target.to_string_lossy(), "run_id": run_id, "shards": per,
            "images_new": sum(|m| m.images_new), "faces_new": sum(|m| m.faces_new), "faces_forgotten": sum(|m| m.faces_forgotten), "files_changed": sum(|m| m.files_changed),
            "seconds": started.elapsed().as_secs_f64()});
        outln!("{summary}");
    } else if !globals.quiet {
        eprintln!("facedb merge into {}", target.display());
        eprintln!(
            "  {} shard(s): {} new images ({} faces), {} already known, {} of {} paths changed, {:.1} s",
            shards.len(),
            sum(|m| m.images_new),
            sum(|m| m.faces_new),
            sum(|m| m.images_known),
            sum(|m| m.files_changed),
            sum(|m| m.files),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
