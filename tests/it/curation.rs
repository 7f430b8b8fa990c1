//! Curation that sticks (issue 13): crops the user deleted or edited, `facedb reject`, stored
//! faces as references, trainer layouts read back as the trainers read them. Real binary, real
//! models, real photos.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::*;

/// A dataset of the given test photos, indexed.
fn dataset(parent: &Path, photos: &[&str]) -> PathBuf {
    let d = parent.join("photos");
    std::fs::create_dir_all(&d).unwrap();
    add_photos(&d, photos);
    facedb().arg("index").arg(&d).assert().success();
    d
}

const PHOTOS: [&str; 4] = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"];

/// `match --ref obama.jpg --out OUT --json` plus `extra`: the JSON summary.
fn run(d: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = match_ref(d, "obama.jpg").arg("--out").arg(out).arg("--json").args(extra).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// `match --ref biden.jpg --out OUT --json`: another person's run.
fn biden_match(d: &Path, out: &Path) -> serde_json::Value {
    let o = facedb().arg("match").arg(d).arg("--ref").arg(photo("biden.jpg")).arg("--out").arg(out).arg("--json").output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

/// The same run, for its summary on stderr.
fn text(d: &Path, out: &Path, extra: &[&str]) -> String {
    let o = match_ref(d, "obama.jpg").arg("--out").arg(out).args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

/// Crop file name -> face id, from the manifest.
fn crops(out: &Path) -> BTreeMap<String, i64> {
    manifest(out)
        .iter()
        .map(|r| {
            // Paths inside the output folder are relative to it.
            assert!(!Path::new(&r["crop_path"]).is_absolute(), "{}", r["crop_path"]);
            (r["crop_path"].clone(), r["face_id"].parse().unwrap())
        })
        .collect()
}

/// face id -> reason, from rejected.csv.
fn rejected(out: &Path) -> BTreeMap<i64, String> {
    let mut rdr = csv::Reader::from_path(out.join("rejected.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    let (fi, ri) = (h.iter().position(|c| c == "face_id").unwrap(), h.iter().position(|c| c == "reason").unwrap());
    rdr.records().map(|r| r.unwrap()).map(|r| (r[fi].parse().unwrap(), r[ri].to_string())).collect()
}

#[test]
fn a_deleted_crop_is_remembered_as_rejected_and_not_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("crops");
    run(&d, &out, &[]);
    let first = crops(&out);
    assert_eq!(first.len(), 3, "{first:?}");
    let (gone, face) = first.iter().find(|(n, _)| n.starts_with("obama2")).map(|(n, f)| (n.clone(), *f)).unwrap();
    std::fs::remove_file(out.join(&gone)).unwrap();

    let stderr = text(&d, &out, &[]);
    assert!(stderr.contains("1 crop(s) deleted from") && stderr.contains("1 decision(s) applied"), "{stderr}");
    assert!(!out.join(&gone).exists(), "not written again");
    assert_eq!(crops(&out).len(), 2);
    assert!(!crops(&out).values().any(|&f| f == face));
    assert_eq!(rejected(&out).get(&face).map(String::as_str), Some("rejected by the user"));
    let conn = db(&d);
    let row: (i64, String, String) =
        conn.query_row("SELECT face_id, verdict, source FROM decisions_v", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!(row, (face, "reject".into(), "deleted-crop".into()));

    // Remembered by the database, not by the folder: a later run still leaves it out.
    let json = run(&d, &out, &[]);
    assert_eq!((json["deleted_crops"].as_u64(), json["decisions_applied"].as_u64()), (Some(0), Some(1)));
    assert!(!out.join(&gone).exists());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM decisions"), 1);
    assert_eq!(query_i64(&conn, "SELECT decisions_applied FROM match_runs ORDER BY run_id DESC LIMIT 1"), 1);
}

#[test]
fn edited_crops_are_kept_byte_identical_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("crops");
    run(&d, &out, &[]);
    let names: Vec<String> = crops(&out).into_keys().collect();
    // One gets bytes appended, one is re-saved by an image editor (decoded and encoded again).
    let appended = out.join(&names[0]);
    let mut bytes = std::fs::read(&appended).unwrap();
    bytes.extend_from_slice(b"edited");
    std::fs::write(&appended, &bytes).unwrap();
    let resaved = out.join(&names[1]);
    let img = image::open(&resaved).unwrap().to_rgb8();
    let mut again = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut again, 70)).unwrap();
    std::fs::write(&resaved, &again).unwrap();

    for round in 0..2 {
        if round == 0 {
            let stderr = text(&d, &out, &[]);
            assert!(stderr.contains("2 crop(s) edited in"), "{stderr}");
        } else {
            assert_eq!(run(&d, &out, &[])["edited_crops_kept"].as_u64(), Some(2));
        }
        assert_eq!(std::fs::read(&appended).unwrap(), bytes, "round {round}");
        assert_eq!(std::fs::read(&resaved).unwrap(), again, "round {round}");
        assert_eq!(crops(&out).len(), 3, "kept crops stay in the manifest");
    }
    let ledger = std::fs::read_to_string(out.join(".facedb-output")).unwrap();
    assert!(ledger.contains(&format!("user {}\n", names[0])) && ledger.contains(&format!("user {}\n", names[1])), "{ledger}");
    // A stricter run that no longer matches them leaves the user's files where they are.
    let json = run(&d, &out, &["--threshold", "0.05"]);
    assert_eq!(std::fs::read(&appended).unwrap(), bytes);
    assert_eq!(std::fs::read(&resaved).unwrap(), again);
    assert!(
        json["dropped_crops"].as_object().unwrap().values().all(|v| v.as_u64() == Some(0)) || json["matched"].as_u64() == Some(0),
        "{json}"
    );
}

#[test]
fn a_stricter_rerun_says_how_many_crops_it_removes_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("crops");
    run(&d, &out, &[]);
    assert_eq!(crops(&out).len(), 3);
    let stderr = text(&d, &out, &["--threshold", "0.1"]);
    let gone = 3 - crops(&out).len();
    assert!(gone > 0 && stderr.contains(&format!("{gone} crop(s) of the previous run removed: {gone} too far")), "{stderr}");
    // And in the JSON summary, by reason.
    run(&d, &out, &[]);
    let json = run(&d, &out, &["--threshold", "0.1"]);
    assert_eq!(json["dropped_crops"]["too far"].as_u64(), Some(gone as u64), "{json}");
}

#[test]
fn reject_by_face_id_or_crop_path_changes_every_later_match_of_the_person() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("crops");
    run(&d, &out, &[]);
    let first = crops(&out);
    let face_of = |prefix: &str| *first.iter().find(|(n, _)| n.starts_with(prefix)).unwrap().1;
    let (obama2, obama3) = (face_of("obama2"), face_of("obama3"));

    let o = facedb().args(["reject", &obama2.to_string(), "--dir"]).arg(&d).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("face {obama2} rejected")));
    // A crop path resolves through the run that wrote it (its folder names the dataset).
    let crop = out.join(first.iter().find(|(n, _)| n.starts_with("obama3")).unwrap().0);
    facedb().arg("reject").arg(&crop).current_dir(tmp.path()).assert().success();
    let conn = db(&d);
    let faces: BTreeSet<i64> = conn
        .prepare("SELECT face_id FROM decisions WHERE source = 'cli'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(faces, [obama2, obama3].into());

    let stderr = text(&d, &out, &[]);
    assert!(stderr.contains("2 decision(s) applied"), "{stderr}");
    assert_eq!(query_i64(&conn, "SELECT decisions_applied FROM match_runs ORDER BY run_id DESC LIMIT 1"), 2);
    let now = crops(&out);
    assert_eq!(now.len(), 1, "{now:?}");
    let why = rejected(&out);
    assert_eq!((why[&obama2].as_str(), why[&obama3].as_str()), ("rejected by the user", "rejected by the user"));
    // Another person's match is not touched by those decisions.
    let other = biden_match(&d, &tmp.path().join("biden"));
    assert_eq!(other["decisions_applied"].as_u64(), Some(0));
    // --ref names the person: a photo by its content hash.
    let biden: i64 = conn.query_row("SELECT face_id FROM faces_v WHERE path = 'biden.jpg'", [], |r| r.get(0)).unwrap();
    facedb().args(["reject", &biden.to_string(), "--dir"]).arg(&d).arg("--ref").arg(photo("biden.jpg")).assert().success();
    let other = biden_match(&d, &tmp.path().join("biden"));
    assert_eq!((other["decisions_applied"].as_u64(), other["matched"].as_u64()), (Some(1), Some(0)), "{other}");
    // An unknown face is refused in one line naming the fix.
    let o = facedb().args(["reject", "999999", "--dir"]).arg(&d).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no face 999999"));
}

