//! Matching and cropping the way a dataset builder needs: several and negative references,
//! ambiguity, dry runs, crop framing and output hygiene. Real models, real photos.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;
use predicates::prelude::*;

/// Quality filters off, so only identity decides.
const NO_FILTERS: [&str; 8] = ["--min-face", "0", "--min-sharpness", "0", "--min-score", "0", "--max-yaw", "90"];

fn index(dir: &Path) {
    facedb().arg("index").arg(dir).assert().success();
}

/// path -> (distance, decision, reason) of the latest match run.
fn results(dir: &Path) -> HashMap<String, (f64, String, Option<String>)> {
    let conn = db(dir);
    let mut stmt =
        conn.prepare("SELECT path, distance, decision, reason FROM matches_v WHERE run_id = (SELECT max(run_id) FROM match_runs)").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn several_references_beat_one() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for name in ["obama2.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"] {
        let img = rgb(name);
        let stem = name.trim_end_matches(".jpg");
        save(&photos, &format!("{stem}.jpg"), &img);
        for (tag, v) in variants(&img) {
            save(&photos, &format!("{stem}_{tag}.jpg"), &v);
        }
    }
    index(&photos);

    let run = |refs: &[&str]| {
        let mut cmd = facedb();
        cmd.arg("match").arg(&photos).args(NO_FILTERS).args(["--threshold", "0.35", "--out"]).arg(tmp.path().join("out"));
        for r in refs {
            cmd.arg("--ref").arg(photo(r));
        }
        cmd.assert().success();
        let res = results(&photos);
        let mut sorted: Vec<_> = res.iter().map(|(p, r)| (p.clone(), (r.0 * 1000.0).round() / 1000.0)).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        eprintln!("{refs:?}: {sorted:?}");
        let obama: Vec<f64> = res.iter().filter(|(p, _)| !p.starts_with("biden")).map(|(_, r)| r.0).collect();
        let found = res.iter().filter(|(p, r)| !p.starts_with("biden") && r.1 == "matched").count();
        let biden_matched = res.iter().filter(|(p, r)| p.starts_with("biden") && r.1 == "matched").count();
        (found, obama.len(), obama.iter().sum::<f64>() / obama.len() as f64, biden_matched, sorted)
    };
    let (one_found, total, one_mean, one_fp, one_each) = run(&["obama.jpg"]);
    let (two_found, _, two_mean, two_fp, two_each) = run(&["obama.jpg", "obama3.jpg"]);
    eprintln!("one reference: {one_found}/{total} found, mean distance {one_mean:.3}; two: {two_found}/{total}, {two_mean:.3}");
    assert!(total >= 12, "most variants have a detectable face: {total}");
    // A photo's distance is to its nearest reference: a second one never takes a photo farther,
    // and brings the person's hard photos closer.
    assert_eq!(one_each.len(), two_each.len());
    for ((path, one), (_, two)) in one_each.iter().zip(&two_each) {
        assert!(two <= one, "{path}: {two} with two references, {one} with one");
    }
    assert!(two_found >= one_found, "two references find as many: {two_found} vs {one_found}");
    assert!(two_mean < one_mean);
    assert_eq!((one_fp, two_fp), (0, 0), "Biden never matches");
}

#[test]
fn a_mirror_image_keeps_the_photo_and_two_people_make_it_ambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let obama = rgb("obama2.jpg");
    let mirror = image::imageops::flip_horizontal(&obama);
    save(tmp.path(), "mirror.jpg", &side_by_side(&obama, &mirror));
    save(tmp.path(), "two_people.jpg", &side_by_side(&obama, &rgb("biden.jpg")));
    add_photos(tmp.path(), &["obama3.jpg"]);
    index(tmp.path());
    let out = tmp.path().join("out");
    // The mirror pair: both faces are the person and the same face to each other, so the photo
    // is kept, the closer face cropped, and the copy counted.
    match_ref(tmp.path(), "obama.jpg").arg("--out").arg(&out).assert().success();
    let r = results(tmp.path());
    assert_eq!((r["mirror.jpg"].1.as_str(), r["obama3.jpg"].1.as_str()), ("matched", "matched"));
    let conn = db(tmp.path());
    let copies = query_i64(
        &conn,
        "SELECT same_face_copies FROM matches_v m JOIN match_results r USING (run_id, face_id) WHERE m.path = 'mirror.jpg' AND m.run_id = (SELECT max(run_id) FROM match_runs)",
    );
    assert_eq!(copies, 1);
    assert_eq!(
        manifest(&out)
            .iter()
            .filter(|r| file_name_of(&r["source_path"]) == "mirror.jpg" && r["ambiguous"] == "0" && r["same_face_copies"] == "1")
            .count(),
        1
    );

    // Two different people both within a (too loose) threshold: which one is meant cannot be
    // told, so the photo is listed, not cropped, unless asked.
    match_ref(tmp.path(), "obama.jpg").args(["--threshold", "0.95", "--out"]).arg(&out).assert().success().stderr(
        predicate::str::contains("ambiguous")
            .and(predicate::str::contains("two_people.jpg"))
            .and(predicate::str::contains("--threshold 0.95 is a cosine distance"))
            .and(predicate::str::contains("widest gap between")),
    );
    let r = results(tmp.path());
    assert_eq!(r["two_people.jpg"].2.as_deref(), Some("ambiguous"));
    assert_eq!(r["mirror.jpg"].1, "matched");
    let rejected = std::fs::read_to_string(out.join("rejected.csv")).unwrap();
    assert!(rejected.lines().any(|l| l.contains("/two_people.jpg,") && l.contains("ambiguous")), "{rejected}");
    assert!(!manifest(&out).iter().any(|r| file_name_of(&r["source_path"]) == "two_people.jpg"));

    match_ref(tmp.path(), "obama.jpg").args(["--threshold", "0.95", "--out"]).arg(&out).arg("--allow-ambiguous").assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.iter().filter(|r| file_name_of(&r["source_path"]) == "two_people.jpg" && r["ambiguous"] == "1").count(), 1);
}

