//! A deterministic harness for the node cores: distributor cores (one
//! set), worker cores in broadcast mode and clients, wired in memory, on a
//! fake clock. Nothing
//! touches a socket or sleeps; every frame goes through the real encoder
//! and decoder, so what a test sees is what the wire would carry.
//! (quinn-proto's `tests/util.rs` `Pair` is the model.)
//!
//! Each distributor's job journal is a [`SimJournal`]: the batches the
//! core hands out are committed at once, held back, or failed, as the test
//! says, and a restart ([`Sim::restart_distributor`]) folds the committed
//! ones into the [`Replay`] the journal file would read back.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use allot::apps::{AppOutcome, AppTable};
use allot::distributor::jobs::record::{JournalOp, Replay};
use allot::distributor::jobs::{JournalBatch, COMMIT_SPACING};
use allot::distributor::{Core, Peer};
use allot::gateway::GatewayCore;
use allot::link::{LinkId, Transmit};
use allot::worker::{Action, WorkerCore};
use allot::{DistributorConfig, GatewayConfig, WorkerConfig};
use allot_engine::UserRecord;
use allot_wire::{
    Cancel, Demands, ErrorCode, Frame, FrameDecoder, FrameEncoder, IndexRange, JobAck, JobOp,
    JobQuery, JobReply, JobSubmit, JobSummary, JobTaskRow, JobTaskState, JobTasks, MessageKind,
    Role, Submit, TaskResult, TaskStatus, WireMessage, DEFAULT_MAX_FRAME,
};
use bytes::{Bytes, BytesMut};

/// Encodes a message as the frame a peer would receive.
pub fn frame<M: WireMessage>(msg: &M, payload: &[u8]) -> Frame {
    let mut buf = BytesMut::new();
    FrameEncoder::new(DEFAULT_MAX_FRAME)
        .encode(msg, &Bytes::copy_from_slice(payload), &mut buf)
        .expect("encode");
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.feed(&buf);
    dec.next_frame().expect("decode").expect("a whole frame")
}

fn frames(t: &Transmit) -> Vec<Frame> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for c in &t.chunks {
        dec.feed(c);
    }
    let mut out = Vec::new();
    while let Some(f) = dec.next_frame().expect("the core sends valid frames") {
        out.push(f);
    }
    out
}

/// A task a worker core asked its shell to run, held until the test ends it.
#[derive(Debug, Clone)]
pub struct Running {
    pub worker: usize,
    pub link: LinkId,
    pub task: u64,
    pub input: Bytes,
}

/// One link between a worker and a distributor.
#[derive(Debug, Clone, Copy)]
pub struct WLink {
    /// Which distributor.
    pub dist: usize,
    /// The link as the distributor names it.
    pub at_dist: LinkId,
    /// The link as the worker names it.
    pub at_worker: LinkId,
    /// Whether it is up (frames are delivered).
    pub up: bool,
}

pub struct SimWorker {
    pub core: WorkerCore,
    /// Its links, one per distributor (broadcast mode).
    pub links: Vec<WLink>,
    /// Its link to the first distributor, as that one names it.
    pub at_dist: LinkId,
    /// The same link as the worker names it.
    pub at_worker: LinkId,
    /// Tasks it runs now (apps that take time).
    pub running: Vec<Running>,
    /// Every `Run` it was asked for, in order: (task id, input).
    pub runs: Vec<(u64, Bytes)>,
    /// The attempt number of each `Run`, in the same order.
    pub attempts: Vec<u32>,
    /// Tasks it was told to stop.
    pub aborted: Vec<u64>,
    /// Whether its link is up (frames are delivered).
    pub connected: bool,
    /// Attribute deltas it sent.
    pub deltas: usize,
}

pub struct SimClient {
    /// Which distributor it talks to ([`DETACHED`] once that one
    /// restarted: its link died with the old core).
    pub dist: usize,
    pub link: LinkId,
    pub results: Vec<(TaskResult, Bytes)>,
    /// Answers to its job submits, in order.
    pub acks: Vec<JobAck>,
    /// Answers to its job queries, in order.
    pub replies: Vec<JobReply>,
    next_request: u64,
    /// Status replies it got, in order.
    pub statuses: Vec<allot_wire::StatusReply>,
    /// Answers to its worker controls, in order.
    pub controls: Vec<allot_wire::WorkerControlReply>,
    /// `Error` frames and the close code, if the distributor closed the link.
    pub closed: Option<(ErrorCode, String)>,
    /// When set, the client reads nothing: its bytes are never reported
    /// written, as with a peer that stopped reading.
    pub stuck: bool,
    /// When set, nothing reaches the client (its link broke).
    pub cut: bool,
}

