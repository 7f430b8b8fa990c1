//! One match run as the contact sheet and the review page both show it: the summary, the
//! stored histogram of every photo, the references, the rows in sections with quality badges,
//! and counts that agree with the summary (`report --format json`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rusqlite::Connection;
use serde::Serialize;

use crate::db::read::{self, MatchRunSummary, ResultRow};
use crate::db::review::{self, ResultExtras, RunRef};
use crate::db::DecisionKind;
use crate::histogram::RunHistogram;
use crate::pipeline::decode::Decoders;
use crate::pipeline::walk;

/// Under this many pixels (shorter side) a face makes a weak training image.
const SMALL_FACE_PX: f64 = 64.0;
/// A face box this close to the photo's border (fraction of the face size) may be cut off.
const EDGE_FRACTION: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Matched,
    Ambiguous,
    Rejected,
}

impl Section {
    /// A row's place: the ambiguous section lists every ambiguous row (their count is the
    /// summary's `ambiguous`); matched and rejected split the rest by decision.
    pub fn of(r: &ResultRow) -> Section {
        match (r.decision == DecisionKind::Matched, r.ambiguous) {
            (true, _) => Section::Matched,
            (false, true) => Section::Ambiguous,
            (false, false) => Section::Rejected,
        }
    }
}

/// Section counts, each equal to the summary's number of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub photos: i64,
    pub matched: i64,
    pub ambiguous: i64,
    pub rejected: i64,
    /// Of `rejected`: listed in the rejected section.
    pub rejected_listed: i64,
    /// Of `rejected`: ambiguous, listed in the ambiguous section.
    pub rejected_ambiguous: i64,
    /// Of `rejected`: farther than threshold + 0.10, counted (and in the histogram) but not stored.
    pub rejected_far: i64,
    /// Crops that failed (listed with the rejected, not counted in `rejected`).
    pub crop_failed: i64,
}

pub fn counts(m: &MatchRunSummary, rows: &[ResultRow]) -> Counts {
    let failed = |r: &ResultRow| r.reason.as_deref().is_some_and(|x| x.starts_with("crop failed"));
    let rejected_rows: Vec<&ResultRow> = rows.iter().filter(|r| Section::of(r) == Section::Rejected).collect();
    let crop_failed = rejected_rows.iter().filter(|r| failed(r)).count() as i64;
    let rejected_listed = rejected_rows.len() as i64 - crop_failed;
    let rejected_ambiguous = rows.iter().filter(|r| Section::of(r) == Section::Ambiguous).count() as i64;
    Counts {
        photos: m.photos,
        matched: m.matched,
        ambiguous: m.ambiguous,
        rejected: m.rejected,
        rejected_listed,
        rejected_ambiguous,
        rejected_far: (m.rejected - rejected_listed - rejected_ambiguous).max(0),
        crop_failed,
    }
}

/// Quality badges of a row: what a curator checks before keeping a crop.
pub fn badges(r: &ResultRow, x: Option<&ResultExtras>) -> Vec<&'static str> {
    let mut b = Vec::new();
    if r.size_px < SMALL_FACE_PX {
        b.push("small");
    }
    if let Some(x) = x {
        if let (Some([_, _, cw, ch]), Some([ow, oh])) = (x.crop, x.crop_out) {
            if ow > cw || oh > ch {
                b.push("upscaled");
            }
        }
        if let (Some([cx, cy, cw, ch]), Some([pw, ph])) = (x.crop, x.photo) {
            if cx < 0 || cy < 0 || cx + cw > pw || cy + ch > ph {
                b.push("padded");
            }
        }
        if let Some([pw, ph]) = x.photo {
            let [fx, fy, fw, fh] = r.face;
            let m = EDGE_FRACTION * fw.min(fh);
            if fx <= m || fy <= m || fx + fw >= pw as f64 - m || fy + fh >= ph as f64 - m {
                b.push("edge");
            }
        }
        if x.same_face_copies > 0 {
            b.push("near-duplicate");
        }
    }
    if r.ambiguous {
        b.push("ambiguous");
    }
    b
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub result: ResultRow,
    pub section: Section,
    pub badges: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub summary: MatchRunSummary,
    pub name: Option<String>,
    /// Every photo's distance (None for runs before migration 0008 or `--all` without a reference).
    pub histogram: Option<RunHistogram>,
    pub refs: Vec<RunRef>,
    pub rows: Vec<Row>,
    pub counts: Counts,
}

