//! `facedb match`: references (embedded once, cached by content hash) -> one scan of stored
//! embeddings -> a decision per photo -> crops, manifests and stored results.
//! (Named `find` because `match` is a Rust keyword.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;

use super::{database_path, find_dataset, progress, Globals};
use crate::cli::MatchArgs;
use crate::crop::{self, CropPlan, CropSpec, FaceGeometry, Ledger};
use crate::db::read::{self, FaceInfo, RefRow};
use crate::db::write::{self, MatchRow, NewMatchRun, NewRef, RunCounters};
use crate::db::{vectors, Db};
use crate::matching::{self, Decision, Filters, Options, Reason};
use crate::models::sface::{SFace, EMBEDDING_DIM};
use crate::models::yunet::YuNet;
use crate::models::{runtime::ORT_VERSION, ModelFiles};
use crate::pipeline::detect::DetectParams;
use crate::pipeline::walk;
use crate::pipeline::{analyze, decode, hash, largest, StageTimes};

pub const MANIFEST_CSV: &str = "manifest.csv";
pub const MANIFEST_JSONL: &str = "manifest.jsonl";
pub const REJECTED_CSV: &str = "rejected.csv";

pub fn run(globals: &Globals, args: MatchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if !(0.0..=2.0).contains(&args.threshold) {
        bail!("--threshold {} is outside 0-2 (cosine distance; the default is {})", args.threshold, matching::DEFAULT_THRESHOLD);
    }
    if !(0.0..=5.0).contains(&args.margin) {
        bail!("--margin {} is outside 0-5 (a fraction of the face box)", args.margin);
    }
    let root = find_dataset(args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    if !db_file.is_file() {
        bail!("no database at {}; run `facedb index {}` first", db_file.display(), root.display());
    }
    let db = Db::open(&db_file)?;
    // One transaction for the whole run: a crash leaves no half-recorded match, and --dry-run
    // simply rolls it back, so it writes nothing.
    let tx = db.conn.unchecked_transaction()?;
    let files = ModelFiles::locate(globals.models.as_deref(), globals.device)?;
    let ref_params = DetectParams::default();
    let detector_id =
        write::ensure_model(&tx, "detector", &files.detector_name, &files.detector_hash, &super::index::detector_params_json(&ref_params))?;
    let embedder_id = write::ensure_model(&tx, "embedder", &files.embedder_name, &files.embedder_hash, "{}")?;
    let out_dir = args.out.clone().unwrap_or_else(|| root.join("facedb-crops"));
    let spec = CropSpec { margin: args.margin, square: args.square, size: args.size, upscale: args.upscale, align: args.align };
    let filters = Filters { min_face: args.min_face, min_sharpness: args.min_sharpness, max_yaw: args.max_yaw, min_score: args.min_score };
    let options_json = serde_json::json!({"filters": filters, "crop": spec, "format": args.format, "quality": args.quality, "allow_ambiguous": args.allow_ambiguous}).to_string();
    let args_json = serde_json::json!({
        "dir": root.to_string_lossy(), "ref": args.refs, "not": args.negatives, "threshold": args.threshold, "combine": args.combine,
        "expand": args.expand, "all": args.all, "dry_run": args.dry_run, "out": out_dir.to_string_lossy(), "options": serde_json::from_str::<serde_json::Value>(&options_json)?,
    })
    .to_string();
    let run_id = write::begin_run(&tx, "match", &args_json, Some(ORT_VERSION), Some(detector_id), Some(embedder_id))?;

    let mut refs = References { files: &files, detector_id, embedder_id, run_id, sessions: None, model_calls: 0, quiet: globals.quiet };
    let positives = refs.load_all(&tx, &args.refs, "--ref")?;
    let negatives = refs.load_all(&tx, &args.negatives, "--not")?;
    if positives.is_empty() && !args.all {
        bail!("no usable reference face; pass --ref with a photo where the face is clearly visible and at least 40 px wide");
    }
    tx.execute("UPDATE runs SET ref_model_calls = ?2 WHERE id = ?1", rusqlite::params![run_id, refs.model_calls])?;

    let pos_vecs: Vec<Vec<f32>> = positives.iter().map(|r| r.vector.clone()).collect();
    let neg_vecs: Vec<Vec<f32>> = negatives.iter().map(|r| r.vector.clone()).collect();
    let opts =
        Options { threshold: args.threshold, combine: args.combine, filters, allow_ambiguous: args.allow_ambiguous, expand: args.expand };
    // --dry-run writes nothing, not even the vector cache: a stale one is rebuilt in a temporary file.
    let cache_write = if args.dry_run { vectors::CacheWrite::Temporary } else { vectors::CacheWrite::Save };
    let mut matrix = vectors::load(&tx, &db_file, embedder_id, EMBEDDING_DIM, cache_write)?;
    if let Some(w) = matrix.warning.as_deref().filter(|_| !globals.quiet) {
        eprintln!("warning: {w}");
    }
    let (decisions, face_rows) = if args.all {
        decide_all(&tx, &mut matrix, &pos_vecs, &filters)?
    } else {
        let decisions = matching::decide(&matrix.faces, &mut matrix.vectors, &pos_vecs, &neg_vecs, &opts)?;
        (decisions, std::mem::take(&mut matrix.faces))
    };
    let cache_refresh = matrix.refresh();
    drop(matrix);
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

    if args.dry_run {
        print_dry_run(&decisions, &paths, &quality, args.threshold);
        drop(tx); // rolled back: nothing written
        return Ok(ExitCode::SUCCESS);
    }
    // Commit the run row and any new references now: cropping can take minutes and must not
    // hold the write lock that a concurrent `index` needs. The results go in one transaction below.
    tx.commit()?;

    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating output folder {}", out_dir.display()))?;
    let old_ledger = Ledger::load(&out_dir);
    // Record the folder as facedb's before writing into it, so `index` never picks crops up.
    old_ledger.save(&out_dir)?;
    let to_crop: Vec<&Decision> = decisions.iter().filter(|d| d.matched()).collect();
    let bar = progress(to_crop.len() as u64, globals.quiet, "cropping");
    let crops = write_crops(&db_file, &root, &out_dir, &to_crop, &spec, args.format, args.quality, &bar);
    bar.finish();

    let tx = db.conn.unchecked_transaction()?;
    let ref_list: Vec<&RefRow> = positives.iter().collect();
    let mut manifest = Manifest::create(&out_dir)?;
    let mut written: HashSet<String> = HashSet::new();
    let (mut crop_failures, mut matched, mut rejected, mut ambiguous) = (0u64, 0u64, 0u64, 0u64);
    let distance_of = |d: &Decision| (!(args.all && pos_vecs.is_empty())).then_some(d.distance);
    for d in &decisions {
        ambiguous += u64::from(d.ambiguous);
        let reason = d.reason.map(Reason::as_str);
        if !is_recorded(d, args.threshold) {
            rejected += 1;
            continue;
        }
        match crops.get(&d.face_id) {
            Some(Ok(c)) => {
                matched += 1;
                written.insert(c.file_name.clone());
                manifest.add(c, d, distance_of(d), &ref_list, &out_dir)?;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &MatchRow { decision: d, distance: distance_of(d), reason: None, crop_path: Some(&c.file_name), plan: Some(&c.plan) },
                )?;
            }
            Some(Err(e)) => {
                crop_failures += 1;
                let why = format!("crop failed: {e:#}");
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
                let why = reason.unwrap_or("not cropped");
                manifest.reject(d, distance_of(d), why, paths.get(&d.image_id), quality.get(&d.face_id))?;
                write::insert_match_result(
                    &tx,
                    run_id,
                    &MatchRow { decision: d, distance: distance_of(d), reason: Some(why), crop_path: None, plan: None },
                )?;
            }
        }
    }
    manifest.finish(&out_dir)?;
    // Replace this folder's earlier crops: remove what facedb wrote before and did not write now.
    for stale in old_ledger.files.difference(&written.iter().cloned().collect()) {
        if !matches!(stale.as_str(), MANIFEST_CSV | MANIFEST_JSONL | REJECTED_CSV) {
            let _ = std::fs::remove_file(out_dir.join(stale));
        }
    }
    let mut ledger = Ledger { files: written.into_iter().collect() };
    ledger.files.extend([MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV].map(String::from));
    ledger.save(&out_dir)?;

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
    let photos = distinct_photos(&decisions) as u64;
    write::finish_match_run(&tx, run_id, photos, matched, rejected, ambiguous)?;
    let counters = RunCounters { files_failed: crop_failures, ..RunCounters::default() };
    write::finish_run(&tx, run_id, if crop_failures > 0 { "failures" } else { "ok" }, &counters)?;
    tx.commit()?;

    if globals.json {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for r in decisions.iter().filter_map(|d| d.reason) {
            *reasons.entry(r.as_str()).or_default() += 1;
        }
        let summary = serde_json::json!({
            "command": "match", "dataset": root.to_string_lossy(), "run_id": run_id, "out_dir": out_dir.to_string_lossy(),
            "photos": photos, "matched": matched, "rejected": reasons, "ambiguous": ambiguous, "crop_failures": crop_failures,
            "reference_model_calls": refs.model_calls, "vector_cache": cache_refresh.as_str(), "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{summary}");
    } else if !globals.quiet {
        print_summary(&args, &root, &out_dir, &decisions, &paths, matched, crop_failures, started);
    }
    Ok(if crop_failures > 0 { ExitCode::from(super::EXIT_FILES_FAILED) } else { ExitCode::SUCCESS })
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

fn is_recorded(d: &Decision, threshold: f32) -> bool {
    d.reason != Some(Reason::TooFar) || d.distance <= threshold + NEAR_MISS_BAND
}

/// `--all`: every face is its own decision (distance to the references if any were given).
fn decide_all(
    conn: &Connection,
    matrix: &mut vectors::FaceMatrix,
    refs: &[Vec<f32>],
    filters: &Filters,
) -> Result<(Vec<Decision>, Vec<matching::FaceRow>)> {
    let (nearest, _) = matching::distances(&mut matrix.vectors, refs, &[])?;
    let embedded: HashMap<i64, f32> = matrix.faces.iter().zip(nearest).map(|(f, d)| (f.face_id, d)).collect();
    let faces = read::all_faces(conn)?;
    let decisions = faces
        .iter()
        .map(|f| {
            let distance = embedded.get(&f.face_id).copied().filter(|d| d.is_finite()).unwrap_or(f32::NAN);
            let reason = filters.reject(f);
            Decision {
                image_id: f.image_id,
                face_id: f.face_id,
                distance,
                runner_up: None,
                negative_distance: None,
                ambiguous: false,
                pass: 1,
                reason,
            }
        })
        .collect();
    Ok((decisions, faces))
}

/// Loads reference embeddings, computing (and storing) each new reference photo's once.
struct References<'a> {
    files: &'a ModelFiles,
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
                    bail!("{flag} {}: the folder holds no photos", arg.display());
                }
                for e in entries {
                    match self.load(conn, &e.abs) {
                        Ok(r) => out.push(r),
                        Err(err) if !self.quiet => {
                            eprintln!("warning: skipping reference {}: {err:#}", e.abs.display())
                        }
                        Err(_) => {}
                    }
                }
            } else {
                out.push(self.load(conn, arg)?);
            }
        }
        // The same photo given twice (or copied) counts once.
        let mut seen = HashSet::new();
        out.retain(|r| seen.insert(r.id));
        Ok(out)
    }

    fn load(&mut self, conn: &Connection, path: &Path) -> Result<RefRow> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read reference photo {}", path.display()))?;
        let blake3 = hash::content_hash(&bytes);
        if let Some(r) = read::find_ref(conn, &blake3, self.detector_id, self.embedder_id)? {
            if r.faces_in_photo > 1 && !self.quiet {
                eprintln!("note: {} has {} faces; using the largest", path.display(), r.faces_in_photo);
            }
            return Ok(r);
        }
        if self.sessions.is_none() {
            let models = self.files.load()?;
            self.sessions = Some((models.detector()?, models.embedder()?));
        }
        let Some((detector, embedder)) = self.sessions.as_mut() else { bail!("model sessions unavailable") };
        let img = analyze(&bytes, detector, embedder, &DetectParams::default(), &mut StageTimes::default())
            .with_context(|| format!("reference photo {}", path.display()))?;
        self.model_calls += i64::from(img.detector_calls + img.embedder_calls);
        let Some(face) = largest(&img.faces) else {
            bail!("no face found in {}; pass a photo where the face is clearly visible and at least 40 px wide", path.display());
        };
        let Some(vector) = face.embedding else {
            bail!("the face in {} could not be aligned (landmarks degenerate); pass a clearer, more frontal photo", path.display());
        };
        if img.faces.len() > 1 && !self.quiet {
            eprintln!(
                "note: {} has {} faces; using the largest ({}x{} px)",
                path.display(),
                img.faces.len(),
                face.detection.w.round(),
                face.detection.h.round()
            );
        }
        let path_str = path.to_string_lossy();
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
            .ok_or_else(|| anyhow!("reference {} was not stored", path.display()))
    }
}