#[test]
fn a_stored_face_as_reference_matches_like_its_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let by_photo = tmp.path().join("by_photo");
    run(&d, &by_photo, &[]);
    let rows = manifest(&by_photo);
    let own = rows.iter().find(|r| crate::common::file_name_of(&r["source_path"]) == "obama.jpg").unwrap()["face_id"].clone();
    let by_face = tmp.path().join("by_face");
    let o = facedb().arg("match").arg(&d).arg("--ref").arg(format!("face:{own}")).arg("--out").arg(&by_face).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = |rows: &[std::collections::HashMap<String, String>]| -> BTreeMap<String, f32> {
        rows.iter().map(|r| (r["face_id"].clone(), r["distance"].parse().unwrap())).collect()
    };
    let (a, b) = (key(&rows), key(&manifest(&by_face)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (face, da) in &a {
        assert!((da - b[face]).abs() < 0.02, "face {face}: {da} by photo, {} by face", b[face]);
    }
    // As a negative: that photo's own face is closer to the negative than to the references.
    let obama2 = rows.iter().find(|r| crate::common::file_name_of(&r["source_path"]) == "obama2.jpg").unwrap()["face_id"].clone();
    let neg = tmp.path().join("neg");
    run(&d, &neg, &["--not", &format!("face:{obama2}")]);
    assert_eq!(rejected(&neg).get(&obama2.parse().unwrap()).map(String::as_str), Some("negative reference"));
    let o = facedb().arg("match").arg(&d).args(["--ref", "face:999999"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("face:999999: no such face"));
}

/// Reads an output folder as the trainers do (see the script) and returns what it printed.
fn read_back(layout: &str, out: &Path) -> String {
    let o = std::process::Command::new("python3")
        .arg(repo().join("tests/fixtures/read_layout.py"))
        .arg(layout)
        .arg(out)
        .output()
        .expect("python3 is installed");
    assert!(o.status.success(), "{layout}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn trainer_layouts_read_back_as_the_trainers_read_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("lora");
    run(&d, &out, &["--layout", "kohya", "--token", "ohwx person", "--repeats", "12"]);
    assert_eq!(read_back("kohya", &out), "12 ohwx person 3");
    assert!(crops(&out).keys().all(|n| n.starts_with("12_ohwx person/")), "{:?}", crops(&out));
    let first_kohya = crops(&out).into_iter().next_back().unwrap();
    // A caption the user edits is theirs; the others follow --caption.
    let caption = out.join(crops(&out).keys().next().unwrap()).with_extension("txt");
    std::fs::write(&caption, "ohwx person, smiling").unwrap();
    run(&d, &out, &["--layout", "kohya", "--token", "ohwx person", "--repeats", "12", "--caption", "a photo of ohwx person"]);
    assert_eq!(std::fs::read_to_string(&caption).unwrap(), "ohwx person, smiling");
    assert_eq!(read_back("kohya", &out), "12 ohwx person 3");

    let hf = tmp.path().join("hf");
    run(&d, &hf, &["--layout", "imagefolder", "--token", "ohwx person"]);
    assert_eq!(read_back("imagefolder", &hf), "ohwx person 3");
    // Switching back to plain: facedb's files in the kohya folder go; the user's caption stays.
    run(&d, &out, &[]);
    let left: Vec<PathBuf> = std::fs::read_dir(out.join("12_ohwx person")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, [caption]);
    assert_eq!(crops(&out).len(), 3);
    // A crop path in the layout's subfolder resolves to its face, even after the file is gone.
    let (gone, face) = first_kohya;
    assert!(!out.join(&gone).exists());
    facedb().arg("reject").arg(out.join(&gone)).assert().success();
    assert_eq!(query_i64(&db(&d), "SELECT face_id FROM decisions"), face);
    // A run with nothing of the user's left in it removes the folder facedb made.
    let hf_again = run(&d, &hf, &[]);
    assert_eq!(hf_again["matched"].as_u64(), Some(2), "the face rejected above is left out");
    assert!(!hf.join("metadata.jsonl").exists());
}

/// A caption is not the face: deleting one rejects nobody, and a re-run that writes the same
/// crops and captions again reports nothing removed.
#[test]
fn a_deleted_caption_rejects_nobody_and_rewritten_captions_are_not_reported_as_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("lora");
    let kohya = ["--layout", "kohya", "--token", "ohwx person"];
    let first = run(&d, &out, &kohya);
    let crop = crops(&out).into_keys().next().unwrap();
    std::fs::remove_file(out.join(&crop).with_extension("txt")).unwrap();
    let again = run(&d, &out, &kohya);
    assert_eq!(again["matched"], first["matched"], "{again}");
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM decisions"), 0);
    assert!(out.join(&crop).with_extension("txt").exists(), "the caption is written again");
    let stderr = text(&d, &out, &kohya);
    assert!(!stderr.contains("removed"), "{stderr}");
}

/// Renaming a crop or a layout folder keeps its bytes in the training set: no rejection. Clearing
/// the folder is a fresh start, not one rejection per face; deleting one crop still rejects it.
#[test]
fn renamed_crops_and_a_cleared_folder_reject_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let d =
        dataset(tmp.path(), &["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"]);
    let out = tmp.path().join("lora");
    let kohya = ["--layout", "kohya", "--token", "ohwx"];
    let first = run(&d, &out, &kohya);
    let matched = first["matched"].as_u64().unwrap();
    assert!(matched >= 4, "{first}");
    // The folder renamed (to change the repeats by hand): every crop moved, none rejected.
    std::fs::rename(out.join("10_ohwx"), out.join("20_ohwx")).unwrap();
    let again = run(&d, &out, &kohya);
    assert_eq!(again["matched"].as_u64(), Some(matched), "{again}");
    assert_eq!(again["moved_crops"].as_u64(), Some(matched), "{again}");
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM decisions"), 0);
    std::fs::remove_dir_all(out.join("20_ohwx")).unwrap();
    // Every crop deleted at once: a fresh start.
    for name in crops(&out).keys() {
        std::fs::remove_file(out.join(name)).unwrap();
    }
    let fresh = run(&d, &out, &kohya);
    assert_eq!(fresh["matched"].as_u64(), Some(matched), "{fresh}");
    assert_eq!(fresh["cleared_crops"].as_u64(), Some(matched), "{fresh}");
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM decisions"), 0);
    // One crop deleted: that face is rejected.
    let (one, face) = crops(&out).into_iter().next().unwrap();
    std::fs::remove_file(out.join(&one)).unwrap();
    let after = run(&d, &out, &kohya);
    assert_eq!(after["matched"].as_u64(), Some(matched - 1), "{after}");
    assert_eq!(query_i64(&db(&d), "SELECT face_id FROM decisions"), face);
}

/// Detecting the photos again (other detector settings here; a new model file the same way)
/// gives the faces new ids: a rejection follows the face to its new id in the same photo.
#[test]
fn a_rejection_survives_detecting_the_photos_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &PHOTOS);
    let out = tmp.path().join("out");
    let first = run(&d, &out, &[]);
    let (_, face) = crops(&out).into_iter().find(|(n, _)| n.starts_with("obama2")).unwrap();
    facedb().arg("reject").arg(face.to_string()).arg("--dir").arg(&d).assert().success();
    facedb().arg("index").arg(&d).arg("--detect-size").arg("1280").assert().success();
    let again = run(&d, &out, &[]);
    assert_eq!(again["matched"].as_u64(), Some(first["matched"].as_u64().unwrap() - 1), "{again}");
    assert!(crops(&out).keys().all(|n| !n.starts_with("obama2")), "{:?}", crops(&out));
    assert!(rejected(&out).values().any(|r| r == "rejected by the user"), "{:?}", rejected(&out));
}

