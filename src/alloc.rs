//! The process's allocator settings.

/// Allocations this large or larger get pages of their own (glibc's `M_MMAP_THRESHOLD`), which
/// go back to the system when they are freed. By default glibc raises the threshold to the
/// largest block freed so far, after which request bodies of a few MiB (and what parsing them
/// takes) are carved from the heap among the small allocations tracked tasks keep for their
/// life; the heap then cannot shrink, and the memory a tracked task seemed to take grew with the
/// size of the bodies it arrived in (BENCHMARKS.md, issue 27: 1,852 B per task in bodies of
/// 5,000 updates against 981 B in bodies of 1,000, before this setting).
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// At most this many malloc arenas (glibc's `M_ARENA_MAX`; its default is eight per core). Each
/// thread that allocates takes an arena of its own while the limit allows, and memory freed in
/// one arena serves only that arena's later allocations: the runtime's threads, the blocking
/// pool and SQLite's connection threads spread what parsing bodies took over many arenas,
/// which kept it. With two from the process's start (`MALLOC_ARENA_MAX=2`), 100,000 tasks sent
/// in bodies of 5,000 took 998 B per task instead of 1,139, at the same ingest rate (NDJSON
/// 0.975x, single-update requests 1.018x, side by side); one arena was 10 % slower
/// (BENCHMARKS.md, issue 27's third stop).
const ARENA_MAX: i32 = 2;

/// Applies the settings. Process-wide and idempotent. The binary calls it before its runtime
/// starts: glibc only stops making new arenas past the limit, so a thread that took one
/// earlier keeps it (set once the runtime ran, the same measurement gave 1,104 to 1,054 B).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets parameters of glibc's allocator, under the allocator's own
    // lock; these take any positive size.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
