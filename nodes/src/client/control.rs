//! `allot drain` and `allot undrain`: asks a distributor to drain one of
//! its workers, or to let it take tasks again, without stopping it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use allot_wire::{MessageKind, Role, WorkerControl, WorkerControlReply, WorkerOp, WorkerState};
use bytes::Bytes;

use crate::conn::{self, ConnError};
use crate::pki::{Pki, PkiError};
use crate::transport::{self, TransportError};

/// How long the whole request may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a worker could not be drained or undrained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The client's certificate could not be loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The distributor could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream failed or the distributor refused the client.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The answer was not a valid frame.
    #[error("bad frame from the distributor: {0}")]
    Frame(#[from] allot_wire::FrameError),
    /// The distributor answered that it could not (unknown worker, worker
    /// not connected).
    #[error("{0}")]
    Refused(String),
    /// No answer in [`CONTROL_TIMEOUT`].
    #[error("the distributor did not answer within {CONTROL_TIMEOUT:?}")]
    Timeout,
}

/// Asks the distributor at `distributor`, with the client certificate
/// `name` of the PKI directory `pki`, to apply `op` to its worker
/// `worker`. Returns the worker's state at that distributor afterwards.
/// Runs on the caller's runtime.
pub async fn control_worker(
    pki: &Path,
    name: &str,
    distributor: SocketAddr,
    worker: &str,
    op: WorkerOp,
) -> Result<WorkerState, ControlError> {
    let pki = Pki::load(pki, name)?;
    let ep = transport::endpoint(&pki, SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let r = tokio::time::timeout(CONTROL_TIMEOUT, async {
        let c = transport::connect(&ep, distributor).await?;
        let mut s = conn::open(&c, &conn::hello(Role::Client, name, Vec::new())).await?;
        let msg = WorkerControl {
            request: 1,
            worker: worker.to_owned(),
            op,
        };
        s.out.send(&msg, &Bytes::new())?;
        let f = s.reader.next().await?.ok_or(ConnError::Closed)?;
        s.out.close();
        c.close(0u32.into(), b"done");
        match f.kind() {
            MessageKind::WorkerControlReply => {
                let r = f.validate::<WorkerControlReply>()?.to_owned_message()?;
                if r.error.is_empty() {
                    Ok(r.state)
                } else {
                    Err(ControlError::Refused(r.error))
                }
            }
            MessageKind::Error => Err(conn::refusal(f)?.into()),
            k => Err(ConnError::Forbidden(format!("unexpected {k:?} from the distributor")).into()),
        }
    })
    .await
    .unwrap_or(Err(ControlError::Timeout));
    ep.close(0u32.into(), b"done");
    r
}
