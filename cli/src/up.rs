//! `allot up`: a cluster on this machine to try the client commands on by
//! hand, running until Ctrl-C or SIGTERM.
//!
//! The nodes run in this process, each on a thread of its own (the same
//! `spawn` functions an embedding program and `allot demo` use), rather
//! than as child processes: one process to stop, so Ctrl-C in the terminal
//! or a SIGTERM stops everything and nothing can be left running, and the
//! nodes' addresses are known without reading them back from children.
//! It does not use [`allot::LocalCluster`], whose certificates live in a
//! temporary directory removed when it stops: here they are written under
//! a directory the user is told about, which survives the run, so the
//! exported variables stay valid for the next `allot up --dir` on the same
//! directory (the PKI is reused, and the distributor's journal keeps the
//! jobs).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allot::client::ClientConfig;
use allot::distributor::DistributorConfig;
use allot::gateway::GatewayConfig;
use allot::node_thread::NodeHandle;
use allot::worker::WorkerConfig;
use allot_wire::{Role, WorkerState};
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::env;
use crate::logging::LogFormat;

/// The node and certificate names of the cluster.
const GATEWAY: &str = "gateway";
const DISTRIBUTOR: &str = "distributor";
const CLIENT: &str = "client";
/// The distributor set.
const SET: &str = "default";
/// The apps every worker runs (the built-ins).
const APPS: [&str; 3] = ["echo", "sleep", "sha256"];
/// How long the start waits for the workers and the gateway's record.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the start asks the gateway whether the distributor is up.
const POLL: Duration = Duration::from_millis(50);
/// The file holding the export line while the cluster runs.
const ENV_FILE: &str = "env";
/// The file an `allot up` holds locked while it runs on the directory.
const LOCK_FILE: &str = "up.lock";

/// Options of `allot up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Workers to start (each runs echo, sleep and sha256).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Directory of the certificates (DIR/pki, reused when it holds a CA)
    /// and of the distributor's data (default: $XDG_RUNTIME_DIR/allot-up,
    /// else allot-up-UID in the temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The gateway's address (a loopback one: the other nodes listen on
    /// the same IP, on ports the system picks).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: allot::HostPort,
    /// `--listen` resolved (`localhost:7000` is accepted too).
    #[arg(skip = SocketAddr::from(([127, 0, 0, 1], 7000)))]
    listen_addr: SocketAddr,
    /// The distributor's metrics and dashboard address (a loopback one;
    /// default: a port the system picks): the dashboard is at
    /// http://ADDR/, its metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// A file holding a bearer token for the dashboard, its API and
    /// `/metrics` (as `allot distributor --metrics-token`). The dashboard
    /// URL printed then holds the token (`?token=...`), so that opening it
    /// just works: do not paste it where others see it.
    #[arg(long, value_name = "FILE")]
    metrics_token: Option<PathBuf>,
    /// Log lines (stderr) as text, or as one JSON object a line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print one JSON object (addresses, directory, variables) instead of
    /// the text, once the cluster is up.
    #[arg(long, conflicts_with = "env")]
    json: bool,
    /// Print only the `export ...` line, once the cluster is up.
    #[arg(long)]
    env: bool,
}

/// The nodes of the running cluster; dropped (or [`Nodes::stop`]), they
/// stop in the order `LocalCluster` uses: the gateway, the workers, then
/// the distributor.
#[derive(Default)]
struct Nodes {
    gateway: Option<NodeHandle>,
    workers: Vec<NodeHandle>,
    distributor: Option<NodeHandle>,
}

impl Nodes {
    fn stop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop();
        }
        for w in self.workers.drain(..) {
            w.stop();
        }
        if let Some(d) = self.distributor.take() {
            d.stop();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `allot up` prints once the cluster is up.
struct Running {
    dir: PathBuf,
    pki: PathBuf,
    gateway: SocketAddr,
    distributor: SocketAddr,
    workers: u16,
    /// The dashboard's URL (the distributor's metrics address, with
    /// `?token=` when there is a token); None if the distributor serves
    /// none, and then nothing is printed about it.
    dashboard: Option<String>,
    /// Whether the dashboard's URL holds a token (the text says so).
    dashboard_token: bool,
}

impl Running {
    /// The variables, in the order of the export line.
    fn vars(&self) -> [(&'static str, String); 4] {
        [
            (env::GATEWAY, self.gateway.to_string()),
            (env::DISTRIBUTOR, self.distributor.to_string()),
            (env::PKI, self.pki.display().to_string()),
            (env::NAME, CLIENT.to_owned()),
        ]
    }

    fn export_line(&self) -> String {
        let vars: Vec<String> = self
            .vars()
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        format!("export {}", vars.join(" "))
    }

    fn json(&self) -> serde_json::Value {
        let vars: serde_json::Map<String, serde_json::Value> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let mut j = serde_json::json!({
            "gateway": self.gateway.to_string(),
            "distributor": self.distributor.to_string(),
            "pki": self.pki.display().to_string(),
            "name": CLIENT,
            "dir": self.dir.display().to_string(),
            "workers": self.workers,
            "apps": APPS,
            "env": vars,
            "export": self.export_line(),
        });
        if let Some(d) = &self.dashboard {
            j["dashboard"] = d.clone().into();
        }
        j
    }

    fn text(&self) -> String {
        let mut t = format!(
            "allot up: a gateway, a distributor and {} workers ({}), until Ctrl-C\n\
             \x20 gateway:     {}\n\
             \x20 distributor: {}\n",
            self.workers,
            APPS.join(", "),
            self.gateway,
            self.distributor,
        );
        if let Some(d) = &self.dashboard {
            t.push_str(&format!("  dashboard:   {d}\n"));
            if self.dashboard_token {
                t.push_str(
                    "               (the URL holds the --metrics-token: do not paste it where others see it)\n",
                );
            }
        }
        t.push_str(&format!(
            "  directory:   {} (certificates in pki/, the distributor's data in data-{DISTRIBUTOR}/)\n\
             In another shell, set the client commands' defaults with\n\
             \x20 {}\n\
             (or `. {}`), then try\n\
             \x20 echo hello | allot submit --app echo --input -\n\
             \x20 allot status",
            self.dir.display(),
            self.export_line(),
            self.dir.join(ENV_FILE).display(),
        ));
        t
    }
}

/// `value` quoted for a POSIX shell when it needs to be.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,+=@%".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The directory when `--dir` is not given.
fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("allot-up"),
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("allot-up-{uid}"))
        }
    }
}

