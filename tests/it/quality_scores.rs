//! Quality scores mean what they say: a sharp face stays sharp when the photo is upscaled or
//! darkened, and a blurred one (Gaussian sigma 3 % of the face width) scores far lower.

use std::collections::HashMap;

use crate::common::*;
use image::imageops::{self, FilterType};

/// Sharpness of the largest face of every photo in `dir`, by file name.
fn sharpness_by_file(dir: &std::path::Path) -> HashMap<String, (f64, f64)> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT f.path, max(fc.w) AS w, fc.sharpness FROM files f JOIN faces fc ON fc.image_id = f.image_id
             GROUP BY f.path",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get::<_, f64>(1)?, r.get::<_, f64>(2)?)))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn sharpness_ignores_resolution_and_exposure_and_sees_blur() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"];
    add_photos(&photos, &names);
    facedb().arg("index").arg(&photos).assert().success();
    let originals = sharpness_by_file(&photos);
    for name in names {
        let img = rgb(name);
        let (face_w, _) = originals[name];
        let stem = name.trim_end_matches(".jpg");
        let up = imageops::resize(&img, img.width() * 4, img.height() * 4, FilterType::CatmullRom);
        save(&photos, &format!("{stem}_up4.png"), &up);
        let dark = image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
            image::Rgb(img.get_pixel(x, y).0.map(|v| (f32::from(v) * 0.3) as u8))
        });
        save(&photos, &format!("{stem}_dark.png"), &dark);
        save(&photos, &format!("{stem}_blur.png"), &imageops::blur(&img, (0.03 * face_w) as f32));
        // The face at 48 px, as in a group photo, on a larger canvas.
        let k = 48.0 / face_w;
        let small = imageops::resize(&img, (img.width() as f64 * k) as u32, (img.height() as f64 * k) as u32, FilterType::Triangle);
        let mut canvas = image::RgbImage::from_pixel(640, 480, image::Rgb([90, 110, 100]));
        imageops::replace(&mut canvas, &small, 200, 150);
        save(&photos, &format!("{stem}_small48.png"), &canvas);
        let mut q15 = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut q15, 15).encode_image(&img).unwrap();
        std::fs::write(photos.join(format!("{stem}_q15.jpg")), q15).unwrap();
        backdate(&photos.join(format!("{stem}_q15.jpg")));
    }
    facedb().arg("index").arg(&photos).assert().success();
    let all = sharpness_by_file(&photos);
    for name in names {
        let stem = name.trim_end_matches(".jpg");
        let s = all[name].1;
        let (up, dark, blur) = (all[&format!("{stem}_up4.png")].1, all[&format!("{stem}_dark.png")].1, all[&format!("{stem}_blur.png")].1);
        let (small, q15) = (all[&format!("{stem}_small48.png")].1, all[&format!("{stem}_q15.jpg")].1);
        eprintln!(
            "{name}: face {:.0} px, sharpness {s:.0}; upscaled 4x {up:.0}, dark {dark:.0}, blurred {blur:.0}, 48 px {small:.0}, JPEG q15 {q15:.0}",
            all[name].0
        );
        assert!((up / s - 1.0).abs() < 0.25, "{name}: upscaled {up} vs {s}");
        assert!((dark / s - 1.0).abs() < 0.25, "{name}: dark {dark} vs {s}");
        assert!(blur < 0.5 * s, "{name}: blurred {blur} vs {s}");
        assert!(
            s >= f64::from(facedb::pipeline::quality::SHARP) && up >= f64::from(facedb::pipeline::quality::SHARP),
            "{name}: sharp originals are sharp"
        );
        assert!(
            small >= f64::from(facedb::pipeline::quality::BLURRY) && q15 >= f64::from(facedb::pipeline::quality::BLURRY),
            "{name}: small or compressed but sharp is not blurry"
        );
        assert!(dark >= f64::from(facedb::pipeline::quality::BLURRY), "{name}: dark but sharp is not blurry");
        assert!(blur < f64::from(facedb::pipeline::quality::BLURRY), "{name}: blurred is blurry ({blur})");
    }
}

#[test]
fn a_database_scored_by_the_old_measure_is_rescored_without_detecting_again() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama.jpg", "biden.jpg"]);
    facedb().arg("index").arg(tmp.path()).assert().success();
    let conn = db(tmp.path());
    let new_scores = sharpness_by_file(tmp.path());
    // What a database indexed before this measure holds: version 1, full-resolution scores.
    conn.execute_batch("UPDATE faces SET sharpness = sharpness * 12.5; UPDATE images SET quality_version = 1;").unwrap();
    facedb().arg("index").arg(tmp.path()).assert().success();
    assert_eq!(query_i64(&conn, "SELECT detector_calls FROM runs ORDER BY id DESC LIMIT 1"), 0, "no detection");
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE quality_version = 2"), 2);
    for (name, (_, s)) in sharpness_by_file(tmp.path()) {
        assert!((s - new_scores[&name].1).abs() < 1e-3, "{name}: rescored {s}, fresh {}", new_scores[&name].1);
    }
    // Nothing left to do: the next index is a no-op.
    facedb().arg("index").arg(tmp.path()).assert().success();
    assert_eq!(query_i64(&conn, "SELECT embedder_calls FROM runs ORDER BY id DESC LIMIT 1"), 0);
}
