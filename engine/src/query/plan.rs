//! The scan's compiled plan of a query: the clause tree flattened once, at
//! compile time, into what a block needs.
//!
//! * The `server is up` and `app` clauses become the starting mask
//!   (`live & up & app`), the app's mask words resolved once per shard
//!   ([`ShardPlan`]) instead of through the shard's app table per block.
//! * The other plain clauses of the usual shapes become [`Op`]s: a string
//!   label compared with a constant, an `f32`, `u32` or `u64` column against
//!   a constant. Each is one SIMD kernel over the block with its operands
//!   resolved (label directories once per shard); anything else keeps its
//!   [`Pred`] and is evaluated with [`Pred::eval`].
//! * The clauses over the reservation atomics of the form `x >= c` (the
//!   task's demand, and the like in `require`) are fused into one test per
//!   row ([`CapTest`]): one 16-byte cell, three compares.
//! * `prefer` runs over the selected rows with the scratch of the match
//!   ([`Scratch`], per thread) instead of per-block temporaries.
//!
//! Evaluation order does not change a result: every clause is a pure
//! function of the row, and they are AND-ed.

use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crossbeam_epoch::Guard;

use crate::expr::op::CmpOp;
use crate::expr::pred::Pred;
use crate::query::Clause;
use crate::scan::batch::{Batch, Leaves};
use crate::scan::eval::View;
use crate::scan::score::{key, sum_sel, Leaf, Reg, Score, Weights, CHUNKS, LANES, MAX_REGS};
use crate::scan::simd;
use crate::schema::{Column, BLOCK_ROWS};
use crate::table::block::{label, Block, Cap, Code, Cols, LabelCells, CODE_NONE};
use crate::table::rcu::Rcu;
use crate::table::Shard;

/// Label keys a plan resolves per shard; clauses over more keys than this
/// are evaluated through their [`Pred`].
pub(crate) const MAX_KEYS: usize = 4;

/// One plain clause, operands resolved.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// `label == "s"`: key slot `k` of the plan's keys.
    LabelEq { k: usize, id: u32 },
    /// `label != "s"` (where the label is a string).
    LabelStrNe { k: usize, id: u32 },
    /// `col op c` on an `f32` column (`Load`, `IdlePower`, `Power`).
    F32 { col: Column, op: CmpOp, c: f32 },
    /// `lo <= col <= lo + span` (or not) on `Slots` or `Cores`.
    U32 {
        col: Column,
        lo: u32,
        span: u32,
        negate: bool,
    },
    /// `lo <= mem <= lo + span` (or not).
    Mem { lo: u64, span: u64, negate: bool },
    /// Any other clause: `Pred::eval` of clause `c`.
    Clause(usize),
}

/// The fused capacity clauses: a row passes if its free slots, cores and
/// memory are at least these.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub(crate) struct CapTest {
    pub(crate) slots: u32,
    pub(crate) cores: u32,
    pub(crate) mem: u64,
}

impl CapTest {
    #[inline(always)]
    fn is_trivial(&self) -> bool {
        self.slots == 0 && self.cores == 0 && self.mem == 0
    }

    #[inline(always)]
    pub(crate) fn row(&self, c: &Cap) -> bool {
        c.slots_free.load(Relaxed) >= self.slots
            && c.cores_free.load(Relaxed) >= self.cores
            && c.mem_free.load(Relaxed) >= self.mem
    }
}

/// A query's plan (built by [`Plan::new`] when the query is compiled).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// The `server is up` clause is present.
    pub(crate) up: bool,
    /// The app the first `app` clause asks for.
    pub(crate) app: Option<u32>,
    /// Label keys the ops (and `prefer`) read, resolved per shard.
    pub(crate) keys: Vec<u32>,
    pub(crate) ops: Vec<Op>,
    pub(crate) cap: CapTest,
    /// Capacity clauses of other shapes (clause indices): `Pred::filter`.
    pub(crate) sparse: Vec<usize>,
    /// `prefer` as weighted `f32` columns, when it is such a sum.
    pub(crate) weights: Option<Weights>,
    /// Otherwise, what the exact scan gathers to score `prefer` in
    /// batches spanning blocks, if it can ([`Batch`]).
    pub(crate) leaves: Option<Leaves>,
}

