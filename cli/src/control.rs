//! `allot drain` and `allot undrain`: a worker stops taking tasks, or
//! takes them again, without being stopped (see
//! [`allot::client::control_worker`]). They need a client certificate,
//! as every client command; any client certificate will do.

use std::time::Duration;

use allot::HostPort;

use allot_wire::WorkerOp;
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::client_args::ClientArgs;
use crate::runtime::block_on_local;

/// `allot drain`.
#[derive(Args, Debug)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    target: Target,
    /// Let the running tasks finish for up to this many seconds, then stop
    /// those left (their distributors place them elsewhere). 0: at once.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "30")]
    timeout: Duration,
}

/// `allot undrain`.
#[derive(Args, Debug)]
pub(crate) struct UndrainArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct Target {
    #[command(flatten)]
    client: ClientArgs,
    /// A distributor the worker is registered with (default: the
    /// ALLOT_DISTRIBUTOR variable).
    #[arg(long)]
    distributor: Option<HostPort>,
    /// The worker's node name (as `allot status --distributor` lists it).
    worker: String,
}

/// Runs `allot drain`.
pub(crate) fn drain(a: DrainArgs) -> Result<()> {
    let ms = u64::try_from(a.timeout.as_millis()).unwrap_or(u64::MAX);
    control(a.target, WorkerOp::Drain(ms))
}

/// Runs `allot undrain`.
pub(crate) fn undrain(a: UndrainArgs) -> Result<()> {
    control(a.target, WorkerOp::Undrain)
}

fn control(t: Target, op: WorkerOp) -> Result<()> {
    let addr = match &t.distributor {
        Some(d) => crate::values::resolve("--distributor", d)?,
        None => crate::env::addr(crate::env::DISTRIBUTOR)?.with_context(|| {
            format!(
                "no distributor: give --distributor ADDR or set {} (`allot up` prints the line that does)",
                crate::env::DISTRIBUTOR
            )
        })?,
    };
    let (pki, name, worker) = (t.client.pki()?, t.client.name, t.worker);
    let w = worker.clone();
    let r =
        block_on_local(
            async move { allot::client::control_worker(&pki, &name, addr, &w, op).await },
        )?;
    match r {
        Ok(state) => {
            let what = match op {
                WorkerOp::Undrain => "takes tasks again",
                _ => "drains: it takes no new task",
            };
            println!(
                "worker {worker} {what} (state at {addr}: {})",
                crate::values::state_name(state)
            );
            Ok(())
        }
        Err(e) => bail!("worker {worker}: {e}"),
    }
}
