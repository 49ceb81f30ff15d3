//! The worker's memory of task keys: which tasks it runs now and the
//! results of those it finished recently, so that a second assignment of
//! the same task (after a client failed over to another distributor)
//! joins the run or gets the kept result instead of running it again.
//!
//! The worker is the one place every distributor of a set reaches for a
//! given execution, so exactly-once across a distributor failover is
//! settled here. A worker that dies mid-task loses this memory with the
//! task: the task runs again elsewhere (at least once), with a higher
//! attempt number.
//!
//! Bounds: results are kept for at most [`KEEP_FOR`], at most
//! [`MAX_KEPT`] of them and at most [`MAX_KEPT_BYTES`] of output; past any
//! bound the oldest is forgotten (a key assigned again after that runs
//! again). Joiners per running task: [`MAX_JOINERS`]; past it a further
//! assignment is answered with an error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use allot_wire::{TaskKey, TaskStatus};
use bytes::Bytes;

use crate::link::LinkId;
use crate::FxMap;

/// How long a finished task's result is kept for a resubmission.
pub const KEEP_FOR: Duration = Duration::from_secs(120);

/// Finished results kept at most.
pub const MAX_KEPT: usize = 65_536;

/// Output bytes kept at most, over all kept results.
pub const MAX_KEPT_BYTES: usize = 64 << 20;

/// Assignments that may join one running task (one per distributor that
/// took the task over, in practice).
pub const MAX_JOINERS: usize = 16;

/// A finished task's result, as it was sent.
#[derive(Debug, Clone)]
pub struct Kept {
    /// How it ended.
    pub status: TaskStatus,
    /// Its exit code.
    pub exit_code: i32,
    /// Its message.
    pub message: String,
    /// Its output.
    pub output: Bytes,
    /// How long it ran.
    pub ran: Duration,
}

/// Where a task runs: the assignment it runs for.
pub type Placement = (LinkId, u64);

enum State {
    /// Running for this assignment.
    Running(Placement),
    /// Finished; its result is at this sequence number of the ring.
    Done(u64),
}

/// What a new assignment of a key finds.
pub enum Found<'a> {
    /// Nothing: run it.
    New,
    /// It runs for this assignment: join it.
    Running(Placement),
    /// It finished: answer with this.
    Done(&'a Kept),
}

/// See the module docs.
#[derive(Default)]
pub struct Executions {
    keys: FxMap<TaskKey, State>,
    /// Finished results, oldest first; the front has sequence `first`.
    ring: VecDeque<(TaskKey, Instant, Kept)>,
    first: u64,
    bytes: usize,
}

/// Keys that name no task (a distributor that sends none).
fn is_none(k: &TaskKey) -> bool {
    *k == TaskKey::default()
}

