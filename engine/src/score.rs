//! `prefer` in the form the scan evaluates it.
//!
//! Most `prefer` expressions are sums of scaled columns
//! (`server.idle_power - 2 * server.load`). Walking the expression tree per
//! row, or over 64 lanes per block when only a handful of rows pass, costs
//! more than the filters; a [`Score::Sum`] is evaluated over the passing rows
//! a column at a time ([`best_of_sum`]). The sum keeps the tree's
//! evaluation order and operations exactly (it is recognised only for
//! left-deep chains `t0 ± t1 ± ...`, each term a constant, a column or label,
//! or one multiplied or divided by a constant), so scores are bit-identical
//! to [`NumExpr::eval_row`] and to the reference matcher. Anything else stays
//! a [`Score::General`] expression.

use crate::block::Cols;
use crate::eval::{ArOp, NumExpr, View};
use crate::schema::{Column, BLOCK_ROWS};

/// Most terms a [`Score::Sum`] has (longer sums stay general).
const MAX_TERMS: usize = 6;

/// What a term reads.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Leaf {
    Const(f64),
    Col(Column),
    Label(u32),
}

/// How a term's leaf is scaled, in the tree's operand order (IEEE
/// multiplication is commutative, but keeping the order costs nothing).
#[derive(Copy, Clone, Debug, PartialEq)]
enum Scale {
    One,
    /// `c * x`
    MulLeft(f64),
    /// `x * c`
    MulRight(f64),
    /// `x / c`
    Div(f64),
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Term {
    /// Subtracted from the running sum (added otherwise; ignored for the
    /// first term, which starts the sum).
    sub: bool,
    leaf: Leaf,
    scale: Scale,
}

/// A compiled `prefer`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Score {
    Sum(Vec<Term>),
    General(NumExpr),
}

impl Score {
    pub(crate) fn new(e: NumExpr) -> Score {
        let mut terms = Vec::new();
        if chain(&e, &mut terms) && terms.len() <= MAX_TERMS {
            Score::Sum(terms)
        } else {
            Score::General(e)
        }
    }
}

/// Appends the terms of the left-deep chain `e`; false if `e` is not one.
fn chain(e: &NumExpr, terms: &mut Vec<Term>) -> bool {
    if let NumExpr::Bin(op @ (ArOp::Add | ArOp::Sub), a, b) = e {
        if let Some(mut t) = term(b) {
            if chain(a, terms) {
                t.sub = *op == ArOp::Sub;
                terms.push(t);
                return true;
            }
            return false;
        }
        return false;
    }
    match term(e) {
        Some(t) => {
            terms.push(t);
            true
        }
        None => false,
    }
}

fn leaf(e: &NumExpr) -> Option<Leaf> {
    match e {
        NumExpr::Const(c) => Some(Leaf::Const(*c)),
        NumExpr::Col(c) => Some(Leaf::Col(*c)),
        NumExpr::Label(k) => Some(Leaf::Label(*k)),
        _ => None,
    }
}

fn term(e: &NumExpr) -> Option<Term> {
    let t = |leaf, scale| {
        Some(Term {
            sub: false,
            leaf,
            scale,
        })
    };
    if let Some(l) = leaf(e) {
        return t(l, Scale::One);
    }
    match e {
        NumExpr::Bin(ArOp::Mul, a, b) => match (&**a, leaf(b)) {
            (NumExpr::Const(c), Some(l)) => t(l, Scale::MulLeft(*c)),
            (x, _) => match (leaf(x), &**b) {
                (Some(l), NumExpr::Const(c)) => t(l, Scale::MulRight(*c)),
                _ => None,
            },
        },
        NumExpr::Bin(ArOp::Div, a, b) => match (leaf(a), &**b) {
            (Some(l), NumExpr::Const(c)) => t(l, Scale::Div(*c)),
            _ => None,
        },
        _ => None,
    }
}

