//! QUIC endpoints with mutual TLS between cluster members.
//!
//! Both sides present a certificate from the cluster CA (see [`crate::pki`]);
//! a server verifies clients against the CA, a client verifies the server
//! chain against the CA for the fixed name [`SERVER_NAME`]. After the
//! handshake, [`peer_role`] and [`peer_name`] read the verified certificate,
//! so a node never has to trust what a peer says about itself.
//!
//! Every config is built on an explicit ring [`CryptoProvider`]: nothing here
//! depends on a process-wide default provider having been installed (or on
//! which one another crate might install).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot_wire::Role;
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::pki::{self, Pki, PkiError};

pub use crate::pki::SERVER_NAME;

/// The ALPN protocol id; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"allot/1";

/// How long [`connect`] waits for a handshake before giving up: long enough
/// for a loaded LAN peer, short enough that a client walking its ordered list
/// of gateways or distributors moves on quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Transport failures, each naming the address or part concerned.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// rustls refused our certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA could not be turned into a certificate verifier.
    #[error("cannot build a certificate verifier from the cluster CA: {0}")]
    Verifier(String),
    /// The crypto provider lacks the cipher suite QUIC needs for Initial packets.
    #[error("crypto provider unusable for QUIC: {0}")]
    NoInitialCipherSuite(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// quinn refused to start the connection (bad address, endpoint closed...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectError,
    },
    /// The handshake failed: the peer is down, refused our certificate, or
    /// presented one we do not trust.
    #[error("connection to {addr} failed: {source}")]
    Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectionError,
    },
    /// No handshake within the timeout: nothing answering there, or packets lost.
    #[error("connection to {addr} timed out after {after:?} (is a node listening there?)")]
    Timeout {
        /// The peer address.
        addr: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
    /// A socket operation failed (e.g. reading the local address).
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection carries no verified peer certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate does not carry a usable role.
    #[error("peer {0}")]
    PeerCertificate(#[from] PkiError),
}

/// The crypto provider every config uses: ring, built explicitly.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pki: &Pki) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    Ok(Arc::new(roots))
}

/// Server side: our certificate, and a client certificate from the cluster CA
/// required of every peer (no anonymous connections). TLS 1.3 only, as QUIC
/// requires; 0-RTT stays off because replayed task submissions are not
/// acceptable.
pub fn server_config(
    pki: &Pki,
    timeouts: &LinkTimeouts,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki)?, provider.clone())
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.chain(), pki.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config(timeouts)));
    Ok(config)
}

/// Client side: present our certificate, and accept only a server whose chain
/// leads to the cluster CA and that is valid for [`SERVER_NAME`].
pub fn client_config(
    pki: &Pki,
    timeouts: &LinkTimeouts,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(pki)?, provider.clone())
            .build()
            .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(pki.chain(), pki.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config(timeouts)));
    Ok(config)
}

/// The ceiling of MTU discovery, and the largest datagram an endpoint
/// accepts: as much of a 9000-byte (jumbo) link as quinn can use.
///
/// quinn 0.11 hands the kernel up to 10 datagrams in one GSO send
/// (`MAX_TRANSMIT_SEGMENTS`) without capping the batch at the 64 KiB a UDP
/// send may carry. With 8,952-byte datagrams a batch of eight or more
/// fails with `EMSGSIZE`, which quinn-udp drops silently: whole bursts are
/// lost, QUIC shrinks its window, and its black-hole detection falls back
/// to 1,200-byte packets for the rest of the connection (seen with 4096
/// tasks in flight: see `BENCHMARKS.md`). 6,550 bytes is the largest
/// payload for which ten fit in one send (65,507 / 10, IPv4).
pub const JUMBO_UDP_PAYLOAD: u16 = 6_550;

