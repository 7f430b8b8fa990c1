//! Times one YuNet call per input size and one SFace call, single-threaded, on this machine.
//!     cargo run --release --example model_timing [PHOTO.jpg]   (decode timing needs a photo)
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let models = facedb::models::ModelFiles::locate(None, facedb::models::runtime::Device::Cpu)?.load()?;
    let (mut yunet, mut sface) = (models.detector()?, models.embedder()?);
    for (w, h) in [(640usize, 480usize), (640, 640), (1280, 960)] {
        let input = vec![100f32; 3 * w * h];
        yunet.run(input.clone(), h, w)?;
        let t = Instant::now();
        for _ in 0..10 {
            yunet.run(input.clone(), h, w)?;
        }
        println!("YuNet {w}x{h}: {:.1} ms", t.elapsed().as_secs_f64() * 100.0);
    }
    let face = facedb::models::sface::align::AlignedFace { rgb: vec![128u8; 112 * 112 * 3] };
    sface.embed(&face)?;
    let t = Instant::now();
    for _ in 0..10 {
        sface.embed(&face)?;
    }
    println!("SFace: {:.1} ms", t.elapsed().as_secs_f64() * 100.0);
    let Some(photo) = std::env::args()
        .nth(1)
        .or_else(|| Some(".cache/bench/photos-40/bench001.jpg".into()))
        .filter(|p| std::path::Path::new(p).is_file())
    else {
        return Ok(());
    };
    let bytes = std::fs::read(photo)?;
    let t = Instant::now();
    for _ in 0..3 {
        facedb::pipeline::decode::decode(&bytes)?;
    }
    println!("decode 12 MP JPEG: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0 / 3.0);
    let img = facedb::pipeline::decode::decode(&bytes)?.rgb;
    let t = Instant::now();
    let input = facedb::models::yunet::to_input(&img, 1280);
    println!("to_input 1280 from 12 MP: {:.1} ms ({}x{})", t.elapsed().as_secs_f64() * 1000.0, input.width, input.height);
    Ok(())
}