/// The `dist` of a client whose distributor restarted.
pub const DETACHED: usize = usize::MAX;

/// What the journal of a simulated distributor does with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalMode {
    /// Written at once.
    Commit,
    /// Kept unwritten until [`Sim::release_journal`] or
    /// [`Sim::fail_journal`] (a slow disk); lost if the distributor
    /// restarts first.
    Hold,
    /// The write fails with this error.
    Fail(String),
}

/// A distributor's job journal, as the shell would keep it.
pub struct SimJournal {
    pub mode: JournalMode,
    /// The batch taken and not written yet (with [`JournalMode::Hold`]).
    pub held: Vec<JournalBatch>,
    /// Every batch written, in order: what the file holds.
    pub committed: Vec<Vec<JournalOp>>,
}

impl SimJournal {
    fn new() -> SimJournal {
        SimJournal {
            mode: JournalMode::Commit,
            held: Vec::new(),
            committed: Vec::new(),
        }
    }

    /// Every op written, in order.
    pub fn ops(&self) -> impl Iterator<Item = &JournalOp> {
        self.committed.iter().flatten()
    }

    /// What the file would read back now.
    pub fn replay(&self) -> Replay {
        Replay::of_batches(self.committed.iter().map(Vec::as_slice))
    }
}

/// What the distributors' wall clocks read when the simulation starts
/// (ms since the epoch); they keep the fake clock's time from there.
pub const WALL_START_MS: u64 = 1_800_000_000_000;

/// One link between a distributor and a gateway.
#[derive(Debug, Clone, Copy)]
pub struct GLink {
    pub dist: usize,
    pub at_dist: LinkId,
    pub at_gw: LinkId,
    pub up: bool,
}

/// A gateway core wired to distributor cores.
pub struct SimGateway {
    pub core: GatewayCore,
    pub links: Vec<GLink>,
    /// Every frame a distributor sent it, by kind, in order.
    pub heard: Vec<MessageKind>,
    /// `Error` frames it sent on its links (code, message).
    pub errors: Vec<(ErrorCode, String)>,
    /// Whether it runs (a stopped gateway gets nothing and keeps no time).
    pub alive: bool,
    /// The cause of every `MemberReport` it got, in order.
    pub reports: Vec<allot_wire::DeltaCause>,
}

pub struct Sim {
    pub now: Instant,
    /// Gateways (see [`Sim::add_gateway`]).
    pub gateways: Vec<SimGateway>,
    /// The first distributor.
    pub dist: Core,
    /// More members of the same set (see [`Sim::add_distributor`]).
    pub others: Vec<Core>,
    cfg: DistributorConfig,
    users: Vec<UserRecord>,
    killed: Vec<usize>,
    pub workers: Vec<SimWorker>,
    pub clients: Vec<SimClient>,
    /// Distributor `d`'s job journal.
    pub journals: Vec<SimJournal>,
    started: Instant,
}

impl Sim {
    /// A distributor with `cfg` tuned by `tune`, no workers, no clients.
    pub fn new(tune: impl FnOnce(&mut DistributorConfig)) -> Sim {
        let now = Instant::now();
        let mut cfg = DistributorConfig::new(
            "dist-1",
            "127.0.0.1:0".parse().expect("addr"),
            "unused-pki".into(),
            "unused-data".into(),
        );
        cfg.heartbeat = Duration::from_secs(1);
        tune(&mut cfg);
        let mut dist = Core::new(cfg.clone(), Vec::new(), now).expect("core");
        dist.set_wall_clock(now, WALL_START_MS);
        Sim {
            now,
            dist,
            others: Vec::new(),
            cfg,
            users: Vec::new(),
            killed: Vec::new(),
            workers: Vec::new(),
            clients: Vec::new(),
            gateways: Vec::new(),
            journals: vec![SimJournal::new()],
            started: now,
        }
    }

    /// What the wall clock reads at `now` (ms since the epoch).
    pub fn wall_ms(&self, now: Instant) -> u64 {
        WALL_START_MS + now.duration_since(self.started).as_millis() as u64
    }

    /// A distributor core with the simulation's configuration, users and
    /// wall clock.
    fn new_core(&self, cfg: DistributorConfig) -> Core {
        let mut core = Core::new(cfg, self.users.clone(), self.now).expect("core");
        core.set_wall_clock(self.now, self.wall_ms(self.now));
        core
    }

