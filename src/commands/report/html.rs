//! The HTML contact sheet of a match run: one self-contained file (thumbnails embedded as data
//! URIs, no scripts, no network), sorted by distance, with rejected and ambiguous sections and a
//! distance histogram with the threshold marked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use image::imageops::FilterType;
use rayon::prelude::*;
use rusqlite::Connection;

use crate::db::best::Selected;
use crate::db::read::{self, MatchRunSummary, ResultRow};
use crate::matching;
use crate::pipeline::{decode, walk};
use crate::util::display_path;

const THUMB: u32 = 160;
/// Rejected candidates get thumbnails up to this many (each needs its photo decoded).
const MAX_REJECTED_THUMBS: usize = 300;

/// The first line of every sheet: facedb replaces an existing file only when it starts so.
const SIGNATURE: &str =
    "<!doctype html><!-- facedb contact sheet; `facedb report --html` replaces this file only while this line is first -->";
/// How sheets written before the signature started (`facedb match run <id>` follows).
const OLD_SIGNATURE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>facedb match run ";

pub fn write(conn: &Connection, root: &Path, db_file: &Path, file: &Path, run: Option<i64>) -> Result<()> {
    check_target(file, root, db_file)?;
    let runs = read::match_runs(conn)?;
    let summary = match run {
        Some(id) => runs.iter().find(|m| m.run_id == id).with_context(|| format!("no match run {id}; `facedb report` lists them"))?,
        None => match runs.last() {
            Some(m) => m,
            None => bail!("no match run yet; run `facedb match --ref IMG` first"),
        },
    };
    let results = read::match_results(conn, summary.run_id)?;
    let out_dir = Path::new(&summary.out_dir);
    let thumbs: Vec<Option<String>> = results
        .par_iter()
        .enumerate()
        .map(|(i, r)| {
            let want = r.decision == "matched" || i < MAX_REJECTED_THUMBS || r.ambiguous;
            want.then(|| thumbnail(root, out_dir, r)).flatten()
        })
        .collect();
    let selection = crate::db::best::selection(conn, summary.run_id)?;
    let html = render(summary, &results, &thumbs, &selection);
    crate::output::write_beside(file, html.as_bytes())
}

/// `--html FILE` may name a new file or a sheet facedb wrote; never the database (or its
/// companions), a photo, a folder, a link, or any other existing file.
fn check_target(file: &Path, root: &Path, db_file: &Path) -> Result<()> {
    let shown = display_path(file);
    let refuse = |why: &str| anyhow!("refusing to write the sheet to {shown}: {why}; pass a new file name such as sheet.html");
    // Compare by real location: the folder resolved, the name as given.
    let resolved = |p: &Path| -> Option<std::path::PathBuf> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    let target = resolved(file).ok_or_else(|| refuse("it is not a file name"))?;
    if let Some(db) = resolved(db_file) {
        let db = db.as_os_str().to_string_lossy().into_owned();
        let own = ["", "-wal", "-shm", "-journal", ".vectors", ".lock"];
        if own.iter().any(|suffix| target.as_os_str().to_string_lossy() == format!("{db}{suffix}")) {
            return Err(refuse("it is the dataset's database"));
        }
    }
    let meta = match file.symlink_metadata() {
        Err(_) if walk::is_photo(file) => return Err(refuse("a photo's name (the sheet is HTML: name it .html)")),
        Err(_) => return Ok(()),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link and facedb never writes through links"));
    }
    if meta.is_dir() {
        return Err(refuse("it is a folder"));
    }
    if walk::is_photo(file) {
        let why = if target.starts_with(root) { "it is a photo of the dataset" } else { "it is a photo" };
        return Err(refuse(why));
    }
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    let mut head = Vec::new();
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(file);
    opened.and_then(|f| f.take(SIGNATURE.len() as u64).read_to_end(&mut head)).map_err(|e| refuse(&e.to_string()))?;
    if !(head.starts_with(SIGNATURE.as_bytes()) || head.starts_with(OLD_SIGNATURE.as_bytes())) {
        return Err(refuse("it exists and facedb did not write it (no facedb signature on its first line)"));
    }
    Ok(())
}

