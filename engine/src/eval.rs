//! The compiled form of expressions, and its evaluation one block (64 rows) at
//! a time.
//!
//! A [`Pred`] yields a `u64` mask per block; a [`NumExpr`] yields 64 `f64`
//! lanes. Leaves copy a column out of its atomics into a local array and run a
//! branch-free loop over it (see [`crate::block`]); comparisons of a column
//! with a constant are specialised by the column's storage type so that no
//! conversion to `f64` happens on the hot path.

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::block::{label, load_f32, load_u32, load_u64, mask_of, mask_of2, Block, LabelBlock};
use crate::schema::{Column, ColumnKind, BLOCK_ROWS};
use crate::table::Shard;

/// Comparison operators, after parsing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator with its operands swapped (`a < b` is `b > a`).
    pub(crate) fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            o => o,
        }
    }
}

/// Compares two numbers with the language's rule: anything involving NaN is
/// false, `!=` included.
#[inline(always)]
pub(crate) fn cmp_f64(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b && !a.is_nan() && !b.is_nan(),
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

/// Arithmetic operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArOp {
    #[inline(always)]
    pub(crate) fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            ArOp::Add => a + b,
            ArOp::Sub => a - b,
            ArOp::Mul => a * b,
            ArOp::Div => a / b,
        }
    }
}

/// A number that depends on the server.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NumExpr {
    Const(f64),
    Col(Column),
    /// A label; NaN where it is missing or a string.
    Label(u32),
    Neg(Box<NumExpr>),
    Bin(ArOp, Box<NumExpr>, Box<NumExpr>),
}

/// A condition over a server row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pred {
    Const(bool),
    /// The server is `Up`.
    Up,
    /// The server has app `id`.
    HasApp(u32),
    Not(Box<Pred>),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    /// `lo <= col <= hi` (or its negation) on a `u32` column.
    Range32 {
        col: Column,
        lo: u32,
        hi: u32,
        negate: bool,
    },
    /// `lo <= col <= hi` (or its negation) on a `u64` column.
    Range64 {
        col: Column,
        lo: u64,
        hi: u64,
        negate: bool,
    },
    /// `col op c` on an `f32` column, `c` adjusted at compile time so the
    /// result equals the comparison in `f64` (see `compile::f32_bound`).
    F32 {
        col: Column,
        op: CmpOp,
        c: f32,
    },
    /// `label == "s"` (`eq`) or `label != "s"` (only where the label is a
    /// string).
    LabelStr {
        key: u32,
        id: u32,
        eq: bool,
    },
    /// `label op number` (only where the label is a number).
    LabelNum {
        key: u32,
        op: CmpOp,
        c: f64,
    },
    /// `label op label`.
    LabelLabel {
        a: u32,
        b: u32,
        op: CmpOp,
    },
    /// Any other comparison of numbers.
    Num {
        l: NumExpr,
        op: CmpOp,
        r: NumExpr,
    },
}

/// One block of one shard, as seen by an evaluation.
pub(crate) struct View<'a> {
    pub(crate) shard: &'a Shard,
    pub(crate) block: &'a Block,
    pub(crate) b: usize,
}

impl View<'_> {
    fn label(&self, key: u32) -> Option<&LabelBlock> {
        self.shard.label_block(key, self.b)
    }
}

