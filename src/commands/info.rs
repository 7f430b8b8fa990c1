//! `facedb info PHOTO|FACE_ID`: everything stored about one photo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use super::{find_dataset, open_database, outln, Globals};
use crate::cli::InfoArgs;
use crate::db::read::{self, ImageInfo};
use crate::db::DB_FILE;
use crate::pipeline::hash;
use crate::util::display_str;

pub fn run(globals: &Globals, args: InfoArgs) -> Result<ExitCode> {
    let as_path = PathBuf::from(&args.target);
    let root = match &args.dir {
        Some(d) => find_dataset(globals, Some(d))?,
        None => dataset_holding(&as_path).map_or_else(|| find_dataset(globals, None), Ok)?,
    };
    let db = open_database(globals, &root, false)?;
    let conn = &db.conn;
    let image_id = resolve(conn, &root, &args.target)?;
    let Some(image_id) = image_id else {
        // An unreadable file has logs but no image.
        let logs = read::logs_for_path(conn, &args.target)?;
        if logs.is_empty() {
            bail!("{} is not in the database of {}; run `facedb index {}` first", args.target, root.display(), root.display());
        }
        for l in logs {
            outln!("{}  run {} ({})  {:5}  {}", l.at, l.run_id, l.command, l.level, display_str(&l.message));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let info = read::image_info(conn, image_id)?;
    if globals.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    print(&info)?;
    Ok(ExitCode::SUCCESS)
}

/// The image a target names: a photo file (by its path in the dataset, else by its content), a
/// face id, or a stored relative path.
fn resolve(conn: &Connection, root: &Path, target: &str) -> Result<Option<i64>> {
    let as_path = PathBuf::from(target);
    if as_path.is_file() {
        let canonical = as_path.canonicalize()?;
        let by_path = canonical
            .strip_prefix(root)
            .ok()
            .and_then(|rel| rel.to_str())
            .map(|rel| read::image_id_for_path(conn, rel))
            .transpose()?
            .flatten();
        match by_path {
            Some(id) => Ok(Some(id)),
            None => {
                let bytes = std::fs::read(&as_path).with_context(|| format!("reading {}", as_path.display()))?;
                read::image_id_for_hash(conn, &hash::content_hash(&bytes))
            }
        }
    } else if let Ok(face_id) = target.parse::<i64>() {
        read::image_id_for_face(conn, face_id)
    } else {
        read::image_id_for_path(conn, target)
    }
}

/// The human-readable listing of one image.
fn print(info: &ImageInfo) -> Result<()> {
    outln!("image {}  blake3 {}", info.image_id, info.blake3);
    for p in &info.paths {
        outln!("  path {}", display_str(p));
    }
    let dims = match (info.width, info.height) {
        (Some(w), Some(h)) => format!("{w}x{h}"),
        _ => "?".into(),
    };
    outln!(
        "  {} bytes, {} {}, EXIF orientation {}, status {}{}",
        info.size_bytes,
        info.format.as_deref().unwrap_or("?"),
        dims,
        info.orientation.map_or("?".into(), |o| o.to_string()),
        info.status,
        info.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    );
    if info.rotation != 0 {
        outln!("  turned {}° clockwise by facedb: its faces are the right way up that way, and no orientation tag said so", info.rotation);
    }
    outln!("  indexed {}", info.indexed_at);
    if let Some(decoder) = &info.jpeg_decoder {
        outln!("  decoded by {decoder}");
    }
    outln!("\nfaces ({}):", info.faces.len());
    for f in &info.faces {
        let [x, y, w, h] = f.box_xywh;
        outln!(
            "  face {} (#{}): box {x:.0},{y:.0} {w:.0}x{h:.0}  score {:.3}  size {:.0} px  sharpness {:.0}  yaw {:.0}°  roll {:.0}°  brightness {:.0}{}",
            f.face_id,
            f.idx,
            f.score,
            f.size_px,
            f.sharpness,
            f.yaw,
            f.roll,
            f.brightness,
            if f.embedded { "" } else { "  (not embedded)" }
        );
        outln!("    landmarks {}", f.landmarks);
    }
    outln!("\nlog ({} lines, oldest first):", info.logs.len());
    for l in &info.logs {
        outln!(
            "  {}  run {} ({})  {:5}  {}{}",
            l.at,
            l.run_id,
            l.command,
            l.level,
            l.path.as_ref().map(|p| format!("{}: ", display_str(p))).unwrap_or_default(),
            display_str(&l.message)
        );
    }
    if !info.match_decisions.is_empty() {
        outln!("\nmatch decisions:");
        for m in &info.match_decisions {
            outln!(
                "  run {} ({}): face {} {} distance {}{}{}",
                m.run_id,
                m.at,
                m.face_id,
                m.decision,
                m.distance.map_or("—".into(), |d| format!("{d:.3}")),
                m.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
                m.crop_path.as_ref().map(|c| format!(" -> {c}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The nearest ancestor of a photo's folder that holds a facedb database.
pub(crate) fn dataset_holding(photo: &Path) -> Option<PathBuf> {
    let canonical = photo.canonicalize().ok()?;
    canonical.parent()?.ancestors().find(|a| a.join(DB_FILE).is_file()).map(Path::to_path_buf)
}
