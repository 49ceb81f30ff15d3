//! The job commands: `allot submit` with `--detach`, `--array` or
//! `--each-line`, and `allot jobs`, `tasks`, `wait`, `output`, `cancel`.
//!
//! Every command finds the job's distributor through the gateways (the job
//! id names the set and member that hold it) or talks to the one given with
//! `--distributor`.

use allot::HostPort;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use allot::client::{JobClient, JobSpec, JobsConfig};
use allot_wire::{Demands, JobSummary, JobTaskRow, JobTaskState};
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::client_args::{read_input, ClientArgs, SubmitArgs};
use crate::runtime::block_on_local;

/// Where job commands go.
#[derive(Args, Debug)]
pub struct Target {
    #[command(flatten)]
    client: ClientArgs,
    /// Gateways, asked in order for the member that holds the job
    /// (default: the ALLOT_GATEWAY variable).
    #[arg(long, value_delimiter = ',')]
    gateway: Vec<HostPort>,
    /// The distributor to ask instead of the gateways.
    #[arg(long, conflicts_with = "gateway")]
    distributor: Option<HostPort>,
}

impl Target {
    fn config(self) -> anyhow::Result<JobsConfig> {
        let gateways = crate::env::gateways(self.gateway, self.distributor.as_ref())?;
        config(self.client, gateways, self.distributor)
    }
}

/// The job client's configuration. Its addresses are resolved here, once:
/// a job command is short-lived, so each run looks the names up again.
fn config(
    c: ClientArgs,
    gateways: Vec<HostPort>,
    distributor: Option<HostPort>,
) -> anyhow::Result<JobsConfig> {
    let gateways = crate::values::resolve_all("--gateway", &gateways)?;
    let cfg = JobsConfig::new(c.pki()?, &c.name, gateways).with_retry_for(c.retry_for);
    Ok(match distributor {
        Some(d) => cfg.with_distributor(crate::values::resolve("--distributor", &d)?),
        None => cfg,
    })
}

/// `allot jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    target: Target,
    /// Forget this finished job (its states and outputs).
    #[arg(long, value_name = "JOB")]
    remove: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `allot tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    target: Target,
    /// The job.
    job: String,
    /// Only tasks in this state.
    #[arg(long, value_parser = parse_state)]
    state: Option<JobTaskState>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `allot wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    target: Target,
    /// The job.
    job: String,
    /// Give up after this many seconds (exit status 2).
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs)]
    timeout: Option<Duration>,
}

/// `allot output`.
#[derive(Args, Debug)]
pub struct OutputArgs {
    #[command(flatten)]
    target: Target,
    /// The job.
    job: String,
    /// Only this task (its index).
    #[arg(long)]
    task: Option<u64>,
}

/// `allot cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    target: Target,
    /// The job.
    job: String,
    /// Only this task (its index).
    #[arg(long)]
    task: Option<u64>,
}

fn parse_state(s: &str) -> Result<JobTaskState, String> {
    Ok(match s {
        "queued" => JobTaskState::Queued,
        "waiting" => JobTaskState::Waiting,
        "running" => JobTaskState::Running,
        "done" => JobTaskState::Done,
        "failed" => JobTaskState::Failed,
        "cancelled" => JobTaskState::Cancelled,
        _ => {
            return Err(format!(
                "`{s}` is not a task state (queued, waiting, running, done, failed, cancelled)"
            ))
        }
    })
}

fn state_name(s: JobTaskState) -> &'static str {
    match s {
        JobTaskState::Queued => "queued",
        JobTaskState::Waiting => "waiting",
        JobTaskState::Running => "running",
        JobTaskState::Done => "done",
        JobTaskState::Failed => "failed",
        JobTaskState::Cancelled => "cancelled",
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC); `-` for 0.
fn time_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn summary_json(s: &JobSummary) -> serde_json::Value {
    let c = s.counts;
    serde_json::json!({
        "job": s.job,
        "user": s.user,
        "app": s.app,
        "tasks": s.tasks,
        "queued": c.queued,
        "waiting": c.waiting,
        "running": c.running,
        "done": c.done,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "submitted_ms": s.submitted_ms,
        "finished_ms": s.finished_ms,
    })
}

fn row_json(r: &JobTaskRow) -> serde_json::Value {
    serde_json::json!({
        "index": r.index,
        "state": state_name(r.state),
        "worker": r.worker,
        "attempts": r.attempts,
        "exit_code": r.exit_code,
        "started_ms": r.started_ms,
        "ended_ms": r.ended_ms,
        "run_ms": r.ended_ms.saturating_sub(r.started_ms) * u64::from(r.ended_ms > 0),
        "message": r.message,
    })
}

/// `allot submit` of a job: detached (prints the id) or attached (waits,
/// then prints the outputs in index order).
pub fn submit_job(a: SubmitArgs) -> Result<()> {
    let spec = match (&a.array, &a.each_line) {
        (Some((first, last)), _) => {
            JobSpec::array(&a.app, *first, *last).input(read_input(&a.input)?)
        }
        (None, Some(file)) => {
            let lines = std::fs::read(file)
                .with_context(|| format!("cannot read the --each-line file {}", file.display()))?;
            JobSpec::lines(&a.app, lines)
        }
        (None, None) => JobSpec::one(&a.app, read_input(&a.input)?),
    };
    let mut spec = spec
        .require(a.require)
        .prefer(a.prefer)
        .user(a.user)
        .priority(a.priority)
        .demands(Demands {
            cores: a.cores,
            mem: a.mem,
            slots: 1,
        });
    if a.deadline_ms > 0 {
        spec = spec.deadline(Duration::from_millis(a.deadline_ms));
    }
    let cfg = config(a.client, a.gateway, a.distributor)?.with_attrs(a.client_attrs);
    let (detach, json, output_dir) = (a.detach, a.json, a.output_dir);
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        let job = jobs.submit(spec).await?;
        if detach {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"job": job.id, "tasks": job.tasks, "distributor": job.distributor})
                );
            } else {
                println!("{}", job.id);
            }
            return Ok(());
        }
        eprintln!(
            "job {} ({} tasks) on {}",
            job.id, job.tasks, job.distributor
        );
        let summary = wait_with_progress(&mut jobs, &job.id, None).await?;
        let rows = jobs.tasks(&job.id, None, None, true).await?;
        print_outputs(&rows, output_dir.as_deref())?;
        jobs.close();
        finished(&summary)
    })?
}

