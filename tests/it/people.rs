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
}
