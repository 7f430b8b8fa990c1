//! `facedb match`: references (embedded once, cached by content hash) -> one scan of stored
//! embeddings -> a decision per photo -> crops, manifests and stored results.
//! (Named `find` because `match` is a Rust keyword.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;

use super::{database_path, find_dataset, progress, Globals};
use crate::cli::MatchArgs;
use crate::crop::CropSpec;
use crate::db::read::{self, RefRow};
use crate::db::write::{self, MatchRow, NewMatchRun, NewRef, RunCounters};
use crate::db::{decisions, review, vectors, Db};
use crate::histogram::RunHistogram;
use crate::matching::{self, Decision, Filters, Options, Reason};
use crate::models::sface::{SFace, EMBEDDING_DIM};
use crate::models::yunet::YuNet;
use crate::models::{runtime::ORT_VERSION, ModelFiles};
use crate::output::{OutputDir, Owner};
use crate::pipeline::decode::Decoders;
use crate::pipeline::detect::DetectParams;
use crate::pipeline::quality::{BLURRY, SHARP};
use crate::pipeline::walk;
use crate::pipeline::{analyze, hash, largest, StageTimes};
use crate::util::{display_path, display_str, read_photo_file};

mod best;
mod curation;
mod layout;
mod output;

pub use layout::{LayoutKind, METADATA_JSONL};
pub use output::{MANIFEST_COLUMNS, REJECTED_COLUMNS};

pub const MANIFEST_CSV: &str = "manifest.csv";
pub const MANIFEST_JSONL: &str = "manifest.jsonl";
pub const REJECTED_CSV: &str = "rejected.csv";

