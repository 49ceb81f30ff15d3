//! Jobs in the distributor core, driven in memory on a fake clock (see
//! `harness`): the ack waits for the journal, every task state, restarts
//! from what the journal wrote, priorities, cancel, remove, retention,
//! bounds and paging.

mod harness;

use std::time::Duration;

use allot::apps::AppOutcome;
use allot::distributor::jobs::record::{JournalOp, TaskStateRecord};
use allot::distributor::jobs::{MAX_JOBS, MAX_OUTPUT_PER_TASK, MAX_TASKS_PER_JOB};
use allot_engine::UserRecord;
use allot_wire::{JobOp, JobTaskState as S, JobTasks};
use bytes::Bytes;
use harness::{array, job_of, job_query, JournalMode, Sim};

fn ok(out: &[u8]) -> AppOutcome {
    AppOutcome::Ok(Bytes::copy_from_slice(out))
}

fn failed(code: i32, out: &[u8], why: &str) -> AppOutcome {
    AppOutcome::Failed {
        exit_code: code,
        output: Bytes::copy_from_slice(out),
        message: why.into(),
    }
}

/// The distributor's ids of the tasks worker `w` runs now, oldest first.
fn running(sim: &Sim, w: usize) -> Vec<u64> {
    sim.workers[w].running.iter().map(|r| r.task).collect()
}

/// The states of a job's tasks, in index order.
fn states(sim: &mut Sim, c: usize, id: &str) -> Vec<S> {
    sim.rows(c, id, None).iter().map(|r| r.state).collect()
}

/// Waits out the start-up grace and the settling of the table, so that
/// tasks matching no worker fail and key queries go out at once.
fn past_grace(sim: &mut Sim) {
    sim.advance(Duration::from_millis(3100));
}

// ---------------------------------------------------------------- durability of the ack

#[test]
fn a_job_is_acknowledged_and_started_only_once_its_creation_is_written() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 4);
    let c = sim.client("alice");
    sim.journal_mode(0, JournalMode::Hold);
    let first = sim.submit_job(c, &array("sleep", 1, 3), b"");
    assert!(sim.ack(c, first).is_none(), "no ack before the write");
    assert!(sim.workers[w].runs.is_empty(), "no task starts before it");
    let listed = sim.query(c, job_query(JobOp::List, ""));
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    let held = &sim.journals[0].held;
    assert_eq!(held.len(), 1);
    assert!(
        matches!(held[0].ops[..], [JournalOp::Created { num: 1, .. }]),
        "{:?}",
        held[0].ops
    );

    // A second job arrives while the first batch is being written: it
    // goes in the next batch, and its ack waits for that one.
    let second = sim.submit_job(c, &array("sleep", 1, 1), b"");
    sim.write_held(0);
    let ack = sim.ack(c, first).expect("acked once written").clone();
    assert_eq!(ack.error, "");
    assert_eq!(ack.job, "default/dist-1/1");
    assert_eq!((ack.tasks, ack.distributor.as_str()), (3, "dist-1"));
    assert!(sim.ack(c, second).is_none(), "its batch is not written yet");
    assert_eq!(sim.workers[w].runs.len(), 3, "the first job's tasks start");
    sim.release_journal(0);
    let ack = sim.ack(c, second).expect("acked once its batch is written");
    assert_eq!((ack.job.as_str(), ack.tasks), ("default/dist-1/2", 1));
    assert_eq!(sim.workers[w].runs.len(), 4);
}

#[test]
fn a_failed_write_is_answered_with_an_error_and_keeps_no_job() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 4);
    let c = sim.client("alice");
    sim.journal_mode(0, JournalMode::Hold);
    let r = sim.submit_job(c, &array("sleep", 1, 3), b"");
    sim.fail_journal(0, "disk full");
    let ack = sim.ack(c, r).expect("an answer, not silence").clone();
    assert_eq!((ack.job.as_str(), ack.tasks), ("", 0));
    assert!(
        ack.error.contains("could not be made durable") && ack.error.contains("disk full"),
        "{}",
        ack.error
    );
    assert_eq!(sim.dist.job_totals().0, 0, "the job is dropped");
    assert!(sim.workers[w].runs.is_empty());

    // Later submits are refused with the reason rather than acked on a
    // journal that does not write.
    sim.journal_mode(0, JournalMode::Commit);
    let r = sim.submit_job(c, &array("sleep", 1, 1), b"");
    let ack = sim.ack(c, r).expect("refused at once");
    assert!(
        ack.error.contains("cannot be written") && ack.error.contains("disk full"),
        "{}",
        ack.error
    );
}

