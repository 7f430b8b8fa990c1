//! The database facedb opens is the one it should, opened the way the folder allows: other
//! programs' SQLite files are refused untouched, read-only folders can still be reported on,
//! runs killed mid-way are closed by the next one, and `| head` ends a command quietly.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use predicates::prelude::*;

/// A migrated dataset database of an empty folder (only `index` makes a database; with no
/// photo it loads no model).
fn empty_dataset(dir: &Path) {
    facedb().arg("--quiet").arg("index").arg(dir).assert().success();
}

#[test]
fn another_programs_sqlite_file_is_refused_and_left_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let other = tmp.path().join("notes.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    for args in [&["index"][..], &["report"], &["sql", "SELECT 1"], &["sql", "SELECT 1", "--write"]] {
        let (cmd, rest) = args.split_first().unwrap();
        facedb()
            .arg("--db")
            .arg(&other)
            .arg(cmd)
            .arg(&photos)
            .args(rest)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("notes.sqlite").and(predicate::str::contains("another program")));
        assert_eq!(std::fs::read(&other).unwrap(), before, "{args:?} changed the other program's database");
    }
    // A device is not a database either, and nothing is created beside it.
    facedb()
        .args(["--db", "/dev/null", "sql"])
        .arg(&photos)
        .args(["SELECT 1", "--write"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/dev/null is not a regular file"));
    facedb().args(["--db", "/dev/null", "index"]).arg(&photos).assert().code(2);
    assert!(!Path::new("/dev/null.lock").exists());
}

#[test]
fn a_database_kept_elsewhere_warns_when_used_for_another_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let kept = tmp.path().join("kept.sqlite");
    facedb().arg("--db").arg(&kept).arg("--quiet").arg("index").arg(&a).assert().success().stderr("");
    facedb().arg("--db").arg(&kept).arg("report").arg(&a).assert().success().stderr("");
    facedb()
        .arg("--db")
        .arg(&kept)
        .arg("report")
        .arg(&b)
        .assert()
        .success()
        .stderr(predicate::str::contains("was made for the folder").and(predicate::str::contains("kept.sqlite")));
}

#[test]
fn sql_refuses_a_write_before_running_it() {
    let tmp = tempfile::tempdir().unwrap();
    empty_dataset(tmp.path());
    let target = tmp.path().join("copy.sqlite");
    facedb()
        .arg("sql")
        .arg(tmp.path())
        .arg(format!("VACUUM INTO '{}'", target.display()))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--write"));
    assert!(!target.exists(), "a refused VACUUM INTO left a file behind");
    facedb().arg("sql").arg(tmp.path()).arg("DELETE FROM runs").assert().code(2).stderr(predicate::str::contains("--write"));
}

/// Runs `facedb ARGS` with its stdout closed before it writes: a reader that went away.
fn with_closed_stdout(args: &[&str], dir: Option<&Path>) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("facedb"));
    cmd.args(args).env_remove("FACEDB_DB").stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (child.wait().unwrap(), stderr)
}

