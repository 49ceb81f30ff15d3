//! The cluster the tests of the metrics address run against: a gateway,
//! a distributor (set `main`) and a worker `w-1`, each serving
//! `--metrics` on a port of its own.

use std::net::SocketAddr;
use std::time::Duration;

use super::http::{tcp_port, wait_healthy};
use super::{eventually, json_list, ok, pki, port, run, spawn, Dir, Proc};

/// A gateway `gw-1`, a distributor `dist-1` and a worker `w-1`, with a
/// client certificate `client`; stopped when dropped.
pub struct Trio {
    pub dir: Dir,
    pub pki: String,
    pub gw: SocketAddr,
    pub gw_metrics: SocketAddr,
    pub dist: SocketAddr,
    pub dist_metrics: SocketAddr,
    pub worker_metrics: SocketAddr,
    _procs: Vec<Proc>,
}

impl Trio {
    /// Starts the three, `dist_extra` and `worker_extra` added to the
    /// distributor's and the worker's flags (the worker's `--apps` among
    /// them), and waits until every metrics address answers and the
    /// gateway sees the member up with its worker.
    pub fn start(tag: &str, dist_extra: &[&str], worker_extra: &[&str]) -> Trio {
        let dir = Dir::new(tag);
        let pki = pki(
            &dir.0,
            &[
                ("gw-1", "gateway"),
                ("dist-1", "distributor"),
                ("w-1", "worker"),
                ("client", "client"),
            ],
        );
        let (gw, dist) = (port(), port());
        let (gm, dm, wm) = (tcp_port(), tcp_port(), tcp_port());
        let (g, d) = (gw.to_string(), dist.to_string());
        let (gms, dms, wms) = (gm.to_string(), dm.to_string(), wm.to_string());
        let data = dir.0.join("dist-1");
        let data = data.to_str().unwrap().to_owned();
        let mut procs = vec![spawn(&[
            "gateway",
            "--name",
            "gw-1",
            "--listen",
            &g,
            "--pki",
            &pki,
            "--metrics",
            &gms,
        ])];
        let mut args = vec![
            "distributor",
            "--name",
            "dist-1",
            "--listen",
            &d,
            "--pki",
            &pki,
            "--set-name",
            "main",
            "--gateways",
            &g,
            "--report-ms",
            "200",
            "--data-dir",
            &data,
            "--metrics",
            &dms,
        ];
        args.extend(dist_extra);
        procs.push(spawn(&args));
        let mut args = vec![
            "worker",
            "--name",
            "w-1",
            "--pki",
            &pki,
            "--join",
            &d,
            "--metrics",
            &wms,
        ];
        args.extend(worker_extra);
        procs.push(spawn(&args));
        let c = Trio {
            dir,
            pki,
            gw,
            gw_metrics: gm,
            dist,
            dist_metrics: dm,
            worker_metrics: wm,
            _procs: procs,
        };
        for a in [gm, dm, wm] {
            wait_healthy(a);
        }
        let (p, g) = (c.pki.clone(), c.gw.to_string());
        eventually(
            "the member is up with its worker",
            Duration::from_secs(30),
            || {
                json_list(&run(&["status", "--pki", &p, "--gateway", &g, "--json"]))?
                    .iter()
                    .any(|m| m["name"] == "dist-1" && m["state"] == "up" && m["workers_up"] == 1)
                    .then_some(())
            },
        );
        c
    }

    /// Runs `n` echo tasks through the gateway, one `allot submit` each.
    pub fn run_tasks(&self, n: usize) {
        let g = self.gw.to_string();
        for _ in 0..n {
            ok(&[
                "submit",
                "--pki",
                &self.pki,
                "--gateway",
                &g,
                "--app",
                "echo",
            ]);
        }
    }
}
