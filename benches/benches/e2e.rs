//! End-to-end regression bench: a gateway, a distributor and two workers
//! in this process (each on its own thread and current-thread runtime), and
//! a client keeping 256 `echo` tasks of 64 B in flight. One iteration is
//! 1000 tasks; criterion reports the time per 1000. `allot bench` is the
//! tool for figures against the transport baseline; this bench tracks
//! regressions of the same path from one commit to the next.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use allot::{
    ClientConfig, DistributorConfig, GatewayConfig, LocalClient, RedirectPolicy, Task, WorkerConfig,
};
use allot_wire::{Role, TaskStatus};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const IN_FLIGHT: usize = 256;
const PER_ITER: u64 = 1000;

fn e2e(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("allot-e2e-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    allot::pki::create_cluster(
        &pki,
        &[
            ("gw", Role::Gateway),
            ("dist", Role::Distributor),
            ("w1", Role::Worker),
            ("w2", Role::Worker),
            ("bench", Role::Client),
        ],
    )
    .expect("pki");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dist = allot::distributor::spawn(DistributorConfig::new(
        "dist",
        any,
        pki.clone(),
        dir.join("data"),
    ))
    .expect("distributor");
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|n| {
            let mut cfg = WorkerConfig::new(n, pki.clone(), vec![dist.addr]);
            cfg.slots = 4096;
            allot::worker::spawn(cfg, Vec::new()).expect("worker")
        })
        .collect();
    let mut gw_cfg = GatewayConfig::new(
        "gw",
        any,
        pki.clone(),
        vec![("main".into(), vec![dist.addr])],
    );
    gw_cfg.policy = RedirectPolicy::Rendezvous;
    gw_cfg.ttl = Duration::from_secs(60);
    let gw = allot::gateway::spawn(gw_cfg).expect("gateway");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let client = local.block_on(&rt, async {
        let cfg = ClientConfig::new("bench", pki.clone(), vec![gw.addr]);
        let client = LocalClient::connect(cfg).await.expect("connect");
        // Wait for the workers to register.
        for _ in 0..200 {
            if client
                .submit(Task::new("echo", "warm"))
                .await
                .map(|o| o.status == TaskStatus::Ok)
                .unwrap_or(false)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
    });
    // Shared: a submission clones a reference, not the task.
    let task = std::rc::Rc::new(Task::new("echo", vec![b'x'; 64]));

    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Elements(PER_ITER));
    g.bench_function("echo_64B_256_in_flight_per_1000", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let total = iters * PER_ITER;
                let t0 = Instant::now();
                let mut sent = 0u64;
                while sent < total.min(IN_FLIGHT as u64) {
                    client.submit_to(task.clone(), &tx).expect("submit");
                    sent += 1;
                }
                let mut done = 0u64;
                while done < total {
                    let (_, r) = rx.recv().await.expect("result");
                    assert_eq!(r.expect("task").status, TaskStatus::Ok);
                    done += 1;
                    if sent < total {
                        client.submit_to(task.clone(), &tx).expect("submit");
                        sent += 1;
                    }
                }
                t0.elapsed()
            })
        })
    });
    g.finish();
    client.close();
    drop(workers);
    gw.stop();
    dist.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, e2e);
criterion_main!(benches);
