//! A fixed-size directory of lazily allocated blocks.
//!
//! This is how the table grows without making readers lock: the directory (one
//! pointer-sized cell per possible block) is allocated once, at its final
//! size; a block is allocated the first time a row in it is written, published
//! through a `OnceLock` (an atomic acquire load for readers), and freed only
//! when the table is dropped. No `unsafe` is needed.

use std::sync::OnceLock;

pub(crate) struct LazyBlocks<T> {
    cells: Box<[OnceLock<Box<T>>]>,
}

impl<T> LazyBlocks<T> {
    pub(crate) fn new(len: usize) -> LazyBlocks<T> {
        LazyBlocks {
            cells: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The block, if it has been allocated.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.cells.get(i).and_then(|c| c.get()).map(|b| &**b)
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
        self.cells
            .get(i)
            .map(|c| &**c.get_or_init(|| Box::new(init())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_appear_once_and_stay() {
        let d: LazyBlocks<u32> = LazyBlocks::new(4);
        assert!(d.get(1).is_none());
        assert_eq!(d.get_or_init(1, || 7), Some(&7));
        assert_eq!(d.get_or_init(1, || 8), Some(&7));
        assert_eq!(d.get(1), Some(&7));
        assert!(d.get_or_init(4, || 1).is_none());
        assert!(d.get(9).is_none());
    }
}
