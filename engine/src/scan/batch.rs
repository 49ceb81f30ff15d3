//! Exact-scan scoring in batches that span blocks.
//!
//! Why: an exact scan whose `prefer` is not a sum of weighted `f32`
//! columns (those are scored row by row, [`crate::scan::score::Weights`])
//! would score each block's passing rows on their own: select them, pad to
//! eight lanes, run the program one step at a time, find the best. With a
//! selective query that is a handful of rows per 64-row block, and most of
//! the cost is the fixed cost of the steps. A [`Batch`]
//! gathers the passing rows of consecutive blocks of a shard (each leaf's
//! values copied as the block is read, while its lines are in cache) and
//! scores up to [`BATCH`] of them in one run of the same program, so that
//! fixed cost is paid once per ten blocks or so, and the best of the batch
//! is looked for only when it can beat the best so far.
//!
//! The scores are the per-block path's, bit for bit: the same program or
//! sum, the same operations in the same order on the same values; only
//! which rows share a run changes, and rows never interact.

use crate::scan::score::{key, sum_sel, Ins, Leaf, Program, Reg, Score, Term, LANES, MAX_REGS};
use crate::schema::BLOCK_ROWS;

/// Most rows a batch holds: one block's worth, so a block always fits in
/// an empty batch.
pub(crate) const BATCH: usize = BLOCK_ROWS;

/// Most distinct leaves (columns and labels) a batched `prefer` reads; a
/// `prefer` with more is scored block by block.
pub(crate) const MAX_LEAVES: usize = 6;

/// The distinct column and label leaves of a `prefer`, in first-read
/// order: the values a batch gathers per row.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Leaves {
    list: [Leaf; MAX_LEAVES],
    len: usize,
}

impl Leaves {
    /// The leaves of `prefer` if it can be scored in batches: a sum or a
    /// register program, over at most [`MAX_LEAVES`] distinct leaves.
    pub(crate) fn of(prefer: &Score) -> Option<Leaves> {
        let mut ls = Leaves {
            list: [Leaf::Const(0.0); MAX_LEAVES],
            len: 0,
        };
        let mut add = |l: Leaf| -> bool {
            if matches!(l, Leaf::Const(_)) || ls.list[..ls.len].contains(&l) {
                return true;
            }
            if ls.len == MAX_LEAVES {
                return false;
            }
            ls.list[ls.len] = l;
            ls.len += 1;
            true
        };
        let fits = match prefer {
            Score::Sum(terms) => terms.iter().all(|t| add(t.leaf)),
            Score::General(_, Some(prog)) => prog.ins.iter().all(|i| match *i {
                Ins::Load(_, l) => add(l),
                _ => true,
            }),
            Score::General(_, None) => false,
        };
        fits.then_some(ls)
    }

    /// The leaves, in order.
    #[inline(always)]
    pub(crate) fn list(&self) -> &[Leaf] {
        &self.list[..self.len.min(MAX_LEAVES)]
    }

    #[inline(always)]
    fn index(&self, l: Leaf) -> Option<usize> {
        self.list().iter().position(|&x| x == l)
    }
}

