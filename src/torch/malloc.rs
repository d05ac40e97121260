//! Not in the reference: glibc malloc settings for libtorch's CPU tensors, which it allocates
//! with `posix_memalign`. Left at glibc's defaults, a tensor of a few MiB that is freed at the
//! top of the heap is handed back to the kernel (heap trimming, or munmap above the mmap
//! threshold), so the next step's tensor of the same size starts on fresh pages: a page fault and
//! a page clear per 4 KiB, every step. A Python process escapes this by chance (its interpreter's
//! objects pin the top of the heap); a Rust process running the same kernels does not. Measured
//! on the AdamW step of ViT-B/16 (86 M parameters, one thread, docs/PERFORMANCE.md): 0.55 s
//! with glibc's defaults, 0.23 s with these settings, as in PyTorch.
//!
//! [`retain_freed_memory`] sets the mmap threshold to glibc's own dynamic maximum (32 MiB:
//! smaller blocks come from the heap) and the trim threshold to 1 GiB (freed memory at the top of
//! the heap is kept for reuse up to that much). A `MALLOC_MMAP_THRESHOLD_` or
//! `MALLOC_TRIM_THRESHOLD_` in the environment is the user's choice and wins.

use std::os::raw::c_int;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
}

// glibc malloc.h
const M_TRIM_THRESHOLD: c_int = -1;
const M_MMAP_THRESHOLD: c_int = -3;

/// glibc's largest dynamic mmap threshold on 64-bit (4 MiB × sizeof(long)).
pub const MMAP_THRESHOLD: c_int = 32 << 20;
/// Freed memory kept at the top of the heap before it is returned to the kernel.
pub const TRIM_THRESHOLD: c_int = 1 << 30;

/// Sets the two thresholds unless the environment sets them; returns whether it did. Call it at
/// the start of `main`, before libtorch allocates.
pub fn retain_freed_memory() -> bool {
    let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if user_set {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; both values are in range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD);
        false
    }
}
