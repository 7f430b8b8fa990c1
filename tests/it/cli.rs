//! End-to-end tests: the real binary, real models, real photos, a real SQLite file, in temp dirs.

use std::collections::HashSet;
use std::path::Path;

use crate::common::*;
use predicates::prelude::*;

fn index(dir: &Path) -> assert_cmd::assert::Assert {
    facedb().arg("index").arg(dir).assert()
}

fn match_sources(out: &Path) -> HashSet<String> {
    manifest(out).into_iter().map(|r| file_name_of(&r["source_path"])).collect()
}

fn last_run(conn: &rusqlite::Connection, column: &str) -> i64 {
    query_i64(conn, &format!("SELECT {column} FROM runs ORDER BY id DESC LIMIT 1"))
}

#[test]
fn obama_reference_matches_obama_photos_not_biden() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &ALL_PHOTOS);
    index(&photos).success();

    let out = tmp.path().join("crops");
    facedb().args(["match", "--ref"]).arg(photo("obama.jpg")).arg("--out").arg(&out).arg(&photos).assert().success();
    let expected: HashSet<String> =
        ["32bit.png", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(match_sources(&out), expected);

    // Each crop exists, has the manifest's size, and lies inside its source photo.
    for row in manifest(&out) {
        let crop = image::open(out.join(&row["crop_path"])).unwrap();
        assert_eq!(crop.width().to_string(), row["crop_w"]);
        assert_eq!(crop.height().to_string(), row["crop_h"]);
        let (fx, fw, cx, cw): (f32, f32, f32, f32) = (
            row["face_x"].parse().unwrap(),
            row["face_w"].parse().unwrap(),
            row["crop_x"].parse().unwrap(),
            row["crop_w"].parse().unwrap(),
        );
        assert!(cx <= fx && cx + cw >= fx + fw - 1.0, "crop contains the face: {row:?}");
        assert_eq!(row["source_blake3"], blake3::hash(&std::fs::read(&row["source_path"]).unwrap()).to_hex().to_string());
        let d: f32 = row["distance"].parse().unwrap();
        assert!((0.0..0.6).contains(&d), "{row:?}");
    }
    let conn = db(&photos);
    // Biden is counted as rejected but, far beyond the threshold, neither stored nor listed.
    assert_eq!(query_i64(&conn, "SELECT rejected FROM match_runs ORDER BY run_id DESC LIMIT 1"), 1);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM match_results WHERE decision = 'rejected'"), 0);
    assert!(!std::fs::read_to_string(out.join("rejected.csv")).unwrap().contains("biden"));
    // With the threshold just below his distance he is a near miss: stored and listed.
    facedb().args(["match", "--threshold", "0.8", "--ref"]).arg(photo("obama.jpg")).arg("--out").arg(&out).arg(&photos).assert().success();
    let biden_distance: f64 = conn.query_row("SELECT distance FROM matches_v WHERE path = 'biden.jpg'", [], |r| r.get(0)).unwrap();
    assert!(biden_distance > 0.8, "biden is far from obama: {biden_distance}");
    assert!(std::fs::read_to_string(out.join("rejected.csv")).unwrap().contains("biden.jpg"));
    // The match compared vectors only.
    assert_eq!(last_run(&conn, "detector_calls"), 0);
    // The reference photo and its face were stored.
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM refs WHERE faces_in_photo = 1 AND w > 100"), 1);
}

#[test]
fn in_a_two_person_photo_the_crop_is_obamas() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    // Obama (left) and Biden (right), side by side at the same height.
    let left = image::open(photo("obama2.jpg")).unwrap().to_rgb8();
    let right = image::open(photo("biden.jpg")).unwrap().to_rgb8();
    let right = image::imageops::resize(
        &right,
        right.width() * left.height() / right.height(),
        left.height(),
        image::imageops::FilterType::Triangle,
    );
    let mut both = image::RgbImage::new(left.width() + right.width(), left.height());
    image::imageops::replace(&mut both, &left, 0, 0);
    image::imageops::replace(&mut both, &right, i64::from(left.width()), 0);
    both.save(photos.join("together.jpg")).unwrap();
    backdate(&photos.join("together.jpg"));
    index(&photos).success();

    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT face_count FROM photos_v WHERE path = 'together.jpg'"), 2);
    let out = tmp.path().join("crops");
    match_ref(&photos, "obama.jpg").arg("--out").arg(&out).assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 1);
    let face_x: f32 = rows[0]["face_x"].parse().unwrap();
    assert!(face_x < left.width() as f32, "the crop is the left (Obama) face: x = {face_x}");
    // Biden's face is the runner-up, far beyond the threshold.
    let runner_up: f64 = conn.query_row("SELECT runner_up_distance FROM match_results", [], |r| r.get(0)).unwrap();
    assert!(runner_up > 0.8, "{runner_up}");
}