struct Crop {
    info: FaceInfo,
    source: String,
    file_name: String,
    plan: CropPlan,
}

/// Crops every chosen face; each photo is read and decoded once, photos in parallel.
#[allow(clippy::too_many_arguments)]
fn write_crops(
    db_file: &Path,
    root: &Path,
    out_dir: &Path,
    chosen: &[&Decision],
    spec: &CropSpec,
    format: crop::Format,
    quality: u8,
    bar: &super::Progress,
) -> HashMap<i64, Result<Crop>> {
    let mut by_image: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for d in chosen {
        by_image.entry(d.image_id).or_default().push(d.face_id);
    }
    let groups: Vec<(i64, Vec<i64>)> = by_image.into_iter().collect();
    groups
        .par_iter()
        .flat_map_iter(|(_, face_ids)| {
            let results = crop_photo(db_file, root, out_dir, face_ids, spec, format, quality);
            bar.inc(face_ids.len() as u64);
            results
        })
        .collect()
}

fn crop_photo(
    db_file: &Path,
    root: &Path,
    out_dir: &Path,
    face_ids: &[i64],
    spec: &CropSpec,
    format: crop::Format,
    quality: u8,
) -> Vec<(i64, Result<Crop>)> {
    let loaded = (|| -> Result<(Vec<FaceInfo>, String, image::RgbImage)> {
        // rusqlite connections are not shared across threads: each photo opens its own reader.
        let db = Db::open_read_only(db_file)?;
        let infos = face_ids.iter().map(|&id| read::face_info(&db.conn, id)).collect::<Result<Vec<_>>>()?;
        let first = infos.first().ok_or_else(|| anyhow!("no face"))?;
        let (source, bytes) = first
            .paths
            .iter()
            .find_map(|(rel, raw)| {
                let p = walk::resolve(root, rel, raw.as_deref());
                std::fs::read(&p).ok().filter(|b| hash::content_hash(b) == first.blake3).map(|b| (rel.clone(), b))
            })
            .ok_or_else(|| anyhow!("no file with this content is left in the folder; re-run `facedb index`"))?;
        Ok((infos, source, decode::decode(&bytes)?.rgb))
    })();
    match loaded {
        Err(e) => {
            let msg = format!("{e:#}");
            face_ids.iter().map(|&id| (id, Err(anyhow!("{msg}")))).collect()
        }
        Ok((infos, source, rgb)) => infos
            .into_iter()
            .map(|info| {
                let id = info.face_id;
                let result = (|| {
                    let geometry = FaceGeometry { x: info.x, y: info.y, w: info.w, h: info.h, landmarks: info.landmarks };
                    let plan = crop::plan(&geometry, spec, rgb.width(), rgb.height());
                    let file_name = crop::crop_file_name(&source, id, format);
                    crop::write_crop(&crop::render(&rgb, &plan), &out_dir.join(&file_name), format, quality)?;
                    Ok(Crop { info, source: source.clone(), file_name, plan })
                })();
                (id, result)
            })
            .collect(),
    }
}

