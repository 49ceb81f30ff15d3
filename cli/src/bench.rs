//! `allot bench`: drives a cluster with many small tasks and measures it
//! against the transport's own ceiling in the same run.
//!
//! The baseline (`--baseline`) is a bare quinn echo between two endpoints
//! with the same TLS and transport settings, moving messages of the size of
//! one `Submit` frame with the same payload, with the same number in
//! flight, pipelined on one long-lived stream. A task is two round trips
//! (client to distributor, distributor to worker), so a ratio of 0.5 of the
//! baseline's messages per second is the ideal.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::{Demands, ReportMode, Role, TaskStatus};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::sync::{mpsc, Notify};

use allot::client::{Client, ClientConfig, Task};
use allot::distributor::{self, DistributorConfig};
use allot::gateway::{self, GatewayConfig, RedirectPolicy};
use allot::worker::{self, WorkerConfig};

/// Options of `allot bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Gateways of a running cluster, tried in order.
    #[arg(long, value_delimiter = ',')]
    pub gateway: Vec<SocketAddr>,
    /// PKI directory (with --gateway).
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Client certificate name.
    #[arg(long, default_value = "client")]
    pub name: String,
    /// Application to run.
    #[arg(long, default_value = "echo")]
    pub app: String,
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
    /// Workers of the local cluster.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one measured run produced.
#[derive(Debug, Default)]
struct Run {
    tasks: u64,
    secs: f64,
    hist: Option<hdrhistogram::Histogram<u64>>,
    errors: HashMap<String, u64>,
    per_worker: HashMap<String, u64>,
    /// The client's connection to its distributor (summed over rounds).
    link: Option<allot::client::LinkStats>,
}

