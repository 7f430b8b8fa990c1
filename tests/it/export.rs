//! `facedb export`: XMP sidecars read back by exiftool (plain, EXIF-rotated, merged into a
//! sidecar that held other XMP; foreign and linked sidecars refused), and Parquet read back by
//! pyarrow and DuckDB (same faces and embedding values as SQLite; the README's query runs).

use std::path::{Path, PathBuf};

use crate::common::*;
use image::{imageops, Rgb, RgbImage};
use predicates::prelude::*;
use serde_json::Value;

fn exiftool(files: &[PathBuf]) -> Vec<Value> {
    let out = std::process::Command::new("exiftool")
        .args(["-j", "-struct", "-XMP-mwg-rs:RegionInfo", "-XMP:Rating", "-XMP:Subject"])
        .args(files)
        .output()
        .expect("exiftool is installed (Debian: libimage-exiftool-perl; scripts/test.sh installs it)");
    assert!(out.status.success(), "exiftool: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A region as exiftool reads it: name, type, area x/y/w/h.
type ReadRegion = (Option<String>, String, [f64; 4]);

/// Each region exiftool reads, and the AppliedToDimensions.
fn regions(info: &Value) -> (Vec<ReadRegion>, (u64, u64)) {
    let ri = &info["RegionInfo"];
    let dims = (ri["AppliedToDimensions"]["W"].as_u64().unwrap(), ri["AppliedToDimensions"]["H"].as_u64().unwrap());
    let list = ri["RegionList"].as_array().cloned().unwrap_or_default();
    let regions = list
        .iter()
        .map(|r| {
            let a = &r["Area"];
            let name = r["Name"].as_str().map(str::to_string);
            (name, r["Type"].as_str().unwrap_or("").to_string(), ["X", "Y", "W", "H"].map(|k| a[k].as_f64().unwrap_or(f64::NAN)))
        })
        .collect();
    (regions, dims)
}

fn faces_of(conn: &rusqlite::Connection, path: &str) -> Vec<i64> {
    let mut stmt = conn
        .prepare("SELECT fc.id FROM faces fc JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id JOIN files f ON f.image_id = i.id WHERE f.path = ?1 ORDER BY fc.idx")
        .unwrap();
    stmt.query_map([path], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn name_person(conn: &rusqlite::Connection, name: &str, faces: &[i64]) {
    conn.execute("INSERT INTO people (name, created_at) VALUES (?1, '2026-12-02T00:00:00Z')", [name]).unwrap();
    let person = conn.last_insert_rowid();
    for f in faces {
        conn.execute("INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, 'user')", [*f, person]).unwrap();
    }
}

const FOREIGN: &str = r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
  xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/" xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#" xmp:Rating="4">
 <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>
 <mwg-rs:Regions rdf:parseType="Resource"><mwg-rs:RegionList><rdf:Bag>
  <rdf:li><rdf:Description mwg-rs:Name="Flag" mwg-rs:Type="Focus"><mwg-rs:Area stArea:x="0.1" stArea:y="0.1" stArea:w="0.05" stArea:h="0.05" stArea:unit="normalized"/></rdf:Description></rdf:li>
 </rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions>
</rdf:Description></rdf:RDF></x:xmpmeta>
"#;

#[test]
fn xmp_regions_read_back_with_exiftool_for_plain_rotated_and_merged_sidecars() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    add_photos(d, &["obama.jpg", "biden.jpg", "obama2.jpg"]);
    // One face in the top-left part of a grey upright frame, saved turned by EXIF orientation;
    // the mask marks the face's pixels, turned the same way, to check regions independently.
    let face = imageops::resize(&rgb("obama.jpg"), 260, 325, imageops::FilterType::Triangle);
    let mut upright = RgbImage::from_pixel(640, 520, Rgb([128, 128, 128]));
    let mut mask = RgbImage::new(640, 520);
    imageops::replace(&mut upright, &face, 30, 20);
    imageops::replace(&mut mask, &RgbImage::from_pixel(260, 325, Rgb([255, 255, 255])), 30, 20);
    for o in [3u16, 6, 8] {
        let p = d.join(format!("turned{o}.jpg"));
        std::fs::write(&p, jpeg_with_orientation(&stored_for(&upright, o), o)).unwrap();
        backdate(&p);
    }
    std::fs::write(d.join("biden.jpg.xmp"), FOREIGN).unwrap();
    let outside = tmp.path().join("elsewhere.xmp");
    std::fs::write(&outside, "mine").unwrap();
    std::os::unix::fs::symlink(&outside, d.join("obama2.jpg.xmp")).unwrap();
    facedb().arg("index").arg(d).assert().success();
    let conn = db(d);
    let obama = faces_of(&conn, "obama.jpg");
    assert_eq!(obama.len(), 1);
    name_person(&conn, "Barack Obama", &obama);

    // Without --merge-existing: the foreign sidecar and the link are refused, one line each.
    facedb()
        .args(["export", "xmp"])
        .arg(d)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("biden.jpg.xmp exists and facedb did not write it; pass --merge-existing"))
        .stderr(predicate::str::contains("obama2.jpg.xmp is a symbolic link"));
    assert_eq!(std::fs::read_to_string(d.join("biden.jpg.xmp")).unwrap(), FOREIGN, "untouched");
    let files: Vec<PathBuf> =
        ["obama.jpg.xmp", "turned3.jpg.xmp", "turned6.jpg.xmp", "turned8.jpg.xmp"].iter().map(|n| d.join(n)).collect();
    let read = exiftool(&files);
    let (r, dims) = regions(&read[0]);
    assert_eq!(dims, (910, 1137));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.as_deref(), r[0].1.as_str()), (Some("Barack Obama"), "Face"));
    for (o, info) in [3u16, 6, 8].iter().zip(&read[1..]) {
        let (r, dims) = regions(info);
        let stored_mask = stored_for(&mask, *o);
        assert_eq!(dims, (u64::from(stored_mask.width()), u64::from(stored_mask.height())), "orientation {o}: stored size");
        assert_eq!(r.len(), 1, "orientation {o}: {r:?}");
        let [x, y, w, h] = r[0].2;
        // The region's centre is on the face in the stored pixels, and it is about face-sized.
        let (px, py) = ((x * f64::from(dims.0 as u32)) as u32, (y * f64::from(dims.1 as u32)) as u32);
        assert_eq!(stored_mask.get_pixel(px, py).0, [255; 3], "orientation {o}: region centre {x},{y} is off the face");
        let (fw, fh) = if *o >= 5 { (325.0 / 520.0, 260.0 / 640.0) } else { (260.0 / 640.0, 325.0 / 520.0) };
        assert!(w < fw && h < fh && w > fw / 4.0 && h > fh / 4.0, "orientation {o}: region {w}x{h} vs face {fw}x{fh}");
        assert_eq!(r[0].0, None, "no name: not in a named person");
    }

    // With it: facedb's regions are added, everything else kept; the link is still refused.
    facedb().args(["export", "xmp", "--merge-existing"]).arg(d).assert().code(1).stderr(predicate::str::contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "mine");
    assert!(d.join("obama2.jpg.xmp").symlink_metadata().unwrap().file_type().is_symlink());
    let merged = &exiftool(&[d.join("biden.jpg.xmp")])[0];
    assert_eq!(merged["Rating"], 4);
    assert_eq!(merged["Subject"], serde_json::json!(["holiday"]));
    let (r, _) = regions(merged);
    let mut kinds: Vec<&str> = r.iter().map(|x| x.1.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["Face", "Focus"], "{r:?}");
    assert!(r.iter().any(|x| x.0.as_deref() == Some("Flag")));

    // A re-export changes nothing; a user's edit makes the sidecar theirs again.
    std::fs::remove_file(d.join("obama2.jpg.xmp")).unwrap();
    facedb().args(["export", "xmp"]).arg(d).assert().success();
    let before = std::fs::read(d.join("turned6.jpg.xmp")).unwrap();
    facedb()
        .args(["--json", "export", "xmp"])
        .arg(d)
        .assert()
        .success()
        .stdout(predicate::str::contains("\"created\":0,\"updated\":0,\"merged\":0"));
    assert_eq!(std::fs::read(d.join("turned6.jpg.xmp")).unwrap(), before);
    // Killed after renaming, before recording the new hash: the pending hash still proves it.
    let hash = blake3::hash(&std::fs::read(d.join("turned8.jpg.xmp")).unwrap()).to_hex().to_string();
    conn.execute("UPDATE xmp_sidecars SET blake3 = 'old', pending = ?1 WHERE path = 'turned8.jpg.xmp'", [&hash]).unwrap();
    facedb().args(["export", "xmp"]).arg(d).assert().success();
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM xmp_sidecars WHERE pending IS NULL AND blake3 <> 'old'"), 6, "settled");
    std::fs::write(d.join("turned6.jpg.xmp"), String::from_utf8(before).unwrap().replace("xmptk", "xmptk2")).unwrap();
    facedb()
        .args(["export", "xmp"])
        .arg(d)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("turned6.jpg.xmp was changed since facedb wrote it; pass --merge-existing"));
}

