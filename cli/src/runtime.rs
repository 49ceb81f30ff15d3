//! The runtime every subcommand runs its async work on: current-thread,
//! inside a `LocalSet`, as the nodes and the client SDK expect.

use std::future::Future;

use anyhow::{Context, Result};

/// Runs `f` on a current-thread runtime inside a `LocalSet`.
pub fn block_on_local<F: Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, f))
}
