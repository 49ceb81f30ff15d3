//! When to submit and cancel batch jobs: a state machine with no I/O and
//! no clock of its own. The distributor's core tells it, at each sweep,
//! how many waiting tasks only a new worker could take
//! ([`Policy::tick`]); the shell runs the [`Action`]s it hands out
//! (`sbatch`, `scancel`, `squeue`) and reports back what they said
//! ([`Policy::submitted`], [`Policy::states`]).
//!
//! The rules:
//! * **Submit** when tasks wait that no live worker can take but a worker
//!   of an allocation could, and fewer jobs are on their way (pending, or
//!   running without their worker registered yet) than those tasks need
//!   (one worker each, taking `slots` tasks at once); one submission at a
//!   time, never more than `max_jobs` jobs pending or running.
//! * **Back off** after a refused submission: none for `backoff`, doubled
//!   after each refusal in a row up to [`MAX_BACKOFF`]; the refusal's text
//!   is the reason tasks show while they wait.
//! * **Idle**: a job still pending once no task has waited for it for
//!   `idle` is cancelled (its worker would find nothing to do). A running
//!   job ends by itself: its worker exits after `idle` without a task.
//! * **Poll** the states of the jobs pending or running every `poll`;
//!   a job the batch system no longer lists has ended.
//! * **Adopt** first: before its first submission the policy asks the
//!   batch system for the jobs of its name still pending or running
//!   (an earlier run of this distributor submitted them) and counts them
//!   as its own, so a restart never takes it past `max_jobs`. Until they
//!   are known it submits nothing; a failed look is tried again every
//!   `poll`, its error the reason tasks show while they wait.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest pause between submissions after refusals.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Ended jobs kept for `allot status` (the oldest is forgotten first).
pub const ENDED_KEPT: usize = 16;

/// Worker names kept per job (a job of many nodes lists its first ones).
pub const WORKERS_KEPT: usize = 64;

/// How long an adopted running job counts as bringing a worker while
/// none of its has registered: its worker, if it lives, dials again
/// within seconds; one that never comes (the distributor moved) must not
/// hold back submissions until the job's time limit.
pub const ADOPTED_GRACE: Duration = Duration::from_secs(30);

/// How the policy is tuned.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Jobs pending or running at most.
    pub max_jobs: u32,
    /// A pending job is cancelled when no task has waited for this long;
    /// workers started are told to exit after as long without a task.
    pub idle: Duration,
    /// How often the states of the jobs are asked.
    pub poll: Duration,
    /// The pause after a first refused submission.
    pub backoff: Duration,
    /// Tasks one worker of an allocation takes at once.
    pub slots: u32,
    /// The name its jobs are submitted under (what adoption looks for).
    pub job_name: String,
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Submit the batch script; report with [`Policy::submitted`].
    Submit {
        /// The script (`sbatch` reads it on stdin).
        script: String,
    },
    /// Cancel job `id` (its state is learnt at the next poll).
    Cancel {
        /// The batch system's job id.
        id: String,
    },
    /// Ask the states of these jobs; report with [`Policy::states`].
    Poll {
        /// The batch system's job ids.
        ids: Vec<String>,
    },
    /// List this user's jobs of this name still pending or running;
    /// report with [`Policy::found`].
    Find {
        /// The job name.
        name: String,
    },
}

/// Where adoption of an earlier run's jobs stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adoption {
    /// To ask at the next tick.
    Due,
    /// Asked; no answer yet.
    Out,
    /// Known: submissions may start.
    Done,
}

/// One job submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The batch system's id.
    pub id: String,
    /// Its state as last heard (`PENDING` until then), `ENDED` once it
    /// left the queue.
    pub state: String,
    /// When it was submitted.
    pub submitted: Instant,
    /// Its workers that registered (at most [`WORKERS_KEPT`]).
    pub workers: Vec<String>,
    /// A cancel was asked.
    pub cancelled: bool,
    /// Found running after a restart (not submitted by this run).
    pub adopted: bool,
}

