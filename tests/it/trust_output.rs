//! facedb never writes or deletes a file it did not create, never writes through a link, and
//! cleans up after itself (issue 11). Real binary, real models, real photos.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn index(dir: &Path) {
    facedb().arg("index").arg(dir).assert().success();
}

/// A dataset of the given test photos, indexed.
fn dataset(parent: &Path, name: &str, photos: &[&str]) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    add_photos(&d, photos);
    index(&d);
    d
}

/// Every entry under `dir` (not following links): file bytes, or `-> target` for a link.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false).into_iter().map(Result::unwrap) {
        let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
        if e.file_type().is_symlink() {
            out.insert(rel, [b"-> ".as_slice(), std::fs::read_link(e.path()).unwrap().as_os_str().as_bytes()].concat());
        } else if e.file_type().is_file() {
            out.insert(rel, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// The photos of a dataset (its database files change with every run, by design).
fn photos_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut s = snapshot(dir);
    s.retain(|p, _| !p.to_string_lossy().starts_with("facedb.sqlite"));
    s
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// What a completed run leaves: the manifest's crops, the three manifests and the ledger.
fn expected_after_run(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = manifest(out)
        .iter()
        .map(|r| Path::new(&r["crop_path"]).file_name().unwrap().to_string_lossy().into_owned())
        .chain([".facedb-output", "manifest.csv", "manifest.jsonl", "rejected.csv"].map(String::from))
        .collect();
    v.sort();
    v
}

/// Exit 2 and exactly one line on stderr; returns it.
fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr.trim_end().to_string()
}

fn crop_names(out: &Path) -> Vec<String> {
    manifest(out).iter().map(|r| Path::new(&r["crop_path"]).file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn out_at_the_dataset_its_parent_or_a_photo_subfolder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir_all(d.join("album")).unwrap();
    add_photos(&d, &["obama.jpg", "biden.jpg"]);
    // The case: a photo whose name is the crop name of another photo.
    std::fs::copy(photo("obama2.jpg"), d.join("obama_face1.jpg")).unwrap();
    add_photos(&d.join("album"), &["obama3.jpg"]);
    index(&d);
    let before = photos_of(&d);

    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&d).output().unwrap());
    assert_eq!(
        line,
        format!(
            "facedb: --out {} is the dataset folder: crops there would be indexed as photos; pass a new folder such as {}/facedb-crops",
            d.display(),
            d.display()
        )
    );
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(d.join("album")).output().unwrap());
    assert_eq!(
        line,
        format!(
            "facedb: --out {}/album already holds files facedb did not write (such as obama3.jpg) and no .facedb-output; pass a new or empty folder",
            d.display()
        )
    );
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(tmp.path()).output().unwrap());
    assert!(line.ends_with("contains the dataset or its database; pass a new folder inside or beside the dataset"), "{line}");
    assert_eq!(photos_of(&d), before, "every photo byte-identical, nothing added");

    // The album was not turned into an output folder: the next index still sees its photo.
    index(&d);
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM files WHERE missing = 0"), 4);
    // Nothing was recorded for the refused runs.
    assert_eq!(query_i64(&db(&d), "SELECT count(*) FROM runs WHERE command = 'match'"), 0);
}

