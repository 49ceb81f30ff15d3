//! A deliberately naive reference matcher: rows in a `BTreeMap`, expressions
//! interpreted from the AST for every row, no blocks, masks, interning or
//! atomics. It defines the semantics the fast engine must reproduce; the
//! property tests compare the two on random tables, tasks and deltas, and the
//! benchmarks report it beside the engine.

use std::collections::{BTreeMap, BTreeSet};

use crate::expr::op::{ArOp, BinOp, CmpOp, UnOp};
use crate::expr::parser::{parse, Expr, ExprKind, Scope};
use crate::expr::{Which, DEFAULT_PREFER};
use crate::schema::{
    Change, Column, DeltaOutcome, Env, LabelValue, ServerId, ServerRecord, ServerState,
};

/// One server as the reference keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct NaiveRow {
    /// Name.
    pub name: String,
    /// State.
    pub state: ServerState,
    /// `slots`
    pub slots: u32,
    /// `slots_free`
    pub slots_free: u32,
    /// `cores`
    pub cores: u32,
    /// `cores_free`
    pub cores_free: u32,
    /// `power` (stored as `f32`, like the engine).
    pub power: f32,
    /// `idle_power`
    pub idle_power: f32,
    /// `load`
    pub load: f32,
    /// `mem`
    pub mem: u64,
    /// `mem_free`
    pub mem_free: u64,
    /// Apps.
    pub apps: BTreeSet<String>,
    /// Labels.
    pub labels: BTreeMap<String, LabelValue>,
    /// Last applied delta.
    pub seq: u64,
    /// Reserved by matches and not released: (slots, cores, memory).
    pub reserved: (u32, u32, u64),
}

/// The reference table, keyed by the ids the engine assigned.
#[derive(Clone, Debug, Default)]
pub struct NaiveTable {
    /// Rows by id.
    pub rows: BTreeMap<ServerId, NaiveRow>,
    /// Where ties start, as in the engine: of servers with the same score
    /// the first at or after this id wins (wrapping to the lowest id), and
    /// a reservation sets it to the reserved id + 1. A reservation made by
    /// the engine alone (a sampled match the test mirrors) is mirrored
    /// with [`NaiveTable::take`].
    pub tie_start: u32,
}

#[derive(Clone, Debug, PartialEq)]
enum V {
    Num(f64),
    Str(String),
    Bool(bool),
    List(Vec<String>),
    Apps,
    Missing,
}

fn num(v: &V) -> f64 {
    match v {
        V::Num(x) => *x,
        _ => f64::NAN,
    }
}

impl NaiveTable {
    /// An empty table.
    pub fn new() -> NaiveTable {
        NaiveTable::default()
    }

    /// Inserts or replaces the row `id`.
    pub fn insert(&mut self, id: ServerId, r: &ServerRecord) {
        self.rows.insert(
            id,
            NaiveRow {
                name: r.name.clone(),
                state: ServerState::Up,
                slots: r.slots,
                slots_free: r.slots_free,
                cores: r.cores,
                cores_free: r.cores,
                power: r.power as f32,
                idle_power: r.idle_power as f32,
                load: r.load as f32,
                mem: r.mem,
                mem_free: r.mem_free,
                apps: r.apps.iter().cloned().collect(),
                labels: r.labels.iter().cloned().collect(),
                seq: 0,
                reserved: (0, 0, 0),
            },
        );
    }

    /// Removes a row.
    pub fn remove(&mut self, id: ServerId) {
        self.rows.remove(&id);
    }

    /// Sets a row's state.
    pub fn set_state(&mut self, id: ServerId, s: ServerState) {
        if let Some(r) = self.rows.get_mut(&id) {
            r.state = s;
        }
    }

