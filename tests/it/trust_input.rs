//! `index` reads only what it should, retries what may now work, and redoes faces when a model
//! file changes (issue 11). Real binary, real models, real photos.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use predicates::prelude::*;

fn dataset(tmp: &Path) -> PathBuf {
    let photos = tmp.join("photos");
    std::fs::create_dir(&photos).unwrap();
    photos
}

fn last_run(conn: &rusqlite::Connection, column: &str) -> i64 {
    query_i64(conn, &format!("SELECT {column} FROM runs WHERE command = 'index' ORDER BY id DESC LIMIT 1"))
}

fn report(dir: &Path) -> String {
    let out = facedb().arg("report").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the binary to the end; returns (exit code, wall time, max RSS in MiB) measured by the
/// kernel for that process (wait4).
fn measured(args: &[&OsStr]) -> (i32, Duration, i64) {
    measured_with(args, &[])
}

/// `measured`, with environment variables set for the process.
fn measured_with(args: &[&OsStr], env: &[(&str, &str)]) -> (i32, Duration, i64) {
    let t = Instant::now();
    let child = Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child by pid, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    let mut child = child;
    assert!(child.wait().is_err(), "already reaped by wait4");
    (libc::WEXITSTATUS(status), t.elapsed(), usage.ru_maxrss / 1024)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn fifos_sockets_and_devices_are_listed_as_skipped_never_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg"]);
    mkfifo(&photos.join("pipe.jpg"));
    let _socket = std::os::unix::net::UnixListener::bind(photos.join("socket.png")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", photos.join("zero.jpg")).unwrap();

    // Today a FIFO hangs index forever; the timeout turns that into a failure.
    facedb()
        .arg("index")
        .arg(&photos)
        .timeout(Duration::from_secs(120))
        .assert()
        .code(0)
        .stderr(predicate::str::contains("1 new").and(predicate::str::contains("3 skipped (not regular files)")));
    let conn = db(&photos);
    assert_eq!(last_run(&conn, "files_skipped"), 3);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM files"), 1);
    let text = report(&photos);
    assert!(text.contains("skipped, not regular files (3):"), "{text}");
    assert!(text.contains("pipe.jpg: a FIFO (named pipe), not a regular file"), "{text}");
    assert!(text.contains("socket.png: a socket, not a regular file"), "{text}");
    assert!(text.contains("zero.jpg: a character device, not a regular file"), "{text}");

    // Gone on the next index once removed.
    std::fs::remove_file(photos.join("pipe.jpg")).unwrap();
    facedb().arg("index").arg(&photos).timeout(Duration::from_secs(60)).assert().code(0);
    assert!(!report(&photos).contains("pipe.jpg"));
}

/// A PNG whose header declares `side` x `side` RGB pixels, with no pixel data.
fn png_bomb(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(), b"IEND".to_vec()] {
        p.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
        p.extend_from_slice(&chunk);
        p.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    }
    p
}

#[test]
fn a_decompression_bomb_and_a_huge_file_are_per_file_errors_fast_and_small() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, bombs) = (dataset(tmp.path()), tmp.path().join("bombs"));
    std::fs::create_dir(&bombs).unwrap();
    // The same work without the bomb: loading the models is most of the memory.
    save(&base, "small.png", &image::RgbImage::new(64, 64));
    std::fs::write(bombs.join("bomb.png"), png_bomb(29_999)).unwrap();
    save(&bombs, "small.png", &image::RgbImage::new(64, 64));
    // 600 MiB, sparse: a plain read would take it all into memory.
    std::fs::File::create(bombs.join("huge.tif")).unwrap().set_len(600 << 20).unwrap();

    // One worker each: every worker loads its own model sessions (~90 MiB).
    let (code, base_time, base_rss) = measured(&["index".as_ref(), "-j1".as_ref(), base.as_os_str()]);
    assert_eq!(code, 0);
    let (code, time, rss) = measured(&["index".as_ref(), "-j1".as_ref(), bombs.as_os_str()]);
    eprintln!("without bomb: {base_time:?}, {base_rss} MiB; with bomb and huge file: {time:?}, {rss} MiB");
    assert_eq!(code, 1);
    assert!(rss < base_rss + 100, "bomb cost {} MiB", rss - base_rss);
    assert!(time < base_time + Duration::from_secs(1), "{time:?} vs {base_time:?}");

    let text = report(&bombs);
    assert!(text.contains("bomb.png: image of 29999x29999 pixels would need"), "{text}");
    assert!(text.contains("huge.tif: cannot read: file of 600 MiB is larger than the 512 MiB accepted"), "{text}");
    let conn = db(&bombs);
    let kind: String = conn.query_row("SELECT failure_kind FROM images WHERE status = 'failed'", [], |r| r.get(0)).unwrap();
    assert_eq!(kind, "content");
}

