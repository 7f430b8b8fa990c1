//! Decoding image bytes into an upright RGB image, with a hard limit on what a hostile header
//! can make us allocate.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Largest accepted side, in pixels (bigger than any camera; refuses decompression bombs).
pub const MAX_SIDE: u32 = 30_000;
/// Largest accepted decoded size in bytes.
pub const MAX_ALLOC: u64 = 1 << 30;

#[derive(Debug)]
pub struct Decoded {
    /// Upright (EXIF orientation applied), 8-bit RGB.
    pub rgb: RgbImage,
    pub format: &'static str,
    /// EXIF orientation 1-8 as found in the file (1 when absent).
    pub orientation: u8,
    /// `rgb` is 1/`denom` of the photo's size (1: full size; see `Decoders::decode_reduced`).
    pub denom: u32,
    /// The photo's upright size at full resolution.
    pub full_size: (u32, u32),
    /// This decode's share of the memory all workers' big decodes may hold at once; kept for as
    /// long as the pixels are (`Frame` holds it).
    pub memory: Option<MemoryShare>,
}

/// Decodes whose header says they need more than this take a share of `decode_budget` first.
const UNBUDGETED: u64 = 128 << 20;

/// What the big decodes of all workers may need at once: a quarter of the machine's memory (or
/// of the container's limit), at least `MAX_ALLOC`; `FACEDB_DECODE_BUDGET_MB` sets it. Each
/// worker alone may take `MAX_ALLOC` (a 38-byte lossless WebP can declare 13000x13000 px, 1.26 GB
/// to decode): without a shared budget a folder of such files took that per worker (4.1 GB
/// with 4 workers, ~20 GB with 16).
fn decode_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        if let Some(mb) = std::env::var(DECODE_BUDGET_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            return mb.max(1) << 20;
        }
        let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
        // cgroup v2's limit ("max" when there is none).
        let container = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|v| v.trim().parse::<u64>().ok());
        let memory = match (machine, container) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        memory.map_or(MAX_ALLOC, |bytes| (bytes / 4).max(MAX_ALLOC))
    })
}

/// Sets the decode budget in MiB (see `decode_budget`).
pub const DECODE_BUDGET_ENV: &str = "FACEDB_DECODE_BUDGET_MB";

static BUDGET_IN_USE: Mutex<u64> = Mutex::new(0);
static BUDGET_FREED: Condvar = Condvar::new();

/// Bytes of the shared decode budget, given back when dropped.
#[derive(Debug)]
pub struct MemoryShare(u64);

impl MemoryShare {
    /// Waits until `bytes` fit in the budget beside the other workers' decodes (a decode bigger
    /// than the whole budget waits until it is alone). `None` for a small decode.
    fn reserve(bytes: u64) -> Option<Self> {
        if bytes <= UNBUDGETED {
            return None;
        }
        let budget = decode_budget();
        let bytes = bytes.min(budget);
        let mut used = BUDGET_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        while *used > 0 && *used + bytes > budget {
            used = BUDGET_FREED.wait(used).unwrap_or_else(PoisonError::into_inner);
        }
        *used += bytes;
        Some(Self(bytes))
    }
}

impl Drop for MemoryShare {
    fn drop(&mut self) {
        let mut used = BUDGET_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(self.0);
        BUDGET_FREED.notify_all();
    }
}

/// A reduced decode is asked for only when the photo is at least this big at the reduced scale:
/// the detector's passes read at most 1920 px (1.5x `--detect-size` 1280), so a 12 MP photo is
/// decoded at 1/2 (2000x1500, 29 ms against 54 in full with libjpeg-turbo, one thread).
pub const REDUCED_MIN_SIDE: u32 = 1920;

/// The largest DCT scale divisor (2, 4, 8) leaving the long side at least `REDUCED_MIN_SIDE`, or 1.
/// Depends on the photo's size only, so every command decoding a photo reduces it the same way.
pub fn reduction_for(long_side: u32) -> u32 {
    [8, 4, 2].into_iter().find(|d| long_side.div_ceil(*d) >= REDUCED_MIN_SIDE).unwrap_or(1)
}

