//! What the dashboard reads from the distributor core, on a fake clock
//! (see `harness`): the waiting tasks with their reasons, in queue order
//! and bounded; the workers with their reservations; the newest jobs.

mod harness;

use std::time::Duration;

use harness::{array, task, Sim};

#[test]
fn waiting_tasks_come_in_queue_order_with_the_reason_each_waits() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    for id in 1..=3 {
        sim.submit(c, &task(id, "sleep"), b"");
    }
    assert_eq!(sim.workers[w].runs.len(), 1, "one slot: two wait");
    sim.advance(Duration::from_millis(1500));
    let now = sim.now;
    let v = sim.dist.waiting_view(now, 10);
    assert_eq!((v.total, v.tasks.len()), (2, 2));
    let t = &v.tasks[0];
    assert_eq!(
        (t.app.as_str(), t.user.as_str(), &t.job),
        ("sleep", "cli", &None)
    );
    assert!(t.waited >= Duration::from_millis(1500), "{t:?}");
    assert!(t.reason.contains("0 of 1 servers pass"), "{}", t.reason);
    assert!(t.reason.contains("slots_free"), "{}", t.reason);
    assert!(v.tasks[0].task < v.tasks[1].task, "the older first");
    // Bounded by what is asked; the total still counts all.
    let v = sim.dist.waiting_view(now, 1);
    assert_eq!((v.total, v.tasks.len()), (2, 1));

    let r = sim.dist.workers_view(now, 10);
    assert_eq!(r.workers.len(), 1);
    assert_eq!(r.workers[0].name, "w-1");
    assert_eq!(r.workers[0].reserved_slots, 1);
    assert_eq!(sim.dist.workers_view(now, 0).workers_total, 1);

    // The running task ends: the next takes the slot, one waits.
    let first = sim.workers[w].runs[0].0;
    sim.finish(w, first, allot::apps::AppOutcome::Ok(bytes::Bytes::new()));
    assert_eq!(sim.dist.waiting_view(sim.now, 10).total, 1);
}

#[test]
fn jobs_are_listed_newest_first_and_bounded() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["echo"], 4);
    let c = sim.client("cli");
    let first = sim.job(c, &array("echo", 0, 2), b"x");
    let second = sim.job(c, &array("echo", 0, 4), b"x");
    let v = sim.dist.jobs_view(10);
    assert_eq!(v.total, 2);
    let ids: Vec<&str> = v.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert_eq!(v.jobs[0].tasks, 5);
    let v = sim.dist.jobs_view(1);
    assert_eq!((v.total, v.jobs.len()), (2, 1));
    assert_eq!(v.jobs[0].job, second);
    // The member's own figures, as reported to the gateways.
    assert_eq!(sim.dist.member_view().workers_up, 1);
}
