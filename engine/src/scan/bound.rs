//! Upper bounds on the scores a block's rows can have, from the column
//! ranges the block keeps: what lets the exact scan skip a block (branch and
//! bound) before filtering it.
//!
//! A sum of scaled columns (`server.idle_power - 2 * server.load`) is bounded
//! term by term ([`upper_bound`]). Any other `prefer` over columns with
//! ranges (`server.idle_power / server.cores`, `-(server.load * 2 + 1)`) is
//! bounded by interval arithmetic: each step of the expression maps the
//! intervals of its operands to one that holds every value the step can
//! give. Sound because each IEEE operation rounds monotonically: the exact
//! results over a box of operands lie between those at its corners (`+`, `-`
//! and `*` are monotone in each operand for a fixed sign of the other; so is
//! `/` while the divisor keeps one sign), and rounding keeps that order, so
//! the corners computed with the tree's own operations bound every row's
//! score as the scan computes it.
//!
//! Rows scoring NaN rank below everything and need no bound. Every
//! arithmetic step propagates NaN, so a row with a NaN cell scores NaN; the
//! ranges leave NaN cells out (and a label's strings and missing cells,
//! which score NaN). A NaN corner (`inf - inf`, `0 * inf`) or a divisor
//! range that holds zero means no bound (`+inf`): the block is scanned.

use crate::expr::op::ArOp;
use crate::expr::pred::NumExpr;
use crate::scan::score::{Leaf, Score, Term};
use crate::schema::Column;
use crate::table::block::Cols;

/// How the exact scan bounds a query's `prefer` per block; compiled with
/// the query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Bound {
    /// Term by term ([`upper_bound`]).
    Sum(Vec<Term>),
    /// Interval arithmetic, step by step.
    Steps(Vec<Step>),
}

/// Registers interval steps may use; a deeper `prefer` is not bounded.
const MAX_SPANS: usize = 8;

/// One step of interval arithmetic; `r` is a register holding a span
/// `(lo, hi)`. Operations with a constant are steps of their own (a
/// constant's sign is known when compiling, so `x * c` needs no corners).
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// `r = range of the column` (NaN cells left out).
    Col(u8, Column),
    /// `r = range of the label's numbers` (strings and missing cells are
    /// NaN: left out).
    Label(u8, u32),
    /// `r = c`
    Const(u8, f64),
    /// `r = -r`
    Neg(u8),
    /// `r = r op (r + 1)`
    Bin(ArOp, u8),
    /// `r = r + c`
    AddK(u8, f64),
    /// `r = r * c` for `c` of positive sign (`+0` included): the ends
    /// keep their order.
    MulUp(u8, f64),
    /// `r = r * c` for `c` of negative sign (`-0` included): the ends swap.
    MulDown(u8, f64),
    /// `r = r / c` for `c` of positive sign.
    DivUp(u8, f64),
    /// `r = r / c` for `c` of negative sign.
    DivDown(u8, f64),
    /// `r = c - r`
    KSub(u8, f64),
    /// `r = c / r`
    KDiv(u8, f64),
}

impl Bound {
    /// The bound of `prefer`, or `None` if it reads a reservation column
    /// (they change by compare-and-swap and keep no ranges: no block could
    /// be skipped, so the scan does not try), holds a NaN constant or is
    /// too deep.
    pub(crate) fn of(prefer: &Score, e: &NumExpr) -> Option<Bound> {
        if let Score::Sum(terms) = prefer {
            return terms
                .iter()
                .all(|t| match t.leaf {
                    Leaf::Const(c) => !c.is_nan(),
                    Leaf::Col(c) => !c.is_capacity(),
                    Leaf::Label(_) => true,
                })
                .then(|| Bound::Sum(terms.clone()));
        }
        let mut steps = Vec::new();
        emit(e, 0, &mut steps).then_some(Bound::Steps(steps))
    }

    /// At least the score of every row of the block that does not score
    /// NaN; `+inf` when nothing better is known, `-inf` when every row
    /// scores NaN. `label(key)` is the range of the block's numbers for a
    /// label key.
    #[inline]
    pub(crate) fn upper(&self, cols: &Cols<'_>, label: impl Fn(u32) -> (f64, f64)) -> f64 {
        match self {
            Bound::Sum(terms) => upper_bound(terms, cols, label),
            Bound::Steps(steps) => steps_upper(steps, cols, label),
        }
    }
}