#[test]
fn a_job_whose_creation_was_not_written_is_gone_after_a_restart() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["sleep"], 4);
    let c = sim.client("alice");
    let kept = sim.job(c, &array("sleep", 1, 1), b"");
    sim.journal_mode(0, JournalMode::Hold);
    let lost = sim.submit_job(c, &array("sleep", 1, 2), b"");
    sim.journal_mode(0, JournalMode::Commit);
    sim.restart_distributor(&[0]);
    assert!(sim.ack(c, lost).is_none(), "never acknowledged");
    let c = sim.client("alice");
    let listed = sim.query(c, job_query(JobOp::List, ""));
    let ids: Vec<&str> = listed.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(ids, [kept.as_str()]);
}

// ---------------------------------------------------------------- task states

#[test]
fn tasks_go_from_queued_to_waiting_to_running_to_done_or_failed() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("alice");
    let id = sim.job(c, &array("sleep", 10, 12), b"");
    let rows = sim.rows(c, &id, None);
    assert_eq!(
        rows.iter().map(|r| (r.index, r.state)).collect::<Vec<_>>(),
        [(10, S::Running), (11, S::Waiting), (12, S::Queued)],
        "one slot: the first runs, the next waits for it, the last is not started"
    );
    assert_eq!((rows[0].worker.as_str(), rows[0].attempts), ("w-1", 1));
    assert!(rows[0].started_ms >= harness::WALL_START_MS, "{rows:?}");
    assert!(
        rows[1].message.contains("waits for a worker"),
        "a waiting task says why: {:?}",
        rows[1].message
    );
    let s = sim.summary(c, &id);
    assert_eq!(
        (s.counts.queued, s.counts.waiting, s.counts.running),
        (1, 1, 1)
    );
    assert_eq!(s.finished_ms, 0);

    sim.advance(Duration::from_millis(50));
    let t = running(&sim, w)[0];
    sim.finish(w, t, ok(b"ten"));
    assert_eq!(states(&mut sim, c, &id), [S::Done, S::Running, S::Waiting]);
    let t = running(&sim, w)[0];
    sim.finish(w, t, failed(3, b"partial", "boom"));
    assert_eq!(states(&mut sim, c, &id), [S::Done, S::Failed, S::Running]);
    let t = running(&sim, w)[0];
    sim.finish(w, t, ok(b"twelve"));

    let rows = sim.rows(c, &id, None);
    assert_eq!(
        rows.iter().map(|r| r.state).collect::<Vec<_>>(),
        [S::Done, S::Failed, S::Done]
    );
    assert_eq!(rows[0].output, b"ten");
    assert!(rows[0].ended_ms >= rows[0].started_ms + 50, "{:?}", rows[0]);
    assert_eq!(
        (rows[1].exit_code, &rows[1].output[..]),
        (3, &b"partial"[..])
    );
    assert!(rows[1].message.contains("boom"), "{:?}", rows[1].message);
    let s = sim.summary(c, &id);
    assert_eq!((s.counts.done, s.counts.failed, s.tasks), (2, 1, 3));
    assert!(s.finished_ms >= rows[2].ended_ms, "{s:?}");
    // Every end is journaled with its state.
    sim.journal_catch_up();
    let ends: Vec<(u64, TaskStateRecord)> = sim.journals[0]
        .ops()
        .filter_map(|op| match op {
            JournalOp::Task { offset, rec, .. } => Some((*offset, rec.state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        [
            (0, TaskStateRecord::Done),
            (1, TaskStateRecord::Failed),
            (2, TaskStateRecord::Done)
        ]
    );
}

#[test]
fn tasks_that_match_no_worker_fail_with_the_reason() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["sleep"], 1);
    past_grace(&mut sim);
    let c = sim.client("alice");
    let id = sim.job(c, &array("render", 0, 2), b"");
    let rows = sim.rows(c, &id, None);
    assert!(rows.iter().all(|r| r.state == S::Failed), "{rows:?}");
    assert!(rows[0].message.contains("render"), "{:?}", rows[0].message);
    assert_eq!(sim.summary(c, &id).counts.failed, 3);
}

