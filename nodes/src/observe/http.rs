//! The HTTP/1.1 server of `--metrics`: hyper on a tokio listener, served
//! by tasks on the node's own current-thread runtime, so a scrape reads
//! the core directly (between two events, through the shell's `RefCell`).
//!
//! Every route is a read: nothing here submits, cancels or drains (an
//! unauthenticated job API on a dashboard port is how Ray clusters were
//! taken over). Methods other than GET and HEAD get 405, unknown paths
//! 404, and with a token every path but `/healthz` asks for it (see
//! [`Access`]). Routes live in one table, [`ROUTES`]: `/metrics`,
//! `/healthz`, and on a distributor or gateway the dashboard page at `/`
//! and the JSON API under `/api/` (see [`super::api`]) that it polls.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (one more is
//! closed as soon as it is accepted), request heads of at most
//! [`MAX_HEAD`] bytes (hyper answers 431 past it), a head read within
//! [`HEAD_TIMEOUT`], and a connection lives at most [`CONNECTION_LIFETIME`]
//! (a scraper that keeps it alive opens a new one).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, REFERRER_POLICY, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};

use super::api::Api;
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
    /// With the token, if there is one, unless `scrape_open`.
    Scrape,
    /// With the token, if there is one, whatever `scrape_open` says: the
    /// page and the JSON API show the workers, their attributes and the
    /// users' tasks.
    Guarded,
}

/// Which node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Distributor,
    Gateway,
    Worker,
}

type Body = Full<Bytes>;

/// What a route answers.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Metrics,
    Healthz,
    Page,
    Api(Api),
}

/// One path served.
struct Route {
    path: &'static str,
    access: Access,
    kind: Kind,
    /// The nodes that serve it (on the others it is unknown: 404).
    nodes: &'static [Node],
}

const ALL: &[Node] = &[Node::Distributor, Node::Gateway, Node::Worker];
const DASHBOARD: &[Node] = &[Node::Distributor, Node::Gateway];
const DISTRIBUTOR: &[Node] = &[Node::Distributor];

/// Every path served (exact matches; a query string is ignored but for
/// `token`).
const ROUTES: &[Route] = &[
    Route {
        path: "/metrics",
        access: Access::Scrape,
        kind: Kind::Metrics,
        nodes: ALL,
    },
    Route {
        path: "/healthz",
        access: Access::Open,
        kind: Kind::Healthz,
        nodes: ALL,
    },
    Route {
        path: "/",
        access: Access::Guarded,
        kind: Kind::Page,
        nodes: DASHBOARD,
    },
    Route {
        path: "/api/summary",
        access: Access::Guarded,
        kind: Kind::Api(Api::Summary),
        nodes: DASHBOARD,
    },
    Route {
        path: "/api/sets",
        access: Access::Guarded,
        kind: Kind::Api(Api::Sets),
        nodes: DASHBOARD,
    },
    Route {
        path: "/api/workers",
        access: Access::Guarded,
        kind: Kind::Api(Api::Workers),
        nodes: DISTRIBUTOR,
    },
    Route {
        path: "/api/waiting",
        access: Access::Guarded,
        kind: Kind::Api(Api::Waiting),
        nodes: DISTRIBUTOR,
    },
    Route {
        path: "/api/jobs",
        access: Access::Guarded,
        kind: Kind::Api(Api::Jobs),
        nodes: DISTRIBUTOR,
    },
    Route {
        path: "/api/series",
        access: Access::Guarded,
        kind: Kind::Api(Api::Series),
        nodes: DISTRIBUTOR,
    },
];

/// The dashboard: one self-contained page (its script and style inline,
/// nothing fetched from elsewhere) that polls the JSON API.
const PAGE: &str = include_str!("dashboard.html");

/// What the page may do: its own inline script and style, fetches to
/// this origin, nothing else (no frame, form, plugin or other origin).
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// How often [`Source::tick`] runs.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// What a node shows: read at each request, between two of its events.
pub(crate) trait Source {
    /// Which node it is (which routes it serves).
    fn node(&self) -> Node;
    /// Its metric families now.
    fn families(&self) -> Vec<Family>;
    /// The JSON of `api` now; `None` if this node has none.
    fn api(&self, api: Api) -> Option<serde_json::Value>;
    /// Called every [`TICK`] while served (the distributor samples its
    /// counters for the charts).
    fn tick(&self) {}
}

/// What the handlers read.
pub(crate) type Read = Rc<dyn Source>;

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

    /// Serves (and ticks `read`) until the returned task is aborted; must
    /// run inside a `LocalSet`. Returns the address served too.
    pub(crate) fn spawn(
        self,
        read: Read,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let addr = self.listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        if read.node() == Node::Worker {
            tracing::info!(%addr, "metrics served on http://{addr}/metrics");
        } else {
            tracing::info!(%addr, "metrics on http://{addr}/metrics, the dashboard on http://{addr}/");
        }
        let ctx = Rc::new(Ctx {
            read,
            token: self.token,
            scrape_open: self.scrape_open,
        });
        let task = tokio::task::spawn_local(async move {
            let ticks = {
                let ctx = ctx.clone();
                async move {
                    let mut every = tokio::time::interval(TICK);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        ctx.read.tick();
                    }
                }
            };
            tokio::join!(accept_loop(listener, ctx), ticks);
        });
        Ok((addr, task))
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
    let node = ctx.read.node();
    let Some(route) = ROUTES
        .iter()
        .find(|r| r.path == req.uri().path() && r.nodes.contains(&node))
    else {
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
    if !ctx.allows(route.access, req.headers(), req.uri().query()) {
        let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"allot\""),
        );
        return r;
    }
    match route.kind {
        Kind::Metrics => metrics(ctx, req),
        Kind::Healthz => text(StatusCode::OK, "ok\n"),
        Kind::Page => page(),
        Kind::Api(api) => match ctx.read.api(api) {
            Some(v) => json(&v),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

impl Ctx {
    /// Whether the request may read a route of `access`: no token set,
    /// an open route, or the token given as `Authorization: Bearer TOKEN`
    /// or as the query parameter `token` (for a browser's address bar).
    fn allows(&self, access: Access, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        match access {
            Access::Open => return true,
            Access::Scrape if self.scrape_open => return true,
            Access::Scrape | Access::Guarded => {}
        }
        let header = headers
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|given| {
                let scheme = given.get(..7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| same(&digest(&given[7..]), token))
            })
            .unwrap_or(false);
        let param = query
            .and_then(token_param)
            .is_some_and(|given| same(&digest(&given), token));
        header | param
    }
}

/// The value of the query parameter `token`, percent-decoded (`None`
/// without one, or with a bad escape).
fn token_param(query: &str) -> Option<Vec<u8>> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
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

/// Headers of the page and the API: never cached (live data, maybe a
/// token in the URL), not sniffed, no referrer sent on.
fn private(r: &mut Response<Body>, kind: &'static str) {
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    private(&mut r, "text/html; charset=utf-8");
    r.headers_mut()
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    r
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    private(&mut r, "application/json");
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
            super::encode(ctx.read.families()),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            super::encode_text(ctx.read.families()),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
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

    #[test]
    fn the_token_parameter_is_percent_decoded() {
        assert_eq!(token_param("token=abc"), Some(b"abc".to_vec()));
        assert_eq!(token_param("x=1&token=a%2Bb%25"), Some(b"a+b%".to_vec()));
        assert_eq!(token_param("x=1"), None);
        assert_eq!(token_param("token=a%2"), None);
        assert_eq!(token_param("token=a%zz"), None);
        assert_eq!(token_param("token="), Some(Vec::new()));
    }
}
