//! The compiled form of expressions, and its evaluation one block (64 rows) at
//! a time.
//!
//! A [`Pred`] yields a `u64` mask per block; a [`NumExpr`] yields 64 `f64`
//! lanes. Leaves copy a column out of its atomics into a local array and run a
//! branch-free loop over it (see [`crate::block`]); comparisons of a column
//! with a constant are specialised by the column's storage type so that no
//! conversion to `f64` happens on the hot path.

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::block::{label, load_u64, mask_of, mask_of2, Block, LabelBlock};
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
                let m = kernel::range_u32(v.block.col32(*col), *lo, hi.wrapping_sub(*lo));
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
                let m = kernel::range_u64(v.block.col64(*col), *lo, hi.wrapping_sub(*lo));
                if *negate {
                    !m
                } else {
                    m
                }
            }
            Pred::F32 { col, op, c } => kernel::cmp_f32(v.block.col32(*col), *op, *c),
            Pred::LabelStr { key, id, eq } => {
                let Some(col) = v.label(*key) else {
                    return 0;
                };
                kernel::label_str(col, label::str(*id), *eq)
            }
            Pred::LabelNum { key, op, c } => {
                let Some(col) = v.label(*key) else {
                    return 0;
                };
                let x = load_u64(col).map(label::as_f64);
                mask_cmp_const(*op, &x, *c)
            }
            Pred::LabelLabel { a, b, op } => {
                let (Some(ca), Some(cb)) = (v.label(*a), v.label(*b)) else {
                    return 0;
                };
                let (x, y) = (load_u64(ca), load_u64(cb));
                match op {
                    CmpOp::Eq => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Eq, x, y)),
                    CmpOp::Ne => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Ne, x, y)),
                    CmpOp::Lt => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Lt, x, y)),
                    CmpOp::Le => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Le, x, y)),
                    CmpOp::Gt => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Gt, x, y)),
                    CmpOp::Ge => mask_of2(&x, &y, |x, y| label_cmp(CmpOp::Ge, x, y)),
                }
            }
            Pred::Num { l, op, r } => {
                let mut x = [0.0; BLOCK_ROWS];
                l.eval_into(v, &mut x);
                if let NumExpr::Const(c) = r {
                    return mask_cmp_const(*op, &x, *c);
                }
                let mut y = [0.0; BLOCK_ROWS];
                r.eval_into(v, &mut y);
                match op {
                    CmpOp::Eq => mask_of2(&x, &y, |a, b| a == b),
                    CmpOp::Ne => mask_of2(&x, &y, |a, b| a != b && !a.is_nan() && !b.is_nan()),
                    CmpOp::Lt => mask_of2(&x, &y, |a, b| a < b),
                    CmpOp::Le => mask_of2(&x, &y, |a, b| a <= b),
                    CmpOp::Gt => mask_of2(&x, &y, |a, b| a > b),
                    CmpOp::Ge => mask_of2(&x, &y, |a, b| a >= b),
                }
            }
        }
    }
}

