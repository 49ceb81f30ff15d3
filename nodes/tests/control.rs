//! `allot drain` and `allot undrain` through the cores (see `harness`): a
//! client's control is checked by the distributor, applied to its view at
//! once, and sent on to the worker, which drains without stopping and
//! reports its state to every distributor it serves.

mod harness;

use std::time::Duration;

use allot::apps::AppOutcome;
use allot_engine::ServerState;
use allot_wire::{TaskStatus, WorkerOp, WorkerState};
use bytes::Bytes;
use harness::{status, task, Sim};

fn ok(out: &'static [u8]) -> AppOutcome {
    AppOutcome::Ok(Bytes::from_static(out))
}

fn state(sim: &mut Sim, d: usize, worker: &str) -> Option<ServerState> {
    let core = sim.d(d);
    let id = core.table().lookup(worker)?;
    core.table().state(id)
}

#[test]
fn a_drain_is_forwarded_and_every_distributor_sees_it() {
    let mut sim = Sim::new(|_| {});
    let other = sim.add_distributor("dist-2");
    let w1 = sim.worker("w-1", &["sleep"], 2);
    let w2 = sim.worker("w-2", &["sleep"], 2);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let (on, t1) = if sim.workers[w1].runs.is_empty() {
        (w2, sim.workers[w2].runs[0].0)
    } else {
        (w1, sim.workers[w1].runs[0].0)
    };
    let (name, rest) = if on == w1 { ("w-1", w2) } else { ("w-2", w1) };
    let r = sim.control(c, name, WorkerOp::Drain(60_000));
    assert_eq!(r.error, "");
    assert_eq!(r.state, WorkerState::Draining);
    assert_eq!(r.worker, name);
    assert_eq!(
        state(&mut sim, 0, name),
        Some(ServerState::Draining),
        "left out of matching at once"
    );
    assert!(sim.workers[on].core.is_draining(), "the worker drains");
    assert_eq!(
        state(&mut sim, other, name),
        Some(ServerState::Draining),
        "the worker told the other distributor"
    );
    // New tasks go to the other worker; the running one still ends here.
    for id in 2..4 {
        sim.submit(c, &task(id, "sleep"), b"");
    }
    assert_eq!(
        sim.workers[on].runs.len(),
        1,
        "nothing new on the drained one"
    );
    assert_eq!(sim.workers[rest].runs.len(), 2);
    sim.finish(on, t1, ok(b"done"));
    let r = sim.result(c, 1).expect("the running task's result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(r.worker, name);
    // The worker keeps serving: a heartbeat later it is still there and
    // still draining (the periodic report does not undo it).
    sim.advance(Duration::from_secs(15));
    assert_eq!(state(&mut sim, 0, name), Some(ServerState::Draining));
    // Draining again is no error.
    let again = sim.control(c, name, WorkerOp::Drain(60_000));
    assert_eq!(again.error, "");
    assert_eq!(again.state, WorkerState::Draining);
}

#[test]
fn an_unknown_or_lost_worker_is_a_clear_error() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    let r = sim.control(c, "w-9", WorkerOp::Drain(1000));
    assert!(r.error.contains("`w-9`"), "{}", r.error);
    assert!(r.error.contains("dist-1"), "{}", r.error);
    sim.disconnect(w);
    let r = sim.control(c, "w-1", WorkerOp::Undrain);
    assert!(r.error.contains("`w-1` is down"), "{}", r.error);
    assert!(sim.clients[c].closed.is_none(), "the client link stays up");
}

#[test]
fn undrain_makes_it_take_tasks_again() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.control(c, "w-1", WorkerOp::Drain(1000));
    sim.submit(c, &task(1, "sleep"), b"");
    assert!(sim.workers[w].runs.is_empty(), "drained: the task waits");
    assert_eq!(sim.result(c, 1), None);
    let r = sim.control(c, "w-1", WorkerOp::Undrain);
    assert_eq!(r.error, "");
    assert_eq!(r.state, WorkerState::Up);
    assert!(!sim.workers[w].core.is_draining());
    assert_eq!(state(&mut sim, 0, "w-1"), Some(ServerState::Up));
    assert_eq!(sim.workers[w].runs.len(), 1, "the waiting task is placed");
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, ok(b"1"));
    assert_eq!(status(sim.result(c, 1)), Some(TaskStatus::Ok));
    sim.advance(Duration::from_secs(15));
    assert_eq!(
        state(&mut sim, 0, "w-1"),
        Some(ServerState::Up),
        "the periodic report says up too"
    );
}

#[test]
fn tasks_left_at_the_drain_timeout_are_stopped_and_placed_elsewhere() {
    let mut sim = Sim::new(|_| {});
    let w1 = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let t = sim.workers[w1].runs[0].0;
    let w2 = sim.worker("w-2", &["sleep"], 1);
    sim.control(c, "w-1", WorkerOp::Drain(2000));
    sim.advance(Duration::from_millis(1900));
    assert!(
        sim.workers[w1].aborted.is_empty(),
        "still within the timeout"
    );
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.workers[w1].aborted, vec![t], "stopped at the timeout");
    assert_eq!(sim.workers[w2].runs.len(), 1, "placed on the other worker");
    assert_eq!(sim.workers[w2].attempts, vec![2]);
    let t2 = sim.workers[w2].runs[0].0;
    sim.finish(w2, t2, ok(b"elsewhere"));
    let r = sim.result(c, 1).expect("one result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(r.worker, "w-2");
    assert_eq!(sim.results_for(c, 1), 1);
    assert!(
        sim.workers[w1].core.is_draining(),
        "still draining, not gone"
    );
    assert_eq!(sim.workers[w1].core.free().0, 1, "its slot is free");
}

#[test]
fn a_stopping_worker_stays_draining_when_undrained() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    let now = sim.now;
    sim.workers[w].core.drain_to_stop(now);
    sim.settle();
    assert_eq!(state(&mut sim, 0, "w-1"), Some(ServerState::Draining));
    sim.control(c, "w-1", WorkerOp::Undrain);
    assert!(sim.workers[w].core.is_draining());
    assert_eq!(
        state(&mut sim, 0, "w-1"),
        Some(ServerState::Draining),
        "the worker corrected the distributor's view"
    );
}
