//! Small helpers shared by commands: terminal-safe path display and reading a user-named file.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A path as it may be printed on a terminal: control characters (ESC, newline, ...) and bytes
/// that are not UTF-8 are escaped (`\x1b`, `\xe9`), so a hostile file name cannot move the cursor,
/// recolour the screen or fake a line of output.
pub fn display_path(path: &Path) -> String {
    display_bytes(path.as_os_str().as_bytes())
}

/// [`display_path`] for a name already held as a string.
pub fn display_str(s: &str) -> String {
    display_bytes(s.as_bytes())
}

fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                match u32::from(c) {
                    n @ 0..=0xff => out.push_str(&format!("\\x{n:02x}")),
                    n => out.push_str(&format!("\\u{{{n:x}}}")),
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Largest reference photo read (the same order as index's decode memory cap): a bigger file
/// is a mistake (a video, a disk image), and reading it whole would only exhaust memory.
pub const MAX_PHOTO_FILE: u64 = 512 << 20;

/// Reads a photo the user named (`--ref`, `--not`): only a regular file, opened non-blocking so a
/// FIFO cannot hang the run, checked with fstat on the opened file (no race with a swap), and at
/// most `MAX_PHOTO_FILE` bytes even if it grows while being read.
pub fn read_photo_file(path: &Path) -> Result<Vec<u8>> {
    let shown = display_path(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read {shown}"))?;
    let meta = file.metadata().with_context(|| format!("cannot read {shown}"))?;
    let kind = meta.file_type();
    let what = if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_dir() {
        Some("a folder")
    } else {
        None
    };
    if let Some(what) = what {
        bail!("{shown} is {what}, not a photo file; pass a photo file");
    }
    if meta.len() > MAX_PHOTO_FILE {
        bail!("{shown} is {} MiB, over facedb's {} MiB limit for a photo; pass a smaller photo", meta.len() >> 20, MAX_PHOTO_FILE >> 20);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PHOTO_FILE + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {shown}"))?;
    if bytes.len() as u64 > MAX_PHOTO_FILE {
        bail!("{shown} grew past facedb's {} MiB limit for a photo while being read", MAX_PHOTO_FILE >> 20);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn control_characters_and_bad_bytes_are_escaped() {
        assert_eq!(display_path(Path::new("a/b c.jpg")), "a/b c.jpg");
        assert_eq!(display_path(Path::new("evil\x1b[31m\n.jpg")), "evil\\x1b[31m\\x0a.jpg");
        assert_eq!(display_path(Path::new(OsStr::from_bytes(b"caf\xe9.jpg"))), "caf\\xe9.jpg");
        assert_eq!(display_str("caf\u{e9}\u{9b}.jpg"), "caf\u{e9}\\x9b.jpg");
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.jpg");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = format!("{:#}", read_photo_file(&fifo).unwrap_err());
        assert!(err.ends_with("is a FIFO, not a photo file; pass a photo file"), "{err}");
        let err = format!("{:#}", read_photo_file(Path::new("/dev/zero")).unwrap_err());
        assert!(err.contains("is a device"), "{err}");
        std::fs::write(dir.path().join("p.jpg"), b"abc").unwrap();
        assert_eq!(read_photo_file(&dir.path().join("p.jpg")).unwrap(), b"abc");
    }
}