/// The congestion window a connection starts with: 128 KiB, 20 packets of
/// [`JUMBO_UDP_PAYLOAD`] bytes.
///
/// quinn's default (14,720 bytes, RFC 9002's ten 1,472-byte packets) holds
/// only two packets once MTU discovery has raised them to 6,550 bytes, and
/// a connection with a few hundred tasks in flight rarely fills its window
/// (it is application-limited), so the window never grows and throughput
/// at a few hundred in flight falls to a fraction (`BENCHMARKS.md` has the
/// figures). Nodes of a cluster share a LAN or
/// a host; a window sized for their bandwidth-delay product, not the
/// internet's, is the right start. Loss still shrinks it as usual.
pub const INITIAL_WINDOW: u64 = 128 * 1024;

/// How fast a node notices that a peer went silent: QUIC keep-alives every
/// `keep_alive`, and a connection with nothing heard for `idle` is closed
/// (the effective idle timeout is the smaller of both sides' values). A
/// node that restarts on the same address is noticed at once instead:
/// its new process answers the old connection's packets with a stateless
/// reset (see [`endpoint`]).
///
/// Sized for a cluster network, where a second of silence means a dead
/// process or host, not congestion: the defaults detect a death within
/// [`LinkTimeouts::DEFAULT_IDLE`]. On a congested or lossy network raise
/// both (`--idle-timeout-ms`, `--keep-alive-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimeouts {
    /// Silence after which a connection is closed.
    pub idle: Duration,
    /// Interval of keep-alive packets on an otherwise quiet connection.
    pub keep_alive: Duration,
}

impl LinkTimeouts {
    /// The default idle timeout.
    pub const DEFAULT_IDLE: Duration = Duration::from_millis(1000);
    /// The default keep-alive interval: several per idle timeout, so a
    /// lost keep-alive or two is no death.
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(200);
}

impl Default for LinkTimeouts {
    fn default() -> LinkTimeouts {
        LinkTimeouts {
            idle: LinkTimeouts::DEFAULT_IDLE,
            keep_alive: LinkTimeouts::DEFAULT_KEEP_ALIVE,
        }
    }
}

/// Transport parameters for many small frames pipelined on a few long-lived
/// streams between nodes on loopback or a LAN.
pub fn transport_config(timeouts: &LinkTimeouts) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Flow-control windows: quinn's defaults (1.25 MB per stream) are sized
    // for a 100 ms internet path; pipelined tasks in flight and result
    // payloads must never stall on credit. 8 MiB per stream, and 16 MiB per
    // connection so two busy streams (tasks one way, results the other)
    // do not starve each other.
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(16 << 20));
    // What we buffer for sending: match what the peer lets us have in flight,
    // or our own writes block before its window is used.
    t.send_window(16 << 20);
    // Streams: a connection may carry a stream per session/purpose plus
    // occasional per-request streams (status, explain); 1024 leaves headroom
    // without letting one peer hold unbounded state.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    // We use no unidirectional streams; allow a few for future use.
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    // Liveness (see LinkTimeouts): a dead peer becomes a connection error
    // quickly, so tasks on it are retried elsewhere and clients fail over.
    t.keep_alive_interval(Some(timeouts.keep_alive));
    let idle_ms = u32::try_from(timeouts.idle.as_millis()).unwrap_or(u32::MAX);
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))));
    // Before the first RTT sample quinn assumes 333 ms (an internet guess),
    // which makes the first loss on a LAN take a second to repair. 50 ms is
    // still far above any LAN RTT, so it causes no spurious retransmits.
    t.initial_rtt(Duration::from_millis(50));
    // Packet size: MTU discovery may go up to JUMBO_UDP_PAYLOAD (most of
    // a 9000-byte jumbo link, common in HPC clusters; loopback allows it).
    // Discovery probes and backs off, so on a 1500-byte network packets
    // settle at about 1450 bytes; where larger packets pass, each one (one
    // encryption, one header, one slot of a send batch) carries four times
    // as many frames. The endpoint must accept such datagrams too
    // (`endpoint_config`), or the peer's limit caps discovery at 1,472.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // Congestion control: Cubic, as quinn's default, starting from a window
    // for a cluster's links (see INITIAL_WINDOW).
    let mut cc = quinn::congestion::CubicConfig::default();
    cc.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(cc));
    // Unreliable datagrams are not used; don't reserve a buffer for them.
    t.datagram_receive_buffer_size(None);
    t
}