/// The best of the rows `m` of one block by a [`Score::Sum`]: the row and
/// its score (the first highest, NaN lowest). Column at a time over the
/// selected rows: per term, gather the leaf's values (the column resolved
/// once), then one loop combines them into the running sums. `a - c * x` is
/// computed as `a + x * (-c)`, and `a - x / c` as `a + x / (-c)`: negation is
/// exact and commutes with rounding, so the sums are the tree's, bit for bit.
#[inline]
pub(crate) fn best_of_sum(terms: &[Term], view: &View<'_>, m: u64) -> (usize, f64) {
    let mut rows = [0u8; BLOCK_ROWS];
    let mut n = 0;
    let mut bits = m;
    while bits != 0 {
        rows[n % BLOCK_ROWS] = bits.trailing_zeros() as u8;
        bits &= bits - 1;
        n += 1;
    }
    let n = n.min(BLOCK_ROWS);
    let rows = &rows[..n];
    let mut acc = [0.0f64; BLOCK_ROWS];
    let mut x = [0.0f64; BLOCK_ROWS];
    let (acc, x) = (&mut acc[..n], &mut x[..n]);
    for (k, t) in terms.iter().enumerate() {
        gather(t.leaf, view, rows, x);
        let (w, div) = match t.scale {
            Scale::One => (1.0, false),
            Scale::MulLeft(c) | Scale::MulRight(c) => (c, false),
            Scale::Div(c) => (c, true),
        };
        let w = if t.sub && k > 0 { -w } else { w };
        match (k == 0, div) {
            (true, false) => acc.iter_mut().zip(x.iter()).for_each(|(a, x)| *a = x * w),
            (true, true) => acc.iter_mut().zip(x.iter()).for_each(|(a, x)| *a = x / w),
            (false, false) => acc.iter_mut().zip(x.iter()).for_each(|(a, x)| *a += x * w),
            (false, true) => acc.iter_mut().zip(x.iter()).for_each(|(a, x)| *a += x / w),
        }
    }
    let mut j = 0;
    let mut top = f64::NEG_INFINITY;
    for (r, &s) in acc.iter().enumerate() {
        let k = if s.is_nan() { f64::NEG_INFINITY } else { s };
        if k > top {
            (j, top) = (r, k);
        }
    }
    (
        rows.get(j).map_or(0, |&r| r as usize % BLOCK_ROWS),
        acc.get(j).copied().unwrap_or(f64::NAN),
    )
}

