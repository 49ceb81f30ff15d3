//! The HTTP/1.1 server of `--metrics`: hyper on a tokio listener, served
//! by tasks on the node's own current-thread runtime, so a scrape reads
//! the core directly (between two events, through the shell's `RefCell`).
//!
//! Every route is a read: nothing here submits, cancels or drains (an
//! unauthenticated job API on a dashboard port is how Ray clusters were
//! taken over). Methods other than GET and HEAD get 405, unknown paths
//! 404, and with a token every path but `/healthz` asks for it (see
//! [`Access`]). Routes live in one table, [`ROUTES`], so that a page at
//! `/` and a JSON API under `/api/` are entries of it.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (one more is
//! closed as soon as it is accepted), request heads of at most
//! [`MAX_HEAD`] bytes (hyper answers 431 past it), a head read within
//! [`HEAD_TIMEOUT`], and a connection lives at most [`CONNECTION_LIFETIME`]
//! (a scraper that keeps it alive opens a new one).

use std::cell::Cell;
use std::convert::Infallible;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};

use super::{Family, MetricsConfig};
use crate::NodeError;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes of a request head at most (hyper's smallest read buffer).
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection is served at most.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Bytes of a token file at most.
const MAX_TOKEN: u64 = 4096;

/// Who may read a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (liveness carries no data).
    Open,
    /// With the token, if there is one, unless `scrape_open`. (The page
    /// and the JSON API, when they come, take the token whatever
    /// `scrape_open` says.)
    Scrape,
}

type Body = Full<Bytes>;

/// What a route answers, from the node's current families.
type Handler = fn(&Ctx, &Request<Incoming>) -> Response<Body>;

/// One path served.
struct Route {
    path: &'static str,
    access: Access,
    handler: Handler,
}

/// Every path served (exact matches).
const ROUTES: &[Route] = &[
    Route {
        path: "/metrics",
        access: Access::Scrape,
        handler: metrics,
    },
    Route {
        path: "/healthz",
        access: Access::Open,
        handler: healthz,
    },
];

/// What the handlers read: the node's families at this instant.
pub(crate) type Read = Rc<dyn Fn() -> Vec<Family>>;

struct Ctx {
    read: Read,
    /// SHA-256 of the token: compared digest to digest, in constant time.
    token: Option<[u8; 32]>,
    scrape_open: bool,
}

/// A metrics listener bound at node start (so that an address in use is
/// an error of the start, not a log line later).
pub(crate) struct Bound {
    listener: std::net::TcpListener,
    token: Option<[u8; 32]>,
    scrape_open: bool,
}

impl Bound {
    /// Binds `cfg.addr` and reads the token file.
    pub(crate) fn bind(cfg: &MetricsConfig, role: &'static str) -> Result<Bound, NodeError> {
        let token = cfg
            .token_file
            .as_deref()
            .map(|p| read_token(p).map_err(|message| NodeError::Config { role, message }))
            .transpose()?;
        let listener =
            std::net::TcpListener::bind(cfg.addr).map_err(|source| NodeError::Metrics {
                addr: cfg.addr,
                source,
            })?;
        listener.set_nonblocking(true)?;
        Ok(Bound {
            listener,
            token: token.map(|t| digest(t.as_bytes())),
            scrape_open: cfg.scrape_open,
        })
    }

    /// Serves until the returned task is aborted; must run inside a
    /// `LocalSet`.
    pub(crate) fn spawn(self, read: Read) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let addr = self.listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let ctx = Rc::new(Ctx {
            read,
            token: self.token,
            scrape_open: self.scrape_open,
        });
        tracing::info!(%addr, "metrics served on http://{addr}/metrics");
        Ok(tokio::task::spawn_local(accept_loop(listener, ctx)))
    }
}

/// The token in `path`: its content without surrounding white space;
/// visible ASCII only (it travels in a header).
fn read_token(path: &Path) -> Result<String, String> {
    let show = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("--metrics-token {show}: {e}"))?;
    if meta.len() > MAX_TOKEN {
        return Err(format!(
            "--metrics-token {show}: {} bytes, more than the {MAX_TOKEN} a token may have",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("--metrics-token {show}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--metrics-token {show}: the file is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--metrics-token {show}: a token is visible ASCII without spaces"
        ));
    }
    Ok(token.to_owned())
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Equal digests, compared without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn accept_loop(listener: tokio::net::TcpListener, ctx: Rc<Ctx>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (ctx, open) = (ctx.clone(), open.clone());
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| {
                let r = answer(&req, &ctx);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!("metrics: connection ended: {e}");
            }
            open.set(open.get() - 1);
        });
    }
}

fn answer(req: &Request<Incoming>, ctx: &Ctx) -> Response<Body> {
    let Some(route) = ROUTES.iter().find(|r| r.path == req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET and HEAD only\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if !ctx.allows(route.access, req.headers()) {
        let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"allot\""),
        );
        return r;
    }
    (route.handler)(ctx, req)
}

impl Ctx {
    fn allows(&self, access: Access, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        match access {
            Access::Open => return true,
            Access::Scrape if self.scrape_open => return true,
            Access::Scrape => {}
        }
        let Some(given) = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some(scheme) = given.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && same(&digest(&given[7..]), token)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else
/// the Prometheus text format 0.0.4.
fn metrics(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    let openmetrics = req.headers().get_all(ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(23)
            .any(|w| w == b"application/openmetrics")
    });
    let (body, kind) = if openmetrics {
        (
            super::encode((ctx.read)()),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            super::encode_text((ctx.read)()),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn healthz(_: &Ctx, _: &Request<Incoming>) -> Response<Body> {
    text(StatusCode::OK, "ok\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same(&digest(b"secret"), &digest(b"secret")));
        assert!(!same(&digest(b"secret"), &digest(b"secreT")));
        assert!(!same(&digest(b""), &digest(b"secret")));
    }
}
