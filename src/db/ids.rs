//! Row ids as types: a run id cannot be passed where a face id is wanted, and a function's
//! signature says which table its id points into. Stored as plain integers (`ToSql`/`FromSql`),
//! written as plain numbers in JSON and text.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A row of `runs`: one command invocation.
    RunId
);
id_type!(
    /// A row of `images`: one distinct content (by blake3), whatever its paths.
    ImageId
);
id_type!(
    /// A row of `faces`: one detection in one image.
    FaceId
);
id_type!(
    /// A row of `models`: one detector or embedder file (with its parameters).
    ModelId
);

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn ids_are_stored_and_read_as_integers() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER)").unwrap();
        conn.execute("INSERT INTO t (id) VALUES (?1)", [FaceId(42)]).unwrap();
        let raw: i64 = conn.query_row("SELECT id FROM t", [], |r| r.get(0)).unwrap();
        let typed: FaceId = conn.query_row("SELECT id FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!((raw, typed), (42, FaceId(42)));
        assert_eq!((FaceId(7).to_string(), serde_json::to_string(&RunId(7)).unwrap()), ("7".to_string(), "7".to_string()));
        assert!(conn.query_row("SELECT 'x'", [], |r| r.get::<_, ImageId>(0)).is_err());
    }
}
