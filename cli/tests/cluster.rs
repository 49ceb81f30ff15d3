//! End-to-end tests with the built `allot` binary: every node is a separate
//! process on loopback, started and stopped (or killed) by the test.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn distributor(pki: &str, dir: &Path, name: &str, addr: SocketAddr, extra: &[&str]) -> Proc {
    let data = dir.join(name);
    let mut args = vec![
        "distributor",
        "--name",
        name,
        "--pki",
        pki,
        "--set-name",
        "main",
    ];
    let a = addr.to_string();
    let d = data.to_str().unwrap().to_owned();
    args.extend(["--listen", &a, "--data-dir", &d]);
    args.extend(extra);
    spawn(&args)
}

fn worker(pki: &str, name: &str, join: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--name",
        name,
        "--pki",
        pki,
        "--join",
        join,
        "--report",
        "broadcast",
    ];
    args.extend(extra);
    spawn(&args)
}

/// Starts gateway `gw-1` on `addr` for the distributor set `members`
/// (`ADDR,ADDR...`).
fn gateway(pki: &str, addr: SocketAddr, members: &str) -> Proc {
    let set = format!("main={members}");
    spawn(&[
        "gateway",
        "--name",
        "gw-1",
        "--listen",
        &addr.to_string(),
        "--pki",
        pki,
        "--set",
        &set,
    ])
}

fn status(pki: &str, dist: SocketAddr) -> Option<Vec<Value>> {
    let out = run(&[
        "status",
        "--pki",
        pki,
        "--distributor",
        &dist.to_string(),
        "--json",
    ]);
    json_list(&out)
}

/// Waits until `dist` lists `want` workers in state `state`.
fn wait_workers(
    pki: &str,
    dist: SocketAddr,
    want: usize,
    state: &str,
    within: Duration,
) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        if let Some(ws) = status(pki, dist) {
            if ws.iter().filter(|w| w["state"] == state).count() >= want {
                return ws;
            }
        }
        assert!(
            t0.elapsed() < within,
            "{dist} did not show {want} workers {state} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(pki: &str, gateways: &str, extra: &[&str]) -> Output {
    let mut args = vec!["submit", "--pki", pki, "--gateway", gateways];
    args.extend(extra);
    run(&args)
}

