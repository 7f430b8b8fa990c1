//! libjpeg-turbo (loaded at run time from models/turbojpeg/, DCT-reduced decoding of big JPEGs)
//! finds the faces the built-in decoder finds, and indexing works without it or with a broken one.

use crate::common::*;
use facedb::models::runtime::Device;
use facedb::models::ModelFiles;
use facedb::pipeline::decode::Decoders;
use facedb::pipeline::detect::DetectParams;
use facedb::pipeline::{analyze, StageTimes};
use image::{imageops, RgbImage};
use jpeg_encoder::{ColorType, Encoder};
use predicates::prelude::*;

/// A 4000x3000 photo (upright) with a big face (reduced decode serves it) and a small one (the
/// full decode is needed for it), stored turned with EXIF orientation 6, as a phone writes it.
fn big_phone_jpeg() -> Vec<u8> {
    let mut canvas = RgbImage::from_fn(4000, 3000, |x, y| {
        let v = ((x / 7 + y / 5) % 60) as u8;
        image::Rgb([70 + v, 90 + v / 2, 110 - v / 3])
    });
    let big = imageops::resize(&rgb("obama.jpg"), 1456, 1820, imageops::FilterType::Triangle);
    imageops::replace(&mut canvas, &big, 300, 600);
    let small = imageops::resize(&rgb("biden.jpg"), 220, 500, imageops::FilterType::Triangle);
    imageops::replace(&mut canvas, &small, 2900, 1200);
    let stored = imageops::rotate270(&canvas);
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    exif.extend_from_slice(&6u16.to_le_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, 90);
    enc.add_app_segment(1, &exif).unwrap();
    enc.encode(stored.as_raw(), stored.width() as u16, stored.height() as u16, ColorType::Rgb).unwrap();
    out
}

#[test]
fn a_jpeg_decoded_by_libjpeg_turbo_gives_the_faces_of_the_built_in_decoder() {
    let bytes = big_phone_jpeg();
    let models_dir = repo().join("models");
    let turbo = Decoders::new(Some(&models_dir));
    assert!(turbo.turbojpeg().is_some(), "{}: run scripts/setup.sh (it installs libjpeg-turbo)", turbo.describe_jpeg());
    let builtin = Decoders::new(Some(&repo().join("tests/no-such-models-folder")));
    assert!(builtin.turbojpeg().is_none());
    assert_ne!(turbo.jpeg_identity(), builtin.jpeg_identity(), "the decoder is part of the detector's identity");
    let reduced = turbo.decode_reduced(&bytes).unwrap();
    assert_eq!((reduced.denom, reduced.full_size, reduced.rgb.dimensions()), (2, (4000, 3000), (2000, 1500)), "upright, at 1/2");

    let models = ModelFiles::locate(Some(&models_dir), Device::Cpu).unwrap().load().unwrap();
    let (mut detector, mut embedder) = (models.detector().unwrap(), models.embedder().unwrap());
    let mut run = |decoders: &Decoders| {
        analyze(&bytes, decoders, &mut detector, &mut embedder, &DetectParams::default(), &mut StageTimes::default()).unwrap()
    };
    let (a, b) = (run(&turbo), run(&builtin));
    assert_eq!((a.width, a.height, a.orientation, a.rotation), (4000, 3000, 6, 0));
    assert_eq!((b.width, b.height, b.orientation, b.rotation), (4000, 3000, 6, 0));
    assert_eq!(a.faces.len(), 2, "both faces with libjpeg-turbo");
    assert_eq!(b.faces.len(), 2, "both faces with the built-in decoder");
    for fa in &a.faces {
        let (da, side) = (&fa.detection, fa.detection.w.max(fa.detection.h));
        let fb = b.faces.iter().min_by(|p, q| dist(&p.detection, da).total_cmp(&dist(&q.detection, da))).unwrap();
        let db = &fb.detection;
        // A few pixels of a 130-600 px face: landmarks from DCT-reduced and full pixels agree.
        assert!(dist(da, db) < 0.03 * side + 2.0, "box {da:?} vs {db:?}");
        assert!((da.w - db.w).abs() < 0.05 * side + 2.0, "box {da:?} vs {db:?}");
        let (ea, eb) = (fa.embedding.as_ref().unwrap(), fb.embedding.as_ref().unwrap());
        let distance = 1.0 - ea.iter().zip(eb.iter()).map(|(x, y)| x * y).sum::<f32>();
        assert!(distance < 0.05, "embedding distance {distance} for the face at {da:?}");
        assert!((fa.quality.size_px - fb.quality.size_px).abs() < 0.05 * side + 2.0, "size in full-resolution pixels");
    }
}

fn dist(a: &facedb::pipeline::detect::Detection, b: &facedb::pipeline::detect::Detection) -> f32 {
    ((a.x + a.w / 2.0 - b.x - b.w / 2.0).powi(2) + (a.y + a.h / 2.0 - b.y - b.h / 2.0).powi(2)).sqrt()
}

#[test]
fn indexing_works_without_libjpeg_turbo_or_with_a_broken_one_and_says_which_decoder_found_the_faces() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg"]);
    // Missing: the built-in decoder, said once.
    facedb()
        .env("FACEDB_TURBOJPEG_LIB", tmp.path().join("missing.so"))
        .arg("index")
        .arg(&photos)
        .assert()
        .success()
        .stderr(predicate::str::contains("JPEG via the built-in decoder").count(1));
    facedb().arg("info").arg(photos.join("obama.jpg")).assert().success().stdout(predicate::str::contains("decoded by image-rs"));

    // Broken (not a library): the same, and a second photo is indexed.
    let models = models_folder(tmp.path(), false);
    std::fs::remove_file(models.join("turbojpeg/libturbojpeg.so.0.2.0")).unwrap();
    std::fs::write(models.join("turbojpeg/libturbojpeg.so.0"), b"not a library").unwrap();
    add_photos(&photos, &["biden.jpg"]);
    facedb()
        .arg("--models")
        .arg(&models)
        .arg("index")
        .arg(&photos)
        .assert()
        .success()
        .stderr(predicate::str::contains("JPEG via the built-in decoder").and(predicate::str::contains("libturbojpeg.so.0")));
    facedb().arg("info").arg(photos.join("biden.jpg")).assert().success().stdout(predicate::str::contains("decoded by image-rs"));
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), 2);

    // Installed: a new photo is decoded by it, and the database says it now mixes decoders.
    add_photos(&photos, &["obama2.jpg"]);
    facedb()
        .arg("index")
        .arg(&photos)
        .assert()
        .success()
        .stderr(predicate::str::contains("2 JPEG photos in this database were decoded by another JPEG decoder"));
    facedb().arg("info").arg(photos.join("obama2.jpg")).assert().success().stdout(predicate::str::contains("decoded by libturbojpeg"));
    facedb().arg("--version").assert().success().stdout(predicate::str::contains("JPEG via libjpeg-turbo"));
}