/// The run `run` (number or name), or the latest.
pub fn resolve(conn: &Connection, run: Option<&str>) -> Result<MatchRunSummary> {
    let id = run.map(|r| review::resolve_run(conn, r)).transpose()?;
    let mut runs = read::match_runs(conn)?;
    match id {
        Some(id) => {
            let i = runs.iter().position(|m| m.run_id == id).with_context(|| format!("no match run {id}; `facedb report` lists them"))?;
            Ok(runs.swap_remove(i))
        }
        None => match runs.pop() {
            Some(m) => Ok(m),
            None => bail!("no match run yet; run `facedb match --ref IMG` first"),
        },
    }
}

pub fn load(conn: &Connection, summary: MatchRunSummary) -> Result<RunView> {
    let run_id = summary.run_id;
    let results = read::match_results(conn, run_id)?;
    let extras = review::result_extras(conn, run_id)?;
    let counts = counts(&summary, &results);
    let rows =
        results.into_iter().map(|r| Row { section: Section::of(&r), badges: badges(&r, extras.get(&r.face_id)), result: r }).collect();
    Ok(RunView {
        name: review::run_name(conn, run_id)?,
        histogram: review::histogram(conn, run_id)?,
        refs: review::run_refs(conn, run_id)?,
        rows,
        counts,
        summary,
    })
}

/// The face of a row: the crop file when it exists, else the face cut from the photo with a
/// margin (a rejected face has no crop).
pub fn face_image(root: &Path, decoders: &Decoders, out_dir: &Path, r: &ResultRow) -> Option<RgbImage> {
    r.crop_path
        .as_ref()
        // Only regular files are read: a FIFO planted under a crop's or photo's name must not hang.
        .and_then(|c| crate::util::read_photo_file(&out_dir.join(c)).ok())
        .and_then(|b| decoders.decode(&b).ok())
        .map(|d| d.rgb)
        .or_else(|| cut_face(&photo(root, decoders, r.path.as_deref()?, r.rotation)?, r.face))
}

/// A dataset photo as indexed (turned by its rotation).
pub fn photo(root: &Path, decoders: &Decoders, path: &str, rotation: u16) -> Option<RgbImage> {
    crate::pipeline::decode_as_indexed(&crate::util::read_photo_file(&walk::resolve(root, path, None)).ok()?, rotation, decoders).ok()
}

/// A reference's face: a stored face (`face:ID`), a dataset photo with the reference's content,
/// or the reference photo where it was given (its box is in the photo as decoded, unturned).
pub fn ref_image(conn: &Connection, root: &Path, decoders: &Decoders, r: &RunRef) -> Option<RgbImage> {
    if let Some(face) = r.face_id {
        return stored_face(conn, root, decoders, face);
    }
    let in_dataset = r.image_id.and_then(|id| review::image_place(conn, id).ok().flatten()).and_then(|(p, _)| photo(root, decoders, &p, 0));
    let rgb = in_dataset.or_else(|| decoders.decode(&crate::util::read_photo_file(Path::new(&r.path)).ok()?).ok().map(|d| d.rgb))?;
    cut_face(&rgb, r.face)
}

/// A stored face, cut with its margin from its photo as indexed (`match --ref face:ID`, people).
pub fn stored_face(conn: &Connection, root: &Path, decoders: &Decoders, face_id: i64) -> Option<RgbImage> {
    let place = review::face_place(conn, face_id).ok()??;
    cut_face(&photo(root, decoders, place.path.as_deref()?, place.rotation)?, place.face)
}

