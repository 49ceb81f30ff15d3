//! What the integration tests that run nodes inside the test process share
//! beyond [`allot::LocalCluster`]: a runtime to run the client on, and a
//! loopback address for endpoints of their own. Each test file includes it
//! with `mod support;` and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

/// Any free port on loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
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
