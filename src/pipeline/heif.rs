//! HEIC/HEIF decoding through libheif, loaded at run time (like ONNX Runtime), so the binary
//! builds and runs without it and only HEIC files need it. `scripts/setup.sh` puts the libheif
//! that the PyPI wheel `pillow-heif` bundles (with its HEVC decoder) in `<models>/heif/`.
//!
//! libheif applies the file's rotation and mirroring (`irot`/`imir`) while decoding, which is
//! HEIF's equivalent of EXIF orientation, so what comes back is upright.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use image::RgbImage;

/// Environment variable naming the libheif library file to use.
pub const HEIF_LIB_ENV: &str = "FACEDB_HEIF_LIB";
/// Sub-folder of the models folder holding libheif and the libraries it needs.
pub const HEIF_DIR: &str = "heif";

#[repr(C)]
#[derive(Clone, Copy)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHANNEL_INTERLEAVED: c_int = 10;
const COMPRESSION_HEVC: c_int = 1;

type Ctx = c_void;
type Handle = c_void;
type Img = c_void;
type Encoder = c_void;

/// The libheif entry points facedb uses (stable C API, libheif >= 1.10). Found by `Heif::find`
/// and held by `decode::Decoders`.
pub struct Heif {
    context_alloc: unsafe extern "C" fn() -> *mut Ctx,
    context_free: unsafe extern "C" fn(*mut Ctx),
    read_from_memory: unsafe extern "C" fn(*mut Ctx, *const c_void, usize, *const c_void) -> HeifError,
    primary_handle: unsafe extern "C" fn(*mut Ctx, *mut *mut Handle) -> HeifError,
    handle_width: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_height: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_release: unsafe extern "C" fn(*const Handle),
    decode_image: unsafe extern "C" fn(*const Handle, *mut *mut Img, c_int, c_int, *const c_void) -> HeifError,
    image_width: unsafe extern "C" fn(*const Img, c_int) -> c_int,
    image_height: unsafe extern "C" fn(*const Img, c_int) -> c_int,
    plane_readonly: unsafe extern "C" fn(*const Img, c_int, *mut c_int) -> *const u8,
    image_release: unsafe extern "C" fn(*const Img),
    // Encoding: used to make HEIC test files and benchmark sets, not by indexing.
    image_create: unsafe extern "C" fn(c_int, c_int, c_int, c_int, *mut *mut Img) -> HeifError,
    image_add_plane: unsafe extern "C" fn(*mut Img, c_int, c_int, c_int, c_int) -> HeifError,
    plane_mut: unsafe extern "C" fn(*mut Img, c_int, *mut c_int) -> *mut u8,
    encoder_for_format: unsafe extern "C" fn(*mut Ctx, c_int, *mut *mut Encoder) -> HeifError,
    encoder_set_quality: unsafe extern "C" fn(*mut Encoder, c_int) -> HeifError,
    encoder_release: unsafe extern "C" fn(*mut Encoder),
    encode_image: unsafe extern "C" fn(*mut Ctx, *const Img, *mut Encoder, *const c_void, *mut *mut Handle) -> HeifError,
    write_to_file: unsafe extern "C" fn(*mut Ctx, *const c_char) -> HeifError,
    path: PathBuf,
    // Kept loaded for as long as the function pointers above are used (the whole process).
    _lib: libloading::Library,
}

// The function pointers are plain C entry points; libheif contexts are per call.
unsafe impl Send for Heif {}
unsafe impl Sync for Heif {}

impl Heif {
    fn open(path: &Path) -> std::result::Result<Self, String> {
        // SAFETY: loading libheif runs its initialisers, which have no preconditions.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signatures above are libheif's documented C API.
                *unsafe { lib.get($name) }.map_err(|e| format!("{} lacks {}: {e}", path.display(), String::from_utf8_lossy($name)))?
            };
        }
        Ok(Self {
            context_alloc: sym!(b"heif_context_alloc"),
            context_free: sym!(b"heif_context_free"),
            read_from_memory: sym!(b"heif_context_read_from_memory_without_copy"),
            primary_handle: sym!(b"heif_context_get_primary_image_handle"),
            handle_width: sym!(b"heif_image_handle_get_width"),
            handle_height: sym!(b"heif_image_handle_get_height"),
            handle_release: sym!(b"heif_image_handle_release"),
            decode_image: sym!(b"heif_decode_image"),
            image_width: sym!(b"heif_image_get_width"),
            image_height: sym!(b"heif_image_get_height"),
            plane_readonly: sym!(b"heif_image_get_plane_readonly"),
            image_release: sym!(b"heif_image_release"),
            image_create: sym!(b"heif_image_create"),
            image_add_plane: sym!(b"heif_image_add_plane"),
            plane_mut: sym!(b"heif_image_get_plane"),
            encoder_for_format: sym!(b"heif_context_get_encoder_for_format"),
            encoder_set_quality: sym!(b"heif_encoder_set_lossy_quality"),
            encoder_release: sym!(b"heif_encoder_release"),
            encode_image: sym!(b"heif_context_encode_image"),
            write_to_file: sym!(b"heif_context_write_to_file"),
            path: path.to_path_buf(),
            _lib: lib,
        })
    }
}

fn check(e: HeifError, what: &str) -> Result<()> {
    if e.code == 0 {
        return Ok(());
    }
    let message = if e.message.is_null() {
        String::new()
    } else {
        // SAFETY: libheif's error messages are static NUL-terminated strings.
        unsafe { CStr::from_ptr(e.message) }.to_string_lossy().trim_end().to_owned()
    };
    bail!("{what}: {message} (libheif error {}.{})", e.code, e.subcode)
}