impl Plan {
    /// Whether some clause reads the reservation cells (free slots, cores
    /// or memory).
    #[inline]
    pub(crate) fn has_capacity_clauses(&self) -> bool {
        !self.cap.is_trivial() || !self.sparse.is_empty()
    }

    pub(crate) fn new(clauses: &[Clause], prefer: &Score) -> Plan {
        let mut p = Plan::default();
        let key = |keys: &mut Vec<u32>, k: u32| -> Option<usize> {
            if let Some(i) = keys.iter().position(|&x| x == k) {
                return Some(i);
            }
            (keys.len() < MAX_KEYS).then(|| {
                keys.push(k);
                keys.len() - 1
            })
        };
        for (c, cl) in clauses.iter().enumerate() {
            let op = match cl.pred {
                Pred::Const(true) => continue,
                Pred::Up => {
                    p.up = true;
                    continue;
                }
                Pred::HasApp(a) if p.app.is_none() => {
                    p.app = Some(a);
                    continue;
                }
                Pred::Range32 {
                    col: col @ (Column::SlotsFree | Column::CoresFree),
                    lo,
                    hi: u32::MAX,
                    negate: false,
                } => {
                    let t = if col == Column::SlotsFree {
                        &mut p.cap.slots
                    } else {
                        &mut p.cap.cores
                    };
                    *t = (*t).max(lo);
                    continue;
                }
                Pred::Range64 {
                    col: Column::MemFree,
                    lo,
                    hi: u64::MAX,
                    negate: false,
                } => {
                    p.cap.mem = p.cap.mem.max(lo);
                    continue;
                }
                _ if cl.pred.reads_capacity() => {
                    p.sparse.push(c);
                    continue;
                }
                Pred::LabelStr { key: k, id, eq } => match key(&mut p.keys, k) {
                    Some(k) if eq => Op::LabelEq { k, id },
                    Some(k) => Op::LabelStrNe { k, id },
                    None => Op::Clause(c),
                },
                Pred::F32 { col, op, c }
                    if matches!(col, Column::Load | Column::IdlePower | Column::Power) =>
                {
                    Op::F32 { col, op, c }
                }
                Pred::Range32 {
                    col: col @ (Column::Slots | Column::Cores),
                    lo,
                    hi,
                    negate,
                } => Op::U32 {
                    col,
                    lo,
                    span: hi.wrapping_sub(lo),
                    negate,
                },
                Pred::Range64 {
                    col: Column::Mem,
                    lo,
                    hi,
                    negate,
                } => Op::Mem {
                    lo,
                    span: hi.wrapping_sub(lo),
                    negate,
                },
                _ => Op::Clause(c),
            };
            p.ops.push(op);
        }
        // Labels `prefer` reads, resolved too while there is room.
        let mut leaf = |l: &Leaf| {
            if let Leaf::Label(k) = l {
                let _ = key(&mut p.keys, *k);
            }
        };
        match prefer {
            Score::Sum(terms) => {
                terms.iter().for_each(|t| leaf(&t.leaf));
                p.weights = Weights::of(terms);
            }
            Score::General(_, Some(prog)) => prog.ins.iter().for_each(|i| {
                if let crate::scan::score::Ins::Load(_, l) = i {
                    leaf(l)
                }
            }),
            Score::General(_, None) => {}
        }
        if p.weights.is_none() {
            p.leaves = Leaves::of(prefer);
        }
        p
    }

    /// The plan's operands in `shard`, or `None` if no row of the shard can
    /// pass (the shard never had the app).
    #[inline]
    pub(crate) fn shard<'a>(&self, shard: &'a Shard) -> Option<ShardPlan<'a>> {
        let apps = match self.app {
            Some(a) => Some(shard.app_words(a)?),
            None => None,
        };
        let mut labels = [None; MAX_KEYS];
        for (l, &k) in labels.iter_mut().zip(&self.keys) {
            *l = shard.label_dir(k);
        }
        Some(ShardPlan {
            shard,
            apps,
            labels,
        })
    }
}

