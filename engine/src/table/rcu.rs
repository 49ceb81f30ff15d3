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

use crossbeam_epoch::{Atomic, Guard, Shared};

use crate::table::arena::Pool;

/// An optional immutable `T`, replaced as a whole by writers.
///
/// Values live in a [`Pool`] (huge-page backed, [`crate::table::arena`]): every
/// value a cell holds came from the pool passed to [`Rcu::new_in`],
/// [`Rcu::store`] or (through its [`Recycler`]) [`Rcu::replace`], and the
/// owner of the cell keeps that pool's `Arc` for as long as the cell lives.
///
/// Writers to one cell must be serialised by the caller (the table's shard
/// mutex) for [`Rcu::update`] not to lose an update; [`Rcu::store`] alone is
/// sound with any number of concurrent writers.
pub(crate) struct Rcu<T: Send + Sync + 'static> {
    ptr: Atomic<T>,
}

impl<T: Send + Sync + 'static> Rcu<T> {
    /// A cell holding `value`, in a slot of `pool`.
    pub(crate) fn new_in(value: T, pool: &Pool<T>) -> Rcu<T> {
        Rcu {
            ptr: Atomic::from(Shared::from(pool.alloc(value).as_ptr().cast_const())),
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
        // SAFETY: the pointer is null or a pool slot written (by
        // `Pool::alloc` or `Recycler::copy`) before the `Release` half of the
        // swap that published it (paired with this `Acquire` load). The slot
        // stays allocated while the cell's owner holds the pool (the arena is
        // freed only with the last pool `Arc`). It is freed or reused
        // (written) only after it was unlinked (swapped out), by a deferred
        // function (`store`) or a `Recycler`'s deferred batch, both of which
        // wait until every guard pinned before the unlinking is dropped;
        // `guard` is such a guard for as long as the returned reference lives
        // ('g), and `&'g self` keeps `Drop` from dropping it meanwhile.
        // Values are never mutated while published.
        unsafe { p.as_ref() }
    }

    /// The address of the current value, for prefetching only (never
    /// dereferenced): null if the cell is empty.
    #[inline(always)]
    pub(crate) fn addr(&self, guard: &Guard) -> *const T {
        self.ptr.load(Acquire, guard).as_raw()
    }

    /// Replaces the value (or empties the cell with `None`), the new one in
    /// a slot of `pool`. The old slot goes back to `pool` once no pinned
    /// reader can still see it.
    pub(crate) fn store(&self, value: Option<T>, pool: &Arc<Pool<T>>, guard: &Guard) {
        let new = match value {
            Some(v) => Shared::from(pool.alloc(v).as_ptr().cast_const()),
            None => Shared::null(),
        };
        let old = self.ptr.swap(new, AcqRel, guard);
        if let Some(old) = NonNull::new(old.as_raw().cast_mut()) {
            let old = Retired(old);
            let pool = pool.clone();
            guard.defer(move || {
                let p = old.into_ptr();
                // SAFETY: `p` was unlinked by the swap above, so no reader
                // that pins from now on can reach it, and no other writer can
                // obtain it again (each swap returns a distinct pointer
                // exactly once); the collector runs this function only after
                // every guard pinned before the swap is dropped. The slot
                // came from `pool` (the cell's values all do) and the closure
                // keeps the pool alive.
                unsafe { pool.free(p) }
            });
        }
    }

    /// Replaces the value with a copy modified by `f` (a copy of `T::default`
    /// if the cell is empty).
    #[cfg(test)]
    pub(crate) fn update(&self, pool: &Arc<Pool<T>>, guard: &Guard, f: impl FnOnce(&mut T))
    where
        T: Clone + Default,
    {
        let mut v = self.get(guard).cloned().unwrap_or_default();
        f(&mut v);
        self.store(Some(v), pool, guard);
    }
}