pub fn run(globals: &Globals, mut args: MatchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // --list is a dry run that prints the decisions instead of the histogram.
    args.dry_run |= args.list;
    if args.layout == LayoutKind::Plain && (args.token.is_some() || args.caption.is_some()) {
        bail!("--token and --caption name the person for a trainer; add --layout kohya or --layout imagefolder (the plain layout writes no captions)");
    }
    let root = find_dataset(args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    if !db_file.is_file() {
        bail!("no database at {}; run `facedb index {}` first", display_path(&db_file), display_path(&root));
    }
    let (db, _scratch) = open_database(&db_file, args.dry_run)?;
    // One transaction for the whole run: a crash leaves no half-recorded match, and --dry-run
    // simply rolls it back, so it writes nothing.
    let tx = db.conn.unchecked_transaction()?;
    super::people::add_person_refs(&tx, &mut args)?;
    let files = ModelFiles::locate(globals.models.as_deref(), globals.device)?;
    let decoders = Decoders::new(Some(&files.dir));
    let ref_params = DetectParams::default();
    let detector_id = write::ensure_model(
        &tx,
        "detector",
        &files.detector_name,
        &files.detector_hash,
        &super::index::detector_params_json(&ref_params, &decoders),
    )?;
    let embedder_id = write::ensure_model(&tx, "embedder", &files.embedder_name, &files.embedder_hash, "{}")?;
    if !args.refs.is_empty() || !args.all {
        check_embeddings(&tx, &files, embedder_id, &root)?;
    }
    let out_dir = args.out.clone().unwrap_or_else(|| root.join("facedb-crops"));
    let spec =
        CropSpec { margin: args.margin, square: args.square, size: args.size, upscale: args.upscale, align: args.align, pad: args.pad };
    let filters = Filters { min_face: args.min_face, min_sharpness: args.min_sharpness, max_yaw: args.max_yaw, min_score: args.min_score };
    let options_json = serde_json::json!({"filters": filters, "crop": spec, "format": args.format, "quality": args.quality, "allow_ambiguous": args.allow_ambiguous, "best": args.best}).to_string();
    let args_json = serde_json::json!({
        "dir": root.to_string_lossy(), "ref": args.refs, "not": args.negatives, "threshold": args.threshold, "combine": args.combine,
        "expand": args.expand, "all": args.all, "dry_run": args.dry_run, "out": out_dir.to_string_lossy(), "options": serde_json::from_str::<serde_json::Value>(&options_json)?,
        // What the review page needs to run this match again with another threshold.
        "layout": clap::ValueEnum::to_possible_value(&args.layout).map(|v| v.get_name().to_string()),
        "token": args.token, "caption": args.caption, "repeats": args.repeats, "name": args.name,
    })
    .to_string();
    let run_id = write::begin_run(&tx, "match", &args_json, Some(ORT_VERSION), Some(detector_id), Some(embedder_id))?;

    let mut refs = References {
        files: &files,
        decoders: &decoders,
        detector_id,
        embedder_id,
        run_id,
        sessions: None,
        model_calls: 0,
        quiet: globals.quiet,
    };
    let positives = refs.load_all(&tx, &args.refs, "--ref")?;
    let negatives = refs.load_all(&tx, &args.negatives, "--not")?;
    if positives.is_empty() && !args.all {
        bail!("no usable reference face; pass --ref with a photo where the face is clearly visible and at least 40 px wide");
    }
    tx.execute("UPDATE runs SET ref_model_calls = ?2 WHERE id = ?1", rusqlite::params![run_id, refs.model_calls])?;

    let pos_vecs: Vec<Vec<f32>> = positives.iter().map(|r| r.vector.clone()).collect();
    if !globals.quiet {
        warn_odd_references(&positives, &pos_vecs, args.threshold);
    }
    let mut neg_vecs: Vec<Vec<f32>> = negatives.iter().map(|r| r.vector.clone()).collect();
    // The output folder is taken before deciding: crops the user deleted from it are rejections
    // this run must already respect. --dry-run writes nothing and takes no folder.
    let out = if args.dry_run { None } else { Some(open_output(&tx, &out_dir, &root, &db_file)?) };
    let curated = curation::load(&tx, out.as_ref(), &curation::person_of(&positives), embedder_id)?;
    neg_vecs.extend(curated.negatives.iter().cloned());
    let opts =
        Options { threshold: args.threshold, combine: args.combine, filters, allow_ambiguous: args.allow_ambiguous, expand: args.expand };
    // --dry-run writes nothing, not even the vector cache: a stale one is rebuilt in a temporary file.
    let cache_write = if args.dry_run { vectors::CacheWrite::Temporary } else { vectors::CacheWrite::Save };
    let mut matrix = vectors::load(&tx, &db_file, embedder_id, EMBEDDING_DIM, cache_write)?;
    if let Some(w) = matrix.warning.as_deref().filter(|_| !globals.quiet) {
        eprintln!("warning: {w}");
    }
    let (mut decisions, face_rows) = if args.all {
        decide_all(&tx, &mut matrix, &pos_vecs, &filters, &curated.excluded)?
    } else {
        let decisions = matching::decide_with(&matrix.faces, &mut matrix.vectors, &pos_vecs, &neg_vecs, &opts, &curated.excluded)?;
        (decisions, std::mem::take(&mut matrix.faces))
    };
    // --best needs the matched faces' vectors, still in the matrix (in `--all` mode face_rows is not in matrix order).
    let best_vectors = match args.best {
        Some(_) => best::matched_vectors(&mut matrix.vectors, if args.all { &matrix.faces } else { &face_rows }, &decisions)?,
        None => HashMap::new(),
    };
    // A deleted crop means "not this picture": its copies (a re-encode, a resized copy) stay out too.
    for copy in curation::copies_of_deleted(&tx, &curated, &decisions, embedder_id)? {
        if let Some(d) = decisions.iter_mut().find(|d| d.face_id == copy) {
            d.reason = Some(Reason::RejectedByUser);
        }
    }
    // Decisions about faces this run considered (not about faces re-detected or gone since).
    let applied = face_rows.iter().filter(|f| curated.excluded.contains(&f.face_id)).count();
    let cache_refresh = matrix.refresh();
    drop(matrix);
    if args.threshold > matching::SUSPICIOUS_THRESHOLD && !pos_vecs.is_empty() && !globals.quiet {
        let best: Vec<f32> = decisions.iter().map(|d| d.distance).collect();
        let gap = matching::widest_gap(&best)
            .map(|(a, b)| format!("; this run's distances have their widest gap between {a:.2} and {b:.2}"))
            .unwrap_or_default();
        eprintln!(
            "warning: --threshold {} is a cosine distance (0 = the same face, 1 = unrelated), not a similarity: at {} nearly anyone matches (the default is {}){gap}",
            args.threshold,
            args.threshold,
            matching::DEFAULT_THRESHOLD
        );
    }
    output::reject_smaller_than_size(&tx, &mut decisions, &spec)?;
    // Photos far beyond the threshold are counted, not listed: at a million photos one row each
    // per run would dwarf everything else, and they say nothing a threshold change would need.
    let recorded: Vec<&Decision> = decisions.iter().filter(|d| is_recorded(d, args.threshold)).collect();
    let mut wanted_paths: Vec<i64> = recorded.iter().map(|d| d.image_id).collect();
    if args.dry_run {
        wanted_paths.extend(decisions.iter().filter(|d| (d.distance - args.threshold).abs() <= DRY_RUN_BAND).map(|d| d.image_id));
    }
    let paths = read::paths_of_images(&tx, &wanted_paths)?;
    // Quality rows of just the faces that get listed (a million-entry map costs more than the match).
    let listed: HashSet<i64> = recorded
        .iter()
        .map(|d| d.face_id)
        .chain(args.dry_run.then_some(&decisions).into_iter().flatten().filter(|d| d.distance <= args.threshold).map(|d| d.face_id))
        .collect();
    let quality: HashMap<i64, matching::FaceRow> =
        face_rows.into_iter().filter(|f| listed.contains(&f.face_id)).map(|f| (f.face_id, f)).collect();

    let Some(out) = out else {
        if args.list {
            print_list(&recorded, &paths)?;
        } else {
            print_dry_run(&decisions, &paths, &quality, args.threshold)?;
            if let Some(n) = args.best {
                super::outln!("{}", best::choose(&tx, &root, &decoders, best_params(&args, n), &decisions, best_vectors)?.describe());
            }
        }
        drop(tx); // rolled back: nothing written
        return Ok(ExitCode::SUCCESS);
    };
    // Check every name this run writes before anything is written (or committed): a refusal
    // leaves the folder and the database as they were. Crops the user edited are theirs: kept.
    let best = args.best.map(|n| best::choose(&tx, &root, &decoders, best_params(&args, n), &decisions, best_vectors)).transpose()?;
    let to_crop: Vec<&Decision> = decisions.iter().filter(|d| d.matched() && best.as_ref().is_none_or(|b| b.picked(d.face_id))).collect();
    let layout =
        layout::Layout { kind: args.layout, token: args.token.as_deref(), caption: args.caption.as_deref(), repeats: args.repeats };
    let names = layout::place_all(&layout, output::crop_names(&to_crop, &paths, args.format));
    layout.check_names(&out, &names)?;
    let kept = &out.curation().edited;
    // Commit the run row and any new references now: cropping can take minutes and must not
    // hold the write lock that a concurrent `index` needs. The results go in one transaction below.
    tx.commit()?;
    let mut run_guard = write::RunGuard::new(&db.conn, run_id);
    // Ctrl-C while cropping: the run is recorded as interrupted before the process stops (the
    // crops it left are removed by the next run into this folder).
    let (handler_db, handler_run) = (db_file.clone(), run_id);
    // Fails only if a handler is already set in this process; the next run then closes the run.
    let _ = ctrlc::set_handler(move || {
        if let Ok(db) = Db::open(&handler_db) {
            let _ = write::abort_run(&db.conn, handler_run, "interrupted");
        }
        std::process::exit(i32::from(super::EXIT_INTERRUPTED));
    });

    let bar = progress(to_crop.len() as u64, globals.quiet, "cropping");
    let job = output::CropJob {
        db_file: &db_file,
        root: &root,
        decoders: &decoders,
        out: &out,
        names: &names,
        kept,
        spec,
        format: args.format,
        quality: args.quality,
    };
    let crops = job.run(&to_crop, &bar);
    bar.finish();
    let (upscaled, max_upscale) = output::upscaled(&crops);

    let tx = db.conn.unchecked_transaction()?;
    let ref_list: Vec<&RefRow> = positives.iter().collect();
    let mut manifest = output::Manifest::create(&out, &root)?;
    let (mut crop_failures, mut matched, mut rejected, mut ambiguous) = (0u64, 0u64, 0u64, 0u64);
    // Why each photo that got no crop got none: the one count the summary, --json and the
    // report share (faces passed over by --best included).
    let mut why_not: BTreeMap<String, u64> = BTreeMap::new();
    let distance_of = |d: &Decision| (!(args.all && pos_vecs.is_empty())).then_some(d.distance);
    for d in &decisions {
        ambiguous += u64::from(d.ambiguous);
        let reason = d.reason.map(Reason::as_str);
        if !is_recorded(d, args.threshold) {
            rejected += 1;
            *why_not.entry(reason.unwrap_or("too far").to_string()).or_default() += 1;
            continue;
        }
        match crops.get(&d.face_id) {
            Some(Ok(c)) => {
                matched += 1;
                manifest.add(c, d, distance_of(d), &ref_list, best.as_ref().and_then(|b| b.choice(d.face_id)))?;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &MatchRow { decision: d, distance: distance_of(d), reason: None, crop_path: Some(&c.file_name), plan: Some(&c.plan) },
                )?;
            }
            Some(Err(e)) => {
                crop_failures += 1;
                let why = format!("crop failed: {e:#}");
                *why_not.entry("crop failed".to_string()).or_default() += 1;
                write::log(&tx, run_id, Some(d.image_id), paths.get(&d.image_id).map(String::as_str), "error", &why)?;
                manifest.reject(d, distance_of(d), &why, paths.get(&d.image_id), quality.get(&d.face_id))?;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &MatchRow { decision: d, distance: distance_of(d), reason: Some(&why), crop_path: None, plan: None },
                )?;
            }
            None => {
                rejected += 1;
                let passed_over = best.as_ref().and_then(|b| b.reason(d.face_id));
                let why = reason.or(passed_over.as_deref()).unwrap_or("not cropped");
                let key = match (reason, &passed_over) {
                    (None, Some(_)) => "passed over by --best",
                    _ => why,
                };
                *why_not.entry(key.to_string()).or_default() += 1;
                manifest.reject(d, distance_of(d), why, paths.get(&d.image_id), quality.get(&d.face_id))?;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &MatchRow { decision: d, distance: distance_of(d), reason: Some(why), crop_path: None, plan: None },
                )?;
            }
        }
    }
    manifest.finish()?;
    let in_folder: std::collections::BTreeSet<String> =
        crops.iter().filter_map(|(id, c)| c.as_ref().ok().and(names.get(id))).cloned().collect();
    layout.write(&out, &in_folder, kept)?;
    let report = CurationReport {
        applied,
        deleted: curated.deleted_crops,
        cleared: curated.cleared_crops,
        moved: curated.moved_crops,
        edited: kept.len(),
        dropped: curation::dropped(&out, &names, &decisions),
    };
    // Remove what facedb wrote here before and did not write now (still byte-identical only).
    out.finish()?;

    let ref_ids: Vec<i64> = positives.iter().map(|r| r.id).collect();
    let neg_ids: Vec<i64> = negatives.iter().map(|r| r.id).collect();
    let combine = serde_json::to_value(args.combine)?.as_str().unwrap_or("nearest").to_string();
    let run = NewMatchRun {
        mode: if args.all { "all" } else { "match" },
        threshold: args.threshold,
        combine: &combine,
        expand: args.expand,
        options_json: &options_json,
        out_dir: &out_dir.to_string_lossy(),
        ref_ids: &ref_ids,
        neg_ref_ids: &neg_ids,
    };
    write::insert_match_run(&tx, run_id, &run)?;
    if let Some(b) = &best {
        b.store(&tx, run_id)?;
    }
    crate::db::decisions::set_applied(&tx, run_id, report.applied)?;
    let photos = distinct_photos(&decisions) as u64;
    write::finish_match_run(&tx, run_id, photos, matched, rejected, ambiguous)?;
    // Every photo's distance, the far ones that get no row included (`--all` without a
    // reference has no distances).
    if !(args.all && pos_vecs.is_empty()) {
        review::insert_histogram(&tx, run_id, &RunHistogram::new(decisions.iter().map(|d| d.distance), args.threshold))?;
    }
    if let Some(name) = &args.name {
        review::set_run_name(&tx, run_id, name)?;
    }
    let counters = RunCounters { files_failed: crop_failures, ..RunCounters::default() };
    write::finish_run(&tx, run_id, if crop_failures > 0 { "failures" } else { "ok" }, &counters)?;
    tx.commit()?;
    run_guard.finished();

    if globals.json {
        let reasons = &why_not;
        let summary = serde_json::json!({
            "command": "match", "dataset": root.to_string_lossy(), "run_id": run_id, "out_dir": out_dir.to_string_lossy(),
            "photos": photos, "matched": matched, "rejected": reasons, "ambiguous": ambiguous, "crop_failures": crop_failures,
            "upscaled": {"crops": upscaled, "max_factor": max_upscale},
            "reference_model_calls": refs.model_calls, "vector_cache": cache_refresh.as_str(), "best": best.as_ref().map(best::Best::summary), "seconds": started.elapsed().as_secs_f64(),
            "decisions_applied": report.applied, "deleted_crops": report.deleted, "cleared_crops": report.cleared, "moved_crops": report.moved, "edited_crops_kept": report.edited, "dropped_crops": report.dropped,
        });
        super::outln!("{summary}");
    } else if !globals.quiet {
        print_summary(&args, &root, &out_dir, &decisions, &paths, matched, &why_not, started);
        let small = decisions.iter().filter(|d| d.reason == Some(Reason::SmallerThanSize)).count();
        if small > 0 {
            eprintln!(
                "  {small} face(s) too small for --size {} were not written (listed in {REJECTED_CSV}); --upscale enlarges them, a smaller --size keeps them sharp",
                args.size.unwrap_or(0)
            );
        }
        if upscaled > 0 {
            eprintln!(
                "  {upscaled} crop(s) enlarged to --size {} by --upscale (largest factor {max_upscale:.2}x; `upscale` in {MANIFEST_CSV})",
                args.size.unwrap_or(0)
            );
        }
        if let Some(b) = &best {
            eprintln!("  {}; rank, best_score and dup_group are in {MANIFEST_CSV}", b.describe());
        }
        report.print(&out_dir);
    }
    Ok(if crop_failures > 0 { ExitCode::from(super::EXIT_FILES_FAILED) } else { ExitCode::SUCCESS })
}

