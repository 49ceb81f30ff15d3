//! The bare spawn loop of `allot bench --command CMD --spawn-baseline`:
//! CMD started and waited for as many times as allot ran it, by as many
//! threads as allot ran it at once, with nothing else in between (no
//! pipes, no network). It is the ceiling of command tasks on this
//! machine: allot's command tasks per second over its spawns per second
//! is the ratio the report gives.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};

/// What the bare loop did.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpawnBaseline {
    /// Runs per second.
    pub(super) per_s: f64,
    /// Threads spawning at once.
    pub(super) parallelism: usize,
}

/// The program and arguments of `line`, as the worker runs it: split on
/// whitespace when it has no shell syntax, else under `sh -c`.
fn argv(line: &str) -> Vec<String> {
    allot::apps::command::direct_words(line)
        .unwrap_or_else(|| vec!["sh".into(), "-c".into(), line.to_owned()])
}

/// Runs `line` `runs` times on `parallelism` threads; fails on the first
/// run that cannot start or exits non-zero.
pub(super) fn spawn_loop(line: &str, runs: u64, parallelism: usize) -> Result<SpawnBaseline> {
    let argv = argv(line);
    let parallelism = parallelism.max(1);
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let lanes: Vec<_> = (0..parallelism)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < runs {
                        let st = Command::new(&argv[0])
                            .args(&argv[1..])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        match st {
                            Ok(st) if st.success() => {}
                            Ok(st) => return Some(format!("`{line}` exited with {st}")),
                            Err(e) => return Some(format!("cannot start `{line}`: {e}")),
                        }
                    }
                    None
                })
            })
            .collect();
        lanes
            .into_iter()
            .filter_map(|l| l.join().unwrap_or(Some("a spawn thread panicked".into())))
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    if let Some(f) = failures.first() {
        bail!("spawn baseline: {f}");
    }
    Ok(SpawnBaseline {
        per_s: runs as f64 / secs.max(1e-9),
        parallelism,
    })
}
