//! The distributor and worker cores driven together in memory on a fake
//! clock (see `harness`): each rule of placement, waiting, cancel,
//! refusal, deadlines, resubmission, loss and liveness, in milliseconds.

mod harness;

use std::time::Duration;

use allot::apps::AppOutcome;
use allot_engine::ServerState;
use allot_wire::{ErrorCode, TaskStatus};
use bytes::Bytes;
use harness::{status, task, Sim};

fn ok(out: &'static [u8]) -> AppOutcome {
    AppOutcome::Ok(Bytes::from_static(out))
}

#[test]
fn a_task_runs_and_its_result_comes_back_once() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"10");
    assert_eq!(sim.workers[w].runs.len(), 1);
    let t = sim.workers[w].runs[0].0;
    assert_eq!(sim.result(c, 1), None, "no result before the run ends");
    sim.finish(w, t, ok(b"done"));
    let r = sim.result(c, 1).expect("a result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(r.worker, "w-1");
    assert_eq!(sim.clients[c].results[0].1, Bytes::from_static(b"done"));
    assert_eq!(sim.results_for(c, 1), 1);
}

#[test]
fn echo_is_answered_inline_with_the_payload() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["echo"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(5, "echo"), b"hello");
    assert_eq!(status(sim.result(c, 5)), Some(TaskStatus::Ok));
    assert_eq!(sim.clients[c].results[0].1, Bytes::from_static(b"hello"));
}

#[test]
fn a_task_waits_for_capacity_then_is_placed() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(sim.workers[w].runs.len(), 1, "one slot: the second waits");
    assert_eq!(sim.dist.tasks_in_flight(), (1, 1));
    assert_eq!(sim.result(c, 2), None, "waiting is not a verdict");
    let first = sim.workers[w].runs[0].0;
    sim.finish(w, first, ok(b"1"));
    assert_eq!(
        sim.workers[w].runs.len(),
        2,
        "the freed slot takes the waiting task"
    );
    let second = sim.workers[w].runs[1].0;
    sim.finish(w, second, ok(b"2"));
    assert_eq!(status(sim.result(c, 2)), Some(TaskStatus::Ok));
}

#[test]
fn a_waiting_task_fails_after_the_queue_timeout_with_the_reason() {
    let mut sim = Sim::new(|cfg| cfg.queue_timeout = Duration::from_secs(2));
    sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    sim.advance(Duration::from_millis(1900));
    assert_eq!(sim.result(c, 2), None);
    sim.advance(Duration::from_millis(400));
    let r = sim.result(c, 2).expect("failed visibly");
    assert_eq!(r.status, TaskStatus::NoMatch);
    assert!(
        r.message.contains("waited 2 s for capacity"),
        "{}",
        r.message
    );
}

#[test]
fn cancel_of_a_waiting_task() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    sim.cancel(c, 2);
    assert_eq!(status(sim.result(c, 2)), Some(TaskStatus::Cancelled));
    assert_eq!(sim.dist.tasks_in_flight(), (1, 0));
    // It is gone: the slot freed later is not given to it.
    let first = sim.workers[w].runs[0].0;
    sim.finish(w, first, ok(b""));
    assert_eq!(sim.workers[w].runs.len(), 1);
    assert_eq!(sim.results_for(c, 2), 1);
}

#[test]
fn cancel_of_a_running_task_stops_it_on_the_worker() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let t = sim.workers[w].runs[0].0;
    sim.cancel(c, 1);
    assert_eq!(status(sim.result(c, 1)), Some(TaskStatus::Cancelled));
    assert_eq!(
        sim.workers[w].aborted,
        vec![t],
        "the worker was told to stop it"
    );
    assert_eq!(sim.workers[w].core.free().0, 1, "its slot is free again");
    // The next task gets the slot at once.
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(sim.workers[w].runs.len(), 2);
}

#[test]
fn cancel_of_a_running_task_hands_its_slot_to_a_waiting_one_at_once() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.submit(c, &task(2, "sleep"), b"");
    assert_eq!(sim.workers[w].runs.len(), 1);
    sim.cancel(c, 1);
    assert_eq!(
        sim.workers[w].runs.len(),
        2,
        "placed without waiting for a sweep"
    );
}

