//! Automatic allocation: the distributor submits batch jobs (Slurm's
//! `sbatch`) that start workers joining it, when tasks wait that no live
//! worker can take but such a worker could.
//!
//! What "such a worker" offers is the allocation's *template*
//! ([`AutoallocConfig::template`]): a server record (cores, memory, apps,
//! slots, labels) the command line builds from the worker flags the jobs
//! use and from the partition's nodes as `sinfo` describes them. Each
//! task's query is compiled once more against a one-row table holding
//! the template, when its shape is first seen (a verdict per compiled
//! query, [`Autoalloc::note`]); a task waits for an allocation when the
//! template passes it and no worker in the table can ever take it
//! (it fails on no clause that changes by itself: free capacity, state).
//! Such a task waits without the queue timeout, for as long as it takes.
//!
//! [`policy`] decides (no I/O, time passed in); [`slurm`] runs its
//! actions from the distributor's shell.

use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use allot_engine::{LabelValue, Query, ServerRecord, ServerTable, TableConfig, UserRecord};

use super::shape::Shape;
use crate::FxMap;

pub mod policy;
pub mod slurm;

pub use policy::{Action, Allocation, Policy, PolicyConfig};

/// Compiled queries with a verdict kept at most; past it (after dropping
/// those of queries gone), a new shape gets no verdict and its tasks are
/// not counted for an allocation (logged once).
pub const MAX_VERDICTS: usize = 65_536;

/// How a distributor allocates workers by itself.
#[derive(Debug, Clone)]
pub struct AutoallocConfig {
    /// The batch system (`slurm`).
    pub backend: String,
    /// The policy's tuning (jobs at most, idle time, poll period, backoff).
    pub policy: PolicyConfig,
    /// The batch script each job runs (it starts one worker joining
    /// this distributor).
    pub script: String,
    /// More `sbatch` arguments (e.g. `--partition`, `--time`).
    pub submit_args: Vec<String>,
    /// What a worker started by a job offers.
    pub template: ServerRecord,
}

/// The core's side of an automatic allocation: the policy, the template's
/// table and the verdicts.
pub(crate) struct Autoalloc {
    pub backend: String,
    pub policy: Policy,
    template: ServerTable,
    /// By the address of a compiled query: the query (to tell a reused
    /// address) and whether the template passes it.
    verdicts: FxMap<usize, (Weak<Query>, bool)>,
    full_logged: bool,
}

impl Autoalloc {
    pub(crate) fn new(
        cfg: &AutoallocConfig,
        now: Instant,
    ) -> Result<Autoalloc, allot_engine::EngineError> {
        let template = ServerTable::new(TableConfig {
            shards: 1,
            capacity: 64,
        })?;
        let mut row = cfg.template.clone();
        row.slots_free = row.slots;
        row.mem_free = row.mem;
        template.insert(row)?;
        Ok(Autoalloc {
            backend: cfg.backend.clone(),
            policy: Policy::new(cfg.policy.clone(), cfg.script.clone(), now),
            template,
            verdicts: FxMap::default(),
            full_logged: false,
        })
    }

    /// Whether `query` has a verdict already.
    pub(crate) fn known(&self, query: &Rc<Query>) -> bool {
        self.verdict(query).is_some()
    }

    fn verdict(&self, query: &Query) -> Option<bool> {
        let at = query as *const Query;
        let (q, v) = self.verdicts.get(&(at as usize))?;
        q.upgrade()
            .filter(|q| std::ptr::eq(Rc::as_ptr(q), at))
            .map(|_| *v)
    }

    /// Judges `query`, compiled from `shape` for `user` and a client of
    /// attributes `client`: whether a worker of the template could take
    /// it.
    pub(crate) fn note(
        &mut self,
        query: &Rc<Query>,
        shape: &Shape,
        user: &UserRecord,
        client: &[(String, LabelValue)],
    ) {
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.retain(|_, (q, _)| q.strong_count() > 0);
            if self.verdicts.len() >= MAX_VERDICTS {
                if !self.full_logged {
                    self.full_logged = true;
                    tracing::warn!(
                        "autoalloc: {MAX_VERDICTS} task shapes judged and alive; new shapes are not counted for allocations"
                    );
                }
                return;
            }
        }
        let could = self.judge(shape, user, client);
        self.verdicts
            .insert(Rc::as_ptr(query) as usize, (Rc::downgrade(query), could));
    }

    /// Whether a worker of the template could take a task of `shape`, for
    /// `user` and a client of attributes `client` (compiled anew).
    pub(crate) fn judge(
        &self,
        shape: &Shape,
        user: &UserRecord,
        client: &[(String, LabelValue)],
    ) -> bool {
        match shape.compile(&self.template, user, client) {
            Ok(q) => self.template.explain(&q).matched > 0,
            Err(_) => false,
        }
    }

    /// Whether a worker of the template could take a task of `query`.
    pub(crate) fn could_take(&self, query: &Query) -> bool {
        self.verdict(query).unwrap_or(false)
    }

    /// What `allot status` shows of it, as of `now`.
    pub(crate) fn status(&self, now: Instant) -> allot_wire::AutoallocStatus {
        let p = &self.policy;
        allot_wire::AutoallocStatus {
            backend: self.backend.clone(),
            max_jobs: p.config().max_jobs,
            waiting_tasks: p.waiting(),
            last_error: p.last_error().to_owned(),
            backoff_ms: p.backoff_left(now).as_millis() as u64,
            allocations: p
                .allocations()
                .map(|a| allot_wire::AllocationStatus {
                    id: a.id.clone(),
                    state: a.state.clone(),
                    workers: a.workers.clone(),
                    age_ms: now.saturating_duration_since(a.submitted).as_millis() as u64,
                })
                .collect(),
        }
    }
}

/// The default pause after a refused submission.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);

/// The default period of the state polls.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
