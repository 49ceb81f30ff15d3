//! The worker's decisions, without I/O: admission of each placement,
//! what to report and when, and drain. Events in (a link to a distributor
//! opened or lost, a frame, a task finished, the time), frames and
//! [`Action`]s out; the shell ([`super::shell`]) dials distributors, runs
//! apps that take time, and moves bytes.
//!
//! Reporting (claims 24-29), kept apart as the design asks:
//! * liveness: a tiny `Heartbeat` every period (the distributor sets the
//!   period in `RegisterAck` and stretches it when it has many workers);
//! * on events (task start and end, drain): a delta with `slots_free` and,
//!   when they moved by more than [`WorkerConfig::change_threshold`], the
//!   other load attributes. Events are coalesced for
//!   [`WorkerConfig::coalesce`], so a busy worker sends at most one delta
//!   per window, not one per task; a drain is reported at once;
//! * periodically: a full numeric delta every [`WorkerConfig::full_every`]
//!   heartbeats, which repairs anything a distributor missed.
//!
//! Prefetch ([`WorkerConfig::prefetch`]): a worker may take a few tasks
//! beyond its free slots. They wait here, in the order they came, and the
//! next starts as soon as a running task ends, before its result has even
//! left: a short task's slot is not idle for the round trip to the
//! distributor and back. The distributors see the extra places as slots;
//! `idle_power` counts only slots that run nothing, so that the default
//! `prefer` sends a task to a worker that can start it now before one where
//! it would wait.
//!
//! Results leave together: while more tasks wait here than the worker has
//! slots (and than half its prefetch), the result of a task that ends is
//! held, for at most [`RESULT_HOLD`], to leave with the next ones. The
//! slots have work meanwhile, and the distributor and its clients then
//! take several results per packet and per wake-up instead of one each,
//! which on short commands is most of what they spend. The held results
//! leave as soon as the waiting tasks fall to that mark (the distributor
//! then refills before the slots run dry), when the time is up, and when
//! the worker drains; whatever else is queued on the link meanwhile leaves
//! with them. Without prefetch nothing waits, and nothing is held.
//!
//! Bounds: tasks held are bounded by the worker's slots and prefetch
//! (admission refuses past them); links by the join list; bytes queued per link by
//! [`crate::link::OUTGOING_LIMIT`] (a result that does not fit is logged
//! and the link is closed: the distributor then retries the task
//! elsewhere, so the task still ends in one result).

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::message::{ArchivedAssign, ArchivedRegisterAck};
use allot_wire::{
    Assign, AttrChange, AttrDelta, AttrRecord, Cancel, DeltaCause, ErrorCode, ErrorMsg, Frame,
    FrameError, Heartbeat, KeyQuery, KeyReply, MessageKind, Refusal, Register, RegisterAck,
    TaskKey, TaskResult, TaskStatus, Timings, WorkerControl, WorkerState,
};
use bytes::Bytes;

use super::dedup::{Executions, Found, Kept, Placement, MAX_JOINERS};
use super::WorkerConfig;
use crate::apps::{self, App, AppOutcome, AppTable};
use crate::link::{push, LinkId, Outgoing, Transmit};
use crate::FxMap;

/// A finished run as it is sent and kept.
fn kept_of(outcome: AppOutcome, ran: Duration) -> Kept {
    let (status, exit_code, message, output) = match outcome {
        AppOutcome::Ok(out) => (TaskStatus::Ok, 0, String::new(), out),
        AppOutcome::Failed {
            exit_code,
            output,
            message,
        } => (TaskStatus::Failed, exit_code, message, output),
        AppOutcome::Timeout => (
            TaskStatus::Timeout,
            0,
            "deadline passed on the worker".to_owned(),
            Bytes::new(),
        ),
    };
    Kept {
        status,
        exit_code,
        message,
        output,
        ran,
    }
}

/// Heartbeat period before any distributor has said one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(200);

/// Work for the shell.
#[derive(Debug)]
pub enum Action {
    /// Run an app that takes time; report the end with
    /// [`WorkerCore::task_finished`] (or [`WorkerCore::task_aborted`] if
    /// it was stopped).
    Run {
        /// The distributor link it came on.
        link: LinkId,
        /// The distributor's task id.
        task: u64,
        /// What to run.
        app: App,
        /// Its input.
        input: Bytes,
        /// Its deadline, from when it starts.
        deadline: Option<Duration>,
        /// 1 for its first placement, more when it runs again elsewhere
        /// after a worker was lost (given to command apps as
        /// `ALLOT_ATTEMPT`).
        attempt: u32,
        /// Its key (given to command apps as `ALLOT_TASK_KEY`).
        key: TaskKey,
        /// Its job and index in it (`ALLOT_JOB_ID`, `ALLOT_TASK_INDEX`).
        job: Option<(std::sync::Arc<str>, u64)>,
        /// The user it runs as (`ALLOT_USER`).
        user: std::sync::Arc<str>,
    },
    /// Stop a task started by [`Action::Run`] (cancelled, or its
    /// distributor is gone). Its capacity is already free in the core.
    Abort {
        /// Its link.
        link: LinkId,
        /// Its task id.
        task: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Debug)]
