//! A whole cluster inside one process, for tests, benches, demos and
//! programs that want to try allot without deploying it.
//!
//! [`LocalCluster::builder`] names the gateways, distributors, workers and
//! clients; [`LocalClusterBuilder::start`] issues a CA and one certificate
//! per node (through [`crate::pki`]) in an owner-only temporary directory,
//! starts every node on loopback with the same `spawn` functions an
//! embedding program uses, and returns once every worker is up at the
//! distributors it reports to, as their status says. Dropping the cluster
//! stops the nodes and removes the directory, private keys included.
//!
//! ```no_run
//! use allot::{LocalCluster, Task};
//!
//! let cluster = LocalCluster::builder()
//!     .distributor("dist")
//!     .workers(2, |_, w| w.apps = vec!["echo".into()])
//!     .gateway("gw")
//!     .client("app")
//!     .start()?;
//! let cfg = cluster.client_config("app");
//! // ... `allot::Client::connect(cfg)` from any runtime, or
//! // `allot::LocalClient::connect(cfg)` on a current-thread one ...
//! # let _ = (cfg, Task::new("echo", "hi"));
//! # Ok::<(), allot::local_cluster::LocalClusterError>(())
//! ```
//!
//! The nodes all share the one distributor set, named `main`, that every
//! gateway redirects to; each worker joins every distributor unless its
//! configuration names others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allot_wire::{ReportMode, Role, WorkerState};

use crate::apps::Handler;
use crate::client::{ClientConfig, LocalClient};
use crate::distributor::{self, DistributorConfig, DistributorHandle};
use crate::gateway::{self, GatewayConfig, GatewayHandle, RedirectPolicy};
use crate::worker::{self, WorkerConfig, WorkerHandle};

/// How often a wait asks a distributor for its status.
const POLL: Duration = Duration::from_millis(25);

/// The certificate name the cluster waits with when the builder names no
/// client of its own.
const WAITER: &str = "local-cluster";