/// A plan's operands resolved in one shard.
#[derive(Copy, Clone)]
pub(crate) struct ShardPlan<'a> {
    pub(crate) shard: &'a Shard,
    apps: Option<&'a [AtomicU64]>,
    labels: [Option<&'a [Rcu<LabelCells>]>; MAX_KEYS],
}

impl<'a> ShardPlan<'a> {
    /// The app's rows of block `b` (all rows if the plan has no app).
    #[inline(always)]
    pub(crate) fn app_word(&self, b: usize) -> u64 {
        match self.apps {
            Some(w) => w.get(b).map_or(0, |w| w.load(Acquire)),
            None => u64::MAX,
        }
    }

    /// The directory slot of key slot `k` in block `b`.
    #[inline(always)]
    pub(crate) fn label_slot(&self, k: usize, b: usize) -> Option<&'a Rcu<LabelCells>> {
        self.labels.get(k).copied().flatten()?.get(b)
    }

    /// The cells of key slot `k` in block `b`.
    #[inline(always)]
    fn cells(&self, k: usize, b: usize, guard: &'a Guard) -> Option<&'a LabelCells> {
        self.label_slot(k, b)?.get(guard)
    }

    /// The label directory slots of block `b`, for prefetching.
    #[inline(always)]
    pub(crate) fn label_slots(&self, b: usize) -> impl Iterator<Item = &'a Rcu<LabelCells>> + '_ {
        self.labels
            .iter()
            .filter_map(move |d| d.and_then(|d| d.get(b)))
    }
}

/// One block as the plan evaluates it.
pub(crate) struct BlockPlan<'a> {
    pub(crate) sp: &'a ShardPlan<'a>,
    pub(crate) block: &'a Block,
    pub(crate) cols: Cols<'a>,
    pub(crate) b: usize,
    pub(crate) guard: &'a Guard,
}

