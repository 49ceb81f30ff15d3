//! The job SDK against a cluster in this process: a job submitted through
//! the gateway is waited for, read back in index order, cancelled and
//! listed, all by its id, as a client that comes back later would.

use std::time::Duration;

use allot::client::{JobClient, JobError, JobSpec, JobsConfig};
use allot::LocalCluster;

mod support;

#[test]
fn jobs_are_submitted_waited_for_read_cancelled_and_listed() {
    let cluster = LocalCluster::builder()
        .distributor("d1")
        .worker("w-1", |w| {
            w.apps = vec!["echo".into(), "sleep".into()];
            w.slots = 4;
        })
        .gateway("gw")
        .client("app")
        .start()
        .expect("cluster");
    let (rt, local) = support::local_runtime();
    local.block_on(&rt, async {
        let cfg = JobsConfig::new(cluster.pki(), "app", cluster.gateways().to_vec());
        let mut jobs = JobClient::new(cfg).expect("job client");
        let limit = Some(Duration::from_secs(10));

        let array = jobs
            .submit(JobSpec::array("echo", 1, 20).input("hi"))
            .await
            .expect("submit");
        assert_eq!((array.tasks, array.distributor.as_str()), (20, "d1"));
        assert!(array.id.starts_with("main/d1/"), "{}", array.id);
        let s = array.wait(&mut jobs, limit).await.expect("wait");
        assert_eq!((s.tasks, s.counts.done), (20, 20));
        let rows = array.outputs(&mut jobs).await.expect("outputs");
        let indices: Vec<u64> = rows.iter().map(|r| r.index).collect();
        assert_eq!(indices, (1..=20).collect::<Vec<_>>(), "in index order");
        assert!(rows.iter().all(|r| r.output == b"hi"), "{rows:?}");

        let lines = jobs
            .submit(JobSpec::lines("echo", "a\nb\nc\n"))
            .await
            .expect("submit");
        lines.wait(&mut jobs, limit).await.expect("wait");
        let outputs: Vec<Vec<u8>> = lines
            .outputs(&mut jobs)
            .await
            .expect("outputs")
            .into_iter()
            .map(|r| r.output)
            .collect();
        assert_eq!(outputs, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

        // A minute each: only a cancel ends them in time.
        let slow = jobs
            .submit(JobSpec::array("sleep", 0, 99).input("60000"))
            .await
            .expect("submit");
        assert_eq!(slow.cancel(&mut jobs).await.expect("cancel"), 100);
        let s = slow.wait(&mut jobs, limit).await.expect("wait");
        assert_eq!((s.counts.cancelled, s.counts.done), (100, 0));

        let listed: Vec<String> = jobs
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|j| j.job)
            .collect();
        assert_eq!(
            listed,
            [array.id.clone(), lines.id.clone(), slow.id.clone()]
        );
        match array.cancel(&mut jobs).await {
            Err(JobError::Refused(why)) => assert!(why.contains("has finished"), "{why}"),
            other => panic!("a finished job is not cancelled: {other:?}"),
        }
        jobs.close();
    });
}
