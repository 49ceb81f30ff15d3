//! The cluster `bench --local` starts and stops: in this process (an
//! [`allot::LocalCluster`]), or with `--processes` as child `allot`
//! processes sharing the kit's certificates.
//!
//! Its shape: `--sets` distributor sets of `--distributors` members each,
//! behind `--gateways` gateways, and `--workers` workers per set, each
//! joined to every member of its set in broadcast mode (so every member
//! sees every worker of its set, and the workers' admission checks settle
//! the members' double reservations). As processes, the members register
//! with every gateway (no `--set` list): the gateways learn the sets from
//! them, as in a deployment. In one process, one set, whose members the
//! gateways are given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot::local_cluster::{wait_for_workers, TempPki};
use allot::{ClientConfig, LocalCluster};
use allot_wire::{ReportMode, Role, WorkerState};
use anyhow::{bail, Context, Result};

use super::process::die_with_parent;
use super::BenchArgs;

/// How long the nodes have to come up.
/// The app of `--command` on the local cluster's workers.
pub(super) const COMMAND_APP: &str = "cmd";

/// Slots of each worker of the local cluster: `--slots`, else enough that
/// capacity never limits the bench (it measures allot, not queueing).
pub(super) fn slots(args: &BenchArgs) -> u32 {
    args.slots.unwrap_or((args.concurrency as u32).max(64) * 2)
}

const UP_TIMEOUT: Duration = Duration::from_secs(20);

/// Client names tried per connection when choosing names that spread the
/// connections evenly over the members (see [`Cluster::client_names`]).
const NAME_TRIES_PER_CLIENT: usize = 200;

/// One distributor of the cluster.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) set: String,
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    /// Its process (none when the nodes are threads of this process).
    pub(super) pid: Option<u32>,
}

/// A cluster started by `bench --local`, in this process or as child
/// processes (killed on drop).
pub(super) struct Cluster {
    pub(super) pki: PathBuf,
    pub(super) gateways: Vec<SocketAddr>,
    /// The gateways' node names.
    pub(super) gateway_names: Vec<String>,
    pub(super) members: Vec<Member>,
    /// Role and process id of every child process (none when the nodes
    /// run as threads of this process).
    pub(super) roles: Vec<(&'static str, u32)>,
    children: Vec<Child>,
    /// (node, `/metrics` address) of every node, with `--scrape-ms` (in
    /// this process or as child processes).
    pub(super) metrics: Vec<(String, SocketAddr)>,
    /// The nodes, when they are threads of this process.
    _threads: Option<LocalCluster>,
    /// The child processes' certificates, removed once they are killed.
    _certs: Option<TempPki>,
}

impl Drop for Cluster {
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

/// A free loopback TCP port (for a child's `--metrics`).
fn free_tcp() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `--metrics ADDR` for node `name` when the bench scrapes, the address
/// noted in `to`.
fn metrics_flag(
    metrics: bool,
    name: &str,
    to: &mut Vec<(String, SocketAddr)>,
) -> Result<Vec<String>> {
    if !metrics {
        return Ok(Vec::new());
    }
    let a = free_tcp()?;
    to.push((name.to_owned(), a));
    Ok(vec!["--metrics".into(), a.to_string()])
}

/// The name of set `s` (from 0) of `sets`: `main` when there is one.
fn set_name(s: usize, sets: usize) -> String {
    if sets == 1 {
        "main".into()
    } else {
        format!("set{}", s + 1)
    }
}

/// A node name within set `s`: `dist-1` in a one-set cluster, `set2-dist-1`
/// in a larger one.
fn node_name(kind: &str, s: usize, i: usize, sets: usize) -> String {
    if sets == 1 {
        format!("{kind}-{}", i + 1)
    } else {
        format!("set{}-{kind}-{}", s + 1, i + 1)
    }
}

impl Cluster {
    /// The first distributor (the one a scale run measures).
    pub(super) fn first(&self) -> &Member {
        &self.members[0]
    }

