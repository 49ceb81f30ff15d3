//! `LocalCluster` returns once every worker is up at each distributor it
//! reports to, so the first task runs without a retry, and once every
//! distributor is registered with the gateway (which job clients ask);
//! dropping it removes its directory.

use allot::{LocalClient, LocalCluster, Task};
use allot_wire::{ReportMode, TaskStatus, WorkerState};

mod support;

#[test]
fn a_started_cluster_is_up_at_every_distributor_and_gone_when_dropped() {
    let cluster = LocalCluster::builder()
        .distributor("d1")
        .distributor("d2")
        .workers(2, |_, w| w.mode = ReportMode::Broadcast)
        // Registered: reports to the first distributor of its list only.
        .worker("solo", |w| w.apps = vec!["sha256".into()])
        .gateway("gw")
        .client("app")
        .start()
        .expect("cluster");
    let dir = cluster.dir().to_path_buf();
    assert!(cluster.pki().starts_with(&dir) && dir.exists());
    assert_eq!(cluster.gateways().len(), 1);
    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        for (addr, want) in cluster.distributors().iter().zip([3, 2]) {
            let c = LocalClient::connect_distributor(cluster.client_config("app"), *addr)
                .await
                .expect("connect");
            let s = c.status().await.expect("status");
            let up = s
                .workers
                .iter()
                .filter(|w| w.state == WorkerState::Up)
                .count();
            assert_eq!(up, want, "{}: {:?}", s.distributor, s.workers);
            c.close();
        }
        // Through the gateway (to whichever member it gives this client),
        // and `sha256`, which only the solo worker behind d1 runs, at d1.
        let via_gateway = LocalClient::connect(cluster.client_config("app"))
            .await
            .expect("connect");
        let at_d1 = LocalClient::connect_distributor(
            cluster.client_config("app"),
            cluster.distributors()[0],
        )
        .await
        .expect("connect");
        for (client, app) in [(&via_gateway, "echo"), (&at_d1, "sha256")] {
            let o = client.submit(Task::new(app, "hi")).await.expect("submit");
            assert_eq!(o.status, TaskStatus::Ok, "{app}: {}", o.message);
        }
        via_gateway.close();
        at_d1.close();
        // The gateway knows both members by name, as a job client asks.
        let record = allot::gateway::query_status(cluster.pki(), "app", cluster.gateways()[0])
            .await
            .expect("gateway status");
        let mut named: Vec<(&str, WorkerState)> = record
            .members
            .iter()
            .filter(|m| !m.name.is_empty())
            .map(|m| (m.name.as_str(), m.state))
            .collect();
        named.sort_by_key(|(n, _)| *n);
        assert_eq!(named, [("d1", WorkerState::Up), ("d2", WorkerState::Up)]);
    });
    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
