//! The cluster `bench --local` starts and stops: in this process (an
//! [`allot::LocalCluster`]), or with `--processes` as child `allot`
//! processes sharing the kit's certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use allot::local_cluster::{wait_for_workers, TempPki};
use allot::{ClientConfig, LocalCluster};
use allot_wire::{ReportMode, Role};
use anyhow::{Context, Result};

use super::process::die_with_parent;
use super::BenchArgs;

/// How long the nodes have to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(20);

/// A cluster started by `bench --local`: one gateway, one distributor and
/// N workers, in this process or as child processes (killed on drop).
pub(super) struct Cluster {
    pub(super) pki: PathBuf,
    pub(super) gateway: SocketAddr,
    /// Role and process id of every child process (none when the nodes
    /// run as threads of this process).
    pub(super) roles: Vec<(&'static str, u32)>,
    pub(super) dist_addr: Option<SocketAddr>,
    children: Vec<Child>,
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

impl Cluster {
    /// The distributor's process (none when the nodes are threads).
    pub(super) fn distributor_pid(&self) -> Option<u32> {
        self.roles
            .iter()
            .find(|(r, _)| *r == "distributor")
            .map(|(_, p)| *p)
    }

    pub(super) fn start(args: &BenchArgs) -> Result<Cluster> {
        // Capacity never limits the bench: it measures allot, not queueing.
        let slots = (args.concurrency as u32).max(64) * 2;
        let workers = args.workers.max(1);
        if args.processes {
            Self::start_processes(&args.name, workers, slots)
        } else {
            Self::start_threads(&args.name, workers, slots)
        }
    }

    fn start_threads(client: &str, workers: usize, slots: u32) -> Result<Cluster> {
        let c = LocalCluster::builder()
            .distributor("dist-1")
            .workers(workers, |_, w| {
                w.apps = vec!["echo".into(), "sha256".into()];
                w.slots = slots;
                w.mode = ReportMode::Registered;
            })
            .gateway("gw-1")
            .client(client)
            // For the simulated workers of a scale run.
            .certificate("sim", Role::Worker)
            .up_timeout(UP_TIMEOUT)
            .start()
            .context("starting the local cluster")?;
        Ok(Cluster {
            pki: c.pki().to_path_buf(),
            gateway: c.gateways()[0],
            roles: Vec::new(),
            dist_addr: Some(c.distributors()[0]),
            children: Vec::new(),
            _threads: Some(c),
            _certs: None,
        })
    }

    fn start_processes(client: &str, workers: usize, slots: u32) -> Result<Cluster> {
        let mut nodes: Vec<(String, Role)> = vec![
            ("gw-1".into(), Role::Gateway),
            ("dist-1".into(), Role::Distributor),
            (client.to_owned(), Role::Client),
            ("sim".into(), Role::Worker),
        ];
        for i in 0..workers {
            nodes.push((format!("worker-{}", i + 1), Role::Worker));
        }
        let refs: Vec<(&str, Role)> = nodes.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let certs = TempPki::create(&refs)?;
        let pki = certs.pki().to_path_buf();
        let data = certs.dir().join("dist-1").to_string_lossy().to_string();
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
        let mut cluster = Cluster {
            pki: pki.clone(),
            gateway: gw,
            roles: Vec::new(),
            dist_addr: Some(dist),
            children: Vec::new(),
            _threads: None,
            _certs: Some(certs),
        };
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
            // The bench owns the cluster's life: a SIGTERM (the bench
            // died) stops the distributor at once, without draining.
            "--drain-timeout",
            "0",
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
        let cfg = ClientConfig::new(client, pki, Vec::new());
        crate::interrupt::block_on(wait_for_workers(&cfg, dist, workers, UP_TIMEOUT))?
            .context("the local cluster did not come up")?;
        Ok(cluster)
    }
}
