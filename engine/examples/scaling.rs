//! Matches per second with 1 and 2 threads matching at once (sampled, k = 8),
//! on a table of `N` servers: `scaling N` (default 10000). A quick check of
//! whether the matcher itself scales, apart from the memory system.
use std::sync::Arc;
use std::time::Instant;

use allot_engine::*;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let t = Arc::new(
        ServerTable::new(TableConfig {
            shards: 4,
            capacity: n,
        })
        .expect("table"),
    );
    let mut r = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    for i in 0..n {
        let mem = (16 + next() % 240) << 30;
        let apps = if next() % 2 == 0 {
            vec!["echo".to_string()]
        } else {
            vec![]
        };
        t.insert(ServerRecord {
            name: format!("w{i}"),
            slots: 8,
            slots_free: 8,
            cores: 16,
            power: 1.0,
            idle_power: (next() % 1000) as f64 / 10.0,
            mem,
            mem_free: mem / 2 + next() % (mem / 2),
            load: (next() % 100) as f64 / 100.0,
            apps,
            labels: vec![(
                "region".into(),
                LabelValue::Str(["eu", "us", "asia", "sa"][(next() % 4) as usize].into()),
            )],
        })
        .expect("insert");
    }
    let mut env = Env::default();
    env.task.app = "echo".into();
    env.task.slots = 1;
    env.client
        .push(("region".into(), LabelValue::Str("eu".into())));
    let q = Arc::new(
        t.compile(
            "server.region == client.region && server.load < 0.8 && server.mem_free >= 8GiB",
            "server.idle_power - 2 * server.load",
            &env,
        )
        .expect("compile"),
    );
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
