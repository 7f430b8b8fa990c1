//! The output folder of `match`: the only code that writes or deletes files there.
//!
//! facedb writes or deletes a file there only if it can prove it wrote it: the ledger
//! (`.facedb-output`) lists each file with the blake3 of the bytes facedb wrote, and a name is
//! replaced or removed only while the file still has those bytes. Anything else (a user's file,
//! a link, a file changed since) is refused with one line, never touched.
//!
//! Ledger format (text, one entry a line, later lines win):
//! ```text
//! # facedb writes crops here; `facedb index` skips this folder. ...
//! # facedb-ledger 2 {"database_id":"…","dataset":"/photos"}
//! file <blake3> <name>        a file facedb wrote, with the hash of its bytes
//! user <name>                 a crop facedb wrote that the user edited since: theirs now, kept
//! dir <name>                  a subfolder facedb created (trainer layouts; one level at most)
//! gone <name>                 facedb is removing this file of an earlier run (its absence is not the user's doing)
//! run <token>                 a run started; its temp files are `.facedb-<token>-<n>.part`
//! ```
//! A run appends `run` before creating any temp file and `file` before renaming each file into
//! place, so a run killed at any point leaves only files the next run can prove are its own:
//! that run removes the temp files and, at its end, the crops no longer in its manifest. A name
//! is facedb's while its bytes match any hash the ledger recorded for it: a run killed between
//! recording a new file and renaming it into place (or between `gone` and the removal) leaves the
//! earlier file, with its earlier hash.
//!
//! Opening a folder rewrites the ledger (verified entries, this run's `run` line) but forgets
//! nothing it cannot verify now (a file a link replaced, a folder swapped): a run refused or
//! killed after that must leave the ledger knowing what it knew. Only a run that finishes
//! rewrites it to exactly its own files.
//!
//! Curation: `file` lines before the last `run` line were written by a run that finished, so
//! their files were in place. Such a crop that is gone was deleted by the user (reported, and
//! remembered as a rejection by `match`); one whose bytes changed was edited by the user and
//! becomes theirs (`user`): never overwritten or removed. A `file` line after the last `run`
//! line may be a killed run's file that never reached its place, so it proves nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;

use crate::pipeline::walk::OUTPUT_MARKER;
use crate::util::{display_path, display_str};

const HEADER: &str = "# facedb writes crops here; `facedb index` skips this folder. Files facedb wrote (blake3 of the bytes, name):";
/// Every ledger facedb ever wrote starts with this (the version 1 header did too).
const HEADER_PREFIX: &str = "# facedb writes crops here";
const OWNER_PREFIX: &str = "# facedb-ledger 2 ";
/// A ledger is a few lines per crop; anything this big is not one.
const MAX_LEDGER: u64 = 256 << 20;

/// Which dataset writes into the folder: two datasets in one folder would replace each other's
/// manifest and remove each other's crops, so a folder belongs to one database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub database_id: String,
    pub dataset: String,
}

/// What a run may do in its output folder. Holds the folder's lock (`flock` on the folder
/// itself, so no lock file is left behind) until dropped.
pub struct OutputDir {
    path: PathBuf,
    _lock: File,
    /// Files facedb wrote earlier that still hold exactly the bytes it wrote (checked at open).
    owned: BTreeMap<String, String>,
    /// Files written by this run, with their hashes.
    written: Mutex<BTreeMap<String, String>>,
    /// What the user did to files facedb wrote (see the module comment).
    curation: Curation,
    /// Ledger entries not verifiable now, kept until the run finishes (see [`Unverified`]).
    unverified: Unverified,
    /// Subfolders facedb created, opened without following links (names go through them).
    dirs: Mutex<BTreeMap<String, File>>,
    /// The ledger open for appending; the first failed append's message once one failed.
    journal: Mutex<std::result::Result<File, String>>,
    token: String,
    next_tmp: AtomicU64,
    owner: Owner,
    /// How the user named the folder (`--out`, `OUT`), for messages.
    arg: &'static str,
}

/// Crops and captions (the files a user curates) that the user deleted or edited since facedb
/// wrote them. Other files facedb writes (manifests) are only ever replaced or refused.
#[derive(Debug, Default, Clone)]
pub struct Curation {
    /// Names (relative to the output folder) of files facedb wrote that are gone.
    pub deleted: BTreeSet<String>,
    /// Names of files facedb wrote that the user changed: kept as they are, theirs now.
    pub edited: BTreeSet<String>,
    /// Names of files facedb wrote whose bytes are now elsewhere in the folder under another
    /// name (the user renamed or moved them, or renamed their subfolder): no deletion.
    pub moved: BTreeSet<String>,
}

/// Whether the user curates `name` (a crop or a caption): editing or deleting it is a choice
/// facedb keeps, where a changed manifest is refused as before.
fn is_curated(name: &str) -> bool {
    let leaf = name.rsplit('/').next().unwrap_or(name);
    crate::crop::is_crop_name(leaf) || (leaf.ends_with(".txt") && name.contains('/'))
}

/// Parsed ledger lines.
#[derive(Default)]
struct Ledger {
    /// name -> every hash recorded for it
    files: BTreeMap<String, Vec<Recorded>>,
    user: BTreeSet<String>,
    deleted: BTreeSet<String>,
    /// Names facedb was removing (`gone`): absent, they are no deletion of the user's.
    removing: BTreeSet<String>,
    dirs: BTreeSet<String>,
    tokens: BTreeSet<String>,
}

/// A hash a `file` line recorded, and whether a run that finished wrote it (see the module comment).
type Recorded = (String, bool);

/// What opening a folder found in its ledger.
#[derive(Default)]
struct Found {
    owned: BTreeMap<String, String>,
    curation: Curation,
    dirs: BTreeSet<String>,
    tokens: BTreeSet<String>,
    unverified: Unverified,
}

/// Ledger entries that could not be verified when the folder was opened (a link or another file
/// at the name, a folder that is not a real folder now): kept in the ledger until a run finishes,
/// so a run refused meanwhile forgets nothing (the user may put the file back as facedb wrote it).
#[derive(Debug, Default, Clone)]
struct Unverified {
    /// name -> the hashes recorded by finished runs
    files: BTreeMap<String, BTreeSet<String>>,
    user: BTreeSet<String>,
    dirs: BTreeSet<String>,
}

