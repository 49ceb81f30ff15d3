//! Quick wall-clock figures for the hot path without criterion: builds the
//! benchmark's table (`scan_rate N`, default 1,000,000 servers; same records
//! and query as `benches/engine.rs`), then times exact matches (rows scanned
//! per second) and sampled ones (k = 8, matches per second), each match
//! reserved and released; before them, deltas as the bench applies them
//! (`scan_rate N DELTAS ROUNDS`; a fourth argument `shuffled` sends them to
//! the servers in a random order instead of registration order). For
//! iterating on the hot path; the figures that count are the criterion
//! bench's. Environment: `REQ` replaces the query's `require`, `PREFER` its
//! `prefer` (`PREFER='server.idle_power - (2 * server.load + 0)'` is the
//! bench's general shape), `UNPRUNED=1` turns block pruning off (with that
//! `PREFER`, the bench's raw scan), `SORTED=1` makes idle power ascend with
//! the server id (the bench's `exact_scan_rows_1m_sorted`), and `FULL=F` registers a fraction `F` of the
//! servers with no free slot (a busy cluster).
use std::time::Instant;

use allot_engine::fixture::{self as fx, Records, Rng};
use allot_engine::*;

/// CPU seconds this process has used (user + system), from `/proc`: on a
/// shared machine, time spent descheduled does not count.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) in clock ticks of 1/100 s.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t = fx::table(n).expect("table");
    let mut r = Rng::new();
    let full: f64 = std::env::var("FULL")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(0.0);
    for i in 0..n {
        let busy = full > 0.0 && (r.next() % 1000) as f64 / 1000.0 < full;
        let mut rec = Records::BENCH.record(i, &mut r);
        if busy {
            rec.slots_free = 0;
        }
        t.insert(rec).expect("insert");
    }
    let env = fx::env();
    let q = t
        .compile(
            &std::env::var("REQ").unwrap_or(fx::REQUIRE.into()),
            &std::env::var("PREFER").unwrap_or(fx::PREFER.into()),
            &env,
        )
        .expect("compile");
    let q = if std::env::var("UNPRUNED").is_ok_and(|v| v == "1") {
        q.without_pruning()
    } else {
        q
    };
    let mut ids: Vec<ServerId> = (0..n)
        .filter_map(|i| t.lookup(&format!("w{i:07}")))
        .collect();
    if std::env::args().nth(4).as_deref() == Some("shuffled") {
        for i in (1..ids.len()).rev() {
            let j = (r.next() % (i as u64 + 1)) as usize;
            ids.swap(i, j);
        }
    }
    let deltas = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000usize);
    let start = Instant::now();
    for k in 0..deltas {
        let seq = (k / n + 1) as u64;
        let changes = [
            Change::Load((seq % 100) as f64 / 100.0),
            Change::MemFree((seq % 64 + 8) << 30),
        ];
        t.apply_delta(ids[k % n], seq, &changes).expect("delta");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "deltas (2 changes each): {:.0} ns each = {:.2}M/s",
        secs / deltas as f64 * 1e9,
        deltas as f64 / secs / 1e6
    );
    if std::env::var("SORTED").is_ok_and(|v| v == "1") {
        // Idle power ascending with the server id: the order in which
        // forward pruning alone skips nothing.
        let mut by_id = ids.clone();
        by_id.sort();
        for (rank, id) in by_id.iter().enumerate() {
            let idle = 100.0 * rank as f64 / n as f64;
            t.apply_delta(*id, u64::MAX / 4, &[Change::IdlePower(idle)])
                .expect("delta");
        }
    }
    let rounds = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let iters = (200_000_000 / n).max(5);
        let c1 = cpu_secs();
        let start = Instant::now();
        for _ in 0..iters {
            let r = t.match_and_reserve(&q, MatchMode::Exact).expect("match");
            t.release(&r);
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu1 = cpu_secs() - c1;
        let sampled = 2_000_000;
        let c2 = cpu_secs();
        let s2 = Instant::now();
        for _ in 0..sampled {
            let r = t
                .match_and_reserve(&q, MatchMode::Sampled { k: 8 })
                .expect("match");
            t.release(&r);
        }
        let secs2 = s2.elapsed().as_secs_f64();
        let cpu2 = cpu_secs() - c2;
        println!(
            "round {round}: exact {:.1} us/match = {:.0}M rows/s ({:.0}M rows/s of CPU time); sampled k=8 {:.0} ns/match = {:.2}M matches/s ({:.0} ns of CPU time)",
            secs / iters as f64 * 1e6,
            (iters * n) as f64 / secs / 1e6,
            (iters * n) as f64 / cpu1 / 1e6,
            secs2 / sampled as f64 * 1e9,
            sampled as f64 / secs2 / 1e6,
            cpu2 / sampled as f64 * 1e9
        );
    }
}
