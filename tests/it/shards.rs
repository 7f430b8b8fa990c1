//! Shards of one folder indexed as separate tasks (in parallel, retried, killed and rerun) and
//! merged equal one index of the whole folder, row for row; mismatched shards are refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use image::imageops::{self, FilterType};
use predicates::prelude::*;

/// The test portraits, a copy of one in a subfolder (one content, two paths, likely two
/// shards), and `n` distinct small photos (a few pixels differ, so every hash differs).
fn dataset(dir: &Path, n: u32) {
    add_photos(dir, &ALL_PHOTOS);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(photo("obama.jpg"), dir.join("sub/copy of obama.jpg")).unwrap();
    backdate(&dir.join("sub/copy of obama.jpg"));
    let img = rgb("biden.jpg");
    let small = imageops::resize(&img, 240, 240 * img.height() / img.width(), FilterType::Triangle);
    for i in 0..n {
        let mut img = small.clone();
        for bit in 0..8 {
            let v = if (i >> bit) & 1 == 1 { 255 } else { 0 };
            img.put_pixel(bit, 0, image::Rgb([v, v, v]));
        }
        save(dir, &format!("p{i:03}.png"), &img);
    }
}

fn spawn_shard(dir: &Path, k: u32, n: u32, db: &Path) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("facedb"))
        .env_remove("FACEDB_DB")
        .args(["index", "-q", "-j", "1", "--shard", &format!("{k}/{n}"), "--db"])
        .arg(db)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "shard failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn open(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(db).unwrap()
}

fn rows(db: &Path, sql: &str) -> Vec<String> {
    let conn = open(db);
    let mut stmt = conn.prepare(sql).unwrap();
    let mut v: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    v.sort();
    v
}

/// Everything index computed, by content and path, ids aside: (blake3, path), images, and
/// (blake3, face idx, box, score, landmarks, quality, embedding bytes, models).
fn index_rows(db: &Path) -> [Vec<String>; 3] {
    [
        rows(
            db,
            "SELECT coalesce(i.blake3, '-') || ' ' || f.path || ' ' || f.missing || ' ' || coalesce(f.error, '') || ' ' || f.size || ' ' || f.mtime_ns
             FROM files f LEFT JOIN images i ON i.id = f.image_id",
        ),
        rows(
            db,
            "SELECT i.blake3 || ' ' || i.size_bytes || ' ' || i.width || 'x' || i.height || ' ' || i.format || ' ' || i.orientation || ' ' ||
                    i.status || ' ' || coalesce(i.error, '') || ' ' || i.rotation || ' ' || i.quality_version || ' ' ||
                    d.file_blake3 || d.params_json || ' ' || e.file_blake3
             FROM images i JOIN models d ON d.id = i.detector_id JOIN models e ON e.id = i.embedder_id",
        ),
        rows(
            db,
            "SELECT i.blake3 || ' ' || fc.idx || ' ' || printf('%.17g %.17g %.17g %.17g %.17g', fc.x, fc.y, fc.w, fc.h, fc.score) || ' ' ||
                    fc.landmarks_json || ' ' || printf('%.17g %.17g %.17g %.17g %.17g', fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness) || ' ' ||
                    coalesce(fc.face_hash, 'no hash') || ' ' || hex(e.vector) || ' ' || m.file_blake3 || ' ' || d.params_json
             FROM faces fc JOIN images i ON i.id = fc.image_id JOIN models d ON d.id = fc.detector_id
             JOIN embeddings e ON e.face_id = fc.id JOIN models m ON m.id = e.model_id",
        ),
    ]
}

