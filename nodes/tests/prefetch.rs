//! A worker with `prefetch` takes a few tasks beyond its free slots and
//! starts the next the moment a running one ends, before that one's result
//! has left; a draining worker hands the waiting ones back, a lost link
//! drops them, a cancel takes them out, and a free slot elsewhere wins
//! over a place ahead; results leave together while tasks wait. All on
//! the cores' fake clock.

mod harness;

use std::time::Duration;

use allot::apps::AppOutcome;
use allot::worker::{Action, RESULT_HOLD};
use allot_wire::{Demands, TaskStatus};
use bytes::Bytes;
use harness::{status, task, Sim};

/// A worker `w` that runs `sleep` on `slots` slots with `prefetch` places
/// ahead.
fn worker(sim: &mut Sim, name: &str, slots: u32, prefetch: u32) -> usize {
    sim.worker_with(name, &["sleep"], slots, |w| {
        w.prefetch = prefetch;
        w.cores = 0;
    })
}

/// Task `id` of `sleep` that needs two slots.
fn wide(id: u64) -> allot_wire::Submit {
    let mut t = task(id, "sleep");
    t.demands = Demands {
        slots: 2,
        cores: 0,
        mem: 0,
    };
    t
}

fn ok() -> AppOutcome {
    AppOutcome::Ok(Bytes::from_static(b"done"))
}

/// The tasks worker `w` started, in order.
fn started(sim: &Sim, w: usize) -> Vec<u64> {
    sim.workers[w].runs.iter().map(|(t, _)| *t).collect()
}

#[test]
fn the_next_task_waits_on_the_worker_and_starts_before_the_result_leaves() {
    let mut sim = Sim::new(|_| {});
    let w = worker(&mut sim, "w", 1, 2);
    let c = sim.client("app");
    for id in 1..=4 {
        sim.submit(c, &task(id, "sleep"), b"");
    }
    // One runs, two wait on the worker, the fourth at the distributor
    // (the worker has three places).
    assert_eq!(started(&sim, w), [1]);
    assert_eq!(sim.workers[w].core.waiting(), 2);
    assert_eq!(sim.workers[w].core.running(), 3);

    // The first ends: the core orders the second started in the same
    // step, before anything it sends has been written.
    let r = sim.workers[w].running.remove(0);
    let now = sim.now;
    sim.workers[w]
        .core
        .task_finished(now, r.link, r.task, ok(), Duration::from_millis(1));
    match sim.workers[w].core.poll_action() {
        Some(Action::Run {
            task, link, input, ..
        }) => {
            assert_eq!(task, 2);
            sim.workers[w].runs.push((task, input.clone()));
            sim.workers[w].running.push(harness::Running {
                worker: w,
                link,
                task,
                input,
            });
        }
        other => panic!("expected the waiting task to start, got {other:?}"),
    }
    sim.settle();
    assert_eq!(status(sim.result(c, 1)), Some(TaskStatus::Ok));
    // Its place went to the fourth task, which now waits on the worker.
    assert_eq!(sim.workers[w].core.waiting(), 2);

    for id in 2..=4 {
        sim.finish(w, id, ok());
    }
    assert_eq!(started(&sim, w), [1, 2, 3, 4]);
    for id in 1..=4 {
        assert_eq!(sim.results_for(c, id), 1, "task {id}: one result");
        assert_eq!(status(sim.result(c, id)), Some(TaskStatus::Ok));
    }
    assert_eq!(sim.workers[w].core.running(), 0);
}

#[test]
fn a_draining_worker_hands_back_what_waits_and_another_runs_it() {
    let mut sim = Sim::new(|_| {});
    let a = worker(&mut sim, "a", 1, 1);
    let c = sim.client("app");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(started(&sim, a), [1]);
    assert_eq!(sim.workers[a].core.waiting(), 1);

    let now = sim.now;
    sim.workers[a].core.drain_for(now, Duration::from_secs(60));
    sim.settle();
    // Handed back at once, never started here; the running one goes on.
    assert_eq!(sim.workers[a].core.waiting(), 0);
    assert_eq!(sim.workers[a].core.running(), 1);
    assert_eq!(sim.result(c, 2), None, "task 2 waits for another worker");

    let b = worker(&mut sim, "b", 1, 0);
    assert_eq!(started(&sim, b), [2]);
    sim.finish(b, 2, ok());
    sim.finish(a, 1, ok());
    assert_eq!(
        started(&sim, a),
        [1],
        "the drained worker started nothing new"
    );
    for id in 1..=2 {
        assert_eq!(sim.results_for(c, id), 1);
        assert_eq!(status(sim.result(c, id)), Some(TaskStatus::Ok));
    }
}

