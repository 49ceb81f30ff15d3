//! Several hosts: the gateway, the distributor, two workers and the client
//! each in a network namespace of its own, joined by veth pairs to a
//! bridge in a hub namespace, finding each other by host name through
//! `/etc/netns/NS/hosts`. Needs root and `ip netns`; skipped (with the
//! reason printed) where either is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The subnet the namespaces share. Every address lives inside the test's
/// own namespaces, so runs at the same time cannot collide.
const NET: &str = "10.213.7";

/// The hosts: name, namespace suffix, last byte of the address.
const HOSTS: [(&str, u8); 5] = [("gw", 1), ("dist", 2), ("w1", 3), ("w2", 4), ("cli", 5)];

/// Where the distributor moves to (a second address in its namespace).
const MOVED: u8 = 12;

/// The namespaces, their hosts files and the processes in them, all
/// removed on drop, however the test ends.
struct Net {
    prefix: String,
    procs: Vec<Proc>,
    made: Vec<String>,
    etc: Vec<PathBuf>,
}

impl Net {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Runs `ip ARGS`; an error says what failed.
    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Builds the hub, one namespace per host and the hosts files.
    fn build() -> Result<Net, String> {
        let mut net = Net {
            prefix: format!("allot-{}", std::process::id()),
            procs: Vec::new(),
            made: Vec::new(),
            etc: Vec::new(),
        };
        let hub = net.ns("hub");
        net.ip(&["netns", "add", &hub])?;
        net.made.push(hub.clone());
        net.ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        net.ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (host, last) in HOSTS {
            let ns = net.ns(host);
            net.ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            let port = format!("v-{host}");
            net.ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            net.ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            net.ip(&["-n", &hub, "link", "set", &port, "up"])?;
            let addr = format!("{NET}.{last}/24");
            net.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            net.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            net.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
            net.etc.push(etc);
        }
        net.write_hosts(2)?;
        Ok(net)
    }

