//! One job: its tasks as a range with a cursor, and a slot for each task
//! that has started.
//!
//! A task that has not started costs nothing: the job knows its tasks by
//! offset (`0..total`), and everything at or past the cursor that has no
//! slot is queued. A slot is made when a task starts (or is cancelled ahead
//! of the cursor) and kept until the job is removed, so a finished job
//! answers every query from memory.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use allot_engine::Query;
use allot_wire::{JobCounts, JobTaskState};
use bytes::Bytes;

use super::record::{JobRecord, SourceRecord};

/// Where a task's input comes from.
#[derive(Debug, Clone)]
pub(crate) enum Inputs {
    /// Every task gets the same bytes.
    Shared(Bytes),
    /// Task `i` gets line `i` of the buffer (ranges into it).
    Lines(Bytes, Vec<(u32, u32)>),
}

impl Inputs {
    /// The input of the task at `offset`.
    pub(crate) fn get(&self, offset: u64) -> Bytes {
        match self {
            Inputs::Shared(b) => b.clone(),
            Inputs::Lines(buf, ranges) => match ranges.get(offset as usize) {
                Some(&(a, b)) => buf.slice(a as usize..b as usize),
                None => Bytes::new(),
            },
        }
    }
}

/// The lines of `buf` as ranges (without their `\n`; a final newline ends
/// the last line rather than starting an empty one).
pub(crate) fn split_lines(buf: &[u8]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            out.push((start as u32, i as u32));
            start = i + 1;
        }
    }
    if start < buf.len() {
        out.push((start as u32, buf.len() as u32));
    }
    out
}

/// A started (or cancelled) task.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub state: JobTaskState,
    pub attempts: u32,
    pub exit_code: i32,
    pub worker: Rc<str>,
    pub message: Box<str>,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// A copy (not a slice of the frame it came in, which it would hold).
    pub output: Box<[u8]>,
    /// The distributor's id of its placement while it is placed or waits
    /// (0 when it is not in the core).
    pub core_task: u64,
}

impl Slot {
    pub(crate) fn new(state: JobTaskState) -> Slot {
        Slot {
            state,
            attempts: 0,
            exit_code: 0,
            worker: Rc::from(""),
            message: Box::from(""),
            started_ms: 0,
            ended_ms: 0,
            output: Box::default(),
            core_task: 0,
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        matches!(
            self.state,
            JobTaskState::Done | JobTaskState::Failed | JobTaskState::Cancelled
        )
    }
}

/// Slots per chunk of [`Slots`].
const CHUNK: usize = 4096;

/// The slots of a job's started tasks, by offset, in chunks of [`CHUNK`]:
/// growing never moves the slots made (a vector of millions would copy
/// them all at each doubling), and a job of a few tasks holds one chunk.
#[derive(Default)]
pub(crate) struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    /// `n` copies of `slot`.
    pub(crate) fn filled(n: usize, slot: Slot) -> Slots {
        let mut s = Slots::default();
        for _ in 0..n {
            s.push(slot.clone());
        }
        s
    }

    pub(crate) fn push(&mut self, slot: Slot) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(slot),
            _ => {
                let mut c = Vec::with_capacity(CHUNK.min(self.len.max(16) * 2));
                c.push(slot);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    pub(crate) fn get(&self, i: usize) -> Option<&Slot> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten()
    }
}

/// A job the distributor holds.
pub(crate) struct Job {
    pub num: u64,
    /// `SET/MEMBER/NUM`.
    pub id: Rc<str>,
    pub rec: JobRecord,
    pub inputs: Inputs,
    pub total: u64,
    /// The query its tasks are matched with, and why it could not be
    /// compiled (then every task fails with that).
    pub query: Result<Rc<Query>, String>,
    pub app: Rc<str>,
    /// Hash of the user name and of the job id: with the offset, a task's
    /// key at the workers.
    pub user_hash: u64,
    pub key_base: u64,
    /// The user's priority (from the user DB when it was accepted).
    pub user_priority: i32,
    /// Tasks at offsets below it have a slot.
    pub cursor: u64,
    pub slots: Slots,
    /// Slots of tasks cancelled before they started, past the cursor.
    pub ahead: BTreeMap<u64, Slot>,
    /// Offsets below the cursor to start again (their run was lost when
    /// the distributor stopped), first.
    pub again: VecDeque<u64>,
    pub counts: JobCounts,
    /// Every task not started yet is cancelled.
    pub cancelled: bool,
    /// Its creation is in the journal: its tasks may start.
    pub durable: bool,
    /// It is in the table's set of jobs with a task to start.
    pub ready: bool,
    pub finished_ms: u64,
}

