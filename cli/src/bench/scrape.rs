//! `--scrape-ms`: the cost of metrics. The local cluster's nodes serve
//! `/metrics`, and each round runs twice, once while a thread scrapes
//! every node every N ms and once without (the order alternating between
//! rounds); the report gives both medians and their ratio. With
//! `--scrape-dashboard` the thread also reads what an open dashboard
//! polls: the JSON API of the distributors and gateways.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A thread scraping every node until stopped.
pub(super) struct Scraper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

/// What an open dashboard reads from a distributor each second.
pub(super) const DISTRIBUTOR_DASHBOARD: &[&str] = &[
    "/metrics",
    "/api/summary",
    "/api/sets",
    "/api/workers",
    "/api/waiting",
    "/api/jobs",
    "/api/series",
];
/// What an open dashboard reads from a gateway each second.
pub(super) const GATEWAY_DASHBOARD: &[&str] = &["/metrics", "/api/summary", "/api/sets"];
/// A scrape alone.
pub(super) const METRICS: &[&str] = &["/metrics"];

impl Scraper {
    /// Starts reading `targets` (each an address and its paths) every
    /// `every`.
    pub(super) fn start(
        targets: Vec<(SocketAddr, &'static [&'static str])>,
        every: Duration,
    ) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                for (a, paths) in &targets {
                    for path in paths.iter() {
                        if scrape(*a, path) {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                std::thread::sleep(every);
            }
            (ok, failed)
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it: (scrapes answered 200, scrapes failed).
    pub(super) fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((0, 0))
    }
}

/// One `GET path`, read to the end; whether it answered 200.
fn scrape(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// The A/B of a bench with `--scrape-ms`.
pub(super) struct ScrapeAb {
    pub(super) every_ms: u64,
    /// Whether the dashboard's API was read too.
    pub(super) dashboard: bool,
    /// Tasks/s of each round, scraped and not.
    pub(super) scraped: Vec<f64>,
    pub(super) unscraped: Vec<f64>,
    pub(super) scrapes_ok: u64,
    pub(super) scrapes_failed: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl ScrapeAb {
    pub(super) fn report(&self, json: bool) {
        let (a, b) = (median(&self.scraped), median(&self.unscraped));
        let ratio = if b > 0.0 { a / b } else { 0.0 };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "scrape_ms": self.every_ms,
                    "dashboard": self.dashboard,
                    "scraped_tasks_per_s": self.scraped,
                    "unscraped_tasks_per_s": self.unscraped,
                    "median_scraped": a,
                    "median_unscraped": b,
                    "ratio": ratio,
                    "scrapes_ok": self.scrapes_ok,
                    "scrapes_failed": self.scrapes_failed,
                })
            );
        } else {
            println!(
                "metrics{} scraped every {} ms: {a:.0} tasks/s vs {b:.0} unscraped, ratio {ratio:.3} \
                 (medians of {} rounds each; {} scrapes answered, {} failed)",
                if self.dashboard { " and the dashboard's API" } else { "" },
                self.every_ms,
                self.scraped.len(),
                self.scrapes_ok,
                self.scrapes_failed
            );
        }
    }
}