/// What curation did in this run, for the summary.
struct CurationReport {
    applied: usize,
    deleted: usize,
    /// Crops gone with most of the folder (a fresh start, no rejections) and crops renamed.
    cleared: usize,
    moved: usize,
    edited: usize,
    /// Crops of earlier runs this run removed, by why.
    dropped: BTreeMap<String, usize>,
}

impl CurationReport {
    fn print(&self, out_dir: &Path) {
        if self.applied > 0 {
            eprintln!("  {} decision(s) applied: faces rejected by the user for these references are not cropped (`facedb sql \"SELECT * FROM decisions_v\"`)", self.applied);
        }
        if self.deleted > 0 {
            eprintln!(
                "  {} crop(s) deleted from {} since the last run: remembered as rejected, not written again",
                self.deleted,
                display_path(out_dir)
            );
        }
        if self.cleared > 0 {
            eprintln!(
                "  {} crop(s) gone from {} at once (most of what was there): taken as a fresh start, not as rejections; to reject faces, delete a few crops or use `facedb reject`",
                self.cleared,
                display_path(out_dir)
            );
        }
        if self.moved > 0 {
            eprintln!(
                "  {} crop(s) renamed or moved within {}: not rejections; facedb writes them again under its own names (delete your copies if you do not want two)",
                self.moved,
                display_path(out_dir)
            );
        }
        if self.edited > 0 {
            eprintln!(
                "  {} crop(s) edited in {} since facedb wrote them: kept as they are, never overwritten",
                self.edited,
                display_path(out_dir)
            );
        }
        let total: usize = self.dropped.values().sum();
        if total > 0 {
            let why: Vec<String> = self.dropped.iter().map(|(k, v)| format!("{v} {k}")).collect();
            eprintln!("  {total} crop(s) of the previous run removed: {}", why.join(", "));
        }
    }
}

