//! Chaos under load: a cluster of real `allot`
//! processes (2 gateways, 2 distributors in one set, 4 workers reporting in
//! `broadcast` mode to both) runs a command app that appends each execution
//! to a log, while concurrent clients submit tasks with unique payloads and
//! the test SIGKILLs and restarts nodes:
//!
//! 1. one worker (restarted after ~1 s);
//! 2. one distributor (the first of every list, restarted after ~1 s);
//! 3. one gateway (restarted after ~1 s);
//! 4. both distributors at once (restarted after ~3 s).
//!
//! Every task is counted as ok, an error (by message), lost (no answer
//! within the client timeout) or wrong (an output other than its payload),
//! and the log gives the executions per task. The report is printed as a
//! table and as one `CHAOS_JSON {...}` line for scripts.
//!
//! Asserted: 0 lost, 0 wrong; and, unless `ALLOT_CHAOS_STRICT=0`, 0
//! errors, 0 duplicate executions other than of tasks in flight when the
//! worker was killed (those run again elsewhere: at least once), and p99
//! submit latency at most 2 s in the single-distributor-kill phase.
//!
//! The small version runs with the other tests:
//!
//! ```sh
//! cargo test -p allot-cli --test chaos -- --nocapture
//! ```
//!
//! The full one:
//!
//! ```sh
//! ALLOT_CHAOS_TASKS=3000 ALLOT_CHAOS_CLIENTS=16 cargo test --release -p allot-cli --test chaos -- --nocapture
//! ```
//!
//! Knobs (environment): `ALLOT_CHAOS_TASKS` (400), `ALLOT_CHAOS_CLIENTS`
//! (8), `ALLOT_CHAOS_GAP_MS` (pause after each phase's recovery, 1500),
//! `ALLOT_CHAOS_TIMEOUT_S` (client timeout per task, 20),
//! `ALLOT_CHAOS_STRICT` (0: assert only 0 lost and 0 wrong).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::local_cluster::TempPki;
use allot::wire::{Role, TaskStatus};
use allot::{Client, ClientConfig, ClientError, Task};
use serde_json::{json, Value};

const WORKERS: usize = 4;

/// Client certificates issued (clients beyond this share names).
const CLIENT_NAMES: usize = 16;
const PHASES: [&str; 6] = [
    "steady",
    "worker-kill",
    "dist-kill",
    "gw-kill",
    "all-dist-kill",
    "after",
];
/// The single-distributor kill, where p99 must stay within 2 s.
const DIST_KILL: usize = 2;
const ALL_DIST_KILL: usize = 4;