impl<T: Send + Sync + Clone + 'static> Rcu<T> {
    /// Replaces the value with `new` (from [`Recycler::copy`] of `rec`) and
    /// hands the old one to `rec`, which reuses its slot once no pinned
    /// reader can still see it. The cell's values must come from `rec`'s
    /// pool.
    #[inline]
    pub(crate) fn replace(&self, new: Fresh<T>, rec: &mut Recycler<T>, guard: &Guard) {
        let old = self
            .ptr
            .swap(Shared::from(new.0.as_ptr().cast_const()), AcqRel, guard);
        if let Some(old) = NonNull::new(old.as_raw().cast_mut()) {
            rec.retire(old, guard);
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Rcu<T> {
    fn drop(&mut self) {
        // SAFETY: `unprotected` is sound for this load: `&mut self` proves
        // no other thread can reach the cell (readers borrow it).
        let p = self
            .ptr
            .load(Acquire, unsafe { crossbeam_epoch::unprotected() })
            .as_raw();
        if let Some(p) = NonNull::new(p.cast_mut()) {
            // SAFETY: `&mut self` proves no reader holds a reference obtained
            // from `get` (those borrow `self`); the pointer is a pool slot
            // owned by this cell (values swapped out were handed to the
            // collector or a recycler, not kept), still allocated because the
            // cell's owner holds the pool. The value is dropped in place; the
            // slot's memory goes with the arena.
            unsafe { p.as_ptr().drop_in_place() };
        }
    }
}

/// Retired values handed to the epoch collector at once: one deferred
/// function per this many replacements instead of one per replacement.
pub(crate) const RETIRE_BATCH: usize = 64;

/// Most reclaimed values a [`Recycler`] keeps in each of its two lists.
pub(crate) const SPARE_MAX: usize = 128;

/// A copy made by [`Recycler::copy`], owned by the writer until
/// [`Rcu::replace`] publishes it. (Dropping one instead leaves its slot to
/// the arena until the table drops; `T` has no destructor to skip, checked
/// in [`Recycler::new`].)
pub(crate) struct Fresh<T>(NonNull<T>);

impl<T> std::ops::Deref for Fresh<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a `Fresh` is the only pointer to an initialised slot that
        // stays allocated while the writer holds the recycler (and its pool).
        unsafe { self.0.as_ref() }
    }
}

impl<T> std::ops::DerefMut for Fresh<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes the access unique.
        unsafe { self.0.as_mut() }
    }
}

/// Recycles the slots of replaced values, for one serialised writer
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
///   keeps at most [`SPARE_MAX`]; beyond that the slots go back to the pool.
/// * [`Recycler::copy`] takes a value from `spare`, refilled from
///   `returned` (one lock per refill) when empty (so it too holds at most
///   [`SPARE_MAX`]), and overwrites it; it takes a slot from the pool only
///   if both are empty.
///
/// A value is therefore written again only after the epoch collector has
/// established that no reader that could have seen it is still pinned: a
/// reader never sees a recycled value change.
pub(crate) struct Recycler<T: Send + Sync + 'static> {
    pool: Arc<Pool<T>>,
    retired: Vec<Retired<T>>,
    spare: Vec<Retired<T>>,
    returned: Arc<Mutex<Vec<Retired<T>>>>,
}

/// A value unlinked from its cell (by a swap, exactly once) that readers may
/// still read: never written, dereferenced or freed until reclaimed. (Also
/// the reclaimed values in the spare lists, which nobody else can reach.)
struct Retired<T>(NonNull<T>);

// SAFETY: a `Retired` is only a pointer to a `T` that is read-only until the
// collector reclaims it; moving it to another thread lets that thread drop
// or overwrite the `T` (needs `T: Send`) while readers on others may read it
// (`T: Sync`).
unsafe impl<T: Send + Sync> Send for Retired<T> {}

impl<T> Retired<T> {
    /// The pointer (a method, so that closures capture the whole `Retired`).
    fn into_ptr(self) -> NonNull<T> {
        self.0
    }
}

impl<T: Send + Sync + Clone + 'static> Recycler<T> {
    /// A recycler taking slots from `pool` (the pool of the cells it serves).
    pub(crate) fn new(pool: &Arc<Pool<T>>) -> Recycler<T> {
        const {
            assert!(
                !std::mem::needs_drop::<T>(),
                "recycled values are left to the arena without dropping"
            )
        };
        Recycler {
            pool: pool.clone(),
            retired: Vec::with_capacity(RETIRE_BATCH),
            spare: Vec::new(),
            returned: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The pool the recycler's values come from.
    pub(crate) fn pool(&self) -> &Arc<Pool<T>> {
        &self.pool
    }

    /// A copy of `from` in a recycled slot (a new one if none is spare), for
    /// [`Rcu::replace`].
    #[inline]
    pub(crate) fn copy(&mut self, from: &T) -> Fresh<T> {
        if self.spare.is_empty() {
            let mut back = self.returned.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut self.spare, &mut *back);
        }
        match self.spare.pop() {
            Some(Retired(p)) => {
                let mut f = Fresh(p);
                // Reclaimed: no reader can see the value, nothing else holds
                // the pointer (it left `spare`), so `Fresh` owns it.
                (*f).clone_from(from);
                f
            }
            None => Fresh(self.pool.alloc(from.clone())),
        }
    }

    /// Takes a value unlinked from an [`Rcu`] (by [`Rcu::replace`]).
    #[inline]
    fn retire(&mut self, old: NonNull<T>, guard: &Guard) {
        self.retired.push(Retired(old));
        if self.retired.len() >= RETIRE_BATCH {
            let batch = std::mem::replace(&mut self.retired, Vec::with_capacity(RETIRE_BATCH));
            defer_batch(batch, self.returned.clone(), self.pool.clone(), guard);
            // Move the batch to the global queue now: left in the thread's
            // bag it would wait for 63 more deferred functions.
            guard.flush();
        }
    }

    /// Values waiting for readers, and values ready for reuse (for tests).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let returned = self.returned.lock().map_or(0, |r| r.len());
        (self.retired.len(), self.spare.len() + returned)
    }
}

