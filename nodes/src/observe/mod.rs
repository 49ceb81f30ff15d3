//! What a node shows over HTTP: `/metrics` (Prometheus text),
//! `/healthz`, and on a distributor or gateway a dashboard page at `/`
//! with the JSON API it polls under `/api/`; all read-only, on the
//! address of `--metrics`.
//!
//! The cores keep their counters as plain numbers and
//! [`Log2Histogram`]s (no metrics library in a core, no atomics: each is
//! single-threaded); at each scrape the shell reads them through its
//! `RefCell`, builds [`Family`]s from them and encodes those with
//! prometheus-client. Nothing served here changes the node: every route
//! is a read (see [`http`]).

pub(crate) mod api;
mod family;
mod histogram;
pub(crate) mod http;
pub(crate) mod nodes;
mod series;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use api::{MAX_API_JOBS, MAX_API_WAITING, MAX_API_WORKERS};
pub use family::{encode, encode_text, Family, Value};
pub use histogram::{Log2Histogram, BUCKETS};
pub use series::{Point, Series, SERIES_LEN};
pub use token::{read_token, token_query, TokenFileError, MAX_TOKEN};

/// How a node serves its metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Where to listen (HTTP/1.1, plain text: put it behind TLS or on a
    /// trusted network).
    pub addr: SocketAddr,
    /// A file holding a bearer token: with it, every path but `/healthz`
    /// asks for `Authorization: Bearer TOKEN` (or the query parameter
    /// `token`, for a browser's address bar).
    pub token_file: Option<PathBuf>,
    /// With a token, leaves `/metrics` open all the same (a Prometheus on
    /// a trusted network scrapes without one); the dashboard and its API
    /// still ask for the token.
    pub scrape_open: bool,
}

impl MetricsConfig {
    /// Served at `addr`, no token.
    pub fn new(addr: SocketAddr) -> MetricsConfig {
        MetricsConfig {
            addr,
            token_file: None,
            scrape_open: false,
        }
    }
}
