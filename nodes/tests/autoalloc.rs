//! The automatic allocation inside the distributor's core, on the fake
//! clock: which waiting tasks ask for a Slurm job (those no live worker
//! can ever take but the template could), that they wait for its worker
//! instead of failing, and what `status` says of the jobs.

mod harness;

use std::time::Duration;

use allot::distributor::autoalloc::{Action, AutoallocConfig, PolicyConfig};
use allot_engine::{LabelValue, ServerRecord};
use allot_wire::{Attr, AttrValue, StatusQuery, TaskStatus};
use harness::{status, task, Sim};

/// A Slurm worker offers `sha256` on a node with an SSD.
fn autoalloc(d: &mut allot::DistributorConfig) {
    d.autoalloc = Some(AutoallocConfig {
        backend: "slurm".into(),
        policy: PolicyConfig {
            max_jobs: 2,
            idle: Duration::from_secs(30),
            poll: Duration::from_secs(2),
            backoff: Duration::from_secs(5),
            slots: 4,
            job_name: "allot-d1-0".into(),
        },
        script: "#!/bin/sh\nexec allot worker\n".into(),
        submit_args: Vec::new(),
        template: ServerRecord {
            name: "template".into(),
            slots: 4,
            slots_free: 4,
            cores: 8,
            power: 4.0,
            idle_power: 4.0,
            mem: 16 << 30,
            mem_free: 16 << 30,
            load: 0.0,
            apps: vec!["sha256".into()],
            labels: vec![("feature_ssd".into(), LabelValue::Num(1.0))],
        },
    });
}

/// A distributor with [`autoalloc`] that has looked for the jobs of an
/// earlier run and found `earlier` (id, state).
fn started(earlier: Vec<(String, String)>) -> Sim {
    let mut sim = Sim::new(autoalloc);
    // The first sweep asks.
    sim.advance(Duration::from_secs(1));
    let asked: Vec<Action> = std::iter::from_fn(|| sim.dist.poll_autoalloc()).collect();
    assert_eq!(
        asked,
        [Action::Find {
            name: "allot-d1-0".into()
        }]
    );
    let now = sim.now;
    sim.dist.autoalloc_found(now, Ok(earlier));
    sim
}

/// The worker of Slurm job `job` (its `slurm_job` label names it), named
/// `auto-JOB`, offering `sha256` with an SSD.
fn slurm_worker(sim: &mut Sim, job: &str) -> usize {
    sim.worker_with(&format!("auto-{job}"), &["sha256"], 4, |w| {
        w.labels = vec![
            Attr {
                key: "slurm_job".into(),
                value: AttrValue::Str(job.into()),
            },
            Attr {
                key: "feature_ssd".into(),
                value: AttrValue::Bool(true),
            },
        ];
    })
}

fn submits(sim: &mut Sim) -> usize {
    std::iter::from_fn(|| sim.dist.poll_autoalloc())
        .filter(|a| matches!(a, Action::Submit { .. }))
        .count()
}

