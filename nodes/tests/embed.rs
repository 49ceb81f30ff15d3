//! An embedding program starts every role as a library type in its own
//! process, registers an async handler as an app, and submits through the
//! client SDK.

use std::time::Duration;

use allot::{apps, ClientConfig, LocalClient, RedirectPolicy, Task, WorkerConfig};
use allot_wire::{ReportMode, Role, TaskStatus};
use bytes::Bytes;

mod support;

#[test]
fn embedded_nodes_run_a_registered_handler() {
    let scratch = support::Scratch::new(
        "embed",
        &[
            ("gw", Role::Gateway),
            ("dist", Role::Distributor),
            ("w", Role::Worker),
            ("app", Role::Client),
        ],
    );
    let pki = scratch.pki.clone();
    let dist = scratch.distributor("dist");
    let mut wc = WorkerConfig::new("w", pki.clone(), vec![dist.addr]);
    wc.mode = ReportMode::Registered;
    wc.apps = vec!["echo".into()];
    let upper = apps::handler(|input: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if input.is_empty() {
            return Err("empty input".to_owned());
        }
        Ok(Bytes::from(input.to_ascii_uppercase()))
    });
    let worker = allot::worker::spawn(wc, vec![("upper".into(), upper)]).unwrap();
    let gw = scratch.gateway(
        "gw",
        vec![dist.addr],
        RedirectPolicy::RoundRobin,
        Duration::from_secs(5),
    );

    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        let cfg = ClientConfig::new("app", pki.clone(), vec![gw.addr]);
        let client = LocalClient::connect(cfg).await.unwrap();
        // The worker may still be registering: retry briefly on no_match.
        let mut out = None;
        for _ in 0..100 {
            let o = client.submit(Task::new("upper", "shout")).await.unwrap();
            if o.status == TaskStatus::Ok {
                out = Some(o);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let o = out.expect("the handler ran");
        assert_eq!(&o.output[..], b"SHOUT");
        assert_eq!(&*o.worker, "w");
        // Many in flight on one client, all answered.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let c = client.clone();
                async move { c.submit(Task::new("upper", format!("t{i}"))).await }
            })
            .collect();
        for (i, r) in futures_join(tasks).await.into_iter().enumerate() {
            let o = r.unwrap();
            assert_eq!(o.status, TaskStatus::Ok);
            assert_eq!(o.output, Bytes::from(format!("T{i}")));
        }
        // A handler's error is the task's failure, with its message.
        let o = client
            .submit(Task::new("upper", Bytes::new()))
            .await
            .unwrap();
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(o.message, "empty input");
        client.close();
    });
    gw.stop();
    worker.stop();
    dist.stop();
}

/// Awaits all futures on the current LocalSet, in order.
async fn futures_join<F: std::future::Future + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::task::spawn_local).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
