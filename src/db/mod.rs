//! The SQLite database: opening, migrations, and every SQL statement facedb runs.
//! `write` holds the single writer's statements, `read` the queries behind match and report.

pub mod read;
pub mod vectors;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

/// Database file name inside the dataset directory.
pub const DB_FILE: &str = "facedb.sqlite";

/// Append-only migrations, applied in order; `PRAGMA user_version` is the count applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    ("0002_vector_cache", include_str!("../../migrations/0002_vector_cache.sql")),
    ("0004_trust_input", include_str!("../../migrations/0004_trust_input.sql")),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn db_path(dataset: &Path) -> PathBuf {
    dataset.join(DB_FILE)
}

pub struct Db {
    pub conn: Connection,
}

impl Db {
    /// Opens (creating if needed) and migrates the database for writing.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("cannot write the database {}; is the folder writable?", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Self { conn };
        db.migrate().with_context(|| format!("migrating {}", path.display()))?;
        Ok(db)
    }

    /// Opens an existing database that SQLite itself refuses to write to.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("no database at {}; run `facedb index DIR` first", path.display());
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "query_only", "ON")?;
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

    fn migrate(&mut self) -> Result<()> {
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

fn check_not_newer(version: i64, path: &Path) -> Result<()> {
    if version > SCHEMA_VERSION {
        bail!("{} has schema version {version}, newer than this facedb understands ({SCHEMA_VERSION}); upgrade facedb", path.display());
    }
    Ok(())
}

/// Whether `path` is a facedb database (a SQLite file with facedb's tables), checked read-only.
pub fn is_facedb_database(path: &Path) -> bool {
    path.is_file()
        && Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('files', 'images')", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n == 2)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Embedding vectors are stored as little-endian f32 BLOBs.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn blob_to_vector(b: &[u8]) -> Option<Vec<f32>> {
    (b.len() % 4 == 0).then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
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
    fn vector_blob_roundtrip() {
        let v = [0.5f32, -1.25, 3.0];
        assert_eq!(blob_to_vector(&vector_to_blob(&v)).unwrap(), v);
        assert!(blob_to_vector(&[1, 2, 3]).is_none());
    }
}