/// Defers the reclamation of `batch` until no reader pinned now is pinned.
fn defer_batch<T: Send + Sync + 'static>(
    batch: Vec<Retired<T>>,
    returned: Arc<Mutex<Vec<Retired<T>>>>,
    pool: Arc<Pool<T>>,
    guard: &Guard,
) {
    guard.defer(move || {
        let mut back = returned.lock().unwrap_or_else(|p| p.into_inner());
        for r in batch {
            if back.len() < SPARE_MAX {
                back.push(r);
            } else {
                // SAFETY: `r` was unlinked from its cell by a swap (which
                // returns each pointer once, and it was retired once),
                // before this function was deferred with a pinned guard; the
                // collector runs it only after every guard pinned before
                // that has been dropped, so no reader holds a reference to
                // the value and none can obtain one. It came from `pool`
                // (the recycler's cells' pool), which the closure keeps.
                unsafe { pool.free(r.into_ptr()) };
            }
        }
    });
}

impl<T: Send + Sync + 'static> Drop for Recycler<T> {
    fn drop(&mut self) {
        // Readers may still see the retired values (this recycler need not
        // outlive the cells it served): leave them to the collector. The
        // spare ones are left in the arena (`T` has no destructor).
        let batch = std::mem::take(&mut self.retired);
        if !batch.is_empty() {
            defer_batch(
                batch,
                self.returned.clone(),
                self.pool.clone(),
                &crossbeam_epoch::pin(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;

    use crate::table::arena::Arena;

    fn pool<T>() -> Arc<Pool<T>> {
        Pool::new(&Arena::new(0))
    }

    #[test]
    fn rcu_reads_what_was_stored() {
        let p = pool();
        let c = Rcu::new_in([1u32; 8], &p);
        let g = crossbeam_epoch::pin();
        assert_eq!(c.get(&g), Some(&[1u32; 8]));
        c.update(&p, &g, |v| v[3] = 9);
        let v = c.get(&g).copied();
        assert_eq!(v.map(|v| v[3]), Some(9));
        c.store(None, &p, &g);
        assert!(c.get(&g).is_none());
        assert!(c.addr(&g).is_null());
        c.update(&p, &g, |v| v[0] = 5);
        assert_eq!(c.get(&g).map(|v| v[0]), Some(5));
        let e: Rcu<Vec<u8>> = Rcu::null();
        drop(c);
        assert!(e.get(&g).is_none());
    }

    #[test]
    fn a_reference_outlives_the_swap_while_pinned() {
        let p = pool();
        let c = Rcu::new_in(vec![7u64; 16], &p);
        let g = crossbeam_epoch::pin();
        let old = c.get(&g).expect("value");
        c.store(Some(vec![8u64; 16]), &p, &g);
        // The old value is still readable: its free waits for `g`.
        assert!(old.iter().all(|&x| x == 7));
        assert!(c.get(&g).expect("value").iter().all(|&x| x == 8));
    }

    /// A thread that reads `c` until `stop`, checking that every value it
    /// sees is whole (all elements equal) and never older than the last.
    fn whole_value_reader(
        c: &Arc<Rcu<[u32; 64]>>,
        stop: &Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
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
    }

    /// Readers on one thread see whole values while another thread replaces
    /// them: every element of a value equals its first.
    #[test]
    fn concurrent_readers_see_whole_values() {
        let p = pool();
        let c = Arc::new(Rcu::new_in([0u32; 64], &p));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let reader = whole_value_reader(&c, &stop);
        for r in 1..=rounds {
            let g = crossbeam_epoch::pin();
            c.store(Some([r; 64]), &p, &g);
        }
        stop.store(true, Relaxed);
        reader.join().expect("reader");
    }

    #[test]
    fn replaced_values_are_recycled_once_readers_are_gone() {
        let p = pool();
        let c = Rcu::new_in([0u64; 8], &p);
        let mut rec = Recycler::new(&p);
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
        let p = pool();
        let c = Rcu::new_in([7u32; 16], &p);
        let mut rec = Recycler::new(&p);
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
        let p = pool();
        let c = Arc::new(Rcu::new_in([0u32; 64], &p));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = if cfg!(miri) {
            3 * RETIRE_BATCH as u32
        } else {
            50_000
        };
        let reader = whole_value_reader(&c, &stop);
        let mut rec = Recycler::new(&p);
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