/// A small JPEG data URI: the crop file when it exists, else the face cut from the photo.
fn thumbnail(root: &Path, out_dir: &Path, r: &ResultRow) -> Option<String> {
    let image = r
        .crop_path
        .as_ref()
        // Only regular files are read: a FIFO planted under a crop's or photo's name must not hang the sheet.
        .and_then(|c| crate::util::read_photo_file(&out_dir.join(c)).ok())
        .and_then(|b| decode::decode(&b).ok())
        .map(|d| d.rgb)
        .or_else(|| {
            let path = r.path.as_ref()?;
            let rgb = crate::pipeline::decode_as_indexed(&crate::util::read_photo_file(&walk::resolve(root, path, None)).ok()?, r.rotation)
                .ok()?;
            let [x, y, w, h] = r.face;
            let m = 0.2;
            let (x0, y0) = ((x - w * m).max(0.0) as u32, (y - h * m).max(0.0) as u32);
            let (cw, ch) = (
                ((w * (1.0 + 2.0 * m)) as u32).min(rgb.width().saturating_sub(x0)),
                ((h * (1.0 + 2.0 * m)) as u32).min(rgb.height().saturating_sub(y0)),
            );
            (cw > 0 && ch > 0).then(|| image::imageops::crop_imm(&rgb, x0, y0, cw, ch).to_image())
        })?;
    let scale = THUMB as f32 / image.width().max(image.height()) as f32;
    let small = if scale < 1.0 {
        image::imageops::resize(
            &image,
            ((image.width() as f32 * scale) as u32).max(1),
            ((image.height() as f32 * scale) as u32).max(1),
            FilterType::Triangle,
        )
    } else {
        image
    };
    let mut jpeg = Vec::new();
    small.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)).ok()?;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg)))
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn render(m: &MatchRunSummary, results: &[ResultRow], thumbs: &[Option<String>], selection: &HashMap<i64, Selected>) -> String {
    let mut h = String::new();
    let title = format!("facedb match run {}", m.run_id);
    let _ = write!(
        h,
        "{SIGNATURE}\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} h2{{margin-top:32px}}\
         .grid{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0;width:{THUMB}px}}\
         figure img{{width:{THUMB}px;height:{THUMB}px;object-fit:contain;background:#eee;display:block}}\
         figcaption{{font-size:12px;line-height:1.35;word-break:break-all}} .d{{font-weight:600}}\
         .rej figcaption .d{{color:#b00}} .pass img{{opacity:.75}} .amb img{{outline:3px solid #e90}} .noimg{{width:{THUMB}px;height:{THUMB}px;background:#ddd;display:flex;align-items:center;justify-content:center;color:#777}}\
         </style></head><body><h1>{title}</h1>"
    );
    let _ = write!(
        h,
        "<p>{} · mode {} · threshold <b>{:.2}</b> ({}) · {} photos · <b>{}</b> matched · {} rejected · {} ambiguous</p>",
        escape(&m.started_at),
        escape(&m.mode),
        m.threshold,
        escape(&m.combine),
        m.photos,
        m.matched,
        m.rejected,
        m.ambiguous
    );
    let _ = write!(h, "<p>references: {}", escape(&m.references.join(", ")));
    if !m.negatives.is_empty() {
        let _ = write!(h, " · not: {}", escape(&m.negatives.join(", ")));
    }
    let _ = write!(h, " · crops in {}</p>", escape(&m.out_dir));
    h.push_str(&histogram_svg(results, m.threshold as f32));

    type Keep<'s> = Box<dyn Fn(&ResultRow) -> bool + 's>;
    // A run made with --best: the matched faces it passed over (near-duplicates, not among the
    // best N) get their own section right after the picked ones, to compare side by side.
    let passed_over = |r: &ResultRow| selection.get(&r.face_id).is_some_and(|s| s.rank.is_none());
    let matched_heading = if selection.is_empty() { "Matched (sorted by distance)" } else { "Picked by --best (sorted by distance)" };
    let sections: [(&str, &str, Keep); 4] = [
        (matched_heading, "", Box::new(|r: &ResultRow| r.decision == "matched")),
        ("Passed over by --best (near-duplicates and faces not among the best)", "pass", Box::new(passed_over)),
        (
            "Ambiguous (another face in the photo is within the threshold)",
            "amb",
            Box::new(move |r: &ResultRow| r.decision != "matched" && r.ambiguous && !passed_over(r)),
        ),
        ("Rejected", "rej", Box::new(move |r: &ResultRow| r.decision != "matched" && !r.ambiguous && !passed_over(r))),
    ];
    for (heading, class, keep) in &sections {
        let rows: Vec<(usize, &ResultRow)> = results.iter().enumerate().filter(|(_, r)| keep(r)).collect();
        if rows.is_empty() && *class == "pass" {
            continue;
        }
        let _ = write!(h, "<h2>{heading}: {}</h2><div class=\"grid {class}\">", rows.len());
        for (i, r) in rows {
            let img = match &thumbs[i] {
                Some(uri) => format!("<img alt=\"face {}\" src=\"{uri}\">", r.face_id),
                None => "<div class=\"noimg\">no preview</div>".to_string(),
            };
            let dist = r.distance.map_or("—".to_string(), |d| format!("{d:.3}"));
            let reason = r.reason.as_ref().map(|x| format!(" · {}", escape(x))).unwrap_or_default();
            let best = selection.get(&r.face_id).map(best_caption).unwrap_or_default();
            let _ = write!(
                h,
                "<figure class=\"{class}\">{img}<figcaption><span class=\"d\">d {dist}</span>{reason}{best}<br>{}<br>{:.0} px · sharp {:.0} · yaw {:.0}° · score {:.2}</figcaption></figure>",
                escape(r.path.as_deref().unwrap_or("?")),
                r.size_px,
                r.sharpness,
                r.yaw,
                r.score
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    h
}

/// `--best` details under a thumbnail: pick order, quality, near-duplicate group.
fn best_caption(s: &Selected) -> String {
    let rank = s.rank.map(|r| format!("#{r} · ")).unwrap_or_default();
    let group = if s.group_size > 1 { format!(" · dup group {} ({})", s.group_id, s.group_size) } else { String::new() };
    format!("<br>{rank}quality {:.2}{group}", s.score)
}

/// Bars of best-face distances in 0.05 bins over 0-1.2, threshold as a red line.
fn histogram_svg(results: &[ResultRow], threshold: f32) -> String {
    let distances: Vec<f32> = results.iter().filter_map(|r| r.distance).map(|d| d as f32).collect();
    if distances.is_empty() {
        return String::new();
    }
    let (bins, lo, hi) = (24usize, 0.0f32, 1.2f32);
    let counts = matching::histogram(&distances, lo, hi, bins);
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    let (w, hgt, pad) = (600.0f32, 160.0f32, 24.0f32);
    let bw = w / bins as f32;
    let mut s = format!(
        "<h2>Distance of the best face per photo</h2><svg width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"distance histogram\">",
        w + 2.0 * pad,
        hgt + 2.0 * pad
    );
    for (i, &c) in counts.iter().enumerate() {
        let bh = c as f32 / peak * hgt;
        let x = pad + i as f32 * bw;
        let mid = lo + (i as f32 + 0.5) * (hi - lo) / bins as f32;
        let fill = if mid <= threshold { "#4a8" } else { "#bbb" };
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{fill}\"><title>{c}</title></rect>",
            pad + hgt - bh,
            bw - 1.0
        );
    }
    let tx = pad + (threshold - lo) / (hi - lo) * w;
    let _ = write!(s, "<line x1=\"{tx:.1}\" y1=\"{pad}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#d00\" stroke-width=\"2\"/>", pad + hgt);
    let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d00\" font-size=\"12\">threshold {threshold:.2}</text>", tx + 4.0, pad + 12.0);
    for t in [0.0f32, 0.3, 0.6, 0.9, 1.2] {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{t:.1}</text>",
            pad + (t - lo) / (hi - lo) * w,
            pad + hgt + 16.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }
}