/// Rejected photos farther than this beyond the threshold are counted but not listed in
/// `rejected.csv` or stored as match results.
pub const NEAR_MISS_BAND: f32 = 0.10;
/// `--dry-run` lists photos this close to the threshold on either side.
const DRY_RUN_BAND: f32 = 0.05;

/// Number of photos among the decisions (one per photo, or one per face with `--all`; both
/// come grouped by photo).
fn distinct_photos(decisions: &[Decision]) -> usize {
    if decisions.is_sorted_by_key(|d| d.image_id) {
        decisions.chunk_by(|a, b| a.image_id == b.image_id).count()
    } else {
        decisions.iter().map(|d| d.image_id).collect::<HashSet<_>>().len()
    }
}

/// What `--best N` counts as a useful face size: what fills `--size` without enlarging, after the margin.
fn best_params(args: &MatchArgs, n: u32) -> crate::select::Params {
    let useful_face_px = args.size.map_or(crate::select::DEFAULT_USEFUL_FACE, |s| s as f32 / (1.0 + 2.0 * args.margin));
    crate::select::Params { n: n as usize, useful_face_px }
}

fn is_recorded(d: &Decision, threshold: f32) -> bool {
    d.reason != Some(Reason::TooFar) || d.distance <= threshold + NEAR_MISS_BAND
}

