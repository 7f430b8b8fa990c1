//! Start-up: the models load on a thread of their own while the workers read and decode their
//! first photos, yet a broken model or runtime is still one clear fatal error that blames no
//! photo, and `FACEDB_TIMINGS` says where the start-up time went.

use crate::common::*;

/// Index `photos` with the models in `models` (and `env` set, `extra` arguments); returns the
/// exit code and stderr.
fn index_with(models: &std::path::Path, photos: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> (i32, String) {
    let mut cmd = facedb();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.arg("--models").arg(models).arg("index").arg(photos).args(extra).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn index(models: &std::path::Path, photos: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    index_with(models, photos, env, &[])
}

#[test]
fn a_broken_detector_or_runtime_loaded_in_the_background_is_one_fatal_error_that_blames_no_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let models = models_folder(tmp.path(), true);
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);

    // One worker per photo: the first loads the models. More workers than photos: a thread of
    // its own does.
    for jobs in ["2", "4"] {
        let yunet = models.join("face_detection_yunet_2023mar_int8bq.onnx");
        let good = std::fs::read(&yunet).unwrap();
        std::fs::write(&yunet, &good[..good.len() / 3]).unwrap();
        let (code, stderr) = index_with(&models, &photos, &[], &["--jobs", jobs]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("facedb: ") && stderr.contains("face_detection_yunet_2023mar_int8bq.onnx"), "{stderr}");
        std::fs::write(&yunet, &good).unwrap();

        let missing = tmp.path().join("no-such-libonnxruntime.so");
        let (code, stderr) = index_with(&models, &photos, &[("FACEDB_ORT_LIB", missing.to_str().unwrap())], &["--jobs", jobs]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("ONNX Runtime library not found") && stderr.contains("no-such-libonnxruntime.so"), "{stderr}");
    }

    // Neither photo was blamed: none is stored as failed, and the next run indexes both.
    let conn = db(&photos);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM images"), 0);
    let (code, stderr) = index(&models, &photos, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM faces"), 2);
}

#[test]
fn timings_say_where_start_up_and_each_worker_spent_their_time_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let models = models_folder(tmp.path(), false);
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama.jpg", "biden.jpg"]);
    let (code, stderr) = index(&models, &photos, &[("FACEDB_TIMINGS", "1")]);
    assert_eq!(code, 0, "{stderr}");
    for step in [
        "database opened",
        "model files read and hashed",
        "walked and planned: 2 files",
        "runtime loaded",
        "SFace session made",
        "worker 0: done",
        "writer done",
    ] {
        assert!(stderr.lines().any(|l| l.starts_with("facedb timings:") && l.contains(step)), "{step} missing:\n{stderr}");
    }
    // Every photo was detected by one of the workers, each (both are over 800 px) with a detail
    // and an overview pass.
    let photos_done: u32 =
        stderr.lines().filter_map(|l| l.split(": done, ").nth(1)).map(|rest| rest.split(' ').next().unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(photos_done, 2, "{stderr}");
    let calls = |kind: &str| -> u32 {
        stderr
            .lines()
            .filter_map(|l| l.split(&format!("{kind} ")).nth(1))
            .filter_map(|rest| rest.split(" calls").next()?.parse::<u32>().ok())
            .sum()
    };
    assert_eq!((calls("detail"), calls("overview")), (2, 2), "{stderr}");

    let quiet = tmp.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    add_photos(&quiet, &["obama.jpg"]);
    let (code, stderr) = index(&models, &quiet, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("facedb timings"), "{stderr}");
}