/// Creates `dir` (owner-only) or checks that the existing one is ours and
/// closed to others: it holds the private keys.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let meta = std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        bail!(
            "{} belongs to another user: give --dir a directory of your own",
            dir.display()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by others (mode {:o}); it would hold the cluster's keys: \
             give --dir another directory, or `chmod go-w` it",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(dir)
}

/// Holds `DIR/up.lock` locked while it lives, so that a second `allot up`
/// on the same directory (and its distributor's data) fails at once.
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock> {
        use std::os::unix::io::AsRawFd;
        let path = dir.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this File owns and keeps open; the
        // lock goes when the File is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another `allot up` runs on {} (it holds {}): stop it, or give --dir another directory",
                dir.display(),
                path.display()
            );
        }
        Ok(DirLock { _file: f })
    }
}

/// Makes sure `pki` holds a CA and a certificate for each node: an
/// existing CA and certificates are kept, missing ones issued.
fn ensure_pki(pki: &Path, workers: u16) -> Result<()> {
    if !pki.join(allot::pki::CA_CERT_FILE).exists() {
        allot::pki::create_ca(pki)
            .with_context(|| format!("creating a CA in {}", pki.display()))?;
    }
    let mut certs = vec![
        (GATEWAY.to_owned(), Role::Gateway),
        (DISTRIBUTOR.to_owned(), Role::Distributor),
        (CLIENT.to_owned(), Role::Client),
    ];
    certs.extend((1..=workers).map(|i| (worker_name(i), Role::Worker)));
    for (name, role) in certs {
        if !pki.join(format!("{name}.pem")).exists() {
            allot::pki::issue(pki, &name, role)
                .with_context(|| format!("issuing `{name}` in {}", pki.display()))?;
        }
    }
    Ok(())
}

fn worker_name(i: u16) -> String {
    format!("worker-{i}")
}

/// The dashboard's URL for a distributor serving metrics at `addr`: with
/// `?token=` when there is a token, encoded so that the page reads it back.
fn dashboard_url(addr: SocketAddr, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("http://{addr}/?token={}", allot::observe::token_query(t)),
        None => format!("http://{addr}/"),
    }
}

fn start_nodes(a: &UpArgs, dir: &Path, pki: &Path, nodes: &mut Nodes) -> Result<()> {
    let local = SocketAddr::new(a.listen_addr.ip(), 0);
    let g = allot::gateway::spawn(GatewayConfig::new(
        GATEWAY,
        a.listen_addr,
        pki.to_path_buf(),
        Vec::new(),
    ))
    .with_context(|| format!("starting the gateway on {}", a.listen))?;
    let gw = g.addr;
    nodes.gateway = Some(g);
    let mut cfg = DistributorConfig::new(
        DISTRIBUTOR,
        local,
        pki.to_path_buf(),
        dir.join(format!("data-{DISTRIBUTOR}")),
    );
    cfg.set_name = SET.into();
    cfg.gateways = vec![gw.into()];
    // The only node of `allot up` serving metrics: the gateway and the
    // workers serve none.
    let mut metrics = allot::observe::MetricsConfig::new(a.metrics);
    metrics.token_file = a.metrics_token.clone();
    cfg.metrics = Some(metrics);
    let d = allot::distributor::spawn(cfg).with_context(|| {
        format!(
            "starting the distributor (dashboard on --metrics {})",
            a.metrics
        )
    })?;
    let dist = d.addr;
    nodes.distributor = Some(d);
    for i in 1..=a.workers {
        let mut cfg = WorkerConfig::new(&worker_name(i), pki.to_path_buf(), vec![dist]);
        cfg.listen = local;
        cfg.apps = APPS.iter().map(|s| (*s).to_owned()).collect();
        let w = allot::worker::spawn(cfg, Vec::new())
            .with_context(|| format!("starting {}", worker_name(i)))?;
        nodes.workers.push(w);
    }
    Ok(())
}

