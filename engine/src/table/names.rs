//! Server names: a compact arena plus an open-addressing index from name to
//! id.
//!
//! At a million servers a `HashMap<String, ServerId>` plus a `String` per row
//! costs well over 100 bytes per server (two heap chunks and a wide bucket).
//! Here a name costs its bytes plus 5 bytes of offset/length, and the index 4
//! bytes per slot at a load of at most 1/2 (linear probing, backward-shift
//! deletion, so no tombstones). Bounds: one slot per table row at most twice
//! over (the index never grows past `2 * capacity` rounded to a power of two);
//! the arena is compacted when more than half of it is garbage.

use std::hash::{BuildHasher, Hasher};

const EMPTY: u32 = u32::MAX;

pub(crate) struct Names {
    /// Index slots holding server ids, `EMPTY` when free.
    slots: Vec<u32>,
    /// Per id: offset of the name in `arena`.
    offs: Vec<u32>,
    /// Per id: name length; 0 means no name (ids are never empty-named).
    lens: Vec<u8>,
    arena: Vec<u8>,
    /// Bytes in `arena` no longer referenced.
    garbage: usize,
    count: usize,
}

fn hash(name: &[u8]) -> u64 {
    // A fixed-key SipHash: deterministic, and names come from authenticated
    // workers, so flooding is not a concern; the cost is paid only on
    // registration and lookup, never while matching.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(name);
    h.finish()
}

impl Names {
    pub(crate) fn new() -> Names {
        Names {
            slots: vec![EMPTY; 16],
            offs: Vec::new(),
            lens: Vec::new(),
            arena: Vec::new(),
            garbage: 0,
            count: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The name of `id`, if it has one.
    pub(crate) fn name(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let len = *self.lens.get(i)? as usize;
        if len == 0 {
            return None;
        }
        let off = self.offs[i] as usize;
        std::str::from_utf8(&self.arena[off..off + len]).ok()
    }

    fn bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let off = self.offs[i] as usize;
        &self.arena[off..off + self.lens[i] as usize]
    }

    /// The id registered under `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<u32> {
        let mask = self.mask();
        let mut i = hash(name.as_bytes()) as usize & mask;
        loop {
            let id = self.slots[i];
            if id == EMPTY {
                return None;
            }
            if self.bytes(id) == name.as_bytes() {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Records `name` for `id`. The caller has checked the name is absent,
    /// non-empty and at most 255 bytes.
    pub(crate) fn insert(&mut self, name: &str, id: u32) {
        if (self.count + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = id as usize;
        if self.lens.len() <= i {
            self.lens.resize(i + 1, 0);
            self.offs.resize(i + 1, 0);
        }
        self.offs[i] = self.arena.len() as u32;
        self.lens[i] = name.len() as u8;
        self.arena.extend_from_slice(name.as_bytes());
        self.place(id);
        self.count += 1;
    }

    fn place(&mut self, id: u32) {
        let mask = self.mask();
        let mut i = hash(self.bytes(id)) as usize & mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = id;
    }

    fn grow(&mut self) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; 0]);
        self.slots = vec![EMPTY; old.len() * 2];
        for id in old.into_iter().filter(|&id| id != EMPTY) {
            self.place(id);
        }
    }

    /// Forgets the name of `id`.
    pub(crate) fn remove(&mut self, id: u32) {
        let Some(name) = self.name(id).map(str::to_owned) else {
            return;
        };
        let mask = self.mask();
        let mut i = hash(name.as_bytes()) as usize & mask;
        while self.slots[i] != id {
            if self.slots[i] == EMPTY {
                return;
            }
            i = (i + 1) & mask;
        }
        // Backward-shift deletion: move later entries of the probe run into
        // the hole when their home slot allows it.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let other = self.slots[j];
            if other == EMPTY {
                break;
            }
            let home = hash(self.bytes(other)) as usize & mask;
            // `other` may move to `hole` if `home` is not cyclically in
            // (hole, j].
            let between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !between {
                self.slots[hole] = other;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.garbage += self.lens[id as usize] as usize;
        self.lens[id as usize] = 0;
        self.count -= 1;
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for i in 0..self.lens.len() {
            let len = self.lens[i] as usize;
            if len > 0 {
                let off = self.offs[i] as usize;
                self.offs[i] = arena.len() as u32;
                arena.extend_from_slice(&self.arena[off..off + len]);
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Heap bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4
            + self.offs.capacity() * 4
            + self.lens.capacity()
            + self.arena.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn insert_lookup_remove() {
        let mut n = Names::new();
        n.insert("a", 3);
        n.insert("b", 0);
        assert_eq!(n.lookup("a"), Some(3));
        assert_eq!(n.lookup("b"), Some(0));
        assert_eq!(n.name(3), Some("a"));
        n.remove(3);
        assert_eq!(n.lookup("a"), None);
        assert_eq!(n.name(3), None);
        assert_eq!(n.lookup("b"), Some(0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The index agrees with a HashMap through growth, deletion and
        /// compaction.
        #[test]
        fn agrees_with_a_hashmap(ops in proptest::collection::vec((0u32..300, any::<bool>()), 1..2000)) {
            let mut n = Names::new();
            let mut model: HashMap<String, u32> = HashMap::new();
            for (k, add) in ops {
                let name = format!("server-{k:04}-{}", "x".repeat((k % 40) as usize));
                if add {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(name.clone()) {
                        n.insert(&name, k);
                        v.insert(k);
                    }
                } else if model.remove(&name).is_some() {
                    n.remove(k);
                }
            }
            for k in 0..300u32 {
                let name = format!("server-{k:04}-{}", "x".repeat((k % 40) as usize));
                prop_assert_eq!(n.lookup(&name), model.get(&name).copied());
                prop_assert_eq!(n.name(k).map(str::to_owned), model.get(&name).map(|_| name.clone()));
            }
        }
    }
}
