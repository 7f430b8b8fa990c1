//! `facedb sql`: one statement, read-only unless `--write`, printed as a table, CSV or JSON.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use rusqlite::types::ValueRef;

use super::{find_dataset, open_database, outln, Globals};
use crate::cli::{OutputFormat, SqlArgs};

pub fn run(globals: &Globals, args: SqlArgs) -> Result<ExitCode> {
    let (dir, query) = match args.args.as_slice() {
        [q] => (None, q.as_str()),
        [d, q] => (Some(Path::new(d.as_str())), q.as_str()),
        _ => return Err(anyhow!("usage: facedb sql [DIR] QUERY")),
    };
    let root = find_dataset(globals, dir)?;
    let db = open_database(globals, &root, args.write)?;
    let sql_error = |e: rusqlite::Error| {
        let msg = e.to_string();
        if msg.contains("readonly") || msg.contains("read-only") {
            anyhow!("SQL error: {msg} (the database is opened read-only; pass --write to change it)")
        } else {
            anyhow!("SQL error: {}", msg.replace('\n', " "))
        }
    };
    let mut stmt = db.conn.prepare(query).map_err(sql_error)?;
    // Refused before it runs: SQLite creates the target of `VACUUM INTO` before noticing that
    // the connection is read-only, which would leave an empty file behind.
    if !args.write && !stmt.readonly() {
        return Err(anyhow!("the database is opened read-only and this statement changes it (or writes a file); pass --write to run it"));
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut rows: Vec<Vec<serde_json::Value>> = Vec::new();
    let mut cursor = stmt.query([]).map_err(sql_error)?;
    while let Some(r) = cursor.next().map_err(sql_error)? {
        rows.push((0..columns.len()).map(|i| r.get_ref(i).map(json_value).unwrap_or(serde_json::Value::Null)).collect());
    }
    let changed = db.conn.changes();
    let format = if globals.json { OutputFormat::Json } else { args.format };
    match format {
        OutputFormat::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(table_cell).collect()).collect();
            {
                use std::io::Write as _;
                write!(std::io::stdout().lock(), "{}", render_table(&columns, &cells))?
            };
            if args.write && columns.is_empty() {
                outln!("({changed} row(s) changed)");
            }
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout().lock());
            w.write_record(&columns)?;
            for r in &rows {
                w.write_record(r.iter().map(csv_cell))?;
            }
            w.flush()?;
        }
        OutputFormat::Json => {
            let objects: Vec<serde_json::Map<String, serde_json::Value>> =
                rows.into_iter().map(|r| columns.iter().cloned().zip(r).collect()).collect();
            outln!("{}", serde_json::to_string_pretty(&objects)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json_value(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => format!("<blob {} bytes>", b.len()).into(),
    }
}

fn csv_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let s = format!("{f:.4}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        // Control characters (a hostile file name's ESC sequences) are escaped on the terminal.
        serde_json::Value::String(s) => crate::util::display_str(&s.replace(['\n', '\t'], " ")),
        other => other.to_string(),
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
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = String::new();
    if !columns.is_empty() {
        out += &line(columns);
        out += &(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n");
    }
    for r in rows {
        out += &line(r);
    }
    if !columns.is_empty() {
        out += &format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_aligned() {
        let t = super::render_table(&["a".into(), "long".into()], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    long\n---  ----\nxyz  1\n(1 row)\n");
    }
}