/// The decoders beyond the image crate, found once in the models folder and passed to whatever
/// decodes photos (no process-wide state): libjpeg-turbo for JPEG when installed (faster; the
/// image crate otherwise and for every other format) and libheif for HEIC, loaded on first use.
pub struct Decoders {
    models_dir: Option<PathBuf>,
    jpeg: std::result::Result<super::turbojpeg::TurboJpeg, String>,
    heif: OnceLock<std::result::Result<super::heif::Heif, String>>,
}

impl Decoders {
    /// Looks for the libraries in `models_dir` (and the environment variables naming them).
    pub fn new(models_dir: Option<&Path>) -> Self {
        Self { models_dir: models_dir.map(Path::to_path_buf), jpeg: super::turbojpeg::TurboJpeg::find(models_dir), heif: OnceLock::new() }
    }

    /// What decodes JPEG photos, as stored in the detector's identity: the same photo decoded by
    /// another decoder gives slightly different pixels, so its faces are not silently mixed.
    pub fn jpeg_identity(&self) -> String {
        match &self.jpeg {
            Ok(t) => format!("libturbojpeg {}", t.identity()),
            Err(_) => "image-rs".into(),
        }
    }

    /// One line saying which JPEG decoder is in use, and why when it is the slower one.
    pub fn describe_jpeg(&self) -> String {
        match &self.jpeg {
            Ok(t) => format!("JPEG via libjpeg-turbo ({})", t.path().display()),
            Err(e) => format!(
                "JPEG via the built-in decoder (libjpeg-turbo not loaded: {e}; scripts/setup.sh puts it in <models>/{}/ and makes indexing faster)",
                super::turbojpeg::TURBOJPEG_DIR
            ),
        }
    }

    /// libturbojpeg, if loaded.
    pub fn turbojpeg(&self) -> Option<&super::turbojpeg::TurboJpeg> {
        self.jpeg.as_ref().ok()
    }

    /// libheif, loaded on first use (it maps its HEVC codecs, which only HEIC photos need).
    pub fn heif(&self) -> Result<&super::heif::Heif> {
        self.heif.get_or_init(|| super::heif::Heif::find(self.models_dir.as_deref())).as_ref().map_err(|e| {
            anyhow!(
                "HEIC/HEIF needs libheif, which was not found ({e}); run scripts/setup.sh (it puts libheif in <models>/{}/), install your system's libheif, or set {}",
                super::heif::HEIF_DIR,
                super::heif::HEIF_LIB_ENV
            )
        })
    }

    /// Decodes `bytes` (format sniffed from content, not the file name). Every error says
    /// whether the file's content (`BadContent`) or the environment (`NeedsEnvironment`) caused it.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded> {
        decode(bytes, self)
    }

    /// Like `decode`, but a big JPEG comes back reduced by `reduction_for` when libjpeg-turbo is
    /// loaded (DCT scaling: about half the time of a full decode). `Frame` decodes the full size
    /// later only if a stage needs it.
    pub fn decode_reduced(&self, bytes: &[u8]) -> Result<Decoded> {
        tagged(decode_untagged(bytes, self, true, true))
    }

    /// `decode` in full for a `Frame` whose reduced decode already holds the photo's share of
    /// the memory budget (reckoned at full size): taking a second share while holding the first
    /// could leave every worker waiting on the others.
    pub fn decode_within_share(&self, bytes: &[u8]) -> Result<Decoded> {
        tagged(decode_untagged(bytes, self, false, false))
    }
}

pub fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

pub fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        _ => "other",
    }
}

/// Decodes `bytes` (format sniffed from content, not the file name). Every error says whether
/// the file's content (`BadContent`) or the environment (`NeedsEnvironment`) caused it.
pub fn decode(bytes: &[u8], decoders: &Decoders) -> Result<Decoded> {
    tagged(decode_untagged(bytes, decoders, false, true))
}

/// Marks an error as the file's content (`BadContent`) unless the environment caused it.
fn tagged(result: Result<Decoded>) -> Result<Decoded> {
    result.map_err(|e| if is_environment(&e) { e } else { anyhow::Error::new(BadContent(format!("{e:#}"))) })
}

