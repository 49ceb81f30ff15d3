//! Matches per second with 1 and 2 threads matching at once (sampled, k = 8),
//! on a table of `N` servers: `scaling N` (default 10000). A quick check of
//! whether the matcher itself scales, apart from the memory system.
use std::sync::Arc;
use std::time::Instant;

use allot_engine::fixture::{self as fx, Records, Rng};
use allot_engine::*;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let t = Arc::new(fx::table(n).expect("table"));
    let mut r = Rng::new();
    for i in 0..n {
        t.insert(Records::SCALING.record(i, &mut r))
            .expect("insert");
    }
    let env = fx::env();
    let q = Arc::new(t.compile(fx::REQUIRE, fx::PREFER, &env).expect("compile"));
    let per_thread = 300_000;
    for threads in [1, 2, 1, 2] {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (t, q) = (t.clone(), q.clone());
                s.spawn(move || {
                    for _ in 0..per_thread {
                        let r = t
                            .match_and_reserve(&q, MatchMode::Sampled { k: 8 })
                            .expect("match");
                        t.release(&r);
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{threads} thread(s): {:.0} matches/s",
            (threads * per_thread) as f64 / secs
        );
    }
}
