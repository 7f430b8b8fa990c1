//! `match`'s records, once the crops are written: the manifests, the folder's final state and the
//! run's rows in the database, all counted once for the summary, `--json` and `report`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Result;
use rusqlite::Connection;

use super::curation;
use super::decide::{is_recorded, Decided};
use super::output::{Crop, Manifest, Plan};
use super::references::Refs;
use super::{Ctx, RunIds};
use crate::db::read::RefRow;
use crate::db::write::{self, MatchRow, NewMatchRun, RunCounters};
use crate::db::{decisions, review, LogLevel, RunStatus};
use crate::histogram::RunHistogram;
use crate::matching::{Decision, Reason};
use crate::output::OutputDir;

/// One match after cropping: everything its records are made from.
pub(super) struct Outcome<'a> {
    pub ctx: &'a Ctx<'a>,
    pub ids: &'a RunIds,
    pub refs: &'a Refs,
    pub decided: &'a Decided,
    pub plan: &'a Plan<'a>,
    pub crops: &'a HashMap<i64, Result<Crop>>,
}

/// What the run counted.
#[derive(Default)]
pub(super) struct Tally {
    pub matched: u64,
    pub rejected: u64,
    pub ambiguous: u64,
    pub crop_failures: u64,
    /// Why each photo that got no crop got none: the one count the summary, --json and the
    /// report share (faces passed over by --best included).
    pub why_not: BTreeMap<String, u64>,
}

/// What curation did in this run, for the summary.
pub(super) struct CurationReport {
    pub applied: usize,
    pub deleted: usize,
    /// Faces left out as copies of a deleted crop's picture (face ids).
    pub copies_of_deleted: Vec<i64>,
    /// Crops gone with most of the folder (a fresh start, no rejections) and crops renamed.
    pub cleared: usize,
    pub moved: usize,
    pub edited: usize,
    /// Crops of earlier runs this run removed, by why.
    pub dropped: BTreeMap<String, usize>,
}

