//! Real folders are messy: every hostile or unusual file gets a stored reason or is indexed, never
//! a panic, and the exit code says whether something failed.

use std::os::unix::ffi::OsStrExt;

use crate::common::*;
use image::{imageops, DynamicImage, RgbImage};
use jpeg_encoder::{ColorType, Encoder};
use predicates::prelude::*;

#[test]
fn every_exif_orientation_comes_out_upright() {
    let tmp = tempfile::tempdir().unwrap();
    let upright = imageops::resize(&rgb("obama.jpg"), 455, 568, imageops::FilterType::Triangle);
    for o in 1..=8u16 {
        let p = tmp.path().join(format!("orient{o}.jpg"));
        std::fs::write(&p, jpeg_with_orientation(&stored_for(&upright, o), o)).unwrap();
        backdate(&p);
    }
    facedb().arg("index").arg(tmp.path()).assert().success();
    let conn = db(tmp.path());
    let mut stmt = conn
        .prepare("SELECT f.path, i.orientation, i.width, i.height, fc.x, fc.y, fc.w, fc.roll FROM files f JOIN images i ON i.id = f.image_id JOIN faces fc ON fc.image_id = i.id ORDER BY f.path")
        .unwrap();
    type Row = (String, i64, i64, i64, f64, f64, f64, f64);
    let rows: Vec<Row> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 8, "one face in each of the 8 photos: {rows:?}");
    let reference = rows[0].clone();
    for (i, (path, orientation, w, h, x, y, fw, roll)) in rows.iter().enumerate() {
        assert_eq!(*orientation, i as i64 + 1, "{path}");
        assert_eq!((*w, *h), (455, 568), "{path}: dimensions after orientation");
        assert!(roll.abs() < 15.0, "{path}: face is upright, roll {roll}");
        // Same face position as the unrotated photo (JPEG re-encoding moves it a little).
        assert!(
            (x - reference.4).abs() < 6.0 && (y - reference.5).abs() < 6.0 && (fw - reference.6).abs() < 8.0,
            "{path}: {x},{y},{fw} vs {reference:?}"
        );
    }
}