#[test]
fn cancel_from_another_link_does_not_touch_the_task() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let a = sim.client("alice");
    let b = sim.client("bob");
    sim.submit(a, &task(1, "sleep"), b"");
    sim.cancel(b, 1);
    assert!(sim.workers[w].aborted.is_empty());
    assert_eq!(sim.result(a, 1), None);
}

#[test]
fn two_members_taking_one_slot_count_a_busy_refusal_and_report_it() {
    let mut sim = Sim::new(|_| {});
    let d2 = sim.add_distributor("dist-2");
    // One slot, seen by both members (broadcast).
    let w = sim.worker("w-1", &["sleep"], 1);
    let a = sim.client_at(0, "alice");
    let b = sim.client_at(d2, "bob");
    // Both members place before either hears that the other took the slot.
    let now = sim.now;
    let (la, lb) = (sim.clients[a].link, sim.clients[b].link);
    sim.d(0)
        .handle_frame(now, la, harness::frame(&task(1, "sleep"), b""));
    sim.d(d2)
        .handle_frame(now, lb, harness::frame(&task(2, "sleep"), b""));
    sim.settle();
    assert_eq!(sim.workers[w].runs.len(), 1, "the worker admits one");
    let busy = |sim: &mut Sim, d: usize| sim.d(d).stats().refused_busy;
    assert_eq!(busy(&mut sim, 0) + busy(&mut sim, d2), 1);
    let loser = if busy(&mut sim, 0) == 1 { a } else { b };
    // The status says so, and a query for no workers still counts them.
    let q = allot_wire::StatusQuery {
        include_down: true,
        max_workers: 0,
    };
    let st = sim.ask_status(loser, q.clone());
    assert!(st.workers.is_empty());
    assert_eq!((st.workers_total, st.workers_up), (1, 1));
    assert_eq!(st.counters.refused_busy, 1);
    assert_eq!(st.counters.refused, 1);
    assert_eq!(st.counters.submitted, 1);
    assert_eq!(st.counters.completed, 0);
    // The refused task waited, not failed: it runs once the slot frees.
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, ok(b"x"));
    // The worker's next delta (one coalescing window later, well before
    // its periodic full report) frees it in the loser's view, though its
    // free slots are back where it last reported them.
    sim.advance(Duration::from_millis(50));
    assert_eq!(sim.workers[w].runs.len(), 2, "the refused task ran next");
    let t = sim.workers[w].runs[1].0;
    sim.finish(w, t, ok(b"y"));
    assert_eq!(status(sim.result(a, 1)), Some(TaskStatus::Ok));
    assert_eq!(status(sim.result(b, 2)), Some(TaskStatus::Ok));
    let st = sim.ask_status(loser, q);
    assert_eq!(st.counters.completed, 1);
    assert_eq!(st.counters.refused_busy, 1, "counted once");
}

#[test]
fn a_status_lists_what_was_asked_and_counts_every_worker() {
    let mut sim = Sim::new(|_| {});
    for i in 0..3 {
        sim.worker(&format!("w-{i}"), &["echo"], 1);
    }
    let c = sim.client("cli");
    let ask = |sim: &mut Sim, include_down, max_workers| {
        sim.ask_status(
            c,
            allot_wire::StatusQuery {
                include_down,
                max_workers,
            },
        )
    };
    let all = ask(&mut sim, true, u32::MAX);
    assert_eq!(all.workers.len(), 3);
    assert_eq!((all.workers_total, all.workers_up), (3, 3));
    let two = ask(&mut sim, true, 2);
    assert_eq!(two.workers.len(), 2);
    assert_eq!(two.workers_total, 3);
    // A worker lost: listed as down only when asked for, counted always.
    sim.disconnect(1);
    let up_only = ask(&mut sim, false, u32::MAX);
    assert_eq!(up_only.workers.len(), 2);
    assert!(up_only.workers.iter().all(|w| w.name != "w-1"));
    assert_eq!((up_only.workers_total, up_only.workers_up), (3, 2));
    assert_eq!(ask(&mut sim, true, u32::MAX).workers.len(), 3);
    // Time passes with no word from the workers: the stalest report says
    // how long.
    sim.advance_silent(Duration::from_millis(700), 0);
    let st = ask(&mut sim, true, 0);
    assert!(st.stalest_report_ms >= 700, "{}", st.stalest_report_ms);
}

