//! `allot bench`: drives a cluster with many small tasks and measures it
//! against the transport's own ceiling in the same run.
//!
//! The baseline (`--baseline`) is a bare quinn echo between two endpoints
//! with the same TLS and transport settings, moving messages of the size of
//! one `Submit` frame with the same payload, with the same number in
//! flight, pipelined on one long-lived stream. A task is two round trips
//! (client to distributor, distributor to worker), so a ratio of 0.5 of the
//! baseline's messages per second is the ideal.
//!
//! A local cluster may have several distributor sets of several members
//! behind several gateways (`--sets`, `--distributors`, `--gateways`); the
//! tasks in flight are then shared by several client connections, and the
//! report gives each member's share of the tasks, its CPU per task and the
//! placements the workers refused as busy (double reservations), from the
//! members' own counters.
//!
//! The parts: [`driver`] keeps the tasks in flight and records what came
//! back, [`baseline`] measures the bare quinn echo, [`cluster`] starts the
//! cluster of `--local`, [`fleet`] registers the simulated workers of a
//! scale run, [`process`] reads CPU time and memory from `/proc`, and
//! [`report`] prints it all.

mod baseline;
mod cluster;
mod driver;
mod durable;
mod fleet;
mod process;
mod report;
mod scrape;
mod spawn;

pub use baseline::{baseline_echo_server, BaselineEchoArgs};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use allot::client::{ClientConfig, LocalClient};
use allot_wire::{DistributorCounters, StatusQuery};

use driver::Run;
use report::{MemberFigures, Round};

/// Options of `allot bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Gateways of a running cluster, tried in order (default: the
    /// ALLOT_GATEWAY variable, without --local).
    #[arg(long, value_delimiter = ',')]
    pub gateway: Vec<allot::HostPort>,
    /// PKI directory (with --gateway).
    #[arg(long, env = crate::env::PKI)]
    pub pki: Option<PathBuf>,
    /// Client certificate name.
    #[arg(long, env = crate::env::NAME, default_value = "client")]
    pub name: String,
    /// Seconds the client keeps searching when no gateway or distributor
    /// answers (an outage), with backoff, before failing; 0 fails at once.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "30")]
    pub retry_for: Duration,
    /// Application to run: echo or sha256 (run inline by the workers, of
    /// --payload bytes), or sleep (0 ms, holding a worker slot while it
    /// runs: with few --slots it shows the distributors' double
    /// reservations).
    #[arg(long, default_value = "echo")]
    pub app: String,
    /// Run command tasks (with --local): the workers get the app `cmd`
    /// running this command (directly when it has no shell syntax, as
    /// `--app-cmd` does), and every task runs it, with no input.
    #[arg(long, value_name = "CMD", requires = "local")]
    pub command: Option<String>,
    /// With --command: after each round, also spawn the command the same
    /// number of times with the same parallelism (the local cluster's
    /// slots in all, at most --concurrency) in a bare loop, and report
    /// allot's tasks/s over its spawns/s.
    #[arg(long, requires = "command")]
    pub spawn_baseline: bool,
    /// Tasks to run (default 100000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub tasks: Option<u64>,
    /// Seconds to run.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Start a local cluster first.
    #[arg(long)]
    pub local: bool,
    /// Workers of the local cluster (of each set, with --sets), each
    /// joined to every distributor of its set.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Distributors of each set of the local cluster: members behind the
    /// gateways, sharing the set's clients and workers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub distributors: u16,
    /// Distributor sets of the local cluster (with --processes), each with
    /// --distributors members and --workers workers of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub sets: u16,
    /// Gateways of the local cluster; every member registers with each.
    #[arg(long = "gateways", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub gateways: u16,
    /// Client connections of a local cluster's run, each with a
    /// certificate of its own, sharing the tasks in flight (default: one
    /// per distributor). Their names are picked so that each distributor
    /// is the gateways' first choice for as many as the others.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub clients: Option<u16>,
    /// Slots of each worker of the local cluster (default: twice the tasks
    /// in flight, so that capacity never limits the run). Fewer make the
    /// distributors of a set reserve the same slots: the workers refuse
    /// the extra placements as busy, which the report counts.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: Option<u32>,
    /// Each worker's `--prefetch`: tasks it takes beyond its free slots,
    /// to start the moment a slot frees.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// Run the local cluster's nodes as separate `allot` processes.
    #[arg(long, requires = "local")]
    pub processes: bool,
    /// Also measure a bare quinn echo in the same run and report the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Measure this many rounds (each an allot run then, with --baseline,
    /// the baseline) and report medians: steadier on a shared machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub rounds: u16,
    /// Scale run: after a first measurement, register this many simulated
    /// workers (multiplexed over a few connections, each sending a delta
    /// every second) and measure again while their deltas stream in.
    #[arg(long, requires = "processes")]
    pub sim_workers: Option<usize>,
    /// Also measure the durable path: each round one array job of the
    /// task count, journaled at the distributor, beside the in-memory path;
    /// then the time to accept a 1,000,000-task array, the memory per
    /// queued task, and the time to list a 100,000-task job.
    #[arg(long, requires = "local")]
    pub detach: bool,
    /// The cost of metrics: the local cluster's nodes (threads, or with
    /// --processes child processes) serve `/metrics`,
    /// and each round runs once while every node is scraped this often,
    /// in milliseconds, and once not; the report gives both medians.
    #[arg(long, value_name = "MS", requires = "local",
          value_parser = clap::value_parser!(u64).range(10..))]
    pub scrape_ms: Option<u64>,
    /// With --scrape-ms, also read what an open dashboard polls (the JSON
    /// API of the distributors and gateways) each time.
    #[arg(long, requires = "scrape_ms")]
    pub scrape_dashboard: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What the scraper reads of each node of `c`: `/metrics`, and with
