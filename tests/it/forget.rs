//! `facedb forget`: erased faces leave no byte of their vectors in the database, its -wal or the
//! vector cache; facedb's crops of them go; matching and re-indexing never bring them back.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Every file the database keeps beside it that could hold vectors.
fn database_files(dir: &Path) -> Vec<PathBuf> {
    ["facedb.sqlite", "facedb.sqlite-wal", "facedb.sqlite.vectors"].iter().map(|n| dir.join(n)).filter(|p| p.is_file()).collect()
}

/// The files (of `database_files`) holding `needle` anywhere.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    database_files(dir).into_iter().filter(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle)).collect()
}

/// The stored embedding blobs of the faces of one photo (by file name).
fn vectors_of(dir: &Path, name: &str) -> Vec<(i64, Vec<u8>)> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT e.face_id, e.vector FROM embeddings e JOIN faces fc ON fc.id = e.face_id JOIN files f ON f.image_id = fc.image_id
             WHERE f.path = ?1 ORDER BY fc.idx",
        )
        .unwrap();
    stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Faces of a photo found by its current detector (faces of an earlier one stay for old results).
fn faces_of(dir: &Path, name: &str) -> i64 {
    db(dir)
        .query_row(
            "SELECT count(*) FROM faces fc JOIN files f ON f.image_id = fc.image_id JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
             WHERE f.path = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

/// Whether the photo was detected by the current detector (not the one made to look old).
fn detected_again(dir: &Path, name: &str) -> bool {
    db(dir)
        .query_row(
            "SELECT m.file_blake3 <> 'an older yunet' FROM files f JOIN images i ON i.id = f.image_id JOIN models m ON m.id = i.detector_id WHERE f.path = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

fn sources(out: &Path) -> Vec<String> {
    manifest(out).iter().map(|r| file_name_of(&r["source_path"])).collect()
}

/// Makes `index` detect every photo again, as after a detector upgrade.
fn pretend_detector_changed(dir: &Path) {
    db(dir).execute("UPDATE models SET file_blake3 = 'an older yunet' WHERE kind = 'detector'", []).unwrap();
}

#[test]
fn a_forgotten_photo_leaves_no_byte_of_its_vectors_and_stays_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama2.jpg", "obama3.jpg", "biden.jpg", "obama_partial_face.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    let erased = vectors_of(dir, "obama2.jpg");
    assert_eq!(erased.len(), 1, "obama2.jpg holds one face");
    // A stored face used as a reference keeps a copy of its vector in `refs`.
    let face = erased[0].0;
    facedb().arg("match").arg(dir).arg("--ref").arg(format!("face:{face}")).assert().success();
    match_ref(dir, "obama.jpg").assert().success();
    let out = dir.join("facedb-crops");
    assert!(sources(&out).contains(&"obama2.jpg".to_string()));
    let crop = manifest(&out).into_iter().find(|r| file_name_of(&r["source_path"]) == "obama2.jpg").unwrap()["crop_path"].clone();
    // The search can fail: before forgetting, the vector is in the database and the cache.
    assert!(dir.join("facedb.sqlite.vectors").is_file());
    assert!(files_holding(dir, &erased[0].1).len() >= 2, "the vector is in the database and in its cache");

    facedb().arg("forget").arg(dir.join("obama2.jpg")).assert().success();

    for (_, blob) in &erased {
        assert_eq!(blob.len(), 512);
        assert_eq!(files_holding(dir, blob), Vec::<PathBuf>::new(), "the whole vector is gone");
        assert_eq!(files_holding(dir, &blob[..16]), Vec::<PathBuf>::new(), "not even its first 16 bytes remain");
    }
    assert!(!out.join(&crop).exists(), "facedb's crop of the forgotten face is removed");
    assert!(!std::fs::read_to_string(out.join(".facedb-output")).unwrap().contains(&format!(" {crop}\n")), "and dropped from the ledger");
    assert_eq!(faces_of(dir, "obama2.jpg"), 0);

    match_ref(dir, "obama.jpg").assert().success();
    let found = sources(&out);
    assert!(!found.contains(&"obama2.jpg".to_string()), "matching no longer finds the person in that photo: {found:?}");
    assert!(found.contains(&"obama3.jpg".to_string()), "nor loses them elsewhere: {found:?}");

    // A re-index that detects again (a new detector) does not store the faces again.
    pretend_detector_changed(dir);
    facedb().arg("index").arg(dir).assert().success();
    assert!(detected_again(dir, "obama2.jpg"));
    assert_eq!(faces_of(dir, "obama2.jpg"), 0, "a forgotten photo's faces are not detected back");
    assert!(faces_of(dir, "obama3.jpg") > 0);
    // The same content under another name is the same forgotten photo.
    std::fs::copy(dir.join("obama2.jpg"), dir.join("copy.jpg")).unwrap();
    facedb().arg("index").arg(dir).assert().success();
    assert_eq!(faces_of(dir, "copy.jpg"), 0);
}

#[test]
fn forgetting_one_face_keeps_the_other_faces_of_its_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    save(dir, "pair.jpg", &side_by_side(&rgb("obama.jpg"), &rgb("biden.jpg")));
    backdate(&dir.join("pair.jpg"));
    add_photos(dir, &["obama2.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    assert_eq!(faces_of(dir, "pair.jpg"), 2);
    match_ref(dir, "obama.jpg").assert().success();
    assert!(sources(&dir.join("facedb-crops")).contains(&"pair.jpg".to_string()));
    let obama_face: i64 = db(dir)
        .query_row(
            "SELECT fc.id FROM faces fc JOIN files f ON f.image_id = fc.image_id WHERE f.path = 'pair.jpg' ORDER BY fc.x LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let blob: Vec<u8> = db(dir).query_row("SELECT vector FROM embeddings WHERE face_id = ?1", [obama_face], |r| r.get(0)).unwrap();

    let assert = facedb().arg("--json").arg("forget").arg(obama_face.to_string()).current_dir(dir).assert().success();
    let summary: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(summary["erased"]["faces"], 1, "{summary}");

    assert!(files_holding(dir, &blob[..16]).is_empty());
    assert_eq!(faces_of(dir, "pair.jpg"), 1, "the other face stays");
    match_ref(dir, "obama.jpg").assert().success();
    assert!(!sources(&dir.join("facedb-crops")).contains(&"pair.jpg".to_string()));
    match_ref(dir, "biden.jpg").assert().success();
    assert!(sources(&dir.join("facedb-crops")).contains(&"pair.jpg".to_string()), "the other person is still found there");

    pretend_detector_changed(dir);
    facedb().arg("index").arg(dir).assert().success();
    assert!(detected_again(dir, "pair.jpg"));
    assert_eq!(faces_of(dir, "pair.jpg"), 1, "a new detection stores the other face, not the forgotten one");
}

#[test]
fn forgetting_what_is_not_stored_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama2.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    let out = facedb().arg("forget").arg("999999").current_dir(dir).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("no face 999999") && err.lines().count() == 1, "{err}");
    let out = facedb().arg("forget").arg(photo("biden.jpg")).arg("--dir").arg(dir).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("is not a photo of"));
}

#[test]
fn forgetting_a_person_erases_every_face_of_theirs_and_the_person() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    facedb().arg("-q").arg("people").arg(dir).assert().success();
    let person: i64 = db(dir).query_row("SELECT person_id FROM face_people_v WHERE path = 'obama.jpg'", [], |r| r.get(0)).unwrap();
    facedb().args(["people", "name", &person.to_string(), "Obama"]).current_dir(dir).assert().success();
    let blobs: Vec<Vec<u8>> = ["obama.jpg", "obama2.jpg", "obama3.jpg"].iter().flat_map(|p| vectors_of(dir, p)).map(|(_, b)| b).collect();
    assert_eq!(blobs.len(), 3);

    facedb().args(["forget", "--person", "Obama"]).current_dir(dir).assert().success();

    for blob in &blobs {
        assert!(files_holding(dir, &blob[..16]).is_empty());
    }
    assert_eq!(query_i64(&db(dir), "SELECT count(*) FROM people"), 0, "the person and their name are gone");
    assert_eq!(faces_of(dir, "biden.jpg"), 1, "other people's faces stay");
    let gone = facedb().arg("match").arg(dir).args(["--person", "Obama"]).assert().code(2);
    assert!(String::from_utf8_lossy(&gone.get_output().stderr).contains("no person named"));
}

/// An unfinished cache (a build killed mid-way) holds vectors too: forget removes every one, and
/// says so. A link at the cache path is never followed: forget says its target may hold them.
#[test]
fn forget_removes_unfinished_caches_and_names_a_linked_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = &tmp.path().join("photos");
    std::fs::create_dir(dir).unwrap();
    add_photos(dir, &["obama2.jpg", "obama3.jpg", "biden.jpg"]);
    facedb().arg("-q").arg("index").arg(dir).assert().success();
    match_ref(dir, "obama.jpg").assert().success();
    let erased = vectors_of(dir, "obama2.jpg");
    // This test's own pid: a live builder's leftover is removed too.
    let part = dir.join(format!("facedb.sqlite.vectors.{}-{:016x}.part", std::process::id(), 0x5eed_u64));
    std::fs::copy(dir.join("facedb.sqlite.vectors"), &part).unwrap();
    let assert = facedb().arg("forget").arg(dir.join("obama2.jpg")).assert().success();
    let said = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(!part.exists(), "the unfinished cache is removed");
    assert!(said.contains("1 unfinished vector cache file(s) removed"), "{said}");
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && std::fs::read(p).unwrap().windows(512).any(|w| w == erased[0].1))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new());

    let elsewhere = tmp.path().join("elsewhere.vectors");
    std::fs::write(&elsewhere, b"FACEDBV4 someone's vectors").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("facedb.sqlite.vectors")).unwrap();
    let assert = facedb().arg("-q").arg("forget").arg(dir.join("biden.jpg")).assert().success();
    let said = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(said.contains("is a link, left alone; its target") && said.contains("delete it by hand"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"FACEDBV4 someone's vectors", "never written through");
    assert!(dir.join("facedb.sqlite.vectors").is_symlink());
}

