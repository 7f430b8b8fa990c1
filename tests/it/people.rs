//! `facedb people`: faces grouped into people without a reference, incrementally; naming,
//! merging, moving; `match --person`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::*;

fn people_json(dir: &Path) -> serde_json::Value {
    let out = facedb().arg("--json").arg("people").arg(dir).assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

/// Photo file name -> person id (None: waiting) of its first face.
fn person_of_photo(dir: &Path) -> BTreeMap<String, Option<i64>> {
    let conn = db(dir);
    let mut stmt = conn.prepare("SELECT path, person_id FROM face_people_v ORDER BY face_id").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))).unwrap();
    let mut out = BTreeMap::new();
    for row in rows {
        let (path, person) = row.unwrap();
        out.entry(path).or_insert(person);
    }
    out
}

#[test]
fn one_persons_portraits_become_one_person_strangers_do_not_and_new_photos_join_without_reclustering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]);
    facedb().arg("index").arg(dir).assert().success();
    let first = people_json(dir);
    let s = &first["summary"];
    assert_eq!((s["new_people"].as_u64(), s["in_new_people"].as_u64(), s["waiting"].as_u64()), (Some(1), Some(3), Some(1)), "{first}");
    assert_eq!((s["compared"].as_u64(), s["remembered"].as_bool()), (Some(4 * 3 / 2), Some(false)), "a first run compares every pair once");
    let found = person_of_photo(dir);
    let obama = found["obama.jpg"].expect("obama is a person");
    assert_eq!(found["obama2.jpg"], Some(obama));
    assert_eq!(found["obama3.jpg"], Some(obama));
    assert_eq!(found["biden.jpg"], None, "a stranger alone waits: {found:?}");

    // New photos: Obama's join his person by nearest neighbours; Biden's three faces (his photo
    // and two edits of it) become a second person. Obama's person is not clustered again.
    add_photos(dir, &["obama_partial_face.jpg", "obama_partial_face2.jpg"]);
    let biden = rgb("biden.jpg");
    let (w, h) = biden.dimensions();
    let smaller = image::imageops::resize(&biden, w * 7 / 10, h * 7 / 10, image::imageops::FilterType::Triangle);
    let mirrored = variants(&biden).into_iter().find(|(n, _)| *n == "mirror_warm").unwrap().1;
    for (name, img) in [("smaller", smaller), ("mirror_warm", mirrored)] {
        save(dir, &format!("biden_{name}.jpg"), &img);
        backdate(&dir.join(format!("biden_{name}.jpg")));
    }
    facedb().arg("index").arg(dir).assert().success();
    let second = people_json(dir);
    let s = &second["summary"];
    assert_eq!(s["kept"], 3, "faces already in a person are kept as they are: {second}");
    assert_eq!(s["assigned"], 2, "{second}");
    assert_eq!(s["clustered_among"], 3, "only the faces no person took are clustered: {second}");
    assert_eq!(s["new_people"], 1, "{second}");
    // 4 new faces against the 4 seen ones and each other; Biden's waiting face, promoted, against
    // the waiting faces (itself). The Obama person's faces are not compared among themselves.
    assert_eq!(
        (s["new_faces"].as_u64(), s["promoted"].as_u64(), s["compared"].as_u64()),
        (Some(4), Some(1), Some(4 * 4 + 6 + 1)),
        "{second}"
    );
    let found = person_of_photo(dir);
    for photo in ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"] {
        assert_eq!(found[photo], Some(obama), "{photo}: {found:?}");
    }
    let bidens: BTreeSet<Option<i64>> = found.iter().filter(|(p, _)| p.starts_with("biden")).map(|(_, &id)| id).collect();
    assert_eq!(bidens.len(), 1, "Biden's faces are one person: {found:?}");
    assert!(!bidens.contains(&Some(obama)) && !bidens.contains(&None), "{found:?}");
    let biden_id = bidens.into_iter().next().flatten().unwrap();

    // A third run with nothing new changes nothing.
    let third = people_json(dir);
    assert_eq!((third["summary"]["assigned"].as_u64(), third["summary"]["new_people"].as_u64()), (Some(0), Some(0)), "{third}");
    assert_eq!(third["summary"]["compared"], 0, "nothing new, nothing compared: {third}");

    // Naming, then match --person uses the person's faces as references.
    facedb().args(["people", "name", &obama.to_string(), "Barack Obama"]).current_dir(dir).assert().success();
    let refused = facedb().args(["people", "name", &biden_id.to_string(), "Barack Obama"]).current_dir(dir).assert().code(2);
    assert!(String::from_utf8_lossy(&refused.get_output().stderr).contains("already named"));
    facedb().arg("match").arg(dir).args(["--person", "Barack Obama"]).assert().success();
    let sources: BTreeSet<String> = manifest(&dir.join("facedb-crops")).iter().map(|r| file_name_of(&r["source_path"])).collect();
    let expected: BTreeSet<String> =
        ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"].map(String::from).into();
    assert_eq!(sources, expected);
    let missing = facedb().arg("match").arg(dir).args(["--person", "Nobody"]).assert().code(2);
    assert!(String::from_utf8_lossy(&missing.get_output().stderr).contains("no person named \"Nobody\""));

    // Moving a face is the user's choice and stays; merging empties the other person.
    let a_biden_face: i64 =
        db(dir).query_row("SELECT min(face_id) FROM face_people_v WHERE person_id = ?1", [biden_id], |r| r.get(0)).unwrap();
    facedb().args(["people", "move", &a_biden_face.to_string(), &obama.to_string()]).current_dir(dir).assert().success();
    people_json(dir);
    let source: String = db(dir).query_row("SELECT source FROM person_faces WHERE face_id = ?1", [a_biden_face], |r| r.get(0)).unwrap();
    assert_eq!(source, "user");
    facedb().args(["people", "merge", &obama.to_string(), &biden_id.to_string()]).current_dir(dir).assert().success();
    assert_eq!(query_i64(&db(dir), "SELECT count(*) FROM people"), 1);

    // Merged by mistake: split Biden's faces back out into a person of their own, which later
    // runs keep, and match --person finds only him.
    let biden_faces: Vec<String> = person_of_photo(dir).iter().filter(|(p, _)| p.starts_with("biden")).map(|(p, _)| p.clone()).collect();
    let conn = db(dir);
    let ids: Vec<String> = biden_faces
        .iter()
        .map(|p| conn.query_row("SELECT min(face_id) FROM face_people_v WHERE path = ?1", [p], |r| r.get::<_, i64>(0)).unwrap().to_string())
        .collect();
    facedb().args(["people", "split"]).args(&ids).current_dir(dir).assert().success();
    let again = people_json(dir);
    assert_eq!((again["summary"]["assigned"].as_u64(), again["summary"]["new_people"].as_u64()), (Some(0), Some(0)), "{again}");
    let found = person_of_photo(dir);
    let split: BTreeSet<Option<i64>> = found.iter().filter(|(p, _)| p.starts_with("biden")).map(|(_, &id)| id).collect();
    assert_eq!(split.len(), 1, "{found:?}");
    let split_id = split.into_iter().next().flatten().unwrap();
    assert_ne!(split_id, obama);
    assert_eq!(found["obama.jpg"], Some(obama));
    let out = tempfile::tempdir().unwrap();
    facedb().arg("match").arg(dir).args(["--person", &split_id.to_string(), "--out"]).arg(out.path()).assert().success();
    let sources: BTreeSet<String> = manifest(out.path()).iter().map(|r| file_name_of(&r["source_path"])).collect();
    assert!(!sources.is_empty() && sources.iter().all(|s| s.starts_with("biden")), "{sources:?}");
    facedb().args(["people", "split", "999999"]).current_dir(dir).assert().code(2);
}