/// The socket buffers each endpoint asks the kernel for. A node receives
/// bursts (thousands of frames in flight from many peers); a datagram that
/// arrives while the receive buffer is full is dropped, and QUIC reads the
/// drop as congestion: it retransmits and shrinks its window, so the node
/// idles while work is queued. Linux's default (208 KiB) drops datagrams
/// at a few thousand tasks in flight on loopback. The kernel caps
/// the request at `net.core.rmem_max` / `wmem_max`; see [`endpoint`].
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Below this effective receive buffer [`endpoint`] warns: bursts will be
/// dropped and throughput will fall under load.
pub const SOCKET_BUFFER_WARN: usize = 1 << 20;

/// Endpoint-wide settings. quinn's default accepts datagrams of at most
/// 1,472 bytes and announces that to peers, which caps MTU discovery there
/// whatever [`transport_config`] allows: we accept up to
/// [`JUMBO_UDP_PAYLOAD`], so that discovery can use jumbo frames where the
/// path has them (and loopback).
///
/// Its stateless-reset key and the key of its connection ids are derived
/// from the node's private key, so a process that restarts with the same
/// certificate on the same address recognises the connection ids its
/// predecessor gave out and resets those connections: peers learn of the
/// restart from their next packet, not after an idle timeout.
pub fn endpoint_config(pki: &Pki) -> quinn::EndpointConfig {
    let secret = node_secret(pki);
    let mut c = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &secret,
    )));
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // 8,952 is within quinn's 1,200..=65,527, so this cannot fail; keep
    // quinn's default if it ever did.
    let _ = c.max_udp_payload_size(JUMBO_UDP_PAYLOAD);
    c
}

/// A secret of the node that survives its restarts: a hash of its private
/// key under a label of its own (so what is derived from it is not the
/// private key itself and serves no other purpose).
fn node_secret(pki: &Pki) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"allot quic stateless reset v1\0");
    h.update(pki.key().secret_der());
    h.finalize().into()
}