/// `--all`: every face is its own decision (distance to the references if any were given).
fn decide_all(
    conn: &Connection,
    matrix: &mut vectors::FaceMatrix,
    refs: &[Vec<f32>],
    filters: &Filters,
    rejected: &HashSet<i64>,
) -> Result<(Vec<Decision>, Vec<matching::FaceRow>)> {
    let (nearest, _) = matching::distances(&mut matrix.vectors, refs, &[])?;
    let embedded: HashMap<i64, f32> = matrix.faces.iter().zip(nearest).map(|(f, d)| (f.face_id, d)).collect();
    let faces = read::all_faces(conn)?;
    let decisions = faces
        .iter()
        .map(|f| {
            let distance = embedded.get(&f.face_id).copied().filter(|d| d.is_finite()).unwrap_or(f32::NAN);
            let reason = if rejected.contains(&f.face_id) { Some(Reason::RejectedByUser) } else { filters.reject(f) };
            Decision {
                image_id: f.image_id,
                face_id: f.face_id,
                distance,
                runner_up: None,
                negative_distance: None,
                ambiguous: false,
                same_face_copies: 0,
                pass: 1,
                reason,
            }
        })
        .collect();
    Ok((decisions, faces))
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

/// Names the references that disagree with the others (a folder of references holding two
/// people, a reference photo of someone else): each would pull in that other person's photos.
fn warn_odd_references(refs: &[RefRow], vectors: &[Vec<f32>], threshold: f32) {
    for (i, median) in matching::odd_references(vectors, threshold) {
        if let Some(r) = refs.get(i) {
            eprintln!(
                "warning: reference {} is {median:.2} from the other references (median cosine distance, over the threshold {threshold}): is it the same person? Matches through it may be someone else",
                display_str(&r.path)
            );
        }
    }
}

/// With no stored embedding from the embedder in use (its model file was replaced), every photo
/// would be "not considered" and every earlier crop removed as stale: stop before that.
fn check_embeddings(conn: &Connection, files: &ModelFiles, embedder_id: i64, root: &Path) -> Result<()> {
    let (current, all) = read::embedding_counts(conn, embedder_id)?;
    if current == 0 && all > 0 {
        bail!(
            "the database holds no embeddings from the embedder model {} now in use (blake3 {}), only {all} from another version of it; run `facedb index {}` to re-embed the stored faces (nothing was matched, written or deleted)",
            files.embedder_name,
            files.embedder_hash.get(..16).unwrap_or(&files.embedder_hash),
            display_path(root)
        );
    }
    Ok(())
}

/// The output folder, owned by this database (two datasets in one folder are refused).
fn open_output(conn: &Connection, out_dir: &Path, root: &Path, db_file: &Path) -> Result<OutputDir> {
    let owner = Owner { database_id: read::database_id(conn)?, dataset: root.to_string_lossy().into_owned() };
    OutputDir::open(out_dir, root, db_file, owner)
}

/// Loads reference embeddings, computing (and storing) each new reference photo's once.
struct References<'a> {
    files: &'a ModelFiles,
    decoders: &'a Decoders,
    detector_id: i64,
    embedder_id: i64,
    run_id: i64,
    sessions: Option<(YuNet, SFace)>,
    model_calls: i64,
    quiet: bool,
}

