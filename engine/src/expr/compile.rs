//! Type checking, constant folding and lowering of expressions to programs
//! over server columns.
//!
//! Everything that is not `server.*` is a constant at submit time, so after
//! folding a `require` is a conjunction of [`Pred`]s over columns and a
//! `prefer` a [`NumExpr`] over columns. String constants, apps and label keys
//! are interned into the table here (within the bounds of
//! [`crate::schema`]), so that compiled queries compare integers and stay
//! valid as servers come and go.

use super::op::{BinOp, CmpOp, UnOp};
use super::parser::{Expr, ExprKind, Scope};
use super::{column_of, ExprError, Which};
use crate::expr::pred::{NumExpr, Pred};
use crate::schema::{Column, ColumnKind, Env, LabelValue};
use crate::table::Strings;

/// A constant value.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Num(f64),
    Str(String),
    Bool(bool),
    List(Vec<String>),
}

/// The type and lowered form of a sub-expression.
enum Typed {
    Const(Value),
    Num(NumExpr),
    /// A server label (number, string or missing: known only per row).
    Label(u32, String),
    /// `server.apps`
    Apps,
    Bool(Pred),
}

impl Typed {
    fn describe(&self) -> String {
        match self {
            Typed::Const(Value::Num(n)) => format!("the number {n}"),
            Typed::Const(Value::Str(s)) => format!("the string {s:?}"),
            Typed::Const(Value::Bool(b)) => format!("the condition {b}"),
            Typed::Const(Value::List(_)) => "a list".into(),
            Typed::Num(_) => "a number".into(),
            Typed::Label(_, name) => format!("the server label server.{name}"),
            Typed::Apps => "the list server.apps".into(),
            Typed::Bool(_) => "a condition".into(),
        }
    }
}

/// Lowers expressions against one environment, interning into the table.
pub(crate) struct Lowerer<'a> {
    pub(crate) src: &'a str,
    pub(crate) which: Which,
    pub(crate) env: &'a Env,
    pub(crate) strings: &'a mut Strings,
}

fn limit(e: crate::EngineError) -> ExprError {
    ExprError::Limit(e.to_string())
}

