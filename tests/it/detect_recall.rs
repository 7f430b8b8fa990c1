//! Small faces in big group photos are found, and so is a face filling the frame.
//! Composed from the real portraits: 12 MP canvases with 40-120 px faces.

use std::time::Instant;

use facedb::models::ModelFiles;
use facedb::pipeline::detect::{detect, DetectParams, Detection};
use facedb::pipeline::frame::Frame;
use image::imageops::{self, FilterType};
use image::RgbImage;

fn largest(dets: &[Detection]) -> Detection {
    *dets.iter().max_by(|a, b| (a.w * a.h).total_cmp(&(b.w * b.h))).unwrap()
}

#[test]
fn small_faces_in_group_photos_and_frame_filling_faces_are_found() {
    let models =
        ModelFiles::locate(Some(&crate::common::repo().join("models")), facedb::models::runtime::Device::Cpu).unwrap().load().unwrap();
    let mut yunet = models.detector().unwrap();
    let params = DetectParams::default();
    let portraits: Vec<(RgbImage, Detection)> = ["obama.jpg", "biden.jpg", "obama3.jpg", "obama2.jpg"]
        .iter()
        .map(|n| {
            let img = crate::common::rgb(n);
            let face = largest(&detect(&mut yunet, &Frame::from_image(img.clone()), &params).unwrap().faces);
            (img, face)
        })
        .collect();

    // Three 4000x3000 group photos, 6x4 grid of people; face widths 40..120 px.
    let (mut found, mut total, mut elapsed) = (0, 0, 0.0);
    let mut by_size: Vec<(u32, bool)> = Vec::new();
    for group in 0..3u32 {
        let mut canvas = RgbImage::from_fn(4000, 3000, |x, y| {
            image::Rgb([(90 + (x * 7 + y * 3 + group * 11) % 40) as u8, 100, (110 + (x + y) % 30) as u8])
        });
        let mut truth = Vec::new();
        for i in 0..24u32 {
            let (img, face) = &portraits[((i + group) % 4) as usize];
            let width = 40 + (i * 80 / 23); // 40..120
            let s = width as f32 / face.w;
            let (pw, ph) = ((img.width() as f32 * s).round() as u32, (img.height() as f32 * s).round() as u32);
            let small = imageops::resize(img, pw, ph, FilterType::Triangle);
            let (cx, cy) = (80 + (i % 6) * 640, 80 + (i / 6) * 720);
            imageops::replace(&mut canvas, &small, i64::from(cx), i64::from(cy));
            truth.push((cx as f32 + face.x * s, cy as f32 + face.y * s, face.w * s, face.h * s, width));
        }
        let t = Instant::now();
        let dets = detect(&mut yunet, &Frame::from_image(canvas.clone()), &params).unwrap().faces;
        elapsed += t.elapsed().as_secs_f64();
        for (x, y, w, h, width) in truth {
            let hit = dets.iter().any(|d| {
                let (cx, cy) = (d.x + d.w / 2.0, d.y + d.h / 2.0);
                (x..x + w).contains(&cx) && (y..y + h).contains(&cy) && d.w > w * 0.5 && d.w < w * 2.0
            });
            found += usize::from(hit);
            total += 1;
            by_size.push((width, hit));
        }
        // No phantom faces on the background.
        assert!(dets.len() <= 24 + 2, "{} detections for 24 faces", dets.len());
    }
    let missed: Vec<u32> = by_size.iter().filter(|(_, hit)| !hit).map(|(w, _)| *w).collect();
    eprintln!(
        "group photos: found {found}/{total} faces 40-120 px wide ({:.0} ms per 12 MP photo); missed widths {missed:?}",
        elapsed * 1000.0 / 3.0
    );
    assert!(found as f64 / total as f64 >= 0.9, "recall {found}/{total}, missed {missed:?}");
    assert!(!missed.iter().any(|&w| w >= 60), "faces from 60 px are always found: {missed:?}");

    // A face filling the whole frame: the portrait cropped to its face box, enlarged to 2000 px.
    let (img, face) = &portraits[0];
    let tight = imageops::crop_imm(img, face.x as u32, face.y as u32, face.w as u32, face.h as u32).to_image();
    let huge = imageops::resize(&tight, 2000, (2000.0 * face.h / face.w) as u32, FilterType::Triangle);
    let dets = detect(&mut yunet, &Frame::from_image(huge), &params).unwrap().faces;
    assert_eq!(dets.len(), 1, "one face, no duplicates: {dets:?}");
    assert!(dets[0].w > 1200.0, "{:?}", dets[0]);
}