impl References<'_> {
    fn load_all(&mut self, conn: &Connection, args: &[PathBuf], flag: &str) -> Result<Vec<RefRow>> {
        let mut out: Vec<RefRow> = Vec::new();
        for arg in args {
            if arg.is_dir() {
                let (entries, _) = walk::walk(arg);
                if entries.is_empty() {
                    bail!("{flag} {}: the folder holds no photos", display_path(arg));
                }
                for e in entries {
                    match self.load(conn, &e.abs) {
                        Ok(r) => out.push(r),
                        Err(err) if !self.quiet => {
                            eprintln!("warning: skipping reference {}: {err:#}", display_path(&e.abs))
                        }
                        Err(_) => {}
                    }
                }
            } else if let Some(face_id) = face_ref(arg) {
                out.push(self.load_face(conn, face_id, flag)?);
            } else if arg.to_str().is_some_and(|a| a.starts_with("face:")) && !arg.exists() {
                bail!(
                    "{flag} {}: not a stored face; write face:ID with the face's number (face_id in manifest.csv, or `facedb info PHOTO`)",
                    display_path(arg)
                );
            } else {
                out.push(self.load(conn, arg)?);
            }
        }
        // The same photo given twice (or copied) counts once.
        let mut seen = HashSet::new();
        out.retain(|r| seen.insert(r.id));
        Ok(out)
    }

    /// A stored face as a reference (`face:ID`): its stored embedding, no model call. Stored in
    /// `refs` under the key `face:<photo blake3>:<face idx>`, which names the person in decisions.
    fn load_face(&mut self, conn: &Connection, face_id: i64, flag: &str) -> Result<RefRow> {
        let Some(key) = decisions::face_key(conn, face_id)? else {
            bail!("{flag} face:{face_id}: no such face; see the face_id column of manifest.csv or `facedb info PHOTO`");
        };
        if let Some(r) = read::find_ref(conn, &key, self.detector_id, self.embedder_id)? {
            return Ok(r);
        }
        let Some(vector) = decisions::face_vector(conn, face_id, self.embedder_id)? else {
            bail!("{flag} face:{face_id}: the face has no embedding from the current model; run `facedb index` first");
        };
        decisions::insert_face_ref(conn, &key, face_id, (self.detector_id, self.embedder_id), &vector)?;
        read::find_ref(conn, &key, self.detector_id, self.embedder_id)?.ok_or_else(|| anyhow!("reference face:{face_id} was not stored"))
    }

    fn load(&mut self, conn: &Connection, path: &Path) -> Result<RefRow> {
        // Only a regular file under the size cap: a FIFO or /dev/zero is refused at once.
        let bytes = read_photo_file(path).context("reading a reference photo")?;
        let blake3 = hash::content_hash(&bytes);
        // Recorded by its real path (canonical, absolute) as given this time: the same content
        // passed from elsewhere later must not keep showing the path of its first use.
        let path_str = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf());
        let path_str = path_str.to_string_lossy().into_owned();
        if let Some(mut r) = read::find_ref(conn, &blake3, self.detector_id, self.embedder_id)? {
            if r.path != path_str {
                write::set_ref_path(conn, r.id, &path_str)?;
                r.path = path_str;
            }
            if r.faces_in_photo > 1 && !self.quiet {
                eprintln!("note: {} has {} faces; using the largest", display_path(path), r.faces_in_photo);
            }
            return Ok(r);
        }
        if self.sessions.is_none() {
            let models = self.files.load()?;
            self.sessions = Some((models.detector()?, models.embedder()?));
        }
        let Some((detector, embedder)) = self.sessions.as_mut() else { bail!("model sessions unavailable") };
        let img = analyze(&bytes, self.decoders, detector, embedder, &DetectParams::default(), &mut StageTimes::default())
            .with_context(|| format!("reference photo {}", display_path(path)))?;
        self.model_calls += i64::from(img.detector_calls + img.embedder_calls);
        let Some(face) = largest(&img.faces) else {
            bail!("no face found in {}; pass a photo where the face is clearly visible and at least 40 px wide", display_path(path));
        };
        let Some(vector) = face.embedding else {
            bail!("the face in {} could not be aligned (landmarks degenerate); pass a clearer, more frontal photo", display_path(path));
        };
        if img.faces.len() > 1 && !self.quiet {
            eprintln!(
                "note: {} has {} faces; using the largest ({}x{} px)",
                display_path(path),
                img.faces.len(),
                face.detection.w.round(),
                face.detection.h.round()
            );
        }
        let new = NewRef {
            blake3: &blake3,
            path: &path_str,
            width: img.width,
            height: img.height,
            faces_in_photo: img.faces.len(),
            face,
            vector: &vector,
        };
        write::insert_ref(conn, &new, self.detector_id, self.embedder_id)?;
        write::log(
            conn,
            self.run_id,
            None,
            Some(&path_str),
            "info",
            &format!("reference embedded: {} face(s), largest used", img.faces.len()),
        )?;
        read::find_ref(conn, &blake3, self.detector_id, self.embedder_id)?
            .ok_or_else(|| anyhow!("reference {} was not stored", display_path(path)))
    }
}

