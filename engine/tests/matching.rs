//! Behaviour of matching, reservation, deltas, states, explain and the query
//! cache on small hand-built tables.

mod common;
use allot_engine::*;
use common::*;

#[test]
fn picks_the_best_server_satisfying_everything() {
    let t = table();
    let a = t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    let b = t.insert(server("b", 2, 9.0, &["echo"], "us")).unwrap();
    let c = t.insert(server("c", 2, 7.0, &["echo"], "eu")).unwrap();
    let _d = t.insert(server("d", 2, 99.0, &["other"], "eu")).unwrap();
    let mut e = env("echo");
    e.client
        .push(("region".into(), LabelValue::Str("eu".into())));
    let q = t.compile("server.region == client.region", "", &e).unwrap();
    let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_eq!(r.server, c);
    assert_eq!((r.slots, r.cores, r.mem, r.score), (1, 0, 0, 7.0));
    let q2 = t.compile("", "server.power", &e).unwrap();
    assert_eq!(
        t.match_and_reserve(&q2, MatchMode::Exact).unwrap().server,
        b
    );
    let q3 = t
        .compile("server.region == 'eu'", "-server.power", &e)
        .unwrap();
    assert_eq!(
        t.match_and_reserve(&q3, MatchMode::Exact).unwrap().server,
        a
    );
    // Sampled with k large enough sees everything.
    let r = t
        .match_and_reserve(&q, MatchMode::Sampled { k: 100 })
        .unwrap();
    assert_eq!(r.server, c);
}

#[test]
fn reservation_takes_capacity_and_release_gives_it_back() {
    let t = table();
    let a = t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    let mut e = env("echo");
    e.task.cores = 3;
    e.task.mem = 4 << 30;
    let q = t.compile("", "", &e).unwrap();
    let r1 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    let r2 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_eq!((r1.server, r2.server), (a, a));
    let err = t.match_and_reserve(&q, MatchMode::Exact).unwrap_err();
    let slots = err
        .explain
        .clauses
        .iter()
        .find(|c| c.clause.starts_with("slots_free"))
        .unwrap();
    assert_eq!(slots.eliminated, 1);
    assert_eq!(err.explain.matched, 0);
    let snap = &t.snapshot()[0];
    assert_eq!(snap.record.slots_free, 0);
    assert_eq!(snap.cores_free, 2);
    assert_eq!(snap.record.mem_free, 8 << 30);
    assert_eq!(
        (snap.reserved_slots, snap.reserved_cores, snap.reserved_mem),
        (2, 6, 8 << 30)
    );
    assert!(t.release(&r1));
    assert!(!t.release(&r1), "a second release is a no-op");
    let snap = &t.snapshot()[0];
    assert_eq!(
        (
            snap.record.slots_free,
            snap.cores_free,
            snap.record.mem_free
        ),
        (1, 5, 12 << 30)
    );
    assert_eq!(snap.reserved_slots, 1);
    assert!(t.match_and_reserve(&q, MatchMode::Exact).is_ok());
}