#[test]
fn a_closed_output_pipe_ends_every_command_quietly_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    empty_dataset(tmp.path());
    for args in [
        &["man"][..],
        &["completions", "bash"],
        &["--version"],
        &["report"],
        &["report", "--format", "csv"],
        &["--json", "report"],
        &["sql", "SELECT * FROM runs"],
        &["sql", "--format", "csv", "SELECT 1"],
        // More than a pipe's buffer: the error comes from inside the CSV writer.
        &["sql", "--format", "csv", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT x FROM c"],
        &["--json", "index", "."],
    ] {
        let (status, stderr) = with_closed_stdout(args, Some(tmp.path()));
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[test]
fn report_sql_and_info_work_on_a_read_only_folder() {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        // Root ignores permissions, so the folder is made unwritable for user `nobody`; without
        // root and setpriv this check cannot be made here.
        eprintln!("skipped: needs root and setpriv to run facedb as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg"]);
    facedb().arg("index").arg(&photos).assert().success();
    let _ = std::fs::remove_file(photos.join("facedb.sqlite-shm"));
    std::fs::set_permissions(&photos, std::fs::Permissions::from_mode(0o555)).unwrap();
    // A copy of the binary where `nobody` may run it (the checkout may lie under /root).
    let bin = tmp.path().join("facedb");
    std::fs::copy(assert_cmd::cargo::cargo_bin("facedb"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env_remove("FACEDB_DB")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(as_nobody(&["--help"]).0, Some(0), "user nobody can run the copied binary");
    let p = photos.to_str().unwrap();
    let (code, stdout, stderr) = as_nobody(&["report", p]);
    assert_eq!(code, Some(0), "report: {stderr}");
    assert!(stdout.contains("files 1"), "{stdout}");
    let (code, stdout, stderr) = as_nobody(&["sql", p, "SELECT count(*) AS n FROM faces"]);
    assert_eq!(code, Some(0), "sql: {stderr}");
    assert!(stdout.contains('1'), "{stdout}");
    let photo = photos.join("obama.jpg");
    let (code, stdout, stderr) = as_nobody(&["info", photo.to_str().unwrap()]);
    assert_eq!(code, Some(0), "info: {stderr}");
    assert!(stdout.contains("faces (1)"), "{stdout}");
    // A dry run writes nothing, so it works there too (on a private copy of the database).
    let models = models_folder(tmp.path(), true);
    let reference = tmp.path().join("ref.jpg");
    std::fs::copy(crate::common::photo("obama2.jpg"), &reference).unwrap();
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = listing(&photos);
    let (code, stdout, stderr) =
        as_nobody(&["--models", models.to_str().unwrap(), "match", p, "--ref", reference.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, Some(0), "match --dry-run: {stderr}");
    assert!(stdout.contains("would crop 1 photos") && stdout.contains("nothing was written"), "{stdout}");
    assert_eq!(listing(&photos), before);
    assert!(!photos.join("facedb.sqlite-shm").exists(), "nothing was written into the read-only folder");
    std::fs::set_permissions(&photos, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_run_killed_mid_way_is_marked_interrupted_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .arg("index")
        .arg(&photos)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run row exists, then kill -9.
    let db_file = photos.join("facedb.sqlite");
    let started = std::time::Instant::now();
    loop {
        let running = db_file.exists()
            && rusqlite::Connection::open(&db_file)
                .ok()
                .and_then(|c| c.query_row("SELECT count(*) FROM runs WHERE status = 'running'", [], |r| r.get::<_, i64>(0)).ok())
                .unwrap_or(0)
                > 0;
        if running || started.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE status = 'running'"), 1, "the killed run is left running");
    facedb().arg("index").arg(&photos).assert().success();
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE status = 'running'"), 0);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE status = 'interrupted'"), 1);
}

#[test]
fn control_characters_in_names_are_escaped_by_report_info_and_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let hostile = "\x1b[2J\x1b[31mred.jpg";
    std::fs::copy(photo("obama.jpg"), tmp.path().join(hostile)).unwrap();
    std::fs::write(tmp.path().join("broken\x07.jpg"), b"not a photo").unwrap();
    facedb().arg("index").arg(tmp.path()).assert().code(1);
    for args in [&["report"][..], &["sql", "SELECT path FROM files"]] {
        let out = facedb().args(args).current_dir(tmp.path()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains('\x1b') && !stdout.contains('\x07'), "{args:?} printed raw control characters: {stdout:?}");
        assert!(stdout.contains("\\x1b[31mred.jpg") || stdout.contains("broken\\x07.jpg"), "{args:?}: {stdout}");
    }
    let out = facedb().arg("info").arg(tmp.path().join(hostile)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !stdout.contains('\x1b') && stdout.contains("\\x1b[2J"), "{stdout}");
}

#[test]
fn a_lock_file_that_is_a_link_is_refused_and_its_target_never_created() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let target = tmp.path().join("created-outside");
    std::os::unix::fs::symlink(&target, photos.join("facedb.lock")).unwrap();
    facedb().arg("index").arg(&photos).assert().code(2).stderr(predicate::str::contains("facedb.lock"));
    assert!(!target.exists(), "index wrote through the planted link");
}

#[test]
fn a_fifo_under_a_crop_or_photo_name_does_not_hang_the_html_sheet() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama2.jpg", "obama3.jpg"]);
    facedb().arg("index").arg(&photos).assert().success();
    let out = tmp.path().join("crops");
    match_ref(&photos, "obama.jpg").arg("--out").arg(&out).assert().success();
    let fifo = |p: &Path| {
        std::fs::remove_file(p).unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    let crop = manifest(&out).into_iter().find(|r| file_name_of(&r["source_path"]) == "obama2.jpg").unwrap()["crop_path"].clone();
    fifo(&out.join(crop));
    fifo(&photos.join("obama3.jpg"));
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .arg("report")
        .arg(&photos)
        .arg("--html")
        .arg(tmp.path().join("sheet.html"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() > 30 {
            child.kill().unwrap();
            panic!("report --html hung on a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(tmp.path().join("sheet.html").is_file());
}

#[test]
fn ctrl_c_during_match_marks_the_run_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]);
    facedb().arg("index").arg(&photos).assert().success();
    // Big lossless crops take seconds to write: time to interrupt.
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .args(["match", "--all", "--size", "4000", "--upscale", "--format", "png", "--out"])
        .arg(tmp.path().join("crops"))
        .arg(&photos)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let conn = db(&photos);
    let started = std::time::Instant::now();
    while query_i64(&conn, "SELECT count(*) FROM runs WHERE command = 'match' AND status = 'running'") == 0 {
        assert!(started.elapsed().as_secs() < 60, "the match run never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    if status.code() == Some(0) {
        eprintln!("the match finished before Ctrl-C arrived; nothing to check");
        return;
    }
    assert_eq!(status.code(), Some(130));
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE command = 'match' AND status = 'interrupted'"), 1);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM runs WHERE status = 'running'"), 0);
}

#[test]
fn a_link_planted_as_the_write_ahead_log_is_named_and_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    empty_dataset(tmp.path());
    let target = tmp.path().join("outside.txt");
    std::fs::write(&target, "mine").unwrap();
    std::os::unix::fs::symlink(&target, tmp.path().join("facedb.sqlite-wal")).unwrap();
    facedb()
        .arg("sql")
        .arg(tmp.path())
        .args(["SELECT 1", "--write"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("facedb.sqlite-wal is not a regular file"));
    // Readers say the same, not that the folder should be made writable.
    let dir = tmp.path().to_str().unwrap();
    for args in [&["report", dir][..], &["sql", dir, "SELECT 1"], &["info", "1", "--dir", dir]] {
        facedb().args(args).assert().code(2).stderr(predicate::str::contains("facedb.sqlite-wal is not a regular file (a link, a FIFO?)"));
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");
}