    pub(super) fn start(args: &BenchArgs) -> Result<Cluster> {
        let slots = slots(args);
        let shape = Shape {
            sets: usize::from(args.sets),
            distributors: usize::from(args.distributors),
            gateways: usize::from(args.gateways),
            workers: args.workers.max(1),
            slots,
            prefetch: args.prefetch,
            command: args.command.clone(),
            // A scale run registers its simulated workers with the first
            // distributor: its table must hold them all.
            max_workers: args
                .sim_workers
                .map(|n| (n + args.workers + 256).max(1 << 16)),
        };
        if args.processes {
            Self::start_processes(&args.name, &shape, args.scrape_ms.is_some())
        } else {
            Self::start_threads(&args.name, &shape, args.scrape_ms.is_some())
        }
    }

    fn start_threads(client: &str, shape: &Shape, metrics: bool) -> Result<Cluster> {
        if shape.sets != 1 {
            bail!("--sets above 1 needs --processes");
        }
        let mut b = LocalCluster::builder();
        if metrics {
            b = b.metrics();
        }
        for i in 0..shape.distributors {
            b = b.distributor(&node_name("dist", 0, i, 1));
        }
        b = b.workers(shape.workers, |_, w| {
            w.apps = vec!["echo".into(), "sha256".into(), "sleep".into()];
            if let Some(c) = &shape.command {
                w.app_cmds = vec![(COMMAND_APP.into(), c.clone())];
            }
            w.slots = shape.slots;
            w.prefetch = shape.prefetch;
            w.mode = ReportMode::Broadcast;
        });
        for g in 0..shape.gateways {
            b = b.gateway(&format!("gw-{}", g + 1));
        }
        let c = b
            .client(client)
            // For the simulated workers of a scale run.
            .certificate("sim", Role::Worker)
            .up_timeout(UP_TIMEOUT)
            .start()
            .context("starting the local cluster")?;
        let members = c
            .distributors()
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                set: set_name(0, 1),
                name: node_name("dist", 0, i, 1),
                addr: *a,
                pid: None,
            })
            .collect();
        Ok(Cluster {
            pki: c.pki().to_path_buf(),
            gateways: c.gateways().to_vec(),
            gateway_names: (0..shape.gateways)
                .map(|g| format!("gw-{}", g + 1))
                .collect(),
            members,
            roles: Vec::new(),
            children: Vec::new(),
            metrics: c.metrics_addrs().to_vec(),
            _threads: Some(c),
            _certs: None,
        })
    }

