//! `--metrics` with real processes: every node's `/metrics` passes
//! `promtool check metrics`, a real Prometheus scrapes a distributor and
//! reads back the tasks it ran, and the HTTP layer is read-only, guarded
//! by the token where asked and robust to bad requests.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package
//! (`.ci/run` installs it); the tests that need them fail, saying so, when
//! they are missing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A free loopback TCP port.
fn tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Sends `raw` (a whole request) and reads the answer to the end: (status
/// code, head, body). Status 0 when the connection was closed without one.
fn http_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// `METHOD path` with extra header lines, connection closed after it.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    http_raw(addr, req.as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http(addr, "GET", path, "");
    (code, body)
}

/// Fails with a clear message when a tool of Debian's `prometheus`
/// package is missing.
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` not found: install Debian's prometheus package (apt-get install -y prometheus; .ci/run does)"
    );
    name.to_owned()
}

/// Waits until `addr` answers `/healthz`.
fn wait_healthy(addr: SocketAddr) {
    eventually(
        &format!("{addr}/healthz answers"),
        Duration::from_secs(30),
        || {
            TcpStream::connect(addr).ok()?;
            (get(addr, "/healthz") == (200, "ok\n".to_owned())).then_some(())
        },
    );
}

/// A gateway, a distributor (set `main`) and a worker, each serving
/// metrics; `extra` flags for the distributor.
struct Cluster {
    _dir: Dir,
    pki: String,
    gw: SocketAddr,
    gw_metrics: SocketAddr,
    dist_metrics: SocketAddr,
    worker_metrics: SocketAddr,
    _procs: Vec<Proc>,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        let dir = Dir::new(tag);
        let pki = pki(
            &dir.0,
            &[
                ("gw-1", "gateway"),
                ("dist-1", "distributor"),
                ("w-1", "worker"),
                ("client", "client"),
            ],
        );
        let (gw, dist) = (port(), port());
        let (gm, dm, wm) = (tcp_port(), tcp_port(), tcp_port());
        let (g, d) = (gw.to_string(), dist.to_string());
        let (gms, dms, wms) = (gm.to_string(), dm.to_string(), wm.to_string());
        let data = dir.0.join("dist-1");
        let data = data.to_str().unwrap().to_owned();
        let mut procs = vec![spawn(&[
            "gateway",
            "--name",
            "gw-1",
            "--listen",
            &g,
            "--pki",
            &pki,
            "--metrics",
            &gms,
        ])];
        procs.push(spawn(&[
            "distributor",
            "--name",
            "dist-1",
            "--listen",
            &d,
            "--pki",
            &pki,
            "--set-name",
            "main",
            "--gateways",
            &g,
            "--report-ms",
            "200",
            "--data-dir",
            &data,
            "--metrics",
            &dms,
        ]));
        procs.push(spawn(&[
            "worker",
            "--name",
            "w-1",
            "--pki",
            &pki,
            "--join",
            &d,
            "--apps",
            "echo",
            "--metrics",
            &wms,
        ]));
        let c = Cluster {
            _dir: dir,
            pki,
            gw,
            gw_metrics: gm,
            dist_metrics: dm,
            worker_metrics: wm,
            _procs: procs,
        };
        for a in [gm, dm, wm] {
            wait_healthy(a);
        }
        let (p, g) = (c.pki.clone(), c.gw.to_string());
        eventually(
            "the member is up with its worker",
            Duration::from_secs(30),
            || {
                let out = run(&["status", "--pki", &p, "--gateway", &g, "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                v.as_array()?
                    .iter()
                    .any(|m| m["name"] == "dist-1" && m["state"] == "up" && m["workers_up"] == 1)
                    .then_some(())
            },
        );
        c
    }

    /// Runs `n` echo tasks, one `allot submit` each.
    fn run_tasks(&self, n: usize) {
        let g = self.gw.to_string();
        for _ in 0..n {
            ok(&[
                "submit",
                "--pki",
                &self.pki,
                "--gateway",
                &g,
                "--app",
                "echo",
            ]);
        }
    }
}

/// The value of the sample named exactly `series` (name and labels) in
/// a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_check(page: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn every_node_serves_metrics_that_promtool_accepts() {
    let promtool = tool("promtool");
    let c = Cluster::start("metrics");
    c.run_tasks(3);
    let (code, dist) = get(c.dist_metrics, "/metrics");
    assert_eq!(code, 200, "{dist}");
    let (code, gw) = get(c.gw_metrics, "/metrics");
    assert_eq!(code, 200, "{gw}");
    // The member's first report or heartbeat comes a report period after
    // it registered, which may be after the tasks ran.
    let gw = eventually(
        "the gateway ingested a report",
        Duration::from_secs(10),
        || {
            let (_, page) = get(c.gw_metrics, "/metrics");
            sample(&page, "allot_member_reports_total")
                .is_some_and(|n| n > 0.0)
                .then_some(page)
        },
    );
    // The worker's counters reach the page with its next scrape.
    let worker = eventually("the worker counted 3 runs", Duration::from_secs(10), || {
        let (_, page) = get(c.worker_metrics, "/metrics");
        (sample(
            &page,
            "allot_worker_tasks_total{app=\"echo\",status=\"ok\"}",
        ) == Some(3.0))
        .then_some(page)
    });
    for (node, page) in [
        ("distributor", &dist),
        ("gateway", &gw),
        ("worker", &worker),
    ] {
        let (accepted, said) = promtool_check(page);
        assert!(
            accepted,
            "{promtool} rejects the {node}'s metrics: {said}\n{page}"
        );
    }
    assert_eq!(
        sample(&dist, "allot_tasks_completed_total{status=\"ok\"}"),
        Some(3.0),
        "{dist}"
    );
    assert_eq!(
        sample(&dist, "allot_tasks_submitted_total"),
        Some(3.0),
        "{dist}"
    );
    assert_eq!(
        sample(&dist, "allot_workers{state=\"up\"}"),
        Some(1.0),
        "{dist}"
    );
    assert_eq!(
        sample(&dist, "allot_task_latency_seconds_count"),
        Some(3.0),
        "{dist}"
    );
    assert!(
        sample(&dist, "allot_deltas_total{outcome=\"applied\"}").is_some(),
        "{dist}"
    );
    assert!(
        sample(&gw, "allot_redirects_total{set=\"main\"}").is_some_and(|n| n >= 3.0),
        "{gw}"
    );
    assert_eq!(
        sample(&gw, "allot_set_members{set=\"main\",state=\"up\"}"),
        Some(1.0),
        "{gw}"
    );
    assert!(
        sample(&gw, "allot_member_reports_total").is_some_and(|n| n > 0.0),
        "{gw}"
    );
    assert_eq!(
        sample(&worker, "allot_worker_slots_free"),
        Some(4.0),
        "{worker}"
    );
    assert_eq!(
        sample(
            &worker,
            "allot_worker_run_duration_seconds_count{app=\"echo\"}"
        ),
        Some(3.0),
        "{worker}"
    );
}

#[test]
fn the_http_layer_is_read_only_and_survives_bad_requests() {
    let dir = Dir::new("metrics-http");
    let pki = pki(&dir.0, &[("dist-1", "distributor")]);
    let m = tcp_port();
    let (l, ms) = (port().to_string(), m.to_string());
    let data = dir.0.join("data");
    let _d = spawn(&[
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &l,
        "--pki",
        &pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics",
        &ms,
    ]);
    wait_healthy(m);
    for path in ["/metrics", "/healthz"] {
        let (code, head, body) = http(m, "GET", path, "");
        assert_eq!(code, 200, "GET {path}: {head}");
        assert!(!body.is_empty(), "GET {path}");
        // HEAD: the same head, no body.
        let (code, head, body) = http(m, "HEAD", path, "");
        assert_eq!(code, 200, "HEAD {path}: {head}");
        assert_eq!(body, "", "HEAD {path}");
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let (code, head, _) = http(m, method, path, "");
            assert_eq!(code, 405, "{method} {path}: {head}");
            assert!(
                head.to_ascii_lowercase().contains("allow: get, head"),
                "{method} {path}: {head}"
            );
        }
    }
    // The Prometheus text format by default, OpenMetrics when asked.
    let (code, head, body) = http(m, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE allot_tasks_submitted_total counter"),
        "{body}"
    );
    let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
    let (code, head, body) = http(m, "GET", "/metrics", accept);
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        body.contains("# TYPE allot_tasks_submitted counter"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (code, head, _) = http(m, "GET", "/nothing-here", "");
    assert_eq!(code, 404, "{head}");
    // Not HTTP at all, then a head too large: an error status, and the
    // node keeps serving.
    let (code, head, _) = http_raw(m, b"HELLO THERE\r\n\r\n");
    assert_eq!(code, 400, "{head}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (code, head, _) = http_raw(m, huge.as_bytes());
    assert!(code == 431 || code == 400, "{head}");
    // Half a request, then the connection dropped.
    drop(TcpStream::connect(m).and_then(|mut s| s.write_all(b"GET /metr")));
    assert_eq!(get(m, "/healthz"), (200, "ok\n".to_owned()));
    let (code, page) = get(m, "/metrics");
    assert_eq!(code, 200);
    assert!(page.contains("allot_tasks_submitted_total 0"), "{page}");
}

fn distributor_with(dir: &Path, pki: &str, metrics: SocketAddr, extra: &[&str]) -> Proc {
    let (l, ms) = (port().to_string(), metrics.to_string());
    let data = dir.join(format!("data-{}", metrics.port()));
    let mut args = vec![
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &l,
        "--pki",
        pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics",
        &ms,
    ];
    args.extend(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&args)
}

#[test]
fn a_metrics_token_guards_the_scrape_unless_left_open() {
    let dir = Dir::new("metrics-token");
    let pki = pki(&dir.0, &[("dist-1", "distributor")]);
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let t = token.to_str().unwrap();
    let m = tcp_port();
    let _d = distributor_with(&dir.0, &pki, m, &["--metrics-token", t]);
    wait_healthy(m);
    let (code, head, _) = http(m, "GET", "/metrics", "");
    assert_eq!(code, 401, "no token: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    let (code, head, _) = http(
        m,
        "GET",
        "/metrics",
        "Authorization: Bearer s3cret-tokeN\r\n",
    );
    assert_eq!(code, 401, "wrong token: {head}");
    let (code, head, _) = http(
        m,
        "GET",
        "/metrics",
        "Authorization: Basic s3cret-token\r\n",
    );
    assert_eq!(code, 401, "another scheme: {head}");
    let (code, head, body) = http(
        m,
        "GET",
        "/metrics",
        "Authorization: Bearer s3cret-token\r\n",
    );
    assert_eq!(code, 200, "right token: {head}");
    assert!(body.contains("allot_tasks_submitted_total"), "{body}");
    // Even with the token, writes are refused.
    let (code, _, _) = http(
        m,
        "POST",
        "/metrics",
        "Authorization: Bearer s3cret-token\r\n",
    );
    assert_eq!(code, 405);

    // --metrics-scrape-open: /metrics open, the token still read.
    let m2 = tcp_port();
    let _d2 = distributor_with(
        &dir.0,
        &pki,
        m2,
        &["--metrics-token", t, "--metrics-scrape-open"],
    );
    wait_healthy(m2);
    let (code, _, body) = http(m2, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(body.contains("allot_tasks_submitted_total"), "{body}");

    // An empty token file is a start error naming the flag.
    std::fs::write(&token, "\n").unwrap();
    let data = dir.0.join("data-empty");
    let err = fails(&[
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &port().to_string(),
        "--pki",
        &pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics",
        &tcp_port().to_string(),
        "--metrics-token",
        t,
    ]);
    assert!(
        err.contains("--metrics-token") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn a_metrics_address_in_use_is_a_start_error() {
    let dir = Dir::new("metrics-in-use");
    let pki = pki(&dir.0, &[("dist-1", "distributor"), ("w-1", "worker")]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.0.join("data");
    let err = fails(&[
        "distributor",
        "--name",
        "dist-1",
        "--listen",
        &port().to_string(),
        "--pki",
        &pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics",
        &addr,
    ]);
    assert!(err.contains(&format!("--metrics {addr}")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
    let err = fails(&[
        "worker",
        "--name",
        "w-1",
        "--pki",
        &pki,
        "--join",
        &port().to_string(),
        "--metrics",
        &addr,
    ]);
    assert!(err.contains(&format!("--metrics {addr}")), "{err}");
}

#[test]
fn prometheus_scrapes_the_tasks_a_cluster_ran() {
    let prometheus = tool("prometheus");
    let c = Cluster::start("metrics-prom");
    let prom_dir = Dir::new("prometheus");
    let web = tcp_port();
    let config = prom_dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: allot\n    static_configs:\n      - targets: ['{}']\n",
            c.dist_metrics
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    const TASKS: usize = 7;
    c.run_tasks(TASKS);
    let query = "/api/v1/query?query=sum(allot_tasks_completed_total)";
    let seen = eventually(
        "Prometheus reports the tasks run",
        Duration::from_secs(60),
        || {
            TcpStream::connect(web).ok()?;
            let (code, body) = get(web, query);
            if code != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n == TASKS as f64).then_some(n)
        },
    );
    assert_eq!(seen, TASKS as f64);
    // Labelled by status, all ok.
    let (_, body) = get(
        web,
        "/api/v1/query?query=allot_tasks_completed_total%7Bstatus%3D%22ok%22%7D",
    );
    assert!(body.contains(&format!("\"{TASKS}\"")), "{body}");
}

#[test]
fn bench_scrapes_every_node_run_as_a_process_and_the_dashboard_api() {
    let bench = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "--local",
            "--processes",
            "--scrape-ms",
            "50",
            "--tasks",
            "300",
            "--concurrency",
            "8",
            "--rounds",
            "2",
            "--json",
        ];
        args.extend(extra);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("scrapes_ok").is_some())
            .unwrap_or_else(|| panic!("no scrape report: {text}"))
    };
    // A gateway, a distributor and two workers, each scraped at least once
    // in each of the two scraped runs; none failed.
    let ab = bench(&[]);
    assert!(ab["scrapes_ok"].as_u64().is_some_and(|n| n >= 8), "{ab}");
    assert_eq!(ab["scrapes_failed"], 0, "{ab}");
    assert_eq!(ab["dashboard"], false, "{ab}");
    assert_eq!(ab["scraped_tasks_per_s"].as_array().map(Vec::len), Some(2));
    assert!(ab["ratio"].as_f64().is_some_and(|r| r > 0.0), "{ab}");
    // With the dashboard's API: six paths more on the distributor, two on
    // the gateway, each answered.
    let ab = bench(&["--scrape-dashboard"]);
    assert!(ab["scrapes_ok"].as_u64().is_some_and(|n| n >= 24), "{ab}");
    assert_eq!(ab["scrapes_failed"], 0, "{ab}");
    assert_eq!(ab["dashboard"], true, "{ab}");
}
