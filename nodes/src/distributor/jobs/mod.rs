//! Jobs: tasks the distributor remembers for clients that have gone.
//!
//! A client sends a [`JobSubmit`](allot_wire::JobSubmit) and the
//! distributor answers with the job's id once its creation is in the
//! journal. From then on the job is the distributor's: it starts the job's
//! tasks as capacity allows (jobs of higher user priority first, then of
//! higher task priority, then older jobs), keeps every task's state and
//! output, and answers [`JobQuery`](allot_wire::JobQuery)s about it from
//! any client until the job is removed or its retention passes.
//!
//! # Cost
//!
//! A job is a range: a task that has not started has no record at all
//! (the [`job::Job`] cursor says where the started ones end), so an array
//! of a million tasks is accepted as one record. A started task has a
//! slot (about a hundred bytes and its output) for as long as the job is
//! kept. At most [`JOB_WINDOW`] tasks of all jobs are in the core at once
//! (placed on a worker or waiting for one); a job with a task waiting for
//! capacity starts no other until that one is placed.
//!
//! # Durability
//!
//! Every change worth keeping becomes a [`JournalOp`]; the shell takes
//! them in batches ([`Jobs::poll_journal`]) and writes each batch in one
//! durable transaction while the next batch gathers (group commit), then
//! reports it done ([`Jobs::committed`]). A job is acknowledged, and its
//! tasks start, only once its creation is committed. What is journaled:
//! creation, how far each job's cursor went, each placement of a task
//! after its first, each task's end (with its output), cancellation and
//! removal. After a restart, a task below the
//! cursor with no end was running when the distributor stopped: it is run
//! again with its attempt number raised, first asking the workers whether
//! one of them ran it already (its key is the same), so a result that
//! arrived but was not yet journaled is taken, not run twice.
//!
//! # Bounds, and what happens at each
//! * jobs held: [`MAX_JOBS`]; a submit beyond it is refused with the reason;
//! * tasks per job: [`MAX_TASKS_PER_JOB`]; a larger job is refused;
//! * output kept per task: [`MAX_OUTPUT_PER_TASK`] bytes; the rest is
//!   dropped and the task's message says how much;
//! * output kept in all: [`MAX_OUTPUT_TOTAL`] bytes; past it outputs are not
//!   kept and the task's message says so;
//! * journal: [`MAX_JOURNAL_BYTES`] written and not yet removed; past it new
//!   jobs are refused until finished jobs are removed;
//! * changes not yet written: [`MAX_JOURNAL_BACKLOG`]; past it no job task
//!   starts until the shell catches up (tasks running still end);
//! * rows per reply: [`MAX_ROWS_PER_REPLY`] and [`MAX_OUTPUT_PER_REPLY`]
//!   bytes of output; the reply says where to go on.

mod job;
pub mod record;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_engine::{LabelValue, Query};
use allot_wire::message::{ArchivedJobQuery, ArchivedJobSubmit, ArchivedJobTasks};
use allot_wire::{JobCounts, JobOp, JobReply, JobSummary, JobTaskRow, JobTaskState, TaskStatus};
use bytes::Bytes;

pub(crate) use self::job::mix;
use self::job::{split_lines, Inputs, Job, Slot, Slots};
use self::record::{
    AttrValueRecord, JobRecord, JournalOp, Replay, SourceRecord, TaskRecord, TaskStateRecord,
};

/// Jobs held at most (running or finished and kept).
pub const MAX_JOBS: usize = 10_000;
/// Tasks in one job at most.
pub const MAX_TASKS_PER_JOB: u64 = 10_000_000;
/// Output bytes kept per task.
pub const MAX_OUTPUT_PER_TASK: usize = 64 << 10;
/// Output bytes kept over all jobs.
pub const MAX_OUTPUT_TOTAL: u64 = 1 << 30;
/// Journal bytes (written, not yet removed) at most.
pub const MAX_JOURNAL_BYTES: u64 = 8 << 30;
/// Journal changes gathered and not yet written at most.
pub const MAX_JOURNAL_BACKLOG: usize = 1 << 20;
/// Tasks of all jobs in the core (placed or waiting) at most.
pub const JOB_WINDOW: usize = 4096;
/// Task rows in one reply at most.
pub const MAX_ROWS_PER_REPLY: u32 = 10_000;
/// Output bytes in one reply at most (a single larger output still goes).
pub const MAX_OUTPUT_PER_REPLY: usize = 4 << 20;
/// How long a finished job is kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A job id's parts: `SET/MEMBER/NUM`.
pub fn parse_job_id(id: &str) -> Option<(&str, &str, u64)> {
    let (rest, num) = id.rsplit_once('/')?;
    let (set, member) = rest.split_once('/')?;
    if set.is_empty() || member.is_empty() {
        return None;
    }
    Some((set, member, num.parse().ok()?))
}

/// Least time between two batches that create no job. Task starts and
/// ends wait up to this long to be written, so that a stream of them costs
/// at most 200 commits (each an `fdatasync`) a second rather than one per
/// task when the disk is fast; what was not written yet when the node
/// dies runs again after its restart, as for a batch in flight. A batch
/// that creates a job goes at once: its client waits for the ack.
pub const COMMIT_SPACING: Duration = Duration::from_millis(5);

