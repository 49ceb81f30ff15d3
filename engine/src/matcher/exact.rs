//! [`MatchMode::Exact`](super::MatchMode::Exact): the best row of the
//! whole table.
//!
//! Per block: the app word (one load; a block without the app costs nothing
//! more), the bound, the plain clauses, then the scores of the rows left;
//! the capacity clauses are tested only for a row that would become the
//! best. The scan warms blocks a few ahead of itself
//! ([`crate::query::lookahead`]), starts from the best of a seed of blocks
//! spread over the table so that the bound can skip from the first block on,
//! and scores a `prefer` that is not a plain weighted sum in batches that
//! span blocks ([`crate::scan::batch`]).
//!
//! Ties go by the rotating order of [`Tie`]: a block that cannot hold a
//! row outranking the best so far is skipped on a tie too, the block
//! holding the tie start is scored in its two parts (the rows at and after
//! the start, then those before it), and a batch is settled at the start
//! so that within a batch ranks grow with the entry, as the batch's "first
//! highest" choice needs.

use std::sync::atomic::Ordering::Acquire;

use crossbeam_epoch::Guard;

use super::{better, Candidate, Tie};
use crate::query::lookahead;
use crate::query::plan::{BlockPlan, Scratch, ShardPlan};
use crate::query::Query;
use crate::scan::batch::{Batch, Leaves, Scorer};
use crate::scan::score::key;
use crate::schema::ServerId;
use crate::table::ServerTable;

/// How many blocks ahead of itself the exact scan warms a block's columns
/// (and twice that, its header).
const SCAN_AHEAD: usize = 4;

/// Most blocks the exact scan's seed scores before the scan
/// ([`ServerTable::seed_exact`]).
const SEED_BLOCKS: usize = 16;

/// Blocks per seed block (a table of fewer has one).
const SEED_STRETCH: usize = 256;

/// The blocks, numbered across the shards in scan order, that the exact
/// scan's seed scores in a table of `total`: one per stretch of
/// [`SEED_STRETCH`] (at least one, at most [`SEED_BLOCKS`] stretches), the
/// last of each, so the last block of the table is always one.
fn seed_blocks(total: usize) -> impl Iterator<Item = usize> {
    let probes = (total / SEED_STRETCH).clamp(1, SEED_BLOCKS);
    (0..probes)
        .map(move |p| (p + 1) * total / probes)
        .filter(|&end| end > 0)
        .map(|end| end - 1)
}