    /// The nodes as child processes; with `metrics`, each serves
    /// `/metrics` on a free loopback port (listed in `metrics`).
    fn start_processes(client: &str, shape: &Shape, metrics: bool) -> Result<Cluster> {
        let mut nodes: Vec<(String, Role)> = vec![
            (client.to_owned(), Role::Client),
            ("sim".into(), Role::Worker),
        ];
        let gw_names: Vec<String> = (0..shape.gateways)
            .map(|g| format!("gw-{}", g + 1))
            .collect();
        nodes.extend(gw_names.iter().map(|n| (n.clone(), Role::Gateway)));
        for s in 0..shape.sets {
            for i in 0..shape.distributors {
                nodes.push((node_name("dist", s, i, shape.sets), Role::Distributor));
            }
            for i in 0..shape.workers {
                nodes.push((node_name("worker", s, i, shape.sets), Role::Worker));
            }
        }
        let refs: Vec<(&str, Role)> = nodes.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let certs = TempPki::create(&refs)?;
        let pki = certs.pki().to_path_buf();
        let exe = std::env::current_exe().context("finding the allot binary")?;
        let pki_s = pki.to_string_lossy().to_string();
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
        let mut cluster = Cluster {
            pki: pki.clone(),
            gateways: Vec::new(),
            gateway_names: gw_names.clone(),
            members: Vec::new(),
            roles: Vec::new(),
            children: Vec::new(),
            metrics: Vec::new(),
            _threads: None,
            _certs: None,
        };
        // Gateways first, with no set list: they learn the sets from the
        // members' registrations.
        for name in &gw_names {
            let addr = free_addr()?;
            let mut a = s(&[
                "gateway",
                "--name",
                name,
                "--listen",
                &addr.to_string(),
                "--pki",
                &pki_s,
            ]);
            a.extend(metrics_flag(metrics, name, &mut cluster.metrics)?);
            let g = spawn(&a)?;
            cluster.roles.push(("gateway", g.id()));
            cluster.children.push(g);
            cluster.gateways.push(addr);
        }
        let gateways = cluster
            .gateways
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for set in 0..shape.sets {
            let set_s = set_name(set, shape.sets);
            let mut joined = Vec::new();
            for i in 0..shape.distributors {
                let name = node_name("dist", set, i, shape.sets);
                let addr = free_addr()?;
                let data = certs.dir().join(&name).to_string_lossy().to_string();
                let mut a = s(&[
                    "distributor",
                    "--name",
                    &name,
                    "--listen",
                    &addr.to_string(),
                    "--pki",
                    &pki_s,
                    "--data-dir",
                    &data,
                    // The bench owns the cluster's life: a SIGTERM (the
                    // bench died) stops the distributor at once, without
                    // draining.
                    "--drain-timeout",
                    "0",
                    "--set-name",
                    &set_s,
                    "--gateways",
                    &gateways,
                ]);
                if let Some(n) = shape.max_workers {
                    a.extend(s(&["--max-workers", &n.to_string()]));
                }
                a.extend(metrics_flag(metrics, &name, &mut cluster.metrics)?);
                let d = spawn(&a)?;
                cluster.roles.push(("distributor", d.id()));
                cluster.members.push(Member {
                    set: set_s.clone(),
                    name,
                    addr,
                    pid: Some(d.id()),
                });
                cluster.children.push(d);
                joined.push(addr.to_string());
            }
            let join = joined.join(",");
            for i in 0..shape.workers {
                let name = node_name("worker", set, i, shape.sets);
                let slots = shape.slots.to_string();
                let prefetch = shape.prefetch.to_string();
                let mut a = s(&[
                    "worker",
                    "--name",
                    &name,
                    "--pki",
                    &pki_s,
                    "--join",
                    &join,
                    "--report",
                    "broadcast",
                    "--apps",
                    "echo,sha256,sleep",
                    "--slots",
                    &slots,
                    "--prefetch",
                    &prefetch,
                    // As for the distributors: a SIGTERM (the bench died)
                    // stops the worker at once.
                    "--drain-timeout",
                    "0",
                ]);
                if let Some(c) = &shape.command {
                    a.extend(s(&["--app-cmd", &format!("{COMMAND_APP}={c}")]));
                }
                a.extend(metrics_flag(metrics, &name, &mut cluster.metrics)?);
                let w = spawn(&a)?;
                cluster.roles.push(("workers", w.id()));
                cluster.children.push(w);
            }
        }
        cluster._certs = Some(certs);
        let cfg = ClientConfig::new(client, pki.clone(), Vec::<SocketAddr>::new());
        let members = cluster.members.clone();
        let gws = cluster.gateways.clone();
        let workers = shape.workers;
        crate::interrupt::block_on(async move {
            let deadline = Instant::now() + UP_TIMEOUT;
            for m in &members {
                let left = deadline.saturating_duration_since(Instant::now());
                wait_for_workers(&cfg, m.addr, workers, left)
                    .await
                    .with_context(|| format!("waiting for the workers of {}", m.name))?;
            }
            for gw in &gws {
                wait_for_members(&pki, client, *gw, members.len(), deadline).await?;
            }
            Ok::<_, anyhow::Error>(())
        })?
        .context("the local cluster did not come up")?;
        Ok(cluster)
    }

