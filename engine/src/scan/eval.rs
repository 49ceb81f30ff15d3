//! The compiled form of expressions, and its evaluation one block (64 rows) at
//! a time.
//!
//! A [`Pred`] yields a `u64` mask per block; a [`NumExpr`] yields 64 `f64`
//! lanes, or one value per selected row ([`NumExpr::eval_sel`]). Comparisons
//! of a plain column with a constant are specialised by the column's storage
//! type and run as SIMD kernels ([`crate::scan::simd`]), so no conversion to `f64`
//! happens on the hot path. Predicates that read a reservation column
//! ([`Pred::reads_capacity`]) are evaluated after the others, only for the
//! rows still standing ([`Pred::filter`]).

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crossbeam_epoch::Guard;

use crate::expr::op::{cmp_f64, ArOp, CmpOp};
use crate::expr::pred::{NumExpr, Pred};
use crate::scan::simd;
use crate::schema::{Column, BLOCK_ROWS};
use crate::table::block::{label, mask_of, mask_of2, Block, Cols, LabelCells};
use crate::table::Shard;

/// One block of one shard, as seen by an evaluation: the column groups as of
/// when the view was taken, valid while `guard` is pinned.
pub(crate) struct View<'a> {
    pub(crate) shard: &'a Shard,
    pub(crate) cols: Cols<'a>,
    pub(crate) b: usize,
    pub(crate) guard: &'a Guard,
}

impl<'a> View<'a> {
    #[inline(always)]
    pub(crate) fn new(shard: &'a Shard, block: &'a Block, b: usize, guard: &'a Guard) -> View<'a> {
        View {
            shard,
            cols: Cols::of(block, guard),
            b,
            guard,
        }
    }

    #[inline(always)]
    pub(crate) fn block(&self) -> &'a Block {
        self.cols.block
    }

    #[inline(always)]
    pub(crate) fn label(&self, key: u32) -> Option<&'a LabelCells> {
        self.shard.label_cells(key, self.b, self.guard)
    }

    /// The canonical cell of label `key` at row `i`.
    #[inline(always)]
    fn label_cell(&self, key: u32, i: usize) -> u64 {
        self.label(key).map_or(label::MISSING, |c| c.cell(i))
    }
}

