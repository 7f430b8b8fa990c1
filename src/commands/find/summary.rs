//! What `match` prints: the dry-run histogram, `--list`, and the summary (or `--json`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use rusqlite::Connection;

use super::decide::{is_recorded, Decided, DRY_RUN_BAND};
use super::record::{CurationReport, Outcome, Tally};
use super::{best, output, Ctx, MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV};
use crate::commands::outln;
use crate::matching::{self, Decision, Reason};
use crate::pipeline::quality::{BLURRY, SHARP};
use crate::util::{display_path, display_str};

/// `--dry-run` (and `--list`): what the run would do; nothing is written.
pub(super) fn dry_run(conn: &Connection, ctx: &Ctx, decided: &Decided) -> Result<()> {
    let args = &ctx.args;
    if args.list {
        let recorded: Vec<&Decision> = decided.decisions.iter().filter(|d| is_recorded(d, args.threshold)).collect();
        return print_list(&recorded, &decided.paths);
    }
    let best = match args.best {
        Some(n) => Some(best::choose(conn, &ctx.root, &ctx.decoders, ctx.best_params(n), &decided.decisions, &decided.best_vectors)?),
        None => None,
    };
    if ctx.globals.json {
        return print_dry_run_json(ctx, decided, best.as_ref());
    }
    print_dry_run(decided, args.threshold)?;
    if let Some(b) = best {
        outln!("{}", b.describe());
    }
    Ok(())
}

/// `--dry-run --json`: the histogram, the photos near the threshold, what would be cropped and
/// rejected, as one JSON object on stdout (the text form's figures, nothing written).
fn print_dry_run_json(ctx: &Ctx, decided: &Decided, best: Option<&best::Best>) -> Result<()> {
    let (decisions, paths, threshold) = (&decided.decisions, &decided.paths, ctx.args.threshold);
    let (lo, hi, bins) = (0.0f32, 1.2f32, 24usize);
    let distances = finite_distances(decided);
    let counts = matching::histogram(&distances, lo, hi, bins);
    let mut near: Vec<&Decision> = decisions.iter().filter(|d| (d.distance - threshold).abs() <= DRY_RUN_BAND).collect();
    near.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    let near: Vec<serde_json::Value> = near
        .iter()
        .map(|d| serde_json::json!({"distance": d.distance, "within": d.distance <= threshold, "image_id": d.image_id, "face_id": d.face_id, "path": paths.get(&d.image_id)}))
        .collect();
    let summary = serde_json::json!({
        "command": "match", "dry_run": true, "dataset": ctx.root.to_string_lossy(), "threshold": threshold,
        "photos": distances.len(),
        "histogram": {"from": lo, "to": hi, "bins": bins, "counts": counts},
        "near_threshold": {"band": DRY_RUN_BAND, "photos": near},
        "would_crop": decisions.iter().filter(|d| d.matched()).count(), "would_reject": reasons_by_name(decisions, decided.far.distances.len()),
        "ambiguous": decisions.iter().filter(|d| d.ambiguous).count(),
        "vector_cache": decided.cache_refresh.as_str(), "best": best.map(best::Best::summary), "seconds": ctx.started.elapsed().as_secs_f64(),
    });
    outln!("{summary}");
    Ok(())
}

/// Every photo's best distance, the far photos' included (NaN left out).
fn finite_distances(decided: &Decided) -> Vec<f32> {
    decided.decisions.iter().map(|d| d.distance).chain(decided.far.distances.iter().copied()).filter(|d| d.is_finite()).collect()
}

/// The summary on stderr, or one JSON object on stdout with `--json`.
pub(super) fn print(done: &Outcome, tally: &Tally, curation: &CurationReport) -> Result<()> {
    let (ctx, best) = (done.ctx, done.plan.best.as_ref());
    let (upscaled, max_upscale) = output::upscaled(done.crops);
    if ctx.globals.json {
        let summary = serde_json::json!({
            "command": "match", "dataset": ctx.root.to_string_lossy(), "run_id": done.ids.run_id, "out_dir": ctx.out_dir.to_string_lossy(),
            "photos": done.photos(), "matched": tally.matched, "rejected": &tally.why_not, "ambiguous": tally.ambiguous, "crop_failures": tally.crop_failures,
            "upscaled": {"crops": upscaled, "max_factor": max_upscale},
            "reference_model_calls": done.refs.model_calls, "vector_cache": done.decided.cache_refresh.as_str(), "best": best.map(best::Best::summary), "seconds": ctx.started.elapsed().as_secs_f64(),
            "decisions_applied": curation.applied, "deleted_crops": curation.deleted, "copies_of_deleted_crops": curation.copies_of_deleted, "cleared_crops": curation.cleared, "moved_crops": curation.moved, "edited_crops_kept": curation.edited, "dropped_crops": curation.dropped,
        });
        outln!("{summary}");
        return Ok(());
    }
    if ctx.globals.quiet {
        return Ok(());
    }
    print_summary(ctx, &done.decided.decisions, done.photos(), &done.decided.paths, tally);
    let args = &ctx.args;
    let small = done.decided.decisions.iter().filter(|d| d.reason == Some(Reason::SmallerThanSize)).count();
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
    if let Some(b) = best {
        eprintln!("  {}; rank, best_score and dup_group are in {MANIFEST_CSV}", b.describe());
    }
    curation.print(&ctx.out_dir);
    Ok(())
}