impl Pred {
    /// Whether row `i` of the block satisfies this predicate: the scalar twin
    /// of [`Pred::eval`], used to re-check one chosen row before reserving
    /// it (cheaper than a whole block).
    pub(crate) fn eval_row(&self, v: &View<'_>, i: usize) -> bool {
        let bit = 1u64 << i;
        let label = |key: u32| v.label(key).map_or(label::MISSING, |c| c[i].load(Relaxed));
        match self {
            Pred::Const(b) => *b,
            Pred::Up => v.block.up.load(Acquire) & bit != 0,
            Pred::HasApp(a) => v.shard.app_mask(*a, v.b) & bit != 0,
            Pred::Not(p) => !p.eval_row(v, i),
            Pred::And(ps) => ps.iter().all(|p| p.eval_row(v, i)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval_row(v, i)),
            Pred::Range32 {
                col,
                lo,
                hi,
                negate,
            } => {
                let x = v.block.col32(*col)[i].load(Relaxed);
                (*lo <= x && x <= *hi) != *negate
            }
            Pred::Range64 {
                col,
                lo,
                hi,
                negate,
            } => {
                let x = v.block.col64(*col)[i].load(Relaxed);
                (*lo <= x && x <= *hi) != *negate
            }
            Pred::F32 { col, op, c } => {
                let x = f32::from_bits(v.block.col32(*col)[i].load(Relaxed));
                match op {
                    CmpOp::Eq => x == *c,
                    CmpOp::Ne => x != *c && !x.is_nan(),
                    CmpOp::Lt => x < *c,
                    CmpOp::Le => x <= *c,
                    CmpOp::Gt => x > *c,
                    CmpOp::Ge => x >= *c,
                }
            }
            Pred::LabelStr { key, id, eq } => {
                let x = label(*key);
                if *eq {
                    x == label::str(*id)
                } else {
                    label::is_str(x) && x != label::str(*id)
                }
            }
            Pred::LabelNum { key, op, c } => cmp_f64(*op, label::as_f64(label(*key)), *c),
            Pred::LabelLabel { a, b, op } => label_cmp(*op, label(*a), label(*b)),
            Pred::Num { l, op, r } => cmp_f64(*op, l.eval_row(v, i), r.eval_row(v, i)),
        }
    }
}

