//! Helpers for the tests and benches of allot and of programs embedding it
//! (the `testing` feature).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};

/// A global allocator that forwards to the system allocator and counts:
/// allocation calls (`alloc`, `alloc_zeroed` and `realloc`), for tests that
/// a path does not allocate, and live heap bytes, for figures of what a
/// structure really holds. Install it in a test or bench binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();`;
/// it counts every thread of the process.
#[derive(Debug, Default)]
pub struct CountingAlloc {
    allocations: AtomicU64,
    live: AtomicIsize,
}

impl CountingAlloc {
    /// An allocator with both counts at zero.
    pub const fn new() -> CountingAlloc {
        CountingAlloc {
            allocations: AtomicU64::new(0),
            live: AtomicIsize::new(0),
        }
    }

    /// Allocation calls so far (a reallocation counts as one).
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Relaxed)
    }

    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> isize {
        self.live.load(Relaxed)
    }
}

// SAFETY: every call goes to the system allocator unchanged, with the
// caller's arguments; the counters beside it never touch the memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        self.live.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.live.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        self.live.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        self.live.fetch_add(n as isize - l.size() as isize, Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}