    /// As [`Sim::new`], with `users` in the distributor's user DB.
    pub fn with_users(
        users: Vec<allot_engine::UserRecord>,
        tune: impl FnOnce(&mut DistributorConfig),
    ) -> Sim {
        let mut sim = Sim::new(tune);
        sim.users = users;
        sim.dist = sim.new_core(sim.cfg.clone());
        sim
    }

    /// The inputs of the tasks worker `w` runs now, in the order they
    /// started.
    pub fn inputs(&self, w: usize) -> Vec<Bytes> {
        self.workers[w]
            .running
            .iter()
            .map(|r| r.input.clone())
            .collect()
    }

    /// Adds a gateway with no seed sets, `cfg` tuned by `tune`.
    pub fn add_gateway(&mut self, tune: impl FnOnce(&mut GatewayConfig)) -> usize {
        let mut cfg = GatewayConfig::new(
            &format!("gw-{}", self.gateways.len() + 1),
            "127.0.0.1:0".parse().expect("addr"),
            "unused-pki".into(),
            Vec::new(),
        );
        tune(&mut cfg);
        self.gateways.push(SimGateway {
            core: GatewayCore::new(&cfg),
            links: Vec::new(),
            heard: Vec::new(),
            errors: Vec::new(),
            alive: true,
            reports: Vec::new(),
        });
        self.gateways.len() - 1
    }

    /// Distributor `d` opens a link to gateway `g` (as its shell does),
    /// advertising `addr`.
    pub fn register(&mut self, d: usize, g: usize, addr: &str) {
        let now = self.now;
        let name = self.d(d).config().name.clone();
        let at_gw = self.gateways[g]
            .core
            .link_opened(now, Role::Distributor, &name);
        let at_dist = self.d(d).gateway_opened(now, addr.parse().expect("addr"));
        self.gateways[g].links.push(GLink {
            dist: d,
            at_dist,
            at_gw,
            up: true,
        });
        self.settle();
    }

    /// The link from distributor `d` to gateway `g` is lost (both ends
    /// see it).
    pub fn cut_gateway(&mut self, d: usize, g: usize) {
        let now = self.now;
        let links: Vec<GLink> = self.gateways[g]
            .links
            .iter()
            .filter(|l| l.dist == d && l.up)
            .copied()
            .collect();
        for l in &mut self.gateways[g].links {
            if l.dist == d {
                l.up = false;
            }
        }
        for l in links {
            self.gateways[g].core.link_closed(now, l.at_gw);
            self.d(d).link_closed(now, l.at_dist);
        }
        self.settle();
    }

    /// Gateway `g` restarts: every link to it is lost, and it comes back
    /// with an empty record.
    pub fn restart_gateway(&mut self, g: usize) {
        let dists: Vec<usize> = self.gateways[g]
            .links
            .iter()
            .filter(|l| l.up)
            .map(|l| l.dist)
            .collect();
        for d in dists {
            self.cut_gateway(d, g);
        }
        let cfg = GatewayConfig::new(
            "gw-restarted",
            "127.0.0.1:0".parse().expect("addr"),
            "unused-pki".into(),
            Vec::new(),
        );
        self.gateways[g].core = GatewayCore::new(&cfg);
        self.gateways[g].links.clear();
    }

    /// Distributor `d` (0 is [`Sim::dist`]).
    pub fn d(&mut self, d: usize) -> &mut Core {
        if d == 0 {
            &mut self.dist
        } else {
            &mut self.others[d - 1]
        }
    }

    fn dists(&self) -> usize {
        1 + self.others.len()
    }

    /// Adds another member of the set; workers added later register with
    /// every member (broadcast). Returns its index.
    pub fn add_distributor(&mut self, name: &str) -> usize {
        let mut cfg = self.cfg.clone();
        cfg.name = name.into();
        let core = self.new_core(cfg);
        self.others.push(core);
        self.journals.push(SimJournal::new());
        self.others.len()
    }

    /// Worker `w` (re)registers with distributor `d` on a new link.
    pub fn reconnect(&mut self, w: usize, d: usize) {
        let now = self.now;
        let name = self.workers[w].core.config().name.clone();
        let at_worker = self.workers[w].core.link_opened(now);
        let at_dist = self.d(d).link_opened(
            now,
            Peer {
                role: Role::Worker,
                name,
                attrs: Vec::new(),
            },
        );
        self.workers[w].links.push(WLink {
            dist: d,
            at_dist,
            at_worker,
            up: true,
        });
        self.settle();
    }

