//! Setup shared by the integration tests that run nodes inside the test
//! process: a scratch directory holding the cluster's certificates, and a
//! distributor and gateway started on loopback with what tests need.
//! Each test file includes it with `mod support;` and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use allot::{DistributorConfig, DistributorHandle, GatewayConfig, GatewayHandle, RedirectPolicy};
use allot_wire::Role;

/// Any free port on loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A directory for one test (named after it and the process, so parallel
/// test binaries do not meet), with certificates for `nodes` under `pki`.
/// Removed when dropped: stop the nodes that use it first.
pub struct Scratch {
    pub dir: PathBuf,
    pub pki: PathBuf,
}

impl Scratch {
    pub fn new(test: &str, nodes: &[(&str, Role)]) -> Scratch {
        let dir = std::env::temp_dir().join(format!("allot-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = dir.join("pki");
        allot::pki::create_cluster(&pki, nodes).expect("cluster certificates");
        Scratch { dir, pki }
    }

    /// Distributor `name` on loopback, its databases under this directory.
    pub fn distributor(&self, name: &str) -> DistributorHandle {
        allot::distributor::spawn(DistributorConfig::new(
            name,
            loopback(),
            self.pki.clone(),
            self.dir.join(format!("data-{name}")),
        ))
        .expect("distributor")
    }

    /// Gateway `name` on loopback, redirecting to one set, `main`.
    pub fn gateway(
        &self,
        name: &str,
        set: Vec<SocketAddr>,
        policy: RedirectPolicy,
        ttl: Duration,
    ) -> GatewayHandle {
        let mut cfg = GatewayConfig::new(
            name,
            loopback(),
            self.pki.clone(),
            vec![("main".into(), set)],
        );
        cfg.policy = policy;
        cfg.ttl = ttl;
        allot::gateway::spawn(cfg).expect("gateway")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A current-thread runtime and a `LocalSet` to run the client on, as an
/// embedding program would.
pub fn local_runtime() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (rt, tokio::task::LocalSet::new())
}
