//! Which database a command uses: only `index` makes one; every other command refuses a folder
//! without one (creating nothing) and, given a subfolder of a dataset, uses the dataset's.

use std::path::Path;

use crate::common::*;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Every command that reads or changes an existing database, run on `dir`.
fn commands_on(dir: &Path, parquet_out: &Path, photo_arg: &str) -> Vec<Vec<String>> {
    let d = s(dir);
    let reference = s(&photo("obama2.jpg"));
    let cmds: Vec<Vec<&str>> = vec![
        vec!["people", &d],
        vec!["people", "sheet", "--dir", &d],
        vec!["export", "xmp", &d],
        vec!["export", "parquet", parquet_out.to_str().unwrap(), "--dir", &d],
        vec!["report", &d],
        vec!["info", photo_arg, "--dir", &d],
        vec!["sql", &d, "SELECT count(*) AS n FROM images"],
        vec!["match", &d, "--ref", &reference],
    ];
    cmds.into_iter().map(|c| c.into_iter().map(String::from).collect()).collect()
}

#[test]
fn commands_but_index_refuse_a_folder_without_a_database_and_use_the_dataset_around_a_subfolder() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let sub = photos.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    add_photos(&photos, &["biden.jpg"]);
    add_photos(&sub, &["obama.jpg"]);
    facedb().arg("index").arg(&photos).assert().success();

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut on_empty = commands_on(&empty, &tmp.path().join("parquet-empty"), "1");
    for extra in [
        vec!["people", "name", "1", "Anna", "--dir"],
        vec!["people", "merge", "1", "2", "--dir"],
        vec!["people", "move", "1", "1", "--dir"],
        vec!["people", "split", "1", "--dir"],
        vec!["sql", "--write", "--dir-placeholder"],
        vec!["forget", "1", "--dir"],
        vec!["reject", "1", "--dir"],
    ] {
        let mut c: Vec<String> = extra.into_iter().map(String::from).collect();
        if c.last().map(String::as_str) == Some("--dir-placeholder") {
            c.pop();
            c.extend([s(&empty), "SELECT 1".into()]);
        } else {
            c.push(s(&empty));
        }
        on_empty.push(c);
    }
    for args in &on_empty {
        let out = facedb().args(args).assert().code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        let wanted = format!("no database at {}", empty.canonicalize().unwrap().join("facedb.sqlite").display());
        assert!(err.contains(&wanted) && err.contains("run `facedb index"), "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(&empty).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?} in a folder that is no dataset");
    }
    assert!(!tmp.path().join("parquet-empty").exists(), "a refused export creates no output folder");

    // Without a folder, from a folder that is no dataset: the error names how to pass one.
    let out = facedb().args(["people", "name", "1", "Anna"]).current_dir(&empty).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("`--dir DIR` for people name"), "{err}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A subfolder of the dataset: the dataset's database, nothing created in the subfolder.
    let photo_in_sub = s(&sub.join("obama.jpg"));
    for args in commands_on(&sub, &tmp.path().join("parquet-sub"), &photo_in_sub) {
        let out = facedb().args(&args).assert().success();
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("is inside the dataset"), "{args:?} says which database it uses: {err}");
        assert!(!sub.join("facedb.sqlite").exists(), "{args:?} created a database in the subfolder");
        if args[0] == "sql" {
            let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
            assert!(stdout.lines().any(|l| l.trim() == "2"), "the dataset's two photos: {stdout}");
        }
    }
    assert!(sub.join("obama.jpg.xmp").is_file(), "export xmp of the subfolder wrote the sidecar beside its photo");
    let sources: Vec<String> = manifest(&photos.join("facedb-crops")).iter().map(|r| file_name_of(&r["source_path"])).collect();
    assert_eq!(sources, ["obama.jpg"], "match found Obama through the dataset's database");
    // The same from inside the subfolder, with no folder named.
    facedb().args(["sql", "SELECT count(*) FROM images"]).current_dir(&sub).assert().success();
    assert!(!sub.join("facedb.sqlite").exists());
}

/// The README's people block, run from the folder above photos/ exactly as written (with the
/// ids this dataset gives).
#[test]
fn the_readme_people_block_works_from_the_parent_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path();
    let photos = parent.join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]);
    facedb().args(["index", "photos/"]).current_dir(parent).assert().success();
    let run = |args: &[&str]| facedb().args(args).current_dir(parent).assert().success();
    run(&["people", "photos/"]);
    let conn = db(&photos);
    let person = query_i64(&conn, "SELECT id FROM people");
    let faces: Vec<i64> = {
        let mut stmt = conn.prepare("SELECT face_id FROM person_faces ORDER BY face_id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(faces.len(), 3, "Obama's three portraits are one person");
    let (p, f0, f1) = (person.to_string(), faces[0].to_string(), faces[1].to_string());
    run(&["people", "name", &p, "Anna", "--dir", "photos/"]);
    run(&["people", "split", &f0, &f1, "--dir", "photos/"]);
    let other = query_i64(&conn, &format!("SELECT id FROM people WHERE id != {person}"));
    run(&["people", "merge", &p, &other.to_string(), "--dir", "photos/"]);
    run(&["people", "move", &f0, &p, "--dir", "photos/"]);
    run(&["people", "sheet", "--dir", "photos/"]);
    assert!(photos.join("facedb-people/people.html").is_file());
    run(&["match", "photos/", "--person", "Anna"]);
    let out = run(&["--json", "sql", "photos/", "SELECT * FROM face_people_v WHERE name = 'Anna'"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
    // The block's subcommands without --dir, from the parent: the error names the flag.
    let out = facedb().args(["people", "name", &p, "Anna"]).current_dir(parent).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("`--dir DIR` for people name"));
}