#[test]
fn xmp_sidecars_named_by_stem_refuse_photos_that_would_share_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    add_photos(d, &["obama.jpg", "biden.jpg"]);
    std::fs::copy(photo("obama2.jpg"), d.join("obama.png")).unwrap(); // same stem, another photo
    backdate(&d.join("obama.png"));
    facedb().arg("index").arg(d).assert().success();
    facedb().args(["export", "xmp", "--sidecar-name", "stem"]).arg(d).assert().code(1).stderr(predicate::str::contains(
        "obama.xmp: the photos obama.jpg and obama.png would share this sidecar; pass --sidecar-name full",
    ));
    assert!(d.join("biden.xmp").is_file() && !d.join("obama.xmp").exists());
    assert!(std::fs::read_dir(d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part")), "no temp file left");
}

/// The Python with pyarrow and duckdb: FACEDB_TEST_PYTHON, else the venv scripts/test.sh makes.
fn python() -> PathBuf {
    std::env::var_os("FACEDB_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// The DuckDB query of the README (the ```sql block after the marker), run as written.
fn readme_query() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let after = readme.split("<!-- duckdb query: run by tests/export.rs -->").nth(1).expect("the README marks its DuckDB query");
    let block = after.split("```sql\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_string()
}

fn read_parquet(out: &Path, face: i64) -> Value {
    let o = std::process::Command::new(python())
        .arg(repo().join("tests/fixtures/read_parquet.py"))
        .arg(out)
        .arg(readme_query())
        .arg(face.to_string())
        .current_dir(out.parent().unwrap())
        .output()
        .expect("python with pyarrow and duckdb (scripts/test.sh makes .venv; or set FACEDB_TEST_PYTHON)");
    assert!(o.status.success(), "read_parquet.py: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn parquet_reads_back_in_pyarrow_and_duckdb_as_stored_and_the_readme_query_finds_the_person() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir(&d).unwrap();
    add_photos(&d, &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png"]);
    facedb().arg("index").arg(&d).assert().success();
    let conn = db(&d);
    let obama = faces_of(&conn, "obama.jpg")[0];
    name_person(&conn, "Barack Obama", &[obama]);
    let out = tmp.path().join("out");
    facedb().args(["export", "parquet"]).arg(&out).arg("--dir").arg(&d).assert().success();
    let got = read_parquet(&out, obama);

    assert_eq!(got["images_rows"], query_i64(&conn, "SELECT count(*) FROM images"));
    assert_eq!(got["files_rows"], query_i64(&conn, "SELECT count(*) FROM files"));
    assert_eq!(got["embeddings_schema"]["embedding"], "fixed_size_list<element: float not null>[128]");
    assert_eq!(got["duckdb_embedding_type"], "FLOAT[]");
    // Faces: every current face, with the stored box, score, landmarks and quality.
    let mut stmt = conn
        .prepare("SELECT fc.id, fc.image_id, fc.x, fc.y, fc.w, fc.h, fc.score, fc.landmarks_json, fc.sharpness FROM faces fc JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id ORDER BY fc.id")
        .unwrap();
    type Face = (i64, i64, f64, f64, f64, f64, f64, String, f64);
    let stored: Vec<Face> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let faces = got["faces"].as_array().unwrap();
    assert_eq!(faces.len(), stored.len());
    assert!(stored.len() >= 4, "{stored:?}");
    for (f, s) in faces.iter().zip(&stored) {
        assert_eq!((f["face_id"].as_i64(), f["image_id"].as_i64()), (Some(s.0), Some(s.1)));
        let same = |key: &str, v: f64| assert_eq!(f[key].as_f64().unwrap() as f32, v as f32, "face {} {key}", s.0);
        same("x", s.2);
        same("y", s.3);
        same("w", s.4);
        same("h", s.5);
        same("score", s.6);
        same("sharpness", s.8);
        let lm: [[f64; 2]; 5] = serde_json::from_str(&s.7).unwrap();
        same("nose_x", lm[2][0]);
        same("left_mouth_y", lm[4][1]);
        assert_eq!(f["person"].as_str(), (s.0 == obama).then_some("Barack Obama"));
    }
    // Embeddings: the same float32 values, bit for bit.
    let mut stmt = conn.prepare("SELECT face_id, vector FROM embeddings ORDER BY face_id").unwrap();
    let vectors: Vec<(i64, Vec<u8>)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(got["embeddings"].as_object().unwrap().len(), vectors.len());
    for (id, blob) in &vectors {
        let want: Vec<f32> = blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let have: Vec<f32> = got["embeddings"][id.to_string()].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(have, want, "face {id}");
    }
    // The README's query: Obama's other photos, not Biden.
    let rows = got["query"].as_array().unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r[1].as_str().unwrap()).collect();
    for p in ["obama.jpg", "obama2.jpg", "obama3.jpg"] {
        assert!(paths.contains(&p), "{p} not found: {rows:?}");
    }
    assert!(!paths.contains(&"biden.jpg"), "{rows:?}");

    // Again into the same folder: replaced; a file of someone else's there is refused.
    facedb().args(["export", "parquet"]).arg(&out).arg("--dir").arg(&d).assert().success();
    std::fs::remove_file(out.join("faces.parquet")).unwrap();
    std::fs::write(out.join("faces.parquet"), "mine").unwrap();
    facedb()
        .args(["export", "parquet"])
        .arg(&out)
        .arg("--dir")
        .arg(&d)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("refusing to overwrite").and(predicate::str::contains("faces.parquet")));
    assert_eq!(std::fs::read_to_string(out.join("faces.parquet")).unwrap(), "mine");
}

#[test]
fn xmp_refuses_photos_changed_gone_or_reached_through_links_and_removes_its_own_leftover_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    add_photos(&d, &["obama.jpg", "biden.jpg", "obama2.jpg"]);
    std::fs::copy(photo("obama3.jpg"), d.join("sub/x.jpg")).unwrap();
    std::fs::copy(photo("obama3.jpg"), elsewhere.join("target.jpg")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("target.jpg"), d.join("link.jpg")).unwrap();
    facedb().arg("index").arg(&d).assert().success();
    // Since the index: a photo replaced by another, one deleted, a folder swapped for a link.
    std::fs::copy(photo("biden.jpg"), d.join("obama.jpg")).unwrap();
    std::fs::remove_file(d.join("obama2.jpg")).unwrap();
    std::fs::rename(d.join("sub"), tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("moved"), d.join("sub")).unwrap();
    let shown = d.canonicalize().unwrap();
    facedb()
        .args(["export", "xmp"])
        .arg(&d)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}/obama.jpg changed since it was indexed, so its stored faces may be another photo's; run `facedb index {}` first",
            shown.display(),
            shown.display()
        )))
        .stderr(predicate::str::contains("obama2.jpg is gone since it was indexed; run `facedb index"))
        .stderr(predicate::str::contains(format!(
            "{}/sub is a symbolic link to a folder; facedb never writes through links",
            shown.display()
        )))
        .stderr(predicate::str::contains("link.jpg is a symbolic link to a photo; facedb writes no sidecar beside a link"))
        .stderr(predicate::str::contains("1 sidecar(s) written (1 new").and(predicate::str::contains("4 refused or failed")));
    assert!(d.join("biden.jpg.xmp").is_file());
    for none in ["obama.jpg.xmp", "link.jpg.xmp"] {
        assert!(!d.join(none).exists(), "{none}");
    }
    assert!(std::fs::read_dir(tmp.path().join("moved")).unwrap().count() == 1, "nothing written through the link");
    assert!(std::fs::read_dir(&elsewhere).unwrap().count() == 1, "nothing beside the link's target");
    let end = std::fs::read(d.join("biden.jpg.xmp")).unwrap();
    assert!(end.ends_with(b"?>\n"), "a sidecar ends with a line break");

    // A stopped export's temp file (named after the hash it recorded as pending) is removed by
    // the next; one facedb cannot prove is its own stays.
    let conn = db(&d);
    let pending = "0123456789abcdef".repeat(4);
    conn.execute("UPDATE xmp_sidecars SET pending = ?1 WHERE path = 'biden.jpg.xmp'", [&pending]).unwrap();
    std::fs::write(d.join(".facedb-0123456789abcdef-0.part"), "half").unwrap();
    std::fs::write(d.join(".facedb-fedcba9876543210-0.part"), "someone's").unwrap();
    facedb().args(["export", "xmp"]).arg(&d).assert().code(1).stderr(predicate::str::contains("removed 1 temporary file(s)"));
    assert!(!d.join(".facedb-0123456789abcdef-0.part").exists());
    assert!(d.join(".facedb-fedcba9876543210-0.part").exists());
    // Indexed again: the replaced photo gets the regions of what it is now.
    std::fs::remove_file(d.join("sub")).unwrap();
    std::fs::remove_file(d.join("link.jpg")).unwrap();
    facedb().arg("index").arg(&d).assert().success();
    facedb().args(["export", "xmp"]).arg(&d).assert().success();
    let (_, dims) = regions(&exiftool(&[d.join("obama.jpg.xmp")])[0]);
    assert_eq!(dims, (970, 2204), "biden.jpg's size, the photo now there");

    // Parquet: an OUT whose parent is a link is refused, nothing written there.
    std::os::unix::fs::symlink(&elsewhere, d.join("out-link")).unwrap();
    facedb()
        .args(["export", "parquet"])
        .arg(d.join("out-link/tables"))
        .arg("--dir")
        .arg(&d)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("out-link is a symbolic link; facedb never writes through links"));
    assert!(!elsewhere.join("tables").exists());
}

