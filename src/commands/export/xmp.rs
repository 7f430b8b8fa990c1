//! `facedb export xmp [DIR]`: MWG face regions in .xmp sidecars beside the photos (src/xmp.rs).
//! Photos are never opened for writing; a sidecar is written only when it is new, when it still
//! holds the bytes facedb wrote there (the ledger, migration 0010), or when the user asked to
//! merge into it (--merge-existing). Always a temp file renamed into place, never through a link.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;

use crate::cli::{SidecarName, XmpArgs};
use crate::commands::index::RACY_NS;
use crate::commands::{find_dataset, open_database, outln, Globals, EXIT_FILES_FAILED};
use crate::db::export::{self, PhotoFaces, SidecarEntry};
use crate::pipeline::walk;
use crate::util::display_path;
use crate::xmp;

/// Hex digits of a sidecar's pending hash that name its temp file (`.facedb-<token>-<n>.part`).
const TEMP_TOKEN: usize = 16;

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
    let removed = remove_own_temps(&root, &ledger);
    if removed > 0 && !globals.quiet {
        eprintln!("removed {removed} temporary file(s) a stopped export left beside the photos");
    }
    let (jobs, mut failures) = plan(&root, export::photo_faces(&db.conn)?, args.sidecar_name, &ledger);
    let mut summary = Summary { command: "export xmp", ..Summary::default() };
    write_all(&db.conn, &ledger, &jobs, args.merge_existing, &mut summary, &mut failures);
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

/// Writes each job's sidecar. A folder facedb may not create files in is reported once, with
/// how many sidecars it could not write there.
fn write_all(
    conn: &Connection,
    ledger: &HashMap<String, SidecarEntry>,
    jobs: &[Job],
    merge_existing: bool,
    summary: &mut Summary,
    failures: &mut Vec<String>,
) {
    let mut unwritable: BTreeMap<&Path, (String, Vec<&Path>)> = BTreeMap::new();
    for job in jobs {
        let dir = job.dest.parent().unwrap_or(Path::new("."));
        if let Some((_, dests)) = unwritable.get_mut(dir) {
            dests.push(&job.dest);
            continue;
        }
        match write_sidecar(conn, ledger, job, merge_existing) {
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
            Err(e) => match not_writable(&e) {
                Some(io) => {
                    unwritable.insert(dir, (io, vec![&job.dest]));
                }
                None => failures.push(format!("{e:#}")),
            },
        }
    }
    for (dir, (io, dests)) in unwritable {
        let first = dests.first().and_then(|d| d.file_name()).map(|n| display_path(Path::new(n))).unwrap_or_default();
        failures.push(format!(
            "cannot create files in {} ({io}): {} sidecar(s) not written there, such as {first}; make the folder writable (chmod u+w) and export again",
            display_path(dir),
            dests.len()
        ));
    }
}

/// The OS error when `e` is a folder refusing new files (permissions, a read-only file system).
fn not_writable(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .find_map(|io| matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)).then(|| io.to_string()))
}

/// After `forget`: rewrites each sidecar facedb wrote for these photos so that it holds only the
/// faces still stored (facedb's regions of the forgotten faces go, everything else in the file
/// stays). Unlike an export, a photo changed since it was indexed is no reason to keep them. A
/// sidecar changed since facedb wrote it is not touched: it is named with the fix. Returns the
/// sidecars rewritten and one line per sidecar left holding forgotten faces.
pub fn strip_forgotten(conn: &Connection, root: &Path, image_ids: &HashSet<i64>) -> Result<(usize, Vec<String>)> {
    let ledger = export::sidecar_ledger(conn)?;
    let mut rewritten = 0;
    let mut failures = Vec::new();
    if ledger.is_empty() || image_ids.is_empty() {
        return Ok((rewritten, failures));
    }
    let photos = export::photo_faces(conn)?.into_iter().filter(|p| image_ids.contains(&p.image_id));
    for photo in photos {
        for naming in [SidecarName::Full, SidecarName::Stem] {
            let key = sidecar_key(&photo.path, naming);
            if !ledger.contains_key(&key) {
                continue;
            }
            let source = walk::resolve(root, &photo.path, photo.path_raw.as_deref());
            let dest = sidecar_path(&source, naming);
            let shown = display_path(&dest);
            if let Some(link) = source.parent().and_then(|p| crate::output::linked_folder(p, root)) {
                failures.push(format!(
                    "{shown} may still name the forgotten faces: {} is a symbolic link and facedb never writes through links; remove their regions from it by hand",
                    display_path(&link)
                ));
                continue;
            }
            let job = Job { key, dest, photo: photo.clone() };
            match write_sidecar(conn, &ledger, &job, false) {
                Ok(Outcome::Updated | Outcome::Merged | Outcome::Created) => rewritten += 1,
                Ok(Outcome::Unchanged | Outcome::Skipped) => {}
                Err(e) => failures.push(format!(
                    "{shown} still holds facedb's regions of the forgotten faces ({e:#}); run `facedb export xmp {} --merge-existing` to take them out",
                    display_path(root)
                )),
            }
        }
    }
    Ok((rewritten, failures))
}