impl Pred {
    /// The rows of the block satisfying this predicate (bits of vacant rows
    /// are unspecified; callers mask with the live rows).
    pub(crate) fn eval(&self, v: &View<'_>) -> u64 {
        match self {
            Pred::Const(true) => u64::MAX,
            Pred::Const(false) => 0,
            Pred::Up => v.block().up.load(Acquire),
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
                let span = hi.wrapping_sub(*lo);
                let m = match v.cols.u32s(*col) {
                    Some(x) => simd::range_u32(x, *lo, span),
                    None => kernel::range_atomic(&v.block().cap, *col, *lo as u64, span as u64),
                };
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
                let span = hi.wrapping_sub(*lo);
                let m = if *col == Column::Mem {
                    mask_of(&v.cols.fixed.mem, |x| x.wrapping_sub(*lo) <= span)
                } else {
                    kernel::range_atomic(&v.block().cap, *col, *lo, span)
                };
                if *negate {
                    !m
                } else {
                    m
                }
            }
            Pred::F32 { col, op, c } => match v.cols.f32s(*col) {
                Some(x) => simd::cmp_f32(x, *op, *c),
                None => 0,
            },
            Pred::LabelStr { key, id, eq } => {
                let Some(cells) = v.label(*key) else {
                    return 0;
                };
                if *eq {
                    simd::eq_u32(&cells.ids, *id)
                } else {
                    simd::le_and_ne_u32(&cells.ids, label::MAX_STR32, *id)
                }
            }
            Pred::LabelNum { key, op, c } => {
                let Some(cells) = v.label(*key).filter(|c| c.nums.is_some()) else {
                    return 0;
                };
                let x: [f64; BLOCK_ROWS] = std::array::from_fn(|i| cells.num(i));
                mask_cmp_const(*op, &x, *c)
            }
            Pred::LabelLabel { a, b, op } => {
                let (Some(ca), Some(cb)) = (v.label(*a), v.label(*b)) else {
                    return 0;
                };
                let x: [u64; BLOCK_ROWS] = std::array::from_fn(|i| ca.cell(i));
                let y: [u64; BLOCK_ROWS] = std::array::from_fn(|i| cb.cell(i));
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

    /// The rows of `m` satisfying this predicate, testing only those rows:
    /// for predicates over reservation columns, which are atomics and are
    /// best read only for the few rows the vectorised clauses left.
    #[inline]
    pub(crate) fn filter(&self, v: &View<'_>, m: u64) -> u64 {
        match self {
            Pred::Range32 {
                col,
                lo,
                hi,
                negate,
            } if v.cols.u32s(*col).is_none() => {
                let cap = &v.block().cap;
                let (lo, span) = (*lo, hi.wrapping_sub(*lo));
                keep_rows(m, |i| {
                    let x = match col {
                        Column::CoresFree => cap[i].cores_free.load(Relaxed),
                        _ => cap[i].slots_free.load(Relaxed),
                    };
                    (x.wrapping_sub(lo) <= span) != *negate
                })
            }
            Pred::Range64 {
                col: Column::MemFree,
                lo,
                hi,
                negate,
            } => {
                let cap = &v.block().cap;
                let (lo, span) = (*lo, hi.wrapping_sub(*lo));
                keep_rows(m, |i| {
                    (cap[i].mem_free.load(Relaxed).wrapping_sub(lo) <= span) != *negate
                })
            }
            _ => keep_rows(m, |i| self.eval_row(v, i)),
        }
    }

    /// Whether this predicate reads a reservation column (`slots_free`,
    /// `cores_free`, `mem_free`).
    /// Whether a server failing this clause may pass it later without the
    /// task or the server's registration changing: the clause is the up
    /// state, or reads nothing but the free capacity that reservations and
    /// deltas move (and constants). A task whose only obstacles are such
    /// clauses can wait for capacity instead of failing.
    pub(crate) fn frees_up(&self) -> bool {
        match self {
            Pred::Up => true,
            Pred::Const(_)
            | Pred::HasApp(_)
            | Pred::F32 { .. }
            | Pred::LabelStr { .. }
            | Pred::LabelNum { .. }
            | Pred::LabelLabel { .. } => false,
            Pred::Not(p) => p.frees_up(),
            Pred::And(ps) | Pred::Or(ps) => !ps.is_empty() && ps.iter().all(Pred::frees_up),
            Pred::Range32 { col, .. } | Pred::Range64 { col, .. } => col.is_capacity(),
            Pred::Num { l, r, .. } => {
                l.capacity_or_const()
                    && r.capacity_or_const()
                    && (l.reads_capacity() || r.reads_capacity())
            }
        }
    }

    pub(crate) fn reads_capacity(&self) -> bool {
        match self {
            Pred::Const(_)
            | Pred::Up
            | Pred::HasApp(_)
            | Pred::F32 { .. }
            | Pred::LabelStr { .. }
            | Pred::LabelNum { .. }
            | Pred::LabelLabel { .. } => false,
            Pred::Not(p) => p.reads_capacity(),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(Pred::reads_capacity),
            Pred::Range32 { col, .. } | Pred::Range64 { col, .. } => col.is_capacity(),
            Pred::Num { l, r, .. } => l.reads_capacity() || r.reads_capacity(),
        }
    }
}

/// The rows of `m` for which `keep` holds.
#[inline(always)]
fn keep_rows(m: u64, keep: impl Fn(usize) -> bool) -> u64 {
    let mut out = m;
    let mut bits = m;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if !keep(i) {
            out &= !(1u64 << i);
        }
    }
    out
}

impl Pred {
    /// Whether row `i` of the block satisfies this predicate: the scalar twin
    /// of [`Pred::eval`], used to re-check one chosen row before reserving
    /// it (cheaper than a whole block).
    pub(crate) fn eval_row(&self, v: &View<'_>, i: usize) -> bool {
        let bit = 1u64 << i;
        match self {
            Pred::Const(b) => *b,
            Pred::Up => v.block().up.load(Acquire) & bit != 0,
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
                let x = v.cols.int(*col, i) as u32;
                (*lo <= x && x <= *hi) != *negate
            }
            Pred::Range64 {
                col,
                lo,
                hi,
                negate,
            } => {
                let x = v.cols.int(*col, i);
                (*lo <= x && x <= *hi) != *negate
            }
            Pred::F32 { col, op, c } => {
                let x = v.cols.f32s(*col).map_or(f32::NAN, |x| x[i]);
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
                let x = v.label_cell(*key, i);
                if *eq {
                    x == label::str(*id)
                } else {
                    label::is_str(x) && x != label::str(*id)
                }
            }
            Pred::LabelNum { key, op, c } => cmp_f64(*op, label::as_f64(v.label_cell(*key, i)), *c),
            Pred::LabelLabel { a, b, op } => {
                label_cmp(*op, v.label_cell(*a, i), v.label_cell(*b, i))
            }
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

/// Applies `op` element-wise: `out[j] = out[j] op y[j]`, the operator
/// dispatched once so that each loop vectorises.
#[inline(always)]
fn apply_pairs(op: ArOp, out: &mut [f64], y: &[f64]) {
    let pairs = out.iter_mut().zip(y.iter());
    match op {
        ArOp::Add => pairs.for_each(|(o, y)| *o += *y),
        ArOp::Sub => pairs.for_each(|(o, y)| *o -= *y),
        ArOp::Mul => pairs.for_each(|(o, y)| *o *= *y),
        ArOp::Div => pairs.for_each(|(o, y)| *o /= *y),
    }
}

/// `out[j] = out[j] op c` (or `c op out[j]` if `const_left`).
#[inline(always)]
fn apply_const(op: ArOp, out: &mut [f64], c: f64, const_left: bool) {
    match (op, const_left) {
        (ArOp::Add, _) => out.iter_mut().for_each(|o| *o += c),
        (ArOp::Mul, _) => out.iter_mut().for_each(|o| *o *= c),
        (ArOp::Sub, false) => out.iter_mut().for_each(|o| *o -= c),
        (ArOp::Sub, true) => out.iter_mut().for_each(|o| *o = c - *o),
        (ArOp::Div, false) => out.iter_mut().for_each(|o| *o /= c),
        (ArOp::Div, true) => out.iter_mut().for_each(|o| *o = c / *o),
    }
}

impl NumExpr {
    /// Writes the value for each row of the block into `out`. Operators are
    /// dispatched once per block, never per row, so each loop is a plain
    /// vectorisable loop.
    pub(crate) fn eval_into(&self, v: &View<'_>, out: &mut [f64; BLOCK_ROWS]) {
        match self {
            NumExpr::Const(c) => *out = [*c; BLOCK_ROWS],
            NumExpr::Col(c) => {
                if let Some(x) = v.cols.f32s(*c) {
                    for (o, x) in out.iter_mut().zip(x.iter()) {
                        *o = f64::from(*x);
                    }
                } else if let Some(x) = v.cols.u32s(*c) {
                    for (o, x) in out.iter_mut().zip(x.iter()) {
                        *o = f64::from(*x);
                    }
                } else {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = v.cols.int(*c, i) as f64;
                    }
                }
            }
            NumExpr::Label(key) => match v.label(*key) {
                Some(cells) => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = cells.num(i);
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
                    apply_const(*op, out, c, true);
                    return;
                }
                a.eval_into(v, out);
                if let NumExpr::Const(c) = **b {
                    apply_const(*op, out, c, false);
                    return;
                }
                let mut y = [0.0; BLOCK_ROWS];
                b.eval_into(v, &mut y);
                apply_pairs(*op, out, &y);
            }
        }
    }

