//! `allot bench --detach`: the durable path (a job, journaled at the
//! distributor) beside the in-memory one, in the same run.
//!
//! Each round submits one array job of the bench's task count (same app,
//! same payload) and times it from the submit to the moment every task has
//! ended and its end is on disk: the ack of a job submitted once the counts
//! say all ended (batches are written in order, so that ack comes after
//! every end before it). Then, once:
//! the time to accept an array of [`BIG_ARRAY`] tasks and the distributor's
//! memory per queued task (its RSS growth over the tasks that have not
//! started), and the time to list the tasks of a job of [`LISTED`] tasks,
//! in this process and through the `allot tasks` command.

use std::time::{Duration, Instant};

use allot::client::{JobClient, JobSpec, JobsConfig};
use anyhow::{bail, Result};

use super::cluster::Cluster;
use super::{process, BenchArgs};

/// Tasks of the array whose acceptance is timed.
pub(super) const BIG_ARRAY: u64 = 1_000_000;

/// Tasks of the job whose listing is timed.
pub(super) const LISTED: u64 = 100_000;

/// How often a round asks for the job's counts.
const POLL: Duration = Duration::from_millis(5);

/// The figures of the durable phase.
pub(super) struct Durable {
    /// Durable tasks/s, one per round.
    pub(super) rounds: Vec<f64>,
    /// Milliseconds from submit to ack of the big array.
    pub(super) accept_ms: f64,
    /// Distributor RSS growth per task of the big array not started.
    pub(super) bytes_per_queued_task: Option<f64>,
    /// Milliseconds to list the tasks of a job of [`LISTED`] tasks.
    pub(super) list_ms: f64,
    /// The same through `allot tasks --json` (a process of its own).
    pub(super) list_cli_ms: Option<f64>,
}

/// Runs the durable phase against the local cluster `c`.
pub(super) fn durable_phase(c: &Cluster, args: &BenchArgs, tasks: u64) -> Result<Durable> {
    let dist = c.first().addr;
    let cfg = JobsConfig::new(c.pki.clone(), &args.name, Vec::new()).with_distributor(dist);
    let payload = vec![b'x'; args.payload];
    let app = args.app.clone();
    let rounds = usize::from(args.rounds);
    let pid = c.first().pid;
    let pki = c.pki.clone();
    crate::interrupt::block_on(async move {
        let mut jobs = JobClient::new(cfg)?;
        let mut per_s = Vec::with_capacity(rounds);
        let mut last = None;
        for _ in 0..rounds {
            let t0 = Instant::now();
            let job = jobs
                .submit(JobSpec::array(&app, 1, tasks).input(payload.clone()))
                .await?;
            let s = loop {
                let s = jobs.summary(&job.id).await?;
                let c = s.counts;
                if c.queued + c.waiting + c.running == 0 {
                    break s;
                }
                tokio::time::sleep(POLL).await;
            };
            // The ends are journaled in batches, in order: once a job
            // submitted now is acknowledged (its creation written), every
            // end before it is on disk too.
            let barrier = jobs.submit(JobSpec::one(&app, Vec::new())).await?;
            let secs = t0.elapsed().as_secs_f64();
            jobs.wait(&barrier.id, None, |_| {}).await?;
            jobs.remove(&barrier.id).await?;
            if s.counts.done != tasks {
                bail!(
                    "durable round: {} of {tasks} tasks done ({} failed)",
                    s.counts.done,
                    s.counts.failed
                );
            }
            per_s.push(tasks as f64 / secs.max(1e-9));
            if let Some(old) = last.replace(job.id.clone()) {
                jobs.remove(&old).await?;
            }
        }
        // A job of LISTED tasks to list: the last round's if it is that
        // big, else one more.
        let (listed, expected) = match last {
            Some(id) if tasks >= LISTED => (id, tasks),
            _ => {
                let job = jobs
                    .submit(JobSpec::array(&app, 1, LISTED).input(payload.clone()))
                    .await?;
                jobs.wait(&job.id, Some(Duration::from_secs(600)), |_| {})
                    .await?;
                (job.id, LISTED)
            }
        };
        let t0 = Instant::now();
        let rows = jobs.tasks(&listed, None, None, false).await?;
        let list_ms = t0.elapsed().as_secs_f64() * 1e3;
        if rows.len() as u64 != expected {
            bail!("listing gave {} rows of {expected}", rows.len());
        }
        let list_cli_ms = list_with_cli(&pki, dist, &listed).await;
        // The big array: tasks that sleep a minute, so that all but the
        // few the workers hold stay queued while memory is read.
        let rss0 = pid.and_then(process::rss_bytes);
        let t0 = Instant::now();
        let big = jobs
            .submit(JobSpec::array("sleep", 1, BIG_ARRAY).input("60000"))
            .await?;
        let accept_ms = t0.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = jobs.summary(&big.id).await?;
        let rss1 = pid.and_then(process::rss_bytes);
        let bytes_per_queued_task = match (rss0, rss1) {
            (Some(a), Some(b)) if s.counts.queued > 0 => {
                Some(b.saturating_sub(a) as f64 / s.counts.queued as f64)
            }
            _ => None,
        };
        jobs.cancel(&big.id, None).await?;
        jobs.close();
        Ok::<_, anyhow::Error>(Durable {
            rounds: per_s,
            accept_ms,
            bytes_per_queued_task,
            list_ms,
            list_cli_ms,
        })
    })?
}

/// Times `allot tasks JOB --json` (this binary) against the distributor
/// (awaited, so that this runtime keeps serving its own connection).
async fn list_with_cli(
    pki: &std::path::Path,
    dist: std::net::SocketAddr,
    job: &str,
) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let t0 = Instant::now();
    let out = tokio::process::Command::new(exe)
        .args(["tasks", "--pki"])
        .arg(pki)
        .args(["--distributor", &dist.to_string(), job, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| t0.elapsed().as_secs_f64() * 1e3)
}

impl Durable {
    /// Prints the phase, beside the in-memory median `in_memory` (tasks/s).
    pub(super) fn report(&self, in_memory: f64, json: bool) {
        let mut v = self.rounds.clone();
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        let ratio = median / in_memory.max(1e-9);
        if json {
            let j = serde_json::json!({
                "durable": {
                    "tasks_per_s": median,
                    "tasks_per_s_rounds": self.rounds,
                    "in_memory_tasks_per_s": in_memory,
                    "ratio_to_in_memory": ratio,
                    "accept_ms_1m_array": self.accept_ms,
                    "distributor_bytes_per_queued_task": self.bytes_per_queued_task,
                    "list_ms_100k_tasks": self.list_ms,
                    "list_cli_ms_100k_tasks": self.list_cli_ms,
                }
            });
            println!("{j}");
            return;
        }
        println!(
            "durable (one array job per round, journaled): {median:.0} tasks/s median, {ratio:.2} of the in-memory {in_memory:.0} tasks/s"
        );
        println!(
            "a {BIG_ARRAY}-task array accepted in {:.1} ms; distributor memory per queued task: {}",
            self.accept_ms,
            self.bytes_per_queued_task
                .map_or("unknown".into(), |b| format!("{b:.1} bytes"))
        );
        println!(
            "listing a {LISTED}-task job: {:.0} ms in this process, {} with `allot tasks --json`",
            self.list_ms,
            self.list_cli_ms
                .map_or("unknown".into(), |m| format!("{m:.0} ms"))
        );
    }
}
