//! allot-engine benchmarks, each beside the naive reference matcher
//! (`allot_engine::reference`) in the same run:
//!
//! * match-and-reserve (then release) with 3 `require` clauses plus `prefer`,
//!   at 10k and 1M servers, exact and sampled;
//! * the exact scan in server rows per second;
//! * delta apply;
//! * memory per server at 1M servers (counted by a global allocator);
//! * two threads matching at once against one.
//!
//! Run: `cargo bench -p allot-benches --bench engine -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::testing::CountingAlloc;
use allot_engine::fixture::{self as fx, Records, Rng, PREFER, PREFER_GENERAL, REQUIRE};
use allot_engine::reference::NaiveTable;
use allot_engine::*;
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, BenchmarkId, Criterion, Throughput};

/// Counts live heap bytes, so the memory figure is what the table really
/// allocates.
#[global_allocator]
static A: CountingAlloc = CountingAlloc::new();

struct Fixture {
    table: Arc<ServerTable>,
    naive: NaiveTable,
    ids: Vec<ServerId>,
    env: Env,
    query: Arc<Query>,
    bytes_per_server: f64,
}

fn fixture(n: usize, with_naive: bool) -> Fixture {
    let before = A.live_bytes();
    let table = fx::table(n).expect("table");
    let mut r = Rng::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            table
                .insert(Records::BENCH.record(i, &mut r))
                .expect("insert"),
        );
    }
    let after = A.live_bytes();
    let ids_bytes = (ids.capacity() * std::mem::size_of::<ServerId>()) as isize;
    let bytes_per_server = (after - before - ids_bytes) as f64 / n as f64;
    // The same records again (same seed) for the reference.
    let mut naive = NaiveTable::new();
    if with_naive {
        let mut r = Rng::new();
        for (i, id) in ids.iter().enumerate() {
            naive.insert(*id, &Records::BENCH.record(i, &mut r));
        }
    }
    let env = fx::env();
    let query = Arc::new(table.compile(REQUIRE, PREFER, &env).expect("compile"));
    Fixture {
        table: Arc::new(table),
        naive,
        ids,
        env,
        query,
        bytes_per_server,
    }
}

const SAMPLED_K: u32 = 64;

/// Sampled match + reserve + release at k = 8 and [`SAMPLED_K`].
fn bench_sampled(g: &mut BenchmarkGroup<'_, WallTime>, f: &Fixture) {
    for k in [8, SAMPLED_K] {
        g.bench_function(BenchmarkId::new("engine_sampled", k), |b| {
            b.iter(|| {
                let r = f
                    .table
                    .match_and_reserve(&f.query, MatchMode::Sampled { k })
                    .expect("match");
                f.table.release(&r);
            })
        });
    }
}

/// Benches exact match + reserve + release of `q` on `table` as `name`.
fn bench_exact(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, table: &ServerTable, q: &Query) {
    g.bench_function(name, |b| {
        b.iter(|| {
            let r = table.match_and_reserve(q, MatchMode::Exact).expect("match");
            table.release(&r);
        })
    });
}

fn bench_size(c: &mut Criterion, n: usize, label: &str) {
    let mut f = fixture(n, true);
    if n >= 1_000_000 {
        println!(
            "memory: {:.1} bytes per server at {n} servers (allocator count); table.heap_bytes() = {:.1} per server",
            f.bytes_per_server,
            f.table.heap_bytes() as f64 / n as f64
        );
    }
    let mut g = c.benchmark_group(format!("match_reserve_{label}"));
    g.throughput(Throughput::Elements(1));
    if n >= 1_000_000 {
        g.sample_size(10);
    }
    bench_exact(&mut g, "engine_exact", &f.table, &f.query);
    bench_sampled(&mut g, &f);
    g.bench_function("naive_exact", |b| {
        b.iter(|| {
            let (id, _) = f
                .naive
                .match_and_reserve(REQUIRE, PREFER, &f.env, &[])
                .expect("match");
            f.naive.release(id, 1, 0, 0);
        })
    });
    g.finish();

    // The exact scan in rows per second (same work as engine_exact).
    let mut g = c.benchmark_group(format!("exact_scan_rows_{label}"));
    g.throughput(Throughput::Elements(n as u64));
    if n >= 1_000_000 {
        g.sample_size(10);
    }
    bench_exact(&mut g, "engine", &f.table, &f.query);
    // The same query with `prefer` written as a general expression (same
    // scores): bounded by interval arithmetic, scored by the program.
    let q_general = f
        .table
        .compile(REQUIRE, PREFER_GENERAL, &f.env)
        .expect("compile");
    bench_exact(&mut g, "engine_general", &f.table, &q_general);
    // The same with block pruning off: every block is filtered and scored.
    // This is the raw vectorised scan.
    let q_unpruned = f
        .table
        .compile(REQUIRE, PREFER_GENERAL, &f.env)
        .expect("compile")
        .without_pruning();
    bench_exact(&mut g, "engine_unpruned", &f.table, &q_unpruned);
    // Every row has the app and passes the first clause: the worst case for
    // block skipping.
    let mut all = f.env.clone();
    all.task.app.clear();
    let q_all = f
        .table
        .compile(
            "server.load < 2 && server.mem_free >= 1GiB && server.cores >= 1",
            PREFER,
            &all,
        )
        .expect("compile");
    bench_exact(&mut g, "engine_no_skipping", &f.table, &q_all);
    g.bench_function("naive", |b| {
        b.iter(|| {
            let (id, _) = f
                .naive
                .match_and_reserve(REQUIRE, PREFER, &f.env, &[])
                .expect("match");
            f.naive.release(id, 1, 0, 0);
        })
    });
    g.finish();

    if n >= 1_000_000 {
        bench_deltas(c, &mut f);
        bench_scaling(c, &f);
        bench_sorted(c, &f);
        bench_half_full(c, &f);
    }
}