/// A reference as the manifest records it.
#[derive(Serialize)]
struct RefEntry<'a> {
    path: &'a str,
    blake3: &'a str,
    width: u32,
    height: u32,
    face: [f32; 4],
}

/// manifest.csv + manifest.jsonl (one row per crop) and rejected.csv, written to .part files and
/// renamed into place at the end so readers never see half a manifest.
struct Manifest {
    csv: csv::Writer<std::fs::File>,
    jsonl: std::io::BufWriter<std::fs::File>,
    rejected: csv::Writer<std::fs::File>,
}

pub const MANIFEST_COLUMNS: [&str; 29] = [
    "crop_path",
    "source_path",
    "source_blake3",
    "face_id",
    "distance",
    "pass",
    "face_x",
    "face_y",
    "face_w",
    "face_h",
    "crop_x",
    "crop_y",
    "crop_w",
    "crop_h",
    "crop_angle",
    "crop_out_w",
    "crop_out_h",
    "det_score",
    "size_px",
    "sharpness",
    "yaw",
    "roll",
    "brightness",
    "source_w",
    "source_h",
    "landmarks",
    "runner_up_distance",
    "ambiguous",
    "references",
];
pub const REJECTED_COLUMNS: [&str; 11] = [
    "source_path",
    "face_id",
    "distance",
    "runner_up_distance",
    "negative_distance",
    "ambiguous",
    "reason",
    "pass",
    "size_px",
    "sharpness",
    "yaw",
];

