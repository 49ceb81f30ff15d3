//! The job journal file reads back what [`Replay::apply`] folds from the
//! batches written to it: the harness restarts distributors from the fold,
//! so the two must agree, batch by batch.

mod harness;

use std::path::Path;

use allot::apps::AppOutcome;
use allot::distributor::jobs::record::{
    AttrValueRecord, JobRecord, JournalOp, Replay, SourceRecord, TaskRecord, TaskStateRecord,
};
use allot::distributor::journal::Journal;
use bytes::Bytes;
use harness::{array, Sim};

fn job(app: &str, source: SourceRecord, payload: &[u8]) -> Box<JobRecord> {
    Box::new(JobRecord {
        app: app.into(),
        require: "cores >= 1".into(),
        prefer: String::new(),
        user: "alice".into(),
        cores: 1,
        mem: 1 << 20,
        slots: 1,
        priority: -3,
        deadline_ms: 60_000,
        source,
        payload: payload.to_vec(),
        client_attrs: vec![
            ("site".into(), AttrValueRecord::Str("lab".into())),
            ("rack".into(), AttrValueRecord::Num(4.0)),
        ],
        submitted_ms: 1_800_000_000_000,
    })
}

fn task(state: TaskStateRecord, attempts: u32, output: &[u8]) -> Box<TaskRecord> {
    Box::new(TaskRecord {
        state,
        attempts,
        exit_code: if state == TaskStateRecord::Failed {
            2
        } else {
            0
        },
        worker: "w-1".into(),
        message: String::new(),
        started_ms: 1_800_000_000_100,
        ended_ms: 1_800_000_000_200,
        output: output.to_vec(),
    })
}

/// Writes `batches` one transaction each to a journal in `dir`, reopening
/// the file after each and checking it reads back the fold of the batches
/// so far. Returns the last replay.
fn write_and_compare(dir: &Path, batches: &[Vec<JournalOp>]) -> Replay {
    let (_, empty) = Journal::open(dir).expect("open");
    assert_eq!(empty, Replay::empty(), "a new file");
    let mut last = empty;
    for n in 1..=batches.len() {
        {
            let (journal, _) = Journal::open(dir).expect("open");
            journal.commit(&batches[n - 1]).expect("commit");
        }
        let (_, replay) = Journal::open(dir).expect("reopen");
        let folded = Replay::of_batches(batches[..n].iter().map(Vec::as_slice));
        assert_eq!(replay, folded, "after batch {n}");
        last = replay;
    }
    last
}

