//! Copy-on-write cells with epoch-based reclamation (read-copy-update).
//!
//! The columns a matcher scans must be plain arrays so the filters vectorise,
//! yet deltas change them while matchers read without locks. An [`Rcu`] holds
//! an immutable value behind an atomic pointer: readers pin an epoch once per
//! scan ([`crossbeam_epoch::pin`]) and borrow the current value for as long as
//! the guard lives; a writer builds a modified copy, swaps it in, and hands the
//! old value to the epoch collector, which frees it (or, through a
//! [`Recycler`], returns it for reuse as a later copy) once every reader that
//! could have seen it has unpinned. Readers never see a value being written,
//! so there is no data race and no torn row.
//!
//! This is the only module of the engine that needs `unsafe` for memory
//! reclamation; everything else uses the safe API below.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Mutex};

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
        // SAFETY: the pointer is null or came from `Owned::new`/`Owned::from`
        // in `new`, `store` or `replace`, and the value was fully written
        // before the `Release` half of the swap that published it (paired
        // with this `Acquire` load). It is freed or reused (written) only
        // after it was unlinked (swapped out), through `defer_destroy` or a
        // `Recycler`'s deferred batch, both of which wait until every guard
        // pinned before the unlinking is dropped; `guard` is such a guard for
        // as long as the returned reference lives ('g), and `&'g self` keeps
        // `Drop` from freeing it meanwhile. Values are never mutated while
        // published.
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
    #[cfg(test)]
    pub(crate) fn update(&self, guard: &Guard, f: impl FnOnce(&mut T))
    where
        T: Clone + Default,
    {
        let mut v = self.get(guard).cloned().unwrap_or_default();
        f(&mut v);
        self.store(Some(v), guard);
    }
}

impl<T: Send + Sync + Clone + 'static> Rcu<T> {
    /// Replaces the value with `new` (from [`Recycler::copy`]) and hands the
    /// old one to `rec`, which reuses its allocation once no pinned reader
    /// can still see it.
    #[inline]
    pub(crate) fn replace(&self, new: Box<T>, rec: &mut Recycler<T>, guard: &Guard) {
        let old = self.ptr.swap(Owned::from(new), AcqRel, guard);
        if let Some(old) = NonNull::new(old.as_raw().cast_mut()) {
            rec.retire(old, guard);
        }
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

/// Retired values handed to the epoch collector at once: one deferred
/// function per this many replacements instead of one per replacement.
pub(crate) const RETIRE_BATCH: usize = 64;

/// Most reclaimed values a [`Recycler`] keeps in each of its two lists.
pub(crate) const SPARE_MAX: usize = 128;

/// Recycles the allocations of replaced values, for one serialised writer
/// (the table keeps one per shard and column group, behind the shard's
/// writer lock).
///
/// A copy-on-write writer would otherwise allocate a copy per update and
/// hand the old value to the epoch collector, one deferred function (and
/// later one `free`) each. Instead:
/// * [`Rcu::replace`] puts the replaced value in `retired`, a list of
///   values that readers pinned before the swap may still read. **Bound:**
///   when it holds [`RETIRE_BATCH`] values the whole list is deferred as one
///   function (and the thread's bag flushed so that the batch becomes
///   collectable soon), and a new list starts.
/// * When the collector runs that function (no reader can see the values
///   any more), it returns them to `returned`, a shared list. **Bound:** it
///   keeps at most [`SPARE_MAX`]; beyond that the values are freed.
/// * [`Recycler::copy`] takes a value from `spare`, refilled from
///   `returned` (one lock per refill) when empty (so it too holds at most
///   [`SPARE_MAX`]), and overwrites it; it allocates only if both are empty.
///
/// A value is therefore written again only after the epoch collector has
/// established that no reader that could have seen it is still pinned: a
/// reader never sees a recycled value change.
pub(crate) struct Recycler<T: Send + Sync + 'static> {
    retired: Vec<Retired<T>>,
    spare: Vec<Box<T>>,
    returned: Arc<Mutex<Vec<Box<T>>>>,
}

/// A value unlinked from its cell (by a swap, exactly once) that readers may
/// still read: never written, dereferenced or freed until reclaimed.
struct Retired<T>(NonNull<T>);

// SAFETY: a `Retired` is only a pointer to a `T` that is read-only until the
// collector reclaims it; moving it to another thread lets that thread drop a
// `Box<T>` (needs `T: Send`) while readers on others may read it (`T: Sync`).
unsafe impl<T: Send + Sync> Send for Retired<T> {}