/// `dashboard` the API an open dashboard polls on the distributors and
/// the gateways (known by the names the bench gave them).
fn scrape_targets(
    c: &cluster::Cluster,
    dashboard: bool,
) -> Vec<(SocketAddr, &'static [&'static str])> {
    c.metrics
        .iter()
        .map(|(name, a)| {
            let paths = if !dashboard {
                scrape::METRICS
            } else if c.members.iter().any(|m| &m.name == name) {
                scrape::DISTRIBUTOR_DASHBOARD
            } else if c.gateway_names.iter().any(|g| g == name) {
                scrape::GATEWAY_DASHBOARD
            } else {
                scrape::METRICS
            };
            (*a, paths)
        })
        .collect()
}

/// Runs `allot bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.payload > allot_wire::DEFAULT_MAX_FRAME - 64 * 1024 {
        bail!(
            "--payload of {} bytes exceeds the frame limit",
            args.payload
        );
    }
    let shaped = args.distributors > 1
        || args.sets > 1
        || args.gateways > 1
        || args.clients.is_some()
        || args.slots.is_some();
    if shaped && !args.local {
        bail!(
            "--distributors, --sets, --gateways, --clients and --slots shape a local \
             cluster: use them with --local"
        );
    }
    if args.sets > 1 && !args.processes {
        bail!("--sets above 1 needs --processes (the members register with the gateways)");
    }
    if args.sim_workers.is_some() && (args.distributors > 1 || args.sets > 1) {
        bail!("--sim-workers measures one distributor: use it with --distributors 1 and --sets 1");
    }
    let members_n = usize::from(args.distributors) * usize::from(args.sets);
    let clients_n = args.clients.map(usize::from).unwrap_or(members_n);
    if args.concurrency < clients_n {
        bail!(
            "--concurrency ({}) must be at least the number of client connections ({clients_n})",
            args.concurrency
        );
    }
    let limit = match (args.tasks, args.duration) {
        (Some(n), _) => Limit::Tasks(n),
        (None, Some(s)) if s > 0.0 => Limit::Time(Duration::from_secs_f64(s)),
        (None, Some(_)) => bail!("--duration must be positive"),
        (None, None) => Limit::Tasks(100_000),
    };
    // Ctrl-C ends the run with an error, so that a local cluster's nodes
    // and child processes stop and its temporary directory (the cluster's
    // private keys) is removed.
    crate::interrupt::catch().context("catching Ctrl-C")?;
    let mut args = args;
    if args.command.is_some() {
        args.app = cluster::COMMAND_APP.into();
    }
    // The bare spawn loop runs as many at once as the cluster can.
    let spawn_parallelism = args
        .concurrency
        .min(args.workers.max(1) * cluster::slots(&args) as usize);
    let mut cluster = None;
    // The configuration status queries and the scale run use.
    let (cfg, cfgs) = if args.local {
        let c = cluster::Cluster::start(&args)?;
        let cfgs: Vec<ClientConfig> = c
            .client_names(&args.name, clients_n)?
            .into_iter()
            .map(|(name, gws)| {
                ClientConfig::new(name, c.pki.clone(), gws).with_retry_for(args.retry_for)
            })
            .collect();
        let cfg = ClientConfig::new(args.name.clone(), c.pki.clone(), c.gateways.clone())
            .with_retry_for(args.retry_for);
        cluster = Some(c);
        (cfg, cfgs)
    } else {
        let pki = args.pki.clone().with_context(|| {
            format!(
                "--pki is required with --gateway (or set {}, or use --local)",
                crate::env::PKI
            )
        })?;
        let gateways = match crate::env::addrs(crate::env::GATEWAY) {
            _ if !args.gateway.is_empty() => args.gateway.clone(),
            Err(e) => return Err(e),
            Ok(Some(g)) => g,
            Ok(None) => bail!(
                "give --gateway ADDR,... of a running cluster (or set {}), or --local",
                crate::env::GATEWAY
            ),
        };
        let gateways = crate::values::resolve_all("--gateway", &gateways)?;
        let cfg =
            ClientConfig::new(args.name.clone(), pki, gateways).with_retry_for(args.retry_for);
        (cfg.clone(), vec![cfg])
    };
    let members: Vec<cluster::Member> = cluster
        .as_ref()
        .map(|c| c.members.clone())
        .unwrap_or_default();
    // CPU time of every process of the run, by role: where the time goes.
    let mut roles: Vec<(&'static str, u32)> = match &cluster {
        Some(_) if args.processes => vec![("client", std::process::id())],
        _ => vec![("all nodes (one process)", std::process::id())],
    };
    if let Some(c) = &cluster {
        roles.extend(c.roles.iter().copied());
    }
    let frame_len = baseline::submit_frame_len(&args)?;
    // Rounds alternate allot and the baseline, so that both see the same
    // machine: on a shared machine one pair of runs can be minutes apart in
    // what the other tenants do; the median of several pairs is steadier.
    let mut run = Run::default();
    let mut rounds: Vec<Round> = Vec::with_capacity(usize::from(args.rounds));
    let mut cpu_us: Vec<f64> = vec![0.0; roles.len()];
    let mut cpu_seen = vec![true; roles.len()];
    let mut counted = vec![DistributorCounters::default(); members.len()];
    let targets = cluster
        .as_ref()
        .map(|c| scrape_targets(c, args.scrape_dashboard))
        .unwrap_or_default();
    let mut ab = args.scrape_ms.map(|ms| scrape::ScrapeAb {
        every_ms: ms,
        dashboard: args.scrape_dashboard,
        scraped: Vec::new(),
        unscraped: Vec::new(),
        scrapes_ok: 0,
        scrapes_failed: 0,
    });
    for round in 0..args.rounds {
        // With --scrape-ms, the scraped run first in even rounds, second
        // in odd ones (the unscraped run below is the round's own).
        let scraped_run = |ab: &mut scrape::ScrapeAb| -> Result<()> {
            let s = scrape::Scraper::start(targets.clone(), Duration::from_millis(ab.every_ms));
            let r = crate::interrupt::block_on(driver::drive(cfgs.clone(), args.clone(), limit));
            let (ok, failed) = s.stop();
            ab.scraped.push(r??.per_s());
            ab.scrapes_ok += ok;
            ab.scrapes_failed += failed;
            Ok(())
        };
        if let Some(ab) = ab.as_mut().filter(|_| round % 2 == 0) {
            scraped_run(ab)?;
        }
        let counters0 = member_counters(&cfg, &members)?;
        let before: Vec<Option<Duration>> = roles
            .iter()
            .map(|(_, p)| process::process_cpu(*p))
            .collect();
        let r = crate::interrupt::block_on(driver::drive(cfgs.clone(), args.clone(), limit))??;
        for (i, (_, pid)) in roles.iter().enumerate() {
            match (before[i], process::process_cpu(*pid)) {
                (Some(b), Some(a)) => cpu_us[i] += a.saturating_sub(b).as_secs_f64() * 1e6,
                _ => cpu_seen[i] = false,
            }
        }
        let counters1 = member_counters(&cfg, &members)?;
        for ((sum, a), b) in counted.iter_mut().zip(&counters0).zip(&counters1) {
            add_delta(sum, a, b);
        }
        let base = if args.baseline {
            let n = r.tasks.clamp(1000, 2_000_000);
            Some(crate::interrupt::block_on(baseline::baseline_echo(
                frame_len,
                args.concurrency,
                n,
                args.processes,
            ))??)
        } else {
            None
        };
        let spawned = match (&args.command, args.spawn_baseline) {
            (Some(line), true) => Some(spawn::spawn_loop(line, r.tasks.max(1), spawn_parallelism)?),
            _ => None,
        };
        if let Some(ab) = ab.as_mut() {
            ab.unscraped.push(r.per_s());
            if round % 2 == 1 {
                scraped_run(ab)?;
            }
        }
        rounds.push(Round {
            tasks_per_s: r.per_s(),
            p50_us: r.q(0.5),
            baseline: base,
            spawned,
        });
        run.merge(r)?;
    }
    let scale = match (args.sim_workers, &cluster) {
        (Some(n), Some(c)) => Some(fleet::scale_phase(c, &cfg, &cfgs, &args, limit, n)?),
        _ => None,
    };
    let durable = match (&cluster, args.detach) {
        (Some(c), true) => {
            let n = match limit {
                Limit::Tasks(n) => n,
                Limit::Time(_) => run.tasks / u64::from(args.rounds).max(1),
            };
            Some(durable::durable_phase(c, &args, n.max(1))?)
        }
        _ => None,
    };
    let connections: Vec<usize> = match &cluster {
        Some(c) => {
            let mut n = vec![0; members.len()];
            for cf in &cfgs {
                n[c.first_choice(&cf.name)] += 1;
            }
            n
        }
        None => Vec::new(),
    };
    drop(cluster);
    let cpu = process::cpu_by_role(&roles, &cpu_us, &cpu_seen, run.tasks);
    let member_figures: Vec<MemberFigures> = members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberFigures {
            set: m.set.clone(),
            name: m.name.clone(),
            addr: m.addr,
            connections: connections.get(i).copied().unwrap_or(0),
            tasks: run.per_distributor.get(&m.name).copied().unwrap_or(0),
            cpu_us: m.pid.and_then(|p| {
                let i = roles.iter().position(|(_, q)| *q == p)?;
                cpu_seen[i].then_some(cpu_us[i])
            }),
            counters: counted[i],
        })
        .collect();
    report::report(&args, &run, &rounds, &cpu, &member_figures, cfgs.len());
    if let Some(sc) = &scale {
        sc.report(&run, args.json);
    }
    if let Some(ab) = &ab {
        ab.report(args.json);
    }
    if let Some(d) = &durable {
        let mut v: Vec<f64> = rounds.iter().map(|r| r.tasks_per_s).collect();
        v.sort_by(f64::total_cmp);
        d.report(v.get(v.len() / 2).copied().unwrap_or(0.0), args.json);
    }
    if run.tasks == 0 {
        bail!("no task completed");
    }
    Ok(())
}