#[test]
fn a_negative_reference_removes_a_look_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["biden.jpg", "obama2.jpg", "obama3.jpg"]);
    index(&photos);
    // A threshold so loose that Biden passes for Obama: the look-alike problem.
    let loose = ["--threshold", "0.95"];
    facedb()
        .arg("match")
        .arg(&photos)
        .args(loose)
        .args(NO_FILTERS)
        .arg("--ref")
        .arg(photo("obama.jpg"))
        .arg("--out")
        .arg(tmp.path().join("a"))
        .assert()
        .success();
    assert_eq!(results(&photos)["biden.jpg"].1, "matched");

    // Another photo of the look-alike (mirrored, so not the same file) as a negative reference.
    let not_him = tmp.path().join("not-him.jpg");
    image::imageops::flip_horizontal(&rgb("biden.jpg")).save(&not_him).unwrap();
    facedb()
        .arg("match")
        .arg(&photos)
        .args(loose)
        .args(NO_FILTERS)
        .arg("--ref")
        .arg(photo("obama.jpg"))
        .arg("--not")
        .arg(&not_him)
        .arg("--out")
        .arg(tmp.path().join("b"))
        .assert()
        .success();
    let r = results(&photos);
    assert_eq!(r["biden.jpg"].2.as_deref(), Some("negative reference"));
    assert_eq!((r["obama2.jpg"].1.as_str(), r["obama3.jpg"].1.as_str()), ("matched", "matched"));
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT json_array_length(neg_ref_ids_json) FROM match_runs ORDER BY run_id DESC LIMIT 1"), 1);
}

#[test]
fn dry_run_prints_the_histogram_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama2.jpg", "biden.jpg", "obama3.jpg"]);
    index(tmp.path());
    let conn = db(tmp.path());
    let runs = query_i64(&conn, "SELECT count(*) FROM runs");
    let out = tmp.path().join("out");
    match_ref(tmp.path(), "obama.jpg").arg("--dry-run").arg("--out").arg(&out).assert().success().stdout(
        predicate::str::contains("<- threshold")
            .and(predicate::str::contains("sharpness"))
            .and(predicate::str::contains("nothing was written")),
    );
    assert!(!out.exists());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs"), runs);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM refs"), 0);

    // With --json the same figures come as one JSON object on stdout, and still nothing is written.
    let o = facedb()
        .arg("--json")
        .arg("match")
        .arg(tmp.path())
        .arg("--ref")
        .arg(photo("obama.jpg"))
        .arg("--dry-run")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!((v["command"].as_str(), v["dry_run"].as_bool()), (Some("match"), Some(true)));
    assert_eq!(v["photos"].as_u64(), Some(3));
    assert_eq!(v["histogram"]["counts"].as_array().map(|c| c.iter().filter_map(|n| n.as_u64()).sum::<u64>()), Some(3));
    assert_eq!(v["would_crop"].as_u64(), Some(2), "obama2 and obama3: {v}");
    assert_eq!(v["would_reject"]["too far"].as_u64(), Some(1), "biden: {v}");
    assert!(!out.exists());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs"), runs);
}