/// Waits until the workers are up at the distributor and the gateway
/// records the distributor up with them, so that a client sent to the
/// gateway finds them.
async fn wait_up(pki: &Path, gateway: SocketAddr, distributor: SocketAddr, n: usize) -> Result<()> {
    let started = Instant::now();
    let client = ClientConfig::new(CLIENT, pki, Vec::<SocketAddr>::new());
    allot::local_cluster::wait_for_workers(&client, distributor, n, UP_TIMEOUT).await?;
    let mut last = String::from("no answer yet");
    while started.elapsed() < UP_TIMEOUT {
        match allot::gateway::query_status(pki, CLIENT, gateway).await {
            Ok(r) => {
                let up = r.members.iter().any(|m| {
                    m.name == DISTRIBUTOR
                        && m.state == WorkerState::Up
                        && m.attrs.workers_up as usize >= n
                });
                if up {
                    return Ok(());
                }
                last = format!(
                    "{} members recorded, none up with the workers",
                    r.members.len()
                );
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(POLL).await;
    }
    bail!(
        "the gateway did not record the distributor up with its {n} workers within {:.0} s ({last})",
        UP_TIMEOUT.as_secs_f64()
    )
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed before this
/// returns, so a signal that comes during the start is not lost.
fn signals() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("catching Ctrl-C")?;
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Runs `allot up`.
pub fn run(mut a: UpArgs) -> Result<()> {
    crate::logging::init("warn", a.log_format);
    a.listen_addr = crate::values::resolve("--listen", &a.listen)?;
    if !a.listen_addr.ip().is_loopback() {
        bail!(
            "--listen {}: allot up runs a cluster for this machine and takes a loopback address \
             (127.0.0.1:PORT); run `allot gateway`, `allot distributor` and `allot worker` to serve others",
            a.listen
        );
    }
    if !a.metrics.ip().is_loopback() {
        bail!(
            "--metrics {}: allot up serves its dashboard on a loopback address (127.0.0.1:PORT); \
             run `allot distributor --metrics ADDR --metrics-token FILE` to show it to others",
            a.metrics
        );
    }
    // Read here, before anything is created or started, with the node's
    // own checks (the distributor reads the file again as it starts).
    let token = a
        .metrics_token
        .as_deref()
        .map(allot::observe::read_token)
        .transpose()?;
    let dir = prepare_dir(&a.dir.clone().unwrap_or_else(default_dir))?;
    let _lock = DirLock::take(&dir)?;
    let pki = dir.join("pki");
    ensure_pki(&pki, a.workers)?;
    let env_file = dir.join(ENV_FILE);
    crate::runtime::block_on_local(async {
        let stop = signals()?;
        tokio::pin!(stop);
        let mut nodes = Nodes::default();
        start_nodes(&a, &dir, &pki, &mut nodes)?;
        let (gateway, distributor, metrics) = match (&nodes.gateway, &nodes.distributor) {
            (Some(g), Some(d)) => (g.addr, d.addr, d.metrics),
            _ => bail!("the cluster's nodes did not start"),
        };
        tokio::select! {
            r = wait_up(&pki, gateway, distributor, a.workers as usize) => r?,
            () = &mut stop => {
                say(a.log_format, "interrupted while starting; stopping");
                return Ok(());
            }
        }
        let running = Running {
            dir: dir.clone(),
            pki: pki.clone(),
            gateway,
            distributor,
            workers: a.workers,
            dashboard: metrics.map(|m| dashboard_url(m, token.as_deref())),
            dashboard_token: token.is_some(),
        };
        write_env_file(&env_file, &running.export_line())?;
        if a.json {
            println!("{}", running.json());
        } else if a.env {
            println!("{}", running.export_line());
        } else {
            println!("{}", running.text());
        }
        stop.await;
        say(
            a.log_format,
            &format!(
                "stopping the cluster (certificates kept in {})",
                pki.display()
            ),
        );
        nodes.stop();
        Ok(())
    })?
    .and_then(|()| remove_env_file(&env_file))
}

/// A note on stderr for a person: left out when stderr is JSON lines for
/// a collector.
fn say(format: LogFormat, what: &str) {
    if format == LogFormat::Text {
        eprintln!("allot up: {what}");
    }
}

fn write_env_file(path: &Path, line: &str) -> Result<()> {
    let tmp: PathBuf = {
        let mut s = OsString::from(path.as_os_str());
        s.push(".tmp");
        s.into()
    };
    std::fs::write(&tmp, format!("{line}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn remove_env_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(
            shell_quote("/run/user/1000/allot-up/pki"),
            "/run/user/1000/allot-up/pki"
        );
        assert_eq!(shell_quote("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_dashboard_url_holds_the_token_encoded() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9464));
        assert_eq!(dashboard_url(addr, None), "http://127.0.0.1:9464/");
        assert_eq!(
            dashboard_url(addr, Some("a+b&c")),
            "http://127.0.0.1:9464/?token=a%2Bb%26c"
        );
    }
}
