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
//! resubmission can arrive: on a new stream from a client name that has an
//! earlier stream here still alive, either open (a failover can start
//! before the old connection times out) or held by tasks still in flight.
//! Each stream is remembered by a weak reference, which the stream and its
//! tasks keep alive. Such a stream arms the index (built once from the
//! tasks in flight) for [`LINGER`]; the sweep drops it when that has passed
//! without another. A client that comes back after all its tasks ended
//! (a CLI run again, a bench round) has nothing to resubmit and costs
//! nothing.
//!
//! Bounds: at most [`CLIENTS_REMEMBERED`] client names (dead entries are
//! swept when the bound is reached) and [`STREAMS_PER_CLIENT`] streams per
//! name (the oldest is forgotten); past the name bound a new stream counts
//! as one that may resubmit, which keeps the index on (correct, only
//! slower). The index holds one entry per task in flight or waiting, which
//! the distributor's `max_pending` bounds.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// How long the index stays after the last repeat stream. A client
/// resubmits right after it reconnects; a minute leaves room for a slow
/// client with many tasks to resend.
pub const LINGER: Duration = Duration::from_secs(60);

/// Client names remembered (as 64-bit hashes).
pub const CLIENTS_REMEMBERED: usize = 100_000;

/// Streams remembered per client name.
pub const STREAMS_PER_CLIENT: usize = 64;

/// Identifies a task across resubmissions: (hash of the user name, the
/// client's idempotency key).
pub type Key = (u64, u64);

/// The hash used for user and client names in keys.
pub fn name_hash(s: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// See the module docs. `S` is what identifies a client stream (the
/// distributor's outbox of it).
pub struct ResubmitIndex<S> {
    map: Option<FxMap<Key, u64>>,
    streams: FxMap<u64, Vec<Weak<S>>>,
    armed_until: Option<Instant>,
}

impl<S> ResubmitIndex<S> {
    /// An index that is off: no client seen yet.
    pub fn new() -> ResubmitIndex<S> {
        ResubmitIndex {
            map: None,
            streams: FxMap::default(),
            armed_until: None,
        }
    }

    /// Whether the index is kept now.
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.map.is_some()
    }

    /// `stream` from `client` (its certificate name) opened. If an earlier
    /// stream of that name is still alive and the index is off, returns
    /// true: the caller then calls [`ResubmitIndex::build`] with every task
    /// in flight or waiting before handling the stream's frames.
    pub fn stream_opened(&mut self, client: &str, stream: &Rc<S>, now: Instant) -> bool {
        let h = name_hash(client);
        if !self.streams.contains_key(&h) && self.streams.len() >= CLIENTS_REMEMBERED {
            self.streams
                .retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        let at_bound = !self.streams.contains_key(&h) && self.streams.len() >= CLIENTS_REMEMBERED;
        let mut may_resubmit = at_bound;
        if !at_bound {
            let mine = self.streams.entry(h).or_default();
            mine.retain(|w| w.strong_count() > 0);
            may_resubmit = !mine.is_empty();
            if mine.len() >= STREAMS_PER_CLIENT {
                mine.remove(0);
            }
            mine.push(Rc::downgrade(stream));
        }
        if !may_resubmit {
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
    fn off_until_a_client_comes_back_while_its_tasks_run() {
        let mut ix = ResubmitIndex::new();
        let t0 = Instant::now();
        let first = Rc::new(());
        assert!(!ix.stream_opened("cli-1", &first, t0));
        assert!(!ix.stream_opened("cli-2", &Rc::new(()), t0));
        ix.insert((1, 7), 100);
        assert_eq!(ix.find((1, 7)), None, "off: nothing is kept");
        // cli-1 reconnects while its first stream (or a task holding it)
        // lives: build from what runs.
        let second = Rc::new(());
        assert!(ix.stream_opened("cli-1", &second, t0));
        ix.build([((1, 7), 100)].into_iter());
        assert_eq!(ix.find((1, 7)), Some(100));
        // Already on: another such stream needs no rebuild.
        assert!(!ix.stream_opened("cli-1", &Rc::new(()), t0));
        ix.insert((1, 8), 101);
        ix.remove((1, 7));
        assert_eq!(ix.find((1, 7)), None);
        assert_eq!(ix.find((1, 8)), Some(101));
        ix.expire(t0 + LINGER / 2);
        assert!(ix.is_active());
        ix.expire(t0 + LINGER);
        assert!(!ix.is_active());
        assert_eq!(ix.find((1, 8)), None);
        drop((first, second));
    }

    #[test]
    fn a_client_back_after_its_tasks_ended_costs_nothing() {
        let mut ix: ResubmitIndex<()> = ResubmitIndex::new();
        let now = Instant::now();
        for _ in 0..10 {
            // Each stream is gone (closed, no task holds it) before the next.
            let s = Rc::new(());
            assert!(!ix.stream_opened("bench", &s, now));
        }
        assert!(!ix.is_active());
    }

    #[test]
    fn past_the_bounds() {
        let now = Instant::now();
        // Too many names alive: a new name counts as one that may resubmit.
        let mut ix = ResubmitIndex::new();
        let held: Vec<Rc<()>> = (0..CLIENTS_REMEMBERED).map(|_| Rc::new(())).collect();
        for (i, s) in held.iter().enumerate() {
            assert!(!ix.stream_opened(&format!("c{i}"), s, now));
        }
        assert!(ix.stream_opened("a new name", &Rc::new(()), now));
        assert_eq!(ix.streams.len(), CLIENTS_REMEMBERED);
        // Once their streams are gone, the names are swept for new ones.
        drop(held);
        ix.map = None;
        assert!(!ix.stream_opened("another name", &Rc::new(()), now));
        assert_eq!(ix.streams.len(), 1);
        // Streams per name: the oldest is forgotten.
        let alive: Vec<Rc<()>> = (0..STREAMS_PER_CLIENT + 5).map(|_| Rc::new(())).collect();
        for s in &alive {
            ix.stream_opened("busy", s, now);
        }
        assert_eq!(ix.streams[&name_hash("busy")].len(), STREAMS_PER_CLIENT);
    }
}