#[test]
fn crops_are_framed_as_asked_and_reruns_replace_only_their_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    save(&photos, "pair.jpg", &side_by_side(&rgb("obama2.jpg"), &rgb("biden.jpg")));
    add_photos(&photos, &["obama3.jpg"]);
    index(&photos);
    let out = tmp.path().join("out");

    // --all: every face, square, 64 px, PNG.
    facedb().arg("match").arg(&photos).args(["--all", "--square", "--size", "64", "--format", "png", "--out"]).arg(&out).assert().success();
    // A file the user adds to facedb's folder later (a folder with files and no ledger is refused).
    std::fs::write(out.join("mine.txt"), b"the user's own file").unwrap();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 3, "two faces in pair.jpg, one in obama3.jpg");
    for r in &rows {
        assert!(r["crop_path"].ends_with(".png"));
        let img = image::open(out.join(&r["crop_path"])).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        assert_eq!(r["crop_w"], r["crop_h"]);
    }

    // Re-run with other settings: the PNGs are replaced by JPEGs; the user's file stays.
    match_ref(&photos, "obama.jpg").args(["--align", "--out"]).arg(&out).assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 2);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".png")), "{names:?}");
    assert!(names.contains(&"mine.txt".to_string()));
    for r in &rows {
        let angle: f32 = r["crop_angle"].parse().unwrap();
        let roll: f32 = r["roll"].parse().unwrap();
        assert!((angle - roll).abs() < 0.2, "aligned crops turn by the eye-line angle: {r:?}");
        let refs: serde_json::Value = serde_json::from_str(&r["references"]).unwrap();
        assert_eq!(refs[0]["width"], 910);
        let img = image::open(out.join(&r["crop_path"])).unwrap();
        assert_eq!((img.width().to_string(), img.height().to_string()), (r["crop_out_w"].clone(), r["crop_out_h"].clone()));
    }
    let jsonl = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert!(first["quality"]["sharpness"].as_f64().unwrap() > 0.0 && first["face"]["landmarks"].as_array().unwrap().len() == 5);
    // Indexing the dataset again never picks up crops written inside it.
    match_ref(&photos, "obama.jpg").assert().success();
    facedb().arg("index").arg(&photos).assert().success();
    assert_eq!(query_i64(&db(&photos), "SELECT count(*) FROM files"), 2);
}

#[test]
fn expand_reports_distances_to_the_given_references_and_an_odd_reference_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg"]);
    index(&photos);
    let out = tmp.path().join("out");
    match_ref(&photos, "obama.jpg").arg("--expand").arg("--out").arg(&out).assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let d: f64 = r["distance"].parse().unwrap();
        assert!(d > 0.05 && d < 0.6, "distance to obama.jpg, not to itself: {r:?}");
    }
    // A reference folder that holds someone else: that photo is named.
    let refs = tmp.path().join("refs");
    std::fs::create_dir(&refs).unwrap();
    add_photos(&refs, &["obama.jpg", "obama_partial_face2.jpg", "biden.jpg"]);
    facedb().arg("match").arg(&photos).arg("--ref").arg(&refs).arg("--out").arg(&out).assert().success().stderr(
        predicate::str::contains("warning: reference")
            .and(predicate::str::contains("biden.jpg"))
            .and(predicate::str::contains("is it the same person")),
    );
}

#[test]
fn a_sideways_photo_without_exif_is_found_and_cropped_upright() {
    let tmp = tempfile::tempdir().unwrap();
    let upright = rgb("obama2.jpg");
    // Turned a quarter either way, as a scan or a camera without an orientation tag stores it.
    save(tmp.path(), "left.jpg", &image::imageops::rotate270(&upright));
    save(tmp.path(), "right.jpg", &image::imageops::rotate90(&upright));
    index(tmp.path());
    let conn = db(tmp.path());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE rotation IN (90, 270)"), 2);
    let out = tmp.path().join("out");
    match_ref(tmp.path(), "obama.jpg").arg("--out").arg(&out).assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in rows {
        let crop = image::open(out.join(&r["crop_path"])).unwrap();
        // The face box is taller than wide; so is an upright crop of it.
        assert!(crop.height() > crop.width(), "{} is {}x{}", r["crop_path"], crop.width(), crop.height());
        assert_eq!((r["source_w"].as_str(), r["source_h"].as_str()), ("626", "1200"), "sizes of the turned photo: {r:?}");
    }
}

/// Scans and cameras without an orientation tag also store photos upside down; YuNet finds the
/// face that way too (0.78-0.87) but SFace cannot tell who it is (0.82-1.06 from the person).
#[test]
fn an_upside_down_photo_without_exif_is_turned_over_matched_and_cropped_upright() {
    let tmp = tempfile::tempdir().unwrap();
    let upright = rgb("obama2.jpg");
    save(tmp.path(), "upright.png", &upright);
    save(tmp.path(), "over.png", &image::imageops::rotate180(&upright));
    save(tmp.path(), "over_too.jpg", &image::imageops::rotate180(&rgb("obama3.jpg")));
    index(tmp.path());
    let conn = db(tmp.path());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE rotation = 180"), 2);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE rotation = 0"), 1, "the upright photo stays as it is");
    let out = tmp.path().join("out");
    match_ref(tmp.path(), "obama.jpg").arg("--out").arg(&out).assert().success();
    let rows = manifest(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let crop = |prefix: &str| {
        let r = rows.iter().find(|r| r["crop_path"].starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {rows:?}"));
        image::open(out.join(&r["crop_path"])).unwrap().to_rgb8()
    };
    let (reference, over) = (crop("upright"), crop("over_face"));
    let over = image::imageops::resize(&over, reference.width(), reference.height(), image::imageops::FilterType::Triangle);
    let mad = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.as_raw().len() as f64
    };
    let (as_written, turned) = (mad(&over, &reference), mad(&image::imageops::rotate180(&over), &reference));
    assert!(as_written < turned / 2.0, "the crop is upright: {as_written:.1} from the upright photo's, {turned:.1} turned over");
}