/// The face box with 20% margin, clamped to the photo.
pub fn cut_face(rgb: &RgbImage, [x, y, w, h]: [f64; 4]) -> Option<RgbImage> {
    let m = 0.2;
    let (x0, y0) = ((x - w * m).max(0.0) as u32, (y - h * m).max(0.0) as u32);
    let (cw, ch) = (
        ((w * (1.0 + 2.0 * m)) as u32).min(rgb.width().saturating_sub(x0)),
        ((h * (1.0 + 2.0 * m)) as u32).min(rgb.height().saturating_sub(y0)),
    );
    (cw > 0 && ch > 0).then(|| image::imageops::crop_imm(rgb, x0, y0, cw, ch).to_image())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::RunId;

    fn row(decision: &str, ambiguous: bool, reason: Option<&str>) -> ResultRow {
        ResultRow {
            face_id: 1,
            image_id: 1,
            path: None,
            distance: Some(0.3),
            runner_up_distance: None,
            ambiguous,
            pass: 1,
            decision: DecisionKind::parse(decision).unwrap(),
            reason: reason.map(String::from),
            crop_path: None,
            face: [100.0, 100.0, 50.0, 50.0],
            size_px: 50.0,
            sharpness: 60.0,
            yaw: 0.0,
            score: 0.9,
            rotation: 0,
        }
    }

    fn summary(matched: i64, rejected: i64, ambiguous: i64) -> MatchRunSummary {
        MatchRunSummary {
            run_id: RunId(1),
            name: None,
            started_at: String::new(),
            mode: "match".into(),
            threshold: 0.4,
            combine: "nearest".into(),
            out_dir: String::new(),
            references: vec![],
            negatives: vec![],
            photos: matched + rejected,
            matched,
            rejected,
            ambiguous,
        }
    }

    #[test]
    fn section_counts_add_up_to_the_summary() {
        // 2 matched, 1 ambiguous (not cropped), 2 rejected listed, 1 crop failure; the summary
        // counts 30 rejected: 27 far ones have no row.
        let rows = [
            row("matched", false, None),
            row("matched", false, None),
            row("rejected", true, Some("ambiguous")),
            row("rejected", false, Some("too_small")),
            row("rejected", false, Some("too_far")),
            row("rejected", false, Some("crop failed: disk full")),
        ];
        let c = counts(&summary(2, 30, 1), &rows);
        assert_eq!((c.matched, c.ambiguous, c.rejected), (2, 1, 30), "headings repeat the summary");
        assert_eq!((c.rejected_listed, c.rejected_ambiguous, c.rejected_far, c.crop_failed), (2, 1, 27, 1));
        assert_eq!(c.rejected_listed + c.rejected_ambiguous + c.rejected_far, c.rejected);
        let listed = |s| rows.iter().filter(|r| Section::of(r) == s).count();
        assert_eq!((listed(Section::Matched), listed(Section::Ambiguous), listed(Section::Rejected)), (2, 1, 3));
    }

    #[test]
    fn badges_name_what_a_curator_checks() {
        let small = row("matched", true, None);
        let x = ResultExtras { crop: Some([-10, 80, 100, 100]), crop_out: Some([512, 512]), photo: Some([1000, 800]), same_face_copies: 1 };
        assert_eq!(badges(&small, Some(&x)), vec!["small", "upscaled", "padded", "near-duplicate", "ambiguous"]);
        let mut big = row("matched", false, None);
        big.size_px = 200.0;
        big.face = [0.0, 300.0, 200.0, 200.0];
        let inside =
            ResultExtras { crop: Some([0, 250, 300, 300]), crop_out: Some([300, 300]), photo: Some([1000, 800]), same_face_copies: 0 };
        assert_eq!(badges(&big, Some(&inside)), vec!["edge"], "a face touching the left border");
        big.face = [400.0, 300.0, 200.0, 200.0];
        assert!(badges(&big, Some(&inside)).is_empty());
    }
}
