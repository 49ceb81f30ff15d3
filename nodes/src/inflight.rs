//! Tasks in flight, by sequential id: the distributor's placements and the
//! client's submissions.
//!
//! Both hand out ids in order (1, 2, 3, ...) and most tasks end roughly in
//! the order they began. A hash map scatters neighbouring ids over its
//! buckets, so once a few thousand tasks are in flight every insert and
//! every removal is a cache miss, and those two misses per task dominate
//! the distributor's stream handler (the profile is in `BENCHMARKS.md`).
//!
//! [`InFlight`] keeps id `i` in slot `i % capacity` of a ring instead.
//! Tasks begun together sit side by side, so a burst of results walks
//! memory in order and the hardware prefetcher hides the latency. A task
//! still running after `capacity` newer ones came and went (a long task
//! among short ones) is moved to a small overflow map when a newer id needs
//! its slot.
//!
//! Bounds: the ring doubles while more than half full, up to the
//! `max_ring` slots given to [`InFlight::new`]; past that, displaced tasks
//! go to the overflow map. The number of entries is bounded by the caller
//! (the distributor's `max_pending`, the client's `MAX_IN_FLIGHT`), which
//! checks [`InFlight::len`] before inserting.

use std::collections::HashMap;

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A map from sequential `u64` ids to `T`, laid out for ids that arrive in
/// order and leave in about the same order. See the module docs.
pub struct InFlight<T> {
    slots: Vec<Option<(u64, T)>>,
    overflow: FxMap<u64, T>,
    len: usize,
    max_ring: usize,
}