#[test]
fn a_task_on_a_lost_worker_runs_again_on_another() {
    let mut sim = Sim::new(|_| {});
    let a = sim.worker("w-1", &["sleep"], 1);
    let b = sim.worker("w-2", &["sleep"], 1);
    let c = sim.client("alice");
    let id = sim.job(c, &job_of("sleep", JobTasks::One), b"x");
    let (first, other) = if sim.workers[a].runs.is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    let first_name = sim.workers[first].core.config().name.clone();
    assert_eq!(sim.row(c, &id, 0).worker, first_name);
    sim.disconnect(first);
    assert_eq!(sim.workers[other].attempts, [2], "the second attempt");
    let row = sim.row(c, &id, 0);
    let other_name = sim.workers[other].core.config().name.clone();
    assert_eq!(
        (row.state, row.worker.as_str(), row.attempts),
        (S::Running, other_name.as_str(), 2)
    );
    let t = running(&sim, other)[0];
    sim.finish(other, t, ok(b"done"));
    let row = sim.row(c, &id, 0);
    assert_eq!((row.state, row.attempts), (S::Done, 2));
    assert_eq!(row.output, b"done");
}

#[test]
fn a_lines_job_gives_each_task_its_line() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep", "echo"], 8);
    let c = sim.client("alice");
    let id = sim.job(c, &job_of("sleep", JobTasks::Lines), b"a\n\nccc\n");
    let inputs: Vec<&[u8]> = sim.workers[w].runs.iter().map(|(_, i)| &i[..]).collect();
    assert_eq!(
        inputs,
        [&b"a"[..], b"", b"ccc"],
        "an empty line is a task too"
    );
    assert_eq!(sim.summary(c, &id).tasks, 3);
    let echoed = sim.job(c, &job_of("echo", JobTasks::Lines), b"x\ny");
    let rows = sim.rows(c, &echoed, None);
    let out: Vec<(u64, &[u8])> = rows.iter().map(|r| (r.index, &r.output[..])).collect();
    assert_eq!(out, [(0, &b"x"[..]), (1, b"y")]);
}

// ---------------------------------------------------------------- restarts