impl Pred {
    /// The rows of the block satisfying this predicate (bits of vacant rows
    /// are unspecified; callers mask with the live rows).
    pub(crate) fn eval(&self, v: &View<'_>) -> u64 {
        match self {
            Pred::Const(true) => u64::MAX,
            Pred::Const(false) => 0,
            Pred::Up => v.block.up.load(Acquire),
            Pred::HasApp(a) => v.shard.app_mask(*a, v.b),
            Pred::Not(p) => !p.eval(v),
            Pred::And(ps) => {
                let mut m = u64::MAX;
                for p in ps {
                    m &= p.eval(v);
                    if m == 0 {
                        break;
                    }
                }
                m
            }
            Pred::Or(ps) => {
                let mut m = 0;
                for p in ps {
                    m |= p.eval(v);
                    if m == u64::MAX {
                        break;
                    }
                }
                m
            }
            Pred::Range32 {
                col,
                lo,
                hi,
                negate,
            } => {
                let x = load_u32(v.block.col32(*col));
                let (lo, span) = (*lo, hi.wrapping_sub(*lo));
                let m = mask_of(&x, |x| x.wrapping_sub(lo) <= span);
                if *negate {
                    !m
                } else {
                    m
                }
            }
            Pred::Range64 {
                col,
                lo,
                hi,
                negate,
            } => {
                let x = load_u64(v.block.col64(*col));
                let (lo, span) = (*lo, hi.wrapping_sub(*lo));
                let m = mask_of(&x, |x| x.wrapping_sub(lo) <= span);
                if *negate {
                    !m
                } else {
                    m
                }
            }
            Pred::F32 { col, op, c } => {
                let x = load_f32(v.block.col32(*col));
                let c = *c;
                match op {
                    CmpOp::Eq => mask_of(&x, |x| x == c),
                    // `x == x` drops NaN rows; with a NaN `c` this is "not NaN".
                    #[allow(clippy::eq_op)]
                    CmpOp::Ne => mask_of(&x, |x| x != c && x == x),
                    CmpOp::Lt => mask_of(&x, |x| x < c),
                    CmpOp::Le => mask_of(&x, |x| x <= c),
                    CmpOp::Gt => mask_of(&x, |x| x > c),
                    CmpOp::Ge => mask_of(&x, |x| x >= c),
                }
            }
            Pred::LabelStr { key, id, eq } => {
                let Some(col) = v.label(*key) else {
                    return 0;
                };
                let x = load_u64(col);
                let want = label::str(*id);
                if *eq {
                    mask_of(&x, |x| x == want)
                } else {
                    mask_of(&x, |x| label::is_str(x) && x != want)
                }
            }
            Pred::LabelNum { key, op, c } => {
                let Some(col) = v.label(*key) else {
                    return 0;
                };
                let x = load_u64(col);
                let (op, c) = (*op, *c);
                mask_of(&x, |x| cmp_f64(op, label::as_f64(x), c))
            }
            Pred::LabelLabel { a, b, op } => {
                let (Some(ca), Some(cb)) = (v.label(*a), v.label(*b)) else {
                    return 0;
                };
                let (x, y) = (load_u64(ca), load_u64(cb));
                let op = *op;
                mask_of2(&x, &y, |x, y| label_cmp(op, x, y))
            }
            Pred::Num { l, op, r } => {
                let (x, y) = (l.eval(v), r.eval(v));
                let op = *op;
                mask_of2(&x, &y, |a, b| cmp_f64(op, a, b))
            }
        }
    }
}

/// Compares two label cells: numbers numerically, strings by equality only,
/// anything else false.
#[inline(always)]
pub(crate) fn label_cmp(op: CmpOp, x: u64, y: u64) -> bool {
    if label::is_str(x) && label::is_str(y) {
        match op {
            CmpOp::Eq => x == y,
            CmpOp::Ne => x != y,
            _ => false,
        }
    } else {
        cmp_f64(op, label::as_f64(x), label::as_f64(y))
    }
}

impl NumExpr {
    /// The value of this expression for each row of the block.
    pub(crate) fn eval(&self, v: &View<'_>) -> [f64; BLOCK_ROWS] {
        match self {
            NumExpr::Const(c) => [*c; BLOCK_ROWS],
            NumExpr::Col(c) => match c.kind() {
                ColumnKind::U32 => load_u32(v.block.col32(*c)).map(f64::from),
                ColumnKind::F32 => load_f32(v.block.col32(*c)).map(f64::from),
                ColumnKind::U64 => load_u64(v.block.col64(*c)).map(|x| x as f64),
            },
            NumExpr::Label(key) => match v.label(*key) {
                Some(col) => load_u64(col).map(label::as_f64),
                None => [f64::NAN; BLOCK_ROWS],
            },
            NumExpr::Neg(e) => e.eval(v).map(|x| -x),
            NumExpr::Bin(op, a, b) => {
                let mut x = a.eval(v);
                let y = b.eval(v);
                let op = *op;
                for (x, y) in x.iter_mut().zip(y.iter()) {
                    *x = op.apply(*x, *y);
                }
                x
            }
        }
    }

    /// The value for one row (used off the hot path).
    pub(crate) fn eval_row(&self, v: &View<'_>, i: usize) -> f64 {
        match self {
            NumExpr::Const(c) => *c,
            NumExpr::Col(c) => v.block.value(*c, i),
            NumExpr::Label(key) => v
                .label(*key)
                .map_or(f64::NAN, |col| label::as_f64(col[i].load(Relaxed))),
            NumExpr::Neg(e) => -e.eval_row(v, i),
            NumExpr::Bin(op, a, b) => op.apply(a.eval_row(v, i), b.eval_row(v, i)),
        }
    }
}
