//! The vector cache may only make `match` faster, never change its result (issue 11): a cache
//! left by another state of the database (restored from a copy, then changed), or one whose body
//! is damaged behind an intact header, is detected and rebuilt, and results equal a run without
//! any cache. Real binary, real models, real photos.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;

/// What a match decided, without where it wrote: the JSON summary's counts, the manifest rows
/// and rejected.csv rows (every column but the crop's file path), sorted.
#[derive(Debug, PartialEq)]
struct Outcome {
    summary: [String; 5],
    manifest: BTreeSet<Vec<(String, String)>>,
    rejected: BTreeSet<Vec<String>>,
}

/// `facedb --json match DIR --ref obama.jpg --out OUT`: the outcome and the cache state it reported.
fn match_obama(dir: &Path, out: &Path) -> (Outcome, String) {
    let assert = facedb().arg("--json").arg("match").arg(dir).arg("--ref").arg(photo("obama.jpg")).arg("--out").arg(out).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    let summary = ["photos", "matched", "rejected", "ambiguous", "crop_failures"].map(|k| v[k].to_string());
    let manifest = manifest(out)
        .into_iter()
        .map(|row| {
            let mut kv: Vec<(String, String)> = row.into_iter().filter(|(k, _)| k != "crop_path").collect();
            kv.sort();
            kv
        })
        .collect();
    let mut rdr = csv::Reader::from_path(out.join("rejected.csv")).unwrap();
    let rejected = rdr.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    (Outcome { summary, manifest, rejected }, v["vector_cache"].as_str().unwrap_or_default().to_string())
}

fn sources(o: &Outcome) -> Vec<String> {
    let mut s: Vec<String> =
        o.manifest.iter().flat_map(|row| row.iter().filter(|(k, _)| k == "source_path").map(|(_, v)| file_name_of(v))).collect();
    s.sort();
    s
}

fn index(dir: &Path) {
    facedb().arg("-q").arg("index").arg(dir).assert().success();
}

fn cache(dir: &Path) -> std::path::PathBuf {
    dir.join("facedb.sqlite.vectors")
}

/// The same match with the cache deleted first: what the database alone says.
fn without_cache(dir: &Path, out: &Path) -> Outcome {
    std::fs::remove_file(cache(dir)).unwrap();
    let (o, state) = match_obama(dir, out);
    assert_eq!(state, "rebuilt");
    o
}

#[test]
fn a_restored_database_that_diverged_never_uses_the_newer_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg"]);
    index(&dir);
    let (first, _) = match_obama(&dir, &tmp.path().join("o1"));
    assert_eq!(sources(&first), ["obama2.jpg"]);
    let backup = tmp.path().join("backup.sqlite");
    std::fs::copy(dir.join("facedb.sqlite"), &backup).unwrap();

    // Two more faces of A: the cache now holds face ids the restored copy will hand out again.
    add_photos(&dir, &["obama3.jpg", "32bit.png"]);
    index(&dir);
    let (second, _) = match_obama(&dir, &tmp.path().join("o2"));
    assert_eq!(sources(&second), ["32bit.png", "obama2.jpg", "obama3.jpg"]);

    // Restore the copy, then let it diverge with two photos of B (as many faces as A's above).
    std::fs::copy(&backup, dir.join("facedb.sqlite")).unwrap();
    for p in ["obama3.jpg", "32bit.png"] {
        std::fs::remove_file(dir.join(p)).unwrap();
    }
    add_photos(&dir, &["biden.jpg"]);
    save(&dir, "biden_mirror.jpg", &image::imageops::flip_horizontal(&rgb("biden.jpg")));
    index(&dir);
    let faces = query_i64(&db(&dir), "SELECT count(*) FROM embeddings");
    assert_eq!(faces, 3, "obama2 + two of B, ids reused from the discarded history");

    let (after, state) = match_obama(&dir, &tmp.path().join("o3"));
    assert_eq!(state, "rebuilt", "the cache of the other history is not trusted");
    assert_eq!(sources(&after), ["obama2.jpg"], "B is never cropped as A");
    assert_eq!(after, without_cache(&dir, &tmp.path().join("o4")));
    let out_names: Vec<String> =
        std::fs::read_dir(tmp.path().join("o3")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(out_names.iter().all(|n| !n.starts_with("biden")), "{out_names:?}");
}