#[test]
fn after_a_restart_results_are_kept_lost_runs_run_again_and_queued_stay_queued() {
    let mut sim = Sim::new(|_| {});
    let w1 = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("alice");
    let id = sim.job(c, &array("sleep", 0, 4), b"");
    let t0 = running(&sim, w1)[0];
    sim.finish(w1, t0, ok(b"zero"));
    // 0 done; 1 and 2 run; 3 waits for a slot; 4 has not started.
    assert_eq!(
        states(&mut sim, c, &id),
        [S::Done, S::Running, S::Running, S::Waiting, S::Queued]
    );

    // The distributor dies with w-1; w-2 is there when it comes back.
    sim.journal_catch_up();
    let replay = sim.restart_distributor(&[]);
    assert_eq!(replay.jobs.len(), 1);
    assert_eq!(replay.jobs[0].cursor, 4, "tasks 0 to 3 had started");
    assert_eq!(replay.jobs[0].tasks.len(), 1, "only task 0 ended");
    let w2 = sim.worker("w-2", &["sleep"], 2);
    past_grace(&mut sim);
    let c = sim.client("alice");
    assert_eq!(
        sim.workers[w2].attempts,
        [2, 2],
        "the lost runs run again, their attempt raised"
    );
    let rows = sim.rows(c, &id, None);
    assert_eq!(
        rows.iter().map(|r| r.state).collect::<Vec<_>>(),
        [S::Done, S::Running, S::Running, S::Waiting, S::Queued]
    );
    assert_eq!((&rows[0].output[..], rows[0].attempts), (&b"zero"[..], 1));
    assert_eq!(rows[0].worker, "w-1", "a kept result keeps its worker");
    assert_eq!((rows[1].worker.as_str(), rows[1].attempts), ("w-2", 2));
    assert_eq!(rows[4].attempts, 0);
    // Their new start is journaled, so that a second restart counts it.
    let restarted: Vec<u64> = sim.journals[0]
        .ops()
        .filter_map(|op| match op {
            JournalOp::Task { offset, rec, .. } if rec.state == TaskStateRecord::Started => {
                Some(*offset)
            }
            _ => None,
        })
        .collect();
    assert_eq!(restarted, [1, 2]);

    // A second restart, with w-2 gone too: the attempt goes up again.
    sim.restart_distributor(&[]);
    let w3 = sim.worker("w-3", &["sleep"], 8);
    past_grace(&mut sim);
    let c = sim.client("alice");
    assert_eq!(
        sim.workers[w3].attempts,
        [3, 3, 2, 1],
        "1 and 2 lost two runs, 3 lost one (it had started, waiting), 4 none"
    );
    for t in running(&sim, w3) {
        sim.finish(w3, t, ok(b"again"));
    }
    let rows = sim.rows(c, &id, None);
    assert!(rows.iter().all(|r| r.state == S::Done), "{rows:?}");
    assert_eq!(rows[0].output, b"zero", "done once, not run again");
    assert_eq!(sim.workers[w3].runs.len(), 4, "task 0 did not run again");
    assert_eq!(sim.summary(c, &id).counts.done, 5);
}

#[test]
fn after_a_restart_the_workers_are_asked_first_so_nothing_runs_twice() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("alice");
    let id = sim.job(c, &array("sleep", 0, 1), b"");
    let (t0, t1) = (running(&sim, w)[0], running(&sim, w)[1]);
    // Task 0's result arrives but its batch is not written when the
    // distributor dies; task 1 is still running on the worker.
    sim.journal_mode(0, JournalMode::Hold);
    sim.finish(w, t0, ok(b"first"));
    sim.journal_catch_up();
    assert_eq!(sim.journals[0].held.len(), 1, "the end is being written");
    sim.journal_mode(0, JournalMode::Commit);
    let replay = sim.restart_distributor(&[w]);
    assert!(replay.jobs[0].tasks.is_empty(), "the end was lost");
    past_grace(&mut sim);
    let c = sim.client("alice");
    assert_eq!(
        sim.workers[w].runs.len(),
        2,
        "no second run: the worker had the result of one and runs the other"
    );
    let row = sim.row(c, &id, 0);
    assert_eq!((row.state, &row.output[..]), (S::Done, &b"first"[..]));
    assert_eq!(sim.row(c, &id, 1).state, S::Running);
    sim.finish(w, t1, ok(b"second"));
    let rows = sim.rows(c, &id, None);
    assert_eq!(rows[1].output, b"second");
    assert!(rows.iter().all(|r| r.state == S::Done), "{rows:?}");
    assert_eq!(sim.workers[w].runs.len(), 2);
}

#[test]
fn a_task_that_only_waited_through_restarts_keeps_its_attempts() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("alice");
    let id = sim.job(c, &job_of("sleep", JobTasks::Lines), b"runs\nwaits");
    let first = running(&sim, w)[0];
    // Three restarts: each time the worker, still running the first task,
    // takes it back; the second waits for its slot and never runs.
    for _ in 0..3 {
        sim.restart_distributor(&[w]);
        past_grace(&mut sim);
    }
    let c = sim.client("alice");
    assert_eq!(sim.row(c, &id, 1).state, S::Waiting);
    assert_eq!(
        sim.workers[w].runs.len(),
        1,
        "the first was joined each time"
    );
    sim.finish(w, first, ok(b"1"));
    // A joined run holds no reservation: the slot is seen free once the
    // worker reports it.
    sim.advance(Duration::from_millis(100));
    let second = running(&sim, w)[0];
    assert_eq!(*sim.workers[w].attempts.last().unwrap(), 2);
    sim.finish(w, second, ok(b"2"));
    let rows = sim.rows(c, &id, None);
    assert_eq!(
        rows.iter()
            .map(|r| (r.state, &r.output[..]))
            .collect::<Vec<_>>(),
        [(S::Done, &b"1"[..]), (S::Done, &b"2"[..])],
        "waiting is no attempt: it does not use up the task's attempts"
    );
}