#[test]
fn a_refused_placement_goes_to_the_next_worker() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-a", &["sleep"], 1);
    let b = sim.worker("w-b", &["sleep"], 1);
    let c = sim.client("cli");
    // Both workers are idle and equal: the task goes to one of them. That
    // one starts draining before the placement reaches it (a stale view).
    let chosen = {
        let link = sim.clients[c].link;
        sim.dist
            .handle_frame(sim.now, link, harness::frame(&task(1, "sleep"), b""));
        // Nothing is delivered yet; the worker drains first.
        let t = sim.dist.poll_transmit().expect("an assign");
        let chosen = if t.link == sim.workers[a].at_dist {
            a
        } else {
            b
        };
        let now = sim.now;
        sim.workers[chosen].core.drain(now);
        // Deliver the assign now, after the drain.
        let at_worker = sim.workers[chosen].at_worker;
        let mut dec = allot_wire::FrameDecoder::new(allot_wire::DEFAULT_MAX_FRAME);
        for ch in &t.chunks {
            dec.feed(ch);
        }
        while let Some(f) = dec.next_frame().expect("frame") {
            sim.workers[chosen].core.handle_frame(now, at_worker, f);
        }
        sim.dist.handle_written(t.link, t.len);
        sim.settle();
        chosen
    };
    let other = if chosen == a { b } else { a };
    assert!(
        sim.workers[chosen].runs.is_empty(),
        "a draining worker takes nothing"
    );
    assert_eq!(
        sim.workers[other].runs.len(),
        1,
        "re-placed on the other worker"
    );
    assert_eq!(sim.dist.stats().refused, 1);
    let t = sim.workers[other].runs[0].0;
    sim.finish(other, t, ok(b"x"));
    let r = sim.result(c, 1).expect("result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(
        r.attempts, 2,
        "the refusal counted as an attempt on a worker that never will"
    );
    // The draining worker is out of the table's choices from now on.
    let id = sim
        .dist
        .table()
        .lookup(if chosen == a { "w-a" } else { "w-b" })
        .expect("row");
    assert_eq!(sim.dist.table().state(id), Some(ServerState::Draining));
}

#[test]
fn a_deadline_that_passes_while_running_stops_the_task() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    let mut s = task(1, "sleep");
    s.deadline_ms = 300;
    sim.submit(c, &s, b"");
    sim.advance(Duration::from_millis(250));
    assert_eq!(sim.result(c, 1), None);
    sim.advance(Duration::from_millis(200));
    let r = sim.result(c, 1).expect("timed out visibly");
    assert_eq!(r.status, TaskStatus::Timeout);
    assert!(
        r.message.contains("deadline of 300 ms passed"),
        "{}",
        r.message
    );
    assert_eq!(
        sim.workers[w].aborted.len(),
        1,
        "the worker was told to stop"
    );
    assert_eq!(sim.results_for(c, 1), 1);
}

#[test]
fn a_deadline_that_passes_while_waiting_fails_the_task() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let mut s = task(2, "sleep");
    s.deadline_ms = 100;
    sim.submit(c, &s, b"");
    sim.advance(Duration::from_millis(200));
    let r = sim.result(c, 2).expect("timed out");
    assert_eq!(r.status, TaskStatus::Timeout);
    assert!(
        r.message.contains("while waiting for capacity"),
        "{}",
        r.message
    );
}

#[test]
fn a_resubmission_under_the_same_key_joins_the_running_task() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 4);
    let first = sim.client("cli");
    sim.submit(first, &task(1, "sleep"), b"");
    // The client fails over to a new link while the first is still open
    // and resubmits under the same key (with a new task id on that link).
    let second = sim.client("cli");
    let mut again = task(77, "sleep");
    again.idempotency_key = 1;
    sim.submit(second, &again, b"");
    assert_eq!(sim.workers[w].runs.len(), 1, "not run twice");
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, ok(b"once"));
    assert_eq!(status(sim.result(second, 77)), Some(TaskStatus::Ok));
    assert_eq!(
        sim.result(first, 1),
        None,
        "the result goes to the new link"
    );
}