/// Where libheif is looked for, in order.
fn candidates(models_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(HEIF_LIB_ENV).filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = models_dir {
        if let Ok(entries) = std::fs::read_dir(dir.join(HEIF_DIR)) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libheif") && n.contains(".so")))
                .collect();
            found.sort();
            out.extend(found);
        }
    }
    // A system libheif (e.g. Debian's libheif1), found by the dynamic loader.
    out.push(PathBuf::from("libheif.so.1"));
    out
}

impl Heif {
    /// Loads libheif: `FACEDB_HEIF_LIB`, else `<models>/heif/libheif*.so*`, else the system's.
    /// `Err` says what was tried.
    pub fn find(models_dir: Option<&Path>) -> std::result::Result<Self, String> {
        let mut errors = Vec::new();
        for path in candidates(models_dir) {
            match Heif::open(&path) {
                Ok(h) => return Ok(h),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    /// The libheif file in use (for `--version`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Frees a libheif object when dropped, so every early return cleans up.
struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Decodes the primary image of a HEIF file to upright 8-bit RGB, refusing sizes over the limits
/// before anything is decoded.
pub fn decode(h: &Heif, bytes: &[u8], max_side: u32, max_alloc: u64) -> Result<RgbImage> {
    // SAFETY: every pointer passed to libheif below is either one it returned (checked non-null)
    // or a live Rust slice; each object is released exactly once by its guard.
    unsafe {
        let ctx = (h.context_alloc)();
        if ctx.is_null() {
            bail!("libheif could not allocate a context");
        }
        let _ctx = Guard(|| (h.context_free)(ctx));
        check((h.read_from_memory)(ctx, bytes.as_ptr().cast(), bytes.len(), std::ptr::null()), "cannot read HEIF container")?;
        let mut handle = std::ptr::null_mut();
        check((h.primary_handle)(ctx, &mut handle), "HEIF file has no primary image")?;
        if handle.is_null() {
            bail!("HEIF file has no primary image");
        }
        let _handle = Guard(|| (h.handle_release)(handle));
        let (w, h_px) = ((h.handle_width)(handle), (h.handle_height)(handle));
        if w <= 0 || h_px <= 0 || w as u32 > max_side || h_px as u32 > max_side || (w as u64) * (h_px as u64) * 3 > max_alloc {
            bail!("HEIF image of {w}x{h_px} pixels is outside the accepted size (at most {max_side} px a side)");
        }
        let mut img = std::ptr::null_mut();
        check((h.decode_image)(handle, &mut img, COLORSPACE_RGB, CHROMA_INTERLEAVED_RGB, std::ptr::null()), "cannot decode HEIF image")?;
        if img.is_null() {
            bail!("cannot decode HEIF image");
        }
        let _img = Guard(|| (h.image_release)(img));
        let (iw, ih) = ((h.image_width)(img, CHANNEL_INTERLEAVED), (h.image_height)(img, CHANNEL_INTERLEAVED));
        let mut stride: c_int = 0;
        let plane = (h.plane_readonly)(img, CHANNEL_INTERLEAVED, &mut stride);
        if plane.is_null() || iw <= 0 || ih <= 0 || (stride as i64) < iw as i64 * 3 || iw > w.max(h_px) || ih > w.max(h_px) {
            bail!("libheif returned no usable RGB plane");
        }
        let (iw, ih, stride) = (iw as usize, ih as usize, stride as usize);
        let data = std::slice::from_raw_parts(plane, stride * (ih - 1) + iw * 3);
        let mut rgb = Vec::with_capacity(iw * ih * 3);
        for row in 0..ih {
            rgb.extend_from_slice(&data[row * stride..row * stride + iw * 3]);
        }
        RgbImage::from_raw(iw as u32, ih as u32, rgb).ok_or_else(|| anyhow!("libheif returned a plane of the wrong size"))
    }
}

/// Writes `image` as a HEIC file (HEVC, lossy `quality` 0-100). For test fixtures and
/// benchmark sets; facedb itself never writes HEIC.
pub fn encode_heic(h: &Heif, image: &RgbImage, quality: u8, path: &Path) -> Result<()> {
    let (w, ht) = (c_int::try_from(image.width())?, c_int::try_from(image.height())?);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: as in `decode`; the plane written is libheif's own buffer of `stride * height`.
    unsafe {
        let ctx = (h.context_alloc)();
        if ctx.is_null() {
            bail!("libheif could not allocate a context");
        }
        let _ctx = Guard(|| (h.context_free)(ctx));
        let mut img = std::ptr::null_mut();
        check((h.image_create)(w, ht, COLORSPACE_RGB, CHROMA_INTERLEAVED_RGB, &mut img), "creating image")?;
        let _img = Guard(|| (h.image_release)(img));
        check((h.image_add_plane)(img, CHANNEL_INTERLEAVED, w, ht, 8), "adding plane")?;
        let mut stride: c_int = 0;
        let plane = (h.plane_mut)(img, CHANNEL_INTERLEAVED, &mut stride);
        if plane.is_null() || (stride as i64) < w as i64 * 3 {
            bail!("libheif gave no writable plane");
        }
        let row_len = image.width() as usize * 3;
        for (y, row) in image.as_raw().chunks_exact(row_len).enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), plane.add(y * stride as usize), row_len);
        }
        let mut encoder = std::ptr::null_mut();
        check((h.encoder_for_format)(ctx, COMPRESSION_HEVC, &mut encoder), "no HEVC encoder in this libheif")?;
        let _enc = Guard(|| (h.encoder_release)(encoder));
        check((h.encoder_set_quality)(encoder, c_int::from(quality)), "setting quality")?;
        check((h.encode_image)(ctx, img, encoder, std::ptr::null(), std::ptr::null_mut()), "encoding")?;
        check((h.write_to_file)(ctx, c_path.as_ptr()), "writing file")?;
    }
    Ok(())
}
