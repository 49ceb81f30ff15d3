//! `allot up`, the `ALLOT_*` defaults of the client commands and
//! `--log-format json`, through real processes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{allot, children_of, Dir, Proc};
use serde_json::Value;

/// The variables `allot up` prints.
const VARS: [&str; 4] = [
    "ALLOT_GATEWAY",
    "ALLOT_DISTRIBUTOR",
    "ALLOT_PKI",
    "ALLOT_NAME",
];

/// `allot` with none of the `ALLOT_*` defaults of the test's environment.
fn bare() -> Command {
    let mut c = allot();
    for v in VARS {
        c.env_remove(v);
    }
    c
}

/// A running `allot up` and the lines of its stdout as they come.
struct Up {
    proc: Proc,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Up {
    fn start(dir: &Dir, extra: &[&str], log: &str) -> Up {
        let mut c = bare();
        c.env("ALLOT_LOG", log)
            .args(["up", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&dir.0)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn allot up");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Up {
            proc: Proc(child),
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next line of stdout, within 60 s.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("allot up printed a line in time")
    }

    /// Sends `sig`, waits for the exit: its status and stderr.
    fn stop(mut self, sig: &str) -> (std::process::ExitStatus, String) {
        self.proc.signal(sig);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.proc.0.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "allot up did not exit within 30 s of SIG{sig}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = self.stderr.take().unwrap().join().unwrap();
        (status, err)
    }
}

/// Runs `cmd` with `input` on stdin to the end.
fn run_with_input(mut cmd: Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().expect("wait")
}

fn assert_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs `cmd` (stdin empty), which must fail; returns its stderr.
fn assert_fails(mut cmd: Command, what: &str) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run allot");
    assert!(
        !out.status.success(),
        "{what} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn up_prints_a_line_that_points_the_client_commands_at_it_and_stops_on_sigint() {
    let dir = Dir::new("up-text");
    let up = Up::start(&dir, &[], "warn");
    // The text ends with the export line, then how to try it.
    let mut dashboard = None;
    let export = loop {
        let l = up.line();
        if let Some(d) = l.trim().strip_prefix("dashboard:") {
            dashboard = Some(d.trim().to_owned());
        }
        if let Some(e) = l.trim().strip_prefix("export ") {
            break format!("export {e}");
        }
    };
    let dashboard = dashboard.expect("a dashboard line before the export line");
    assert!(dashboard.starts_with("http://127.0.0.1:"), "{dashboard}");
    for v in VARS {
        assert!(export.contains(&format!("{v}=")), "{export}");
    }
    let env_file = dir.0.canonicalize().unwrap().join("env");
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap().trim(),
        export,
        "the export line is also in DIR/env"
    );
    assert!(
        children_of(up.proc.0.id()).is_empty(),
        "the nodes run in the process"
    );

    // Pasted into a shell, the line is all `submit` and `status` need.
    let script = format!(
        "{export} && echo hello-from-env | \"$ALLOT_BIN\" submit --app echo --input - \
         && \"$ALLOT_BIN\" status --json"
    );
    let mut sh = Command::new("sh");
    for v in VARS {
        sh.env_remove(v);
    }
    sh.env("ALLOT_BIN", env!("CARGO_BIN_EXE_allot"))
        .env("ALLOT_LOG", "warn")
        .args(["-c", &script])
        .stdin(Stdio::null());
    let out = assert_ok(
        &sh.output().unwrap(),
        "submit and status from the export line",
    );
    let (echoed, status) = out
        .split_once('\n')
        .unwrap_or_else(|| panic!("two outputs: {out}"));
    assert_eq!(echoed, "hello-from-env");
    let members: Value = serde_json::from_str(status).unwrap();
    let m = &members[0];
    assert_eq!(m["name"], "distributor", "{members}");
    assert_eq!(m["state"], "up", "{members}");
    assert_eq!(m["workers_up"], 2, "{members}");

    let (status, stderr) = up.stop("INT");
    assert!(status.success(), "exit {status:?}: {stderr}");
    // A stop on purpose is no lost link: nothing is warned of.
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    assert!(!env_file.exists(), "DIR/env is removed on exit");
    assert!(
        dir.0.join("pki").join("ca.pem").exists(),
        "the certificates stay in DIR"
    );
}

#[test]
fn up_serves_its_dashboard_at_the_url_it_prints() {
    use common::http::{get, get_json};
    let dir = Dir::new("up-dash");
    let up = Up::start(&dir, &["--json"], "warn");
    let j: Value = serde_json::from_str(&up.line()).unwrap();
    let url = j["dashboard"].as_str().expect("a dashboard URL");
    let addr: std::net::SocketAddr = url
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{url}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{url}");
    let (code, page) = get(addr, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>allot dashboard</title>"));
    let w = get_json(addr, "/api/workers");
    let mut names: Vec<&str> = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["worker-1", "worker-2"], "{w}");
    let mut c = bare();
    for (k, v) in j["env"].as_object().unwrap() {
        c.env(k, v.as_str().unwrap());
    }
    c.args(["submit", "--app", "echo", "--input", "-"]);
    assert_ok(&run_with_input(c, b"x"), "submit");
    let s = get_json(addr, "/api/summary");
    assert_eq!(s["counters"]["completed"], 1, "{s}");
    assert_eq!(s["set"], "default", "{s}");
    let (status, stderr) = up.stop("TERM");
    assert!(status.success(), "exit {status:?}: {stderr}");

    // Another address than a loopback one is refused.
    let mut c = bare();
    c.args(["up", "--metrics", "0.0.0.0:0", "--dir"])
        .arg(&dir.0);
    let err = assert_fails(c, "up --metrics 0.0.0.0:0");
    assert!(
        err.contains("--metrics 0.0.0.0:0") && err.contains("loopback"),
        "{err}"
    );

    // An address in use: a clear error at start, nothing left running.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = bare();
    c.args(["up", "--listen", "127.0.0.1:0", "--metrics", &addr, "--dir"])
        .arg(&dir.0);
    let err = assert_fails(c, "up --metrics on an address in use");
    assert!(
        err.contains(&format!("--metrics {addr}")) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

/// `url` (`http://ADDR/?QUERY` or `http://ADDR/`): the address and the
/// query, `?` included (empty without one).
fn split_url(url: &str) -> (std::net::SocketAddr, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}"));
    let (addr, path) = rest.split_once('/').unwrap_or_else(|| panic!("{url}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{url}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{url}");
    let query = path.strip_prefix('?').map(|q| format!("?{q}"));
    assert!(query.is_some() || path.is_empty(), "{url}");
    (addr, query.unwrap_or_default())
}

#[test]
fn up_with_a_metrics_token_prints_a_dashboard_url_that_holds_it() {
    use common::http::get;
    let dir = Dir::new("up-token");
    let token = dir.0.join("token");
    // Characters a query would misread unless encoded: `+` (a space),
    // `&` and `#` (the end of the parameter), `%` (an escape).
    std::fs::write(&token, " s3cret+a&b#c%25/\n").unwrap();
    let t = token.to_str().unwrap();
    let check = |url: &str| {
        let (addr, query) = split_url(url);
        assert!(query.starts_with("?token="), "{url}");
        assert!(!url.contains('+') && !url.contains('#'), "encoded: {url}");
        let (code, page) = get(addr, &format!("/{query}"));
        assert_eq!(code, 200, "{url}");
        assert!(page.contains("<title>allot dashboard</title>"), "{page}");
        let (code, body) = get(addr, &format!("/api/workers{query}"));
        assert_eq!(code, 200, "/api/workers{query}: {body}");
        assert!(body.contains("worker-1"), "{body}");
        for path in ["/", "/api/workers", "/api/summary", "/metrics"] {
            assert_eq!(get(addr, path).0, 401, "{path} without the token");
        }
        assert_eq!(get(addr, "/?token=s3cret").0, 401, "another token");
    };

    // The text: the URL, and a word that it holds the token.
    let up = Up::start(&dir, &["--metrics-token", t], "warn");
    let mut dashboard = None;
    let mut warned = false;
    loop {
        let l = up.line();
        if let Some(d) = l.trim().strip_prefix("dashboard:") {
            dashboard = Some(d.trim().to_owned());
        }
        warned |= l.contains("the URL holds the --metrics-token");
        if l.trim().starts_with("export ") {
            break;
        }
    }
    let dashboard = dashboard.expect("a dashboard line before the export line");
    assert!(warned, "the text says the URL holds the token");
    check(&dashboard);
    let (status, stderr) = up.stop("INT");
    assert!(status.success(), "exit {status:?}: {stderr}");

    // --json: the same URL, token included.
    let up = Up::start(&dir, &["--json", "--metrics-token", t], "warn");
    let j: Value = serde_json::from_str(&up.line()).unwrap();
    check(j["dashboard"].as_str().expect("a dashboard URL"));
    let (status, stderr) = up.stop("TERM");
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn up_refuses_a_missing_or_empty_metrics_token_before_starting() {
    let dir = Dir::new("up-token-bad");
    let empty = dir.0.join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let missing = dir.0.join("missing");
    let cases = [(missing, "No such file"), (empty, "the file is empty")];
    for (file, why) in cases {
        // A --dir not yet there: it is still not there after, since the
        // token is read before anything is created or started.
        let up_dir = dir.0.join("up");
        let mut c = bare();
        c.args(["up", "--listen", "127.0.0.1:0", "--metrics-token"])
            .arg(&file)
            .arg("--dir")
            .arg(&up_dir);
        let err = assert_fails(c, "up with a bad --metrics-token");
        assert!(
            err.contains(&format!("--metrics-token {}", file.display())) && err.contains(why),
            "{err}"
        );
        assert!(
            !err.contains("starting the distributor"),
            "refused before any node starts: {err}"
        );
        assert!(!up_dir.exists(), "nothing created: {err}");
    }
}

#[test]
fn up_json_reuses_its_pki_flags_win_over_the_environment_and_sigterm_stops_it() {
    let dir = Dir::new("up-json");
    // A first run creates the PKI; the second must reuse it.
    let first = Up::start(&dir, &["--json", "--workers", "1"], "warn");
    let j: Value = serde_json::from_str(&first.line()).unwrap();
    let (status, stderr) = first.stop("TERM");
    assert!(status.success(), "exit {status:?}: {stderr}");
    let ca = dir.0.join("pki").join("ca.pem");
    let ca_before = std::fs::read(&ca).unwrap();
    assert_eq!(j["workers"], 1);

    let up = Up::start(&dir, &["--json", "--log-format", "json"], "info");
    let j: Value = serde_json::from_str(&up.line()).unwrap();
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before, "the CA was reused");
    let env = j["env"].as_object().expect("env object");
    assert_eq!(env["ALLOT_GATEWAY"], j["gateway"]);
    assert_eq!(env["ALLOT_PKI"], j["pki"]);
    assert!(j["export"]
        .as_str()
        .unwrap()
        .starts_with("export ALLOT_GATEWAY="));
    let with_env = || {
        let mut c = bare();
        for (k, v) in env {
            c.env(k, v.as_str().unwrap());
        }
        c
    };

    // Only the environment: submit (through the gateway) and explain
    // (at the distributor).
    let mut c = with_env();
    c.args(["submit", "--app", "echo", "--input", "-"]);
    let out = run_with_input(c, b"via-env");
    assert_eq!(assert_ok(&out, "submit via env"), "via-env");
    let mut c = with_env();
    c.args(["explain", "--app", "echo", "--json"]);
    let e: Value = serde_json::from_str(&assert_ok(&c.output().unwrap(), "explain")).unwrap();
    assert_eq!(e["matches"], true, "{e}");
    assert_eq!(e["total"], 2, "{e}");

    // Every variable wrong, every flag right: the flags win.
    let mut c = with_env();
    c.env("ALLOT_GATEWAY", "127.0.0.1:9")
        .env("ALLOT_PKI", dir.0.join("nowhere"))
        .env("ALLOT_NAME", "nobody")
        .args([
            "submit",
            "--app",
            "echo",
            "--input",
            "-",
            "--retry-for",
            "0",
        ])
        .args(["--gateway", j["gateway"].as_str().unwrap()])
        .args(["--pki", j["pki"].as_str().unwrap()])
        .args(["--name", "client"]);
    let out = run_with_input(c, b"flags-win");
    assert_eq!(assert_ok(&out, "submit with flags over env"), "flags-win");
    // --distributor given: ALLOT_GATEWAY (even a bad one) is not read.
    let mut c = with_env();
    c.env("ALLOT_GATEWAY", "not-an-address").args([
        "status",
        "--json",
        "--distributor",
        j["distributor"].as_str().unwrap(),
    ]);
    let w: Value = serde_json::from_str(&assert_ok(&c.output().unwrap(), "status")).unwrap();
    assert_eq!(w.as_array().map(Vec::len), Some(2), "{w}");

    let pid = up.proc.0.id();
    let (status, stderr) = up.stop("TERM");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(children_of(pid).is_empty());
    // --log-format json: every stderr line is a JSON object.
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "info logs were written");
    for l in lines {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v.get(k).is_some(), "no `{k}` in {l}");
        }
    }
}