#[test]
fn a_damaged_cache_body_behind_an_intact_header_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png"]);
    index(&dir);
    let out = tmp.path().join("out");
    let (truth, _) = match_obama(&dir, &out);
    assert_eq!(truth, without_cache(&dir, &out));
    let (again, state) = match_obama(&dir, &out);
    assert_eq!((&again, state.as_str()), (&truth, "current"));
    let good = std::fs::read(cache(&dir)).unwrap();
    // The two header slots are the first 4096 bytes; the compact vectors (264 bytes each) follow,
    // then the exact rows (516 bytes each), face records and chunk checksums.
    let body = BODY;
    assert!(good.len() >= body + 4 * 512, "{}", good.len());
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("zeroed vectors", {
            let mut b = good.clone();
            b[body..body + 1024].fill(0);
            b
        }),
        ("two vectors swapped", {
            let mut b = good.clone();
            let (x, y) = b[body..body + 1024].split_at_mut(512);
            x.swap_with_slice(y);
            b
        }),
        ("random body", {
            let mut b = good.clone();
            b[body..].iter_mut().for_each(|x| *x = random());
            b
        }),
        ("zeroed face records", {
            let mut b = good.clone();
            let at = good.len() - 64;
            b[at - 32..at].fill(0);
            b
        }),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("one bit", {
            let mut b = good.clone();
            b[body + 700] ^= 0x10;
            b
        }),
    ];
    for (what, bytes) in damages {
        assert_ne!(bytes, good, "{what}");
        std::fs::write(cache(&dir), &bytes).unwrap();
        let (o, state) = match_obama(&dir, &out);
        assert_eq!(o, truth, "{what}");
        assert_eq!(state, "rebuilt", "{what}");
        assert!(std::fs::read(cache(&dir)).unwrap() == good, "{what}: the rebuilt cache is whole again");
    }
}

#[test]
fn a_deleted_photo_drops_out_of_matching_and_dry_run_writes_no_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg", "obama3.jpg"]);
    index(&dir);
    let out = tmp.path().join("out");
    let (before, _) = match_obama(&dir, &out);
    assert_eq!(sources(&before), ["obama2.jpg", "obama3.jpg"]);

    std::fs::remove_file(dir.join("obama3.jpg")).unwrap();
    index(&dir);
    // Exit 0 (asserted by match_obama): the deleted photo is neither matched nor a failed crop.
    let (after, state) = match_obama(&dir, &out);
    assert_eq!((state.as_str(), sources(&after)), ("rebuilt", vec!["obama2.jpg".to_string()]));
    assert_eq!(after.summary[4], "0", "no crop failures");
    let (again, state) = match_obama(&dir, &out);
    assert_eq!((&again, state.as_str()), (&after, "current"));
    let all = tmp.path().join("all");
    facedb().arg("-q").arg("match").arg(&dir).arg("--all").arg("--out").arg(&all).assert().success();
    assert_eq!(manifest(&all).iter().map(|r| file_name_of(&r["source_path"])).collect::<Vec<_>>(), ["obama2.jpg"], "--all too");

    // The photo comes back: it is matched again (its faces appended when newer than all cached).
    add_photos(&dir, &["obama3.jpg"]);
    index(&dir);
    let (back, state) = match_obama(&dir, &out);
    assert_ne!(state, "current");
    assert_eq!(sources(&back), vec!["obama2.jpg".to_string(), "obama3.jpg".to_string()]);

    // --dry-run with no current cache builds it in a temporary file and leaves nothing behind.
    std::fs::remove_file(cache(&dir)).unwrap();
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    facedb().arg("match").arg(&dir).arg("--ref").arg(photo("obama.jpg")).arg("--dry-run").assert().success();
    let mut after: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    after.retain(|n| !n.to_string_lossy().starts_with("facedb.sqlite-")); // SQLite's own WAL files
    let mut before = before;
    before.retain(|n| !n.to_string_lossy().starts_with("facedb.sqlite-"));
    before.sort();
    after.sort();
    assert_eq!(after, before);
    assert!(!cache(&dir).exists());
}

/// Where a cache's first segment starts: after its two header slots.
const BODY: usize = 4096;

/// Offsets in a cache of `count` faces (one chunk): where the exact row of the face at index `i` starts.
fn exact_row(count: usize, i: usize) -> usize {
    BODY + count * 264 + i * 516
}