// ---------------------------------------------------------------- priorities

fn users() -> Vec<UserRecord> {
    let mut alice = UserRecord::new("alice");
    alice.priority = 10;
    vec![alice, UserRecord::new("bob")]
}

#[test]
fn jobs_start_by_user_priority_then_task_priority_then_age() {
    let mut sim = Sim::with_users(users(), |_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("ops");
    let one = |user: &str, priority: i32| {
        let mut s = job_of("sleep", JobTasks::One);
        s.user = user.into();
        s.priority = priority;
        s
    };
    // All four are made durable in one batch, so none has a head start.
    sim.journal_mode(0, JournalMode::Hold);
    sim.send_job(c, &one("bob", 0), b"bob-older");
    sim.send_job(c, &one("bob", 5), b"bob-urgent");
    sim.send_job(c, &one("alice", 0), b"alice");
    sim.send_job(c, &one("bob", 0), b"bob-newer");
    sim.settle();
    sim.release_journal(0);
    assert_eq!(sim.clients[c].acks.len(), 4);
    let mut order = Vec::new();
    while let Some(r) = sim.workers[w].running.first().cloned() {
        order.push(String::from_utf8_lossy(&r.input).into_owned());
        sim.finish(w, r.task, ok(b""));
    }
    assert_eq!(order, ["alice", "bob-urgent", "bob-older", "bob-newer"]);
}

#[test]
fn every_task_of_a_higher_priority_job_goes_before_a_lower_one() {
    let mut sim = Sim::with_users(users(), |_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("bob");
    let mut low = job_of("sleep", JobTasks::Lines);
    low.priority = 1;
    let mut high = low.clone();
    high.priority = 2;
    sim.journal_mode(0, JournalMode::Hold);
    sim.send_job(c, &low, b"low-0\nlow-1\nlow-2");
    sim.send_job(c, &high, b"high-0\nhigh-1\nhigh-2");
    sim.settle();
    sim.release_journal(0);
    let mut order = Vec::new();
    while let Some(r) = sim.workers[w].running.first().cloned() {
        order.push(String::from_utf8_lossy(&r.input).into_owned());
        sim.finish(w, r.task, ok(b""));
    }
    assert_eq!(
        order,
        ["high-0", "high-1", "high-2", "low-0", "low-1", "low-2"]
    );
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancelling_a_job_stops_its_running_tasks_and_cancels_the_rest() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("alice");
    let id = sim.job(c, &array("sleep", 0, 5), b"");
    let placed = running(&sim, w);
    assert_eq!(
        states(&mut sim, c, &id),
        [
            S::Running,
            S::Running,
            S::Waiting,
            S::Queued,
            S::Queued,
            S::Queued
        ]
    );
    let r = sim.query(c, job_query(JobOp::Cancel, &id));
    assert_eq!((r.error.as_str(), r.cancelled), ("", 6));
    assert_eq!(r.jobs[0].counts.cancelled, 6, "the reply shows the result");
    assert_eq!(
        sim.workers[w].aborted, placed,
        "the worker is told to stop both"
    );
    assert!(sim.workers[w].running.is_empty());
    assert_eq!(states(&mut sim, c, &id), [S::Cancelled; 6]);
    let s = sim.summary(c, &id);
    assert!(s.finished_ms > 0, "{s:?}");
    sim.journal_catch_up();
    assert!(sim.journals[0]
        .ops()
        .any(|op| matches!(op, JournalOp::Cancelled { num: 1 })));

    let again = sim.query(c, job_query(JobOp::Cancel, &id));
    assert!(again.error.contains("has finished"), "{}", again.error);
    // The freed slots go to the next job; the cancelled one stays so
    // across a restart.
    sim.job(c, &array("sleep", 0, 0), b"next");
    assert_eq!(sim.inputs(w), [Bytes::from_static(b"next")]);
    sim.restart_distributor(&[w]);
    past_grace(&mut sim);
    let c = sim.client("alice");
    assert_eq!(states(&mut sim, c, &id), [S::Cancelled; 6]);
    assert_eq!(sim.summary(c, &id).counts.cancelled, 6);
}

#[test]
fn one_task_is_cancelled_by_its_index_queued_or_running() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("alice");
    let id = sim.job(c, &job_of("sleep", JobTasks::Lines), b"a\nb\nc\nd");
    let cancel = |sim: &mut Sim, task: u64| {
        let mut q = job_query(JobOp::Cancel, &id);
        q.task = Some(task);
        sim.query(c, q)
    };
    let r = cancel(&mut sim, 2);
    assert_eq!((r.error.as_str(), r.cancelled), ("", 1));
    let row = sim.row(c, &id, 2);
    assert_eq!(row.state, S::Cancelled);
    assert!(row.message.contains("before it started"), "{}", row.message);

    let a = running(&sim, w)[0];
    let r = cancel(&mut sim, 0);
    assert_eq!(r.cancelled, 1);
    assert_eq!(
        sim.workers[w].aborted,
        [a],
        "the worker stops the running one"
    );
    // The freed slot takes the next task; the cancelled one is skipped.
    let b = running(&sim, w)[0];
    sim.finish(w, b, ok(b"b"));
    let d = running(&sim, w)[0];
    sim.finish(w, d, ok(b"d"));
    let inputs: Vec<&[u8]> = sim.workers[w].runs.iter().map(|(_, i)| &i[..]).collect();
    assert_eq!(inputs, [&b"a"[..], b"b", b"d"]);
    assert_eq!(
        states(&mut sim, c, &id),
        [S::Cancelled, S::Done, S::Cancelled, S::Done]
    );
    let s = sim.summary(c, &id);
    assert_eq!((s.counts.done, s.counts.cancelled), (2, 2));

    let r = cancel(&mut sim, 3);
    assert!(r.error.contains("has ended"), "{}", r.error);
    let r = cancel(&mut sim, 9);
    assert!(r.error.contains("has no task 9"), "{}", r.error);
    let r = sim.query(c, job_query(JobOp::Cancel, &id));
    assert!(r.error.contains("has finished"), "{}", r.error);
}

// ---------------------------------------------------------------- remove and retention

#[test]
fn a_finished_job_is_removed_and_a_running_one_is_not() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["sleep", "echo"], 4);
    let c = sim.client("alice");
    let busy = sim.job(c, &array("sleep", 0, 1), b"");
    let r = sim.query(c, job_query(JobOp::Remove, &busy));
    assert!(
        r.error.contains("has tasks to run") && r.error.contains("cancel it first"),
        "{}",
        r.error
    );
    let done = sim.job(c, &array("echo", 0, 2), b"hi");
    assert_eq!(sim.summary(c, &done).counts.done, 3);
    let r = sim.query(c, job_query(JobOp::Remove, &done));
    assert_eq!(r.error, "");
    assert_eq!(r.jobs[0].job, done, "the reply names what was removed");
    let r = sim.query(c, job_query(JobOp::List, ""));
    let ids: Vec<&str> = r.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(ids, [busy.as_str()]);
    let r = sim.query(c, job_query(JobOp::Tasks, &done));
    assert!(r.error.contains("unknown, or removed"), "{}", r.error);
    sim.journal_catch_up();
    assert!(sim.journals[0]
        .ops()
        .any(|op| matches!(op, JournalOp::Removed { num: 2 })));

    // Gone after a restart too, and its number is not given again.
    sim.restart_distributor(&[0]);
    let c = sim.client("alice");
    let r = sim.query(c, job_query(JobOp::List, ""));
    assert_eq!(r.jobs.len(), 1);
    let next = sim.job(c, &array("echo", 0, 0), b"");
    assert_eq!(next, "default/dist-1/3");
}

