//! `facedb report`: totals, photos with zero or several faces, failed files, face-size and
//! sharpness distributions, match runs; as a table, JSON or CSV; or an HTML contact sheet.

pub(crate) mod html;
pub mod view;

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::sql::render_table;
use super::{database_path, find_dataset, open_database, outln, Globals};
use crate::cli::{OutputFormat, ReportArgs};
use crate::db::read::{self, MatchRunSummary, Totals};
use crate::pipeline::decode::Decoders;
use crate::util::display_str;

#[derive(Serialize)]
struct Report {
    dataset: String,
    totals: Totals,
    no_face: Vec<String>,
    /// Photos whose faces `facedb forget` erased (not "no face": facedb will not find them again).
    forgotten: Vec<String>,
    several_faces: Vec<PathCount>,
    failed: Vec<PathError>,
    /// Folders the last index could not list, dangling links and loops.
    unlisted: Vec<PathError>,
    /// Photo-named FIFOs, sockets and devices the last index did not open.
    skipped: Vec<PathError>,
    face_size_px: Distribution,
    sharpness: Distribution,
    match_runs: Vec<MatchRunSummary>,
}

#[derive(Serialize)]
struct PathCount {
    path: String,
    faces: i64,
}

#[derive(Serialize)]
struct PathError {
    path: String,
    error: String,
}

/// Quantiles and a histogram over fixed, meaningful bin edges.
#[derive(Serialize, Debug, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub min: Option<f64>,
    pub p10: Option<f64>,
    pub median: Option<f64>,
    pub p90: Option<f64>,
    pub max: Option<f64>,
    pub bins: Vec<Bin>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Bin {
    pub from: f64,
    pub to: Option<f64>,
    pub count: usize,
}

pub const FACE_SIZE_EDGES: [f64; 7] = [0.0, 40.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
pub const SHARPNESS_EDGES: [f64; 7] = [0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0];

pub fn distribution(values: &[f64], edges: &[f64]) -> Distribution {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize]);
    let bins = edges
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let to = edges.get(i + 1).copied();
            Bin { from, to, count: v.iter().filter(|&&x| x >= from && to.is_none_or(|t| x < t)).count() }
        })
        .collect();
    Distribution { count: v.len(), min: q(0.0), p10: q(0.1), median: q(0.5), p90: q(0.9), max: q(1.0), bins }
}