/// Parses ledger lines (later lines win); names that could reach outside the folder are dropped.
fn parse_ledger(text: &str) -> Ledger {
    let mut ledger = Ledger::default();
    // Lines before the last `run` line were written by runs that finished (see the module comment).
    let last_run = text.lines().enumerate().filter(|(_, l)| l.starts_with("run ")).map(|(i, _)| i).last();
    for (i, line) in text.lines().enumerate() {
        let settled = last_run.is_none_or(|r| i < r);
        if let Some(rest) = line.strip_prefix("file ") {
            if let Some((hash, name)) = rest.split_once(' ') {
                if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && is_ledger_name(name) {
                    // Every hash is kept: a killed run's new line must not hide the earlier file
                    // that is still in place.
                    ledger.files.entry(name.to_string()).or_default().push((hash.to_string(), settled));
                    ledger.removing.remove(name);
                }
            }
        } else if let Some(name) = line.strip_prefix("user ").filter(|n| is_ledger_name(n)) {
            ledger.user.insert(name.to_string());
        } else if let Some(name) = line.strip_prefix("deleted ").filter(|n| is_ledger_name(n)) {
            ledger.deleted.insert(name.to_string());
        } else if let Some(name) = line.strip_prefix("gone ").filter(|n| is_ledger_name(n)) {
            // The hashes stay: a run killed before the removal leaves the file, still facedb's.
            ledger.removing.insert(name.to_string());
            ledger.user.remove(name);
            ledger.deleted.remove(name);
        } else if let Some(name) = line.strip_prefix("dir ").filter(|n| is_plain_name(n) && *n != OUTPUT_MARKER) {
            ledger.dirs.insert(name.to_string());
        } else if let Some(token) = line.strip_prefix("run ") {
            if !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit()) {
                ledger.tokens.insert(token.to_string());
            }
        }
    }
    ledger
}

/// A listed name as found on disk.
enum State {
    /// A regular file, with the blake3 of its bytes.
    Hash(String),
    Absent,
    /// Something else is there (a link, a folder, a FIFO): never facedb's.
    Other,
    /// Its subfolder is a link or not a folder: nothing there is looked at.
    Unreachable,
}

fn state_of(dir: &Path, name: &str) -> State {
    if let (Some(sub), _) = split_name(name) {
        match dir.join(sub).symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::Absent,
            Ok(m) if m.is_dir() => {}
            _ => return State::Unreachable,
        }
    }
    let path = dir.join(name);
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::Absent,
        Err(_) => State::Other,
        Ok(_) => hash_file(&path).map_or(State::Other, State::Hash),
    }
}

/// Of the hashes of files gone from their names, those whose bytes are in another regular file
/// of the folder or one subfolder level down (never through a link; at most `MAX_SCANNED` files,
/// so a huge folder costs bounded time).
fn moved_elsewhere(dir: &Path, gone: &HashMap<String, String>, owned: &BTreeMap<String, String>) -> Vec<String> {
    const MAX_SCANNED: usize = 20_000;
    let mut files: Vec<PathBuf> = Vec::new();
    let visit = |folder: &Path, depth: u32, files: &mut Vec<PathBuf>| -> Vec<PathBuf> {
        let mut subs = Vec::new();
        for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let rel = entry.path().strip_prefix(dir).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            if meta.is_file() && !owned.contains_key(&rel) && files.len() < MAX_SCANNED {
                files.push(entry.path());
            } else if meta.is_dir() && depth == 0 {
                subs.push(entry.path());
            }
        }
        subs
    };
    for sub in visit(dir, 0, &mut files) {
        visit(&sub, 1, &mut files);
    }
    files.par_iter().filter_map(|p| hash_file(p)).filter(|h| gone.contains_key(h)).collect()
}

/// Opens a folder without following a link at its name.
fn open_dir(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// A random token for temp-file names: 64 bits from the clock, pid and addresses, hashed.
fn random_token() -> String {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let local = 0u8;
    h.update(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Creates a new file that did not exist, never through a link: `O_CREAT|O_EXCL|O_NOFOLLOW`.
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).mode(0o644).open(path)
}

/// A fresh temp file in `dir` named `.facedb-<token>-<n>.part`, retrying on a clash so an
/// existing file (anyone's) is never opened.
fn create_temp(dir: &Path, token: &str, counter: &AtomicU64) -> Result<(PathBuf, File)> {
    for _ in 0..100 {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".facedb-{token}-{n}.part"));
        match create_exclusive(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!("cannot create a file in {}: {e}; {}", display_path(dir), write_fix(&path, &e))),
        }
    }
    bail!("cannot create a temporary file in {}: every name tried exists", display_path(dir))
}

/// Renames `tmp` onto `dest` without replacing anything that appeared there (`RENAME_NOREPLACE`),
/// or replacing when the caller proved `dest` is its own.
fn place(tmp: &Path, dest: &Path, replace: bool) -> Result<()> {
    place_at(tmp, libc::AT_FDCWD, dest, dest, replace)
}

fn c_path(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("a path with a NUL byte"))
}

/// [`place`] into the folder open as `dir` (a descriptor opened with `O_NOFOLLOW`, so a folder
/// swapped for a link after it was checked is not followed) under `leaf`; `dest` is for messages.
fn place_at(tmp: &Path, dir: libc::c_int, leaf: &Path, dest: &Path, replace: bool) -> Result<()> {
    let (from, to) = (c_path(tmp)?, c_path(leaf)?);
    let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
    // SAFETY: two valid NUL-terminated paths; `dir` is AT_FDCWD or an open folder descriptor.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), dir, to.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let exists = || {
        // SAFETY: as above; AT_SYMLINK_NOFOLLOW so a link counts as existing.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        unsafe { libc::fstatat(dir, to.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0 }
    };
    match err.raw_os_error() {
        Some(libc::EEXIST) => bail!("{} appeared while facedb was writing; it was left alone", display_path(dest)),
        // File systems without RENAME_NOREPLACE: check, then rename (a narrow window only).
        Some(libc::EINVAL | libc::ENOSYS) if replace || !exists() => {
            // SAFETY: as above.
            if unsafe { libc::renameat(libc::AT_FDCWD, from.as_ptr(), dir, to.as_ptr()) } == 0 {
                Ok(())
            } else {
                let err = std::io::Error::last_os_error();
                Err(anyhow!("{err}; {}", write_fix(dest, &err)))
            }
        }
        Some(libc::EINVAL | libc::ENOSYS) => bail!("{} appeared while facedb was writing; it was left alone", display_path(dest)),
        _ => Err(anyhow!("{err}; {}", write_fix(dest, &err))),
    }
}

/// Splits a ledger name into its subfolder (if any) and file name.
fn split_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((dir, leaf)) => (Some(dir), leaf),
        None => (None, name),
    }
}

/// Whether `dir` inside `root` is a real folder (not a link to one).
fn is_real_dir(root: &Path, dir: &str) -> bool {
    root.join(dir).symlink_metadata().is_ok_and(|m| m.is_dir())
}

fn hash_file(path: &Path) -> Option<String> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(file).ok()?;
    Some(h.finalize().to_hex().to_string())
}

/// A failed write of `path` (a full disk, a read-only folder), naming the file and the fix.
fn write_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow!("cannot write {}: {e}; {}", display_path(path), write_fix(path, e))
}