#[test]
fn a_finished_job_is_forgotten_once_its_retention_passes() {
    let mut sim = Sim::new(|cfg| cfg.retention = Duration::from_secs(5));
    sim.worker("w-1", &["sleep", "echo"], 1);
    let c = sim.client("alice");
    let done = sim.job(c, &array("echo", 0, 1), b"");
    let busy = sim.job(c, &array("sleep", 0, 0), b"");
    sim.advance(Duration::from_millis(4500));
    assert_eq!(sim.summary(c, &done).counts.done, 2, "kept within it");
    sim.advance(Duration::from_millis(1000));
    let r = sim.query(c, job_query(JobOp::List, ""));
    let ids: Vec<&str> = r.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(ids, [busy.as_str()], "an unfinished job is never expired");
    assert!(sim.journals[0]
        .ops()
        .any(|op| matches!(op, JournalOp::Removed { num: 1 })));
}

#[test]
fn retention_counts_from_the_end_of_the_job_not_from_a_restart() {
    let mut sim = Sim::new(|cfg| cfg.retention = Duration::from_secs(5));
    sim.worker("w-1", &["echo"], 1);
    let c = sim.client("alice");
    let done = sim.job(c, &array("echo", 0, 1), b"");
    let finished = sim.summary(c, &done).finished_ms;
    sim.advance(Duration::from_secs(3));
    sim.restart_distributor(&[0]);
    let c = sim.client("alice");
    assert_eq!(
        sim.summary(c, &done).finished_ms,
        finished,
        "a restart does not move when the job finished"
    );
    sim.advance(Duration::from_millis(2500));
    let r = sim.query(c, job_query(JobOp::List, ""));
    assert!(r.jobs.is_empty(), "{:?}", r.jobs);
}

