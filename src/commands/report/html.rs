//! The HTML contact sheet of a match run: one self-contained file (thumbnails embedded as data
//! URIs, no scripts, no network), sorted by distance, with rejected and ambiguous sections and a
//! distance histogram with the threshold marked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;

use anyhow::{anyhow, Result};
use base64::Engine;
use image::imageops::FilterType;
use rayon::prelude::*;
use rusqlite::Connection;

use super::view::{self, RunView, Section};
use crate::db::best::Selected;
use crate::matching;
use crate::pipeline::decode::Decoders;
use crate::pipeline::walk;
use crate::util::display_path;

const THUMB: u32 = 160;
/// Rejected candidates get thumbnails up to this many (each needs its photo decoded).
const MAX_REJECTED_THUMBS: usize = 300;

/// The first line of every sheet: facedb replaces an existing file only when it starts so.
const SIGNATURE: &str =
    "<!doctype html><!-- facedb contact sheet; `facedb report --html` replaces this file only while this line is first -->";
/// How sheets written before the signature started (`facedb match run <id>` follows).
const OLD_SIGNATURE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>facedb match run ";

pub fn write(conn: &Connection, root: &Path, decoders: &Decoders, db_file: &Path, file: &Path, run: Option<&str>) -> Result<()> {
    check_target(file, root, db_file)?;
    let v = view::load(conn, view::resolve(conn, run)?)?;
    let out_dir = Path::new(&v.summary.out_dir);
    let thumbs: Vec<Option<String>> = v
        .rows
        .par_iter()
        .enumerate()
        .map(|(i, r)| {
            let want = r.section != Section::Rejected || i < MAX_REJECTED_THUMBS;
            want.then(|| view::face_image(root, decoders, out_dir, &r.result).and_then(data_uri)).flatten()
        })
        .collect();
    let refs: Vec<Option<String>> = v.refs.iter().map(|r| view::ref_image(conn, root, decoders, r).and_then(data_uri)).collect();
    let selection = crate::db::best::selection(conn, v.summary.run_id)?;
    let html = render(&v, &thumbs, &refs, &selection);
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

/// A small JPEG data URI of an image.
pub(crate) fn data_uri(image: image::RgbImage) -> Option<String> {
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

fn render(v: &RunView, thumbs: &[Option<String>], refs: &[Option<String>], selection: &HashMap<i64, Selected>) -> String {
    let (m, c) = (&v.summary, &v.counts);
    let mut h = String::new();
    let title = match &v.name {
        Some(name) => format!("facedb match run {} · {}", m.run_id, escape(name)),
        None => format!("facedb match run {}", m.run_id),
    };
    let _ = write!(
        h,
        "{SIGNATURE}\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} h2{{margin-top:32px}}\
         .grid{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0;width:{THUMB}px}}\
         figure img{{width:{THUMB}px;height:{THUMB}px;object-fit:contain;background:#eee;display:block}}\
         figcaption{{font-size:12px;line-height:1.35;word-break:break-all}} .d{{font-weight:600}}\
         .rej figcaption .d{{color:#b00}} .amb img{{outline:3px solid #e90}} .pass img{{opacity:.75}} .noimg{{width:{THUMB}px;height:{THUMB}px;background:#ddd;display:flex;align-items:center;justify-content:center;color:#777}}\
         .b{{display:inline-block;background:#fe9;border-radius:3px;padding:0 4px;margin:1px 2px 0 0;font-size:11px}} .ref img{{outline:3px solid #4a8}} .neg img{{outline:3px solid #b00}}\
         </style></head><body><h1>{title}</h1>"
    );
    let _ = write!(
        h,
        "<p class=\"counts\" data-photos=\"{}\" data-matched=\"{}\" data-rejected=\"{}\" data-ambiguous=\"{}\">{} · mode {} · threshold <b>{:.2}</b> ({}) · {} photos · <b>{}</b> matched · {} rejected · {} ambiguous</p>",
        c.photos, c.matched, c.rejected, c.ambiguous,
        escape(&m.started_at),
        escape(&m.mode),
        m.threshold,
        escape(&m.combine),
        c.photos,
        c.matched,
        c.rejected,
        c.ambiguous
    );
    let _ = write!(h, "<p>crops in {}</p>", escape(&m.out_dir));
    h.push_str(&references(v, refs));
    h.push_str(&histogram_svg(v, m.threshold as f32));
    let far = format!(
        "{} ambiguous (listed above), {} listed here, {} farther than {:.2} (counted in the histogram, not listed)",
        c.rejected_ambiguous,
        c.rejected_listed,
        c.rejected_far,
        m.threshold + f64::from(crate::commands::find::NEAR_MISS_BAND)
    );
    // A run made with --best: the matched faces it passed over (near-duplicates, not among the
    // best N) are shown right after the picked ones, to compare side by side; they stay counted
    // among the rejected, as in the summary.
    let passed_over = |r: &view::Row| selection.get(&r.result.face_id).is_some_and(|s| s.rank.is_none());
    let matched_heading = if selection.is_empty() { "Matched (sorted by distance)" } else { "Picked by --best (sorted by distance)" };
    let sections = [
        (Section::Matched, matched_heading, "", c.matched, String::new()),
        (Section::Ambiguous, "Ambiguous (another face in the photo is within the threshold)", "amb", c.ambiguous, String::new()),
        (Section::Rejected, "Rejected", "rej", c.rejected, far),
    ];
    for (section, heading, class, count, note) in &sections {
        let _ = write!(h, "<h2 data-section=\"{}\" data-count=\"{count}\">{heading}: {count}</h2>", class_name(*section));
        if !note.is_empty() {
            let _ = write!(h, "<p>{}</p>", escape(note));
        }
        h.push_str("<div class=\"grid\">");
        for (i, row) in v.rows.iter().enumerate().filter(|(_, r)| r.section == *section && !passed_over(r)) {
            h.push_str(&figure(row, thumbs[i].as_deref(), class, &m.out_dir, selection.get(&row.result.face_id)));
        }
        h.push_str("</div>");
        let passed: Vec<(usize, &view::Row)> = v.rows.iter().enumerate().filter(|(_, r)| passed_over(r)).collect();
        if *section == Section::Matched && !passed.is_empty() {
            let _ = write!(
                h,
                "<h2>Passed over by --best (near-duplicates and faces not among the best): {} (counted among the rejected)</h2><div class=\"grid\">",
                passed.len()
            );
            for (i, row) in passed {
                h.push_str(&figure(row, thumbs[i].as_deref(), "pass", &m.out_dir, selection.get(&row.result.face_id)));
            }
            h.push_str("</div>");
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn class_name(s: Section) -> &'static str {
    match s {
        Section::Matched => "matched",
        Section::Ambiguous => "ambiguous",
        Section::Rejected => "rejected",
    }
}

/// `--best` details under a thumbnail: pick order, quality, near-duplicate group.
fn best_caption(s: &Selected) -> String {
    let rank = s.rank.map(|r| format!("#{r} · ")).unwrap_or_default();
    let group = if s.group_size > 1 { format!(" · dup group {} ({})", s.group_id, s.group_size) } else { String::new() };
    format!("<br>{rank}quality {:.2}{group}", s.score)
}

fn figure(row: &view::Row, thumb: Option<&str>, class: &str, out_dir: &str, best: Option<&Selected>) -> String {
    let r = &row.result;
    let img = match thumb {
        Some(uri) => format!("<img alt=\"face {}\" src=\"{uri}\">", r.face_id),
        None => "<div class=\"noimg\">no preview</div>".to_string(),
    };
    let img = match crop_link(out_dir, r) {
        Some(link) => format!("<a href=\"{}\">{img}</a>", escape(&link)),
        None => img,
    };
    let dist = r.distance.map_or("—".to_string(), |d| format!("{d:.3}"));
    let reason = r.reason.as_ref().map(|x| format!(" · {}", escape(x))).unwrap_or_default();
    let badges: String = row.badges.iter().map(|b| format!("<span class=\"b\">{b}</span>")).collect();
    let best = best.map(best_caption).unwrap_or_default();
    format!(
        "<figure class=\"{class}\">{img}<figcaption><span class=\"d\">d {dist}</span>{reason} · face {}{best}<br>{badges}<br>{}<br>{:.0} px · sharp {:.0} · yaw {:.0}° · score {:.2}</figcaption></figure>",
        r.face_id,
        escape(r.path.as_deref().unwrap_or("?")),
        r.size_px,
        r.sharpness,
        r.yaw,
        r.score
    )
}

/// The crop file's absolute path (out_dir is stored absolute), so the link works wherever the
/// sheet is opened; a face without a crop has no link.
fn crop_link(out_dir: &str, r: &crate::db::read::ResultRow) -> Option<String> {
    r.crop_path.as_ref().map(|c| Path::new(out_dir).join(c).to_string_lossy().into_owned())
}

fn references(v: &RunView, refs: &[Option<String>]) -> String {
    let mut h = format!("<h2>References: {}</h2><div class=\"grid\">", v.refs.iter().filter(|r| !r.negative).count());
    for (r, uri) in v.refs.iter().zip(refs) {
        let img = match uri {
            Some(uri) => format!("<img alt=\"reference {}\" src=\"{uri}\">", r.id),
            None => "<div class=\"noimg\">not readable</div>".to_string(),
        };
        let (class, what) = if r.negative { ("neg", "not") } else { ("ref", "reference") };
        let _ = write!(h, "<figure class=\"{class}\">{img}<figcaption>{what}: {}</figcaption></figure>", escape(&r.path));
    }
    h.push_str("</div>");
    h
}

/// Bars of best-face distances in 0.05 bins over 0-1.2, threshold as a red line: from the run's
/// stored histogram of every photo (runs before it: from the stored rows only, and said so).
fn histogram_svg(v: &RunView, threshold: f32) -> String {
    let (bins, lo, hi) = (24usize, 0.0f32, 1.2f32);
    let (counts, note) = match &v.histogram {
        Some(hist) => (hist.rebin(5, f64::from(hi)), format!("{} photos", hist.total())),
        None => {
            let d: Vec<f32> = v.rows.iter().filter_map(|r| r.result.distance).map(|d| d as f32).collect();
            if d.is_empty() {
                return String::new();
            }
            let counts = matching::histogram(&d, lo, hi, bins).into_iter().map(|c| c as u64).collect();
            (counts, format!("{} stored rows only: this run predates stored histograms", d.len()))
        }
    };
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    let (w, hgt, pad) = (600.0f32, 160.0f32, 24.0f32);
    let bw = w / bins as f32;
    let mut s = format!(
        "<h2>Distance of the best face per photo ({note})</h2><svg width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"distance histogram\">",
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