#[test]
fn states_deltas_and_reregistration() {
    let t = table();
    let a = t.insert(server("a", 1, 5.0, &["echo"], "eu")).unwrap();
    let q = t.compile("server.load < 0.9", "", &env("echo")).unwrap();
    assert_eq!(t.state(a), Some(ServerState::Up));
    t.set_state(a, ServerState::Draining).unwrap();
    assert_eq!(t.state(a), Some(ServerState::Draining));
    let e = t.match_and_reserve(&q, MatchMode::Exact).unwrap_err();
    assert_eq!(
        e.explain.clauses[0].clause,
        "server is up (not down or draining)"
    );
    assert_eq!(e.explain.clauses[0].eliminated, 1);
    t.set_state(a, ServerState::Down).unwrap();
    assert_eq!(t.state(a), Some(ServerState::Down));
    t.set_state(a, ServerState::Up).unwrap();

    assert_eq!(
        t.apply_delta(a, 2, &[Change::Load(0.95)]).unwrap(),
        DeltaOutcome::Applied
    );
    assert_eq!(
        t.apply_delta(a, 1, &[Change::Load(0.1)]).unwrap(),
        DeltaOutcome::Stale
    );
    assert_eq!(
        t.apply_delta(a, 2, &[Change::Load(0.1)]).unwrap(),
        DeltaOutcome::Stale
    );
    assert_eq!((t.deltas_applied(), t.deltas_stale()), (1, 2));
    assert!(t.match_and_reserve(&q, MatchMode::Exact).is_err());
    t.apply_delta(
        a,
        3,
        &[Change::Load(0.5), Change::AppRemoved("echo".into())],
    )
    .unwrap();
    assert!(t.match_and_reserve(&q, MatchMode::Exact).is_err());
    t.apply_delta(
        a,
        4,
        &[
            Change::AppAdded("echo".into()),
            Change::Label("gpu".into(), LabelValue::Num(2.0)),
        ],
    )
    .unwrap();
    let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    let qg = t.compile("server.gpu >= 2", "", &env("echo")).unwrap();
    // The only slot is taken.
    assert!(t.match_and_reserve(&qg, MatchMode::Exact).is_err());
    t.release(&r);
    assert!(t.match_and_reserve(&qg, MatchMode::Exact).is_ok());

    // Re-registering replaces the row and resets the delta sequence.
    let again = t.insert(server("a", 3, 1.0, &["echo"], "us")).unwrap();
    assert_eq!(again, a);
    assert_eq!(t.len(), 1);
    assert_eq!(
        t.apply_delta(a, 1, &[Change::SlotsFree(3)]).unwrap(),
        DeltaOutcome::Applied
    );
    let snap = &t.snapshot()[0];
    assert_eq!(snap.record.slots, 3);
    assert_eq!(snap.reserved_slots, 0);
    assert!(
        snap.record.labels.iter().all(|(k, _)| k != "gpu"),
        "labels start afresh"
    );
    assert_eq!(snap.seq, 1);
    assert_eq!(t.lookup("a"), Some(a));
    assert_eq!(t.name(a).as_deref(), Some("a"));

    t.remove(a).unwrap();
    assert_eq!(t.lookup("a"), None);
    assert_eq!(t.state(a), None);
    assert_eq!(t.apply_delta(a, 9, &[]), Err(EngineError::UnknownServer(a)));
    assert_eq!(t.remove(a), Err(EngineError::UnknownServer(a)));
    assert!(t.is_empty());
}

#[test]
fn a_release_after_reregistration_does_not_touch_the_new_row() {
    let t = table();
    let a = t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    let q = t.compile("", "", &env("echo")).unwrap();
    let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    t.apply_delta(a, 1, &[Change::SlotsFree(1)]).unwrap();
    t.release(&r);
    assert_eq!(t.snapshot()[0].record.slots_free, 1);
}

#[test]
fn excluding_and_mark_full_move_to_the_next_candidate() {
    let t = table();
    let a = t.insert(server("a", 4, 9.0, &["echo"], "eu")).unwrap();
    let b = t.insert(server("b", 4, 5.0, &["echo"], "eu")).unwrap();
    let q = t.compile("", "", &env("echo")).unwrap();
    let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_eq!(r.server, a);
    // The worker refused: give the capacity back, mark it full, try the next.
    t.release(&r);
    t.mark_full(a).unwrap();
    let r2 = t
        .match_and_reserve_excluding(&q, MatchMode::Exact, &[a])
        .unwrap();
    assert_eq!(r2.server, b);
    let e = t
        .match_and_reserve_excluding(&q, MatchMode::Sampled { k: 4 }, &[a, b])
        .unwrap_err();
    let ex = e.explain.clauses.last().unwrap();
    assert_eq!(
        (ex.clause.as_str(), ex.eliminated),
        ("not already tried for this task (excluded)", 2)
    );
}

#[test]
fn user_limits_are_clauses() {
    let t = table();
    t.insert(server("a", 8, 9.0, &["echo", "sum"], "eu"))
        .unwrap();
    let mut e = env("sum");
    e.user = UserRecord::new("bob");
    e.user.allowed_apps = vec!["echo".into()];
    let q = t.compile("", "", &e).unwrap();
    let err = t.match_and_reserve(&q, MatchMode::Exact).unwrap_err();
    assert_eq!(
        err.explain.clauses[0].clause,
        "user \"bob\" may run app \"sum\" (user.allowed_apps)"
    );
    assert_eq!(err.explain.clauses[0].eliminated, 1);

    e.task.app = "echo".into();
    e.user.max_in_flight = 2;
    let q = t.compile("", "", &e).unwrap();
    let r1 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    let _r2 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_eq!(t.in_flight().count("bob"), 2);
    let err = t.match_and_reserve(&q, MatchMode::Exact).unwrap_err();
    let last = err.explain.clauses.last().unwrap();
    assert_eq!(
        last.clause,
        "user \"bob\" below max_in_flight 2 (2 in flight)"
    );
    assert_eq!(last.eliminated, 1);
    assert!(err.to_string().contains("rejects 1"), "{err}");
    t.release(&r1);
    assert_eq!(t.in_flight().count("bob"), 1);
    assert!(t.match_and_reserve(&q, MatchMode::Exact).is_ok());
}