    /// Adds another member with its configuration tuned by `tune` (e.g.
    /// another set name). Returns its index.
    pub fn add_distributor_with(
        &mut self,
        name: &str,
        tune: impl FnOnce(&mut DistributorConfig),
    ) -> usize {
        let mut cfg = self.cfg.clone();
        cfg.name = name.into();
        tune(&mut cfg);
        let core = self.new_core(cfg);
        self.others.push(core);
        self.journals.push(SimJournal::new());
        self.others.len()
    }

    /// Distributor `d` hangs: it keeps its links but gets no more time
    /// (sends no heartbeat) until [`Sim::revive`].
    pub fn hang(&mut self, d: usize) {
        self.killed.push(d);
    }

    /// A hung distributor runs again.
    pub fn revive(&mut self, d: usize) {
        self.killed.retain(|k| *k != d);
    }

    /// Distributor `d` dies: every link to it is lost at once.
    pub fn kill_distributor(&mut self, d: usize) {
        let now = self.now;
        self.killed.push(d);
        for w in &mut self.workers {
            for l in w.links.iter_mut().filter(|l| l.dist == d && l.up) {
                l.up = false;
                w.core.link_closed(now, l.at_worker);
            }
        }
        for c in self.clients.iter_mut().filter(|c| c.dist == d) {
            c.closed = Some((ErrorCode::Unavailable, "distributor died".into()));
        }
        self.settle();
    }

    /// Adds a worker running `apps` with `slots`, registers it and lets
    /// the registration settle. Returns its index.
    pub fn worker(&mut self, name: &str, apps: &[&str], slots: u32) -> usize {
        self.worker_with(name, apps, slots, |_| {})
    }

    /// Like [`Sim::worker`], its config tuned by `tune` first (labels...).
    pub fn worker_with(
        &mut self,
        name: &str,
        apps: &[&str],
        slots: u32,
        tune: impl FnOnce(&mut WorkerConfig),
    ) -> usize {
        let mut cfg = WorkerConfig::new(
            name,
            "unused-pki".into(),
            vec!["127.0.0.1:1".parse().expect("addr")],
        );
        cfg.slots = slots;
        cfg.apps = apps.iter().map(|a| a.to_string()).collect();
        tune(&mut cfg);
        let table = AppTable::from_config(&cfg.apps, &[]).expect("apps");
        let mut core = WorkerCore::new(cfg, table, 1, self.now);
        let mut links = Vec::new();
        for d in 0..self.dists() {
            let at_worker = core.link_opened(self.now);
            let now = self.now;
            let at_dist = self.d(d).link_opened(
                now,
                Peer {
                    role: Role::Worker,
                    name: name.into(),
                    attrs: Vec::new(),
                },
            );
            links.push(WLink {
                dist: d,
                at_dist,
                at_worker,
                up: true,
            });
        }
        self.workers.push(SimWorker {
            core,
            at_dist: links[0].at_dist,
            at_worker: links[0].at_worker,
            links,
            running: Vec::new(),
            runs: Vec::new(),
            attempts: Vec::new(),
            aborted: Vec::new(),
            connected: true,
            deltas: 0,
        });
        self.settle();
        self.workers.len() - 1
    }

    /// Adds a client link whose certificate names `name`.
    pub fn client(&mut self, name: &str) -> usize {
        self.client_at(0, name)
    }

    /// Adds a client link to distributor `d`.
    pub fn client_at(&mut self, d: usize, name: &str) -> usize {
        let now = self.now;
        let link = self.d(d).link_opened(
            now,
            Peer {
                role: Role::Client,
                name: name.into(),
                attrs: Vec::new(),
            },
        );
        self.clients.push(SimClient {
            dist: d,
            link,
            results: Vec::new(),
            acks: Vec::new(),
            replies: Vec::new(),
            next_request: 1,
            statuses: Vec::new(),
            controls: Vec::new(),
            closed: None,
            stuck: false,
            cut: false,
        });
        self.clients.len() - 1
    }

    /// Client `c` submits `s` with `payload`, and everything settles.
    pub fn submit(&mut self, c: usize, s: &Submit, payload: &[u8]) {
        let (d, link, now) = (self.clients[c].dist, self.clients[c].link, self.now);
        self.d(d).handle_frame(now, link, frame(s, payload));
        self.settle();
    }

    /// Client `c` asks its distributor for its status with `q`; the reply.
    pub fn ask_status(&mut self, c: usize, q: allot_wire::StatusQuery) -> allot_wire::StatusReply {
        let (d, link, now) = (self.clients[c].dist, self.clients[c].link, self.now);
        self.d(d).handle_frame(now, link, frame(&q, b""));
        self.settle();
        self.clients[c].statuses.pop().expect("a status reply")
    }

