//! `facedb sql`: one read-only query, printed as an aligned table.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use rusqlite::types::ValueRef;

use super::{database_path, find_dataset, Globals};
use crate::cli::SqlArgs;
use crate::db::Db;

pub fn run(globals: &Globals, args: SqlArgs) -> Result<ExitCode> {
    let (dir, query) = match args.args.as_slice() {
        [q] => (None, q.as_str()),
        [d, q] => (Some(Path::new(d.as_str())), q.as_str()),
        _ => return Err(anyhow!("usage: facedb sql [DIR] QUERY")),
    };
    let root = find_dataset(dir)?;
    let db = Db::open_read_only(&database_path(globals, &root))?;
    let mut stmt = db
        .conn
        .prepare(query)
        .map_err(|e| anyhow!("SQL error: {e}"))?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut cursor = stmt.query([]).map_err(|e| anyhow!("SQL error: {e}"))?;
    while let Some(r) = cursor.next().map_err(|e| anyhow!("SQL error: {e}"))? {
        rows.push(
            (0..columns.len())
                .map(|i| r.get_ref(i).map(cell).unwrap_or_default())
                .collect(),
        );
    }
    print!("{}", render_table(&columns, &rows));
    Ok(ExitCode::SUCCESS)
}

fn cell(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).replace(['\n', '\t'], " "),
        ValueRef::Blob(b) => format!("<blob {} bytes>", b.len()),
    }
}

pub fn render_table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(columns);
    out += &(widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("  ")
        + "\n");
    for r in rows {
        out += &line(r);
    }
    out += &format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_aligned() {
        let t = super::render_table(
            &["a".into(), "long".into()],
            &[vec!["xyz".into(), "1".into()]],
        );
        assert_eq!(t, "a    long\n---  ----\nxyz  1\n(1 row)\n");
    }
}