impl Run {
    /// Adds another round's figures to these.
    fn merge(&mut self, other: Run) -> Result<()> {
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

    fn q(&self, q: f64) -> u64 {
        self.hist
            .as_ref()
            .map(|h| h.value_at_quantile(q))
            .unwrap_or(0)
    }
    fn max(&self) -> u64 {
        self.hist.as_ref().map(|h| h.max()).unwrap_or(0)
    }
    fn per_s(&self) -> f64 {
        self.tasks as f64 / self.secs.max(1e-9)
    }
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn histogram() -> Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .context("creating the latency histogram")
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
    let tmp;
    let mut cluster = None;
    let (pki, gateways) = if args.local {
        tmp = crate::demo::TempDir::new()?;
        let c = LocalCluster::start(&tmp.0, &args)?;
        let out = (c.pki.clone(), vec![c.gateway]);
        cluster = Some(c);
        out
    } else {
        let pki = args
            .pki
            .clone()
            .context("--pki is required with --gateway (or use --local)")?;
        if args.gateway.is_empty() {
            bail!("give --gateway ADDR,... of a running cluster, or --local");
        }
        (pki, args.gateway.clone())
    };
    let cfg = ClientConfig {
        name: args.name.clone(),
        pki: pki.clone(),
        gateways,
        attrs: Vec::new(),
    };
    // CPU time of every process of the run, by role: where the time goes.
    let mut roles: Vec<(&'static str, u32)> = match &cluster {
        Some(_) if args.processes => vec![("client", std::process::id())],
        _ => vec![("all nodes (one process)", std::process::id())],
    };
    if let Some(c) = &cluster {
        roles.extend(c.roles.iter().copied());
    }
    let frame_len = submit_frame_len(&args)?;
    // Rounds alternate allot and the baseline, so that both see the same
    // machine: on a shared machine one pair of runs can be minutes apart in
    // what the other tenants do; the median of several pairs is steadier.
    let mut run = Run::default();
    let mut rounds: Vec<Round> = Vec::with_capacity(usize::from(args.rounds));
    let mut cpu_us: Vec<f64> = vec![0.0; roles.len()];
    let mut cpu_seen = vec![true; roles.len()];
    for _ in 0..args.rounds {
        let before: Vec<Option<Duration>> = roles.iter().map(|(_, p)| process_cpu(*p)).collect();
        let r = crate::interrupt::block_on(drive(cfg.clone(), args.clone(), limit))??;
        for (i, (_, pid)) in roles.iter().enumerate() {
            match (before[i], process_cpu(*pid)) {
                (Some(b), Some(a)) => cpu_us[i] += a.saturating_sub(b).as_secs_f64() * 1e6,
                _ => cpu_seen[i] = false,
            }
        }
        let base = if args.baseline {
            let n = r.tasks.clamp(1000, 2_000_000);
            Some(crate::interrupt::block_on(baseline_echo(
                frame_len,
                args.concurrency,
                n,
                args.processes,
            ))??)
        } else {
            None
        };
        rounds.push(Round {
            tasks_per_s: r.per_s(),
            p50_us: r.q(0.5),
            baseline: base,
        });
        run.merge(r)?;
    }
    let scale = match (args.sim_workers, &cluster) {
        (Some(n), Some(c)) => Some(scale_phase(c, &cfg, &args, limit, n)?),
        _ => None,
    };
    drop(cluster);
    let cpu = cpu_by_role(&roles, &cpu_us, &cpu_seen, run.tasks);
    report(&args, &run, &rounds, &cpu);
    if let Some(sc) = &scale {
        sc.report(&run, args.json);
    }
    if run.tasks == 0 {
        bail!("no task completed");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Limit {
    Tasks(u64),
    Time(Duration),
}

async fn drive(cfg: ClientConfig, args: BenchArgs, limit: Limit) -> Result<Run> {
    let client = Client::connect(cfg)
        .await
        .context("connecting to the cluster")?;
    // One shared task: submitting it clones a reference, not the task.
    let task = std::rc::Rc::new(Task {
        app: args.app.clone(),
        payload: Bytes::from(vec![b'x'; args.payload]),
        demands: Demands {
            cores: 0,
            mem: 0,
            slots: 1,
        },
        ..Task::default()
    });
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

/// The size of the `Submit` frame the bench sends: the baseline moves
/// messages of exactly this size.
fn submit_frame_len(args: &BenchArgs) -> Result<usize> {
    let s = allot_wire::Submit::new(1, 1, args.app.clone());
    let mut out = BytesMut::new();
    allot_wire::FrameEncoder::default().encode(&s, &vec![0; args.payload], &mut out)?;
    Ok(out.len())
}

/// The baseline's result.
struct Baseline {
    msgs_per_s: f64,
    p50_us: u64,
}

/// Makes a child process get SIGTERM when the bench dies, however it dies
/// (a release build aborts on panic, so `Drop` of the cluster does not
/// run): no orphaned nodes are left behind. The children are spawned from
/// the main thread, whose exit is what the kernel watches.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: runs in the child between fork and exec, and calls only
        // async-signal-safe functions (prctl, getppid, kill) with no
        // allocation or locking. Exercised by every `--processes` bench,
        // including the cluster tests.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Options of the hidden `allot baseline-echo` subcommand.
#[derive(Args, Debug, Clone)]
pub struct BaselineEchoArgs {
    /// PKI directory holding the `bench-echo` certificate.
    #[arg(long)]
    pub pki: PathBuf,
}

/// The echo server of the baseline in a process of its own: prints its
/// address on stdout, echoes one connection's stream, and exits.
pub fn baseline_echo_server(a: BaselineEchoArgs) -> Result<()> {
    let pki = allot::pki::Pki::load(&a.pki, "bench-echo")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ep = allot::transport::endpoint(&pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        println!("{}", ep.local_addr()?);
        echo_one_connection(&ep).await
    })
}

/// Accepts one connection and echoes its first stream, chunk by chunk
/// (zero-copy: the received `Bytes` are sent back as they are).
async fn echo_one_connection(ep: &quinn::Endpoint) -> Result<()> {
    let conn = ep.accept().await.context("no baseline client")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        send.write_chunk(chunk.bytes).await?;
    }
    let _ = send.finish();
    conn.closed().await;
    Ok(())
}

/// Where the baseline's echo server runs.
enum EchoServer {
    /// A thread of this process (the nodes are threads too).
    Thread(std::thread::JoinHandle<Result<()>>),
    /// A process of its own (the nodes are processes: `--processes`).
    Process(Child),
}

impl EchoServer {
    fn finish(self) {
        match self {
            EchoServer::Thread(t) => {
                let _ = t.join();
            }
            EchoServer::Process(mut c) => {
                // It exits once the connection closes; do not wait long.
                for _ in 0..50 {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Starts the echo server (see [`EchoServer`]) and returns its address.
fn start_echo_server(pki: &Path, own_process: bool) -> Result<(SocketAddr, EchoServer)> {
    if own_process {
        let exe = std::env::current_exe().context("finding the allot binary")?;
        let mut child = die_with_parent(&mut Command::new(exe))
            .args(["baseline-echo", "--pki"])
            .arg(pki)
            .env("ALLOT_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the baseline echo process")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let addr: SocketAddr = match line.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the baseline echo process did not report its address");
            }
        };
        return Ok((addr, EchoServer::Process(child)));
    }
    let server_pki = allot::pki::Pki::load(pki, "bench-echo")?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ep =
                allot::transport::endpoint(&server_pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            addr_tx.send(ep.local_addr()?).ok();
            echo_one_connection(&ep).await
        })
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .context("baseline server did not start")?;
    Ok((addr, EchoServer::Thread(server)))
}

/// Bare quinn echo: an echo server (a thread, or with `own_process` a
/// process of its own), a client keeping `in_flight` messages of `len`
/// bytes in flight on one stream.
async fn baseline_echo(
    len: usize,
    in_flight: usize,
    n: u64,
    own_process: bool,
) -> Result<Baseline> {
    // Its own throwaway PKI: the same TLS as the nodes, no certificates
    // needed from the cluster under test.
    let tmp = crate::demo::TempDir::new()?;
    let pki = tmp.0.join("pki");
    allot::pki::create_cluster(
        &pki,
        &[
            ("bench-echo", Role::Distributor),
            ("bench-echo-client", Role::Client),
        ],
    )?;
    let client_pki = allot::pki::Pki::load(&pki, "bench-echo-client")?;
    let (addr, server) = start_echo_server(&pki, own_process)?;
    let ep = allot::transport::endpoint(&client_pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let conn = allot::transport::connect(&ep, addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let block = Bytes::from(vec![0x5au8; len * in_flight]);
    let sent_at: Rc<RefCell<VecDeque<Instant>>> =
        Rc::new(RefCell::new(VecDeque::with_capacity(in_flight)));
    let done = Rc::new(Cell::new(0u64));
    let wake = Rc::new(Notify::new());
    let mut hist = histogram()?;
    let started = Instant::now();
    let writer = {
        let (sent_at, done, wake) = (sent_at.clone(), done.clone(), wake.clone());
        tokio::task::spawn_local(async move {
            let mut sent = 0u64;
            while sent < n {
                let window = (in_flight as u64)
                    .saturating_sub(sent - done.get())
                    .min(n - sent) as usize;
                if window == 0 {
                    wake.notified().await;
                    continue;
                }
                {
                    let now = Instant::now();
                    let mut q = sent_at.borrow_mut();
                    for _ in 0..window {
                        q.push_back(now);
                    }
                }
                if send.write_chunk(block.slice(..window * len)).await.is_err() {
                    break;
                }
                sent += window as u64;
            }
            let _ = send.finish();
        })
    };
    let mut received = 0usize;
    while done.get() < n {
        let Some(chunk) = recv.read_chunk(usize::MAX, true).await? else {
            break;
        };
        received += chunk.bytes.len();
        let now = Instant::now();
        let mut finished = 0;
        while received >= len {
            received -= len;
            finished += 1;
            if let Some(t) = sent_at.borrow_mut().pop_front() {
                let _ = hist.record(now.duration_since(t).as_micros().max(1) as u64);
            }
        }
        done.set(done.get() + finished);
        wake.notify_one();
    }
    let secs = started.elapsed().as_secs_f64();
    writer.abort();
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    server.finish();
    Ok(Baseline {
        msgs_per_s: done.get() as f64 / secs.max(1e-9),
        p50_us: hist.value_at_quantile(0.5),
    })
}

/// Microseconds of CPU per completed task, summed per role, in the order
/// roles were listed (a role whose process could not be read is left out).
fn cpu_by_role(
    roles: &[(&'static str, u32)],
    cpu_us: &[f64],
    seen: &[bool],
    tasks: u64,
) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    if tasks == 0 {
        return out;
    }
    for (((role, _), us), ok) in roles.iter().zip(cpu_us).zip(seen) {
        if !ok {
            continue;
        }
        let per_task = us / tasks as f64;
        match out.iter_mut().find(|(r, _)| r == role) {
            Some((_, t)) => *t += per_task,
            None => out.push((role, per_task)),
        }
    }
    out
}

/// One round: an allot run and, with `--baseline`, the bare quinn echo
/// right after it.
struct Round {
    tasks_per_s: f64,
    p50_us: u64,
    baseline: Option<Baseline>,
}

impl Round {
    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.tasks_per_s / b.msgs_per_s.max(1e-9))
    }
    fn p50_ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.p50_us as f64 / b.p50_us.max(1) as f64)
    }
}

/// The median of some figures (the upper one of an even count); `None`
/// when there are none.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn report(args: &BenchArgs, run: &Run, rounds: &[Round], cpu: &[(&'static str, f64)]) {
    // With one round these are that round's figures; with more, medians.
    let tasks_per_s = median(rounds.iter().map(|r| r.tasks_per_s).collect()).unwrap_or(0.0);
    let base_msgs = median(
        rounds
            .iter()
            .filter_map(|r| r.baseline.as_ref().map(|b| b.msgs_per_s))
            .collect(),
    );
    let base_p50 = median(
        rounds
            .iter()
            .filter_map(|r| r.baseline.as_ref().map(|b| b.p50_us as f64))
            .collect(),
    );
    let ratio = median(rounds.iter().filter_map(Round::ratio).collect());
    let p50_ratio = median(rounds.iter().filter_map(Round::p50_ratio).collect());
    let dist_cpu_us = cpu
        .iter()
        .find(|(r, _)| *r == "distributor")
        .map(|(_, us)| *us);
    if args.json {
        let mut j = serde_json::json!({
            "app": args.app,
            "payload": args.payload,
            "concurrency": args.concurrency,
            "tasks": run.tasks,
            "errors": run.error_count(),
            "errors_by_kind": run.errors,
            "seconds": run.secs,
            "tasks_per_s": tasks_per_s,
            "p50_us": run.q(0.5),
            "p90_us": run.q(0.9),
            "p99_us": run.q(0.99),
            "p999_us": run.q(0.999),
            "max_us": run.max(),
            "per_worker": run.per_worker,
        });
        if let Some(l) = run.link {
            j["link"] = serde_json::json!({
                "mtu": l.mtu,
                "sent_packets": l.sent_packets,
                "lost_packets": l.lost_packets,
                "congestion_events": l.congestion_events,
                "black_holes": l.black_holes,
            });
        }
        if let (Some(m), Some(p)) = (base_msgs, base_p50) {
            j["baseline_msgs_per_s"] = serde_json::json!(m);
            j["baseline_p50_us"] = serde_json::json!(p);
            j["ratio"] = serde_json::json!(ratio);
            j["p50_ratio"] = serde_json::json!(p50_ratio);
        }
        if rounds.len() > 1 {
            j["rounds"] = rounds
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "tasks_per_s": r.tasks_per_s,
                        "p50_us": r.p50_us,
                        "baseline_msgs_per_s": r.baseline.as_ref().map(|b| b.msgs_per_s),
                        "baseline_p50_us": r.baseline.as_ref().map(|b| b.p50_us),
                        "ratio": r.ratio(),
                    })
                })
                .collect();
        }
        if let Some(c) = dist_cpu_us {
            j["distributor_cpu_us_per_task"] = serde_json::json!(c);
        }
        if !cpu.is_empty() {
            let by_role: serde_json::Map<String, serde_json::Value> = cpu
                .iter()
                .map(|(r, us)| (r.to_string(), serde_json::json!(us)))
                .collect();
            j["cpu_us_per_task"] = serde_json::Value::Object(by_role);
        }
        println!("{j}");
        return;
    }
    println!(
        "{} tasks of `{}` ({} B payload, {} in flight) in {:.2} s: {:.0} tasks/s{}",
        run.tasks,
        args.app,
        args.payload,
        args.concurrency,
        run.secs,
        tasks_per_s,
        if rounds.len() > 1 {
            " (median of the rounds)"
        } else {
            ""
        }
    );
    if rounds.len() > 1 {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["round", "tasks/s", "p50", "baseline msgs/s", "ratio"]);
        for (i, r) in rounds.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                format!("{:.0}", r.tasks_per_s),
                format!("{} us", r.p50_us),
                r.baseline
                    .as_ref()
                    .map(|b| format!("{:.0}", b.msgs_per_s))
                    .unwrap_or_default(),
                r.ratio().map(|x| format!("{x:.3}")).unwrap_or_default(),
            ]);
        }
        println!("{t}");
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["p50", "p90", "p99", "p99.9", "max", "errors"]);
    t.add_row(vec![
        format!("{} us", run.q(0.5)),
        format!("{} us", run.q(0.9)),
        format!("{} us", run.q(0.99)),
        format!("{} us", run.q(0.999)),
        format!("{} us", run.max()),
        run.error_count().to_string(),
    ]);
    println!("{t}");
    if !run.errors.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["error", "count"]);
        for (k, n) in &run.errors {
            t.add_row(vec![k.clone(), n.to_string()]);
        }
        println!("{t}");
    }
    let mut workers: Vec<(&String, &u64)> = run.per_worker.iter().collect();
    workers.sort();
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["worker", "tasks"]);
    for (w, n) in workers {
        t.add_row(vec![w.clone(), n.to_string()]);
    }
    println!("{t}");
    if let (Some(m), Some(p), Some(r), Some(pr)) = (base_msgs, base_p50, ratio, p50_ratio) {
        println!(
            "baseline (bare quinn echo, same frame size and in flight): {m:.0} msgs/s, p50 {p:.0} us; allot/baseline = {r:.3} (ideal 0.5: a task is two round trips); p50 ratio {pr:.2}",
        );
    }
    if let Some(c) = dist_cpu_us {
        println!("distributor CPU per task: {c:.2} us");
    }
    if let Some(l) = run.link {
        println!(
            "client-distributor link: {} B packets, {} sent, {} lost, {} congestion events{}",
            l.mtu,
            l.sent_packets,
            l.lost_packets,
            l.congestion_events,
            if l.lost_packets > 0 {
                " (losses on loopback or a LAN mean full UDP buffers: see net.core.rmem_max)"
            } else {
                ""
            }
        );
    }
    if !cpu.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["process", "CPU per task"]);
        let mut total = 0.0;
        for (r, us) in cpu {
            total += us;
            t.add_row(vec![r.to_string(), format!("{us:.2} us")]);
        }
        if cpu.len() > 1 {
            t.add_row(vec!["total".to_string(), format!("{total:.2} us")]);
        }
        println!("{t}");
    }
}

