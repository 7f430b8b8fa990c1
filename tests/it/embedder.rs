//! The embedder thread: `index` workers prepare faces (align, hash, quality) and hand them to one
//! thread that runs SFace, so many photos' faces are in flight at once. They must come out as
//! each photo analysed alone gives them, and an embedder that cannot start must stop the run
//! without blaming a photo.

use std::path::Path;

use crate::common::*;
use facedb::models::runtime::Device;
use facedb::models::ModelFiles;
use facedb::pipeline::decode::Decoders;
use facedb::pipeline::detect::DetectParams;
use facedb::pipeline::{analyze, StageTimes};
use image::imageops::{self, FilterType};

/// `n` distinct small photos with two faces each (more than the queues between the workers, the
/// embedder thread and the writer hold), and one without a face.
fn photos_with_faces(dir: &Path, n: u32) {
    let small = |name: &str| {
        let img = rgb(name);
        imageops::resize(&img, 200, 200 * img.height() / img.width(), FilterType::Triangle)
    };
    let pairs = [side_by_side(&small("obama.jpg"), &small("biden.jpg")), side_by_side(&small("biden.jpg"), &small("obama2.jpg"))];
    for i in 0..n {
        let mut img = pairs[(i % 2) as usize].clone();
        // A few pixels in a corner spell `i`, so every content (and hash) differs.
        for bit in 0..8 {
            let v = if (i >> bit) & 1 == 1 { 255 } else { 0 };
            img.put_pixel(bit, 0, image::Rgb([v, v, v]));
        }
        save(dir, &format!("p{i:03}.jpg"), &img);
    }
    save(dir, "no-face.jpg", &image::RgbImage::from_pixel(300, 200, image::Rgb([120, 140, 160])));
}

/// Every face as stored: file, index, box, score, quality, face hash and embedding bytes.
fn stored_faces(dir: &Path) -> Vec<String> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(
            "SELECT f.path || ' ' || fc.idx || ' ' || printf('%.4f %.4f %.4f %.4f %.4f %.4f', fc.x, fc.y, fc.w, fc.h, fc.score, fc.sharpness)
                    || ' ' || coalesce(fc.face_hash, '-') || ' ' || coalesce(hex(e.vector), '-')
             FROM files f JOIN faces fc ON fc.image_id = f.image_id LEFT JOIN embeddings e ON e.face_id = fc.id
             ORDER BY f.path, fc.idx",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn faces_of_many_photos_in_flight_are_stored_as_each_photo_analysed_alone_gives_them() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    photos_with_faces(&photos, 40);
    facedb().arg("index").arg(&photos).args(["--jobs", "3"]).assert().success();

    // The same photos analysed one by one on this thread, embedding right after aligning.
    let models_dir = repo().join("models");
    let models = ModelFiles::locate(Some(&models_dir), Device::Cpu).unwrap().load().unwrap();
    let (mut detector, mut embedder) = (models.detector().unwrap(), models.embedder().unwrap());
    let decoders = Decoders::new(Some(&models_dir));
    let mut names: Vec<String> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    let mut alone = Vec::new();
    for name in &names {
        let bytes = std::fs::read(photos.join(name)).unwrap();
        let img = analyze(&bytes, &decoders, &mut detector, &mut embedder, &DetectParams::default(), &mut StageTimes::default()).unwrap();
        for (idx, f) in img.faces.iter().enumerate() {
            let (d, q) = (&f.detection, &f.quality);
            let vector: String =
                f.embedding.map_or("-".into(), |v| v.iter().flat_map(|x| x.to_le_bytes()).map(|b| format!("{b:02X}")).collect());
            let hash = f.face_hash.map_or("-".into(), |h| (h as i64).to_string());
            alone.push(format!(
                "{name} {idx} {:.4} {:.4} {:.4} {:.4} {:.4} {:.4} {hash} {vector}",
                f64::from(d.x),
                f64::from(d.y),
                f64::from(d.w),
                f64::from(d.h),
                f64::from(d.score),
                f64::from(q.sharpness)
            ));
        }
    }
    let stored = stored_faces(&photos);
    assert_eq!(stored.len(), 80, "two faces in each of the 40 photos, none in the last:\n{}", stored.join("\n"));
    assert!(stored.iter().all(|s| !s.ends_with(" -")), "every face embedded");
    assert_eq!(stored, alone);
    // Each photo's embedding time went with its faces to the writer.
    let conn = db(&photos);
    let without = query_i64(
        &conn,
        "SELECT count(*) FROM images i WHERE EXISTS (SELECT 1 FROM faces WHERE image_id = i.id)
           AND json_extract(i.stage_ms_json, '$.align_embed') <= 0",
    );
    assert_eq!(without, 0);
}

#[test]
fn an_embedder_that_cannot_start_while_workers_run_ahead_is_one_fatal_error_that_blames_no_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let models = models_folder(tmp.path(), true);
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    photos_with_faces(&photos, 30);
    let sface = models.join("face_recognition_sface_2021dec_int8bq.onnx");
    let good = std::fs::read(&sface).unwrap();
    std::fs::write(&sface, &good[..good.len() / 3]).unwrap();

    // The first worker makes the SFace session before its first photo and stops there; the
    // embedder thread tries again at the first face while the other workers run ahead.
    for jobs in ["1", "2", "3"] {
        let out = facedb().arg("--models").arg(&models).arg("index").arg(&photos).args(["--jobs", jobs]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--jobs {jobs}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "--jobs {jobs}: {stderr}");
        assert!(stderr.starts_with("facedb: ") && stderr.contains("face_recognition_sface_2021dec_int8bq.onnx"), "{stderr}");
        let conn = db(&photos);
        assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE status = 'failed'"), 0, "--jobs {jobs}: no photo blamed");
        assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), 0, "--jobs {jobs}: no face stored without its embedding");
    }

    // With the model repaired, the next run indexes every photo.
    std::fs::write(&sface, &good).unwrap();
    facedb().arg("--models").arg(&models).arg("index").arg(&photos).assert().success();
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images WHERE status = 'ok'"), 31);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM embeddings"), 60);
}
