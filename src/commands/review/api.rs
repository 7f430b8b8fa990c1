//! The review server's routes. Every request must carry the token (`?t=`), else 403: the
//! port is reachable by any local process and by web pages the user visits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Cursor, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, Rgb, RgbImage};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use super::rematch;
use crate::commands::report::view::{self, RunView};
use crate::db::decisions::{self, NewDecision, Source, Verdict};
use crate::db::{review, Db, RunId};

const PAGE: &str = include_str!("page.html");
/// Long side of a photo shown in context, and of a face cut from a photo.
const PHOTO_PX: u32 = 1000;
const FACE_PX: u32 = 320;
/// Request bodies are small JSON objects.
const MAX_BODY: u64 = 64 * 1024;

type Reply = Response<Cursor<Vec<u8>>>;

pub struct Setup {
    pub root: PathBuf,
    pub db: Db,
    pub decoders: crate::pipeline::decode::Decoders,
    pub token: String,
    pub run_id: RunId,
    pub child_globals: Vec<String>,
}

pub struct State {
    setup: Setup,
    /// The run last loaded, so that image requests need not read every row again.
    loaded: RefCell<Option<RunView>>,
}

impl State {
    pub fn new(setup: Setup) -> Self {
        Self { setup, loaded: RefCell::new(None) }
    }

    pub fn handle(&self, mut request: Request) {
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let params = parse_query(query);
        let reply = if params.get("t") != Some(&self.setup.token) {
            text(403, "forbidden: open the address `facedb review` printed (it carries the page's token)")
        } else {
            let mut body = String::new();
            let read = request.as_reader().take(MAX_BODY).read_to_string(&mut body);
            match read.map_err(anyhow::Error::from).and_then(|_| self.route(request.method(), path, &params, &body)) {
                Ok(r) => r,
                Err(e) => json_reply(500, &json!({"error": format!("{e:#}")})),
            }
        };
        // A browser that went away mid-reply is no reason to stop serving.
        let _ = request.respond(reply);
    }

    fn route(&self, method: &Method, path: &str, params: &HashMap<String, String>, body: &str) -> Result<Reply> {
        let run_id = match params.get("run") {
            Some(r) => review::resolve_run(&self.setup.db.conn, r)?,
            None => self.setup.run_id,
        };
        let id_after = |prefix: &str| path.strip_prefix(prefix).and_then(|s| s.parse::<i64>().ok());
        Ok(match (method, path) {
            (Method::Get, "/") => page(),
            (Method::Get, "/api/run") => json_reply(200, &self.run_json(run_id)?),
            (Method::Post, "/api/decide") => json_reply(200, &self.decide(run_id, body)?),
            (Method::Post, "/api/apply") => json_reply(200, &self.apply(run_id, body)?),
            (Method::Get, p) if p.starts_with("/img/face/") => match id_after("/img/face/") {
                Some(face) => self.face(run_id, face)?,
                None => text(404, "no such face"),
            },
            (Method::Get, p) if p.starts_with("/img/photo/") => match id_after("/img/photo/") {
                Some(face) => self.photo(face)?,
                None => text(404, "no such face"),
            },
            (Method::Get, p) if p.starts_with("/img/ref/") => match id_after("/img/ref/") {
                Some(r) => self.reference(run_id, r)?,
                None => text(404, "no such reference"),
            },
            _ => text(404, "not found"),
        })
    }