    /// Writes every namespace's hosts file, the distributor at `.dist`.
    /// In place (same inode): `ip netns exec` bind-mounts the file over
    /// `/etc/hosts`, and running processes see the new text.
    fn write_hosts(&self, dist: u8) -> Result<(), String> {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (host, last) in HOSTS {
            let last = if host == "dist" { dist } else { last };
            text.push_str(&format!("{NET}.{last} {host}\n"));
        }
        for etc in &self.etc {
            let f = etc.join("hosts");
            std::fs::write(&f, &text).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        Ok(())
    }

    /// `allot ARGS` in `host`'s namespace.
    fn allot(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), env!("CARGO_BIN_EXE_allot")])
            .args(args)
            .env("ALLOT_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// Starts `allot ARGS` in `host`'s namespace, kept until the end (its
    /// stderr in `log`, for a failing test to show).
    fn spawn(&mut self, host: &str, args: &[&str], log: &std::path::Path) -> usize {
        let child = self
            .allot(host, args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn ip netns exec allot");
        self.procs.push(Proc(child));
        self.procs.len() - 1
    }

    /// Runs `allot ARGS` from the client's namespace.
    fn run(&self, args: &[&str]) -> Output {
        self.allot("cli", args).output().expect("run allot")
    }

    /// The distributor's workers (`status --json`), if it answers.
    fn workers(&self, pki: &str) -> Option<Vec<Value>> {
        let out = self.run(&[
            "status",
            "--pki",
            pki,
            "--distributor",
            "dist:7001",
            "--json",
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()
            .cloned()
    }

    /// The state the distributor shows for `worker`.
    fn state(&self, pki: &str, worker: &str) -> Option<String> {
        let ws = self.workers(pki)?;
        let w = ws.iter().find(|w| w["name"] == worker)?;
        w["state"].as_str().map(str::to_owned)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The processes first (killing `ip netns exec` kills allot: it
        // execs), then the namespaces and their files.
        self.procs.clear();
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for etc in &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
    }
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (ip netns needs it)".into());
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`ip netns list` failed ({s})")),
        Err(e) => Some(format!("no `ip` command ({e})")),
    }
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(out)
}

#[test]
fn a_cluster_over_several_hosts_survives_a_cut_link_and_a_moved_distributor() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut net = match Net::build() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skipped: cannot build the namespaces: {e}");
            return;
        }
    };
    let dir = Dir::new("netns");
    let pki = pki(
        &dir.0,
        &[
            ("gw", "gateway"),
            ("dist", "distributor"),
            ("pool", "worker"),
            ("client", "client"),
        ],
    );
    let data = dir.0.join("data");
    let data = data.to_str().unwrap().to_owned();
    let log = |n: &str| dir.0.join(format!("{n}.log"));
    let dist_args: Vec<&str> = vec![
        "distributor",
        "--name",
        "dist",
        "--pki",
        &pki,
        "--set-name",
        "main",
        "--listen",
        "dist:7001",
        "--data-dir",
        &data,
    ];
    net.spawn(
        "gw",
        &[
            "gateway",
            "--name",
            "gw",
            "--pki",
            &pki,
            "--listen",
            "gw:7000",
            "--set",
            "main=dist:7001",
        ],
        &log("gw"),
    );
    let dist = net.spawn("dist", &dist_args, &log("dist"));
    // Two workers of one pool certificate; w1 is the stronger, so a task
    // preferring power goes there while it is up.
    for (w, power) in [("w1", "8"), ("w2", "4")] {
        net.spawn(
            w,
            &[
                "worker",
                "--name",
                w,
                "--cert",
                "pool",
                "--pki",
                &pki,
                "--join",
                "dist:7001",
                "--apps",
                "echo,sleep",
                "--slots",
                "1",
                "--power",
                power,
            ],
            &log(w),
        );
    }
    let within = Duration::from_secs(30);
    eventually("both workers up", within, || {
        let up = |w| net.state(&pki, w).as_deref() == Some("up");
        (up("w1") && up("w2")).then_some(())
    });

    // The CLI contract through host names: submit via the gateway, status.
    let submit = |net: &Net, extra: &[&str]| {
        let mut args = vec!["submit", "--pki", &pki, "--gateway", "gw:7000", "--json"];
        args.extend(extra);
        net.run(&args)
    };
    let j = ok_json(&submit(
        &net,
        &["--app", "echo", "--prefer", "server.power"],
    ));
    assert_eq!(j["status"], "ok");
    assert_eq!(j["worker"], "w1");
    let out = net.run(&["status", "--pki", &pki, "--gateway", "gw:7000", "--json"]);
    let members = ok_json(&out);
    let seed = format!("{NET}.2:7001");
    assert!(
        members
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["addr"] == seed && m["state"] == "up")),
        "{members}"
    );

    // A long task lands on w1; its link is cut while it runs: the task is
    // retried on w2 and completes there.
    let t0 = Instant::now();
    let long = net
        .allot(
            "cli",
            &[
                "submit",
                "--pki",
                &pki,
                "--gateway",
                "gw:7000",
                "--json",
                "--app",
                "sleep",
                "--prefer",
                "server.power",
                "--input",
                "-",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut long = long;
    {
        use std::io::Write;
        long.stdin.take().unwrap().write_all(b"3000").unwrap();
    }
    eventually("the long task runs on w1", within, || {
        let ws = net.workers(&pki)?;
        let w1 = ws.iter().find(|w| w["name"] == "w1")?;
        (w1["slots_free"] == 0).then_some(())
    });
    net.ip(&["-n", &net.ns("w1"), "link", "set", "eth0", "down"])
        .unwrap();
    eventually("w1 is lost", within, || {
        (net.state(&pki, "w1").as_deref() != Some("up")).then_some(())
    });
    let out = long.wait_with_output().unwrap();
    let j = ok_json(&out);
    assert_eq!(j["status"], "ok", "{j}");
    assert_eq!(j["worker"], "w2", "{j}");
    assert!(j["attempts"].as_u64() >= Some(2), "{j}");
    assert!(t0.elapsed() < within, "took {:?}", t0.elapsed());

    // The link comes back: w1 registers again and takes work again.
    net.ip(&["-n", &net.ns("w1"), "link", "set", "eth0", "up"])
        .unwrap();
    eventually("w1 is back", within, || {
        (net.state(&pki, "w1").as_deref() == Some("up")).then_some(())
    });
    let j = ok_json(&submit(
        &net,
        &["--app", "echo", "--prefer", "server.power"],
    ));
    assert_eq!(j["worker"], "w1", "{j}");

    // The distributor moves to another address and its name follows:
    // the workers look it up again when they reconnect, and so does the
    // gateway's watch of its seed member, which clients are sent to.
    net.procs[dist].kill();
    let moved = format!("{NET}.{MOVED}/24");
    net.ip(&["-n", &net.ns("dist"), "addr", "add", &moved, "dev", "eth0"])
        .unwrap();
    net.write_hosts(MOVED).unwrap();
    net.spawn("dist", &dist_args, &log("dist-moved"));
    eventually("both workers up at the moved distributor", within, || {
        let up = |w| net.state(&pki, w).as_deref() == Some("up");
        (up("w1") && up("w2")).then_some(())
    });
    let j = ok_json(&submit(&net, &["--app", "echo"]));
    assert_eq!(j["status"], "ok", "{j}");
    let moved = format!("{NET}.{MOVED}:7001");
    eventually("the gateway follows the seed", within, || {
        let out = net.run(&["status", "--pki", &pki, "--gateway", "gw:7000", "--json"]);
        let ms = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        let ms = ms.as_array()?;
        (ms.len() == 1 && ms[0]["addr"] == moved && ms[0]["state"] == "up").then_some(())
    });
}
