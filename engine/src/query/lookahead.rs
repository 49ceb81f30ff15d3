//! What a query reads of a block, and warming those lines before the scan
//! gets there.
//!
//! A block's data is spread over a few allocations (the block with its masks
//! and reservation cells, two column groups, one cell array per label key),
//! each reached through a pointer. Warming a block therefore goes in stages,
//! each only reading lines an earlier stage asked for: the directory slots
//! ([`warm_slots`]), then the block header and label cells ([`warm_header`]),
//! then the columns the query reads ([`warm_columns`]). The exact scan runs
//! the stages a few blocks ahead of itself; sampled matching keeps a small
//! per-thread ring of start blocks drawn ahead of time ([`Starts`]), so each
//! match begins on blocks warmed during the matches before it.

use std::cell::Cell;
use std::mem::{offset_of, size_of};

use crossbeam_epoch::Guard;

use crate::expr::pred::{NumExpr, Pred};
use crate::query::plan::ShardPlan;
use crate::query::Demand;
use crate::scan::prefetch;
use crate::schema::{Column, BLOCK_ROWS};
use crate::table::block::{Block, Cap, Dynamic, Fixed, LabelCells};
use crate::table::rcu::Rcu;
use crate::table::Shard;

/// The parts of a block a query reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Footprint {
    /// Byte ranges of the [`Dynamic`] group.
    dynamic: Vec<(usize, usize)>,
    /// Byte ranges of the [`Fixed`] group.
    fixed: Vec<(usize, usize)>,
    /// Label keys.
    labels: Vec<u32>,
    /// Apps whose masks are tested.
    apps: Vec<u32>,
    /// Whether the reservation cells are read.
    cap: bool,
    /// Whether `prefer` reads them (then scoring reads them for every row
    /// that passes, and a lazy sampled match warms them as the eager one
    /// does).
    pub(crate) prefer_cap: bool,
}

impl Footprint {
    /// What `preds` and `prefer` read.
    pub(crate) fn of<'a>(preds: impl Iterator<Item = &'a Pred>, prefer: &NumExpr) -> Footprint {
        let mut fp = Footprint::default();
        for p in preds {
            fp.add_pred(p);
        }
        fp.add_num(prefer);
        let mut p = Footprint::default();
        p.add_num(prefer);
        fp.prefer_cap = p.cap;
        for v in [&mut fp.dynamic, &mut fp.fixed] {
            *v = merged(std::mem::take(v));
        }
        fp.labels.sort_unstable();
        fp.labels.dedup();
        fp.apps.sort_unstable();
        fp.apps.dedup();
        fp
    }

    fn add_col(&mut self, c: Column) {
        let f32s = size_of::<[f32; BLOCK_ROWS]>();
        match c {
            Column::Load => self.dynamic.push((offset_of!(Dynamic, load), f32s)),
            Column::IdlePower => self.dynamic.push((offset_of!(Dynamic, idle_power), f32s)),
            Column::Power => self.fixed.push((offset_of!(Fixed, power), f32s)),
            Column::Slots => self.fixed.push((offset_of!(Fixed, slots), f32s)),
            Column::Cores => self.fixed.push((offset_of!(Fixed, cores), f32s)),
            Column::Mem => self
                .fixed
                .push((offset_of!(Fixed, mem), size_of::<[u64; BLOCK_ROWS]>())),
            Column::SlotsFree | Column::CoresFree | Column::MemFree => self.cap = true,
        }
    }

    fn add_pred(&mut self, p: &Pred) {
        match p {
            Pred::Const(_) | Pred::Up => {}
            Pred::HasApp(a) => self.apps.push(*a),
            Pred::Not(p) => self.add_pred(p),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(|p| self.add_pred(p)),
            Pred::Range32 { col, .. } | Pred::Range64 { col, .. } | Pred::F32 { col, .. } => {
                self.add_col(*col)
            }
            Pred::LabelStr { key, .. } | Pred::LabelNum { key, .. } => self.labels.push(*key),
            Pred::LabelLabel { a, b, .. } => self.labels.extend([*a, *b]),
            Pred::Num { l, r, .. } => {
                self.add_num(l);
                self.add_num(r);
            }
        }
    }

    fn add_num(&mut self, e: &NumExpr) {
        match e {
            NumExpr::Const(_) => {}
            NumExpr::Col(c) => self.add_col(*c),
            NumExpr::Label(k) => self.labels.push(*k),
            NumExpr::Neg(e) => self.add_num(e),
            NumExpr::Bin(_, a, b) => {
                self.add_num(a);
                self.add_num(b);
            }
        }
    }
}