#[test]
fn a_key_used_again_after_its_task_ended_gets_the_kept_result() {
    // An idempotency key names one task: the worker that ran it answers a
    // second assignment with the result it kept, without running it again.
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 4);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, ok(b"first"));
    let mut again = task(2, "sleep");
    again.idempotency_key = 1;
    sim.submit(c, &again, b"");
    assert_eq!(sim.workers[w].runs.len(), 1, "not run again");
    assert_eq!(status(sim.result(c, 2)), Some(TaskStatus::Ok));
    let out = &sim.clients[c].results.last().expect("result").1;
    assert_eq!(out, &Bytes::from_static(b"first"));
}

#[test]
fn a_worker_lost_mid_task_has_its_task_run_elsewhere() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-a", &["sleep"], 1);
    let b = sim.worker("w-b", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let (on, other) = if sim.workers[a].runs.is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    sim.disconnect(on);
    assert_eq!(
        sim.workers[other].runs.len(),
        1,
        "retried on the other worker"
    );
    assert_eq!(sim.dist.stats().retried, 1);
    // The cut-off worker keeps the run for a member that may take over,
    // then stops it.
    assert!(sim.workers[on].aborted.is_empty());
    let t = sim.workers[other].runs[0].0;
    sim.finish(other, t, ok(b"x"));
    let r = sim.result(c, 1).expect("result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(r.attempts, 2);
    sim.advance(Duration::from_secs(61));
    assert_eq!(
        sim.workers[on].aborted.len(),
        1,
        "stopped after the orphan grace"
    );
}

#[test]
fn a_worker_lost_with_no_other_fails_after_max_attempts_visibly() {
    let mut sim = Sim::new(|cfg| cfg.max_attempts = 1);
    let a = sim.worker("w-a", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    sim.disconnect(a);
    let r = sim.result(c, 1).expect("an error, not silence");
    assert_eq!(r.status, TaskStatus::Error);
    assert!(
        r.message.contains("gave up after 1 attempts"),
        "{}",
        r.message
    );
}

#[test]
fn a_silent_worker_is_marked_down_and_up_again_when_it_reports() {
    let mut sim = Sim::new(|cfg| {
        cfg.heartbeat = Duration::from_millis(100);
        cfg.missed_heartbeats = 3;
    });
    let w = sim.worker("w-1", &["echo"], 1);
    let id = sim.dist.table().lookup("w-1").expect("row");
    // Heartbeats keep it up.
    sim.advance(Duration::from_millis(1000));
    assert_eq!(sim.dist.table().state(id), Some(ServerState::Up));
    // Silent past three periods: down.
    // (Its last heartbeat was at most one 100 ms period ago.)
    sim.advance_silent(Duration::from_millis(150), w);
    assert_eq!(
        sim.dist.table().state(id),
        Some(ServerState::Up),
        "not before the limit"
    );
    sim.advance_silent(Duration::from_millis(250), w);
    assert_eq!(sim.dist.table().state(id), Some(ServerState::Down));
    // Nothing is placed on it while down.
    let c = sim.client("cli");
    sim.submit(c, &task(1, "echo"), b"");
    assert_eq!(
        sim.result(c, 1),
        None,
        "waits: the only worker is down for now"
    );
    // Its next heartbeat brings it back, and the waiting task runs.
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.dist.table().state(id), Some(ServerState::Up));
    assert_eq!(status(sim.result(c, 1)), Some(TaskStatus::Ok));
}

#[test]
fn a_client_that_does_not_read_is_disconnected_and_its_tasks_cancelled() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["echo", "sleep"], 4);
    let c = sim.client("cli");
    sim.clients[c].stuck = true;
    // A task that runs long, then results of 1 MiB echoes the client
    // never reads, until its link passes its bound.
    sim.submit(c, &task(1000, "sleep"), b"");
    let payload = vec![7u8; 1 << 20];
    for i in 0..40 {
        sim.submit(c, &task(i, "echo"), &payload);
        if sim.clients[c].closed.is_some() {
            break;
        }
    }
    let (code, message) = sim.clients[c]
        .closed
        .clone()
        .expect("disconnected with an error");
    assert_eq!(code, ErrorCode::Overloaded);
    assert!(message.contains("not reading"), "{message}");
    assert_eq!(sim.dist.stats().clients_disconnected, 1);
    assert_eq!(
        sim.workers[w].aborted.len(),
        1,
        "its running task is cancelled"
    );
    assert_eq!(sim.dist.tasks_in_flight(), (0, 0));
}

