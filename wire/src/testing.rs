//! Helpers for the tests and benches of the allot crates and of programs
//! embedding them (the `testing` feature). It lives in the wire crate,
//! which every other crate depends on, so that there is one of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};

thread_local! {
    // Allocation calls of this thread, for tests that must not count what
    // the test harness allocates on its own threads.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one allocation call on this thread (a thread being torn down
/// has no counter left; its calls are not counted).
fn count_thread() {
    let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// A global allocator that forwards to the system allocator and counts:
/// allocation calls (`alloc`, `alloc_zeroed` and `realloc`), for tests that
/// a path does not allocate, and live heap bytes, for figures of what a
/// structure really holds. Install it in a test or bench binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();`;
/// it counts every thread of the process, and each thread apart
/// ([`CountingAlloc::this_thread_allocations`]).
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

    /// Allocation calls so far on the calling thread only.
    pub fn this_thread_allocations(&self) -> u64 {
        THREAD_ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
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
        count_thread();
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
        count_thread();
        self.live.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        count_thread();
        self.live.fetch_add(n as isize - l.size() as isize, Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}
