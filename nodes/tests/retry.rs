//! A client rides out a short outage: when no distributor (or no gateway)
//! answers, it searches again with backoff for its `retry_for` window,
//! keeping its tasks waiting, and fails them with an error naming what it
//! tried only once the window has passed.
//!
//! The nodes run in this process on fixed loopback ports, so that a
//! distributor can be stopped and started again on the same address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot::distributor::{self, DistributorConfig};
use allot::gateway::{self, GatewayConfig};
use allot::local_cluster::{wait_for_workers, TempPki};
use allot::node_thread::NodeHandle;
use allot::worker::{self, WorkerConfig};
use allot::{apps, Client, ClientConfig, ClientError, Role, Submission, Task, TaskStatus};
use bytes::Bytes;

mod support;

/// How long a failed search waits for one address in these tests: a
/// stopped distributor's port answers nothing, and each search should
/// fail quickly so that the window holds several.
const CONNECT: Duration = Duration::from_millis(200);

/// The bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// A loopback address nothing listens on (yet): the port of a socket
/// bound and closed again.
fn free_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind(support::loopback()).expect("bind");
    s.local_addr().expect("addr")
}

/// Certificates for one distributor, one worker, one gateway and the
/// client `app`, and the apps the worker runs: `slow` (200 ms) records
/// each input it starts on.
struct Nodes {
    pki: TempPki,
    started: Arc<Mutex<Vec<Bytes>>>,
}