#[test]
fn xmp_merging_keeps_what_a_user_added_to_facedbs_regions_and_names_are_valid_xml() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    add_photos(d, &["obama.jpg", "biden.jpg"]);
    facedb().arg("index").arg(d).assert().success();
    let conn = db(d);
    name_person(&conn, "a\u{1}b\u{1b}c\td", &faces_of(&conn, "obama.jpg"));
    facedb().args(["export", "xmp"]).arg(d).assert().success();
    let obama = std::fs::read_to_string(d.join("obama.jpg.xmp")).unwrap();
    assert!(obama.contains("mwg-rs:Name=\"abc d\""), "{obama}");
    assert_eq!(regions(&exiftool(&[d.join("obama.jpg.xmp")])[0]).0[0].0.as_deref(), Some("abc d"));
    // The user names the face facedb has no name for, and adds a note to the region.
    let path = d.join("biden.jpg.xmp");
    let edited = std::fs::read_to_string(&path).unwrap().replace(
        "facedb:FaceId=",
        "mwg-rs:Name=\"Joe\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\" dc:description=\"mine\" facedb:FaceId=",
    );
    std::fs::write(&path, &edited).unwrap();
    facedb()
        .args(["export", "xmp"])
        .arg(d)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("biden.jpg.xmp was changed since facedb wrote it; pass --merge-existing"));
    facedb().args(["export", "xmp", "--merge-existing"]).arg(d).assert().success();
    let merged = std::fs::read_to_string(&path).unwrap();
    assert!(merged.contains("mwg-rs:Name=\"Joe\"") && merged.contains("dc:description=\"mine\""), "{merged}");
    assert_eq!(merged.matches("facedb:FaceId=").count(), 1, "{merged}");
    let (r, _) = regions(&exiftool(std::slice::from_ref(&path))[0]);
    assert_eq!((r.len(), r[0].0.as_deref()), (1, Some("Joe")));
    // facedb's own again: a re-export leaves it as it is.
    facedb().args(["export", "xmp"]).arg(d).assert().success();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), merged);
}