impl Allocation {
    /// Whether it still brings a worker: none of its has registered, and
    /// it is not an adopted running job past [`ADOPTED_GRACE`].
    fn on_its_way(&self, now: Instant) -> bool {
        self.workers.is_empty()
            && !(self.adopted
                && self.state == "RUNNING"
                && now.saturating_duration_since(self.submitted) >= ADOPTED_GRACE)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    script: String,
    /// Jobs pending or running: at most `max_jobs`.
    active: Vec<Allocation>,
    /// The last ended jobs: at most [`ENDED_KEPT`].
    ended: VecDeque<Allocation>,
    /// An `sbatch` is out.
    submitting: bool,
    /// The ids of the poll out, if one is.
    polling: Option<Vec<String>>,
    next_poll: Instant,
    backoff_until: Option<Instant>,
    backoff_next: Duration,
    last_error: String,
    /// Tasks that only a new worker could take, at the last tick.
    waiting: u32,
    /// When such a task last waited.
    last_demand: Instant,
    /// Actions not yet taken by the shell: at most one find, one submit,
    /// one poll and one cancel per active job (each is queued once).
    actions: VecDeque<Action>,
    adoption: Adoption,
    /// When a failed find is tried again.
    next_find: Instant,
}

/// Whether Slurm's state `s` (squeue's `%T`) is one a job ends in.
pub fn is_final(s: &str) -> bool {
    matches!(
        s,
        "COMPLETED"
            | "CANCELLED"
            | "FAILED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
            | "REVOKED"
            | "ENDED"
    )
}

impl Policy {
    /// A policy submitting `script`, started at `now`.
    pub fn new(cfg: PolicyConfig, script: String, now: Instant) -> Policy {
        Policy {
            backoff_next: cfg.backoff,
            cfg,
            script,
            active: Vec::new(),
            ended: VecDeque::new(),
            submitting: false,
            polling: None,
            next_poll: now,
            backoff_until: None,
            last_error: String::new(),
            waiting: 0,
            last_demand: now,
            actions: VecDeque::new(),
            adoption: Adoption::Due,
            next_find: now,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The time passed to `now`, with `waiting` tasks that no live worker
    /// can take but a worker of an allocation could.
    pub fn tick(&mut self, now: Instant, waiting: u32) {
        self.waiting = waiting;
        if waiting > 0 {
            self.last_demand = now;
        }
        if self.backoff_until.is_some_and(|t| now >= t) {
            self.backoff_until = None;
        }
        if self.adoption == Adoption::Due && now >= self.next_find {
            self.adoption = Adoption::Out;
            self.actions.push_back(Action::Find {
                name: self.cfg.job_name.clone(),
            });
        }
        let coming = self.active.iter().filter(|a| a.on_its_way(now)).count();
        let need = waiting.div_ceil(self.cfg.slots.max(1)) as usize;
        if waiting > 0
            && self.adoption == Adoption::Done
            && !self.submitting
            && coming < need
            && self.active.len() < self.cfg.max_jobs as usize
            && self.backoff_until.is_none()
        {
            self.submitting = true;
            self.actions.push_back(Action::Submit {
                script: self.script.clone(),
            });
        }
        if waiting == 0 && now.saturating_duration_since(self.last_demand) >= self.cfg.idle {
            for a in &mut self.active {
                if a.state == "PENDING" && !a.cancelled {
                    a.cancelled = true;
                    self.actions.push_back(Action::Cancel { id: a.id.clone() });
                }
            }
        }
        if self.polling.is_none() && !self.active.is_empty() && now >= self.next_poll {
            let ids: Vec<String> = self.active.iter().map(|a| a.id.clone()).collect();
            self.polling = Some(ids.clone());
            self.next_poll = now + self.cfg.poll;
            self.actions.push_back(Action::Poll { ids });
        }
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What the submission said: the new job's id, or why it was refused
    /// (the batch system's message).
    pub fn submitted(&mut self, now: Instant, result: Result<String, String>) {
        self.submitting = false;
        match result {
            Ok(id) => {
                self.last_error.clear();
                self.backoff_next = self.cfg.backoff;
                self.backoff_until = None;
                self.active.push(Allocation {
                    id,
                    state: "PENDING".into(),
                    submitted: now,
                    workers: Vec::new(),
                    cancelled: false,
                    adopted: false,
                });
                // Learn its state soon.
                self.next_poll = self.next_poll.min(now + self.cfg.poll);
            }
            Err(why) => {
                self.last_error = why;
                self.backoff_until = Some(now + self.backoff_next);
                self.backoff_next = (self.backoff_next * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// What the poll said: the state of each job the batch system still
    /// lists (a job it polled and does not list has ended), or why it
    /// could not be asked (the states are kept).
    pub fn states(&mut self, _now: Instant, result: Result<Vec<(String, String)>, String>) {
        let Some(polled) = self.polling.take() else {
            return;
        };
        let Ok(listed) = result else {
            return;
        };
        let mut still = Vec::with_capacity(self.active.len());
        for mut a in std::mem::take(&mut self.active) {
            if polled.contains(&a.id) {
                match listed.iter().find(|(id, _)| *id == a.id) {
                    Some((_, s)) => a.state = s.clone(),
                    None => a.state = "ENDED".into(),
                }
            }
            if is_final(&a.state) {
                if self.ended.len() >= ENDED_KEPT {
                    self.ended.pop_front();
                }
                self.ended.push_back(a);
            } else {
                still.push(a);
            }
        }
        self.active = still;
    }

    /// What the look for an earlier run's jobs said: (id, state) of each
    /// job of its name the batch system lists, or why it could not be
    /// asked (tried again after `poll`). Jobs not ended are counted as
    /// its own, at most `max_jobs` (more are logged and left to end by
    /// themselves: their workers still join, and exit when idle).
    pub fn found(&mut self, now: Instant, result: Result<Vec<(String, String)>, String>) {
        if self.adoption != Adoption::Out {
            return;
        }
        let listed = match result {
            Ok(l) => l,
            Err(why) => {
                self.last_error = format!("cannot list the jobs an earlier run submitted: {why}");
                self.adoption = Adoption::Due;
                self.next_find = now + self.cfg.poll;
                // Shown as the time to the next try.
                self.backoff_until = Some(self.next_find);
                return;
            }
        };
        self.adoption = Adoption::Done;
        self.last_error.clear();
        self.backoff_until = None;
        // Running jobs first: they are the ones with workers.
        let mut listed: Vec<(String, String)> =
            listed.into_iter().filter(|(_, s)| !is_final(s)).collect();
        listed.sort_by_key(|(_, s)| s != "RUNNING");
        let mut left = 0usize;
        for (id, state) in listed {
            if self.active.iter().any(|a| a.id == id) {
                continue;
            }
            if self.active.len() >= self.cfg.max_jobs as usize {
                left += 1;
                // A pending one would start a worker nobody asked for.
                if state == "PENDING" {
                    self.actions.push_back(Action::Cancel { id });
                }
                continue;
            }
            tracing::info!(job = %id, %state, "autoalloc: job of an earlier run adopted");
            self.active.push(Allocation {
                id,
                state,
                submitted: now,
                workers: Vec::new(),
                cancelled: false,
                adopted: true,
            });
        }
        if left > 0 {
            tracing::warn!(
                left,
                max_jobs = self.cfg.max_jobs,
                "autoalloc: more jobs of an earlier run than --autoalloc-max-jobs; the pending ones are cancelled, the running ones end when idle"
            );
        }
        self.next_poll = self.next_poll.min(now + self.cfg.poll);
    }

    /// Whether the jobs of an earlier run are known (submissions may
    /// start).
    pub fn adopted(&self) -> bool {
        self.adoption == Adoption::Done
    }

    /// Worker `worker` registered with the label `slurm_job` = `job`;
    /// false if `job` is none of the jobs pending or running.
    pub fn worker_joined(&mut self, job: &str, worker: &str) -> bool {
        let Some(a) = self.active.iter_mut().find(|a| a.id == job) else {
            return false;
        };
        if a.state == "PENDING" {
            a.state = "RUNNING".into();
        }
        if !a.workers.iter().any(|w| w == worker) && a.workers.len() < WORKERS_KEPT {
            a.workers.push(worker.to_owned());
        }
        true
    }

    /// When it next wants the time (a poll or the end of a backoff), if
    /// it has anything to wait for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let poll = (!self.active.is_empty() && self.polling.is_none()).then_some(self.next_poll);
        let find = (self.adoption == Adoption::Due).then_some(self.next_find);
        [poll, self.backoff_until, find].into_iter().flatten().min()
    }

    /// Jobs pending or running, then the last ended ones.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.active.iter().chain(self.ended.iter().rev())
    }

    /// Tasks that only a new worker could take, at the last tick.
    pub fn waiting(&self) -> u32 {
        self.waiting
    }

    /// Why the last submission was refused (empty once one is accepted).
    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    /// How long until it submits again after refusals (zero: it does not
    /// back off).
    pub fn backoff_left(&self, now: Instant) -> Duration {
        self.backoff_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Why a task that only a worker of an allocation could take waits,
    /// in words.
    pub fn reason(&self, now: Instant) -> String {
        if self.adoption != Adoption::Done {
            if !self.last_error.is_empty() {
                return format!(
                    "{}; next try in {} s",
                    self.last_error,
                    self.cfg.poll.as_secs()
                );
            }
            return "looking for jobs an earlier run of this distributor submitted".into();
        }
        if !self.last_error.is_empty() {
            return format!(
                "the last submission was refused ({}); next try in {} s",
                self.last_error,
                self.backoff_left(now).as_secs()
            );
        }
        let coming: Vec<&str> = self
            .active
            .iter()
            .filter(|a| a.on_its_way(now))
            .map(|a| a.id.as_str())
            .collect();
        if !coming.is_empty() {
            return format!("job {} is starting a worker", coming.join(", "));
        }
        if self.active.len() >= self.cfg.max_jobs as usize {
            return format!(
                "{} jobs (the maximum) are pending or running",
                self.cfg.max_jobs
            );
        }
        "a job is being submitted".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_jobs: u32) -> PolicyConfig {
        PolicyConfig {
            max_jobs,
            idle: Duration::from_secs(10),
            poll: Duration::from_secs(2),
            backoff: Duration::from_secs(5),
            slots: 1,
            job_name: "allot-d1".into(),
        }
    }

    /// A policy that has looked for an earlier run's jobs and found none.
    fn fresh(cfg: PolicyConfig, now: Instant) -> Policy {
        let mut p = Policy::new(cfg, "#!/bin/sh\n".into(), now);
        p.tick(now, 0);
        assert_eq!(
            actions(&mut p),
            [Action::Find {
                name: "allot-d1".into()
            }]
        );
        p.found(now, Ok(Vec::new()));
        p
    }

    fn actions(p: &mut Policy) -> Vec<Action> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    fn submits(a: &[Action]) -> usize {
        a.iter()
            .filter(|a| matches!(a, Action::Submit { .. }))
            .count()
    }

    /// Many tasks waiting: one submission at a time, and never more jobs
    /// pending or running than the maximum, however long they wait.
    #[test]
    fn never_more_jobs_than_the_maximum() {
        let t0 = Instant::now();
        let mut p = fresh(cfg(3), t0);
        let mut jobs = 0;
        for s in 0..50u64 {
            let now = t0 + Duration::from_secs(s);
            p.tick(now, 100);
            let a = actions(&mut p);
            assert!(submits(&a) <= 1, "{a:?}");
            // A second tick before the submission answered adds none.
            p.tick(now, 100);
            assert_eq!(submits(&actions(&mut p)), 0);
            if submits(&a) == 1 {
                jobs += 1;
                p.submitted(now, Ok(jobs.to_string()));
            }
            for a in a {
                if let Action::Poll { ids } = a {
                    let listed = ids.into_iter().map(|i| (i, "PENDING".into())).collect();
                    p.states(now, Ok(listed));
                }
            }
        }
        assert_eq!(jobs, 3);
        assert_eq!(p.allocations().count(), 3);
        // One ends: room for one more.
        let now = t0 + Duration::from_secs(60);
        p.tick(now, 100);
        let ids = match actions(&mut p).pop() {
            Some(Action::Poll { ids }) => ids,
            other => panic!("expected a poll, got {other:?}"),
        };
        let listed = ids
            .iter()
            .skip(1)
            .map(|i| (i.clone(), "PENDING".into()))
            .collect();
        p.states(now, Ok(listed));
        assert_eq!(p.allocations().next().unwrap().id, "2");
        assert_eq!(p.allocations().last().unwrap().state, "ENDED");
        p.tick(now + Duration::from_secs(1), 100);
        assert_eq!(submits(&actions(&mut p)), 1);
    }

    /// A task a live worker can take is no demand: nothing is submitted;
    /// and a job on its way covers as many tasks as its worker's slots.
    #[test]
    fn no_submission_without_demand_or_while_enough_is_coming() {
        let t0 = Instant::now();
        let mut p = fresh(
            PolicyConfig {
                slots: 4,
                ..cfg(10)
            },
            t0,
        );
        p.tick(t0, 0);
        assert!(actions(&mut p).is_empty());
        p.tick(t0, 4);
        assert_eq!(submits(&actions(&mut p)), 1);
        p.submitted(t0, Ok("7".into()));
        // Four tasks, one worker of four slots coming: enough.
        p.tick(t0 + Duration::from_secs(1), 4);
        assert_eq!(submits(&actions(&mut p)), 0);
        // Five need a second one.
        p.tick(t0 + Duration::from_secs(1), 5);
        assert_eq!(submits(&actions(&mut p)), 1);
        p.submitted(t0, Ok("8".into()));
        // Its worker joined: the tasks are a live worker's now (the core
        // counts them no more).
        assert!(p.worker_joined("7", "auto-7"));
        assert!(!p.worker_joined("99", "other"));
        p.tick(t0 + Duration::from_secs(2), 0);
        assert_eq!(submits(&actions(&mut p)), 0);
        let a = p.allocations().next().unwrap();
        assert_eq!(
            (a.state.as_str(), a.workers.clone()),
            ("RUNNING", vec!["auto-7".into()])
        );
    }

    /// A refusal: the message is kept as the reason, nothing is submitted
    /// during the backoff, which doubles on each refusal and resets on a
    /// success.
    #[test]
    fn a_refused_submission_backs_off_with_its_reason() {
        let t0 = Instant::now();
        let mut p = fresh(cfg(2), t0);
        p.tick(t0, 1);
        assert_eq!(submits(&actions(&mut p)), 1);
        let why = "sbatch: error: invalid partition specified: nope";
        p.submitted(t0, Err(why.into()));
        assert_eq!(p.last_error(), why);
        assert!(p.reason(t0).contains(why), "{}", p.reason(t0));
        assert_eq!(p.backoff_left(t0), Duration::from_secs(5));
        p.tick(t0 + Duration::from_secs(4), 1);
        assert_eq!(submits(&actions(&mut p)), 0);
        let t1 = t0 + Duration::from_secs(5);
        p.tick(t1, 1);
        assert_eq!(submits(&actions(&mut p)), 1);
        p.submitted(t1, Err(why.into()));
        assert_eq!(p.backoff_left(t1), Duration::from_secs(10));
        let t2 = t1 + Duration::from_secs(10);
        p.tick(t2, 1);
        assert_eq!(submits(&actions(&mut p)), 1);
        p.submitted(t2, Ok("3".into()));
        assert_eq!(p.last_error(), "");
        assert_eq!(p.backoff_left(t2), Duration::ZERO);
        assert!(p.reason(t2).contains("job 3"), "{}", p.reason(t2));
    }

    /// A job still pending is cancelled once no task has waited for the
    /// idle time; a running one is left to end by itself.
    #[test]
    fn an_idle_pending_job_is_cancelled() {
        let t0 = Instant::now();
        let mut p = fresh(cfg(2), t0);
        p.tick(t0, 2);
        actions(&mut p);
        p.submitted(t0, Ok("1".into()));
        p.tick(t0, 2);
        actions(&mut p);
        p.submitted(t0, Ok("2".into()));
        assert!(p.worker_joined("2", "auto-2"));
        // The tasks went elsewhere.
        p.tick(t0 + Duration::from_secs(5), 0);
        assert!(!actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Cancel { .. })));
        p.tick(t0 + Duration::from_secs(11), 0);
        let cancels: Vec<Action> = actions(&mut p)
            .into_iter()
            .filter(|a| matches!(a, Action::Cancel { .. }))
            .collect();
        assert_eq!(cancels, [Action::Cancel { id: "1".into() }]);
        // Asked once only.
        p.tick(t0 + Duration::from_secs(20), 0);
        assert!(!actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Cancel { .. })));
    }

    /// Polls go out every `poll` while jobs are pending or running, one
    /// at a time; a failed poll keeps the states.
    #[test]
    fn states_are_polled_on_an_interval() {
        let t0 = Instant::now();
        let mut p = fresh(cfg(1), t0);
        p.tick(t0, 1);
        actions(&mut p);
        assert_eq!(p.poll_timeout(), None);
        p.submitted(t0, Ok("5".into()));
        p.tick(t0, 1);
        assert_eq!(
            actions(&mut p),
            [Action::Poll {
                ids: vec!["5".into()]
            }]
        );
        p.tick(t0 + Duration::from_secs(3), 1);
        assert!(actions(&mut p).is_empty(), "one poll at a time");
        p.states(t0, Err("squeue: error".into()));
        assert_eq!(p.allocations().next().unwrap().state, "PENDING");
        p.tick(t0 + Duration::from_secs(3), 1);
        assert_eq!(actions(&mut p).len(), 1);
        p.states(t0, Ok(vec![("5".into(), "COMPLETED".into())]));
        assert_eq!(p.allocations().next().unwrap().state, "COMPLETED");
        assert_eq!(p.poll_timeout(), None);
    }

    /// A restarted distributor first adopts the jobs its earlier run left
    /// pending or running: it submits nothing before it knows them, and
    /// they count against the maximum.
    #[test]
    fn a_restart_adopts_the_jobs_of_the_earlier_run() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(2), String::new(), t0);
        p.tick(t0, 5);
        assert_eq!(
            actions(&mut p),
            [Action::Find {
                name: "allot-d1".into()
            }]
        );
        // Asked, not answered: nothing submitted however many wait.
        p.tick(t0 + Duration::from_secs(1), 5);
        assert!(actions(&mut p).is_empty());
        assert!(p.reason(t0).contains("earlier run"), "{}", p.reason(t0));
        p.found(
            t0 + Duration::from_secs(1),
            Ok(vec![
                ("41".into(), "RUNNING".into()),
                ("42".into(), "PENDING".into()),
                ("40".into(), "COMPLETED".into()),
            ]),
        );
        let ids: Vec<_> = p.allocations().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["41", "42"]);
        assert!(p.worker_joined("41", "auto-41"));
        // Two jobs, the maximum: still no submission; the pending one is
        // what the tasks wait for.
        p.tick(t0 + Duration::from_secs(2), 5);
        assert_eq!(submits(&actions(&mut p)), 0);
        assert_eq!(p.reason(t0), "job 42 is starting a worker");
    }

