//! JPEG decoding through libjpeg-turbo's TurboJPEG API, loaded at run time (like libheif), so the
//! binary builds and runs without it. `scripts/setup.sh` puts Debian's `libturbojpeg0` (2.1.5,
//! SIMD) in `<models>/turbojpeg/`. Measured on one 4000x3000 bench photo, one thread: the image
//! crate 75 ms, TurboJPEG 44 ms full size, 33 / 29 / 21 ms at 1/2, 1/4, 1/8 (DCT scaling).
//! The top rows only (`decode_top_rows`, 2026-12-02, loaded machine): 1600 of 3000 rows 29-44
//! ms against 45-47 for all, 800 rows 12-18 ms. A lossless crop (`tjTransform`) was slower
//! there (40-46 ms: it reads every coefficient into memory, 72 MB for a 4:4:4 12 MP photo).
//!
//! Its pixels differ from the image crate's by a level or two (another IDCT and chroma
//! upsampling), so the decoder in use is part of the detector's identity (see
//! `commands::index::detector_params_json`): a database says which one made each image's faces.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use image::RgbImage;

/// Environment variable naming the libturbojpeg file to use (a path that does not exist turns it off).
pub const TURBOJPEG_LIB_ENV: &str = "FACEDB_TURBOJPEG_LIB";
/// Sub-folder of the models folder holding libturbojpeg.
pub const TURBOJPEG_DIR: &str = "turbojpeg";

const TJPF_RGB: c_int = 0;
/// Refuses progressive JPEGs with absurd scan counts (a CPU bomb) instead of decoding for minutes.
const TJFLAG_LIMITSCANS: c_int = 32768;
/// A corrupt-data warning is an error: the image crate then decides (see `Decoders`).
const TJFLAG_STOPONWARNING: c_int = 8192;

type Handle = *mut c_void;

/// The TurboJPEG 2.x entry points facedb uses (stable since libjpeg-turbo 1.4).
pub struct TurboJpeg {
    init: unsafe extern "C" fn() -> Handle,
    header: unsafe extern "C" fn(Handle, *const u8, c_ulong, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> c_int,
    decompress: unsafe extern "C" fn(Handle, *const u8, c_ulong, *mut u8, c_int, c_int, c_int, c_int, c_int) -> c_int,
    destroy: unsafe extern "C" fn(Handle) -> c_int,
    error: unsafe extern "C" fn(Handle) -> *const c_char,
    /// `tjGetErrorCode` (TurboJPEG 2.0+): tells a warning from an error; without it
    /// `decode_top_rows` is not offered and the full image is decoded instead.
    error_code: Option<unsafe extern "C" fn(Handle) -> c_int>,
    path: PathBuf,
    /// The file's name and the start of its blake3, read once (`identity`).
    identity: String,
    // Kept loaded for as long as the function pointers above are used.
    _lib: libloading::Library,
}

// Plain C entry points; a decompressor handle is made per call, never shared.
unsafe impl Send for TurboJpeg {}
unsafe impl Sync for TurboJpeg {}

impl TurboJpeg {
    fn open(path: &Path) -> std::result::Result<Self, String> {
        // SAFETY: loading libturbojpeg runs no initialisers with preconditions.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signatures above are TurboJPEG's documented C API.
                *unsafe { lib.get($name) }.map_err(|e| format!("{} lacks {}: {e}", path.display(), String::from_utf8_lossy($name)))?
            };
        }
        Ok(Self {
            init: sym!(b"tjInitDecompress"),
            header: sym!(b"tjDecompressHeader3"),
            decompress: sym!(b"tjDecompress2"),
            destroy: sym!(b"tjDestroy"),
            error: sym!(b"tjGetErrorStr2"),
            // SAFETY: TurboJPEG's documented `int tjGetErrorCode(tjhandle)`.
            error_code: unsafe { lib.get(b"tjGetErrorCode") }.ok().map(|f| *f),
            path: path.to_path_buf(),
            identity: identity_of(path),
            _lib: lib,
        })
    }

    /// Finds the library: `FACEDB_TURBOJPEG_LIB`, else `<models>/turbojpeg/libturbojpeg.so*`.
    /// Not the system's: its identity is the file's hash, so it must be a file facedb can read.
    /// `Err` says what was tried.
    pub fn find(models_dir: Option<&Path>) -> std::result::Result<Self, String> {
        let mut errors = Vec::new();
        for path in candidates(models_dir) {
            match Self::open(&path) {
                Ok(t) => return Ok(t),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            let dir = models_dir.map_or_else(|| "<models>".to_string(), |d| d.display().to_string());
            errors.push(format!("no libturbojpeg.so* in {dir}/{TURBOJPEG_DIR}"));
        }
        Err(errors.join("; "))
    }

    /// What made the pixels, for the detector's identity: the library's file name and the start
    /// of its blake3 (two builds of libjpeg-turbo may round differently).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The library file in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Width and height the JPEG header declares.
    pub fn dimensions(&self, bytes: &[u8]) -> Result<(u32, u32)> {
        let d = Decompressor::new(self)?;
        d.header(bytes)
    }

    /// Decodes to RGB at `1/denom` of the stored size (1, 2, 4 or 8: DCT scaling, much cheaper
    /// than decoding in full and resizing). Orientation is not applied.
    pub fn decode(&self, bytes: &[u8], denom: u32) -> Result<RgbImage> {
        if ![1, 2, 4, 8].contains(&denom) {
            bail!("unsupported JPEG scale 1/{denom}");
        }
        let d = Decompressor::new(self)?;
        let (w, h) = d.header(bytes)?;
        let (sw, sh) = (w.div_ceil(denom), h.div_ceil(denom));
        // sw x sh is the size TurboJPEG writes for this scale (its TJSCALED rounding is the same ceiling).
        let (status, rgb) = d.decompress_rgb(bytes, sw, sh, TJFLAG_LIMITSCANS | TJFLAG_STOPONWARNING);
        if status != 0 {
            bail!("libturbojpeg: {}", d.error());
        }
        RgbImage::from_raw(sw, sh, rgb).ok_or_else(|| anyhow!("libturbojpeg returned a buffer of the wrong size"))
    }
}

