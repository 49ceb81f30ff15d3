//! A fixed workload for instruction-count profiling of the hot path
//! (`valgrind --tool=callgrind target/release/examples/scan_profile`), which
//! is stable on a shared machine where wall-clock figures are not:
//! 10k servers, then `N` exact matches and `M` sampled ones (k = 8), each
//! reserved and released, then `U` exact matches with a `prefer` of the same
//! value written as a general expression and block pruning off (every block
//! filtered and scored: the raw scan): `scan_profile N M U [SERVERS]` (default 200 2000 0,
//! 10,000 servers; `valgrind --tool=cachegrind --cache-sim=yes` at 1,000,000
//! counts the lines a match reads). Run it
//! with `0 0 0` to measure the setup alone and subtract.
use allot_engine::fixture::{self as fx, Records, Rng};
use allot_engine::*;

fn main() {
    let n = std::env::args()
        .nth(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let t = fx::table(n).expect("table");
    let mut r = Rng::new();
    for i in 0..n {
        t.insert(Records::PROFILE.record(i, &mut r))
            .expect("insert");
    }
    let env = fx::env();
    let q = t.compile(fx::REQUIRE, fx::PREFER, &env).expect("compile");
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().unwrap_or(0));
    let exact = args.next().unwrap_or(200);
    let sampled = args.next().unwrap_or(2000);
    let unpruned = args.next().unwrap_or(0);
    let q_unpruned = t
        .compile(fx::REQUIRE, fx::PREFER_GENERAL, &env)
        .expect("compile")
        .without_pruning();
    let mut sum = 0.0;
    // Part of the setup (in the `0 0` run too): registrations leave replaced
    // column groups for the epoch collector, which frees them as threads pin;
    // these matches let it finish, so the measured matches do not pay for it.
    for _ in 0..20_000 {
        let r = t
            .match_and_reserve(&q, MatchMode::Sampled { k: 8 })
            .expect("match");
        t.release(&r);
    }
    for _ in 0..exact {
        let r = t.match_and_reserve(&q, MatchMode::Exact).expect("match");
        sum += r.score;
        t.release(&r);
    }
    for _ in 0..sampled {
        let r = t
            .match_and_reserve(&q, MatchMode::Sampled { k: 8 })
            .expect("match");
        sum += r.score;
        t.release(&r);
    }
    for _ in 0..unpruned {
        let r = t
            .match_and_reserve(&q_unpruned, MatchMode::Exact)
            .expect("match");
        sum += r.score;
        t.release(&r);
    }
    println!("{sum}");
}
