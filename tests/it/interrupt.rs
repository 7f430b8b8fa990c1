//! Never lose work: SIGKILL at 20 moments, Ctrl-C, two indexers at once, readers during a write.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use image::imageops::{self, FilterType};
use predicates::prelude::*;

/// `n` distinct small photos, each with one face (a few pixels differ, so every hash differs).
fn many_photos(dir: &Path, n: u32) {
    let portraits: Vec<image::RgbImage> = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
        .iter()
        .map(|p| {
            let img = rgb(p);
            imageops::resize(&img, 240, 240 * img.height() / img.width(), FilterType::Triangle)
        })
        .collect();
    for i in 0..n {
        let mut img = portraits[(i % 4) as usize].clone();
        for bit in 0..12 {
            let v = if (i >> bit) & 1 == 1 { 255 } else { 0 };
            for dy in 0..4 {
                for dx in 0..4 {
                    img.put_pixel(bit * 4 + dx, dy, image::Rgb([v, v, v]));
                }
            }
        }
        save(dir, &format!("p{i:04}.jpg"), &img);
    }
}

fn spawn_index(dir: &Path) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("facedb")).arg("index").arg(dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn integrity(dir: &Path) -> String {
    db(dir).query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// Everything indexing computed, keyed by content, in a stable order.
fn snapshot(dir: &Path) -> Vec<String> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT f.path || ' ' || i.blake3 || ' ' || i.width || 'x' || i.height || ' ' || coalesce(fc.idx, -1) || ' ' ||
                    coalesce(printf('%.2f %.2f %.2f %.2f %.4f', fc.x, fc.y, fc.w, fc.h, fc.score), '') || ' ' || coalesce(hex(e.vector), '')
             FROM files f JOIN images i ON i.id = f.image_id LEFT JOIN faces fc ON fc.image_id = i.id LEFT JOIN embeddings e ON e.face_id = fc.id
             ORDER BY 1",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn sigkill_at_20_moments_never_corrupts_and_the_result_equals_one_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, clean) = (tmp.path().join("killed"), tmp.path().join("clean"));
    std::fs::create_dir(&killed).unwrap();
    many_photos(&killed, 200);
    std::fs::create_dir(&clean).unwrap();
    for e in std::fs::read_dir(&killed).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, clean.join(p.file_name().unwrap())).unwrap();
        backdate(&clean.join(p.file_name().unwrap()));
    }

    let mut finished_early = 0;
    for k in 0..20u64 {
        let mut child = spawn_index(&killed);
        // Kill moments spread over start-up, first commit and mid-run.
        let wait = Duration::from_millis(150 + (k * 173) % 1400);
        let t = Instant::now();
        while t.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_some() {
            finished_early += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        assert_eq!(integrity(&killed), "ok", "after kill {k}");
    }
    let done_before = query_i64(&db(&killed), "SELECT count(*) FROM images");
    eprintln!("after 20 kills: {done_before}/200 photos stored ({finished_early} runs finished before their kill)");

    facedb().arg("index").arg(&killed).assert().success();
    facedb().arg("index").arg(&clean).assert().success();
    let (a, b) = (snapshot(&killed), snapshot(&clean));
    assert_eq!(a.len(), 200);
    assert_eq!(a, b, "interrupted runs end with the same database content as one clean run");
    let conn = db(&killed);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 200);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM (SELECT image_id, idx FROM faces GROUP BY 1, 2 HAVING count(*) > 1)"), 0);
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    many_photos(tmp.path(), 120);
    let child = spawn_index(tmp.path());
    // Wait until some photos are committed, then interrupt.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        let stored = rusqlite::Connection::open(tmp.path().join("facedb.sqlite"))
            .ok()
            .and_then(|c| c.query_row("SELECT count(*) FROM images", [], |r| r.get::<_, i64>(0)).ok());
        if stored.unwrap_or(0) > 5 {
            break;
        }
    }
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(integrity(tmp.path()), "ok");
    let conn = db(tmp.path());
    let saved = query_i64(&conn, "SELECT count(*) FROM images");
    assert!(saved > 0 && saved < 120, "{saved}");
    let status: String = conn.query_row("SELECT status FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "interrupted");
    facedb().arg("index").arg(tmp.path()).assert().success();
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 120);
    assert_eq!(last_images_new(&conn), 120 - saved);
}

fn last_images_new(conn: &rusqlite::Connection) -> i64 {
    query_i64(conn, "SELECT images_new FROM runs ORDER BY id DESC LIMIT 1")
}

#[test]
fn a_second_indexer_is_refused_while_readers_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    many_photos(tmp.path(), 150);
    let child = spawn_index(tmp.path());
    let t = Instant::now();
    while !tmp.path().join("facedb.sqlite").exists() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    facedb().arg("index").arg(tmp.path()).assert().code(2).stderr(predicate::str::contains("already running"));
    facedb().arg("report").arg(tmp.path()).assert().success();
    match_ref(tmp.path(), "obama.jpg").arg("--out").arg(tmp.path().join("crops")).assert().success();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(integrity(tmp.path()), "ok");
}

#[test]
fn db_flag_keeps_the_database_elsewhere_and_the_error_without_it_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg"]);
    // Something in the way of the database file (as on a folder the user cannot write).
    std::fs::create_dir(photos.join("facedb.sqlite")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(2).stderr(predicate::str::contains("--db PATH"));
    let elsewhere = tmp.path().join("elsewhere.sqlite");
    facedb().arg("--db").arg(&elsewhere).arg("index").arg(&photos).assert().success();
    facedb().arg("--db").arg(&elsewhere).arg("report").arg(&photos).assert().success().stdout(predicate::str::contains("faces 1"));
    assert!(elsewhere.is_file());
}