/// A batch of journal changes for the shell to write in one transaction.
#[derive(Debug)]
pub struct JournalBatch {
    /// Hand it back to [`crate::distributor::Core::journal_committed`].
    pub seq: u64,
    /// The changes, in order.
    pub ops: Vec<JournalOp>,
}

/// A job task the core is to place.
pub(crate) struct Start {
    pub num: u64,
    pub offset: u64,
    pub index: u64,
    pub id: Rc<str>,
    /// Runs before this one (after a restart, the lost ones count).
    pub attempts: u32,
    /// It may have run already: ask the workers first.
    pub locate: bool,
    pub query: Result<Rc<Query>, String>,
    pub app: Rc<str>,
    pub payload: Bytes,
    pub demands: allot_wire::Demands,
    pub deadline_ms: u64,
    pub key: (u64, u64),
    pub priority: (i32, i32),
}

/// How a job task ended, for [`Jobs::ended`].
pub(crate) struct Ending<'a> {
    pub status: TaskStatus,
    pub attempts: u32,
    pub exit_code: i32,
    pub worker: &'a str,
    pub message: &'a str,
    pub output: &'a Bytes,
}

/// The jobs of one distributor. See the module docs.
pub(crate) struct Jobs {
    set: String,
    member: String,
    jobs: BTreeMap<u64, Job>,
    /// Jobs with a task to start and none waiting: by user priority, task
    /// priority, then age (number), highest first.
    ready: BTreeSet<(Reverse<i32>, Reverse<i32>, u64)>,
    next_num: u64,
    ops: Vec<JournalOp>,
    /// Jobs whose cursor moved since the last batch.
    moved: BTreeSet<u64>,
    /// The batch the shell is writing, and the jobs created in it.
    writing: Option<(u64, Vec<u64>)>,
    /// Jobs created since the last batch was taken.
    created: Vec<u64>,
    /// When the last batch was taken (see [`COMMIT_SPACING`]).
    last_batch: Option<Instant>,
    next_seq: u64,
    /// Job tasks in the core.
    pub active: usize,
    output_total: u64,
    journal_bytes: u64,
    /// Why the journal cannot be written (no new job is taken then).
    broken: Option<String>,
    retention: Duration,
    /// The wall clock at one instant: `now` in ms since the epoch is
    /// `wall.1 + (now - wall.0)`.
    wall: (Instant, u64),
}

impl Jobs {
    pub(crate) fn new(set: &str, member: &str, retention: Duration, now: Instant) -> Jobs {
        Jobs {
            set: set.to_owned(),
            member: member.to_owned(),
            jobs: BTreeMap::new(),
            ready: BTreeSet::new(),
            next_num: 1,
            ops: Vec::new(),
            moved: BTreeSet::new(),
            writing: None,
            created: Vec::new(),
            last_batch: None,
            next_seq: 1,
            active: 0,
            output_total: 0,
            journal_bytes: 0,
            broken: None,
            retention,
            wall: (now, 0),
        }
    }

