//! A client that loses its connection and resubmits a running task to the
//! same distributor gets the one result of the one run, on its new stream.
//! (The distributor keeps its key index only once a client comes back: see
//! `nodes/src/resubmit.rs`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allot::{apps, conn, transport, DistributorConfig, WorkerConfig};
use allot_wire::{Demands, ReportMode, Role, Submit, TaskResult, TaskStatus};
use bytes::Bytes;

fn submit(task_id: u64, key: u64, app: &str) -> Submit {
    Submit {
        task_id,
        idempotency_key: key,
        app: app.into(),
        demands: Demands {
            cores: 0,
            mem: 0,
            slots: 1,
        },
        require: String::new(),
        prefer: String::new(),
        user: String::new(),
        priority: 0,
        deadline_ms: 0,
    }
}

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

#[test]
fn a_resubmitted_task_runs_once_and_answers_the_new_stream() {
    let dir = std::env::temp_dir().join(format!("allot-resubmit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    allot::pki::create_cluster(
        &pki,
        &[
            ("dist", Role::Distributor),
            ("w", Role::Worker),
            ("app", Role::Client),
        ],
    )
    .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let dist = allot::distributor::spawn(DistributorConfig::new(
        "dist",
        any,
        pki.clone(),
        dir.join("data"),
    ))
    .unwrap();
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
    let mut wc = WorkerConfig::new("w", pki.clone(), vec![dist.addr]);
    wc.mode = ReportMode::Registered;
    wc.apps = vec!["echo".into()];
    let worker = allot::worker::spawn(wc, vec![("slow".into(), slow)]).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let me = allot::pki::Pki::load(&pki, "app").unwrap();
        let hello = conn::hello(Role::Client, "app", Vec::new());

        // First connection: wait until the worker takes tasks, then start
        // the slow one and lose the connection while it runs.
        let ep1 = transport::endpoint(&me, any).unwrap();
        let c1 = transport::connect(&ep1, dist.addr).await.unwrap();
        let mut s1 = conn::open(&c1, &hello).await.unwrap();
        let mut ready = false;
        for probe in 0..100 {
            s1.out
                .send(&submit(1000 + probe, 1000 + probe, "echo"), &Bytes::new())
                .unwrap();
            if result(&mut s1).await.1 == TaskStatus::Ok {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "the worker registered");
        s1.out
            .send(&submit(1, 42, "slow"), &Bytes::from_static(b"once"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the task started");
        c1.close(transport::codes::NORMAL, b"lost");
        ep1.wait_idle().await;

        // Second connection, same client: resubmit with the same key.
        let ep2 = transport::endpoint(&me, any).unwrap();
        let c2 = transport::connect(&ep2, dist.addr).await.unwrap();
        let mut s2 = conn::open(&c2, &hello).await.unwrap();
        s2.out
            .send(&submit(7, 42, "slow"), &Bytes::from_static(b"once"))
            .unwrap();
        let (id, status, worker) = result(&mut s2).await;
        assert_eq!((id, status, worker.as_str()), (7, TaskStatus::Ok, "w"));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "ran once, not twice");

        // A new key on the same stream is a new task.
        s2.out
            .send(&submit(8, 43, "slow"), &Bytes::from_static(b"twice"))
            .unwrap();
        assert_eq!(result(&mut s2).await.0, 8);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        c2.close(transport::codes::NORMAL, b"done");
        ep2.wait_idle().await;
    });
    worker.stop();
    dist.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
