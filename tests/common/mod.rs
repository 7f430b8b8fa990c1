//! Shared helpers for integration tests: real photos, real models, the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assert_cmd::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The public-domain test portraits fetched by scripts/setup.sh (run by scripts/test.sh).
pub fn photo(name: &str) -> PathBuf {
    let p = repo().join("tests/data/photos").join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh (scripts/test.sh does this first)", p.display());
    p
}

pub const ALL_PHOTOS: [&str; 7] =
    ["32bit.png", "biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"];

pub fn facedb() -> Command {
    let mut c = Command::cargo_bin("facedb").expect("binary built");
    c.env_remove("FACEDB_MODELS").env_remove("FACEDB_DB").env("NO_COLOR", "1");
    c
}

/// Copies photos into `dir` and backdates them, as photos in a real library are: files modified
/// moments before indexing are re-hashed on the next run by design (racy-timestamp rule).
pub fn add_photos(dir: &Path, names: &[&str]) {
    for n in names {
        let dest = dir.join(n);
        std::fs::copy(photo(n), &dest).unwrap();
        backdate(&dest);
    }
}

pub fn backdate(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(old).unwrap();
}

pub fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("facedb.sqlite")).unwrap()
}

pub fn query_i64(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows of a manifest.csv as (header -> value) maps.
pub fn manifest(out: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut rdr = csv::Reader::from_path(out.join("manifest.csv")).unwrap();
    let headers = rdr.headers().unwrap().clone();
    rdr.records().map(|r| headers.iter().zip(r.unwrap().iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect()).collect()
}

/// The file name of a manifest path (sources are recorded by absolute path).
pub fn file_name_of(path: &str) -> String {
    Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Saves `img` as a photo in `dir` (backdated like the others).
pub fn save(dir: &Path, name: &str, img: &image::RgbImage) {
    let p = dir.join(name);
    img.save(&p).unwrap();
    backdate(&p);
}

pub fn rgb(name: &str) -> image::RgbImage {
    image::open(photo(name)).unwrap().to_rgb8()
}

/// Two photos side by side at the height of the first.
pub fn side_by_side(left: &image::RgbImage, right: &image::RgbImage) -> image::RgbImage {
    use image::imageops::{self, FilterType};
    let right = imageops::resize(right, right.width() * left.height() / right.height(), left.height(), FilterType::Triangle);
    let mut both = image::RgbImage::new(left.width() + right.width(), left.height());
    imageops::replace(&mut both, left, 0, 0);
    imageops::replace(&mut both, &right, i64::from(left.width()), 0);
    both
}

/// Rotated by `deg` about the centre, same canvas, black corners.
pub fn rotated(img: &image::RgbImage, deg: f32) -> image::RgbImage {
    let (s, c) = deg.to_radians().sin_cos();
    let (cx, cy) = (img.width() as f32 / 2.0, img.height() as f32 / 2.0);
    image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        image::Rgb(facedb::models::sface::align::bilinear(img, f64::from(cx + dx * c + dy * s), f64::from(cy - dx * s + dy * c)))
    })
}

/// Degraded copies a real library has: dark and blurred, small and grey, mirrored with a warm
/// cast, tilted 25 degrees.
pub fn variants(img: &image::RgbImage) -> Vec<(&'static str, image::RgbImage)> {
    use image::imageops::{self, FilterType};
    let dark =
        image::RgbImage::from_fn(img.width(), img.height(), |x, y| image::Rgb(img.get_pixel(x, y).0.map(|v| (f32::from(v) * 0.35) as u8)));
    let small = imageops::resize(img, img.width() * 15 / 100, img.height() * 15 / 100, FilterType::Triangle);
    let grey = image::DynamicImage::ImageRgb8(small).grayscale().to_rgb8();
    let warm = image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(img.width() - 1 - x, y).0;
        image::Rgb([(f32::from(p[0]) * 1.3).min(255.0) as u8, (f32::from(p[1]) * 0.9) as u8, (f32::from(p[2]) * 0.7) as u8])
    });
    vec![("dark_blur", imageops::blur(&dark, 3.0)), ("small_grey", grey), ("mirror_warm", warm), ("tilt25", rotated(img, 25.0))]
}

/// `facedb match DIR --ref <test photo>`; callers add the rest.
pub fn match_ref(dir: &Path, reference: &str) -> Command {
    let mut c = facedb();
    c.arg("match").arg(dir).arg("--ref").arg(photo(reference));
    c
}

/// A models folder under `dir` holding the checkout's model files and its `turbojpeg/` (the JPEG
/// decoder is part of the detector's identity; not other sub-folders such as `cuda/`), copied (to
/// damage one) or symlinked.
pub fn models_folder(dir: &Path, copy: bool) -> PathBuf {
    let models = dir.join("models");
    for sub in ["", "turbojpeg"] {
        std::fs::create_dir(models.join(sub)).unwrap();
        let Ok(entries) = std::fs::read_dir(repo().join("models").join(sub)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let dest = models.join(sub).join(path.file_name().unwrap());
                if copy {
                    std::fs::copy(&path, dest).unwrap();
                } else {
                    std::os::unix::fs::symlink(&path, dest).unwrap();
                }
            }
        }
    }
    models
}

/// JPEG bytes with an EXIF APP1 segment carrying `orientation`.
pub fn jpeg_with_orientation(stored: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut tiff = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.add_app_segment(1, &tiff).unwrap();
    enc.encode(stored.as_raw(), stored.width() as u16, stored.height() as u16, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

/// The stored pixels that display as `upright` under EXIF orientation `o`.
pub fn stored_for(upright: &image::RgbImage, o: u16) -> image::RgbImage {
    match o {
        2 => image::imageops::flip_horizontal(upright),
        3 => image::imageops::rotate180(upright),
        4 => image::imageops::flip_vertical(upright),
        5 => image::imageops::flip_horizontal(&image::imageops::rotate90(upright)),
        6 => image::imageops::rotate270(upright),
        7 => image::imageops::flip_horizontal(&image::imageops::rotate270(upright)),
        8 => image::imageops::rotate90(upright),
        _ => upright.clone(),
    }
}