// ---------------------------------------------------------------- bounds and bad input

#[test]
fn past_the_bound_on_jobs_a_submit_is_refused_with_the_limit() {
    let mut sim = Sim::new(|_| {});
    let c = sim.client("alice");
    // Held unwritten, the jobs start nothing: only the bound is tested.
    sim.journal_mode(0, JournalMode::Hold);
    let one = job_of("sleep", JobTasks::One);
    for _ in 0..MAX_JOBS {
        sim.send_job(c, &one, b"");
    }
    let r = sim.submit_job(c, &one, b"");
    assert_eq!(sim.dist.job_totals().0, MAX_JOBS);
    let ack = sim.ack(c, r).expect("refused at once");
    assert!(
        ack.error
            .contains(&format!("holds {MAX_JOBS} jobs (its limit)"))
            && ack.error.contains("allot jobs --remove"),
        "{}",
        ack.error
    );
}

#[test]
fn output_past_the_bound_per_task_is_truncated_and_says_so() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 1);
    let c = sim.client("alice");
    let id = sim.job(c, &job_of("sleep", JobTasks::One), b"");
    let big = vec![b'x'; MAX_OUTPUT_PER_TASK + 100];
    let t = running(&sim, w)[0];
    sim.finish(w, t, ok(&big));
    let row = sim.row(c, &id, 0);
    assert_eq!(row.state, S::Done);
    assert_eq!(row.output.len(), MAX_OUTPUT_PER_TASK);
    assert!(
        row.message.contains(&format!(
            "output truncated: {MAX_OUTPUT_PER_TASK} of {} bytes kept",
            big.len()
        )),
        "{}",
        row.message
    );
    sim.journal_catch_up();
    let journaled = sim.journals[0].ops().find_map(|op| match op {
        JournalOp::Task { rec, .. } => Some(rec.output.len()),
        _ => None,
    });
    assert_eq!(
        journaled,
        Some(MAX_OUTPUT_PER_TASK),
        "the journal keeps the same"
    );
}