/// Emits the interval steps of `e` into register `r` (and above); false
/// if `e` cannot be bounded.
fn emit(e: &NumExpr, r: usize, steps: &mut Vec<Step>) -> bool {
    if r >= MAX_SPANS {
        return false;
    }
    let reg = r as u8;
    match e {
        NumExpr::Const(c) if c.is_nan() => return false,
        NumExpr::Const(c) => steps.push(Step::Const(reg, *c)),
        NumExpr::Col(c) if c.is_capacity() => return false,
        NumExpr::Col(c) => steps.push(Step::Col(reg, *c)),
        NumExpr::Label(k) => steps.push(Step::Label(reg, *k)),
        NumExpr::Neg(a) => {
            if !emit(a, r, steps) {
                return false;
            }
            steps.push(Step::Neg(reg));
        }
        NumExpr::Bin(op, a, b) => {
            if let NumExpr::Const(c) = **b {
                if c.is_nan() || !emit(a, r, steps) {
                    return false;
                }
                let neg = c.is_sign_negative();
                steps.push(match op {
                    ArOp::Add => Step::AddK(reg, c),
                    ArOp::Sub => Step::AddK(reg, -c),
                    ArOp::Mul if neg => Step::MulDown(reg, c),
                    ArOp::Mul => Step::MulUp(reg, c),
                    ArOp::Div if neg => Step::DivDown(reg, c),
                    ArOp::Div => Step::DivUp(reg, c),
                });
                return true;
            }
            if let NumExpr::Const(c) = **a {
                if c.is_nan() || !emit(b, r, steps) {
                    return false;
                }
                steps.push(match op {
                    ArOp::Add => Step::AddK(reg, c),
                    ArOp::Sub => Step::KSub(reg, c),
                    ArOp::Mul if c.is_sign_negative() => Step::MulDown(reg, c),
                    ArOp::Mul => Step::MulUp(reg, c),
                    ArOp::Div => Step::KDiv(reg, c),
                });
                return true;
            }
            if !emit(a, r, steps) || !emit(b, r + 1, steps) {
                return false;
            }
            steps.push(Step::Bin(*op, reg));
        }
    }
    true
}

/// The smallest and largest of four corners; NaN among them sets `bad`.
#[inline(always)]
fn corners(c: [f64; 4], bad: &mut bool) -> (f64, f64) {
    *bad |= c.iter().any(|x| x.is_nan());
    let lo = c[0].min(c[1]).min(c[2].min(c[3]));
    let hi = c[0].max(c[1]).max(c[2].max(c[3]));
    (lo, hi)
}

/// Runs the steps on the block's ranges. No early exits: a NaN end or a
/// divisor range holding zero sets `bad` (no bound), a column with no
/// number sets `empty` (every row scores NaN), checked once at the end.
#[inline]
fn steps_upper(steps: &[Step], cols: &Cols<'_>, label: impl Fn(u32) -> (f64, f64)) -> f64 {
    let mut regs = [(0.0f64, 0.0f64); MAX_SPANS + 1];
    let (mut bad, mut empty) = (false, false);
    for step in steps {
        match *step {
            Step::Col(r, c) => {
                // Only columns with ranges are emitted.
                let (lo, hi) = cols.range(c).unwrap_or((f64::NAN, f64::NAN));
                empty |= lo > hi;
                regs[r as usize % MAX_SPANS] = (lo, hi);
            }
            Step::Label(r, key) => {
                let (lo, hi) = label(key);
                empty |= lo > hi;
                regs[r as usize % MAX_SPANS] = (lo, hi);
            }
            Step::Const(r, c) => regs[r as usize % MAX_SPANS] = (c, c),
            Step::Neg(r) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (-x.1, -x.0);
            }
            Step::AddK(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (x.0 + c, x.1 + c);
            }
            // Multiplying by 0 or dividing by an infinity can meet an
            // infinite end: NaN, caught below.
            Step::MulUp(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (x.0 * c, x.1 * c);
            }
            Step::MulDown(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (x.1 * c, x.0 * c);
            }
            Step::DivUp(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (x.0 / c, x.1 / c);
            }
            Step::DivDown(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (x.1 / c, x.0 / c);
            }
            Step::KSub(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                *x = (c - x.1, c - x.0);
            }
            Step::KDiv(r, c) => {
                let x = &mut regs[r as usize % MAX_SPANS];
                bad |= x.0 <= 0.0 && x.1 >= 0.0;
                *x = corners([c / x.0, c / x.1, c / x.0, c / x.1], &mut bad);
            }
            Step::Bin(op, r) => {
                // `r + 1` is a register too (`emit` sees to it; the array
                // has one more so that the index needs no check).
                let r = r as usize % MAX_SPANS;
                let (a, b) = (regs[r], regs[r + 1]);
                regs[r] = match op {
                    ArOp::Add => (a.0 + b.0, a.1 + b.1),
                    ArOp::Sub => (a.0 - b.1, a.1 - b.0),
                    ArOp::Mul => corners([a.0 * b.0, a.0 * b.1, a.1 * b.0, a.1 * b.1], &mut bad),
                    ArOp::Div => {
                        // Dividing by values near zero: no bound.
                        bad |= b.0 <= 0.0 && b.1 >= 0.0;
                        corners([a.0 / b.0, a.0 / b.1, a.1 / b.0, a.1 / b.1], &mut bad)
                    }
                };
            }
        }
    }
    // A NaN end reaches the result: every step but the corner ones keeps
    // NaN ends in its output, and those flag them.
    bad |= regs[0].0.is_nan() || regs[0].1.is_nan();
    if empty {
        f64::NEG_INFINITY
    } else if bad {
        f64::INFINITY
    } else {
        regs[0].1
    }
}