    /// Applies a delta with the same sequence rule as the engine.
    pub fn apply_delta(
        &mut self,
        id: ServerId,
        seq: u64,
        changes: &[Change],
    ) -> Option<DeltaOutcome> {
        let r = self.rows.get_mut(&id)?;
        if seq <= r.seq {
            return Some(DeltaOutcome::Stale);
        }
        r.seq = seq;
        for c in changes {
            match c {
                Change::Slots(v) => r.slots = *v,
                Change::SlotsFree(v) => r.slots_free = *v,
                Change::Cores(v) => r.cores = *v,
                Change::CoresFree(v) => r.cores_free = *v,
                Change::Power(v) => r.power = *v as f32,
                Change::IdlePower(v) => r.idle_power = *v as f32,
                Change::Mem(v) => r.mem = *v,
                Change::MemFree(v) => r.mem_free = *v,
                Change::Load(v) => r.load = *v as f32,
                Change::Label(k, v) => {
                    r.labels.insert(k.clone(), v.clone());
                }
                Change::LabelRemoved(k) => {
                    r.labels.remove(k);
                }
                Change::AppAdded(a) => {
                    r.apps.insert(a.clone());
                }
                Change::AppRemoved(a) => {
                    r.apps.remove(a);
                }
            }
        }
        // Free figures a delta set are capped by the totals less what is
        // reserved, as the engine does.
        let sets = |f: fn(&Change) -> bool| changes.iter().any(f);
        if sets(|c| matches!(c, Change::SlotsFree(_))) {
            r.slots_free = r.slots_free.min(r.slots.saturating_sub(r.reserved.0));
        }
        if sets(|c| matches!(c, Change::CoresFree(_))) {
            r.cores_free = r.cores_free.min(r.cores.saturating_sub(r.reserved.1));
        }
        if sets(|c| matches!(c, Change::MemFree(_))) {
            r.mem_free = r.mem_free.min(r.mem.saturating_sub(r.reserved.2));
        }
        Some(DeltaOutcome::Applied)
    }

    /// Whether `row` passes the task: up, has the app, user may run it,
    /// demands fit, `require` holds.
    pub fn passes(row: &NaiveRow, require: &Expr, env: &Env) -> bool {
        let t = &env.task;
        row.state == ServerState::Up
            && (t.app.is_empty() || row.apps.contains(&t.app))
            && env.user.may_run(&t.app)
            && row.slots_free >= t.slots
            && row.cores_free >= t.cores
            && row.mem_free >= t.mem
            && eval(require, row, env) == V::Bool(true)
    }

    /// The best row and its score, highest score first (NaN lowest), then
    /// the first id at or after [`NaiveTable::tie_start`] (wrapping);
    /// reserves its demand and moves the tie start past it. `None` if
    /// nothing passes or an expression does not parse.
    pub fn match_and_reserve(
        &mut self,
        require: &str,
        prefer: &str,
        env: &Env,
        excluded: &[ServerId],
    ) -> Option<(ServerId, f64)> {
        let pick = |a: &str, b: &str, d: &str| {
            if !a.trim().is_empty() {
                a.to_string()
            } else if !b.trim().is_empty() {
                b.to_string()
            } else {
                d.to_string()
            }
        };
        let req = parse(
            &pick(require, &env.user.default_require, "true"),
            Which::Require,
        )
        .ok()?;
        let pref = parse(
            &pick(prefer, &env.user.default_prefer, DEFAULT_PREFER),
            Which::Prefer,
        )
        .ok()?;
        let mut best: Option<(ServerId, f64)> = None;
        // The rows from the tie start on, then those before it: the first
        // highest score of that walk wins.
        let start = ServerId(self.tie_start);
        let walk = self.rows.range(start..).chain(self.rows.range(..start));
        for (id, row) in walk {
            if excluded.contains(id) || !Self::passes(row, &req, env) {
                continue;
            }
            let s = num(&eval(&pref, row, env));
            let k = if s.is_nan() { f64::NEG_INFINITY } else { s };
            let better = match best {
                None => true,
                Some((_, b)) => {
                    let kb = if b.is_nan() { f64::NEG_INFINITY } else { b };
                    k > kb
                }
            };
            if better {
                best = Some((*id, s));
            }
        }
        let (id, s) = best?;
        let t = &env.task;
        self.take(id, t.slots, t.cores, t.mem);
        Some((id, s))
    }

    /// Reserves a demand on row `id` (as a match does: the caller checked
    /// that it fits) and moves the tie start past it.
    pub fn take(&mut self, id: ServerId, slots: u32, cores: u32, mem: u64) {
        if let Some(r) = self.rows.get_mut(&id) {
            r.slots_free -= slots;
            r.cores_free -= cores;
            r.mem_free -= mem;
            r.reserved.0 += slots;
            r.reserved.1 += cores;
            r.reserved.2 += mem;
            self.tie_start = id.0.wrapping_add(1);
        }
    }

    /// Gives a demand back, never above the totals.
    pub fn release(&mut self, id: ServerId, slots: u32, cores: u32, mem: u64) {
        if let Some(r) = self.rows.get_mut(&id) {
            r.slots_free = r
                .slots_free
                .saturating_add(slots)
                .min(r.slots.max(r.slots_free));
            r.cores_free = r
                .cores_free
                .saturating_add(cores)
                .min(r.cores.max(r.cores_free));
            r.mem_free = r.mem_free.saturating_add(mem).min(r.mem.max(r.mem_free));
            r.reserved.0 = r.reserved.0.saturating_sub(slots);
            r.reserved.1 = r.reserved.1.saturating_sub(cores);
            r.reserved.2 = r.reserved.2.saturating_sub(mem);
        }
    }
}

