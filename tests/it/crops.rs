//! Crops hold only the photo's own pixels unless padding is asked for, have exactly the size
//! asked, and say how they were made (issue 13). Real binary, real models, real photos.

use std::path::{Path, PathBuf};

use crate::common::*;

fn index(dir: &Path) {
    facedb().arg("index").arg(dir).assert().success();
}

/// No pixel of the test photos below this: anything near black in a crop was invented.
const FLOOR: u8 = 40;

/// Lifts every channel to at least [`FLOOR`].
fn lifted(img: &image::RgbImage) -> image::RgbImage {
    let mut out = img.clone();
    out.pixels_mut().for_each(|p| p.0 = p.0.map(|v| FLOOR + (u16::from(v) * u16::from(255 - FLOOR) / 255) as u8));
    out
}

/// A `w`x`h` photo with `img`'s face (centre `face`) turned by `deg` and placed at `at`, near the
/// border; what would fall outside `img` is mirrored in from it, so the photo has no black.
fn tilted_near_border(img: &image::RgbImage, face: [f32; 2], deg: f32, at: [f32; 2], w: u32, h: u32) -> image::RgbImage {
    let (s, c) = deg.to_radians().sin_cos();
    let mirror = |p: f32, n: f32| {
        let m = p.rem_euclid(2.0 * n);
        (if m > n { 2.0 * n - m } else { m }).clamp(0.0, n - 1.0)
    };
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - at[0], y as f32 - at[1]);
        let (sx, sy) = (face[0] + dx * c + dy * s, face[1] - dx * s + dy * c);
        image::Rgb(facedb::models::sface::align::bilinear(img, f64::from(mirror(sx, iw)), f64::from(mirror(sy, ih))))
    })
}

fn near_black_fraction(img: &image::RgbImage) -> f64 {
    img.pixels().filter(|p| p.0.iter().all(|&v| v < FLOOR / 2)).count() as f64 / f64::from(img.width() * img.height())
}

fn crop_of(out: &Path, row: &std::collections::HashMap<String, String>) -> image::RgbImage {
    image::open(out.join(&row["crop_path"])).unwrap().to_rgb8()
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> f64 {
    row[col].parse().unwrap_or_else(|_| panic!("{col} = {:?}", row[col]))
}

/// A dataset holding one photo: obama.jpg's face tilted 20 degrees, 12 px from the left border
/// and 30 px from the top, in a photo without a pixel darker than [`FLOOR`].
fn tilted_dataset(tmp: &Path) -> PathBuf {
    let photos = tmp.join("photos");
    std::fs::create_dir(&photos).unwrap();
    // obama.jpg's face box is about (369, 91) 242x330.
    let img = tilted_near_border(&lifted(&rgb("obama.jpg")), [490.0, 256.0], 20.0, [133.0, 195.0], 700, 800);
    save(&photos, "tilted.png", &img);
    index(&photos);
    photos
}

#[test]
fn aligned_and_square_crops_of_a_tilted_face_at_the_border_hold_no_invented_pixels_unless_padded() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tilted_dataset(tmp.path());
    let src = image::open(photos.join("tilted.png")).unwrap().to_rgb8();
    assert_eq!(near_black_fraction(&src), 0.0, "the photo itself has no black");

    for (i, flags) in
        [&["--align"][..], &["--align", "--square"], &["--square"], &["--align", "--square", "--size", "256"]].iter().enumerate()
    {
        let out = tmp.path().join(format!("out{i}"));
        match_ref(&photos, "obama2.jpg").args(*flags).args(["--format", "png", "--out"]).arg(&out).assert().success();
        let rows = manifest(&out);
        assert_eq!(rows.len(), 1, "{flags:?}");
        let r = &rows[0];
        let crop = crop_of(&out, r);
        assert_eq!(near_black_fraction(&crop), 0.0, "{flags:?}: invented black pixels in {r:?}");
        assert_eq!(num(r, "padded_fraction"), 0.0, "{flags:?}");
        assert_eq!((crop.width(), crop.height()), (num(r, "crop_out_w") as u32, num(r, "crop_out_h") as u32));
        if flags.contains(&"--align") {
            assert!(num(r, "crop_angle").abs() > 15.0, "{flags:?}: the face is tilted: {r:?}");
        }
        if flags.contains(&"--square") {
            assert_eq!(crop.width(), crop.height(), "{flags:?}");
        }
        if flags.contains(&"--size") {
            assert_eq!((crop.width(), num(r, "upscale")), (256, 1.0), "{flags:?}");
        }
    }

    // --pad keeps the full region: black shows exactly where the photo ends, and is counted.
    let out = tmp.path().join("black");
    match_ref(&photos, "obama2.jpg")
        .args(["--align", "--square", "--pad", "black", "--format", "png", "--out"])
        .arg(&out)
        .assert()
        .success();
    let r = &manifest(&out)[0];
    let (padded, black) = (num(r, "padded_fraction"), near_black_fraction(&crop_of(&out, r)));
    assert!(padded > 0.03, "{r:?}");
    assert!((black - padded).abs() < 0.02, "black {black:.3} vs padded_fraction {padded:.3}");
    let jsonl = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let j: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(j["crop"]["pad"], "black");

    let out = tmp.path().join("reflect");
    match_ref(&photos, "obama2.jpg")
        .args(["--align", "--square", "--pad", "reflect", "--format", "png", "--out"])
        .arg(&out)
        .assert()
        .success();
    let r = &manifest(&out)[0];
    assert!((num(r, "padded_fraction") - padded).abs() < 1e-3, "the same region, filled otherwise: {r:?}");
    assert_eq!(near_black_fraction(&crop_of(&out, r)), 0.0);
}

