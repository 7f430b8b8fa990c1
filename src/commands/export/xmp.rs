//! `facedb export xmp [DIR]`: MWG face regions in .xmp sidecars beside the photos (src/xmp.rs).
//! Photos are never opened for writing; a sidecar is written only when it is new, when it still
//! holds the bytes facedb wrote there (the ledger, migration 0010), or when the user asked to
//! merge into it (--merge-existing). Always a temp file renamed into place, never through a link.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;

use crate::cli::{SidecarName, XmpArgs};
use crate::commands::{find_dataset, open_database, outln, Globals, EXIT_FILES_FAILED};
use crate::db::export::{self, PhotoFaces, SidecarEntry};
use crate::pipeline::walk;
use crate::util::display_path;
use crate::xmp;

/// A sidecar is a few KiB; anything this big is not one facedb should parse.
const MAX_SIDECAR: u64 = 16 << 20;

/// One sidecar to write: its ledger key (relative path), where it is, and the photo's faces.
struct Job {
    key: String,
    dest: PathBuf,
    photo: PhotoFaces,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Merged,
    Unchanged,
    /// Nothing to write: no faces and no sidecar of facedb's to take them out of.
    Skipped,
}

#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    command: &'static str,
    created: usize,
    updated: usize,
    merged: usize,
    unchanged: usize,
    regions: usize,
    failed: usize,
}