#[test]
fn only_tasks_no_live_worker_can_take_start_a_job_and_they_wait_for_its_worker() {
    let mut sim = started(Vec::new());
    let echo = sim.worker("w-echo", &["echo", "sleep"], 1);
    let c = sim.client("cli");
    // A task the live worker takes (even when busy) asks for nothing.
    sim.submit(c, &task(1, "sleep"), b"1000");
    sim.submit(c, &task(2, "sleep"), b"1000");
    sim.advance(Duration::from_secs(1));
    assert_eq!(submits(&mut sim), 0, "the busy worker will take task 2");
    // A task nothing could take fails at once, as without autoalloc.
    sim.submit(c, &task(3, "nothing"), b"");
    assert_eq!(status(sim.result(c, 3)), Some(TaskStatus::NoMatch));
    // One only a Slurm worker could take waits, and one job is asked for.
    let mut hash = task(4, "sha256");
    hash.require = "server.feature_ssd == 1".into();
    sim.submit(c, &hash, b"frame");
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.result(c, 4), None, "it waits");
    assert_eq!(submits(&mut sim), 1);
    let now = sim.now;
    sim.dist.autoalloc_submitted(now, Ok("77".into()));
    // It waits past the queue timeout (60 s) for the job's worker.
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.result(c, 4), None);
    assert_eq!(submits(&mut sim), 0, "one job is on its way for one task");
    let st = sim.ask_status(
        c,
        StatusQuery {
            include_down: true,
            max_workers: 10,
        },
    );
    let al = st.autoalloc.expect("the allocation's status");
    assert_eq!((al.waiting_tasks, al.allocations.len()), (1, 1));
    assert_eq!(al.allocations[0].id, "77");

    // The job's worker joins (its slurm_job label names the job) and
    // runs the task.
    let w = slurm_worker(&mut sim, "77");
    sim.advance(Duration::from_millis(500));
    assert_eq!(status(sim.result(c, 4)), Some(TaskStatus::Ok));
    assert_eq!(sim.result(c, 4).unwrap().worker, "auto-77");
    let st = sim.ask_status(
        c,
        StatusQuery {
            include_down: true,
            max_workers: 10,
        },
    );
    let al = st.autoalloc.expect("the allocation's status");
    assert_eq!(al.waiting_tasks, 0);
    assert_eq!(al.allocations[0].state, "RUNNING");
    assert_eq!(al.allocations[0].workers, ["auto-77"]);
    assert_eq!(sim.workers[w].core.done(), 1);
    assert_eq!(sim.workers[echo].core.done(), 0, "its sleeps still run");
}

#[test]
fn a_refusal_is_the_reason_in_status_and_the_task_keeps_waiting() {
    let mut sim = started(Vec::new());
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sha256"), b"");
    sim.advance(Duration::from_secs(1));
    assert_eq!(submits(&mut sim), 1);
    let now = sim.now;
    let why = "sbatch: error: invalid partition specified: nope";
    sim.dist.autoalloc_submitted(now, Err(why.into()));
    sim.advance(Duration::from_secs(2));
    assert_eq!(submits(&mut sim), 0, "backing off");
    let st = sim.ask_status(
        c,
        StatusQuery {
            include_down: true,
            max_workers: 10,
        },
    );
    let al = st.autoalloc.unwrap();
    assert_eq!(al.last_error, why);
    assert!(al.backoff_ms > 0 && al.backoff_ms <= 5000, "{al:?}");
    sim.advance(Duration::from_secs(4));
    assert_eq!(submits(&mut sim), 1, "tried again after the backoff");
    sim.advance(Duration::from_secs(70));
    assert_eq!(sim.result(c, 1), None, "still waiting");
}

/// After a restart the core adopts the earlier run's running job, and a
/// worker of that job already registered counts as its worker: no job is
/// asked for the task it can take.
#[test]
fn an_adopted_job_keeps_its_registered_worker() {
    let mut sim = Sim::new(autoalloc);
    let w = slurm_worker(&mut sim, "77");
    sim.advance(Duration::from_millis(200));
    let c = sim.client("cli");
    let mut hash = task(1, "sha256");
    hash.require = "server.feature_ssd == 1".into();
    sim.submit(c, &hash, b"frame");
    sim.advance(Duration::from_millis(300));
    assert_eq!(status(sim.result(c, 1)), Some(TaskStatus::Ok));
    let asked: Vec<Action> = std::iter::from_fn(|| sim.dist.poll_autoalloc()).collect();
    assert!(
        asked.iter().all(|a| matches!(a, Action::Find { .. })),
        "{asked:?}"
    );
    let now = sim.now;
    sim.dist
        .autoalloc_found(now, Ok(vec![("77".into(), "RUNNING".into())]));
    let st = sim.ask_status(
        c,
        StatusQuery {
            include_down: true,
            max_workers: 10,
        },
    );
    let al = st.autoalloc.expect("the allocation's status");
    assert_eq!(al.allocations.len(), 1);
    assert_eq!(al.allocations[0].id, "77");
    assert_eq!(al.allocations[0].state, "RUNNING");
    assert_eq!(al.allocations[0].workers, ["auto-77"]);
    assert_eq!(sim.workers[w].core.done(), 1);
}
