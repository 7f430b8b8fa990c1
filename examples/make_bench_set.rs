//! Builds the benchmark photo set: N 4000x3000 JPEGs (quality 90) with 0, 1, 2 or 3 faces
//! pasted from the test portraits at 300-1000 px, on a textured background with mild noise.
//! Deterministic, so every run measures the same photos.
//!     cargo run --release --example make_bench_set -- OUT_DIR [N]

use image::imageops::{self, FilterType};
use image::RgbImage;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: make_bench_set OUT_DIR [N]"))?);
    let n: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(40);
    let photos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photos");
    let portraits: Vec<RgbImage> = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
        .iter()
        .map(|p| image::open(photos.join(p)).map(|i| i.to_rgb8()))
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&out)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |m: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % u64::from(m.max(1))) as u32
    };
    for i in 0..n {
        let mut canvas = RgbImage::from_fn(4000, 3000, |x, y| {
            let v = ((x / 7 + y / 5 + i * 13) % 60) as u8;
            image::Rgb([70 + v, 90 + v / 2, 110 - v / 3])
        });
        for k in 0..(i % 4) {
            let p = &portraits[((i + k) % 4) as usize];
            let h = 700 + rand(1300);
            let w = p.width() * h / p.height();
            let scaled = imageops::resize(p, w, h, FilterType::Triangle);
            let (x, y) = (i64::from(k * 1300 + rand(300)), i64::from(rand(3000 - h)));
            imageops::replace(&mut canvas, &scaled, x, y);
        }
        for px in canvas.pixels_mut() {
            let r = rand(7) as u8;
            px.0 = px.0.map(|c| c.saturating_add(r));
        }
        let file = std::fs::File::create(out.join(format!("bench{i:03}.jpg")))?;
        canvas.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90))?;
    }
    println!("{n} photos in {}", out.display());
    Ok(())
}
