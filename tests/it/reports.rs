//! Reports, per-photo records, the HTML contact sheet and SQL people can read.

use std::path::Path;

use crate::common::*;
use predicates::prelude::*;

/// A small dataset with every situation a report shows: one face, several, none, broken.
fn dataset(dir: &Path) {
    add_photos(dir, &["obama.jpg", "obama2.jpg", "biden.jpg"]);
    save(dir, "pair.jpg", &side_by_side(&rgb("obama3.jpg"), &rgb("biden.jpg")));
    save(dir, "wall.png", &image::RgbImage::from_pixel(400, 300, image::Rgb([200, 190, 180])));
    std::fs::write(dir.join("broken.jpg"), b"not a photo").unwrap();
    facedb().arg("index").arg(dir).assert().code(1);
    match_ref(dir, "obama3.jpg").arg("--threshold").arg("0.5").arg("--out").arg(dir.join("crops")).assert().success();
}

fn stdout(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

#[test]
fn report_in_three_formats() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let json: serde_json::Value = serde_json::from_str(&stdout(facedb().arg("report").arg(tmp.path()).args(["--format", "json"]))).unwrap();
    assert_eq!(json["totals"]["faces"], 5);
    assert_eq!(json["no_face"], serde_json::json!(["wall.png"]));
    assert_eq!(json["several_faces"], serde_json::json!([{"path": "pair.jpg", "faces": 2}]));
    assert_eq!(json["failed"][0]["path"], "broken.jpg");
    assert_eq!(json["face_size_px"]["count"], 5);
    assert_eq!(json["sharpness"]["bins"].as_array().unwrap().iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 5);
    let run = &json["match_runs"][0];
    assert!(run["references"][0].as_str().unwrap().ends_with("obama3.jpg"));
    assert_eq!(run["threshold"], 0.5);
    assert_eq!(run["matched"].as_i64().unwrap() + run["rejected"].as_i64().unwrap(), 4);

    let csv = stdout(facedb().arg("report").arg(tmp.path()).args(["--format", "csv"]));
    assert!(csv.starts_with("section,path,value,detail\n"));
    assert!(csv.contains("several_faces,pair.jpg,2,") && csv.contains("no_face,wall.png,0,") && csv.contains("failed,broken.jpg,,"));

    let table = stdout(facedb().arg("report").arg(tmp.path()));
    assert!(table.contains("pair.jpg  (2 faces)") && table.contains("broken.jpg: not a supported image"));
    assert!(table.contains("sharpness") && table.contains("match runs (1)"));
}

#[test]
fn info_shows_everything_about_one_photo() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let text = stdout(facedb().arg("info").arg(tmp.path().join("pair.jpg")));
    assert!(text.contains("path pair.jpg") && text.contains("faces (2)") && text.contains("landmarks"), "{text}");
    // Log lines of every run that touched it, oldest first: indexed, then matched.
    let log_start = text.find("log (").unwrap();
    assert!(text[log_start..].contains("run 1 (index)"));
    assert!(text.contains("match decisions:") && text.contains("run 2"));

    let json: serde_json::Value =
        serde_json::from_str(&stdout(facedb().arg("info").arg(tmp.path().join("obama.jpg")).arg("--json"))).unwrap();
    assert_eq!(json["width"], 910);
    assert_eq!(json["faces"][0]["landmarks"].as_array().unwrap().len(), 5);
    let face_id = json["faces"][0]["face_id"].as_i64().unwrap();
    // By face id, and by a copy of the photo outside the dataset (same content).
    let by_face = stdout(facedb().arg("info").arg(face_id.to_string()).arg("--dir").arg(tmp.path()));
    assert!(by_face.contains("path obama.jpg"));
    let by_copy = stdout(facedb().arg("info").arg(photo("obama.jpg")).arg("--dir").arg(tmp.path()));
    assert!(by_copy.contains("path obama.jpg"));
    // A file that never decoded still has its story.
    let broken = stdout(facedb().arg("info").arg(tmp.path().join("broken.jpg")));
    assert!(broken.contains("not a supported image"), "{broken}");
}

