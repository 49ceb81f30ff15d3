//! `--retry-for`: with no gateway answering, `allot submit` keeps trying
//! for the window, then fails with the same "no gateway answered" error as
//! without one, saying how long it retried.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allot"))
        .env("ALLOT_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run allot")
}

/// A temporary directory, removed when the test ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_unreachable_gateway_is_named_after_the_retry_window() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let dir =
        Dir(std::env::temp_dir().join(format!("allot-test-retry-{}-{nanos}", std::process::id())));
    let pki = dir.0.join("pki");
    let pki = pki.to_str().expect("utf-8 path");
    for args in [
        &["cert", "ca", "--dir", pki][..],
        &[
            "cert", "issue", "--dir", pki, "--name", "client", "--role", "client",
        ],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    // Nothing answers there: bound, never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let gw = silent.local_addr().expect("addr").to_string();
    let t = Instant::now();
    let out = run(&[
        "submit",
        "--pki",
        pki,
        "--gateway",
        &gw,
        "--app",
        "echo",
        "--retry-for",
        "1",
    ]);
    let took = t.elapsed();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no gateway answered"), "{err}");
    assert!(err.contains(&gw), "{err}");
    assert!(err.contains("retried for 1."), "{err}");
    assert!(took >= Duration::from_secs(1), "gave up after {took:?}");
    // One full search (the connect timeout), then the window.
    assert!(took < Duration::from_secs(10), "{took:?}");
}