impl<'a> BlockPlan<'a> {
    #[inline(always)]
    pub(crate) fn new(
        sp: &'a ShardPlan<'a>,
        block: &'a Block,
        b: usize,
        guard: &'a Guard,
    ) -> BlockPlan<'a> {
        BlockPlan {
            sp,
            block,
            cols: Cols::of(block, guard),
            b,
            guard,
        }
    }

    #[inline(always)]
    fn view(&self) -> View<'a> {
        View {
            shard: self.sp.shard,
            cols: self.cols,
            b: self.b,
            guard: self.guard,
        }
    }

    /// The rows of the block that are live, up and have the app.
    #[inline(always)]
    pub(crate) fn start(&self, plan: &Plan) -> u64 {
        let mut m = self.sp.app_word(self.b) & self.block.live.load(Acquire);
        if plan.up {
            m &= self.block.up.load(Acquire);
        }
        m
    }

    /// The rows of `m` passing the plain clauses.
    #[inline(always)]
    pub(crate) fn plain(&self, plan: &Plan, clauses: &[Clause], mut m: u64) -> u64 {
        for op in &plan.ops {
            if m == 0 {
                return 0;
            }
            m &= match *op {
                Op::LabelEq { k, id } => match self.sp.cells(k, self.b, self.guard) {
                    Some(c) => match c.code_of(id) {
                        Code::Is(x) => simd::eq_u8(&c.codes, x),
                        Code::Absent => 0,
                        Code::Ids => simd::eq_u32(&c.ids, id),
                    },
                    None => 0,
                },
                Op::LabelStrNe { k, id } => match self.sp.cells(k, self.b, self.guard) {
                    // A string (a code), and not this one.
                    Some(c) => match c.code_of(id) {
                        Code::Is(x) => {
                            !(simd::eq_u8(&c.codes, x) | simd::eq_u8(&c.codes, CODE_NONE))
                        }
                        Code::Absent => !simd::eq_u8(&c.codes, CODE_NONE),
                        Code::Ids => simd::le_and_ne_u32(&c.ids, label::MAX_STR32, id),
                    },
                    None => 0,
                },
                Op::F32 { col, op, c } => match self.cols.f32s(col) {
                    Some(x) => simd::cmp_f32(x, op, c),
                    None => 0,
                },
                Op::U32 {
                    col,
                    lo,
                    span,
                    negate,
                } => match self.cols.u32s(col) {
                    Some(x) => simd::range_u32(x, lo, span) ^ if negate { u64::MAX } else { 0 },
                    None => 0,
                },
                Op::Mem { lo, span, negate } => {
                    let x = &self.cols.fixed.mem;
                    crate::table::block::mask_of(x, |v| v.wrapping_sub(lo) <= span)
                        ^ if negate { u64::MAX } else { 0 }
                }
                Op::Clause(c) => clauses.get(c).map_or(0, |cl| cl.pred.eval(&self.view())),
            };
        }
        m
    }

    /// Whether row `i` passes the capacity clauses (fused and others).
    #[inline(always)]
    pub(crate) fn cap_row(&self, plan: &Plan, clauses: &[Clause], i: usize) -> bool {
        let i = i % BLOCK_ROWS;
        plan.cap.row(&self.block.cap[i])
            && (plan.sparse.is_empty() || {
                let v = self.view();
                plan.sparse
                    .iter()
                    .all(|&c| clauses.get(c).is_some_and(|cl| cl.pred.eval_row(&v, i)))
            })
    }

    /// The rows of `m` passing the capacity clauses.
    #[inline]
    pub(crate) fn cap(&self, plan: &Plan, clauses: &[Clause], mut m: u64) -> u64 {
        if !plan.cap.is_trivial() {
            let cap = &self.block.cap;
            let mut bits = m;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if !plan.cap.row(&cap[i % BLOCK_ROWS]) {
                    m &= !(1u64 << i);
                }
            }
        }
        if !plan.sparse.is_empty() && m != 0 {
            let v = self.view();
            for &c in &plan.sparse {
                if let Some(cl) = clauses.get(c) {
                    m = cl.pred.filter(&v, m);
                }
            }
        }
        m
    }

    /// Whether row `i` passes every clause of the plan (the scalar twin of
    /// `start`, `plain` and `cap`, for re-checking a chosen row).
    pub(crate) fn row(&self, plan: &Plan, clauses: &[Clause], i: usize) -> bool {
        let i = i % BLOCK_ROWS;
        let bit = 1u64 << i;
        if self.start(plan) & bit == 0 {
            return false;
        }
        let v = self.view();
        let ok = plan.ops.iter().all(|op| match *op {
            Op::LabelEq { k, id } => self
                .sp
                .cells(k, self.b, self.guard)
                .is_some_and(|c| c.ids[i] == id),
            Op::LabelStrNe { k, id } => self
                .sp
                .cells(k, self.b, self.guard)
                .is_some_and(|c| c.ids[i] <= label::MAX_STR32 && c.ids[i] != id),
            Op::F32 { col, op, c } => {
                let x = self.cols.f32s(col).map_or(f32::NAN, |x| x[i]);
                match op {
                    CmpOp::Eq => x == c,
                    CmpOp::Ne => x != c && !x.is_nan(),
                    CmpOp::Lt => x < c,
                    CmpOp::Le => x <= c,
                    CmpOp::Gt => x > c,
                    CmpOp::Ge => x >= c,
                }
            }
            Op::U32 {
                col,
                lo,
                span,
                negate,
            } => self
                .cols
                .u32s(col)
                .is_some_and(|x| (x[i].wrapping_sub(lo) <= span) != negate),
            Op::Mem { lo, span, negate } => {
                (self.cols.fixed.mem[i].wrapping_sub(lo) <= span) != negate
            }
            Op::Clause(c) => clauses.get(c).is_some_and(|cl| cl.pred.eval_row(&v, i)),
        });
        ok && self.cap_row(plan, clauses, i)
    }

    /// The first row of `m` (not empty) with the highest `prefer` score
    /// (NaN lowest; the first row of `m` if every score is NaN), the score,
    /// and how many rows `m` has. A sum of weighted `f32` columns is scored
    /// row by row ([`Weights`]); anything else a column at a time over the
    /// selection.
    #[inline(always)]
    pub(crate) fn top(
        &self,
        plan: &Plan,
        prefer: &Score,
        m: u64,
        sc: &mut Scratch,
    ) -> (usize, f64, u32) {
        if let Some(ws) = &plan.weights {
            return ws.top(&self.cols, m);
        }
        let n = sc.select(m);
        self.score(prefer, &plan.keys, n, sc);
        let (mut j, mut top) = (0, f64::NEG_INFINITY);
        for (t, &x) in sc.scores(n).iter().enumerate() {
            let k = key(x);
            if k > top {
                (j, top) = (t, k);
            }
        }
        (sc.row(j), sc.score(j), n as u32)
    }

    /// Where the values of `leaf` come from in this block (the column or
    /// label cells resolved once, not per row).
    #[inline(always)]
    fn source(&self, leaf: Leaf, keys: &[u32]) -> Source<'a> {
        match leaf {
            Leaf::Const(c) => Source::Const(c),
            Leaf::Label(key) => {
                let cells = match keys.iter().position(|&k| k == key) {
                    Some(k) => self.sp.cells(k, self.b, self.guard),
                    None => self.sp.shard.label_cells(key, self.b, self.guard),
                };
                cells.map_or(Source::Const(f64::NAN), Source::Label)
            }
            Leaf::Col(c) => {
                if let Some(col) = self.cols.f32s(c) {
                    Source::F32(col)
                } else if let Some(col) = self.cols.u32s(c) {
                    Source::U32(col)
                } else {
                    Source::Other(c)
                }
            }
        }
    }

    /// The range of the numbers label `key` holds in this block (`(inf,
    /// -inf)` when it holds none), for bounding a `prefer` that reads it.
    #[inline]
    pub(crate) fn label_range(&self, key: u32, keys: &[u32]) -> (f64, f64) {
        match self.source(Leaf::Label(key), keys) {
            Source::Label(cells) => cells.num_range,
            _ => (f64::INFINITY, f64::NEG_INFINITY),
        }
    }

    /// Calls `put(j, v)` with the value `v` of `src` in each row `rows(j)`.
    #[inline(always)]
    fn each(
        &self,
        src: Source<'_>,
        rows: impl Iterator<Item = (usize, usize)>,
        mut put: impl FnMut(usize, f64),
    ) {
        match src {
            Source::Const(c) => rows.for_each(|(j, _)| put(j, c)),
            Source::F32(col) => rows.for_each(|(j, r)| put(j, f64::from(col[r % BLOCK_ROWS]))),
            Source::U32(col) => rows.for_each(|(j, r)| put(j, f64::from(col[r % BLOCK_ROWS]))),
            Source::Label(cells) => rows.for_each(|(j, r)| put(j, cells.num(r % BLOCK_ROWS))),
            Source::Other(c) => rows.for_each(|(j, r)| put(j, self.cols.value(c, r % BLOCK_ROWS))),
        }
    }

    /// Writes the values of `leaf` for the rows `rows` into `out`, a chunk
    /// at a time.
    #[inline(always)]
    fn load(&self, leaf: Leaf, keys: &[u32], rows: &[[u8; LANES]], out: &mut [[f64; LANES]]) {
        let out = out.as_flattened_mut();
        let n = out.len().min(rows.len() * LANES);
        let rows = rows.as_flattened()[..n]
            .iter()
            .map(|&r| r as usize)
            .enumerate();
        self.each(self.source(leaf, keys), rows, |j, v| out[j] = v);
    }

    /// Writes the values of `leaf` in rows `rows` (each `& 63`) to `out`.
    #[inline(always)]
    pub(crate) fn gather(&self, leaf: Leaf, keys: &[u32], rows: &[u32], out: &mut [f64]) {
        let rows = rows.iter().map(|&r| r as usize % BLOCK_ROWS).enumerate();
        let len = out.len();
        self.each(self.source(leaf, keys), rows.take(len), |j, v| out[j] = v);
    }

    /// The `prefer` scores of the `n` rows selected in `s` (by
    /// [`Scratch::select`]), read back with [`Scratch::score`].
    #[inline]
    pub(crate) fn score(&self, prefer: &Score, keys: &[u32], n: usize, s: &mut Scratch) {
        let n8 = n.next_multiple_of(LANES).min(BLOCK_ROWS);
        let rows = &s.rows[..n8 / LANES];
        let load = |leaf: Leaf, out: &mut [[f64; LANES]]| self.load(leaf, keys, rows, out);
        let [acc, x, ..] = &mut s.regs;
        match prefer {
            Score::Sum(terms) => sum_sel(terms, n8, acc, x, load),
            Score::General(_, Some(prog)) => prog.run(n8, &mut s.regs, load),
            Score::General(e, None) => {
                let n = n.min(BLOCK_ROWS);
                let flat: [u8; BLOCK_ROWS] = std::array::from_fn(|j| s.rows[j / LANES][j % LANES]);
                let mut out = [0.0; BLOCK_ROWS];
                e.eval_sel(&self.view(), &flat[..n], &mut out[..n]);
                for (j, v) in out[..n].iter().enumerate() {
                    acc[j / LANES][j % LANES] = *v;
                }
            }
        }
    }
}