#[test]
fn files_facedb_did_not_write_are_never_overwritten_or_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]);
    let out = tmp.path().join("crops");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let crops = crop_names(&out);
    assert_eq!(crops.len(), 3, "{crops:?}");
    assert_eq!(names_in(&out), expected_after_run(&out));

    // The user puts their own picture where a crop was: an edit of that crop (issue 13), kept
    // byte-identical and reported, never overwritten.
    std::fs::write(out.join(&crops[0]), b"the user's picture").unwrap();
    let run = match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("1 crop(s) edited in"), "{stderr}");
    assert_eq!(std::fs::read(out.join(&crops[0])).unwrap(), b"the user's picture");

    // A later run that does not write that name leaves it alone too (it is no longer facedb's).
    let before = snapshot(&out);
    match_ref(&d, "obama.jpg").args(["--format", "png", "--out"]).arg(&out).assert().success();
    assert_eq!(std::fs::read(out.join(&crops[0])).unwrap(), b"the user's picture");
    assert!(crops[1..].iter().all(|c| !out.join(c).exists()), "facedb's own earlier crops were replaced");
    assert_ne!(snapshot(&out), before);

    // The user's own manifest.csv in its place: refused (their picture moved away first).
    std::fs::remove_file(out.join(&crops[0])).unwrap();
    std::fs::write(out.join("manifest.csv"), b"my,spreadsheet\n").unwrap();
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    assert!(line.contains("/manifest.csv: facedb did not write it"), "{line}");
    assert_eq!(std::fs::read(out.join("manifest.csv")).unwrap(), b"my,spreadsheet\n");

    // Moved away, the run goes on; a file the user adds beside facedb's stays.
    std::fs::remove_file(out.join("manifest.csv")).unwrap();
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let mut expected = expected_after_run(&out);
    expected.push("notes.txt".into());
    expected.sort();
    assert_eq!(names_in(&out), expected);
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn links_planted_in_the_output_folder_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg"]);
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"outside --out").unwrap();
    let out = tmp.path().join("crops");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let crops = crop_names(&out);

    // A crop replaced by a link to a file outside.
    std::fs::remove_file(out.join(&crops[0])).unwrap();
    std::os::unix::fs::symlink(&victim, out.join(&crops[0])).unwrap();
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    assert!(
        line.ends_with(&format!(
            "{}: it is a symbolic link and facedb never writes through links; move it away or pass another --out",
            crops[0]
        )),
        "{line}"
    );
    std::fs::remove_file(out.join(&crops[0])).unwrap();

    // The ledger replaced by a link.
    let ledger = std::fs::read(out.join(".facedb-output")).unwrap();
    std::fs::remove_file(out.join(".facedb-output")).unwrap();
    std::os::unix::fs::symlink(&victim, out.join(".facedb-output")).unwrap();
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    assert!(
        line.ends_with(".facedb-output: it is a symbolic link and facedb never writes through links; move it away or pass another --out"),
        "{line}"
    );
    std::fs::remove_file(out.join(".facedb-output")).unwrap();
    std::fs::write(out.join(".facedb-output"), ledger).unwrap();

    // Links under the temp names earlier versions used (`<crop>.part`, `manifest.csv.part`,
    // `.facedb-output.part`): today's temp names are new random names created with O_EXCL, so
    // these are never opened, and they are not facedb's to delete.
    let stem = crops[1].trim_end_matches(".jpg");
    for name in [format!("{stem}.part"), "manifest.csv.part".into(), ".facedb-output.part".into()] {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside --out");
    assert!(out.join("manifest.csv.part").symlink_metadata().unwrap().file_type().is_symlink());
    // --out itself a link.
    let link = tmp.path().join("link-out");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&link).output().unwrap());
    assert!(line.ends_with("is a symbolic link; facedb never writes through links: pass the folder it points to"), "{line}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside --out");
    // --out inside a linked folder, for match and the people sheet: nothing lands where it points.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let parent = tmp.path().join("link-parent");
    std::os::unix::fs::symlink(&elsewhere, &parent).unwrap();
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(parent.join("crops")).output().unwrap());
    assert!(line.ends_with("link-parent is a symbolic link; facedb never writes through links: pass the real folder's path"), "{line}");
    let sheet = facedb().args(["people", "sheet", "--dir"]).arg(&d).arg("--out").arg(parent.join("sheet")).output().unwrap();
    let line = refused(&sheet);
    assert!(line.contains("link-parent is a symbolic link"), "{line}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "something was written through the link");
}