/// `forget` takes the forgotten faces (and their names) out of the sidecars facedb wrote, keeps
/// the rest of each file, and leaves a sidecar the user changed alone, naming it and the fix.
#[test]
fn forget_takes_forgotten_faces_out_of_facedbs_sidecars_and_leaves_changed_ones_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    add_photos(d, &["obama.jpg", "biden.jpg", "obama2.jpg"]);
    std::fs::write(d.join("biden.jpg.xmp"), FOREIGN).unwrap();
    facedb().arg("index").arg(d).assert().success();
    let conn = db(d);
    let obama = faces_of(&conn, "obama.jpg");
    name_person(&conn, "Barack Obama", &obama);
    facedb().args(["export", "xmp", "--merge-existing"]).arg(d).assert().success();
    let sidecars: Vec<PathBuf> = ["obama.jpg.xmp", "biden.jpg.xmp", "obama2.jpg.xmp"].iter().map(|n| d.join(n)).collect();
    let before = exiftool(&sidecars);
    assert_eq!(regions(&before[0]).0[0].0.as_deref(), Some("Barack Obama"));
    assert!(!regions(&before[1]).0.is_empty(), "facedb's region merged into the user's sidecar");
    let obama2_before = std::fs::read(&sidecars[2]).unwrap();

    // A photo facedb wrote the sidecar of, and one whose sidecar was the user's: both lose
    // facedb's regions; the user's other XMP stays; the third photo's sidecar is untouched.
    for p in ["obama.jpg", "biden.jpg"] {
        facedb().arg("forget").arg(d.join(p)).assert().success().stderr(predicate::str::contains("1 XMP sidecar(s) rewritten"));
    }
    let after = exiftool(&sidecars);
    let listed = |info: &Value| info["RegionInfo"]["RegionList"].as_array().cloned().unwrap_or_default();
    for info in &after[..2] {
        assert!(listed(info).iter().all(|r| r["Type"] != "Face"), "forgotten faces are gone from the sidecar: {info}");
    }
    assert_eq!(listed(&after[1]).len(), 1, "the user's own region stays: {}", after[1]);
    assert!(!std::fs::read_to_string(&sidecars[0]).unwrap().contains("Barack Obama"), "the name is gone too");
    assert_eq!(after[1]["Rating"], 4, "the user's rating stays: {}", after[1]);
    assert_eq!(std::fs::read(&sidecars[2]).unwrap(), obama2_before);

    // A sidecar changed since facedb wrote it: left as the user made it, named, exit 1.
    let changed = std::fs::read_to_string(&sidecars[2]).unwrap() + "<!-- checked by hand -->\n";
    std::fs::write(&sidecars[2], &changed).unwrap();
    facedb()
        .arg("forget")
        .arg(d.join("obama2.jpg"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("obama2.jpg.xmp still holds facedb's regions of the forgotten faces"))
        .stderr(predicate::str::contains("--merge-existing"));
    assert_eq!(std::fs::read_to_string(&sidecars[2]).unwrap(), changed);
    facedb().args(["export", "xmp", "--merge-existing"]).arg(d).assert().success();
    assert!(listed(&exiftool(&sidecars[2..])[0]).is_empty(), "the fix named works");
}