    /// The wall clock reads `unix_ms` at `now`.
    pub(crate) fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = (now, unix_ms);
    }

    fn ms(&self, now: Instant) -> u64 {
        self.wall.1 + now.saturating_duration_since(self.wall.0).as_millis() as u64
    }

    fn id_of(&self, num: u64) -> String {
        format!("{}/{}/{num}", self.set, self.member)
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether any job task may start now.
    pub(crate) fn can_start(&self) -> bool {
        self.active < JOB_WINDOW && self.ops.len() < MAX_JOURNAL_BACKLOG && !self.ready.is_empty()
    }

    fn key_of(job: &Job) -> (Reverse<i32>, Reverse<i32>, u64) {
        (
            Reverse(job.user_priority),
            Reverse(job.rec.priority),
            job.num,
        )
    }

    /// Puts `num` in the ready set or takes it out, as its state says.
    fn refresh(&mut self, num: u64) {
        let Some(job) = self.jobs.get_mut(&num) else {
            return;
        };
        let ready = job.has_work() && job.counts.waiting == 0;
        // Most calls change nothing (a task placed, another started): the
        // set is touched only when the job goes in or out.
        if ready == job.ready {
            return;
        }
        job.ready = ready;
        let k = Self::key_of(job);
        if ready {
            self.ready.insert(k);
        } else {
            self.ready.remove(&k);
        }
    }

    /// Takes a job from a submit: checks it, keeps it (not yet durable) and
    /// journals its creation. Returns its number and task count, or why
    /// it is refused. `compile` compiles its query.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        s: &ArchivedJobSubmit,
        payload: &Bytes,
        user: &str,
        user_priority: i32,
        client_attrs: &[(String, LabelValue)],
        compile: impl FnOnce() -> Result<(Rc<Query>, Rc<str>), String>,
    ) -> Result<(u64, u64), String> {
        if let Some(why) = &self.broken {
            return Err(format!("the job journal cannot be written: {why}"));
        }
        if self.jobs.len() >= MAX_JOBS {
            return Err(format!(
                "this distributor holds {MAX_JOBS} jobs (its limit); remove finished ones with `allot jobs --remove`"
            ));
        }
        if self.journal_bytes >= MAX_JOURNAL_BYTES {
            return Err(format!(
                "the job journal holds {} bytes (its limit is {MAX_JOURNAL_BYTES}); remove finished jobs with `allot jobs --remove`",
                self.journal_bytes
            ));
        }
        let (source, total, inputs) = match &s.tasks {
            ArchivedJobTasks::One => (SourceRecord::One, 1, Inputs::Shared(payload.clone())),
            ArchivedJobTasks::Array(r) => {
                let (first, last) = (r.first.to_native(), r.last.to_native());
                if last < first {
                    return Err(format!(
                        "array range {first}-{last} is reversed: the first index must not exceed the last"
                    ));
                }
                let n = (last - first).saturating_add(1);
                (
                    SourceRecord::Array { first, last },
                    n,
                    Inputs::Shared(payload.clone()),
                )
            }
            ArchivedJobTasks::Lines => {
                let lines = split_lines(payload);
                let n = lines.len() as u64;
                (
                    SourceRecord::Lines,
                    n,
                    Inputs::Lines(payload.clone(), lines),
                )
            }
        };
        if total == 0 {
            return Err("the job has no tasks (the file has no lines)".into());
        }
        if total > MAX_TASKS_PER_JOB {
            return Err(format!(
                "the job has {total} tasks; a job may have at most {MAX_TASKS_PER_JOB}"
            ));
        }
        let (query, app) = match compile() {
            Ok((q, a)) => (Ok(q), a),
            Err(e) => return Err(format!("bad expression: {e}")),
        };
        let num = self.next_num;
        self.next_num += 1;
        let rec = JobRecord {
            app: s.app.as_str().to_owned(),
            require: s.require.as_str().to_owned(),
            prefer: s.prefer.as_str().to_owned(),
            user: user.to_owned(),
            cores: s.demands.cores.to_native(),
            mem: s.demands.mem.to_native(),
            slots: s.demands.slots.to_native(),
            priority: s.priority.to_native(),
            deadline_ms: s.deadline_ms.to_native(),
            source,
            payload: payload.to_vec(),
            client_attrs: client_attrs
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        LabelValue::Str(s) => AttrValueRecord::Str(s.clone()),
                        LabelValue::Num(n) => AttrValueRecord::Num(*n),
                    };
                    (k.clone(), v)
                })
                .collect(),
            submitted_ms: self.ms(now),
        };
        self.journal_bytes += rec.payload.len() as u64 + 256;
        self.ops.push(JournalOp::Created {
            num,
            rec: Box::new(rec.clone()),
        });
        let job = self.make_job(num, rec, total, inputs, query, app, user_priority);
        self.jobs.insert(num, job);
        self.created.push(num);
        Ok((num, total))
    }

    #[allow(clippy::too_many_arguments)]
    fn make_job(
        &self,
        num: u64,
        rec: JobRecord,
        total: u64,
        inputs: Inputs,
        query: Result<Rc<Query>, String>,
        app: Rc<str>,
        user_priority: i32,
    ) -> Job {
        let id: Rc<str> = Rc::from(self.id_of(num));
        Job {
            num,
            user_hash: crate::resubmit::name_hash(&rec.user),
            key_base: crate::resubmit::name_hash(&id),
            id,
            inputs,
            total,
            query,
            app,
            user_priority,
            cursor: 0,
            slots: Slots::default(),
            ahead: BTreeMap::new(),
            again: VecDeque::new(),
            counts: JobCounts {
                queued: total,
                ..JobCounts::default()
            },
            cancelled: false,
            durable: false,
            ready: false,
            finished_ms: 0,
            rec,
        }
    }

    /// Rebuilds the jobs from the journal after a start. `compile` gives
    /// each job's query (from its record), `priority` the user's priority.
    pub(crate) fn restore(
        &mut self,
        now: Instant,
        replay: Replay,
        mut compile: impl FnMut(&JobRecord) -> Result<(Rc<Query>, Rc<str>), String>,
        mut priority: impl FnMut(&str) -> i32,
    ) {
        self.next_num = replay.next_num.max(1);
        let now_ms = self.ms(now);
        for r in replay.jobs {
            self.journal_bytes += r.rec.payload.len() as u64 + 256;
            let total = match r.rec.source {
                SourceRecord::One => 1,
                SourceRecord::Array { first, last } => last.saturating_sub(first) + 1,
                SourceRecord::Lines => split_lines(&r.rec.payload).len() as u64,
            };
            let inputs = match r.rec.source {
                SourceRecord::Lines => {
                    let buf = Bytes::from(r.rec.payload.clone());
                    let lines = split_lines(&buf);
                    Inputs::Lines(buf, lines)
                }
                _ => Inputs::Shared(Bytes::from(r.rec.payload.clone())),
            };
            let (query, app) = match compile(&r.rec) {
                Ok((q, a)) => (Ok(q), a),
                Err(e) => (Err(e), Rc::from(r.rec.app.as_str())),
            };
            let up = priority(&r.rec.user);
            let mut job = self.make_job(r.num, r.rec, total, inputs, query, app, up);
            job.durable = true;
            job.cursor = r.cursor.min(total);
            job.slots = Slots::filled(job.cursor as usize, Slot::new(JobTaskState::Queued));
            job.counts.queued = total;
            let mut ended: BTreeMap<u64, TaskRecord> = r.tasks.into_iter().collect();
            for off in 0..job.cursor {
                let Some(slot) = job.slots.get_mut(off as usize) else {
                    break;
                };
                match ended.remove(&off) {
                    Some(t) => {
                        restore_slot(slot, &t);
                        if slot.is_final() {
                            self.output_total += slot.output.len() as u64;
                            self.journal_bytes += slot.output.len() as u64 + 64;
                            job.counts.queued -= 1;
                            bump(&mut job.counts, slot.state);
                        } else {
                            job.again.push_back(off);
                        }
                    }
                    // It had started and never ended: it runs again, and
                    // the run that was lost counts as an attempt.
                    None => {
                        slot.attempts = 1;
                        job.again.push_back(off);
                    }
                }
            }
            for (off, t) in ended {
                if off >= total {
                    continue;
                }
                let mut slot = Slot::new(JobTaskState::Cancelled);
                restore_slot(&mut slot, &t);
                if slot.is_final() {
                    job.counts.queued -= 1;
                    bump(&mut job.counts, slot.state);
                    job.ahead.insert(off, slot);
                }
            }
            if r.cancelled {
                job.cancelled = true;
                let n = job.unstarted_raw();
                job.counts.queued -= n;
                job.counts.cancelled += n;
            }
            if job.is_finished() {
                // When its last task ended, so that a restart does not
                // restart its retention; a job cancelled as a whole has no
                // record of that moment, and keeps it from now.
                let last_end = job
                    .slots
                    .iter()
                    .chain(job.ahead.values())
                    .map(|s| s.ended_ms)
                    .max();
                job.finished_ms = match last_end {
                    Some(ms) if ms > 0 && !job.cancelled => ms,
                    _ => now_ms,
                };
            }
            let num = job.num;
            self.jobs.insert(num, job);
            self.refresh(num);
        }
    }

    /// The next task to start (see the module docs for the order), with
    /// its slot made; `None` if no job has one or the window is full.
    pub(crate) fn start_next(&mut self, now: Instant) -> Option<Start> {
        if !self.can_start() {
            return None;
        }
        let now_ms = self.ms(now);
        loop {
            let &(_, _, num) = self.ready.first()?;
            let job = self.jobs.get_mut(&num)?;
            let Some(offset) = job.take_next() else {
                self.refresh(num);
                continue;
            };
            let Some(slot) = job.slots.get_mut(offset as usize) else {
                continue;
            };
            slot.started_ms = now_ms;
            let attempts = slot.attempts;
            let locate = attempts > 0;
            self.moved.insert(num);
            self.active += 1;
            let index = job.index(offset);
            let start = Start {
                num,
                offset,
                index,
                id: job.id.clone(),
                attempts,
                locate,
                query: job.query.clone(),
                app: job.app.clone(),
                payload: job.inputs.get(offset),
                demands: allot_wire::Demands {
                    cores: job.rec.cores,
                    mem: job.rec.mem,
                    slots: job.rec.slots,
                },
                deadline_ms: job.rec.deadline_ms,
                key: (job.user_hash, mix(job.key_base ^ offset)),
                priority: (job.user_priority, job.rec.priority),
            };
            self.refresh(num);
            return Some(start);
        }
    }

    /// The core holds the task as `core_task`, placed on `worker` (or, with
    /// `None`, waiting for capacity).
    /// `worker` is the worker's name and the task's attempt number (its
    /// runs, this one included: a placement a worker refused as busy did
    /// not run and is not counted).
    pub(crate) fn placed(
        &mut self,
        num: u64,
        offset: u64,
        core_task: u64,
        worker: Option<(&str, u32)>,
    ) {
        let Some(job) = self.jobs.get_mut(&num) else {
            return;
        };
        let Some(slot) = job.slot_mut(offset) else {
            return;
        };
        let from = slot.state;
        slot.core_task = core_task;
        let to = match worker {
            Some((w, attempt)) => {
                if &*slot.worker != w {
                    slot.worker = Rc::from(w);
                }
                if attempt > 1 && attempt > slot.attempts {
                    // A run after others (lost with a worker or in a
                    // restart): journaled with the runs before it, so that
                    // a restart counts them. Journaled when placed, not
                    // when started: a task that only waited for capacity
                    // did not run.
                    slot.attempts = attempt - 1;
                    let rec = task_record(slot, TaskStateRecord::Started);
                    self.ops.push(JournalOp::Task {
                        num,
                        offset,
                        rec: Box::new(rec),
                    });
                }
                slot.attempts = attempt;
                JobTaskState::Running
            }
            None => JobTaskState::Waiting,
        };
        slot.state = to;
        if from != to {
            job.count_move(from, to);
            self.refresh(num);
        }
    }

    /// A job task left the core: it ended as `e` says.
    pub(crate) fn ended(&mut self, now: Instant, num: u64, offset: u64, e: Ending<'_>) {
        let now_ms = self.ms(now);
        let Some(job) = self.jobs.get_mut(&num) else {
            return;
        };
        let Some(slot) = job.slot_mut(offset) else {
            return;
        };
        if slot.is_final() {
            return;
        }
        self.active = self.active.saturating_sub(1);
        let from = slot.state;
        let to = match e.status {
            TaskStatus::Ok => JobTaskState::Done,
            TaskStatus::Cancelled => JobTaskState::Cancelled,
            _ => JobTaskState::Failed,
        };
        slot.state = to;
        slot.core_task = 0;
        slot.attempts = slot.attempts.max(e.attempts);
        slot.exit_code = e.exit_code;
        if !e.worker.is_empty() && &*slot.worker != e.worker {
            slot.worker = Rc::from(e.worker);
        }
        slot.ended_ms = now_ms;
        let mut message = e.message.to_owned();
        let room = MAX_OUTPUT_TOTAL.saturating_sub(self.output_total) as usize;
        let keep = e.output.len().min(MAX_OUTPUT_PER_TASK).min(room);
        if keep < e.output.len() {
            if !message.is_empty() {
                message.push_str("; ");
            }
            if keep < e.output.len().min(MAX_OUTPUT_PER_TASK) {
                message.push_str(&format!(
                    "output not kept: the distributor keeps {MAX_OUTPUT_TOTAL} bytes of output in all and that is reached ({} bytes dropped)",
                    e.output.len() - keep
                ));
            } else {
                message.push_str(&format!(
                    "output truncated: {keep} of {} bytes kept (the limit per task)",
                    e.output.len()
                ));
            }
        }
        // A copy, so that the frame the output arrived in is not held.
        slot.output = e.output[..keep].into();
        slot.message = message.into_boxed_str();
        self.output_total += keep as u64;
        self.journal_bytes += keep as u64 + 64;
        let state = match to {
            JobTaskState::Done => TaskStateRecord::Done,
            JobTaskState::Cancelled => TaskStateRecord::Cancelled,
            _ => TaskStateRecord::Failed,
        };
        let rec = task_record(slot, state);
        job.count_move(from, to);
        if job.is_finished() {
            job.finished_ms = now_ms;
        }
        self.ops.push(JournalOp::Task {
            num,
            offset,
            rec: Box::new(rec),
        });
        self.refresh(num);
    }

    /// Removes finished jobs past their retention.
    pub(crate) fn expire(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        let keep = self.retention.as_millis() as u64;
        let old: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.is_finished() && j.finished_ms.saturating_add(keep) <= now_ms)
            .map(|j| j.num)
            .collect();
        for num in old {
            tracing::info!(job = num, "finished job removed after its retention");
            self.remove(num);
        }
    }

    fn remove(&mut self, num: u64) {
        if let Some(job) = self.jobs.remove(&num) {
            self.ready.remove(&Self::key_of(&job));
            let out: u64 = job.slots.iter().map(|s| s.output.len() as u64).sum();
            self.output_total = self.output_total.saturating_sub(out);
            // What `ended` and `accept` counted for it: every task that
            // ended (done, failed or cancelled one by one) and the record.
            let ended = job
                .slots
                .iter()
                .chain(job.ahead.values())
                .filter(|s| s.is_final())
                .count() as u64;
            let written = job.rec.payload.len() as u64 + 256 + out + 64 * ended;
            self.journal_bytes = self.journal_bytes.saturating_sub(written);
            self.ops.push(JournalOp::Removed { num });
        }
    }

    /// The next batch of changes to write, as of `now`, if there is one,
    /// none is being written, and it creates a job or [`COMMIT_SPACING`]
    /// has passed since the last one.
    pub(crate) fn poll_journal(&mut self, now: Instant) -> Option<JournalBatch> {
        if self.writing.is_some() || (self.ops.is_empty() && self.moved.is_empty()) {
            return None;
        }
        if self.created.is_empty() && self.last_batch.is_some_and(|t| now < t + COMMIT_SPACING) {
            return None;
        }
        self.last_batch = Some(now);
        let mut ops = std::mem::take(&mut self.ops);
        for num in std::mem::take(&mut self.moved) {
            if let Some(job) = self.jobs.get(&num) {
                ops.push(JournalOp::Cursor {
                    num,
                    cursor: job.cursor,
                });
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.writing = Some((seq, std::mem::take(&mut self.created)));
        Some(JournalBatch { seq, ops })
    }

    /// When a batch held back by [`COMMIT_SPACING`] may be taken, if one
    /// is.
    pub(crate) fn next_batch_at(&self) -> Option<Instant> {
        if self.writing.is_some() || (self.ops.is_empty() && self.moved.is_empty()) {
            return None;
        }
        self.last_batch.map(|t| t + COMMIT_SPACING)
    }

    /// The shell wrote batch `seq` (`Err`: it could not). Returns the jobs
    /// it created, now durable (or dropped, on an error).
    pub(crate) fn committed(&mut self, seq: u64, result: Result<(), String>) -> Vec<u64> {
        let created = match self.writing.take() {
            Some((s, created)) if s == seq => created,
            other => {
                self.writing = other;
                return Vec::new();
            }
        };
        match result {
            Ok(()) => {
                for &num in &created {
                    if let Some(job) = self.jobs.get_mut(&num) {
                        job.durable = true;
                    }
                    self.refresh(num);
                }
            }
            Err(e) => {
                tracing::error!("job journal write failed, no new jobs are taken: {e}");
                self.broken = Some(e);
                for &num in &created {
                    self.jobs.remove(&num);
                }
            }
        }
        created
    }

    /// The ack for job `num` once it is durable: its id and task count.
    pub(crate) fn ack_of(&self, num: u64) -> Option<(String, u64)> {
        self.jobs.get(&num).map(|j| (j.id.to_string(), j.total))
    }

    fn find(&self, id: &str) -> Result<u64, String> {
        let Some((set, member, num)) = parse_job_id(id) else {
            return Err(format!("`{id}` is not a job id (SET/MEMBER/NUMBER)"));
        };
        if set != self.set || member != self.member {
            return Err(format!(
                "job {id} is held by distributor {member} of set {set}, not by {} of set {}",
                self.member, self.set
            ));
        }
        if self.jobs.get(&num).is_some_and(|j| j.durable) {
            Ok(num)
        } else {
            Err(format!(
                "no job {id} on distributor {} (unknown, or removed)",
                self.member
            ))
        }
    }

    fn summary(job: &Job) -> JobSummary {
        JobSummary {
            job: job.id.to_string(),
            user: job.rec.user.clone(),
            app: job.rec.app.clone(),
            tasks: job.total,
            counts: job.counts,
            submitted_ms: job.rec.submitted_ms,
            finished_ms: if job.is_finished() {
                job.finished_ms
            } else {
                0
            },
        }
    }

    /// Answers a query. Returns the reply and the core's ids of the tasks
    /// to stop (for `Cancel`: the core ends them as cancelled).
    pub(crate) fn query(
        &mut self,
        now: Instant,
        q: &ArchivedJobQuery,
        why_waiting: impl Fn(&Query) -> String,
    ) -> (JobReply, Vec<u64>) {
        let mut reply = JobReply {
            request: q.request.to_native(),
            error: String::new(),
            jobs: Vec::new(),
            tasks: Vec::new(),
            next: None,
            cancelled: 0,
        };
        let op = match q.op {
            allot_wire::message::ArchivedJobOp::List => JobOp::List,
            allot_wire::message::ArchivedJobOp::Tasks => JobOp::Tasks,
            allot_wire::message::ArchivedJobOp::Outputs => JobOp::Outputs,
            allot_wire::message::ArchivedJobOp::Cancel => JobOp::Cancel,
            allot_wire::message::ArchivedJobOp::Remove => JobOp::Remove,
        };
        if op == JobOp::List && q.job.is_empty() {
            reply.jobs = self
                .jobs
                .values()
                .filter(|j| j.durable)
                .map(Self::summary)
                .collect();
            return (reply, Vec::new());
        }
        let num = match self.find(q.job.as_str()) {
            Ok(n) => n,
            Err(e) => {
                reply.error = e;
                return (reply, Vec::new());
            }
        };
        let task = q.task.as_ref().map(|t| t.to_native());
        let mut stop = Vec::new();
        match op {
            JobOp::List => {}
            JobOp::Tasks | JobOp::Outputs => {
                let state = q.state.as_ref().map(|s| state_of(*s));
                self.rows(
                    num,
                    task,
                    state,
                    q.from.to_native(),
                    q.limit.to_native(),
                    op == JobOp::Outputs,
                    &why_waiting,
                    &mut reply,
                );
            }
            JobOp::Cancel => match self.cancel(now, num, task, &mut stop) {
                Ok(n) => reply.cancelled = n + stop.len() as u64,
                Err(e) => reply.error = e,
            },
            JobOp::Remove => {
                let job = &self.jobs[&num];
                if !job.is_finished() {
                    reply.error = format!(
                        "job {} has tasks to run ({} queued, {} waiting, {} running); cancel it first with `allot cancel {}`",
                        job.id, job.counts.queued, job.counts.waiting, job.counts.running, job.id
                    );
                } else {
                    reply.jobs.push(Self::summary(job));
                    self.remove(num);
                    return (reply, stop);
                }
            }
        }
        if let Some(job) = self.jobs.get(&num) {
            reply.jobs.push(Self::summary(job));
        }
        (reply, stop)
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        num: u64,
        task: Option<u64>,
        state: Option<JobTaskState>,
        from: u64,
        limit: u32,
        outputs: bool,
        why_waiting: &impl Fn(&Query) -> String,
        reply: &mut JobReply,
    ) {
        let job = &self.jobs[&num];
        let (start, end) = match task {
            Some(index) => match job.offset(index) {
                Some(off) => (off, off + 1),
                None => {
                    reply.error = format!("job {} has no task {index}", job.id);
                    return;
                }
            },
            None => (from, job.total),
        };
        let limit = limit.clamp(1, MAX_ROWS_PER_REPLY) as usize;
        let mut bytes = 0usize;
        let mut why: Option<String> = None;
        let mut off = start;
        while off < end {
            if reply.tasks.len() >= limit
                || (bytes >= MAX_OUTPUT_PER_REPLY && !reply.tasks.is_empty())
            {
                reply.next = Some(off);
                return;
            }
            // Past the cursor, a run of tasks with no slot are all queued
            // (or cancelled): skip them at once when they are filtered out.
            let queued_state = if job.cancelled {
                JobTaskState::Cancelled
            } else {
                JobTaskState::Queued
            };
            let slot = job.slot(off);
            let st = slot.map_or(queued_state, |s| s.state);
            if state.is_some_and(|want| want != st) {
                if slot.is_none() {
                    let next_ahead = job.ahead.range(off..).next().map_or(end, |(&k, _)| k);
                    off = next_ahead.max(off + 1).min(end).max(off + 1);
                    if off > end {
                        break;
                    }
                    continue;
                }
                off += 1;
                continue;
            }
            let mut row = JobTaskRow {
                index: job.index(off),
                state: st,
                worker: String::new(),
                attempts: 0,
                exit_code: 0,
                message: String::new(),
                started_ms: 0,
                ended_ms: 0,
                output: Vec::new(),
            };
            if let Some(s) = slot {
                row.worker = s.worker.to_string();
                row.attempts = s.attempts;
                row.exit_code = s.exit_code;
                row.message = s.message.to_string();
                row.started_ms = s.started_ms;
                row.ended_ms = s.ended_ms;
                if outputs {
                    bytes += s.output.len();
                    row.output = s.output.to_vec();
                }
            }
            if matches!(st, JobTaskState::Waiting | JobTaskState::Queued) {
                let w = why.get_or_insert_with(|| match &job.query {
                    Ok(q) => why_waiting(q),
                    Err(e) => e.clone(),
                });
                if st == JobTaskState::Waiting || job.counts.waiting > 0 {
                    row.message = w.clone();
                }
            }
            reply.tasks.push(row);
            off += 1;
        }
    }

    /// Cancels job `num` (or its task `index`): tasks not started are
    /// cancelled here; the core's ids of started ones go to `stop`.
    fn cancel(
        &mut self,
        now: Instant,
        num: u64,
        index: Option<u64>,
        stop: &mut Vec<u64>,
    ) -> Result<u64, String> {
        let now_ms = self.ms(now);
        let job = self.jobs.get_mut(&num).ok_or("no such job")?;
        let mut n = 0;
        let offsets: Vec<u64> = match index {
            Some(i) => vec![job
                .offset(i)
                .ok_or_else(|| format!("job {} has no task {i}", job.id))?],
            None => {
                if job.is_finished() {
                    return Err(format!("job {} has finished: nothing to cancel", job.id));
                }
                // Every task not started: one journal record for all.
                if !job.cancelled {
                    let unstarted = job.unstarted();
                    job.cancelled = true;
                    job.counts.queued -= unstarted;
                    job.counts.cancelled += unstarted;
                    n += unstarted;
                    self.ops.push(JournalOp::Cancelled { num });
                }
                let again: Vec<u64> = job.again.drain(..).collect();
                let mut live: Vec<u64> = job
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.core_task != 0)
                    .map(|(i, _)| i as u64)
                    .collect();
                live.extend(again);
                live
            }
        };
        for off in offsets {
            let in_again = job.again.iter().position(|&o| o == off);
            let seen = job.slot(off).map(|s| (s.is_final(), s.core_task, s.state));
            match seen {
                Some((true, _, state)) => {
                    if index.is_some() {
                        return Err(format!(
                            "task {} of job {} has ended ({state:?}): nothing to cancel",
                            job.index(off),
                            job.id,
                        ));
                    }
                }
                Some((false, core_task, _)) if core_task != 0 => stop.push(core_task),
                Some((false, _, from)) => {
                    // Queued to start again after a restart.
                    if let Some(s) = job.slot_mut(off) {
                        s.state = JobTaskState::Cancelled;
                        s.message = Box::from("cancelled");
                        s.ended_ms = now_ms;
                        let rec = task_record(s, TaskStateRecord::Cancelled);
                        self.ops.push(JournalOp::Task {
                            num,
                            offset: off,
                            rec: Box::new(rec),
                        });
                    }
                    job.count_move(from, JobTaskState::Cancelled);
                    if let Some(i) = in_again {
                        job.again.remove(i);
                    }
                    n += 1;
                }
                None if job.cancelled => {}
                None => {
                    let mut s = Slot::new(JobTaskState::Cancelled);
                    s.message = Box::from("cancelled before it started");
                    s.ended_ms = now_ms;
                    let rec = task_record(&s, TaskStateRecord::Cancelled);
                    job.ahead.insert(off, s);
                    job.count_move(JobTaskState::Queued, JobTaskState::Cancelled);
                    self.ops.push(JournalOp::Task {
                        num,
                        offset: off,
                        rec: Box::new(rec),
                    });
                    n += 1;
                }
            }
        }
        if job.is_finished() && job.finished_ms == 0 {
            job.finished_ms = now_ms;
        }
        self.refresh(num);
        Ok(n)
    }

    /// The summary of the job named `id`, if this distributor holds it.
    pub(crate) fn summary_of(&self, id: &str) -> Option<JobSummary> {
        let num = self.find(id).ok()?;
        self.jobs.get(&num).map(Self::summary)
    }

    /// (jobs held and acknowledged, the newest `max` of them).
    pub(crate) fn newest(&self, max: usize) -> (usize, Vec<JobSummary>) {
        let durable = self.jobs.values().filter(|j| j.durable);
        let total = durable.clone().count();
        let newest = durable.rev().take(max).map(Self::summary).collect();
        (total, newest)
    }

    /// Tasks of all jobs not started yet.
    pub(crate) fn queued(&self) -> u64 {
        self.jobs.values().map(|j| j.counts.queued).sum()
    }

    /// Counts over all jobs (for status and the gateways).
    pub(crate) fn totals(&self) -> JobCounts {
        let mut t = JobCounts::default();
        for j in self.jobs.values() {
            t.queued += j.counts.queued;
            t.waiting += j.counts.waiting;
            t.running += j.counts.running;
            t.done += j.counts.done;
            t.failed += j.counts.failed;
            t.cancelled += j.counts.cancelled;
        }
        t
    }
}