/// CPU time (user + system) a process has used, from /proc.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Clock ticks per second of `/proc/PID/stat`, asked of `getconf` once
/// (it is read for every process before and after every round).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The second phase of a scale run.
struct Scale {
    workers: usize,
    run: Run,
    deltas_per_s: f64,
    fresh: usize,
    registered_in: Duration,
    rss_per_worker: Option<f64>,
}

impl Scale {
    fn report(&self, first: &Run, json: bool) {
        if json {
            let j = serde_json::json!({
                "scale": {
                    "simulated_workers": self.workers,
                    "registered_in_s": self.registered_in.as_secs_f64(),
                    "tasks_per_s_before": first.per_s(),
                    "tasks_per_s": self.run.per_s(),
                    "p50_us": self.run.q(0.5),
                    "p99_us": self.run.q(0.99),
                    "errors": self.run.error_count(),
                    "deltas_per_s": self.deltas_per_s,
                    "workers_reported_within_2s": self.fresh,
                    "distributor_rss_bytes_per_worker": self.rss_per_worker,
                }
            });
            println!("{j}");
            return;
        }
        println!(
            "scale: {} simulated workers registered in {:.2} s; {:.0} deltas/s streaming; tasks/s {:.0} before, {:.0} with them (p50 {} us, p99 {} us, {} errors); {} workers had reported within 2 s at the end",
            self.workers,
            self.registered_in.as_secs_f64(),
            self.deltas_per_s,
            first.per_s(),
            self.run.per_s(),
            self.run.q(0.5),
            self.run.q(0.99),
            self.run.error_count(),
            self.fresh
        );
        if let Some(m) = self.rss_per_worker {
            println!(
                "distributor memory per registered worker: {m:.0} bytes (RSS growth / workers)"
            );
        }
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn scale_phase(
    c: &LocalCluster,
    cfg: &ClientConfig,
    args: &BenchArgs,
    limit: Limit,
    n: usize,
) -> Result<Scale> {
    let dist = c.dist_addr.context("scale runs need --processes")?;
    let rss0 = c.distributor_pid().and_then(rss_bytes);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sim = {
        let (pki, stop, sent) = (c.pki.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<()> {
            crate::interrupt::block_on(simulate(pki, dist, n, stop, sent, ready_tx))?
        })
    };
    let t0 = Instant::now();
    match ready_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("simulated workers failed to register: {e}"),
        Err(_) => bail!("simulated workers did not register within 120 s"),
    }
    let registered_in = t0.elapsed();
    let rss1 = c.distributor_pid().and_then(rss_bytes);
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t1 = Instant::now();
    let run = crate::interrupt::block_on(drive(cfg.clone(), args.clone(), limit))??;
    let deltas_per_s = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent0) as f64
        / t1.elapsed().as_secs_f64();
    // Every simulated worker's reports reached the distributor: count the
    // ones it heard from in the last 2 s.
    let fresh = crate::interrupt::block_on(async {
        let c = Client::connect_distributor(cfg.clone(), dist).await?;
        let s = c.status().await;
        c.close();
        s.map(|s| {
            s.workers
                .iter()
                .filter(|w| w.name.starts_with("sim/") && w.last_report_ms < 2000)
                .count()
        })
    })??;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sim.join();
    Ok(Scale {
        workers: n,
        run,
        deltas_per_s,
        fresh,
        registered_in,
        rss_per_worker: match (rss0, rss1) {
            (Some(a), Some(b)) if n > 0 => Some(b.saturating_sub(a) as f64 / n as f64),
            _ => None,
        },
    })
}

