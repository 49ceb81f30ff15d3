//! Huge-page backed memory for the table's blocks and column groups.
//!
//! At a million servers the table is ~70 MB of blocks, column groups and
//! label cells. As separate heap allocations they land on ~17,000 random
//! 4 KiB pages, and a sampled match pays a TLB miss on nearly every block it
//! visits (2,048 L2 TLB entries cover 8 MiB). Here they come from a few
//! large regions aligned to 2 MiB that the engine marks `MADV_HUGEPAGE`, so
//! the whole table fits in a few dozen TLB entries. This is only a hint:
//! where transparent huge pages are off or `madvise` fails the memory is
//! ordinary and the table only slower.
//!
//! * [`Arena`]: a bump allocator over chunks of [`Arena::chunk_bytes`]
//!   (at most [`CHUNK`], 2 MiB, smaller for small tables), taken from the
//!   global allocator (so allocation counters see them) and freed only when
//!   the arena drops. **Bound:** the memory it holds is what its pools ever
//!   had live at once, plus less than one chunk.
//! * [`Pool`]: slots for one type in an arena, with a free list: a slot
//!   given back with [`Pool::free`] is reused by the next [`Pool::alloc`].
//!   A pool never returns memory to the arena; the arena outlives every pool
//!   (each holds an `Arc`), and whoever holds a pool's `Arc` (the table, and
//!   deferred reclamation functions) keeps its slots' memory valid.
//!
//! Slots are handed out as raw pointers; the owners ([`crate::table::rcu`],
//! [`crate::table::lazy`]) state when they are written, read and freed.

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Largest chunk: one x86-64 huge page.
pub(crate) const CHUNK: usize = 2 << 20;

/// Smallest chunk (small tables, tests).
const MIN_CHUNK: usize = 64 << 10;

/// Under Miri every chunk is one allocation whose borrow tree records every
/// reference to any of its slots, which makes the concurrency tests crawl:
/// there chunks hold a few slots each (the bump logic is the same).
const MIRI_CHUNK: usize = 8 << 10;

/// A bump allocator over large, aligned chunks; see the module docs.
pub(crate) struct Arena {
    chunk: usize,
    inner: Mutex<Bump>,
}

struct Bump {
    chunks: Vec<NonNull<u8>>,
    /// Bytes of the last chunk in use.
    used: usize,
}

// SAFETY: the chunk pointers are owned by the arena (allocated in `grow`,
// freed only in `Drop`) and only handed out as disjoint slots under the
// mutex; the arena itself never reads or writes through them.
unsafe impl Send for Arena {}
// SAFETY: as for `Send`; every access to `Bump` is behind the mutex.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena for about `expected` bytes: chunks of `expected` rounded up
    /// to a power of two, between 64 KiB and [`CHUNK`].
    pub(crate) fn new(expected: usize) -> Arc<Arena> {
        let chunk = if cfg!(miri) {
            MIRI_CHUNK
        } else {
            expected.next_power_of_two().clamp(MIN_CHUNK, CHUNK)
        };
        Arc::new(Arena {
            chunk,
            inner: Mutex::new(Bump {
                chunks: Vec::new(),
                used: 0,
            }),
        })
    }

    /// Size (and alignment) of each chunk.
    #[cfg(test)]
    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk
    }

    /// Bytes taken from the global allocator (every chunk, used or not).
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.lock().chunks.len() * self.chunk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bump> {
        // Nothing panics while the lock is held except allocation failure,
        // which aborts; a poisoned lock holds a consistent `Bump`.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunk_layout(&self) -> Layout {
        // `chunk` is a power of two no larger than 2 MiB: a valid layout.
        Layout::from_size_align(self.chunk, self.chunk).expect("chunk layout")
    }

    /// Uninitialised memory for `layout` (size at most a chunk), valid until
    /// the arena drops. Never null; aborts if the allocator fails.
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        assert!(
            layout.size() <= self.chunk && layout.align() <= self.chunk,
            "arena slot larger than a chunk"
        );
        let mut b = self.lock();
        let start = b.used.next_multiple_of(layout.align());
        let fits = !b.chunks.is_empty() && start + layout.size() <= self.chunk;
        let start = if fits {
            start
        } else {
            let l = self.chunk_layout();
            // SAFETY: `l` has a non-zero size.
            let p = unsafe { std::alloc::alloc(l) };
            let Some(p) = NonNull::new(p) else {
                std::alloc::handle_alloc_error(l)
            };
            advise_huge(p, self.chunk);
            b.chunks.push(p);
            0
        };
        b.used = start + layout.size();
        let last = *b.chunks.last().expect("a chunk");
        // SAFETY: `start + size <= chunk`, so the slot is inside the chunk.
        unsafe { last.add(start) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let l = self.chunk_layout();
        for p in self.lock().chunks.drain(..) {
            // SAFETY: every chunk came from `std::alloc::alloc(l)` in `alloc`
            // and is freed once; `&mut self` (the last `Arc`) means no pool,
            // hence no slot pointer that may still be used, is left.
            unsafe { std::alloc::dealloc(p.as_ptr(), l) };
        }
    }
}