#[test]
fn two_datasets_never_share_an_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let a = dataset(tmp.path(), "a", &["obama.jpg", "obama2.jpg"]);
    let b = dataset(tmp.path(), "b", &["obama3.jpg", "obama.jpg"]);
    let out = tmp.path().join("crops");
    match_ref(&a, "obama.jpg").arg("--out").arg(&out).assert().success();
    let before = snapshot(&out);
    let line = refused(&match_ref(&b, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    let id = |d: &Path| db(d).query_row("SELECT value FROM meta WHERE key = 'database_id'", [], |r| r.get::<_, String>(0)).unwrap();
    assert_eq!(
        line,
        format!(
            "facedb: {} holds crops of the dataset {} (database {}), not of {} (database {}); pass another --out for this dataset, or delete that folder if its dataset is gone",
            out.display(),
            a.display(),
            id(&a),
            b.display(),
            id(&b)
        )
    );
    assert_eq!(snapshot(&out), before, "dataset a's crops untouched");
}

/// `match --all` of every face, upscaled to large PNGs: seconds of cropping to interrupt.
fn slow_match(d: &Path, out: &Path) -> StdCommand {
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("facedb"));
    c.env_remove("FACEDB_MODELS").env_remove("FACEDB_DB").arg("-q").arg("match").arg(d);
    c.args(["--all", "--min-face", "0", "--min-sharpness", "0", "--max-yaw", "90", "--min-score", "0"]);
    c.args(["--size", "3000", "--upscale", "--format", "png", "--out"]).arg(out).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn a_killed_match_leaves_nothing_the_next_run_does_not_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &ALL_PHOTOS);
    let out = tmp.path().join("crops");
    // Earlier crops in another format, which later runs must replace.
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let mut saw_leftovers = false;
    for delay_ms in [400u64, 800, 1200, 1600, 2000, 2500, 3000, 4000] {
        let mut child = slow_match(&d, &out).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no cleanup at all
        child.wait().unwrap();
        let unlisted: Vec<String> = names_in(&out).into_iter().filter(|n| !expected_after_run(&out).contains(n)).collect();
        saw_leftovers |= !unlisted.is_empty();
        if saw_leftovers && delay_ms >= 1200 {
            break;
        }
    }
    assert!(saw_leftovers, "some kill landed while crops were being written");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    assert_eq!(names_in(&out), expected_after_run(&out), "exactly the manifest's crops, the manifests and the ledger");
    assert!(!names_in(&out).iter().any(|n| n.ends_with(".part")));
}

#[test]
fn two_concurrent_matches_into_one_folder_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &ALL_PHOTOS);
    let out = tmp.path().join("crops");
    let first = slow_match(&d, &out).spawn().unwrap();
    // Wait until the first run holds the folder (its run is recorded in the ledger).
    let started = Instant::now();
    while !std::fs::read_to_string(out.join(".facedb-output")).unwrap_or_default().contains("\nrun ") {
        assert!(started.elapsed() < Duration::from_secs(60), "the first match never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    assert_eq!(
        line,
        format!(
            "facedb: another facedb match is writing into {}; wait for it to finish (one match at a time per output folder)",
            out.display()
        )
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(names_in(&out), expected_after_run(&out), "only the first run's files");
    assert!(manifest(&out).iter().all(|r| r["crop_path"].ends_with(".png")));
}

#[test]
fn references_must_be_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg"]);
    let fifo = tmp.path().join("ref.jpg");
    assert!(StdCommand::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = Instant::now();
    let mut child = facedb().arg("match").arg(&d).arg("--ref").arg(&fifo).arg("--out").arg(tmp.path().join("c")).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "a FIFO never blocks the run");
    let line = refused(&child);
    assert_eq!(line, format!("facedb: reading a reference photo: {} is a FIFO, not a photo file; pass a photo file", fifo.display()));
    child = facedb().arg("match").arg(&d).args(["--ref", "/dev/zero", "--out"]).arg(tmp.path().join("c")).output().unwrap();
    assert_eq!(refused(&child), "facedb: reading a reference photo: /dev/zero is a device, not a photo file; pass a photo file");
    // A FIFO inside a --ref folder is passed over (only regular files are listed); the real photo is used.
    let refs = tmp.path().join("refs");
    std::fs::create_dir(&refs).unwrap();
    std::fs::copy(photo("obama.jpg"), refs.join("a.jpg")).unwrap();
    assert!(StdCommand::new("mkfifo").arg(refs.join("b.jpg")).status().unwrap().success());
    let ok = facedb().arg("match").arg(&d).arg("--ref").arg(&refs).arg("--out").arg(tmp.path().join("c")).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(crop_names(&tmp.path().join("c")).len(), 1);
}