impl Job {
    /// Tasks past the cursor with no slot, cancelled or not.
    fn unstarted_raw(&self) -> u64 {
        self.total - self.cursor - self.ahead.len() as u64
    }
}

fn bump(c: &mut JobCounts, s: JobTaskState) {
    match s {
        JobTaskState::Queued => c.queued += 1,
        JobTaskState::Waiting => c.waiting += 1,
        JobTaskState::Running => c.running += 1,
        JobTaskState::Done => c.done += 1,
        JobTaskState::Failed => c.failed += 1,
        JobTaskState::Cancelled => c.cancelled += 1,
    }
}

fn state_of(s: allot_wire::message::ArchivedJobTaskState) -> JobTaskState {
    use allot_wire::message::ArchivedJobTaskState as A;
    match s {
        A::Queued => JobTaskState::Queued,
        A::Waiting => JobTaskState::Waiting,
        A::Running => JobTaskState::Running,
        A::Done => JobTaskState::Done,
        A::Failed => JobTaskState::Failed,
        A::Cancelled => JobTaskState::Cancelled,
    }
}

fn task_record(s: &Slot, state: TaskStateRecord) -> TaskRecord {
    TaskRecord {
        state,
        attempts: s.attempts,
        exit_code: s.exit_code,
        worker: s.worker.to_string(),
        message: s.message.to_string(),
        started_ms: s.started_ms,
        ended_ms: s.ended_ms,
        output: s.output.to_vec(),
    }
}