    /// Client `c` asks its distributor to apply `op` to worker `worker`
    /// (`allot drain`/`undrain`); the reply.
    pub fn control(
        &mut self,
        c: usize,
        worker: &str,
        op: allot_wire::WorkerOp,
    ) -> allot_wire::WorkerControlReply {
        let cl = &mut self.clients[c];
        let request = cl.next_request;
        cl.next_request += 1;
        let msg = allot_wire::WorkerControl {
            request,
            worker: worker.into(),
            op,
        };
        let (d, link, now) = (cl.dist, cl.link, self.now);
        self.d(d).handle_frame(now, link, frame(&msg, b""));
        self.settle();
        let r = self.clients[c].controls.pop().expect("a control reply");
        assert_eq!(r.request, request);
        r
    }

    /// Client `c` cancels its task `task_id`.
    pub fn cancel(&mut self, c: usize, task_id: u64) {
        let (d, link, now) = (self.clients[c].dist, self.clients[c].link, self.now);
        self.d(d)
            .handle_frame(now, link, frame(&Cancel { task_id }, b""));
        self.settle();
    }

    /// Worker `w` finishes its running task `task` (the distributor's id)
    /// with `outcome`.
    pub fn finish(&mut self, w: usize, task: u64, outcome: AppOutcome) {
        let sw = &mut self.workers[w];
        let i = sw
            .running
            .iter()
            .position(|r| r.task == task)
            .expect("the task runs on that worker");
        let r = sw.running.remove(i);
        sw.core
            .task_finished(self.now, r.link, r.task, outcome, Duration::from_millis(1));
        self.settle();
    }

    /// The worker's connection to the distributor is lost.
    pub fn disconnect(&mut self, w: usize) {
        let now = self.now;
        let sw = &mut self.workers[w];
        sw.connected = false;
        let links: Vec<WLink> = sw.links.iter().filter(|l| l.up).copied().collect();
        for l in &mut sw.links {
            l.up = false;
        }
        for l in links {
            self.workers[w].core.link_closed(now, l.at_worker);
            self.d(l.dist).link_closed(now, l.at_dist);
        }
        self.settle();
    }

    /// Advances the clock by `d` in steps of at most 10 ms, giving every
    /// core its timeouts on the way, as the shells' timers would.
    pub fn advance(&mut self, d: Duration) {
        self.advance_but(d, None);
    }

    /// Lets the distributors' journals take what they hold back for
    /// [`COMMIT_SPACING`] (the time passes by that much).
    pub fn journal_catch_up(&mut self) {
        self.advance(COMMIT_SPACING);
    }

    /// Like [`Sim::advance`], but worker `silent` sends nothing (a worker
    /// whose process hangs).
    pub fn advance_silent(&mut self, d: Duration, silent: usize) {
        self.advance_but(d, Some(silent));
    }

    fn advance_but(&mut self, d: Duration, silent: Option<usize>) {
        let end = self.now + d;
        while self.now < end {
            let step = (end - self.now).min(Duration::from_millis(10));
            self.now += step;
            let now = self.now;
            for d in 0..self.dists() {
                if self.alive(d) {
                    self.d(d).handle_timeout(now);
                }
            }
            // A cut-off worker still keeps time; its frames go nowhere.
            for (i, w) in self.workers.iter_mut().enumerate() {
                if Some(i) != silent {
                    w.core.handle_timeout(now);
                }
            }
            for g in self.gateways.iter_mut().filter(|g| g.alive) {
                g.core.handle_timeout(now);
            }
            self.settle();
        }
    }