    /// A look that fails is tried again after the poll period, its error
    /// the reason tasks wait; more jobs than the maximum are not adopted.
    #[test]
    fn a_failed_look_is_retried_and_adoption_is_bounded() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(1), String::new(), t0);
        p.tick(t0, 1);
        assert_eq!(actions(&mut p).len(), 1);
        p.found(
            t0,
            Err("slurm_load_jobs error: Unable to contact slurm controller".into()),
        );
        assert!(
            p.reason(t0).contains("Unable to contact"),
            "{}",
            p.reason(t0)
        );
        assert!(!p.adopted());
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        p.tick(t0 + Duration::from_secs(1), 1);
        assert!(actions(&mut p).is_empty(), "not before the poll period");
        p.tick(t0 + Duration::from_secs(2), 1);
        let a = actions(&mut p);
        assert_eq!(a.len(), 1);
        assert!(matches!(a[0], Action::Find { .. }), "{a:?}");
        p.found(
            t0 + Duration::from_secs(2),
            Ok(vec![
                ("7".into(), "PENDING".into()),
                ("8".into(), "PENDING".into()),
            ]),
        );
        assert!(p.adopted());
        assert_eq!(p.allocations().count(), 1);
        assert!(p.last_error().is_empty());
        // The pending job past the maximum would start a worker nobody
        // asked for: it is cancelled.
        assert_eq!(actions(&mut p), [Action::Cancel { id: "8".into() }]);
    }

    /// An adopted running job whose worker never registers again stops
    /// counting as bringing one after the grace: the tasks get a job.
    #[test]
    fn an_adopted_job_without_its_worker_stops_holding_back_submissions() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(2), String::new(), t0);
        p.tick(t0, 1);
        assert_eq!(actions(&mut p).len(), 1);
        p.found(t0, Ok(vec![("5".into(), "RUNNING".into())]));
        p.tick(t0 + Duration::from_secs(1), 1);
        assert_eq!(submits(&actions(&mut p)), 0, "its worker may be dialling");
        p.tick(t0 + ADOPTED_GRACE, 1);
        assert_eq!(submits(&actions(&mut p)), 1);
    }
}
