//! The code the engine's fuzz targets run, kept here so that `cargo test`
//! replays the committed seeds (`fuzz/corpus/{expr_parse,delta_apply}`)
//! through exactly the same functions on stable (`tests/corpus.rs`).

use crate::reference::NaiveTable;
use crate::*;

// ---------------------------------------------------------------- expr_parse
mod expr_parse_impl {
    use super::*;

    fn table() -> (ServerTable, NaiveTable) {
        let t = ServerTable::new(TableConfig {
            shards: 2,
            capacity: 256,
        })
        .expect("table");
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
                apps: if i % 2 == 0 {
                    vec!["echo".into()]
                } else {
                    vec!["sum".into(), "echo".into()]
                },
                labels,
            };
            let id = t.insert(rec.clone()).expect("insert");
            naive.insert(id, &rec);
        }
        (t, naive)
    }

    /// The `expr_parse` target: Any text as `require` and `prefer` (split at the first NUL byte) through the parser and compiler; whatever compiles is matched on a small fixed table and checked against the naive reference matcher (differential fuzzing of the compiled form), and explained.
    pub fn expr_parse(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (require, prefer) = text.split_once('\0').unwrap_or((text, ""));
        let mut env = Env::default();
        env.task.app = "echo".into();
        env.task.slots = 1;
        env.task
            .extra
            .push(("deadline".into(), LabelValue::Num(2.5)));
        env.client
            .push(("region".into(), LabelValue::Str("eu".into())));
        env.user.name = "fuzz".into();
        let (t, mut naive) = table();
        let Ok(q) = t.compile(require, prefer, &env) else {
            return;
        };
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
            (got, want) => panic!(
                "{require:?} / {prefer:?}: engine {:?}, reference {want:?}",
                got.as_ref().map(|r| r.server)
            ),
        }
        if let Ok(r) = got {
            assert!(t.release(&r));
        }
        let _ = t.match_and_reserve(&q, MatchMode::Sampled { k: 3 });
    }
}
pub use expr_parse_impl::expr_parse;

// ---------------------------------------------------------------- delta_apply
mod delta_apply_impl {
    use super::*;