/// Binds a UDP socket and sizes its buffers (see [`SOCKET_BUFFER`]).
/// Returns the socket and its effective receive buffer in bytes.
fn bind_udp(listen: SocketAddr) -> Result<(std::net::UdpSocket, usize), TransportError> {
    let bind_err = |source| TransportError::Bind {
        addr: listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(bind_err)?;
    // Failures leave the kernel's default: the node still works, and the
    // check below reports the size it got.
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    let recv = state.recv_buffer_size((&socket).into()).unwrap_or(0);
    Ok((socket, recv))
}

/// An endpoint bound to `listen` that both accepts (with [`server_config`])
/// and dials (with [`client_config`] as its default). Use port 0 for a node
/// that only dials. Must run inside a tokio runtime.
///
/// Its socket asks for [`SOCKET_BUFFER`] bytes of buffer each way; if the
/// kernel grants less than [`SOCKET_BUFFER_WARN`] to receive, a warning
/// names the sysctl to raise.
pub fn endpoint(pki: &Pki, listen: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    endpoint_with(pki, listen, &LinkTimeouts::default())
}

/// [`endpoint`] with the given liveness timeouts.
pub fn endpoint_with(
    pki: &Pki,
    listen: SocketAddr,
    timeouts: &LinkTimeouts,
) -> Result<quinn::Endpoint, TransportError> {
    let server = server_config(pki, timeouts)?;
    let client = client_config(pki, timeouts)?;
    let (socket, recv_buffer) = bind_udp(listen)?;
    if recv_buffer < SOCKET_BUFFER_WARN {
        tracing::warn!(
            "UDP receive buffer is {recv_buffer} bytes (asked for {SOCKET_BUFFER}): bursts of \
             traffic will be dropped and retransmitted; raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={SOCKET_BUFFER})"
        );
    }
    let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Bind {
        addr: listen,
        source: std::io::Error::other("no async runtime (call inside tokio)"),
    })?;
    let mut ep = quinn::Endpoint::new(endpoint_config(pki), Some(server), socket, runtime)
        .map_err(|source| TransportError::Bind {
            addr: listen,
            source,
        })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Closes every connection of `ep` with `Unavailable` and `reason`, and
/// waits up to `linger` for the peers to hear it (so they fail over at
/// once instead of after their idle timeout).
pub async fn close_endpoint(ep: &quinn::Endpoint, reason: &[u8], linger: Duration) {
    ep.close(codes::varint(allot_wire::ErrorCode::Unavailable), reason);
    let _ = tokio::time::timeout(linger, ep.wait_idle()).await;
}

/// Dials `addr` with the endpoint's default client config, verifying the
/// server as a cluster member; gives up after [`CONNECT_TIMEOUT`].
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    let connecting = ep
        .connect(addr, SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    let t0 = std::time::Instant::now();
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        // The handshake heard nothing for the idle timeout (shorter than
        // CONNECT_TIMEOUT): that is no answer, not a refusal.
        Ok(Err(quinn::ConnectionError::TimedOut)) => Err(TransportError::Timeout {
            addr,
            after: t0.elapsed(),
        }),
        Ok(Err(source)) => Err(TransportError::Handshake { addr, source }),
        Err(_) => Err(TransportError::Timeout {
            addr,
            after: CONNECT_TIMEOUT,
        }),
    }
}

/// The peer's verified end-entity certificate.
fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// The role the peer's certificate was issued for. The handshake already
/// verified the certificate against the cluster CA, so this is the role the
/// CA granted, whatever the peer claims later in `Hello`.
pub fn peer_role(conn: &quinn::Connection) -> Result<Role, TransportError> {
    let cert = peer_cert(conn).ok_or(TransportError::NoPeerCertificate)?;
    Ok(pki::role_of(&cert)?)
}

/// The node name in the peer's certificate, for logs and status.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    pki::name_of(&peer_cert(conn)?)
}

/// QUIC application error codes for closing connections and resetting or
/// stopping streams, one per [`ErrorCode`](allot_wire::ErrorCode).
///
/// The numbers are spelled out rather than taken from the enum's order, so
/// they stay stable on the wire if variants are added or reordered.
pub mod codes {
    use allot_wire::ErrorCode;
    use quinn::VarInt;

    /// Normal close: the node is done with the connection, nothing went wrong.
    pub const NORMAL: VarInt = VarInt::from_u32(0);

    /// The QUIC code for `code`.
    pub fn varint(code: ErrorCode) -> VarInt {
        VarInt::from_u32(match code {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::Forbidden => 2,
            ErrorCode::Malformed => 3,
            ErrorCode::TooLarge => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::UnknownApp => 6,
            ErrorCode::NoMatch => 7,
            ErrorCode::Overloaded => 8,
            ErrorCode::Unavailable => 9,
            ErrorCode::Internal => 10,
            // A variant added to allot-wire after this table: close with
            // "internal" rather than an unknown number.
            _ => 10,
        })
    }

    /// The [`ErrorCode`] for a QUIC code a peer closed or reset with; `None`
    /// for [`NORMAL`] or an unknown number.
    pub fn error_code(code: VarInt) -> Option<ErrorCode> {
        Some(match code.into_inner() {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::Forbidden,
            3 => ErrorCode::Malformed,
            4 => ErrorCode::TooLarge,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::UnknownApp,
            7 => ErrorCode::NoMatch,
            8 => ErrorCode::Overloaded,
            9 => ErrorCode::Unavailable,
            10 => ErrorCode::Internal,
            _ => return None,
        })
    }
}
