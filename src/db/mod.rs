//! The SQLite database: opening, migrations, and every SQL statement facedb runs.
//! `write` holds the single writer's statements, `read` the queries behind match and report.

pub mod best;
pub mod decisions;
pub mod export;
pub mod forget;
pub mod ids;
pub mod merge;
pub mod people;
pub mod read;
pub mod review;
pub mod rows;
pub mod states;
pub mod vectors;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::pipeline::shard::Shard;
pub use ids::{FaceId, ImageId, ModelId, RunId};
pub use states::{DecisionKind, LogLevel, RunStatus};

/// Database file name inside the dataset directory.
pub const DB_FILE: &str = "facedb.sqlite";

/// Append-only migrations, applied in order; `PRAGMA user_version` is the count applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    ("0002_vector_cache", include_str!("../../migrations/0002_vector_cache.sql")),
    ("0003_cache_state", include_str!("../../migrations/0003_cache_state.sql")),
    ("0004_trust_input", include_str!("../../migrations/0004_trust_input.sql")),
    ("0005_identity", include_str!("../../migrations/0005_identity.sql")),
    ("0006_decisions", include_str!("../../migrations/0006_decisions.sql")),
    ("0007_best", include_str!("../../migrations/0007_best.sql")),
    ("0008_review", include_str!("../../migrations/0008_review.sql")),
    ("0009_people", include_str!("../../migrations/0009_people.sql")),
    ("0010_xmp_sidecars", include_str!("../../migrations/0010_xmp_sidecars.sql")),
    ("0011_people_waiting", include_str!("../../migrations/0011_people_waiting.sql")),
    ("0012_vector_log", include_str!("../../migrations/0012_vector_log.sql")),
    ("0013_vector_log_triggers", include_str!("../../migrations/0013_vector_log_triggers.sql")),
    ("0014_files_ctime", include_str!("../../migrations/0014_files_ctime.sql")),
];

/// `PRAGMA application_id` of a facedb database ("fdb1"), set by migration 0005.
pub const APPLICATION_ID: i64 = 0x6664_6231;

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The embedder as the database sees it: its `models` row and the width of its vectors, which
/// the model defines (a stored vector of another width is not one of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedder {
    pub id: ModelId,
    pub dim: usize,
}

pub fn db_path(dataset: &Path) -> PathBuf {
    dataset.join(DB_FILE)
}

pub struct Db {
    pub conn: Connection,
}

impl Db {
    /// Opens (creating if needed) and migrates the database for writing.
    pub fn open(path: &Path) -> Result<Self> {
        refuse_non_regular(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        check_is_facedb(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("cannot write the database {}; is the folder writable?", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Self { conn };
        db.migrate().with_context(|| format!("migrating {}", path.display()))?;
        // Where it cannot repair, `match` says so and rebuilds the vector cache every time.
        if let Ok(Some(warning)) = vectors::repair_log(&db.conn) {
            eprintln!("warning: {}: {warning}", path.display());
        }
        Ok(db)
    }

    /// A new, migrated database in memory, for tests of the SQL itself.
    #[cfg(test)]
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Self { conn };
        db.migrate()?;
        Ok(db)
    }

    /// Opens an existing database without writing to it or beside it. In a folder the user may
    /// not write (a mounted archive, a read-only share) SQLite cannot create the `-shm` file a
    /// WAL database needs to be read; then the file is opened as immutable, which is exact as long
    /// as no write-ahead log is pending (facedb folds it back at the end of every index).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("no database at {}; run `facedb index DIR` first", path.display());
        }
        refuse_non_regular_sidecars(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(path, flags).and_then(|c| probe(&c).map(|()| c)) {
            Ok(conn) => conn,
            Err(first) => {
                let wal = sidecar(path, "-wal");
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(first).with_context(|| {
                        format!(
                            "cannot read {} ({} holds changes not yet folded in); make the folder writable, or copy the database with its -wal file elsewhere",
                            path.display(),
                            wal.display()
                        )
                    });
                }
                Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
                    .and_then(|c| probe(&c).map(|()| c))
                    .with_context(|| format!("cannot open database {}", path.display()))?
            }
        };
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "query_only", "ON")?;
        check_is_facedb(&conn, path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        check_not_newer(version, path)?;
        if version < SCHEMA_VERSION {
            bail!(
                "database {} has schema {version}, this facedb needs {SCHEMA_VERSION}; run `facedb index` once to migrate it",
                path.display()
            );
        }
        Ok(Self { conn })
    }