/// What to do about a failed write of `path`: the fix depends on the error.
fn write_fix(path: &Path, e: &std::io::Error) -> String {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = display_path(dir);
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => format!("free space on the disk holding {dir}, then run facedb again"),
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => format!("make {dir} writable, then run facedb again"),
        _ => format!("check the disk holding {dir}, then run facedb again"),
    }
}

/// The fix every refusal to touch a file ends with.
fn not_ours(path: &Path, what: &str, arg: &str) -> anyhow::Error {
    anyhow!("refusing to overwrite {}: {what}; move it away or pass another {arg}", display_path(path))
}

impl OutputDir {
    /// Takes the folder for one run: checks it is facedb's (or new, or empty), locks it, verifies
    /// the ledger's files by hash, removes what a killed run left, and records this run.
    pub fn open(path: &Path, dataset: &Path, db_file: &Path, owner: Owner) -> Result<Self> {
        Self::open_as(path, dataset, db_file, owner, "--out")
    }

    /// [`OutputDir::open`] for a folder the user named as `arg` (how messages call it).
    pub fn open_as(path: &Path, dataset: &Path, db_file: &Path, owner: Owner, arg: &'static str) -> Result<Self> {
        let shown = display_path(path);
        match path.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                bail!("{arg} {shown} is a symbolic link; facedb never writes through links: pass the folder it points to")
            }
            Ok(m) if !m.is_dir() => bail!("{arg} {shown} is not a folder; pass a new or empty folder"),
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(path).with_context(|| format!("cannot create the output folder {shown}"))?,
        }
        let canonical = path.canonicalize().with_context(|| format!("resolving {shown}"))?;
        if canonical == dataset {
            bail!(
                "{arg} {shown} is the dataset folder: crops there would be indexed as photos; pass a new folder such as {}",
                display_path(&path.join("facedb-crops"))
            );
        }
        let db_dir = db_file.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        if dataset.starts_with(&canonical) || db_dir.is_some_and(|d| d.starts_with(&canonical)) {
            bail!("{arg} {shown} contains the dataset or its database; pass a new folder inside or beside the dataset");
        }
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open the output folder {shown}"))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another facedb match is writing into {shown}; wait for it to finish (one match at a time per output folder)");
        }
        let ledger_path = path.join(OUTPUT_MARKER);
        let found = match ledger_path.symlink_metadata() {
            Err(_) => {
                // A run killed while writing the folder's first ledger leaves only its temp file.
                let entries = std::fs::read_dir(path).with_context(|| format!("cannot read the output folder {shown}"))?;
                let no_temp = |e: &std::fs::DirEntry| {
                    !(e.file_name().to_str().is_some_and(|n| is_temp_name(n, &BTreeSet::new())) && e.file_type().is_ok_and(|t| t.is_file()))
                };
                if let Some(other) = entries.filter_map(Result::ok).find(no_temp) {
                    bail!(
                        "{arg} {shown} already holds files facedb did not write (such as {}) and no {OUTPUT_MARKER}; pass a new or empty folder",
                        display_path(Path::new(&other.file_name()))
                    );
                }
                Found::default()
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(not_ours(&ledger_path, "it is a symbolic link and facedb never writes through links", arg))
            }
            Ok(m) if !m.is_file() => return Err(not_ours(&ledger_path, "it is not a regular file, so not facedb's ledger", arg)),
            Ok(m) => Self::read_ledger(path, &ledger_path, &m, &owner, arg)?,
        };
        remove_leftover_temps(path, &found.tokens);
        let token = random_token();
        let mut dirs = BTreeMap::new();
        for name in found.dirs {
            if let Ok(fd) = open_dir(&path.join(&name)) {
                dirs.insert(name, fd);
            }
        }
        let mut out = Self {
            path: path.to_path_buf(),
            _lock: lock,
            owned: found.owned,
            written: Mutex::new(BTreeMap::new()),
            curation: found.curation,
            unverified: found.unverified,
            dirs: Mutex::new(dirs),
            journal: Mutex::new(Err(format!("cannot write {}: it is not open yet", display_path(&ledger_path)))),
            token,
            next_tmp: AtomicU64::new(0),
            owner,
            arg,
        };
        // Rewrite the ledger (current format, verified entries only) with this run recorded,
        // before any temp file exists; `index` skips the folder from here on.
        let entries = out.owned.clone();
        out.save_ledger(&entries, true)?;
        let journal = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&ledger_path)
            .with_context(|| format!("cannot write {}", display_path(&ledger_path)))?;
        out.journal = Mutex::new(Ok(journal));
        Ok(out)
    }

    /// Parses and verifies a ledger: the files it lists that still hold the bytes facedb wrote,
    /// what the user deleted or edited, and the run tokens whose temp files may be left over.
    fn read_ledger(dir: &Path, ledger: &Path, meta: &std::fs::Metadata, owner: &Owner, arg: &str) -> Result<Found> {
        if meta.len() > MAX_LEDGER {
            return Err(not_ours(ledger, "it is too big to be facedb's ledger", arg));
        }
        let mut text = String::new();
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(ledger)
            .and_then(|f| f.take(MAX_LEDGER).read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", display_path(ledger)))?;
        if !text.starts_with(HEADER_PREFIX) {
            return Err(not_ours(ledger, "it is not a ledger facedb wrote", arg));
        }
        let owner_line = text.lines().find_map(|l| l.strip_prefix(OWNER_PREFIX));
        let Some(owner_line) = owner_line else {
            // Version 1: names only.
            let names: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && is_plain_name(l)).collect();
            return Ok(Found { owned: adopt_v1(dir, &names, meta), ..Found::default() });
        };
        let theirs: Owner = serde_json::from_str(owner_line).map_err(|_| not_ours(ledger, "its owner line is damaged", arg))?;
        let mut listed = parse_ledger(&text);
        // A name in a subfolder counts only in a subfolder the ledger says facedb created.
        let in_own_dir = |name: &String| split_name(name).0.is_none_or(|sub| listed.dirs.contains(sub));
        listed.files.retain(|name, _| in_own_dir(name));
        listed.user.retain(in_own_dir);
        listed.deleted.retain(in_own_dir);
        let mut found = Found { tokens: listed.tokens, ..Found::default() };
        let (real, not_real): (BTreeSet<String>, BTreeSet<String>) = listed.dirs.into_iter().partition(|d| is_real_dir(dir, d));
        found.dirs = real;
        found.unverified.dirs = not_real;
        let states: Vec<(String, Vec<Recorded>, State)> =
            listed.files.into_par_iter().map(|(name, hashes)| (name.clone(), hashes, state_of(dir, &name))).collect();
        let mut gone: HashMap<String, String> = HashMap::new();
        for (name, hashes, state) in states {
            if let State::Hash(h) = &state {
                if hashes.iter().any(|(recorded, _)| recorded == h) {
                    found.owned.insert(name, h.clone());
                    continue;
                }
            }
            // facedb was removing it: whatever is (not) there now is not the user's doing.
            if listed.removing.contains(&name) {
                continue;
            }
            // A killed run's file that may never have reached its place proves nothing.
            let settled: BTreeSet<String> = hashes.into_iter().filter(|(_, settled)| *settled).map(|(h, _)| h).collect();
            if settled.is_empty() {
                continue;
            }
            if is_curated(&name) {
                match state {
                    State::Absent => {
                        gone.extend(settled.iter().map(|h| (h.clone(), name.clone())));
                        found.curation.deleted.insert(name.clone());
                    }
                    State::Hash(_) => {
                        found.curation.edited.insert(name.clone());
                    }
                    // A link or anything else at the name is no edit: refused when written, as before.
                    State::Other | State::Unreachable => {}
                }
            }
            found.unverified.files.insert(name, settled);
        }
        for name in listed.user.into_iter().filter(|n| !found.owned.contains_key(n)) {
            match state_of(dir, &name) {
                State::Absent => found.curation.deleted.insert(name),
                State::Other | State::Unreachable => found.unverified.user.insert(name),
                State::Hash(_) => found.curation.edited.insert(name),
            };
        }
        if !gone.is_empty() {
            for hash in moved_elsewhere(dir, &gone, &found.owned) {
                if let Some(name) = gone.get(&hash) {
                    found.curation.deleted.remove(name);
                    found.curation.moved.insert(name.clone());
                }
            }
        }
        // Deleted crops not yet remembered by a finished run stay deleted (while still gone).
        for name in listed.deleted {
            if matches!(state_of(dir, &name), State::Absent) {
                found.curation.deleted.insert(name);
            }
        }
        // Another dataset's folder is refused while it holds any of that dataset's files (its
        // manifest included); emptied, it may change hands.
        if theirs.database_id != owner.database_id && !found.owned.is_empty() {
            bail!(
                "{} holds crops of the dataset {} (database {}), not of {} (database {}); pass another {arg} for this dataset, or delete that folder if its dataset is gone",
                display_path(dir),
                display_str(&theirs.dataset),
                theirs.database_id,
                display_str(&owner.dataset),
                owner.database_id
            );
        }
        if theirs.database_id != owner.database_id {
            // Curation belongs to the dataset that wrote the crops, and so does what it wrote.
            found.curation = Curation::default();
            found.unverified = Unverified::default();
        }
        Ok(found)
    }

    /// Files facedb wrote that the user deleted or edited since (found when the folder was opened).
    pub fn curation(&self) -> &Curation {
        &self.curation
    }

    /// Files facedb wrote earlier that are still as it wrote them.
    pub fn owned(&self) -> impl Iterator<Item = &str> {
        self.owned.keys().map(String::as_str)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses (before anything is written) when a name this run will write exists and is not a
    /// file facedb wrote with the bytes it wrote.
    pub fn check_free<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for name in names {
            let path = self.path.join(name);
            if let (Some(sub), _) = split_name(name) {
                let sub_path = self.path.join(sub);
                match sub_path.symlink_metadata() {
                    Err(_) => continue,
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(not_ours(&sub_path, "it is a symbolic link and facedb never writes through links", self.arg))
                    }
                    Ok(m) if !m.is_dir() => return Err(not_ours(&sub_path, "it is not a folder", self.arg)),
                    Ok(_) if !self.dirs.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.contains_key(sub) => {
                        return Err(not_ours(
                            &sub_path,
                            &format!("facedb did not create this folder (it is not in {OUTPUT_MARKER})"),
                            self.arg,
                        ))
                    }
                    Ok(_) => {}
                }
            }
            match path.symlink_metadata() {
                Err(_) => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(not_ours(&path, "it is a symbolic link and facedb never writes through links", self.arg))
                }
                Ok(_) if self.owned.contains_key(name) => {}
                Ok(_) => {
                    return Err(not_ours(
                        &path,
                        &format!("facedb did not write it (it is not in {OUTPUT_MARKER} with the hash facedb wrote)"),
                        self.arg,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Starts writing `name`: a temp file in the folder (`O_EXCL|O_NOFOLLOW`), renamed into place
    /// by [`NewFile::finish`] and removed if dropped unfinished (an error, a full disk).
    pub fn create(&self, name: &str) -> Result<NewFile<'_>> {
        if !is_ledger_name(name) {
            bail!("facedb will not write a file named {}", display_str(name));
        }
        if let (Some(sub), _) = split_name(name) {
            self.ensure_dir(sub)?;
        }
        let (tmp, file) = create_temp(&self.path, &self.token, &self.next_tmp)?;
        Ok(NewFile { out: self, name: name.to_string(), tmp, w: Some(BufWriter::new(file)), hasher: blake3::Hasher::new() })
    }

    /// Writes `name` with `bytes` (see [`OutputDir::create`]). A file facedb wrote earlier with
    /// these very bytes is kept as it is: rewriting it gains nothing and could fail (a full disk)
    /// and lose it.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.owned.get(name) == Some(&hash) {
            // Its `file` line is in the ledger since the folder was opened.
            self.written.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.insert(name.to_string(), hash);
            return Ok(());
        }
        let mut file = self.create(name)?;
        file.write_all(bytes)?;
        file.finish()
    }

    /// Rewrites `name`, a file facedb wrote here that still holds its bytes, with what `edit`
    /// makes of them (`facedb forget` taking rows out of the manifests). Whether it changed; a
    /// file that is not facedb's, or no longer holds its bytes, is left alone.
    pub fn rewrite(&self, name: &str, edit: impl FnOnce(&[u8]) -> Result<Vec<u8>>) -> Result<bool> {
        let Some(hash) = self.owned.get(name) else { return Ok(false) };
        let path = self.path.join(name);
        let Ok(mut file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) else {
            return Ok(false);
        };
        let mut bytes = Vec::new();
        if !file.metadata().is_ok_and(|m| m.is_file()) || file.read_to_end(&mut bytes).is_err() {
            return Ok(false);
        }
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            return Ok(false);
        }
        let edited = edit(&bytes).with_context(|| format!("reading {}", display_path(&path)))?;
        if edited == bytes {
            return Ok(false);
        }
        self.write_file(name, &edited)?;
        Ok(true)
    }

    /// Makes (or finds) the subfolder `sub` and keeps it open: it must be a real folder, never a
    /// link; one facedb did not create is used only when facedb created it before (the ledger).
    fn ensure_dir(&self, sub: &str) -> Result<()> {
        let mut dirs = self.dirs.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
        if dirs.contains_key(sub) {
            return Ok(());
        }
        let path = self.path.join(sub);
        match path.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(not_ours(&path, "it is a symbolic link and facedb never writes through links", self.arg))
            }
            Ok(_) => return Err(not_ours(&path, "facedb did not create this folder", self.arg)),
            Err(_) => {
                self.journal(&format!("dir {sub}\n"))?;
                std::fs::create_dir(&path).with_context(|| format!("cannot create {}", display_path(&path)))?;
            }
        }
        let fd = open_dir(&path).with_context(|| format!("cannot open {}", display_path(&path)))?;
        dirs.insert(sub.to_string(), fd);
        Ok(())
    }

    /// The folder a name is placed in (a descriptor) and its last component.
    fn dir_fd(&self, name: &str) -> Result<libc::c_int> {
        use std::os::fd::AsRawFd;
        match split_name(name) {
            (None, _) => Ok(self._lock.as_raw_fd()),
            (Some(sub), _) => {
                let dirs = self.dirs.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
                dirs.get(sub).map(AsRawFd::as_raw_fd).ok_or_else(|| anyhow!("{} is not a folder facedb created", display_str(sub)))
            }
        }
    }

    fn journal(&self, line: &str) -> Result<()> {
        let mut j = self.journal.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
        let file = j.as_mut().map_err(|msg| anyhow!("{msg}"))?;
        if let Err(e) = file.write_all(line.as_bytes()) {
            // The ledger may now end in half a line, which a later line would join and spoil (a
            // full disk frees space as other writes fail): nothing more is recorded, so nothing
            // more is placed.
            let err = write_error(&self.path.join(OUTPUT_MARKER), &e);
            *j = Err(err.to_string());
            return Err(err);
        }
        Ok(())
    }

    /// Ends the run: removes the files facedb wrote before and did not write now (only while
    /// they still hold facedb's bytes), and rewrites the ledger to list exactly this run's files.
    /// Returns how many earlier files were removed.
    pub fn finish(self) -> Result<usize> {
        let written = self.written.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.clone();
        let mut removed = 0;
        for (name, hash) in &self.owned {
            if written.contains_key(name) {
                continue;
            }
            removed += usize::from(self.remove_own(name, hash)?);
        }
        // Subfolders this run wrote nothing into go when empty (rmdir refuses otherwise).
        let used: BTreeSet<&str> = written.keys().chain(&self.curation.edited).filter_map(|n| split_name(n).0).collect();
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.retain(|sub, _| used.contains(sub.as_str()) || std::fs::remove_dir(self.path.join(sub)).is_err());
        }
        self.save_ledger(&written, false)?;
        Ok(removed)
    }

    /// Removes these files facedb wrote (each only while it still holds facedb's bytes; a
    /// caption beside a crop goes with it) and drops them from the ledger, keeping everything
    /// else as it is (`facedb forget`). Returns how many files were removed.
    pub fn remove(mut self, names: &BTreeSet<String>) -> Result<usize> {
        let captions: BTreeSet<String> =
            names.iter().filter_map(|n| n.rsplit_once('.').map(|(stem, _)| format!("{stem}.txt"))).filter(|n| n.contains('/')).collect();
        let mut kept = self.owned.clone();
        let mut removed = 0;
        for name in names.iter().chain(&captions) {
            let Some(hash) = kept.remove(name) else { continue };
            removed += usize::from(self.remove_own(name, &hash)?);
        }
        // Forgotten names are dropped whether or not they could be verified.
        self.unverified.files.retain(|n, _| !names.contains(n) && !captions.contains(n));
        // Files rewritten before (`rewrite`) are listed with their new bytes.
        kept.extend(self.written.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.clone());
        self.save_ledger(&kept, true)?;
        Ok(removed)
    }

    /// Removes `name` only while it still holds the bytes facedb wrote (`hash`), never through a
    /// link (unlinkat in its folder's descriptor). Whether it was removed.
    fn remove_own(&self, name: &str, hash: &str) -> Result<bool> {
        let path = self.path.join(name);
        let Ok(dir) = self.dir_fd(name) else { return Ok(false) };
        let Ok(leaf) = c_path(Path::new(split_name(name).1)) else { return Ok(false) };
        if hash_file(&path).as_deref() != Some(hash) {
            return Ok(false);
        }
        // Recorded first: a run killed right after the removal must not read it as the user's.
        self.journal(&format!("gone {name}\n"))?;
        // SAFETY: `dir` is an open folder descriptor, `leaf` a NUL-terminated name without `/`.
        Ok(unsafe { libc::unlinkat(dir, leaf.as_ptr(), 0) } == 0)
    }

    /// Writes the ledger atomically: a temp file renamed over it (the old one was verified
    /// as facedb's, or there was none).
    fn save_ledger(&self, entries: &BTreeMap<String, String>, with_run: bool) -> Result<()> {
        // Until the run has finished, what could not be verified is kept (see [`Unverified`]).
        let none = Unverified::default();
        let unverified = if with_run { &self.unverified } else { &none };
        let mut text = format!("{HEADER}\n{OWNER_PREFIX}{}\n", serde_json::to_string(&self.owner)?);
        let dirs: BTreeSet<String> =
            self.dirs.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.keys().chain(&unverified.dirs).cloned().collect();
        for sub in dirs {
            text.push_str(&format!("dir {sub}\n"));
        }
        for (name, hash) in entries {
            text.push_str(&format!("file {hash} {name}\n"));
        }
        for (name, hashes) in unverified.files.iter().filter(|(n, _)| !entries.contains_key(*n)) {
            for hash in hashes {
                text.push_str(&format!("file {hash} {name}\n"));
            }
        }
        for name in self.curation.edited.iter().chain(&unverified.user) {
            text.push_str(&format!("user {name}\n"));
        }
        // Until the run has finished, `match` may not have stored the deletions yet.
        if with_run {
            for name in &self.curation.deleted {
                text.push_str(&format!("deleted {name}\n"));
            }
        }
        if with_run {
            text.push_str(&format!("run {}\n", self.token));
        }
        let ledger = self.path.join(OUTPUT_MARKER);
        let (tmp, mut file) = create_temp(&self.path, &self.token, &self.next_tmp)?;
        let result = file
            .write_all(text.as_bytes())
            .map_err(|e| write_error(&ledger, &e))
            .and_then(|()| place(&tmp, &ledger, true).with_context(|| format!("cannot write {}", display_path(&ledger))));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// A file being written into the output folder; see [`OutputDir::create`].
pub struct NewFile<'a> {
    out: &'a OutputDir,
    name: String,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    hasher: blake3::Hasher,
}

