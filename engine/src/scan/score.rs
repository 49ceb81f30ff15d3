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

use crate::expr::op::ArOp;
use crate::expr::pred::NumExpr;
use crate::schema::{Column, BLOCK_ROWS};
use crate::table::block::Cols;

/// Most terms a [`Score::Sum`] has (longer sums stay general).
const MAX_TERMS: usize = 6;

/// What a term (or a program's load) reads.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Leaf {
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
    pub(crate) leaf: Leaf,
    scale: Scale,
}

impl Term {
    /// What term `k` of a sum does to its leaf's value: multiply or, with
    /// the flag, divide by the weight, negated for a subtracted term (`a -
    /// c * x` is `a + x * (-c)`: negation is exact, so the sum is the
    /// tree's, bit for bit). The first term starts the sum and is never
    /// negated.
    #[inline(always)]
    pub(crate) fn weight(&self, k: usize) -> (f64, bool) {
        let (w, div) = match self.scale {
            Scale::One => (1.0, false),
            Scale::MulLeft(c) | Scale::MulRight(c) => (c, false),
            Scale::Div(c) => (c, true),
        };
        (if self.sub && k > 0 { -w } else { w }, div)
    }
}

/// A compiled `prefer`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Score {
    Sum(Vec<Term>),
    /// Any other expression: as a register program over selection vectors
    /// when it needs at most [`MAX_REGS`] registers, else the tree.
    General(NumExpr, Option<Program>),
}

impl Score {
    pub(crate) fn new(e: NumExpr) -> Score {
        let mut terms = Vec::new();
        if chain(&e, &mut terms) && terms.len() <= MAX_TERMS {
            Score::Sum(terms)
        } else {
            let prog = Program::of(&e);
            Score::General(e, prog)
        }
    }
}

/// Registers a [`Program`] may use (each a column of up to 64 values in the
/// scan's scratch).
pub(crate) const MAX_REGS: usize = 4;

/// One step of a [`Program`]; `r` is a register.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Ins {
    /// `r = leaf`
    Load(u8, Leaf),
    /// `r = -r`
    Neg(u8),
    /// `r = r op (r + 1)`
    Bin(ArOp, u8),
    /// `r = r op c`, or `c op r` if the flag is set.
    BinK(ArOp, u8, f64, bool),
}

/// A `prefer` expression flattened into register steps: the tree walk of
/// [`NumExpr::eval_sel`] done once at compile time, with the same
/// operations in the same order on the same operands (so the scores are
/// bit-identical), and no per-block allocation or zeroing of temporaries.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Program {
    pub(crate) ins: Vec<Ins>,
}

impl Program {
    /// The program of `e`, or `None` if it needs more than [`MAX_REGS`]
    /// registers.
    pub(crate) fn of(e: &NumExpr) -> Option<Program> {
        let mut ins = Vec::new();
        emit(e, 0, &mut ins).then_some(Program { ins })
    }

    /// Runs the program for `n` selected rows (a multiple of [`LANES`]);
    /// the result is `regs[0][..n]`. `load` writes a leaf's values for the
    /// rows, a chunk of [`LANES`] at a time.
    #[inline(always)]
    pub(crate) fn run(
        &self,
        n: usize,
        regs: &mut [Reg; MAX_REGS],
        mut load: impl FnMut(Leaf, &mut [[f64; LANES]]),
    ) {
        let n = (n / LANES).min(CHUNKS);
        for ins in &self.ins {
            match *ins {
                Ins::Load(r, leaf) => load(leaf, &mut regs[r as usize % MAX_REGS][..n]),
                Ins::Neg(r) => chunks(&mut regs[r as usize % MAX_REGS], n, |o| *o = -*o),
                Ins::Bin(op, r) => {
                    let r = r as usize % (MAX_REGS - 1);
                    let (lo, hi) = regs.split_at_mut(r + 1);
                    let (out, ys) = (&mut lo[r][..n], &hi[0][..n]);
                    for (o, y) in out.iter_mut().zip(ys) {
                        let pairs = o.iter_mut().zip(y.iter());
                        match op {
                            ArOp::Add => pairs.for_each(|(o, y)| *o += *y),
                            ArOp::Sub => pairs.for_each(|(o, y)| *o -= *y),
                            ArOp::Mul => pairs.for_each(|(o, y)| *o *= *y),
                            ArOp::Div => pairs.for_each(|(o, y)| *o /= *y),
                        }
                    }
                }
                Ins::BinK(op, r, c, left) => {
                    let out = &mut regs[r as usize % MAX_REGS];
                    match (op, left) {
                        (ArOp::Add, _) => chunks(out, n, |o| *o += c),
                        (ArOp::Mul, _) => chunks(out, n, |o| *o *= c),
                        (ArOp::Sub, false) => chunks(out, n, |o| *o -= c),
                        (ArOp::Sub, true) => chunks(out, n, |o| *o = c - *o),
                        (ArOp::Div, false) => chunks(out, n, |o| *o /= c),
                        (ArOp::Div, true) => chunks(out, n, |o| *o = c / *o),
                    }
                }
            }
        }
    }
}

