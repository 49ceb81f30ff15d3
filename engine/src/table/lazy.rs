//! A fixed-size directory of lazily allocated blocks.
//!
//! This is how the table grows without making readers lock: the directory (one
//! pointer-sized cell per possible block) is allocated once, at its final
//! size; a block is allocated (in a huge-page backed [`Pool`],
//! [`crate::table::arena`]) the first time a row in it is written, published
//! through a `OnceLock` (an atomic acquire load for readers), and dropped
//! only when the directory is dropped.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use crate::table::arena::Pool;

/// A block's slot in the pool, owned by the directory.
struct Slot<T>(NonNull<T>);

// SAFETY: a `Slot` is an owning pointer to a `T` that is only shared as
// `&T` (`T: Sync`) and dropped by the directory (`T: Send`).
unsafe impl<T: Send + Sync> Send for Slot<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for Slot<T> {}

pub(crate) struct LazyBlocks<T: Send + Sync> {
    cells: Box<[OnceLock<Slot<T>>]>,
    /// Where the blocks live; kept so their memory outlives the directory.
    pool: Arc<Pool<T>>,
}

impl<T: Send + Sync> LazyBlocks<T> {
    pub(crate) fn new(len: usize, pool: &Arc<Pool<T>>) -> LazyBlocks<T> {
        LazyBlocks {
            cells: (0..len).map(|_| OnceLock::new()).collect(),
            pool: pool.clone(),
        }
    }

    /// The block, if it has been allocated.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        let s = self.cells.get(i)?.get()?;
        // SAFETY: the slot was written by `Pool::alloc` before the `OnceLock`
        // published it (its `get` is an acquire load); it is only shared as
        // `&T` and dropped only in `Drop` (which `&self` excludes), and its
        // memory stays allocated while `self.pool` lives.
        Some(unsafe { s.0.as_ref() })
    }

    /// The address of slot `i`, for prefetching (never dereferenced; past
    /// the end for `i` out of range).
    #[inline]
    pub(crate) fn slot_addr(&self, i: usize) -> *const u8 {
        self.cells.as_ptr().wrapping_add(i).cast()
    }

    /// The block, allocating it with `init` if needed. `None` if `i` is past
    /// the directory.
    pub(crate) fn get_or_init(&self, i: usize, init: impl FnOnce() -> T) -> Option<&T> {
        let s = self
            .cells
            .get(i)?
            .get_or_init(|| Slot(self.pool.alloc(init())));
        // SAFETY: as in `get`.
        Some(unsafe { s.0.as_ref() })
    }
}

impl<T: Send + Sync> Drop for LazyBlocks<T> {
    fn drop(&mut self) {
        for c in self.cells.iter_mut() {
            if let Some(s) = c.take() {
                // SAFETY: each allocated block is owned by its cell alone and
                // dropped once (`take`); `&mut self` proves no `&T` from
                // `get` is alive. The slot goes back to the pool.
                unsafe { self.pool.free(s.0) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::arena::Arena;

    #[test]
    fn blocks_appear_once_and_stay() {
        let pool = Pool::new(&Arena::new(0));
        let d: LazyBlocks<u32> = LazyBlocks::new(4, &pool);
        assert!(d.get(1).is_none());
        assert_eq!(d.get_or_init(1, || 7), Some(&7));
        assert_eq!(d.get_or_init(1, || 8), Some(&7));
        assert_eq!(d.get(1), Some(&7));
        assert!(d.get_or_init(4, || 1).is_none());
        assert!(d.get(9).is_none());
    }

    #[test]
    fn blocks_are_dropped_with_the_directory() {
        let pool = Pool::new(&Arena::new(0));
        let d: LazyBlocks<Vec<u8>> = LazyBlocks::new(3, &pool);
        assert_eq!(d.get_or_init(0, || vec![1]).map(|v| v[0]), Some(1));
        assert_eq!(d.get_or_init(2, || vec![2; 9]).map(|v| v.len()), Some(9));
        drop(d);
        // Miri's leak check (without -Zmiri-ignore-leaks) sees the vectors
        // freed; the pool got both slots back.
        assert_eq!(pool.free_count(), 2);
    }
}