impl TurboJpeg {
    /// The top `rows` rows of the stored image (orientation not applied), full width and full
    /// size, without decoding the rows below: the frame header is patched to declare `rows`, so
    /// libjpeg-turbo stops after them (and warns about the data it skips to the end marker).
    /// Rows up to `rows - TOP_ROWS_MARGIN` are exactly the full decode's: blocks are decoded
    /// alone, and chroma upsampling reads one chroma row beyond a row at most (test:
    /// `pipeline::frame::tests`). Only sequential Huffman JPEGs (SOF0/SOF1) are cut this way;
    /// `Ok(None)` for others (progressive scans cover every row), which are decoded in full.
    /// Only for bytes this library already decoded without a warning (the reduced decode): the
    /// warning about the skipped data is then the only one expected, and any other is an error.
    pub fn decode_top_rows(&self, bytes: &[u8], rows: u32) -> Result<Option<RgbImage>> {
        let Some(error_code) = self.error_code else { return Ok(None) };
        let Some(sof) = sequential_frame_header(bytes) else { return Ok(None) };
        let d = Decompressor::new(self)?;
        let (w, h) = d.header(bytes)?;
        if rows >= h {
            return self.decode(bytes, 1).map(Some);
        }
        let mut patched = super::buffers::copy_of(bytes);
        // Height is the big-endian u16 after the segment length and the sample precision.
        patched[sof + 5..sof + 7].copy_from_slice(&(rows as u16).to_be_bytes());
        let (status, rgb) = d.decompress_rgb(&patched, w, rows, TJFLAG_LIMITSCANS);
        super::buffers::recycle(patched);
        if status != 0 {
            // SAFETY: a live handle.
            let warning_only = unsafe { error_code(d.0 .1) } == TJERR_WARNING;
            let message = d.error();
            if !(warning_only && message.contains("extraneous bytes")) {
                bail!("libturbojpeg (top {rows} rows): {message}");
            }
        }
        RgbImage::from_raw(w, rows, rgb).map(Some).ok_or_else(|| anyhow!("libturbojpeg returned a buffer of the wrong size"))
    }
}