impl Write for NewFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let w = self.w.as_mut().ok_or_else(|| std::io::Error::other("file already finished"))?;
        let n = w.write(buf).map_err(|e| self.named(e))?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.w.as_mut().map_or(Ok(()), Write::flush);
        result.map_err(|e| self.named(e))
    }
}

impl<'a> NewFile<'a> {
    /// A write error that names the file and the fix: callers (a CSV writer) pass it on as is.
    fn named(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), write_error(&self.out.path.join(&self.name), &e).to_string())
    }

    /// Flushes, records the name with its hash in the ledger, then renames it into place.
    pub fn finish(self) -> Result<()> {
        self.stage()?.place()
    }

    /// Flushes and keeps the temp file, to be renamed into place by [`Staged::place`]: files that
    /// belong together (one Parquet export) are all written before any replaces an older one.
    pub fn stage(mut self) -> Result<Staged<'a>> {
        let dest = self.out.path.join(&self.name);
        let w = self.w.take().ok_or_else(|| anyhow!("file already finished: {}", display_path(&dest)))?;
        w.into_inner().map_err(|e| write_error(&dest, e.error()))?;
        let hash = self.hasher.finalize().to_hex().to_string();
        // The temp file is the Staged's now (NewFile's drop removes nothing).
        let tmp = std::mem::take(&mut self.tmp);
        Ok(Staged { out: self.out, name: std::mem::take(&mut self.name), tmp, hash })
    }
}