/// The exact scan on a table whose scores grow with the position (idle power
/// ascending with the server id, as when servers register by hardware
/// generation): in scan order every block could beat the best so far, so
/// only the seed (the best of blocks spread over the table, scored first)
/// lets the scan skip. `engine_unpruned` is the same scan with pruning off.
/// The idle powers are restored afterwards.
fn bench_sorted(c: &mut Criterion, f: &Fixture) {
    let seq = u64::MAX / 4;
    let mut by_id = f.ids.clone();
    by_id.sort();
    let n = by_id.len() as f64;
    for (rank, id) in by_id.iter().enumerate() {
        let idle = 100.0 * rank as f64 / n;
        f.table
            .apply_delta(*id, seq, &[Change::IdlePower(idle)])
            .expect("delta");
    }
    let mut g = c.benchmark_group("exact_scan_rows_1m_sorted");
    g.throughput(Throughput::Elements(f.ids.len() as u64));
    g.sample_size(10);
    bench_exact(&mut g, "engine", &f.table, &f.query);
    let q_unpruned = f
        .table
        .compile(REQUIRE, PREFER, &f.env)
        .expect("compile")
        .without_pruning();
    bench_exact(&mut g, "engine_unpruned", &f.table, &q_unpruned);
    g.finish();
    let mut r = Rng::new();
    for (i, id) in f.ids.iter().enumerate() {
        let rec = Records::BENCH.record(i, &mut r);
        f.table
            .apply_delta(*id, seq + 1, &[Change::IdlePower(rec.idle_power)])
            .expect("delta");
    }
}

/// A busy cluster: half the servers (every other one registered, so spread
/// over every block) have no free slot. Sampled matching checks capacity
/// last (only for the rows that would be the answer), so a full server
/// costs it nothing but the rank it would have had; compare with
/// `match_reserve_1m/engine_sampled/8` above, same table with every server
/// free. Runs last: it leaves the table busy.
fn bench_half_full(c: &mut Criterion, f: &Fixture) {
    // Above any sequence number the delta bench reached.
    let seq = u64::MAX / 2;
    for id in f.ids.iter().step_by(2) {
        f.table
            .apply_delta(*id, seq, &[Change::SlotsFree(0)])
            .expect("delta");
    }
    let mut g = c.benchmark_group("match_reserve_1m_half_full");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    bench_sampled(&mut g, f);
    g.finish();
}

fn bench_deltas(c: &mut Criterion, f: &mut Fixture) {
    const BATCH: usize = 1000;
    let mut g = c.benchmark_group("delta_apply_1m");
    g.throughput(Throughput::Elements(BATCH as u64));
    let n = f.ids.len();
    let mut seq = 1u64;
    let mut at = 0usize;
    g.bench_function("engine", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let id = f.ids[at];
                let changes = [
                    Change::Load((seq % 100) as f64 / 100.0),
                    Change::MemFree((seq % 64 + 8) << 30),
                ];
                black_box(f.table.apply_delta(id, seq, &changes).expect("delta"));
                at += 1;
                if at == n {
                    at = 0;
                    seq += 1;
                }
            }
        })
    });
    let mut seq = 1u64;
    let mut at = 0usize;
    g.bench_function("naive", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let id = f.ids[at];
                let changes = [
                    Change::Load((seq % 100) as f64 / 100.0),
                    Change::MemFree((seq % 64 + 8) << 30),
                ];
                black_box(f.naive.apply_delta(id, seq, &changes));
                at += 1;
                if at == n {
                    at = 0;
                    seq += 1;
                }
            }
        })
    });
    g.finish();
}

/// One thread matching versus two at once (sampled mode, k = 8, 1M servers);
/// each criterion iteration is one match per thread.
fn bench_scaling(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("scaling_sampled_1m");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let (t, q) = (f.table.clone(), f.query.clone());
                        s.spawn(move || {
                            for _ in 0..iters {
                                let r = t
                                    .match_and_reserve(&q, MatchMode::Sampled { k: 8 })
                                    .expect("match");
                                t.release(&r);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The exact scan when servers arrive in pools (racks) of 256 that share apps
/// and region, as real clusters register: the per-app bitmap then skips
/// whole blocks. Same query as above.
fn bench_pooled(c: &mut Criterion) {
    let n = 1_000_000;
    let table = fx::table(n).expect("table");
    let mut r = Rng(0x1234_5678_9ABC_DEF1);
    let mut pool = Records::BENCH.record(0, &mut r);
    for i in 0..n {
        let mut rec = Records::BENCH.record(i, &mut r);
        if i % 256 == 0 {
            pool = rec.clone();
        }
        rec.apps = pool.apps.clone();
        rec.labels = pool.labels.clone();
        table.insert(rec).expect("insert");
    }
    let env = fx::env();
    let q = table.compile(REQUIRE, PREFER, &env).expect("compile");
    let mut g = c.benchmark_group("exact_scan_rows_1m_pooled");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    bench_exact(&mut g, "engine", &table, &q);
    g.finish();
}

fn engine_benches(c: &mut Criterion) {
    bench_size(c, 10_000, "10k");
    // `ALLOT_BENCH_SMALL=1` stops after 10k servers, for quick iterations.
    if std::env::var_os("ALLOT_BENCH_SMALL").is_none() {
        bench_size(c, 1_000_000, "1m");
        bench_pooled(c);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = engine_benches
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