fn decode_untagged(bytes: &[u8], decoders: &Decoders, reduce: bool, take_share: bool) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(anyhow!("empty file (0 bytes)"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("reading image header")?;
    let Some(format) = reader.format() else {
        if let Some(brand) = heif_brand(bytes) {
            let rgb = decoders.heif().and_then(|h| super::heif::decode(h, bytes, MAX_SIDE, MAX_ALLOC)).map_err(|e| {
                let message = format!("cannot decode HEIF ({brand}): {e:#}");
                // Without libheif the file was never looked at: retry once it is installed.
                if decoders.heif().is_err() {
                    anyhow::Error::new(NeedsEnvironment(message))
                } else {
                    anyhow!(message)
                }
            })?;
            // libheif has already applied the file's rotation and mirroring.
            let full_size = rgb.dimensions();
            return Ok(Decoded { rgb, format: "heif", orientation: 1, denom: 1, full_size, memory: None });
        }
        return Err(anyhow!("not a supported image (unrecognised content)"));
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The decoder would fill the missing part with grey and call it a success.
        return Err(anyhow!(
            "truncated JPEG (no end-of-image marker after the image data); the file is incomplete, copy it again from its source"
        ));
    }
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(|e| anyhow!("cannot decode {}: {e}", format_name(format)))?;
    let (w, h) = decoder.dimensions();
    let needed = check_declared_size((w, h), decoder.total_bytes())?;
    let memory = if take_share { MemoryShare::reserve(needed) } else { None };
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let exif = orientation_exif(orientation);
    let full_size = if (5..=8).contains(&exif) { (h, w) } else { (w, h) };
    // libjpeg-turbo when loaded; a JPEG it refuses (CMYK, a corrupt-data warning) goes to the
    // image crate, in full, which decides whether it is decodable as before.
    let denom = if reduce { reduction_for(w.max(h)) } else { 1 };
    let turbo = match decoders.turbojpeg().filter(|_| format == ImageFormat::Jpeg).map(|t| t.decode(bytes, denom)) {
        Some(Ok(rgb)) => Some((rgb, denom)),
        Some(Err(e)) if is_damage_warning(&format!("{e:#}"), bytes) => return Err(damaged_jpeg(&e)),
        _ => None,
    };
    let (mut image, denom) = match turbo {
        Some((rgb, denom)) => (DynamicImage::ImageRgb8(rgb), denom),
        None => (DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("cannot decode {}: {e}", format_name(format)))?, 1),
    };
    image.apply_orientation(orientation);
    Ok(Decoded { rgb: image.into_rgb8(), format: format_name(format), orientation: exif, denom, full_size, memory })
}

/// Whether libjpeg-turbo's warning on `bytes` says the compressed data is damaged: it stops
/// before the picture does (cut and closed with an end marker, bytes lost inside), a restart
/// interval lost ("found marker ... instead of RSTn"), codes that are no codes, or compressed
/// data left over before the end marker (the decoder lost its place after damage inside and
/// resynchronised there) or over 1 KiB of anything there (a tail overwritten, e.g. zeroed by an
/// interrupted copy). The image crate would paint the rest grey or smeared and call it a success,
/// as it would a file without its end. Not damage: a few bytes or a run of one fill byte (0x00,
/// 0xFF) before the end marker, which some encoders write, nor anything before a restart marker
/// of the right number (a scanner pads there; the decoder resynchronises on the marker).
fn is_damage_warning(message: &str, bytes: &[u8]) -> bool {
    const DAMAGE: [&str; 5] =
        ["premature end of data segment", "Premature end of JPEG file", "instead of RST", "bad Huffman code", "bad arithmetic code"];
    if DAMAGE.iter().any(|d| message.contains(d)) {
        return true;
    }
    // "Corrupt JPEG data: N extraneous bytes before marker 0xXX"
    let Some((before, marker)) = message.split_once(" extraneous bytes before marker 0x") else { return false };
    if !marker.to_ascii_lowercase().starts_with("d9") {
        return false;
    }
    let count: usize = before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if count > JUNK_BEFORE_END {
        return true;
    }
    if count <= PADDING_BEFORE_END {
        return false;
    }
    // The bytes just before the end marker that closes the scans (entropy-coded data never holds
    // FF D9; the first one after the photo's first scan header is that marker, not the end of an
    // EXIF thumbnail, which sits inside a segment before it).
    let Some(scan) = first_scan(bytes) else { return true };
    let Some(end) = memchr::memmem::find(&bytes[scan..], &[0xFF, 0xD9]).map(|e| scan + e) else { return true };
    let junk = &bytes[end.saturating_sub(count)..end];
    !(junk.iter().all(|&b| b == 0x00) || junk.iter().all(|&b| b == 0xFF))
}