#[test]
fn non_utf8_names_stay_two_rows_and_old_lossy_rows_are_rekeyed() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    let (e9, e8) = (photos.join(OsStr::from_bytes(b"caf\xe9.jpg")), photos.join(OsStr::from_bytes(b"caf\xe8.jpg")));
    std::fs::copy(photo("obama.jpg"), &e9).unwrap();
    std::fs::copy(photo("biden.jpg"), &e8).unwrap();
    // A file really named with a backslash escape must not take either key.
    std::fs::copy(photo("obama2.jpg"), photos.join("caf\\xE9.jpg")).unwrap();
    for p in [&e9, &e8, &photos.join("caf\\xE9.jpg")] {
        backdate(p);
    }
    facedb().arg("index").arg(&photos).assert().code(0);
    let conn = db(&photos);
    let rows: Vec<(String, Vec<u8>, i64)> = conn
        .prepare("SELECT path, path_raw, image_id FROM files ORDER BY path")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["caf\\\\xE9.jpg", "caf\\xE8.jpg", "caf\\xE9.jpg"]);
    assert_eq!(rows[1].1, b"caf\xe8.jpg");
    assert_eq!(rows[2].1, b"caf\xe9.jpg");
    assert_eq!(query_i64(&conn, "SELECT count(DISTINCT image_id) FROM files"), 3);
    // Stable: nothing flips on the next run.
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(last_run(&conn, "files_unchanged"), 3);

    // A database from before: the two names collapsed into one lossy row.
    conn.execute_batch(
        "DELETE FROM meta WHERE key = 'path_keys';
         DELETE FROM files WHERE path = 'caf\\xE8.jpg';
         UPDATE files SET path = 'caf' || char(65533) || '.jpg' WHERE path = 'caf\\xE9.jpg';",
    )
    .unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM files"), 3);
    assert_eq!(
        query_i64(&conn, "SELECT count(*) FROM files WHERE path = 'caf\\xE9.jpg' AND path_raw = CAST(X'636166E92E6A7067' AS BLOB)"),
        1
    );
    assert_eq!(last_run(&conn, "files_linked"), 1, "the lost name's content is known: linked, not decoded");
    match_ref(&photos, "obama.jpg").arg("--out").arg(tmp.path().join("crops")).assert().code(0);
    assert_eq!(manifest(&tmp.path().join("crops")).len(), 2);
}