/// Removes the temp files a stopped export left beside the photos: only those it can prove are
/// its own, named after a hash the ledger records as pending (recorded before the file is made).
fn remove_own_temps(root: &Path, ledger: &HashMap<String, SidecarEntry>) -> usize {
    let mut removed = 0;
    for (key, entry) in ledger {
        let Some(pending) = entry.pending.as_deref().filter(|p| p.len() >= TEMP_TOKEN) else { continue };
        let dir = match key.rfind('/') {
            Some(i) => root.join(&key[..i]),
            None => root.to_path_buf(),
        };
        if crate::output::linked_folder(&dir, root).is_some() {
            continue;
        }
        for tmp in crate::output::temp_files_of(&dir, &pending[..TEMP_TOKEN]) {
            removed += usize::from(std::fs::remove_file(tmp).is_ok());
        }
    }
    removed
}

/// The sidecars to write: photos with faces, and photos whose sidecar facedb wrote before (their
/// regions may be gone now). Two photos that would share one sidecar are refused, and so is a
/// photo that is not the file indexed (see [`refusal`]).
fn plan(root: &Path, photos: Vec<PhotoFaces>, naming: SidecarName, ledger: &HashMap<String, SidecarEntry>) -> (Vec<Job>, Vec<String>) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    for photo in photos {
        let key = sidecar_key(&photo.path, naming);
        if photo.faces.is_empty() && !ledger.contains_key(&key) {
            continue;
        }
        let source = walk::resolve(root, &photo.path, photo.path_raw.as_deref());
        if let Some(why) = refusal(root, &source, &photo, now) {
            // One line per linked folder, however many photos are under it.
            if seen.insert(why.clone()) {
                failures.push(why);
            }
            continue;
        }
        jobs.push(Job { key, dest: sidecar_path(&source, naming), photo });
    }
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for job in &jobs {
        users.entry(&job.key).or_default().push(&job.photo.path);
    }
    let shared: HashSet<String> = users.iter().filter(|(_, p)| p.len() > 1).map(|(k, _)| k.to_string()).collect();
    let mut collisions: Vec<String> = Vec::new();
    for key in &shared {
        collisions.push(format!(
            "{}: the photos {} would share this sidecar; pass --sidecar-name full (photo.jpg.xmp)",
            display_path(&root.join(key)),
            users.get(key.as_str()).map(|p| p.join(" and ")).unwrap_or_default()
        ));
    }
    collisions.sort();
    failures.extend(collisions);
    jobs.retain(|j| !shared.contains(&j.key));
    (jobs, failures)
}

/// Why no sidecar may be written for `photo` at `source` now (`None`: it may). Its regions are
/// those of the file indexed, so the photo must still be that file (same stat data, or for a
/// stat too close to the index to prove anything, same content); and facedb never writes
/// through a link, so its folders below the dataset must not be links and it must not be one.
fn refusal(root: &Path, source: &Path, photo: &PhotoFaces, now: i64) -> Option<String> {
    let shown = display_path(source);
    let reindex = format!("run `facedb index {}` first", display_path(root));
    if let Some(link) = source.parent().and_then(|p| crate::output::linked_folder(p, root)) {
        return Some(format!(
            "{} is a symbolic link to a folder; facedb never writes through links, so photos under it get no sidecar: replace the link with the folder itself",
            display_path(&link)
        ));
    }
    let meta = match source.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(format!("{shown} is gone since it was indexed; {reindex}")),
        Err(e) => return Some(format!("cannot look at {shown}: {e}; fix its permissions")),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Some(format!(
            "{shown} is a symbolic link to a photo; facedb writes no sidecar beside a link: put the photo itself there to get one"
        ));
    }
    let was = &photo.indexed;
    let stat = walk::Stat::of(&meta);
    let same = meta.is_file()
        && stat.size as i64 == was.size
        && stat.mtime_ns == was.mtime_ns
        && stat.inode as i64 == was.inode
        && was.ctime_ns.is_none_or(|ctime| ctime == stat.ctime_ns);
    let racy = (was.mtime_ns - was.checked_ns).abs() <= RACY_NS || was.mtime_ns > now;
    let same = same && (!racy || walk::read_regular(source).is_ok_and(|b| crate::pipeline::hash::content_hash(&b) == was.blake3));
    (!same).then(|| format!("{shown} changed since it was indexed, so its stored faces may be another photo's; {reindex}"))
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
            if !ours && !merge_existing && ledger.contains_key(&job.key) {
                bail!("{shown} was changed since facedb wrote it; pass --merge-existing to update facedb's face regions in it (what was added to it, in its regions too, is kept)");
            }
            if !ours && !merge_existing {
                bail!("{shown} exists and facedb did not write it; pass --merge-existing to add facedb's face regions to it (everything in it is kept)");
            }
            // A sidecar facedb never wrote holds none of its regions to take out; one it wrote and
            // the user changed may (its photo's faces were forgotten or re-detected away).
            if !ours && regions.is_empty() && !ledger.contains_key(&job.key) {
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
    // The temp file is named after the hash just recorded, so a stopped run's is provably facedb's.
    crate::output::write_in_place_as(&job.dest, &merged.bytes, outcome != Outcome::Created, &hash[..TEMP_TOKEN])?;
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