/// An upper bound on the score of every row of a block whose score is not
/// NaN, for a sum of scaled terms; `+inf` when there is none (a
/// reservation column, or NaN on the way).
///
/// Only the upper ends are needed: `x <= X` gives `x * w <= X * w` for
/// `w >= 0` (the other endpoint for `w < 0`), and `a <= A, b <= B` give
/// `a + b <= A + B`, all as rounded.
#[inline]
pub(crate) fn upper_bound(
    terms: &[Term],
    cols: &Cols<'_>,
    label: impl Fn(u32) -> (f64, f64),
) -> f64 {
    let mut acc = 0.0;
    for (k, t) in terms.iter().enumerate() {
        let (lo, hi) = match t.leaf {
            Leaf::Const(c) => (c, c),
            Leaf::Col(c) => match cols.range(c) {
                Some(r) => r,
                None => return f64::INFINITY,
            },
            Leaf::Label(k) => label(k),
        };
        if lo > hi {
            // No number in the column: every score in the block is NaN.
            return f64::NEG_INFINITY;
        }
        let (w, div) = t.weight(k);
        let (a, b) = if div {
            (lo / w, hi / w)
        } else {
            (lo * w, hi * w)
        };
        // A NaN endpoint (`inf * 0`, `0 / 0`) is a row scoring NaN; the
        // bound holds for the other rows, unless both are NaN.
        let top = a.max(b);
        acc = if k == 0 { top } else { acc + top };
        if acc.is_nan() {
            return f64::INFINITY;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::score::tests::{col, gen_expr, group_pools, k, tree, xorshift, CELLS, SCALES};
    use crate::schema::{Column, BLOCK_ROWS};
    use crate::table::block::{Block, Cols, Dynamic, Fixed};

    /// The bound dominates every row's score, over columns with extreme
    /// values (infinities, NaN, -0, huge and tiny numbers) and scales of both
    /// signs.
    #[test]
    fn upper_bound_dominates_every_row() {
        let (pool, scales) = (CELLS, SCALES);
        let mut next = xorshift(0x1234_5678);
        let g = crossbeam_epoch::pin();
        let rounds = if cfg!(miri) { 3 } else { 300 };
        let (dp, fp) = group_pools();
        for _ in 0..rounds {
            let block = Block::new(&dp, &fp);
            let mut d = crate::table::block::Dynamic::default();
            for i in 0..BLOCK_ROWS {
                d.load[i] = pool[(next() % pool.len() as u64) as usize];
                d.idle_power[i] = pool[(next() % 4) as usize];
            }
            d.refresh();
            block.dynamic.store(Some(d), &dp, &g);
            let cols = Cols::of(&block, &g);
            let (c1, c2) = (
                scales[(next() % scales.len() as u64) as usize],
                scales[(next() % scales.len() as u64) as usize],
            );
            let div = next() % 2 == 0;
            let second = if div {
                NumExpr::Bin(ArOp::Div, col(Column::Load), k(c2))
            } else {
                NumExpr::Bin(ArOp::Mul, k(c2), col(Column::Load))
            };
            let e = NumExpr::Bin(
                if next() % 2 == 0 {
                    ArOp::Sub
                } else {
                    ArOp::Add
                },
                Box::new(NumExpr::Bin(ArOp::Mul, col(Column::IdlePower), k(c1))),
                Box::new(second),
            );
            let Score::Sum(terms) = Score::new(e.clone()) else {
                panic!("not a sum")
            };
            let ub = upper_bound(&terms, &cols, |_| (f64::NAN, f64::NAN));
            for i in 0..BLOCK_ROWS {
                let x = cols.value(Column::IdlePower, i) * c1;
                let y = cols.value(Column::Load, i);
                let y = if div { y / c2 } else { c2 * y };
                let s = match &e {
                    NumExpr::Bin(ArOp::Sub, ..) => x - y,
                    _ => x + y,
                };
                assert!(s.is_nan() || s <= ub, "{s} > {ub} ({e:?})");
            }
        }
    }

    /// Interval bounds dominate every row's score for random `prefer`
    /// expressions (register programs, and trees too deep for the
    /// registers), over blocks of extreme cells (infinities, NaN, signed
    /// zeros, huge and tiny numbers) and of ordinary ones, with integer
    /// columns (zeros included, so divisions by a range holding zero).
    #[test]
    fn interval_bounds_dominate_every_row() {
        let cols = [
            Column::Load,
            Column::IdlePower,
            Column::Power,
            Column::Cores,
            Column::Mem,
        ];
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let g = crossbeam_epoch::pin();
        let (dp, fp) = group_pools();
        let (mut steps, mut sums, mut finite, mut all_nan) = (0, 0, 0, 0);
        for round in 0..if cfg!(miri) { 10 } else { 3000 } {
            let block = Block::new(&dp, &fp);
            let (mut d, mut f) = (Dynamic::default(), Fixed::default());
            // Every other block has ordinary values only, so that most
            // bounds are finite and the check has teeth.
            let extreme = round % 2 == 0;
            for i in 0..BLOCK_ROWS {
                let mut cell = || {
                    if extreme {
                        CELLS[(next() % CELLS.len() as u64) as usize]
                    } else {
                        (next() % 1000) as f32 / 10.0 - 20.0
                    }
                };
                (d.load[i], d.idle_power[i], f.power[i]) = (cell(), cell(), cell());
                f.cores[i] = (next() % 17) as u32;
                f.mem[i] = next() % (1 << 40);
            }
            if round % 7 == 0 {
                // A column with no number: every score NaN.
                d.load = [f32::NAN; BLOCK_ROWS];
            }
            d.refresh();
            f.refresh();
            block.dynamic.store(Some(d), &dp, &g);
            block.fixed.store(Some(f), &fp, &g);
            let cs = Cols::of(&block, &g);
            let e = gen_expr(&mut next, 5, &cols);
            let score = Score::new(e.clone());
            let bound = Bound::of(&score, &e).expect("columns with ranges are bounded");
            match bound {
                Bound::Steps(_) => steps += 1,
                Bound::Sum(_) => sums += 1,
            }
            let ub = bound.upper(&cs, |_| (f64::NAN, f64::NAN));
            finite += usize::from(ub.is_finite());
            all_nan += usize::from(ub == f64::NEG_INFINITY);
            for i in 0..BLOCK_ROWS {
                let s = tree(&e, &|c| cs.value(c, i));
                assert!(s.is_nan() || s <= ub, "row {i}: {s} > {ub} for {e:?}");
            }
        }
        let n = if cfg!(miri) { 1 } else { 100 };
        assert!(
            steps > n && sums > n / 10 && finite > n && all_nan > n / 10,
            "{steps} by steps, {sums} sums, {finite} finite, {all_nan} all NaN"
        );
    }

    /// The block with the given `idle_power`, `load` and `cores` cells.
    fn block_of(
        idle: &[f32],
        load: &[f32],
        cores: &[u32],
        dp: &std::sync::Arc<crate::table::arena::Pool<Dynamic>>,
        fp: &std::sync::Arc<crate::table::arena::Pool<Fixed>>,
        g: &crossbeam_epoch::Guard,
    ) -> Block {
        let block = Block::new(dp, fp);
        let (mut d, mut f) = (Dynamic::default(), Fixed::default());
        for i in 0..BLOCK_ROWS {
            d.idle_power[i] = idle[i % idle.len()];
            d.load[i] = load[i % load.len()];
            f.cores[i] = cores[i % cores.len()];
        }
        d.refresh();
        f.refresh();
        block.dynamic.store(Some(d), dp, g);
        block.fixed.store(Some(f), fp, g);
        block
    }

    /// Bounds are tight enough to skip blocks: for ordinary shapes they are
    /// the best score a row of the block could reach; a label or a
    /// reservation column, or a divisor that can be zero, gives none.
    #[test]
    fn interval_bounds_are_tight_for_ordinary_shapes() {
        let g = crossbeam_epoch::pin();
        let (dp, fp) = group_pools();
        let block = block_of(&[10.0, 50.0, 30.0], &[0.25, 0.5], &[2, 8, 4], &dp, &fp, &g);
        let cs = Cols::of(&block, &g);
        let upper = |e: NumExpr| {
            let score = Score::new(e.clone());
            Bound::of(&score, &e).map(|b| b.upper(&cs, |_| (f64::NAN, f64::NAN)))
        };
        // idle_power / cores: at most 50 / 2.
        let ratio = NumExpr::Bin(ArOp::Div, col(Column::IdlePower), col(Column::Cores));
        assert_eq!(upper(ratio), Some(25.0));
        // -(load * 2 + 1): at most -(0.25 * 2 + 1).
        let neg = NumExpr::Neg(Box::new(NumExpr::Bin(
            ArOp::Add,
            Box::new(NumExpr::Bin(ArOp::Mul, col(Column::Load), k(2.0))),
            k(1.0),
        )));
        assert_eq!(upper(neg), Some(-1.5));
        // idle_power - (2 * load + 0), the bench's unpruned shape: 50 - 0.5.
        let sum = NumExpr::Bin(
            ArOp::Sub,
            col(Column::IdlePower),
            Box::new(NumExpr::Bin(
                ArOp::Add,
                Box::new(NumExpr::Bin(ArOp::Mul, k(2.0), col(Column::Load))),
                k(0.0),
            )),
        );
        assert_eq!(upper(sum), Some(49.5));
        // idle_power * load: the corners 10 * 0.25 .. 50 * 0.5.
        let product = NumExpr::Bin(ArOp::Mul, col(Column::IdlePower), col(Column::Load));
        assert_eq!(upper(product), Some(25.0));
        // A divisor range holding zero: no bound.
        let zero = block_of(&[10.0], &[0.0, 1.0], &[0, 1], &dp, &fp, &g);
        let zc = Cols::of(&zero, &g);
        let by_load = NumExpr::Bin(ArOp::Div, col(Column::IdlePower), col(Column::Load));
        let b = Bound::of(&Score::new(by_load.clone()), &by_load).expect("bounded shape");
        assert_eq!(b.upper(&zc, |_| (f64::NAN, f64::NAN)), f64::INFINITY);
        // A label's numbers: gpus * load is at most 4 * 0.5 with gpus in
        // 1..=4; a block where no row has a number for it scores NaN
        // throughout (`-inf`), for a program as for a sum.
        for e in [
            NumExpr::Bin(ArOp::Mul, Box::new(NumExpr::Label(0)), col(Column::Load)),
            NumExpr::Bin(
                ArOp::Add,
                Box::new(NumExpr::Bin(ArOp::Mul, k(2.0), Box::new(NumExpr::Label(0)))),
                col(Column::Load),
            ),
        ] {
            let score = Score::new(e.clone());
            let b = Bound::of(&score, &e).expect("labels are bounded");
            let gpus = |key: u32| {
                if key == 0 {
                    (1.0, 4.0)
                } else {
                    (f64::NAN, f64::NAN)
                }
            };
            let none = |_| (f64::INFINITY, f64::NEG_INFINITY);
            let want = if matches!(b, Bound::Sum(_)) { 8.5 } else { 2.0 };
            assert_eq!(b.upper(&cs, gpus), want, "{e:?}");
            assert_eq!(b.upper(&cs, none), f64::NEG_INFINITY, "{e:?}");
        }
        // Reservation columns keep no ranges.
        let free = NumExpr::Bin(ArOp::Div, col(Column::IdlePower), col(Column::SlotsFree));
        assert!(upper(free).is_none());
    }
}
