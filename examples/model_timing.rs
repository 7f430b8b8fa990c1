//! Times one YuNet call per input size and one SFace call, single-threaded, on this machine, and
//! decoding one photo with each decoder (the image crate; libjpeg-turbo full size and DCT-scaled).
//!     cargo run --release --example model_timing [PHOTO.jpg]   (decode timing needs a photo)

use facedb::pipeline::decode::Decoders;

fn main() -> anyhow::Result<()> {
    let files = facedb::models::ModelFiles::locate(None, facedb::models::runtime::Device::Cpu)?;
    let models = files.load()?;
    let (mut yunet, mut sface) = (models.detector()?, models.embedder()?);
    // Best of 5 in this thread's CPU time: on a shared machine wall time measures the others.
    let best_ms = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = thread_cpu_ms();
            f()?;
            best = best.min(thread_cpu_ms() - t);
        }
        Ok(best)
    };
    for (w, h) in [(288usize, 288usize), (320, 256), (640, 480), (640, 640), (960, 736), (1280, 960), (1920, 1440)] {
        let input = vec![100f32; 3 * w * h];
        yunet.run(&input, h, w)?;
        let ms = best_ms(&mut || yunet.run(&input, h, w).map(drop))?;
        println!("YuNet {w}x{h}: {ms:.1} ms");
    }
    let face = facedb::models::sface::align::AlignedFace { rgb: vec![128u8; 112 * 112 * 3] };
    sface.embed(&face)?;
    let ms = best_ms(&mut || sface.embed(&face).map(drop))?;
    println!("SFace: {ms:.1} ms");
    let Some(photo) = std::env::args()
        .nth(1)
        .or_else(|| Some(".cache/bench/photos-40/bench001.jpg".into()))
        .filter(|p| std::path::Path::new(p).is_file())
    else {
        return Ok(());
    };
    let bytes = std::fs::read(photo)?;
    let builtin = Decoders::new(Some(std::path::Path::new("/nonexistent")));
    let ms = best_ms(&mut || builtin.decode(&bytes).map(drop))?;
    println!("decode JPEG, image crate: {ms:.1} ms");
    let decoders = Decoders::new(Some(&files.dir));
    if let Some(turbo) = decoders.turbojpeg() {
        let ms = best_ms(&mut || decoders.decode(&bytes).map(drop))?;
        println!("decode JPEG, facedb with libjpeg-turbo (EXIF orientation included): {ms:.1} ms");
        for denom in [1, 2, 4, 8] {
            let ms = best_ms(&mut || turbo.decode(&bytes, denom).map(drop))?;
            println!("decode JPEG, libjpeg-turbo 1/{denom}: {ms:.1} ms");
        }
    } else {
        println!("{}", decoders.describe_jpeg());
    }
    let img = decoders.decode(&bytes)?.rgb;
    let reduced = decoders.decode_reduced(&bytes)?.rgb;
    for (name, src) in [("full", &img), ("reduced", &reduced)] {
        for side in [640, 960, 1280] {
            let ms = best_ms(&mut || {
                facedb::models::yunet::to_input(src, side);
                Ok(())
            })?;
            println!("to_input {side} from the {name} decode ({}x{}): {ms:.1} ms", src.width(), src.height());
        }
    }
    Ok(())
}

fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}
