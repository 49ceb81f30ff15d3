//! The measured run: client connections keeping `--concurrency` tasks in
//! flight through the cluster between them, after a warm-up, and what
//! came back.
//!
//! Each connection keeps its part of the tasks in flight (closed loop:
//! a result lets it send the next); the run's task budget (or its time)
//! is shared, so a connection whose distributor is faster does more of
//! the tasks, and the per-distributor counts are the members' shares.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use allot_wire::{Demands, TaskStatus};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use allot::client::{ClientConfig, LocalClient, Task};

use super::{BenchArgs, Limit};

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// What one measured run produced.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub(super) tasks: u64,
    pub(super) secs: f64,
    pub(super) hist: Option<hdrhistogram::Histogram<u64>>,
    pub(super) errors: HashMap<String, u64>,
    pub(super) per_worker: HashMap<String, u64>,
    /// Tasks done by each distributor (its node name).
    pub(super) per_distributor: HashMap<String, u64>,
    /// The client's connection to its distributor (summed over
    /// connections and rounds).
    pub(super) link: Option<allot::client::LinkStats>,
}

impl Run {
    /// Adds another round's (or connection's) figures to these; the time
    /// is added too (for connections of one round, set it afterwards).
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
        for (k, n) in other.per_distributor {
            *self.per_distributor.entry(k).or_default() += n;
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

/// The tasks left to send, shared by the connections of a run.
struct Budget {
    left: Cell<Option<u64>>,
    deadline: Option<Instant>,
}

impl Budget {
    /// Takes one task to send; false once the run is over.
    fn take(&self) -> bool {
        match (self.left.get(), self.deadline) {
            (Some(0), _) => false,
            (Some(n), _) => {
                self.left.set(Some(n - 1));
                true
            }
            (None, Some(d)) => Instant::now() < d,
            (None, None) => false,
        }
    }
}

/// Runs the bench over one connection per configuration in `cfgs`,
/// splitting `--concurrency` among them.
pub(super) async fn drive(cfgs: Vec<ClientConfig>, args: BenchArgs, limit: Limit) -> Result<Run> {
    let k = cfgs.len();
    if k == 0 || args.concurrency < k {
        bail!(
            "--concurrency ({}) must be at least the number of client connections ({k})",
            args.concurrency
        );
    }
    let mut clients = Vec::with_capacity(k);
    for cfg in cfgs {
        let name = cfg.name.clone();
        clients.push(
            LocalClient::connect(cfg)
                .await
                .with_context(|| format!("connecting to the cluster as {name}"))?,
        );
    }
    // `sleep` sleeps 0 ms: unlike echo and sha256, which the worker runs
    // inline, it holds a worker slot until the worker's runtime comes back
    // to it, so the distributors' reservations meet the workers' admission.
    let input = if args.app == "sleep" {
        Bytes::from_static(b"0")
    } else if args.command.is_some() {
        // A command gets no input (and so no pipe to write it to).
        Bytes::new()
    } else {
        Bytes::from(vec![b'x'; args.payload])
    };
    // One shared task: submitting it clones a reference, not the task.
    let task = Rc::new(Task::new(args.app.clone(), input).demands(Demands {
        cores: 0,
        mem: 0,
        slots: 1,
    }));
    let in_flight: Vec<usize> = (0..k)
        .map(|i| args.concurrency / k + usize::from(i < args.concurrency % k))
        .collect();
    // Warm-up: connections, caches and buffers reach steady state.
    let warm = (args.concurrency * 4).min(20_000) as u64;
    let mut warming = Vec::with_capacity(k);
    for (c, n) in clients.iter().zip(&in_flight) {
        let share = (warm * *n as u64 / args.concurrency as u64).max(1);
        warming.push(tokio::task::spawn_local(warm_up(
            c.clone(),
            task.clone(),
            *n,
            share,
        )));
    }
    for w in warming {
        w.await.context("warm-up task panicked")??;
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
    let started = Instant::now();
    let budget = Rc::new(Budget {
        left: Cell::new(total),
        deadline: match limit {
            Limit::Time(d) => Some(started + d),
            Limit::Tasks(_) => None,
        },
    });
    let mut loops = Vec::with_capacity(k);
    for (c, n) in clients.iter().zip(&in_flight) {
        loops.push(tokio::task::spawn_local(measure(
            c.clone(),
            task.clone(),
            *n,
            budget.clone(),
            bar.clone(),
        )));
    }
    let mut run = Run::default();
    for l in loops {
        run.merge(l.await.context("bench connection panicked")??)?;
    }
    run.secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for c in &clients {
        c.close();
    }
    Ok(run)
}

/// Runs `warm` tasks on `client`, `n` at a time; every one must succeed.
async fn warm_up(client: LocalClient, task: Rc<Task>, n: usize, warm: u64) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut outstanding = 0usize;
    for _ in 0..warm.min(n as u64) {
        client.submit_to(task.clone(), &tx)?;
        outstanding += 1;
    }
    let mut done = 0;
    while done < warm {
        warm_ok(rx.recv().await)?;
        done += 1;
        outstanding -= 1;
        if done + (outstanding as u64) < warm {
            client.submit_to(task.clone(), &tx)?;
            outstanding += 1;
        }
    }
    Ok(())
}

/// The measured loop of one connection: `n` tasks in flight while the
/// budget lasts.
async fn measure(
    client: LocalClient,
    task: Rc<Task>,
    n: usize,
    budget: Rc<Budget>,
    bar: indicatif::ProgressBar,
) -> Result<Run> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut run = Run {
        hist: Some(histogram()?),
        ..Run::default()
    };
    let mut outstanding = 0usize;
    while outstanding < n && budget.take() {
        client.submit_to(task.clone(), &tx)?;
        outstanding += 1;
    }
    let mut since_bar = 0u64;
    // Counted by the shared names the client hands out (Fx-hashed), turned
    // into the report's maps once at the end.
    let mut per_worker: FxMap<std::sync::Arc<str>, u64> = FxMap::default();
    let mut per_distributor: FxMap<std::sync::Arc<str>, u64> = FxMap::default();
    while outstanding > 0 {
        let Some((_, r)) = rx.recv().await else { break };
        outstanding -= 1;
        match r {
            Ok(o) if o.status == TaskStatus::Ok => {
                if let Some(h) = run.hist.as_mut() {
                    let _ = h.record(o.latency.as_micros().max(1) as u64);
                }
                *per_worker.entry(o.worker).or_default() += 1;
                *per_distributor.entry(o.distributor).or_default() += 1;
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
        if budget.take() {
            client.submit_to(task.clone(), &tx)?;
            outstanding += 1;
        }
    }
    for (w, n) in per_worker {
        *run.per_worker.entry(w.to_string()).or_default() += n;
    }
    for (d, n) in per_distributor {
        *run.per_distributor.entry(d.to_string()).or_default() += n;
    }
    run.link = client.link_stats();
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