fn part(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(format!("{name}.part"))
}

fn opt(v: Option<f32>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!("{x:.4}")).unwrap_or_default()
}

impl Manifest {
    fn create(out_dir: &Path) -> Result<Self> {
        let open =
            |name: &str| std::fs::File::create(part(out_dir, name)).with_context(|| format!("writing {name} in {}", out_dir.display()));
        let mut csv = csv::Writer::from_writer(open(MANIFEST_CSV)?);
        csv.write_record(MANIFEST_COLUMNS)?;
        let mut rejected = csv::Writer::from_writer(open(REJECTED_CSV)?);
        rejected.write_record(REJECTED_COLUMNS)?;
        Ok(Self { csv, jsonl: std::io::BufWriter::new(open(MANIFEST_JSONL)?), rejected })
    }

    fn add(&mut self, c: &Crop, d: &Decision, distance: Option<f32>, refs: &[&RefRow], out_dir: &Path) -> Result<()> {
        let i = &c.info;
        let p = &c.plan;
        let refs: Vec<RefEntry> =
            refs.iter().map(|r| RefEntry { path: &r.path, blake3: &r.blake3, width: r.width, height: r.height, face: r.face }).collect();
        let crop_path = out_dir.join(&c.file_name).to_string_lossy().into_owned();
        let [cx, cy, cw, ch] = p.rect;
        self.csv.write_record([
            crop_path.clone(),
            c.source.clone(),
            i.blake3.clone(),
            i.face_id.to_string(),
            opt(distance),
            d.pass.to_string(),
            format!("{:.1}", i.x),
            format!("{:.1}", i.y),
            format!("{:.1}", i.w),
            format!("{:.1}", i.h),
            cx.to_string(),
            cy.to_string(),
            cw.to_string(),
            ch.to_string(),
            format!("{:.2}", p.angle),
            p.out_w.to_string(),
            p.out_h.to_string(),
            format!("{:.3}", i.score),
            format!("{:.1}", i.size_px),
            format!("{:.1}", i.sharpness),
            format!("{:.1}", i.yaw),
            format!("{:.1}", i.roll),
            format!("{:.1}", i.brightness),
            i.width.to_string(),
            i.height.to_string(),
            serde_json::to_string(&i.landmarks)?,
            opt(d.runner_up.map(|r| r.1)),
            u8::from(d.ambiguous).to_string(),
            serde_json::to_string(&refs)?,
        ])?;
        let json = serde_json::json!({
            "crop_path": crop_path, "source_path": c.source, "source_blake3": i.blake3, "face_id": i.face_id,
            "distance": distance.filter(|x| x.is_finite()), "pass": d.pass, "ambiguous": d.ambiguous,
            "runner_up": d.runner_up.map(|(id, dist)| serde_json::json!({"face_id": id, "distance": dist})),
            "face": {"x": i.x, "y": i.y, "w": i.w, "h": i.h, "landmarks": i.landmarks},
            "crop": {"x": cx, "y": cy, "w": cw, "h": ch, "angle": p.angle, "out_w": p.out_w, "out_h": p.out_h},
            "quality": {"det_score": i.score, "size_px": i.size_px, "sharpness": i.sharpness, "yaw": i.yaw, "roll": i.roll, "brightness": i.brightness},
            "source_size": [i.width, i.height], "references": refs,
        });
        writeln!(self.jsonl, "{json}")?;
        Ok(())
    }