/// Rows scored together: selections are padded to a multiple of this, so
/// every loop over them has a fixed trip count (no vector prologue or
/// remainder per block for the handful of rows that pass).
pub(crate) const LANES: usize = 8;

/// Chunks of [`LANES`] in a block.
pub(crate) const CHUNKS: usize = BLOCK_ROWS / LANES;

/// A score register: up to 64 values, in chunks of [`LANES`].
pub(crate) type Reg = [[f64; LANES]; CHUNKS];

/// Applies `f` to the first `n` chunks of `x`.
#[inline(always)]
fn chunks(x: &mut Reg, n: usize, f: impl Fn(&mut f64)) {
    for c in &mut x[..n.min(CHUNKS)] {
        c.iter_mut().for_each(&f);
    }
}

/// Emits `e` into register `r` (and above); false if registers run out.
/// Mirrors [`NumExpr::eval_sel`] case by case.
fn emit(e: &NumExpr, r: usize, ins: &mut Vec<Ins>) -> bool {
    if r >= MAX_REGS {
        return false;
    }
    let reg = r as u8;
    match e {
        NumExpr::Const(c) => ins.push(Ins::Load(reg, Leaf::Const(*c))),
        NumExpr::Col(c) => ins.push(Ins::Load(reg, Leaf::Col(*c))),
        NumExpr::Label(k) => ins.push(Ins::Load(reg, Leaf::Label(*k))),
        NumExpr::Neg(a) => {
            if !emit(a, r, ins) {
                return false;
            }
            ins.push(Ins::Neg(reg));
        }
        NumExpr::Bin(op, a, b) => {
            if let NumExpr::Const(c) = **a {
                if !emit(b, r, ins) {
                    return false;
                }
                ins.push(Ins::BinK(*op, reg, c, true));
                return true;
            }
            if !emit(a, r, ins) {
                return false;
            }
            if let NumExpr::Const(c) = **b {
                ins.push(Ins::BinK(*op, reg, c, false));
                return true;
            }
            if r + 1 >= MAX_REGS || !emit(b, r + 1, ins) {
                return false;
            }
            ins.push(Ins::Bin(*op, reg));
        }
    }
    true
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

/// The scores of `n` selected rows (a multiple of [`LANES`]) by a
/// [`Score::Sum`], into `acc[..n]` (`x` is scratch). Column at a time: per
/// term, `load` gathers the leaf's values a chunk at a time, then one loop
/// combines them into the running sums. `a - c * x` is computed as
/// `a + x * (-c)`, and `a - x / c` as `a + x / (-c)`: negation is exact and
/// commutes with rounding, so the sums are the tree's, bit for bit.
#[inline(always)]
pub(crate) fn sum_sel(
    terms: &[Term],
    n: usize,
    acc: &mut Reg,
    x: &mut Reg,
    mut load: impl FnMut(Leaf, &mut [[f64; LANES]]),
) {
    let n = (n / LANES).min(CHUNKS);
    for (k, t) in terms.iter().enumerate() {
        let (w, div) = t.weight(k);
        let dst = if k == 0 { &mut *acc } else { &mut *x };
        load(t.leaf, &mut dst[..n]);
        match (k == 0, div) {
            (true, false) => chunks(acc, n, |a| *a *= w),
            (true, true) => chunks(acc, n, |a| *a /= w),
            (false, div) => {
                for (a, x) in acc[..n].iter_mut().zip(&x[..n]) {
                    let pairs = a.iter_mut().zip(x.iter());
                    if div {
                        pairs.for_each(|(a, x)| *a += x / w);
                    } else {
                        pairs.for_each(|(a, x)| *a += x * w);
                    }
                }
            }
        }
    }
}

/// Orders scores with NaN below everything, so the choice is total.
#[inline(always)]
pub(crate) fn key(score: f64) -> f64 {
    if score.is_nan() {
        f64::NEG_INFINITY
    } else {
        score
    }
}

/// The `f32` columns a [`Weights`] term reads (resolved per block without
/// a fallible lookup).
#[derive(Copy, Clone, Debug, PartialEq)]
enum F32Col {
    Load,
    IdlePower,
    Power,
}

/// A [`Score::Sum`] of the usual shape, every term an `f32` column times a
/// constant (`server.idle_power - 2 * server.load`): scored row by row,
/// keeping the best as it goes ([`Weights::top`]).
///
/// Why: a sampled match scores the handful of rows that pass in a block.
/// Scoring them a column at a time ([`sum_sel`]) selects the rows into a
/// vector, gathers each term's values into a register padded to eight
/// lanes, then scans the scores for the best; one pass over the passing
/// rows, with the columns resolved once per block and no dispatch per term,
/// does a third of the work. The operations are [`sum_sel`]'s in the same
/// order (`x * w` for the first term, then `acc + x * w`, with `w` negated
/// for a subtracted term), so the scores are bit-identical.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Weights {
    cols: [F32Col; MAX_TERMS],
    w: [f64; MAX_TERMS],
    len: usize,
}