/// Saves a copy of `biden.jpg` edited one way (smaller, or mirrored and warmer), backdated.
fn biden_edit(dir: &Path, name: &str) {
    let biden = rgb("biden.jpg");
    let img = if name == "smaller" {
        let (w, h) = biden.dimensions();
        image::imageops::resize(&biden, w * 7 / 10, h * 7 / 10, image::imageops::FilterType::Triangle)
    } else {
        variants(&biden).into_iter().find(|(n, _)| *n == name).unwrap().1
    };
    save(dir, &format!("biden_{name}.jpg"), &img);
    backdate(&dir.join(format!("biden_{name}.jpg")));
}

fn index_and_group(dir: &Path) -> serde_json::Value {
    facedb().arg("index").arg(dir).assert().success();
    people_json(dir)["summary"].clone()
}

#[test]
fn later_photos_are_assigned_by_comparing_only_the_new_faces_and_a_waiting_face_is_promoted_when_its_neighbours_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama.jpg", "obama2.jpg", "obama3.jpg"]);
    let s = index_and_group(dir);
    assert_eq!((s["new_people"].as_u64(), s["waiting"].as_u64()), (Some(1), Some(0)), "{s}");
    let obama = person_of_photo(dir)["obama.jpg"].expect("Obama is a person");

    // One more of his photos joins him; a stranger does not, and waits. Only the 2 new faces
    // are compared: against the 3 seen ones and each other.
    add_photos(dir, &["obama_partial_face.jpg", "biden.jpg"]);
    let s = index_and_group(dir);
    assert_eq!((s["new_faces"].as_u64(), s["assigned"].as_u64(), s["waiting"].as_u64()), (Some(2), Some(1), Some(1)), "{s}");
    assert_eq!((s["compared"].as_u64(), s["remembered"].as_bool()), (Some(2 * 3 + 1), Some(true)), "{s}");
    let found = person_of_photo(dir);
    assert_eq!(found["obama_partial_face.jpg"], Some(obama), "{found:?}");
    assert_eq!(found["biden.jpg"], None, "a stranger waits: {found:?}");

    // A second Biden face: one neighbour each, too few to seed (--min-neighbours 2); both wait.
    biden_edit(dir, "smaller");
    let s = index_and_group(dir);
    assert_eq!((s["compared"].as_u64(), s["promoted"].as_u64(), s["waiting"].as_u64()), (Some(5), Some(0), Some(2)), "{s}");
    let waiting: Vec<(i64, i64)> = {
        let conn = db(dir);
        let mut stmt = conn.prepare("SELECT face_id, neighbours FROM people_waiting ORDER BY face_id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(waiting.iter().map(|w| w.1).collect::<Vec<_>>(), vec![1, 1], "each waiting face remembers its one neighbour");

    // A third: the two waiting faces gain their second neighbour and are promoted; the three
    // become a person. Compared: the new face against the 6 others, then each promoted face
    // against the 2 waiting ones.
    biden_edit(dir, "mirror_warm");
    let s = index_and_group(dir);
    assert_eq!((s["promoted"].as_u64(), s["new_people"].as_u64(), s["in_new_people"].as_u64()), (Some(2), Some(1), Some(3)), "{s}");
    assert_eq!((s["compared"].as_u64(), s["waiting"].as_u64()), (Some(6 + 2 * 2), Some(0)), "{s}");
    let found = person_of_photo(dir);
    let bidens: BTreeSet<Option<i64>> = found.iter().filter(|(p, _)| p.starts_with("biden")).map(|(_, &id)| id).collect();
    assert_eq!(bidens.len(), 1, "{found:?}");
    assert!(!bidens.contains(&Some(obama)) && !bidens.contains(&None), "{found:?}");
    assert_eq!(query_i64(&db(dir), "SELECT count(*) FROM people_waiting"), 0);

    // Another distance: the remembered counts are not used, every unplaced face is counted again.
    let out = facedb().args(["--json", "people", "--distance", "0.4"]).arg(dir).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["summary"]["remembered"], false, "{v}");
}