#[test]
fn a_draining_worker_reports_at_once_and_is_not_chosen() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-a", &["echo"], 1);
    let b = sim.worker("w-b", &["echo"], 1);
    let now = sim.now;
    sim.workers[a].core.drain(now);
    sim.settle();
    let id = sim.dist.table().lookup("w-a").expect("row");
    assert_eq!(sim.dist.table().state(id), Some(ServerState::Draining));
    let c = sim.client("cli");
    for i in 0..5 {
        sim.submit(c, &task(i, "echo"), b"");
        assert_eq!(sim.result(c, i).expect("result").worker, "w-b");
    }
    assert_eq!(sim.workers[b].core.done(), 5);
    assert_eq!(sim.workers[a].core.done(), 0);
}

#[test]
fn task_events_are_coalesced_into_one_report_per_window() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 8);
    let c = sim.client("cli");
    for i in 0..8 {
        sim.submit(c, &task(i, "sleep"), b"");
    }
    assert_eq!(
        sim.workers[w].deltas, 0,
        "no report yet: the window is open"
    );
    sim.advance(Duration::from_millis(10));
    assert_eq!(sim.workers[w].deltas, 1, "eight starts, one report");
    assert_eq!(sim.workers[w].running.len(), 8);
    for i in 0..4 {
        let t = sim.workers[w].running[0].task;
        sim.finish(w, t, ok(b""));
        assert_eq!(status(sim.result(c, i)), Some(TaskStatus::Ok));
    }
    sim.advance(Duration::from_millis(10));
    assert_eq!(sim.workers[w].deltas, 2, "four ends, one report");
}

#[test]
fn a_bad_frame_closes_only_its_link() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["echo"], 1);
    let bad = sim.client("mallory");
    let good = sim.client("alice");
    // A client may not send a worker's messages.
    let link = sim.clients[bad].link;
    let hb = allot_wire::Heartbeat {
        worker_id: 1,
        seq: 1,
    };
    sim.dist
        .handle_frame(sim.now, link, harness::frame(&hb, b""));
    sim.settle();
    let (code, msg) = sim.clients[bad].closed.clone().expect("closed");
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(msg.contains("a client may not send"), "{msg}");
    sim.submit(good, &task(1, "echo"), b"hi");
    assert_eq!(status(sim.result(good, 1)), Some(TaskStatus::Ok));
}

#[test]
fn a_restarted_distributor_holds_tasks_until_workers_register() {
    let mut sim = Sim::new(|_| {});
    let c = sim.client("cli");
    // No worker yet (the distributor just restarted): not a verdict.
    sim.submit(c, &task(1, "echo"), b"hi");
    assert_eq!(sim.result(c, 1), None);
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.result(c, 1), None, "still held");
    sim.worker("w-1", &["echo"], 1);
    assert_eq!(
        status(sim.result(c, 1)),
        Some(TaskStatus::Ok),
        "placed as the worker registers"
    );
}

#[test]
fn an_empty_table_fails_a_task_only_after_the_queue_timeout_and_says_why() {
    let mut sim = Sim::new(|cfg| {
        cfg.queue_timeout = Duration::from_secs(1);
        cfg.startup_grace = Duration::ZERO;
    });
    let c = sim.client("cli");
    sim.submit(c, &task(1, "echo"), b"");
    sim.advance(Duration::from_millis(900));
    assert_eq!(sim.result(c, 1), None, "0 of 0 is not a verdict");
    sim.advance(Duration::from_millis(400));
    let r = sim.result(c, 1).expect("a clear error at the bound");
    assert_eq!(r.status, TaskStatus::NoMatch);
    assert!(
        r.message.contains("no worker has registered"),
        "{}",
        r.message
    );
}

