//! Big pixel buffers (decoded photos, the rows a region is cut from) recycled per thread.
//!
//! glibc maps every buffer of 4 MiB or more afresh (`crate::tune_allocator`) and the kernel
//! zero-fills each page on first touch: indexing 40 photos of 12 MP took ~350 000 minor page
//! faults and ~12 % of its CPU time in the kernel. A worker reuses the same few buffers photo
//! after photo instead; zeroing one again in user space costs a tenth of faulting it in.
//! Buffers stay with the thread that freed them (a worker), so nothing is shared or locked.

use std::cell::RefCell;

/// Buffers smaller than this are left to the allocator's heap, which already reuses them.
const MIN_KEPT: usize = 1 << 20;
/// At most this many spare buffers per thread: the file's bytes, its reduced decode and the
/// copy of the bytes a region decode patches are what a worker reuses photo after photo.
const MAX_SPARES: usize = 3;
/// Bigger spares go back to the kernel (a photo of ~100 MP decoded in full: holding its pages
/// for the rest of the run would cost more than faulting them in again). The full-width rows a
/// region is cut from are not recycled either: keeping them took index peak RSS from ~280 to
/// ~325 MiB with 2 workers (40 photos of 12 MP), over the 300 MiB target, for ~40 000 fewer
/// page faults.
pub const MAX_KEPT: usize = 32 << 20;

thread_local! {
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` zero bytes: a spare of this thread's when one is big enough, else a new one.
pub fn zeroed(len: usize) -> Vec<u8> {
    match spare(len) {
        Some(mut buffer) => {
            buffer.resize(len, 0);
            buffer
        }
        None => fresh_zeroed(len),
    }
}

/// An empty buffer with room for `capacity` bytes (see `zeroed`).
pub fn with_capacity(capacity: usize) -> Vec<u8> {
    spare(capacity).unwrap_or_else(|| {
        let buffer = Vec::with_capacity(capacity);
        advise_huge_pages(buffer.as_ptr(), capacity);
        buffer
    })
}

/// `len` zeros of a new allocation, its pages faulted in 2 MiB at a time where it is big enough
/// (see `advise_huge_pages`).
pub fn fresh_zeroed<T: Default + Clone>(len: usize) -> Vec<T> {
    // Zeroed by the kernel as it maps the pages in (calloc of a fresh mapping), not touched yet.
    let buffer = vec![T::default(); len];
    advise_huge_pages(buffer.as_ptr().cast(), len * std::mem::size_of::<T>());
    buffer
}

/// Asks the kernel to fault in the `len` bytes at `start` (a fresh allocation not yet written)
/// 2 MiB at a time instead of 4 KiB (transparent huge pages, where the system allows them on
/// request). A big buffer filled once is then one fault per 2 MiB, not 512: the 8.5 MB detector
/// input of a 960 px pass took 12.1 ms to make and fill against 6.4 ms (`examples/resize_timing`),
/// and indexing 40 photos of 12 MP took ~216 000 minor page faults against ~50 000.
/// Advice only: the contents are unchanged and a kernel without huge pages ignores it.
pub fn advise_huge_pages(start: *const u8, len: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    // Buffers this big have a mapping of their own (`crate::tune_allocator`): advice on part of
    // the heap would split its mapping, and stay after the buffer is freed.
    const MIN_ADVISED: usize = 4 << 20;
    #[cfg(target_os = "linux")]
    {
        // Whole 4 KiB pages inside the buffer; the kernel uses huge pages for the aligned 2 MiB
        // ranges among them.
        let (first, end) = ((start as usize).next_multiple_of(4096), (start as usize).saturating_add(len) / 4096 * 4096);
        if len >= MIN_ADVISED && end >= first + HUGE_PAGE {
            // SAFETY: the range lies inside one live allocation of the caller's; the advice
            // changes how its pages are backed, never their contents. Its result is ignored:
            // nothing depends on it.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len, HUGE_PAGE, MIN_ADVISED);
}

/// The smallest of this thread's spares with room for `capacity` bytes, emptied.
fn spare(capacity: usize) -> Option<Vec<u8>> {
    SPARES
        .with_borrow_mut(|spares| {
            let best =
                spares.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
            best.map(|i| spares.swap_remove(i))
        })
        .map(|mut buffer| {
            buffer.clear();
            buffer
        })
}

/// A copy of `bytes` in a recycled buffer (see `zeroed`).
pub fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let mut buffer = zeroed(bytes.len());
    buffer.copy_from_slice(bytes);
    buffer
}

/// Gives a buffer back for this thread's next `zeroed`. Small and huge ones are freed; with more
/// than `MAX_SPARES` spares the smallest is.
pub fn recycle(buffer: Vec<u8>) {
    if !(MIN_KEPT..=MAX_KEPT).contains(&buffer.capacity()) {
        return;
    }
    SPARES.with_borrow_mut(|spares| {
        spares.push(buffer);
        if spares.len() > MAX_SPARES {
            if let Some(smallest) = spares.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) {
                spares.swap_remove(smallest);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_is_reused_and_comes_back_zeroed() {
        let mut first = zeroed(2 << 20);
        first.fill(7);
        let address = first.as_ptr();
        recycle(first);
        let again = zeroed(1 << 20);
        assert_eq!(again.as_ptr(), address, "the spare was not reused");
        assert_eq!(again.len(), 1 << 20);
        assert!(again.iter().all(|&b| b == 0), "a reused buffer kept old bytes");
        recycle(again);
        // Too small for the request: a new buffer.
        let bigger = zeroed(3 << 20);
        assert_ne!(bigger.as_ptr(), address);
        assert!(bigger.iter().all(|&b| b == 0));
    }

    #[test]
    fn small_and_huge_buffers_are_not_kept_and_spares_are_bounded() {
        recycle(vec![1; 1000]);
        recycle(Vec::with_capacity(MAX_KEPT + 1));
        SPARES.with_borrow(|s| assert!(s.is_empty()));
        for k in 0..5 {
            recycle(vec![0; (2 + k) << 20]);
        }
        SPARES.with_borrow(|s| {
            assert_eq!(s.len(), MAX_SPARES);
            // The biggest are kept.
            assert!(s.iter().all(|b| b.capacity() >= 4 << 20));
        });
        let copy = copy_of(&[9; 5 << 20]);
        assert!(copy.iter().all(|&b| b == 9) && copy.len() == 5 << 20);
    }
}