/// Where a leaf's values come from in one block ([`BlockPlan::source`]).
#[derive(Copy, Clone)]
enum Source<'a> {
    Const(f64),
    F32(&'a [f32; BLOCK_ROWS]),
    U32(&'a [u32; BLOCK_ROWS]),
    Label(&'a LabelCells),
    /// Any other column, through [`Cols::value`].
    Other(Column),
}

/// Per-thread scratch of a match: the selection vector and the score
/// registers, so no block zeroes temporaries, and the exact scan's batch (a
/// fixed 5.3 KiB per thread).
pub(crate) struct Scratch {
    /// The selection, padded by up to [`LANES`] entries.
    rows: [[u8; LANES]; CHUNKS + 1],
    pub(crate) regs: [Reg; MAX_REGS],
    /// The exact scan's rows waiting to be scored ([`Batch`]).
    pub(crate) batch: Batch,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            rows: [[0; LANES]; CHUNKS + 1],
            regs: [[[0.0; LANES]; CHUNKS]; MAX_REGS],
            batch: Batch::new(),
        }
    }

    /// Selects the rows of `m`, in ascending order; returns how many. The
    /// selection is padded with its first row to a multiple of [`LANES`].
    #[inline(always)]
    pub(crate) fn select(&mut self, m: u64) -> usize {
        let mut n = 0;
        let mut bits = m;
        while bits != 0 {
            let j = n % BLOCK_ROWS;
            self.rows[j / LANES][j % LANES] = bits.trailing_zeros() as u8;
            bits &= bits - 1;
            n += 1;
        }
        let n = n.min(BLOCK_ROWS);
        // Entries `n..` of the last chunk: the first row again (any row
        // reads valid cells; its scores are never looked at).
        let pad = self.rows[0][0];
        if let Some(last) = self.rows.get_mut(n / LANES) {
            for (l, r) in last.iter_mut().enumerate() {
                if l >= n % LANES {
                    *r = pad;
                }
            }
        }
        n
    }

    /// The row of selection entry `j`.
    #[inline(always)]
    pub(crate) fn row(&self, j: usize) -> usize {
        let j = j % BLOCK_ROWS;
        self.rows[j / LANES][j % LANES] as usize % BLOCK_ROWS
    }

    /// The score of selection entry `j` (after [`BlockPlan::score`]).
    #[inline(always)]
    pub(crate) fn score(&self, j: usize) -> f64 {
        let j = j % BLOCK_ROWS;
        self.regs[0][j / LANES][j % LANES]
    }

    /// The scores of the first `n` entries.
    #[inline(always)]
    pub(crate) fn scores(&self, n: usize) -> &[f64] {
        &self.regs[0].as_flattened()[..n.min(BLOCK_ROWS)]
    }

    /// Runs `f` with this thread's scratch (a fresh one if it is in use,
    /// which only a re-entrant call could cause).
    #[inline]
    pub(crate) fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
        }
        SCRATCH.with(|c| match c.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            Err(_) => f(&mut Box::new(Scratch::new())),
        })
    }
}
