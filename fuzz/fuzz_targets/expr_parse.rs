#![no_main]
//! Any text as `require` and `prefer` (split at the first NUL byte) through
//! the parser and compiler; whatever compiles is matched on a small fixed
//! table and checked against the naive reference matcher (differential
//! fuzzing of the compiled form), and explained.
use allot_engine::reference::NaiveTable;
use allot_engine::*;

fn table() -> (ServerTable, NaiveTable) {
    let t = ServerTable::new(TableConfig { shards: 2, capacity: 256 }).expect("table");
    let mut naive = NaiveTable::new();
    let powers = [0.0, 0.1, 2.5, -1.0, f64::NAN, 1e30, 7.0];
    for i in 0..12u32 {
        let mut labels = vec![(
            "region".to_string(),
            LabelValue::Str(["eu", "us", "asia"][i as usize % 3].to_string()),
        )];
        match i % 4 {
            0 => labels.push(("gpus".into(), LabelValue::Num((i % 3) as f64))),
            1 => labels.push(("gpus".into(), LabelValue::Str("many".into()))),
            2 => labels.push(("zone".into(), LabelValue::Num(f64::INFINITY))),
            _ => {}
        }
        let rec = ServerRecord {
            name: format!("s{i}"),
            slots: i % 4,
            slots_free: i % 3,
            cores: i,
            power: powers[i as usize % powers.len()],
            idle_power: powers[(i as usize + 3) % powers.len()],
            mem: (i as u64) << 30,
            mem_free: (i as u64 / 2) << 30,
            load: (i % 5) as f64 / 4.0,
            apps: if i % 2 == 0 { vec!["echo".into()] } else { vec!["sum".into(), "echo".into()] },
            labels,
        };
        let id = t.insert(rec.clone()).expect("insert");
        naive.insert(id, &rec);
    }
    (t, naive)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (require, prefer) = text.split_once('\0').unwrap_or((text, ""));
    let mut env = Env::default();
    env.task.app = "echo".into();
    env.task.slots = 1;
    env.task.extra.push(("deadline".into(), LabelValue::Num(2.5)));
    env.client.push(("region".into(), LabelValue::Str("eu".into())));
    env.user.name = "fuzz".into();
    let (t, mut naive) = table();
    let Ok(q) = t.compile(require, prefer, &env) else { return };
    let ex = t.explain(&q);
    assert_eq!(ex.total, 12);
    let got = t.match_and_reserve(&q, MatchMode::Exact);
    let want = naive.match_and_reserve(require, prefer, &env, &[]);
    match (&got, want) {
        (Ok(r), Some((id, score))) => {
            assert_eq!(r.server, id, "{require:?} / {prefer:?}");
            assert!((r.score.is_nan() && score.is_nan()) || r.score == score);
            assert!(ex.matched >= 1);
        }
        (Err(e), None) => assert_eq!(e.explain.matched, 0),
        (got, want) => panic!("{require:?} / {prefer:?}: engine {:?}, reference {want:?}", got.as_ref().map(|r| r.server)),
    }
    if let Ok(r) = got {
        assert!(t.release(&r));
    }
    let _ = t.match_and_reserve(&q, MatchMode::Sampled { k: 3 });
});