/// Offset of the image's first scan header (FF DA), found by walking the marker segments from
/// the start, so nothing inside a segment (an EXIF thumbnail) is taken for it.
fn first_scan(bytes: &[u8]) -> Option<usize> {
    let mut pos = 2;
    loop {
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        match *bytes.get(pos + 1)? {
            0xDA => return Some(pos),
            0xD9 => return None,
            _ => pos += 2 + usize::from(u16::from_be_bytes([*bytes.get(pos + 2)?, *bytes.get(pos + 3)?])),
        }
    }
}

/// Bytes before the end marker beyond which it is a damaged tail, whatever they hold.
const JUNK_BEFORE_END: usize = 1024;
/// Bytes before the end marker that are padding, whatever they hold.
const PADDING_BEFORE_END: usize = 16;

fn damaged_jpeg(e: &anyhow::Error) -> anyhow::Error {
    anyhow!("damaged JPEG ({e:#}): part of the picture is missing or garbled; copy the file again from its source")
}

/// Refuses what the header declares before anything is allocated: the decoders' own limits are
/// not enforced by every format (a 0.9 MB PNG declaring 29999x29999 took 3.6 GB and 18 s).
/// Counts the decoder's buffer and the 8-bit RGB copy made from it.
fn check_declared_size((w, h): (u32, u32), decoder_bytes: u64) -> Result<u64> {
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!("image of {w}x{h} pixels is larger than accepted (at most {MAX_SIDE} px a side); not decoded");
    }
    let needed = decoder_bytes.saturating_add(u64::from(w) * u64::from(h) * 3);
    if needed > MAX_ALLOC {
        bail!(
            "image of {w}x{h} pixels would need {} MiB to decode, more than the {} MiB accepted; not decoded",
            needed >> 20,
            MAX_ALLOC >> 20
        );
    }
    Ok(needed)
}

/// Marks a failure caused by what is installed (a missing library, the runtime), not by the
/// file: `index` retries such files when facedb, its libraries or its models change.
#[derive(Debug)]
pub struct NeedsEnvironment(pub String);

impl std::fmt::Display for NeedsEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NeedsEnvironment {}

/// Marks a failure caused by the file's bytes: the same bytes always fail the same way.
#[derive(Debug)]
pub struct BadContent(pub String);

impl std::fmt::Display for BadContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadContent {}

/// Whether an error from `decode` is about the environment rather than the file's content.
pub fn is_environment(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<NeedsEnvironment>())
}

/// Whether an error is about the file's content (see `BadContent`).
pub fn is_content(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<BadContent>())
}

/// The ISO-BMFF brand of a HEIF-family file (iPhone HEIC, AVIF), if it is one.
fn heif_brand(bytes: &[u8]) -> Option<String> {
    let brand = bytes.get(4..12).filter(|b| b.starts_with(b"ftyp"))?.get(4..8)?;
    let known: [&[u8]; 8] = [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"avif"];
    known.contains(&brand).then(|| String::from_utf8_lossy(brand).into_owned())
}

/// Whether a JPEG's main image data is followed by its end-of-image marker. Segments before the
/// first scan (EXIF, whose thumbnail has its own EOI) are skipped by their lengths; inside
/// entropy-coded data a 0xFF byte is always stuffed or a restart marker, so FF D9 there is the
/// real end.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    let mut pos = 2;
    loop {
        // Skip fill bytes before a marker.
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            return false;
        };
        match marker {
            0xD9 => return true, // EOI before any scan: nothing to decode, but complete
            0x01 | 0xD0..=0xD7 => pos += 2,
            _ => {
                let Some(len) = bytes.get(pos + 2..pos + 4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
                    return false;
                };
                if marker == 0xDA {
                    let scan = pos + 2 + len;
                    // Most files end with it; else a vectorised search (a byte-pair scan of a
                    // 4 MB file took ~1.3 ms).
                    return bytes
                        .get(scan..)
                        .is_some_and(|rest| rest.ends_with(&[0xFF, 0xD9]) || memchr::memmem::find(rest, &[0xFF, 0xD9]).is_some());
                }
                pos += 2 + len;
            }
        }
    }
}

