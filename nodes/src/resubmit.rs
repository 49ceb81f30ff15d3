//! Finding a running task again when its client resubmits it.
//!
//! A client whose stream to a distributor fails reconnects (to the same
//! distributor if it is still the first of its set that answers) and
//! resubmits every task still in flight with the same idempotency key
//! (DESIGN.md, "Reliability rules"). The distributor must then attach the
//! new stream to the task it is already running instead of running it
//! twice.
//!
//! That needs an index from key to task. Keeping one for every task costs
//! two hash-map cache misses per task (insert, remove) on the hot path, and
//! in steady state it is never read. So the index exists only while a
//! resubmission can arrive: a resubmission comes on a stream from a client
//! name this distributor has seen a stream from before. Such a stream arms
//! the index (built once from the tasks in flight) for [`LINGER`]; the
//! sweep drops it when that has passed without another repeat stream.
//!
//! Bounds: at most [`CLIENTS_REMEMBERED`] client names are remembered (as
//! hashes); past that every client stream counts as a repeat, which keeps
//! the index on (correct, only slower). The index holds one entry per task
//! in flight or waiting, which the distributor's `max_pending` bounds.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
type FxSet<K> = HashSet<K, rustc_hash::FxBuildHasher>;

/// How long the index stays after the last repeat stream. A client
/// resubmits right after it reconnects; a minute leaves room for a slow
/// client with many tasks to resend.
pub const LINGER: Duration = Duration::from_secs(60);

/// Client names remembered (as 64-bit hashes, 8 bytes each).
pub const CLIENTS_REMEMBERED: usize = 100_000;

/// Identifies a task across resubmissions: (hash of the user name, the
/// client's idempotency key).
pub type Key = (u64, u64);

/// The hash used for user and client names in keys.
pub fn name_hash(s: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// See the module docs.
#[derive(Default)]
pub struct ResubmitIndex {
    map: Option<FxMap<Key, u64>>,
    clients_seen: FxSet<u64>,
    armed_until: Option<Instant>,
}

impl ResubmitIndex {
    /// An index that is off: no client seen yet.
    pub fn new() -> ResubmitIndex {
        ResubmitIndex::default()
    }

    /// Whether the index is kept now.
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.map.is_some()
    }

    /// A stream from `client` (its certificate name) opened. If it is a
    /// repeat stream and the index is off, returns true: the caller then
    /// calls [`ResubmitIndex::build`] with every task in flight or waiting
    /// before handling the stream's frames.
    pub fn stream_opened(&mut self, client: &str, now: Instant) -> bool {
        let h = name_hash(client);
        // Past the bound every stream counts as a repeat.
        let repeat =
            self.clients_seen.contains(&h) || self.clients_seen.len() >= CLIENTS_REMEMBERED;
        if !repeat {
            self.clients_seen.insert(h);
        }
        if !repeat {
            return false;
        }
        self.armed_until = Some(now + LINGER);
        self.map.is_none()
    }

    /// Turns the index on with these (key, task) pairs.
    pub fn build(&mut self, tasks: impl Iterator<Item = (Key, u64)>) {
        self.map = Some(tasks.collect());
    }

    /// The task running under `key`, if the index is on and has it.
    pub fn find(&self, key: Key) -> Option<u64> {
        self.map.as_ref()?.get(&key).copied()
    }

    /// Records a new task (no-op while the index is off).
    pub fn insert(&mut self, key: Key, task: u64) {
        if let Some(m) = self.map.as_mut() {
            m.insert(key, task);
        }
    }

    /// Forgets a finished task (no-op while the index is off).
    pub fn remove(&mut self, key: Key) {
        if let Some(m) = self.map.as_mut() {
            m.remove(&key);
        }
    }

    /// Drops the index once [`LINGER`] has passed since the last repeat
    /// stream.
    pub fn expire(&mut self, now: Instant) {
        if self.armed_until.is_some_and(|t| now >= t) {
            self.armed_until = None;
            self.map = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_a_client_comes_back() {
        let mut ix = ResubmitIndex::new();
        let t0 = Instant::now();
        assert!(!ix.stream_opened("cli-1", t0));
        assert!(!ix.stream_opened("cli-2", t0));
        ix.insert((1, 7), 100);
        assert_eq!(ix.find((1, 7)), None, "off: nothing is kept");
        // cli-1 reconnects: build from what runs.
        assert!(ix.stream_opened("cli-1", t0));
        ix.build([((1, 7), 100)].into_iter());
        assert_eq!(ix.find((1, 7)), Some(100));
        // Already on: a second repeat needs no rebuild.
        assert!(!ix.stream_opened("cli-2", t0));
        ix.insert((1, 8), 101);
        ix.remove((1, 7));
        assert_eq!(ix.find((1, 7)), None);
        assert_eq!(ix.find((1, 8)), Some(101));
        ix.expire(t0 + LINGER / 2);
        assert!(ix.is_active());
        ix.expire(t0 + LINGER);
        assert!(!ix.is_active());
        assert_eq!(ix.find((1, 8)), None);
    }

    #[test]
    fn past_the_bound_every_stream_is_a_repeat() {
        let mut ix = ResubmitIndex::new();
        let now = Instant::now();
        for i in 0..CLIENTS_REMEMBERED {
            assert!(!ix.stream_opened(&format!("c{i}"), now));
        }
        assert!(ix.stream_opened("a new name", now));
        assert_eq!(ix.clients_seen.len(), CLIENTS_REMEMBERED);
    }
}
