//! The `Send` client handle as an embedding program uses it: from a
//! multi-thread runtime and from plain threads, cancelling (explicitly,
//! and by dropping the future), deadlines as durations, and a timeout
//! reported as one.

use std::error::Error as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use allot::local_cluster::TempPki;
use allot::{
    apps, AttemptError, Client, ClientConfig, ClientError, Demands, LocalCluster, Role, Searched,
    StatusReply, Task, TaskStatus,
};
use bytes::Bytes;

mod support;

/// A distributor and one worker with a handler (`shout`) and a command
/// app that sleeps for five seconds (`nap`), on one slot: a task that
/// gets the slot while a nap holds it shows the nap was stopped.
struct Cluster {
    local: LocalCluster,
}

impl Cluster {
    fn start(_test: &str) -> Cluster {
        let shout = apps::handler(|input: Bytes| async move {
            if input.is_empty() {
                return Err("nothing to shout".to_owned());
            }
            Ok(Bytes::from(input.to_ascii_uppercase()))
        });
        let local = LocalCluster::builder()
            .distributor("dist")
            .worker("w", |wc| {
                wc.slots = 1;
                wc.app_cmds = vec![("nap".into(), "sleep 5".into())];
            })
            .handler("w", "shout", shout)
            .client("app")
            .start()
            .expect("cluster");
        Cluster { local }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new("app", self.local.pki(), Vec::new())
    }

    /// A connected handle (the cluster is up: the worker is registered).
    async fn client(&self) -> Client {
        let c = Client::connect_distributor(self.config(), self.local.distributors()[0])
            .await
            .expect("connect");
        wait_until(&c, "the worker registered", Duration::from_secs(10), |s| {
            s.workers.len() == 1
        })
        .await;
        c
    }