    /// The value for the rows `rows` of the block (a selection vector, as in
    /// columnar databases): `out[j]` for row `rows[j]`. The `prefer` score of
    /// the few rows that pass costs a pass over them per operator, not a pass
    /// over the 64 lanes nor a tree walk per row.
    pub(crate) fn eval_sel(&self, v: &View<'_>, rows: &[u8], out: &mut [f64]) {
        let n = rows.len().min(out.len());
        let (rows, out) = (&rows[..n], &mut out[..n]);
        match self {
            NumExpr::Const(c) => out.fill(*c),
            NumExpr::Col(c) => {
                if let Some(x) = v.cols.f32s(*c) {
                    for (o, &i) in out.iter_mut().zip(rows) {
                        *o = f64::from(x[i as usize % BLOCK_ROWS]);
                    }
                } else {
                    for (o, &i) in out.iter_mut().zip(rows) {
                        *o = v.cols.int(*c, i as usize % BLOCK_ROWS) as f64;
                    }
                }
            }
            NumExpr::Label(key) => match v.label(*key) {
                Some(cells) => {
                    for (o, &i) in out.iter_mut().zip(rows) {
                        *o = cells.num(i as usize % BLOCK_ROWS);
                    }
                }
                None => out.fill(f64::NAN),
            },
            NumExpr::Neg(e) => {
                e.eval_sel(v, rows, out);
                for o in out.iter_mut() {
                    *o = -*o;
                }
            }
            NumExpr::Bin(op, a, b) => {
                if let NumExpr::Const(c) = **a {
                    b.eval_sel(v, rows, out);
                    apply_const(*op, out, c, true);
                    return;
                }
                a.eval_sel(v, rows, out);
                if let NumExpr::Const(c) = **b {
                    apply_const(*op, out, c, false);
                    return;
                }
                let mut y = [0.0; BLOCK_ROWS];
                b.eval_sel(v, rows, &mut y[..n]);
                apply_pairs(*op, out, &y[..n]);
            }
        }
    }