struct Reported {
    slots_free: u32,
    idle_power: f64,
    load: f64,
    mem_free: u64,
}

struct Link {
    out: Rc<Outgoing>,
    /// Set by the distributor's `RegisterAck`.
    registered: Option<Registration>,
}

struct Registration {
    worker_id: u64,
    seq: u64,
    heartbeat: Duration,
}

/// The places a worker offers: its slots, and those of tasks taken ahead.
fn places(cfg: &WorkerConfig) -> u32 {
    cfg.slots.saturating_add(cfg.prefetch)
}

/// Capacity a running task holds: (slots, cores, memory).
type Need = (u32, u32, u64);

/// A task running on this worker (an app that takes time), or taken to
/// run once a slot frees.
struct Run {
    need: Need,
    /// The shell's order to start it while it waits for a slot
    /// ([`WorkerConfig::prefetch`]); `None` once it runs.
    waiting: Option<Box<Action>>,
    /// Its app's number in the app table (indexes `app_runs`).
    app: usize,
    key: TaskKey,
    /// Its first assignment's distributor still wants the result (false
    /// once that one cancelled or was lost while others had joined).
    primary: bool,
    /// Further assignments of the same key that joined this run.
    joiners: Vec<Placement>,
    /// Since when nobody waits for its result (its distributor was lost
    /// and nobody joined): stopped after `orphan_grace`.
    orphaned: Option<Instant>,
}

/// The worker as a state machine. See the module docs.
pub struct WorkerCore {
    cfg: WorkerConfig,
    apps: AppTable,
    incarnation: u64,
    /// Places free: slots plus prefetch, less the tasks held.
    slots_free: u32,
    /// Slots that run nothing now.
    run_free: u32,
    /// Tasks taken that wait for a slot, oldest first (bounded by the
    /// prefetch: admission counts them in `slots_free`).
    waiting: VecDeque<(LinkId, u64)>,
    cores_free: u32,
    mem_free: u64,
    draining: bool,
    /// When a drain asked for by a distributor ([`WorkerCore::drain_for`])
    /// stops the tasks still running.
    drain_deadline: Option<Instant>,
    /// The worker drains because it stops ([`WorkerCore::drain_to_stop`]):
    /// an undrain cannot bring it back.
    stopping: bool,
    links: FxMap<LinkId, Link>,
    next_link: u64,
    running: FxMap<(LinkId, u64), Run>,
    /// Keys of tasks running and results kept (see [`super::dedup`]).
    executions: Executions,
    reported: Reported,
    /// An event changed what to report; sent at `coalesce_until`.
    dirty: bool,
    coalesce_until: Option<Instant>,
    next_beat: Instant,
    beats: u32,
    done: u64,
    transmit: VecDeque<Rc<Outgoing>>,
    /// Links whose results wait to leave together ([`RESULT_HOLD`]); each
    /// link at most once, like `transmit`.
    held: VecDeque<Rc<Outgoing>>,
    /// When the held results leave at the latest.
    hold_until: Option<Instant>,
    /// Set while a result that may be held is queued.
    holding: bool,
    actions: VecDeque<Action>,
    /// Times instant apps (the shell gives the OS clock; tests none).
    clock: Option<fn() -> Instant>,
    /// Reused for every result, so that its strings (this worker's name,
    /// the message) keep their buffers: no allocation per task.
    result: TaskResult,
    /// The user names of tasks run, shared with their [`Action::Run`].
    users: UserNames,
    /// Runs by app number, for the metrics (one entry per app: bounded
    /// by the app table).
    app_runs: Vec<AppRuns>,
}

/// The longest a result waits to leave with the next ones (see the
/// module docs, "Results leave together").
pub const RESULT_HOLD: Duration = Duration::from_millis(5);

/// Distinct user names a worker keeps shared (more only churns the cache).
const USERS_CACHED: usize = 1024;

/// User names as shared strings for [`Action::Run`]: a worker runs the
/// tasks of a few users over and over, and a task then costs no allocation
/// for its user's name. Bounded: past [`USERS_CACHED`] names the cache
/// starts over.
#[derive(Default)]
struct UserNames {
    all: FxMap<Box<str>, std::sync::Arc<str>>,
    /// The last name handed out, compared before the map is asked.
    last: Option<std::sync::Arc<str>>,
}

impl UserNames {
    fn get(&mut self, name: &str) -> std::sync::Arc<str> {
        if let Some(a) = self.last.as_ref().filter(|a| ***a == *name) {
            return a.clone();
        }
        let a = match self.all.get(name) {
            Some(a) => a.clone(),
            None => {
                if self.all.len() >= USERS_CACHED {
                    self.all.clear();
                }
                let a: std::sync::Arc<str> = std::sync::Arc::from(name);
                self.all.insert(Box::from(name), a.clone());
                a
            }
        };
        self.last = Some(a.clone());
        a
    }
}

/// One app's runs on this worker: plain counts, read at a scrape.
#[derive(Debug, Clone, Copy, Default)]
struct AppRuns {
    by_status: [u64; 7],
    run_us: crate::observe::Log2Histogram,
}