#[test]
fn hostile_and_unusual_files_are_indexed_or_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let face = imageops::resize(&rgb("obama.jpg"), 364, 455, imageops::FilterType::Triangle);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(d.join(name), bytes).unwrap();
        backdate(&d.join(name));
    };

    // Unusual but valid: each must be indexed with its one face.
    let mut cmyk = Vec::new();
    let cmyk_px: Vec<u8> = face
        .pixels()
        .flat_map(|p| {
            let [r, g, b] = p.0;
            let k = 255 - r.max(g).max(b);
            let c = |v: u8| {
                if k == 255 {
                    0
                } else {
                    ((255 - v - k) as u32 * 255 / (255 - k) as u32) as u8
                }
            };
            // Adobe CMYK JPEGs store inverted values; the decoder handles either convention.
            [255 - c(r), 255 - c(g), 255 - c(b), 255 - k]
        })
        .collect();
    Encoder::new(&mut cmyk, 90).encode(&cmyk_px, face.width() as u16, face.height() as u16, ColorType::Cmyk).unwrap();
    write("cmyk.jpg", &cmyk);
    DynamicImage::ImageRgb8(face.clone()).into_rgb16().save(d.join("sixteen_bit.png")).unwrap();
    DynamicImage::ImageRgb8(face.clone()).into_luma8().save(d.join("grey.jpg")).unwrap();
    DynamicImage::ImageRgb8(face.clone()).into_rgba8().save(d.join("alpha.png")).unwrap();
    {
        let mut gif = Vec::new();
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let rgba = DynamicImage::ImageRgb8(face.clone()).into_rgba8();
        enc.encode_frames([image::Frame::new(rgba.clone()), image::Frame::new(imageops::flip_horizontal(&rgba))]).unwrap();
        drop(enc);
        write("animated.gif", &gif);
    }
    face.save(d.join("webp.webp")).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.jpg");
    imageops::flip_horizontal(&face).save_with_format(d.join(name), image::ImageFormat::Jpeg).unwrap();
    std::fs::create_dir(d.join("album")).unwrap();
    face.save(d.join("album/inside.jpg")).unwrap();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            backdate(&p);
        }
    }
    backdate(&d.join("album/inside.jpg"));

    // Broken: each must be reported with a reason.
    write("zero.jpg", b"");
    write("random.jpg", &(0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>());
    let mut bomb = Vec::new();
    RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut bomb), image::ImageFormat::Png).unwrap();
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]); // 100000 x 100000
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    write("bomb.png", &bomb);
    write("photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic");

    // Links: a loop and a directory link are not followed; a file link is indexed.
    std::os::unix::fs::symlink(d, d.join("album/loop")).unwrap();
    std::os::unix::fs::symlink(d.join("album"), d.join("album_link")).unwrap();
    std::os::unix::fs::symlink(d.join("webp.webp"), d.join("link.webp")).unwrap();

    // No read permission (root reads it anyway; either outcome is checked below).
    write("locked.jpg", &std::fs::read(photo("biden.jpg")).unwrap());
    std::fs::set_permissions(d.join("locked.jpg"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let locked_readable = std::fs::read(d.join("locked.jpg")).is_ok();

    let out = facedb().arg("index").arg(d).assert().code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");

    let conn = db(d);
    let faces_of = |path: &str| -> i64 {
        conn.query_row("SELECT face_count FROM photos_v p JOIN files f ON f.image_id = p.image_id WHERE f.path = ?1", [path], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{path} not indexed: {e}"))
    };
    for ok in ["cmyk.jpg", "sixteen_bit.png", "grey.jpg", "alpha.png", "animated.gif", "webp.webp", "album/inside.jpg", "link.webp"] {
        assert_eq!(faces_of(ok), 1, "{ok}");
    }
    assert_eq!(faces_of("caf\\xE9-latin1.jpg"), 1, "non-UTF-8 bytes are escaped in the key");
    if locked_readable {
        assert_eq!(faces_of("locked.jpg"), 1);
    }
    let failed: std::collections::HashMap<String, String> = {
        let mut stmt = conn
            .prepare("SELECT f.path, coalesce(f.error, i.error) FROM files f LEFT JOIN images i ON i.id = f.image_id WHERE f.image_id IS NULL OR i.status = 'failed'")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    assert!(failed["zero.jpg"].contains("empty"));
    assert!(failed["random.jpg"].contains("not a supported image"));
    assert!(failed["bomb.png"].to_lowercase().contains("limit"), "{}", failed["bomb.png"]);
    assert!(failed["photo.heic"].contains("cannot decode HEIF (heic)"), "{}", failed["photo.heic"]);
    assert_eq!(failed.contains_key("locked.jpg"), !locked_readable);
    assert_eq!(failed.len(), 4 + usize::from(!locked_readable), "{failed:?}");
    // Nothing was indexed twice through the links.
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM files WHERE path LIKE 'album_link/%' OR path LIKE 'album/loop/%'"), 0);

    // The crop of the non-UTF-8 file works too, and crops stay inside --out.
    let crops = tmp.path().join("crops");
    match_ref(d, "obama.jpg").arg("--out").arg(&crops).assert().success();
    assert!(manifest(&crops).iter().any(|r| file_name_of(&r["source_path"]).starts_with("caf")));
    for r in manifest(&crops) {
        assert!(!r["crop_path"].contains('/') && crops.join(&r["crop_path"]).is_file(), "{r:?}");
    }
    facedb().arg("report").arg(d).assert().success().stdout(predicate::str::contains("bomb.png"));
}

#[test]
fn a_file_that_changes_while_being_indexed_is_read_again_next_time() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama2.jpg", "obama3.jpg"]);
    let target = tmp.path().join("changing.jpg");
    let (a, b) = (std::fs::read(photo("obama.jpg")).unwrap(), std::fs::read(photo("biden.jpg")).unwrap());
    std::fs::write(&target, &a).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, target, a, b) = (stop.clone(), target.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::write(&target, if i.is_multiple_of(2) { &b } else { &a }).unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        })
    };
    let status = facedb().arg("index").arg(tmp.path()).output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(matches!(status.status.code(), Some(0) | Some(1)), "{status:?}");
    assert!(!String::from_utf8_lossy(&status.stderr).contains("panicked"));

    // Settled now: the next run records the file's final content.
    std::fs::write(&target, &b).unwrap();
    backdate(&target);
    facedb().arg("index").arg(tmp.path()).assert().success();
    let conn = db(tmp.path());
    let hash: String = conn
        .query_row("SELECT i.blake3 FROM files f JOIN images i ON i.id = f.image_id WHERE f.path = 'changing.jpg'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hash, blake3::hash(&b).to_hex().to_string());
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
}

#[test]
fn a_damaged_model_file_is_one_clear_fatal_error() {
    let tmp = tempfile::tempdir().unwrap();
    let models = models_folder(tmp.path(), true);
    let sface = models.join("face_recognition_sface_2021dec_int8bq.onnx");
    let bytes = std::fs::read(&sface).unwrap();
    std::fs::write(&sface, &bytes[..bytes.len() / 2]).unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    let out = facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("facedb: ") && stderr.contains("face_recognition_sface_2021dec_int8bq.onnx"), "{stderr}");
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");
}

/// A reference photo (or negative) whose name is not UTF-8 is used like any other: the run's
/// stored arguments carry the name with U+FFFD for the bad bytes (serialising it raw panicked).
#[test]
fn a_reference_whose_name_is_not_utf8_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("photos");
    std::fs::create_dir(&d).unwrap();
    add_photos(&d, &["obama.jpg", "biden.jpg"]);
    facedb().arg("index").arg(&d).assert().success();
    let reference = tmp.path().join(std::ffi::OsStr::from_bytes(b"ref\xff.jpg"));
    std::fs::copy(photo("obama2.jpg"), &reference).unwrap();
    let negative = tmp.path().join(std::ffi::OsStr::from_bytes(b"not\xfe.jpg"));
    std::fs::copy(photo("biden.jpg"), &negative).unwrap();
    for extra in [&["--dry-run"][..], &[][..]] {
        let out = facedb().arg("match").arg(&d).arg("--ref").arg(&reference).arg("--not").arg(&negative).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
    }
    let stored: String =
        db(&d).query_row("SELECT args_json FROM runs WHERE command = 'match' ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(stored.contains("ref\u{FFFD}.jpg") && stored.contains("not\u{FFFD}.jpg"), "{stored}");
}