#[test]
fn the_html_sheet_never_replaces_a_file_facedb_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "biden.jpg"]);
    match_ref(&d, "obama.jpg").arg("--out").arg(tmp.path().join("crops")).assert().success();
    // (A read-only SQLite connection may add -wal/-shm beside a WAL database: not compared.)
    let snap = || {
        let mut s = snapshot(&d);
        s.retain(|p, _| !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm"));
        s
    };
    let before = snap();
    let keys = |s: &BTreeMap<PathBuf, Vec<u8>>| s.keys().cloned().collect::<Vec<_>>();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"outside").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("link.html")).unwrap();
    std::fs::write(tmp.path().join("notes.html"), b"<html>my notes</html>").unwrap();
    let html = |file: &Path| facedb().arg("report").arg(&d).arg("--html").arg(file).output().unwrap();
    let why = |file: &Path, why: &str| {
        format!("facedb: refusing to write the sheet to {}: {why}; pass a new file name such as sheet.html", file.display())
    };
    for (file, reason) in [
        (d.join("facedb.sqlite"), "it is the dataset's database"),
        (d.join("facedb.sqlite-wal"), "it is the dataset's database"),
        (d.join("facedb.sqlite-shm"), "it is the dataset's database"),
        (d.join("obama.jpg"), "it is a photo of the dataset"),
        (d.clone(), "it is a folder"),
        (tmp.path().join("link.html"), "it is a symbolic link and facedb never writes through links"),
        (tmp.path().join("notes.html"), "it exists and facedb did not write it (no facedb signature on its first line)"),
    ] {
        assert_eq!(refused(&html(&file)), why(&file, reason));
    }
    let after = snap();
    assert_eq!(keys(&after), keys(&before));
    assert!(after == before, "database and photos byte-identical");
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside");
    assert_eq!(std::fs::read(tmp.path().join("notes.html")).unwrap(), b"<html>my notes</html>");
    // Its own sheet it writes and rewrites, leaving no temp file.
    let sheet = tmp.path().join("sheet.html");
    facedb().arg("report").arg(&d).arg("--html").arg(&sheet).assert().success();
    facedb().arg("report").arg(&d).arg("--html").arg(&sheet).assert().success();
    assert!(std::fs::read_to_string(&sheet).unwrap().starts_with("<!doctype html><!-- facedb contact sheet"));
    assert!(!names_in(tmp.path()).iter().any(|n| n.ends_with(".part")), "{:?}", names_in(tmp.path()));
}

#[test]
fn a_replaced_embedder_model_stops_match_before_it_deletes_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let models = models_folder(tmp.path(), true);
    let d = tmp.path().join("photos");
    std::fs::create_dir(&d).unwrap();
    add_photos(&d, &["obama.jpg", "obama2.jpg"]);
    facedb().arg("--models").arg(&models).arg("index").arg(&d).assert().success();
    let out = tmp.path().join("crops");
    let run_match = || {
        let mut c = facedb();
        c.arg("--models").arg(&models).arg("match").arg(&d).arg("--ref").arg(photo("obama.jpg")).arg("--out").arg(&out);
        c
    };
    run_match().assert().success();
    assert_eq!(crop_names(&out).len(), 2);
    let before = snapshot(&out);
    // A new version of the embedder model file (a different hash).
    let sface = std::fs::read_dir(&models).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("sface")).unwrap();
    let mut bytes = std::fs::read(&sface).unwrap();
    bytes.extend_from_slice(b"\0\0\0\0");
    std::fs::write(&sface, bytes).unwrap();
    let output = run_match().output().unwrap();
    let line = refused(&output);
    assert!(
        line.starts_with("facedb: the database holds no embeddings from the embedder model face_recognition_sface_2021dec_int8bq now in use")
            && line.ends_with(&format!("only 2 from another version of it; run `facedb index {}` to re-embed the stored faces (nothing was matched, written or deleted)", d.display())),
        "{line}"
    );
    assert_eq!(snapshot(&out), before, "earlier crops kept");
}