#[test]
fn dangling_links_loops_and_unreadable_folders_count_list_and_are_forgotten_when_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg"]);
    std::os::unix::fs::symlink(tmp.path().join("gone.jpg"), photos.join("dangling.jpg")).unwrap();
    std::os::unix::fs::symlink("loop.jpg", photos.join("loop.jpg")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(1).stderr(predicate::str::contains("2 failed"));
    let text = report(&photos);
    assert!(text.contains("dangling.jpg: dangling symbolic link"), "{text}");
    assert!(text.contains("loop.jpg: symbolic link loop"), "{text}");

    std::fs::remove_file(photos.join("loop.jpg")).unwrap();
    std::fs::copy(photo("biden.jpg"), tmp.path().join("gone.jpg")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    let text = report(&photos);
    assert!(!text.contains("loop.jpg") && !text.contains("could not be read"), "{text}");
    assert_eq!(query_i64(&db(&photos), "SELECT count(*) FROM files WHERE missing = 0"), 2);

    // An unreadable folder: root reads anything, so run as nobody when possible.
    if !Path::new("/usr/bin/setpriv").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the unreadable-folder part: needs root and setpriv to run facedb as nobody");
        return;
    }
    let sub = photos.join("private");
    std::fs::create_dir(&sub).unwrap();
    add_photos(&sub, &["obama2.jpg"]);
    // The binary and models copied where `nobody` may read them (the checkout may lie under /root).
    let bin = tmp.path().join("facedb");
    std::fs::copy(assert_cmd::cargo::cargo_bin("facedb"), &bin).unwrap();
    let models = models_folder(tmp.path(), true);
    let nobody = |dir: &Path| {
        Command::new("/usr/bin/setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin)
            .arg("--models")
            .arg(&models)
            .arg("index")
            .arg(dir)
            .output()
            .unwrap()
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::process::Command::new("chown").arg("-R").arg("nobody").arg(&photos).status().unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = nobody(&photos);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = report(&photos);
    assert!(text.contains("private: cannot list this folder: Permission denied"), "{text}");
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = nobody(&photos);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report(&photos).contains("private:"));

    // The dataset folder itself unlistable: an error, never every photo marked missing.
    std::fs::set_permissions(&photos, std::fs::Permissions::from_mode(0o333)).unwrap();
    let out = nobody(&photos);
    std::fs::set_permissions(&photos, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot list this folder: Permission denied"), "{stderr}");
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM files WHERE missing = 0"), 3);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE status = 'running'"), 0);
}

#[test]
fn photos_with_future_mtimes_are_not_reread() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    let future = SystemTime::now() + Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(photos.join("biden.jpg")).unwrap().set_modified(future).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    facedb().arg("index").arg(&photos).assert().code(0);
    let conn = db(&photos);
    assert_eq!((last_run(&conn, "files_unchanged"), last_run(&conn, "bytes_read")), (2, 0));
    // A real change still shows: the size and mtime differ.
    std::fs::copy(photo("obama2.jpg"), photos.join("biden.jpg")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(last_run(&conn, "images_new"), 1);
}

#[test]
fn a_photo_replaced_under_its_old_size_and_mtime_or_a_relinked_name_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    std::os::unix::fs::symlink(photos.join("obama.jpg"), photos.join("link.jpg")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    facedb().arg("index").arg(&photos).assert().code(0);
    let conn = db(&photos);
    assert_eq!((last_run(&conn, "files_unchanged"), last_run(&conn, "bytes_read")), (3, 0));

    // The same bytes saved as a new file (an editor's write-and-rename), the old mtime put back:
    // only the inode says it is another file, and that is enough to read it again.
    let size = std::fs::metadata(photos.join("biden.jpg")).unwrap().len();
    let mtime = std::fs::metadata(photos.join("biden.jpg")).unwrap().modified().unwrap();
    std::fs::copy(photos.join("biden.jpg"), photos.join("biden.new")).unwrap();
    std::fs::rename(photos.join("biden.new"), photos.join("biden.jpg")).unwrap();
    std::fs::File::options().write(true).open(photos.join("biden.jpg")).unwrap().set_modified(mtime).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!((last_run(&conn, "files_unchanged"), last_run(&conn, "bytes_read")), (3, size as i64));

    // A link pointed at another photo: the walk stats the target, so the change shows.
    std::fs::remove_file(photos.join("link.jpg")).unwrap();
    std::os::unix::fs::symlink(photos.join("biden.jpg"), photos.join("link.jpg")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!((last_run(&conn, "files_linked"), last_run(&conn, "images_new")), (1, 0));
    let linked = "SELECT count(*) FROM files a JOIN files b ON a.image_id = b.image_id WHERE a.path = 'link.jpg' AND b.path = 'biden.jpg'";
    assert_eq!(query_i64(&conn, linked), 1);
}

/// An edit in place that keeps size, inode and (put back) mtime, as `touch -r` or `exiftool -P`
/// on a same-length field leaves it: only the ctime, which no user tool sets, shows it.
#[test]
fn a_photo_edited_in_place_with_its_mtime_put_back_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    facedb().arg("index").arg(&photos).assert().code(0);
    let conn = db(&photos);
    let hash = "SELECT i.blake3 FROM files f JOIN images i ON i.id = f.image_id WHERE f.path = 'obama.jpg'";
    let before: String = conn.query_row(hash, [], |r| r.get(0)).unwrap();
    let path = photos.join("obama.jpg");
    let meta = std::fs::metadata(&path).unwrap();
    let (size, inode, mtime) = (meta.len(), std::os::unix::fs::MetadataExt::ino(&meta), meta.modified().unwrap());
    // One byte of the JPEG comment-free tail changed in place (the last bytes before EOI).
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::options().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let after_edit = std::fs::metadata(&path).unwrap();
    assert_eq!((after_edit.len(), std::os::unix::fs::MetadataExt::ino(&after_edit), after_edit.modified().unwrap()), (size, inode, mtime));
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(last_run(&conn, "files_unchanged"), 1, "only biden.jpg is unchanged");
    let after: String = conn.query_row(hash, [], |r| r.get(0)).unwrap();
    assert_ne!(before, after, "the edited bytes are another photo");
    // Unchanged since: trusted again, nothing read.
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!((last_run(&conn, "files_unchanged"), last_run(&conn, "bytes_read")), (2, 0));
}

