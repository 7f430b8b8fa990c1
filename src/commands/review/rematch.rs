//! "Apply" on the review page: the same `match` as the run being reviewed, with the new
//! threshold (and, when asked, the faces accepted on the page as more references), run as a
//! child process of this binary so it goes through every check a `match` makes.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use serde_json::Value;

use crate::commands::Globals;
use crate::db::{review, RunId};
use crate::util::display_str;

/// The global flags a child needs to see the same models and database.
pub fn global_flags(globals: &Globals) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(m) = &globals.models {
        v.extend(["--models".to_string(), m.to_string_lossy().into_owned()]);
    }
    if let Some(d) = &globals.db {
        v.extend(["--db".to_string(), d.to_string_lossy().into_owned()]);
    }
    v
}

/// `match` arguments that repeat run `run_id` with `threshold`.
pub fn match_args(conn: &Connection, root: &Path, run_id: RunId, threshold: f32, add_accepted: bool) -> Result<Vec<String>> {
    let a = review::run_args(conn, run_id)?;
    let mut v = vec!["match".to_string(), root.to_string_lossy().into_owned()];
    for r in review::run_refs(conn, run_id)? {
        let flag = if r.negative { "--not" } else { "--ref" };
        v.extend([flag.to_string(), ref_arg(conn, root, &r)?]);
    }
    if add_accepted {
        for face in review::accepted_in_review(conn, run_id)? {
            v.extend(["--ref".to_string(), format!("face:{face}")]);
        }
    }
    v.extend(["--threshold".to_string(), format!("{threshold}")]);
    let o = &a["options"];
    let flags: [(&str, &Value); 16] = [
        ("--combine", &a["combine"]),
        ("--best", &o["best"]),
        ("--pad", &o["crop"]["pad"]),
        ("--name", &a["name"]),
        ("--expand", &a["expand"]),
        ("--out", &a["out"]),
        ("--margin", &o["crop"]["margin"]),
        ("--size", &o["crop"]["size"]),
        ("--format", &o["format"]),
        ("--quality", &o["quality"]),
        ("--min-face", &o["filters"]["min_face"]),
        ("--min-sharpness", &o["filters"]["min_sharpness"]),
        ("--max-yaw", &o["filters"]["max_yaw"]),
        ("--min-score", &o["filters"]["min_score"]),
        ("--layout", &a["layout"]),
        ("--token", &a["token"]),
    ];
    let more: &[(&str, &Value)] = if a["token"].is_string() { &[("--caption", &a["caption"]), ("--repeats", &a["repeats"])] } else { &[] };
    for &(flag, value) in flags.iter().chain(more) {
        if let Some(text) = scalar(value) {
            v.extend([flag.to_string(), text]);
        }
    }
    for (flag, value) in [
        ("--square", &o["crop"]["square"]),
        ("--upscale", &o["crop"]["upscale"]),
        ("--align", &o["crop"]["align"]),
        ("--allow-ambiguous", &o["allow_ambiguous"]),
        ("--all", &a["all"]),
    ] {
        if value.as_bool() == Some(true) {
            v.push(flag.to_string());
        }
    }
    Ok(v)
}

/// A stored option as the command line gives it: f32 values were widened to f64 in the JSON
/// (0.3 became 0.30000001192092896), so they are narrowed back.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Number(n) => n.as_f64().map(|f| (f as f32).to_string()),
        _ => None,
    }
}

/// How the child names a reference: the stored face, the photo where it was given, or a
/// dataset photo with the same content.
fn ref_arg(conn: &Connection, root: &Path, r: &review::RunRef) -> Result<String> {
    if let Some(face) = r.face_id {
        return Ok(format!("face:{face}"));
    }
    if Path::new(&r.path).is_file() {
        return Ok(r.path.clone());
    }
    if let Some((path, _)) = r.image_id.map(|id| review::image_place(conn, id)).transpose()?.flatten() {
        return Ok(root.join(path).to_string_lossy().into_owned());
    }
    bail!("reference {} is no longer where it was given; run `facedb match` by hand with --ref", display_str(&r.path))
}

/// What the child said: its exit code, its `--json` summary and the end of its messages.
pub struct Outcome {
    pub code: Option<i32>,
    pub summary: Value,
    pub messages: String,
}

pub fn run(globals: &[String], args: &[String]) -> Result<Outcome> {
    let exe = std::env::current_exe().context("finding facedb's own binary to run the match")?;
    let out = Command::new(exe).args(globals).arg("--json").args(args).output().context("running facedb match")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
    Ok(Outcome { code: out.status.code(), summary, messages: tail })
}