#[test]
fn names_are_safe_on_the_terminal_and_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(photo("obama.jpg"), d.join("-rf.jpg")).unwrap();
    backdate(&d.join("-rf.jpg"));
    index(&d);
    let out = tmp.path().join("out\x1b[31mred");
    let run = facedb().arg("match").arg(&d).arg("--ref").arg(photo("obama.jpg")).arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(stderr.contains("out\\x1b[31mred"), "{stderr}");
    let crops = crop_names(&out);
    assert_eq!(crops.len(), 1);
    assert!(crops[0].starts_with("rf_face"), "{crops:?}");
}

#[test]
fn ledgers_of_earlier_versions_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg", "obama3.jpg"]);
    let out = tmp.path().join("crops");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let crops = crop_names(&out);
    assert_eq!(crops.len(), 3);
    // What facedb 0.1 left: names only. One listed crop was later replaced by the user's photo.
    std::thread::sleep(Duration::from_millis(20));
    let mut v1 = String::from("# facedb writes crops here; `facedb index` skips this folder. Files facedb wrote:\n");
    for name in crops.iter().map(String::as_str).chain(["manifest.csv", "manifest.jsonl", "rejected.csv"]) {
        v1.push_str(name);
        v1.push('\n');
    }
    std::fs::write(out.join(".facedb-output"), v1).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(photo("biden.jpg"), out.join(&crops[2])).unwrap();
    // Re-run as PNG: facedb's old JPEG crops go, the user's file stays.
    match_ref(&d, "obama.jpg").args(["--format", "png", "--out"]).arg(&out).assert().success();
    assert!(!out.join(&crops[0]).exists() && !out.join(&crops[1]).exists());
    assert_eq!(std::fs::read(out.join(&crops[2])).unwrap(), std::fs::read(photo("biden.jpg")).unwrap());
    let mut expected = expected_after_run(&out);
    expected.push(crops[2].clone());
    expected.sort();
    assert_eq!(names_in(&out), expected);
    assert!(std::fs::read_to_string(out.join(".facedb-output")).unwrap().contains("# facedb-ledger 2 "));
}

/// A small tmpfs, unmounted on drop (needs root; see the test).
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_names_the_file_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg", "biden.jpg"]);
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = StdCommand::new("mount").args(["-t", "tmpfs", "-o", "size=300k", "tmpfs"]).arg(&mnt).stderr(Stdio::null()).status();
    if !mounted.is_ok_and(|s| s.success()) {
        // Without root there is no full disk to be had; every other path is tested above.
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _disk = SmallDisk(mnt.clone());
    let out = mnt.join("out");
    let run = facedb()
        .arg("match")
        .arg(&d)
        .args(["--all", "--size", "2000", "--upscale", "--format", "png", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("3 crop(s) failed"), "{stderr}");
    let rejected = std::fs::read_to_string(out.join("rejected.csv")).unwrap();
    assert!(
        rejected.contains(&format!("crop failed: cannot write {}/obama_face", out.display()))
            && rejected.contains(&format!("No space left on device (os error 28); free space on the disk holding {}", out.display())),
        "{rejected}"
    );
    assert_eq!(names_in(&out), expected_after_run(&out), "no temp file left");
}

/// Appends lines to the ledger the way a run killed part-way leaves it.
fn append_to_ledger(out: &Path, lines: &str) {
    let mut ledger = std::fs::read_to_string(out.join(".facedb-output")).unwrap();
    ledger.push_str(lines);
    std::fs::write(out.join(".facedb-output"), ledger).unwrap();
}

#[test]
fn a_match_killed_between_recording_a_file_and_placing_it_blocks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg", "obama3.jpg"]);
    let out = tmp.path().join("crops");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let crops = crop_names(&out);
    assert_eq!(crops.len(), 3, "{crops:?}");
    let before = std::fs::read(out.join(&crops[0])).unwrap();

    // Killed after recording the new crop's hash, before renaming it over the earlier crop (the
    // new bytes still in the temp file): the earlier crop, with the earlier hash, is facedb's.
    let token = "00112233445566aa";
    let new_bytes = b"the crop the killed run was writing";
    let new_hash = blake3::hash(new_bytes).to_hex().to_string();
    append_to_ledger(&out, &format!("run {token}\nfile {new_hash} {}\n", crops[0]));
    std::fs::write(out.join(format!(".facedb-{token}-0.part")), new_bytes).unwrap();
    assert_eq!(std::fs::read(out.join(&crops[0])).unwrap(), before);
    let run = match_ref(&d, "obama.jpg").args(["--square", "--size", "128", "--out"]).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(crop_names(&out), crops, "every crop written again");
    assert_ne!(std::fs::read(out.join(&crops[0])).unwrap(), before, "the earlier crop was replaced");
    assert_eq!(names_in(&out), expected_after_run(&out), "no temp file, nothing else");

    // Killed after recording that it removes a crop, before removing it: still facedb's.
    let token = "00112233445566bb";
    append_to_ledger(&out, &format!("run {token}\ngone {}\n", crops[1]));
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    assert_eq!(crop_names(&out), crops);
    assert_eq!(names_in(&out), expected_after_run(&out));
}