/// The compact file is checked where it is read: a damaged compact block, a damaged exact row of
/// a face near the threshold, a truncated file are all rebuilt; an exact row of a far face is
/// never read, so its damage cannot change a result either. And after forget or merge the
/// cache is stale and rebuilt.
#[test]
fn the_compact_cache_is_rebuilt_when_damaged_or_stale_after_forget_and_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png"]);
    index(&dir);
    let out = tmp.path().join("out");
    let (truth, _) = match_obama(&dir, &out);
    let good = std::fs::read(cache(&dir)).unwrap();
    let ids: Vec<i64> = {
        let c = db(&dir);
        let mut stmt = c.prepare("SELECT face_id FROM embeddings ORDER BY face_id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(good.len(), BODY + ids.len() * (264 + 516 + 32) + 4, "one chunk: compact block, exact rows, records, one checksum");
    let matched: Vec<i64> =
        truth.manifest.iter().flat_map(|row| row.iter().filter(|(k, _)| k == "face_id").map(|(_, v)| v.parse().unwrap())).collect();
    let near = ids.iter().position(|id| matched.contains(id)).expect("a matched face");
    let damages: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "one compact value",
            {
                let mut b = good.clone();
                b[BODY + 264 * near + 20] ^= 1;
                b
            },
            true,
        ),
        (
            "a compact scale",
            {
                let mut b = good.clone();
                b[BODY + 264 * near] ^= 0x40;
                b
            },
            true,
        ),
        (
            "the exact row of a matched face",
            {
                let mut b = good.clone();
                b[exact_row(ids.len(), near) + 100] ^= 4;
                b
            },
            true,
        ),
        (
            "the checksum of that row",
            {
                let mut b = good.clone();
                b[exact_row(ids.len(), near) + 512] ^= 1;
                b
            },
            true,
        ),
        ("truncated inside the exact rows", good[..exact_row(ids.len(), 1)].to_vec(), true),
    ];
    for (what, bytes, rebuilt) in damages {
        std::fs::write(cache(&dir), &bytes).unwrap();
        let (o, state) = match_obama(&dir, &out);
        assert_eq!(o, truth, "{what}");
        assert_eq!(state == "rebuilt", rebuilt, "{what}: {state}");
        assert!(std::fs::read(cache(&dir)).unwrap() == good, "{what}: the rebuilt cache is whole again");
    }
    // Every face's exact row damaged at once: whichever rows the match reads are caught.
    let mut b = good.clone();
    for i in 0..ids.len() {
        b[exact_row(ids.len(), i) + 8] ^= 0x80;
    }
    std::fs::write(cache(&dir), &b).unwrap();
    assert_eq!(match_obama(&dir, &out).0, truth, "all exact rows damaged");

    // forget: the cache goes with the photo, and the next match equals one without any cache.
    facedb().arg("forget").arg(dir.join("obama3.jpg")).assert().success();
    let (after, state) = match_obama(&dir, &out);
    assert_eq!((state.as_str(), sources(&after)), ("rebuilt", vec!["32bit.png".to_string(), "obama2.jpg".to_string()]));
    assert_eq!(after, without_cache(&dir, &out));
    assert_eq!(match_obama(&dir, &out).1, "current");

    // merge: a shard holding another photo of the person joins; its faces (newer than all cached)
    // are appended, then the cache is current.
    add_photos(&dir, &["obama.jpg"]);
    let shard = tmp.path().join("shard.sqlite");
    facedb().arg("-q").arg("index").arg(&dir).arg("--shard").arg("0/1").arg("--db").arg(&shard).assert().success();
    facedb().arg("-q").arg("--db").arg(dir.join("facedb.sqlite")).arg("merge").arg(&shard).assert().success();
    let (merged, state) = match_obama(&dir, &out);
    assert_eq!(state, "appended");
    assert_eq!(merged, without_cache(&dir, &out));
    assert_eq!(match_obama(&dir, &out).1, "current");
}