impl Executions {
    /// What an assignment of `key` finds.
    pub fn find(&self, key: &TaskKey) -> Found<'_> {
        if is_none(key) {
            return Found::New;
        }
        match self.keys.get(key) {
            None => Found::New,
            Some(State::Running(p)) => Found::Running(*p),
            Some(State::Done(seq)) => match seq
                .checked_sub(self.first)
                .and_then(|i| self.ring.get(i as usize))
            {
                Some((_, _, kept)) => Found::Done(kept),
                None => Found::New,
            },
        }
    }

    /// Whether it runs or ran `key` (for a distributor's [`allot_wire::KeyQuery`]).
    pub fn holds(&self, key: &TaskKey) -> bool {
        !matches!(self.find(key), Found::New)
    }

    /// `key` started running for `at`.
    pub fn started(&mut self, key: TaskKey, at: Placement) {
        if !is_none(&key) {
            self.keys.insert(key, State::Running(at));
        }
    }

    /// The run of `key` now belongs to `at` (its first assignment was
    /// cancelled or lost while another had joined it).
    pub fn moved(&mut self, key: TaskKey, at: Placement) {
        if let Some(s) = self.keys.get_mut(&key) {
            *s = State::Running(at);
        }
    }

    /// `key` stopped without a result (cancelled): forget it.
    pub fn stopped(&mut self, key: &TaskKey) {
        if matches!(self.keys.get(key), Some(State::Running(_))) {
            self.keys.remove(key);
        }
    }

    /// `key` finished at `now` with `kept`.
    pub fn finished(&mut self, now: Instant, key: TaskKey, kept: Kept) {
        if is_none(&key) {
            return;
        }
        self.expire(now);
        let bytes = kept.output.len();
        while !self.ring.is_empty()
            && (self.ring.len() >= MAX_KEPT || self.bytes + bytes > MAX_KEPT_BYTES)
        {
            self.pop();
        }
        if bytes > MAX_KEPT_BYTES {
            // Too large to keep at all: a later assignment runs it again.
            self.keys.remove(&key);
            return;
        }
        let seq = self.first + self.ring.len() as u64;
        self.bytes += bytes;
        self.ring.push_back((key, now, kept));
        self.keys.insert(key, State::Done(seq));
    }

    /// Forgets results older than [`KEEP_FOR`].
    pub fn expire(&mut self, now: Instant) {
        while self
            .ring
            .front()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) > KEEP_FOR)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((key, _, kept)) = self.ring.pop_front() {
            self.bytes -= kept.output.len();
            let seq = self.first;
            self.first += 1;
            // The key may have started again since (a new run of a
            // forgotten result): only forget the entry that is this one.
            if matches!(self.keys.get(&key), Some(State::Done(s)) if *s == seq) {
                self.keys.remove(&key);
            }
        }
    }

    /// Results kept now.
    pub fn kept(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: u64) -> TaskKey {
        TaskKey { user: 1, key: k }
    }

    fn kept(out: &[u8]) -> Kept {
        Kept {
            status: TaskStatus::Ok,
            exit_code: 0,
            message: String::new(),
            output: Bytes::copy_from_slice(out),
            ran: Duration::ZERO,
        }
    }

    #[test]
    fn running_then_done_then_forgotten() {
        let mut e = Executions::default();
        let t0 = Instant::now();
        assert!(matches!(e.find(&key(1)), Found::New));
        e.started(key(1), (LinkId(1), 10));
        assert!(matches!(e.find(&key(1)), Found::Running((LinkId(1), 10))));
        e.finished(t0, key(1), kept(b"out"));
        match e.find(&key(1)) {
            Found::Done(k) => assert_eq!(k.output, Bytes::from_static(b"out")),
            _ => panic!("kept"),
        }
        e.expire(t0 + KEEP_FOR + Duration::from_secs(1));
        assert!(matches!(e.find(&key(1)), Found::New));
        assert_eq!(e.kept(), 0);
    }

    #[test]
    fn bounds_forget_the_oldest() {
        let mut e = Executions::default();
        let now = Instant::now();
        for i in 0..(MAX_KEPT as u64 + 10) {
            e.finished(now, key(i), kept(b""));
        }
        assert_eq!(e.kept(), MAX_KEPT);
        assert!(matches!(e.find(&key(0)), Found::New));
        assert!(matches!(e.find(&key(MAX_KEPT as u64 + 9)), Found::Done(_)));
        // Bytes: a few large outputs push out the rest.
        let big = vec![0u8; MAX_KEPT_BYTES / 2 + 1];
        e.finished(now, key(1 << 40), kept(&big));
        e.finished(now, key((1 << 40) + 1), kept(&big));
        assert!(matches!(e.find(&key(1 << 40)), Found::New));
        assert!(matches!(e.find(&key((1 << 40) + 1)), Found::Done(_)));
        assert!(e.bytes <= MAX_KEPT_BYTES);
    }

    #[test]
    fn the_empty_key_is_never_remembered() {
        let mut e = Executions::default();
        e.started(TaskKey::default(), (LinkId(1), 1));
        e.finished(Instant::now(), TaskKey::default(), kept(b"x"));
        assert!(matches!(e.find(&TaskKey::default()), Found::New));
    }
}