fn env_num(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

struct Params {
    tasks: usize,
    clients: usize,
    gap: Duration,
    timeout: Duration,
    strict: bool,
}

impl Params {
    fn from_env() -> Params {
        Params {
            tasks: env_num("ALLOT_CHAOS_TASKS", 400).max(1) as usize,
            clients: env_num("ALLOT_CHAOS_CLIENTS", 8).max(1) as usize,
            gap: Duration::from_millis(env_num("ALLOT_CHAOS_GAP_MS", 1500)),
            timeout: Duration::from_secs(env_num("ALLOT_CHAOS_TIMEOUT_S", 20).max(1)),
            strict: !std::env::var("ALLOT_CHAOS_STRICT").is_ok_and(|v| v == "0"),
        }
    }

    /// How long the chaos sequence should take, for pacing the load over
    /// it: a lead-in, three ~1 s kills and one ~3 s kill, each followed by
    /// about a second of recovery and the gap, and a tail.
    fn planned(&self) -> Duration {
        Duration::from_secs(1)
            + (Duration::from_secs(2) + self.gap) * 3
            + Duration::from_secs(4)
            + self.gap
            + Duration::from_secs(1)
    }
}

/// One node process, restartable with the same arguments (so on the same
/// address and data directory).
struct Node {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        let child = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(&self.args)
            .env("ALLOT_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL (std's `kill` on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process ended on its own (it should not).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// Every process of the test and the temporary directory (certificates,
/// data directories, logs). Dropping it, also on a panic, kills every
/// process before the directory is removed (fields drop after `drop`).
struct Cluster {
    nodes: Vec<Node>,
    pki: TempPki,
    gateways: Vec<SocketAddr>,
    distributors: Vec<SocketAddr>,
    exec_log: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// Free loopback ports, all held at once so that they differ, then
/// released for the nodes (which come back on the same one after a kill).
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    fn new() -> Cluster {
        let mut certs: Vec<(String, Role)> = vec![
            ("gw-1".into(), Role::Gateway),
            ("gw-2".into(), Role::Gateway),
            ("dist-1".into(), Role::Distributor),
            ("dist-2".into(), Role::Distributor),
            ("client".into(), Role::Client),
        ];
        // Clients of their own names: the gateways give each its own order
        // of the set's members, so the load spreads over both and a killed
        // member has clients to fail over.
        for i in 0..CLIENT_NAMES {
            certs.push((format!("client-{i}"), Role::Client));
        }
        for i in 1..=WORKERS {
            certs.push((format!("w-{i}"), Role::Worker));
        }
        let refs: Vec<(&str, Role)> = certs.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let pki = TempPki::create(&refs).expect("certificates");
        let dir = pki.dir().to_path_buf();
        let p = pki.pki().to_str().unwrap().to_owned();
        let exec_log = dir.join("executions.log");
        std::fs::write(&exec_log, b"").unwrap();
        let ports = free_ports(4);
        let (gateways, distributors) = (ports[..2].to_vec(), ports[2..].to_vec());
        let dists = join(&distributors);
        let mut nodes = Vec::new();
        let mut node = |name: &str, args: Vec<String>| {
            nodes.push(Node {
                name: name.into(),
                args,
                log: dir.join(format!("{name}.log")),
                child: None,
            })
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (i, d) in distributors.iter().enumerate() {
            let name = format!("dist-{}", i + 1);
            let data = dir.join(&name);
            let mut a = s(&["distributor", "--name", &name, "--pki", &p]);
            a.extend(s(&["--listen", &d.to_string(), "--set-name", "main"]));
            a.extend(s(&["--data-dir", data.to_str().unwrap()]));
            node(&name, a);
        }
        for (i, g) in gateways.iter().enumerate() {
            let name = format!("gw-{}", i + 1);
            let set = format!("main={dists}");
            let mut a = s(&["gateway", "--name", &name, "--pki", &p]);
            a.extend(s(&["--listen", &g.to_string(), "--set", &set]));
            node(&name, a);
        }
        for i in 1..=WORKERS {
            let name = format!("w-{i}");
            // The payload on stdin; one line per execution (payload,
            // attempt as the worker exports it, worker) appended to the
            // log (O_APPEND: lines of concurrent runs do not mix); the
            // payload back as the output.
            let cmd = format!(
                "rec=p=$(cat); printf '%s %s %s\\n' \"$p\" \"${{ALLOT_ATTEMPT:-0}}\" {name} >> '{}'; printf %s \"$p\"",
                exec_log.display()
            );
            let mut a = s(&["worker", "--name", &name, "--pki", &p, "--join", &dists]);
            a.extend(s(&["--report", "broadcast", "--listen", "127.0.0.1:0"]));
            a.extend(s(&["--apps", "rec", "--slots", "4"]));
            a.extend(["--app-cmd".to_string(), cmd]);
            node(&name, a);
        }
        let mut c = Cluster {
            nodes,
            pki,
            gateways,
            distributors,
            exec_log,
        };
        for n in &mut c.nodes {
            n.start();
        }
        c
    }

    fn pki_dir(&self) -> &Path {
        self.pki.pki()
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The workers `dist` lists as up, or `None` if it does not answer.
    fn workers_up(&self, dist: SocketAddr) -> Option<usize> {
        let out = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["status", "--pki", self.pki_dir().to_str().unwrap()])
            .args(["--distributor", &dist.to_string(), "--json"])
            .env("ALLOT_LOG", "error")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v.as_array()?.iter().filter(|w| w["state"] == "up").count())
    }

    /// Waits until every distributor lists every worker up; returns how
    /// long that took.
    fn wait_all_up(&mut self, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            for n in &mut self.nodes {
                if let Some(st) = n.exited() {
                    panic!("{} exited by itself ({st}); log: {}", n.name, tail(&n.log));
                }
            }
            let up: Vec<Option<usize>> = self
                .distributors
                .iter()
                .map(|d| self.workers_up(*d))
                .collect();
            if up.iter().all(|u| *u == Some(WORKERS)) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "workers not all up on every distributor within {within:?}: {up:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok,
    Error(String),
    Lost,
    Wrong(String),
}

#[derive(Debug, Clone)]
struct Record {
    token: String,
    phase: usize,
    /// When it was submitted, from the start of the load.
    at: Duration,
    latency: Duration,
    result: Verdict,
}

/// An error message with the parts that vary per task (numbers, addresses)
/// blanked, so that equal causes group together.
fn normalize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_num = false;
    for ch in msg.chars() {
        if ch.is_ascii_digit() {
            if !in_num {
                out.push('#');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(ch);
        }
    }
    out
}

/// Shares of the tasks that may have started by the end of each phase, so
/// that a stall in one phase (and the catching up after it) does not use
/// up the load before the next one.
const CAPS: [f64; 6] = [0.06, 0.24, 0.44, 0.60, 0.85, 1.0];

/// The load, shared by the submitters: task indices are taken in order,
/// at most `CAPS[phase]` of them by the current phase, one per `interval`
/// (a stall does not make them burst afterwards: the next start is never
/// earlier than now). Once the chaos is over the rest start unpaced.
struct Load {
    next: AtomicUsize,
    phase: AtomicUsize,
    unpaced: AtomicBool,
    next_at: std::sync::Mutex<Instant>,
    tasks: usize,
    interval: Duration,
    timeout: Duration,
}

impl Load {
    /// Waits until task `i` may start; false if it never may (a bound
    /// that only a stuck chaos sequence reaches).
    async fn admit(&self, i: usize) -> bool {
        let t0 = Instant::now();
        while !self.unpaced.load(Ordering::Relaxed) {
            let cap = CAPS[self.phase.load(Ordering::Relaxed)] * self.tasks as f64;
            if (i as f64) < cap.ceil() {
                let at = {
                    let mut next = self.next_at.lock().unwrap();
                    let at = (*next).max(Instant::now());
                    *next = at + self.interval;
                    at
                };
                tokio::time::sleep_until(at.into()).await;
                return true;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

async fn submitter(client: Client, cfg: ClientConfig, load: Arc<Load>, t0: Instant) -> Vec<Record> {
    let mut client = client;
    let mut out = Vec::new();
    let run = std::process::id();
    loop {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        if i >= load.tasks {
            return out;
        }
        assert!(load.admit(i).await, "task {i} never admitted");
        let token = format!("chaos-{run}-{i:06}");
        let phase = load.phase.load(Ordering::Relaxed);
        let start = Instant::now();
        let r = tokio::time::timeout(load.timeout, client.submit(Task::new("rec", token.clone())))
            .await;
        let latency = start.elapsed();
        let result = match r {
            Err(_) => Verdict::Lost,
            Ok(Ok(o)) if o.status == TaskStatus::Ok => {
                if o.output == token.as_bytes() {
                    Verdict::Ok
                } else {
                    Verdict::Wrong(String::from_utf8_lossy(&o.output).into_owned())
                }
            }
            Ok(Ok(o)) => Verdict::Error(format!("{:?}: {}", o.status, o.message)),
            Ok(Err(e)) => {
                if matches!(e, ClientError::Closed) {
                    // The handle is dead: a program would connect again.
                    if let Ok(Ok(c)) =
                        tokio::time::timeout(load.timeout, Client::connect(cfg.clone())).await
                    {
                        client = c;
                    }
                }
                Verdict::Error(format!("client: {e}"))
            }
        };
        out.push(Record {
            token,
            phase,
            at: start - t0,
            latency,
            result,
        });
    }
}

/// `line` without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[test]
fn chaos_kills_and_restarts_under_load() {
    let params = Params::from_env();
    let t_start = Instant::now();
    let mut cluster = Cluster::new();
    let ready = cluster.wait_all_up(Duration::from_secs(30));
    eprintln!(
        "chaos: {} tasks, {} clients, gap {:?}, timeout {:?}, strict {}; cluster up in {:?}",
        params.tasks, params.clients, params.gap, params.timeout, params.strict, ready
    );

    let load = Arc::new(Load {
        next: AtomicUsize::new(0),
        phase: AtomicUsize::new(0),
        unpaced: AtomicBool::new(false),
        next_at: std::sync::Mutex::new(Instant::now()),
        tasks: params.tasks,
        interval: params.planned() / params.tasks as u32,
        timeout: params.timeout,
    });

    // The clients run on their own thread (a current-thread runtime: the
    // SDK's Client runs its connection on a thread of its own anyway).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Instant, String>>();
    let (pki, gws, k) = (
        cluster.pki_dir().to_path_buf(),
        cluster.gateways.clone(),
        params.clients,
    );
    let load2 = load.clone();
    let loader = std::thread::spawn(move || -> Vec<Record> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut clients = Vec::new();
            for c in 0..k {
                // Half the clients know the gateways the other way round.
                let mut g = gws.clone();
                if c % 2 == 1 {
                    g.reverse();
                }
                let cfg = ClientConfig::new(format!("client-{}", c % CLIENT_NAMES), pki.clone(), g);
                match tokio::time::timeout(Duration::from_secs(20), Client::connect(cfg.clone()))
                    .await
                {
                    Ok(Ok(client)) => clients.push((client, cfg)),
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(format!("client {c}: {e}")));
                        return Vec::new();
                    }
                    Err(_) => {
                        let _ = ready_tx.send(Err(format!("client {c}: connect timed out")));
                        return Vec::new();
                    }
                }
            }
            let t0 = Instant::now();
            let _ = ready_tx.send(Ok(t0));
            *load2.next_at.lock().unwrap() = t0;
            let mut set = tokio::task::JoinSet::new();
            for (client, cfg) in clients {
                set.spawn(submitter(client, cfg, load2.clone(), t0));
            }
            let mut all = Vec::new();
            while let Some(r) = set.join_next().await {
                all.extend(r.expect("submitter panicked"));
            }
            all
        })
    });
    let t_load = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("clients connect")
        .expect("clients connect");

    // The chaos sequence, on this thread. The pauses are the scenario;
    // recovery is waited for.
    let mut timeline: Vec<(String, Duration)> = Vec::new();
    let mut mark = |what: String| timeline.push((what, t_load.elapsed()));
    let recover = Duration::from_secs(30);
    std::thread::sleep(Duration::from_secs(1));
    let phase = |p: usize| load.phase.store(p, Ordering::Relaxed);

    phase(1);
    mark("kill w-1".into());
    let worker_kill = t_load.elapsed();
    cluster.node("w-1").kill();
    std::thread::sleep(Duration::from_secs(1));
    cluster.node("w-1").start();
    mark(format!(
        "w-1 back, all up after {:?}",
        cluster.wait_all_up(recover)
    ));
    std::thread::sleep(params.gap);

    phase(2);
    mark("kill dist-1".into());
    cluster.node("dist-1").kill();
    std::thread::sleep(Duration::from_secs(1));
    cluster.node("dist-1").start();
    mark(format!(
        "dist-1 back, all up after {:?}",
        cluster.wait_all_up(recover)
    ));
    std::thread::sleep(params.gap);

    phase(3);
    mark("kill gw-1".into());
    cluster.node("gw-1").kill();
    std::thread::sleep(Duration::from_secs(1));
    cluster.node("gw-1").start();
    mark("gw-1 back".into());
    std::thread::sleep(params.gap);

    phase(ALL_DIST_KILL);
    mark("kill dist-1 and dist-2".into());
    cluster.node("dist-1").kill();
    cluster.node("dist-2").kill();
    std::thread::sleep(Duration::from_secs(3));
    cluster.node("dist-1").start();
    cluster.node("dist-2").start();
    mark(format!(
        "both back, all up after {:?}",
        cluster.wait_all_up(recover)
    ));
    std::thread::sleep(params.gap);

    phase(5);
    load.unpaced.store(true, Ordering::Relaxed);
    mark(format!(
        "chaos over, {} of {} tasks started",
        load.next.load(Ordering::Relaxed).min(params.tasks),
        params.tasks
    ));
    let records = loader.join().expect("load thread");
    mark("load done".into());
    // Every process is stopped before the log is read, so that no
    // execution is still on its way into it.
    for n in &mut cluster.nodes {
        n.kill();
    }
    let log = std::fs::read_to_string(&cluster.exec_log).unwrap_or_default();
    let node_logs: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                std::fs::read_to_string(&n.log).unwrap_or_default(),
            )
        })
        .collect();
    drop(cluster);

    let report = Report::new(&params, &records, &log, &node_logs, worker_kill);
    eprintln!("\nchaos timeline:");
    for (what, at) in &timeline {
        eprintln!("  {:>7.1} s  {what}", at.as_secs_f64());
    }
    report.print();
    eprintln!("whole test: {:.1} s", t_start.elapsed().as_secs_f64());
    report.check(params.strict);
}