    /// The value for one row (used off the hot path).
    pub(crate) fn eval_row(&self, v: &View<'_>, i: usize) -> f64 {
        match self {
            NumExpr::Const(c) => *c,
            NumExpr::Col(c) => v.cols.value(*c, i),
            NumExpr::Label(key) => v.label(*key).map_or(f64::NAN, |c| c.num(i)),
            NumExpr::Neg(e) => -e.eval_row(v, i),
            NumExpr::Bin(op, a, b) => op.apply(a.eval_row(v, i), b.eval_row(v, i)),
        }
    }

    /// Whether this expression reads nothing but reservation columns and
    /// constants.
    pub(crate) fn capacity_or_const(&self) -> bool {
        match self {
            NumExpr::Const(_) => true,
            NumExpr::Label(_) => false,
            NumExpr::Col(c) => c.is_capacity(),
            NumExpr::Neg(e) => e.capacity_or_const(),
            NumExpr::Bin(_, a, b) => a.capacity_or_const() && b.capacity_or_const(),
        }
    }

    /// Whether this expression reads a reservation column.
    pub(crate) fn reads_capacity(&self) -> bool {
        match self {
            NumExpr::Const(_) | NumExpr::Label(_) => false,
            NumExpr::Col(c) => c.is_capacity(),
            NumExpr::Neg(e) => e.reads_capacity(),
            NumExpr::Bin(_, a, b) => a.reads_capacity() || b.reads_capacity(),
        }
    }
}

/// Full-block filters over the reservation atomics (used by `explain` and by
/// predicates that mix them with other columns).
pub(crate) mod kernel {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::schema::{Column, BLOCK_ROWS};
    use crate::table::block::{pack, Cap};

    /// Rows with `x - lo <= span` (unsigned) for a reservation column.
    #[inline(never)]
    pub(crate) fn range_atomic(cap: &[Cap; BLOCK_ROWS], col: Column, lo: u64, span: u64) -> u64 {
        let mut b = [0u8; BLOCK_ROWS];
        for (o, c) in b.iter_mut().zip(cap.iter()) {
            let x = match col {
                Column::SlotsFree => c.slots_free.load(Relaxed) as u64,
                Column::CoresFree => c.cores_free.load(Relaxed) as u64,
                _ => c.mem_free.load(Relaxed),
            };
            // 32-bit columns compare in 32 bits, as their ranges were built.
            let d = if col == Column::MemFree {
                x.wrapping_sub(lo)
            } else {
                (x as u32).wrapping_sub(lo as u32) as u64
            };
            *o = (d <= span) as u8;
        }
        pack(&b)
    }
}