#[test]
fn during_the_grace_a_task_no_worker_matches_waits_until_the_table_settles() {
    let mut sim = Sim::new(|cfg| cfg.startup_grace = Duration::from_secs(3));
    sim.worker("w-1", &["echo"], 1);
    let c = sim.client("cli");
    let mut s = task(1, "echo");
    s.require = "server.region == 'mars'".into();
    sim.submit(c, &s, b"");
    assert_eq!(sim.result(c, 1), None, "another worker may still register");
    // A second one, on a clause (a demand) that also fails every worker.
    let mut second = task(2, "echo");
    second.require = "server.cores >= 64".into();
    sim.submit(c, &second, b"");
    sim.advance(Duration::from_millis(600));
    // The table settled (no registration for 500 ms): verdicts now.
    for id in [1, 2] {
        assert_eq!(
            status(sim.result(c, id)),
            Some(TaskStatus::NoMatch),
            "task {id}"
        );
    }
    // Past the grace, a task no worker matches fails at once.
    let mut third = task(3, "echo");
    third.require = "server.region == 'mars'".into();
    sim.submit(c, &third, b"");
    assert_eq!(status(sim.result(c, 3)), Some(TaskStatus::NoMatch));
}

/// A resubmission after the client's distributor died.
fn resubmitted(id: u64, key: u64, app: &str) -> allot_wire::Submit {
    let mut s = task(id, app);
    s.idempotency_key = key;
    s.resubmit = true;
    s
}

#[test]
fn a_failover_joins_the_run_on_the_worker_instead_of_running_twice() {
    // The member that takes over has been up for long: no startup grace.
    let mut sim = Sim::new(|cfg| cfg.startup_grace = Duration::ZERO);
    let d2 = sim.add_distributor("dist-2");
    let w = sim.worker("w-1", &["sleep"], 1);
    let other = sim.worker("w-2", &["sleep"], 1);
    let c1 = sim.client("cli");
    sim.submit(c1, &task(1, "sleep"), b"job");
    let (runner, idle) = if sim.workers[w].runs.is_empty() {
        (other, w)
    } else {
        (w, other)
    };
    assert_eq!(sim.workers[runner].runs.len(), 1);
    // Its distributor dies; the client goes to the other member and sends
    // the task again under the same key.
    sim.kill_distributor(0);
    assert!(
        sim.workers[runner].aborted.is_empty(),
        "the run goes on for now"
    );
    let c2 = sim.client_at(d2, "cli");
    sim.submit(c2, &resubmitted(9, 1, "sleep"), b"job");
    let t = sim.workers[runner].running[0].task;
    assert_eq!(sim.workers[runner].runs.len(), 1, "joined, not run twice");
    assert!(sim.workers[idle].runs.is_empty(), "not placed elsewhere");
    sim.finish(runner, t, ok(b"once"));
    let r = sim.result(c2, 9).expect("the new member answers");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(&sim.clients[c2].results[0].1, &Bytes::from_static(b"once"));
}

#[test]
fn a_failover_after_the_task_ran_gets_the_kept_result() {
    // The member that takes over has been up for long: no startup grace.
    let mut sim = Sim::new(|cfg| cfg.startup_grace = Duration::ZERO);
    let d2 = sim.add_distributor("dist-2");
    let w = sim.worker("w-1", &["sleep"], 1);
    sim.worker("w-2", &["sleep"], 1);
    let c1 = sim.client("cli");
    sim.submit(c1, &task(1, "sleep"), b"job");
    let runner = if sim.workers[w].runs.is_empty() { 1 } else { 0 };
    // The task ends, but its result never reaches the client: the
    // distributor dies with it.
    sim.clients[c1].cut = true;
    let t = sim.workers[runner].runs[0].0;
    sim.finish(runner, t, ok(b"ran once"));
    sim.kill_distributor(0);
    assert_eq!(sim.result(c1, 1), None);
    let c2 = sim.client_at(d2, "cli");
    sim.submit(c2, &resubmitted(5, 1, "sleep"), b"job");
    let runs: usize = sim.workers.iter().map(|w| w.runs.len()).sum();
    assert_eq!(runs, 1, "the task ran exactly once");
    let r = sim.result(c2, 5).expect("answered from the kept result");
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(
        &sim.clients[c2].results[0].1,
        &Bytes::from_static(b"ran once")
    );
}