impl Job {
    /// The task index of `offset` (the array index, or the line number).
    pub(crate) fn index(&self, offset: u64) -> u64 {
        match self.rec.source {
            SourceRecord::Array { first, .. } => first + offset,
            _ => offset,
        }
    }

    /// The offset of task index `index`, if the job has it.
    pub(crate) fn offset(&self, index: u64) -> Option<u64> {
        let off = match self.rec.source {
            SourceRecord::Array { first, .. } => index.checked_sub(first)?,
            _ => index,
        };
        (off < self.total).then_some(off)
    }

    /// Tasks not started yet (past the cursor, not cancelled ahead).
    pub(crate) fn unstarted(&self) -> u64 {
        if self.cancelled {
            return 0;
        }
        self.total - self.cursor - self.ahead.len() as u64
    }

    /// Whether a task may be started now.
    pub(crate) fn has_work(&self) -> bool {
        self.durable && (!self.again.is_empty() || self.unstarted() > 0)
    }

    /// Whether every task has ended.
    pub(crate) fn is_finished(&self) -> bool {
        let c = &self.counts;
        c.queued == 0 && c.waiting == 0 && c.running == 0
    }

    /// The slot of the task at `offset`, if it has one.
    pub(crate) fn slot(&self, offset: u64) -> Option<&Slot> {
        if offset < self.cursor {
            self.slots.get(offset as usize)
        } else {
            self.ahead.get(&offset)
        }
    }

    pub(crate) fn slot_mut(&mut self, offset: u64) -> Option<&mut Slot> {
        if offset < self.cursor {
            self.slots.get_mut(offset as usize)
        } else {
            self.ahead.get_mut(&offset)
        }
    }

    /// Takes the next task to start: one to start again first, else the
    /// next offset past the cursor (skipping tasks cancelled ahead). Its
    /// slot is made, in state `Waiting`; the counts move.
    pub(crate) fn take_next(&mut self) -> Option<u64> {
        if let Some(off) = self.again.pop_front() {
            if let Some(s) = self.slots.get_mut(off as usize) {
                s.state = JobTaskState::Waiting;
                self.counts.queued -= 1;
                self.counts.waiting += 1;
                return Some(off);
            }
        }
        if self.cancelled {
            return None;
        }
        while self.cursor < self.total {
            let off = self.cursor;
            self.cursor += 1;
            match self.ahead.remove(&off) {
                Some(slot) => self.slots.push(slot),
                None => {
                    self.slots.push(Slot::new(JobTaskState::Waiting));
                    self.counts.queued -= 1;
                    self.counts.waiting += 1;
                    return Some(off);
                }
            }
        }
        None
    }

    /// Moves the count of one task from state `from` to `to`.
    pub(crate) fn count_move(&mut self, from: JobTaskState, to: JobTaskState) {
        *count_of(&mut self.counts, from) -= 1;
        *count_of(&mut self.counts, to) += 1;
    }
}

fn count_of(c: &mut JobCounts, s: JobTaskState) -> &mut u64 {
    match s {
        JobTaskState::Queued => &mut c.queued,
        JobTaskState::Waiting => &mut c.waiting,
        JobTaskState::Running => &mut c.running,
        JobTaskState::Done => &mut c.done,
        JobTaskState::Failed => &mut c.failed,
        JobTaskState::Cancelled => &mut c.cancelled,
    }
}

/// A 64-bit mix (splitmix64's finaliser): task keys of one job differ in
/// every bit.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::split_lines;

    /// Lines are split on `\n`, a final newline ends the last line, empty
    /// lines in between are tasks of their own.
    #[test]
    fn lines_split_like_a_shell_reads_them() {
        assert_eq!(split_lines(b""), vec![]);
        assert_eq!(split_lines(b"a\nbc\n"), vec![(0, 1), (2, 4)]);
        assert_eq!(split_lines(b"a\n\nb"), vec![(0, 1), (2, 2), (3, 4)]);
    }
}
