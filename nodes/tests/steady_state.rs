//! Steady state allocates (almost) nothing per task: a gateway, a
//! distributor, two workers and a client in this process, 256 `echo` tasks
//! in flight, and every heap allocation of the process counted while 20,000
//! tasks go through after a warm-up.
//!
//! What is left is per packet, not per task: quinn's own bookkeeping of
//! sent and received packets and the send batches of the outboxes. A task
//! costs four frames; if any of the four hops allocated per frame (a name
//! copied into a message, a boxed future, a channel node), the count would
//! be at least one per task.

use std::rc::Rc;

use allot::testing::CountingAlloc;
use allot::{LocalClient, LocalCluster, Task};
use allot_wire::TaskStatus;

/// Counts allocations of the whole process (every node thread included).
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

mod support;

const IN_FLIGHT: u64 = 256;

/// Runs `n` tasks with [`IN_FLIGHT`] in flight; panics on any failure.
async fn run(client: &LocalClient, task: &Rc<Task>, n: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sent = 0;
    while sent < n.min(IN_FLIGHT) {
        client.submit_to(task.clone(), &tx).expect("submit");
        sent += 1;
    }
    for _ in 0..n {
        let (_, r) = rx.recv().await.expect("result");
        assert_eq!(r.expect("task").status, TaskStatus::Ok);
        if sent < n {
            client.submit_to(task.clone(), &tx).expect("submit");
            sent += 1;
        }
    }
}

#[test]
fn a_task_costs_less_than_one_allocation_in_steady_state() {
    let cluster = LocalCluster::builder()
        .distributor("dist")
        .worker("w1", |w| w.slots = 4096)
        .worker("w2", |w| w.slots = 4096)
        .gateway("gw")
        .client("c")
        .start()
        .expect("cluster");

    let (rt, local) = support::local_runtime();
    let per_task = local.block_on(&rt, async {
        let client = LocalClient::connect(cluster.client_config("c"))
            .await
            .expect("connect");
        let task = Rc::new(Task::new("echo", vec![b'x'; 64]));
        // Warm-up: buffers, maps and caches grow to their working size.
        run(&client, &task, 20_000).await;
        const N: u64 = 20_000;
        let before = GLOBAL.allocations();
        run(&client, &task, N).await;
        let allocs = GLOBAL.allocations() - before;
        client.close();
        allocs as f64 / N as f64
    });
    cluster.stop();
    println!("allocations per task in steady state: {per_task:.3}");
    assert!(
        per_task < 1.0,
        "{per_task:.3} allocations per task: something on the path allocates per frame"
    );
}