/// The person at 52 px among eleven others (40-120 px) in a 4000x3000 JPEG, indexed and matched
/// with the default settings: the small-face passes find the face and its landmarks are good
/// enough for SFace to recognise it (the only crop, centred on the right face).
#[test]
fn a_small_face_in_a_big_group_photo_is_found_and_recognised_at_the_defaults() {
    let models =
        ModelFiles::locate(Some(&crate::common::repo().join("models")), facedb::models::runtime::Device::Cpu).unwrap().load().unwrap();
    let mut yunet = models.detector().unwrap();
    let face_of = |img: &RgbImage, yunet: &mut facedb::models::yunet::YuNet| {
        largest(&detect(yunet, &Frame::from_image(img.clone()), &DetectParams::default()).unwrap().faces)
    };
    let (person, other) = (crate::common::rgb("obama2.jpg"), crate::common::rgb("biden.jpg"));
    let (person_face, other_face) = (face_of(&person, &mut yunet), face_of(&other, &mut yunet));
    let mut canvas = RgbImage::from_fn(4000, 3000, |x, y| image::Rgb([(95 + (x * 5 + y * 3) % 40) as u8, 105, (115 + (x + y) % 30) as u8]));
    // Pastes `img` so its face is `width` px wide with the face's top-left at (x, y); the face box.
    let mut paste = |img: &RgbImage, face: &Detection, width: u32, x: u32, y: u32| {
        let s = width as f32 / face.w;
        let small = imageops::resize(img, (img.width() as f32 * s) as u32, (img.height() as f32 * s) as u32, FilterType::Triangle);
        let (ox, oy) = (x as f32 - face.x * s, y as f32 - face.y * s);
        imageops::replace(&mut canvas, &small, ox as i64, oy as i64);
        (x as f32, y as f32, face.w * s, face.h * s)
    };
    for i in 0..11u32 {
        paste(&other, &other_face, 40 + i * 8, 300 + (i % 4) * 900, 400 + (i / 4) * 900);
    }
    let (tx, ty, tw, th) = paste(&person, &person_face, 52, 3100, 2300);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    crate::common::save(&dir, "group.jpg", &canvas);
    crate::common::facedb().arg("index").arg(&dir).assert().success();
    let out = tmp.path().join("out");
    crate::common::match_ref(&dir, "obama.jpg").arg("--out").arg(&out).assert().success();
    let rows = crate::common::manifest(&out);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let f = |k: &str| rows[0][k].parse::<f32>().unwrap();
    let (cx, cy) = (f("face_x") + f("face_w") / 2.0, f("face_y") + f("face_h") / 2.0);
    assert!((tx..tx + tw).contains(&cx) && (ty..ty + th).contains(&cy), "crop of {:?}, person at {:?}", rows[0], (tx, ty, tw, th));
}

/// A database indexed with another small-face pass size (the old default, 1280) is not mixed
/// with the new one unnoticed: `index` says how many photos were detected the other way.
#[test]
fn photos_detected_with_another_detect_size_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    crate::common::add_photos(tmp.path(), &["obama.jpg", "biden.jpg"]);
    crate::common::facedb().arg("index").arg(tmp.path()).arg("--detect-size").arg("1280").assert().success();
    crate::common::add_photos(tmp.path(), &["obama2.jpg"]);
    let said = crate::common::facedb().arg("index").arg(tmp.path()).assert().success().get_output().stderr.clone();
    let said = String::from_utf8_lossy(&said);
    assert!(said.contains("2 photos in this database were detected with another --detect-size than now (960"), "{said}");
    let again = crate::common::facedb()
        .arg("index")
        .arg(tmp.path())
        .arg("--detect-size")
        .arg("1280")
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8_lossy(&again).contains("1 photos in this database were detected with another --detect-size than now (1280"));
}