/// Why a local cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// The temporary directory for the certificates could not be made.
    #[error("creating the cluster's temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// The CA or a node certificate could not be issued.
    #[error("creating the cluster's certificates: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// The builder describes a cluster that cannot run (a name used twice,
    /// workers without a distributor, a handler for an unknown worker).
    #[error("local cluster: {0}")]
    Config(String),
    /// A node failed to start.
    #[error("starting {role} `{name}`: {source}")]
    Node {
        /// `gateway`, `distributor` or `worker`.
        role: &'static str,
        /// The node's name.
        name: String,
        /// The node's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Not every worker was up at a distributor in time.
    #[error(
        "only {up} of {expected} workers were up at the distributor at {addr} after {:.1} s{}",
        waited.as_secs_f64(),
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NotUp {
        /// The distributor asked.
        addr: SocketAddr,
        /// Workers it reported up at the last answer.
        up: usize,
        /// Workers expected up there.
        expected: usize,
        /// How long the wait lasted.
        waited: Duration,
        /// The last connection or status error, if the last try failed.
        last_error: Option<String>,
    },
    /// Not every distributor had registered with a gateway in time.
    #[error(
        "only {up} of {expected} distributors were registered with the gateway at {addr} after {:.1} s{}",
        waited.as_secs_f64(),
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NotRegistered {
        /// The gateway asked.
        addr: SocketAddr,
        /// Members it recorded up at the last answer.
        up: usize,
        /// Distributors in the cluster.
        expected: usize,
        /// How long the wait lasted.
        waited: Duration,
        /// The last query error, if the last try failed.
        last_error: Option<String>,
    },
    /// The thread or runtime of the wait, or a port for a node, could not
    /// be had.
    #[error("waiting for the cluster: {0}")]
    Wait(#[source] std::io::Error),
}

impl LocalClusterError {
    fn node(
        role: &'static str,
        name: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        LocalClusterError::Node {
            role,
            name: name.to_owned(),
            source: source.into(),
        }
    }
}

/// A CA and node certificates in a temporary directory only its owner can
/// read, removed (keys included) when dropped.
///
/// [`LocalCluster`] keeps its certificates in one; a program that starts
/// the nodes itself (as separate processes, say) can use it alone.
#[derive(Debug)]
pub struct TempPki {
    dir: tempfile::TempDir,
    pki: PathBuf,
}

impl TempPki {
    /// A new directory holding a CA and a certificate for each
    /// `(name, role)`, in its `pki` subdirectory.
    pub fn create(nodes: &[(&str, Role)]) -> Result<TempPki, LocalClusterError> {
        let mut b = tempfile::Builder::new();
        b.prefix("allot-cluster-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o700));
        }
        let dir = b.tempdir().map_err(LocalClusterError::TempDir)?;
        let pki = dir.path().join("pki");
        crate::pki::create_cluster(&pki, nodes)?;
        Ok(TempPki { dir, pki })
    }

    /// The temporary directory (room for data directories beside `pki`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PKI directory, as node and client configurations take it.
    pub fn pki(&self) -> &Path {
        &self.pki
    }
}

/// Waits until `distributor` reports at least `workers` workers up, asking
/// it for its status as `client` every few milliseconds, for at most
/// `timeout`. Connection errors (a distributor that is not listening yet)
/// count as "not yet": this loop is the retry, so each connection is tried
/// once (no [`ClientConfig::retry_for`](ClientConfig#structfield.retry_for)
/// window), which keeps `timeout` the bound. Must run inside a `LocalSet`,
/// like the client.
pub async fn wait_for_workers(
    client: &ClientConfig,
    distributor: SocketAddr,
    workers: usize,
    timeout: Duration,
) -> Result<(), LocalClusterError> {
    let started = Instant::now();
    let mut up = 0;
    let mut last_error: Option<String>;
    let client = client.clone().with_retry_for(Duration::ZERO);
    loop {
        match LocalClient::connect_distributor(client.clone(), distributor).await {
            Ok(c) => {
                loop {
                    match c.status().await {
                        Ok(s) => {
                            last_error = None;
                            up = s
                                .workers
                                .iter()
                                .filter(|w| w.state == WorkerState::Up)
                                .count();
                            if up >= workers {
                                c.close();
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            last_error = Some(e.to_string());
                            break;
                        }
                    }
                    if started.elapsed() >= timeout {
                        break;
                    }
                    tokio::time::sleep(POLL).await;
                }
                c.close();
            }
            Err(e) => last_error = Some(e.to_string()),
        }
        if started.elapsed() >= timeout {
            return Err(LocalClusterError::NotUp {
                addr: distributor,
                up,
                expected: workers,
                waited: started.elapsed(),
                last_error,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Nodes running in this process, on loopback, with certificates in a
/// temporary directory. Dropping it (or [`LocalCluster::stop`]) stops the
/// gateways, then the workers, then the distributors, and removes the
/// directory.
pub struct LocalCluster {
    gateways: Vec<GatewayHandle>,
    workers: Vec<WorkerHandle>,
    distributors: Vec<DistributorHandle>,
    gateway_addrs: Vec<SocketAddr>,
    distributor_addrs: Vec<SocketAddr>,
    /// (node name, `/metrics` address) of every node, with
    /// [`LocalClusterBuilder::metrics`].
    metrics_addrs: Vec<(String, SocketAddr)>,
    // Last: removed once every node has stopped.
    pki: TempPki,
}

impl LocalCluster {
    /// A builder for a cluster with no nodes yet.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder {
            gateways: Vec::new(),
            distributors: Vec::new(),
            workers: Vec::new(),
            handlers: Vec::new(),
            clients: Vec::new(),
            certificates: Vec::new(),
            policy: RedirectPolicy::Rendezvous,
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(20),
            metrics: false,
        }
    }

    /// The PKI directory: client configurations take it.
    pub fn pki(&self) -> &Path {
        self.pki.pki()
    }

    /// The cluster's temporary directory (the distributors' data
    /// directories are in it too).
    pub fn dir(&self) -> &Path {
        self.pki.dir()
    }

    /// The gateways' addresses, in the order they were added.
    pub fn gateways(&self) -> &[SocketAddr] {
        &self.gateway_addrs
    }

    /// The distributors' addresses, in the order they were added.
    pub fn distributors(&self) -> &[SocketAddr] {
        &self.distributor_addrs
    }

    /// (node name, address of its `/metrics`) of every node, when the
    /// builder was told [`LocalClusterBuilder::metrics`]; else empty.
    pub fn metrics_addrs(&self) -> &[(String, SocketAddr)] {
        &self.metrics_addrs
    }

    /// A client configuration for the certificate `name` (one the builder
    /// issued), going through every gateway in order, with no attributes.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig::new(name, self.pki(), self.gateway_addrs.clone())
    }

    /// Stops every node and removes the temporary directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for g in self.gateways.drain(..) {
            g.stop();
        }
        for w in self.workers.drain(..) {
            w.stop();
        }
        for d in self.distributors.drain(..) {
            d.stop();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir())
            .field("gateways", &self.gateway_addrs)
            .field("distributors", &self.distributor_addrs)
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// What [`LocalCluster::builder`] returns: add nodes, then
/// [`start`](LocalClusterBuilder::start).
pub struct LocalClusterBuilder {
    gateways: Vec<String>,
    distributors: Vec<String>,
    workers: Vec<WorkerConfig>,
    handlers: Vec<(String, String, Handler)>,
    clients: Vec<String>,
    certificates: Vec<(String, Role)>,
    policy: RedirectPolicy,
    ttl: Duration,
    timeout: Duration,
    metrics: bool,
}

/// A loopback TCP address free a moment ago (for a node's metrics).
fn free_tcp() -> Result<SocketAddr, LocalClusterError> {
    let no_port =
        |e: std::io::Error| LocalClusterError::Config(format!("no free port for metrics: {e}"));
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(no_port)?;
    l.local_addr().map_err(no_port)
}

impl LocalClusterBuilder {
    /// Adds a gateway named `name`.
    pub fn gateway(mut self, name: &str) -> Self {
        self.gateways.push(name.to_owned());
        self
    }

    /// Every node serves `/metrics` on a loopback port of its own (see
    /// [`LocalCluster::metrics_addrs`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Adds a distributor named `name` to the set.
    pub fn distributor(mut self, name: &str) -> Self {
        self.distributors.push(name.to_owned());
        self
    }

    /// Adds a worker named `name`, its defaults (those of
    /// [`WorkerConfig::new`]) changed by `f`: apps, labels, slots, report
    /// mode... The cluster sets its PKI directory, and its `join` list to
    /// every distributor if `f` leaves it empty.
    pub fn worker(mut self, name: &str, f: impl FnOnce(&mut WorkerConfig)) -> Self {
        let mut cfg = WorkerConfig::new(name, PathBuf::new(), Vec::<SocketAddr>::new());
        f(&mut cfg);
        self.workers.push(cfg);
        self
    }

    /// Adds `n` workers named `worker-K` (K counting on from the workers
    /// already added, from 1), each changed by `f(i, config)` with `i`
    /// from 0 to `n - 1`, as with [`worker`](Self::worker).
    pub fn workers(mut self, n: usize, mut f: impl FnMut(usize, &mut WorkerConfig)) -> Self {
        for i in 0..n {
            let name = format!("worker-{}", self.workers.len() + 1);
            self = self.worker(&name, |cfg| f(i, cfg));
        }
        self
    }

    /// Gives the worker named `worker` a handler that runs app `app` (see
    /// [`crate::apps::handler`]).
    pub fn handler(mut self, worker: &str, app: &str, handler: Handler) -> Self {
        self.handlers
            .push((worker.to_owned(), app.to_owned(), handler));
        self
    }

    /// Issues a client certificate named `name`.
    pub fn client(mut self, name: &str) -> Self {
        self.clients.push(name.to_owned());
        self
    }

    /// Issues one more certificate, for a node the cluster does not start
    /// (one the caller runs or simulates itself).
    pub fn certificate(mut self, name: &str, role: Role) -> Self {
        self.certificates.push((name.to_owned(), role));
        self
    }

    /// How the gateways spread clients, and how long clients may cache a
    /// redirect (default: rendezvous, 60 s).
    pub fn redirect(mut self, policy: RedirectPolicy, ttl: Duration) -> Self {
        self.policy = policy;
        self.ttl = ttl;
        self
    }

    /// How long [`start`](Self::start) waits for the workers to be up at
    /// their distributors (default 20 s).
    pub fn up_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Issues the certificates, starts the gateways, the distributors and
    /// the workers, and waits until every worker is up at each distributor
    /// it reports to (all of its `join` list in broadcast mode, the first in
    /// registered mode) and every distributor is registered with every
    /// gateway. On an error, what was started is stopped again.
    pub fn start(self) -> Result<LocalCluster, LocalClusterError> {
        let waiter = self
            .clients
            .first()
            .cloned()
            .unwrap_or_else(|| WAITER.into());
        let mut certs: Vec<(String, Role)> = Vec::new();
        certs.extend(self.gateways.iter().map(|n| (n.clone(), Role::Gateway)));
        certs.extend(
            self.distributors
                .iter()
                .map(|n| (n.clone(), Role::Distributor)),
        );
        certs.extend(self.workers.iter().map(|w| (w.name.clone(), Role::Worker)));
        certs.extend(self.clients.iter().map(|n| (n.clone(), Role::Client)));
        certs.extend(self.certificates.iter().cloned());
        if self.clients.is_empty() {
            certs.push((waiter.clone(), Role::Client));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((dup, _)) = certs.iter().find(|(n, _)| !seen.insert(n.as_str())) {
            return Err(LocalClusterError::Config(format!(
                "the name `{dup}` is used twice"
            )));
        }
        if !self.workers.is_empty() && self.distributors.is_empty() {
            return Err(LocalClusterError::Config(
                "workers need a distributor to join".into(),
            ));
        }
        if let Some((w, app, _)) = self
            .handlers
            .iter()
            .find(|(w, _, _)| !self.workers.iter().any(|c| &c.name == w))
        {
            return Err(LocalClusterError::Config(format!(
                "a handler for app `{app}` names `{w}`, which is not a worker of the cluster"
            )));
        }
        let refs: Vec<(&str, Role)> = certs.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let mut cluster = LocalCluster {
            gateways: Vec::new(),
            workers: Vec::new(),
            distributors: Vec::new(),
            gateway_addrs: Vec::new(),
            distributor_addrs: Vec::new(),
            metrics_addrs: Vec::new(),
            pki: TempPki::create(&refs)?,
        };
        let pki = cluster.pki().to_path_buf();

        // Every gateway's and distributor's address is chosen before any
        // starts, so that the gateways seed the set with the distributors
        // and each distributor registers with the gateways from its start
        // (a member the gateways know by name is what a job client looks
        // for). A port taken by another process in between fails the
        // node's start.
        let gateway_addrs = free_ports(self.gateways.len())?;
        let distributor_addrs = free_ports(self.distributors.len())?;
        for (name, addr) in self.gateways.iter().zip(&gateway_addrs) {
            let mut cfg = GatewayConfig::new(
                name,
                *addr,
                pki.clone(),
                vec![(SET.into(), distributor_addrs.clone())],
            );
            cfg.policy = self.policy;
            cfg.ttl = self.ttl;
            if self.metrics {
                let a = free_tcp()?;
                cfg.metrics = Some(crate::observe::MetricsConfig::new(a));
                cluster.metrics_addrs.push((name.to_owned(), a));
            }
            let g = gateway::spawn(cfg).map_err(|e| LocalClusterError::node("gateway", name, e))?;
            cluster.gateway_addrs.push(g.addr);
            cluster.gateways.push(g);
        }

        for (name, addr) in self.distributors.iter().zip(&distributor_addrs) {
            let mut cfg = DistributorConfig::new(
                name,
                *addr,
                pki.clone(),
                cluster.dir().join(format!("data-{name}")),
            );
            cfg.set_name = SET.into();
            cfg.gateways = cluster.gateway_addrs.iter().map(|&a| a.into()).collect();
            if self.metrics {
                let a = free_tcp()?;
                cfg.metrics = Some(crate::observe::MetricsConfig::new(a));
                cluster.metrics_addrs.push((name.clone(), a));
            }
            let d = distributor::spawn(cfg)
                .map_err(|e| LocalClusterError::node("distributor", name, e))?;
            cluster.distributor_addrs.push(d.addr);
            cluster.distributors.push(d);
        }

        // Workers expected up at each distributor, in `distributor_addrs` order.
        let mut expected = vec![0usize; cluster.distributor_addrs.len()];
        let mut handlers = self.handlers;
        for mut cfg in self.workers {
            cfg.pki = pki.clone();
            if cfg.join.is_empty() {
                cfg.join = cluster
                    .distributor_addrs
                    .iter()
                    .map(|&a| a.into())
                    .collect();
            }
            let reports_to: &[crate::HostPort] = match cfg.mode {
                ReportMode::Broadcast => &cfg.join,
                _ => &cfg.join[..cfg.join.len().min(1)],
            };
            for addr in reports_to {
                let addr = addr.socket_addr();
                if let Some(i) = cluster
                    .distributor_addrs
                    .iter()
                    .position(|a| Some(*a) == addr)
                {
                    expected[i] += 1;
                }
            }
            let (mine, rest): (Vec<_>, Vec<_>) =
                handlers.into_iter().partition(|(w, _, _)| *w == cfg.name);
            handlers = rest;
            let mine = mine.into_iter().map(|(_, app, h)| (app, h)).collect();
            let name = cfg.name.clone();
            if self.metrics && cfg.metrics.is_none() {
                let a = free_tcp()?;
                cfg.metrics = Some(crate::observe::MetricsConfig::new(a));
                cluster.metrics_addrs.push((name.clone(), a));
            }
            let w = worker::spawn(cfg, mine)
                .map_err(|e| LocalClusterError::node("worker", &name, e))?;
            cluster.workers.push(w);
        }

        let client = ClientConfig::new(waiter, pki, Vec::<SocketAddr>::new());
        let waits: Vec<(SocketAddr, usize)> = cluster
            .distributor_addrs
            .iter()
            .copied()
            .zip(expected)
            .filter(|(_, n)| *n > 0)
            .collect();
        let registered = Registered {
            gateways: cluster.gateway_addrs.clone(),
            members: self.distributors.len(),
        };
        wait_on_own_thread(client, waits, registered, self.timeout)?;
        Ok(cluster)
    }
}

/// The name of the cluster's one distributor set.
const SET: &str = "main";

/// `n` loopback ports free now (each bound until all are chosen, so that
/// no two are the same).
fn free_ports(n: usize) -> Result<Vec<SocketAddr>, LocalClusterError> {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind(("127.0.0.1", 0)))
        .collect::<Result<_, _>>()
        .map_err(LocalClusterError::Wait)?;
    held.iter()
        .map(|s| s.local_addr().map_err(LocalClusterError::Wait))
        .collect()
}

/// What the gateways must know before the cluster is up: every member
/// registered, by name, with each of them.
struct Registered {
    gateways: Vec<SocketAddr>,
    members: usize,
}

/// Waits until `gateway` records at least `members` registered members
/// that are up, asking as `client`, for at most `timeout`.
async fn wait_for_members(
    client: &ClientConfig,
    gateway: SocketAddr,
    members: usize,
    timeout: Duration,
) -> Result<(), LocalClusterError> {
    let started = Instant::now();
    let mut up = 0;
    let mut last_error: Option<String>;
    loop {
        match gateway::query_status(&client.pki, &client.name, gateway).await {
            Ok(r) => {
                last_error = None;
                up = r
                    .members
                    .iter()
                    .filter(|m| !m.name.is_empty() && m.state == WorkerState::Up)
                    .count();
                if up >= members {
                    return Ok(());
                }
            }
            Err(e) => last_error = Some(e.to_string()),
        }
        if started.elapsed() >= timeout {
            return Err(LocalClusterError::NotRegistered {
                addr: gateway,
                up,
                expected: members,
                waited: started.elapsed(),
                last_error,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the waits for every distributor on a thread of its own with a
/// current-thread runtime, so that `start` may be called from anywhere,
/// inside a runtime or not.
fn wait_on_own_thread(
    client: ClientConfig,
    waits: Vec<(SocketAddr, usize)>,
    registered: Registered,
    timeout: Duration,
) -> Result<(), LocalClusterError> {
    if waits.is_empty() && (registered.members == 0 || registered.gateways.is_empty()) {
        return Ok(());
    }
    let t = std::thread::Builder::new()
        .name("local-cluster-wait".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(LocalClusterError::Wait)?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let deadline = Instant::now() + timeout;
                for (addr, n) in waits {
                    let left = deadline.saturating_duration_since(Instant::now());
                    wait_for_workers(&client, addr, n, left).await?;
                }
                for gw in &registered.gateways {
                    let left = deadline.saturating_duration_since(Instant::now());
                    wait_for_members(&client, *gw, registered.members, left).await?;
                }
                Ok(())
            })
        })
        .map_err(LocalClusterError::Wait)?;
    t.join().unwrap_or_else(|_| {
        Err(LocalClusterError::Wait(std::io::Error::other(
            "the wait panicked",
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_live_in_an_owner_only_directory_removed_on_drop() {
        let pki = TempPki::create(&[("d", Role::Distributor), ("c", Role::Client)]).unwrap();
        let dir = pki.dir().to_path_buf();
        assert!(pki.pki().starts_with(&dir));
        assert!(pki.pki().join(crate::pki::CA_CERT_FILE).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        }
        drop(pki);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn a_cluster_that_cannot_run_is_refused_before_anything_starts() {
        let e = LocalCluster::builder()
            .distributor("x")
            .worker("x", |_| {})
            .start()
            .unwrap_err();
        assert!(e.to_string().contains("`x` is used twice"), "{e}");
        let e = LocalCluster::builder()
            .workers(1, |_, _| {})
            .start()
            .unwrap_err();
        assert!(e.to_string().contains("need a distributor"), "{e}");
        let h = crate::apps::handler(|b: bytes::Bytes| async move { Ok(b) });
        let e = LocalCluster::builder()
            .distributor("d")
            .handler("nobody", "up", h)
            .start()
            .unwrap_err();
        assert!(e.to_string().contains("`nobody`"), "{e}");
    }
}
