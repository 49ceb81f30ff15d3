//! End-to-end regression bench: a gateway, a distributor and two workers
//! in this process (each on its own thread and current-thread runtime), and
//! a client keeping 256 `echo` tasks of 64 B in flight. One iteration is
//! 1000 tasks; criterion reports the time per 1000. `allot bench` is the
//! tool for figures against the transport baseline; this bench tracks
//! regressions of the same path from one commit to the next.

use std::time::Instant;

use allot::{LocalClient, LocalCluster, Task};
use allot_wire::TaskStatus;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const IN_FLIGHT: usize = 256;
const PER_ITER: u64 = 1000;

fn e2e(c: &mut Criterion) {
    let cluster = LocalCluster::builder()
        .distributor("dist")
        .worker("w1", |w| w.slots = 4096)
        .worker("w2", |w| w.slots = 4096)
        .gateway("gw")
        .client("bench")
        .start()
        .expect("cluster");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let client = local.block_on(&rt, async {
        LocalClient::connect(cluster.client_config("bench"))
            .await
            .expect("connect")
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
    cluster.stop();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