    fn view(&self, run_id: RunId, fresh: bool) -> Result<std::cell::Ref<'_, RunView>> {
        let stale = self.loaded.borrow().as_ref().is_none_or(|v| v.summary.run_id != run_id);
        if fresh || stale {
            let conn = &self.setup.db.conn;
            let v = view::load(conn, view::resolve(conn, Some(&run_id.to_string()))?)?;
            *self.loaded.borrow_mut() = Some(v);
        }
        std::cell::Ref::filter_map(self.loaded.borrow(), Option::as_ref).map_err(|_| anyhow::anyhow!("run {run_id} is not loaded"))
    }

    fn run_json(&self, run_id: RunId) -> Result<Value> {
        let conn = &self.setup.db.conn;
        let verdicts: HashMap<String, Value> = review::verdicts(conn, run_id)?
            .into_iter()
            .map(|(face, (v, source))| (face.to_string(), json!({"verdict": v.as_str(), "source": source})))
            .collect();
        let runs: Vec<Value> = crate::db::read::match_runs(conn)?
            .iter()
            .rev()
            .map(|m| json!({"run_id": m.run_id, "started_at": m.started_at, "threshold": m.threshold, "matched": m.matched}))
            .collect();
        let v = self.view(run_id, true)?;
        Ok(json!({
            "view": &*v, "verdicts": verdicts, "runs": runs,
            "near_miss_band": crate::commands::find::NEAR_MISS_BAND,
        }))
    }

    fn decide(&self, run_id: RunId, body: &str) -> Result<Value> {
        let req: Value = serde_json::from_str(body).context("the request is not JSON")?;
        let face_id = req["face_id"].as_i64().context("face_id missing")?;
        let verdict = match req["verdict"].as_str() {
            Some("accept") => Verdict::Accept,
            Some("reject") => Verdict::Reject,
            Some("different_person") => Verdict::DifferentPerson,
            other => bail!("verdict {other:?} is not accept, reject or different_person"),
        };
        if !self.view(run_id, false)?.rows.iter().any(|r| r.result.face_id == face_id) {
            bail!("face {face_id} is not in match run {run_id}");
        }
        let conn = &self.setup.db.conn;
        let person = decisions::run_person(conn, run_id)?;
        let d = NewDecision { face_id, person: &person, verdict, source: Source::Review, run_id: Some(run_id), detail: None };
        let id = decisions::insert(conn, &d)?;
        Ok(json!({"decision_id": id, "face_id": face_id, "verdict": verdict.as_str()}))
    }

    fn apply(&self, run_id: RunId, body: &str) -> Result<Value> {
        let req: Value = serde_json::from_str(body).context("the request is not JSON")?;
        let threshold = req["threshold"].as_f64().filter(|t| t.is_finite() && (0.0..=2.0).contains(t));
        let Some(threshold) = threshold else { bail!("threshold must be a number from 0 to 2") };
        let args = rematch::match_args(
            &self.setup.db.conn,
            &self.setup.root,
            run_id,
            threshold as f32,
            req["add_accepted"].as_bool() == Some(true),
        )?;
        let out = rematch::run(&self.setup.child_globals, &args)?;
        Ok(json!({"exit_code": out.code, "summary": out.summary, "messages": out.messages, "args": args}))
    }

    fn face(&self, run_id: RunId, face_id: i64) -> Result<Reply> {
        let v = self.view(run_id, false)?;
        let Some(row) = v.rows.iter().find(|r| r.result.face_id == face_id) else { return Ok(text(404, "no such face in this run")) };
        let r = &row.result;
        let out_dir = Path::new(&v.summary.out_dir);
        // The crop file as written; a rejected face has none and is cut from its photo.
        if let Some(bytes) = r.crop_path.as_ref().and_then(|c| crate::util::read_photo_file(&out_dir.join(c)).ok()) {
            let kind = match Path::new(r.crop_path.as_deref().unwrap_or("")).extension().and_then(|e| e.to_str()) {
                Some("png") => "image/png",
                Some("webp") => "image/webp",
                _ => "image/jpeg",
            };
            return Ok(with_type(Response::from_data(bytes), kind));
        }
        match view::face_image(&self.setup.root, &self.setup.decoders, out_dir, r) {
            Some(img) => jpeg(&shrink(img, FACE_PX), None),
            None => Ok(text(404, "the photo cannot be read")),
        }
    }

    /// The face's photo, smaller, with the face box drawn.
    fn photo(&self, face_id: i64) -> Result<Reply> {
        let Some(place) = review::face_place(&self.setup.db.conn, face_id)? else { return Ok(text(404, "no such face")) };
        let Some(rgb) = place.path.as_deref().and_then(|p| view::photo(&self.setup.root, &self.setup.decoders, p, place.rotation)) else {
            return Ok(text(404, "the photo cannot be read"));
        };
        let scale = (PHOTO_PX as f64 / f64::from(rgb.width().max(rgb.height()))).min(1.0);
        jpeg(&shrink(rgb, PHOTO_PX), Some(place.face.map(|v| v * scale)))
    }

    fn reference(&self, run_id: RunId, ref_id: i64) -> Result<Reply> {
        let v = self.view(run_id, false)?;
        let Some(r) = v.refs.iter().find(|r| r.id == ref_id) else { return Ok(text(404, "no such reference in this run")) };
        match view::ref_image(&self.setup.db.conn, &self.setup.root, &self.setup.decoders, r) {
            Some(img) => jpeg(&shrink(img, FACE_PX), None),
            None => Ok(text(404, "the reference photo cannot be read")),
        }
    }
}

