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

use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use allot::{ClientConfig, LocalClient, RedirectPolicy, Task, WorkerConfig};
use allot_wire::{Role, TaskStatus};

/// Counts allocations of the whole process (every node thread included).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let scratch = support::Scratch::new(
        "steady",
        &[
            ("gw", Role::Gateway),
            ("dist", Role::Distributor),
            ("w1", Role::Worker),
            ("w2", Role::Worker),
            ("c", Role::Client),
        ],
    );
    let pki = scratch.pki.clone();
    let dist = scratch.distributor("dist");
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|n| {
            let mut cfg = WorkerConfig::new(n, pki.clone(), vec![dist.addr]);
            cfg.slots = 4096;
            allot::worker::spawn(cfg, Vec::new()).expect("worker")
        })
        .collect();
    let gw = scratch.gateway(
        "gw",
        vec![dist.addr],
        RedirectPolicy::Rendezvous,
        Duration::from_secs(60),
    );

    let (rt, local) = support::local_runtime();
    let per_task = local.block_on(&rt, async {
        let client = LocalClient::connect(ClientConfig::new("c", pki.clone(), vec![gw.addr]))
            .await
            .expect("connect");
        for _ in 0..200 {
            let ok = client
                .submit(Task::new("echo", "warm"))
                .await
                .is_ok_and(|o| o.status == TaskStatus::Ok);
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let task = Rc::new(Task::new("echo", vec![b'x'; 64]));
        // Warm-up: buffers, maps and caches grow to their working size.
        run(&client, &task, 20_000).await;
        const N: u64 = 20_000;
        let before = ALLOCS.load(Relaxed);
        run(&client, &task, N).await;
        let allocs = ALLOCS.load(Relaxed) - before;
        client.close();
        allocs as f64 / N as f64
    });
    drop(workers);
    gw.stop();
    dist.stop();
    println!("allocations per task in steady state: {per_task:.3}");
    assert!(
        per_task < 1.0,
        "{per_task:.3} allocations per task: something on the path allocates per frame"
    );
}
