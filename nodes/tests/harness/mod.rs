//! A deterministic harness for the node cores: one distributor core,
//! worker cores and clients, wired in memory, on a fake clock. Nothing
//! touches a socket or sleeps; every frame goes through the real encoder
//! and decoder, so what a test sees is what the wire would carry.
//! (quinn-proto's `tests/util.rs` `Pair` is the model.)

#![allow(dead_code)]

use std::time::{Duration, Instant};

use allot::apps::{AppOutcome, AppTable};
use allot::distributor::{Core, Peer};
use allot::link::{LinkId, Transmit};
use allot::worker::{Action, WorkerCore};
use allot::{DistributorConfig, WorkerConfig};
use allot_wire::{
    Cancel, ErrorCode, Frame, FrameDecoder, FrameEncoder, MessageKind, Role, Submit, TaskResult,
    TaskStatus, WireMessage, DEFAULT_MAX_FRAME,
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

pub struct SimWorker {
    pub core: WorkerCore,
    /// The link as the distributor names it.
    pub at_dist: LinkId,
    /// The link as the worker names it.
    pub at_worker: LinkId,
    /// Tasks it runs now (apps that take time).
    pub running: Vec<Running>,
    /// Every `Run` it was asked for, in order: (task id, input).
    pub runs: Vec<(u64, Bytes)>,
    /// Tasks it was told to stop.
    pub aborted: Vec<u64>,
    /// Whether its link is up (frames are delivered).
    pub connected: bool,
    /// Attribute deltas it sent.
    pub deltas: usize,
}

pub struct SimClient {
    pub link: LinkId,
    pub results: Vec<(TaskResult, Bytes)>,
    /// `Error` frames and the close code, if the distributor closed the link.
    pub closed: Option<(ErrorCode, String)>,
    /// When set, the client reads nothing: its bytes are never reported
    /// written, as with a peer that stopped reading.
    pub stuck: bool,
}

pub struct Sim {
    pub now: Instant,
    pub dist: Core,
    pub workers: Vec<SimWorker>,
    pub clients: Vec<SimClient>,
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
        Sim {
            now,
            dist: Core::new(cfg, Vec::new(), now).expect("core"),
            workers: Vec::new(),
            clients: Vec::new(),
        }
    }

    /// Adds a worker running `apps` with `slots`, registers it and lets
    /// the registration settle. Returns its index.
    pub fn worker(&mut self, name: &str, apps: &[&str], slots: u32) -> usize {
        let mut cfg = WorkerConfig::new(
            name,
            "unused-pki".into(),
            vec!["127.0.0.1:1".parse().expect("addr")],
        );
        cfg.slots = slots;
        cfg.apps = apps.iter().map(|a| a.to_string()).collect();
        let table = AppTable::from_config(&cfg.apps, &[]).expect("apps");
        let mut core = WorkerCore::new(cfg, table, 1, self.now);
        let at_worker = core.link_opened(self.now);
        let at_dist = self.dist.link_opened(
            self.now,
            Peer {
                role: Role::Worker,
                name: name.into(),
                attrs: Vec::new(),
            },
        );
        self.workers.push(SimWorker {
            core,
            at_dist,
            at_worker,
            running: Vec::new(),
            runs: Vec::new(),
            aborted: Vec::new(),
            connected: true,
            deltas: 0,
        });
        self.settle();
        self.workers.len() - 1
    }

    /// Adds a client link whose certificate names `name`.
    pub fn client(&mut self, name: &str) -> usize {
        let link = self.dist.link_opened(
            self.now,
            Peer {
                role: Role::Client,
                name: name.into(),
                attrs: Vec::new(),
            },
        );
        self.clients.push(SimClient {
            link,
            results: Vec::new(),
            closed: None,
            stuck: false,
        });
        self.clients.len() - 1
    }

    /// Client `c` submits `s` with `payload`, and everything settles.
    pub fn submit(&mut self, c: usize, s: &Submit, payload: &[u8]) {
        let link = self.clients[c].link;
        self.dist.handle_frame(self.now, link, frame(s, payload));
        self.settle();
    }

    /// Client `c` cancels its task `task_id`.
    pub fn cancel(&mut self, c: usize, task_id: u64) {
        let link = self.clients[c].link;
        self.dist
            .handle_frame(self.now, link, frame(&Cancel { task_id }, b""));
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
        sw.core.link_closed(now, sw.at_worker);
        let at_dist = sw.at_dist;
        self.dist.link_closed(now, at_dist);
        self.settle();
    }

    /// Advances the clock by `d` in steps of at most 10 ms, giving every
    /// core its timeouts on the way, as the shells' timers would.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let step = (end - self.now).min(Duration::from_millis(10));
            self.now += step;
            self.dist.handle_timeout(self.now);
            for w in &mut self.workers {
                if w.connected {
                    w.core.handle_timeout(self.now);
                }
            }
            self.settle();
        }
    }

    /// Like [`Sim::advance`], but worker `silent` sends nothing (a worker
    /// whose process hangs).
    pub fn advance_silent(&mut self, d: Duration, silent: usize) {
        let end = self.now + d;
        while self.now < end {
            let step = (end - self.now).min(Duration::from_millis(10));
            self.now += step;
            self.dist.handle_timeout(self.now);
            for (i, w) in self.workers.iter_mut().enumerate() {
                if w.connected && i != silent {
                    w.core.handle_timeout(self.now);
                }
            }
            self.settle();
        }
    }

    /// Delivers every frame in flight until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self.dist.poll_transmit() {
                moved = true;
                self.deliver_from_dist(t);
            }
            for i in 0..self.workers.len() {
                while let Some(t) = self.workers[i].core.poll_transmit() {
                    moved = true;
                    self.workers[i].core.handle_written(t.link, t.len);
                    if !self.workers[i].connected {
                        continue;
                    }
                    let at_dist = self.workers[i].at_dist;
                    for f in frames(&t) {
                        if f.kind() == MessageKind::AttrDelta {
                            self.workers[i].deltas += 1;
                        }
                        self.dist.handle_frame(self.now, at_dist, f);
                    }
                }
                while let Some(a) = self.workers[i].core.poll_action() {
                    moved = true;
                    match a {
                        Action::Run {
                            link, task, input, ..
                        } => {
                            self.workers[i].runs.push((task, input.clone()));
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

    fn deliver_from_dist(&mut self, t: Transmit) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.at_dist == t.link) {
            self.dist.handle_written(t.link, t.len);
            if !w.connected {
                return;
            }
            for f in frames(&t) {
                w.core.handle_frame(self.now, w.at_worker, f);
            }
            return;
        }
        let c = self
            .clients
            .iter_mut()
            .find(|c| c.link == t.link)
            .expect("a transmit goes to a known link");
        if !c.stuck {
            self.dist.handle_written(t.link, t.len);
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

/// A submit of `app` with task id and idempotency key `id`.
pub fn task(id: u64, app: &str) -> Submit {
    Submit::new(id, id, app)
}

/// The status of a result, for short asserts.
pub fn status(r: Option<&TaskResult>) -> Option<TaskStatus> {
    r.map(|r| r.status)
}