#[test]
fn reindex_skips_unchanged_and_links_copies_without_detecting() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path();
    add_photos(photos, &["obama.jpg", "biden.jpg", "obama2.jpg"]);
    index(photos).success();
    let conn = db(photos);
    assert_eq!(last_run(&conn, "images_new"), 3);
    assert!(last_run(&conn, "detector_calls") >= 3);

    // Unchanged folder: no file content read, no detector run.
    index(photos).success();
    assert_eq!(last_run(&conn, "files_unchanged"), 3);
    assert_eq!(last_run(&conn, "bytes_read"), 0);
    assert_eq!(last_run(&conn, "detector_calls"), 0);

    // A renamed photo and a copied one: hashed, linked to the known image, never decoded.
    std::fs::rename(photos.join("biden.jpg"), photos.join("joe.jpg")).unwrap();
    std::fs::create_dir(photos.join("album")).unwrap();
    std::fs::copy(photos.join("obama.jpg"), photos.join("album/copy.jpg")).unwrap();
    index(photos).success();
    assert_eq!(last_run(&conn, "files_linked"), 2);
    assert_eq!(last_run(&conn, "images_new"), 0);
    assert_eq!(last_run(&conn, "detector_calls"), 0);
    assert_eq!(last_run(&conn, "embedder_calls"), 0);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 3);
    assert_eq!(query_i64(&conn, "SELECT missing FROM files WHERE path = 'biden.jpg'"), 1);
    assert_eq!(query_i64(&conn, "SELECT count(DISTINCT image_id) FROM files WHERE path IN ('joe.jpg', 'album/copy.jpg')"), 2);
}

#[test]
fn two_thresholds_compare_vectors_only() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &ALL_PHOTOS);
    index(&photos).success();
    let conn = db(&photos);

    let loose = tmp.path().join("loose");
    let strict = tmp.path().join("strict");
    // Run from inside the dataset: DIR defaults to the folder holding facedb.sqlite.
    facedb()
        .current_dir(&photos)
        .args(["match", "--threshold", "0.6", "--ref"])
        .arg(photo("obama.jpg"))
        .arg("--out")
        .arg(&loose)
        .assert()
        .success();
    assert_eq!(last_run(&conn, "detector_calls"), 0);
    assert!(last_run(&conn, "ref_model_calls") > 0, "first use of a reference embeds it");
    facedb()
        .current_dir(&photos)
        .args(["match", "--threshold", "0.2", "--ref"])
        .arg(photo("obama.jpg"))
        .arg("--out")
        .arg(&strict)
        .assert()
        .success();
    assert_eq!(last_run(&conn, "detector_calls"), 0);
    assert_eq!(last_run(&conn, "ref_model_calls"), 0, "the reference embedding is reused");

    let (l, s) = (match_sources(&loose), match_sources(&strict));
    assert_eq!(l.len(), 6);
    assert!(s.is_subset(&l) && s.len() < l.len() && !s.is_empty(), "strict {s:?} loose {l:?}");
    assert!(s.contains("obama.jpg"));
}

#[test]
fn broken_files_are_reported_and_the_rest_is_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path();
    add_photos(photos, &["obama.jpg", "biden.jpg"]);
    std::fs::write(photos.join("empty.jpg"), b"").unwrap();
    let jpeg = std::fs::read(photo("obama2.jpg")).unwrap();
    std::fs::write(photos.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(photos.join("notes.jpg"), b"this is a text file, not a photo\n").unwrap();

    facedb().arg("index").arg(photos).assert().code(1).stderr(predicate::str::contains("3 file(s)"));
    let conn = db(photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM photos_v WHERE status = 'ok' AND face_count = 1"), 2);

    let report = facedb().arg("report").arg(photos).assert().success();
    let text = String::from_utf8(report.get_output().stdout.clone()).unwrap();
    assert!(text.contains("failed files (3)"), "{text}");
    for (name, why) in [("empty.jpg", "empty"), ("truncated.jpg", "truncated JPEG"), ("notes.jpg", "not a supported image")] {
        let line = text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{name} in report:\n{text}"));
        assert!(line.contains(why), "{line}");
    }
    // Every failure has a log row naming the file.
    assert_eq!(query_i64(&conn, "SELECT count(DISTINCT path) FROM logs WHERE level = 'error'"), 3);
}

#[test]
fn reference_without_a_face_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama.jpg"]);
    index(tmp.path()).success();
    let blank = tmp.path().join("blank.png");
    image::RgbImage::from_pixel(300, 300, image::Rgb([128, 128, 128])).save(&blank).unwrap();
    facedb().arg("match").arg(tmp.path()).arg("--ref").arg(&blank).assert().code(2).stderr(
        predicate::str::contains("no face found in").and(predicate::str::contains("blank.png")).and(predicate::str::contains("40 px")),
    );
}

#[test]
fn sql_prints_a_table_and_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama.jpg"]);
    index(tmp.path()).success();
    facedb()
        .arg("sql")
        .arg(tmp.path())
        .arg("SELECT path, face_count FROM photos_v")
        .assert()
        .success()
        .stdout(predicate::str::contains("obama.jpg  1").and(predicate::str::contains("(1 row)")));
    facedb()
        .arg("sql")
        .arg(tmp.path())
        .arg("DELETE FROM faces")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("readonly").or(predicate::str::contains("read-only")));
    facedb().arg("sql").arg(tmp.path()).arg("SELEC nonsense").assert().code(2).stderr(predicate::str::starts_with("facedb: SQL error"));
    assert_eq!(query_i64(&db(tmp.path()), "SELECT count(*) FROM faces"), 1);
}