fn restore_slot(slot: &mut Slot, t: &TaskRecord) {
    // A run that started again and never ended was lost too.
    slot.attempts = match t.state {
        TaskStateRecord::Started => t.attempts + 1,
        _ => t.attempts,
    };
    slot.state = match t.state {
        TaskStateRecord::Started => JobTaskState::Queued,
        TaskStateRecord::Done => JobTaskState::Done,
        TaskStateRecord::Failed => JobTaskState::Failed,
        TaskStateRecord::Cancelled => JobTaskState::Cancelled,
    };
    slot.exit_code = t.exit_code;
    slot.worker = Rc::from(t.worker.as_str());
    slot.message = Box::from(t.message.as_str());
    slot.started_ms = t.started_ms;
    slot.ended_ms = t.ended_ms;
    slot.output = t.output.clone().into_boxed_slice();
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Instant;

    use allot_engine::{ServerTable, TableConfig, UserRecord};
    use allot_wire::{
        Demands, Frame, FrameDecoder, FrameEncoder, IndexRange, JobSubmit, JobTasks,
        DEFAULT_MAX_FRAME,
    };
    use bytes::{Bytes, BytesMut};

    use super::record::{JournalOp, TaskStateRecord};
    use super::{Jobs, COMMIT_SPACING};
    use crate::distributor::shape::Shape;

    fn frame(s: &JobSubmit) -> Frame {
        let mut buf = BytesMut::new();
        FrameEncoder::new(DEFAULT_MAX_FRAME)
            .encode(s, &Bytes::new(), &mut buf)
            .expect("encode");
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.feed(&buf);
        dec.next_frame().expect("decode").expect("a frame")
    }

    fn started(ops: &[JournalOp]) -> Vec<u32> {
        ops.iter()
            .filter_map(|op| match op {
                JournalOp::Task { rec, .. } if rec.state == TaskStateRecord::Started => {
                    Some(rec.attempts)
                }
                _ => None,
            })
            .collect()
    }

    /// A placement a worker refused as busy did not run: placed again
    /// under the same attempt number, it journals no run; a real second
    /// run journals the one before it.
    #[test]
    fn only_runs_count_as_attempts_not_busy_refusals() {
        let now = Instant::now();
        let table = ServerTable::new(TableConfig::default()).expect("table");
        let user = UserRecord::new("alice");
        let mut jobs = Jobs::new("main", "d1", super::DEFAULT_RETENTION, now);
        let s = JobSubmit {
            request: 1,
            app: "echo".into(),
            demands: Demands::default(),
            require: String::new(),
            prefer: String::new(),
            user: String::new(),
            priority: 0,
            deadline_ms: 0,
            tasks: JobTasks::Array(IndexRange { first: 0, last: 0 }),
        };
        let f = frame(&s);
        let v = f.validate::<JobSubmit>().expect("valid");
        let shape = Shape {
            app: "echo".into(),
            require: String::new(),
            prefer: String::new(),
            user: "alice".into(),
            demands: (0, 0, 1),
            priority: 0,
        };
        let compile = || {
            let q = shape
                .compile(&table, &user, &[])
                .map_err(|e| e.to_string())?;
            Ok((Rc::new(q), Rc::from("echo")))
        };
        let (num, _) = jobs
            .accept(now, v.get(), &Bytes::new(), "alice", 0, &[], compile)
            .expect("accepted");
        let batch = jobs.poll_journal(now).expect("a batch");
        jobs.committed(batch.seq, Ok(()));
        let start = jobs.start_next(now).expect("a task to start");
        jobs.placed(num, start.offset, 7, Some(("w-1", 1)));
        // Refused as busy, placed again: still the first run.
        jobs.placed(num, start.offset, 7, Some(("w-1", 1)));
        jobs.placed(num, start.offset, 7, Some(("w-1", 1)));
        // Held back for the spacing, then taken.
        assert!(jobs.poll_journal(now).is_none());
        assert_eq!(jobs.next_batch_at(), Some(now + COMMIT_SPACING));
        let now = now + COMMIT_SPACING;
        let batch = jobs.poll_journal(now).expect("a batch");
        assert_eq!(started(&batch.ops), Vec::<u32>::new());
        jobs.committed(batch.seq, Ok(()));
        // Its worker was lost: the second run journals the first.
        jobs.placed(num, start.offset, 8, Some(("w-2", 2)));
        let batch = jobs.poll_journal(now + COMMIT_SPACING).expect("a batch");
        assert_eq!(started(&batch.ops), [1]);
    }
}