/// A crop folder given to `match` relative to where it ran is found again by `forget` run from
/// anywhere else (it is recorded absolute).
#[test]
fn forget_from_another_folder_removes_crops_written_to_a_relative_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg", "obama3.jpg"]);
    facedb().arg("index").arg(&dir).assert().success();
    match_ref(&dir, "obama.jpg").arg("--out").arg("crops").current_dir(&work).assert().success();
    let out = work.join("crops");
    let crop = manifest(&out).into_iter().find(|r| file_name_of(&r["source_path"]) == "obama2.jpg").unwrap()["crop_path"].clone();
    assert!(out.join(&crop).is_file());
    facedb().arg("forget").arg(dir.join("obama2.jpg")).current_dir(tmp.path()).assert().success();
    assert!(!out.join(&crop).exists(), "the forgotten face's crop is still in {}", out.display());
    // The manifests list exactly the crops left, and no row of the forgotten face.
    assert!(!sources(&out).contains(&"obama2.jpg".to_string()), "manifest.csv still lists the forgotten face");
    assert!(sources(&out).contains(&"obama3.jpg".to_string()));
    let jsonl = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert!(!jsonl.contains("obama2.jpg") && jsonl.contains("obama3.jpg"), "{jsonl}");
    // The rewritten manifests are facedb's: the next match into the folder is not refused.
    match_ref(&dir, "obama.jpg").arg("--out").arg(&out).assert().success();
}

/// A forgotten photo is listed as forgotten by `report`, not as a photo with no face.
#[test]
fn report_lists_a_forgotten_photo_as_forgotten_not_as_without_a_face() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama2.jpg", "obama3.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    facedb().arg("forget").arg(dir.join("obama2.jpg")).assert().success();
    let out = facedb().arg("--json").arg("report").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["forgotten"], serde_json::json!(["obama2.jpg"]), "{report}");
    assert_eq!(report["no_face"], serde_json::json!([]), "{report}");
    assert_eq!(report["totals"]["no_face"], 0, "{report}");
}