/// Registers `n` workers named `sim/I` over a few connections (up to 1000
/// streams each), then sends each one's delta once a second, spread evenly
/// over the second, until `stop`. Their app (`sim`) is one no task asks
/// for, so they fill the table without taking the bench's tasks.
async fn simulate(
    pki: PathBuf,
    dist: SocketAddr,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<()> {
    use allot_wire::{AttrChange, AttrDelta, AttrRecord, DeltaCause, Register, RegisterAck};
    let me = allot::pki::Pki::load(&pki, "sim")?;
    let ep = allot::transport::endpoint(&me, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let per_conn = 1000;
    let mut links = Vec::with_capacity(n);
    let mut conns = Vec::new();
    let hello = allot::conn::hello(Role::Worker, "sim", Vec::new());
    let mut i = 0;
    while i < n {
        let conn = match allot::transport::connect(&ep, dist).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return Ok(());
            }
        };
        let batch = per_conn.min(n - i);
        // Register the batch concurrently.
        let mut pending = Vec::with_capacity(batch);
        for k in 0..batch {
            let (conn, hello) = (conn.clone(), hello.clone());
            let id = i + k;
            pending.push(tokio::task::spawn_local(async move {
                let mut s = allot::conn::open(&conn, &hello).await?;
                let reg = Register {
                    name: format!("sim/{id}"),
                    incarnation: 1,
                    mode: ReportMode::Registered,
                    record: AttrRecord {
                        slots: 8,
                        slots_free: 8,
                        cores: 8,
                        power: 8.0,
                        idle_power: 8.0,
                        mem: 16 << 30,
                        mem_free: 16 << 30,
                        load: 0.0,
                        labels: vec![allot_wire::Attr {
                            key: "rack".into(),
                            value: allot_wire::AttrValue::Num((id % 64) as f64),
                        }],
                    },
                    apps: vec!["sim".into()],
                };
                s.out.send(&reg, &Bytes::new())?;
                let f = s
                    .reader
                    .next()
                    .await?
                    .ok_or(allot::conn::ConnError::Closed)?;
                let worker_id = f.validate::<RegisterAck>()?.get().worker_id.to_native();
                Ok::<_, allot::conn::ConnError>((s, worker_id))
            }));
        }
        for p in pending {
            match p.await {
                Ok(Ok(l)) => links.push(l),
                Ok(Err(e)) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
            }
        }
        conns.push(conn);
        i += batch;
    }
    let _ = ready.send(Ok(()));
    // Deltas: each worker once a second, in 100 slices of 10 ms.
    let mut seq = vec![0u64; links.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut slice = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let lo = links.len() * slice / 100;
        let hi = links.len() * (slice + 1) / 100;
        for (j, (s, worker_id)) in links.iter().enumerate().take(hi).skip(lo) {
            seq[j] += 1;
            let load = ((seq[j] + j as u64) % 10) as f64 / 10.0;
            let d = AttrDelta {
                worker_id: *worker_id,
                seq: seq[j],
                cause: DeltaCause::Periodic,
                changes: vec![
                    AttrChange::Load(load),
                    AttrChange::IdlePower(8.0 * (1.0 - load)),
                ],
            };
            if s.out.send(&d, &Bytes::new()).is_ok() {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        slice = (slice + 1) % 100;
    }
    for c in conns {
        c.close(0u32.into(), b"simulation over");
    }
    ep.wait_idle().await;
    Ok(())
}

/// A cluster started by `bench --local`: one gateway, one distributor and
/// N workers, in this process or as child processes (killed on drop).
struct LocalCluster {
    pki: PathBuf,
    gateway: SocketAddr,
    children: Vec<Child>,
    /// Role and process id of every child process (none when the nodes
    /// run as threads of this process).
    roles: Vec<(&'static str, u32)>,
    dist_addr: Option<SocketAddr>,
    _threads: Vec<Box<dyn std::any::Any>>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

impl LocalCluster {
    /// The distributor's process (none when the nodes are threads).
    fn distributor_pid(&self) -> Option<u32> {
        self.roles
            .iter()
            .find(|(r, _)| *r == "distributor")
            .map(|(_, p)| *p)
    }

    fn start(dir: &Path, args: &BenchArgs) -> Result<LocalCluster> {
        let pki = dir.join("pki");
        let mut nodes: Vec<(String, Role)> = vec![
            ("gw-1".into(), Role::Gateway),
            ("dist-1".into(), Role::Distributor),
            (args.name.clone(), Role::Client),
            ("sim".into(), Role::Worker),
        ];
        for i in 0..args.workers.max(1) {
            nodes.push((format!("worker-{}", i + 1), Role::Worker));
        }
        let refs: Vec<(&str, Role)> = nodes.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        allot::pki::create_cluster(&pki, &refs)?;
        // Capacity never limits the bench: it measures allot, not queueing.
        let slots = (args.concurrency as u32).max(64) * 2;
        let workers = args.workers.max(1);
        if args.processes {
            Self::start_processes(dir, pki, &args.name, workers, slots)
        } else {
            Self::start_threads(dir, pki, &args.name, workers, slots)
        }
    }

    fn start_threads(
        dir: &Path,
        pki: PathBuf,
        client: &str,
        workers: usize,
        slots: u32,
    ) -> Result<LocalCluster> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let d = distributor::spawn(DistributorConfig::new(
            "dist-1",
            loopback,
            pki.clone(),
            dir.join("dist-1"),
        ))?;
        let mut threads: Vec<Box<dyn std::any::Any>> = Vec::new();
        for i in 0..workers {
            let mut cfg =
                WorkerConfig::new(&format!("worker-{}", i + 1), pki.clone(), vec![d.addr]);
            cfg.apps = vec!["echo".into(), "sha256".into()];
            cfg.slots = slots;
            cfg.mode = ReportMode::Registered;
            threads.push(Box::new(worker::spawn(cfg, Vec::new())?));
        }
        let g = gateway::spawn(GatewayConfig {
            name: "gw-1".into(),
            listen: loopback,
            pki: pki.clone(),
            sets: vec![("main".into(), vec![d.addr])],
            policy: RedirectPolicy::Rendezvous,
            ttl: Duration::from_secs(60),
        })?;
        let gateway = g.addr;
        let dist = d.addr;
        // Dropped in reverse: gateway, workers, distributor.
        threads.insert(0, Box::new(d));
        threads.push(Box::new(g));
        wait_ready(&pki, client, dist, workers)?;
        Ok(LocalCluster {
            pki,
            gateway,
            children: Vec::new(),
            roles: Vec::new(),
            dist_addr: Some(dist),
            _threads: threads,
        })
    }

    fn start_processes(
        dir: &Path,
        pki: PathBuf,
        client: &str,
        workers: usize,
        slots: u32,
    ) -> Result<LocalCluster> {
        let exe = std::env::current_exe().context("finding the allot binary")?;
        let pki_s = pki.to_string_lossy().to_string();
        let dist = free_addr()?;
        let gw = free_addr()?;
        let spawn = |args: &[String]| -> Result<Child> {
            die_with_parent(Command::new(&exe).args(args))
                .env("ALLOT_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting allot {}", args.join(" ")))
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut cluster = LocalCluster {
            pki: pki.clone(),
            gateway: gw,
            children: Vec::new(),
            roles: Vec::new(),
            dist_addr: Some(dist),
            _threads: Vec::new(),
        };
        let data = dir.join("dist-1").to_string_lossy().to_string();
        let d = spawn(&s(&[
            "distributor",
            "--name",
            "dist-1",
            "--listen",
            &dist.to_string(),
            "--pki",
            &pki_s,
            "--data-dir",
            &data,
        ]))?;
        cluster.roles.push(("distributor", d.id()));
        cluster.children.push(d);
        for i in 0..workers {
            let name = format!("worker-{}", i + 1);
            let slots = slots.to_string();
            let w = spawn(&s(&[
                "worker",
                "--name",
                &name,
                "--pki",
                &pki_s,
                "--join",
                &dist.to_string(),
                "--apps",
                "echo,sha256",
                "--slots",
                &slots,
            ]))?;
            cluster.roles.push(("workers", w.id()));
            cluster.children.push(w);
        }
        let set = format!("main={dist}");
        let g = spawn(&s(&[
            "gateway",
            "--name",
            "gw-1",
            "--listen",
            &gw.to_string(),
            "--pki",
            &pki_s,
            "--set",
            &set,
        ]))?;
        cluster.roles.push(("gateway", g.id()));
        cluster.children.push(g);
        wait_ready(&pki, client, dist, workers)?;
        Ok(cluster)
    }
}

fn wait_ready(pki: &Path, client: &str, dist: SocketAddr, workers: usize) -> Result<()> {
    crate::interrupt::block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let cfg = ClientConfig {
                name: client.to_owned(),
                pki: pki.to_path_buf(),
                gateways: Vec::new(),
                attrs: Vec::new(),
            };
            if let Ok(c) = Client::connect_distributor(cfg, dist).await {
                if let Ok(s) = c.status().await {
                    if s.workers
                        .iter()
                        .filter(|w| w.state == allot_wire::WorkerState::Up)
                        .count()
                        >= workers
                    {
                        c.close();
                        return Ok(());
                    }
                }
                c.close();
            }
            if Instant::now() > deadline {
                bail!("the local cluster did not come up within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?
}