#[test]
fn a_resubmission_no_worker_holds_is_placed_as_new() {
    // The member that takes over has been up for long: no startup grace.
    let mut sim = Sim::new(|cfg| cfg.startup_grace = Duration::ZERO);
    let d2 = sim.add_distributor("dist-2");
    let w = sim.worker("w-1", &["sleep"], 1);
    let c2 = sim.client_at(d2, "cli");
    // The first distributor died before it placed the task anywhere.
    sim.submit(c2, &resubmitted(3, 77, "sleep"), b"");
    assert_eq!(
        sim.workers[w].runs.len(),
        1,
        "placed once every worker said no"
    );
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, ok(b""));
    assert_eq!(status(sim.result(c2, 3)), Some(TaskStatus::Ok));
}

#[test]
fn a_worker_that_never_answers_the_key_query_delays_placement_by_a_bound() {
    // The member that takes over has been up for long: no startup grace.
    let mut sim = Sim::new(|cfg| cfg.startup_grace = Duration::ZERO);
    let d2 = sim.add_distributor("dist-2");
    let a = sim.worker("w-a", &["sleep"], 1);
    let b = sim.worker("w-b", &["sleep"], 1);
    // w-b hangs: its frames no longer reach dist-2.
    for l in sim.workers[b].links.iter_mut() {
        if l.dist == d2 {
            l.up = false;
        }
    }
    let c2 = sim.client_at(d2, "cli");
    sim.submit(c2, &resubmitted(3, 77, "sleep"), b"");
    assert!(sim.workers[a].runs.is_empty(), "waits for every answer");
    sim.advance(allot::distributor::LOCATE_TIMEOUT + Duration::from_millis(20));
    let runs: usize = sim.workers.iter().map(|w| w.runs.len()).sum();
    assert_eq!(runs, 1, "placed once the query timed out");
}

#[test]
fn a_worker_lost_mid_task_runs_it_again_elsewhere_with_the_next_attempt() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-a", &["sleep"], 1);
    let b = sim.worker("w-b", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    let (on, other) = if sim.workers[a].runs.is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(sim.workers[on].attempts, vec![1]);
    sim.disconnect(on);
    assert_eq!(
        sim.workers[other].attempts,
        vec![2],
        "at least once, and the app can tell"
    );
}

#[test]
fn a_resubmission_to_a_restarted_member_waits_for_the_workers_to_answer() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-a", &["sleep"], 1);
    let b = sim.worker("w-b", &["sleep"], 1);
    let c1 = sim.client("cli");
    sim.submit(c1, &task(1, "sleep"), b"job");
    let (runner, other) = if sim.workers[a].runs.is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    // The whole set restarts: a new member knows no worker yet when the
    // client resubmits.
    sim.kill_distributor(0);
    let d2 = sim.add_distributor("dist-2");
    let c2 = sim.client_at(d2, "cli");
    sim.submit(c2, &resubmitted(4, 1, "sleep"), b"job");
    sim.advance(Duration::from_millis(200));
    // The workers re-register (the idle one first), then the table settles.
    sim.reconnect(other, d2);
    sim.reconnect(runner, d2);
    sim.advance(Duration::from_millis(600));
    assert_eq!(
        sim.workers[other].runs.len(),
        0,
        "not run on a worker that never had it"
    );
    assert_eq!(sim.workers[runner].runs.len(), 1, "joined the run it had");
    let t = sim.workers[runner].running[0].task;
    sim.finish(runner, t, ok(b"once"));
    assert_eq!(status(sim.result(c2, 4)), Some(TaskStatus::Ok));
}

