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