/// The `<section class="person" ...>` blocks of the sheet: (data-person, data-faces, title, images).
fn sheet_people(html: &str) -> Vec<(i64, i64, String, usize)> {
    html.split("<section class=\"person\"")
        .skip(1)
        .map(|sec| {
            let attr = |name: &str| -> i64 {
                let start = sec.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                sec[start..].split('"').next().unwrap().parse().unwrap()
            };
            let title = sec.split("<h2>").nth(1).unwrap().split(" <small>").next().unwrap().to_string();
            (attr("data-person"), attr("data-faces"), title, sec.matches("<img src=\"data:image/jpeg;base64,").count())
        })
        .collect()
}

#[test]
fn the_people_sheet_shows_each_person_biggest_first_with_name_count_and_faces_through_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    add_photos(dir, &["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg"]);
    biden_edit(dir, "smaller");
    biden_edit(dir, "mirror_warm");
    index_and_group(dir);
    let found = person_of_photo(dir);
    let (obama, biden) = (found["obama.jpg"].unwrap(), found["biden.jpg"].unwrap());
    facedb().args(["people", "name", &biden.to_string(), "Joe <Biden>"]).current_dir(dir).assert().success();
    let out = facedb().args(["--json", "people", "sheet", "--faces", "3"]).current_dir(dir).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((v["people"].as_u64(), v["faces_shown"].as_u64()), (Some(2), Some(6)), "{v}");
    let sheet_dir = dir.join("facedb-people");
    let html = std::fs::read_to_string(sheet_dir.join("people.html")).unwrap();
    let people = sheet_people(&html);
    assert_eq!(
        people,
        vec![(obama, 4, format!("Person {obama}"), 3), (biden, 3, "Joe &lt;Biden&gt;".to_string(), 3)],
        "biggest first, the name escaped, at most --faces faces each"
    );
    assert!(!html.contains("<script"), "no scripts");
    let ledger = std::fs::read_to_string(sheet_dir.join(".facedb-output")).unwrap();
    assert!(ledger.lines().any(|l| l.starts_with("file ") && l.ends_with(" people.html")), "{ledger}");
    // Written again after a change; a page the user wrote is never overwritten.
    facedb().args(["people", "merge", &obama.to_string(), &biden.to_string()]).current_dir(dir).assert().success();
    facedb().args(["people", "sheet"]).current_dir(dir).assert().success();
    let people = sheet_people(&std::fs::read_to_string(sheet_dir.join("people.html")).unwrap());
    assert_eq!((people.len(), people[0].1, people[0].3), (1, 7, 6), "{people:?}");
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("people.html"), "my notes").unwrap();
    let refused = facedb().args(["people", "sheet", "--out"]).arg(&mine).current_dir(dir).assert().code(2);
    assert!(String::from_utf8_lossy(&refused.get_output().stderr).contains("facedb did not write"), "{refused:?}");
    assert_eq!(std::fs::read_to_string(mine.join("people.html")).unwrap(), "my notes");
}