/// How a batch is scored: `prefer` as a sum or as a register program.
#[derive(Copy, Clone)]
pub(crate) enum Scorer<'q> {
    Sum(&'q [Term]),
    Prog(&'q Program),
}

impl<'q> Scorer<'q> {
    /// The scorer of `prefer`, if it has one (a tree too deep for the
    /// registers does not, and is scored block by block).
    pub(crate) fn of(prefer: &'q Score) -> Option<Scorer<'q>> {
        match prefer {
            Score::Sum(terms) => Some(Scorer::Sum(terms)),
            Score::General(_, Some(p)) => Some(Scorer::Prog(p)),
            Score::General(_, None) => None,
        }
    }
}

/// Rows waiting to be scored, from consecutive blocks of one shard, in scan
/// order (so, in id order), with the values of each leaf. Fixed size (a
/// part of the per-thread scratch): 3.3 KiB.
pub(crate) struct Batch {
    /// Shard-local row numbers (`block * 64 + row`).
    rows: [u32; BATCH],
    /// Per leaf of the [`Leaves`], the value of each row.
    pub(crate) vals: [Reg; MAX_LEAVES],
    len: usize,
}

impl Batch {
    pub(crate) const fn new() -> Batch {
        Batch {
            rows: [0; BATCH],
            vals: [[[0.0; LANES]; BLOCK_ROWS / LANES]; MAX_LEAVES],
            len: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether the rows of `m` fit (else score the batch first: an empty
    /// batch takes any block).
    #[inline(always)]
    pub(crate) fn has_room(&self, m: u64) -> bool {
        self.len + m.count_ones() as usize <= BATCH
    }

    /// Appends the rows of `m` in block `b`; `gather(leaf, rows, out)`
    /// writes the values of `leaf` in block rows `rows` (each `& 63`) to
    /// `out`. The caller checked [`Batch::has_room`].
    #[inline(always)]
    pub(crate) fn push(
        &mut self,
        b: usize,
        m: u64,
        leaves: &Leaves,
        mut gather: impl FnMut(Leaf, &[u32], &mut [f64]),
    ) {
        let at = self.len.min(BATCH);
        let base = (b * BLOCK_ROWS) as u32;
        let mut n = at;
        let mut bits = m;
        while bits != 0 {
            self.rows[n % BATCH] = base | bits.trailing_zeros();
            bits &= bits - 1;
            n += 1;
        }
        let n = n.min(BATCH);
        let rows = &self.rows[at..n];
        for (&leaf, v) in leaves.list().iter().zip(&mut self.vals) {
            gather(leaf, rows, &mut v.as_flattened_mut()[at..n]);
        }
        self.len = n;
    }

    /// The block and row of entry `j`.
    #[inline(always)]
    pub(crate) fn row(&self, j: usize) -> (usize, usize) {
        let r = self.rows[j % BATCH] as usize;
        (r / BLOCK_ROWS, r % BLOCK_ROWS)
    }

    /// Scores the batch into `regs[0]` (entries `len..` of the last chunk
    /// are set to `-inf`, so they never rank above a real row), and
    /// returns the highest key ([`key`]: NaN lowest) of any entry.
    #[inline]
    pub(crate) fn score(&self, s: Scorer<'_>, leaves: &Leaves, regs: &mut [Reg; MAX_REGS]) -> f64 {
        let n = self.len.min(BATCH);
        let n8 = n.next_multiple_of(LANES);
        let load = |leaf: Leaf, out: &mut [[f64; LANES]]| match leaf {
            Leaf::Const(c) => out.fill([c; LANES]),
            _ => match leaves.index(leaf).and_then(|k| self.vals.get(k)) {
                Some(v) => out.copy_from_slice(&v[..out.len()]),
                None => out.fill([f64::NAN; LANES]),
            },
        };
        match s {
            Scorer::Sum(terms) => {
                let [acc, x, ..] = regs;
                sum_sel(terms, n8, acc, x, load);
            }
            Scorer::Prog(p) => p.run(n8, regs, load),
        }
        let scores = regs[0].as_flattened_mut();
        scores[n..n8].fill(f64::NEG_INFINITY);
        let mut top = [f64::NEG_INFINITY; LANES];
        for c in regs[0][..n8 / LANES].iter() {
            for (t, &x) in top.iter_mut().zip(c) {
                let k = key(x);
                *t = if k > *t { k } else { *t };
            }
        }
        top.into_iter().fold(f64::NEG_INFINITY, f64::max)
    }

    /// The first entry of `alive` (entries `0..len`, not empty) with the
    /// highest key among them, the first of `alive` if every key is `-inf`.
    #[inline]
    pub(crate) fn best_of(scores: &Reg, alive: u64) -> usize {
        let s = scores.as_flattened();
        let mut bits = alive;
        let mut at = bits.trailing_zeros() as usize % BATCH;
        let mut top = key(s[at]);
        bits &= bits.wrapping_sub(1);
        while bits != 0 {
            let j = bits.trailing_zeros() as usize % BATCH;
            bits &= bits - 1;
            let k = key(s[j]);
            if k > top {
                (at, top) = (j, k);
            }
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(xs: &[f64]) -> Reg {
        let mut r = [[f64::NEG_INFINITY; LANES]; BLOCK_ROWS / LANES];
        for (o, &x) in r.as_flattened_mut().iter_mut().zip(xs) {
            *o = x;
        }
        r
    }

    /// The batch's choice is the per-block scan's: highest score, the
    /// first entry (lowest id) on a tie, NaN below everything, entries
    /// already found short of capacity skipped.
    #[test]
    fn best_of_takes_the_first_highest_live_entry() {
        let s = reg(&[1.0, f64::NAN, 3.0, 2.0, 3.0, f64::INFINITY]);
        assert_eq!(Batch::best_of(&s, 0b11111), 2, "first of the tied 3.0s");
        assert_eq!(Batch::best_of(&s, 0b111111), 5, "+inf beats them");
        assert_eq!(Batch::best_of(&s, 0b11011), 4, "entry 2 is dead");
        assert_eq!(Batch::best_of(&s, 0b00011), 0, "NaN ranks below 1.0");
        let nan = reg(&[f64::NAN, f64::NAN, f64::NAN]);
        assert_eq!(Batch::best_of(&nan, 0b110), 1, "all NaN: the first live");
    }

    /// Leaves are listed once each, constants are not gathered, and a
    /// `prefer` reading more distinct leaves than a batch holds is scored
    /// block by block.
    #[test]
    fn leaves_are_distinct_and_bounded() {
        use crate::expr::op::ArOp;
        use crate::expr::pred::NumExpr;
        use crate::schema::Column::{self, *};
        let col = |c: Column| Box::new(NumExpr::Col(c));
        let bin = |op, a, b| Box::new(NumExpr::Bin(op, a, b));
        let leaves = |e: Box<NumExpr>| Leaves::of(&Score::new(*e)).map(|l| l.list().to_vec());
        // power * cores - power / 2: a program over two leaves.
        let e = bin(
            ArOp::Sub,
            bin(ArOp::Mul, col(Power), col(Cores)),
            bin(ArOp::Div, col(Power), Box::new(NumExpr::Const(2.0))),
        );
        assert_eq!(leaves(e), Some(vec![Leaf::Col(Power), Leaf::Col(Cores)]));
        assert_eq!(leaves(Box::new(NumExpr::Const(3.0))), Some(vec![]));
        // Seven distinct columns multiplied together: more than a batch holds.
        let cols = [Power, Cores, Slots, Mem, Load, IdlePower, MemFree];
        let e = cols[1..]
            .iter()
            .fold(col(cols[0]), |acc, &c| bin(ArOp::Mul, acc, col(c)));
        assert_eq!(leaves(e), None);
    }
}
