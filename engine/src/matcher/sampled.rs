//! [`MatchMode::Sampled`](super::MatchMode::Sampled): the best of the
//! first `k` passing rows from a random start.
//!
//! Starts are drawn ahead of time into a small per-thread ring
//! ([`crate::query::lookahead::Starts`]), so each match begins on blocks
//! warmed during the matches before it. When the query has capacity clauses
//! and `prefer` does not read those cells, the match is lazy: `k` counts the
//! rows that pass every other clause, each block's top is kept ([`Tops`]),
//! and capacity is checked only for the rows that would be the answer, best
//! first. Ties go by the same rotating order as the exact scan's
//! ([`Tie`]), so a sampled match that sees every row gives the exact
//! answer.

use std::cell::Cell;

use crossbeam_epoch::Guard;

use super::{better, Candidate, Tie};
use crate::query::lookahead::{self, Starts, AHEAD};
use crate::query::plan::{BlockPlan, Scratch, ShardPlan};
use crate::query::Query;
use crate::schema::{ServerId, BLOCK_ROWS};
use crate::table::block::Block;
use crate::table::ServerTable;

/// Blocks warmed from each sampled start (a match at k = 8 usually reads
/// two).
const SAMPLED_WARM_BLOCKS: usize = 2;

/// The best row of one block ([`ServerTable::block_top`]).
struct BlockTop<'a> {
    block: &'a Block,
    i: usize,
    id: ServerId,
    score: f64,
    /// Rows of the block that passed.
    passed: u32,
}

/// Block tops a lazy sampled match keeps ([`Tops`]). A match at k = 8
/// scans two blocks or so; a match with a large `k` keeps the best eight
/// blocks' tops, enough unless eight of them in a row fall short of
/// capacity.
const LAZY_TOPS: usize = 8;

/// The best row by `prefer` of one block a lazy sampled match scanned,
/// among the rows that pass every clause but the capacity ones.
#[derive(Copy, Clone, Debug)]
struct Top {
    score: f64,
    /// Rows of the block already found short of capacity.
    failed: u64,
    id: ServerId,
    shard: u32,
    b: u32,
    i: u32,
}

/// The block tops of a lazy sampled match. Bounded by [`LAZY_TOPS`]: when
/// full, the worst top is dropped, and the best dropped one is remembered,
/// since no top ranking below it can be trusted to be the answer.
struct Tops {
    items: [Top; LAZY_TOPS],
    len: usize,
    /// The index of the best of `items[..len]`.
    lead: usize,
    dropped: Option<(f64, ServerId)>,
    tie: Tie,
}

impl Tops {
    fn new(tie: Tie) -> Tops {
        const NONE: Top = Top {
            score: f64::NEG_INFINITY,
            failed: 0,
            id: ServerId(0),
            shard: 0,
            b: 0,
            i: 0,
        };
        Tops {
            items: [NONE; LAZY_TOPS],
            len: 0,
            lead: 0,
            dropped: None,
            tie,
        }
    }

    /// The index of the best top (or of the worst, with `worst`); 0 when
    /// there is none.
    #[inline]
    fn extreme(&self, worst: bool) -> usize {
        let mut at = 0;
        for x in 1..self.len.min(LAZY_TOPS) {
            let (t, a) = (&self.items[x], &self.items[at]);
            if better(t.score, t.id, a.score, a.id, self.tie) != worst {
                at = x;
            }
        }
        at
    }

    /// Whether a row of (`score`, `id`) would be the best top.
    #[inline(always)]
    fn leads(&self, score: f64, id: ServerId) -> bool {
        let a = &self.items[self.lead % LAZY_TOPS];
        self.len == 0 || better(score, id, a.score, a.id, self.tie)
    }