/// Byte ranges sorted, with overlapping and adjacent ones joined (`load`
/// and `idle_power` are one range of 512 bytes): one prefetch loop each.
fn merged(mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (off, len) in spans {
        match out.last_mut() {
            Some((o, l)) if off <= *o + *l => *l = (*l).max(off + len - *o),
            _ => out.push((off, len)),
        }
    }
    out
}

/// Hints the lines of `n` adjacent cells of `size` bytes from `p`: the
/// first and the last cell's (the callers' `n * size` is well under a line
/// plus one, so those are all of them).
#[inline(always)]
fn ends(p: *const u8, n: usize, size: usize) {
    prefetch::line(p);
    prefetch::line(p.wrapping_add(n.saturating_sub(1) * size));
}

/// Hints the codes and dictionary of label cells at `p` (null for none):
/// the cells are line-aligned and those are their first two lines.
#[inline(always)]
fn label_lines(p: *const LabelCells) {
    if !p.is_null() {
        let p = p.cast::<u8>();
        prefetch::line(p);
        prefetch::line(p.wrapping_add(LabelCells::SCAN_BYTES - 1));
    }
}

/// Stage 1: the directory slots that lead to blocks `b..b + n` (`n` a
/// handful) and their label cells, and the app mask words (addresses known
/// without reading anything). Each directory is looked up once; addresses
/// past its end are only hints, never read.
#[inline]
pub(crate) fn warm_slots(shard: &Shard, b: usize, n: usize, fp: &Footprint) {
    let slot = shard.block_slot_addr(b);
    ends(
        slot,
        n,
        shard.block_slot_addr(b + 1) as usize - slot as usize,
    );
    for &k in &fp.labels {
        if let Some(dir) = shard.label_dir(k) {
            ends(
                dir.as_ptr().wrapping_add(b).cast(),
                n,
                size_of::<Rcu<LabelCells>>(),
            );
        }
    }
    for &a in &fp.apps {
        if let Some(words) = shard.app_words(a) {
            ends(words.as_ptr().wrapping_add(b).cast(), n, size_of::<u64>());
        }
    }
}

/// Stage 2: the headers of blocks `b..b + n` (masks and column group
/// pointers) and their label cells. Reads the slots of stage 1.
#[inline]
pub(crate) fn warm_header(shard: &Shard, b: usize, n: usize, fp: &Footprint, guard: &Guard) {
    for x in b..b + n {
        if let Some(block) = shard.block(x) {
            prefetch::line(block as *const Block);
        }
    }
    for &k in &fp.labels {
        if let Some(slots) = shard
            .label_dir(k)
            .and_then(|d| d.get(b..(b + n).min(d.len())))
        {
            for slot in slots {
                // The codes and dictionary: string comparisons read those.
                label_lines(slot.addr(guard));
            }
        }
    }
}

/// Stage 2 with the label directories resolved ([`ShardPlan`]): what the
/// exact scan runs per block.
#[inline]
pub(crate) fn warm_header_resolved(sp: &ShardPlan<'_>, b: usize, guard: &Guard) {
    if let Some(block) = sp.shard.block(b) {
        prefetch::line(block as *const Block);
    }
    for slot in sp.label_slots(b) {
        label_lines(slot.addr(guard));
    }
}

/// Stage 3: the columns the query reads in blocks `b..b + n` (with
/// `bounds_only`, just the line of each group where the column ranges
/// are), and with `cap` the reservation cells if the query reads
/// them. Reads the headers of stage 2.
#[inline]
pub(crate) fn warm_columns(
    shard: &Shard,
    b: usize,
    n: usize,
    fp: &Footprint,
    bounds_only: bool,
    cap: bool,
    guard: &Guard,
) {
    let warm = |base: *const u8, spans: &[(usize, usize)], ranges: usize| {
        if spans.is_empty() || base.is_null() {
            return;
        }
        if bounds_only {
            prefetch::line(base.wrapping_add(ranges));
            return;
        }
        for &(off, len) in spans {
            prefetch::lines(base.wrapping_add(off), len);
        }
    };
    for x in b..b + n {
        let Some(block) = shard.block(x) else {
            return;
        };
        warm(
            block.dynamic.addr(guard).cast(),
            &fp.dynamic,
            Dynamic::RANGES,
        );
        warm(block.fixed.addr(guard).cast(), &fp.fixed, Fixed::RANGES);
        if cap && fp.cap && !bounds_only {
            prefetch::lines(block.cap.as_ptr(), size_of::<[Cap; BLOCK_ROWS]>());
        }
    }
}