fn column(row: &NaiveRow, c: Column) -> f64 {
    match c {
        Column::Slots => row.slots as f64,
        Column::SlotsFree => row.slots_free as f64,
        Column::Cores => row.cores as f64,
        Column::CoresFree => row.cores_free as f64,
        Column::Power => row.power as f64,
        Column::IdlePower => row.idle_power as f64,
        Column::Mem => row.mem as f64,
        Column::MemFree => row.mem_free as f64,
        Column::Load => row.load as f64,
    }
}

fn attr(list: &[(String, LabelValue)], name: &str) -> V {
    match list.iter().find(|(k, _)| k == name) {
        Some((_, LabelValue::Num(x))) => V::Num(*x),
        Some((_, LabelValue::Str(s))) => V::Str(s.clone()),
        None => V::Missing,
    }
}

fn eval(e: &Expr, row: &NaiveRow, env: &Env) -> V {
    match &e.kind {
        ExprKind::Num(x) => V::Num(*x),
        ExprKind::Str(s) => V::Str(s.clone()),
        ExprKind::Bool(b) => V::Bool(*b),
        ExprKind::Ref(Scope::Server, name) => {
            if let Some(c) = Column::from_name(name) {
                V::Num(column(row, c))
            } else if name == "apps" {
                V::Apps
            } else {
                match row.labels.get(name) {
                    Some(LabelValue::Num(x)) => V::Num(*x),
                    Some(LabelValue::Str(s)) => V::Str(s.clone()),
                    None => V::Missing,
                }
            }
        }
        ExprKind::Ref(Scope::Task, name) => match name.as_str() {
            "app" => V::Str(env.task.app.clone()),
            "cores" => V::Num(env.task.cores as f64),
            "mem" => V::Num(env.task.mem as f64),
            "slots" => V::Num(env.task.slots as f64),
            "priority" => V::Num(env.task.priority as f64),
            _ => attr(&env.task.extra, name),
        },
        ExprKind::Ref(Scope::User, name) => match name.as_str() {
            "name" => V::Str(env.user.name.clone()),
            "priority" => V::Num(env.user.priority as f64),
            "max_in_flight" => V::Num(env.user.max_in_flight as f64),
            "allowed_apps" => V::List(env.user.allowed_apps.clone()),
            _ => V::Missing,
        },
        ExprKind::Ref(Scope::Client, name) => attr(&env.client, name),
        ExprKind::Unary(UnOp::Not, a) => match eval(a, row, env) {
            V::Bool(b) => V::Bool(!b),
            _ => V::Missing,
        },
        ExprKind::Unary(UnOp::Neg, a) => V::Num(-num(&eval(a, row, env))),
        ExprKind::Binary(op, a, b) => {
            let (x, y) = (eval(a, row, env), eval(b, row, env));
            match op {
                BinOp::And => V::Bool(x == V::Bool(true) && y == V::Bool(true)),
                BinOp::Or => V::Bool(x == V::Bool(true) || y == V::Bool(true)),
                BinOp::Ar(ArOp::Add) => V::Num(num(&x) + num(&y)),
                BinOp::Ar(ArOp::Sub) => V::Num(num(&x) - num(&y)),
                BinOp::Ar(ArOp::Mul) => V::Num(num(&x) * num(&y)),
                BinOp::Ar(ArOp::Div) => V::Num(num(&x) / num(&y)),
                BinOp::In => V::Bool(match (&x, &y) {
                    (V::Str(s), V::Apps) => row.apps.contains(s),
                    (V::Str(s), V::List(l)) => l.contains(s),
                    _ => false,
                }),
                BinOp::Cmp(op) => V::Bool(match (&x, &y) {
                    (V::Num(a), V::Num(b)) => {
                        let (a, b) = (*a, *b);
                        if a.is_nan() || b.is_nan() {
                            false
                        } else {
                            match op {
                                CmpOp::Eq => a == b,
                                CmpOp::Ne => a != b,
                                CmpOp::Lt => a < b,
                                CmpOp::Le => a <= b,
                                CmpOp::Gt => a > b,
                                CmpOp::Ge => a >= b,
                            }
                        }
                    }
                    (V::Str(a), V::Str(b)) => match op {
                        CmpOp::Eq => a == b,
                        CmpOp::Ne => a != b,
                        CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => false,
                    },
                    _ => false,
                }),
            }
        }
    }
}
