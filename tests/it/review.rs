//! `facedb review` (issue 14) driven by a real headless Chromium through chromedriver's W3C
//! WebDriver HTTP API, plus the contact sheet's numbers against `report --format json`. Real
//! binary, real models, real photos, a real SQLite file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const PHOTOS: [&str; 4] = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"];

fn dataset(parent: &Path) -> PathBuf {
    let d = parent.join("photos");
    std::fs::create_dir_all(&d).unwrap();
    add_photos(&d, &PHOTOS);
    facedb().arg("index").arg(&d).assert().success();
    d
}

fn match_json(d: &Path, out: &Path, extra: &[&str]) -> Value {
    let o = match_ref(d, "obama.jpg").arg("--out").arg(out).arg("--json").args(extra).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// One HTTP/1.1 request over a plain socket: (status, body).
fn http(method: &str, url: &str, body: Option<&Value>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("{url}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    // Read by Content-Length: chromedriver keeps the connection open whatever the request says.
    let mut r = BufReader::new(s);
    let mut head = String::new();
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
        head.push_str(&line);
        line.clear();
    }
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok()));
    let mut body = Vec::new();
    match length {
        Some(n) => r.take(n).read_to_end(&mut body).unwrap(),
        None => r.read_to_end(&mut body).unwrap(),
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Kills the child when the test ends, passed or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `facedb review --no-open --port 0` and the URL it printed.
fn start_review(d: &Path) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_facedb"))
        .env_remove("FACEDB_MODELS")
        .env_remove("FACEDB_DB")
        .args(["review", "--no-open", "--port", "0"])
        .arg(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:") && url.contains("/?t="), "printed {url:?}");
    (Guard(child), url)
}

#[test]
fn every_request_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    match_json(&d, &tmp.path().join("crops"), &[]);
    let (server, url) = start_review(&d);
    let (base, token) = url.split_once("/?t=").unwrap();
    assert_eq!(http("GET", &format!("{base}/"), None).0, 403, "the page without the token");
    assert_eq!(http("GET", &format!("{base}/api/run"), None).0, 403);
    assert_eq!(http("GET", &format!("{base}/api/run?t=0{token}"), None).0, 403, "a wrong token");
    let decide = json!({"face_id": 1, "verdict": "reject"});
    assert_eq!(http("POST", &format!("{base}/api/decide"), Some(&decide)).0, 403, "no decision without the token");
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM decisions"), 0);
    let (status, page) = http("GET", &url, None);
    assert_eq!(status, 200);
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "nothing from the network");
    let (status, run) = http("GET", &format!("{base}/api/run?t={token}"), None);
    assert_eq!(status, 200);
    let run: Value = serde_json::from_str(&run).unwrap();
    let hist = &run["view"]["histogram"];
    let total: u64 = hist["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(total, 4, "the histogram holds every photo, the far one included");
    assert_eq!(run["view"]["counts"]["matched"], 3);
    drop(server_stops_on_ctrl_c(server));
}

