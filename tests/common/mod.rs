//! Shared helpers for integration tests: real photos, real models, the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assert_cmd::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The public-domain test portraits fetched by scripts/setup.sh (run by scripts/test.sh).
pub fn photo(name: &str) -> PathBuf {
    let p = repo().join("tests/data/photos").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does this first)",
        p.display()
    );
    p
}

pub const ALL_PHOTOS: [&str; 7] = [
    "32bit.png",
    "biden.jpg",
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
];

pub fn facedb() -> Command {
    let mut c = Command::cargo_bin("facedb").expect("binary built");
    c.env_remove("FACEDB_MODELS")
        .env_remove("FACEDB_DB")
        .env("NO_COLOR", "1");
    c
}

/// Copies photos into `dir` and backdates them, as photos in a real library are: files modified
/// moments before indexing are re-hashed on the next run by design (racy-timestamp rule).
pub fn add_photos(dir: &Path, names: &[&str]) {
    for n in names {
        let dest = dir.join(n);
        std::fs::copy(photo(n), &dest).unwrap();
        backdate(&dest);
    }
}

pub fn backdate(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(old).unwrap();
}

pub fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("facedb.sqlite")).unwrap()
}

pub fn query_i64(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows of a manifest.csv as (header -> value) maps.
pub fn manifest(out: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut rdr = csv::Reader::from_path(out.join("manifest.csv")).unwrap();
    let headers = rdr.headers().unwrap().clone();
    rdr.records()
        .map(|r| {
            headers
                .iter()
                .zip(r.unwrap().iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}