    /// Writes a consistent copy of the database to `dest` (a new file), without writing to or
    /// beside this one, so it works on a read-only connection.
    pub fn copy_to(&self, dest: &Path) -> Result<()> {
        // query_only would refuse the copy; the connection itself stays read-only.
        self.conn.pragma_update(None, "query_only", "OFF")?;
        let dest = dest.to_str().context("a temporary path that is not UTF-8")?;
        self.conn.execute("VACUUM INTO ?1", [dest])?;
        Ok(())
    }

    /// Checks that this database indexes `root`, remembering the folder on first use. A database
    /// inside its folder follows the folder when it is moved or renamed; one kept elsewhere
    /// (`--db`, `FACEDB_DB`) that was made for another folder gets a warning, since using it mixes
    /// two datasets. Returns the warning to show, if any.
    pub fn check_dataset(&self, root: &Path, db_file: &Path) -> Result<Option<String>> {
        let root_text = root.to_string_lossy();
        let stored: Option<String> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'dataset_root'", [], |r| r.get::<_, String>("value")).optional()?;
        let writable =
            !self.conn.is_readonly(rusqlite::MAIN_DB)? && !self.conn.pragma_query_value(None, "query_only", |r| r.get::<_, bool>(0))?;
        let inside = db_file.parent().is_some_and(|p| p == root);
        match stored {
            Some(s) if s == root_text => Ok(None),
            Some(s) if !inside => Ok(Some(format!(
                "warning: the database {} was made for the folder {s}, not {}; results mix both folders (pass --db another file to keep them apart)",
                db_file.display(),
                root.display()
            ))),
            _ if writable => {
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dataset_root', ?1)", [root_text.as_ref()])?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Checks that this database holds `shard` of its folder (`None`: the whole folder),
    /// remembering it on first use (`meta.shard`, `K/N`): a shard database indexed as another
    /// shard, or as the whole folder, would hold two parts that `merge` cannot tell apart.
    pub fn check_shard(&self, shard: Option<Shard>, db_file: &Path) -> Result<()> {
        let db = db_file.display();
        match (read::shard(&self.conn)?, shard) {
            (Some(s), Some(t)) if s == t => Ok(()),
            (Some(s), None) => bail!(
                "{db} holds shard {s} of its folder; index it with --shard {s}, or join the shards with `facedb merge --db DIR/facedb.sqlite SHARD_DB...`"
            ),
            (Some(s), Some(t)) => bail!("{db} holds shard {s}, not {t}; pass --db the database of shard {t} (a new file name starts it)"),
            (None, None) => Ok(()),
            (None, Some(t)) if read::has_files(&self.conn)? => {
                bail!("{db} already indexes the whole folder; pass --db a new file name for shard {t}")
            }
            (None, Some(t)) => write::set_shard(&self.conn, t),
        }
    }

    fn migrate(&mut self) -> Result<()> {
        // A current schema needs no write lock: taking one would wait behind a running index's
        // transactions (up to the busy timeout) before its lock could even be checked.
        let current: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        check_not_newer(version, Path::new("the database"))?;
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).with_context(|| format!("applying migration {name}"))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Reads the schema, which is where a read-only open of a WAL database fails when its `-shm`
/// cannot be created.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// `file:` URI for SQLite with every byte outside the unreserved set percent-encoded, so names
/// holding `?`, `#` or `%` still mean the file.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// A database path must be a regular file or not exist yet: `--db /dev/null` or a FIFO would
/// make SQLite (and the lock beside it) write where facedb has no business.
fn refuse_non_regular(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link; pass the database file itself with --db", path.display())
        }
        Ok(m) if !m.is_file() => bail!("{} is not a regular file; pass --db a database file (new or existing)", path.display()),
        _ => {}
    }
    refuse_non_regular_sidecars(path)
}

/// SQLite writes its -wal and -shm files through whatever stands at those names, even for a
/// reader (the -shm index).
fn refuse_non_regular_sidecars(path: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = sidecar(path, suffix);
        if let Ok(m) = std::fs::symlink_metadata(&side) {
            if !m.is_file() {
                bail!(
                    "{} is not a regular file (a link, a FIFO?): SQLite would write through it; remove it (facedb's database keeps its log there)",
                    side.display()
                );
            }
        }
    }
    Ok(())
}

/// Refuses a SQLite file that is not facedb's: a new empty file, a facedb database, or one made
/// by facedb before it set its application id (schema 1 or 2 with its tables) are accepted.
fn check_is_facedb(conn: &Connection, path: &Path) -> Result<()> {
    let not_a_database = |e: rusqlite::Error| {
        anyhow::anyhow!("{} is not a SQLite database ({e}); pass --db a new file name or a facedb database", path.display())
    };
    let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(not_a_database)?;
    if app_id == APPLICATION_ID {
        return Ok(());
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    let facedb_tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('runs', 'images', 'files', 'faces')",
        [],
        |r| r.get(0),
    )?;
    let fresh = app_id == 0 && version == 0 && tables == 0;
    let older_facedb = app_id == 0 && version >= 1 && facedb_tables == 4;
    if fresh || older_facedb {
        return Ok(());
    }
    bail!(
        "{} is a SQLite database of another program (application id {app_id}, {tables} schema objects); facedb will not add its tables to it. Pass --db a new file name or a facedb database",
        path.display()
    )
}

fn check_not_newer(version: i64, path: &Path) -> Result<()> {
    if version > SCHEMA_VERSION {
        bail!("{} has schema version {version}, newer than this facedb understands ({SCHEMA_VERSION}); upgrade facedb", path.display());
    }
    Ok(())
}

/// Whether `path` is a facedb database, checked read-only by the same rule `Db::open` applies
/// (facedb's application id, or an older facedb schema), and not merely an empty file.
pub fn is_facedb_database(path: &Path) -> bool {
    path.is_file()
        && Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).is_ok_and(|c| {
            check_is_facedb(&c, path).is_ok()
                && c.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('files', 'images')", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok_and(|n| n == 2)
        })
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Embedding vectors are stored as little-endian f32 BLOBs.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn blob_to_vector(b: &[u8]) -> Option<Vec<f32>> {
    b.len().is_multiple_of(4).then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A migrated in-memory database holding one indexed photo, for the unit tests of `read`
/// and `write`.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use crate::models::yunet::Detection;
    use crate::pipeline::embed::FaceRecord;
    use crate::pipeline::quality::Quality;
    use crate::pipeline::walk::{FileEntry, Stat};
    use crate::pipeline::{AnalyzedImage, StageTimes};

    pub const DIM: usize = 4;

    pub struct Indexed {
        pub db: Db,
        pub run: RunId,
        pub models: write::ModelIds,
        pub image: i64,
    }

    pub fn face(x: f32, size: f32) -> FaceRecord {
        let detection = Detection { x, y: 10.0, w: size, h: size, score: 0.9, landmarks: [[x + 1.0, 12.0]; 5] };
        let quality = Quality { size_px: size, sharpness: 60.0, yaw: 5.0, roll: 1.0, brightness: 120.0 };
        FaceRecord { detection, quality, embedding: None, face_hash: Some(7) }
    }

    /// `photos/a.jpg`, 200x100, two faces (40 and 80 px), indexed by one run.
    pub fn indexed() -> Result<Indexed> {
        let db = Db::open_in_memory()?;
        let conn = &db.conn;
        let detector = write::ensure_model(conn, "detector", "yunet.onnx", "d0", "{}")?;
        let embedder = write::ensure_model(conn, "embedder", "sface.onnx", "e0", "{}")?;
        let models = write::ModelIds { detector, embedder };
        let run = write::begin_run(conn, "index", "{}", None, Some(detector), Some(embedder))?;
        let img = AnalyzedImage {
            width: 200,
            height: 100,
            format: "jpeg",
            orientation: 1,
            rotation: 0,
            faces: vec![face(10.0, 40.0), face(100.0, 80.0)],
            detector_calls: 1,
            embedder_calls: 0,
            passes: Default::default(),
        };
        let image = write::insert_image(conn, run, "b3", 1234, &img, &StageTimes::default(), models)?;
        let stat = Stat { size: 1234, mtime_ns: 5, inode: 9, ctime_ns: 8 };
        let file = FileEntry { rel: "photos/a.jpg".into(), raw: None, abs: "/x/photos/a.jpg".into(), stat };
        write::upsert_file(conn, run, &file, Some(stat), 6, Some(image), None)?;
        Ok(Indexed { db, run, models, image })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_reopens_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DB_FILE);
        drop(Db::open(&p).unwrap());
        let db = Db::open(&p).unwrap();
        let v: i64 = db.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        db.conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(db);
        let err = Db::open(&p).err().unwrap();
        assert!(format!("{err:#}").contains("upgrade facedb"), "{err:#}");
    }

