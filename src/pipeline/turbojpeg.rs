//! JPEG decoding through libjpeg-turbo's TurboJPEG API, loaded at run time (like libheif), so the
//! binary builds and runs without it. `scripts/setup.sh` puts Debian's `libturbojpeg0` (2.1.5,
//! SIMD) in `<models>/turbojpeg/`. Measured on one 4000x3000 bench photo, one thread: the image
//! crate 75 ms, TurboJPEG 44 ms full size, 33 / 29 / 21 ms at 1/2, 1/4, 1/8 (DCT scaling).
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
        let mut rgb = vec![0u8; sw as usize * sh as usize * 3];
        // SAFETY: `rgb` holds exactly sw * sh * 3 bytes, the size TurboJPEG writes for a
        // requested sw x sh (its TJSCALED rounding is the same ceiling) with pitch sw * 3.
        let status = unsafe {
            (self.decompress)(
                d.0 .1,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                rgb.as_mut_ptr(),
                sw as c_int,
                (sw * 3) as c_int,
                sh as c_int,
                TJPF_RGB,
                TJFLAG_LIMITSCANS | TJFLAG_STOPONWARNING,
            )
        };
        if status != 0 {
            bail!("libturbojpeg: {}", d.error());
        }
        RgbImage::from_raw(sw, sh, rgb).ok_or_else(|| anyhow!("libturbojpeg returned a buffer of the wrong size"))
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