/// Ctrl-C (SIGINT) ends the server at once.
fn server_stops_on_ctrl_c(mut server: Guard) -> Guard {
    let pid = server.0.id() as i32;
    // SAFETY: a signal to the child this test started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let start = Instant::now();
    while server.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(5), "facedb review still running 5 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Chromium and its driver from Debian's packages (scripts/test.sh installs them).
fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.is_file());
    Some((find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?, find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Driver {
    base: String,
    session: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(method, &format!("{}/session/{}{path}", self.base, self.session), body.as_ref());
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    /// Polls `js` until it returns something other than null/false.
    fn wait_for(&self, js: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(js);
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_face_rejected_with_the_keyboard_is_left_out_of_the_next_match() {
    let Some((browser, chromedriver)) = chromium() else {
        eprintln!("SKIPPED the browser test: /usr/bin/chromium or chromedriver not found (scripts/test.sh installs Debian's chromium and chromium-driver)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    let out = tmp.path().join("crops");
    let first = match_json(&d, &out, &[]);
    assert_eq!(first["matched"], 3);
    let (server, url) = start_review(&d);

    let port = free_port();
    let driver_proc =
        Guard(Command::new(chromedriver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while http_ready(&format!("127.0.0.1:{port}")).is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tmp.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": browser, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", format!("--user-data-dir={}", profile.display())]}}}});
    let (status, text) = http("POST", &format!("{base}/session"), Some(&caps));
    assert_eq!(status, 200, "new session: {text}");
    let session = serde_json::from_str::<Value>(&text).unwrap()["value"]["sessionId"].as_str().unwrap().to_string();
    let wd = Driver { base: base.clone(), session };

    wd.call("POST", "/url", Some(json!({"url": url})));
    let face =
        wd.wait_for("const c = document.querySelector('#sections .card.sel'); return c ? Number(c.dataset.face) : null;", "the first crop");
    let first_card = wd.script("return Number(document.querySelector('#sections .card').dataset.face)");
    assert_eq!(face, first_card, "the first crop is selected when the page opens");
    let shown = wd.script("return document.querySelector('h2[data-section=matched]').dataset.count");
    assert_eq!(shown, json!("3"), "the page's count agrees with the summary");
    // The keyboard, as a user would: `r` rejects the selected crop.
    let keys = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [{"type": "keyDown", "value": "r"}, {"type": "keyUp", "value": "r"}]}]});
    wd.call("POST", "/actions", Some(keys));
    wd.wait_for("return document.querySelector('#sections .card.sel').dataset.saved || null", "the decision to be stored");
    let verdict = wd.script("return document.querySelector('#sections .card.sel').dataset.verdict");
    assert_eq!(verdict, json!("reject"));
    let _ = http("DELETE", &format!("{base}/session/{}", wd.session), None);
    drop(driver_proc);
    drop(server);

    let face = face.as_i64().unwrap();
    let conn = db(&d);
    let stored: (String, String) =
        conn.query_row("SELECT verdict, source FROM decisions WHERE face_id = ?1", [face], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(stored, ("reject".into(), "review".into()));
    let again = match_json(&d, &out, &[]);
    assert_eq!(again["matched"], 2, "{again}");
    assert_eq!(again["decisions_applied"], 1);
    assert!(!manifest(&out).iter().any(|r| r["face_id"] == face.to_string()), "the rejected face is not cropped again");
    let mut rdr = csv::Reader::from_path(out.join("rejected.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    let (fi, ri) = (h.iter().position(|c| c == "face_id").unwrap(), h.iter().position(|c| c == "reason").unwrap());
    let reason = rdr.records().map(|r| r.unwrap()).find(|r| r[fi] == face.to_string()).map(|r| r[ri].to_string());
    assert_eq!(reason.as_deref(), Some("rejected by the user"));
}

fn http_ready(addr: &str) -> Option<()> {
    TcpStream::connect(addr).ok().map(|_| ())
}

#[test]
fn the_sheet_counts_equal_the_json_report_and_its_histogram_holds_every_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    // A strict threshold: the far photo is counted but gets no row.
    match_json(&d, &tmp.path().join("crops"), &["--threshold", "0.3", "--name", "strict"]);
    let sheet = tmp.path().join("sheet.html");
    facedb().arg("report").arg(&d).arg("--html").arg(&sheet).args(["--run", "strict"]).assert().success();
    let html = std::fs::read_to_string(&sheet).unwrap();
    let report: Value =
        serde_json::from_slice(&facedb().arg("report").arg(&d).args(["--format", "json"]).output().unwrap().stdout).unwrap();
    let run = &report["match_runs"][0];
    let attr = |name: &str| -> i64 {
        let key = format!("{name}=\"");
        let at = html.find(&key).unwrap_or_else(|| panic!("{name} missing")) + key.len();
        html[at..].split('"').next().unwrap().parse().unwrap()
    };
    for key in ["photos", "matched", "rejected", "ambiguous"] {
        assert_eq!(attr(&format!("data-{key}")), run[key].as_i64().unwrap(), "header {key}");
    }
    for (section, key) in [("matched", "matched"), ("ambiguous", "ambiguous"), ("rejected", "rejected")] {
        assert_eq!(attr(&format!("data-section=\"{section}\" data-count")), run[key].as_i64().unwrap(), "section {section}");
    }
    assert!(html.contains("References: 1") && html.contains("alt=\"reference"), "the reference face is shown");
    assert!(html.contains(&format!("({} photos)", run["photos"])), "the histogram covers every photo");
    let stored: i64 = query_i64(&db(&d), "SELECT sum(value) FROM match_histograms, json_each(counts_json)");
    assert_eq!(stored, run["photos"].as_i64().unwrap());
}

#[test]
fn apply_runs_the_same_match_with_the_new_threshold_and_the_accepted_faces() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    let out = tmp.path().join("crops");
    let first = match_json(&d, &out, &["--margin", "0.4", "--square"]);
    let (_server, url) = start_review(&d);
    let (base, token) = url.split_once("/?t=").unwrap();
    let api = |path: &str, body: Value| {
        let (status, text) = http("POST", &format!("{base}{path}?t={token}"), Some(&body));
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let faces: Vec<i64> = manifest(&out).iter().map(|r| r["face_id"].parse().unwrap()).collect();
    let (reject, accept) = (faces[0], faces[1]);
    api("/api/decide", json!({"face_id": reject, "verdict": "different_person"}));
    api("/api/decide", json!({"face_id": accept, "verdict": "accept"}));
    let bad = http("POST", &format!("{base}/api/decide?t={token}"), Some(&json!({"face_id": 999_999, "verdict": "reject"})));
    assert_eq!(bad.0, 500, "a face that is not in the run is refused: {}", bad.1);
    let res = api("/api/apply", json!({"threshold": 0.5, "add_accepted": true}));
    assert_eq!(res["exit_code"], 0, "{res}");
    let args: Vec<&str> = res["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for want in ["--margin", "0.4", "--square", "--threshold", "0.5", &format!("face:{accept}")] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let s = &res["summary"];
    assert!(s["run_id"].as_i64().unwrap() > first["run_id"].as_i64().unwrap());
    assert_eq!(s["decisions_applied"], 1, "the different-person decision: {s}");
    assert_eq!(s["matched"], 2);
    let conn = db(&d);
    let threshold: f64 = conn.query_row("SELECT threshold FROM match_runs ORDER BY run_id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!((threshold - 0.5).abs() < 1e-6);
    let refs = query_i64(&conn, "SELECT json_array_length(ref_ids_json) FROM match_runs ORDER BY run_id DESC LIMIT 1");
    assert_eq!(refs, 2, "the accepted face joined the references");
}

/// Apply at the run's own threshold runs the match the run was: every option it was given comes
/// back (a dropped `--best` rewrote a curated folder with every matched face).
#[test]
fn apply_at_the_same_threshold_repeats_every_option_of_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    let out = tmp.path().join("crops");
    #[rustfmt::skip]
    let options = [
        "--threshold", "0.55", "--best", "2", "--pad", "reflect", "--name", "anna", "--square", "--align", "--size", "96",
        "--upscale", "--margin", "0.4", "--format", "png", "--quality", "90", "--min-face", "30", "--min-sharpness", "10",
        "--max-yaw", "70", "--min-score", "0.1", "--combine", "mean", "--allow-ambiguous", "--layout", "kohya",
        "--token", "ohwx person", "--caption", "a photo", "--repeats", "3",
    ];
    match_json(&d, &out, &options);
    let (_server, url) = start_review(&d);
    let (base, token) = url.split_once("/?t=").unwrap();
    let (status, text) = http("POST", &format!("{base}/api/apply?t={token}"), Some(&json!({"threshold": 0.55})));
    assert_eq!(status, 200, "{text}");
    let res: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(res["exit_code"], 0, "{res}");
    let stored: Vec<Value> = {
        let conn = db(&d);
        let mut stmt = conn.prepare("SELECT args_json FROM runs WHERE command = 'match' ORDER BY id").unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(|r| serde_json::from_str(&r.unwrap()).unwrap()).collect()
    };
    assert_eq!(stored.len(), 2, "{stored:?}");
    // The references are given again as the stored faces (`face:ID`), not as the photo.
    let without_refs = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("ref");
        v
    };
    assert_eq!(without_refs(&stored[1]), without_refs(&stored[0]), "apply at the same threshold changed the run's options");
}

#[test]
fn image_paths_v_lists_every_copy_of_a_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    add_photos(&d, &["obama.jpg"]);
    std::fs::copy(photo("obama.jpg"), d.join("sub/copy.jpg")).unwrap();
    backdate(&d.join("sub/copy.jpg"));
    facedb().arg("index").arg(&d).assert().success();
    let conn = db(&d);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM photos_v"), 1, "one image");
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM image_paths_v"), 2, "two paths");
    assert_eq!(query_i64(&conn, "SELECT min(copies) FROM image_paths_v"), 2);
}

#[test]
fn match_list_prints_the_decisions_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path());
    let out = tmp.path().join("crops");
    let first = match_json(&d, &out, &[]);
    let face: i64 = manifest(&out)[0]["face_id"].parse().unwrap();
    facedb().args(["reject", &face.to_string(), "--dir"]).arg(&d).assert().success();
    let runs = query_i64(&db(&d), "SELECT count(*) FROM runs");
    let listed = tmp.path().join("listed");
    let o = match_ref(&d, "obama.jpg").arg("--out").arg(&listed).arg("--list").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().filter(|r| r[0] == "matched").count() as i64, first["matched"].as_i64().unwrap() - 1, "{text}");
    let rejected = rows.iter().find(|r| r[2] == face.to_string()).unwrap_or_else(|| panic!("face {face} listed: {text}"));
    assert_eq!((rejected[0], rejected[5]), ("rejected", "rejected by the user"));
    assert!(!listed.exists(), "no crops, no folder");
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM runs"), runs, "nothing recorded");
}
