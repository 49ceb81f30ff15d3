//! A job array is a range: a million tasks cost the distributor what one
//! does until they start, counted by the process's allocator (a binary of
//! its own, so that no other test allocates meanwhile).

mod harness;

use allot::testing::CountingAlloc;
use allot_wire::{JobOp, JobTaskState};
use harness::{array, job_query, JournalMode, Sim};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

const MILLION: u64 = 1_000_000;

/// What accepting a job may cost at most, whatever its task count (the
/// issue allows 64 bytes per task not started: 64 MB for this one).
const PER_JOB: isize = 16 << 10;

#[test]
fn a_million_task_array_costs_what_a_small_job_costs_until_its_tasks_start() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep"], 2);
    let c = sim.client("alice");
    sim.journal_mode(0, JournalMode::Hold);
    // A small job first, so that caches and buffers are warm.
    let small = sim.submit_job(c, &array("sleep", 0, 9), b"");

    let before = GLOBAL.live_bytes();
    let big = sim.submit_job(c, &array("sleep", 0, MILLION - 1), b"");
    let accepted = GLOBAL.live_bytes() - before;
    assert!(
        accepted < PER_JOB,
        "accepting {MILLION} tasks took {accepted} bytes"
    );
    let (jobs, counts) = sim.dist.job_totals();
    assert_eq!((jobs, counts.queued), (2, MILLION + 10));

    // Its creation is one journal record, not one per task.
    sim.write_held(0);
    assert!(sim.ack(c, small).is_some());
    let batch = &sim.journals[0].held[0].ops;
    assert!(batch.len() <= 2, "the creation and a cursor: {batch:?}");
    sim.release_journal(0);
    let ack = sim.ack(c, big).expect("acked").clone();
    assert_eq!((ack.error.as_str(), ack.tasks), ("", MILLION));

    // Started, it holds a slot for each task started only: the first waits
    // for a worker slot and the job starts no other until it is placed.
    let started = GLOBAL.live_bytes() - before;
    assert!(
        started < 4 * PER_JOB,
        "{started} bytes once its first task started"
    );
    let s = sim.summary(c, &ack.job);
    assert_eq!(
        (s.counts.queued, s.counts.waiting, s.counts.running),
        (MILLION - 1, 1, 0)
    );
    assert_eq!(sim.workers[w].running.len(), 2, "the small job's two run");

    // Queries on it page and filter without walking a million rows.
    let mut q = job_query(JobOp::Tasks, &ack.job);
    q.state = Some(JobTaskState::Queued);
    q.limit = 3;
    let r = sim.query(c, q);
    let rows: Vec<u64> = r.tasks.iter().map(|t| t.index).collect();
    assert_eq!((rows, r.next), (vec![1, 2, 3], Some(4)));
    let mut q = job_query(JobOp::Tasks, &ack.job);
    q.state = Some(JobTaskState::Done);
    let r = sim.query(c, q);
    assert_eq!((r.tasks.len(), r.next), (0, None));
    let r = sim.query(c, job_query(JobOp::Tasks, &ack.job));
    let max = allot::distributor::jobs::MAX_ROWS_PER_REPLY;
    assert_eq!(
        (r.tasks.len(), r.next),
        (max as usize, Some(u64::from(max)))
    );
}