/// The cells of row `i` that reserving and releasing it read besides what
/// the scan read: its generation, reserved counters and free capacity, and
/// the capacity columns release clamps to, those of `demand` only (a task
/// asking for no cores never reads the `cores` column).
#[inline]
pub(crate) fn warm_row(block: &Block, i: usize, demand: Demand, guard: &Guard) {
    let i = i % BLOCK_ROWS;
    prefetch::line(&block.gen[i]);
    prefetch::line(&block.reserved[i]);
    prefetch::line(&block.cap[i]);
    let fixed = block.fixed.addr(guard);
    if !fixed.is_null() {
        let f = fixed.cast::<u8>();
        let at = |off: usize, size: usize| f.wrapping_add(off + i * size);
        if demand.slots > 0 {
            prefetch::line(at(offset_of!(Fixed, slots), 4));
        }
        if demand.cores > 0 {
            prefetch::line(at(offset_of!(Fixed, cores), 4));
        }
        if demand.mem > 0 {
            prefetch::line(at(offset_of!(Fixed, mem), 8));
        }
    }
}

/// How many sampled matches ahead a start block is drawn.
pub(crate) const AHEAD: usize = 6;

thread_local! {
    /// Random draws for the next sampled matches of this thread, oldest
    /// first; 0 means not drawn yet.
    static STARTS: Cell<[u64; AHEAD]> = const { Cell::new([0; AHEAD]) };
}

/// The per-thread ring of pre-drawn sampled starts.
pub(crate) struct Starts;

impl Starts {
    /// The draw for this match, and the ring after drawing `fresh` for the
    /// match `AHEAD` from now: `ring[0]` is next, `ring[AHEAD - 1]` the
    /// fresh one.
    pub(crate) fn take(fresh: impl Fn() -> u64) -> (u64, [u64; AHEAD]) {
        STARTS.with(|c| {
            let mut ring = c.get();
            let now = if ring[0] == 0 { fresh() } else { ring[0] };
            ring.rotate_left(1);
            ring[AHEAD - 1] = fresh();
            for r in ring.iter_mut() {
                if *r == 0 {
                    *r = fresh();
                }
            }
            c.set(ring);
            (now, ring)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_and_overlapping_spans_are_warmed_as_one() {
        // `load` and `idle_power`: 256 bytes each, back to back.
        assert_eq!(merged(vec![(272, 256), (16, 256)]), vec![(16, 512)]);
        // A span inside another, and one apart from both.
        assert_eq!(
            merged(vec![(0, 512), (64, 8), (600, 8)]),
            vec![(0, 512), (600, 8)]
        );
        // What a query over `load` and `idle_power` warms of a `Dynamic`.
        let fp = Footprint::of(
            [Pred::F32 {
                col: Column::Load,
                op: crate::expr::op::CmpOp::Lt,
                c: 0.8,
            }]
            .iter(),
            &NumExpr::Col(Column::IdlePower),
        );
        assert_eq!(
            fp.dynamic,
            vec![(
                offset_of!(Dynamic, load),
                2 * size_of::<[f32; BLOCK_ROWS]>()
            )]
        );
    }

    #[test]
    fn starts_are_used_in_the_order_drawn() {
        let n = Cell::new(0u64);
        let fresh = || {
            n.set(n.get() + 1);
            n.get()
        };
        let (first, ring) = Starts::take(fresh);
        assert_eq!(first, 1);
        assert_eq!(ring.len(), AHEAD);
        let mut expect = ring[0];
        for _ in 0..10 {
            let (now, ring) = Starts::take(fresh);
            assert_eq!(now, expect);
            expect = ring[0];
        }
    }
}