struct PhaseStats {
    tasks: usize,
    ok: usize,
    errors: usize,
    lost: usize,
    wrong: usize,
    dup: usize,
    /// Tasks that took over 2 s (stalls).
    slow: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

struct Report {
    records: usize,
    ok: usize,
    errors: Vec<(String, usize)>,
    error_total: usize,
    lost: usize,
    wrong: Vec<(String, String)>,
    unknown_exec: usize,
    exec_hist: [usize; 3],
    phases: Vec<PhaseStats>,
    p50: Duration,
    p99: Duration,
    dups_by_outcome: BTreeMap<String, usize>,
    /// Tasks run more than once that were not in flight when the worker
    /// was killed.
    failover_dups: usize,
    /// The first few tasks run more than once: what the log says of them.
    dup_details: Vec<String>,
    node_warnings: Vec<(String, String, usize)>,
}

impl Report {
    fn new(
        params: &Params,
        records: &[Record],
        log: &str,
        node_logs: &[(String, String)],
        worker_kill: Duration,
    ) -> Report {
        let mut execs: HashMap<&str, usize> = HashMap::new();
        let mut lines_of: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut unknown_exec = 0;
        let known: HashSet<&str> = records.iter().map(|r| r.token.as_str()).collect();
        for line in log.lines() {
            let token = line.split(' ').next().unwrap_or("");
            match known.get(token) {
                Some(k) => {
                    *execs.entry(k).or_default() += 1;
                    lines_of.entry(k).or_default().push(line);
                }
                None => unknown_exec += 1,
            }
        }
        let n_exec = |r: &Record| execs.get(r.token.as_str()).copied().unwrap_or(0);
        // A task in flight when the worker was killed may legitimately run
        // twice (its distributor retries it); any other second run is one
        // a failover caused.
        let failover_dups = records
            .iter()
            .filter(|r| n_exec(r) >= 2 && !(r.at <= worker_kill && worker_kill <= r.at + r.latency))
            .count();
        let mut exec_hist = [0; 3];
        let mut dups_by_outcome = BTreeMap::new();
        for r in records {
            let n = n_exec(r);
            exec_hist[n.min(2)] += 1;
            if n >= 2 {
                let kind = match &r.result {
                    Verdict::Ok => "ok",
                    Verdict::Error(_) => "error",
                    Verdict::Lost => "lost",
                    Verdict::Wrong(_) => "wrong",
                };
                *dups_by_outcome
                    .entry(format!("{} {kind}", PHASES[r.phase]))
                    .or_default() += 1;
            }
        }
        let dup_details = records
            .iter()
            .filter(|r| n_exec(r) >= 2)
            .take(10)
            .map(|r| {
                format!(
                    "{} submitted at {:.2} s ({}), {:?} after {} ms; runs (payload attempt worker): {:?}",
                    r.token,
                    r.at.as_secs_f64(),
                    PHASES[r.phase],
                    r.result,
                    ms(r.latency),
                    lines_of.get(r.token.as_str()).cloned().unwrap_or_default()
                )
            })
            .collect();
        let mut by_msg: HashMap<String, usize> = HashMap::new();
        for r in records {
            if let Verdict::Error(m) = &r.result {
                *by_msg.entry(normalize(m)).or_default() += 1;
            }
        }
        let mut errors: Vec<(String, usize)> = by_msg.into_iter().collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let stats = |rs: &[&Record]| {
            let mut lat: Vec<Duration> = rs.iter().map(|r| r.latency).collect();
            lat.sort();
            PhaseStats {
                tasks: rs.len(),
                ok: rs.iter().filter(|r| r.result == Verdict::Ok).count(),
                errors: rs
                    .iter()
                    .filter(|r| matches!(r.result, Verdict::Error(_)))
                    .count(),
                lost: rs.iter().filter(|r| r.result == Verdict::Lost).count(),
                wrong: rs
                    .iter()
                    .filter(|r| matches!(r.result, Verdict::Wrong(_)))
                    .count(),
                dup: rs.iter().filter(|r| n_exec(r) >= 2).count(),
                slow: rs
                    .iter()
                    .filter(|r| r.latency > Duration::from_secs(2))
                    .count(),
                p50: pct(&lat, 0.50),
                p99: pct(&lat, 0.99),
                max: lat.last().copied().unwrap_or_default(),
            }
        };
        let all: Vec<&Record> = records.iter().collect();
        let total = stats(&all);
        let phases = (0..PHASES.len())
            .map(|p| {
                let rs: Vec<&Record> = records.iter().filter(|r| r.phase == p).collect();
                stats(&rs)
            })
            .collect();
        let wrong = records
            .iter()
            .filter_map(|r| match &r.result {
                Verdict::Wrong(o) => Some((r.token.clone(), o.clone())),
                _ => None,
            })
            .collect();
        // Warnings and errors the nodes logged, grouped the same way.
        let mut node_warnings = Vec::new();
        for (name, text) in node_logs {
            let mut by: HashMap<String, usize> = HashMap::new();
            for line in text.lines() {
                let line = strip_ansi(line);
                if let Some(i) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) {
                    *by.entry(normalize(line[i..].trim())).or_default() += 1;
                }
            }
            let mut v: Vec<(String, usize)> = by.into_iter().collect();
            v.sort_by_key(|b| std::cmp::Reverse(b.1));
            for (m, c) in v.into_iter().take(4) {
                node_warnings.push((name.clone(), m, c));
            }
        }
        assert_eq!(records.len(), params.tasks, "every task has a record");
        Report {
            records: records.len(),
            ok: total.ok,
            error_total: total.errors,
            errors,
            lost: total.lost,
            wrong,
            unknown_exec,
            exec_hist,
            phases,
            p50: total.p50,
            p99: total.p99,
            dups_by_outcome,
            failover_dups,
            dup_details,
            node_warnings,
        }
    }

