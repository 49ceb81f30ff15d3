//! A distributor that is stopped drains first: the gateway hears it at
//! once and sends new clients to the other member, a client already on it
//! has its new tasks refused (`Draining`) and moves to the other member,
//! and the task it was running there still ends there, before the member
//! stops. The nodes run in this process on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot::distributor::{self, DistributorConfig};
use allot::gateway::{self, query_status, GatewayConfig};
use allot::local_cluster::{wait_for_workers, TempPki};
use allot::node_thread::NodeHandle;
use allot::worker::{self, WorkerConfig};
use allot::{apps, Client, ClientConfig, Role, Task, TaskStatus};
use allot_wire::{ReportMode, WorkerState};
use bytes::Bytes;

mod support;

/// The bound on anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// How long the `slow` app takes.
const SLOW: Duration = Duration::from_millis(1500);

struct Nodes {
    pki: TempPki,
}

impl Nodes {
    fn pki(&self) -> PathBuf {
        self.pki.pki().to_path_buf()
    }

    fn distributor(&self, name: &str, gw: SocketAddr) -> NodeHandle {
        let mut cfg = DistributorConfig::new(
            name,
            support::loopback(),
            self.pki(),
            self.pki.dir().join(format!("data-{name}")),
        );
        cfg.set_name = "main".into();
        cfg.gateways = vec![gw.into()];
        cfg.report_period = Duration::from_millis(100);
        cfg.drain_timeout = PATIENCE;
        distributor::spawn(cfg).expect("distributor")
    }

    /// Waits until the gateway's record satisfies `ok`.
    fn until_record(
        &self,
        gw: SocketAddr,
        what: &str,
        ok: impl Fn(&[(String, WorkerState)]) -> bool,
    ) {
        let (rt, local) = support::local_runtime();
        let t0 = Instant::now();
        loop {
            let r = local.block_on(&rt, query_status(&self.pki(), "app", gw));
            if let Ok(r) = r {
                let members: Vec<(String, WorkerState)> =
                    r.members.into_iter().map(|m| (m.name, m.state)).collect();
                if ok(&members) {
                    return;
                }
            }
            assert!(t0.elapsed() < PATIENCE, "the gateway never showed {what}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

#[test]
fn a_stopped_distributor_drains_and_its_client_moves_to_the_other_member() {
    let nodes = Nodes {
        pki: TempPki::create(&[
            ("gw", Role::Gateway),
            ("dist-1", Role::Distributor),
            ("dist-2", Role::Distributor),
            ("w", Role::Worker),
            ("app", Role::Client),
        ])
        .expect("pki"),
    };
    let gw = gateway::spawn(GatewayConfig::new(
        "gw",
        support::loopback(),
        nodes.pki(),
        Vec::new(),
    ))
    .expect("gateway");
    let d1 = nodes.distributor("dist-1", gw.addr);
    let d2 = nodes.distributor("dist-2", gw.addr);
    let slow = apps::handler(|input: Bytes| async move {
        tokio::time::sleep(SLOW).await;
        Ok(input)
    });
    let mut wcfg = WorkerConfig::new("w", nodes.pki(), vec![d1.addr, d2.addr]);
    wcfg.mode = ReportMode::Broadcast;
    wcfg.apps = vec!["echo".into()];
    wcfg.slots = 8;
    let _w = worker::spawn(wcfg, vec![("slow".into(), slow)]).expect("worker");
    {
        let cfg = ClientConfig::new("app", nodes.pki(), Vec::new());
        let (rt, local) = support::local_runtime();
        for d in [d1.addr, d2.addr] {
            local
                .block_on(&rt, wait_for_workers(&cfg, d, 1, PATIENCE))
                .expect("the worker is up");
        }
    }
    nodes.until_record(gw.addr, "both members up", |m| {
        m.iter().filter(|(_, s)| *s == WorkerState::Up).count() == 2
    });

    let client = Client::connect_blocking(ClientConfig::new("app", nodes.pki(), vec![gw.addr]))
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let first = rt
        .block_on(client.distributor())
        .expect("asked")
        .expect("connected");
    let (mine, other, mine_name, other_name) = if first == d1.addr {
        (d1, d2, "dist-1", "dist-2")
    } else {
        (d2, d1, "dist-2", "dist-1")
    };
    let running = client
        .start_blocking(Task::new("slow", "in flight"))
        .expect("started");
    // Let it reach the worker, then stop its distributor (which drains).
    std::thread::sleep(Duration::from_millis(300));
    let stopping = std::thread::spawn(move || {
        let t0 = Instant::now();
        mine.stop();
        t0.elapsed()
    });
    nodes.until_record(gw.addr, "the member draining", |m| {
        m.iter()
            .any(|(n, s)| n == mine_name && *s == WorkerState::Draining)
    });
    // The client's next tasks are refused there and go to the other member.
    for i in 0..5 {
        let o = client
            .submit_blocking(Task::new("echo", format!("new {i}")))
            .expect("placed elsewhere");
        assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
        assert_eq!(&*o.distributor, other_name, "task {i}");
    }
    // A new client is redirected to the other member only.
    let fresh = Client::connect_blocking(ClientConfig::new("app", nodes.pki(), vec![gw.addr]))
        .expect("new client");
    assert_eq!(
        rt.block_on(fresh.distributor()).expect("asked"),
        Some(other.addr)
    );
    // The task in flight ends on the draining member, once.
    let o = running.wait_blocking().expect("the task in flight ends");
    assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
    assert_eq!(&*o.distributor, mine_name, "it ended where it ran");
    assert_eq!(o.output, Bytes::from_static(b"in flight"));
    // Drained, the member stops, well before the drain timeout.
    let took = stopping.join().expect("stopped");
    assert!(took < PATIENCE, "stopping took {took:?}");
    nodes.until_record(gw.addr, "the member down", |m| {
        m.iter()
            .any(|(n, s)| n == mine_name && *s == WorkerState::Down)
    });
    let o = client
        .submit_blocking(Task::new("echo", "after"))
        .expect("placed");
    assert_eq!(&*o.distributor, other_name);
    client.close();
    fresh.close();
}