/// On real faces: every stored face as the reference, at three thresholds, the compact scan with
/// exact re-checks decides exactly as the f32 vectors in SQLite do (distances bit for bit
/// wherever a match lists or stores them, the same 0.01 bin for the far photos it only counts).
#[test]
fn compact_scan_decides_as_exact_f32_on_real_faces() {
    use facedb::db::vectors::{load, CacheWrite};
    use facedb::histogram::RunHistogram;
    use facedb::matching::{decide, Combine, Filters, InMemory, Options, EXACT_BAND};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(
        &dir,
        &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png", "obama_partial_face.jpg", "obama_partial_face2.jpg"],
    );
    save(&dir, "biden_mirror.jpg", &image::imageops::flip_horizontal(&rgb("biden.jpg")));
    index(&dir);
    let db_path = dir.join("facedb.sqlite");
    let database = facedb::db::Db::open(&db_path).unwrap();
    let embedder = query_i64(&database.conn, "SELECT id FROM models WHERE kind = 'embedder'");
    let (ids, exact): (Vec<i64>, Vec<f32>) = {
        let mut stmt = database.conn.prepare("SELECT face_id, vector FROM embeddings ORDER BY face_id").unwrap();
        let rows: Vec<(i64, Vec<u8>)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
        let floats = rows.iter().flat_map(|(_, b)| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
        (rows.iter().map(|r| r.0).collect(), floats)
    };
    let tx = database.conn.unchecked_transaction().unwrap();
    let mut m = load(&tx, &db_path, embedder, 128, CacheWrite::Temporary).unwrap();
    assert_eq!(m.faces.iter().map(|f| f.face_id).collect::<Vec<_>>(), ids);
    let (mut far, mut decisions) = (0, 0);
    for reference in exact.chunks_exact(128) {
        for threshold in [0.3f32, 0.45, 0.6] {
            let opts = Options { threshold, combine: Combine::Nearest, filters: Filters::NONE, allow_ambiguous: false, expand: None };
            let c = decide(&m.faces, &mut m.vectors, &[reference.to_vec()], &[], &opts).unwrap();
            let x = decide(&m.faces, &mut InMemory { vectors: &exact, dim: 128 }, &[reference.to_vec()], &[], &opts).unwrap();
            assert_eq!(c.len(), x.len());
            for (c, x) in c.iter().zip(&x) {
                assert_eq!((c.face_id, c.reason, c.ambiguous, c.same_face_copies), (x.face_id, x.reason, x.ambiguous, x.same_face_copies));
                if x.distance <= threshold + EXACT_BAND {
                    assert_eq!((c.distance.to_bits(), c.runner_up), (x.distance.to_bits(), x.runner_up));
                } else {
                    far += 1;
                }
                decisions += 1;
            }
            let hist = |d: &[facedb::matching::Decision]| RunHistogram::new(d.iter().map(|d| d.distance), threshold);
            assert_eq!(hist(&c), hist(&x));
        }
    }
    assert!(far > 0 && m.vectors.exact_reads() < decisions, "{far} far photos, {} exact reads of {decisions}", m.vectors.exact_reads());
}

/// `facedb sql DIR --write STATEMENT`, which must succeed; its stderr.
fn sql_write(dir: &Path, statement: &str) -> String {
    let assert = facedb().arg("sql").arg(dir).arg("--write").arg(statement).assert().success();
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

/// Hand edits that once hid from the change log (hostile tests H3): a REPLACE marking a photo
/// missing, a trigger dropped, the log's table dropped. Each is seen, and the result equals a
/// run without any cache; a copy of an indexed photo under a new name changes nothing.
#[test]
fn hand_edits_that_hid_from_the_change_log_never_leave_a_stale_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    add_photos(&dir, &["obama2.jpg", "obama3.jpg", "biden.jpg"]);
    index(&dir);
    let out = |n: &str| tmp.path().join(n);
    let (first, _) = match_obama(&dir, &out("o1"));
    assert_eq!(sources(&first), ["obama2.jpg", "obama3.jpg"]);

    // The same photo under another name: no face changes, so no rebuild.
    std::fs::copy(dir.join("obama3.jpg"), dir.join("obama3 copy.jpg")).unwrap();
    index(&dir);
    assert_eq!(match_obama(&dir, &out("o2")).1, "current");

    // INSERT OR REPLACE fires no delete trigger: the insert of a missing file must log too.
    sql_write(
        &dir,
        "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run, missing)
         SELECT path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run, 1 FROM files WHERE path = 'obama2.jpg'",
    );
    let (gone, state) = match_obama(&dir, &out("o3"));
    assert_eq!(state, "rebuilt");
    assert_eq!(sources(&gone).len(), 1, "obama3, under either name");
    assert!(!sources(&gone).contains(&"obama2.jpg".to_string()));
    assert_eq!(gone, without_cache(&dir, &out("o4")));

    // A dropped trigger is recreated at the next open (said in one line), and the cache rebuilt:
    // obama3's face given biden's vector is no longer matched.
    let said = sql_write(&dir, "DROP TRIGGER vector_log_embeddings_update");
    assert!(!said.contains("recreated"), "{said}");
    let said = sql_write(
        &dir,
        "UPDATE embeddings SET vector = (SELECT e.vector FROM embeddings e JOIN faces f ON f.id = e.face_id JOIN files p ON p.image_id = f.image_id WHERE p.path = 'biden.jpg')
         WHERE face_id IN (SELECT f.id FROM faces f JOIN files p ON p.image_id = f.image_id WHERE p.path = 'obama3.jpg')",
    );
    assert!(said.contains("triggers were missing or altered; facedb recreated them") && said.lines().count() == 1, "{said}");
    let (swapped, state) = match_obama(&dir, &out("o5"));
    assert_eq!(state, "rebuilt");
    assert_eq!(sources(&swapped), Vec::<String>::new());
    assert_eq!(swapped, without_cache(&dir, &out("o6")));

    // The log's table dropped: recreated at the next open, so index and match go on.
    sql_write(&dir, "DROP TABLE vector_log");
    let assert = facedb().arg("-q").arg("index").arg(&dir).assert().success();
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("recreated them"));
    let (again, state) = match_obama(&dir, &out("o7"));
    assert_eq!(state, "rebuilt");
    assert_eq!(again, without_cache(&dir, &out("o8")), "obama2.jpg, indexed again, is back");
    assert_eq!(match_obama(&dir, &out("o9")).1, "current");
}

