//! The one error type for starting any node (gateway, distributor, worker).

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The engine refused the configuration (e.g. the table's size).
    #[error(transparent)]
    Engine(#[from] allot_engine::EngineError),
    /// The user and task-class store could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] allot_engine::StoreError),
    /// The job journal could not be opened or read.
    #[error(transparent)]
    Journal(#[from] crate::distributor::journal::JournalError),
    /// The configuration is inconsistent; the message names the setting.
    #[error("{role} configuration: {message}")]
    Config {
        /// The node's role.
        role: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The users file is wrong.
    #[error("{path}: {message}")]
    Users {
        /// The file.
        path: String,
        /// What is wrong (with the line and key where known).
        message: String,
    },
    /// The metrics address (`--metrics`) could not be listened on.
    #[error("--metrics {addr}: cannot listen: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why (e.g. the address is in use).
        source: std::io::Error,
    },
    /// The runtime or a socket could not start.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}