fn print_dry_run(decided: &Decided, threshold: f32) -> Result<()> {
    let (decisions, paths, quality) = (&decided.decisions, &decided.paths, &decided.quality);
    let far = &decided.far.distances;
    let distances = finite_distances(decided);
    let (lo, hi, bins) = (0.0f32, 1.2f32, 24usize);
    let counts = matching::histogram(&distances, lo, hi, bins);
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    outln!("distance of the best face per photo ({} photos); threshold {threshold:.2}", distances.len());
    let width = (hi - lo) / bins as f32;
    for (i, n) in counts.iter().enumerate() {
        let (a, b) = (lo + i as f32 * width, lo + (i + 1) as f32 * width);
        let mark = if (a..b).contains(&threshold) { "  <- threshold" } else { "" };
        outln!("  {a:4.2}-{b:4.2} {:>6} {}{mark}", n, "#".repeat((n * 50).div_ceil(peak)));
    }
    let band = DRY_RUN_BAND;
    let mut near: Vec<&Decision> = decisions.iter().filter(|d| (d.distance - threshold).abs() <= band).collect();
    near.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    outln!("\nphotos within {band:.2} of the threshold ({}):", near.len());
    for d in near.iter().take(50) {
        let verdict = if d.distance <= threshold { "in " } else { "out" };
        outln!("  {verdict} {:.3}  {}", d.distance, paths.get(&d.image_id).map_or("?".to_string(), |p| display_str(p)));
    }
    let mut sharp: Vec<f32> =
        decisions.iter().filter(|d| d.distance <= threshold).filter_map(|d| quality.get(&d.face_id).map(|q| q.sharpness)).collect();
    sharp.sort_by(f32::total_cmp);
    if !sharp.is_empty() {
        let q = |p: f32| sharp[((sharp.len() - 1) as f32 * p).round() as usize];
        outln!(
            "\nsharpness of faces within the threshold (detail at a fixed face scale; under {BLURRY:.0} blurred, {BLURRY:.0}-{SHARP:.0} soft, over {SHARP:.0} sharp): min {:.0}  p10 {:.0}  median {:.0}  p90 {:.0}  max {:.0}",
            q(0.0), q(0.1), q(0.5), q(0.9), q(1.0)
        );
    }
    let reasons = count_reasons(decisions, far.len());
    outln!("\nwould crop {} photos; would reject: {}", decisions.iter().filter(|d| d.matched()).count(), reasons);
    outln!("(dry run: nothing was written)");
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

/// Rejections by reason, the `far` photos counted as too far.
fn reasons_by_name(decisions: &[Decision], far: usize) -> BTreeMap<&'static str, usize> {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for r in decisions.iter().filter_map(|d| d.reason) {
        *by.entry(r.as_str()).or_default() += 1;
    }
    if far > 0 {
        *by.entry(Reason::TooFar.as_str()).or_default() += far;
    }
    by
}

/// Rejections by reason (`reasons_by_name`), in words.
fn count_reasons(decisions: &[Decision], far: usize) -> String {
    let by = reasons_by_name(decisions, far);
    if by.is_empty() {
        return "none".into();
    }
    by.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

fn print_summary(ctx: &Ctx, decisions: &[Decision], photos: u64, paths: &HashMap<i64, String>, tally: &Tally) {
    let (args, root, out_dir, started) = (&ctx.args, &ctx.root, &ctx.out_dir, ctx.started);
    let (written, why_not) = (tally.matched, &tally.why_not);
    eprintln!("facedb match {}", display_path(root));
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
        eprintln!("  {copies} photo(s) show the face twice (a mirror, a reflection, a photo of the photo, a collage): the closer face was cropped (same_face_copies in {MANIFEST_CSV})");
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
        if !self.copies_of_deleted.is_empty() {
            // Named, so a user who deleted one crop sees which other photos went with it.
            let ids: Vec<String> = self.copies_of_deleted.iter().map(i64::to_string).collect();
            eprintln!(
                "  {} more face(s) left out as copies of a picture whose crop was deleted (re-encodes, resized copies): face {}; `facedb info ID` shows each",
                ids.len(),
                ids.join(", ")
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