#[cfg(test)]
thread_local! {
    /// Blocks the exact scan filtered (those the bound did not skip), for
    /// the tests that check that ties do not stop the skipping.
    static FILTERED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Block `g` of the numbering across shards of the given sizes, as shard
/// and block.
fn locate(sizes: impl Iterator<Item = usize>, mut g: usize) -> Option<(usize, usize)> {
    for (s, nb) in sizes.enumerate() {
        if g < nb {
            return Some((s, g));
        }
        g -= nb;
    }
    None
}

impl ServerTable {
    /// The best row of the whole table. Per block: the app word (one load;
    /// a block without the app costs nothing more), the bound, the plain
    /// clauses, then the scores of the rows left; the capacity clauses are
    /// tested only for a row that would become the best (most blocks have
    /// none, so the reservation cells are hardly read at all), the next
    /// best row of the block if it fails.
    pub(super) fn best_exact(
        &self,
        q: &Query,
        excluded: &[ServerId],
        tie: Tie,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> Option<Candidate> {
        let (plan, fp) = (&q.plan, &q.footprint);
        // Branch and bound: a block whose best possible score does not beat
        // the best so far cannot hold the answer. The scan starts from the
        // best of a few blocks spread over the table ([`Self::seed_exact`]), so
        // that it can skip blocks from the first one on.
        let bound = q.bound.as_ref();
        let mut best = match bound {
            Some(_) => self.seed_exact(q, excluded, tie, guard, sc),
            None => None,
        };
        // A `prefer` that is not scored row by row (the plan has leaves only
        // then) is scored in batches of rows from consecutive blocks
        // (`batch.rs` says why).
        let batched = match (&plan.leaves, Scorer::of(&q.prefer)) {
            (Some(leaves), Some(scorer)) => Some((leaves, scorer)),
            _ => None,
        };
        // The block holding the tie start: the rows before the start rank
        // last, so a batch is settled there (see the module docs).
        let (tie_shard, tie_block, _) = self.split(tie.start());
        for (s, shard) in self.shards.iter().enumerate() {
            let Some(sp) = plan.shard(shard) else {
                continue;
            };
            sc.batch.clear();
            let cut_at = if s == tie_shard {
                tie_block
            } else {
                usize::MAX
            };
            let settle_at = if batched.is_some() {
                cut_at
            } else {
                usize::MAX
            };
            let nb = shard.nblocks();
            for b in 0..nb {
                if b == settle_at {
                    // No batch holds rows from both sides of the tie start.
                    self.settle_pending(q, s, &sp, batched, tie, &mut best, guard, sc);
                }
                if sp.app_word(b) == 0 {
                    continue;
                }
                // Warm the header 2 * SCAN_AHEAD blocks ahead and the
                // columns SCAN_AHEAD ahead (their pointers are in the header
                // warmed SCAN_AHEAD blocks ago). With bounds, only the
                // groups' first lines: most blocks end there. Never the
                // reservation cells: they are read for one row at most.
                if b + 2 * SCAN_AHEAD < nb {
                    lookahead::warm_header_resolved(&sp, b + 2 * SCAN_AHEAD, guard);
                }
                if b + SCAN_AHEAD < nb {
                    let ahead = b + SCAN_AHEAD;
                    lookahead::warm_columns(shard, ahead, 1, fp, bound.is_some(), false, guard);
                }
                let Some(block) = shard.block(b) else {
                    continue;
                };
                let bp = BlockPlan::new(&sp, block, b, guard);
                if let (Some(bound), Some(c)) = (bound, &best) {
                    // A tie with the best loses unless the block may hold a
                    // row of lower tie rank.
                    let up = bound.upper(&bp.cols, |k| bp.label_range(k, &plan.keys));
                    let k = key(c.score);
                    if up < k || (up == k && tie.block_min(self.id_of(s, b, 0)) > tie.rank(c.id)) {
                        continue;
                    }
                }
                #[cfg(test)]
                FILTERED.with(|n| n.set(n.get() + 1));
                let Some(mut m) = self.passing(q, s, b, &bp, excluded) else {
                    continue;
                };
                if let Some((leaves, scorer)) = batched {
                    if b == cut_at {
                        // The rows around the tie start.
                        m = self.cut_batch(
                            q, s, &sp, &bp, m, scorer, leaves, tie, &mut best, guard, sc,
                        );
                        if m == 0 {
                            continue;
                        }
                    }
                    if !sc.batch.has_room(m) {
                        self.settle_batch(q, s, &sp, scorer, leaves, tie, &mut best, guard, sc);
                    }
                    sc.batch.push(b, m, leaves, |leaf, rows, out| {
                        bp.gather(leaf, &plan.keys, rows, out)
                    });
                    continue;
                }
                if b == cut_at {
                    self.block_best_tied(q, s, &bp, m, tie, &mut best, sc);
                } else {
                    self.block_best(q, s, &bp, m, tie, &mut best, sc);
                }
            }
            if let Some((leaves, scorer)) = batched {
                self.settle_batch(q, s, &sp, scorer, leaves, tie, &mut best, guard, sc);
            }
        }
        best
    }

    /// The rows of block `b` (shard `s`) that pass the query's plain
    /// clauses and are not excluded; `None` if none.
    #[inline(always)]
    fn passing(
        &self,
        q: &Query,
        s: usize,
        b: usize,
        bp: &BlockPlan<'_>,
        excluded: &[ServerId],
    ) -> Option<u64> {
        let m = bp.start(&q.plan);
        if m == 0 {
            return None;
        }
        let m = bp.plain(&q.plan, &q.clauses, m);
        if m == 0 {
            return None;
        }
        let m = self.exclude(s, b, m, excluded);
        (m != 0).then_some(m)
    }

    /// Settles the batch of the batched scan, if there is one: at the tie
    /// start, which no batch straddles.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn settle_pending(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        batched: Option<(&Leaves, Scorer<'_>)>,
        tie: Tie,
        best: &mut Option<Candidate>,
        guard: &Guard,
        sc: &mut Scratch,
    ) {
        if let Some((leaves, scorer)) = batched {
            self.settle_batch(q, s, sp, scorer, leaves, tie, best, guard, sc);
        }
    }

    /// The batched scan's first block at or past the tie start (`bp`, its
    /// passing rows `m`): the rows before the start join the batch they
    /// continue, which is then settled; the rows from the start on are
    /// returned, to start a new batch. Once per scan, kept out of its loop.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn cut_batch(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        bp: &BlockPlan<'_>,
        m: u64,
        scorer: Scorer<'_>,
        leaves: &Leaves,
        tie: Tie,
        best: &mut Option<Candidate>,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> u64 {
        let (after, before) = tie.split(self.id_of(s, bp.b, 0), m);
        if before != 0 {
            if !sc.batch.has_room(before) {
                self.settle_batch(q, s, sp, scorer, leaves, tie, best, guard, sc);
            }
            sc.batch.push(bp.b, before, leaves, |leaf, rows, out| {
                bp.gather(leaf, &q.plan.keys, rows, out)
            });
        }
        self.settle_batch(q, s, sp, scorer, leaves, tie, best, guard, sc);
        after
    }

    /// [`Self::block_best`] of the rows of `m` at or after the tie start,
    /// then of those before it (the two parts of a block holding the
    /// start; any other block is one part).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block_best_tied(
        &self,
        q: &Query,
        s: usize,
        bp: &BlockPlan<'_>,
        m: u64,
        tie: Tie,
        best: &mut Option<Candidate>,
        sc: &mut Scratch,
    ) {
        let (after, before) = tie.split(self.id_of(s, bp.b, 0), m);
        self.block_best(q, s, bp, after, tie, best, sc);
        if before != 0 {
            self.block_best_before(q, s, bp, before, tie, best, sc);
        }
    }

    /// [`Self::block_best`] of the rows before the tie start in its block:
    /// one block per scan, kept out of the scan's loop.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn block_best_before(
        &self,
        q: &Query,
        s: usize,
        bp: &BlockPlan<'_>,
        m: u64,
        tie: Tie,
        best: &mut Option<Candidate>,
        sc: &mut Scratch,
    ) {
        self.block_best(q, s, bp, m, tie, best, sc);
    }

    /// Makes the best row of `m` in block `bp` the best if it beats
    /// `best`: the first highest score (NaN lowest); if its row fails the
    /// capacity clauses, the next, and so on. The rows of `m` must not
    /// straddle the tie start (see [`Self::block_best_tied`]): the first
    /// highest is then the one of lowest tie rank.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block_best(
        &self,
        q: &Query,
        s: usize,
        bp: &BlockPlan<'_>,
        mut m: u64,
        tie: Tie,
        best: &mut Option<Candidate>,
        sc: &mut Scratch,
    ) {
        while m != 0 {
            let (i, score, _) = bp.top(&q.plan, &q.prefer, m, sc);
            let id = self.id_of(s, bp.b, i);
            if best.is_some_and(|c| !better(score, id, c.score, c.id, tie)) {
                break;
            }
            if bp.cap_row(&q.plan, &q.clauses, i) {
                *best = Some(Candidate {
                    shard: s,
                    b: bp.b,
                    i,
                    id,
                    score,
                    gen: bp.block.gen[i].load(Acquire),
                });
                break;
            }
            m &= !(1u64 << i);
        }
    }

    /// The best row of a few blocks spread over the table, for the exact
    /// scan to start from ([`seed_blocks`] says which).
    ///
    /// Scanning in order, a table whose scores grow with the position
    /// (servers registered by hardware generation, say) gives every block
    /// a chance to beat the best so far, and nothing would be skipped; the
    /// seed holds the best of blocks up to the end of the table from the
    /// start. On tables in any other order it costs a few blocks of a scan
    /// of thousands and lets the scan skip from its first block.
    fn seed_exact(
        &self,
        q: &Query,
        excluded: &[ServerId],
        tie: Tie,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> Option<Candidate> {
        let total: usize = self.shards.iter().map(|s| s.nblocks()).sum();
        let mut best = None;
        for g in seed_blocks(total) {
            let sizes = self.shards.iter().map(|s| s.nblocks());
            let Some((s, b)) = locate(sizes, g) else {
                continue;
            };
            let shard = &self.shards[s];
            let (Some(sp), Some(block)) = (q.plan.shard(shard), shard.block(b)) else {
                continue;
            };
            if sp.app_word(b) == 0 {
                continue;
            }
            let bp = BlockPlan::new(&sp, block, b, guard);
            if let Some(m) = self.passing(q, s, b, &bp, excluded) {
                self.block_best_tied(q, s, &bp, m, tie, &mut best, sc);
            }
        }
        best
    }

    /// Scores the rows of the exact scan's batch (from shard `s`) and, if
    /// the best of them with the capacity beats `best`, makes it the best;
    /// empties the batch. The capacity is tested only for a row that would
    /// become the best (the next best if it fails), as block by block.
    /// Tie ranks grow along the batch (it never straddles the tie start),
    /// so its first highest entry is its best.
    #[allow(clippy::too_many_arguments)]
    fn settle_batch(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        scorer: Scorer<'_>,
        leaves: &Leaves,
        tie: Tie,
        best: &mut Option<Candidate>,
        guard: &Guard,
        sc: &mut Scratch,
    ) {
        let Scratch { batch, regs, .. } = sc;
        let n = batch.len();
        if n == 0 {
            return;
        }
        let top = batch.score(scorer, leaves, regs);
        // On a tie the best keeps its place unless the batch's first entry
        // (its lowest tie rank) ranks below it, and then the batch's first
        // highest row is weighed.
        let (b0, i0) = batch.row(0);
        let first = tie.rank(self.id_of(s, b0, i0));
        if best
            .is_none_or(|c| top > key(c.score) || (top == key(c.score) && first < tie.rank(c.id)))
        {
            let mut alive = u64::MAX >> (64 - n.min(64));
            while alive != 0 {
                let j = Batch::best_of(&regs[0], alive);
                let score = regs[0].as_flattened()[j];
                let (b, i) = batch.row(j);
                let id = self.id_of(s, b, i);
                if best.is_some_and(|c| !better(score, id, c.score, c.id, tie)) {
                    break;
                }
                alive &= !(1u64 << j);
                let Some(block) = sp.shard.block(b) else {
                    continue;
                };
                if BlockPlan::new(sp, block, b, guard).cap_row(&q.plan, &q.clauses, i) {
                    *best = Some(Candidate {
                        shard: s,
                        b,
                        i,
                        id,
                        score,
                        gen: block.gen[i].load(Acquire),
                    });
                    break;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{locate, seed_blocks, FILTERED, SEED_BLOCKS, SEED_STRETCH};
    use crate::matcher::MatchMode;
    use crate::schema::{Env, ServerId, ServerRecord};
    use crate::table::{ServerTable, TableConfig};

    /// On 102,400 servers tied on `prefer`, from any tie start, the exact
    /// scan still skips blocks by their bound: it filters the block
    /// holding the start and hardly any other, for a `prefer` scored row
    /// by row and for one scored in batches; and it takes the server at
    /// the start.
    #[test]
    fn ties_keep_the_bound_skipping_blocks() {
        let t = ServerTable::new(TableConfig {
            shards: 4,
            capacity: 102_400,
        })
        .unwrap();
        // Whole blocks: a block's bound covers its vacant rows too, so a
        // shard's last, partly filled block would be filtered, tie or not.
        let ids: Vec<ServerId> = (0..102_400)
            .map(|i| {
                t.insert(ServerRecord {
                    name: format!("s{i}"),
                    slots: 4,
                    slots_free: 4,
                    cores: 8,
                    power: 1.0,
                    idle_power: 5.0,
                    mem: 1 << 30,
                    mem_free: 1 << 30,
                    load: 0.5,
                    apps: vec!["echo".into()],
                    labels: Vec::new(),
                })
                .unwrap()
            })
            .collect();
        let blocks: usize = t.shards.iter().map(|s| s.nblocks()).sum();
        let mut env = Env::default();
        env.task.app = "echo".into();
        env.task.slots = 1;
        for prefer in [
            "server.idle_power",
            "server.idle_power - (2 * server.load + 0)",
        ] {
            let q = t.compile("server.cores >= 2", prefer, &env).unwrap();
            for at in [0, 1, 63, 64, 30_017, 51_200, 77_777, 102_399] {
                let start = ids[at];
                t.set_tie_start(start.0);
                FILTERED.with(|n| n.set(0));
                let r = t.match_and_reserve(&q, MatchMode::Exact).unwrap();
                let filtered = FILTERED.with(|n| n.get());
                assert_eq!(r.server, start, "{prefer}: from {at}");
                assert!(
                    filtered <= 2,
                    "{prefer}: from {at}, {filtered} of {blocks} blocks filtered"
                );
                t.release(&r);
            }
        }
    }

    /// The seed's blocks are spread evenly, end with the table's last
    /// block, stay within the table and are bounded in number; numbering
    /// across shards skips empty ones.
    #[test]
    fn seed_blocks_spread_over_the_table_and_end_at_its_last_block() {
        assert_eq!(seed_blocks(0).count(), 0);
        assert_eq!(seed_blocks(1).collect::<Vec<_>>(), [0]);
        assert_eq!(seed_blocks(157).collect::<Vec<_>>(), [156]);
        assert_eq!(
            seed_blocks(4 * SEED_STRETCH).collect::<Vec<_>>(),
            [255, 511, 767, 1023]
        );
        let big = 15_625;
        let v: Vec<_> = seed_blocks(big).collect();
        assert_eq!(v.len(), SEED_BLOCKS);
        assert_eq!(v.last(), Some(&(big - 1)));
        assert!(v.windows(2).all(|w| w[1] - w[0] >= big / SEED_BLOCKS - 1));
        let sizes = [3usize, 0, 5, 2];
        assert_eq!(locate(sizes.into_iter(), 0), Some((0, 0)));
        assert_eq!(locate(sizes.into_iter(), 2), Some((0, 2)));
        assert_eq!(locate(sizes.into_iter(), 3), Some((2, 0)));
        assert_eq!(locate(sizes.into_iter(), 9), Some((3, 1)));
        assert_eq!(locate(sizes.into_iter(), 10), None);
    }
}
