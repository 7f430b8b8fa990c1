//! Builds the identity-labelled evaluation set of scripts/eval.sh from public photos: the
//! person is Barack Obama (the public-domain test portraits; `obama.jpg` is kept out as the
//! reference), distractors are Joe Biden and the 23 people in the group photos of the npm package
//! `@vladmandic/face-api` (`demo/sample*.jpg`). Every kind of hard photo a library holds is made
//! from them, deterministically, and `labels.csv` says for each photo whether the person is in
//! it and where (upright pixels), so a crop of the wrong face counts as a miss and a false match.
//!     cargo run --release --example make_eval_set -- PORTRAITS_DIR SAMPLES_DIR OUT_DIR

use std::io::Write;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::RgbImage;
use jpeg_encoder::{ColorType, Encoder};

/// Portraits and their face boxes (x, y, w, h) as YuNet finds them.
const PERSON: [(&str, [u32; 4]); 4] = [
    ("obama2.jpg", [201, 229, 275, 404]),
    ("obama3.jpg", [644, 274, 266, 345]),
    ("obama_partial_face.jpg", [0, 84, 193, 332]),
    ("obama_partial_face2.jpg", [366, 92, 185, 328]),
];
const OTHER: (&str, [u32; 4]) = ("biden.jpg", [426, 173, 291, 406]);
/// Faces in the sample group photos are 166-237 px wide; this is their typical width.
const SAMPLE_FACE: u32 = 195;

struct Writer {
    out: std::path::PathBuf,
    labels: std::fs::File,
}

impl Writer {
    /// Saves a photo (JPEG quality 92 unless given) with its label: `face` is the person's box.
    fn save(&mut self, name: &str, kind: &str, img: &RgbImage, face: Option<[u32; 4]>) -> anyhow::Result<()> {
        self.save_bytes(name, kind, &jpeg(img, 92, None)?, face, None)
    }

    /// `also`: a second box that is the person too (the mirror image in a mirror pair).
    fn save_bytes(&mut self, name: &str, kind: &str, bytes: &[u8], face: Option<[u32; 4]>, also: Option<[u32; 4]>) -> anyhow::Result<()> {
        std::fs::write(self.out.join(name), bytes)?;
        let [x, y, w, h] = face.unwrap_or_default();
        let [x2, y2, w2, h2] = also.unwrap_or_default();
        writeln!(self.labels, "{name},{kind},{},{x},{y},{w},{h},{x2},{y2},{w2},{h2}", u8::from(face.is_some()))?;
        Ok(())
    }
}

fn jpeg(img: &RgbImage, quality: u8, orientation: Option<u16>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, quality);
    if let Some(o) = orientation {
        let mut tiff = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        tiff.extend_from_slice(&o.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        enc.add_app_segment(1, &tiff)?;
    }
    enc.encode(img.as_raw(), u16::try_from(img.width())?, u16::try_from(img.height())?, ColorType::Rgb)?;
    Ok(out)
}

fn scale_box(b: [u32; 4], k: f64, dx: u32, dy: u32) -> [u32; 4] {
    let s = |v: u32| (f64::from(v) * k).round() as u32;
    [s(b[0]) + dx, s(b[1]) + dy, s(b[2]), s(b[3])]
}