#[test]
fn a_lost_link_drops_what_waits_and_a_cancel_takes_it_out() {
    let mut sim = Sim::new(|_| {});
    let w = worker(&mut sim, "w", 1, 1);
    let c = sim.client("app");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(sim.workers[w].core.waiting(), 1);

    // A cancelled waiting task is gone without a stop (it never started),
    // and does not start when the slot frees.
    sim.cancel(c, 2);
    assert_eq!(sim.workers[w].core.waiting(), 0);
    assert!(sim.workers[w].aborted.is_empty());
    sim.finish(w, 1, ok());
    assert_eq!(started(&sim, w), [1]);

    sim.submit(c, &task(3, "sleep"), b"");
    sim.submit(c, &task(4, "sleep"), b"");
    assert_eq!(started(&sim, w), [1, 3]);
    assert_eq!(sim.workers[w].core.waiting(), 1);
    // The distributor is lost: the waiting task is dropped at once (the
    // one that takes over places it anew); the running one is kept for a
    // takeover.
    sim.disconnect(w);
    assert_eq!(sim.workers[w].core.waiting(), 0);
    assert_eq!(sim.workers[w].core.running(), 1);
    let (link, task) = {
        let r = &sim.workers[w].running[0];
        (r.link, r.task)
    };
    let now = sim.now;
    sim.workers[w]
        .core
        .task_finished(now, link, task, ok(), Duration::from_millis(1));
    assert!(
        std::iter::from_fn(|| sim.workers[w].core.poll_action())
            .next()
            .is_none(),
        "nothing starts after the loss"
    );
}

#[test]
fn a_free_slot_elsewhere_wins_over_a_place_ahead() {
    let mut sim = Sim::new(|_| {});
    let a = worker(&mut sim, "a", 1, 4);
    let c = sim.client("app");
    sim.submit(c, &task(1, "sleep"), b"");
    // Its report that the slot is taken has gone out.
    sim.advance(Duration::from_millis(50));
    let b = worker(&mut sim, "b", 1, 0);
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(started(&sim, a), [1]);
    assert_eq!(started(&sim, b), [2], "the idle worker takes it");
    assert_eq!(sim.workers[a].core.waiting(), 0);
}

#[test]
fn a_task_wider_than_the_slots_is_refused_for_good() {
    let mut sim = Sim::new(|_| {});
    let w = worker(&mut sim, "w", 1, 1);
    let c = sim.client("app");
    sim.submit(c, &wide(1), b"");
    sim.advance(Duration::from_secs(2));
    assert!(started(&sim, w).is_empty(), "it never starts there");
    assert_eq!(sim.workers[w].core.running(), 0);
    // Refused once, for good: not as busy, which would have it placed
    // there again at every report.
    let st = sim.d(0).stats();
    assert_eq!((st.refused, st.refused_busy), (1, 0), "{st:?}");
    // The only worker ruled itself out: the task ends in a visible error.
    let r = sim.result(c, 1).expect("a result");
    assert_eq!(r.status, TaskStatus::Error, "{r:?}");
    assert!(r.message.contains("no other worker"), "{r:?}");
    assert_eq!(sim.results_for(c, 1), 1);
}

#[test]
fn a_lost_link_drops_every_waiting_task_without_starting_one() {
    let mut sim = Sim::new(|_| {});
    let w = worker(&mut sim, "w", 2, 2);
    let c = sim.client("app");
    // 1 runs on one slot; 2 needs both and waits; 3 would fit the free
    // slot but waits behind 2, in the order they came.
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &wide(2), b"");
    sim.submit(c, &task(3, "sleep"), b"");
    assert_eq!(started(&sim, w), [1]);
    assert_eq!(sim.workers[w].core.waiting(), 2);

    sim.disconnect(w);
    // Taking 2 out must not start 3, which goes too.
    assert_eq!(started(&sim, w), [1]);
    assert_eq!(sim.workers[w].core.waiting(), 0);
    assert_eq!(sim.workers[w].core.running(), 1);
    // Only the running task holds a place: three of four are free.
    assert_eq!(sim.workers[w].core.free().0, 3);
}

#[test]
fn results_leave_together_while_tasks_wait_and_never_late() {
    let mut sim = Sim::new(|_| {});
    // One slot, four places ahead: results wait to leave together while
    // more than two tasks wait here.
    let w = worker(&mut sim, "w", 1, 4);
    let c = sim.client("app");
    for id in 1..=5 {
        sim.submit(c, &task(id, "sleep"), b"");
    }
    assert_eq!(sim.workers[w].core.waiting(), 4);

    // Three still wait after the first ends: its result is held.
    sim.finish(w, 1, ok());
    assert_eq!(started(&sim, w), [1, 2]);
    assert_eq!(sim.result(c, 1), None, "held while three tasks wait");
    // Two wait after the second: both results leave now, together.
    sim.finish(w, 2, ok());
    for id in 1..=2 {
        assert_eq!(sim.results_for(c, id), 1, "task {id}: one result");
        assert_eq!(status(sim.result(c, id)), Some(TaskStatus::Ok));
    }

    // Held, but never for longer than RESULT_HOLD.
    sim.submit(c, &task(6, "sleep"), b"");
    sim.submit(c, &task(7, "sleep"), b"");
    assert_eq!(sim.workers[w].core.waiting(), 4);
    sim.finish(w, 3, ok());
    assert_eq!(sim.result(c, 3), None);
    sim.advance(RESULT_HOLD - Duration::from_millis(1));
    assert_eq!(sim.result(c, 3), None, "not before its time is up");
    sim.advance(Duration::from_millis(1));
    assert_eq!(status(sim.result(c, 3)), Some(TaskStatus::Ok));

    // A drain lets a held result go at once.
    sim.submit(c, &task(8, "sleep"), b"");
    assert_eq!(sim.workers[w].core.waiting(), 4);
    sim.finish(w, 4, ok());
    assert_eq!(sim.result(c, 4), None);
    let now = sim.now;
    sim.workers[w].core.drain_for(now, Duration::from_secs(60));
    sim.settle();
    assert_eq!(status(sim.result(c, 4)), Some(TaskStatus::Ok));
    assert_eq!(sim.results_for(c, 4), 1);
}
