//! An embedding program starts every role as a library type in its own
//! process, registers an async handler as an app, and submits through the
//! client SDK.

use std::time::Duration;

use allot::{apps, LocalClient, LocalCluster, RedirectPolicy, Task};
use allot_wire::{ReportMode, TaskStatus};
use bytes::Bytes;

mod support;

#[test]
fn embedded_nodes_run_a_registered_handler() {
    let upper = apps::handler(|input: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if input.is_empty() {
            return Err("empty input".to_owned());
        }
        Ok(Bytes::from(input.to_ascii_uppercase()))
    });
    // Says what the worker told it about its task.
    let whoami = apps::handler(|_: Bytes| async move {
        let i = apps::current_task().ok_or("no task info")?;
        let left = i
            .deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()));
        Ok(Bytes::from(format!(
            "{} {} {} {:?}",
            i.user.as_deref().unwrap_or("-"),
            i.attempt,
            i.task > 0,
            left.map(|l| l > Duration::from_secs(5) && l <= Duration::from_secs(10)),
        )))
    });
    let cluster = LocalCluster::builder()
        .distributor("dist")
        .worker("w", |w| {
            w.mode = ReportMode::Registered;
            w.apps = vec!["echo".into()];
        })
        .handler("w", "upper", upper)
        .handler("w", "whoami", whoami)
        .gateway("gw")
        .redirect(RedirectPolicy::RoundRobin, Duration::from_secs(5))
        .client("app")
        .start()
        .unwrap();

    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        let client = LocalClient::connect(cluster.client_config("app"))
            .await
            .unwrap();
        // The cluster is up: the worker is registered, the first task runs.
        let o = client.submit(Task::new("upper", "shout")).await.unwrap();
        assert_eq!(o.status, TaskStatus::Ok, "the handler ran: {}", o.message);
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
        // A handler learns the user it runs for, its placement and when
        // its deadline falls.
        let o = client
            .submit(
                Task::new("whoami", "")
                    .user("carol")
                    .deadline(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        assert_eq!(&o.output[..], b"carol 1 true Some(true)", "{}", o.message);
        let o = client.submit(Task::new("whoami", "")).await.unwrap();
        assert_eq!(
            &o.output[..],
            b"app 1 true None",
            "the certificate's name by default"
        );
        client.close();
    });
    cluster.stop();
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