/// The face id in a crop file name match wrote.
pub fn face_in_crop_name(name: &str) -> Option<i64> {
    curation::face_in_name(name)
}

/// `face:ID` names a stored face, unless a file of that name exists (then it is a photo).
pub fn face_ref(arg: &Path) -> Option<i64> {
    let id = arg.to_str()?.strip_prefix("face:")?.parse().ok()?;
    (!arg.exists()).then_some(id)
}

fn print_dry_run(
    decisions: &[Decision],
    paths: &HashMap<i64, String>,
    quality: &HashMap<i64, matching::FaceRow>,
    threshold: f32,
) -> Result<()> {
    let distances: Vec<f32> = decisions.iter().map(|d| d.distance).filter(|d| d.is_finite()).collect();
    let (lo, hi, bins) = (0.0f32, 1.2f32, 24usize);
    let counts = matching::histogram(&distances, lo, hi, bins);
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    super::outln!("distance of the best face per photo ({} photos); threshold {threshold:.2}", distances.len());
    let width = (hi - lo) / bins as f32;
    for (i, n) in counts.iter().enumerate() {
        let (a, b) = (lo + i as f32 * width, lo + (i + 1) as f32 * width);
        let mark = if (a..b).contains(&threshold) { "  <- threshold" } else { "" };
        super::outln!("  {a:4.2}-{b:4.2} {:>6} {}{mark}", n, "#".repeat((n * 50).div_ceil(peak)));
    }
    let band = DRY_RUN_BAND;
    let mut near: Vec<&Decision> = decisions.iter().filter(|d| (d.distance - threshold).abs() <= band).collect();
    near.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    super::outln!("\nphotos within {band:.2} of the threshold ({}):", near.len());
    for d in near.iter().take(50) {
        let verdict = if d.distance <= threshold { "in " } else { "out" };
        super::outln!("  {verdict} {:.3}  {}", d.distance, paths.get(&d.image_id).map_or("?".to_string(), |p| display_str(p)));
    }
    let mut sharp: Vec<f32> =
        decisions.iter().filter(|d| d.distance <= threshold).filter_map(|d| quality.get(&d.face_id).map(|q| q.sharpness)).collect();
    sharp.sort_by(f32::total_cmp);
    if !sharp.is_empty() {
        let q = |p: f32| sharp[((sharp.len() - 1) as f32 * p).round() as usize];
        super::outln!(
            "\nsharpness of faces within the threshold (detail at a fixed face scale; under {BLURRY:.0} blurred, {BLURRY:.0}-{SHARP:.0} soft, over {SHARP:.0} sharp): min {:.0}  p10 {:.0}  median {:.0}  p90 {:.0}  max {:.0}",
            q(0.0), q(0.1), q(0.5), q(0.9), q(1.0)
        );
    }
    let reasons = count_reasons(decisions);
    super::outln!("\nwould crop {} photos; would reject: {}", decisions.iter().filter(|d| d.matched()).count(), reasons);
    super::outln!("(dry run: nothing was written)");
    Ok(())
}

