//! Rows mapped once, by column name: a type says how it reads itself from any query that selects
//! its columns under their names, so a column added to (or moved in) a query cannot shift the
//! others into the wrong fields.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Params, Row};

/// A type read from a row by column names (`row.get("col")`).
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> rusqlite::Result<Self>;
}

/// Every row of a query.
pub fn all<T: FromRow>(conn: &Connection, sql: &str, params: impl Params) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| T::from_row(r))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The first row of a query, if any.
pub fn one<T: FromRow>(conn: &Connection, sql: &str, params: impl Params) -> Result<Option<T>> {
    Ok(conn.prepare_cached(sql)?.query_row(params, |r| T::from_row(r)).optional()?)
}