#[test]
fn html_contact_sheet_is_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let sheet = tmp.path().join("sheet.html");
    facedb().arg("report").arg(tmp.path()).arg("--html").arg(&sheet).assert().success();
    let html = std::fs::read_to_string(&sheet).unwrap();
    let conn = db(tmp.path());
    let decisions = query_i64(&conn, "SELECT count(*) FROM match_results");
    assert_eq!(html.matches("<img alt=\"face ").count() as i64, decisions, "every decision has its thumbnail");
    assert_eq!(html.matches("<img alt=\"reference ").count(), 1, "and the reference face its own (issue 14)");
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count() as i64, decisions + 1);
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"), "no network, no scripts");
    assert!(html.contains("threshold 0.50") && html.contains("<svg") && html.contains("Rejected"));
    // Thumbnails decode as JPEGs.
    let start = html.find("base64,").unwrap() + 7;
    let end = start + html[start..].find('"').unwrap();
    use base64::Engine;
    let jpeg = base64::engine::general_purpose::STANDARD.decode(&html[start..end]).unwrap();
    assert!(image::load_from_memory(&jpeg).unwrap().width() > 0);
    facedb()
        .arg("report")
        .arg(tmp.path())
        .arg("--html")
        .arg(&sheet)
        .args(["--run", "99"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no match run 99"));
}

#[test]
fn readme_example_queries_and_views_work() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme.split("<!-- queries -->").nth(1).unwrap().split("<!-- /queries -->").next().unwrap();
    let sql: String = block.lines().filter(|l| !l.starts_with("```") && !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    assert!(statements.len() >= 5);
    let mut outputs = Vec::new();
    for q in &statements {
        let out = stdout(facedb().arg("sql").arg(tmp.path()).arg(q).args(["--format", "json"]));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{q}: {e}\n{out}"));
        outputs.push(rows);
    }
    assert_eq!(outputs[0], vec![serde_json::json!({"path": "pair.jpg", "face_count": 2})]);
    assert_eq!(outputs[1].len(), 5);
    // Missing from the latest match: at least wall.png (no face) and biden.jpg.
    let missing: Vec<&str> = outputs[2].iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(missing.contains(&"wall.png") && missing.contains(&"biden.jpg"), "{missing:?}");
    assert!(!missing.contains(&"obama.jpg"));
    assert!(outputs[5].iter().any(|r| r["message"].as_str().unwrap().starts_with("indexed")));
    assert!(outputs[6].len() >= 2);
}

#[test]
fn sql_formats_write_flag_and_plain_sqlite_compatibility() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama.jpg"]);
    facedb().arg("index").arg(tmp.path()).assert().success();
    let csv = stdout(facedb().arg("sql").arg(tmp.path()).arg("SELECT path, face_count FROM photos_v").args(["--format", "csv"]));
    assert_eq!(csv, "path,face_count\nobama.jpg,1\n");
    facedb().arg("sql").arg(tmp.path()).arg("UPDATE files SET missing = 0").assert().code(2).stderr(predicate::str::contains("--write"));
    facedb()
        .arg("sql")
        .arg(tmp.path())
        .arg("--write")
        .arg("DELETE FROM logs")
        .assert()
        .success()
        .stdout(predicate::str::contains("row(s) changed"));
    assert_eq!(query_i64(&db(tmp.path()), "SELECT count(*) FROM logs"), 0);
    // Any SQLite reader works: no custom collations or functions.
    let py = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print([r for v in ('photos_v','faces_v','matches_v') for r in c.execute(f'select count(*) from {v}')])";
    let out = std::process::Command::new("python3").args(["-c", py]).arg(tmp.path().join("facedb.sqlite")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[(1,), (1,), (0,)]");
}
