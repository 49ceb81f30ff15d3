//! Asks a gateway for its record of the distributor sets (what
//! `allot status --gateway` shows), as a client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use allot_wire::{ErrorMsg, MessageKind, Role, SetStatusQuery, SetStatusReply};
use bytes::Bytes;

use crate::conn::{self, ConnError};
use crate::pki::{Pki, PkiError};
use crate::transport::{self, TransportError};

/// How long the whole query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a gateway's record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayQueryError {
    /// The client's certificate could not be loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The gateway could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream failed or the gateway refused.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The answer was not a valid frame.
    #[error("bad frame from the gateway: {0}")]
    Frame(#[from] allot_wire::FrameError),
    /// No answer in [`QUERY_TIMEOUT`].
    #[error("the gateway did not answer within {QUERY_TIMEOUT:?}")]
    Timeout,
}

/// The record of the gateway at `gateway`, asked with the client
/// certificate `name` of the PKI directory `pki`. Runs on the caller's
/// runtime.
pub async fn query_status(
    pki: &Path,
    name: &str,
    gateway: SocketAddr,
) -> Result<SetStatusReply, GatewayQueryError> {
    let pki = Pki::load(pki, name)?;
    let ep = transport::endpoint(&pki, SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let r = tokio::time::timeout(QUERY_TIMEOUT, async {
        let c = transport::connect(&ep, gateway).await?;
        let mut s = conn::open(&c, &conn::hello(Role::Client, name, Vec::new())).await?;
        s.out
            .send(&SetStatusQuery { include_down: true }, &Bytes::new())?;
        // The gateway answers every client with its redirect (or why there
        // is none) first; the record follows.
        loop {
            let f = s.reader.next().await?.ok_or(ConnError::Closed)?;
            match f.kind() {
                MessageKind::SetStatusReply => {
                    let r = f.validate::<SetStatusReply>()?.to_owned_message()?;
                    s.out.close();
                    c.close(0u32.into(), b"done");
                    return Ok::<_, GatewayQueryError>(r);
                }
                MessageKind::Error | MessageKind::Redirect => {
                    if f.kind() == MessageKind::Error {
                        let e = f.validate::<ErrorMsg>()?;
                        tracing::debug!("gateway has no redirect: {}", e.get().message.as_str());
                    }
                }
                k => {
                    return Err(
                        ConnError::Forbidden(format!("unexpected {k:?} from gateway")).into(),
                    )
                }
            }
        }
    })
    .await
    .unwrap_or(Err(GatewayQueryError::Timeout));
    ep.close(0u32.into(), b"done");
    r
}