impl Nodes {
    fn new() -> Nodes {
        let pki = TempPki::create(&[
            ("dist", Role::Distributor),
            ("w", Role::Worker),
            ("gw", Role::Gateway),
            ("app", Role::Client),
        ])
        .expect("pki");
        Nodes {
            pki,
            started: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn pki(&self) -> PathBuf {
        self.pki.pki().to_path_buf()
    }

    fn data_dir(&self) -> PathBuf {
        self.pki.dir().join("data-dist")
    }

    /// A distributor on `addr`, always with the same data directory. Its
    /// startup grace is long, so that tasks resubmitted to it before the
    /// worker is back wait for the worker instead of failing.
    fn distributor(&self, addr: SocketAddr) -> NodeHandle {
        let mut cfg = DistributorConfig::new("dist", addr, self.pki(), self.data_dir());
        cfg.set_name = "main".into();
        cfg.startup_grace = PATIENCE;
        distributor::spawn(cfg).expect("distributor")
    }

    /// The worker, joining `addr` (it reconnects on its own after a
    /// restart).
    fn worker(&self, addr: SocketAddr) -> NodeHandle {
        let started = self.started.clone();
        let slow = apps::handler(move |input: Bytes| {
            started.lock().expect("lock").push(input.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(input)
            }
        });
        let cfg = WorkerConfig::new("w", self.pki(), vec![addr]);
        worker::spawn(cfg, vec![("slow".into(), slow)]).expect("worker")
    }

    fn gateway(&self, member: SocketAddr) -> NodeHandle {
        gateway::spawn(GatewayConfig::new(
            "gw",
            support::loopback(),
            self.pki(),
            vec![("main".into(), vec![member])],
        ))
        .expect("gateway")
    }

    /// Waits until the worker is up at the distributor on `addr`.
    fn until_worker_up(&self, addr: SocketAddr) {
        let cfg = ClientConfig::new("app", self.pki(), Vec::new());
        let (rt, local) = support::local_runtime();
        local
            .block_on(&rt, wait_for_workers(&cfg, addr, 1, PATIENCE))
            .expect("the worker is up");
    }

    fn client_config(&self, gateways: Vec<SocketAddr>, retry_for: Duration) -> ClientConfig {
        ClientConfig::new("app", self.pki(), gateways)
            .with_connect_timeout(CONNECT)
            .with_retry_for(retry_for)
    }

    fn started(&self, input: &[u8]) -> bool {
        self.started
            .lock()
            .expect("lock")
            .iter()
            .any(|b| b.as_ref() == input)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits (up to [`PATIENCE`]) until `done` holds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !done().await {
        assert!(t.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the client has noticed that its distributor is gone.
async fn until_disconnected(client: &Client) {
    until("the client notices the lost distributor", async || {
        client.distributor().await.expect("client").is_none()
    })
    .await;
}

async fn outcome(s: Submission) -> Result<allot::Outcome, ClientError> {
    tokio::time::timeout(PATIENCE, s)
        .await
        .expect("an outcome in time")
}

/// The error's text, checked to name every address in `addrs`.
fn names_all(e: &ClientError, addrs: &[SocketAddr]) -> String {
    let shown = e.to_string();
    for a in addrs {
        assert!(shown.contains(&a.to_string()), "{a} not named: {shown}");
    }
    shown
}

#[test]
fn a_distributor_back_on_its_address_within_the_window_loses_no_task() {
    let nodes = Nodes::new();
    let addr = free_port();
    let dist = nodes.distributor(addr);
    let w = nodes.worker(addr);
    nodes.until_worker_up(addr);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect_distributor(
            nodes.client_config(Vec::new(), PATIENCE),
            addr,
        ))
        .expect("connect");
    let task = |i: usize| Task::new("slow", format!("task-{i}"));

    // Tasks in flight, some of them running, when the distributor goes.
    let before = rt
        .block_on(client.start_many((0..8).map(task)))
        .expect("start");
    rt.block_on(until("a task runs", async || nodes.started(b"task-0")));
    dist.stop();
    rt.block_on(until_disconnected(&client));

    // Tasks submitted while it is gone wait with them; a cancelled one
    // ends at once, a dropped one is not sent once it is back.
    let during = rt
        .block_on(client.start_many((8..16).map(task)))
        .expect("start");
    let cancelled = rt
        .block_on(client.start(Task::new("slow", "cancelled")))
        .expect("start");
    let dropped = rt
        .block_on(client.start(Task::new("slow", "dropped")))
        .expect("start");
    let t = Instant::now();
    rt.block_on(client.cancel(cancelled.id())).expect("cancel");
    let o = rt.block_on(outcome(cancelled)).expect("an outcome");
    assert_eq!(o.status, TaskStatus::Cancelled, "{}", o.message);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(dropped);

    // The outage lasts several failed searches (not a synchronisation:
    // the length of the gap).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rt.block_on(client.distributor()).expect("client"), None);
    let dist = nodes.distributor(addr);

    for (i, s) in before.into_iter().chain(during).enumerate() {
        let o = rt
            .block_on(outcome(s))
            .unwrap_or_else(|e| panic!("task-{i} failed: {e}"));
        assert_eq!(o.status, TaskStatus::Ok, "task-{i}: {}", o.message);
        assert_eq!(o.output, format!("task-{i}").as_bytes());
    }
    assert_eq!(
        rt.block_on(client.distributor()).expect("client"),
        Some(addr)
    );
    assert!(!nodes.started(b"dropped"), "a dropped task was sent again");
    assert!(
        !nodes.started(b"cancelled"),
        "a cancelled task was sent again"
    );
    client.close();
    drop(w);
    drop(dist);
}

#[test]
fn with_no_distributor_a_search_fails_after_the_window_naming_it() {
    let nodes = Nodes::new();
    let window = Duration::from_millis(1500);
    let rt = runtime();

    // At connect time: nothing listens there at all.
    let nobody = free_port();
    let t = Instant::now();
    let e = rt
        .block_on(Client::connect_distributor(
            nodes.client_config(Vec::new(), window),
            nobody,
        ))
        .expect_err("nothing answers");
    let took = t.elapsed();
    assert!(took >= window, "gave up after {took:?}, before the window");
    assert!(took < window + CONNECT + Duration::from_secs(2), "{took:?}");
    let shown = names_all(&e, &[nobody]);
    assert!(shown.contains("no distributor answered"), "{shown}");
    assert!(shown.contains("retried for"), "{shown}");
    let retried = e.attempts().and_then(|a| a.retried()).expect("retried");
    assert!(
        retried.after >= window && retried.searches > 1,
        "{retried:?}"
    );

    // A task in flight when the distributor goes for good fails once the
    // window has passed, with the same kind of error.
    let addr = free_port();
    let dist = nodes.distributor(addr);
    let w = nodes.worker(addr);
    nodes.until_worker_up(addr);
    let client = rt
        .block_on(Client::connect_distributor(
            nodes.client_config(Vec::new(), window),
            addr,
        ))
        .expect("connect");
    let s = rt
        .block_on(client.start(Task::new("slow", "orphan")))
        .expect("start");
    rt.block_on(until("the task runs", async || nodes.started(b"orphan")));
    // From before the stop: the client may see the connection close
    // before `stop` returns.
    let t = Instant::now();
    dist.stop();
    let e = rt.block_on(outcome(s)).expect_err("no distributor");
    let took = t.elapsed();
    assert!(took >= window, "gave up after {took:?}, before the window");
    assert!(took < window + CONNECT + Duration::from_secs(2), "{took:?}");
    let shown = names_all(&e, &[addr]);
    assert!(shown.contains("retried for"), "{shown}");
    client.close();
    drop(w);
}

#[test]
fn with_no_window_a_failed_search_fails_at_once() {
    let nodes = Nodes::new();
    let rt = runtime();
    let nobody = free_port();
    let t = Instant::now();
    let e = rt
        .block_on(Client::connect_distributor(
            nodes.client_config(Vec::new(), Duration::ZERO),
            nobody,
        ))
        .expect_err("nothing answers");
    assert!(
        t.elapsed() < CONNECT + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    let shown = names_all(&e, &[nobody]);
    assert!(!shown.contains("retried"), "{shown}");
    let tried = e.attempts().expect("a failed search");
    assert_eq!(tried.retried(), None);
    assert_eq!(tried.iter().count(), 1);

    // A task in flight when its distributor goes: one search, then the
    // error.
    let addr = free_port();
    let dist = nodes.distributor(addr);
    let w = nodes.worker(addr);
    nodes.until_worker_up(addr);
    let client = rt
        .block_on(Client::connect_distributor(
            nodes.client_config(Vec::new(), Duration::ZERO),
            addr,
        ))
        .expect("connect");
    let s = rt
        .block_on(client.start(Task::new("slow", "orphan")))
        .expect("start");
    rt.block_on(until("the task runs", async || nodes.started(b"orphan")));
    let t = Instant::now();
    dist.stop();
    let e = rt.block_on(outcome(s)).expect_err("no distributor");
    assert!(
        t.elapsed() < CONNECT + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    names_all(&e, &[addr]);
    client.close();
    drop(w);
}

#[test]
fn a_gateway_with_no_live_member_is_asked_again_until_one_is_up() {
    let nodes = Nodes::new();
    let member = free_port();
    let gw = nodes.gateway(member);
    let gw_addr = gw.addr;
    let rt = runtime();

    // Until the gateway has seen that its only member is down, it sends
    // clients there anyway; wait for the refusal itself.
    rt.block_on(until("the gateway refuses", async || {
        let cfg = nodes.client_config(vec![gw_addr], Duration::ZERO);
        match Client::connect(cfg).await {
            Ok(c) => {
                c.close();
                false
            }
            Err(e) => e
                .to_string()
                .contains("no distributor set has a live member"),
        }
    }));

    // A client that starts now is refused, asks again, and gets through
    // once the member is up (and the gateway has seen it).
    let connecting = rt.spawn(Client::connect(
        nodes.client_config(vec![gw_addr], PATIENCE),
    ));
    // The member stays down a little longer (the length of the outage).
    std::thread::sleep(Duration::from_millis(300));
    assert!(!connecting.is_finished(), "the client gave up at once");
    let dist = nodes.distributor(member);
    let w = nodes.worker(member);
    let client = rt
        .block_on(async { tokio::time::timeout(PATIENCE, connecting).await })
        .expect("connected in time")
        .expect("the connect task")
        .expect("connected once the member is up");
    let o = rt
        .block_on(async {
            let s = client.start(Task::new("slow", "through")).await?;
            outcome(s).await
        })
        .expect("an outcome");
    assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
    assert_eq!(&*o.gateway, gw_addr.to_string());
    client.close();
    drop(gw);
    drop(w);
    drop(dist);
}