#[test]
fn index_in_a_subfolder_uses_the_dataset_database_and_an_empty_folder_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    let sub = photos.join("2024");
    std::fs::create_dir(&sub).unwrap();
    add_photos(&photos, &["obama.jpg"]);
    facedb().arg("index").arg(&photos).assert().code(0);
    add_photos(&sub, &["biden.jpg"]);
    facedb()
        .arg("index")
        .arg(&sub)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("is inside the dataset").and(predicate::str::contains("indexing the whole dataset")));
    assert!(!sub.join("facedb.sqlite").exists());
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM files WHERE missing = 0"), 2);
    assert_eq!((last_run(&conn, "images_new"), last_run(&conn, "files_unchanged")), (1, 1));

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not a photo").unwrap();
    facedb().arg("index").arg(&empty).assert().code(0).stderr(predicate::str::contains("no photos in"));
}

/// Appends an unknown protobuf field (number 1000, varint 1) to an ONNX file: the model loads
/// and computes the same, but its blake3 (and so its identity) changes.
fn touch_model(path: &Path) {
    use std::io::Write;
    std::fs::File::options().append(true).open(path).unwrap().write_all(&[0xC0, 0x3E, 0x01]).unwrap();
}

fn vectors(conn: &rusqlite::Connection, model_id: i64) -> Vec<(i64, Vec<u8>)> {
    conn.prepare("SELECT face_id, vector FROM embeddings WHERE model_id = ?1 ORDER BY face_id")
        .unwrap()
        .query_map([model_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_changed_embedder_reembeds_stored_faces_and_a_changed_detector_redetects() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    add_photos(&photos, &["obama.jpg", "biden.jpg", "obama2.jpg"]);
    facedb().arg("index").arg(&photos).assert().code(0);
    let conn = db(&photos);
    let faces = query_i64(&conn, "SELECT count(*) FROM faces");
    let old_embedder = query_i64(&conn, "SELECT id FROM models WHERE kind = 'embedder'");
    let before = vectors(&conn, old_embedder);

    let models = models_folder(tmp.path(), true);
    touch_model(&models.join("face_recognition_sface_2021dec_int8bq.onnx"));
    facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().code(0).stderr(predicate::str::contains("3 re-embedded"));
    let new_embedder = query_i64(&conn, "SELECT max(id) FROM models WHERE kind = 'embedder'");
    assert_ne!(new_embedder, old_embedder);
    assert_eq!((last_run(&conn, "images_reembedded"), last_run(&conn, "detector_calls"), last_run(&conn, "embedder_calls")), (3, 0, faces));
    // Same network, new identity: the same vectors, stored under the new model; old ones stay.
    assert_eq!(vectors(&conn, new_embedder), before);
    assert_eq!(vectors(&conn, old_embedder), before);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), faces, "no re-detection");
    facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().code(0);
    assert_eq!((last_run(&conn, "images_reembedded"), last_run(&conn, "embedder_calls")), (0, 0));

    touch_model(&models.join("face_detection_yunet_2023mar_int8bq.onnx"));
    facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().code(0).stderr(predicate::str::contains("3 re-detected"));
    let new_detector = query_i64(&conn, "SELECT max(id) FROM models WHERE kind = 'detector'");
    assert_eq!(last_run(&conn, "images_redetected"), 3);
    assert!(last_run(&conn, "detector_calls") >= 3);
    assert_eq!(query_i64(&conn, &format!("SELECT count(*) FROM images WHERE detector_id = {new_detector}")), 3);
    assert_eq!(query_i64(&conn, &format!("SELECT count(*) FROM faces WHERE detector_id = {new_detector}")), faces);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), 2 * faces, "old faces stay for old match results");
    // ... without embeddings: matched beside the new faces they would be each face twice.
    let embedded_old = "SELECT count(*) FROM embeddings e JOIN faces f ON f.id = e.face_id JOIN images i ON i.id = f.image_id
                        WHERE f.detector_id <> i.detector_id";
    assert_eq!(query_i64(&conn, embedded_old), 0);
    facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().code(0);
    assert_eq!((last_run(&conn, "images_redetected"), last_run(&conn, "detector_calls")), (0, 0));
    let out = tmp.path().join("crops");
    match_ref(&photos, "obama.jpg").arg("--models").arg(&models).arg("--out").arg(&out).assert().code(0);
    let matched: Vec<String> = manifest(&out).iter().map(|r| r["source_path"].clone()).collect();
    assert_eq!(matched.len(), 2, "obama.jpg and obama2.jpg, once each: {matched:?}");

    // Back to the shipped files: the first faces are reused (by index) and embedded again.
    facedb().arg("index").arg(&photos).assert().code(0).stderr(predicate::str::contains("3 re-detected"));
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), 2 * faces);
    assert_eq!(query_i64(&conn, embedded_old), 0);
    assert_eq!(vectors(&conn, old_embedder), before);
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(last_run(&conn, "embedder_calls"), 0);
}