/// An upper bound on the score of every row of a block whose score is not
/// NaN, from the column ranges the block keeps ([`Cols::range`]); `+inf`
/// when there is none (a label or reservation column, or NaN on the way).
///
/// Sound because each IEEE operation rounds monotonically: `x <= X` gives
/// `x * w <= X * w` for `w >= 0` (the other endpoint for `w < 0`), and
/// `a <= A, b <= B` give `a + b <= A + B`, all as rounded; so the bound
/// evaluated with the tree's operations dominates every row's score.
#[inline]
pub(crate) fn upper_bound(terms: &[Term], cols: &Cols<'_>) -> f64 {
    let mut acc = 0.0;
    for (k, t) in terms.iter().enumerate() {
        let (lo, hi) = match t.leaf {
            Leaf::Const(c) => (c, c),
            Leaf::Col(c) => match cols.range(c) {
                Some(r) => r,
                None => return f64::INFINITY,
            },
            Leaf::Label(_) => return f64::INFINITY,
        };
        if lo > hi {
            // No number in the column: every score in the block is NaN.
            return f64::NEG_INFINITY;
        }
        let (w, div) = match t.scale {
            Scale::One => (1.0, false),
            Scale::MulLeft(c) | Scale::MulRight(c) => (c, false),
            Scale::Div(c) => (c, true),
        };
        let w = if t.sub && k > 0 { -w } else { w };
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

/// `x[j]` = the value of `leaf` at row `rows[j]`.
#[inline]
fn gather(leaf: Leaf, view: &View<'_>, rows: &[u8], x: &mut [f64]) {
    match leaf {
        Leaf::Const(c) => x.fill(c),
        Leaf::Label(k) => match view.label(k) {
            Some(cells) => {
                for (o, &r) in x.iter_mut().zip(rows) {
                    *o = cells.num(r as usize % BLOCK_ROWS);
                }
            }
            None => x.fill(f64::NAN),
        },
        Leaf::Col(c) => {
            if let Some(col) = view.cols.f32s(c) {
                for (o, &r) in x.iter_mut().zip(rows) {
                    *o = f64::from(col[r as usize % BLOCK_ROWS]);
                }
            } else if let Some(col) = view.cols.u32s(c) {
                for (o, &r) in x.iter_mut().zip(rows) {
                    *o = f64::from(col[r as usize % BLOCK_ROWS]);
                }
            } else {
                for (o, &r) in x.iter_mut().zip(rows) {
                    *o = view.cols.value(c, r as usize % BLOCK_ROWS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(c: Column) -> Box<NumExpr> {
        Box::new(NumExpr::Col(c))
    }
    fn k(c: f64) -> Box<NumExpr> {
        Box::new(NumExpr::Const(c))
    }

    #[test]
    fn left_deep_sums_of_scaled_columns_are_recognised() {
        // idle_power - 2 * load
        let e = NumExpr::Bin(
            ArOp::Sub,
            col(Column::IdlePower),
            Box::new(NumExpr::Bin(ArOp::Mul, k(2.0), col(Column::Load))),
        );
        let Score::Sum(t) = Score::new(e) else {
            panic!("not a sum")
        };
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].scale, Scale::MulLeft(2.0));
        assert!(t[1].sub);
        // power / 4 + mem * 3 - 1
        let e = NumExpr::Bin(
            ArOp::Sub,
            Box::new(NumExpr::Bin(
                ArOp::Add,
                Box::new(NumExpr::Bin(ArOp::Div, col(Column::Power), k(4.0))),
                Box::new(NumExpr::Bin(ArOp::Mul, col(Column::Mem), k(3.0))),
            )),
            k(1.0),
        );
        assert!(matches!(Score::new(e), Score::Sum(t) if t.len() == 3));
        assert!(matches!(
            Score::new(NumExpr::Col(Column::IdlePower)),
            Score::Sum(t) if t.len() == 1
        ));
    }

    /// The bound dominates every row's score, over columns with extreme
    /// values (infinities, NaN, -0, huge and tiny numbers) and scales of both
    /// signs.
    #[test]
    fn upper_bound_dominates_every_row() {
        use crate::block::{Block, Cols};
        let pool = [
            0.0f32,
            -0.0,
            1.5,
            -2.25,
            1e30,
            -1e30,
            1e-30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            99.9,
        ];
        let scales = [1.0, -1.0, 2.0, -0.5, 0.0, 3.0e10, 1e-300];
        let mut r = 0x1234_5678u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let g = crossbeam_epoch::pin();
        let rounds = if cfg!(miri) { 3 } else { 300 };
        for _ in 0..rounds {
            let block = Block::new();
            let mut d = crate::block::Dynamic::default();
            for i in 0..BLOCK_ROWS {
                d.load[i] = pool[(next() % pool.len() as u64) as usize];
                d.idle_power[i] = pool[(next() % 4) as usize];
            }
            d.refresh();
            block.dynamic.store(Some(d), &g);
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
            let ub = upper_bound(&terms, &cols);
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

    #[test]
    fn other_shapes_stay_general() {
        // a - (b + c): reassociating would change the rounding.
        let e = NumExpr::Bin(
            ArOp::Sub,
            col(Column::Power),
            Box::new(NumExpr::Bin(ArOp::Add, col(Column::Load), col(Column::Mem))),
        );
        assert!(matches!(Score::new(e), Score::General(_)));
        // 3 * (a + b)
        let e = NumExpr::Bin(
            ArOp::Mul,
            k(3.0),
            Box::new(NumExpr::Bin(ArOp::Add, col(Column::Load), col(Column::Mem))),
        );
        assert!(matches!(Score::new(e), Score::General(_)));
        // a * b
        let e = NumExpr::Bin(ArOp::Mul, col(Column::Load), col(Column::Mem));
        assert!(matches!(Score::new(e), Score::General(_)));
        let e = NumExpr::Neg(col(Column::Load));
        assert!(matches!(Score::new(e), Score::General(_)));
    }
}
