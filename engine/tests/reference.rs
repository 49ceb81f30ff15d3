//! Property tests: the engine against the naive reference matcher
//! (`allot_engine::reference`) on random tables, tasks and deltas.

use allot_engine::reference::NaiveTable;
use allot_engine::*;
use proptest::prelude::*;

const REQUIRES: &[&str] = &[
    "true",
    "server.region == 'eu'",
    "server.gpus >= 1 && server.load < 0.5",
    "server.region != 'us' || server.power > 2.5",
    "!(server.gpus == 'many') && server.mem >= 4GiB",
    "'sum' in server.apps",
    "server.slots_free - task.slots >= 1",
    "server.load <= 0.3 || server.cores > 4",
    "server.gpus == server.gpus",
    "server.power == 0.1 || server.power != 7.25",
    "server.idle_power >= 2.5 && server.region == client.region",
    "server.mem_free > 2GiB && server.cores_free >= 2",
    "server.gpus < server.cores && server.slots != 2",
    "server.load * 10 > server.gpus",
];
const PREFERS: &[&str] = &[
    "",
    "server.idle_power - 2 * server.load",
    "server.power + 0.5 * server.idle_power - server.load * 4",
    "server.gpus",
    "-server.mem_free / 1GiB",
    "server.power * server.cores",
    "server.idle_power / server.cores - server.load",
    "-(server.load * 2 + server.power)",
    "1",
];
const APPS: &[&str] = &["echo", "sum", "gpu"];
const POWERS: &[f64] = &[0.0, 0.1, 1.0, 2.5, 3.0, 7.25, f64::NAN, -1.0];
const LOADS: &[f64] = &[0.0, 0.3, 0.5, 0.9, 1.2];

fn label_strategy() -> impl Strategy<Value = Option<LabelValue>> {
    prop_oneof![
        Just(None),
        (0u32..4).prop_map(|n| Some(LabelValue::Num(n as f64))),
        Just(Some(LabelValue::Str("many".into()))),
    ]
}

fn record(name: u8) -> impl Strategy<Value = ServerRecord> {
    (
        (0u32..4, 0u32..5, 0u32..9),
        (0..POWERS.len(), 0..POWERS.len(), 0..LOADS.len()),
        (0u64..17, 0u64..17),
        proptest::collection::vec(0..APPS.len(), 0..3),
        (
            prop_oneof![Just(None), Just(Some("eu")), Just(Some("us"))],
            label_strategy(),
        ),
    )
        .prop_map(
            move |((slots, free, cores), (p, ip, l), (mem, mf), apps, (region, gpus))| {
                let mut labels = Vec::new();
                if let Some(r) = region {
                    labels.push(("region".to_string(), LabelValue::Str(r.into())));
                }
                if let Some(g) = gpus {
                    labels.push(("gpus".to_string(), g));
                }
                ServerRecord {
                    name: format!("w{name}"),
                    slots,
                    slots_free: free.min(slots),
                    cores,
                    power: POWERS[p],
                    idle_power: POWERS[ip],
                    mem: mem << 30,
                    mem_free: mf.min(mem) << 30,
                    load: LOADS[l],
                    apps: apps.into_iter().map(|a| APPS[a].to_string()).collect(),
                    labels,
                }
            },
        )
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u32..4).prop_map(Change::SlotsFree),
        (0u32..9).prop_map(Change::CoresFree),
        (0u32..9).prop_map(Change::Cores),
        (0..POWERS.len()).prop_map(|i| Change::Power(POWERS[i])),
        (0..POWERS.len()).prop_map(|i| Change::IdlePower(POWERS[i])),
        (0..LOADS.len()).prop_map(|i| Change::Load(LOADS[i])),
        (0u64..17).prop_map(|m| Change::MemFree(m << 30)),
        (0u64..17).prop_map(|m| Change::Mem(m << 30)),
        (0u32..4).prop_map(Change::Slots),
        label_strategy().prop_map(|v| match v {
            Some(v) => Change::Label("gpus".into(), v),
            None => Change::LabelRemoved("gpus".into()),
        }),
        prop_oneof![Just("eu"), Just("us"), Just("asia")]
            .prop_map(|r| Change::Label("region".into(), LabelValue::Str(r.into()))),
        (0..APPS.len()).prop_map(|a| Change::AppAdded(APPS[a].into())),
        (0..APPS.len()).prop_map(|a| Change::AppRemoved(APPS[a].into())),
    ]
}

