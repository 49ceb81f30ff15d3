//! `allot worker --idle-exit SECS`: a worker that has run nothing for
//! that long exits 0 (what ends a batch job's worker), and not while a
//! task runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn an_idle_worker_exits_0_after_its_last_task_not_during_it() {
    let dir = Dir::new("idle-exit");
    let pki = pki(
        &dir.0,
        &[
            ("d1", "distributor"),
            ("w1", "worker"),
            ("client", "client"),
        ],
    );
    let addr = port().to_string();
    let data = dir.0.join("data");
    let _d = spawn(&[
        "distributor",
        "--name",
        "d1",
        "--listen",
        &addr,
        "--pki",
        &pki,
        "--data-dir",
        data.to_str().unwrap(),
        "--drain-timeout",
        "0",
    ]);
    let target = ["--pki", &pki, "--name", "client", "--distributor", &addr];
    let input = dir.0.join("ms");
    std::fs::write(&input, "2500").unwrap();
    let mut submit = vec![
        "submit",
        "--app",
        "sleep",
        "--input",
        input.to_str().unwrap(),
        "--detach",
    ];
    submit.extend(target);
    // Submitted first (it waits for a worker): the worker's idle time
    // starts with a task to take.
    let job = ok(&submit).trim().to_owned();
    let mut w = Proc(
        allot()
            .args([
                "worker",
                "--name",
                "w1",
                "--pki",
                &pki,
                "--join",
                &addr,
                "--apps",
                "sleep",
                "--idle-exit",
                "1",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The task takes 2.5 s, more than the idle time: the worker stays.
    let mut wait = vec!["wait", "--timeout", "30"];
    wait.extend(target);
    wait.push(&job);
    let t0 = Instant::now();
    ok(&wait);
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let mut output = vec!["output"];
    output.extend(target);
    output.push(&job);
    assert_eq!(ok(&output).trim(), "slept 2500 ms");
    // Then, idle: it exits 0 about a second later.
    let code = eventually("the idle worker to exit", Duration::from_secs(10), || {
        w.0.try_wait().unwrap()
    });
    assert_eq!(code.code(), Some(0));
    w.kill();
}