#[test]
fn a_refused_match_leaves_the_ledger_knowing_what_it_knew() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg"]);
    let out = tmp.path().join("crops");
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    let crops = crop_names(&out);
    let ledger = std::fs::read_to_string(out.join(".facedb-output")).unwrap();

    // The manifest and a crop moved away and linked back: refused, as links are.
    let aside = tmp.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for name in ["manifest.csv", crops[0].as_str()] {
        std::fs::rename(out.join(name), aside.join(name)).unwrap();
        std::os::unix::fs::symlink(aside.join(name), out.join(name)).unwrap();
    }
    let line = refused(&match_ref(&d, "obama.jpg").arg("--out").arg(&out).output().unwrap());
    assert!(line.contains("it is a symbolic link and facedb never writes through links"), "{line}");
    let after = std::fs::read_to_string(out.join(".facedb-output")).unwrap();
    for entry in ledger.lines().filter(|l| l.starts_with("file ") || l.starts_with("dir ")) {
        assert!(after.lines().any(|l| l == entry), "{entry} kept by the refused run:\n{after}");
    }

    // The user puts the very bytes back: facedb's again, replaced and removed as before.
    for name in ["manifest.csv", crops[0].as_str()] {
        std::fs::remove_file(out.join(name)).unwrap();
        std::fs::rename(aside.join(name), out.join(name)).unwrap();
    }
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    assert_eq!(crop_names(&out), crops);
    match_ref(&d, "obama.jpg").args(["--format", "png", "--out"]).arg(&out).assert().success();
    assert_eq!(names_in(&out), expected_after_run(&out), "the earlier JPEG crops were facedb's to remove");
}

#[test]
fn temp_files_a_killed_match_left_are_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &["obama.jpg", "obama2.jpg"]);
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"outside --out").unwrap();

    // Killed writing the folder's first ledger: its temp file is all there is.
    let out = tmp.path().join("crops");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(".facedb-0123456789abcdef-0.part"), b"# facedb writes crops here; half a ledger").unwrap();
    match_ref(&d, "obama.jpg").arg("--out").arg(&out).assert().success();
    assert_eq!(names_in(&out), expected_after_run(&out));

    // Killed writing (or renaming) the rewritten ledger: the temp file's token never reached the
    // ledger. Only regular files of facedb's temp-name pattern go; a link of that name and the
    // user's files stay, and the link is not followed.
    std::fs::write(out.join(".facedb-0123456789abcdef-0.part"), b"half a ledger").unwrap();
    std::os::unix::fs::symlink(&victim, out.join(".facedb-fedcba9876543210-1.part")).unwrap();
    for mine in [".facedb-notes.part", ".facedb-0123456789ABCDEF-0.part", ".facedb-0123456789abcdef-x.part"] {
        std::fs::write(out.join(mine), b"mine").unwrap();
    }
    match_ref(&d, "obama.jpg").args(["--square", "--out"]).arg(&out).assert().success();
    let mut expected = expected_after_run(&out);
    expected.extend(
        [".facedb-0123456789ABCDEF-0.part", ".facedb-0123456789abcdef-x.part", ".facedb-fedcba9876543210-1.part", ".facedb-notes.part"]
            .map(String::from),
    );
    expected.sort();
    assert_eq!(names_in(&out), expected);
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside --out");
    assert_eq!(std::fs::read(out.join(".facedb-notes.part")).unwrap(), b"mine");
}