/// A deleted crop says "not this picture": with --best, its near-duplicate (32bit.png is
/// obama2.jpg re-encoded) does not take its place.
#[test]
fn a_deleted_crop_keeps_its_copies_out_too() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &["obama.jpg", "obama2.jpg", "32bit.png", "obama3.jpg", "biden.jpg"]);
    let out = tmp.path().join("out");
    run(&d, &out, &["--best", "5"]);
    let picked: Vec<String> = crops(&out).into_keys().collect();
    let copy = picked.iter().find(|n| n.starts_with("obama2") || n.starts_with("32bit")).expect("one of the two copies is picked").clone();
    std::fs::remove_file(out.join(&copy)).unwrap();
    let again = run(&d, &out, &["--best", "5"]);
    assert!(crops(&out).keys().all(|n| !n.starts_with("obama2") && !n.starts_with("32bit")), "{:?} {again}", crops(&out));
    assert!(crops(&out).keys().any(|n| n.starts_with("obama3")), "other photos of the person stay: {:?}", crops(&out));
    // The copy that went with it is named (the summary says which face).
    let with_it = again["copies_of_deleted_crops"].as_array().map_or(0, Vec::len);
    let both_picked = picked.iter().filter(|n| n.starts_with("obama2") || n.starts_with("32bit")).count() == 2;
    assert!(!both_picked || with_it == 1, "{again}");
}