impl<T> InFlight<T> {
    /// A table whose ring starts at `initial` slots and grows up to
    /// `max_ring` (both rounded up to powers of two, at least 2).
    pub fn new(initial: usize, max_ring: usize) -> InFlight<T> {
        let max_ring = max_ring.max(2).next_power_of_two();
        let initial = initial.clamp(2, max_ring).next_power_of_two();
        InFlight {
            slots: empty_slots(initial),
            overflow: FxMap::default(),
            len: 0,
            max_ring,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in the ring (for tests and memory reports).
    #[cfg(test)]
    pub fn ring_capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries moved out of the ring by newer ids.
    #[cfg(test)]
    pub fn overflowed(&self) -> usize {
        self.overflow.len()
    }

    fn slot(&self, id: u64) -> usize {
        // The ring's length is a power of two.
        (id as usize) & (self.slots.len() - 1)
    }

    /// Stores `value` under `id`; returns the value `id` held before, if any.
    pub fn insert(&mut self, id: u64, value: T) -> Option<T> {
        let i = self.slot(id);
        match &mut self.slots[i] {
            Some((held, v)) if *held == id => return Some(std::mem::replace(v, value)),
            Some(_) => {}
            empty @ None => {
                let old = if self.overflow.is_empty() {
                    None
                } else {
                    self.overflow.remove(&id)
                };
                *empty = Some((id, value));
                if old.is_none() {
                    self.len += 1;
                }
                return old;
            }
        }
        // The slot belongs to another id that is still in flight.
        if let Some(v) = self.overflow.get_mut(&id) {
            return Some(std::mem::replace(v, value));
        }
        if self.len >= self.slots.len() / 2 && self.slots.len() < self.max_ring {
            self.grow();
            return self.insert(id, value);
        }
        // The ring is as large as it may be: the older task gives way.
        if let Some((old_id, old)) = self.slots[i].replace((id, value)) {
            self.overflow.insert(old_id, old);
        }
        self.len += 1;
        None
    }

    /// Doubles the ring. Ids in different slots of a ring of `n` differ in
    /// their low bits, so they are in different slots of one of `2n` too;
    /// overflowed ids move back in where their new slot is free.
    fn grow(&mut self) {
        let doubled = empty_slots(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, doubled);
        for (id, v) in old.into_iter().flatten() {
            let i = self.slot(id);
            self.slots[i] = Some((id, v));
        }
        let overflow = std::mem::take(&mut self.overflow);
        for (id, v) in overflow {
            let i = self.slot(id);
            if self.slots[i].is_none() {
                self.slots[i] = Some((id, v));
            } else {
                self.overflow.insert(id, v);
            }
        }
    }

    /// The entry under `id`.
    #[cfg(test)]
    pub fn get(&self, id: u64) -> Option<&T> {
        match &self.slots[self.slot(id)] {
            Some((held, v)) if *held == id => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get(&id),
        }
    }

    /// The entry under `id`, to change it.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let i = self.slot(id);
        match &mut self.slots[i] {
            Some((held, v)) if *held == id => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get_mut(&id),
        }
    }

    /// Takes the entry under `id` out.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let i = self.slot(id);
        let found = match &self.slots[i] {
            Some((held, _)) if *held == id => self.slots[i].take().map(|(_, v)| v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.remove(&id),
        };
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots
            .iter()
            .filter_map(|s| s.as_ref().map(|(id, v)| (*id, v)))
            .chain(self.overflow.iter().map(|(id, v)| (*id, v)))
    }

    /// The ids of the entries `pick` chooses (to remove them one by one
    /// afterwards, since handling each may touch the table).
    pub fn ids_where(&self, mut pick: impl FnMut(&T) -> bool) -> Vec<u64> {
        self.iter()
            .filter(|(_, v)| pick(v))
            .map(|(id, _)| id)
            .collect()
    }
}

fn empty_slots<T>(n: usize) -> Vec<Option<(u64, T)>> {
    std::iter::repeat_with(|| None).take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_ids_stay_in_the_ring() {
        let mut t = InFlight::new(4, 1 << 16);
        for round in 0..100u64 {
            for id in round * 64..round * 64 + 64 {
                assert_eq!(t.insert(id, id * 10), None);
            }
            for id in round * 64..round * 64 + 64 {
                assert_eq!(t.remove(id), Some(id * 10));
            }
        }
        assert!(t.is_empty());
        assert_eq!(t.overflowed(), 0);
        // Grew to hold a burst of 64, and no further.
        assert!(t.ring_capacity() >= 64 && t.ring_capacity() <= 128);
    }

    #[test]
    fn a_long_task_moves_to_overflow_and_is_still_found() {
        let mut t = InFlight::new(8, 8);
        t.insert(0, "long");
        for id in 1..1000u64 {
            t.insert(id, "short");
            assert_eq!(t.remove(id), Some("short"));
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(0), Some(&"long"));
        assert_eq!(t.remove(0), Some("long"));
        assert!(t.is_empty());
        assert_eq!(t.remove(0), None);
    }

    #[test]
    fn reinserting_an_id_replaces_it() {
        let mut t = InFlight::new(2, 2);
        t.insert(5, 1);
        t.insert(7, 2); // evicts 5 to the overflow (same slot, ring full)
        assert_eq!(t.insert(5, 3), Some(1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(5), Some(&3));
        let mut all: Vec<(u64, i32)> = t.iter().map(|(id, v)| (id, *v)).collect();
        all.sort();
        assert_eq!(all, vec![(5, 3), (7, 2)]);
        assert_eq!((t.remove(5), t.remove(7)), (Some(3), Some(2)));
        assert!(t.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Get(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..300).prop_map(Op::Insert),
            (0u64..300).prop_map(Op::Remove),
            (0u64..300).prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Any sequence of operations agrees with a plain map.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..400), max in 1usize..64) {
            let mut t = InFlight::new(2, max);
            let mut model = std::collections::BTreeMap::new();
            for (n, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Insert(id) => prop_assert_eq!(t.insert(id, n), model.insert(id, n)),
                    Op::Remove(id) => prop_assert_eq!(t.remove(id), model.remove(&id)),
                    Op::Get(id) => prop_assert_eq!(t.get(id), model.get(&id)),
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let mut all: Vec<(u64, usize)> = t.iter().map(|(k, v)| (k, *v)).collect();
            all.sort();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        }
    }
}