/// A file fully written under its temp name; removed if dropped before [`Staged::place`].
pub struct Staged<'a> {
    out: &'a OutputDir,
    name: String,
    tmp: PathBuf,
    hash: String,
}

impl Staged<'_> {
    /// Records the name with its hash in the ledger, then renames the file into place.
    pub fn place(mut self) -> Result<()> {
        let dest = self.out.path.join(&self.name);
        let result = (|| -> Result<()> {
            self.out.journal(&format!("file {} {}\n", self.hash, self.name))?;
            let dir = self.out.dir_fd(&self.name)?;
            place_at(&self.tmp, dir, Path::new(split_name(&self.name).1), &dest, self.out.owned.contains_key(&self.name))?;
            self.tmp = PathBuf::new();
            self.out.written.lock().map_err(|_| anyhow!("ledger lock poisoned"))?.insert(self.name.clone(), self.hash.clone());
            Ok(())
        })();
        result.with_context(|| format!("writing {}", display_path(&dest)))
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        // Renamed into place, or to be removed: either way the temp name must not stay.
        drop(self.w.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Whether `name` is one a temp file facedb writes can have: `.facedb-<token>-<n>.part`, the
/// token one [`random_token`] makes (16 lowercase hex digits) or one the ledger recorded.
fn is_temp_name(name: &str, tokens: &BTreeSet<String>) -> bool {
    let Some(rest) = name.strip_prefix(".facedb-").and_then(|r| r.strip_suffix(".part")) else { return false };
    let Some((token, n)) = rest.rsplit_once('-') else { return false };
    let generated = token.len() == 16 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (generated || tokens.contains(token)) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

/// Removes temp files earlier runs left (killed mid-write), those of a run killed before its
/// `run` line reached the ledger included (it dies writing the ledger itself). Called holding the
/// folder's lock, so no run that could still be writing them is left; regular files only, and
/// unlinking a name never follows a link.
fn remove_leftover_temps(dir: &Path, tokens: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if name.to_str().is_some_and(|n| is_temp_name(n, tokens)) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Version 1 ledgers listed names without hashes, and could list a user's file that an earlier
/// facedb overwrote. A listed file is adopted as facedb's only when it is what facedb writes: a
/// regular file with a name facedb generates, content that starts the way facedb's encoders or
/// manifests start, and not modified after the ledger was (facedb saved the ledger after writing
/// its files). Everything else is forgotten: never deleted, never overwritten.
fn adopt_v1(dir: &Path, names: &[&str], ledger_meta: &std::fs::Metadata) -> BTreeMap<String, String> {
    let ledger_time = (ledger_meta.mtime(), ledger_meta.mtime_nsec());
    names
        .par_iter()
        .filter_map(|&name| {
            let path = dir.join(name);
            let meta = path.symlink_metadata().ok()?;
            if !meta.is_file() || (meta.mtime(), meta.mtime_nsec()) > ledger_time {
                return None;
            }
            let mut head = Vec::with_capacity(4096);
            File::open(&path).ok()?.take(4096).read_to_end(&mut head).ok()?;
            looks_like_facedb_output(name, &head).then_some(())?;
            Some((name.to_string(), hash_file(&path)?))
        })
        .collect()
}

/// The start of a file facedb writes under `name`.
fn looks_like_facedb_output(name: &str, head: &[u8]) -> bool {
    // Columns are only ever appended, so a header written by an older facedb is a prefix of
    // today's (at least the first ten columns, so an unrelated CSV is not taken for ours).
    let line = |cols: &[&str]| {
        let Some(end) = head.iter().position(|&b| b == b'\n') else { return false };
        let written: Vec<&[u8]> = head[..end].split(|&b| b == b',').collect();
        written.len() >= cols.len().min(10) && written.len() <= cols.len() && written.iter().zip(cols).all(|(w, c)| *w == c.as_bytes())
    };
    match name {
        crate::commands::find::MANIFEST_CSV => line(&crate::commands::find::MANIFEST_COLUMNS),
        crate::commands::find::REJECTED_CSV => line(&crate::commands::find::REJECTED_COLUMNS),
        crate::commands::find::MANIFEST_JSONL => head.is_empty() || head.starts_with(b"{\"ambiguous\":"),
        _ if !crate::crop::is_crop_name(name) => false,
        // image's JPEG encoder starts with a JFIF APP0 segment (cameras start with Exif).
        _ if name.ends_with(".jpg") => head.starts_with(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
        _ if name.ends_with(".png") => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        _ if name.ends_with(".webp") => head.len() >= 16 && head.starts_with(b"RIFF") && &head[8..16] == b"WEBPVP8L",
        _ => false,
    }
}

/// The first folder of `path` (itself included, `stop` and above it not) that is a symbolic
/// link: writing there would land somewhere else than the path says.
pub fn linked_folder(path: &Path, stop: &Path) -> Option<PathBuf> {
    path.ancestors()
        .take_while(|a| *a != stop && !a.as_os_str().is_empty())
        .find(|a| a.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()))
        .map(Path::to_path_buf)
}

/// The temp-file names `.facedb-<token>-<n>.part` a run with `token` made in `dir`: regular
/// files only (a link or folder of that name is never facedb's).
pub fn temp_files_of(dir: &Path, token: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let rest = name.to_str().and_then(|n| n.strip_prefix(".facedb-")).and_then(|r| r.strip_suffix(".part"));
            let n = rest.and_then(|r| r.strip_prefix(token)).and_then(|r| r.strip_prefix('-'));
            n.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) && e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.path())
        .collect()
}

/// A bare file name: no separators, not `.`/`..` (a tampered ledger cannot reach outside).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0') && !name.contains('\n')
}

/// A name facedb may write in its folder: a plain name, or one subfolder level (`sub/name`, both
/// plain; trainer layouts), never the ledger itself.
pub fn is_ledger_name(name: &str) -> bool {
    match split_name(name) {
        (None, leaf) => is_plain_name(leaf) && leaf != OUTPUT_MARKER,
        (Some(sub), leaf) => is_plain_name(sub) && is_plain_name(leaf) && sub != OUTPUT_MARKER,
    }
}

/// The dataset that owns an output folder, from its ledger (`None` when it has none facedb wrote).
pub fn folder_owner(dir: &Path) -> Option<Owner> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(dir.join(OUTPUT_MARKER)).ok()?;
    let mut head = String::new();
    file.take(64 << 10).read_to_string(&mut head).ok()?;
    if !head.starts_with(HEADER_PREFIX) {
        return None;
    }
    serde_json::from_str(head.lines().find_map(|l| l.strip_prefix(OWNER_PREFIX))?).ok()
}

