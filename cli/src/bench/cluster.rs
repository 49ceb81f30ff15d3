//! The cluster `bench --local` starts and stops: in this process, or with
//! `--processes` as child `allot` processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot_wire::{ReportMode, Role};
use anyhow::{bail, Context, Result};

use allot::client::{Client, ClientConfig};
use allot::distributor::{self, DistributorConfig};
use allot::gateway::{self, GatewayConfig, RedirectPolicy};
use allot::worker::{self, WorkerConfig};

use super::process::die_with_parent;
use super::BenchArgs;

/// A cluster started by `bench --local`: one gateway, one distributor and
/// N workers, in this process or as child processes (killed on drop).
pub(super) struct LocalCluster {
    pub(super) pki: PathBuf,
    pub(super) gateway: SocketAddr,
    children: Vec<Child>,
    /// Role and process id of every child process (none when the nodes
    /// run as threads of this process).
    pub(super) roles: Vec<(&'static str, u32)>,
    pub(super) dist_addr: Option<SocketAddr>,
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
    pub(super) fn distributor_pid(&self) -> Option<u32> {
        self.roles
            .iter()
            .find(|(r, _)| *r == "distributor")
            .map(|(_, p)| *p)
    }

    pub(super) fn start(dir: &Path, args: &BenchArgs) -> Result<LocalCluster> {
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