    fn failover_dups(&self) -> usize {
        self.failover_dups
    }

    fn print(&self) {
        eprintln!("\nchaos report: {} tasks", self.records);
        eprintln!(
            "  ok {}  errors {}  lost {}  wrong {}  executed 0/1/2+: {}/{}/{}  executions of unknown payloads {}",
            self.ok,
            self.error_total,
            self.lost,
            self.wrong.len(),
            self.exec_hist[0],
            self.exec_hist[1],
            self.exec_hist[2],
            self.unknown_exec
        );
        eprintln!("  latency p50 {} ms  p99 {} ms", ms(self.p50), ms(self.p99));
        eprintln!(
            "  {:<14} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9}",
            "phase",
            "tasks",
            "ok",
            "errors",
            "lost",
            "wrong",
            "dup",
            ">2s",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
        for (name, s) in PHASES.iter().zip(&self.phases) {
            eprintln!(
                "  {:<14} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9}",
                name,
                s.tasks,
                s.ok,
                s.errors,
                s.lost,
                s.wrong,
                s.dup,
                s.slow,
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        }
        if !self.errors.is_empty() {
            eprintln!("  errors by message:");
            for (m, c) in self.errors.iter().take(10) {
                eprintln!("    {c:>5}  {m}");
            }
        }
        if !self.dups_by_outcome.is_empty() {
            eprintln!(
                "  duplicates by phase and outcome: {:?}",
                self.dups_by_outcome
            );
            for d in &self.dup_details {
                eprintln!("    {d}");
            }
        }
        for (t, o) in self.wrong.iter().take(5) {
            eprintln!("  wrong: {t} gave {o:?}");
        }
        if !self.node_warnings.is_empty() {
            eprintln!("  node warnings (top per node):");
            for (n, m, c) in &self.node_warnings {
                eprintln!("    {n:<7} {c:>5}  {m}");
            }
        }
        let phases: serde_json::Map<String, Value> = PHASES
            .iter()
            .zip(&self.phases)
            .map(|(n, s)| {
                (
                    n.to_string(),
                    json!({
                        "tasks": s.tasks, "ok": s.ok, "errors": s.errors, "lost": s.lost,
                        "wrong": s.wrong, "dup": s.dup, "over_2s": s.slow, "p50_ms": ms(s.p50),
                        "p99_ms": ms(s.p99), "max_ms": ms(s.max),
                    }),
                )
            })
            .collect();
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .take(10)
            .map(|(m, c)| (m.clone(), json!(c)))
            .collect();
        let j = json!({
            "tasks": self.records, "ok": self.ok, "errors": self.error_total,
            "errors_by_message": errors, "lost": self.lost, "wrong": self.wrong.len(),
            "executed": {"0": self.exec_hist[0], "1": self.exec_hist[1], "2+": self.exec_hist[2]},
            "unknown_executions": self.unknown_exec,
            "failover_duplicates": self.failover_dups(),
            "p50_ms": ms(self.p50), "p99_ms": ms(self.p99),
            "dist_kill_p99_ms": ms(self.phases[DIST_KILL].p99),
            "all_dist_kill_p99_ms": ms(self.phases[ALL_DIST_KILL].p99),
            "phases": phases,
        });
        println!("CHAOS_JSON {j}");
    }

    fn check(&self, strict: bool) {
        assert_eq!(
            self.lost, 0,
            "tasks lost (no answer within the client timeout)"
        );
        assert!(self.wrong.is_empty(), "wrong outputs: {:?}", self.wrong);
        assert_eq!(
            self.unknown_exec, 0,
            "executions of payloads never submitted"
        );
        let targets = [
            ("0 errors", self.error_total == 0),
            (
                "0 duplicates caused by a failover",
                self.failover_dups() == 0,
            ),
            (
                "p99 <= 2 s in the distributor kill",
                self.phases[DIST_KILL].p99 <= Duration::from_secs(2),
            ),
        ];
        for (t, met) in &targets {
            eprintln!("  target {t}: {}", if *met { "met" } else { "NOT met" });
        }
        if strict {
            let missed: Vec<&str> = targets.iter().filter(|t| !t.1).map(|t| t.0).collect();
            assert!(missed.is_empty(), "targets missed: {missed:?}");
        }
    }
}
