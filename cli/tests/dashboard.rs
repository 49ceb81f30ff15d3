//! The dashboard and its JSON API on the metrics address, with real
//! processes: every path answers with its documented shape and the
//! cluster's real figures, the token guards the page and the API (header
//! or `?token=`) even where `/metrics` is left open, and nothing served
//! takes a write or falls over on a bad request.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::{get, get_json, http, http_raw, tcp_port, wait_healthy};
use common::*;
use serde_json::Value;

/// The paths of the API a distributor serves.
const DISTRIBUTOR_API: [&str; 6] = [
    "/api/summary",
    "/api/sets",
    "/api/workers",
    "/api/waiting",
    "/api/jobs",
    "/api/series",
];

/// A gateway, a distributor (set `main`) and a worker `w-1` with one
/// slot, the gateway and the distributor serving their dashboards.
struct Cluster {
    _dir: Dir,
    pki: String,
    gw: SocketAddr,
    gw_metrics: SocketAddr,
    dist: SocketAddr,
    dist_metrics: SocketAddr,
    worker_metrics: SocketAddr,
    _procs: Vec<Proc>,
}

impl Cluster {
    fn start(tag: &str, dist_extra: &[&str]) -> Cluster {
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
        let mut args = vec![
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
        ];
        args.extend(dist_extra);
        procs.push(spawn(&args));
        procs.push(spawn(&[
            "worker",
            "--name",
            "w-1",
            "--pki",
            &pki,
            "--join",
            &d,
            "--apps",
            "echo,sleep",
            "--slots",
            "1",
            "--metrics",
            &wms,
        ]));
        let c = Cluster {
            _dir: dir,
            pki,
            gw,
            gw_metrics: gm,
            dist,
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
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                v.as_array()?
                    .iter()
                    .any(|m| m["name"] == "dist-1" && m["state"] == "up" && m["workers_up"] == 1)
                    .then_some(())
            },
        );
        c
    }

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

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn every_path_answers_with_its_shape_and_the_real_figures() {
    let c = Cluster::start("dash-api", &[]);
    const TASKS: u64 = 4;
    c.run_tasks(TASKS as usize);

    let s = get_json(c.dist_metrics, "/api/summary");
    assert_eq!(s["role"], "distributor", "{s}");
    assert_eq!(s["node"], "dist-1", "{s}");
    assert_eq!(s["set"], "main", "{s}");
    assert_eq!(s["draining"], false, "{s}");
    let k = &s["counters"];
    assert_eq!(u(&k["completed"]), TASKS, "{s}");
    assert_eq!(u(&k["submitted"]), TASKS, "{s}");
    assert_eq!(u(&k["ok"]), TASKS, "{s}");
    for f in ["failed", "refused", "retried", "no_match"] {
        assert_eq!(u(&k[f]), 0, "{f}: {s}");
    }
    assert_eq!(u(&s["completed_by_status"]["ok"]), TASKS, "{s}");
    assert_eq!(u(&s["workers"]["up"]), 1, "{s}");
    assert!(s["tasks_per_s"].is_f64(), "{s}");
    for f in ["waiting", "running", "jobs"] {
        assert!(s[f].is_u64(), "{f}: {s}");
    }

    let w = get_json(c.dist_metrics, "/api/workers");
    assert_eq!((u(&w["total"]), u(&w["listed"])), (1, 1), "{w}");
    assert_eq!(w["truncated"], false, "{w}");
    let w1 = &w["workers"][0];
    assert_eq!(w1["name"], "w-1", "{w}");
    assert_eq!(w1["state"], "up", "{w}");
    assert_eq!(u(&w1["slots"]), 1, "{w}");
    assert!(
        w1["apps"].as_array().unwrap().contains(&"sleep".into()),
        "{w}"
    );
    assert!(w1["labels"].is_object(), "{w}");
    for f in [
        "slots_free",
        "reserved_slots",
        "cores",
        "reserved_cores",
        "mem",
    ] {
        assert!(w1[f].is_u64(), "{f}: {w}");
    }

    let sets = get_json(c.dist_metrics, "/api/sets");
    assert_eq!(sets["sets"][0]["name"], "main", "{sets}");
    let me = &sets["sets"][0]["members"][0];
    assert_eq!(me["name"], "dist-1", "{sets}");
    assert_eq!(me["addr"], c.dist.to_string(), "{sets}");
    assert_eq!(me["state"], "up", "{sets}");
    assert_eq!(u(&me["workers_up"]), 1, "{sets}");
    assert_eq!(sets["gateways"][0], c.gw.to_string(), "{sets}");

    // A job of three sleeps on one slot: one runs, the next waits with
    // the reason (no free slot), the job counts them.
    let input = c._dir.0.join("ms");
    std::fs::write(&input, "3000").unwrap();
    let out = ok(&[
        "submit",
        "--pki",
        &c.pki,
        "--distributor",
        &c.dist.to_string(),
        "--app",
        "sleep",
        "--array",
        "1-3",
        "--input",
        input.to_str().unwrap(),
        "--detach",
    ]);
    let job = out.trim().to_owned();
    let waiting = eventually("a task waits", Duration::from_secs(20), || {
        let v = get_json(c.dist_metrics, "/api/waiting");
        (u(&v["total"]) >= 1).then_some(v)
    });
    let t = &waiting["tasks"][0];
    assert_eq!(t["app"], "sleep", "{waiting}");
    assert_eq!(t["job"], job.as_str(), "{waiting}");
    assert!(t["index"].is_u64() && t["task"].is_u64(), "{waiting}");
    assert!(
        t["reason"].as_str().unwrap().contains("slots_free"),
        "{waiting}"
    );
    assert_eq!(u(&waiting["max"]), 100, "{waiting}");
    assert_eq!(waiting["truncated"], false, "{waiting}");
    let jobs = get_json(c.dist_metrics, "/api/jobs");
    assert_eq!(u(&jobs["total"]), 1, "{jobs}");
    let j = &jobs["jobs"][0];
    assert_eq!(j["job"], job.as_str(), "{jobs}");
    assert_eq!(
        (u(&j["tasks"]), j["app"].as_str()),
        (3, Some("sleep")),
        "{jobs}"
    );
    assert_eq!(j["state"], "running", "{jobs}");
    assert_eq!(u(&j["counts"]["running"]), 1, "{jobs}");
    assert!(j["finished_ms"].is_null(), "{jobs}");
    // A job's tasks count as submitted as they start.
    let s = get_json(c.dist_metrics, "/api/summary");
    assert!(u(&s["counters"]["submitted"]) >= TASKS + 2, "{s}");

    // A sample a second: the tasks run show in the series' rates.
    let series = eventually("samples", Duration::from_secs(10), || {
        let v = get_json(c.dist_metrics, "/api/series");
        (v["samples"].as_array()?.len() >= 2).then_some(v)
    });
    assert_eq!((u(&series["period_s"]), u(&series["capacity"])), (1, 600));
    let p = &series["samples"][0];
    for f in ["unix_ms", "waiting", "running"] {
        assert!(p[f].is_u64(), "{f}: {series}");
    }
    assert!(p["completed_per_s"].is_f64() && p["submitted_per_s"].is_f64());
    assert!(p["p50_ms"].is_null() || p["p50_ms"].is_f64(), "{series}");

    // The gateway: its sets with their members, by state.
    let gs = get_json(c.gw_metrics, "/api/summary");
    assert_eq!(
        (gs["role"].as_str(), gs["node"].as_str()),
        (Some("gateway"), Some("gw-1"))
    );
    assert_eq!(u(&gs["members"]["up"]), 1, "{gs}");
    assert!(u(&gs["redirects"]) >= TASKS, "{gs}");
    let gsets = get_json(c.gw_metrics, "/api/sets");
    let main = gsets["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "main")
        .unwrap_or_else(|| panic!("{gsets}"));
    assert!(u(&main["redirects"]) >= TASKS, "{gsets}");
    assert_eq!(main["members"][0]["name"], "dist-1", "{gsets}");
    assert_eq!(main["members"][0]["state"], "up", "{gsets}");
    assert_eq!(main["members"][0]["addr"], c.dist.to_string(), "{gsets}");
    // Only a distributor has workers, tasks and jobs.
    for path in ["/api/workers", "/api/waiting", "/api/jobs", "/api/series"] {
        assert_eq!(get(c.gw_metrics, path).0, 404, "gateway {path}");
    }

    // The page, on both; none on a worker.
    for m in [c.dist_metrics, c.gw_metrics] {
        let (code, head, body) = http(m, "GET", "/", "");
        assert_eq!(code, 200, "{head}");
        let h = head.to_ascii_lowercase();
        assert!(h.contains("content-type: text/html"), "{head}");
        assert!(
            h.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(body.contains("<title>allot dashboard</title>"), "{body}");
        assert!(body.contains("/api/summary"), "the page polls the API");
    }
    assert_eq!(get(c.worker_metrics, "/").0, 404);
    assert_eq!(get(c.worker_metrics, "/api/summary").0, 404);
}

#[test]
fn the_token_guards_the_page_and_the_api_even_with_the_scrape_open() {
    let dir = Dir::new("dash-token");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret+token/%\n").unwrap();
    let t = token.to_str().unwrap().to_owned();
    let c = Cluster::start(
        "dash-token",
        &["--metrics-token", &t, "--metrics-scrape-open"],
    );
    let m = c.dist_metrics;
    let right = "Authorization: Bearer s3cret+token/%\r\n";
    let wrong = "Authorization: Bearer s3cret+token/\r\n";
    let mut paths = vec!["/"];
    paths.extend(DISTRIBUTOR_API);
    for path in paths {
        let (code, head, _) = http(m, "GET", path, "");
        assert_eq!(code, 401, "no token, {path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert_eq!(http(m, "GET", path, wrong).0, 401, "wrong token, {path}");
        assert_eq!(http(m, "GET", path, right).0, 200, "right token, {path}");
        // The browser's way: the token in the query, percent-encoded.
        let q = format!("{path}?token=s3cret%2Btoken%2F%25");
        assert_eq!(get(m, &q).0, 200, "?token=, {path}");
        let q = format!("{path}?x=1&token=s3cret%2Btoken%2F");
        assert_eq!(get(m, &q).0, 401, "wrong ?token=, {path}");
        assert_eq!(
            get(m, &format!("{path}?token=s3cret%2")).0,
            401,
            "bad escape"
        );
    }
    let (code, body) = get(m, "/metrics");
    assert_eq!(code, 200, "--metrics-scrape-open leaves /metrics open");
    assert!(body.contains("allot_tasks_submitted_total"), "{body}");
    assert_eq!(get(m, "/healthz").0, 200);
    // The page itself carries the token on to its fetches.
    let (_, _, page) = http(m, "GET", "/", right);
    assert!(
        page.contains("Authorization: \"Bearer \" + TOKEN"),
        "{page}"
    );
}

#[test]
fn the_new_paths_are_read_only_and_survive_bad_requests() {
    let c = Cluster::start("dash-http", &[]);
    let m = c.dist_metrics;
    let mut paths = vec!["/"];
    paths.extend(DISTRIBUTOR_API);
    for path in &paths {
        let (code, _, _) = http(m, "HEAD", path, "");
        assert_eq!(code, 200, "HEAD {path}");
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let (code, head, _) = http(m, method, path, "");
            assert_eq!(code, 405, "{method} {path}: {head}");
            assert!(
                head.to_ascii_lowercase().contains("allow: get, head"),
                "{method} {path}: {head}"
            );
        }
    }
    for path in ["/api/summary", "/api/sets"] {
        assert_eq!(
            http(c.gw_metrics, "POST", path, "").0,
            405,
            "gateway {path}"
        );
    }
    // Nothing was submitted by all those writes.
    assert_eq!(u(&get_json(m, "/api/summary")["counters"]["submitted"]), 0);
    for path in [
        "/api/nope",
        "/api",
        "/api/",
        "/api/summary/x",
        "/index.html",
    ] {
        assert_eq!(get(m, path).0, 404, "{path}");
    }
    let (code, head, _) = http_raw(m, b"GET /api/summary HTTP/9.9\r\n\r\n");
    assert!(code == 400 || code == 505, "{head}");
    let (code, head, _) = http_raw(m, b"\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(code, 400, "{head}");
    let huge = format!(
        "GET /api/workers HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (code, head, _) = http_raw(m, huge.as_bytes());
    assert!(code == 431 || code == 400, "{head}");
    let _ = std::net::TcpStream::connect(m)
        .and_then(|mut s| std::io::Write::write_all(&mut s, b"GET /api/wor"));
    // Still serving, with the real figures.
    c.run_tasks(2);
    let s = get_json(m, "/api/summary");
    assert_eq!(u(&s["counters"]["completed"]), 2, "{s}");
    let w = get_json(m, "/api/workers");
    assert_eq!(w["workers"][0]["name"], "w-1", "{w}");
}
