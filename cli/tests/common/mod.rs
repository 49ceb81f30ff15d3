//! What the process tests share: the built `allot` binary, processes that
//! are killed when the test ends, scratch directories, free ports, a PKI.

#![allow(dead_code)]

pub mod http;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `allot` binary, logging warnings only.
pub fn allot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_allot"));
    c.env("ALLOT_LOG", "warn");
    c
}

/// A process that is killed when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends signal `sig` (a name like `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "kill -{sig} failed");
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory removed when the test ends.
pub struct Dir(pub PathBuf);

impl Dir {
    /// A new empty directory tagged `tag`.
    pub fn new(tag: &str) -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("allot-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port.
pub fn port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `allot ARGS` to the end.
pub fn run(args: &[&str]) -> Output {
    allot()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run allot")
}

/// Runs `allot ARGS`, which must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "allot {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `allot ARGS`, which must fail; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "allot {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A PKI in `dir/pki` with certificates for `nodes` (name, role).
pub fn pki(dir: &Path, nodes: &[(&str, &str)]) -> String {
    let d = dir.join("pki");
    let d = d.to_str().unwrap().to_owned();
    ok(&["cert", "ca", "--dir", &d]);
    for (name, role) in nodes {
        ok(&["cert", "issue", "--dir", &d, "--name", name, "--role", role]);
    }
    d
}

/// Starts `allot ARGS` in the background, its output discarded.
pub fn spawn(args: &[&str]) -> Proc {
    Proc(
        allot()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn allot"),
    )
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `within`.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Parses stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