/// `x op c` for 64 lanes, the operator dispatched once.
#[inline(always)]
fn mask_cmp_const(op: CmpOp, x: &[f64; BLOCK_ROWS], c: f64) -> u64 {
    match op {
        CmpOp::Eq => mask_of(x, |a| a == c),
        CmpOp::Ne => mask_of(x, |a| a != c && !a.is_nan() && !c.is_nan()),
        CmpOp::Lt => mask_of(x, |a| a < c),
        CmpOp::Le => mask_of(x, |a| a <= c),
        CmpOp::Gt => mask_of(x, |a| a > c),
        CmpOp::Ge => mask_of(x, |a| a >= c),
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
        let mut out = [0.0; BLOCK_ROWS];
        self.eval_into(v, &mut out);
        out
    }

    /// Writes the value for each row of the block into `out`. Operators are
    /// dispatched once per block, never per row, so each loop is a plain
    /// vectorisable loop.
    pub(crate) fn eval_into(&self, v: &View<'_>, out: &mut [f64; BLOCK_ROWS]) {
        match self {
            NumExpr::Const(c) => *out = [*c; BLOCK_ROWS],
            NumExpr::Col(c) => match c.kind() {
                ColumnKind::U32 => {
                    for (o, x) in out.iter_mut().zip(v.block.col32(*c).iter()) {
                        *o = f64::from(x.load(Relaxed));
                    }
                }
                ColumnKind::F32 => {
                    for (o, x) in out.iter_mut().zip(v.block.col32(*c).iter()) {
                        *o = f64::from(f32::from_bits(x.load(Relaxed)));
                    }
                }
                ColumnKind::U64 => {
                    for (o, x) in out.iter_mut().zip(v.block.col64(*c).iter()) {
                        *o = x.load(Relaxed) as f64;
                    }
                }
            },
            NumExpr::Label(key) => match v.label(*key) {
                Some(col) => {
                    let x = load_u64(col);
                    for (o, x) in out.iter_mut().zip(x.iter()) {
                        *o = label::as_f64(*x);
                    }
                }
                None => *out = [f64::NAN; BLOCK_ROWS],
            },
            NumExpr::Neg(e) => {
                e.eval_into(v, out);
                for o in out.iter_mut() {
                    *o = -*o;
                }
            }
            NumExpr::Bin(op, a, b) => {
                // `const op expr`: evaluate the right side in place.
                if let NumExpr::Const(c) = **a {
                    b.eval_into(v, out);
                    match op {
                        ArOp::Add => out.iter_mut().for_each(|o| *o += c),
                        ArOp::Sub => out.iter_mut().for_each(|o| *o = c - *o),
                        ArOp::Mul => out.iter_mut().for_each(|o| *o *= c),
                        ArOp::Div => out.iter_mut().for_each(|o| *o = c / *o),
                    }
                    return;
                }
                a.eval_into(v, out);
                if let NumExpr::Const(c) = **b {
                    match op {
                        ArOp::Add => out.iter_mut().for_each(|o| *o += c),
                        ArOp::Sub => out.iter_mut().for_each(|o| *o -= c),
                        ArOp::Mul => out.iter_mut().for_each(|o| *o *= c),
                        ArOp::Div => out.iter_mut().for_each(|o| *o /= c),
                    }
                    return;
                }
                let mut y = [0.0; BLOCK_ROWS];
                b.eval_into(v, &mut y);
                let pairs = out.iter_mut().zip(y.iter());
                match op {
                    ArOp::Add => pairs.for_each(|(o, y)| *o += *y),
                    ArOp::Sub => pairs.for_each(|(o, y)| *o -= *y),
                    ArOp::Mul => pairs.for_each(|(o, y)| *o *= *y),
                    ArOp::Div => pairs.for_each(|(o, y)| *o /= *y),
                }
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

/// The leaf filters, one small function each: a column copied out of its
/// atomics, then one branch-free loop producing a mask. Kept out of line so
/// each loop is compiled (and vectorised) on its own, with no register
/// pressure from the rest of `Pred::eval`. These are the loops shown in
/// `BENCHMARKS.md`.
pub(crate) mod kernel {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

    use super::CmpOp;
    use crate::block::{label, pack};
    use crate::schema::BLOCK_ROWS;

    /// One byte (0 or 1) per row from a test on each cell, then [`pack`].
    /// The test is fused with the relaxed atomic load: copying the column to
    /// a local array first (so the compare could use SIMD) costs more than
    /// it saves, because the compiler assembles vectors from scalar atomic
    /// loads one lane at a time; and shifting each result straight into the
    /// mask measured 7% more instructions than bytes plus `pack`.
    #[inline(always)]
    fn bytes32(col: &[AtomicU32; BLOCK_ROWS], f: impl Fn(u32) -> bool) -> u64 {
        let mut b = [0u8; BLOCK_ROWS];
        for (o, c) in b.iter_mut().zip(col.iter()) {
            *o = f(c.load(Relaxed)) as u8;
        }
        pack(&b)
    }

    #[inline(always)]
    fn bytes64(col: &[AtomicU64; BLOCK_ROWS], f: impl Fn(u64) -> bool) -> u64 {
        let mut b = [0u8; BLOCK_ROWS];
        for (o, c) in b.iter_mut().zip(col.iter()) {
            *o = f(c.load(Relaxed)) as u8;
        }
        pack(&b)
    }

    /// Rows with `x - lo <= span` (unsigned): `lo <= x <= lo + span`.
    #[inline(never)]
    pub(crate) fn range_u32(col: &[AtomicU32; BLOCK_ROWS], lo: u32, span: u32) -> u64 {
        bytes32(col, |x| x.wrapping_sub(lo) <= span)
    }

    /// As [`range_u32`] for `u64` columns.
    #[inline(never)]
    pub(crate) fn range_u64(col: &[AtomicU64; BLOCK_ROWS], lo: u64, span: u64) -> u64 {
        bytes64(col, |x| x.wrapping_sub(lo) <= span)
    }

    /// `x op c` on an `f32` column.
    #[inline(never)]
    pub(crate) fn cmp_f32(col: &[AtomicU32; BLOCK_ROWS], op: CmpOp, c: f32) -> u64 {
        let f = f32::from_bits;
        match op {
            CmpOp::Eq => bytes32(col, |x| f(x) == c),
            CmpOp::Ne => bytes32(col, |x| f(x) != c && !f(x).is_nan()),
            CmpOp::Lt => bytes32(col, |x| f(x) < c),
            CmpOp::Le => bytes32(col, |x| f(x) <= c),
            CmpOp::Gt => bytes32(col, |x| f(x) > c),
            CmpOp::Ge => bytes32(col, |x| f(x) >= c),
        }
    }

    /// `label == want` (or `!=`, among string cells).
    #[inline(never)]
    pub(crate) fn label_str(col: &[AtomicU64; BLOCK_ROWS], want: u64, eq: bool) -> u64 {
        if eq {
            bytes64(col, |x| x == want)
        } else {
            bytes64(col, |x| label::is_str(x) && x != want)
        }
    }
}