async fn wait_with_progress(
    jobs: &mut JobClient,
    id: &str,
    timeout: Option<Duration>,
) -> Result<JobSummary> {
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks ended ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let r = jobs
        .wait(id, timeout, |s| {
            if let Some(b) = &bar {
                let c = s.counts;
                b.set_length(s.tasks);
                b.set_position(c.done + c.failed + c.cancelled);
                b.set_message(format!("{} running, {} failed", c.running, c.failed));
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(r?)
}

/// Exit status: non-zero when a task failed or was cancelled.
fn finished(s: &JobSummary) -> Result<()> {
    let c = s.counts;
    if c.failed > 0 || c.cancelled > 0 {
        bail!(
            "job {}: {} of {} tasks failed, {} cancelled; see `allot tasks {} --state failed`",
            s.job,
            c.failed,
            s.tasks,
            c.cancelled,
            s.job
        );
    }
    Ok(())
}

fn print_outputs(rows: &[JobTaskRow], dir: Option<&std::path::Path>) -> Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
            for r in rows {
                let path: PathBuf = dir.join(r.index.to_string());
                std::fs::write(&path, &r.output)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            for r in rows {
                out.write_all(&r.output).context("writing the outputs")?;
            }
            out.flush().context("writing the outputs")?;
        }
    }
    Ok(())
}

/// `allot jobs`.
pub fn jobs(a: JobsArgs) -> Result<()> {
    let cfg = a.target.config()?;
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        if let Some(id) = a.remove {
            jobs.remove(&id).await?;
            println!("removed job {id}");
            return Ok(());
        }
        let list = jobs.list().await?;
        jobs.close();
        if a.json {
            let v: Vec<_> = list.iter().map(summary_json).collect();
            println!("{}", serde_json::Value::Array(v));
            return Ok(());
        }
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header([
            "job",
            "user",
            "app",
            "tasks",
            "queued",
            "waiting",
            "running",
            "done",
            "failed",
            "cancelled",
            "submitted (UTC)",
        ]);
        for s in &list {
            let c = s.counts;
            t.add_row([
                s.job.clone(),
                s.user.clone(),
                s.app.clone(),
                s.tasks.to_string(),
                c.queued.to_string(),
                c.waiting.to_string(),
                c.running.to_string(),
                c.done.to_string(),
                c.failed.to_string(),
                c.cancelled.to_string(),
                time_text(s.submitted_ms),
            ]);
        }
        println!("{t}");
        Ok::<_, anyhow::Error>(())
    })?
}

/// `allot tasks`.
pub fn tasks(a: TasksArgs) -> Result<()> {
    let cfg = a.target.config()?;
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        let rows = jobs.tasks(&a.job, None, a.state, false).await?;
        jobs.close();
        if a.json {
            let v: Vec<_> = rows.iter().map(row_json).collect();
            println!("{}", serde_json::Value::Array(v));
            return Ok(());
        }
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header([
            "index",
            "state",
            "worker",
            "attempts",
            "exit",
            "started (UTC)",
            "ran",
            "why / message",
        ]);
        for r in &rows {
            let ran = if r.ended_ms > 0 && r.started_ms > 0 {
                format!("{} ms", r.ended_ms - r.started_ms)
            } else {
                "-".into()
            };
            t.add_row([
                r.index.to_string(),
                state_name(r.state).to_owned(),
                r.worker.clone(),
                r.attempts.to_string(),
                r.exit_code.to_string(),
                time_text(r.started_ms),
                ran,
                r.message.clone(),
            ]);
        }
        println!("{t}");
        Ok::<_, anyhow::Error>(())
    })?
}

/// `allot wait`.
pub fn wait(a: WaitArgs) -> Result<()> {
    let cfg = a.target.config()?;
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        let s = wait_with_progress(&mut jobs, &a.job, a.timeout).await?;
        jobs.close();
        let c = s.counts;
        eprintln!(
            "job {}: {} done, {} failed, {} cancelled of {}",
            s.job, c.done, c.failed, c.cancelled, s.tasks
        );
        finished(&s)
    })?
}

/// `allot output`.
pub fn output(a: OutputArgs) -> Result<()> {
    let cfg = a.target.config()?;
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        let rows = jobs.tasks(&a.job, a.task, None, true).await?;
        jobs.close();
        print_outputs(&rows, None)
    })?
}

/// `allot cancel`.
pub fn cancel(a: CancelArgs) -> Result<()> {
    let cfg = a.target.config()?;
    block_on_local(async move {
        let mut jobs = JobClient::new(cfg)?;
        let n = jobs.cancel(&a.job, a.task).await?;
        jobs.close();
        println!("cancelled {n} tasks of job {}", a.job);
        Ok::<_, anyhow::Error>(())
    })?
}

#[cfg(test)]
mod tests {
    use super::time_text;

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(time_text(0), "-");
        assert_eq!(time_text(1_796_083_200_000), "2026-12-01 00:00:00");
        assert_eq!(
            time_text(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
    }
}