impl Lowerer<'_> {
    fn err(&self, at: usize, message: String) -> ExprError {
        ExprError::Invalid {
            which: self.which,
            column: column_of(self.src, at),
            message,
        }
    }

    /// Lowers a condition (a `require` clause).
    pub(crate) fn condition(&mut self, e: &Expr) -> Result<Pred, ExprError> {
        match self.lower(e)? {
            Typed::Bool(p) => Ok(p),
            Typed::Const(Value::Bool(b)) => Ok(Pred::Const(b)),
            other => Err(self.err(
                e.start,
                format!(
                    "require must be a condition (true or false), found {}; expected a comparison such as server.mem >= 1GiB",
                    other.describe()
                ),
            )),
        }
    }

    /// Lowers a number (a `prefer`).
    pub(crate) fn number(&mut self, e: &Expr) -> Result<NumExpr, ExprError> {
        let t = self.lower(e)?;
        self.num_operand(t, e, "prefer must be a number to maximise")
    }

    fn num_operand(&self, t: Typed, e: &Expr, what: &str) -> Result<NumExpr, ExprError> {
        match t {
            Typed::Const(Value::Num(n)) => Ok(NumExpr::Const(n)),
            Typed::Num(n) => Ok(n),
            Typed::Label(k, _) => Ok(NumExpr::Label(k)),
            other => Err(self.err(e.start, format!("{what}, found {}", other.describe()))),
        }
    }

    fn bool_operand(&self, t: Typed, e: &Expr, op: &str) -> Result<Pred, ExprError> {
        match t {
            Typed::Const(Value::Bool(b)) => Ok(Pred::Const(b)),
            Typed::Bool(p) => Ok(p),
            other => Err(self.err(
                e.start,
                format!(
                    "'{op}' expects a condition (a comparison, true or false), found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn lower(&mut self, e: &Expr) -> Result<Typed, ExprError> {
        Ok(match &e.kind {
            ExprKind::Num(n) => Typed::Const(Value::Num(*n)),
            ExprKind::Str(s) => Typed::Const(Value::Str(s.clone())),
            ExprKind::Bool(b) => Typed::Const(Value::Bool(*b)),
            ExprKind::Ref(scope, name) => self.reference(e, *scope, name)?,
            ExprKind::Unary(UnOp::Not, a) => {
                let t = self.lower(a)?;
                match self.bool_operand(t, a, UnOp::Not.symbol())? {
                    Pred::Const(b) => Typed::Const(Value::Bool(!b)),
                    Pred::Not(p) => Typed::Bool(*p),
                    p => Typed::Bool(Pred::Not(Box::new(p))),
                }
            }
            ExprKind::Unary(UnOp::Neg, a) => {
                let t = self.lower(a)?;
                let what = format!("'{}' expects a number", UnOp::Neg.symbol());
                match self.num_operand(t, a, &what)? {
                    NumExpr::Const(n) => Typed::Const(Value::Num(-n)),
                    n => Typed::Num(NumExpr::Neg(Box::new(n))),
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b)?,
        })
    }

    fn reference(&mut self, e: &Expr, scope: Scope, name: &str) -> Result<Typed, ExprError> {
        let env = self.env;
        let extra = |list: &[(String, LabelValue)]| {
            list.iter().find(|(k, _)| k == name).map(|(_, v)| match v {
                LabelValue::Str(s) => Typed::Const(Value::Str(s.clone())),
                LabelValue::Num(n) => Typed::Const(Value::Num(*n)),
            })
        };
        let known = |list: &[(String, LabelValue)], fixed: &[&str]| {
            let mut names: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
            names.extend(list.iter().map(|(k, _)| k.clone()));
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        Ok(match scope {
            Scope::Server => {
                if let Some(c) = Column::from_name(name) {
                    Typed::Num(NumExpr::Col(c))
                } else if name == "apps" {
                    Typed::Apps
                } else {
                    let k = self.strings.keys.intern(name).map_err(limit)?;
                    Typed::Label(k, name.to_string())
                }
            }
            Scope::Task => match name {
                "app" => Typed::Const(Value::Str(env.task.app.clone())),
                "cores" => Typed::Const(Value::Num(env.task.cores as f64)),
                "mem" => Typed::Const(Value::Num(env.task.mem as f64)),
                "slots" => Typed::Const(Value::Num(env.task.slots as f64)),
                "priority" => Typed::Const(Value::Num(env.task.priority as f64)),
                _ => extra(&env.task.extra).ok_or_else(|| {
                    self.err(
                        e.start,
                        format!(
                            "unknown attribute task.{name}; expected one of {}",
                            known(&env.task.extra, &["app", "cores", "mem", "slots", "priority"])
                        ),
                    )
                })?,
            },
            Scope::User => match name {
                "name" => Typed::Const(Value::Str(env.user.name.clone())),
                "priority" => Typed::Const(Value::Num(env.user.priority as f64)),
                "max_in_flight" => Typed::Const(Value::Num(env.user.max_in_flight as f64)),
                "allowed_apps" => Typed::Const(Value::List(env.user.allowed_apps.clone())),
                _ => {
                    return Err(self.err(
                        e.start,
                        format!("unknown attribute user.{name}; expected one of name, priority, max_in_flight, allowed_apps"),
                    ))
                }
            },
            Scope::Client => extra(&env.client).ok_or_else(|| {
                self.err(
                    e.start,
                    format!(
                        "unknown attribute client.{name}: the client did not send it; it sent: {}",
                        known(&env.client, &[])
                    ),
                )
            })?,
        })
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr) -> Result<Typed, ExprError> {
        let ta = self.lower(a)?;
        let tb = self.lower(b)?;
        match op {
            BinOp::And | BinOp::Or => {
                let pa = self.bool_operand(ta, a, op.symbol())?;
                let pb = self.bool_operand(tb, b, op.symbol())?;
                let and = op == BinOp::And;
                Ok(match (pa, pb) {
                    (Pred::Const(x), Pred::Const(y)) => {
                        Typed::Const(Value::Bool(if and { x && y } else { x || y }))
                    }
                    (Pred::Const(c), p) | (p, Pred::Const(c)) => {
                        if c == and {
                            Typed::Bool(p)
                        } else {
                            Typed::Const(Value::Bool(c))
                        }
                    }
                    (pa, pb) => {
                        let mut v = Vec::new();
                        for p in [pa, pb] {
                            match p {
                                Pred::And(ps) if and => v.extend(ps),
                                Pred::Or(ps) if !and => v.extend(ps),
                                p => v.push(p),
                            }
                        }
                        Typed::Bool(if and { Pred::And(v) } else { Pred::Or(v) })
                    }
                })
            }
            BinOp::Ar(ar) => {
                let what = format!("'{}' expects numbers", op.symbol());
                let na = self.num_operand(ta, a, &what)?;
                let nb = self.num_operand(tb, b, &what)?;
                Ok(match (na, nb) {
                    (NumExpr::Const(x), NumExpr::Const(y)) => {
                        Typed::Const(Value::Num(ar.apply(x, y)))
                    }
                    (x, y) => Typed::Num(NumExpr::Bin(ar, Box::new(x), Box::new(y))),
                })
            }
            BinOp::In => self.membership(ta, a, tb, b),
            BinOp::Cmp(cmp) => self.comparison(cmp, op.symbol(), ta, a, tb, b),
        }
    }

    fn membership(&mut self, ta: Typed, a: &Expr, tb: Typed, b: &Expr) -> Result<Typed, ExprError> {
        let Typed::Const(Value::Str(item)) = ta else {
            return Err(self.err(
                a.start,
                format!(
                    "left of 'in' expects a string such as \"echo\" or task.app, found {}",
                    ta.describe()
                ),
            ));
        };
        match tb {
            Typed::Apps => {
                let id = self.strings.apps.intern(&item).map_err(limit)?;
                Ok(Typed::Bool(Pred::HasApp(id)))
            }
            Typed::Const(Value::List(list)) => Ok(Typed::Const(Value::Bool(list.contains(&item)))),
            other => Err(self.err(
                b.start,
                format!(
                    "right of 'in' expects server.apps or user.allowed_apps, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn comparison(
        &mut self,
        op: CmpOp,
        sym: &str,
        ta: Typed,
        a: &Expr,
        tb: Typed,
        b: &Expr,
    ) -> Result<Typed, ExprError> {
        // Reject what can never be compared, whatever the order.
        for (t, e) in [(&ta, a), (&tb, b)] {
            match t {
                Typed::Bool(_) | Typed::Const(Value::Bool(_)) => {
                    return Err(self.err(
                        e.start,
                        format!("'{sym}' compares numbers or strings, found {}; combine conditions with && or ||", t.describe()),
                    ))
                }
                Typed::Apps | Typed::Const(Value::List(_)) => {
                    return Err(self.err(
                        e.start,
                        format!("'{sym}' cannot compare {}; test membership with \"app\" in server.apps", t.describe()),
                    ))
                }
                _ => {}
            }
        }
        let is_str = |t: &Typed| matches!(t, Typed::Const(Value::Str(_)));
        let is_num = |t: &Typed| matches!(t, Typed::Const(Value::Num(_)) | Typed::Num(_));
        if (is_str(&ta) && is_num(&tb)) || (is_num(&ta) && is_str(&tb)) {
            return Err(self.err(
                a.start,
                format!(
                    "'{sym}' cannot compare {} with {}",
                    ta.describe(),
                    tb.describe()
                ),
            ));
        }
        if (is_str(&ta) || is_str(&tb)) && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            let at = if is_str(&ta) { a.start } else { b.start };
            return Err(self.err(
                at,
                format!("strings compare only with == and !=, found '{sym}'"),
            ));
        }
        // Put the server side on the left.
        let (op, l, r) = match (&ta, &tb) {
            (Typed::Const(_), Typed::Const(_)) => (op, ta, tb),
            (Typed::Const(_), _) => (op.flip(), tb, ta),
            _ => (op, ta, tb),
        };
        Ok(match (l, r) {
            (Typed::Const(x), Typed::Const(y)) => Typed::Const(Value::Bool(match (x, y) {
                (Value::Num(x), Value::Num(y)) => crate::expr::op::cmp_f64(op, x, y),
                (Value::Str(x), Value::Str(y)) => (x == y) == (op == CmpOp::Eq),
                _ => false,
            })),
            (Typed::Num(NumExpr::Col(c)), Typed::Const(Value::Num(k))) => column_cmp(c, op, k),
            (Typed::Label(key, _), Typed::Const(Value::Str(s))) => {
                let id = self.strings.values.intern(&s).map_err(limit)?;
                Typed::Bool(Pred::LabelStr {
                    key,
                    id,
                    eq: op == CmpOp::Eq,
                })
            }
            (Typed::Label(key, _), Typed::Const(Value::Num(k))) => {
                if k.is_nan() {
                    Typed::Const(Value::Bool(false))
                } else {
                    Typed::Bool(Pred::LabelNum { key, op, c: k })
                }
            }
            (Typed::Label(ka, _), Typed::Label(kb, _)) => {
                Typed::Bool(Pred::LabelLabel { a: ka, b: kb, op })
            }
            (l, r) => {
                let le = self.num_operand(l, a, "comparison expects numbers")?;
                let re = self.num_operand(r, b, "comparison expects numbers")?;
                Typed::Bool(Pred::Num { l: le, op, r: re })
            }
        })
    }
}

/// `col op k` specialised to the column's storage.
fn column_cmp(c: Column, op: CmpOp, k: f64) -> Typed {
    if k.is_nan() {
        return Typed::Const(Value::Bool(false));
    }
    match c.kind() {
        ColumnKind::U32 => match int_range(op, k, u32::MAX as u64) {
            IntRange::All => Typed::Const(Value::Bool(true)),
            IntRange::Empty => Typed::Const(Value::Bool(false)),
            IntRange::In(lo, hi, negate) => Typed::Bool(Pred::Range32 {
                col: c,
                lo: lo as u32,
                hi: hi as u32,
                negate,
            }),
        },
        ColumnKind::U64 => match int_range(op, k, u64::MAX) {
            IntRange::All => Typed::Const(Value::Bool(true)),
            IntRange::Empty => Typed::Const(Value::Bool(false)),
            IntRange::In(lo, hi, negate) => Typed::Bool(Pred::Range64 {
                col: c,
                lo,
                hi,
                negate,
            }),
        },
        ColumnKind::F32 => {
            let (down, up, exact) = f32_bounds(k);
            let (op, c32) = match op {
                CmpOp::Ge => (op, up),
                CmpOp::Lt => (op, up),
                CmpOp::Gt => (op, down),
                CmpOp::Le => (op, down),
                CmpOp::Eq if exact => (op, down),
                CmpOp::Eq => return Typed::Const(Value::Bool(false)),
                // Not representable: every non-NaN value differs.
                CmpOp::Ne if !exact => (op, f32::NAN),
                CmpOp::Ne => (op, down),
            };
            Typed::Bool(Pred::F32 { col: c, op, c: c32 })
        }
    }
}

/// The largest `f32` <= `k`, the smallest `f32` >= `k`, and whether `k` is an
/// `f32`. With these, `(x as f64) >= k` is exactly `x >= up`, `x > k` is
/// `x > down`, and so on, so `f32` columns compare without widening.
pub(crate) fn f32_bounds(k: f64) -> (f32, f32, bool) {
    let c = k as f32;
    let cw = c as f64;
    if cw == k {
        (c, c, true)
    } else if cw < k {
        (c, next_up(c), false)
    } else {
        (next_down(c), c, false)
    }
}

fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

enum IntRange {
    All,
    Empty,
    /// `lo..=hi`, negated if the flag is set.
    In(u64, u64, bool),
}

/// `x op k` for an integer `x` in `0..=max`, as a range test.
fn int_range(op: CmpOp, k: f64, max: u64) -> IntRange {
    let maxf = max as f64; // rounds up to 2^64 for u64::MAX: fine, see below
                           // Smallest integer >= k, clamped; `None` if above max.
    let ceil = |k: f64| -> Option<u64> {
        let c = k.ceil();
        if c <= 0.0 {
            Some(0)
        } else if c > maxf || (max == u64::MAX && c >= 18446744073709551616.0) {
            None
        } else {
            Some(c as u64)
        }
    };
    // Largest integer <= k, clamped; `None` if below 0.
    let floor = |k: f64| -> Option<u64> {
        let f = k.floor();
        if f < 0.0 {
            None
        } else if f >= maxf {
            Some(max)
        } else {
            Some(f as u64)
        }
    };
    match op {
        CmpOp::Ge => match ceil(k) {
            Some(0) => IntRange::All,
            Some(lo) => IntRange::In(lo, max, false),
            None => IntRange::Empty,
        },
        CmpOp::Gt => match floor(k) {
            None => IntRange::All,
            Some(f) if f >= max => IntRange::Empty,
            Some(f) => IntRange::In(f + 1, max, false),
        },
        CmpOp::Le => match floor(k) {
            None => IntRange::Empty,
            Some(hi) if hi >= max => IntRange::All,
            Some(hi) => IntRange::In(0, hi, false),
        },
        CmpOp::Lt => match ceil(k) {
            Some(0) => IntRange::Empty,
            Some(c) => IntRange::In(0, c - 1, false),
            None => IntRange::All,
        },
        CmpOp::Eq | CmpOp::Ne => {
            let exact = k.fract() == 0.0
                && k >= 0.0
                && k <= maxf
                && (max != u64::MAX || k < 18446744073709551616.0);
            match (exact, op == CmpOp::Eq) {
                (true, eq) => IntRange::In(k as u64, k as u64, !eq),
                (false, true) => IntRange::Empty,
                (false, false) => IntRange::All,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_bounds_bracket_the_constant() {
        for k in [
            0.1,
            1.0,
            -0.1,
            1e300,
            -1e300,
            3.5,
            16777217.0,
            0.0,
            -0.0,
            f64::INFINITY,
        ] {
            let (d, u, exact) = f32_bounds(k);
            assert!((d as f64) <= k && (u as f64) >= k, "{k}");
            assert_eq!(exact, (k as f32) as f64 == k);
        }
    }

    #[test]
    fn f32_comparisons_agree_with_f64() {
        let xs: Vec<f32> = vec![
            0.1,
            0.099999994,
            0.10000001,
            -0.0,
            0.0,
            1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3.4e38,
            -1.0,
        ];
        let ks = [
            0.1,
            0.0,
            -0.0,
            1.0,
            1e300,
            -1e300,
            3.4e38,
            f64::INFINITY,
            0.10000000149011612,
        ];
        for &k in &ks {
            for op in [
                CmpOp::Eq,
                CmpOp::Ne,
                CmpOp::Lt,
                CmpOp::Le,
                CmpOp::Gt,
                CmpOp::Ge,
            ] {
                let t = column_cmp(Column::Load, op, k);
                for &x in &xs {
                    let want = crate::expr::op::cmp_f64(op, x as f64, k);
                    let got = match &t {
                        Typed::Const(Value::Bool(b)) => *b,
                        Typed::Bool(Pred::F32 { op, c, .. }) => {
                            let m = crate::table::block::mask_of(&[x; 64], |x| match op {
                                CmpOp::Eq => x == *c,
                                CmpOp::Ne => x != *c && !x.is_nan(),
                                CmpOp::Lt => x < *c,
                                CmpOp::Le => x <= *c,
                                CmpOp::Gt => x > *c,
                                CmpOp::Ge => x >= *c,
                            });
                            m == u64::MAX
                        }
                        _ => panic!("unexpected lowering"),
                    };
                    assert_eq!(got, want, "{x} {op:?} {k}");
                }
            }
        }
    }

    #[test]
    fn integer_ranges_agree_with_f64() {
        let xs = [0u64, 1, 2, 3, 4, 100, u32::MAX as u64 - 1, u32::MAX as u64];
        let ks = [
            -1.0,
            0.0,
            0.5,
            1.0,
            2.5,
            3.0,
            99.9,
            4294967295.0,
            4294967295.5,
            5e9,
            -1e300,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for &k in &ks {
            for op in [
                CmpOp::Eq,
                CmpOp::Ne,
                CmpOp::Lt,
                CmpOp::Le,
                CmpOp::Gt,
                CmpOp::Ge,
            ] {
                let r = int_range(op, k, u32::MAX as u64);
                for &x in &xs {
                    let want = crate::expr::op::cmp_f64(op, x as f64, k);
                    let got = match r {
                        IntRange::All => true,
                        IntRange::Empty => false,
                        IntRange::In(lo, hi, neg) => (lo <= x && x <= hi) != neg,
                    };
                    assert_eq!(got, want, "{x} {op:?} {k}");
                }
            }
        }
    }
}
