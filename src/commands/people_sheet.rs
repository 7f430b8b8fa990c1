//! `facedb people sheet`: one self-contained HTML page (thumbnails as data URIs, no scripts, no
//! network) with every person, biggest first: name or id, face count and a few of the largest
//! faces. Faces are framed and photos found as `facedb report --html` does (report::view), and
//! the page is written through the output folder's ledger (src/output.rs), like crops.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use rayon::prelude::*;

use super::report::html::{data_uri, escape};
use super::report::view;
use super::{database_path, find_dataset, open_database, outln, Globals};
use crate::db::{people, read, review};
use crate::output::{OutputDir, Owner};
use crate::util::display_path;

/// The page's name in its folder.
pub const SHEET: &str = "people.html";

pub struct SheetArgs {
    pub dir: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub faces: usize,
    pub people: usize,
}

pub fn run(globals: &Globals, args: SheetArgs) -> Result<ExitCode> {
    let root = find_dataset(globals, args.dir.as_deref())?;
    let db_file = database_path(globals, &root);
    let db = open_database(globals, &root, false)?;
    // Thumbnails decode photos; HEIC ones need libheif, which lives beside the models.
    let decoders = crate::pipeline::decode::Decoders::new(crate::models::runtime::models_dir(globals.models.as_deref()).as_deref());
    let all = people::list(&db.conn, args.faces)?;
    let shown = &all[..all.len().min(args.people)];
    let places: Vec<Vec<(i64, Option<review::FacePlace>)>> = shown
        .iter()
        .map(|p| p.sample.iter().map(|&(id, _)| Ok((id, review::face_place(&db.conn, id)?))).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let thumbs: Vec<Vec<Option<String>>> =
        places.par_iter().map(|faces| faces.par_iter().map(|(_, place)| thumb(&root, &decoders, place.as_ref())).collect()).collect();
    let html = render(&root, &all, shown, &thumbs);
    if let Some(out) = &args.out {
        crate::commands::refuse_linked_output(out, "--out")?;
    }
    let out_dir = args.out.unwrap_or_else(|| root.join("facedb-people"));
    let owner = Owner { database_id: read::database_id(&db.conn)?, dataset: root.to_string_lossy().into_owned() };
    let out = OutputDir::open(&out_dir, &root, &db_file, owner)?;
    out.check_free([SHEET])?;
    let mut file = out.create(SHEET)?;
    file.write_all(html.as_bytes())?;
    file.finish()?;
    out.finish()?;
    let page = out_dir.join(SHEET);
    let faces_shown = thumbs.iter().flatten().filter(|t| t.is_some()).count();
    if globals.json {
        outln!(
            "{}",
            serde_json::json!({"command": "people sheet", "sheet": page, "people": all.len(), "people_shown": shown.len(), "faces_shown": faces_shown})
        );
    } else if !globals.quiet {
        eprintln!("wrote {} ({} of {} people, {faces_shown} faces)", display_path(&page), shown.len(), all.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// A face as the contact sheet frames it, from its photo as indexed (None: the photo is gone).
fn thumb(root: &Path, decoders: &crate::pipeline::decode::Decoders, place: Option<&review::FacePlace>) -> Option<String> {
    let place = place?;
    data_uri(view::cut_face(&view::photo(root, decoders, place.path.as_deref()?, place.rotation)?, place.face)?)
}

fn render(root: &Path, all: &[people::PersonRow], shown: &[people::PersonRow], thumbs: &[Vec<Option<String>>]) -> String {
    let mut h = String::new();
    let dataset = escape(&display_path(root));
    let faces: i64 = all.iter().map(|p| p.faces).sum();
    let _ = write!(
        h,
        "<!doctype html><!-- facedb people sheet -->\n<html><head><meta charset=\"utf-8\"><title>facedb people · {dataset}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} section{{margin-top:28px}} h2{{margin:0 0 8px}}\
         h2 small{{color:#666;font-weight:normal}} .faces{{display:flex;flex-wrap:wrap;gap:10px}} figure{{margin:0;width:128px}}\
         figure img{{width:128px;height:128px;object-fit:contain;background:#eee;display:block}}\
         figcaption{{font-size:11px;color:#555;overflow-wrap:anywhere}}</style></head><body>\n\
         <h1>People in {dataset}</h1>\n<p class=\"totals\">{} people, {faces} faces in them; the biggest first.</p>\n",
        all.len()
    );
    for (p, thumbs) in shown.iter().zip(thumbs) {
        let title = p.name.as_deref().map_or_else(|| format!("Person {}", p.person_id), escape);
        let _ = write!(
            h,
            "<section class=\"person\" id=\"person-{id}\" data-person=\"{id}\" data-faces=\"{n}\"><h2>{title} <small>person {id} · {n} face{s}</small></h2><div class=\"faces\">",
            id = p.person_id,
            n = p.faces,
            s = if p.faces == 1 { "" } else { "s" }
        );
        for ((face, path), t) in p.sample.iter().zip(thumbs) {
            let path = path.as_deref().map(escape).unwrap_or_else(|| "(photo gone)".into());
            let img = t.as_deref().map_or_else(String::new, |src| format!("<img src=\"{src}\" alt=\"face {face}\">"));
            let _ = write!(h, "<figure data-face=\"{face}\">{img}<figcaption>face {face}<br>{path}</figcaption></figure>");
        }
        h.push_str("</div></section>\n");
    }
    if shown.len() < all.len() {
        let _ = writeln!(h, "<p class=\"more\">and {} smaller people (`--people N` shows more).</p>", all.len() - shown.len());
    }
    h.push_str("</body></html>\n");
    h
}