#[test]
fn environment_failures_are_retried_when_it_changes_content_failures_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    let decoders = facedb::pipeline::decode::Decoders::new(Some(&repo().join("models")));
    facedb::pipeline::heif::encode_heic(decoders.heif().unwrap(), &rgb("obama2.jpg"), 80, &photos.join("IMG_0001.heic")).unwrap();
    backdate(&photos.join("IMG_0001.heic"));
    let jpeg = std::fs::read(photo("obama.jpg")).unwrap();
    std::fs::write(photos.join("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    backdate(&photos.join("cut.jpg"));

    // No libheif: the HEIC fails because of the environment, the cut JPEG because of its bytes.
    facedb().arg("index").arg(&photos).env("FACEDB_HEIF_LIB", tmp.path().join("no-libheif.so")).assert().code(1);
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE status = 'failed' AND failure_kind = 'environment'"), 1);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE status = 'failed' AND failure_kind = 'content'"), 1);
    assert!(report(&photos).contains("needs libheif"));
    // Same environment: nothing retried.
    facedb().arg("index").arg(&photos).env("FACEDB_HEIF_LIB", tmp.path().join("no-libheif.so")).assert().code(1);
    assert_eq!((last_run(&conn, "images_retried"), last_run(&conn, "bytes_read")), (0, 0));

    // libheif installed: the HEIC is retried and decoded, its advice gone; the JPEG is not.
    facedb().arg("index").arg(&photos).assert().code(1).stderr(predicate::str::contains("1 earlier failures retried"));
    assert_eq!(last_run(&conn, "images_retried"), 1);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM photos_v WHERE format = 'heif' AND status = 'ok' AND face_count = 1"), 1);
    let text = report(&photos);
    assert!(!text.contains("libheif") && text.contains("cut.jpg: truncated JPEG"), "{text}");

    facedb().arg("index").arg(&photos).arg("--retry-failed").assert().code(1);
    assert_eq!((last_run(&conn, "images_retried"), last_run(&conn, "files_failed")), (1, 1));
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 2);
}