#[derive(Clone, Debug)]
struct Task {
    require: usize,
    prefer: usize,
    app: usize,
    slots: u32,
    cores: u32,
    mem: u64,
    restricted: bool,
}

fn task() -> impl Strategy<Value = Task> {
    (
        0..REQUIRES.len(),
        0..PREFERS.len(),
        0..=APPS.len(),
        0u32..3,
        0u32..4,
        0u64..4,
        any::<bool>(),
    )
        .prop_map(
            |(require, prefer, app, slots, cores, mem, restricted)| Task {
                require,
                prefer,
                app,
                slots,
                cores,
                mem: mem << 30,
                restricted,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Insert(ServerRecord),
    Remove(u8),
    Delta(u8, i8, Vec<Change>),
    State(u8, u8),
    Match(Task, u8, Option<u8>),
    Release(u8),
    /// Moves the tie start of both tables to this id.
    TieStart(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..24).prop_flat_map(record).prop_map(Op::Insert),
        1 => (0u8..24).prop_map(Op::Remove),
        3 => (0u8..24, -2i8..4, proptest::collection::vec(change(), 0..4)).prop_map(|(s, d, c)| Op::Delta(s, d, c)),
        1 => (0u8..24, 0u8..3).prop_map(|(s, st)| Op::State(s, st)),
        4 => (task(), 0u8..3, proptest::option::of(0u8..24)).prop_map(|(t, m, x)| Op::Match(t, m, x)),
        2 => any::<u8>().prop_map(Op::Release),
        1 => (0u16..300).prop_map(Op::TieStart),
    ]
}

fn env_of(t: &Task) -> Env {
    let mut e = Env::default();
    e.task.app = APPS.get(t.app).map_or(String::new(), |a| a.to_string());
    e.task.slots = t.slots;
    e.task.cores = t.cores;
    e.task.mem = t.mem;
    e.client
        .push(("region".into(), LabelValue::Str("eu".into())));
    if t.restricted {
        e.user.allowed_apps = vec!["echo".into()];
    }
    e
}

fn same_score(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

fn run(ops: Vec<Op>, shards: usize) -> Result<(), TestCaseError> {
    let table = ServerTable::new(TableConfig {
        shards,
        capacity: 256,
    })
    .unwrap();
    let mut naive = NaiveTable::new();
    let mut seqs: std::collections::HashMap<ServerId, u64> = Default::default();
    let mut held: Vec<Reservation> = Vec::new();
    let id_of = |table: &ServerTable, n: u8| table.lookup(&format!("w{n}"));
    for op in ops {
        match op {
            Op::Insert(rec) => {
                let id = table.insert(rec.clone()).unwrap();
                naive.insert(id, &rec);
                seqs.insert(id, 0);
                held.retain(|r| r.server != id);
            }
            Op::Remove(n) => {
                if let Some(id) = id_of(&table, n) {
                    table.remove(id).unwrap();
                    naive.remove(id);
                    held.retain(|r| r.server != id);
                }
            }
            Op::Delta(n, d, changes) => {
                if let Some(id) = id_of(&table, n) {
                    let last = seqs[&id];
                    let seq = (last as i64 + d as i64).max(0) as u64;
                    let got = table.apply_delta(id, seq, &changes).unwrap();
                    let want = naive.apply_delta(id, seq, &changes).unwrap();
                    prop_assert_eq!(got, want);
                    if got == DeltaOutcome::Applied {
                        seqs.insert(id, seq);
                    }
                }
            }
            Op::State(n, s) => {
                if let Some(id) = id_of(&table, n) {
                    let s = [ServerState::Up, ServerState::Down, ServerState::Draining][s as usize];
                    table.set_state(id, s).unwrap();
                    naive.set_state(id, s);
                    prop_assert_eq!(table.state(id), Some(s));
                }
            }
            Op::Match(t, mode, excl) => {
                let e = env_of(&t);
                let (req, pref) = (REQUIRES[t.require], PREFERS[t.prefer]);
                let q = table.compile(req, pref, &e).unwrap();
                let excluded: Vec<ServerId> =
                    excl.and_then(|n| id_of(&table, n)).into_iter().collect();
                let explain = table.explain_excluding(&q, &excluded);
                let passing = naive
                    .rows
                    .iter()
                    .filter(|(id, r)| {
                        !excluded.contains(id)
                            && NaiveTable::passes(
                                r,
                                &allot_engine::expr::parser::parse(req, Which::Require).unwrap(),
                                &e,
                            )
                    })
                    .count() as u32;
                prop_assert_eq!(explain.matched, passing, "explain of {} {:?}", req, e);
                prop_assert_eq!(explain.total as usize, naive.rows.len());
                let mode = match mode {
                    0 => MatchMode::Exact,
                    1 => MatchMode::Sampled { k: 100_000 },
                    _ => MatchMode::Sampled { k: 2 },
                };
                let got = table.match_and_reserve_excluding(&q, mode, &excluded);
                if mode == (MatchMode::Sampled { k: 2 }) {
                    // Any passing server will do; mirror the reservation.
                    match got {
                        Ok(r) => {
                            prop_assert!(naive.rows.contains_key(&r.server));
                            prop_assert!(!excluded.contains(&r.server));
                            naive.take(r.server, r.slots, r.cores, r.mem);
                            held.push(r);
                        }
                        Err(_) => prop_assert_eq!(passing, 0),
                    }
                    continue;
                }
                let want = naive.match_and_reserve(req, pref, &e, &excluded);
                prop_assert_eq!(
                    table.tie_start(),
                    naive.tie_start,
                    "tie start after a match"
                );
                match (got, want) {
                    (Ok(r), Some((id, score))) => {
                        prop_assert_eq!(r.server, id, "{} / {:?} / {:?}", req, pref, e);
                        prop_assert!(same_score(r.score, score), "score {} vs {}", r.score, score);
                        held.push(r);
                    }
                    (Err(_), None) => {}
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "{req} / {pref} / {e:?}: engine {:?}, reference {want:?}",
                            got.map(|r| r.server)
                        )))
                    }
                }
            }
            Op::TieStart(at) => {
                table.set_tie_start(at.into());
                naive.tie_start = at.into();
            }
            Op::Release(k) => {
                if !held.is_empty() {
                    let r = held.swap_remove(k as usize % held.len());
                    prop_assert!(table.release(&r));
                    naive.release(r.server, r.slots, r.cores, r.mem);
                }
            }
        }
    }
    // The final tables agree attribute by attribute.
    let snap = table.snapshot();
    prop_assert_eq!(snap.len(), naive.rows.len());
    for s in snap {
        let n = &naive.rows[&s.id];
        prop_assert_eq!(&s.name, &n.name);
        prop_assert_eq!(s.state, n.state);
        prop_assert_eq!(
            (
                s.record.slots,
                s.record.slots_free,
                s.record.cores,
                s.cores_free
            ),
            (n.slots, n.slots_free, n.cores, n.cores_free)
        );
        prop_assert_eq!((s.record.mem, s.record.mem_free), (n.mem, n.mem_free));
        prop_assert!(same_score(s.record.power, n.power as f64));
        prop_assert!(same_score(s.record.load, n.load as f64));
        let mut apps = s.record.apps.clone();
        apps.sort();
        prop_assert_eq!(apps, n.apps.iter().cloned().collect::<Vec<_>>());
        let mut labels = s.record.labels.clone();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        prop_assert_eq!(labels, n.labels.clone().into_iter().collect::<Vec<_>>());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn engine_agrees_with_the_reference(ops in proptest::collection::vec(op(), 1..120), shards in 1usize..4) {
        run(ops, shards)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Bigger tables: several blocks per shard, so block boundaries, app masks
    /// and label blocks across blocks are exercised.
    #[test]
    fn engine_agrees_on_multi_block_tables(
        recs in proptest::collection::vec(record(0), 100..300),
        tasks in proptest::collection::vec(task(), 1..20),
        start in 0u32..1100,
    ) {
        let table = ServerTable::new(TableConfig { shards: 2, capacity: 1024 }).unwrap();
        let mut naive = NaiveTable::new();
        table.set_tie_start(start);
        naive.tie_start = start;
        for (i, mut r) in recs.into_iter().enumerate() {
            r.name = format!("s{i}");
            let id = table.insert(r.clone()).unwrap();
            naive.insert(id, &r);
        }
        for t in tasks {
            let e = env_of(&t);
            let (req, pref) = (REQUIRES[t.require], PREFERS[t.prefer]);
            let q = table.compile(req, pref, &e).unwrap();
            let got = table.match_and_reserve(&q, MatchMode::Exact).ok().map(|r| (r.server, r.score));
            let want = naive.match_and_reserve(req, pref, &e, &[]);
            prop_assert_eq!(got.map(|g| g.0), want.map(|w| w.0), "{} / {}", req, pref);
            if let (Some(g), Some(w)) = (got, want) {
                prop_assert!(same_score(g.1, w.1));
            }
        }
    }
}
