//! Copy-on-write cells with epoch-based reclamation (read-copy-update).
//!
//! The columns a matcher scans must be plain arrays so the filters vectorise,
//! yet deltas change them while matchers read without locks. An [`Rcu`] holds
//! an immutable value behind an atomic pointer: readers pin an epoch once per
//! scan ([`crossbeam_epoch::pin`]) and borrow the current value for as long as
//! the guard lives; a writer builds a modified copy, swaps it in, and hands the
//! old value to the epoch collector, which frees it once every reader that
//! could have seen it has unpinned. Readers never see a value being written,
//! so there is no data race and no torn row.
//!
//! This is the only module of the engine that needs `unsafe` for memory
//! reclamation; everything else uses the safe API below.

#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{AcqRel, Acquire};

use crossbeam_epoch::{Atomic, Guard, Owned};

/// An optional immutable `T`, replaced as a whole by writers.
///
/// Writers to one cell must be serialised by the caller (the table's shard
/// mutex) for [`Rcu::update`] not to lose an update; [`Rcu::store`] alone is
/// sound with any number of concurrent writers.
pub(crate) struct Rcu<T: Send + Sync + 'static> {
    ptr: Atomic<T>,
}

impl<T: Send + Sync + 'static> Rcu<T> {
    /// A cell holding `value`.
    pub(crate) fn new(value: T) -> Rcu<T> {
        Rcu {
            ptr: Atomic::new(value),
        }
    }

    /// An empty cell.
    pub(crate) fn null() -> Rcu<T> {
        Rcu {
            ptr: Atomic::null(),
        }
    }

    /// The current value, valid while `guard` stays pinned.
    #[inline(always)]
    pub(crate) fn get<'g>(&'g self, guard: &'g Guard) -> Option<&'g T> {
        let p = self.ptr.load(Acquire, guard);
        // SAFETY: the pointer is null or came from `Owned::new` in `new` or
        // `store`, and the value was fully written before the `Release` half
        // of the swap that published it (paired with this `Acquire` load).
        // It is freed only through `defer_destroy` after it was unlinked
        // (swapped out), which waits until every guard pinned before the
        // unlinking is dropped; `guard` is such a guard for as long as the
        // returned reference lives ('g), and `&'g self` keeps `Drop` from
        // freeing it meanwhile. Values are never mutated after publication.
        unsafe { p.as_ref() }
    }

    /// The address of the current value, for prefetching only (never
    /// dereferenced): null if the cell is empty.
    #[inline(always)]
    pub(crate) fn addr(&self, guard: &Guard) -> *const T {
        self.ptr.load(Acquire, guard).as_raw()
    }

    /// Replaces the value (or empties the cell with `None`). The old value is
    /// freed once no pinned reader can still see it.
    pub(crate) fn store(&self, value: Option<T>, guard: &Guard) {
        let old = match value {
            Some(v) => self.ptr.swap(Owned::new(v), AcqRel, guard),
            None => self
                .ptr
                .swap(crossbeam_epoch::Shared::null(), AcqRel, guard),
        };
        if !old.is_null() {
            // SAFETY: `old` was just unlinked by the swap, so no reader that
            // pins from now on can reach it, and no other writer can obtain
            // it again (each swap returns a distinct pointer exactly once);
            // destruction is deferred until the readers pinned before the swap
            // are gone. `T: Send` lets another thread run the destructor.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// Replaces the value with a copy modified by `f` (a copy of `T::default`
    /// if the cell is empty).
    pub(crate) fn update(&self, guard: &Guard, f: impl FnOnce(&mut T))
    where
        T: Clone + Default,
    {
        let mut v = self.get(guard).cloned().unwrap_or_default();
        f(&mut v);
        self.store(Some(v), guard);
    }
}

impl<T: Send + Sync + 'static> Drop for Rcu<T> {
    fn drop(&mut self) {
        let p = std::mem::replace(&mut self.ptr, Atomic::null());
        // SAFETY: `&mut self` proves no reader holds a reference obtained from
        // `get` (those borrow `self`), and the pointer is null or owned by this
        // cell (values swapped out were handed to the collector, not kept).
        let owned = unsafe { p.try_into_owned() };
        drop(owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;

    #[test]
    fn rcu_reads_what_was_stored() {
        let c = Rcu::new([1u32; 8]);
        let g = crossbeam_epoch::pin();
        assert_eq!(c.get(&g), Some(&[1u32; 8]));
        c.update(&g, |v| v[3] = 9);
        let v = c.get(&g).copied();
        assert_eq!(v.map(|v| v[3]), Some(9));
        c.store(None, &g);
        assert!(c.get(&g).is_none());
        assert!(c.addr(&g).is_null());
        c.update(&g, |v| v[0] = 5);
        assert_eq!(c.get(&g).map(|v| v[0]), Some(5));
        let e: Rcu<Vec<u8>> = Rcu::null();
        assert!(e.get(&g).is_none());
    }

    #[test]
    fn a_reference_outlives_the_swap_while_pinned() {
        let c = Rcu::new(vec![7u64; 16]);
        let g = crossbeam_epoch::pin();
        let old = c.get(&g).expect("value");
        c.store(Some(vec![8u64; 16]), &g);
        // The old value is still readable: its free waits for `g`.
        assert!(old.iter().all(|&x| x == 7));
        assert!(c.get(&g).expect("value").iter().all(|&x| x == 8));
    }

    /// Readers on one thread see whole values while another thread replaces
    /// them: every element of a value equals its first.
    #[test]
    fn concurrent_readers_see_whole_values() {
        let c = Arc::new(Rcu::new([0u32; 64]));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let reader = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u32;
                while !stop.load(Relaxed) {
                    let g = crossbeam_epoch::pin();
                    let v = c.get(&g).expect("value");
                    assert!(v.iter().all(|&x| x == v[0]), "torn value");
                    assert!(v[0] >= seen, "went back in time");
                    seen = v[0];
                }
            })
        };
        for r in 1..=rounds {
            let g = crossbeam_epoch::pin();
            c.store(Some([r; 64]), &g);
        }
        stop.store(true, Relaxed);
        reader.join().expect("reader");
    }
}