    #[test]
    fn refuses_other_sqlite_files_and_non_files_but_accepts_older_facedb_databases() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.sqlite");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE notes (x); INSERT INTO notes VALUES (1);").unwrap();
        let before = std::fs::read(&other).unwrap();
        let err = format!("{:#}", Db::open(&other).err().unwrap());
        assert!(err.contains("another program") && err.contains("other.sqlite"), "{err}");
        assert_eq!(std::fs::read(&other).unwrap(), before, "the other program's file is untouched");
        assert!(Db::open_read_only(&other).is_err());

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a database at all, just some text that is long enough to have a header").unwrap();
        assert!(format!("{:#}", Db::open(&text).err().unwrap()).contains("not a SQLite database"));
        assert!(format!("{:#}", Db::open(Path::new("/dev/null")).err().unwrap()).contains("not a regular file"));

        // A database made before the application id existed (schema 2, with data) migrates.
        let old = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&old).unwrap();
            for (_, sql) in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO runs (command, args_json, facedb_version, started_at) VALUES ('index', '{}', '0.1.0', 'then');",
            )
            .unwrap();
        }
        let db = Db::open(&old).unwrap();
        let app_id: i64 = db.conn.pragma_query_value(None, "application_id", |r| r.get(0)).unwrap();
        assert_eq!(app_id, APPLICATION_ID);
        let runs: i64 = db.conn.query_row("SELECT count(*) FROM runs WHERE pid IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(runs, 1, "rows survive the upgrade");
    }

    #[test]
    fn remembers_its_folder_and_warns_when_used_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let inside = a.join(DB_FILE);
        let db = Db::open(&inside).unwrap();
        assert_eq!(db.check_dataset(&a, &inside).unwrap(), None);
        assert_eq!(db.check_dataset(&a, &inside).unwrap(), None);
        // Kept elsewhere and pointed at another folder: a warning naming both.
        let elsewhere = dir.path().join("kept.sqlite");
        let db2 = Db::open(&elsewhere).unwrap();
        assert_eq!(db2.check_dataset(&a, &elsewhere).unwrap(), None);
        let warning = db2.check_dataset(&b, &elsewhere).unwrap().unwrap();
        assert!(warning.contains("kept.sqlite") && warning.contains("/a") && warning.contains("/b"), "{warning}");
        // Inside its folder, a moved folder is simply followed.
        let moved = dir.path().join("moved");
        assert_eq!(db.check_dataset(&moved, &moved.join(DB_FILE)).unwrap(), None);
    }

    #[test]
    fn reads_a_database_whose_folder_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("odd ?#% name.sqlite");
        drop(Db::open(&p).unwrap());
        assert!(immutable_uri(&p).ends_with("odd%20%3F%23%25%20name.sqlite?immutable=1"), "{}", immutable_uri(&p));
        // Opened immutably, the file is read exactly (the case where -shm cannot be created
        // needs a non-root user; tests/it/trust_db.rs covers it with the real binary).
        let conn = Connection::open_with_flags(immutable_uri(&p), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn vector_blob_roundtrip() {
        let v = [0.5f32, -1.25, 3.0];
        assert_eq!(blob_to_vector(&vector_to_blob(&v)).unwrap(), v);
        assert!(blob_to_vector(&[1, 2, 3]).is_none());
    }

    /// Adding a migration touches one place: the folder and the list must agree, name for name
    /// and byte for byte, in order.
    #[test]
    fn the_migration_list_is_the_migrations_folder() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        on_disk.sort();
        let listed: Vec<(String, String)> = MIGRATIONS.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        assert_eq!(on_disk.iter().map(|m| &m.0).collect::<Vec<_>>(), listed.iter().map(|m| &m.0).collect::<Vec<_>>());
        assert!(on_disk == listed, "a migration file differs from the copy compiled in");
        for (i, (name, _)) in MIGRATIONS.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name} is migration {}: numbers are contiguous", i + 1);
        }
    }

    /// A database left at every shipped schema version, holding data written with the oldest
    /// schema's columns, upgrades to the current one without losing a row, and every view reads.
    #[test]
    fn every_shipped_schema_version_upgrades_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        for version in 1..=MIGRATIONS.len() {
            let p = dir.path().join(format!("v{version}.sqlite"));
            {
                let conn = Connection::open(&p).unwrap();
                for (i, (_, sql)) in MIGRATIONS.iter().take(version).enumerate() {
                    conn.execute_batch(sql).unwrap();
                    conn.pragma_update(None, "user_version", i as i64 + 1).unwrap();
                }
                conn.execute_batch(
                    "INSERT INTO models (id, kind, name, file_blake3) VALUES (1, 'detector', 'yunet', 'd'), (2, 'embedder', 'sface', 'e');
                     INSERT INTO runs (id, command, args_json, facedb_version, started_at, finished_at, status)
                       VALUES (1, 'index', '{}', '0.1.0', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', 'ok');
                     INSERT INTO images (id, blake3, size_bytes, width, height, format, orientation, status, detector_id, run_id, created_at)
                       VALUES (1, 'abc', 10, 640, 480, 'jpeg', 1, 'ok', 1, 1, '2026-01-01T00:00:00Z');
                     INSERT INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run)
                       VALUES ('a.jpg', 1, 10, 1, 1, 2, 1, 1), ('copy/a.jpg', 1, 10, 1, 2, 2, 1, 1);
                     INSERT INTO faces (id, image_id, detector_id, idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness)
                       VALUES (1, 1, 1, 0, 10, 10, 100, 120, 0.9, '[[0,0],[1,0],[0,1],[0,2],[1,2]]', 100, 60, 0, 0, 120);
                     INSERT INTO embeddings (face_id, model_id, vector) VALUES (1, 2, zeroblob(512));",
                )
                .unwrap();
            }
            let db = Db::open(&p).unwrap_or_else(|e| panic!("schema {version} does not upgrade: {e:#}"));
            let v: i64 = db.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(v, SCHEMA_VERSION, "from schema {version}");
            for (table, rows) in [("images", 1), ("files", 2), ("faces", 1), ("embeddings", 1), ("runs", 1), ("models", 2)] {
                let n: i64 = db.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap();
                assert_eq!(n, rows, "{table} after upgrading from schema {version}");
            }
            let views: Vec<String> = {
                let mut st = db.conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'view'").unwrap();
                st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
            };
            for view in views {
                db.conn.prepare(&format!("SELECT * FROM \"{view}\"")).unwrap().query([]).unwrap().next().unwrap();
            }
        }
    }
}