impl Weights {
    /// The weights of `terms`, or `None` if some term is a constant, a
    /// label, an integer or reservation column, or a division.
    pub(crate) fn of(terms: &[Term]) -> Option<Weights> {
        if terms.is_empty() || terms.len() > MAX_TERMS {
            return None;
        }
        let mut ws = Weights {
            cols: [F32Col::Load; MAX_TERMS],
            w: [0.0; MAX_TERMS],
            len: terms.len(),
        };
        for (k, t) in terms.iter().enumerate() {
            let col = match t.leaf {
                Leaf::Col(Column::Load) => F32Col::Load,
                Leaf::Col(Column::IdlePower) => F32Col::IdlePower,
                Leaf::Col(Column::Power) => F32Col::Power,
                _ => return None,
            };
            let (w, div) = t.weight(k);
            if div {
                return None;
            }
            ws.cols[k] = col;
            ws.w[k] = w;
        }
        Some(ws)
    }

    /// The first row of `m` (not empty) with the highest score (NaN
    /// lowest; the first row of `m` if every score is NaN), the score, and
    /// how many rows `m` has (counted on the way: `count_ones` without the
    /// `popcnt` instruction, not in the x86_64 baseline, is a dozen more).
    #[inline(always)]
    pub(crate) fn top(&self, cols: &Cols<'_>, m: u64) -> (usize, f64, u32) {
        match self.len {
            1 => self.top_n::<1>(cols, m),
            2 => self.top_n::<2>(cols, m),
            3 => self.top_n::<3>(cols, m),
            4 => self.top_n::<4>(cols, m),
            5 => self.top_n::<5>(cols, m),
            _ => self.top_n::<MAX_TERMS>(cols, m),
        }
    }