/// Issue 18: a photo gone, the same photo back, a face re-scored by hand are patched into the
/// cache (no rebuild), and each match equals what the database alone says (the cache deleted).
#[test]
fn a_photo_gone_or_back_or_a_face_rescored_is_patched_and_matches_as_the_database_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    let names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png", "obama_partial_face.jpg", "obama_partial_face2.jpg"];
    add_photos(&dir, &names);
    // Mirrored copies: enough faces that one photo is under a tenth of them (else compacted).
    for name in names {
        save(&dir, &format!("mirror_{name}.png"), &image::imageops::flip_horizontal(&rgb(name)));
    }
    index(&dir);
    let out = tmp.path().join("out");
    let (first, state) = match_obama(&dir, &out);
    assert_eq!(state, "rebuilt");

    let away = tmp.path().join("obama3.jpg");
    std::fs::rename(dir.join("obama3.jpg"), &away).unwrap();
    index(&dir);
    let (gone, state) = match_obama(&dir, &out);
    assert_eq!(state, "patched");
    assert!(!sources(&gone).contains(&"obama3.jpg".to_string()) && sources(&first).contains(&"obama3.jpg".to_string()));
    std::fs::rename(&away, dir.join("obama3.jpg")).unwrap();
    index(&dir);
    let (back, state) = match_obama(&dir, &out);
    assert_eq!(state, "patched", "the same photo back: its faces are live again");
    assert_eq!(back, first);
    assert_eq!(back, without_cache(&dir, &out));

    // Gone again from a cache without void faces, then compared with the database alone.
    std::fs::rename(dir.join("obama3.jpg"), &away).unwrap();
    index(&dir);
    let (again, state) = match_obama(&dir, &out);
    assert_eq!((state.as_str(), &again), ("patched", &gone));
    assert_eq!(again, without_cache(&dir, &out));

    // A face re-scored by hand below --min-face: its record is replaced, its vector kept.
    facedb()
        .arg("-q")
        .arg("sql")
        .arg(&dir)
        .arg("--write")
        .arg("UPDATE faces SET size_px = 1 WHERE image_id = (SELECT image_id FROM files WHERE path LIKE '%obama2.jpg')")
        .assert()
        .success();
    let (rescored, state) = match_obama(&dir, &out);
    assert_eq!(state, "patched");
    assert_ne!(rescored, again, "the re-scored face is filtered out");
    assert_eq!(rescored, without_cache(&dir, &out));
}
