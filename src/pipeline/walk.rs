//! Finding the photos under a dataset directory, with their stat data for the cache.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use walkdir::WalkDir;

/// File extensions that are treated as photos (case-insensitive). Formats this build cannot
/// decode (HEIC) are still listed so they are reported as failures, never silently skipped.
pub const PHOTO_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "hif", "avif"];
/// Marker file facedb writes into every crop output folder, so indexing never picks crops up.
pub const OUTPUT_MARKER: &str = ".facedb-output";
/// Names at the dataset root that belong to facedb itself.
pub const OWN_FILES: &[&str] = &["facedb.sqlite", "facedb.sqlite-wal", "facedb.sqlite-shm", "facedb.sqlite-journal", "facedb.lock"];

#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Path relative to the dataset root, '/'-separated (lossy UTF-8 for display and keys).
    pub rel: String,
    /// The exact bytes of `rel` when the name is not valid UTF-8.
    pub raw: Option<Vec<u8>>,
    pub abs: PathBuf,
    pub stat: Stat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl Stat {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self { size: meta.len(), mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()), inode: meta.ino() }
    }
}

/// A path the walk could not look at (permissions, loops); recorded, never fatal.
#[derive(Debug, Clone)]
pub struct WalkProblem {
    pub rel: String,
    pub error: String,
}

pub fn is_photo(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| PHOTO_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(e)))
}

/// Lists photos under `root`, sorted by path. Symlinks to files are followed; symlinked
/// directories are not (they can loop or leave the dataset). Hidden entries are skipped.
pub fn walk(root: &Path) -> (Vec<FileEntry>, Vec<WalkProblem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let walker = WalkDir::new(root).follow_links(false).sort_by_file_name().into_iter().filter_entry(|e| {
        if e.depth() == 0 {
            return true;
        }
        let name = e.file_name().as_bytes();
        if name.starts_with(b".") {
            return false;
        }
        if e.file_type().is_dir() && e.path().join(OUTPUT_MARKER).exists() {
            return false;
        }
        !(e.depth() == 1 && OWN_FILES.iter().any(|own| own.as_bytes() == name))
    });
    let mut candidates = Vec::new();
    for entry in walker {
        match entry {
            Ok(e) if !e.file_type().is_dir() && is_photo(e.path()) => candidates.push(e.into_path()),
            Ok(_) => {}
            Err(err) => {
                let rel = err.path().map(|p| relative(root, p).0).unwrap_or_default();
                problems.push(WalkProblem { rel, error: err.to_string() });
            }
        }
    }
    // stat dominates a no-op re-index of a big folder; the calls are independent, so spread them
    // over all cores. metadata() follows a symlink to its target.
    let stats: Vec<std::io::Result<std::fs::Metadata>> = candidates.par_iter().map(std::fs::metadata).collect();
    for (path, meta) in candidates.into_iter().zip(stats) {
        match meta {
            Ok(m) if m.is_file() => {
                let (rel, raw) = relative(root, &path);
                files.push(FileEntry { rel, raw, abs: path, stat: Stat::of(&m) });
            }
            Ok(_) => {}
            Err(err) => problems.push(WalkProblem { rel: relative(root, &path).0, error: format!("cannot stat: {err}") }),
        }
    }
    (files, problems)
}

fn relative(root: &Path, path: &Path) -> (String, Option<Vec<u8>>) {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let bytes = rel.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(bytes.to_vec())),
    }
}

/// The on-disk path for a stored relative path (exact bytes when the name was not UTF-8).
pub fn resolve(root: &Path, rel: &str, raw: Option<&[u8]>) -> PathBuf {
    match raw {
        Some(bytes) => root.join(std::ffi::OsStr::from_bytes(bytes)),
        None => root.join(rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_photos_and_skips_own_files_outputs_and_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for p in ["a.jpg", "sub/b.PNG", "notes.txt", "facedb.sqlite", ".hidden/c.jpg", "crops/d.jpg", "sub/e.heic"] {
            let path = r.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        std::fs::write(r.join("crops").join(OUTPUT_MARKER), b"").unwrap();
        let (files, problems) = walk(r);
        let names: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(names, vec!["a.jpg", "sub/b.PNG", "sub/e.heic"]);
        assert!(problems.is_empty());
    }

    #[test]
    fn non_utf8_names_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
        std::fs::write(dir.path().join(name), b"x").unwrap();
        let (files, _) = walk(dir.path());
        assert_eq!(files.len(), 1);
        let raw = files[0].raw.as_deref().unwrap();
        assert_eq!(resolve(dir.path(), &files[0].rel, Some(raw)), dir.path().join(name));
    }
}
