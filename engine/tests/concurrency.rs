//! Several threads matching at once never over-reserve a server, while
//! another thread applies deltas.

mod common;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use allot_engine::*;
use common::*;

#[test]
fn concurrent_matchers_never_over_reserve() {
    let t = Arc::new(
        ServerTable::new(TableConfig {
            shards: 4,
            capacity: 4096,
        })
        .unwrap(),
    );
    let mut ids = Vec::new();
    for i in 0..200 {
        let mut s = server(
            &format!("w{i}"),
            1 + (i % 3),
            (i % 17) as f64,
            &["echo"],
            "eu",
        );
        s.cores = 4;
        s.mem = 8 << 30;
        s.mem_free = 8 << 30;
        ids.push(t.insert(s).unwrap());
    }
    let total_slots: u32 = (0..200).map(|i| 1 + (i % 3)).sum();
    let mut e = env("echo");
    e.task.cores = 1;
    e.task.mem = 1 << 30;
    let q = Arc::new(t.compile("server.load < 0.9", "", &e).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // A writer keeps changing an attribute the matchers do not filter on.
    let writer = {
        let (t, ids, stop) = (t.clone(), ids.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                for id in &ids {
                    t.apply_delta(*id, seq, &[Change::Power(seq as f64)])
                        .unwrap();
                }
                seq += 1;
            }
        })
    };
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let (t, q) = (t.clone(), q.clone());
            std::thread::spawn(move || {
                let mode = if k % 2 == 0 {
                    MatchMode::Exact
                } else {
                    MatchMode::Sampled { k: 8 }
                };
                let mut got = Vec::new();
                while let Ok(r) = t.match_and_reserve(&q, mode) {
                    got.push(r);
                }
                got
            })
        })
        .collect();
    let all: Vec<Reservation> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Every slot was handed out exactly once: no server gave more than it had.
    assert_eq!(all.len() as u32, total_slots);
    for (i, id) in ids.iter().enumerate() {
        let n = all.iter().filter(|r| r.server == *id).count() as u32;
        assert_eq!(n, 1 + (i as u32 % 3), "server {id}");
    }
    let snap = t.snapshot();
    assert!(snap
        .iter()
        .all(|s| s.record.slots_free == 0 && s.reserved_slots == s.record.slots));
    assert!(snap
        .iter()
        .all(|s| s.cores_free == s.record.cores - s.record.slots));
    // Releasing from several threads restores everything.
    let all = Arc::new(all);
    let hs: Vec<_> = (0..2)
        .map(|k| {
            let (t, all) = (t.clone(), all.clone());
            std::thread::spawn(move || {
                for r in all.iter().skip(k).step_by(2) {
                    assert!(t.release(r));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for s in t.snapshot() {
        assert_eq!(s.record.slots_free, s.record.slots);
        assert_eq!(s.cores_free, 4);
        assert_eq!(s.record.mem_free, 8 << 30);
        assert_eq!(
            (s.reserved_slots, s.reserved_cores, s.reserved_mem),
            (0, 0, 0)
        );
    }
}

#[test]
fn quota_holds_under_concurrency() {
    let t = Arc::new(table());
    for i in 0..50 {
        t.insert(server(&format!("w{i}"), 10, i as f64, &["echo"], "eu"))
            .unwrap();
    }
    let mut e = env("echo");
    e.user = UserRecord::new("carol");
    e.user.max_in_flight = 37;
    let q = Arc::new(t.compile("", "", &e).unwrap());
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let (t, q) = (t.clone(), q.clone());
            std::thread::spawn(move || {
                let mut v = Vec::new();
                while let Ok(r) = t.match_and_reserve(&q, MatchMode::Sampled { k: 4 }) {
                    v.push(r);
                }
                v
            })
        })
        .collect();
    let n: usize = hs.into_iter().map(|h| h.join().unwrap().len()).sum();
    assert_eq!(n, 37);
    assert_eq!(t.in_flight().count("carol"), 37);
}

/// Matchers read the column groups while a writer keeps replacing them
/// (every delta swaps in a copy of the block's `load`/`idle_power` group):
/// no server is over-reserved, and every row a matcher saw was coherent.
/// The writer keeps `idle_power == 100 * load` in each delta (values exact in
/// `f32`), so the score `idle_power - 100 * load` of every reservation is 0
/// unless a matcher read one column before a delta and the other after it.
#[test]
fn matchers_see_whole_rows_while_deltas_swap_column_groups() {
    let t = Arc::new(
        ServerTable::new(TableConfig {
            shards: 3,
            capacity: 4096,
        })
        .unwrap(),
    );
    let n = if cfg!(miri) { 70 } else { 400 };
    let mut ids = Vec::new();
    for i in 0..n {
        let mut s = server(&format!("w{i}"), 1 + (i % 4), 0.0, &["echo"], "eu");
        s.load = 0.25 * (i % 4) as f64;
        s.idle_power = 100.0 * s.load;
        s.mem = 8 << 30;
        s.mem_free = 8 << 30;
        ids.push(t.insert(s).unwrap());
    }
    let total_slots: u32 = (0..n).map(|i| 1 + (i % 4)).sum();
    let mut e = env("echo");
    e.task.mem = 1 << 30;
    let q = Arc::new(
        t.compile(
            "server.load < 2 && server.region == \"eu\"",
            "server.idle_power - 100 * server.load",
            &e,
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let writer = {
        let (t, ids, stop, started) = (t.clone(), ids.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut seq = 1u64;
            let mut applied = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if seq == 2 {
                    started.store(true, Ordering::Release);
                }
                for (k, id) in ids.iter().enumerate() {
                    let load = 0.25 * ((seq as usize + k) % 4) as f64;
                    let changes = [
                        Change::Load(load),
                        Change::IdlePower(100.0 * load),
                        Change::Label("epoch".into(), LabelValue::Num(seq as f64)),
                    ];
                    t.apply_delta(*id, seq, &changes).unwrap();
                    applied += 1;
                }
                seq += 1;
            }
            applied
        })
    };
    let cycles = if cfg!(miri) { 20 } else { 3000 };
    let phase = Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|k| {
            let (t, q, started, phase) = (t.clone(), q.clone(), started.clone(), phase.clone());
            std::thread::spawn(move || {
                let mode = if k == 0 {
                    MatchMode::Exact
                } else {
                    MatchMode::Sampled { k: 4 }
                };
                while !started.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                // Match and release while the writer swaps groups...
                for _ in 0..cycles {
                    let r = t.match_and_reserve(&q, mode).unwrap();
                    assert_eq!(r.score, 0.0, "incoherent row seen: score {}", r.score);
                    assert!(t.release(&r));
                }
                phase.wait();
                // ...then take every slot.
                let mut got = Vec::new();
                while let Ok(r) = t.match_and_reserve(&q, mode) {
                    assert_eq!(r.score, 0.0, "incoherent row seen: score {}", r.score);
                    got.push(r);
                }
                got
            })
        })
        .collect();
    let all: Vec<Reservation> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let applied = writer.join().unwrap();
    assert!(applied > 0);
    assert_eq!(all.len() as u32, total_slots);
    for (i, id) in ids.iter().enumerate() {
        let got = all.iter().filter(|r| r.server == *id).count() as u32;
        assert_eq!(got, 1 + (i as u32 % 4), "server {id}");
    }
    for s in t.snapshot() {
        assert_eq!(s.record.slots_free, 0);
        assert_eq!(
            s.record.mem_free,
            (8u64 << 30) - s.record.slots as u64 * (1 << 30)
        );
        assert_eq!(s.record.idle_power, 100.0 * s.record.load);
    }
    for r in &all {
        assert!(t.release(r));
    }
    assert!(t
        .snapshot()
        .iter()
        .all(|s| s.record.slots_free == s.record.slots && s.record.mem_free == 8 << 30));
}