pub fn run(globals: &Globals, args: XmpArgs) -> Result<ExitCode> {
    let root = find_dataset(globals, args.dir.as_deref())?;
    let db = open_database(globals, &root, true)?;
    let ledger = export::sidecar_ledger(&db.conn)?;
    let (jobs, mut failures) = plan(&root, export::photo_faces(&db.conn)?, args.sidecar_name, &ledger);
    let mut summary = Summary { command: "export xmp", ..Summary::default() };
    for job in &jobs {
        match write_sidecar(&db.conn, &ledger, job, args.merge_existing) {
            Ok(outcome) => {
                match outcome {
                    Outcome::Created => summary.created += 1,
                    Outcome::Updated => summary.updated += 1,
                    Outcome::Merged => summary.merged += 1,
                    Outcome::Unchanged => summary.unchanged += 1,
                    Outcome::Skipped => continue,
                }
                summary.regions += job.photo.faces.len();
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    for failure in &failures {
        eprintln!("{failure}");
    }
    summary.failed = failures.len();
    if globals.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else if !globals.quiet {
        eprintln!(
            "{} sidecar(s) written ({} new, {} updated, {} merged into existing ones), {} unchanged, {} face region(s); {} refused or failed",
            summary.created + summary.updated + summary.merged,
            summary.created,
            summary.updated,
            summary.merged,
            summary.unchanged,
            summary.regions,
            summary.failed
        );
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FILES_FAILED) })
}

/// The sidecars to write: photos with faces, and photos whose sidecar facedb wrote before (their
/// regions may be gone now). Two photos that would share one sidecar are refused.
fn plan(root: &Path, photos: Vec<PhotoFaces>, naming: SidecarName, ledger: &HashMap<String, SidecarEntry>) -> (Vec<Job>, Vec<String>) {
    let mut jobs: Vec<Job> = Vec::new();
    for photo in photos {
        let key = sidecar_key(&photo.path, naming);
        if photo.faces.is_empty() && !ledger.contains_key(&key) {
            continue;
        }
        let source = walk::resolve(root, &photo.path, photo.path_raw.as_deref());
        if !source.symlink_metadata().is_ok_and(|m| m.is_file()) {
            continue; // gone since the last index; `facedb index` will say so
        }
        jobs.push(Job { key, dest: sidecar_path(&source, naming), photo });
    }
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for job in &jobs {
        users.entry(&job.key).or_default().push(&job.photo.path);
    }
    let shared: HashSet<String> = users.iter().filter(|(_, p)| p.len() > 1).map(|(k, _)| k.to_string()).collect();
    let mut failures: Vec<String> = Vec::new();
    for key in &shared {
        failures.push(format!(
            "{key}: the photos {} would share this sidecar; pass --sidecar-name full (photo.jpg.xmp)",
            users.get(key.as_str()).map(|p| p.join(" and ")).unwrap_or_default()
        ));
    }
    failures.sort();
    jobs.retain(|j| !shared.contains(&j.key));
    (jobs, failures)
}

/// The sidecar's path relative to the dataset (its key in the ledger).
fn sidecar_key(photo: &str, naming: SidecarName) -> String {
    let leaf_start = photo.rfind('/').map_or(0, |i| i + 1);
    match (naming, photo[leaf_start..].rfind('.')) {
        (SidecarName::Stem, Some(dot)) if dot > 0 => format!("{}.xmp", &photo[..leaf_start + dot]),
        _ => format!("{photo}.xmp"),
    }
}

fn sidecar_path(photo: &Path, naming: SidecarName) -> PathBuf {
    match naming {
        SidecarName::Stem if photo.extension().is_some() => photo.with_extension("xmp"),
        _ => {
            let mut name = OsString::from(photo.as_os_str());
            name.push(".xmp");
            PathBuf::from(name)
        }
    }
}

/// Writes one sidecar when facedb may, and records it in the ledger.
fn write_sidecar(conn: &Connection, ledger: &HashMap<String, SidecarEntry>, job: &Job, merge_existing: bool) -> Result<Outcome> {
    let (dims, regions) = xmp::regions_of(&job.photo);
    let shown = display_path(&job.dest);
    let (merged, outcome) = match read_existing(&job.dest)? {
        None if regions.is_empty() => return Ok(Outcome::Skipped),
        None => (xmp::new_sidecar(dims, &regions), Outcome::Created),
        Some((bytes, hash)) => {
            let ours = ledger.get(&job.key).is_some_and(|e| e.wrote(&hash));
            if !ours && !merge_existing {
                bail!("{shown} exists and facedb did not write it; pass --merge-existing to add facedb's face regions to it (everything in it is kept)");
            }
            if !ours && regions.is_empty() {
                return Ok(Outcome::Skipped);
            }
            let merged =
                xmp::merge(&bytes, dims, &regions).map_err(|e| anyhow!("cannot merge into {shown}: {e}; fix it or move it away"))?;
            if merged.bytes == bytes {
                // Adopted (equal to what facedb writes) or settled (a killed run's pending hash).
                if ledger.get(&job.key).is_none_or(|e| e.blake3 != hash) {
                    record(conn, job, &hash, regions.len())?;
                }
                return Ok(Outcome::Unchanged);
            }
            (Ok(merged), if ours { Outcome::Updated } else { Outcome::Merged })
        }
    };
    let merged = merged.map_err(|e| anyhow!("cannot write {shown}: {e}"))?;
    let hash = blake3::hash(&merged.bytes).to_hex().to_string();
    // Recorded as pending first: killed after the rename, the next run still knows the file.
    export::sidecar_pending(conn, &job.key, &hash)?;
    crate::output::write_in_place(&job.dest, &merged.bytes, outcome != Outcome::Created)?;
    export::sidecar_written(conn, &job.key, &hash, regions.len())?;
    Ok(outcome)
}

fn record(conn: &Connection, job: &Job, hash: &str, regions: usize) -> Result<()> {
    export::sidecar_pending(conn, &job.key, hash)?;
    export::sidecar_written(conn, &job.key, hash, regions)
}

/// The bytes and blake3 of an existing sidecar (`None` when there is none); a link or anything
/// but a regular file is refused.
fn read_existing(dest: &Path) -> Result<Option<(Vec<u8>, String)>> {
    let shown = display_path(dest);
    match dest.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot look at {shown}: {e}"),
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{shown} is a symbolic link; facedb never writes through links: put the file itself there, or remove the link")
        }
        Ok(m) if !m.is_file() => bail!("{shown} is not a regular file; move it away"),
        Ok(m) if m.len() > MAX_SIDECAR => bail!("{shown} is over 16 MiB, too big for a sidecar; move it away"),
        Ok(_) => {}
    }
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dest)
        .and_then(|f| f.take(MAX_SIDECAR).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {shown}"))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    Ok(Some((bytes, hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_are_named_like_digikam_or_lightroom() {
        assert_eq!(sidecar_key("a/IMG_1.JPG", SidecarName::Full), "a/IMG_1.JPG.xmp");
        assert_eq!(sidecar_key("a/IMG_1.JPG", SidecarName::Stem), "a/IMG_1.xmp");
        assert_eq!(sidecar_key("a.b/photo", SidecarName::Stem), "a.b/photo.xmp");
        assert_eq!(sidecar_key(".hidden", SidecarName::Stem), ".hidden.xmp");
        assert_eq!(sidecar_path(Path::new("/d/x.y.jpg"), SidecarName::Stem), Path::new("/d/x.y.xmp"));
        assert_eq!(sidecar_path(Path::new("/d/x.jpg"), SidecarName::Full), Path::new("/d/x.jpg.xmp"));
    }
}