    fn stop(self) {
        self.local.stop();
    }
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Well under the nap's five seconds: a nap that ran to its end takes
/// longer than this.
const QUICK: Duration = Duration::from_secs(3);

/// Polls the distributor's status until `ok` holds, for at most `within`.
async fn wait_until(c: &Client, what: &str, within: Duration, ok: impl Fn(&StatusReply) -> bool) {
    let until = Instant::now() + within;
    loop {
        let s = c.status().await.expect("status");
        if ok(&s) {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting until {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Slots the distributor holds on the worker for its placements.
fn reserved(s: &StatusReply) -> u32 {
    s.workers.iter().map(|w| w.reserved_slots).sum()
}

fn nap() -> Task {
    Task::new("nap", "").demands(Demands {
        cores: 0,
        mem: 0,
        slots: 1,
    })
}

/// The slot is free again on the worker itself: a task needing it runs
/// now, not after the five-second nap.
async fn slot_is_free(c: &Client) {
    let t = Instant::now();
    let o = c
        .submit(Task::new("shout", "free").demands(nap().demands))
        .await
        .expect("submit");
    assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
    assert!(t.elapsed() < QUICK, "{:?}", t.elapsed());
}

#[test]
fn tasks_from_many_runtime_threads_and_a_plain_thread_share_one_handle() {
    let cluster = Cluster::start("sdk-flow");
    let rt = multi_thread();
    let client = rt.block_on(cluster.client());
    rt.block_on(async {
        let mut joins = Vec::new();
        for i in 0..100 {
            let c = client.clone();
            joins.push(tokio::spawn(async move {
                c.submit(Task::new("shout", format!("task {i}"))).await
            }));
        }
        for (i, j) in joins.into_iter().enumerate() {
            let o = j.await.expect("join").expect("submit");
            assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
            assert_eq!(o.output, Bytes::from(format!("TASK {i}")));
            assert_eq!(&*o.worker, "w");
        }
        // Many tasks as one command, answered in any order.
        let subs = client
            .start_many((0..50).map(|i| Task::new("shout", format!("b{i}"))))
            .await
            .expect("start_many");
        let ids: Vec<u64> = subs.iter().map(|s| s.id()).collect();
        for (i, s) in subs.into_iter().enumerate() {
            let o = s.await.expect("outcome");
            assert_eq!(o.task_id, ids[i]);
            assert_eq!(o.output, Bytes::from(format!("B{i}")));
        }
        // A handler's error is the task's failure, with its message.
        let o = client.submit(Task::new("shout", "")).await.expect("submit");
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(o.message, "nothing to shout");
    });
    // The same handle from a plain thread, no runtime of its own.
    let c = client.clone();
    let o = std::thread::spawn(move || c.submit_blocking(Task::new("shout", "plain")))
        .join()
        .expect("thread")
        .expect("submit_blocking");
    assert_eq!(&o.output[..], b"PLAIN");
    client.close();
    // Closed for every clone: nothing is accepted any more.
    let after = rt.block_on(client.submit(Task::new("shout", "late")));
    assert!(matches!(after, Err(ClientError::Closed)), "{after:?}");
    cluster.stop();
}

#[test]
fn tasks_sent_to_one_channel_end_there_and_cancel_without_waiting() {
    let cluster = Cluster::start("send_to");
    let client = multi_thread().block_on(cluster.client());
    // From a plain thread: many tasks as one command, one channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = (0..50)
        .map(|i| Task::new("shout", format!("t{i}")))
        .collect();
    let ids = client.send_to_blocking(tasks, &tx).unwrap();
    assert_eq!(ids.end - ids.start, 50);
    let mut seen = std::collections::HashMap::new();
    for _ in 0..50 {
        let (id, r) = rx.blocking_recv().unwrap();
        seen.insert(id, r.unwrap());
    }
    for (i, id) in ids.enumerate() {
        let o = &seen[&id];
        assert_eq!(o.task_id, id);
        assert_eq!(o.output, Bytes::from(format!("T{i}")));
    }
    // A nap holds the one slot; cancelled without waiting, it ends as
    // cancelled on the same channel well before its five seconds.
    let t0 = Instant::now();
    let nap = client.send_to_blocking(vec![nap()], &tx).unwrap().start;
    std::thread::sleep(Duration::from_millis(300));
    client.cancel_nowait(nap).unwrap();
    let (id, r) = rx.blocking_recv().unwrap();
    assert_eq!(id, nap);
    assert_eq!(r.unwrap().status, TaskStatus::Cancelled);
    assert!(t0.elapsed() < QUICK, "{:?}", t0.elapsed());
    client.close();
    cluster.stop();
}

#[test]
fn cancel_stops_a_running_task_and_its_future_says_cancelled() {
    let cluster = Cluster::start("sdk-cancel");
    let rt = multi_thread();
    rt.block_on(async {
        let client = cluster.client().await;
        let sub = client.start(nap()).await.expect("start");
        wait_until(&client, "the nap was placed", QUICK, |s| reserved(s) == 1).await;
        let t = Instant::now();
        client.cancel(sub.id()).await.expect("cancel");
        let o = sub.await.expect("outcome");
        assert_eq!(o.status, TaskStatus::Cancelled, "{}", o.message);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(reserved(&client.status().await.expect("status")), 0);
        slot_is_free(&client).await;
        client.close();
    });
    cluster.stop();
}

#[test]
fn dropping_a_submit_future_cancels_its_task() {
    let cluster = Cluster::start("sdk-drop");
    let rt = multi_thread();
    rt.block_on(async {
        let client = cluster.client().await;
        // The everyday way to drop one: give up waiting.
        let gave_up = tokio::time::timeout(Duration::from_millis(300), client.submit(nap())).await;
        assert!(gave_up.is_err(), "the nap cannot end in 300 ms");
        wait_until(&client, "the dropped nap was cancelled", QUICK, |s| {
            reserved(s) == 0 && s.workers.iter().all(|w| w.record.slots_free == 1)
        })
        .await;
        slot_is_free(&client).await;
        // A submission dropped before it is awaited is cancelled too.
        let sub = client.start(nap()).await.expect("start");
        wait_until(&client, "the second nap was placed", QUICK, |s| {
            reserved(s) == 1
        })
        .await;
        drop(sub);
        wait_until(&client, "the second nap was cancelled", QUICK, |s| {
            reserved(s) == 0
        })
        .await;
        slot_is_free(&client).await;
        client.close();
    });
    cluster.stop();
}

#[test]
fn a_deadline_given_as_a_duration_ends_the_task_as_timed_out() {
    let cluster = Cluster::start("sdk-deadline");
    let rt = multi_thread();
    rt.block_on(async {
        let client = cluster.client().await;
        let t = Instant::now();
        let o = client
            .submit(nap().deadline(Duration::from_millis(300)))
            .await
            .expect("submit");
        assert_eq!(o.status, TaskStatus::Timeout, "{}", o.message);
        // Not before the deadline (it is a duration, not a unit mix-up),
        // and well before the nap would have ended.
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < QUICK, "{took:?}");
        slot_is_free(&client).await;
        client.close();
    });
    cluster.stop();
}

#[test]
fn an_address_that_never_answers_is_a_timeout_not_a_refusal() {
    let scratch = TempPki::create(&[("app", Role::Client)]).expect("pki");
    // Bound but never read: the handshake gets no answer at all.
    let silent = std::net::UdpSocket::bind(support::loopback()).expect("bind");
    let addr: SocketAddr = silent.local_addr().expect("addr");
    // One search, no retry window: this is about the error of one failed
    // search (`retry.rs` covers the window).
    let cfg = ClientConfig::new("app", scratch.pki(), vec![addr])
        .with_connect_timeout(Duration::from_millis(200))
        .with_retry_for(Duration::ZERO);
    let rt = multi_thread();
    for via_gateway in [true, false] {
        let t = Instant::now();
        let r = rt.block_on(async {
            if via_gateway {
                Client::connect(cfg.clone()).await
            } else {
                Client::connect_distributor(cfg.clone(), addr).await
            }
        });
        let e = r.expect_err("nothing answers there");
        let ClientError::Timeout { searched, tried } = &e else {
            panic!("not a timeout: {e:?}");
        };
        let want = if via_gateway {
            Searched::Gateway
        } else {
            Searched::Distributor
        };
        assert_eq!(*searched, want);
        assert!(e.is_timeout());
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("no {want} answered in time")),
            "{shown}"
        );
        assert!(shown.contains(&addr.to_string()), "{shown}");
        // The cause is kept: the attempt and its timeout.
        let attempts: Vec<_> = tried.iter().collect();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].0, addr);
        assert!(
            matches!(attempts[0].1, AttemptError::Timeout { after } if *after == Duration::from_millis(200))
        );
        let source = e.source().expect("a source");
        assert!(source.source().is_some(), "the attempt's own error");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // From a plain thread the same.
    let e = Client::connect_blocking(cfg).expect_err("nothing answers there");
    assert!(e.is_timeout(), "{e:?}");
}
