//! Servers that tie on `prefer` take turns: each match takes the first tied
//! server at or after the table's tie start, and each reservation moves the
//! start past the server it reserved.

mod common;
use allot_engine::*;
use common::*;
use proptest::prelude::*;

/// `prefer`s the tied rows score the same on, one per way the scans score:
/// row-by-row weights, a register program scored in batches, a constant,
/// and a label.
const PREFERS: &[&str] = &[
    "server.idle_power",
    "server.idle_power - (2 * server.load + 0)",
    "1",
    "server.gpus",
];

/// What a row of a test table is.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Kind {
    /// Ties with the others of its kind at the top.
    Tied,
    /// Passes `require`, scores lower on every prefer of [`PREFERS`] but
    /// `1` (where it ties with the others).
    Lower,
    /// Fails `server.cores >= 4`.
    Failing,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![4 => Just(Kind::Tied), 1 => Just(Kind::Lower), 1 => Just(Kind::Failing)]
}

fn row(i: usize, kind: Kind) -> ServerRecord {
    let top = kind == Kind::Tied;
    let mut r = server(
        &format!("s{i}"),
        4,
        if top { 5.0 } else { 1.0 },
        &["echo"],
        "eu",
    );
    let gpus = if top { 2.0 } else { 1.0 };
    r.labels.push(("gpus".into(), LabelValue::Num(gpus)));
    if kind == Kind::Failing {
        r.cores = 2;
    }
    r
}

/// The live ids of `ids` in the order ties go from `start`: those at or
/// after it, then those before.
fn rotation(ids: &[ServerId], start: u32) -> Vec<ServerId> {
    let mut v = ids.to_vec();
    v.sort();
    let at = v.partition_point(|id| id.0 < start);
    v.rotate_left(at);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Among `n` tied rows (mixed with rows that score lower or fail),
    /// `n` consecutive matches pick the `n` tied rows, each once, in id
    /// order from the tie start around the table, in either mode, from any
    /// start, on tables of one block or many and one shard or several.
    #[test]
    fn tied_servers_take_turns(
        kinds in proptest::collection::vec(kind(), 1..400),
        shards in 1usize..4,
        start in 0u32..1200,
        prefer in 0..PREFERS.len(),
        sampled in any::<bool>(),
    ) {
        let t = ServerTable::new(TableConfig { shards, capacity: 1024 }).unwrap();
        let constant = PREFERS[prefer] == "1";
        let mut tied = Vec::new();
        for (i, &k) in kinds.iter().enumerate() {
            let id = t.insert(row(i, k)).unwrap();
            if k == Kind::Tied || (constant && k == Kind::Lower) {
                tied.push(id);
            }
        }
        prop_assume!(!tied.is_empty());
        t.set_tie_start(start);
        let q = t.compile("server.cores >= 4", PREFERS[prefer], &env("echo")).unwrap();
        let mode = if sampled { MatchMode::Sampled { k: 100_000 } } else { MatchMode::Exact };
        let mut got = Vec::new();
        for _ in 0..tied.len() {
            let r = t.match_and_reserve(&q, mode).unwrap();
            prop_assert_eq!(t.tie_start(), r.server.0 + 1);
            got.push(r.server);
            t.release(&r);
        }
        prop_assert_eq!(got, rotation(&tied, start), "prefer {}", PREFERS[prefer]);
    }
}

/// On 100,000 tied servers over four shards, successive matches take the
/// servers in id order from the tie start, across block and shard ends
/// and around from the last id to the first; reservations held or not.
#[test]
fn a_large_tied_table_rotates_across_blocks_and_shards() {
    let t = ServerTable::new(TableConfig {
        shards: 4,
        capacity: 100_000,
    })
    .unwrap();
    let ids: Vec<ServerId> = (0..100_000)
        .map(|i| t.insert(row(i, Kind::Tied)).unwrap())
        .collect();
    let e = env("echo");
    for prefer in PREFERS {
        let q = t.compile("", prefer, &e).unwrap();
        let order = rotation(&ids, 0);
        // From 70 servers before the end of each shard's rows (and of the
        // table): the turn passes each shard's end and the table's.
        for s in 1..=4usize {
            let at = order.len() * s / 4 - 70;
            t.set_tie_start(order[at].0);
            let want: Vec<ServerId> = (0..140).map(|k| order[(at + k) % order.len()]).collect();
            let mut held = Vec::new();
            for (k, w) in want.iter().enumerate() {
                let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
                assert_eq!(r.server, *w, "prefer {prefer}, shard {s}, turn {k}");
                // Half the turns keep their reservation: a server holding a
                // task still ties (the prefer does not read free slots).
                if k % 2 == 0 {
                    held.push(r);
                } else {
                    t.release(&r);
                }
            }
            for r in &held {
                t.release(r);
            }
        }
    }
}

/// Two identical servers split a stream of matches evenly, whether each
/// task ends before the next (as under `allot bench`) or they pile up.
#[test]
fn two_identical_servers_split_the_tasks() {
    let t = table();
    let a = t.insert(server("a", 1000, 5.0, &["echo"], "eu")).unwrap();
    let b = t.insert(server("b", 1000, 5.0, &["echo"], "eu")).unwrap();
    let q = t.compile("", "", &env("echo")).unwrap();
    for hold in [false, true] {
        let mut held = Vec::new();
        let (mut on_a, mut on_b) = (0, 0);
        for _ in 0..1000 {
            let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
            if r.server == a {
                on_a += 1;
            } else if r.server == b {
                on_b += 1;
            }
            if hold {
                held.push(r);
            } else {
                t.release(&r);
            }
        }
        assert_eq!((on_a, on_b), (500, 500), "holding reservations: {hold}");
        for r in &held {
            t.release(r);
        }
    }
}

/// The block holding the tie start may have no candidate at all: rows
/// scored together in one batch still never straddle the start, so the
/// first tied row after it wins, pruned or not, whichever way the prefer
/// is scored.
#[test]
fn the_turn_passes_a_block_at_the_start_without_candidates() {
    let t = ServerTable::new(TableConfig {
        shards: 1,
        capacity: 1024,
    })
    .unwrap();
    // Block 0: ten tied rows, then rows that fail; block 1 (which holds
    // the start): rows that fail; block 2: ten tied rows, then failing.
    let mut tied = Vec::new();
    for i in 0..192 {
        let kind = if i % 64 < 10 && i / 64 != 1 {
            Kind::Tied
        } else {
            Kind::Failing
        };
        let id = t.insert(row(i, kind)).unwrap();
        if kind == Kind::Tied {
            tied.push(id);
        }
    }
    let e = env("echo");
    for prefer in PREFERS {
        for pruned in [true, false] {
            let q = t.compile("server.cores >= 4", prefer, &e).unwrap();
            let q = if pruned { q } else { q.without_pruning() };
            t.set_tie_start(70);
            let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
            assert_eq!(r.server, ServerId(128), "prefer {prefer}, pruned {pruned}");
            t.release(&r);
        }
    }
    assert_eq!(tied.len(), 20);
}
