//! facedb: an incremental face index of a photo folder, kept in one SQLite file.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod crop;
pub mod db;
pub mod histogram;
pub mod matching;
pub mod models;
pub mod output;
pub mod parquet_file;
pub mod pipeline;
pub mod select;
pub mod util;
pub mod xmp;

/// Makes glibc hand buffers of 4 MiB and more (decoded photos, detector tensors) straight back to
/// the kernel when freed. By default its mmap threshold grows after the first big free, after
/// which every worker's freed photos stay in the heap: index peaked at ~455 MiB with 2 workers,
/// ~400 MiB with this (scripts/bench.sh), at no measurable cost in speed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