/// `n` distinct small photos with a face each.
fn many_photos(dir: &Path, n: u32) {
    let img = rgb("obama.jpg");
    let img = image::imageops::resize(&img, 320, 320 * img.height() / img.width(), image::imageops::FilterType::Triangle);
    for i in 0..n {
        let mut copy = img.clone();
        copy.put_pixel(i % 16, i / 16, image::Rgb([255, 0, 0]));
        save(dir, &format!("p{i:04}.jpg"), &copy);
    }
}

fn sigint(pid: u32) {
    // SAFETY: sending a signal to our own child by its pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
}

/// Sends Ctrl-C (twice when asked) `after` the start; returns the exit code and how long the
/// process took to exit after the first one.
fn interrupt(dir: &Path, after: Duration, twice: bool) -> (Option<i32>, Duration) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .arg("index")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let t = Instant::now();
    sigint(child.id());
    if twice {
        std::thread::sleep(Duration::from_millis(30));
        sigint(child.id());
    }
    let status = child.wait().unwrap();
    (status.code(), t.elapsed())
}

#[test]
fn ctrl_c_is_honoured_within_a_second_at_every_stage_and_twice_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    many_photos(&photos, 200);
    // Early (walking, loading models) and late (analysing): each within a second, status 130.
    for after in [Duration::from_millis(100), Duration::from_millis(400), Duration::from_millis(2500)] {
        let (code, took) = interrupt(&photos, after, false);
        eprintln!("Ctrl-C after {after:?}: exit {code:?} in {took:?}");
        assert_eq!(code, Some(130));
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }
    let conn = db(&photos);
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let (code, took) = interrupt(&photos, Duration::from_millis(1500), true);
    eprintln!("two Ctrl-C: exit {code:?} in {took:?}");
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_millis(400), "{took:?}");
    facedb().arg("index").arg(&photos).assert().code(0);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 200);
}

/// Four 38-byte lossless WebPs, each declaring 13000x13000 px (1.26 GB to decode, under the
/// per-file limit): with one decode budget shared by the workers they are decoded one after
/// another instead of all at once (4 workers peaked at 4.0 GB before; 1.26 GB now).
#[test]
fn tiny_files_declaring_huge_pictures_share_one_memory_budget_across_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = dataset(tmp.path());
    for (i, colour) in ["2a", "2e", "32", "36"].iter().enumerate() {
        let hex = format!("524946461e000000574542505650384c110000002fc7f2b10c07508a{colour}d4a3ff8188e87f0000");
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap()).collect();
        std::fs::write(photos.join(format!("bomb{i}.webp")), bytes).unwrap();
        backdate(&photos.join(format!("bomb{i}.webp")));
    }
    let args = [OsStr::new("-q"), OsStr::new("index"), OsStr::new("-j"), OsStr::new("4"), photos.as_os_str()];
    let (code, _, rss_mib) = measured_with(&args, &[("FACEDB_DECODE_BUDGET_MB", "1024")]);
    assert_eq!(code, 0, "the files decode (plain colour, no face)");
    assert_eq!(query_i64(&db(&photos), "SELECT count(*) FROM images WHERE status = 'ok' AND width = 13000"), 4);
    assert!(rss_mib < 2200, "one 1.26 GB decode at a time, not four: peak {rss_mib} MiB");
}