#[test]
fn cli_contract_end_to_end() {
    let dir = Dir::new("cli");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-eu", "worker"),
            ("w-us", "worker"),
            ("client", "client"),
        ],
    );
    let d = port();
    let g = port();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let j = d.to_string();
    let _w1 = worker(
        &pki,
        "w-eu",
        &j,
        &[
            "--apps",
            "echo,sha256",
            "--cores",
            "8",
            "--mem",
            "16GiB",
            "--power",
            "8",
            "--slots",
            "4",
            "--label",
            "region=eu",
        ],
    );
    let _w2 = worker(
        &pki,
        "w-us",
        &j,
        &[
            "--apps",
            "echo,sleep",
            "--cores",
            "2",
            "--mem",
            "4GiB",
            "--power",
            "2",
            "--slots",
            "2",
            "--label",
            "region=us",
        ],
    );
    let _gw = gateway(&pki, g, &format!("{d}"));
    let ws = wait_workers(&pki, d, 2, "up", Duration::from_secs(20));
    let gws = g.to_string();

    // status --json: one object per worker with every attribute, labels too.
    let eu = ws
        .iter()
        .find(|w| w["name"] == "w-eu")
        .expect("w-eu listed");
    assert_eq!(eu["state"], "up");
    assert_eq!(eu["slots"], 4);
    assert_eq!(eu["cores"], 8);
    assert_eq!(eu["mem"], 16u64 << 30);
    assert_eq!(eu["region"], "eu");
    for key in ["slots_free", "idle_power", "mem_free", "load", "power"] {
        assert!(eu.get(key).is_some(), "status lacks {key}");
    }
    // The table form lists both workers.
    let table = ok(&["status", "--pki", &pki, "--distributor", &d.to_string()]);
    assert!(table.contains("w-eu") && table.contains("w-us"), "{table}");

    // submit: the output on stdout, input from a file.
    let input = dir.0.join("input.txt");
    std::fs::write(&input, b"round trip").unwrap();
    let out = submit(
        &pki,
        &gws,
        &["--app", "echo", "--input", input.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"round trip");
    // The table's first line counts the workers, its last the tasks.
    let table = ok(&["status", "--pki", &pki, "--distributor", &d.to_string()]);
    assert!(
        table.contains("dist-1: 2 workers, 2 up;"),
        "worker totals: {table}"
    );
    assert!(
        table.contains("tasks: 1 submitted, 1 completed, 0 refused by workers (0 busy)"),
        "counters: {table}"
    );

    // submit --json with a requirement only w-eu meets.
    let out = submit(
        &pki,
        &gws,
        &[
            "--app",
            "sha256",
            "--require",
            "server.region == 'eu' && server.cores >= 4",
            "--cores",
            "2",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["worker"], "w-eu");
    assert_eq!(j["distributor"], "dist-1");
    assert_eq!(j["gateway"], gws);
    assert_eq!(j["attempts"], 1);
    assert!(j["latency_us"].as_u64().unwrap() > 0);
    assert!(j["task_id"].as_u64().is_some());
    // sha256 of empty input
    assert_eq!(
        j["output"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    // client attributes in expressions; binary output comes base64-encoded.
    let bin = dir.0.join("bin");
    std::fs::write(&bin, [0xffu8, 0x00, 0xfe]).unwrap();
    let out = submit(
        &pki,
        &gws,
        &[
            "--app",
            "echo",
            "--client-attr",
            "region=us",
            "--require",
            "server.region == client.region",
            "--input",
            bin.to_str().unwrap(),
            "--json",
        ],
    );
    let j = json(&out);
    assert_eq!(j["worker"], "w-us");
    assert_eq!(j["output_encoding"], "base64");
    assert_eq!(j["output"], "/wD+");

    // explain: a requirement nobody meets, each clause with its count.
    let out = run(&[
        "explain",
        "--pki",
        &pki,
        "--distributor",
        &d.to_string(),
        "--app",
        "echo",
        "--require",
        "server.region == 'ap'",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = json(&out);
    assert_eq!(e["matches"], false);
    // No worker would take it by waiting either: a submission fails.
    assert_eq!(
        (e["waitable"].as_u64(), e["would_wait"].as_bool()),
        (Some(0), Some(false))
    );
    let clause = e["clauses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clause"] == "server.region == 'ap'")
        .expect("clause listed");
    assert_eq!(clause["eliminated"], 2);
    let out = run(&[
        "explain",
        "--pki",
        &pki,
        "--distributor",
        &d.to_string(),
        "--app",
        "echo",
        "--json",
    ]);
    assert_eq!(json(&out)["matches"], true);

    // Unknown app and impossible constraints: an immediate error naming the
    // clause, non-zero exit, never a hang.
    let t0 = Instant::now();
    let out = submit(&pki, &gws, &["--app", "render"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app \"render\" installed"), "{err}");
    let out = submit(
        &pki,
        &gws,
        &["--app", "echo", "--require", "server.gpu == 1"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`server.gpu == 1` rejects 2"), "{err}");
    let out = submit(&pki, &gws, &["--app", "echo", "--cores", "64"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_match"));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "errors took {:?}",
        t0.elapsed()
    );

    // A bad expression is a clear error too.
    let out = submit(
        &pki,
        &gws,
        &["--app", "echo", "--require", "server.cores >="],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad expression"));

    // No gateway reachable: a clear error, non-zero exit, at once when
    // asked not to retry (`retry.rs` covers the message after a window).
    let out = run(&[
        "submit",
        "--pki",
        &pki,
        "--gateway",
        "127.0.0.1:1",
        "--app",
        "echo",
        "--retry-for",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no gateway answered"));
}

#[test]
fn worker_killed_mid_task_is_retried_elsewhere() {
    let dir = Dir::new("kill");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("w-2", "worker"),
            ("client", "client"),
        ],
    );
    let d = port();
    let g = port();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let j = d.to_string();
    let w1 = worker(&pki, "w-1", &j, &["--apps", "sleep", "--slots", "1"]);
    let w2 = worker(&pki, "w-2", &j, &["--apps", "sleep", "--slots", "1"]);
    let _gw = gateway(&pki, g, &format!("{d}"));
    wait_workers(&pki, d, 2, "up", Duration::from_secs(20));

    let input = dir.0.join("ms");
    std::fs::write(&input, b"1500").unwrap();
    let gws = g.to_string();
    let pki2 = pki.clone();
    let inp = input.to_str().unwrap().to_owned();
    let sub = std::thread::spawn(move || {
        submit(&pki2, &gws, &["--app", "sleep", "--input", &inp, "--json"])
    });
    // Find the worker running it (its slot is reserved) and kill it.
    let t0 = Instant::now();
    let busy = loop {
        let ws = status(&pki, d).unwrap_or_default();
        if let Some(w) = ws.iter().find(|w| w["reserved_slots"] == 1) {
            break w["name"].as_str().unwrap().to_owned();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "task never placed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (victim, other) = if busy == "w-1" {
        (&w1, "w-2")
    } else {
        (&w2, "w-1")
    };
    victim.signal("KILL");
    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["worker"], other, "retried on the other worker");
    assert_eq!(j["attempts"], 2);
    assert_eq!(j["output"], "slept 1500 ms");
}

#[test]
fn first_gateway_and_first_distributor_down_are_skipped() {
    let dir = Dir::new("failover");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let dead_gw = port();
    let dead_dist = port();
    let d = port();
    let g = port();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _w = worker(&pki, "w-1", &format!("{dead_dist},{d}"), &[]);
    let _gw = gateway(&pki, g, &format!("{dead_dist},{d}"));
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    let out = submit(
        &pki,
        &format!("{dead_gw},{g}"),
        &["--app", "echo", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["gateway"], g.to_string());
    assert_eq!(j["distributor"], "dist-1");
}

#[test]
fn silent_worker_is_marked_down_and_comes_back() {
    let dir = Dir::new("silent");
    let pki = pki(
        &dir.0,
        &[
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let d = port();
    let _dist = distributor(
        &pki,
        &dir.0,
        "dist-1",
        d,
        &["--heartbeat-ms", "500", "--missed-heartbeats", "3"],
    );
    let w = worker(&pki, "w-1", &d.to_string(), &[]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    w.signal("STOP");
    let t0 = Instant::now();
    wait_workers(&pki, d, 1, "down", Duration::from_secs(8));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "marked down after {:?}",
        t0.elapsed()
    );
    w.signal("CONT");
    wait_workers(&pki, d, 1, "up", Duration::from_secs(10));
}

#[test]
fn foreign_certificates_and_wrong_roles_are_rejected() {
    let dir = Dir::new("certs");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
            ("sneaky", "client"),
        ],
    );
    let other = dir.0.join("other");
    let other = other.to_str().unwrap().to_owned();
    ok(&["cert", "ca", "--dir", &other]);
    ok(&[
        "cert", "issue", "--dir", &other, "--name", "client", "--role", "client",
    ]);
    let d = port();
    let g = port();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _w = worker(&pki, "w-1", &d.to_string(), &[]);
    let _gw = gateway(&pki, g, &format!("{d}"));
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));

    // A client certificate from another CA gets nowhere.
    let out = submit(&other, &g.to_string(), &["--app", "echo"]);
    assert!(!out.status.success());
    // A client certificate cannot register as a worker.
    let mut sneaky = worker(&pki, "sneaky", &d.to_string(), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let ws = status(&pki, d).unwrap();
    assert!(
        ws.iter().all(|w| w["name"] != "sneaky"),
        "a client cert registered as a worker: {ws:?}"
    );
    let _ = sneaky.0.kill();
    // The nodes keep serving.
    let out = submit(&pki, &g.to_string(), &["--app", "echo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["worker"], "w-1");
}

#[test]
fn malformed_frame_resets_only_its_stream() {
    let dir = Dir::new("malformed");
    let pki = pki(
        &dir.0,
        &[
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let d = port();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _w = worker(&pki, "w-1", &d.to_string(), &[]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let me = allot::pki::Pki::load(Path::new(&pki), "client").unwrap();
        let ep = allot::transport::endpoint(&me, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = allot::transport::connect(&ep, d).await.unwrap();
        // Stream 1: garbage instead of a Hello.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xde; 64]).await.unwrap();
        expect_refusal(&mut recv, allot_wire::ErrorCode::Malformed).await;
        // Stream 2: a header announcing a frame over the 16 MiB limit.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut h = Vec::new();
        h.extend_from_slice(b"aL");
        h.push(allot_wire::MessageKind::Hello as u8);
        h.push(0);
        h.extend_from_slice(&64u32.to_le_bytes());
        h.extend_from_slice(&(1u32 << 30).to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        send.write_all(&h).await.unwrap();
        if let Some(m) = expect_refusal(&mut recv, allot_wire::ErrorCode::TooLarge).await {
            assert!(m.contains("exceeds the limit"), "{m}");
        }
        // Stream 3 on the same connection still works.
        let hello = allot::conn::hello(allot_wire::Role::Client, "client", Vec::new());
        let mut s = allot::conn::open(&conn, &hello)
            .await
            .expect("second stream opens");
        s.out
            .send(
                &allot_wire::StatusQuery {
                    include_down: true,
                    max_workers: u32::MAX,
                },
                &bytes::Bytes::new(),
            )
            .unwrap();
        let f = s.reader.next().await.unwrap().expect("a reply");
        let r = f.validate::<allot_wire::StatusReply>().unwrap();
        assert_eq!(r.get().workers.len(), 1);
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    });
}

#[test]
fn distributor_killed_mid_task_client_resubmits_to_the_next() {
    let dir = Dir::new("distkill");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("dist-2", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let d1 = port();
    let d2 = port();
    let g = port();
    let dist1 = distributor(&pki, &dir.0, "dist-1", d1, &[]);
    let dist2 = distributor(&pki, &dir.0, "dist-2", d2, &[]);
    // An app that logs each execution (with its attempt) and takes a second.
    let log = dir.0.join("runs.log");
    let rec = format!(
        "rec=read p; echo \"$p $ALLOT_ATTEMPT\" >> {}; sleep 1; printf 'ran %s' \"$p\"",
        log.display()
    );
    let _w = worker(
        &pki,
        "w-1",
        &format!("{d1},{d2}"),
        &["--apps", "rec", "--app-cmd", &rec],
    );
    let _gw = gateway(&pki, g, &format!("{d1},{d2}"));
    wait_workers(&pki, d1, 1, "up", Duration::from_secs(20));
    wait_workers(&pki, d2, 1, "up", Duration::from_secs(20));
    let input = dir.0.join("token");
    std::fs::write(&input, b"tok-1\n").unwrap();
    let (pki2, gws, inp) = (
        pki.clone(),
        g.to_string(),
        input.to_str().unwrap().to_owned(),
    );
    let sub = std::thread::spawn(move || {
        submit(&pki2, &gws, &["--app", "rec", "--input", &inp, "--json"])
    });
    // Wait until a member (the client's first, by the gateway's order for
    // it) has placed it, then kill that member.
    let placed_on = |d: SocketAddr| {
        status(&pki, d)
            .unwrap_or_default()
            .iter()
            .any(|w| w["reserved_slots"] == 1)
    };
    let t0 = Instant::now();
    let first = loop {
        if placed_on(d1) {
            break 1;
        }
        if placed_on(d2) {
            break 2;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "task never placed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (killed, survivor) = if first == 1 {
        (&dist1, "dist-2")
    } else {
        (&dist2, "dist-1")
    };
    killed.signal("KILL");
    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(
        j["distributor"], survivor,
        "resubmitted to the next distributor"
    );
    assert_eq!(j["output"], "ran tok-1");
    // The member that took over joined the run on the worker: once.
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        runs.lines().collect::<Vec<_>>(),
        vec!["tok-1 1"],
        "ran exactly once"
    );
}

#[test]
fn config_file_typo_names_file_line_and_key() {
    let dir = Dir::new("config");
    let cfg = dir.0.join("worker.toml");
    std::fs::write(&cfg, "name = \"w-1\"\nslotz = 4\n").unwrap();
    let out = run(&[
        "worker",
        "--config",
        cfg.to_str().unwrap(),
        "--pki",
        "/nonexistent",
        "--join",
        "127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker.toml:2"), "{err}");
    assert!(err.contains("slotz"), "{err}");
    assert!(err.contains("slots"), "suggests the right key: {err}");
    // A correct file is applied, and flags override it: the worker fails on
    // the PKI directory named on the command line, not the file's.
    std::fs::write(&cfg, "name = \"w-1\"\nslots = 4\npki = \"/from-file\"\n").unwrap();
    let out = run(&[
        "worker",
        "--config",
        cfg.to_str().unwrap(),
        "--pki",
        "/from-flag",
        "--join",
        "127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/from-flag") && !err.contains("/from-file"),
        "{err}"
    );
}

#[test]
fn bench_local_reports_the_json_contract() {
    // Figures are not checked (targets live in BENCHMARKS.md), only that the
    // run completes with no errors and reports every field.
    let out = run(&[
        "bench",
        "--local",
        "--workers",
        "2",
        "--tasks",
        "2000",
        "--concurrency",
        "32",
        "--payload",
        "64",
        "--baseline",
        "--rounds",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    // Two rounds of 2000 tasks, each followed by its own baseline.
    assert_eq!(j["tasks"], 4000);
    let rounds = j["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{j}");
    for r in rounds {
        assert!(r["ratio"].as_f64().is_some_and(|x| x > 0.0), "{j}");
    }
    assert_eq!(j["errors"], 0);
    for key in [
        "tasks_per_s",
        "p50_us",
        "p99_us",
        "baseline_msgs_per_s",
        "ratio",
    ] {
        assert!(
            j[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} missing or zero: {j}"
        );
    }
    let per_worker: u64 = j["per_worker"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_worker, 4000);
    // The client's link as QUIC saw it, summed over both rounds.
    let link = &j["link"];
    assert!(link["mtu"].as_u64().is_some_and(|m| m >= 1200), "{j}");
    assert!(link["sent_packets"].as_u64().is_some_and(|n| n > 0), "{j}");
    for key in ["lost_packets", "congestion_events", "black_holes"] {
        assert!(link[key].is_u64(), "{key}: {j}");
    }
    // Where the CPU went, per process (here all nodes share one process).
    let cpu = j["cpu_us_per_task"].as_object().expect("cpu_us_per_task");
    assert!(
        cpu.values().all(|v| v.as_f64().is_some_and(|us| us >= 0.0)) && !cpu.is_empty(),
        "{j}"
    );
    // Nodes as processes: the baseline's echo server is a process too, and
    // the CPU table names every role.
    let out = run(&[
        "bench",
        "--local",
        "--processes",
        "--tasks",
        "500",
        "--concurrency",
        "8",
        "--baseline",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["tasks"], 500);
    assert!(j["ratio"].as_f64().is_some_and(|x| x > 0.0), "{j}");
    for role in ["client", "distributor", "workers", "gateway"] {
        assert!(j["cpu_us_per_task"][role].is_number(), "{role}: {j}");
    }
    // Bad input: a clear error, non-zero exit.
    let out = run(&["bench", "--tasks", "10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pki is required"));
    let out = run(&["bench", "--local", "--rounds", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rounds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The hidden baseline server with no certificates: an error naming them.
    let out = run(&["baseline-echo", "--pki", "/nonexistent/allot-pki"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/allot-pki"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The members' figures of a `bench --json` run: (name, set, tasks).
fn bench_members(j: &Value) -> Vec<(String, String, u64)> {
    j["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {j}"))
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_owned(),
                m["set"].as_str().expect("set").to_owned(),
                m["tasks"].as_u64().expect("tasks"),
            )
        })
        .collect()
}

#[test]
fn bench_spreads_the_tasks_over_the_members_behind_the_gateways() {
    // One set of two distributors behind one gateway: every member places
    // some of the tasks, and the shares add up to the run.
    let out = run(&[
        "bench",
        "--local",
        "--processes",
        "--distributors",
        "2",
        "--tasks",
        "2000",
        "--concurrency",
        "16",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["tasks"], 2000);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["connections"], 2, "one connection per member: {j}");
    let members = bench_members(&j);
    assert_eq!(members.len(), 2, "{j}");
    assert_eq!(members.iter().map(|m| m.2).sum::<u64>(), 2000, "{j}");
    assert!(members.iter().all(|m| m.2 > 0), "every member works: {j}");
    let shares: f64 = j["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["share"].as_f64().expect("share"))
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{j}");
    for m in j["members"].as_array().unwrap() {
        assert!(m["cpu_us_per_task"].is_number(), "{j}");
        assert!(m["refused_busy"].is_u64(), "{j}");
        assert!(m["completed"].as_u64().is_some_and(|n| n > 0), "{j}");
    }
    for key in [
        "refused_busy_per_task",
        "refused_per_task",
        "member_share_max_deviation",
        "cpu_us_per_task_total",
    ] {
        assert!(j[key].is_number(), "{key}: {j}");
    }
    // Two sets of one member each, behind two gateways that learn them
    // from the members' registrations.
    let out = run(&[
        "bench",
        "--local",
        "--processes",
        "--sets",
        "2",
        "--gateways",
        "2",
        "--workers",
        "1",
        "--tasks",
        "1000",
        "--concurrency",
        "8",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    let members = bench_members(&j);
    let sets: std::collections::BTreeSet<&str> = members.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(sets.len(), 2, "{j}");
    assert_eq!(members.iter().map(|m| m.2).sum::<u64>(), 1000, "{j}");
    assert_eq!(j["per_worker"].as_object().map(|w| w.len()), Some(2), "{j}");

    // Bad shapes: clear errors naming the flag.
    for (args, says) in [
        (
            &["bench", "--local", "--distributors", "0"][..],
            "--distributors",
        ),
        (&["bench", "--local", "--gateways", "0"][..], "--gateways"),
        (
            &["bench", "--distributors", "2", "--tasks", "10"][..],
            "use them with --local",
        ),
        (
            &["bench", "--local", "--sets", "2", "--tasks", "10"][..],
            "--sets above 1 needs --processes",
        ),
        (
            &[
                "bench",
                "--local",
                "--processes",
                "--distributors",
                "2",
                "--sim-workers",
                "10",
            ][..],
            "--sim-workers measures one distributor",
        ),
        (
            &["bench", "--local", "--clients", "8", "--concurrency", "4"][..],
            "at least the number of client connections",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The node answered a bad stream with an `Error` frame of `code` (then the/// The node answered a bad stream with an `Error` frame of `code` (then the
/// end of the stream), or reset the stream with that code. Returns the
/// frame's message when there was one.
async fn expect_refusal(
    recv: &mut quinn::RecvStream,
    code: allot_wire::ErrorCode,
) -> Option<String> {
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("answered in time");
    match answer {
        Ok(bytes) => {
            let f = allot_wire::decode_one(&bytes, 1 << 20)
                .unwrap()
                .expect("an Error frame");
            let e = f.validate::<allot_wire::ErrorMsg>().unwrap();
            assert_eq!(
                allot::conn::decode_code(&e.get().code),
                code,
                "{}",
                e.get().message
            );
            Some(e.get().message.as_str().to_owned())
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) => {
            assert_eq!(c, allot::transport::codes::varint(code));
            None
        }
        Err(e) => panic!("unexpected: {e}"),
    }
}

/// Starts `allot bench --local --processes` for more tasks than a test
/// waits for, after `configure` had its say, and waits until its gateway,
/// distributor and two workers run: the bench and their process ids.
fn endless_bench(configure: impl FnOnce(&mut Command)) -> (Child, Vec<u32>) {
    let mut cmd = allot();
    cmd.args([
        "bench",
        "--local",
        "--processes",
        "--tasks",
        "100000000",
        "--concurrency",
        "8",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    configure(&mut cmd);
    let bench = cmd.spawn().expect("start bench");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kids = children_of(bench.id());
    while kids.len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        kids = children_of(bench.id());
    }
    assert!(kids.len() >= 4, "nodes not started: {kids:?}");
    (bench, kids)
}

#[test]
fn a_killed_bench_leaves_no_nodes_behind() {
    // Killed as soon as the last node is forked, possibly before it has
    // exec'd: the window where a child still has the bench's signal
    // handlers must not leave it running either.
    let (mut bench, kids) = endless_bench(|_| {});
    // SIGKILL: no destructor of the bench runs.
    bench.kill().expect("kill bench");
    bench.wait().expect("reap bench");
    // Generous: a node that got SIGTERM still closes its endpoint, and a
    // starved machine may take a while to schedule it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alive = |p: &u32| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p);
    while kids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = kids.iter().copied().filter(alive).collect();
    for p in &left {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    assert!(left.is_empty(), "nodes left running: {left:?}");
}

/// Ctrl-C (here SIGINT from `kill`, as a terminal sends it) during a local
/// bench: the bench says it was interrupted, exits with 130, stops its node
/// processes and removes its temporary directory, which holds the local
/// cluster's private keys.
#[test]
fn an_interrupted_bench_cleans_up_and_says_so() {
    let tmp = Dir::new("interrupt");
    let logs = Dir::new("interrupt-log");
    let log = logs.0.join("stderr");
    let log_file = std::fs::File::create(&log).expect("log file");
    let (bench, kids) = endless_bench(|c| {
        c.env("TMPDIR", &tmp.0).stderr(log_file);
    });
    let bench = Proc(bench);
    let scratch = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert_eq!(scratch(&tmp.0).len(), 1, "the bench's temporary directory");
    // Let tasks flow, then interrupt.
    std::thread::sleep(Duration::from_millis(500));
    bench.signal("INT");
    let mut bench = bench;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = bench.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the bench did not stop within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert!(
        err.contains("interrupted (Ctrl-C or SIGTERM)"),
        "stderr: {err}"
    );
    assert!(
        scratch(&tmp.0).is_empty(),
        "left behind: {:?}",
        scratch(&tmp.0)
    );
    let alive = |p: &u32| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p);
    let left: Vec<u32> = kids.iter().copied().filter(alive).collect();
    for p in &left {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    assert!(left.is_empty(), "nodes left running: {left:?}");
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

#[test]
fn a_restarted_distributor_resets_its_old_links_at_once() {
    // Idle timeouts far longer than the test: the worker can only learn of
    // the restart from the new process's stateless reset.
    let slow = ["--idle-timeout-ms", "30000", "--keep-alive-ms", "200"];
    let dir = Dir::new("reset");
    let pki = pki(
        &dir.0,
        &[
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let d1 = port();
    let dist = distributor(&pki, &dir.0, "dist-1", d1, &slow);
    let mut args = vec!["--report", "registered"];
    args.extend(slow);
    let _w = worker(&pki, "w-1", &d1.to_string(), &args);
    wait_workers(&pki, d1, 1, "up", Duration::from_secs(20));
    dist.signal("KILL");
    drop(dist);
    let t0 = Instant::now();
    let _dist = distributor(&pki, &dir.0, "dist-1", d1, &slow);
    // Well under the 30 s idle timeout: the old link was reset.
    wait_workers(&pki, d1, 1, "up", Duration::from_secs(10));
    eprintln!(
        "worker registered again {:?} after the restart",
        t0.elapsed()
    );
}

/// Starts gateway `gw-1` on `addr` with no seed set: it learns the sets
/// from the distributors' registrations.
fn bare_gateway(pki: &str, addr: SocketAddr) -> Proc {
    named_bare_gateway(pki, "gw-1", addr)
}

fn named_bare_gateway(pki: &str, name: &str, addr: SocketAddr) -> Proc {
    spawn(&[
        "gateway",
        "--name",
        name,
        "--listen",
        &addr.to_string(),
        "--pki",
        pki,
    ])
}

/// The gateway's record (`allot status --gateway --json`).
fn gateway_status(pki: &str, gw: SocketAddr) -> Option<Vec<Value>> {
    let out = run(&[
        "status",
        "--pki",
        pki,
        "--gateway",
        &gw.to_string(),
        "--json",
    ]);
    json_list(&out)
}

/// Waits until the gateway's record satisfies `ok`; returns it.
fn wait_record(
    pki: &str,
    gw: SocketAddr,
    what: &str,
    within: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let t0 = Instant::now();
    let mut last = Vec::new();
    loop {
        if let Some(r) = gateway_status(pki, gw) {
            if ok(&r) {
                return r;
            }
            last = r;
        }
        assert!(
            t0.elapsed() < within,
            "gateway never showed {what} within {within:?}; last record: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn member<'a>(record: &'a [Value], name: &str) -> Option<&'a Value> {
    record.iter().find(|m| m["name"] == name)
}

#[test]
fn a_gateway_without_sets_learns_them_and_marks_a_killed_member_down() {
    let dir = Dir::new("sets");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("dist-2", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let (d1, d2, g) = (port(), port(), port());
    let _gw = bare_gateway(&pki, g);
    let gws = g.to_string();
    let dist1 = distributor(&pki, &dir.0, "dist-1", d1, &["--gateways", &gws]);
    let _dist2 = distributor(&pki, &dir.0, "dist-2", d2, &["--gateways", &gws]);
    let _w = worker(&pki, "w-1", &format!("{d1},{d2}"), &["--apps", "echo"]);
    let both_up = |r: &[Value]| {
        ["dist-1", "dist-2"]
            .iter()
            .all(|n| member(r, n).is_some_and(|m| m["state"] == "up" && m["workers_up"] == 1))
    };
    let record = wait_record(&pki, g, "both members up", Duration::from_secs(20), both_up);
    let m = member(&record, "dist-1").unwrap();
    assert_eq!(m["set"], "main");
    assert_eq!(m["addr"], d1.to_string());
    assert_eq!(m["apps"], serde_json::json!(["echo"]));
    assert!(m["slots"].as_u64().unwrap() > 0, "{m}");
    // Clients are served from the learned record.
    let out = submit(&pki, &gws, &["--app", "echo", "--input", "-", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A member SIGKILLed is marked down, and clients go to the other.
    dist1.signal("KILL");
    let t0 = Instant::now();
    wait_record(&pki, g, "dist-1 down", Duration::from_secs(5), |r| {
        member(r, "dist-1").is_some_and(|m| m["state"] == "down")
    });
    assert!(t0.elapsed() < Duration::from_secs(5));
    for _ in 0..3 {
        let out = submit(&pki, &gws, &["--app", "echo", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out)["distributor"], "dist-2");
    }
}

#[test]
fn a_restarted_gateway_rebuilds_its_record_from_the_reports() {
    let dir = Dir::new("gwrestart");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let (d1, g) = (port(), port());
    let gw = bare_gateway(&pki, g);
    let gws = g.to_string();
    let _dist1 = distributor(
        &pki,
        &dir.0,
        "dist-1",
        d1,
        &["--gateways", &gws, "--gateway-report", "registered"],
    );
    let _w = worker(&pki, "w-1", &d1.to_string(), &["--apps", "echo"]);
    let up = |r: &[Value]| {
        member(r, "dist-1").is_some_and(|m| m["state"] == "up" && m["workers_up"] == 1)
    };
    wait_record(&pki, g, "dist-1 up", Duration::from_secs(20), up);
    gw.signal("KILL");
    drop(gw);
    let _gw = bare_gateway(&pki, g);
    wait_record(&pki, g, "dist-1 up again", Duration::from_secs(10), up);
    let out = submit(&pki, &gws, &["--app", "echo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["distributor"], "dist-1");
}

#[test]
fn a_registered_member_reports_to_one_gateway_and_moves_when_it_dies() {
    let dir = Dir::new("gwmove");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("gw-2", "gateway"),
            ("dist-1", "distributor"),
            ("client", "client"),
        ],
    );
    let (d1, g1, g2) = (port(), port(), port());
    let gw1 = named_bare_gateway(&pki, "gw-1", g1);
    let _gw2 = named_bare_gateway(&pki, "gw-2", g2);
    let list = format!("{g1},{g2}");
    let _dist1 = distributor(
        &pki,
        &dir.0,
        "dist-1",
        d1,
        &["--gateways", &list, "--gateway-report", "registered"],
    );
    let known = |r: &[Value]| member(r, "dist-1").is_some_and(|m| m["state"] == "up");
    wait_record(&pki, g1, "dist-1 at gw-1", Duration::from_secs(20), known);
    assert!(
        gateway_status(&pki, g2).is_some_and(|r| r.is_empty()),
        "registered: only the first gateway hears of it"
    );
    gw1.signal("KILL");
    wait_record(&pki, g2, "dist-1 at gw-2", Duration::from_secs(10), known);
}

#[test]
fn link_timeouts_out_of_range_are_refused_with_the_flags_named() {
    for (role, extra) in [
        ("worker", vec!["--name", "w-1", "--join", "127.0.0.1:1"]),
        (
            "distributor",
            vec![
                "--name",
                "d-1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/nonexistent",
            ],
        ),
    ] {
        for (idle, keep) in [("1000", "2000"), ("1000", "1000"), ("1000", "0")] {
            let mut args = vec![role, "--pki", "/nonexistent"];
            args.extend(extra.iter().copied());
            args.extend(["--idle-timeout-ms", idle, "--keep-alive-ms", keep]);
            let out = run(&args);
            assert!(!out.status.success(), "{role} {idle}/{keep} was accepted");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("--keep-alive-ms") && err.contains("--idle-timeout-ms"),
                "{role}: {err}"
            );
        }
        let mut args = vec![role, "--pki", "/nonexistent"];
        args.extend(extra.iter().copied());
        args.extend(["--idle-timeout-ms", "soon"]);
        let out = run(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("idle-timeout-ms") && err.contains("soon"),
            "{err}"
        );
    }
}

/// Waits up to `within` for `p` to exit; its exit status.
fn exit_within(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().expect("wait") {
            return s;
        }
        assert!(t0.elapsed() < within, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to one member of a two-member set while it runs a task: the
/// gateway shows it draining at once and sends new clients to the other
/// member, the task in flight ends on the draining member (once), and the
/// process then exits with status 0, long before its drain timeout.
#[test]
fn a_sigtermed_member_drains_its_tasks_and_exits_cleanly() {
    let dir = Dir::new("drain");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("dist-2", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let (d1, d2, g) = (port(), port(), port());
    let _gw = bare_gateway(&pki, g);
    let gws = g.to_string();
    let extra = ["--gateways", &gws, "--drain-timeout", "30"];
    let mut dists = [
        distributor(&pki, &dir.0, "dist-1", d1, &extra),
        distributor(&pki, &dir.0, "dist-2", d2, &extra),
    ];
    // An app that logs each execution and takes two seconds.
    let log = dir.0.join("runs.log");
    let rec = format!(
        "rec=read p; echo \"$p\" >> {}; sleep 2; printf 'ran %s' \"$p\"",
        log.display()
    );
    let _w = worker(
        &pki,
        "w-1",
        &format!("{d1},{d2}"),
        &["--apps", "echo,rec", "--app-cmd", &rec],
    );
    let both_up = |r: &[Value]| {
        ["dist-1", "dist-2"]
            .iter()
            .all(|n| member(r, n).is_some_and(|m| m["state"] == "up" && m["workers_up"] == 1))
    };
    wait_record(&pki, g, "both members up", Duration::from_secs(20), both_up);
    let input = dir.0.join("token");
    std::fs::write(&input, b"tok-1\n").unwrap();
    let (pki2, gws2, inp) = (pki.clone(), gws.clone(), input.to_str().unwrap().to_owned());
    let sub = std::thread::spawn(move || {
        submit(&pki2, &gws2, &["--app", "rec", "--input", &inp, "--json"])
    });
    let placed_on = |d: SocketAddr| {
        status(&pki, d)
            .unwrap_or_default()
            .iter()
            .any(|w| w["reserved_slots"] == 1)
    };
    let t0 = Instant::now();
    let at = loop {
        if placed_on(d1) {
            break 0;
        }
        if placed_on(d2) {
            break 1;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "task never placed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let names = ["dist-1", "dist-2"];
    let (draining, other) = (names[at], names[1 - at]);
    dists[at].signal("TERM");
    let t0 = Instant::now();
    wait_record(
        &pki,
        g,
        "the member draining",
        Duration::from_secs(5),
        |r| member(r, draining).is_some_and(|m| m["state"] == "draining"),
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "reported at once");
    // New clients go to the other member.
    for _ in 0..3 {
        let out = submit(&pki, &gws, &["--app", "echo", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out)["distributor"], other);
    }
    // The task in flight ends where it ran, once.
    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(
        j["distributor"], draining,
        "finished by the draining member"
    );
    assert_eq!(j["output"], "ran tok-1");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().collect::<Vec<_>>(), vec!["tok-1"], "ran once");
    // Drained, it exits 0, well within its 30 s drain timeout.
    let st = exit_within(&mut dists[at], Duration::from_secs(15));
    assert!(st.success(), "exit status {st:?}");
    wait_record(&pki, g, "the member down", Duration::from_secs(5), |r| {
        member(r, draining).is_some_and(|m| m["state"] == "down")
    });
}

/// `--cores` and `--mem` default to what the worker finds: `allot worker
/// --print-resources` says what and where from; inside a Slurm job the
/// job's allocation wins and its labels are set; a flag overrides.
#[test]
fn a_worker_prints_the_resources_it_found_and_where() {
    let out = ok(&["worker", "--print-resources"]);
    assert!(out.contains("cores: ") && out.contains("mem: "), "{out}");
    assert!(
        !out.contains("label:"),
        "no Slurm labels outside a job: {out}"
    );
    let slurm = allot()
        .args(["worker", "--print-resources", "--mem", "3GiB"])
        .env("SLURM_JOB_ID", "4242")
        .env("SLURM_CPUS_ON_NODE", "6")
        .env("SLURM_MEM_PER_NODE", "2048")
        .env("SLURMD_NODENAME", "node17")
        .output()
        .expect("run allot");
    assert!(slurm.status.success());
    let text = String::from_utf8_lossy(&slurm.stdout);
    assert!(text.contains("cores: 6 from SLURM_CPUS_ON_NODE"), "{text}");
    assert!(
        text.contains("mem: 3221225472 bytes") && text.contains("overridden by the flag"),
        "{text}"
    );
    assert!(text.contains("label: slurm_job=4242") && text.contains("label: host=node17"));
    let bad = run(&["worker", "--print-resources", "--cores", "many"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a number of cores or `auto`"));
}

/// SIGTERM on a worker: it reports `draining` at once, takes nothing new
/// (a task submitted then runs on the other worker), lets its running task
/// finish (once) and exits 0.
#[test]
fn a_sigtermed_worker_drains_its_task_and_exits_cleanly() {
    let dir = Dir::new("worker-drain");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("w-2", "worker"),
            ("client", "client"),
        ],
    );
    let (d, g) = (port(), port());
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _gw = gateway(&pki, g, &d.to_string());
    let log = dir.0.join("runs.log");
    let rec = format!(
        "rec=read p; echo \"$p\" >> {}; sleep 2; printf 'ran %s' \"$p\"",
        log.display()
    );
    let ds = d.to_string();
    let mut w1 = worker(&pki, "w-1", &ds, &["--apps", "echo,rec", "--app-cmd", &rec]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    let input = dir.0.join("token");
    std::fs::write(&input, b"tok-1\n").unwrap();
    let (pki2, gw2, inp) = (
        pki.clone(),
        g.to_string(),
        input.to_str().unwrap().to_owned(),
    );
    let sub = std::thread::spawn(move || {
        submit(&pki2, &gw2, &["--app", "rec", "--input", &inp, "--json"])
    });
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tok-1")) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the task never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w1.signal("TERM");
    let ws = wait_workers(&pki, d, 1, "draining", Duration::from_secs(2));
    assert!(ws
        .iter()
        .any(|w| w["name"] == "w-1" && w["state"] == "draining"));
    let _w2 = worker(&pki, "w-2", &ds, &["--apps", "echo,rec", "--app-cmd", &rec]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    let other = submit(&pki, &g.to_string(), &["--app", "echo", "--json"]);
    assert!(other.status.success());
    assert_eq!(
        json(&other)["worker"],
        "w-2",
        "nothing new on a draining worker"
    );
    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(
        (r["worker"].as_str(), r["output"].as_str()),
        (Some("w-1"), Some("ran tok-1"))
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = w1.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the worker did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().filter(|l| *l == "tok-1").count(), 1, "{runs}");
}

/// Starts `allot ARGS` in the background with its stderr in `log`.
fn spawn_logged(args: &[&str], log: &Path) -> Proc {
    Proc(
        allot()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn allot"),
    )
}

#[test]
fn workers_sharing_a_pool_certificate_serve_under_their_own_names() {
    let dir = Dir::new("pool");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("pool", "worker"),
            ("client", "client"),
        ],
    );
    let (d, g) = (port(), port());
    let ds = d.to_string();
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _gw = gateway(&pki, g, &ds);
    let pooled = |name: &str, rack: &str, log: &str| {
        let label = format!("rack={rack}");
        spawn_logged(
            &[
                "worker", "--name", name, "--cert", "pool", "--pki", &pki, "--join", &ds,
                "--label", &label,
            ],
            &dir.0.join(log),
        )
    };
    let _a = pooled("w-a", "a", "a.log");
    let _b = pooled("w-b", "b", "b.log");
    let ws = wait_workers(&pki, d, 2, "up", Duration::from_secs(20));
    let mut names: Vec<&str> = ws.iter().filter_map(|w| w["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["w-a", "w-b"]);

    // Each serves: a task only one of them matches runs there.
    for (rack, who) in [("a", "w-a"), ("b", "w-b")] {
        let req = format!("server.rack == '{rack}'");
        let out = submit(
            &pki,
            &g.to_string(),
            &["--app", "echo", "--require", &req, "--json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out)["worker"], who);
    }

    // The pool certificate does not make a name shareable: a second live
    // worker named w-a is refused, and says why; the first keeps its row.
    let log = dir.0.join("dup.log");
    let _dup = pooled("w-a", "c", "dup.log");
    eventually("the duplicate is told", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("worker name `w-a` is taken by another live worker")
            .then_some(())
    });
    let ws = status(&pki, d).unwrap();
    let a: Vec<&Value> = ws.iter().filter(|w| w["name"] == "w-a").collect();
    assert_eq!(a.len(), 1, "{ws:?}");
    assert_eq!(a[0]["rack"], "a", "the duplicate took the row over: {ws:?}");
}

#[test]
fn an_expired_or_not_yet_valid_certificate_stops_a_node_at_start_saying_how_to_renew() {
    let dir = Dir::new("expired");
    let pki = pki(&dir.0, &[]);
    // A day's validity from 2001: long expired.
    ok(&[
        "cert",
        "issue",
        "--dir",
        &pki,
        "--name",
        "old",
        "--role",
        "worker",
        "--days",
        "1",
        "--not-before",
        "1000000000",
    ]);
    let err = fails(&[
        "worker",
        "--name",
        "w",
        "--cert",
        "old",
        "--pki",
        &pki,
        "--join",
        "127.0.0.1:9",
    ]);
    for want in [
        "old.pem expired on 2001-09-10 01:46:40 UTC",
        &format!("allot cert issue --dir {pki} --name old --role worker --days 365"),
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    // Valid from 2100: not yet.
    ok(&[
        "cert",
        "issue",
        "--dir",
        &pki,
        "--name",
        "early",
        "--role",
        "distributor",
        "--not-before",
        "4102444800",
    ]);
    let data = dir.0.join("data");
    let err = fails(&[
        "distributor",
        "--name",
        "early",
        "--pki",
        &pki,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        err.contains("early.pem is not valid yet: valid from 2100-01-01 00:00:00 UTC"),
        "{err}"
    );
    // --days must be at least 1, and is shown at issue.
    let err = fails(&[
        "cert", "issue", "--dir", &pki, "--name", "z", "--role", "client", "--days", "0",
    ]);
    assert!(err.contains("--days"), "{err}");
    let out = ok(&[
        "cert", "issue", "--dir", &pki, "--name", "c", "--role", "client", "--days", "7",
    ]);
    assert!(out.contains("valid until "), "{out}");
}

/// `localhost:PORT` for a free loopback port.
fn localhost() -> String {
    format!("localhost:{}", port().port())
}

#[test]
fn every_address_flag_takes_a_host_name() {
    let dir = Dir::new("hostnames");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let (d, g, m) = (localhost(), localhost(), localhost());
    let data = dir.0.join("data");
    let set = format!("main={d}");
    let _gw = spawn(&[
        "gateway", "--name", "gw-1", "--pki", &pki, "--listen", &g, "--set", &set,
    ]);
    let _dist = spawn(&[
        "distributor",
        "--name",
        "dist-1",
        "--pki",
        &pki,
        "--set-name",
        "main",
        "--listen",
        &d,
        "--gateways",
        &g,
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics",
        &m,
    ]);
    // The worker's from a config file: the keys take names as the flags do.
    let conf = dir.0.join("w-1.toml");
    std::fs::write(
        &conf,
        format!("name = \"w-1\"\npki = \"{pki}\"\njoin = [\"{d}\"]\nlisten = \"localhost:0\"\n"),
    )
    .unwrap();
    let _w = spawn(&["worker", "--config", conf.to_str().unwrap()]);
    // status --distributor by name lists the worker...
    eventually("the worker is up", Duration::from_secs(20), || {
        let out = run(&["status", "--pki", &pki, "--distributor", &d, "--json"]);
        let ws = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        (ws.as_array()?
            .iter()
            .any(|w| w["name"] == "w-1" && w["state"] == "up"))
        .then_some(())
    });
    // ...status --gateway by name the member, registered under its address.
    eventually(
        "the gateway knows the member",
        Duration::from_secs(20),
        || {
            let out = run(&["status", "--pki", &pki, "--gateway", &g, "--json"]);
            let ms = serde_json::from_slice::<Value>(&out.stdout).ok()?;
            (ms.as_array()?.iter().any(|m| m["name"] == "dist-1")).then_some(())
        },
    );
    // submit, explain and a job through names, from flags and variables.
    let out = submit(&pki, &g, &["--app", "echo", "--input", "-", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["worker"], "w-1");
    let out = allot()
        .env("ALLOT_GATEWAY", &g)
        .env("ALLOT_PKI", &pki)
        .args(["submit", "--app", "echo", "--array", "1-3", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = allot()
        .env("ALLOT_DISTRIBUTOR", &d)
        .env("ALLOT_PKI", &pki)
        .args(["explain", "--app", "echo", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["matches"], true);
    // --metrics by name serves.
    let port: u16 = m.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
}

#[test]
fn a_name_that_does_not_resolve_is_an_error_naming_the_flag() {
    let dir = Dir::new("nohost");
    let pki = pki(
        &dir.0,
        &[
            ("g", "gateway"),
            ("d", "distributor"),
            ("w", "worker"),
            ("client", "client"),
        ],
    );
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let bad = "nohost.invalid:7000";
    let set = format!("main={bad}");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "--join",
            vec!["worker", "--name", "w", "--pki", &pki, "--join", bad],
        ),
        (
            "--listen",
            vec![
                "worker",
                "--name",
                "w",
                "--pki",
                &pki,
                "--join",
                "127.0.0.1:9",
                "--listen",
                bad,
            ],
        ),
        (
            "--listen",
            vec!["gateway", "--name", "g", "--pki", &pki, "--listen", bad],
        ),
        (
            "--set main",
            vec![
                "gateway",
                "--name",
                "g",
                "--pki",
                &pki,
                "--listen",
                "127.0.0.1:0",
                "--set",
                &set,
            ],
        ),
        (
            "--gateways",
            vec![
                "distributor",
                "--name",
                "d",
                "--pki",
                &pki,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--gateways",
                bad,
            ],
        ),
        (
            "--metrics",
            vec![
                "distributor",
                "--name",
                "d",
                "--pki",
                &pki,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--metrics",
                bad,
            ],
        ),
        (
            "--gateway",
            vec!["submit", "--pki", &pki, "--app", "echo", "--gateway", bad],
        ),
        ("--gateway", vec!["jobs", "--pki", &pki, "--gateway", bad]),
        (
            "--distributor",
            vec!["status", "--pki", &pki, "--distributor", bad],
        ),
        ("--gateway", vec!["status", "--pki", &pki, "--gateway", bad]),
        (
            "--distributor",
            vec![
                "explain",
                "--pki",
                &pki,
                "--app",
                "echo",
                "--distributor",
                bad,
            ],
        ),
    ];
    for (flag, args) in cases {
        let t0 = Instant::now();
        let err = fails(&args);
        let want = format!("{flag}: cannot resolve \"{bad}\"");
        assert!(err.contains(&want), "{args:?}: {want:?} not in {err}");
        // At once: a name that does not resolve is no outage to wait out.
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }
    // Malformed ones are refused by the parser, saying what is wrong.
    for (value, why) in [
        ("localhost", "no port"),
        ("localhost:99999", "is not a port"),
        ("::1:7000", "needs brackets"),
    ] {
        let err = fails(&["status", "--pki", &pki, "--distributor", value]);
        assert!(err.contains(why), "{value}: {err}");
    }
}

/// `allot drain` drains a worker without stopping it: `allot status` shows
/// it `draining`, new tasks go to the other worker, its running task
/// finishes there (once) and the worker keeps running; `allot undrain`
/// makes it take tasks again. An unknown worker is an error naming it.
#[test]
fn drain_and_undrain_a_running_worker() {
    let dir = Dir::new("remote-drain");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("w-2", "worker"),
            ("client", "client"),
        ],
    );
    let (d, g) = (port(), port());
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _gw = gateway(&pki, g, &d.to_string());
    let log = dir.0.join("runs.log");
    let rec = format!(
        "rec=read p; echo \"$p\" >> {}; sleep 2; printf 'ran %s' \"$p\"",
        log.display()
    );
    let ds = d.to_string();
    let mut w1 = worker(&pki, "w-1", &ds, &["--apps", "echo,rec", "--app-cmd", &rec]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    let input = dir.0.join("token");
    std::fs::write(&input, b"tok-1\n").unwrap();
    let (pki2, gw2, inp) = (
        pki.clone(),
        g.to_string(),
        input.to_str().unwrap().to_owned(),
    );
    let sub = std::thread::spawn(move || {
        submit(&pki2, &gw2, &["--app", "rec", "--input", &inp, "--json"])
    });
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tok-1")) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the task never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _w2 = worker(&pki, "w-2", &ds, &["--apps", "echo,rec", "--app-cmd", &rec]);
    wait_workers(&pki, d, 2, "up", Duration::from_secs(20));
    let control = |args: &[&str]| {
        let mut all = vec![args[0], "--pki", &pki, "--distributor", &ds];
        all.extend(&args[1..]);
        run(&all)
    };
    let out = control(&["drain", "w-1", "--timeout", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("w-1 drains"));
    let ws = status(&pki, d).expect("status");
    assert!(
        ws.iter()
            .any(|w| w["name"] == "w-1" && w["state"] == "draining"),
        "draining at once: {ws:?}"
    );
    for _ in 0..3 {
        let other = submit(&pki, &g.to_string(), &["--app", "echo", "--json"]);
        assert!(other.status.success());
        assert_eq!(json(&other)["worker"], "w-2", "nothing new on w-1");
    }
    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(
        (r["worker"].as_str(), r["output"].as_str()),
        (Some("w-1"), Some("ran tok-1"))
    );
    assert!(w1.0.try_wait().unwrap().is_none(), "the worker still runs");
    let ws = status(&pki, d).expect("status");
    assert!(ws
        .iter()
        .any(|w| w["name"] == "w-1" && w["state"] == "draining"));

    let unknown = control(&["drain", "w-9"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("no worker named `w-9`"), "{err}");

    let out = control(&["undrain", "w-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With w-2 drained (at once), a task can only go to w-1 again.
    assert!(control(&["drain", "w-2", "--timeout", "0"])
        .status
        .success());
    let ws = status(&pki, d).expect("status");
    assert!(
        ws.iter().any(|w| w["name"] == "w-1" && w["state"] == "up"),
        "{ws:?}"
    );
    let again = submit(&pki, &g.to_string(), &["--app", "echo", "--json"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(json(&again)["worker"], "w-1", "w-1 takes tasks again");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().filter(|l| *l == "tok-1").count(), 1, "{runs}");
}

/// A command app's environment, directory and output files from a worker's
/// config file: the task runs in its directory with its variables, its
/// stdout lands in the output directory and the result names the file. A
/// missing directory stops the worker at start, and a typo in those keys
/// names the file, line and key.
#[test]
fn command_apps_get_their_env_directory_and_output_files() {
    let dir = Dir::new("command-setup");
    let pki = pki(
        &dir.0,
        &[
            ("gw-1", "gateway"),
            ("dist-1", "distributor"),
            ("w-1", "worker"),
            ("client", "client"),
        ],
    );
    let work = dir.0.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out_dir = dir.0.join("out");
    let cfg = dir.0.join("w-1.toml");
    let write_cfg = |cwd: &Path, key: &str| {
        std::fs::write(
            &cfg,
            format!(
                "apps = \"where\"\napp_cmd = [\"where=sh -c 'pwd; echo $GREETING'\", \"hi=printenv GREETING\"]\n\
                 app_env = [\"where:GREETING=hello\", \"hi:GREETING=direct\"]\n{key} = [\"where={}\"]\n\
                 output_dir = \"{}\"\n",
                cwd.display(),
                out_dir.display()
            ),
        )
        .unwrap();
    };
    let c = cfg.to_str().unwrap().to_owned();
    let (d, g) = (port(), port());
    let ds = d.to_string();
    write_cfg(&work, "app_cwdd");
    let typo = run(&[
        "worker", "--config", &c, "--name", "w-1", "--pki", &pki, "--join", &ds,
    ]);
    assert!(!typo.status.success());
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("w-1.toml:4") && err.contains("app_cwdd"),
        "{err}"
    );
    assert!(err.contains("did you mean `app_cwd`"), "{err}");
    write_cfg(&dir.0.join("missing"), "app_cwd");
    let missing = run(&[
        "worker", "--config", &c, "--name", "w-1", "--pki", &pki, "--join", &ds,
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("--app-cwd where=") && err.contains("No such file"),
        "{err}"
    );
    write_cfg(&work, "app_cwd");
    let _dist = distributor(&pki, &dir.0, "dist-1", d, &[]);
    let _gw = gateway(&pki, g, &ds);
    let _w = worker(&pki, "w-1", &ds, &["--config", &c]);
    wait_workers(&pki, d, 1, "up", Duration::from_secs(20));
    for (app, want) in [
        (
            "where",
            format!("{}\nhello\n", work.canonicalize().unwrap().display()),
        ),
        ("hi", "direct\n".to_owned()),
    ] {
        let out = submit(&pki, &g.to_string(), &["--app", app, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = PathBuf::from(json(&out)["output"].as_str().unwrap());
        assert!(file.starts_with(&out_dir), "{file:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), want);
    }
}

/// `allot bench --command CMD --spawn-baseline`: the tasks run the command
/// on the workers, and the same number of bare spawns with the same
/// parallelism are measured in the same run and reported as a ratio.
/// Figures are not checked (targets live in BENCHMARKS.md).
#[test]
fn bench_command_tasks_beside_a_bare_spawn_loop() {
    let dir = Dir::new("bench-command");
    let marker = dir.0.join("ran");
    let cmd = format!("touch {}", marker.display());
    let out = run(&[
        "bench",
        "--local",
        "--workers",
        "1",
        "--slots",
        "2",
        "--concurrency",
        "8",
        "--tasks",
        "300",
        "--command",
        &cmd,
        "--spawn-baseline",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["app"], "cmd");
    assert_eq!(j["command"], cmd.as_str());
    assert_eq!(j["spawn_parallelism"], 2, "the cluster's slots: {j}");
    for key in ["tasks_per_s", "spawn_baseline_per_s", "spawn_ratio"] {
        assert!(
            j[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} missing or zero: {j}"
        );
    }
    assert!(marker.exists(), "the command ran");
    let bad = run(&[
        "bench",
        "--local",
        "--command",
        "/nonexistent/x",
        "--spawn-baseline",
        "--tasks",
        "10",
        "--json",
    ]);
    assert!(!bad.status.success());
}

/// `allot worker --prefetch N`: the distributor sees the slots and the
/// places ahead, the worker runs no more than its slots at once while the
/// others wait on it (its `/metrics` says how many), and every task of an
/// array ends in its one result. A prefetch past the bound is a clear
/// error.
#[test]
fn a_prefetching_worker_runs_its_slots_and_no_more() {
    let t = common::trio::Trio::start(
        "prefetch",
        &[],
        &[
            "--apps",
            "slow",
            "--app-cmd",
            "slow=sleep 0.5",
            "--slots",
            "1",
            "--prefetch",
            "2",
        ],
    );
    let too_many = fails(&[
        "worker",
        "--name",
        "w-2",
        "--pki",
        &t.pki,
        "--join",
        "127.0.0.1:1",
        "--prefetch",
        "5000",
    ]);
    assert!(too_many.contains("--prefetch"), "{too_many}");
    let ws = status(&t.pki, t.dist).expect("status");
    assert_eq!(ws[0]["slots"], 3, "one slot and two places ahead: {ws:?}");

    let g = t.gw.to_string();
    let ack = ok(&[
        "submit",
        "--pki",
        &t.pki,
        "--gateway",
        &g,
        "--app",
        "slow",
        "--array",
        "1-4",
        "--detach",
    ]);
    let job = ack.trim();
    let sample = |page: &str, name: &str| -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    // While the first runs, two wait on the worker (the fourth at the
    // distributor).
    eventually(
        "one task running and two waiting on the worker",
        Duration::from_secs(20),
        || {
            let (_, page) = common::http::get(t.worker_metrics, "/metrics");
            (sample(&page, "allot_worker_tasks_running") == Some(1.0)
                && sample(&page, "allot_worker_tasks_waiting") == Some(2.0))
            .then_some(())
        },
    );
    let t0 = Instant::now();
    ok(&[
        "wait",
        "--timeout",
        "30",
        "--pki",
        &t.pki,
        "--gateway",
        &g,
        job,
    ]);
    // One at a time on the one slot: the three left take 1.5 s at least.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    let rows = ok(&["tasks", job, "--pki", &t.pki, "--gateway", &g, "--json"]);
    let rows: Vec<Value> = serde_json::from_str(&rows).unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert_eq!(r["worker"], "w-1", "{r}");
    }
    let (_, page) = common::http::get(t.worker_metrics, "/metrics");
    assert_eq!(
        sample(&page, "allot_worker_tasks_waiting"),
        Some(0.0),
        "{page}"
    );
}