    fn reject(
        &mut self,
        d: &Decision,
        distance: Option<f32>,
        reason: &str,
        path: Option<&String>,
        q: Option<&matching::FaceRow>,
    ) -> Result<()> {
        self.rejected.write_record([
            path.cloned().unwrap_or_default(),
            d.face_id.to_string(),
            opt(distance),
            opt(d.runner_up.map(|r| r.1)),
            opt(d.negative_distance),
            u8::from(d.ambiguous).to_string(),
            reason.to_string(),
            d.pass.to_string(),
            q.map(|q| format!("{:.1}", q.size_px)).unwrap_or_default(),
            q.map(|q| format!("{:.1}", q.sharpness)).unwrap_or_default(),
            q.map(|q| format!("{:.1}", q.yaw)).unwrap_or_default(),
        ])?;
        Ok(())
    }

    fn finish(mut self, out_dir: &Path) -> Result<()> {
        self.csv.flush()?;
        self.rejected.flush()?;
        self.jsonl.flush()?;
        drop(self);
        for name in [MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV] {
            std::fs::rename(part(out_dir, name), out_dir.join(name)).with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    }
}

fn print_dry_run(decisions: &[Decision], paths: &HashMap<i64, String>, quality: &HashMap<i64, matching::FaceRow>, threshold: f32) {
    let distances: Vec<f32> = decisions.iter().map(|d| d.distance).filter(|d| d.is_finite()).collect();
    let (lo, hi, bins) = (0.0f32, 1.2f32, 24usize);
    let counts = matching::histogram(&distances, lo, hi, bins);
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    println!("distance of the best face per photo ({} photos); threshold {threshold:.2}", distances.len());
    let width = (hi - lo) / bins as f32;
    for (i, n) in counts.iter().enumerate() {
        let (a, b) = (lo + i as f32 * width, lo + (i + 1) as f32 * width);
        let mark = if (a..b).contains(&threshold) { "  <- threshold" } else { "" };
        println!("  {a:4.2}-{b:4.2} {:>6} {}{mark}", n, "#".repeat((n * 50).div_ceil(peak)));
    }
    let band = DRY_RUN_BAND;
    let mut near: Vec<&Decision> = decisions.iter().filter(|d| (d.distance - threshold).abs() <= band).collect();
    near.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    println!("\nphotos within {band:.2} of the threshold ({}):", near.len());
    for d in near.iter().take(50) {
        let verdict = if d.distance <= threshold { "in " } else { "out" };
        println!("  {verdict} {:.3}  {}", d.distance, paths.get(&d.image_id).map_or("?", String::as_str));
    }
    let mut sharp: Vec<f32> =
        decisions.iter().filter(|d| d.distance <= threshold).filter_map(|d| quality.get(&d.face_id).map(|q| q.sharpness)).collect();
    sharp.sort_by(f32::total_cmp);
    if !sharp.is_empty() {
        let q = |p: f32| sharp[((sharp.len() - 1) as f32 * p).round() as usize];
        println!(
            "\nsharpness of faces within the threshold (variance of Laplacian; <20 blurry, >100 sharp): min {:.0}  p10 {:.0}  median {:.0}  p90 {:.0}  max {:.0}",
            q(0.0), q(0.1), q(0.5), q(0.9), q(1.0)
        );
    }
    let reasons = count_reasons(decisions);
    println!("\nwould crop {} photos; would reject: {}", decisions.iter().filter(|d| d.matched()).count(), reasons);
    println!("(dry run: nothing was written)");
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
    crop_failures: u64,
    started: Instant,
) {
    eprintln!("facedb match {}", root.display());
    let photos = distinct_photos(decisions);
    if args.all {
        eprintln!("  {written} face crops from {photos} photos; rejected: {}", count_reasons(decisions));
    } else {
        eprintln!(
            "  {} of {photos} photos with faces matched (threshold {:.2}, cosine distance); rejected: {}",
            decisions.iter().filter(|d| d.matched()).count(),
            args.threshold,
            count_reasons(decisions)
        );
    }
    let ambiguous: Vec<&Decision> = decisions.iter().filter(|d| d.ambiguous).collect();
    if !ambiguous.is_empty() {
        let verb = if args.allow_ambiguous { "cropped anyway" } else { "not cropped; --allow-ambiguous crops them" };
        eprintln!("  ambiguous (another face within the threshold; {verb}):");
        for d in ambiguous.iter().take(20) {
            eprintln!("    {}", paths.get(&d.image_id).map_or("?", String::as_str));
        }
    }
    eprintln!(
        "  {written} crops, {MANIFEST_CSV}, {MANIFEST_JSONL} and {REJECTED_CSV} in {} ({:.2} s)",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    if crop_failures > 0 {
        eprintln!("  {crop_failures} crop(s) failed (source moved or unreadable); see {REJECTED_CSV}");
    }
}