fn orientation_exif(o: Orientation) -> u8 {
    match o {
        Orientation::NoTransforms => 1,
        Orientation::FlipHorizontal => 2,
        Orientation::Rotate180 => 3,
        Orientation::FlipVertical => 4,
        Orientation::Rotate90FlipH => 5,
        Orientation::Rotate90 => 6,
        Orientation::Rotate270FlipH => 7,
        Orientation::Rotate270 => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_builtin(bytes: &[u8]) -> Result<Decoded> {
        decode(bytes, &Decoders::new(None))
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::new(w, h).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn decodes_png_by_content() {
        let d = decode_builtin(&png(7, 5)).unwrap();
        assert_eq!((d.rgb.width(), d.rgb.height(), d.format, d.orientation), (7, 5, "png", 1));
    }

    #[test]
    fn refuses_empty_garbage_and_truncated() {
        assert!(decode_builtin(&[]).unwrap_err().to_string().contains("empty"));
        assert!(decode_builtin(b"hello, I am text").is_err());
        let p = png(64, 64);
        assert!(decode_builtin(&p[..p.len() / 2]).is_err());
    }

    #[test]
    fn truncated_jpeg_is_detected_even_with_a_thumbnail_eoi_before_the_scan() {
        let mut jpeg = Vec::new();
        RgbImage::from_pixel(64, 64, image::Rgb([200, 10, 10])).write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
        assert!(jpeg_is_complete(&jpeg));
        assert!(decode_builtin(&jpeg).is_ok());
        // An APP1 segment holding FF D9 (like an EXIF thumbnail) must not count as the end.
        let mut with_app1 = jpeg[..2].to_vec();
        with_app1.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD8, 0xFF, 0xD9]);
        with_app1.extend_from_slice(&jpeg[2..]);
        assert!(jpeg_is_complete(&with_app1));
        let cut = &with_app1[..with_app1.len() - 40];
        assert!(!jpeg_is_complete(cut));
        assert!(decode_builtin(cut).unwrap_err().to_string().contains("truncated JPEG"));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF]));
    }

    mod needs_models {
        use super::*;

        /// A JPEG cut short (or with bytes lost inside) that still ends with its end marker: the
        /// image crate paints the missing rows grey and calls it a success; it is a failed file,
        /// like one without its end. A benign warning (extraneous bytes) still decodes.
        #[test]
        fn a_jpeg_whose_data_stops_early_is_damaged_even_with_its_end_marker() {
            let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
            let decoders = Decoders::new(Some(&models));
            assert!(decoders.turbojpeg().is_some(), "libturbojpeg not in {}/turbojpeg: run scripts/setup.sh", models.display());
            let photo = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photos/obama.jpg")).unwrap();
            assert!(decode(&photo, &decoders).is_ok());
            for keep in [0.3, 0.9, 0.99] {
                let mut cut = photo[..(photo.len() as f64 * keep) as usize].to_vec();
                cut.extend_from_slice(&[0xFF, 0xD9]);
                assert!(jpeg_is_complete(&cut));
                // Without libturbojpeg the file passes: what this test guards is the check.
                assert!(decode_builtin(&cut).is_ok());
                let err = decode(&cut, &decoders).unwrap_err();
                assert!(is_content(&err) && err.to_string().contains("damaged JPEG"), "{keep}: {err:#}");
                assert!(decoders.decode_reduced(&cut).is_err());
            }
            // Junk between the scan and the end marker is only a warning: the picture is whole.
            let mut padded = photo[..photo.len() - 2].to_vec();
            padded.extend_from_slice(&[0x00; 7]);
            padded.extend_from_slice(&[0xFF, 0xD9]);
            assert!(decode(&padded, &decoders).is_ok());
            // The last third of the data overwritten with zeros, the size and end marker kept
            // (an interrupted copy into a preallocated file).
            let mut zeroed = photo.clone();
            let n = zeroed.len();
            zeroed[n * 2 / 3..n - 2].fill(0);
            let err = decode(&zeroed, &decoders).unwrap_err();
            assert!(err.to_string().contains("damaged JPEG"), "{err:#}");
            // 100 bytes in the middle overwritten (a bad sector, a bad copy): the decoder loses
            // its place and only finds it again at the end, warning about the leftover data.
            let mut garbled = photo.clone();
            let mut x = 12345u32;
            for b in &mut garbled[n / 2..n / 2 + 100] {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = ((x >> 16) % 255) as u8;
            }
            let err = decode(&garbled, &decoders).unwrap_err();
            assert!(err.to_string().contains("damaged JPEG"), "{err:#}");
        }

        #[test]
        fn only_damage_warnings_fail_a_jpeg() {
            // A file whose scan ends in `tail` right before its end marker.
            let file = |tail: &[u8]| [&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22][..], tail, &[0xFF, 0xD9]].concat();
            let zeros = file(&[0u8; 300]);
            // An APP1 segment holding a thumbnail's scan and end marker before the photo's scan.
            let with_thumbnail = |tail: &[u8]| {
                let thumbnail = [0xFF, 0xDA, 0x00, 0x02, 0x55, 0x66, 0x77, 0xFF, 0xD9];
                let app1 = [&[0xFF, 0xE1, 0x00, (thumbnail.len() + 2) as u8][..], &thumbnail[..]].concat();
                [&[0xFF, 0xD8][..], &app1, &[0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22], tail, &[0xFF, 0xD9]].concat()
            };
            let padded_with_thumbnail = with_thumbnail(&[0u8; 300]);
            let leftover: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
            let leftover = file(&leftover);
            for (message, bytes, damaged) in [
                ("libturbojpeg: Corrupt JPEG data: premature end of data segment", &zeros, true),
                ("libturbojpeg: Corrupt JPEG data: found marker 0xd9 instead of RST6", &zeros, true),
                ("libturbojpeg: Corrupt JPEG data: bad Huffman code", &zeros, true),
                ("libturbojpeg: Corrupt JPEG data: 195874 extraneous bytes before marker 0xd9", &zeros, true),
                ("libturbojpeg: Corrupt JPEG data: 300 extraneous bytes before marker 0xd9", &leftover, true),
                ("libturbojpeg: Corrupt JPEG data: 300 extraneous bytes before marker 0xd9", &zeros, false),
                ("libturbojpeg: Corrupt JPEG data: 300 extraneous bytes before marker 0xd9", &padded_with_thumbnail, false),
                ("libturbojpeg: Corrupt JPEG data: 2 extraneous bytes before marker 0xd9", &leftover, false),
                ("libturbojpeg: Corrupt JPEG data: 337 extraneous bytes before marker 0xd0", &leftover, false),
                ("libturbojpeg: Invalid SOS parameters for sequential JPEG", &zeros, false),
                ("libturbojpeg: Unsupported color conversion request", &zeros, false),
            ] {
                assert_eq!(is_damage_warning(message, bytes), damaged, "{message}");
            }
        }
    }

    #[test]
    fn broken_heic_gets_a_clear_message() {
        let err = decode_builtin(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic").unwrap_err().to_string();
        assert!(err.contains("cannot decode HEIF (heic)"), "{err}");
    }

    #[test]
    fn a_png_declaring_29999_squared_is_refused_before_decoding() {
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&29_999u32.to_be_bytes());
        p[20..24].copy_from_slice(&29_999u32.to_be_bytes());
        let crc = crc32fast::hash(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let t = std::time::Instant::now();
        let err = decode_builtin(&p).unwrap_err();
        assert!(err.to_string().contains("29999x29999") && err.to_string().contains("MiB"), "{err}");
        assert!(is_content(&err) && !is_environment(&err));
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
        assert!(check_declared_size((10_000, 10_000), 300_000_000).is_ok());
        assert!(check_declared_size((20_000, 20_000), 1_200_000_000).is_err());
    }

    #[test]
    fn refuses_huge_header_without_allocating() {
        // A PNG whose IHDR claims 100000x100000 pixels.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_builtin(&p).unwrap_err().to_string();
        assert!(err.contains("limit") || err.contains("dimension") || err.contains("large"), "{err}");
    }
}
