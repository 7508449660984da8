//! The process's allocator settings.

/// Allocations this large or larger get pages of their own (glibc's `M_MMAP_THRESHOLD`), which
/// go back to the system when they are freed. By default glibc raises the threshold to the
/// largest block freed so far, after which request bodies of a few MiB (and what parsing them
/// takes) are carved from the heap among the small allocations tracked tasks keep for their
/// life; the heap then cannot shrink, and the memory a tracked task seemed to take grew with the
/// size of the bodies it arrived in (BENCHMARKS.md, issue 27: 1,852 B per task in bodies of
/// 5,000 updates against 981 B in bodies of 1,000, before this setting).
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Applies the settings. Process-wide and idempotent: the server calls it as it starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a parameter of glibc's allocator, under the allocator's own
    // lock; this parameter takes any non-negative size.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