/// Writes a file the user named outside any output folder (the HTML sheet): into a temp file
/// beside it (`O_EXCL|O_NOFOLLOW`), then renamed over it. The caller has checked that `dest` is
/// new or a file facedb wrote.
pub fn write_beside(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_in_place(dest, bytes, true)
}

/// [`write_beside`], or with `replace` false a new file only: a file that appeared at `dest`
/// meanwhile is left alone (`RENAME_NOREPLACE`). XMP sidecars beside the photos.
pub fn write_in_place(dest: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    write_in_place_as(dest, bytes, replace, &random_token())
}

/// [`write_in_place`] with the temp file named `.facedb-<token>-<n>.part`: a caller that records
/// `token` first can later prove a temp file a killed run left there is its own.
pub fn write_in_place_as(dest: &Path, bytes: &[u8], replace: bool, token: &str) -> Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp(dir, token, &AtomicU64::new(0))?;
    let result = file.write_all(bytes).map_err(anyhow::Error::from).and_then(|()| place(&tmp, dest, replace));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", display_path(dest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner { database_id: id.into(), dataset: "/photos".into() }
    }

    fn open(dir: &Path, id: &str) -> Result<OutputDir> {
        let fake_dataset = Path::new("/nonexistent-dataset");
        OutputDir::open(dir, fake_dataset, &fake_dataset.join("facedb.sqlite"), owner(id))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn rerun_replaces_and_removes_only_its_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        for name in ["x_face1.jpg", "x_face2.jpg"] {
            let mut f = out.create(name).unwrap();
            f.write_all(name.as_bytes()).unwrap();
            f.finish().unwrap();
        }
        out.finish().unwrap();
        assert_eq!(names(&d), [".facedb-output", "x_face1.jpg", "x_face2.jpg"]);
        // The user replaces one crop: it is no longer facedb's.
        std::fs::write(d.join("x_face2.jpg"), b"mine").unwrap();
        let out = open(&d, "a").unwrap();
        let err = out.check_free(["x_face2.jpg"]).unwrap_err().to_string();
        assert!(err.starts_with("refusing to overwrite") && err.contains("x_face2.jpg: facedb did not write it"), "{err}");
        out.check_free(["x_face1.jpg", "new.jpg"]).unwrap();
        assert_eq!(out.finish().unwrap(), 1);
        assert_eq!(names(&d), [".facedb-output", "x_face2.jpg"]);
        assert_eq!(std::fs::read(d.join("x_face2.jpg")).unwrap(), b"mine");
    }

    #[test]
    fn deleted_and_edited_crops_are_the_users_and_a_killed_runs_file_is_neither() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        for name in ["x_face1.jpg", "x_face2.jpg", "x_face3.jpg", "manifest.csv", "10_tok/x_face4.jpg"] {
            let mut f = out.create(name).unwrap();
            f.write_all(name.as_bytes()).unwrap();
            f.finish().unwrap();
        }
        out.finish().unwrap();
        std::fs::remove_file(d.join("x_face1.jpg")).unwrap();
        std::fs::remove_file(d.join("10_tok/x_face4.jpg")).unwrap();
        std::fs::write(d.join("x_face2.jpg"), b"retouched").unwrap();
        std::fs::write(d.join("manifest.csv"), b"my,sheet\n").unwrap();
        let out = open(&d, "a").unwrap();
        let c = out.curation().clone();
        assert_eq!(c.deleted.iter().collect::<Vec<_>>(), ["10_tok/x_face4.jpg", "x_face1.jpg"]);
        assert_eq!(c.edited.iter().collect::<Vec<_>>(), ["x_face2.jpg"], "a changed manifest is no edit to keep");
        assert!(out.check_free(["manifest.csv"]).is_err());
        // Killed after recording a file it never renamed into place: not a deletion.
        let mut f = out.create("x_face5.jpg").unwrap();
        f.write_all(b"half").unwrap();
        out.journal(&format!("file {} x_face5.jpg\n", "0".repeat(64))).unwrap();
        std::mem::forget(f);
        drop(out);
        let out = open(&d, "a").unwrap();
        assert!(!out.curation().deleted.contains("x_face5.jpg"));
        assert!(out.curation().deleted.contains("x_face1.jpg"), "remembered until a run finishes");
        assert_eq!(out.finish().unwrap(), 1, "only x_face3.jpg was still facedb's");
        assert_eq!(std::fs::read(d.join("x_face2.jpg")).unwrap(), b"retouched");
        let out = open(&d, "a").unwrap();
        assert_eq!(out.curation().edited.iter().collect::<Vec<_>>(), ["x_face2.jpg"], "still the user's");
        assert!(out.curation().deleted.is_empty(), "a finished run forgets: the database remembers");
        assert!(!d.join("10_tok").exists(), "the emptied subfolder facedb made is gone");
        // Killed after removing an earlier crop, before rewriting the ledger: not the user's deletion.
        let mut f = out.create("x_face6.jpg").unwrap();
        f.write_all(b"six").unwrap();
        f.finish().unwrap();
        out.finish().unwrap();
        let out = open(&d, "a").unwrap();
        out.journal("gone x_face6.jpg\n").unwrap();
        std::fs::remove_file(d.join("x_face6.jpg")).unwrap();
        drop(out);
        assert!(open(&d, "a").unwrap().curation().deleted.is_empty());
    }

    #[test]
    fn subfolder_names_never_reach_outside_or_through_links() {
        for bad in ["../x.jpg", "a/../x.jpg", "a/b/c.jpg", "/x.jpg", ".facedb-output", "a/", "..", ".facedb-output/x.jpg"] {
            assert!(!is_ledger_name(bad), "{bad}");
        }
        assert!(is_ledger_name("12_ohwx person/x_face1.jpg") && is_ledger_name("manifest.csv"));
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let out = open(&d, "a").unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join("10_tok")).unwrap();
        let err = out.check_free(["10_tok/x_face1.jpg"]).unwrap_err().to_string();
        assert!(err.contains("10_tok: it is a symbolic link"), "{err}");
        assert!(out.create("10_tok/x_face1.jpg").is_err());
        std::fs::remove_file(d.join("10_tok")).unwrap();
        std::fs::create_dir(d.join("10_tok")).unwrap();
        let err = out.check_free(["10_tok/x_face1.jpg"]).unwrap_err().to_string();
        assert!(err.contains("facedb did not create this folder"), "{err}");
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        // A ledger naming a file in a folder facedb did not create (tampered): never facedb's.
        drop(out);
        std::fs::write(d.join("10_tok/mine.jpg"), b"mine").unwrap();
        let hash = blake3::hash(b"mine").to_hex().to_string();
        let mut ledger = std::fs::read_to_string(d.join(OUTPUT_MARKER)).unwrap();
        ledger.push_str(&format!("file {hash} 10_tok/mine.jpg\n"));
        std::fs::write(d.join(OUTPUT_MARKER), ledger).unwrap();
        let out = open(&d, "a").unwrap();
        assert_eq!(out.owned().count(), 0);
        out.finish().unwrap();
        assert_eq!(std::fs::read(d.join("10_tok/mine.jpg")).unwrap(), b"mine");
    }

    #[test]
    fn failed_writes_leave_no_temp_and_one_run_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        let err = open(&d, "a").err().unwrap().to_string();
        assert!(err.starts_with("another facedb match is writing into"), "{err}");
        let mut f = out.create("x_face1.jpg").unwrap();
        f.write_all(b"half").unwrap();
        drop(f); // an encoder error
        assert_eq!(names(&d), [".facedb-output"]);
        drop(out);
        let out = open(&d, "b");
        assert!(out.is_ok(), "a ledger listing no file that is still there: the folder is free");
    }

    #[test]
    fn staged_files_replace_nothing_until_placed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        let mut staged = Vec::new();
        for name in ["a.parquet", "b.parquet"] {
            let mut f = out.create(name).unwrap();
            f.write_all(name.as_bytes()).unwrap();
            staged.push(f.stage().unwrap());
        }
        assert_eq!(names(&d).len(), 3, "both under temp names: {:?}", names(&d));
        assert!(!d.join("a.parquet").exists());
        drop(staged.pop()); // stopped before placing b: its temp file goes
        staged.pop().unwrap().place().unwrap();
        assert_eq!(names(&d), [".facedb-output", "a.parquet"]);
        drop(staged);
        assert_eq!(out.finish().unwrap(), 0);
        assert!(linked_folder(&d.join("x/y"), tmp.path()).is_none());
        std::os::unix::fs::symlink(&d, tmp.path().join("l")).unwrap();
        assert_eq!(linked_folder(&tmp.path().join("l/x"), tmp.path()), Some(tmp.path().join("l")));
    }

    #[test]
    fn a_killed_runs_leftovers_are_removed_by_the_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        let mut f = out.create("x_face1.jpg").unwrap();
        f.write_all(b"crop").unwrap();
        f.finish().unwrap();
        let mut half = out.create("x_face2.jpg").unwrap();
        half.write_all(b"half").unwrap();
        half.flush().unwrap();
        // Killed here: the temp file stays, the ledger lists x_face1.jpg but the run never ended.
        std::mem::forget(half);
        drop(out);
        assert_eq!(names(&d).len(), 3, "{:?}", names(&d));
        let out = open(&d, "a").unwrap();
        assert_eq!(names(&d), [".facedb-output", "x_face1.jpg"], "the temp file is gone");
        assert_eq!(out.finish().unwrap(), 1);
        assert_eq!(names(&d), [".facedb-output"], "the unlisted crop is gone at the end of the run");
    }

    #[test]
    fn another_datasets_folder_and_strange_ledgers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("out");
        let out = open(&d, "a").unwrap();
        out.create("manifest.csv").unwrap().finish().unwrap();
        out.finish().unwrap();
        let err = open(&d, "b").err().unwrap().to_string();
        assert!(err.contains("holds crops of the dataset /photos (database a), not of /photos (database b)"), "{err}");
        std::fs::write(d.join(OUTPUT_MARKER), "photos I like\n").unwrap();
        let err = open(&d, "a").err().unwrap().to_string();
        assert!(err.contains("it is not a ledger facedb wrote"), "{err}");
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("a.jpg"), b"photo").unwrap();
        let err = open(&other, "a").err().unwrap().to_string();
        assert!(err.contains("already holds files facedb did not write (such as a.jpg)"), "{err}");
    }

    #[test]
    fn version_1_ledgers_adopt_only_what_facedb_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut jpeg = Vec::new();
        image::RgbImage::new(4, 4).write_with_encoder(image::codecs::jpeg::JpegEncoder::new(&mut jpeg)).unwrap();
        std::fs::write(d.join("a_face1.jpg"), &jpeg).unwrap();
        // A camera photo that an old facedb listed: Exif first, not facedb's encoder.
        std::fs::write(d.join("b_face2.jpg"), b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00").unwrap();
        std::fs::write(d.join("notes.txt"), b"mine").unwrap();
        std::fs::write(
            d.join(OUTPUT_MARKER),
            "# facedb writes crops here; `facedb index` skips this folder. Files facedb wrote:\na_face1.jpg\nb_face2.jpg\nnotes.txt\n",
        )
        .unwrap();
        let out = open(d, "a").unwrap();
        assert_eq!(out.owned.keys().collect::<Vec<_>>(), ["a_face1.jpg"]);
        assert_eq!(out.finish().unwrap(), 1);
        assert!(!d.join("a_face1.jpg").exists() && d.join("b_face2.jpg").exists() && d.join("notes.txt").exists());
    }

    #[test]
    fn manifests_of_older_versions_are_recognised_and_other_csv_files_are_not() {
        let cols = crate::commands::find::MANIFEST_COLUMNS;
        let header = |n: usize| format!("{}\nrow\n", cols[..n].join(","));
        assert!(looks_like_facedb_output("manifest.csv", header(cols.len()).as_bytes()));
        assert!(looks_like_facedb_output("manifest.csv", header(cols.len() - 2).as_bytes()), "an older facedb's header");
        assert!(!looks_like_facedb_output("manifest.csv", header(3).as_bytes()), "too short to be ours");
        assert!(!looks_like_facedb_output("manifest.csv", b"name,size\nx,1\n"));
        assert!(!looks_like_facedb_output("manifest.csv", format!("{},extra\n", cols.join(",")).as_bytes()), "a newer or foreign header");
    }
}