impl WorkerCore {
    /// A worker with `apps`, no links yet. `incarnation` tells a restarted
    /// worker from a reconnecting one.
    pub fn new(cfg: WorkerConfig, apps: AppTable, incarnation: u64, now: Instant) -> WorkerCore {
        let name = cfg.name.clone();
        let app_runs = vec![AppRuns::default(); apps.len()];
        let mut core = WorkerCore {
            app_runs,
            slots_free: places(&cfg),
            run_free: cfg.slots,
            waiting: VecDeque::new(),
            cores_free: cfg.cores,
            mem_free: cfg.mem,
            cfg,
            apps,
            incarnation,
            draining: false,
            drain_deadline: None,
            stopping: false,
            links: FxMap::default(),
            next_link: 1,
            running: FxMap::default(),
            executions: Executions::default(),
            reported: Reported {
                slots_free: 0,
                idle_power: 0.0,
                load: 0.0,
                mem_free: 0,
            },
            dirty: false,
            coalesce_until: None,
            next_beat: now,
            beats: 0,
            done: 0,
            transmit: VecDeque::new(),
            held: VecDeque::new(),
            hold_until: None,
            holding: false,
            actions: VecDeque::new(),
            clock: None,
            result: TaskResult {
                task_id: 0,
                status: TaskStatus::Ok,
                refusal: Refusal::None,
                worker: name,
                distributor: String::new(),
                attempts: 0,
                exit_code: 0,
                message: String::new(),
                timings: Timings::default(),
            },
            users: UserNames::default(),
        };
        core.reported = core.current();
        core
    }

    /// Times instant apps with `clock`.
    pub fn set_clock(&mut self, clock: fn() -> Instant) {
        self.clock = Some(clock);
    }

    /// Its configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Tasks finished so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Free (slots, cores, memory) now.
    pub fn free(&self) -> (u32, u32, u64) {
        (self.slots_free, self.cores_free, self.mem_free)
    }