#[test]
fn a_face_too_small_for_size_is_rejected_with_its_reason_unless_upscale_which_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama2.jpg"]); // face about 275x404: a 646 px square at margin 0.3
    let small = image::imageops::resize(&rgb("obama3.jpg"), 287, 467, image::imageops::FilterType::Triangle);
    save(&photos, "small.png", &small); // obama3 at a fifth: a face of about 60 px
    index(&photos);

    let out = tmp.path().join("out");
    let run = |extra: &[&str], out: &Path| -> serde_json::Value {
        let o = match_ref(&photos, "obama.jpg")
            .args(["--json", "--square", "--size", "512", "--format", "png"])
            .args(extra)
            .arg("--out")
            .arg(out)
            .assert()
            .success();
        serde_json::from_slice(&o.get_output().stdout).unwrap()
    };
    let summary = run(&[], &out);
    assert_eq!(summary["rejected"]["smaller than --size"], 1, "{summary}");
    assert_eq!(summary["upscaled"]["crops"], 0, "{summary}");
    let rows = manifest(&out);
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["source_path"].ends_with("obama2.jpg"));
    assert_eq!(crop_of(&out, &rows[0]).dimensions(), (512, 512));
    assert_eq!(num(&rows[0], "upscale"), 1.0);
    // One rule for every path: relative to the output folder when inside it, else absolute.
    let real = std::fs::canonicalize(&photos).unwrap();
    assert_eq!(rows[0]["crop_path"], file_name_of(&rows[0]["crop_path"]), "a crop is named relative to its folder");
    assert_eq!(Path::new(&rows[0]["source_path"]), real.join("obama2.jpg"));
    let rejected = std::fs::read_to_string(out.join("rejected.csv")).unwrap();
    let small_source = real.join("small.png").to_string_lossy().into_owned();
    assert!(rejected.lines().any(|l| l.starts_with(&small_source) && l.contains("smaller than --size")), "{rejected}");
    let stored = query_i64(&db(&photos), "SELECT count(*) FROM match_results WHERE reason = 'smaller than --size'");
    assert_eq!(stored, 1);

    // --upscale writes it at exactly 512 and says by how much it was enlarged.
    let out = tmp.path().join("up");
    let summary = run(&["--upscale"], &out);
    assert_eq!(summary["upscaled"]["crops"], 1, "{summary}");
    let factor = summary["upscaled"]["max_factor"].as_f64().unwrap();
    assert!(factor > 3.0 && factor < 8.0, "{summary}");
    let rows = manifest(&out);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(crop_of(&out, r).dimensions(), (512, 512), "{r:?}");
    }
    let small_row = rows.iter().find(|r| r["source_path"].ends_with("small.png")).unwrap();
    assert!((num(small_row, "upscale") - factor).abs() < 1e-3, "{small_row:?}");

    // --dry-run counts it too, before any photo is decoded.
    let o = match_ref(&photos, "obama.jpg").args(["--square", "--size", "512", "--dry-run"]).assert().success();
    assert!(String::from_utf8_lossy(&o.get_output().stdout).contains("1 smaller than --size"));
}

