//! The CLI around the pipeline: versions, JSON summaries, completions, man page, more formats,
//! and an installed binary finding its models in the user location.

use crate::common::*;
use predicates::prelude::*;

#[test]
fn version_names_schema_runtime_and_model_hashes() {
    facedb().arg("--version").assert().success().stdout(
        predicate::str::contains(concat!("facedb ", env!("CARGO_PKG_VERSION")))
            .and(predicate::str::contains("database schema"))
            .and(predicate::str::contains("ONNX Runtime 1.31.1"))
            .and(predicate::str::contains("detector face_detection_yunet_2023mar_int8bq blake3 "))
            .and(predicate::str::contains("embedder face_recognition_sface_2021dec_int8bq blake3 ")),
    );
}

#[test]
fn json_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    add_photos(tmp.path(), &["obama.jpg", "biden.jpg"]);
    let out = facedb().arg("--json").arg("index").arg(tmp.path()).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["counters"]["images_new"], 2);
    assert_eq!(v["status"], "ok");
    let match_json = || {
        let out = facedb()
            .arg("--json")
            .arg("match")
            .arg(tmp.path())
            .arg("--ref")
            .arg(photo("obama2.jpg"))
            .arg("--out")
            .arg(tmp.path().join("o"))
            .assert()
            .success();
        serde_json::from_slice::<serde_json::Value>(&out.get_output().stdout).unwrap()
    };
    let v = match_json();
    assert_eq!((v["matched"].as_u64(), v["rejected"]["too far"].as_u64()), (Some(1), Some(1)));
    assert_eq!(v["vector_cache"], "rebuilt");
    // Matching again reuses the vector cache; after indexing one more photo its faces are appended.
    assert_eq!(match_json()["vector_cache"], "current");
    add_photos(tmp.path(), &["obama3.jpg"]);
    facedb().arg("-q").arg("index").arg(tmp.path()).assert().success();
    let v = match_json();
    assert_eq!((v["vector_cache"].as_str(), v["matched"].as_u64()), (Some("appended"), Some(2)));
    assert_eq!(match_json()["vector_cache"], "current");
    // Completions, man page and usage are checked in tests/cli_edge.rs (no models needed).
}

#[test]
fn tiff_bmp_webp_png_gif_and_jpeg_are_all_read() {
    let tmp = tempfile::tempdir().unwrap();
    let face = image::imageops::resize(&rgb("obama.jpg"), 364, 455, image::imageops::FilterType::Triangle);
    for (i, ext) in ["jpg", "png", "webp", "tif", "bmp", "gif"].iter().enumerate() {
        // Distinct content per file, so none is linked to another.
        let mut img = face.clone();
        img.put_pixel(0, 0, image::Rgb([i as u8 * 40, 0, 0]));
        save(tmp.path(), &format!("face.{ext}"), &img);
    }
    facedb().arg("index").arg(tmp.path()).assert().success();
    let conn = db(tmp.path());
    let formats: Vec<(String, i64)> = conn
        .prepare("SELECT format, face_count FROM photos_v ORDER BY format")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<(String, i64)> = ["bmp", "gif", "jpeg", "png", "tiff", "webp"].iter().map(|f| (f.to_string(), 1)).collect();
    assert_eq!(formats, expected);
}

#[test]
fn heic_photos_are_decoded_matched_and_cropped() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let decoders = facedb::pipeline::decode::Decoders::new(Some(&repo().join("models")));
    let heif = decoders.heif().unwrap();
    // Made with the same libheif (its x265 encoder), as an iPhone would write it.
    facedb::pipeline::heif::encode_heic(heif, &rgb("obama2.jpg"), 80, &photos.join("IMG_0001.HEIC")).unwrap();
    facedb::pipeline::heif::encode_heic(heif, &rgb("biden.jpg"), 80, &photos.join("IMG_0002.heic")).unwrap();
    let bytes = std::fs::read(photos.join("IMG_0002.heic")).unwrap();
    std::fs::write(photos.join("IMG_0003.heic"), &bytes[..bytes.len() / 3]).unwrap();

    // The cut file fails on its own (exit 1) with a message naming HEIF; the others are read.
    facedb().arg("index").arg(&photos).assert().code(1);
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM photos_v WHERE format = 'heif' AND status = 'ok' AND face_count = 1"), 2);
    let error: String = conn.query_row("SELECT error FROM images WHERE status = 'failed'", [], |r| r.get(0)).unwrap();
    assert!(error.contains("HEIF"), "{error}");

    let out = tmp.path().join("crops");
    match_ref(&photos, "obama.jpg").arg("--out").arg(&out).assert().code(0);
    let rows = manifest(&out);
    assert_eq!(rows.iter().map(|r| file_name_of(&r["source_path"])).collect::<Vec<_>>(), vec!["IMG_0001.HEIC"]);
    let crop = image::open(out.join(&rows[0]["crop_path"])).unwrap();
    assert!(crop.width() > 100, "{}", crop.width());
}

#[test]
fn device_cuda_without_the_gpu_runtime_falls_back_to_the_cpu_with_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    // A models folder without cuda/ (the GPU build), as on a machine that never ran setup.sh --gpu.
    let models = models_folder(tmp.path(), false);
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    let out = facedb()
        .env_remove("FACEDB_ORT_LIB")
        .args(["--device", "cuda", "--models"])
        .arg(&models)
        .arg("index")
        .arg(&photos)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert_eq!(stderr.matches("running on the CPU instead").count(), 1, "{stderr}");
    assert!(stderr.contains("setup.sh --gpu"), "{stderr}");
    assert_eq!(query_i64(&db(&photos), "SELECT count(*) FROM faces"), 2);
}

#[test]
fn an_installed_binary_finds_models_in_the_user_location() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    facedb().env("XDG_DATA_HOME", &data).args(["models", "install"]).arg(repo().join("models")).assert().success();
    assert!(data.join("facedb/models/libonnxruntime.so.1.31.1").is_file());
    assert!(std::fs::read_dir(data.join("facedb/models/heif")).unwrap().count() >= 3, "libheif installed too");
    // A copy of the binary far from the checkout, run from an empty folder.
    let bin = tmp.path().join("bin/facedb");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(assert_cmd::cargo::cargo_bin("facedb"), &bin).unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg"]);
    let out = std::process::Command::new(&bin)
        .env("XDG_DATA_HOME", &data)
        .env_remove("FACEDB_MODELS")
        .current_dir(tmp.path())
        .arg("index")
        .arg(&photos)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without the user location it says what to do.
    let out = std::process::Command::new(&bin)
        .env("XDG_DATA_HOME", tmp.path().join("none"))
        .env_remove("FACEDB_MODELS")
        .current_dir(tmp.path())
        .arg("index")
        .arg(&photos)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/setup.sh"));
}