    /// `k` client names, each with a certificate (issued here when it is
    /// not `base` itself), and its gateway list. A gateway sends a client
    /// name to one member by rendezvous hashing; a few names would land
    /// unevenly by chance, where a large population of clients spreads
    /// evenly. So the names are picked, from `base-1`, `base-2`, ..., so
    /// that each member is the first choice of as many of them as the
    /// others (of `k / members`, the first `k % members` one more): the
    /// spread of many clients, with a few connections. The redirect
    /// itself is still the gateway's: the report counts where the tasks
    /// went. Each name's gateway list starts at another gateway, so the
    /// clients spread over the gateways too.
    pub(super) fn client_names(
        &self,
        base: &str,
        k: usize,
    ) -> Result<Vec<(String, Vec<SocketAddr>)>> {
        let gw = |i: usize| -> Vec<SocketAddr> {
            let n = self.gateways.len();
            (0..n).map(|j| self.gateways[(i + j) % n]).collect()
        };
        if k == 1 && self.members.len() == 1 {
            return Ok(vec![(base.to_owned(), gw(0))]);
        }
        let m = self.members.len();
        let target: Vec<usize> = (0..m).map(|i| k / m + usize::from(i < k % m)).collect();
        let mut have = vec![0usize; m];
        let mut names: Vec<String> = Vec::with_capacity(k);
        let mut spare: Vec<String> = Vec::new();
        for i in 1..=k * NAME_TRIES_PER_CLIENT {
            if names.len() == k {
                break;
            }
            let name = format!("{base}-{i}");
            let first = self.first_choice(&name);
            if have[first] < target[first] {
                have[first] += 1;
                names.push(name);
            } else if spare.len() < k {
                spare.push(name);
            }
        }
        if names.len() < k {
            eprintln!(
                "bench: could not spread {k} client names evenly over {m} members; \
                 the member shares show where they went"
            );
            let missing = k - names.len();
            names.extend(spare.into_iter().take(missing));
        }
        for n in &names {
            allot::pki::issue(&self.pki, n, Role::Client)
                .with_context(|| format!("issuing the client certificate {n}"))?;
        }
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, gw(i)))
            .collect())
    }

    /// The member a gateway puts first for `client` while every member is
    /// up: the set by the rendezvous choice (the gateways' default
    /// policy), then the member by [`allot::gateway::member_score`].
    pub(super) fn first_choice(&self, client: &str) -> usize {
        let set = self
            .members
            .iter()
            .map(|m| m.set.as_str())
            .max_by_key(|s| allot::gateway::rendezvous_score(client, s))
            .unwrap_or("");
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.set == set)
            .max_by_key(|(_, m)| allot::gateway::member_score(client, m.addr))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }
}

/// What [`Cluster::start`] builds.
struct Shape {
    /// The command of the `cmd` app (`--command`).
    command: Option<String>,
    sets: usize,
    distributors: usize,
    gateways: usize,
    /// Per set.
    workers: usize,
    slots: u32,
    /// Each worker's `--prefetch`.
    prefetch: u32,
    /// The distributors' `--max-workers`, when the default is too few.
    max_workers: Option<usize>,
}

/// Waits until the gateway at `gw` records `members` members up.
async fn wait_for_members(
    pki: &std::path::Path,
    client: &str,
    gw: SocketAddr,
    members: usize,
    deadline: Instant,
) -> Result<()> {
    loop {
        let last = match allot::gateway::query_status(pki, client, gw).await {
            Ok(r) => {
                let up = r
                    .members
                    .iter()
                    .filter(|m| m.state == WorkerState::Up)
                    .count();
                if up >= members {
                    return Ok(());
                }
                format!("{up} of {members} members up")
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("the gateway at {gw} did not record every member in time ({last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