#[test]
fn explain_counts_each_clause_and_lists_nearest_misses() {
    let t = table();
    t.insert(server("a", 1, 1.0, &["echo"], "eu")).unwrap();
    t.insert(server("b", 1, 2.0, &["echo"], "us")).unwrap();
    t.insert(server("c", 1, 3.0, &[], "us")).unwrap();
    t.insert(server("d", 1, 4.0, &["echo"], "eu")).unwrap();
    let q = t
        .compile(
            "server.region == 'eu' && server.power >= 2",
            "",
            &env("echo"),
        )
        .unwrap();
    let ex = t.explain(&q);
    assert_eq!((ex.total, ex.matched), (4, 1));
    let got: Vec<(&str, u32)> = ex
        .clauses
        .iter()
        .map(|c| (c.clause.as_str(), c.eliminated))
        .collect();
    assert_eq!(
        got,
        vec![
            ("server is up (not down or draining)", 0),
            ("app \"echo\" installed (task.app in server.apps)", 1),
            ("server.region == 'eu'", 2),
            ("server.power >= 2", 1),
            ("slots_free >= 1 (task.slots)", 0),
        ]
    );
    let near: Vec<(&str, Vec<&str>)> = ex
        .nearest
        .iter()
        .map(|n| {
            (
                n.server.as_str(),
                n.failed.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(near.len(), 3);
    // a and b fail one clause each; c fails two.
    assert!(
        near[..2].contains(&("a", vec!["server.power >= 2"])),
        "{near:?}"
    );
    assert!(
        near[..2].contains(&("b", vec!["server.region == 'eu'"])),
        "{near:?}"
    );
    assert_eq!(near[2].0, "c");
    assert_eq!(near[2].1.len(), 2);
}

#[test]
fn label_semantics_missing_and_mixed_types() {
    let t = table();
    let mut s = server("a", 1, 1.0, &[], "eu");
    s.labels
        .push(("gpus".into(), LabelValue::Str("many".into())));
    let a = t.insert(s).unwrap();
    let mut s = server("b", 1, 2.0, &[], "eu");
    s.labels.push(("gpus".into(), LabelValue::Num(2.0)));
    let b = t.insert(s).unwrap();
    let c = t.insert(server("c", 9, 3.0, &[], "eu")).unwrap();
    let e = env("");
    let pick = |req: &str| -> Vec<ServerId> {
        let q = t.compile(req, "", &e).unwrap();
        let mut v = Vec::new();
        let mut ex = Vec::new();
        while let Ok(r) = t.match_and_reserve_excluding(&q, MatchMode::Exact, &ex) {
            v.push(r.server);
            ex.push(r.server);
            t.release(&r);
        }
        v.sort();
        v
    };
    assert_eq!(pick("server.gpus == 2"), vec![b]);
    assert_eq!(
        pick("server.gpus != 2"),
        Vec::<ServerId>::new(),
        "strings and missing labels are not != 2"
    );
    assert_eq!(pick("server.gpus == 'many'"), vec![a]);
    assert_eq!(pick("server.gpus != 'many'"), Vec::<ServerId>::new());
    let sorted = |mut v: Vec<ServerId>| {
        v.sort();
        v
    };
    assert_eq!(pick("!(server.gpus == 2)"), sorted(vec![a, c]));
    assert_eq!(pick("server.gpus + 1 > 0"), vec![b]);
    assert_eq!(
        pick("server.nothing == server.nothing"),
        Vec::<ServerId>::new()
    );
    assert_eq!(
        pick("server.region == server.region"),
        sorted(vec![a, b, c])
    );
    assert_eq!(pick("server.slots_free != 1"), vec![c]);
}

#[test]
fn query_cache_reuses_shapes_and_is_bounded() {
    let t = table();
    t.insert(server("a", 1, 1.0, &["echo"], "eu")).unwrap();
    let mut cache = QueryCache::new(2);
    let e = env("echo");
    let q1 = cache.get_or_compile(&t, "server.load < 1", "", &e).unwrap();
    let q2 = cache.get_or_compile(&t, "server.load < 1", "", &e).unwrap();
    assert!(std::sync::Arc::ptr_eq(&q1, &q2));
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    let mut e2 = e.clone();
    e2.task.cores = 4;
    let q3 = cache
        .get_or_compile(&t, "server.load < 1", "", &e2)
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(&q1, &q3));
    cache.get_or_compile(&t, "true", "", &e).unwrap();
    assert_eq!(cache.len(), 2, "bounded: the oldest shape was evicted");
    cache.get_or_compile(&t, "server.load < 1", "", &e).unwrap();
    assert_eq!(cache.misses(), 4);
    assert!(cache.get_or_compile(&t, "server.load <", "", &e).is_err());
    assert_eq!(cache.len(), 2);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn limits_and_bad_input_are_errors() {
    let t = ServerTable::new(TableConfig {
        shards: 1,
        capacity: 64,
    })
    .unwrap();
    for i in 0..64 {
        t.insert(server(&format!("s{i}"), 1, 1.0, &[], "eu"))
            .unwrap();
    }
    assert_eq!(
        t.insert(server("one-more", 1, 1.0, &[], "eu")),
        Err(EngineError::TableFull { capacity: 64 })
    );
    assert!(matches!(
        t.insert(server("", 1, 1.0, &[], "eu")),
        Err(EngineError::BadName { .. })
    ));
    assert!(matches!(
        t.insert(server(&"x".repeat(256), 1, 1.0, &[], "eu")),
        Err(EngineError::BadName { .. })
    ));
    assert!(ServerTable::new(TableConfig {
        shards: 0,
        capacity: 1
    })
    .is_err());
    assert!(ServerTable::new(TableConfig {
        shards: 1,
        capacity: 0
    })
    .is_err());
    // Label keys are bounded; reaching the bound is an error that leaves the
    // row as it was.
    let id = t.lookup("s0").unwrap();
    let mut seq = 1;
    let mut err = None;
    for k in 0..300 {
        match t.apply_delta(
            id,
            seq,
            &[Change::Label(format!("k{k}"), LabelValue::Num(1.0))],
        ) {
            Ok(_) => seq += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the label-key bound is reached");
    assert!(
        err.to_string()
            .starts_with("too many label keys (limit 64)"),
        "{err}"
    );
    let e = env("");
    let q = t.compile("server.never_seen_key == 1", "", &e);
    assert!(matches!(q, Err(ExprError::Limit(_))), "{q:?}");
}

#[test]
fn table_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ServerTable>();
    assert_send_sync::<Query>();
    assert_send_sync::<Reservation>();
    assert_send_sync::<Store>();
}

/// `waitable` counts the servers that fail only on what frees up by itself
/// (free capacity, the up state), over the whole table: here the one busy
/// server ranks behind ten that can never run the task (each fails one
/// clause, and ties go to the lower id), so the nearest misses alone (at
/// most five) do not show it.
#[test]
fn explain_counts_the_servers_worth_waiting_for() {
    let t = table();
    for i in 0..10 {
        t.insert(server(&format!("lacks-app-{i}"), 1, 1.0, &["other"], "eu"))
            .unwrap();
    }
    let busy = t.insert(server("busy", 1, 1.0, &["echo"], "eu")).unwrap();
    let q = t.compile("", "", &env("echo")).unwrap();
    let held = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_eq!(held.server, busy);
    let err = t.match_and_reserve(&q, MatchMode::Exact).unwrap_err();
    assert_eq!(err.explain.matched, 0);
    assert!(
        err.explain.nearest.iter().all(|n| n.server != "busy"),
        "{:?}",
        err.explain.nearest
    );
    assert_eq!(
        err.explain.waitable, 1,
        "the busy server is worth waiting for"
    );
    // Down is worth waiting for too; a clause on what the server is, not.
    t.release(&held);
    t.set_state(busy, ServerState::Down).unwrap();
    assert_eq!(t.explain(&q).waitable, 1);
    t.set_state(busy, ServerState::Up).unwrap();
    let q = t.compile("server.power >= 2", "", &env("echo")).unwrap();
    assert_eq!(t.explain(&q).waitable, 0, "waiting cannot help");
    // A clause over free capacity alone is worth waiting for; one that
    // also reads a fixed column is not.
    let q = t
        .compile("server.slots_free >= 2", "", &env("echo"))
        .unwrap();
    assert_eq!(t.explain(&q).waitable, 1);
    let q = t
        .compile("server.slots_free + server.cores >= 100", "", &env("echo"))
        .unwrap();
    assert_eq!(t.explain(&q).waitable, 0);
}

/// A sampled match checks free capacity only for the rows that would be
/// the answer (the lazy path): it must still never pick a full server,
/// must find the one server left with room however far from its start, and
/// with `k` covering the table must agree with an exact match, also when
/// the best rows of many blocks are full.
#[test]
fn sampled_matches_check_capacity_last_and_never_pick_a_full_server() {
    let t = ServerTable::new(TableConfig {
        shards: 2,
        capacity: 4096,
    })
    .unwrap();
    let n = 2000;
    let mut ids = Vec::new();
    for i in 0..n {
        let mut rec = server(&format!("s{i}"), 1, i as f64, &["echo"], "eu");
        // Every odd server is full, and so is every server of the top
        // thousand: a block's best row is full, its runner-up is not.
        if i % 2 == 1 || i >= 1000 {
            rec.slots_free = 0;
        }
        ids.push(t.insert(rec).unwrap());
    }
    let e = env("echo");
    let fused = t.compile("server.mem_free >= 8GiB", "", &e).unwrap();
    // A capacity clause of another shape (evaluated per row, not fused).
    let general = t.compile("server.slots_free * 2 >= 2", "", &e).unwrap();
    for q in [&fused, &general] {
        let exact = t.match_and_reserve(q, MatchMode::Exact).unwrap();
        assert_eq!(exact.server, ids[998], "{q:?}");
        t.release(&exact);
        let all = t
            .match_and_reserve(q, MatchMode::Sampled { k: 100_000 })
            .unwrap();
        assert_eq!(all.server, ids[998], "{q:?}");
        t.release(&all);
        for _ in 0..200 {
            let r = t.match_and_reserve(q, MatchMode::Sampled { k: 8 }).unwrap();
            let i = ids.iter().position(|&x| x == r.server).unwrap();
            assert!(i % 2 == 0 && i < 1000, "picked full server s{i}");
            t.release(&r);
        }
    }
    // Only s4 has room left: every sampled match finds it, from any start.
    for (i, &id) in ids.iter().enumerate() {
        if i != 4 && i % 2 == 0 && i < 1000 {
            t.apply_delta(id, 1, &[Change::SlotsFree(0)]).unwrap();
        }
    }
    for _ in 0..100 {
        let r = t
            .match_and_reserve(&fused, MatchMode::Sampled { k: 8 })
            .unwrap();
        assert_eq!(r.server, ids[4]);
        t.release(&r);
    }
    // And with none left, the match fails with the capacity clause named.
    t.apply_delta(ids[4], 1, &[Change::SlotsFree(0)]).unwrap();
    let err = t
        .match_and_reserve(&fused, MatchMode::Sampled { k: 8 })
        .unwrap_err();
    assert_eq!(err.explain.matched, 0);
    assert!(err
        .explain
        .clauses
        .iter()
        .any(|c| c.clause.starts_with("slots_free") && c.eliminated == n));
}

/// The lazy sampled path keeps a bounded number of block tops. Here ten
/// blocks' best rows are full and rank above the one free row worth having
/// (s640, the top of block 10), so that row's block top is dropped; the
/// match must not settle for a runner-up ranked below it.
#[test]
fn sampled_matches_do_not_settle_below_a_dropped_block_top() {
    let t = ServerTable::new(TableConfig {
        shards: 1,
        capacity: 1024,
    })
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..11 * 64 {
        let (b, row) = (i / 64, i % 64);
        let (power, free) = match (b, row) {
            (10, 0) => (500.0, true),
            (_, 0) => (1000.0 + b as f64, false),
            (_, 1) => (1.0 + b as f64 / 100.0, true),
            _ => (0.0, false),
        };
        let mut rec = server(&format!("s{i}"), 1, power, &["echo"], "eu");
        rec.slots_free = free as u32;
        ids.push(t.insert(rec).unwrap());
    }
    let q = t.compile("", "server.power", &env("echo")).unwrap();
    for mode in [MatchMode::Exact, MatchMode::Sampled { k: 100_000 }] {
        let r = t.match_and_reserve(&q, mode).unwrap();
        assert_eq!(r.server, ids[640], "{mode:?}");
        t.release(&r);
    }
}

/// An exact match whose `prefer` is not a sum of weighted `f32` columns
/// scores the passing rows of many blocks together (`batch.rs`): the answer
/// must still be the reference's, through batch boundaries, shard ends,
/// ties (the lowest id wins) and best rows that turn out full (the next
/// best of the batch is taken).
#[test]
fn exact_matches_scored_in_batches_agree_with_the_reference() {
    use allot_engine::reference::NaiveTable;
    let t = ServerTable::new(TableConfig {
        shards: 3,
        capacity: 8192,
    })
    .unwrap();
    let mut naive = NaiveTable::new();
    let n = 3000;
    let mut ids = Vec::new();
    for i in 0..n {
        // 200 distinct powers: every score is shared by many servers.
        let power = ((i * 37) % 200) as f64 / 4.0;
        let apps: &[&str] = if i % 3 == 0 { &["sum"] } else { &["echo"] };
        let mut rec = server(&format!("s{i}"), 2, power, apps, "eu");
        rec.cores = 1 + (i % 7) as u32;
        rec.load = ((i * 13) % 10) as f64 / 10.0;
        let id = t.insert(rec.clone()).unwrap();
        naive.insert(id, &rec);
        ids.push(id);
    }
    let e = env("echo");
    let require = "server.load < 0.8";
    let prefers = [
        // A register program.
        "server.power * server.cores",
        // The bench's unbounded shape.
        "server.idle_power - (2 * server.load + 0)",
        // A sum with a constant term (not row-by-row weights).
        "server.power / 2 + 1",
        // No leaf at all: every row ties, the first passing one wins.
        "1",
    ];
    let check = |t: &ServerTable, naive: &mut NaiveTable, what: &str| {
        for p in prefers {
            let q = t.compile(require, p, &e).unwrap();
            let got = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
            let (want, score) = naive.match_and_reserve(require, p, &e, &[]).unwrap();
            assert_eq!(got.server, want, "{what}: prefer {p}");
            assert_eq!(got.score.to_bits(), score.to_bits(), "{what}: prefer {p}");
            t.release(&got);
            naive.release(want, 1, 0, 0);
        }
    };
    check(&t, &mut naive, "all free");
    // Fill the best servers of every prefer (and many more): each batch's
    // best rows fail the capacity test before one with room is found.
    for (i, &id) in ids.iter().enumerate() {
        if (i * 37) % 200 >= 120 || i % 5 == 0 {
            t.apply_delta(id, 1, &[Change::SlotsFree(0)]).unwrap();
            naive.apply_delta(id, 1, &[Change::SlotsFree(0)]);
        }
    }
    check(&t, &mut naive, "best servers full");
}

/// The exact scan skips blocks whose best possible score (from the block's
/// column ranges, by interval arithmetic for any `prefer` over columns)
/// cannot beat the best so far. Skipping must never change the answer:
/// pruned and unpruned scans and the reference agree, on tables registered
/// in ascending score order (the scan starts from a seed at the table's
/// end, ahead of the rows it scans), descending and with every score tied
/// (the first server must still win over the seed),
/// and for shapes whose bound is unknown on some blocks (a divisor range
/// holding zero).
#[test]
fn pruning_never_changes_the_answer() {
    use allot_engine::reference::NaiveTable;
    let prefers = [
        "server.idle_power - 2 * server.load",
        "server.idle_power / server.cores",
        "server.power * server.load - server.cores",
        "-(server.load * 2 + 1) * server.power",
        "server.power / (server.load - 0.5)",
        // A label: numbers on most servers, a string or nothing on some.
        "server.gpus - server.load",
        "server.gpus * server.power",
        "1",
    ];
    let n = 1500usize;
    for order in ["ascending", "descending", "tied"] {
        // Server i's rank: most prefers' scores grow with it.
        let rank = |i: usize| match order {
            "ascending" => i,
            "descending" => n - 1 - i,
            _ => n / 2,
        };
        let t = ServerTable::new(TableConfig {
            shards: 2,
            capacity: 4096,
        })
        .unwrap();
        let mut naive = NaiveTable::new();
        for i in 0..n {
            let r = rank(i) as f64;
            let mut rec = server(&format!("s{i}"), 2, r / 8.0, &["echo"], "eu");
            rec.idle_power = r / 4.0;
            rec.cores = 1 + (i % 5) as u32;
            // A load of exactly 0.5 in some blocks: the last prefer's
            // divisor range then holds zero there.
            rec.load = if i % 200 == 0 {
                0.5
            } else {
                0.1 + r / (4.0 * n as f64)
            };
            match i % 13 {
                0 => rec
                    .labels
                    .push(("gpus".into(), LabelValue::Str("many".into()))),
                1 => {}
                _ => rec
                    .labels
                    .push(("gpus".into(), LabelValue::Num((r / 64.0).floor()))),
            }
            let id = t.insert(rec.clone()).unwrap();
            naive.insert(id, &rec);
        }
        let e = env("echo");
        let require = "server.power >= 1";
        for p in prefers {
            let q = t.compile(require, p, &e).unwrap();
            // Both scans from the same tie start (the first reservation
            // moves it).
            let start = t.tie_start();
            let pruned = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
            t.release(&pruned);
            t.set_tie_start(start);
            let raw = t.compile(require, p, &e).unwrap().without_pruning();
            let unpruned = t.match_and_reserve(&raw, MatchMode::Exact).unwrap();
            t.release(&unpruned);
            let (want, score) = naive.match_and_reserve(require, p, &e, &[]).unwrap();
            naive.release(want, 1, 0, 0);
            assert_eq!(pruned.server, want, "{order}: prefer {p}");
            assert_eq!(unpruned.server, want, "{order}: prefer {p} (unpruned)");
            assert!(
                pruned.score.to_bits() == score.to_bits()
                    || (pruned.score.is_nan() && score.is_nan()),
                "{order}: prefer {p}: {} vs {score}",
                pruned.score
            );
        }
    }
}

#[test]
fn totals_agree_with_the_snapshot_and_count_only_servers_up() {
    let t = table();
    let a = t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    t.insert(server("b", 3, 9.0, &["render", "echo"], "us"))
        .unwrap();
    let c = t.insert(server("c", 4, 7.0, &["gpu"], "eu")).unwrap();
    let d = t.insert(server("d", 5, 7.0, &["other"], "eu")).unwrap();
    t.set_state(c, ServerState::Down).unwrap();
    t.set_state(d, ServerState::Draining).unwrap();
    // A reservation on an up server: the free sums are net of it.
    let q = t.compile("", "", &env("echo")).unwrap();
    let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    assert_ne!(r.server, c);
    let _ = a;
    let tot = t.totals();
    assert_eq!((tot.up, tot.down, tot.draining), (2, 1, 1));
    let up: Vec<ServerSnapshot> = t
        .snapshot()
        .into_iter()
        .filter(|s| s.state == ServerState::Up)
        .collect();
    assert_eq!(tot.slots, up.iter().map(|s| s.record.slots).sum::<u32>());
    assert_eq!(
        tot.slots_free,
        up.iter().map(|s| s.record.slots_free).sum::<u32>()
    );
    assert_eq!(tot.cores_free, up.iter().map(|s| s.cores_free).sum::<u32>());
    assert_eq!(
        tot.mem_free,
        up.iter().map(|s| s.record.mem_free).sum::<u64>()
    );
    assert_eq!(tot.apps, vec!["echo".to_string(), "render".to_string()]);
}

/// A delta's free slots count what the worker runs, not the placements
/// still on their way to it: the table caps them by the slots less what it
/// has reserved, so one distributor never places more than the worker has
/// (no busy refusal from a stale delta).
#[test]
fn a_delta_does_not_forget_placements_on_their_way() {
    let t = table();
    let a = t.insert(server("a", 2, 5.0, &["echo"], "eu")).unwrap();
    let q = t.compile("", "", &env("echo")).unwrap();
    let r1 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    let r2 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    // The first task's result came back; a third is placed in its slot.
    t.release(&r1);
    let r3 = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
    // The worker's delta sent when the first ended, before the third
    // reached it: one slot free, as it saw it.
    t.apply_delta(a, 1, &[Change::SlotsFree(1)]).unwrap();
    assert_eq!(t.snapshot()[0].record.slots_free, 0, "both slots are taken");
    assert!(t.match_and_reserve(&q, MatchMode::Exact).is_err());
    t.release(&r2);
    assert_eq!(t.snapshot()[0].record.slots_free, 1);
    // A delta saying less than the table knows still wins.
    t.apply_delta(a, 2, &[Change::SlotsFree(0)]).unwrap();
    assert_eq!(t.snapshot()[0].record.slots_free, 0);
    t.release(&r3);
}