#[test]
fn bad_submits_and_queries_are_refused_with_the_reason() {
    let mut sim = Sim::new(|_| {});
    let c = sim.client("alice");
    let refused = |sim: &mut Sim, s: &allot_wire::JobSubmit, payload: &[u8]| {
        let r = sim.submit_job(c, s, payload);
        let ack = sim.ack(c, r).expect("an answer").clone();
        assert_eq!(ack.job, "");
        ack.error
    };
    let e = refused(&mut sim, &array("sleep", 5, 4), b"");
    assert!(e.contains("5-4 is reversed"), "{e}");
    let e = refused(&mut sim, &array("sleep", 0, MAX_TASKS_PER_JOB), b"");
    assert!(e.contains(&format!("at most {MAX_TASKS_PER_JOB}")), "{e}");
    let e = refused(&mut sim, &array("sleep", 0, u64::MAX), b"");
    assert!(e.contains("at most"), "{e}");
    let e = refused(&mut sim, &job_of("sleep", JobTasks::Lines), b"");
    assert!(e.contains("no tasks"), "{e}");
    let mut bad = array("sleep", 0, 1);
    bad.require = "cores >=".into();
    let e = refused(&mut sim, &bad, b"");
    assert!(e.contains("bad expression"), "{e}");
    assert_eq!(sim.dist.job_totals().0, 0);

    for (id, why) in [
        ("default/dist-1/7", "unknown, or removed"),
        ("default/dist-2/1", "held by distributor dist-2"),
        ("seven", "is not a job id"),
    ] {
        let r = sim.query(c, job_query(JobOp::Tasks, id));
        assert!(r.error.contains(why), "{id}: {}", r.error);
    }
}

// ---------------------------------------------------------------- paging and filters

#[test]
fn task_lists_come_in_pages_that_say_where_to_go_on() {
    let mut sim = Sim::new(|_| {});
    sim.worker("w-1", &["echo"], 4);
    let c = sim.client("alice");
    let id = sim.job(c, &array("echo", 100, 124), b"");
    let page = |sim: &mut Sim, from: u64| {
        let mut q = job_query(JobOp::Tasks, &id);
        q.from = from;
        q.limit = 10;
        let r = sim.query(c, q);
        let first_last = (
            r.tasks.first().map(|t| t.index),
            r.tasks.last().map(|t| t.index),
        );
        (r.tasks.len(), first_last, r.next)
    };
    assert_eq!(page(&mut sim, 0), (10, (Some(100), Some(109)), Some(10)));
    assert_eq!(page(&mut sim, 10), (10, (Some(110), Some(119)), Some(20)));
    assert_eq!(page(&mut sim, 20), (5, (Some(120), Some(124)), None));
    let mut q = job_query(JobOp::Tasks, &id);
    q.limit = 0;
    assert_eq!(sim.query(c, q).tasks.len(), 1, "a zero limit is one row");
    let r = sim.query(c, job_query(JobOp::Tasks, &id));
    assert!(
        r.tasks.iter().all(|t| t.output.is_empty()),
        "outputs only when asked"
    );
}

#[test]
fn a_state_filter_lists_only_those_tasks_page_by_page() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 10);
    let c = sim.client("alice");
    let id = sim.job(
        c,
        &job_of("sleep", JobTasks::Lines),
        b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9",
    );
    for r in sim.workers[w].running.clone() {
        let i: u32 = std::str::from_utf8(&r.input).unwrap().parse().unwrap();
        let outcome = if i % 2 == 1 {
            failed(1, b"", "odd")
        } else {
            ok(b"even")
        };
        sim.finish(w, r.task, outcome);
    }
    let mut pages = Vec::new();
    let mut from = 0;
    loop {
        let mut q = job_query(JobOp::Tasks, &id);
        q.state = Some(S::Failed);
        q.from = from;
        q.limit = 2;
        let r = sim.query(c, q);
        pages.push(r.tasks.iter().map(|t| t.index).collect::<Vec<_>>());
        match r.next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(pages, [vec![1, 3], vec![5, 7], vec![9]]);
    let done = sim.rows(c, &id, Some(S::Done));
    assert_eq!(
        done.iter().map(|t| t.index).collect::<Vec<_>>(),
        [0, 2, 4, 6, 8]
    );
    assert!(sim.rows(c, &id, Some(S::Queued)).is_empty());
}