/// Fills the disk holding `dir` with a file there, then frees `keep` bytes of it.
fn fill_disk(dir: &Path, keep: u64) {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(keep)).unwrap();
}

/// A tmpfs of `size` at `dir`, or `None` without root.
fn small_disk(dir: &Path, size: &str) -> Option<SmallDisk> {
    std::fs::create_dir(dir).unwrap();
    let mounted =
        StdCommand::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).stderr(Stdio::null()).status();
    mounted.is_ok_and(|s| s.success()).then(|| SmallDisk(dir.to_path_buf()))
}

#[test]
fn a_full_disk_never_costs_the_crops_or_manifests_of_an_earlier_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dataset(tmp.path(), "photos", &ALL_PHOTOS);
    let mnt = tmp.path().join("small");
    let Some(_disk) = small_disk(&mnt, "200k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let out = mnt.join("out");
    let run = |out: &Path| match_ref(&d, "obama3.jpg").arg("--out").arg(out).output().unwrap();

    // Room for some crops only (the disk may fill before the last ledger write too: exit 2).
    let first = run(&out);
    assert!(matches!(first.status.code(), Some(1 | 2)), "{}", String::from_utf8_lossy(&first.stderr));
    let written = crop_names(&out);
    assert!(!written.is_empty(), "some crops fit");
    let crops: BTreeMap<String, Vec<u8>> = written.iter().map(|c| (c.clone(), std::fs::read(out.join(c)).unwrap())).collect();

    // The same run again: the crops in place are kept, not lost to a failed rewrite, and stay
    // in the manifest.
    let kept = |out: &Path| {
        let listed = crop_names(out);
        for (name, bytes) in &crops {
            assert!(listed.contains(name), "{name} is in the manifest: {listed:?}");
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name}");
        }
        assert!(!names_in(out).iter().any(|n| n.ends_with(".part")), "no temp file: {:?}", names_in(out));
    };
    let second = run(&out);
    assert!(matches!(second.status.code(), Some(1 | 2)), "{}", String::from_utf8_lossy(&second.stderr));
    kept(&out);
    if second.status.code() == Some(2) {
        let line = refused(&second);
        assert!(line.ends_with(&format!("free space on the disk holding {}, then run facedb again", out.display())), "{line}");
    }

    // Room for the ledger but not the manifests: refused naming the file and the fix; the
    // earlier manifests and crops stay as they were.
    let mnt = tmp.path().join("bigger");
    let _disk = small_disk(&mnt, "4m").unwrap();
    let out = mnt.join("out");
    let first = run(&out);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut before = snapshot(&out);
    fill_disk(&mnt, 4096);
    let line = refused(&run(&out));
    assert!(line.contains(&format!("cannot write {}/", out.display())), "{line}");
    assert!(
        line.ends_with(&format!(
            "No space left on device (os error 28); free space on the disk holding {}, then run facedb again",
            out.display()
        )),
        "{line}"
    );
    let mut after = snapshot(&out);
    before.remove(Path::new(".facedb-output"));
    after.remove(Path::new(".facedb-output"));
    assert_eq!(after, before, "the earlier manifests and crops as they were, no temp file");

    // Space freed: the next run works.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let last = run(&out);
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    assert_eq!(names_in(&out), expected_after_run(&out));
}