/// The page, with a policy that lets it load nothing but this server's own answers.
fn page() -> Reply {
    let mut r = with_type(Response::from_data(PAGE.as_bytes().to_vec()), "text/html; charset=utf-8");
    let policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'";
    for (k, v) in [("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")] {
        if let Ok(h) = Header::from_bytes(k, v) {
            r.add_header(h);
        }
    }
    r
}

fn shrink(img: RgbImage, px: u32) -> RgbImage {
    let scale = px as f32 / img.width().max(img.height()) as f32;
    if scale >= 1.0 {
        return img;
    }
    let (w, h) = (((img.width() as f32 * scale) as u32).max(1), ((img.height() as f32 * scale) as u32).max(1));
    image::imageops::resize(&img, w, h, FilterType::Triangle)
}

/// A JPEG reply, with a box drawn (3 px, red) when given.
fn jpeg(img: &RgbImage, face_box: Option<[f64; 4]>) -> Result<Reply> {
    let mut img = img.clone();
    if let Some([x, y, w, h]) = face_box {
        draw_box(&mut img, [x, y, w, h]);
    }
    let mut bytes = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85))?;
    Ok(with_type(Response::from_data(bytes), "image/jpeg"))
}

fn draw_box(img: &mut RgbImage, [x, y, w, h]: [f64; 4]) {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let (x0, y0, x1, y1) = (x as i64, y as i64, (x + w) as i64, (y + h) as i64);
    let red = Rgb([230, 20, 20]);
    for t in 0..3 {
        for px in x0..=x1 {
            for py in [y0 - t, y1 + t] {
                if (0..iw).contains(&px) && (0..ih).contains(&py) {
                    img.put_pixel(px as u32, py as u32, red);
                }
            }
        }
        for py in y0..=y1 {
            for px in [x0 - t, x1 + t] {
                if (0..iw).contains(&px) && (0..ih).contains(&py) {
                    img.put_pixel(px as u32, py as u32, red);
                }
            }
        }
    }
}

fn with_type(r: Reply, content_type: &str) -> Reply {
    let mut r = r;
    if let Ok(h) = Header::from_bytes("Content-Type", content_type) {
        r.add_header(h);
    }
    // The page is the only thing that may load what this server sends.
    if let Ok(h) = Header::from_bytes("Cache-Control", "no-store") {
        r.add_header(h);
    }
    r
}

fn text(status: u16, message: &str) -> Reply {
    with_type(Response::from_data(message.as_bytes().to_vec()).with_status_code(status), "text/plain; charset=utf-8")
}

fn json_reply(status: u16, v: &Value) -> Reply {
    with_type(Response::from_data(v.to_string().into_bytes()).with_status_code(status), "application/json")
}

/// `a=1&b=x%20y` (percent-decoded as UTF-8; `+` is a space).
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).map(|(k, v)| (decode(k), decode(v))).collect()
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%').then(|| Some(hex(*b.get(i + 1)?)? * 16 + hex(*b.get(i + 2)?)?)).flatten();
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_strings_are_decoded() {
        let q = super::parse_query("t=ab12&run=photos%20of+Anna&x=%zz&y=%4&z=%C3%A9%");
        assert_eq!(q["t"], "ab12");
        assert_eq!(q["run"], "photos of Anna");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "%4");
        assert_eq!(q["z"], "é%");
    }
}