impl Outcome<'_> {
    /// The manifests and one match result per recorded decision.
    pub fn record_results(&self, conn: &Connection, out: &OutputDir) -> Result<Tally> {
        let ref_list: Vec<&RefRow> = self.refs.positives.iter().collect();
        let mut manifest = Manifest::create(out, &self.ctx.root)?;
        let mut tally = Tally::default();
        for d in &self.decided.decisions {
            tally.ambiguous += u64::from(d.ambiguous);
            if !is_recorded(d, self.ctx.args.threshold) {
                tally.rejected += 1;
                *tally.why_not.entry(d.reason.map_or("too far", Reason::as_str).to_string()).or_default() += 1;
                continue;
            }
            let (reason, crop_path, plan) = match self.crops.get(&d.face_id) {
                Some(Ok(c)) => {
                    tally.matched += 1;
                    let choice = self.plan.best.as_ref().and_then(|b| b.choice(d.face_id));
                    manifest.add(c, d, self.decided.distance_of(d), &ref_list, choice)?;
                    (None, Some(c.file_name.as_str()), Some(&c.plan))
                }
                Some(Err(e)) => (Some(self.crop_failed(conn, &mut manifest, &mut tally, d, e)?), None, None),
                None => (Some(self.not_cropped(&mut manifest, &mut tally, d)?), None, None),
            };
            let row = MatchRow { decision: d, distance: self.decided.distance_of(d), reason: reason.as_deref(), crop_path, plan };
            write::insert_match_result(conn, self.ids.run_id, &row)?;
        }
        // Far photos were counted, not kept: too far, like the unrecorded decisions above.
        let far = self.decided.far.distances.len() as u64;
        if far > 0 {
            tally.rejected += far;
            *tally.why_not.entry(Reason::TooFar.as_str().to_string()).or_default() += far;
        }
        manifest.finish()?;
        Ok(tally)
    }

    fn crop_failed(
        &self,
        conn: &Connection,
        manifest: &mut Manifest,
        tally: &mut Tally,
        d: &Decision,
        e: &anyhow::Error,
    ) -> Result<String> {
        tally.crop_failures += 1;
        let why = format!("crop failed: {e:#}");
        *tally.why_not.entry("crop failed".to_string()).or_default() += 1;
        let (paths, quality) = (&self.decided.paths, &self.decided.quality);
        write::log(conn, self.ids.run_id, Some(d.image_id), paths.get(&d.image_id).map(String::as_str), LogLevel::Error, &why)?;
        manifest.reject(d, self.decided.distance_of(d), &why, paths.get(&d.image_id), quality.get(&d.face_id))?;
        Ok(why)
    }

    fn not_cropped(&self, manifest: &mut Manifest, tally: &mut Tally, d: &Decision) -> Result<String> {
        tally.rejected += 1;
        let reason = d.reason.map(Reason::as_str);
        let passed_over = self.plan.best.as_ref().and_then(|b| b.reason(d.face_id));
        let why = reason.or(passed_over.as_deref()).unwrap_or("not cropped");
        let key = match (reason, &passed_over) {
            (None, Some(_)) => "passed over by --best",
            _ => why,
        };
        *tally.why_not.entry(key.to_string()).or_default() += 1;
        let (paths, quality) = (&self.decided.paths, &self.decided.quality);
        manifest.reject(d, self.decided.distance_of(d), why, paths.get(&d.image_id), quality.get(&d.face_id))?;
        Ok(why.to_string())
    }

    /// The layout's extra files, then removes what facedb wrote here before and did not write
    /// now (still byte-identical only).
    pub fn finish_folder(&self, out: OutputDir) -> Result<CurationReport> {
        let names = &self.plan.names;
        let kept = &out.curation().edited;
        let in_folder: BTreeSet<String> = self.crops.iter().filter_map(|(id, c)| c.as_ref().ok().and(names.get(id))).cloned().collect();
        self.plan.layout.write(&out, &in_folder, kept)?;
        let curated = &self.decided.curated;
        let report = CurationReport {
            applied: self.decided.applied,
            deleted: curated.deleted_crops,
            copies_of_deleted: curated.copies_of_deleted.clone(),
            cleared: curated.cleared_crops,
            moved: curated.moved_crops,
            edited: kept.len(),
            dropped: curation::dropped(&out, names, &self.decided.decisions),
        };
        out.finish()?;
        Ok(report)
    }

    /// The match run's rows: its settings, counts, histogram and final status.
    pub fn finish_run(&self, conn: &Connection, tally: &Tally, report: &CurationReport) -> Result<()> {
        let (args, run_id, decisions) = (&self.ctx.args, self.ids.run_id, &self.decided.decisions);
        let ref_ids: Vec<i64> = self.refs.positives.iter().map(|r| r.id).collect();
        let neg_ids: Vec<i64> = self.refs.negatives.iter().map(|r| r.id).collect();
        let combine = serde_json::to_value(args.combine)?.as_str().unwrap_or("nearest").to_string();
        let run = NewMatchRun {
            mode: if args.all { "all" } else { "match" },
            threshold: args.threshold,
            combine: &combine,
            expand: args.expand,
            options_json: &self.ctx.options_json().to_string(),
            out_dir: &self.ctx.out_dir.to_string_lossy(),
            ref_ids: &ref_ids,
            neg_ref_ids: &neg_ids,
        };
        write::insert_match_run(conn, run_id, &run)?;
        if let Some(b) = &self.plan.best {
            b.store(conn, run_id)?;
        }
        decisions::set_applied(conn, run_id, report.applied)?;
        write::finish_match_run(conn, run_id, self.photos(), tally.matched, tally.rejected, tally.ambiguous)?;
        // Every photo's distance, the far ones that get no row included.
        if self.decided.has_distances {
            let distances = decisions.iter().map(|d| d.distance).chain(self.decided.far.distances.iter().copied());
            review::insert_histogram(conn, run_id, &RunHistogram::new(distances, args.threshold))?;
        }
        if let Some(name) = &args.name {
            review::set_run_name(conn, run_id, name)?;
        }
        let counters = RunCounters { files_failed: tally.crop_failures, ..RunCounters::default() };
        write::finish_run(conn, run_id, if tally.crop_failures > 0 { RunStatus::Failures } else { RunStatus::Ok }, &counters)
    }

    pub fn photos(&self) -> u64 {
        (distinct_photos(&self.decided.decisions) + self.decided.far.distances.len()) as u64
    }
}

/// Number of photos among the decisions (one per photo, or one per face with `--all`; both
/// come grouped by photo).
pub(super) fn distinct_photos(decisions: &[Decision]) -> usize {
    if decisions.is_sorted_by_key(|d| d.image_id) {
        decisions.chunk_by(|a, b| a.image_id == b.image_id).count()
    } else {
        decisions.iter().map(|d| d.image_id).collect::<std::collections::HashSet<_>>().len()
    }
}