    struct Input<'a>(&'a [u8]);
    impl Input<'_> {
        fn u8(&mut self) -> Option<u8> {
            let (b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(*b)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes([
                self.u8()?,
                self.u8()?,
                self.u8()?,
                self.u8()?,
            ]))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(self.u32()? as u64 | (self.u32()? as u64) << 32)
        }
        fn f64(&mut self) -> Option<f64> {
            Some(f64::from_bits(self.u64()?))
        }
        fn word(&mut self) -> Option<String> {
            Some(
                ["echo", "sum", "gpu", "region", "zone", "", "é", "x"][(self.u8()? % 8) as usize]
                    .to_string(),
            )
        }
        fn label(&mut self) -> Option<LabelValue> {
            Some(if self.u8()? % 2 == 0 {
                LabelValue::Num(self.f64()?)
            } else {
                LabelValue::Str(self.word()?)
            })
        }
        fn change(&mut self) -> Option<Change> {
            Some(match self.u8()? % 13 {
                0 => Change::Slots(self.u32()?),
                1 => Change::SlotsFree(self.u32()?),
                2 => Change::Cores(self.u32()?),
                3 => Change::CoresFree(self.u32()?),
                4 => Change::Power(self.f64()?),
                5 => Change::IdlePower(self.f64()?),
                6 => Change::Mem(self.u64()? >> 12),
                7 => Change::MemFree(self.u64()? >> 12),
                8 => Change::Load(self.f64()?),
                9 => Change::Label(self.word()?, self.label()?),
                10 => Change::LabelRemoved(self.word()?),
                11 => Change::AppAdded(self.word()?),
                _ => Change::AppRemoved(self.word()?),
            })
        }
    }

    fn same(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a == b
    }

    /// The `delta_apply` target: Any byte string as a sequence of table operations (insert, remove, delta with arbitrary values and sequence numbers, state change, match, release), applied to the engine and to the naive reference; the two must agree on every outcome and, at the end, on every attribute of every server.
    pub fn delta_apply(data: &[u8]) {
        let table = ServerTable::new(TableConfig {
            shards: 2,
            capacity: 128,
        })
        .expect("table");
        let mut naive = NaiveTable::new();
        let mut seqs = std::collections::HashMap::new();
        let mut held: Vec<Reservation> = Vec::new();
        let mut inp = Input(data);
        let mut env = Env::default();
        env.task.app = "echo".into();
        env.task.slots = 1;
        let require = "server.load < 0.5 || server.region == 'eu' || server.gpu >= 1";
        let prefer = "server.power - server.load";
        while let Some(op) = inp.u8() {
            let name = format!("w{}", op >> 4);
            match op % 6 {
                0 => {
                    let Some(rec) = (|| {
                        Some(ServerRecord {
                            name: name.clone(),
                            slots: inp.u8()? as u32,
                            slots_free: inp.u8()? as u32,
                            cores: inp.u8()? as u32,
                            power: inp.f64()?,
                            idle_power: inp.f64()?,
                            mem: inp.u32()? as u64,
                            mem_free: inp.u32()? as u64,
                            load: inp.f64()?,
                            apps: vec![inp.word()?],
                            labels: vec![(inp.word()?, inp.label()?)],
                        })
                    })() else {
                        break;
                    };
                    let id = table.insert(rec.clone()).expect("insert");
                    naive.insert(id, &rec);
                    seqs.insert(id, 0u64);
                    held.retain(|r| r.server != id);
                }
                1 => {
                    if let Some(id) = table.lookup(&name) {
                        table.remove(id).expect("remove");
                        naive.remove(id);
                        held.retain(|r| r.server != id);
                    }
                }
                2 => {
                    let Some(step) = inp.u8() else { break };
                    let n = inp.u8().unwrap_or(0) % 4;
                    let changes: Vec<Change> = (0..n).map_while(|_| inp.change()).collect();
                    if let Some(id) = table.lookup(&name) {
                        let seq = (seqs[&id] as i64 + (step as i8 as i64 % 4)).max(0) as u64;
                        let got = table.apply_delta(id, seq, &changes).expect("delta");
                        assert_eq!(Some(got), naive.apply_delta(id, seq, &changes));
                        if got == DeltaOutcome::Applied {
                            seqs.insert(id, seq);
                        }
                    }
                }
                3 => {
                    let s = [ServerState::Up, ServerState::Down, ServerState::Draining]
                        [(op as usize >> 4) % 3];
                    if let Some(id) = table.lookup(&name) {
                        table.set_state(id, s).expect("state");
                        naive.set_state(id, s);
                    }
                }
                4 => {
                    let q = table.compile(require, prefer, &env).expect("compile");
                    let got = table.match_and_reserve(&q, MatchMode::Exact);
                    let want = naive.match_and_reserve(require, prefer, &env, &[]);
                    assert_eq!(got.as_ref().ok().map(|r| r.server), want.map(|w| w.0));
                    if let Ok(r) = got {
                        held.push(r);
                    }
                }
                _ => {
                    if !held.is_empty() {
                        let r = held.swap_remove((op as usize >> 3) % held.len());
                        assert!(table.release(&r));
                        naive.release(r.server, r.slots, r.cores, r.mem);
                    }
                }
            }
        }
        let snap = table.snapshot();
        assert_eq!(snap.len(), naive.rows.len());
        for s in snap {
            let n = &naive.rows[&s.id];
            assert_eq!(s.state, n.state);
            assert_eq!(
                (s.record.slots, s.record.slots_free, s.cores_free),
                (n.slots, n.slots_free, n.cores_free)
            );
            assert_eq!((s.record.mem, s.record.mem_free), (n.mem, n.mem_free));
            assert!(same(s.record.power, n.power as f64) && same(s.record.load, n.load as f64));
            let mut apps = s.record.apps.clone();
            apps.sort();
            assert_eq!(apps, n.apps.iter().cloned().collect::<Vec<_>>());
        }
    }
}
pub use delta_apply_impl::delta_apply;