/// Rows at the bottom of `decode_top_rows`'s result that may differ from a full decode (the
/// upsampler repeats the last chroma row there): two chroma rows of the tallest sampling
/// (4 luma rows each), with room to spare.
pub const TOP_ROWS_MARGIN: u32 = 16;

/// `tjGetErrorCode`'s value for a warning (the decode went on).
const TJERR_WARNING: c_int = 0;

/// Offset of the frame header (its FF marker) of a baseline or extended sequential Huffman JPEG;
/// `None` for any other kind or a header that cannot be walked.
pub(crate) fn sequential_frame_header(bytes: &[u8]) -> Option<usize> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut pos = 2;
    loop {
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(pos + 1)?;
        let len = usize::from(u16::from_be_bytes([*bytes.get(pos + 2)?, *bytes.get(pos + 3)?]));
        match marker {
            0xC0 | 0xC1 => return (len >= 8 && bytes.len() >= pos + 2 + len).then_some(pos),
            // Any other frame header (progressive, lossless, arithmetic), a scan or the end.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA | 0xD9 => return None,
            _ => pos += 2 + len,
        }
    }
}

/// One decompressor handle, destroyed when dropped.
struct Decompressor<'a>((&'a TurboJpeg, Handle));

impl<'a> Decompressor<'a> {
    fn new(t: &'a TurboJpeg) -> Result<Self> {
        // SAFETY: no arguments; a null handle is checked.
        let h = unsafe { (t.init)() };
        if h.is_null() {
            bail!("libturbojpeg could not create a decompressor");
        }
        Ok(Self((t, h)))
    }

    fn header(&self, bytes: &[u8]) -> Result<(u32, u32)> {
        let (mut w, mut h, mut sub, mut cs): (c_int, c_int, c_int, c_int) = (0, 0, 0, 0);
        // SAFETY: a live handle, a live slice and four out-parameters.
        let status = unsafe { (self.0 .0.header)(self.0 .1, bytes.as_ptr(), bytes.len() as c_ulong, &mut w, &mut h, &mut sub, &mut cs) };
        if status != 0 || w <= 0 || h <= 0 {
            bail!("libturbojpeg: {}", self.error());
        }
        Ok((w as u32, h as u32))
    }

    /// Decodes `bytes` into a new `w` x `h` RGB buffer (pitch `w * 3`), the size the caller
    /// asked for; the status is TurboJPEG's (non-zero: see `error`).
    fn decompress_rgb(&self, bytes: &[u8], w: u32, h: u32, flags: c_int) -> (c_int, Vec<u8>) {
        let mut rgb = super::buffers::zeroed(w as usize * h as usize * 3);
        // SAFETY: a live handle; `rgb` holds exactly w * h * 3 bytes, pitch w * 3, the output
        // TurboJPEG writes for a requested w x h.
        let status = unsafe {
            (self.0 .0.decompress)(
                self.0 .1,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                rgb.as_mut_ptr(),
                w as c_int,
                (w * 3) as c_int,
                h as c_int,
                TJPF_RGB,
                flags,
            )
        };
        (status, rgb)
    }

    fn error(&self) -> String {
        // SAFETY: TurboJPEG returns a NUL-terminated string owned by the handle (or a static one).
        let p = unsafe { (self.0 .0.error)(self.0 .1) };
        if p.is_null() {
            return "unknown error".into();
        }
        // SAFETY: as above; copied before the handle is destroyed.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Drop for Decompressor<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe { (self.0 .0.destroy)(self.0 .1) };
    }
}

fn identity_of(path: &Path) -> String {
    let hash = std::fs::read(path).map(|b| blake3::hash(&b).to_hex()[..16].to_string()).unwrap_or_else(|_| "unreadable".into());
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{name} blake3:{hash}")
}

fn candidates(models_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(TURBOJPEG_LIB_ENV).filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = models_dir {
        if let Ok(entries) = std::fs::read_dir(dir.join(TURBOJPEG_DIR)) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libturbojpeg") && n.contains(".so")))
                .collect();
            found.sort();
            out.extend(found);
        }
    }
    out
}