#[test]
fn a_merge_keeps_what_any_shard_forgot_and_a_copy_in_another_shard_does_not_bring_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, dbs) = (tmp.path().join("photos"), tmp.path().join("dbs"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dbs).unwrap();
    add_photos(&dir, &["obama.jpg", "obama2.jpg", "biden.jpg"]);
    // A copy of obama.jpg under a name that falls in the other shard of two.
    let home = facedb::pipeline::shard::shard_of("obama.jpg", 2);
    let copy = (0..100).map(|i| format!("copy{i}.jpg")).find(|n| facedb::pipeline::shard::shard_of(n, 2) != home).unwrap();
    std::fs::copy(photo("obama.jpg"), dir.join(&copy)).unwrap();
    backdate(&dir.join(&copy));
    let shard_db = |k: u32| dbs.join(format!("shard-{k}.sqlite"));
    for k in 0..2 {
        facedb().arg("--db").arg(shard_db(k)).args(["index", "-q", "--shard", &format!("{k}/2")]).arg(&dir).assert().success();
    }
    let faces_of = |db: &Path, file: &str| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM faces fc JOIN files f ON f.image_id = fc.image_id WHERE f.path = ?1", [file], |r| r.get(0))
            .unwrap()
    };
    let (home_db, other_db) = (shard_db(home), shard_db(1 - home));
    assert_eq!(faces_of(&other_db, &copy), 1, "the other shard holds the copy's face");
    // Merged once before anything is forgotten: the target holds the face too.
    let target = dbs.join("merged.sqlite");
    facedb().arg("--db").arg(&target).arg("merge").arg(&other_db).assert().success();
    assert_eq!(faces_of(&target, &copy), 1);
    // Forget the photo in its home shard, and Biden's face wherever it is.
    facedb().arg("--db").arg(&home_db).arg("forget").arg(dir.join("obama.jpg")).arg("--dir").arg(&dir).assert().success();
    let biden_db = if faces_of(&home_db, "biden.jpg") == 1 { &home_db } else { &other_db };
    let biden_face: i64 = rusqlite::Connection::open(biden_db)
        .unwrap()
        .query_row("SELECT fc.id FROM faces fc JOIN files f ON f.image_id = fc.image_id WHERE f.path = 'biden.jpg'", [], |r| r.get(0))
        .unwrap();
    facedb().arg("--db").arg(biden_db).arg("forget").arg(biden_face.to_string()).arg("--dir").arg(&dir).assert().success();

    let out = facedb().arg("--db").arg(&target).args(["--json", "merge"]).arg(&home_db).arg(&other_db).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    for file in ["obama.jpg", copy.as_str(), "biden.jpg"] {
        assert_eq!(faces_of(&target, file), 0, "{file} stays forgotten after the merge: {v}");
    }
    assert_eq!(faces_of(&target, "obama2.jpg"), 1, "other photos are kept");
    let conn = rusqlite::Connection::open(&target).unwrap();
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM forgotten"), 2, "both requests travel, once each");
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM embeddings e LEFT JOIN faces fc ON fc.id = e.face_id WHERE fc.id IS NULL"), 0);
    // Merging again changes nothing, and index of the merged folder stores none of them again.
    facedb().arg("--db").arg(&target).arg("merge").arg(&home_db).arg(&other_db).assert().success();
    assert_eq!(query_i64(&rusqlite::Connection::open(&target).unwrap(), "SELECT count(*) FROM forgotten"), 2);
    facedb().arg("--db").arg(&target).args(["index", "--retry-failed"]).arg(&dir).assert().success();
    for file in ["obama.jpg", copy.as_str(), "biden.jpg"] {
        assert_eq!(faces_of(&target, file), 0, "{file}");
    }
}