    #[inline]
    fn push(&mut self, t: Top) {
        let leads = self.leads(t.score, t.id);
        if self.len < LAZY_TOPS {
            self.items[self.len] = t;
            self.len += 1;
            if leads {
                self.lead = self.len - 1;
            }
            return;
        }
        // Full: the worst of the tops and `t` is dropped.
        let w = self.extreme(true);
        let worst = self.items[w];
        let out = if better(t.score, t.id, worst.score, worst.id, self.tie) {
            self.items[w] = t;
            if leads {
                self.lead = w;
            }
            worst
        } else {
            t
        };
        if self
            .dropped
            .is_none_or(|(s, id)| better(out.score, out.id, s, id, self.tie))
        {
            self.dropped = Some((out.score, out.id));
        }
    }

    fn pop_best(&mut self) -> Option<Top> {
        if self.len == 0 {
            return None;
        }
        let x = self.lead % LAZY_TOPS;
        let t = self.items[x];
        self.len -= 1;
        self.items.swap(x, self.len);
        self.lead = self.extreme(false);
        Some(t)
    }

    /// Whether `t` ranks above every top dropped so far.
    fn trusted(&self, t: &Top) -> bool {
        self.dropped
            .is_none_or(|(s, id)| better(t.score, t.id, s, id, self.tie))
    }
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// `x` scaled from `0..2^32` to `0..n` (Lemire's multiply-shift reduction):
/// uniform to within `n / 2^32`, and 0 for `n == 0`.
#[inline(always)]
fn scale(x: u32, n: usize) -> usize {
    ((x as u64 * n as u64) >> 32) as usize
}

/// xorshift64*: enough to spread sampled starts; seeded per thread.
fn next_random(seed: u64) -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            x = seed ^ (r as *const Cell<u64> as u64) ^ 0x9E37_79B9_7F4A_7C15;
            if x == 0 {
                x = 1;
            }
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

impl ServerTable {
    /// The best row by `prefer` of block `b`, among the rows that pass the
    /// query's clauses (the capacity ones only with `capacity`) and are
    /// neither in `failed` nor `excluded`; `None` if no row does. Of tied
    /// rows, the one of lowest tie rank.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block_top<'a>(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'a>,
        b: usize,
        failed: u64,
        capacity: bool,
        excluded: &[ServerId],
        tie: Tie,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> Option<BlockTop<'a>> {
        let plan = &q.plan;
        let shard = sp.shard;
        let block = shard.block(b)?;
        let bp = BlockPlan::new(sp, block, b, guard);
        let mut m = bp.start(plan) & !failed;
        if m != 0 {
            m = bp.plain(plan, &q.clauses, m);
        }
        if m != 0 {
            m = self.exclude(s, b, m, excluded);
        }
        if m != 0 && capacity {
            m = bp.cap(plan, &q.clauses, m);
        }
        if m == 0 {
            return None;
        }
        let (after, before) = tie.split(self.id_of(s, b, 0), m);
        if before != 0 {
            return Some(self.split_top(q, s, block, &bp, after, before, tie, sc));
        }
        let (i, score, passed) = bp.top(plan, &q.prefer, m, sc);
        Some(BlockTop {
            block,
            i,
            id: self.id_of(s, b, i),
            score,
            passed,
        })
    }