/// Every member's counters now (none without a local cluster).
fn member_counters(
    cfg: &ClientConfig,
    members: &[cluster::Member],
) -> Result<Vec<DistributorCounters>> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let addrs: Vec<(String, std::net::SocketAddr)> =
        members.iter().map(|m| (m.name.clone(), m.addr)).collect();
    let cfg = cfg.clone();
    crate::interrupt::block_on(async move {
        let mut out = Vec::with_capacity(addrs.len());
        for (name, a) in addrs {
            let c = LocalClient::connect_distributor(cfg.clone(), a)
                .await
                .with_context(|| format!("connecting to {name} for its counters"))?;
            let s = c
                .status_with(StatusQuery {
                    include_down: true,
                    max_workers: 0,
                })
                .await;
            c.close();
            out.push(
                s.with_context(|| format!("asking {name} for its counters"))?
                    .counters,
            );
        }
        Ok::<_, anyhow::Error>(out)
    })?
}

/// Adds what the counters moved by from `a` to `b` to `sum`.
fn add_delta(sum: &mut DistributorCounters, a: &DistributorCounters, b: &DistributorCounters) {
    sum.submitted += b.submitted.saturating_sub(a.submitted);
    sum.completed += b.completed.saturating_sub(a.completed);
    sum.refused += b.refused.saturating_sub(a.refused);
    sum.refused_busy += b.refused_busy.saturating_sub(a.refused_busy);
    sum.retried += b.retried.saturating_sub(a.retried);
    sum.no_match += b.no_match.saturating_sub(a.no_match);
}

#[derive(Clone, Copy)]
enum Limit {
    Tasks(u64),
    Time(Duration),
}
