//! `facedb report`: totals, photos with zero or several faces, and failed files.

use std::process::ExitCode;

use anyhow::Result;

use super::{database_path, find_dataset, Globals};
use crate::cli::ReportArgs;
use crate::db::{read, Db};

pub fn run(globals: &Globals, args: ReportArgs) -> Result<ExitCode> {
    let root = find_dataset(args.dir.as_deref())?;
    let db = Db::open_read_only(&database_path(globals, &root))?;
    let conn = &db.conn;
    let t = read::totals(conn)?;
    println!("dataset {}", root.display());
    println!(
        "  files {}  images {} ({} decoded)  faces {}",
        t.files, t.images, t.images_ok, t.faces
    );
    println!(
        "  photos with no face {}  with several faces {}  failed files {}",
        t.no_face, t.several_faces, t.failed
    );

    let none = read::photos_by_face_count(conn, false)?;
    println!("\nphotos with no face ({}):", none.len());
    for (path, _) in &none {
        println!("  {path}");
    }
    let several = read::photos_by_face_count(conn, true)?;
    println!("\nphotos with several faces ({}):", several.len());
    for (path, n) in &several {
        println!("  {path}  ({n} faces)");
    }
    let failed = read::failed_files(conn)?;
    println!("\nfailed files ({}):", failed.len());
    for (path, error) in &failed {
        println!("  {path}: {error}");
    }
    Ok(ExitCode::SUCCESS)
}