#[test]
fn references_are_recorded_by_real_path_and_content_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    add_photos(&photos, &["obama2.jpg"]);
    index(&photos);
    let anna = tmp.path().join("people/anna");
    std::fs::create_dir_all(&anna).unwrap();
    std::fs::copy(photo("obama.jpg"), anna.join("ref1.jpg")).unwrap();
    let hash = blake3::hash(&std::fs::read(anna.join("ref1.jpg")).unwrap()).to_hex().to_string();

    let references = |cwd: &Path, reference: &str| -> serde_json::Value {
        let out = tmp.path().join("out");
        facedb().current_dir(cwd).arg("match").arg(&photos).args(["--ref", reference, "--out"]).arg(&out).assert().success();
        serde_json::from_str(&manifest(&out)[0]["references"]).unwrap()
    };
    // Given relative to the working folder, through `..`.
    let refs = references(tmp.path(), "people/anna/../anna/ref1.jpg");
    let real = std::fs::canonicalize(anna.join("ref1.jpg")).unwrap();
    assert_eq!(refs[0]["path"], real.to_string_lossy().as_ref(), "{refs}");
    assert_eq!(refs[0]["blake3"], hash.as_str());
    // The same photo passed from elsewhere later is recorded where it is now, not where it was.
    let moved = tmp.path().join("refs");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(anna.join("ref1.jpg"), moved.join("ref1.jpg")).unwrap();
    let refs = references(&moved, "ref1.jpg");
    assert_eq!(refs[0]["path"], std::fs::canonicalize(moved.join("ref1.jpg")).unwrap().to_string_lossy().as_ref(), "{refs}");
    assert_eq!(refs[0]["blake3"], hash.as_str());
    let report: serde_json::Value =
        serde_json::from_slice(&facedb().arg("report").arg(&photos).args(["--format", "json"]).assert().success().get_output().stdout)
            .unwrap();
    assert!(
        report["match_runs"].as_array().unwrap().iter().all(|r| r["references"][0].as_str().unwrap().ends_with("refs/ref1.jpg")),
        "{report}"
    );
}

#[test]
fn a_square_crop_at_the_border_shrinks_instead_of_filling_up_with_the_neighbour() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    // obama2 (face about x 201..476) beside biden, cut 191 px in from the left: the face is 10 px
    // from the border and biden's half starts at x 435.
    let couple = side_by_side(&rgb("obama2.jpg"), &rgb("biden.jpg"));
    let cut = image::imageops::crop_imm(&couple, 191, 0, couple.width() - 191, couple.height()).to_image();
    save(&photos, "couple.png", &cut);
    index(&photos);
    let out = tmp.path().join("out");
    match_ref(&photos, "obama.jpg").args(["--square", "--out"]).arg(&out).assert().success();
    let r = &manifest(&out)[0];
    let (x, w, fx, fw) = (num(r, "crop_x"), num(r, "crop_w"), num(r, "face_x"), num(r, "face_w"));
    // Before: a 644 px square from x 0, a third of it biden's half; the face in its left 283 px.
    assert!(x + w <= 435.0, "the crop reaches into the neighbour's half: {r:?}");
    assert!(fx >= x && fx + fw <= x + w, "the face is inside: {r:?}");
    assert_eq!(crop_of(&out, r).dimensions(), (w as u32, w as u32));
}