#[test]
fn the_file_reads_back_the_fold_of_its_batches_edge_cases_included() {
    use JournalOp::*;
    use TaskStateRecord::{Done, Failed, Started};
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = vec![
        vec![
            Created {
                num: 1,
                rec: job(
                    "render",
                    SourceRecord::Array {
                        first: 10,
                        last: 19,
                    },
                    b"in",
                ),
            },
            Created {
                num: 2,
                rec: job("echo", SourceRecord::Lines, b"a\nb\nc\nd\ne\nf\n"),
            },
            Created {
                num: 3,
                rec: job("echo", SourceRecord::One, b""),
            },
        ],
        vec![
            Cursor { num: 1, cursor: 4 },
            Task {
                num: 1,
                offset: 0,
                rec: task(Done, 1, b"out"),
            },
            Task {
                num: 1,
                offset: 1,
                rec: task(Started, 1, b""),
            },
            Cancelled { num: 2 },
            Task {
                num: 2,
                offset: 5,
                rec: task(TaskStateRecord::Cancelled, 0, b""),
            },
            Cursor { num: 3, cursor: 1 },
        ],
        vec![
            // A later state of the same task replaces the earlier one.
            Task {
                num: 1,
                offset: 1,
                rec: task(Failed, 2, b"partial"),
            },
            Removed { num: 3 },
            // Changes to a job the file does not hold are dropped.
            Cursor { num: 9, cursor: 7 },
            Task {
                num: 9,
                offset: 0,
                rec: task(Done, 1, b"orphan"),
            },
            Cancelled { num: 9 },
            Task {
                num: 3,
                offset: 0,
                rec: task(Done, 1, b"late"),
            },
            // A second creation replaces the record and keeps the rest.
            Created {
                num: 1,
                rec: job(
                    "render-2",
                    SourceRecord::Array {
                        first: 10,
                        last: 19,
                    },
                    b"in",
                ),
            },
        ],
        vec![
            Created {
                num: 4,
                rec: job("echo", SourceRecord::One, b""),
            },
            Removed { num: 4 },
            // Nothing dropped above comes back with a job of that number.
            Created {
                num: 9,
                rec: job("echo", SourceRecord::One, b""),
            },
        ],
    ];
    let replay = write_and_compare(dir.path(), &batches);
    assert_eq!(replay.next_num, 10, "past the highest number created");
    let nums: Vec<u64> = replay.jobs.iter().map(|j| j.num).collect();
    assert_eq!(nums, [1, 2, 9], "4 was removed, its number not reused");
    let nine = &replay.jobs[2];
    assert_eq!(
        (nine.cursor, nine.cancelled, nine.tasks.len()),
        (0, false, 0)
    );
    let one = &replay.jobs[0];
    assert_eq!((one.rec.app.as_str(), one.cursor), ("render-2", 4));
    let states: Vec<(u64, TaskStateRecord)> =
        one.tasks.iter().map(|(o, t)| (*o, t.state)).collect();
    assert_eq!(states, [(0, Done), (1, Failed)]);
    let two = &replay.jobs[1];
    assert!(two.cancelled);
    assert_eq!(two.tasks.len(), 1);
}

#[test]
fn the_batches_of_a_distributor_read_back_as_its_restart_saw_them() {
    let mut sim = Sim::new(|_| {});
    let w = sim.worker("w-1", &["sleep", "echo"], 8);
    let c = sim.client("alice");
    let id = sim.job(c, &array("sleep", 0, 5), b"in");
    sim.job(c, &array("echo", 1, 3), b"hi");
    let t = sim.workers[w].running[0].task;
    sim.finish(w, t, AppOutcome::Ok(Bytes::from_static(b"zero")));
    let mut q = harness::job_query(allot_wire::JobOp::Cancel, &id);
    q.task = Some(4);
    assert_eq!(sim.query(c, q).cancelled, 1);
    // A restart, then more changes on the restarted core.
    sim.journal_catch_up();
    let written = sim.journals[0].committed.len();
    let seen = sim.restart_distributor(&[w]);
    sim.advance(std::time::Duration::from_millis(3100));
    let c = sim.client("alice");
    sim.job(c, &array("echo", 0, 0), b"");
    let t = sim.workers[w].running[0].task;
    sim.finish(w, t, AppOutcome::Ok(Bytes::from_static(b"one")));
    let r = sim.query(
        c,
        harness::job_query(allot_wire::JobOp::Remove, "default/dist-1/2"),
    );
    assert_eq!(r.error, "");

    // Every prefix of the batches reads back as its fold (so the restart
    // above, from the fold of the first `written`, saw what the file held).
    sim.journal_catch_up();
    let all = sim.journals[0].committed.clone();
    assert!(all.len() > written, "more was written after the restart");
    assert_eq!(
        seen,
        Replay::of_batches(all[..written].iter().map(Vec::as_slice))
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = write_and_compare(dir.path(), &all);
    let nums: Vec<u64> = replay.jobs.iter().map(|j| j.num).collect();
    assert_eq!(nums, [1, 3], "job 2 was removed");
    use TaskStateRecord::*;
    let states: Vec<(u64, TaskStateRecord)> = replay.jobs[0]
        .tasks
        .iter()
        .map(|(o, t)| (*o, t.state))
        .collect();
    assert_eq!(
        states,
        [
            (0, Done),
            (1, Done),
            (2, Started),
            (3, Started),
            (4, Cancelled),
            (5, Started)
        ],
        "two ends, a cancel, and the runs taken back after the restart"
    );
}