    /// Whether it is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// A stream to a distributor opened: the core queues its `Register`.
    pub fn link_opened(&mut self, _now: Instant) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let out = Rc::new(Outgoing::new(id));
        let reg = Register {
            name: self.cfg.name.clone(),
            incarnation: self.incarnation,
            mode: self.cfg.mode,
            record: self.record(),
            apps: self.apps.names(),
        };
        if let Err(e) = push(&mut self.transmit, &out, &reg, &Bytes::new()) {
            tracing::warn!("register not queued: {e}");
        }
        self.links.insert(
            id,
            Link {
                out,
                registered: None,
            },
        );
        id
    }

    /// Whether the distributor on `link` accepted the registration.
    pub fn is_registered(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.registered.is_some())
    }

    /// The link's stream ended. Its tasks keep running for
    /// [`WorkerConfig::orphan_grace`]: the member of the set that takes
    /// over from a lost distributor joins them when their clients
    /// resubmit; if nobody does, they are stopped then. Returns whether
    /// the link had registered.
    pub fn link_closed(&mut self, now: Instant, link: LinkId) -> bool {
        let Some(l) = self.links.remove(&link) else {
            return false;
        };
        l.out.closed_by_peer();
        // Assignments on it that had joined a run elsewhere: nobody there
        // wants their result now.
        for ((l2, _), run) in self.running.iter_mut() {
            run.joiners.retain(|(l3, _)| *l3 != link);
            if *l2 == link {
                run.primary = false;
            }
            if !run.primary && run.joiners.is_empty() && run.orphaned.is_none() {
                run.orphaned = Some(now);
            }
        }
        // A task that has not started is not worth keeping for a takeover:
        // the member that takes over places it anew.
        self.drop_unwanted_waiting(now);
        l.registered.is_some()
    }

    /// Drops the waiting tasks nobody wants any more (their distributors
    /// were lost or cancelled): they never started, so nothing is stopped.
    fn drop_unwanted_waiting(&mut self, now: Instant) {
        let unwanted: Vec<(LinkId, u64)> = self
            .waiting
            .iter()
            .copied()
            .filter(|at| self.running.get(at).is_some_and(|r| r.orphaned.is_some()))
            .collect();
        if !unwanted.is_empty() {
            self.take_waiting(&unwanted);
            self.mark_dirty(now);
        }
    }

    /// Takes the waiting tasks `ats` out, all before any other may start
    /// in their place, and gives back what they held: none of them starts
    /// on the way. Their runs, for an answer.
    fn take_waiting(&mut self, ats: &[(LinkId, u64)]) -> Vec<((LinkId, u64), Run)> {
        self.waiting.retain(|w| !ats.contains(w));
        let mut taken = Vec::with_capacity(ats.len());
        for &at in ats {
            if let Some(run) = self.running.remove(&at) {
                self.executions.stopped(&run.key);
                self.free_capacity(run.need);
                taken.push((at, run));
            }
        }
        self.start_waiting();
        taken
    }

    /// Stops the runs nobody has wanted for `orphan_grace`.
    fn stop_orphans(&mut self, now: Instant) {
        let grace = self.cfg.orphan_grace;
        let old: Vec<(LinkId, u64)> = self
            .running
            .iter()
            .filter(|(_, r)| {
                r.orphaned
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .map(|(k, _)| *k)
            .collect();
        for (link, task) in old {
            if let Some(run) = self.running.remove(&(link, task)) {
                tracing::info!(task, "stopping a task nobody took over");
                self.executions.stopped(&run.key);
                if self.release((link, task), &run) {
                    self.actions.push_back(Action::Abort { link, task });
                }
                self.mark_dirty(now);
            }
        }
    }

    fn next_orphan_stop(&self) -> Option<Instant> {
        self.running
            .values()
            .filter_map(|r| r.orphaned)
            .min()
            .map(|t| t + self.cfg.orphan_grace)
    }

    /// Stops a running task: its capacity is free at once (the distributor
    /// released it when it cancelled), and the shell is told to stop it.
    ///
    /// A run other assignments joined keeps running for them; a joined
    /// assignment that is cancelled just leaves the run.
    fn abort(&mut self, now: Instant, link: LinkId, task: u64) {
        if let Some(run) = self.running.get_mut(&(link, task)) {
            if !run.joiners.is_empty() {
                run.primary = false;
                return;
            }
        } else {
            for run in self.running.values_mut() {
                run.joiners.retain(|j| *j != (link, task));
                if !run.primary && run.joiners.is_empty() && run.orphaned.is_none() {
                    run.orphaned = Some(now);
                }
            }
            self.drop_unwanted_waiting(now);
            return;
        }
        if let Some(run) = self.running.remove(&(link, task)) {
            self.executions.stopped(&run.key);
            if self.release((link, task), &run) {
                self.actions.push_back(Action::Abort { link, task });
            }
            self.mark_dirty(now);
        }
    }

    /// Gives back what `run` held, and starts the tasks that waited for
    /// it. Returns whether it had started (the shell runs it).
    fn release(&mut self, at: (LinkId, u64), run: &Run) -> bool {
        self.free_capacity(run.need);
        let started = run.waiting.is_none();
        if started {
            self.run_free += run.need.0;
        } else {
            self.waiting.retain(|w| *w != at);
        }
        self.start_waiting();
        started
    }

    /// Starts the oldest waiting tasks while slots are free for them
    /// (none once draining: [`WorkerCore::drain`] hands them back).
    fn start_waiting(&mut self) {
        if self.draining {
            return;
        }
        while let Some(&at) = self.waiting.front() {
            let Some(run) = self.running.get_mut(&at) else {
                self.waiting.pop_front();
                continue;
            };
            if self.run_free < run.need.0 {
                return;
            }
            self.waiting.pop_front();
            self.run_free -= run.need.0;
            if let Some(action) = run.waiting.take() {
                self.actions.push_back(*action);
            }
        }
    }

    /// The shell wrote `bytes` of `link`'s transmit.
    pub fn handle_written(&mut self, link: LinkId, bytes: usize) {
        if let Some(l) = self.links.get(&link) {
            l.out.written(bytes);
        }
    }

    /// A frame from the distributor on `link`. A frame a distributor may not
    /// send, or one that does not validate, closes the link.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        let result = match frame.kind() {
            MessageKind::RegisterAck => frame
                .validate::<RegisterAck>()
                .map(|a| self.on_ack(now, link, a.get())),
            MessageKind::Error => frame.validate::<ErrorMsg>().map(|e| {
                tracing::warn!("distributor refused: {}", e.get().message);
                self.close_link(link, ErrorCode::Protocol, "refused".into());
            }),
            MessageKind::Assign => frame
                .validate::<Assign>()
                .map(|a| self.on_assign(now, link, a.get(), a.payload())),
            MessageKind::KeyQuery => frame
                .validate::<KeyQuery>()
                .map(|q| self.on_key_query(now, link, q.get())),
            MessageKind::Cancel => frame.validate::<Cancel>().map(|c| {
                self.abort(now, link, c.get().task_id.to_native());
            }),
            MessageKind::WorkerControl => frame
                .validate::<WorkerControl>()
                .map(|c| self.on_control(now, c.get())),
            other => Err(FrameError::Invalid {
                kind: other,
                reason: "a worker does not take this message".into(),
            }),
        };
        if let Err(e) = result {
            tracing::warn!("bad frame from distributor: {e}");
            self.close_link(link, e.code(), e.to_string());
        }
    }

    fn close_link(&mut self, link: LinkId, code: ErrorCode, why: String) {
        if let Some(l) = self.links.get(&link) {
            if l.out.close(code, why) {
                self.transmit.push_back(l.out.clone());
            }
        }
    }

    fn on_ack(&mut self, now: Instant, link: LinkId, a: &ArchivedRegisterAck) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        tracing::info!(distributor = %a.distributor, id = a.worker_id.to_native(), "registered");
        let heartbeat = Duration::from_millis(u64::from(a.heartbeat_ms.to_native()).max(10));
        l.registered = Some(Registration {
            worker_id: a.worker_id.to_native(),
            seq: 0,
            heartbeat,
        });
        self.next_beat = self.next_beat.min(now + heartbeat);
    }

    fn refusal(&self, app: Option<&App>, name: &str, need: Need) -> Option<(Refusal, String)> {
        Some(if self.draining {
            (Refusal::Draining, "draining".to_owned())
        } else if app.is_none() {
            (Refusal::UnknownApp, format!("does not run app `{name}`"))
        } else if self.cfg.slots < need.0 {
            // Only prefetch places could hold it: it would never start.
            let m = format!("runs {} slots at once, {} needed", self.cfg.slots, need.0);
            (Refusal::UnknownApp, m)
        } else if self.slots_free < need.0 {
            let m = format!("{} slots free, {} needed", self.slots_free, need.0);
            (Refusal::Busy, m)
        } else if self.cores_free < need.1 {
            let m = format!("{} cores free, {} needed", self.cores_free, need.1);
            (Refusal::Busy, m)
        } else if self.mem_free < need.2 {
            let m = format!("{} bytes free, {} needed", self.mem_free, need.2);
            (Refusal::Busy, m)
        } else {
            return None;
        })
    }

    fn on_assign(&mut self, now: Instant, link: LinkId, g: &ArchivedAssign, input: Bytes) {
        let need = (
            g.demands.slots.to_native().max(1),
            g.demands.cores.to_native(),
            g.demands.mem.to_native(),
        );
        let task = g.task_id.to_native();
        let key = TaskKey {
            user: g.key.user.to_native(),
            key: g.key.key.to_native(),
        };
        let name = g.app.as_str();
        let found = self.apps.get_indexed(name);
        let app_ix = found.map_or(0, |(i, _)| i);
        let app = found.map(|(_, a)| a);
        // The same task assigned again (its client failed over to another
        // distributor): join the run, or answer with the kept result. It
        // needs no capacity of its own. Instant built-ins (echo, sha256)
        // are pure functions of their input: they are not remembered, and
        // a resubmission computes them again, which nobody can tell from
        // one run (and their hot path pays nothing for the memory).
        let remembered = app.is_some_and(|a| !apps::is_instant(a));
        let found = if remembered {
            self.executions.find(&key)
        } else {
            Found::New
        };
        match found {
            Found::New => {}
            Found::Running(at) => {
                let joined = match self.running.get_mut(&at) {
                    Some(run) if run.joiners.len() < MAX_JOINERS => {
                        run.joiners.push((link, task));
                        run.orphaned = None;
                        true
                    }
                    _ => false,
                };
                if !joined {
                    let why = format!("task assigned more than {MAX_JOINERS} times at once");
                    self.reply(
                        link,
                        task,
                        TaskStatus::Error,
                        Refusal::None,
                        0,
                        &why,
                        Duration::ZERO,
                        &Bytes::new(),
                    );
                }
                return;
            }
            Found::Done(kept) => {
                let kept = kept.clone();
                self.send_kept(link, task, &kept);
                return;
            }
        }
        // Admission: the worker's own check is the final word.
        if let Some((refusal, why)) = self.refusal(app, name, need) {
            self.reply(
                link,
                task,
                TaskStatus::Refused,
                refusal,
                0,
                &why,
                Duration::ZERO,
                &Bytes::new(),
            );
            if matches!(refusal, Refusal::Busy | Refusal::UnknownApp) {
                // The refused distributor (busy, or this task is not for
                // this worker) now counts this worker full until
                // a delta says otherwise. The next delta carries the free
                // slots even if they are back where they were last
                // reported (a task that ended within the coalescing
                // window), or that distributor would wait for the periodic
                // full report.
                self.reported.slots_free = u32::MAX;
            }
            self.mark_dirty(now);
            return;
        }
        let Some(app) = app.cloned() else {
            return;
        };
        if matches!(app, App::Echo) {
            // Echo hands its input back by reference: it takes no time to
            // speak of, so no clock is read (two reads would cost more).
            self.done += 1;
            self.ran(app_ix, TaskStatus::Ok, Duration::ZERO);
            let kept = kept_of(AppOutcome::Ok(input), Duration::ZERO);
            self.send_kept(link, task, &kept);
            return;
        }
        if apps::is_instant(&app) {
            let t0 = self.clock.map(|c| c());
            if let Some(outcome) = apps::run_instant(&app, &input) {
                let ran = match (self.clock, t0) {
                    (Some(c), Some(t0)) => c().saturating_duration_since(t0),
                    _ => Duration::ZERO,
                };
                self.done += 1;
                let kept = kept_of(outcome, ran);
                self.ran(app_ix, kept.status, ran);
                self.send_kept(link, task, &kept);
            }
            return;
        }
        self.slots_free -= need.0;
        self.cores_free -= need.1;
        self.mem_free -= need.2;
        let deadline = match g.deadline_ms.to_native() {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let run = Action::Run {
            link,
            task,
            app,
            input,
            deadline,
            attempt: g.attempt.to_native(),
            key,
            job: (!g.job.is_empty())
                .then(|| (std::sync::Arc::from(g.job.as_str()), g.index.to_native())),
            user: self.users.get(g.user.as_str()),
        };
        // Behind the tasks that wait already, in the order they came.
        let waiting = if self.waiting.is_empty() && self.run_free >= need.0 {
            self.run_free -= need.0;
            self.actions.push_back(run);
            None
        } else {
            self.waiting.push_back((link, task));
            Some(Box::new(run))
        };
        self.running.insert(
            (link, task),
            Run {
                need,
                waiting,
                app: app_ix,
                key,
                primary: true,
                joiners: Vec::new(),
                orphaned: None,
            },
        );
        self.executions.started(key, (link, task));
        self.mark_dirty(now);
    }

    fn on_key_query(
        &mut self,
        now: Instant,
        link: LinkId,
        q: &allot_wire::message::ArchivedKeyQuery,
    ) {
        self.executions.expire(now);
        let held = q
            .keys
            .iter()
            .map(|k| TaskKey {
                user: k.user.to_native(),
                key: k.key.to_native(),
            })
            .filter(|k| self.executions.holds(k))
            .collect();
        let reply = KeyReply {
            query: q.query.to_native(),
            held,
        };
        if let Some(l) = self.links.get(&link) {
            if let Err(e) = push(&mut self.transmit, &l.out, &reply, &Bytes::new()) {
                tracing::warn!("key reply not sent: {e}");
            }
        }
    }

    /// A task started by [`Action::Run`] ended after running for `ran`.
    pub fn task_finished(
        &mut self,
        now: Instant,
        link: LinkId,
        task: u64,
        outcome: AppOutcome,
        ran: Duration,
    ) {
        let Some(run) = self.running.remove(&(link, task)) else {
            return; // aborted meanwhile: its capacity is back already
        };
        // The next waiting task starts before this result is sent.
        self.release((link, task), &run);
        self.done += 1;
        let kept = kept_of(outcome, ran);
        self.ran(run.app, kept.status, ran);
        self.holding = self.may_hold();
        if run.primary {
            self.send_kept(link, task, &kept);
        }
        for (l, t) in &run.joiners {
            self.send_kept(*l, *t, &kept);
        }
        if std::mem::take(&mut self.holding) {
            self.hold_until.get_or_insert(now + RESULT_HOLD);
        } else {
            self.release_held();
        }
        self.executions.finished(now, run.key, kept);
        self.mark_dirty(now);
    }

    /// Whether a result that ends now may wait to leave with the next
    /// ones: only while more tasks wait here than the worker has slots
    /// (and than half its prefetch), so that the slots have work for the
    /// round trip that refills them once the results leave.
    fn may_hold(&self) -> bool {
        let low = self.cfg.slots.max(self.cfg.prefetch / 2) as usize;
        !self.draining && self.waiting.len() > low
    }

    /// Lets the held results leave.
    fn release_held(&mut self) {
        self.hold_until = None;
        self.transmit.extend(self.held.drain(..));
    }

    /// A task the shell ran was stopped without an outcome (the shell
    /// stopping, or an [`Action::Abort`]): its capacity is free.
    pub fn task_aborted(&mut self, now: Instant, link: LinkId, task: u64) {
        if let Some(run) = self.running.remove(&(link, task)) {
            self.executions.stopped(&run.key);
            self.release((link, task), &run);
            self.mark_dirty(now);
        }
    }

    /// Counts a run of app number `app` for the metrics.
    #[inline]
    fn ran(&mut self, app: usize, status: TaskStatus, ran: Duration) {
        if let Some(a) = self.app_runs.get_mut(app) {
            a.by_status[status as usize] += 1;
            a.run_us.record(ran.as_micros() as u64);
        }
    }

    /// What `/metrics` shows of this worker, as of now.
    pub fn metrics(&self) -> super::WorkerMetrics {
        let names = self.apps.names_by_index();
        super::WorkerMetrics {
            running: self.running.len() - self.waiting.len(),
            waiting: self.waiting.len(),
            slots: self.cfg.slots,
            slots_free: self.run_free,
            cores_free: self.cores_free,
            mem_free: self.mem_free,
            draining: self.draining,
            apps: names
                .into_iter()
                .zip(&self.app_runs)
                .map(|(name, r)| super::AppMetrics {
                    name,
                    by_status: r.by_status,
                    run_us: r.run_us,
                })
                .collect(),
        }
    }

    fn free_capacity(&mut self, need: Need) {
        self.slots_free += need.0;
        self.cores_free += need.1;
        self.mem_free += need.2;
    }

    /// Takes nothing new from now on (placements are refused as
    /// `Draining`, so distributors place elsewhere) and reports it at once;
    /// running tasks finish.
    pub fn drain(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.release_held();
        self.send_delta(
            DeltaCause::Event,
            vec![AttrChange::State(WorkerState::Draining)],
        );
        // Tasks taken ahead go back at once: they have not started, and
        // another worker can start them now.
        let back: Vec<(LinkId, u64)> = self.waiting.iter().copied().collect();
        if back.is_empty() {
            return;
        }
        for (at, run) in self.take_waiting(&back) {
            self.refuse_draining(at, run, "the worker drains: handed back before it started");
        }
        self.mark_dirty(now);
    }

    /// Answers each assignment of `run` as refused (`Draining`): its
    /// distributor places it elsewhere.
    fn refuse_draining(&mut self, (link, task): (LinkId, u64), run: Run, why: &str) {
        let mut to: Vec<Placement> = run.joiners;
        if run.primary {
            to.push((link, task));
        }
        for (l, t) in to {
            self.reply(
                l,
                t,
                TaskStatus::Refused,
                Refusal::Draining,
                0,
                why,
                Duration::ZERO,
                &Bytes::new(),
            );
        }
    }

    /// Drains as a distributor asked (`allot drain`): as [`WorkerCore::drain`],
    /// and the tasks still running after `timeout` are stopped and handed
    /// back to their distributors as refused (`Draining`), which place them
    /// elsewhere. The worker keeps serving its links. Draining again keeps
    /// the earlier of the two deadlines.
    pub fn drain_for(&mut self, now: Instant, timeout: Duration) {
        self.drain(now);
        let at = now + timeout;
        self.drain_deadline = Some(self.drain_deadline.map_or(at, |d| d.min(at)));
        if timeout.is_zero() {
            self.stop_drained(now);
        }
    }

    /// Drains before the worker stops (SIGTERM): as [`WorkerCore::drain`];
    /// an undrain is refused from now on.
    pub fn drain_to_stop(&mut self, now: Instant) {
        self.stopping = true;
        self.drain(now);
    }

    /// Takes tasks again after a drain, and reports `up` at once. A worker
    /// that drains because it stops stays draining (and says so again, for
    /// the distributor that asked thought otherwise).
    pub fn undrain(&mut self, _now: Instant) {
        if self.stopping {
            tracing::warn!("undrain refused: this worker is stopping");
            self.send_delta(
                DeltaCause::Event,
                vec![AttrChange::State(WorkerState::Draining)],
            );
            return;
        }
        self.drain_deadline = None;
        if !std::mem::take(&mut self.draining) {
            return;
        }
        let mut ch = self.changes(true);
        ch.push(AttrChange::State(WorkerState::Up));
        self.send_delta(DeltaCause::Event, ch);
    }

    fn on_control(&mut self, now: Instant, c: &allot_wire::message::ArchivedWorkerControl) {
        if c.worker.as_str() != self.cfg.name {
            tracing::warn!(worker = %c.worker, "control for another worker ignored");
            return;
        }
        match c.op {
            allot_wire::message::ArchivedWorkerOp::Drain(ms) => {
                let timeout = Duration::from_millis(ms.to_native());
                tracing::info!(
                    running = self.running.len(),
                    "draining as asked: no new tasks, up to {timeout:?} for these"
                );
                self.drain_for(now, timeout);
            }
            allot_wire::message::ArchivedWorkerOp::Undrain => {
                tracing::info!("undrained as asked: taking tasks again");
                self.undrain(now);
            }
        }
    }

    /// The drain deadline passed: every task still running is stopped, and
    /// each assignment of it is answered as refused (`Draining`), so that
    /// its distributor places it elsewhere (it counts as an attempt).
    fn stop_drained(&mut self, now: Instant) {
        self.drain_deadline = None;
        let left: Vec<(LinkId, u64)> = self.running.keys().copied().collect();
        if !left.is_empty() {
            tracing::warn!(
                left = left.len(),
                "drain timeout passed: stopping the tasks left (placed elsewhere)"
            );
        }
        for (link, task) in left {
            let Some(run) = self.running.remove(&(link, task)) else {
                continue;
            };
            self.executions.stopped(&run.key);
            if self.release((link, task), &run) {
                self.actions.push_back(Action::Abort { link, task });
            }
            let why = "stopped: the worker drains and its drain timeout passed";
            self.refuse_draining((link, task), run, why);
        }
        self.mark_dirty(now);
    }

    /// Tasks held: running, or waiting for a slot.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Tasks taken ahead that wait for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Results kept for resubmissions.
    pub fn results_kept(&self) -> usize {
        self.executions.kept()
    }

    fn mark_dirty(&mut self, now: Instant) {
        self.dirty = true;
        self.coalesce_until.get_or_insert(now + self.cfg.coalesce);
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        link: LinkId,
        task: u64,
        status: TaskStatus,
        refusal: Refusal,
        exit_code: i32,
        message: &str,
        ran: Duration,
        output: &Bytes,
    ) {
        let Some(l) = self.links.get(&link) else {
            return; // the distributor is gone; it has retried the task elsewhere
        };
        let r = &mut self.result;
        r.task_id = task;
        r.status = status;
        r.refusal = refusal;
        r.exit_code = exit_code;
        r.message.clear();
        r.message.push_str(message);
        r.timings.ran_us = ran.as_micros() as u64;
        let queue = if self.holding {
            &mut self.held
        } else {
            &mut self.transmit
        };
        if let Err(e) = push(queue, &l.out, &*r, output) {
            // Closing the link makes the distributor retry the task.
            tracing::warn!("result of task {task} not sent: {e}; dropping the link");
            let out = l.out.clone();
            if out.close(ErrorCode::Overloaded, format!("result not sent: {e}")) {
                self.transmit.push_back(out);
            }
        }
    }

    fn send_kept(&mut self, link: LinkId, task: u64, k: &Kept) {
        self.reply(
            link,
            task,
            k.status,
            Refusal::None,
            k.exit_code,
            &k.message,
            k.ran,
            &k.output,
        );
    }

    fn current(&self) -> Reported {
        let c = &self.cfg;
        // Held (running or waiting) over the slots: above 1 with tasks
        // waiting.
        let held = places(c).saturating_sub(self.slots_free);
        Reported {
            slots_free: self.slots_free,
            idle_power: if !self.waiting.is_empty() {
                0.0
            } else if c.cores == 0 {
                c.power * f64::from(self.run_free) / f64::from(c.slots.max(1))
            } else {
                c.power * f64::from(self.cores_free) / f64::from(c.cores)
            },
            load: f64::from(held) / f64::from(c.slots.max(1)),
            mem_free: self.mem_free,
        }
    }

    fn record(&self) -> AttrRecord {
        let r = self.current();
        AttrRecord {
            slots: places(&self.cfg),
            slots_free: r.slots_free,
            cores: self.cfg.cores,
            power: self.cfg.power,
            idle_power: r.idle_power,
            mem: self.cfg.mem,
            mem_free: r.mem_free,
            load: r.load,
            labels: self.cfg.labels.clone(),
        }
    }

    /// The changes worth reporting since the last report.
    fn changes(&mut self, full: bool) -> Vec<AttrChange> {
        let now = self.current();
        let last = self.reported;
        let moved = |a: f64, b: f64| (a - b).abs() > self.cfg.change_threshold * b.abs().max(1e-9);
        let mut ch = Vec::new();
        if full || now.slots_free != last.slots_free {
            ch.push(AttrChange::SlotsFree(now.slots_free));
        }
        if full || moved(now.idle_power, last.idle_power) {
            ch.push(AttrChange::IdlePower(now.idle_power));
        }
        if full || moved(now.load, last.load) {
            ch.push(AttrChange::Load(now.load));
        }
        if full || moved(now.mem_free as f64, last.mem_free as f64) {
            ch.push(AttrChange::MemFree(now.mem_free));
        }
        if !ch.is_empty() {
            self.reported = now;
        }
        ch
    }

    fn send_delta(&mut self, cause: DeltaCause, changes: Vec<AttrChange>) {
        for l in self.links.values_mut() {
            let Some(reg) = l.registered.as_mut() else {
                continue;
            };
            reg.seq += 1;
            let d = AttrDelta {
                worker_id: reg.worker_id,
                seq: reg.seq,
                cause,
                changes: changes.clone(),
            };
            if let Err(e) = push(&mut self.transmit, &l.out, &d, &Bytes::new()) {
                tracing::debug!("delta not sent: {e}");
            }
        }
    }

    fn period(&self) -> Duration {
        self.links
            .values()
            .filter_map(|l| l.registered.as_ref().map(|r| r.heartbeat))
            .min()
            .unwrap_or(DEFAULT_HEARTBEAT)
    }

    /// When [`WorkerCore::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_beat;
        if let Some(c) = self.coalesce_until {
            t = t.min(c);
        }
        if let Some(o) = self.next_orphan_stop() {
            t = t.min(o);
        }
        if let Some(h) = self.hold_until {
            t = t.min(h);
        }
        if let Some(d) = self.drain_deadline {
            t = t.min(d);
        }
        Some(t)
    }

    /// The time passed: sends the coalesced event delta when its window
    /// closed, and the heartbeat (every `full_every`-th one a full delta)
    /// when it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|h| h <= now) {
            self.release_held();
        }
        if self.next_orphan_stop().is_some_and(|t| t <= now) {
            self.stop_orphans(now);
        }
        if self.drain_deadline.is_some_and(|d| d <= now) {
            self.stop_drained(now);
        }
        if self.coalesce_until.is_some_and(|c| c <= now) {
            self.coalesce_until = None;
            if std::mem::take(&mut self.dirty) {
                let ch = self.changes(false);
                if !ch.is_empty() {
                    self.send_delta(DeltaCause::Event, ch);
                }
            }
        }
        if self.next_beat <= now {
            self.next_beat = now + self.period();
            self.beats = self.beats.wrapping_add(1);
            if self.beats % self.cfg.full_every.max(1) == 0 {
                let mut ch = self.changes(true);
                ch.push(AttrChange::State(if self.draining {
                    WorkerState::Draining
                } else {
                    WorkerState::Up
                }));
                self.send_delta(DeltaCause::Periodic, ch);
            } else {
                for l in self.links.values() {
                    let Some(reg) = &l.registered else { continue };
                    let hb = Heartbeat {
                        worker_id: reg.worker_id,
                        seq: reg.seq,
                    };
                    if let Err(e) = push(&mut self.transmit, &l.out, &hb, &Bytes::new()) {
                        tracing::debug!("heartbeat not sent: {e}");
                    }
                }
            }
        }
    }

    /// Frames to send, one link at a time.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(out) = self.transmit.pop_front() {
            if let Some(t) = out.take() {
                return Some(t);
            }
        }
        None
    }

    /// Work for the shell: apps to run, tasks to stop.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}