fn merge(target: &Path, shards: &[PathBuf]) -> serde_json::Value {
    let out = facedb().arg("--db").arg(target).args(["--json", "merge"]).args(shards).output().unwrap();
    assert!(out.status.success(), "merge failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cache_state(db: &Path) -> String {
    open(db).query_row("SELECT value FROM meta WHERE key = 'cache_state'", [], |r| r.get(0)).unwrap()
}

/// (source file name, distance) of each crop of a match of obama.jpg against `db`.
fn matched(dir: &Path, db: &Path, out: &Path) -> (Vec<(String, String)>, String) {
    let o = match_ref(dir, "obama.jpg").arg("--db").arg(db).arg("--out").arg(out).arg("--json").output().unwrap();
    assert!(o.status.code() == Some(0), "match failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut m: Vec<(String, String)> = manifest(out).iter().map(|r| (file_name_of(&r["source_path"]), r["distance"].clone())).collect();
    m.sort();
    (m, v["vector_cache"].as_str().unwrap_or_default().to_string())
}

#[test]
fn three_shards_in_parallel_retried_and_killed_merge_into_what_one_index_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    dataset(&dir, 36);
    let single = tmp.path().join("single.sqlite");
    facedb().arg("--db").arg(&single).args(["index", "-q"]).arg(&dir).assert().success();

    let shards: Vec<PathBuf> = (0..3).map(|k| tmp.path().join(format!("shard-{k}.sqlite"))).collect();
    // All three at once; shard 1 is killed (SIGKILL) once it has stored some images.
    let mut children: Vec<Child> = (0..3).map(|k| spawn_shard(&dir, k, 3, &shards[k as usize])).collect();
    let t = Instant::now();
    let killed_mid_run = loop {
        let stored = rusqlite::Connection::open_with_flags(&shards[1], rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT count(*) FROM images", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if children[1].try_wait().unwrap().is_some() || t.elapsed() > Duration::from_secs(60) {
            break false;
        }
        if stored >= 2 {
            children[1].kill().unwrap();
            break true;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(killed_mid_run, "shard 1 finished before it could be killed; give it more photos");
    let _ = children.remove(1).wait();
    for c in children {
        finish(c);
    }
    let partial = index_rows(&shards[1]);
    // Shard 1 holds part of its files; merging it now is allowed (with a warning), and a later
    // merge adds the rest.
    let early = tmp.path().join("early.sqlite");
    merge(&early, &shards);
    // Retried: shard 1 finishes; shard 0 is run again (a duplicated task) and changes nothing.
    let before0 = index_rows(&shards[0]);
    finish(spawn_shard(&dir, 1, 3, &shards[1]));
    finish(spawn_shard(&dir, 0, 3, &shards[0]));
    assert_eq!(index_rows(&shards[0]), before0, "a rerun shard changes nothing");
    assert!(index_rows(&shards[1])[0].len() > partial[0].len(), "the killed shard had work left");

    // Each shard holds only its paths, and together exactly the folder's.
    let paths: Vec<Vec<String>> = shards.iter().map(|s| rows(s, "SELECT path FROM files")).collect();
    let mut all: Vec<String> = paths.concat();
    all.sort();
    assert_eq!(all, rows(&single, "SELECT path FROM files"), "every path in exactly one shard");
    assert!(paths.iter().all(|p| !p.is_empty()), "{paths:?}");

    // The merged database equals the single index, row for row (ids aside).
    let target = dir.join("facedb.sqlite");
    let first = merge(&target, &shards);
    let expected = index_rows(&single);
    let merged = index_rows(&target);
    for (what, (a, b)) in ["files", "images", "faces"].iter().zip(merged.iter().zip(&expected)) {
        assert_eq!(a, b, "{what} differ between the merge and the single index");
    }
    assert!(expected[2].len() >= 40, "faces compared: {}", expected[2].len());
    assert_eq!(first["images_new"], expected[1].len() as u64, "{first}");
    // The merge over an earlier, partial one adds what the killed shard had not stored.
    merge(&early, &shards);
    assert_eq!(index_rows(&early), expected, "merging again after the shards finish completes the target");

    // Merging the same shards again changes nothing, not even the vector cache's state.
    let state = cache_state(&target);
    let again = merge(&target, &shards);
    assert_eq!((again["images_new"].as_u64(), again["files_changed"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(index_rows(&target), expected);
    assert_eq!(cache_state(&target), state, "nothing changed, so the cache stays current");

    // A content the target holds as failed (an earlier merge of a shard whose first try failed
    // for want of a library, say) takes the shard's faces once the shard has indexed it.
    open(&target)
        .execute_batch(
            "CREATE TEMP TABLE one AS SELECT image_id AS id FROM faces WHERE idx = 0 ORDER BY image_id LIMIT 1;
             DELETE FROM embeddings WHERE face_id IN (SELECT id FROM faces WHERE image_id IN (SELECT id FROM temp.one));
             DELETE FROM faces WHERE image_id IN (SELECT id FROM temp.one);
             UPDATE images SET status = 'failed', error = 'libheif missing', failure_kind = 'environment' WHERE id IN (SELECT id FROM temp.one);",
        )
        .unwrap();
    assert_ne!(index_rows(&target), expected);
    let healed = merge(&target, &shards);
    assert_eq!(healed["images_new"], 0, "{healed}");
    assert_eq!(index_rows(&target), expected, "the retried content is merged");

    // Match, report and sql work on the merged database as on the single one.
    let (on_single, _) = matched(&dir, &single, &tmp.path().join("out-single"));
    let (on_merged, cache) = matched(&dir, &target, &tmp.path().join("out-merged"));
    assert_eq!(on_merged, on_single);
    // One crop per content: the copy in sub/ is the same image as obama.jpg.
    assert!(on_merged.iter().any(|(f, d)| f == "obama.jpg" && d == "0.0000") && on_merged.len() >= 4, "{on_merged:?}");
    assert_eq!(cache, "rebuilt");
    facedb().arg("report").arg(&dir).assert().success();
    facedb().arg("sql").arg(&dir).arg("SELECT count(*) FROM faces").assert().success();
    // The stat cache came along: indexing the merged folder reads nothing.
    let o = facedb().args(["--json", "index"]).arg(&dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["counters"]["bytes_read"], 0, "{v}");
}

#[test]
fn shards_that_do_not_belong_together_are_refused_and_the_target_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    dataset(&dir, 0);
    let s = |name: &str| tmp.path().join(name);
    let index = |args: &[&str], db: &Path| facedb().args(["index", "-q"]).args(args).arg("--db").arg(db).arg(&dir).assert();
    index(&["--shard", "0/2"], &s("a0.sqlite")).success();
    index(&["--shard", "1/2"], &s("a1.sqlite")).success();
    index(&["--shard", "1/2", "--detect-size", "640"], &s("other-detector.sqlite")).success();
    index(&["--shard", "1/3"], &s("other-n.sqlite")).success();

    let refused = |shards: &[&str], needle: &str| {
        let target = s("merged.sqlite");
        let before = std::fs::read(&target).ok();
        let mut c = facedb();
        c.arg("--db").arg(&target).arg("merge");
        for name in shards {
            c.arg(s(name));
        }
        let out = c.assert().code(2).get_output().stderr.clone();
        let msg = String::from_utf8_lossy(&out).into_owned();
        assert!(msg.contains(needle) && msg.trim().lines().count() == 1, "{msg}");
        assert_eq!(std::fs::read(&target).ok(), before, "the target is left as it was");
        msg
    };
    let msg = refused(&["a0.sqlite", "other-detector.sqlite"], "other-detector.sqlite");
    assert!(msg.contains("--detect-size") && msg.contains("detector"), "{msg}");
    refused(&["a0.sqlite", "other-n.sqlite"], "must share N");

    // A good merge, then a shard of other models cannot be merged into it either.
    facedb().arg("--db").arg(s("merged.sqlite")).args(["merge"]).arg(s("a0.sqlite")).arg(s("a1.sqlite")).assert().success();
    refused(&["other-detector.sqlite"], "merged.sqlite");

    // One transaction: a shard failing halfway leaves the target exactly as it was, including
    // the rows an earlier shard of the same merge had added.
    let target = s("atomic.sqlite");
    facedb().arg("--db").arg(&target).arg("merge").arg(s("a0.sqlite")).assert().success();
    let before = index_rows(&target);
    std::fs::copy(s("a1.sqlite"), s("broken.sqlite")).unwrap();
    open(&s("broken.sqlite"))
        .execute_batch("PRAGMA foreign_keys = OFF; DELETE FROM images WHERE id = (SELECT max(image_id) FROM files)")
        .unwrap();
    let out = facedb().arg("--db").arg(&target).arg("merge").arg(s("a1.sqlite")).arg(s("broken.sqlite")).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("broken.sqlite"));
    assert_eq!(index_rows(&target), before, "nothing of a1 was kept");
    facedb().arg("--db").arg(&target).arg("merge").arg(s("a1.sqlite")).assert().success();
    assert_eq!(index_rows(&target), index_rows(&s("merged.sqlite")));

    // A shard's database is its shard's: not another shard, not the whole folder, and --db is needed.
    index(&["--shard", "0/2"], &s("a1.sqlite")).code(2).stderr(predicate::str::contains("holds shard 1/2"));
    index(&[], &s("a1.sqlite")).code(2).stderr(predicate::str::contains("--shard 1/2"));
    facedb().args(["index", "--shard", "0/2"]).arg(&dir).assert().code(2).stderr(predicate::str::contains("--db"));
}
