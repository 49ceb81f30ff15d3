//! A client that loses its connection and resubmits a running task to the
//! same distributor gets the one result of the one run, on its new stream.
//! (The distributor keeps its key index only once a client comes back: see
//! `nodes/src/resubmit.rs`.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allot::{apps, conn, transport, LocalCluster};
use allot_wire::{ReportMode, Role, Submit, TaskResult, TaskStatus};
use bytes::Bytes;

mod support;

/// The next `TaskResult` on `stream`: (task id, status, worker).
async fn result(stream: &mut conn::Stream) -> (u64, TaskStatus, String) {
    let frame = tokio::time::timeout(Duration::from_secs(10), stream.reader.next())
        .await
        .expect("a result within 10 s")
        .expect("a frame")
        .expect("the stream is open");
    let v = frame.validate::<TaskResult>().expect("a TaskResult");
    let r = v.to_owned_message().expect("owned");
    (r.task_id, r.status, r.worker)
}

/// A distributor and one worker with `slots` slots, whose app `slow`
/// counts its runs in `runs` and takes 400 ms.
struct Cluster {
    nodes: LocalCluster,
    runs: Arc<AtomicU32>,
}

impl Cluster {
    fn start(slots: u32) -> Cluster {
        let runs = Arc::new(AtomicU32::new(0));
        let slow = {
            let runs = runs.clone();
            apps::handler(move |input: Bytes| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok(input)
                }
            })
        };
        let nodes = LocalCluster::builder()
            .distributor("dist")
            .worker("w", |w| {
                w.mode = ReportMode::Registered;
                w.apps = vec!["echo".into()];
                w.slots = slots;
            })
            .handler("w", "slow", slow)
            .client("app")
            .start()
            .unwrap();
        Cluster { nodes, runs }
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits (up to 5 s) until `n` runs have started.
    async fn until_runs(&self, n: u32) {
        for _ in 0..500 {
            if self.runs() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} runs did not start within 5 s ({} did)", self.runs());
    }

    /// A client stream on a new connection (endpoint, connection, stream).
    async fn connect(&self) -> (quinn::Endpoint, quinn::Connection, conn::Stream) {
        let me = allot::pki::Pki::load(self.nodes.pki(), "app").unwrap();
        let hello = conn::hello(Role::Client, "app", Vec::new());
        let ep = transport::endpoint(&me, support::loopback()).unwrap();
        let c = transport::connect(&ep, self.nodes.distributors()[0])
            .await
            .unwrap();
        let s = conn::open(&c, &hello).await.unwrap();
        (ep, c, s)
    }

    /// Stops the nodes, then removes their directory.
    fn stop(self) {
        self.nodes.stop();
    }
}

/// Waits until the worker takes tasks (echo probes until one succeeds).
async fn until_ready(s: &mut conn::Stream) {
    for probe in 0..100 {
        s.out
            .send(
                &Submit::new(1000 + probe, 1000 + probe, "echo"),
                &Bytes::new(),
            )
            .unwrap();
        if result(s).await.1 == TaskStatus::Ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker did not register");
}

#[test]
fn a_resubmitted_task_runs_once_and_answers_the_new_stream() {
    let cluster = Cluster::start(4);
    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        // First connection: wait until the worker takes tasks, then start
        // the slow one and lose the connection while it runs.
        let (ep1, c1, mut s1) = cluster.connect().await;
        until_ready(&mut s1).await;
        s1.out
            .send(&Submit::new(1, 42, "slow"), &Bytes::from_static(b"once"))
            .unwrap();
        cluster.until_runs(1).await;
        c1.close(transport::codes::NORMAL, b"lost");
        ep1.wait_idle().await;

        // Second connection, same client: resubmit with the same key.
        let (ep2, c2, mut s2) = cluster.connect().await;
        s2.out
            .send(&Submit::new(7, 42, "slow"), &Bytes::from_static(b"once"))
            .unwrap();
        let (id, status, worker) = result(&mut s2).await;
        assert_eq!((id, status, worker.as_str()), (7, TaskStatus::Ok, "w"));
        assert_eq!(cluster.runs(), 1, "ran once, not twice");

        // A new key on the same stream is a new task.
        s2.out
            .send(&Submit::new(8, 43, "slow"), &Bytes::from_static(b"twice"))
            .unwrap();
        assert_eq!(result(&mut s2).await.0, 8);
        assert_eq!(cluster.runs(), 2);
        c2.close(transport::codes::NORMAL, b"done");
        ep2.wait_idle().await;
    });
    cluster.stop();
}

/// A task still waiting for capacity when its client reconnects is found
/// as well: it runs once, when the slot frees, and answers the new stream.
#[test]
fn a_resubmitted_task_waiting_for_capacity_runs_once() {
    let cluster = Cluster::start(1);
    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        let (ep1, c1, mut s1) = cluster.connect().await;
        until_ready(&mut s1).await;
        // The one slot runs the first task; the second waits for it.
        s1.out
            .send(&Submit::new(1, 50, "slow"), &Bytes::from_static(b"first"))
            .unwrap();
        s1.out
            .send(&Submit::new(2, 51, "slow"), &Bytes::from_static(b"second"))
            .unwrap();
        cluster.until_runs(1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cluster.runs(), 1, "one runs, one waits");
        c1.close(transport::codes::NORMAL, b"lost");
        ep1.wait_idle().await;

        // Resubmit both, the waiting one first, under new task ids.
        let (ep2, c2, mut s2) = cluster.connect().await;
        s2.out
            .send(&Submit::new(9, 51, "slow"), &Bytes::from_static(b"second"))
            .unwrap();
        s2.out
            .send(&Submit::new(8, 50, "slow"), &Bytes::from_static(b"first"))
            .unwrap();
        let mut answered = vec![result(&mut s2).await, result(&mut s2).await];
        answered.sort_by_key(|a| a.0);
        assert_eq!(
            answered,
            vec![
                (8, TaskStatus::Ok, "w".to_string()),
                (9, TaskStatus::Ok, "w".to_string())
            ]
        );
        // Give a duplicate the time to have started, had there been one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cluster.runs(), 2, "each task ran once");
        c2.close(transport::codes::NORMAL, b"done");
        ep2.wait_idle().await;
    });
    cluster.stop();
}