/// Asks the kernel to back `len` bytes at `p` (aligned to `len`) with huge
/// pages. A hint: failure (THP disabled, another OS) is ignored.
#[cfg(all(target_os = "linux", not(miri)))]
fn advise_huge(p: NonNull<u8>, len: usize) {
    if len < CHUNK {
        return;
    }
    // SAFETY: `madvise` only reads the range's address, which is a live
    // allocation of `len` bytes that we own; MADV_HUGEPAGE changes no
    // contents.
    let _ = unsafe { libc::madvise(p.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn advise_huge(_p: NonNull<u8>, _len: usize) {}

/// Slots for values of type `T` in an [`Arena`], with a free list.
pub(crate) struct Pool<T> {
    arena: Arc<Arena>,
    /// Slots given back, uninitialised, reused first (bounded by the slots
    /// ever allocated).
    free: Mutex<Vec<NonNull<T>>>,
    _t: PhantomData<T>,
}

// SAFETY: the free list holds pointers to uninitialised slots the pool owns;
// values are written into slots by `alloc` (moving a `T` to whichever thread
// later reads or drops it: `T: Send`) and shared by the callers under their
// own rules (`T: Sync`).
unsafe impl<T: Send + Sync> Send for Pool<T> {}
// SAFETY: as for `Send`; the free list is behind a mutex.
unsafe impl<T: Send + Sync> Sync for Pool<T> {}

impl<T> Pool<T> {
    pub(crate) fn new(arena: &Arc<Arena>) -> Arc<Pool<T>> {
        Arc::new(Pool {
            arena: arena.clone(),
            free: Mutex::new(Vec::new()),
            _t: PhantomData,
        })
    }

    /// A slot holding `value`, owned by the caller until it hands it back
    /// with [`Pool::free`] (or leaves it to be reclaimed with the arena; its
    /// destructor then never runs). Valid while this pool's arena lives.
    pub(crate) fn alloc(&self, value: T) -> NonNull<T> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let p = reused.unwrap_or_else(|| self.arena.alloc(Layout::new::<T>()).cast());
        // SAFETY: the slot is inside a live chunk, aligned and sized for `T`
        // (`Layout::new::<T>()`), and owned by nobody else: fresh from the
        // bump allocator, or given back by `free`, whose caller gave up all
        // access to it.
        unsafe { p.as_ptr().write(value) };
        p
    }

    /// Drops the value in `p` and keeps the slot for reuse.
    ///
    /// # Safety
    /// `p` came from this pool's `alloc`, holds a value, is freed once, and
    /// nothing reads or writes it after this call (for values readers may
    /// see: call it only once the epoch collector has established that no
    /// reader can hold a reference).
    pub(crate) unsafe fn free(&self, p: NonNull<T>) {
        // SAFETY: by the caller's contract the value is initialised and
        // unaliased.
        unsafe { p.as_ptr().drop_in_place() };
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(p);
    }

    /// Slots waiting for reuse.
    #[cfg(test)]
    pub(crate) fn free_count(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

/// The arena of one table and its pools.
pub(crate) struct Pools<B, D, F, L> {
    pub arena: Arc<Arena>,
    pub blocks: Arc<Pool<B>>,
    pub dynamic: Arc<Pool<D>>,
    pub fixed: Arc<Pool<F>>,
    pub labels: Arc<Pool<L>>,
}

impl<B, D, F, L> Pools<B, D, F, L> {
    /// Pools in one arena sized for about `expected` bytes.
    pub(crate) fn new(expected: usize) -> Self {
        let arena = Arena::new(expected);
        Pools {
            blocks: Pool::new(&arena),
            dynamic: Pool::new(&arena),
            fixed: Pool::new(&arena),
            labels: Pool::new(&arena),
            arena,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Big([u8; 2368]);

    #[test]
    fn slots_are_aligned_disjoint_and_reused() {
        let a = Arena::new(100 << 10);
        let want = if cfg!(miri) { MIRI_CHUNK } else { 128 << 10 };
        assert_eq!(a.chunk_bytes(), want);
        let big: Arc<Pool<Big>> = Pool::new(&a);
        let small: Arc<Pool<u32>> = Pool::new(&a);
        let n = if cfg!(miri) { 120 } else { 1000 };
        let mut ps = Vec::new();
        for i in 0..n {
            let p = big.alloc(Big([i as u8; 2368]));
            assert_eq!(p.as_ptr() as usize % 64, 0);
            let q = small.alloc(i as u32);
            ps.push((p, q));
        }
        assert!(a.reserved_bytes() >= n * 2368);
        // Each chunk wastes less than one slot at its end.
        let chunks = a.reserved_bytes() / a.chunk_bytes();
        assert!(a.reserved_bytes() < n * 2368 + n * 4 + chunks * (2368 + 64) + a.chunk_bytes());
        for (i, &(p, q)) in ps.iter().enumerate() {
            // SAFETY: live slots from the pools, not freed yet.
            unsafe {
                assert!(p.as_ref().0.iter().all(|&x| x == i as u8));
                assert_eq!(*q.as_ref(), i as u32);
            }
        }
        let (p0, _) = ps[0];
        // SAFETY: allocated above, freed once, not used afterwards.
        unsafe { big.free(p0) };
        assert_eq!(big.free_count(), 1);
        let again = big.alloc(Big([7; 2368]));
        assert_eq!(again, p0, "the freed slot is reused");
        assert_eq!(big.free_count(), 0);
    }

    #[test]
    fn free_runs_the_destructor_and_the_arena_outlives_the_pool() {
        let a = Arena::new(0);
        let pool: Arc<Pool<Vec<u8>>> = Pool::new(&a);
        let p = pool.alloc(vec![1, 2, 3]);
        // SAFETY: allocated above, freed once (Miri checks the Vec's buffer
        // is freed, not leaked, with leak checking on).
        unsafe { pool.free(p) };
        drop(a);
        let q = pool.alloc(vec![4]);
        // SAFETY: as above.
        unsafe { pool.free(q) };
    }
}