    /// Delivers every frame in flight until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for d in 0..self.dists() {
                while let Some(t) = self.d(d).poll_transmit() {
                    moved = true;
                    self.deliver_from_dist(d, t);
                }
                if self.alive(d) {
                    while let Some(b) = self.d(d).poll_journal() {
                        moved = true;
                        self.write_batch(d, b);
                    }
                }
            }
            for g in 0..self.gateways.len() {
                while let Some(t) = self.gateways[g].core.poll_transmit() {
                    moved = true;
                    self.gateways[g].core.handle_written(t.link, t.len);
                    let link = self.gateways[g]
                        .links
                        .iter()
                        .find(|l| l.at_gw == t.link && l.up)
                        .copied();
                    for f in frames(&t) {
                        if f.kind() == MessageKind::Error {
                            let e = f
                                .clone()
                                .validate::<allot_wire::ErrorMsg>()
                                .expect("valid error")
                                .to_owned_message()
                                .expect("owned");
                            self.gateways[g].errors.push((e.code, e.message));
                        }
                        if let Some(l) = link {
                            let now = self.now;
                            self.d(l.dist).handle_frame(now, l.at_dist, f);
                        }
                    }
                }
            }
            for i in 0..self.workers.len() {
                while let Some(t) = self.workers[i].core.poll_transmit() {
                    moved = true;
                    self.workers[i].core.handle_written(t.link, t.len);
                    let Some(l) = self.workers[i]
                        .links
                        .iter()
                        .find(|l| l.at_worker == t.link && l.up)
                        .copied()
                    else {
                        continue;
                    };
                    let now = self.now;
                    for f in frames(&t) {
                        if f.kind() == MessageKind::AttrDelta {
                            self.workers[i].deltas += 1;
                        }
                        self.d(l.dist).handle_frame(now, l.at_dist, f);
                    }
                }
                while let Some(a) = self.workers[i].core.poll_action() {
                    moved = true;
                    match a {
                        Action::Run {
                            link,
                            task,
                            input,
                            attempt,
                            ..
                        } => {
                            self.workers[i].runs.push((task, input.clone()));
                            self.workers[i].attempts.push(attempt);
                            self.workers[i].running.push(Running {
                                worker: i,
                                link,
                                task,
                                input,
                            });
                        }
                        Action::Abort { link, task } => {
                            let sw = &mut self.workers[i];
                            sw.running.retain(|r| r.task != task);
                            sw.aborted.push(task);
                            sw.core.task_aborted(self.now, link, task);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cores never went quiet");
    }

    /// Whether distributor `d` is alive (not killed).
    fn alive(&self, d: usize) -> bool {
        !self.killed.contains(&d)
    }

    fn deliver_from_dist(&mut self, d: usize, t: Transmit) {
        let now = self.now;
        let gw = self.gateways.iter().enumerate().find_map(|(g, gw)| {
            gw.links
                .iter()
                .find(|l| l.dist == d && l.at_dist == t.link)
                .map(|l| (g, *l))
        });
        if let Some((g, l)) = gw {
            self.d(d).handle_written(t.link, t.len);
            if !l.up || !self.gateways[g].alive {
                return;
            }
            for f in frames(&t) {
                self.gateways[g].heard.push(f.kind());
                if f.kind() == MessageKind::MemberReport {
                    let cause = f
                        .access::<allot_wire::MemberReport>()
                        .map(|r| match r.cause {
                            allot_wire::message::ArchivedDeltaCause::Change => {
                                allot_wire::DeltaCause::Change
                            }
                            allot_wire::message::ArchivedDeltaCause::Event => {
                                allot_wire::DeltaCause::Event
                            }
                            allot_wire::message::ArchivedDeltaCause::Periodic => {
                                allot_wire::DeltaCause::Periodic
                            }
                        })
                        .expect("a valid report");
                    self.gateways[g].reports.push(cause);
                }
                self.gateways[g].core.handle_frame(now, l.at_gw, f);
            }
            return;
        }
        let target = self.workers.iter().enumerate().find_map(|(i, w)| {
            w.links
                .iter()
                .find(|l| l.dist == d && l.at_dist == t.link)
                .map(|l| (i, *l))
        });
        if let Some((i, l)) = target {
            self.d(d).handle_written(t.link, t.len);
            if !l.up {
                return;
            }
            for f in frames(&t) {
                self.workers[i].core.handle_frame(now, l.at_worker, f);
            }
            return;
        }
        let stuck = {
            let c = self
                .clients
                .iter()
                .find(|c| c.dist == d && c.link == t.link)
                .expect("a transmit goes to a known link");
            c.stuck
        };
        if !stuck {
            self.d(d).handle_written(t.link, t.len);
        }
        let c = self
            .clients
            .iter_mut()
            .find(|c| c.dist == d && c.link == t.link)
            .expect("a transmit goes to a known link");
        if c.cut {
            return;
        }
        for f in frames(&t) {
            match f.kind() {
                MessageKind::TaskResult => {
                    let v = f.validate::<TaskResult>().expect("valid result");
                    let payload = v.payload();
                    c.results
                        .push((v.to_owned_message().expect("owned"), payload));
                }
                MessageKind::Error => {
                    let v = f.validate::<allot_wire::ErrorMsg>().expect("valid error");
                    let e = v.to_owned_message().expect("owned");
                    c.closed = Some((e.code, e.message));
                }
                MessageKind::JobAck => {
                    let v = f.validate::<JobAck>().expect("valid ack");
                    c.acks.push(v.to_owned_message().expect("owned"));
                }
                MessageKind::JobReply => {
                    let v = f.validate::<JobReply>().expect("valid reply");
                    c.replies.push(v.to_owned_message().expect("owned"));
                }
                MessageKind::StatusReply => {
                    let v = f
                        .validate::<allot_wire::StatusReply>()
                        .expect("valid status");
                    c.statuses.push(v.to_owned_message().expect("owned"));
                }
                MessageKind::WorkerControlReply => {
                    let v = f
                        .validate::<allot_wire::WorkerControlReply>()
                        .expect("valid control reply");
                    c.controls.push(v.to_owned_message().expect("owned"));
                }
                other => panic!("unexpected {other:?} to a client"),
            }
        }
        if let Some(code) = t.close {
            if let Some((c0, _)) = &c.closed {
                assert_eq!(*c0, code, "the close code is the error frame's");
            }
        }
    }

    /// The result client `c` got for its task `task_id`, if any.
    pub fn result(&self, c: usize, task_id: u64) -> Option<&TaskResult> {
        self.clients[c]
            .results
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.task_id == task_id)
    }

    /// Results client `c` got for `task_id` (exactly-one checks).
    pub fn results_for(&self, c: usize, task_id: u64) -> usize {
        self.clients[c]
            .results
            .iter()
            .filter(|(r, _)| r.task_id == task_id)
            .count()
    }
}

// ---------------------------------------------------------------- jobs

impl Sim {
    /// The journal of distributor `d` does `mode` with the batches it
    /// gets from now on.
    pub fn journal_mode(&mut self, d: usize, mode: JournalMode) {
        self.journals[d].mode = mode;
    }

    fn write_batch(&mut self, d: usize, b: JournalBatch) {
        let now = self.now;
        match self.journals[d].mode.clone() {
            JournalMode::Commit => {
                self.journals[d].committed.push(b.ops);
                self.d(d).journal_committed(now, b.seq, Ok(()));
            }
            JournalMode::Hold => self.journals[d].held.push(b),
            JournalMode::Fail(why) => self.d(d).journal_committed(now, b.seq, Err(why)),
        }
    }

    /// The held batch of distributor `d` is written; the next one is held
    /// again (as the mode says).
    pub fn write_held(&mut self, d: usize) {
        let now = self.now;
        for b in std::mem::take(&mut self.journals[d].held) {
            self.journals[d].committed.push(b.ops);
            self.d(d).journal_committed(now, b.seq, Ok(()));
        }
        self.settle();
    }

    /// The held batch of distributor `d` is written, and from now on
    /// every batch is written at once.
    pub fn release_journal(&mut self, d: usize) {
        self.journals[d].mode = JournalMode::Commit;
        self.write_held(d);
    }

    /// Writing the held batches of distributor `d` fails with `why`.
    pub fn fail_journal(&mut self, d: usize, why: &str) {
        let now = self.now;
        for b in std::mem::take(&mut self.journals[d].held) {
            self.d(d).journal_committed(now, b.seq, Err(why.to_owned()));
        }
        self.settle();
    }

    /// Client `c` sends `s` (its request number set here) without letting
    /// anything settle. Returns the request number.
    pub fn send_job(&mut self, c: usize, s: &JobSubmit, payload: &[u8]) -> u64 {
        let cl = &mut self.clients[c];
        let request = cl.next_request;
        cl.next_request += 1;
        let mut s = s.clone();
        s.request = request;
        let (d, link, now) = (cl.dist, cl.link, self.now);
        self.d(d).handle_frame(now, link, frame(&s, payload));
        request
    }

    /// Client `c` submits job `s` and everything settles. Returns the
    /// request number (see [`Sim::ack`]).
    pub fn submit_job(&mut self, c: usize, s: &JobSubmit, payload: &[u8]) -> u64 {
        let r = self.send_job(c, s, payload);
        self.settle();
        r
    }

    /// The ack client `c` got for its submit `request`, if any yet.
    pub fn ack(&self, c: usize, request: u64) -> Option<&JobAck> {
        self.clients[c].acks.iter().find(|a| a.request == request)
    }

    /// Submits `s`; the job's id once acknowledged (panics on a refusal
    /// or if no ack came: the journal writes at once here).
    pub fn job(&mut self, c: usize, s: &JobSubmit, payload: &[u8]) -> String {
        let r = self.submit_job(c, s, payload);
        let ack = self.ack(c, r).expect("an ack once the batch is written");
        assert!(ack.error.is_empty(), "refused: {}", ack.error);
        ack.job.clone()
    }

    /// Client `c` sends query `q` (its request number set here); returns
    /// the reply, which comes at once.
    pub fn query(&mut self, c: usize, q: JobQuery) -> JobReply {
        let cl = &mut self.clients[c];
        let request = cl.next_request;
        cl.next_request += 1;
        let mut q = q;
        q.request = request;
        let (d, link, now) = (cl.dist, cl.link, self.now);
        self.d(d).handle_frame(now, link, frame(&q, b""));
        self.settle();
        self.clients[c]
            .replies
            .iter()
            .find(|r| r.request == request)
            .cloned()
            .expect("the distributor answers a job query at once")
    }

    /// The summary of job `id`, as client `c` lists it.
    pub fn summary(&mut self, c: usize, id: &str) -> JobSummary {
        let r = self.query(c, job_query(JobOp::List, id));
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(r.jobs.len(), 1, "{:?}", r.jobs);
        r.jobs[0].clone()
    }

    /// Every task of job `id` (in `state`, if given) with its output,
    /// through every page.
    pub fn rows(&mut self, c: usize, id: &str, state: Option<JobTaskState>) -> Vec<JobTaskRow> {
        let mut rows = Vec::new();
        let mut from = 0;
        loop {
            let mut q = job_query(JobOp::Outputs, id);
            q.state = state;
            q.from = from;
            let r = self.query(c, q);
            assert!(r.error.is_empty(), "{}", r.error);
            rows.extend(r.tasks);
            match r.next {
                Some(n) => {
                    assert!(n > from, "a page moves on");
                    from = n;
                }
                None => return rows,
            }
        }
    }

    /// The row of task `index` of job `id`.
    pub fn row(&mut self, c: usize, id: &str, index: u64) -> JobTaskRow {
        let mut q = job_query(JobOp::Outputs, id);
        q.task = Some(index);
        let r = self.query(c, q);
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(r.tasks.len(), 1);
        r.tasks[0].clone()
    }

    /// Distributor 0 is killed and starts again from what its journal
    /// wrote (a batch held back is lost with it): a new core, restored
    /// from the replay the file would give, with the simulation's users
    /// and configuration. Its old links are gone (clients on them are
    /// [`DETACHED`]); the workers in `reconnect` register with it again.
    /// Returns the replay it started from.
    pub fn restart_distributor(&mut self, reconnect: &[usize]) -> Replay {
        self.kill_distributor(0);
        self.journals[0].held.clear();
        let replay = self.journals[0].replay();
        let mut core = self.new_core(self.cfg.clone());
        core.restore_jobs(self.now, replay.clone());
        self.dist = core;
        self.killed.retain(|k| *k != 0);
        for w in &mut self.workers {
            w.links.retain(|l| l.dist != 0);
        }
        for c in self.clients.iter_mut().filter(|c| c.dist == 0) {
            c.dist = DETACHED;
        }
        for g in &mut self.gateways {
            g.links.retain(|l| l.dist != 0);
        }
        for &w in reconnect {
            self.reconnect(w, 0);
            let l = *self.workers[w].links.last().expect("the new link");
            self.workers[w].at_dist = l.at_dist;
            self.workers[w].at_worker = l.at_worker;
            self.workers[w].connected = true;
        }
        self.settle();
        replay
    }
}

/// A job of `app` with `tasks`, one slot per task, request number 0 (the
/// harness numbers requests).
pub fn job_of(app: &str, tasks: JobTasks) -> JobSubmit {
    JobSubmit {
        request: 0,
        app: app.into(),
        demands: Demands {
            cores: 0,
            mem: 0,
            slots: 1,
        },
        require: String::new(),
        prefer: String::new(),
        user: String::new(),
        priority: 0,
        deadline_ms: 0,
        tasks,
    }
}

/// A job of `app` with tasks `first..=last`.
pub fn array(app: &str, first: u64, last: u64) -> JobSubmit {
    job_of(app, JobTasks::Array(IndexRange { first, last }))
}

/// A query `op` about job `id`, from offset 0, rows up to the largest page.
pub fn job_query(op: JobOp, id: &str) -> JobQuery {
    JobQuery {
        request: 0,
        op,
        job: id.into(),
        task: None,
        state: None,
        from: 0,
        limit: u32::MAX,
    }
}

/// A submit of `app` with task id and idempotency key `id`.
pub fn task(id: u64, app: &str) -> Submit {
    Submit::new(id, id, app)
}

/// The status of a result, for short asserts.
pub fn status(r: Option<&TaskResult>) -> Option<TaskStatus> {
    r.map(|r| r.status)
}