pub fn run(globals: &Globals, args: ReportArgs) -> Result<ExitCode> {
    let root = find_dataset(globals, args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    let db = open_database(globals, &root, false)?;
    let conn = &db.conn;
    if let Some(file) = &args.html {
        // Thumbnails decode photos with the libraries beside the models (libheif for HEIC).
        let decoders = Decoders::new(crate::models::runtime::models_dir(globals.models.as_deref()).as_deref());
        html::write(conn, &root, &decoders, &db_file, file, args.run.as_deref())?;
        if !globals.quiet {
            eprintln!("wrote {}", crate::util::display_path(file));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (sizes, sharpness) = read::face_measures(conn)?;
    let (mut unlisted, mut skipped) = (Vec::new(), Vec::new());
    for (path, kind, error) in read::walk_issues(conn)? {
        if kind == "skipped" { &mut skipped } else { &mut unlisted }.push(PathError { path, error });
    }
    let report = Report {
        dataset: root.to_string_lossy().into_owned(),
        totals: read::totals(conn)?,
        no_face: read::photos_by_face_count(conn, false)?.into_iter().map(|(p, _)| p).collect(),
        forgotten: read::forgotten_photos(conn)?,
        several_faces: read::photos_by_face_count(conn, true)?.into_iter().map(|(path, faces)| PathCount { path, faces }).collect(),
        failed: read::failed_files(conn)?.into_iter().map(|(path, error)| PathError { path, error }).collect(),
        unlisted,
        skipped,
        face_size_px: distribution(&sizes, &FACE_SIZE_EDGES),
        sharpness: distribution(&sharpness, &SHARPNESS_EDGES),
        match_runs: read::match_runs(conn)?,
    };
    let format = if globals.json { OutputFormat::Json } else { args.format };
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Csv => print_csv(&report)?,
        OutputFormat::Table => print_table(&report)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &Report) -> Result<()> {
    let t = &r.totals;
    outln!("dataset {}", r.dataset);
    outln!("  files {}  images {} ({} decoded)  faces {}", t.files, t.images, t.images_ok, t.faces);
    outln!("  photos with no face {}  with several faces {}  failed files {}", t.no_face, t.several_faces, t.failed);
    outln!("\nphotos with no face ({}):", r.no_face.len());
    for p in &r.no_face {
        outln!("  {}", display_str(p));
    }
    if !r.forgotten.is_empty() {
        outln!("\nphotos whose faces were forgotten ({}; `facedb forget`, never found again):", r.forgotten.len());
        for p in &r.forgotten {
            outln!("  {}", display_str(p));
        }
    }
    outln!("\nphotos with several faces ({}):", r.several_faces.len());
    for p in &r.several_faces {
        outln!("  {}  ({} faces)", display_str(&p.path), p.faces);
    }
    outln!("\nfailed files ({}):", r.failed.len());
    for p in &r.failed {
        outln!("  {}: {}", display_str(&p.path), display_str(&p.error));
    }
    for (title, list) in [("folders and links that could not be read", &r.unlisted), ("skipped, not regular files", &r.skipped)] {
        if !list.is_empty() {
            outln!("\n{title} ({}):", list.len());
            for p in list {
                outln!("  {}: {}", display_str(&p.path), display_str(&p.error));
            }
        }
    }
    for (title, d) in [("face size (shorter side, px)", &r.face_size_px), ("sharpness (<25 blurry, 25-50 soft, >50 sharp)", &r.sharpness)] {
        outln!("\n{title}: {} faces", d.count);
        if let (Some(min), Some(p10), Some(med), Some(p90), Some(max)) = (d.min, d.p10, d.median, d.p90, d.max) {
            outln!("  min {min:.0}  p10 {p10:.0}  median {med:.0}  p90 {p90:.0}  max {max:.0}");
        }
        let peak = d.bins.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        for b in &d.bins {
            let range = b.to.map_or(format!("{:>5.0}+     ", b.from), |to| format!("{:>5.0}-{:<5.0}", b.from, to));
            outln!("  {range} {:>6} {}", b.count, "#".repeat((b.count * 40).div_ceil(peak)));
        }
    }
    outln!("\nmatch runs ({}):", r.match_runs.len());
    if !r.match_runs.is_empty() {
        let columns: Vec<String> = ["run", "name", "started", "mode", "threshold", "references", "not", "matched", "rejected", "ambiguous"]
            .map(String::from)
            .to_vec();
        let rows: Vec<Vec<String>> = r
            .match_runs
            .iter()
            .map(|m| {
                vec![
                    m.run_id.to_string(),
                    m.name.clone().unwrap_or_default(),
                    m.started_at.chars().take(19).collect(),
                    m.mode.clone(),
                    format!("{:.2}", m.threshold),
                    m.references.join(", "),
                    m.negatives.join(", "),
                    m.matched.to_string(),
                    m.rejected.to_string(),
                    m.ambiguous.to_string(),
                ]
            })
            .collect();
        for line in render_table(&columns, &rows).lines() {
            outln!("  {line}");
        }
    }
    Ok(())
}

/// One CSV table: section, path, value, detail.
fn print_csv(r: &Report) -> Result<()> {
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(["section", "path", "value", "detail"])?;
    let t = &r.totals;
    for (k, v) in [
        ("files", t.files),
        ("images", t.images),
        ("decoded", t.images_ok),
        ("faces", t.faces),
        ("no_face", t.no_face),
        ("several_faces", t.several_faces),
        ("failed", t.failed),
    ] {
        w.write_record(["total", k, &v.to_string(), ""])?;
    }
    for p in &r.no_face {
        w.write_record(["no_face", p, "0", ""])?;
    }
    for p in &r.forgotten {
        w.write_record(["forgotten", p, "0", ""])?;
    }
    for p in &r.several_faces {
        w.write_record(["several_faces", &p.path, &p.faces.to_string(), ""])?;
    }
    for p in &r.failed {
        w.write_record(["failed", &p.path, "", &p.error])?;
    }
    for p in &r.unlisted {
        w.write_record(["unlisted", &p.path, "", &p.error])?;
    }
    for p in &r.skipped {
        w.write_record(["skipped", &p.path, "", &p.error])?;
    }
    for (name, d) in [("face_size_px", &r.face_size_px), ("sharpness", &r.sharpness)] {
        for b in &d.bins {
            let range = b.to.map_or(format!("{}+", b.from), |to| format!("{}-{}", b.from, to));
            w.write_record([name, &range, &b.count.to_string(), ""])?;
        }
    }
    for m in &r.match_runs {
        let detail = format!(
            "threshold {:.2}; matched {}; rejected {}; ambiguous {}; references {}",
            m.threshold,
            m.matched,
            m.rejected,
            m.ambiguous,
            m.references.join(" | ")
        );
        w.write_record(["match_run", &m.out_dir, &m.run_id.to_string(), &detail])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_quantiles_and_bins() {
        let d = distribution(&[5.0, 50.0, 70.0, 300.0, 2000.0, f64::NAN], &FACE_SIZE_EDGES);
        assert_eq!((d.count, d.min, d.median, d.max), (5, Some(5.0), Some(70.0), Some(2000.0)));
        let counts: Vec<usize> = d.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![1, 1, 1, 0, 1, 0, 1]);
        assert_eq!(distribution(&[], &SHARPNESS_EDGES).min, None);
    }
}