/// `--list`: one CSV row per listed photo (every match, and the rejections `rejected.csv` would
/// hold, the user's decisions included), closest first; nothing written.
fn print_list(recorded: &[&Decision], paths: &HashMap<i64, String>) -> Result<()> {
    let mut rows: Vec<&&Decision> = recorded.iter().collect();
    rows.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(["decision", "distance", "face_id", "image_id", "path", "reason"])?;
    for d in rows {
        w.write_record([
            if d.matched() { "matched" } else { "rejected" },
            &format!("{:.4}", d.distance),
            &d.face_id.to_string(),
            &d.image_id.to_string(),
            paths.get(&d.image_id).map_or("", String::as_str),
            d.reason.map_or("", Reason::as_str),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn count_reasons(decisions: &[Decision]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for r in decisions.iter().filter_map(|d| d.reason) {
        *by.entry(r.as_str()).or_default() += 1;
    }
    if by.is_empty() {
        return "none".into();
    }
    by.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    args: &MatchArgs,
    root: &Path,
    out_dir: &Path,
    decisions: &[Decision],
    paths: &HashMap<i64, String>,
    written: u64,
    why_not: &BTreeMap<String, u64>,
    started: Instant,
) {
    eprintln!("facedb match {}", display_path(root));
    let photos = distinct_photos(decisions);
    let crop_failures = why_not.get("crop failed").copied().unwrap_or(0);
    let rejected = if why_not.is_empty() {
        "none".to_string()
    } else {
        why_not.iter().map(|(why, n)| format!("{n} {why}")).collect::<Vec<_>>().join(", ")
    };
    if args.all {
        eprintln!("  {written} face crops from {photos} photos; not cropped: {rejected}");
    } else {
        eprintln!(
            "  {written} of {photos} photos with faces matched and cropped (threshold {:.2}, cosine distance); not cropped: {rejected}",
            args.threshold
        );
    }
    let copies = decisions.iter().filter(|d| d.matched() && d.same_face_copies > 0).count();
    if copies > 0 {
        eprintln!("  {copies} photo(s) show the face twice (a mirror, a reflection, a photo of the photo): the closer face was cropped (same_face_copies in {MANIFEST_CSV})");
    }
    let ambiguous: Vec<&Decision> = decisions.iter().filter(|d| d.ambiguous).collect();
    if !ambiguous.is_empty() {
        let verb = if args.allow_ambiguous { "cropped anyway" } else { "not cropped; --allow-ambiguous crops them" };
        eprintln!("  ambiguous (someone else within the threshold too; {verb}):");
        for d in ambiguous.iter().take(20) {
            eprintln!("    {}", paths.get(&d.image_id).map_or("?".to_string(), |p| display_str(p)));
        }
    }
    eprintln!(
        "  {written} crops, {MANIFEST_CSV}, {MANIFEST_JSONL} and {REJECTED_CSV} in {} ({:.2} s)",
        display_path(out_dir),
        started.elapsed().as_secs_f64()
    );
    if crop_failures > 0 {
        eprintln!("  {crop_failures} crop(s) failed (source moved or unreadable, disk full, ...); the reasons are in {REJECTED_CSV}");
    }
}