    /// [`Self::block_top`] of the block holding the tie start: the first
    /// highest of each part (see `Tie::split`), the part before the start
    /// winning only on a higher score. Once per match at most, kept out of
    /// the scan's loop.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn split_top<'a>(
        &self,
        q: &Query,
        s: usize,
        block: &'a Block,
        bp: &BlockPlan<'_>,
        after: u64,
        before: u64,
        tie: Tie,
        sc: &mut Scratch,
    ) -> BlockTop<'a> {
        let mut top = |m: u64| {
            let (i, score, passed) = bp.top(&q.plan, &q.prefer, m, sc);
            BlockTop {
                block,
                i,
                id: self.id_of(s, bp.b, i),
                score,
                passed,
            }
        };
        let late = top(before);
        if after == 0 {
            return late;
        }
        let early = top(after);
        let passed = early.passed + late.passed;
        let t = if better(late.score, late.id, early.score, early.id, tie) {
            late
        } else {
            early
        };
        BlockTop { passed, ..t }
    }

    /// Considers one block of a sampled match; returns how many rows passed
    /// every clause.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn sample_block(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        b: usize,
        excluded: &[ServerId],
        tie: Tie,
        best: &mut Option<Candidate>,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> u32 {
        let Some(t) = self.block_top(q, s, sp, b, 0, true, excluded, tie, guard, sc) else {
            return 0;
        };
        if best.is_none_or(|c| better(t.score, t.id, c.score, c.id, tie)) {
            // The row's cells for reserving it, while the scan goes on.
            lookahead::warm_row(t.block, t.i, q.demand, guard);
            *best = Some(Candidate {
                shard: s,
                b,
                i: t.i,
                id: t.id,
                score: t.score,
                // Read with the row's other cells when the match ends.
                gen: 0,
            });
        }
        t.passed
    }

    /// The best of the rows passing in the blocks from a random start, up
    /// to the block where `k` have passed.
    ///
    /// When the query has capacity clauses (free slots, cores or memory)
    /// and `prefer` does not read those cells, the match is *lazy*: `k`
    /// counts the rows that pass every other clause, and capacity is
    /// checked only for the rows that would be the answer, best first
    /// ([`ServerTable::verify_lazy`]). The reservation cells are a quarter
    /// of a block's lines and a sampled match at a million servers is bound
    /// by the lines it reads (BENCHMARKS.md, "Checking capacity last"); the
    /// answer is still the best row of the scanned blocks that passes every
    /// clause. When none of them has the capacity, the match scans again
    /// from the same start counting only rows that have it, as an eager
    /// match does.
    pub(super) fn best_sampled(
        &self,
        q: &Query,
        k: u32,
        excluded: &[ServerId],
        tie: Tie,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> Option<Candidate> {
        let fp = &q.footprint;
        let lazy = q.plan.has_capacity_clauses() && !fp.prefer_cap;
        let (r, ring) = Starts::take(|| next_random(self.seed()));
        // The starts of the next matches, one stage each: by the time a
        // start is used, its blocks' lines have arrived. A lazy match does
        // not read the reservation cells of the blocks it scans.
        let n = SAMPLED_WARM_BLOCKS;
        let (s1, b1) = self.start_of(ring[AHEAD - 1]);
        lookahead::warm_slots(&self.shards[s1], b1, n, fp);
        let (s2, b2) = self.start_of(ring[AHEAD / 2]);
        lookahead::warm_header(&self.shards[s2], b2, n, fp, guard);
        let (s3, b3) = self.start_of(ring[0]);
        lookahead::warm_columns(&self.shards[s3], b3, n, fp, false, !lazy, guard);
        let start = self.start_of(r);
        if lazy {
            let mut tops = Tops::new(tie);
            self.scan_from(q, start, k, |s, sp, b| {
                self.lazy_block(q, s, sp, b, 0, excluded, &mut tops, guard, sc)
            });
            if let Some(c) = self.verify_lazy(q, excluded, &mut tops, guard, sc) {
                return Some(c);
            }
        }
        let mut best = None;
        self.scan_from(q, start, k, |s, sp, b| {
            self.sample_block(q, s, sp, b, excluded, tie, &mut best, guard, sc)
        });
        best
    }

    /// Calls `f` on each block from `start` on (wrapping around the table
    /// once) until the counts it returns add up to `k`.
    #[inline(always)]
    fn scan_from(
        &self,
        q: &Query,
        (s0, b0): (usize, usize),
        k: u32,
        mut f: impl FnMut(usize, &ShardPlan<'_>, usize) -> u32,
    ) {
        let n = self.shards.len();
        let mut found = 0u32;
        for off in 0..=n {
            let s = (s0 + off) % n;
            let shard = &self.shards[s];
            let Some(sp) = q.plan.shard(shard) else {
                continue;
            };
            let nb = shard.nblocks();
            let range = if off == 0 {
                b0.min(nb)..nb
            } else if off == n {
                0..b0.min(nb)
            } else {
                0..nb
            };
            for b in range {
                // Blocks past those the ring warmed are read cold: warming
                // them ahead (whether or not the match would get there)
                // costs a miss on their header every match, and most
                // matches end within the warmed blocks.
                found = found.saturating_add(f(s, &sp, b));
                if found >= k {
                    return;
                }
            }
        }
    }

    /// Considers one block of a lazy sampled match: keeps the best row by
    /// `prefer` of those passing every clause but the capacity ones (and
    /// not in `failed`) in `tops`; returns how many rows passed.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn lazy_block(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        b: usize,
        failed: u64,
        excluded: &[ServerId],
        tops: &mut Tops,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> u32 {
        let tie = tops.tie;
        let Some(t) = self.block_top(q, s, sp, b, failed, false, excluded, tie, guard, sc) else {
            return 0;
        };
        if tops.leads(t.score, t.id) {
            // Its capacity is checked first when the scan ends, and its
            // other cells are read to reserve it: ask for them now.
            lookahead::warm_row(t.block, t.i, q.demand, guard);
        }
        tops.push(Top {
            score: t.score,
            failed,
            id: t.id,
            // Shard, block and row numbers fit: ids are `u32`.
            shard: s as u32,
            b: b as u32,
            i: t.i as u32,
        });
        t.passed
    }

    /// The best row of a lazy match's blocks that passes the capacity
    /// clauses too: the best block top is checked; if it falls short, the
    /// next best row of its block takes its place, and so on. `None` if no
    /// row of the scanned blocks has the capacity, or if the best one left
    /// ranks below a top that [`Tops`] had to drop (it might not be the
    /// best): the caller then matches eagerly.
    fn verify_lazy(
        &self,
        q: &Query,
        excluded: &[ServerId],
        tops: &mut Tops,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> Option<Candidate> {
        while let Some(t) = tops.pop_best() {
            if !tops.trusted(&t) {
                return None;
            }
            let (ts, tb, ti) = (t.shard as usize, t.b as usize, t.i as usize % BLOCK_ROWS);
            let shard = self.shards.get(ts)?;
            let block = shard.block(tb)?;
            // The fused test alone when that is all there is (the usual
            // case): no need to resolve the shard's operands for it.
            let fits = if q.plan.sparse.is_empty() {
                q.plan.cap.row(&block.cap[ti])
            } else {
                let sp = q.plan.shard(shard)?;
                BlockPlan::new(&sp, block, tb, guard).cap_row(&q.plan, &q.clauses, ti)
            };
            if fits {
                return Some(Candidate {
                    shard: ts,
                    b: tb,
                    i: ti,
                    id: t.id,
                    score: t.score,
                    gen: 0,
                });
            }
            let failed = t.failed | 1u64 << ti;
            let sp = q.plan.shard(shard)?;
            self.lazy_block(q, ts, &sp, tb, failed, excluded, tops, guard, sc);
        }
        None
    }

    /// The shard and block a sampled match starting from draw `r` begins
    /// at.
    #[inline]
    fn start_of(&self, r: u64) -> (usize, usize) {
        // Each half of the draw scaled to its range by a multiply and a
        // shift, not `%`: a 64-bit division takes tens of cycles, and a
        // match draws four starts (its own and the ring's).
        let s = scale(r as u32, self.shards.len());
        let b = scale((r >> 32) as u32, self.shards[s].nblocks());
        (s, b)
    }
}

#[cfg(test)]
mod tests {
    use super::scale;

    #[test]
    fn scale_maps_draws_onto_the_whole_range_and_no_further() {
        assert_eq!(scale(0, 7), 0);
        assert_eq!(scale(u32::MAX, 7), 6);
        assert_eq!(scale(u32::MAX, 0), 0);
        assert_eq!(scale(1 << 31, 4), 2);
        // Every value of a small range is hit, about equally often.
        let mut hits = [0u32; 5];
        for i in 0..5000u32 {
            hits[scale(i.wrapping_mul(0x9E37_79B9), 5)] += 1;
        }
        assert!(hits.iter().all(|&h| (900..1100).contains(&h)), "{hits:?}");
    }
}