/// A user record with a priority and an in-flight quota (0: none).
fn user(name: &str, priority: i32, max_in_flight: u32) -> allot_engine::UserRecord {
    let mut u = allot_engine::UserRecord::new(name);
    u.priority = priority;
    u.max_in_flight = max_in_flight;
    u
}

/// Tasks waiting for capacity get it by task priority, then age.
#[test]
fn waiting_tasks_are_placed_by_priority_then_age() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"first");
    for (id, prio, input) in [
        (2, 0, "old"),
        (3, 5, "urgent"),
        (4, 0, "new"),
        (5, -1, "low"),
    ] {
        let mut s = task(id, "sleep");
        s.priority = prio;
        sim.submit(c, &s, input.as_bytes());
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let run = sim.workers[w].running[0].task;
        order.push(sim.inputs(w)[0].clone());
        sim.finish(w, run, ok(b""));
    }
    assert_eq!(order, ["first", "urgent", "old", "new", "low"]);
}

/// The user's priority (from the user DB) goes before the task's.
#[test]
fn a_higher_priority_user_goes_before_a_higher_priority_task() {
    let users = vec![user("alice", 0, 0), user("bob", 10, 0)];
    let mut sim = Sim::with_users(users, |_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"first");
    let mut a = task(2, "sleep");
    (a.user, a.priority) = ("alice".into(), 100);
    sim.submit(c, &a, b"alice");
    let mut b = task(3, "sleep");
    b.user = "bob".into();
    sim.submit(c, &b, b"bob");
    let run = sim.workers[w].running[0].task;
    sim.finish(w, run, ok(b""));
    assert_eq!(sim.inputs(w), ["bob"]);
}

/// A user at their in-flight quota does not hold back other users' tasks
/// queued behind theirs: when capacity frees, the next user's task is
/// placed at once, however many of the first user's tasks wait ahead.
#[test]
fn a_user_at_quota_does_not_hold_back_others() {
    let users = vec![user("alice", 0, 1), user("bob", 0, 0)];
    let mut sim = Sim::with_users(users, |_| {});
    let w = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("cli");
    let mut id = 0;
    let mut submit = |sim: &mut Sim, who: &str| {
        id += 1;
        let mut s = task(id, "sleep");
        s.user = who.into();
        sim.submit(c, &s, who.as_bytes());
        id
    };
    submit(&mut sim, "alice");
    for _ in 0..40 {
        submit(&mut sim, "alice");
    }
    submit(&mut sim, "bob");
    let last_bob = submit(&mut sim, "bob");
    assert_eq!(sim.inputs(w), ["alice", "bob"], "alice at quota, bob runs");
    let bob_run = sim.workers[w].running[1].task;
    sim.finish(w, bob_run, ok(b""));
    assert_eq!(
        sim.inputs(w),
        ["alice", "bob"],
        "the freed slot went to bob's waiting task, past 40 of alice's"
    );
    assert_eq!(sim.result(c, last_bob), None, "still running");
}

/// Two identical workers tie on `prefer` for every task: the placements
/// take turns, so each gets close to half, whether each task ends before
/// the next comes (echo, answered at once, as under `allot bench`) or
/// they pile up (sleep, held running).
#[test]
fn identical_workers_share_the_tasks() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["echo", "sleep"], 100);
    sim.worker("w-2", &["echo", "sleep"], 100);
    let c = sim.client("cli");
    for i in 1..=200 {
        sim.submit(c, &task(i, "echo"), b"x");
    }
    let on = |sim: &Sim, w: &str| {
        sim.clients[c]
            .results
            .iter()
            .filter(|(r, _)| r.status == TaskStatus::Ok && r.worker == w)
            .count()
    };
    let (a, b) = (on(&sim, "w-1"), on(&sim, "w-2"));
    assert_eq!(a + b, 200);
    assert!((80..=120).contains(&a), "echo: w-1 {a}, w-2 {b}");
    for i in 201..=300 {
        sim.submit(c, &task(i, "sleep"), b"10");
    }
    let (a, b) = (sim.workers[0].running.len(), sim.workers[1].running.len());
    assert_eq!(a + b, 100);
    assert!((40..=60).contains(&a), "sleep: w-1 {a}, w-2 {b}");
}