#[test]
fn a_bad_or_missing_environment_is_named_in_the_error() {
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["submit", "--app", "echo"],
            "ALLOT_GATEWAY",
            "not-an-address",
        ),
        (&["status"], "ALLOT_GATEWAY", "127.0.0.1:7000,nope"),
        (&["jobs"], "ALLOT_GATEWAY", "nope"),
        (&["explain", "--app", "echo"], "ALLOT_DISTRIBUTOR", "nope"),
        (&["bench", "--tasks", "1"], "ALLOT_GATEWAY", "nope"),
    ];
    for (args, var, value) in cases {
        let mut c = bare();
        c.env("ALLOT_PKI", "/nonexistent")
            .env(var, value)
            .args(args);
        let err = assert_fails(c, &format!("{args:?} with {var}={value}"));
        assert!(
            err.contains(&format!("{var}={value}")) && err.contains("is not an address"),
            "{args:?}: {err}"
        );
    }
    // Nothing set: the error says which flag or variable to give.
    let mut c = bare();
    c.args(["submit", "--app", "echo", "--pki", "/nonexistent"]);
    let err = assert_fails(c, "submit without a gateway");
    assert!(
        err.contains("--gateway") && err.contains("ALLOT_GATEWAY"),
        "{err}"
    );
    let out = bare()
        .args(["submit", "--app", "echo", "--gateway", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--pki") && err.contains("ALLOT_PKI"),
        "{err}"
    );
}

#[test]
fn log_format_json_writes_one_object_a_line_with_the_event_fields() {
    let dir = Dir::new("logjson");
    let pki = common::pki(&dir.0, &[("d1", "distributor")]);
    let addr = common::port().to_string();
    let data = dir.0.join("data");
    let mut child = bare()
        .env("ALLOT_LOG", "info")
        .args(["distributor", "--log-format", "json", "--name", "d1"])
        .args(["--listen", &addr, "--pki", &pki, "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let _proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let listening = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line in time");
        let v: Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v.get(k).is_some(), "no `{k}` in {l}");
        }
        if v["message"] == "distributor listening" {
            break v;
        }
    };
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["target"]
            .as_str()
            .unwrap()
            .starts_with("allot::distributor"),
        "{listening}"
    );
    assert_eq!(
        listening["addr"],
        addr.as_str(),
        "the event's fields are keys"
    );
}
