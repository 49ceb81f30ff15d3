//! What the journal keeps of jobs, as plain data: the core hands
//! [`JournalOp`]s to the shell, which writes them
//! ([`crate::distributor::journal`]), and gets a [`Replay`] back at start.

use serde::{Deserialize, Serialize};

/// Which tasks a job has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceRecord {
    /// One task.
    One,
    /// Indices `first..=last`, the payload for each.
    Array {
        /// First index.
        first: u64,
        /// Last index.
        last: u64,
    },
    /// One task per line of the payload.
    Lines,
}

/// A client attribute as kept with a job (`client.*` in its expressions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttrValueRecord {
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
}

/// A job as accepted: everything needed to run its tasks again after a
/// restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its application.
    pub app: String,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// The user its tasks run as.
    pub user: String,
    /// Cores per task.
    pub cores: u32,
    /// Memory per task, bytes.
    pub mem: u64,
    /// Slots per task.
    pub slots: u32,
    /// Task priority.
    pub priority: i32,
    /// Per-task run limit in ms (0: none).
    pub deadline_ms: u64,
    /// Which tasks.
    pub source: SourceRecord,
    /// The shared input, or the lines.
    pub payload: Vec<u8>,
    /// The submitting client's attributes.
    pub client_attrs: Vec<(String, AttrValueRecord)>,
    /// When it was accepted (ms since the Unix epoch).
    pub submitted_ms: u64,
}

/// A task's state as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStateRecord {
    /// Placed on a worker again (after a restart or a lost worker);
    /// `attempts` runs came before it, and this one is lost if no end
    /// follows.
    Started,
    /// Succeeded.
    Done,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// A task's journaled state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// How it stands.
    pub state: TaskStateRecord,
    /// Runs started.
    pub attempts: u32,
    /// Exit code.
    pub exit_code: i32,
    /// The worker that ran it.
    pub worker: String,
    /// Why it failed or was cancelled.
    pub message: String,
    /// Started (ms since the epoch).
    pub started_ms: u64,
    /// Ended (ms since the epoch).
    pub ended_ms: u64,
    /// Its output (truncated to the bound kept per task).
    pub output: Vec<u8>,
}

/// One change to write. The shell writes a batch of them in one durable
/// transaction (group commit).
#[derive(Debug, Clone, PartialEq)]
pub enum JournalOp {
    /// A job was accepted (and the next job number is past it).
    Created {
        /// Its number.
        num: u64,
        /// What it is.
        rec: Box<JobRecord>,
    },
    /// Tasks below `cursor` have started at least once.
    Cursor {
        /// The job.
        num: u64,
        /// Its cursor.
        cursor: u64,
    },
    /// A task's state changed to one kept across restarts.
    Task {
        /// The job.
        num: u64,
        /// The task's offset in the job.
        offset: u64,
        /// Its state.
        rec: Box<TaskRecord>,
    },
    /// Every task of the job that has not started is cancelled.
    Cancelled {
        /// The job.
        num: u64,
    },
    /// The job is forgotten, with its tasks.
    Removed {
        /// The job.
        num: u64,
    },
}

/// A job read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayJob {
    /// Its number.
    pub num: u64,
    /// What it is.
    pub rec: JobRecord,
    /// Tasks below it had started.
    pub cursor: u64,
    /// Its unstarted tasks were cancelled.
    pub cancelled: bool,
    /// Journaled task states by offset.
    pub tasks: Vec<(u64, TaskRecord)>,
}

/// Everything the journal holds, for a distributor that starts again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Replay {
    /// The next job number to give out.
    pub next_num: u64,
    /// The jobs, by number.
    pub jobs: Vec<ReplayJob>,
}

impl Replay {
    /// What an empty journal reads back: no jobs, numbers from 1.
    pub fn empty() -> Replay {
        Replay {
            next_num: 1,
            jobs: Vec::new(),
        }
    }

    /// Applies one batch the way the journal writes it, so that a replay
    /// folded from the committed batches is what the journal file would
    /// read back ([`crate::distributor::journal`] keeps to these rules):
    /// `Created` keeps the record (a second one for the same number
    /// replaces the record only) and moves the next number past it;
    /// `Cursor`, `Task` and `Cancelled` for a job the journal does not
    /// hold are dropped; `Task` replaces the task's earlier state;
    /// `Removed` forgets the job and its tasks, not its number.
    pub fn apply(&mut self, ops: &[JournalOp]) {
        for op in ops {
            match op {
                JournalOp::Created { num, rec } => {
                    self.next_num = self.next_num.max(num.saturating_add(1));
                    match self.find(*num) {
                        Ok(i) => self.jobs[i].rec = rec.as_ref().clone(),
                        Err(i) => self.jobs.insert(
                            i,
                            ReplayJob {
                                num: *num,
                                rec: rec.as_ref().clone(),
                                cursor: 0,
                                cancelled: false,
                                tasks: Vec::new(),
                            },
                        ),
                    }
                }
                JournalOp::Cursor { num, cursor } => {
                    if let Ok(i) = self.find(*num) {
                        self.jobs[i].cursor = *cursor;
                    }
                }
                JournalOp::Task { num, offset, rec } => {
                    if let Ok(i) = self.find(*num) {
                        let tasks = &mut self.jobs[i].tasks;
                        match tasks.binary_search_by_key(offset, |(o, _)| *o) {
                            Ok(t) => tasks[t].1 = rec.as_ref().clone(),
                            Err(t) => tasks.insert(t, (*offset, rec.as_ref().clone())),
                        }
                    }
                }
                JournalOp::Cancelled { num } => {
                    if let Ok(i) = self.find(*num) {
                        self.jobs[i].cancelled = true;
                    }
                }
                JournalOp::Removed { num } => {
                    if let Ok(i) = self.find(*num) {
                        self.jobs.remove(i);
                    }
                }
            }
        }
    }

    /// The replay of `batches`, committed in order to an empty journal.
    pub fn of_batches<'a>(batches: impl IntoIterator<Item = &'a [JournalOp]>) -> Replay {
        let mut r = Replay::empty();
        for b in batches {
            r.apply(b);
        }
        r
    }

    fn find(&self, num: u64) -> Result<usize, usize> {
        self.jobs.binary_search_by_key(&num, |j| j.num)
    }
}