impl<T: Send + Sync + Clone + 'static> Recycler<T> {
    pub(crate) fn new() -> Recycler<T> {
        Recycler {
            retired: Vec::with_capacity(RETIRE_BATCH),
            spare: Vec::new(),
            returned: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A copy of `from` in a recycled allocation (a new one if none is
    /// spare), for [`Rcu::replace`].
    #[inline]
    pub(crate) fn copy(&mut self, from: &T) -> Box<T> {
        if self.spare.is_empty() {
            let mut back = self.returned.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut self.spare, &mut *back);
        }
        match self.spare.pop() {
            Some(mut b) => {
                (*b).clone_from(from);
                b
            }
            None => Box::new(from.clone()),
        }
    }

    /// Takes a value unlinked from an [`Rcu`] (by [`Rcu::replace`]).
    #[inline]
    fn retire(&mut self, old: NonNull<T>, guard: &Guard) {
        self.retired.push(Retired(old));
        if self.retired.len() >= RETIRE_BATCH {
            let batch = std::mem::replace(&mut self.retired, Vec::with_capacity(RETIRE_BATCH));
            defer_batch(batch, self.returned.clone(), guard);
            // Move the batch to the global queue now: left in the thread's
            // bag it would wait for 63 more deferred functions.
            guard.flush();
        }
    }

    /// Values waiting for readers, and values ready for reuse (for tests and
    /// memory accounting).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let returned = self.returned.lock().map_or(0, |r| r.len());
        (self.retired.len(), self.spare.len() + returned)
    }
}

/// Defers the reclamation of `batch` until no reader pinned now is pinned.
fn defer_batch<T: Send + Sync + 'static>(
    batch: Vec<Retired<T>>,
    returned: Arc<Mutex<Vec<Box<T>>>>,
    guard: &Guard,
) {
    guard.defer(move || {
        let mut back = returned.lock().unwrap_or_else(|p| p.into_inner());
        for Retired(p) in batch {
            // SAFETY: `p` was unlinked from its cell by a swap (which returns
            // each pointer once, and it was retired once), before this
            // function was deferred with a pinned guard; the collector runs
            // it only after every guard pinned before that has been dropped,
            // so no reader holds a reference to the value and none can
            // obtain one. The pointer came from `Box::into_raw` (crossbeam's
            // `Owned::new`/`Owned::from(Box)`), so the box owns it uniquely.
            let b = unsafe { Box::from_raw(p.as_ptr()) };
            if back.len() < SPARE_MAX {
                back.push(b);
            }
        }
    });
}

impl<T: Send + Sync + 'static> Drop for Recycler<T> {
    fn drop(&mut self) {
        // Readers may still see the retired values (this recycler need not
        // outlive the cells it served): leave them to the collector.
        let batch = std::mem::take(&mut self.retired);
        if !batch.is_empty() {
            defer_batch(batch, self.returned.clone(), &crossbeam_epoch::pin());
        }
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

    #[test]
    fn replaced_values_are_recycled_once_readers_are_gone() {
        let c = Rcu::new([0u64; 8]);
        let mut rec = Recycler::new();
        let n = RETIRE_BATCH * 4;
        for r in 1..=n as u64 {
            let g = crossbeam_epoch::pin();
            let mut v = rec.copy(c.get(&g).expect("value"));
            assert_eq!(v[0], r - 1, "the copy is of the current value");
            v[0] = r;
            c.replace(v, &mut rec, &g);
            assert_eq!(c.get(&g).map(|v| v[0]), Some(r));
        }
        let (retired, _) = rec.counts();
        assert!(retired < RETIRE_BATCH, "batches are handed on");
        // Let the collector catch up (other tests' threads may hold it back
        // for a while), then the reclaimed values come back.
        let mut spare = 0;
        for _ in 0..100_000 {
            crossbeam_epoch::pin().flush();
            spare = rec.counts().1;
            if spare > 0 {
                break;
            }
            std::thread::yield_now();
        }
        assert!(spare > 0 && spare <= 2 * SPARE_MAX, "{spare}");
    }

    #[test]
    fn a_pinned_reader_keeps_a_retired_value_intact() {
        let c = Rcu::new([7u32; 16]);
        let mut rec = Recycler::new();
        let g = crossbeam_epoch::pin();
        let old = c.get(&g).expect("value");
        // Many batches while `old` is borrowed under `g`: nothing may reuse it.
        for r in 0..RETIRE_BATCH as u32 * 3 {
            let w = crossbeam_epoch::pin();
            let mut v = rec.copy(c.get(&w).expect("value"));
            v[0] = r;
            c.replace(v, &mut rec, &w);
            w.flush();
        }
        assert!(old.iter().all(|&x| x == 7), "a retired value was written");
        drop(g);
        drop(rec);
        drop(c);
    }

    /// Readers on one thread see whole values while another thread replaces
    /// them through a recycler (so allocations are reused under them).
    #[test]
    fn concurrent_readers_see_whole_recycled_values() {
        let c = Arc::new(Rcu::new([0u32; 64]));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = if cfg!(miri) {
            3 * RETIRE_BATCH as u32
        } else {
            50_000
        };
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
        let mut rec = Recycler::new();
        for r in 1..=rounds {
            let g = crossbeam_epoch::pin();
            let mut v = rec.copy(c.get(&g).expect("value"));
            v.iter_mut().for_each(|x| *x = r);
            c.replace(v, &mut rec, &g);
        }
        stop.store(true, Relaxed);
        reader.join().expect("reader");
    }
}