/// A mirror image embeds 0.05-0.08 from its picture but is another crop to a trainer (and
/// `--best` does not group the two): deleting the mirror's crop keeps the original's.
#[test]
fn deleting_a_mirror_images_crop_keeps_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir_all(&d).unwrap();
    add_photos(&d, &["obama.jpg", "obama3.jpg"]);
    let mirrored = image::imageops::flip_horizontal(&image::open(photo("obama.jpg")).unwrap().into_rgb8());
    mirrored.save(d.join("mirrored.jpg")).unwrap();
    facedb().arg("index").arg(&d).assert().success();
    let out = tmp.path().join("out");
    run(&d, &out, &[]);
    let mirror_crop = crops(&out).into_keys().find(|n| n.starts_with("mirrored")).expect("the mirror image matches");
    std::fs::remove_file(out.join(&mirror_crop)).unwrap();
    let again = run(&d, &out, &[]);
    let now: Vec<String> = crops(&out).into_keys().collect();
    assert!(now.iter().any(|n| n.starts_with("obama_face")) && now.iter().any(|n| n.starts_with("obama3")), "{now:?} {again}");
    assert!(!now.iter().any(|n| n.starts_with("mirrored")), "{now:?}");
    assert_eq!(again["copies_of_deleted_crops"].as_array().map(Vec::len), Some(0), "{again}");
}

/// Options that would be silently ignored are refused with the fix.
#[test]
fn a_token_without_a_trainer_layout_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), &["obama.jpg"]);
    let o = match_ref(&d, "obama.jpg").arg("--out").arg(tmp.path().join("out")).args(["--token", "ohwx"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--layout kohya"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!tmp.path().join("out").exists(), "nothing written");
}
