//! The measured run: one client keeping `--concurrency` tasks in flight
//! through the cluster, after a warm-up, and what came back.

use std::collections::HashMap;
use std::time::Instant;

use allot_wire::{Demands, TaskStatus};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use allot::client::{ClientConfig, LocalClient, Task};

use super::{BenchArgs, Limit};

/// What one measured run produced.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub(super) tasks: u64,
    pub(super) secs: f64,
    pub(super) hist: Option<hdrhistogram::Histogram<u64>>,
    pub(super) errors: HashMap<String, u64>,
    pub(super) per_worker: HashMap<String, u64>,
    /// The client's connection to its distributor (summed over rounds).
    pub(super) link: Option<allot::client::LinkStats>,
}

impl Run {
    /// Adds another round's figures to these.
    pub(super) fn merge(&mut self, other: Run) -> Result<()> {
        self.tasks += other.tasks;
        self.secs += other.secs;
        match (&mut self.hist, other.hist) {
            (Some(h), Some(o)) => h.add(&o).context("merging latency histograms")?,
            (None, o) => self.hist = o,
            (Some(_), None) => {}
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, n) in other.per_worker {
            *self.per_worker.entry(k).or_default() += n;
        }
        match (&mut self.link, other.link) {
            (Some(l), Some(o)) => l.merge(o),
            (None, o) => self.link = o,
            (Some(_), None) => {}
        }
        Ok(())
    }

    pub(super) fn q(&self, q: f64) -> u64 {
        self.hist
            .as_ref()
            .map(|h| h.value_at_quantile(q))
            .unwrap_or(0)
    }
    pub(super) fn max(&self) -> u64 {
        self.hist.as_ref().map(|h| h.max()).unwrap_or(0)
    }
    pub(super) fn per_s(&self) -> f64 {
        self.tasks as f64 / self.secs.max(1e-9)
    }
    pub(super) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

pub(super) fn histogram() -> Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .context("creating the latency histogram")
}

pub(super) async fn drive(cfg: ClientConfig, args: BenchArgs, limit: Limit) -> Result<Run> {
    let client = LocalClient::connect(cfg)
        .await
        .context("connecting to the cluster")?;
    // One shared task: submitting it clones a reference, not the task.
    let task = std::rc::Rc::new(
        Task::new(args.app.clone(), Bytes::from(vec![b'x'; args.payload])).demands(Demands {
            cores: 0,
            mem: 0,
            slots: 1,
        }),
    );
    if args.app == "sleep" {
        bail!("use --app echo or sha256 (sleep measures the sleep, not allot)");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Warm-up: connections, caches and buffers reach steady state.
    let warm = (args.concurrency * 4).min(20_000) as u64;
    let mut outstanding = 0usize;
    for _ in 0..warm.min(args.concurrency as u64) {
        client.submit_to(task.clone(), &tx)?;
        outstanding += 1;
    }
    let mut warm_done = 0;
    while warm_done < warm {
        warm_ok(rx.recv().await)?;
        warm_done += 1;
        outstanding -= 1;
        if warm_done + (outstanding as u64) < warm {
            client.submit_to(task.clone(), &tx)?;
            outstanding += 1;
        }
    }
    while outstanding > 0 {
        warm_ok(rx.recv().await)?;
        outstanding -= 1;
    }

    let total = match limit {
        Limit::Tasks(n) => Some(n),
        Limit::Time(_) => None,
    };
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        }
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} tasks {per_sec} {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut run = Run {
        hist: Some(histogram()?),
        ..Run::default()
    };
    let started = Instant::now();
    let deadline = match limit {
        Limit::Time(d) => Some(started + d),
        Limit::Tasks(_) => None,
    };
    let more = |sent: u64| match (total, deadline) {
        (Some(n), _) => sent < n,
        (None, Some(d)) => Instant::now() < d,
        (None, None) => false,
    };
    let mut sent = 0u64;
    while outstanding < args.concurrency && more(sent) {
        client.submit_to(task.clone(), &tx)?;
        sent += 1;
        outstanding += 1;
    }
    let mut since_bar = 0u64;
    // Counted by the shared name the client hands out (Fx-hashed), turned
    // into the report's map once at the end.
    let mut per_worker: HashMap<std::sync::Arc<str>, u64, rustc_hash::FxBuildHasher> =
        HashMap::default();
    while outstanding > 0 {
        let Some((_, r)) = rx.recv().await else { break };
        outstanding -= 1;
        match r {
            Ok(o) if o.status == TaskStatus::Ok => {
                if let Some(h) = run.hist.as_mut() {
                    let _ = h.record(o.latency.as_micros().max(1) as u64);
                }
                *per_worker.entry(o.worker).or_default() += 1;
                run.tasks += 1;
            }
            Ok(o) => {
                *run.errors
                    .entry(allot::labels::status_name(o.status).to_owned())
                    .or_default() += 1
            }
            Err(e) => *run.errors.entry(format!("client: {e}")).or_default() += 1,
        }
        since_bar += 1;
        if since_bar >= 4096 {
            bar.inc(since_bar);
            since_bar = 0;
        }
        if more(sent) {
            client.submit_to(task.clone(), &tx)?;
            sent += 1;
            outstanding += 1;
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    for (w, n) in per_worker {
        *run.per_worker.entry(w.to_string()).or_default() += n;
    }
    bar.finish_and_clear();
    run.link = client.link_stats();
    client.close();
    Ok(run)
}

/// A warm-up task must succeed: otherwise the bench would measure errors.
fn warm_ok(r: Option<(u64, Result<allot::Outcome, allot::ClientError>)>) -> Result<()> {
    let (_, r) = r.context("results channel closed")?;
    let o = r.context("warm-up task failed")?;
    if o.status != TaskStatus::Ok {
        bail!(
            "warm-up task {}: {}",
            allot::labels::status_name(o.status),
            o.message
        );
    }
    Ok(())
}
