//! What the dashboard reads from the core: plain structs built on
//! request (no clock read here: the shell passes the time), each list
//! bounded by what it is asked for.

use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_engine::Query;
use allot_wire::{JobSummary, SetAttrs, StatusReply};

use super::{Core, Owner};
use crate::FxMap;

/// One task waiting for capacity, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingTask {
    /// The distributor's id for it.
    pub task: u64,
    /// Its app.
    pub app: String,
    /// The user it runs as.
    pub user: String,
    /// (job id, task index) for a job's task.
    pub job: Option<(String, u64)>,
    /// (user priority, task priority).
    pub priority: (i32, i32),
    /// Placements tried so far.
    pub attempts: u32,
    /// How long it has waited.
    pub waited: Duration,
    /// Why it waits: the explanation of its query against the table now
    /// (what `allot explain` and `allot tasks` say).
    pub reason: String,
}

/// The head of the wait queue.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingView {
    /// Tasks waiting in all.
    pub total: usize,
    /// The first of them in queue order (the next to get capacity first).
    pub tasks: Vec<WaitingTask>,
}

/// The jobs held, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsView {
    /// Jobs held in all.
    pub total: usize,
    /// The newest of them.
    pub jobs: Vec<JobSummary>,
}

impl Core {
    /// The workers as `allot status` lists them: at most `max`, down ones
    /// included; the totals cover all of them.
    pub fn workers_view(&self, now: Instant, max: usize) -> StatusReply {
        self.st
            .status(now, true, max.min(super::MAX_STATUS_WORKERS))
    }

    /// The first `max` waiting tasks, each with the reason it waits. Tasks
    /// of one query (a job's, or a client's repeated shape) share one
    /// explanation: at most `max` explanations, each a scan of the table.
    pub fn waiting_view(&self, now: Instant, max: usize) -> WaitingView {
        let st = &self.st;
        let mut why: FxMap<*const Query, String> = FxMap::default();
        let tasks = st
            .waiting
            .iter()
            .take(max)
            .map(|(task, p)| {
                let reason = why
                    .entry(Rc::as_ptr(&p.query))
                    .or_insert_with(|| {
                        if st.table.is_empty() {
                            "no worker has registered yet".to_owned()
                        } else {
                            st.table.explain(&p.query).to_string()
                        }
                    })
                    .clone();
                WaitingTask {
                    task,
                    app: p.app.to_string(),
                    user: p.query.user_name().to_owned(),
                    job: match &p.owner {
                        Owner::Job { id, index, .. } => Some((id.to_string(), *index)),
                        Owner::Link { .. } => None,
                    },
                    priority: p.priority,
                    attempts: p.attempts,
                    waited: p
                        .queued_at
                        .map(|t| now.saturating_duration_since(t))
                        .unwrap_or_default(),
                    reason,
                }
            })
            .collect();
        WaitingView {
            total: st.waiting.len(),
            tasks,
        }
    }

    /// The newest `max` jobs held (acknowledged ones), with their counts.
    pub fn jobs_view(&self, max: usize) -> JobsView {
        let (total, jobs) = self.st.jobs.newest(max);
        JobsView { total, jobs }
    }

    /// This member's figures as it reports them to the gateways.
    pub fn member_view(&self) -> SetAttrs {
        self.st.member_attrs()
    }
}
