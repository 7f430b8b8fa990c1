//! Times the detector's input resize on noise images of the shapes the index meets, in this
//! thread's CPU time (best of 9: on a shared machine wall time measures the others): into a fresh
//! buffer (`to_input`) and into a reused one (`resize_into`, as `YuNet` does up to 640 px).
//!     cargo run --release --example resize_timing

use facedb::models::yunet::{resize_into, to_input};
use image::RgbImage;

fn main() {
    // As `index` does: buffers of 4 MiB and more go back to the kernel when freed (and come back
    // zero-filled page by page). With KEEP_HEAP=1 they stay in the heap instead (run it with
    // MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000), so the times are
    // the resizing alone, plus a memset for a fresh buffer.
    if std::env::var_os("KEEP_HEAP").is_none() {
        facedb::tune_allocator();
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    let mut reused = Vec::new();
    for (w, h, side) in [(2000u32, 1500u32, 640u32), (2000, 1500, 960), (1500, 2000, 960), (300, 300, 288), (4000, 3000, 1440)] {
        let img = RgbImage::from_fn(w, h, |_, _| image::Rgb([noise(), noise(), noise()]));
        let best = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..9 {
                let t = thread_cpu_ms();
                f();
                best = best.min(thread_cpu_ms() - t);
            }
            best
        };
        let fresh_ms = best(&mut || drop(std::hint::black_box(to_input(&img, side))));
        let reused_ms = best(&mut || _ = std::hint::black_box(resize_into(&img, side, &mut reused)));
        println!("{w}x{h} -> {side}: to_input {fresh_ms:.2} ms, resize_into a reused buffer {reused_ms:.2} ms");
    }
}

fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}