fn resized(img: &RgbImage, k: f64) -> RgbImage {
    let (w, h) = ((f64::from(img.width()) * k).round().max(1.0) as u32, (f64::from(img.height()) * k).round().max(1.0) as u32);
    imageops::resize(img, w, h, FilterType::Triangle)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [portraits, samples, out] = args.as_slice() else {
        anyhow::bail!("usage: make_eval_set PORTRAITS_DIR SAMPLES_DIR OUT_DIR");
    };
    let (portraits, samples, out) = (Path::new(portraits), Path::new(samples), Path::new(out));
    std::fs::create_dir_all(out)?;
    let labels = std::fs::File::create(out.join("labels.csv"))?;
    let mut w = Writer { out: out.to_path_buf(), labels };
    writeln!(w.labels, "file,kind,person,x,y,w,h,x2,y2,w2,h2")?;
    let open = |dir: &Path, name: &str| image::open(dir.join(name)).map(|i| i.to_rgb8());
    let groups: Vec<RgbImage> = (1..=6).map(|i| open(samples, &format!("sample{i}.jpg"))).collect::<Result<_, _>>()?;

    let mut people: Vec<(String, RgbImage, [u32; 4], bool)> = Vec::new();
    for (name, face) in PERSON {
        people.push((name.trim_end_matches(".jpg").to_string(), open(portraits, name)?, face, true));
    }
    people.push((OTHER.0.trim_end_matches(".jpg").to_string(), open(portraits, OTHER.0)?, OTHER.1, false));

    for (i, (stem, img, face, is_person)) in people.iter().enumerate() {
        let label = |b: [u32; 4]| is_person.then_some(b);
        let fw = f64::from(face[2]);
        w.save(&format!("{stem}_original.jpg"), "original", img, label(*face))?;
        // Stored sideways with EXIF orientation 6 (a phone held upright).
        let stored = imageops::rotate270(img);
        w.save_bytes(&format!("{stem}_exif6.jpg"), "exif_rotated", &jpeg(&stored, 92, Some(6))?, label(*face), None)?;
        // Sideways pixels and no EXIF (a scan, some cameras): upright after turning 90 degrees.
        let sideways = imageops::rotate90(img);
        // Labelled upright: facedb turns the photo and reports faces in the turned image.
        w.save(&format!("{stem}_sideways.jpg"), "sideways", &sideways, label(*face))?;
        // The photo beside its mirror image: both faces are the person.
        let mirror = imageops::flip_horizontal(img);
        let mut pair = RgbImage::new(img.width() * 2, img.height());
        imageops::replace(&mut pair, img, 0, 0);
        imageops::replace(&mut pair, &mirror, i64::from(img.width()), 0);
        let mirrored = [2 * img.width() - face[0] - face[2], face[1], face[2], face[3]];
        w.save_bytes(&format!("{stem}_mirror_pair.jpg"), "mirror_pair", &jpeg(&pair, 92, None)?, label(*face), label(mirrored))?;
        let dark =
            RgbImage::from_fn(img.width(), img.height(), |x, y| image::Rgb(img.get_pixel(x, y).0.map(|v| (f32::from(v) * 0.3) as u8)));
        w.save(&format!("{stem}_dark.jpg"), "dark", &dark, label(*face))?;
        w.save(&format!("{stem}_blurred.jpg"), "blurred", &imageops::blur(img, (0.02 * fw) as f32), label(*face))?;
        w.save_bytes(&format!("{stem}_jpeg15.jpg"), "jpeg15", &jpeg(img, 15, None)?, label(*face), None)?;
        let grey = image::DynamicImage::ImageRgb8(img.clone()).grayscale().to_rgb8();
        w.save(&format!("{stem}_grey.jpg"), "grey", &grey, label(*face))?;
        // Up to a 4000 px long side, as an upscaled studio portrait.
        let k = 4000.0 / f64::from(img.width().max(img.height()));
        w.save(&format!("{stem}_upscaled.jpg"), "upscaled", &resized(img, k), label(scale_box(*face, k, 0, 0)))?;
        // A hand or a mask over the mouth: the lower third of the face covered.
        let mut covered = img.clone();
        let band = [face[0], face[1] + face[3] * 62 / 100, face[2], face[3] * 30 / 100];
        for y in band[1]..(band[1] + band[3]).min(img.height()) {
            for x in band[0]..(band[0] + band[2]).min(img.width()) {
                covered.put_pixel(x, y, image::Rgb([182, 160, 140]));
            }
        }
        w.save(&format!("{stem}_covered_mouth.jpg"), "covered_mouth", &covered, label(*face))?;
        // A 48 px face on a small photo.
        let k = 48.0 / fw;
        let small = resized(img, k);
        let mut canvas = RgbImage::from_pixel(640, 480, image::Rgb([96, 110, 104]));
        imageops::replace(&mut canvas, &small, 260, 40);
        w.save(&format!("{stem}_small48.jpg"), "small48", &canvas, label(scale_box(*face, k, 260, 40)))?;
        // Group photos of 4000x3000: four of the sample photos tiled with their faces at the
        // person's size, the person beside them with a 40-120 px face.
        for (j, face_px) in [44.0, 64.0, 88.0, 116.0].into_iter().enumerate() {
            let mut canvas = RgbImage::from_fn(4000, 3000, |x, y| {
                let v = ((x / 9 + y / 7) % 40) as u8;
                image::Rgb([80 + v, 92 + v / 2, 100 - v / 3])
            });
            let ks = face_px / f64::from(SAMPLE_FACE);
            for t in 0..4u32 {
                let g = resized(&groups[(i + j + t as usize) % groups.len()], ks);
                let (tx, ty) = (i64::from(t % 2) * (i64::from(g.width()) + 40) + 60, i64::from(t / 2) * (i64::from(g.height()) + 40) + 60);
                imageops::replace(&mut canvas, &g, tx, ty);
            }
            let k = face_px / fw;
            let p = resized(img, k);
            let (px, py) = (3000 - p.width() / 2, 1500u32.saturating_sub(p.height() / 2));
            imageops::replace(&mut canvas, &p, i64::from(px), i64::from(py));
            w.save(&format!("{stem}_group{}.jpg", face_px as u32), "group", &canvas, label(scale_box(*face, k, px, py)))?;
        }
    }
    // The group photos as they are: nobody of interest.
    for (i, g) in groups.iter().enumerate() {
        w.save(&format!("sample{}.jpg", i + 1), "group", g, None)?;
    }
    println!("evaluation set in {}", out.display());
    Ok(())
}