    #[inline(always)]
    fn top_n<const N: usize>(&self, cols: &Cols<'_>, m: u64) -> (usize, f64, u32) {
        let x: [&[f32; BLOCK_ROWS]; N] = std::array::from_fn(|k| match self.cols[k % MAX_TERMS] {
            F32Col::Load => &cols.dynamic.load,
            F32Col::IdlePower => &cols.dynamic.idle_power,
            F32Col::Power => &cols.fixed.power,
        });
        let w: [f64; N] = std::array::from_fn(|k| self.w[k % MAX_TERMS]);
        let at = |i: usize| {
            let i = i % BLOCK_ROWS;
            let mut acc = f64::from(x[0][i]) * w[0];
            for k in 1..N {
                acc += f64::from(x[k][i]) * w[k];
            }
            acc
        };
        let mut bits = m;
        let first = bits.trailing_zeros() as usize;
        bits &= bits.wrapping_sub(1);
        let s0 = at(first);
        // `x > top` is false for a NaN `x`: NaN ranks lowest. Only the best
        // row and its score are tracked in the loop; the first row's score
        // is the answer's if no row beats it (NaN included).
        let (mut best, mut top) = (first, key(s0));
        let mut n = 1;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            n += 1;
            let x = at(i);
            if x > top {
                (best, top) = (i, x);
            }
        }
        let score = if best == first { s0 } else { top };
        (best % BLOCK_ROWS, score, n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `e` evaluated the plain way, a column's value from `v`.
    pub(crate) fn tree(e: &NumExpr, v: &dyn Fn(Column) -> f64) -> f64 {
        match e {
            NumExpr::Const(c) => *c,
            NumExpr::Col(c) => v(*c),
            NumExpr::Label(_) => f64::NAN,
            NumExpr::Neg(a) => -tree(a, v),
            NumExpr::Bin(op, a, b) => op.apply(tree(a, v), tree(b, v)),
        }
    }

    /// A xorshift stream from `seed` (not 0).
    pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut r = seed;
        move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        }
    }

    /// Column cells with extreme values (the first two equal, for ties):
    /// signed zeros, huge and tiny numbers, infinities, NaN.
    pub(crate) const CELLS: [f32; 11] = [
        0.0,
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

    /// Term weights of both signs, zero, huge and tiny.
    pub(crate) const SCALES: [f64; 7] = [1.0, -1.0, 2.0, -0.5, 0.0, 3.0e10, 1e-300];

    /// Pools for the two column groups of test blocks.
    pub(crate) fn group_pools() -> (
        std::sync::Arc<crate::table::arena::Pool<crate::table::block::Dynamic>>,
        std::sync::Arc<crate::table::arena::Pool<crate::table::block::Fixed>>,
    ) {
        let arena = crate::table::arena::Arena::new(0);
        (
            crate::table::arena::Pool::new(&arena),
            crate::table::arena::Pool::new(&arena),
        )
    }

    pub(crate) fn col(c: Column) -> Box<NumExpr> {
        Box::new(NumExpr::Col(c))
    }
    pub(crate) fn k(c: f64) -> Box<NumExpr> {
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

    /// A random expression over `cols`, at most `depth` operators deep.
    pub(crate) fn gen_expr(next: &mut dyn FnMut() -> u64, depth: u32, cols: &[Column]) -> NumExpr {
        let pick = next() % if depth == 0 { 3 } else { 7 };
        match pick {
            0 => NumExpr::Const([2.0, -0.5, 0.0, 1e-300][(next() % 4) as usize]),
            1 | 2 => NumExpr::Col(cols[(next() % cols.len() as u64) as usize]),
            3 => NumExpr::Neg(Box::new(gen_expr(next, depth - 1, cols))),
            _ => NumExpr::Bin(
                [ArOp::Add, ArOp::Sub, ArOp::Mul, ArOp::Div][(next() % 4) as usize],
                Box::new(gen_expr(next, depth - 1, cols)),
                Box::new(gen_expr(next, depth - 1, cols)),
            ),
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
        assert!(matches!(Score::new(e), Score::General(..)));
        // 3 * (a + b)
        let e = NumExpr::Bin(
            ArOp::Mul,
            k(3.0),
            Box::new(NumExpr::Bin(ArOp::Add, col(Column::Load), col(Column::Mem))),
        );
        assert!(matches!(Score::new(e), Score::General(..)));
        // a * b
        let e = NumExpr::Bin(ArOp::Mul, col(Column::Load), col(Column::Mem));
        assert!(matches!(Score::new(e), Score::General(..)));
        let e = NumExpr::Neg(col(Column::Load));
        assert!(matches!(Score::new(e), Score::General(..)));
    }

    /// A program computes what the tree computes, bit for bit, on values
    /// with NaN, infinities and signed zeros; deep trees are refused.
    #[test]
    fn programs_agree_with_the_tree() {
        let cols = [Column::Load, Column::IdlePower, Column::Power];
        let pool = [0.0, -0.0, 1.5, -2.25, 1e300, f64::INFINITY, f64::NAN, 3.0];
        let mut next = xorshift(0x51_7cc1_b727_220a);
        let (mut ran, mut refused) = (0, 0);
        for _ in 0..if cfg!(miri) { 20 } else { 2000 } {
            let e = gen_expr(&mut next, 4, &cols);
            let Some(prog) = Program::of(&e) else {
                refused += 1;
                continue;
            };
            ran += 1;
            // 16 rows (two chunks): row j has column c = pool[(j + 3c) % 8].
            let val = |c: Column, j: usize| {
                let k = cols.iter().position(|&x| x == c).unwrap_or(0);
                pool[(j + 3 * k) % pool.len()]
            };
            let mut regs = [[[0.0; LANES]; CHUNKS]; MAX_REGS];
            prog.run(16, &mut regs, |leaf, out| {
                for (ci, chunk) in out.iter_mut().enumerate() {
                    for (l, o) in chunk.iter_mut().enumerate() {
                        *o = match leaf {
                            Leaf::Const(c) => c,
                            Leaf::Col(c) => val(c, ci * LANES + l),
                            Leaf::Label(_) => f64::NAN,
                        };
                    }
                }
            });
            for (j, got) in regs[0].iter().flatten().take(16).enumerate() {
                let want = tree(&e, &|c| val(c, j));
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{e:?} row {j}: {got} vs {want}"
                );
            }
        }
        // Most random trees fit the registers (20 are drawn under Miri).
        assert!(
            ran > if cfg!(miri) { 10 } else { 100 },
            "{ran} programs ran, {refused} refused"
        );
    }

    /// Row-at-a-time scoring picks the row and score the column-at-a-time
    /// sum does (bit for bit, first row on ties, NaN lowest), over columns
    /// with NaN, infinities, signed zeros and extreme weights; shapes it
    /// cannot score are left to the general path.
    #[test]
    fn weights_pick_what_the_column_sum_picks() {
        use crate::table::block::{Block, Cols, Dynamic, Fixed};
        let (pool, scales) = (CELLS, SCALES);
        let cols3 = [Column::Load, Column::IdlePower, Column::Power];
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let g = crossbeam_epoch::pin();
        let (dp, fp) = group_pools();
        let (mut nan_rows, mut ties) = (0, 0);
        for _ in 0..if cfg!(miri) { 3 } else { 500 } {
            let block = Block::new(&dp, &fp);
            let (mut d, mut f) = (Dynamic::default(), Fixed::default());
            // A narrow pool some rounds, so equal scores (ties) happen.
            let spread = if next() % 2 == 0 { pool.len() } else { 2 };
            for i in 0..BLOCK_ROWS {
                let mut cell = || pool[(next() % spread as u64) as usize];
                (d.load[i], d.idle_power[i], f.power[i]) = (cell(), cell(), cell());
            }
            block.dynamic.store(Some(d), &dp, &g);
            block.fixed.store(Some(f), &fp, &g);
            let cols = Cols::of(&block, &g);
            // A chain of 1-4 terms, each `c * col`, `col * c` or `col`.
            let mut e = NumExpr::Col(cols3[(next() % 3) as usize]);
            for _ in 0..next() % 4 {
                let c = col(cols3[(next() % 3) as usize]);
                let w = k(scales[(next() % scales.len() as u64) as usize]);
                let t = match next() % 3 {
                    0 => NumExpr::Bin(ArOp::Mul, w, c),
                    1 => NumExpr::Bin(ArOp::Mul, c, w),
                    _ => *c,
                };
                let op = [ArOp::Add, ArOp::Sub][(next() % 2) as usize];
                e = NumExpr::Bin(op, Box::new(e), Box::new(t));
            }
            let Score::Sum(terms) = Score::new(e.clone()) else {
                panic!("not a sum: {e:?}")
            };
            let ws = Weights::of(&terms).expect("weighted f32 columns");
            let m = next() | 1;
            let (got_i, got, n) = ws.top(&cols, m);
            assert_eq!(n, m.count_ones());
            // The reference: every row of `m` by the tree, first highest.
            let mut want: Option<(usize, f64)> = None;
            for i in (0..BLOCK_ROWS).filter(|i| m >> i & 1 == 1) {
                let x = tree(&e, &|c| cols.value(c, i));
                nan_rows += usize::from(x.is_nan());
                match want {
                    Some((_, w)) if key(x) == key(w) => ties += 1,
                    Some((_, w)) if key(x) < key(w) => {}
                    Some(_) if x.is_nan() => {}
                    _ => want = Some((i, x)),
                }
            }
            let (want_i, want) = want.expect("m is not empty");
            assert_eq!(got_i, want_i, "{e:?}");
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{e:?}: {got} vs {want}"
            );
        }
        assert!(nan_rows > 0 && ties > 0, "{nan_rows} NaN rows, {ties} ties");
        // Division, constants, labels and integer columns take the general path.
        for e in [
            NumExpr::Bin(ArOp::Div, col(Column::Load), k(2.0)),
            NumExpr::Bin(ArOp::Add, col(Column::Load), k(1.0)),
            NumExpr::Label(0),
            NumExpr::Col(Column::Mem),
            NumExpr::Col(Column::SlotsFree),
        ] {
            let Score::Sum(terms) = Score::new(e.clone()) else {
                panic!("not a sum: {e:?}")
            };
            assert!(Weights::of(&terms).is_none(), "{e:?}");
        }
    }
}
