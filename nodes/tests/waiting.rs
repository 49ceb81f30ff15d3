//! A task that no server can take right now, but one could once a running
//! task ends, waits for capacity instead of failing, however many servers
//! that can never take it rank ahead of the busy one in the explanation;
//! `explain` says so (`waitable`) while the server is busy.

use std::time::Duration;

use allot::{apps, LocalClient, LocalCluster, Task, WorkerConfig};
use allot_wire::{Demands, ExplainQuery, ReportMode, TaskStatus};
use bytes::Bytes;

mod support;

/// Servers lacking the app: more than the explanation's five nearest misses.
const LACKING: usize = 8;

#[test]
fn a_task_waits_for_the_busy_server_behind_many_that_cannot_run_it() {
    let echo_only = |w: &mut WorkerConfig| {
        w.mode = ReportMode::Registered;
        w.apps = vec!["echo".into()];
    };
    let mut cluster = LocalCluster::builder().distributor("dist").client("app");
    for i in 0..LACKING {
        cluster = cluster.worker(&format!("lacks-{i}"), echo_only);
    }
    // One slot and one core: while it runs a task, the busy server fails
    // two clauses (free slots, free cores), the others one (the app), so it
    // is never among the nearest misses shown.
    let slow = apps::handler(|input: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(input)
    });
    let cluster = cluster
        .worker("busy", |w| {
            echo_only(w);
            w.slots = 1;
            w.cores = 1;
        })
        .handler("busy", "slow", slow)
        .start()
        .unwrap();

    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        let client = LocalClient::connect_distributor(
            cluster.client_config("app"),
            cluster.distributors()[0],
        )
        .await
        .unwrap();
        assert_eq!(client.status().await.unwrap().workers.len(), LACKING + 1);
        let task = |i: u8| {
            let mut t = Task::new("slow", vec![i]);
            t.demands = Demands {
                cores: 1,
                mem: 0,
                slots: 1,
            };
            t
        };
        let explain_slow = || ExplainQuery {
            app: "slow".into(),
            demands: task(0).demands,
            require: String::new(),
            prefer: String::new(),
            user: String::new(),
        };
        // While one task runs, `explain` says a task would wait for the
        // busy server rather than fail (the same test the distributor makes).
        let busy_now = async {
            for _ in 0..300 {
                let r = client.explain(explain_slow()).await.unwrap();
                if r.matched == 0 {
                    return Some(r);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            None
        };
        let (first, during) = tokio::join!(client.submit(task(0)), busy_now);
        assert_eq!(first.unwrap().status, TaskStatus::Ok);
        let during = during.expect("explain saw the busy server busy");
        assert_eq!((during.matched, during.waitable), (0, 1), "{during:?}");
        assert_eq!(during.total as usize, LACKING + 1);
        // With it idle again, it matches.
        let idle = client.explain(explain_slow()).await.unwrap();
        assert_eq!((idle.matched, &*idle.best), (1, "busy"));

        let (a, b) = tokio::join!(client.submit(task(1)), client.submit(task(2)));
        for (o, want) in [(a.unwrap(), 1u8), (b.unwrap(), 2)] {
            assert_eq!(o.status, TaskStatus::Ok, "{}", o.message);
            assert_eq!(&*o.worker, "busy");
            assert_eq!(&o.output[..], &[want]);
        }
        client.close();
    });
    cluster.stop();
}
