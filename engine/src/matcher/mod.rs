//! Matching a compiled [`Query`] against the table and reserving the chosen
//! server's capacity.
//!
//! A match pins an epoch once and scans blocks, AND-ing clause masks and
//! stopping a block as soon as its mask is empty (the `server is up` and
//! `app` clauses are plain bitmask loads, so blocks without the app cost two
//! loads). Clauses over plain columns run first, as SIMD kernels over whole
//! blocks; clauses over the reservation atomics (`slots_free`, `cores_free`,
//! `mem_free`) then test only the rows still standing. `prefer` is evaluated
//! only for rows that passed. The best row is then reserved with
//! compare-and-swap on `slots_free`, `cores_free` and `mem_free`: what the
//! scan read may be stale by then, the compare-and-swap is authoritative, and
//! if another thread got there first the scan repeats (bounded by
//! [`MAX_ATTEMPTS`]).
//!
//! The layer has three parts, one per file, all `impl ServerTable` blocks
//! around the [`MatchMode`] dispatch here:
//!
//! * `exact`: [`MatchMode::Exact`], the best row of the whole table. Blocks
//!   whose best possible score cannot beat the best so far are skipped
//!   (branch and bound, from a seed of a few blocks spread over the table),
//!   and scores are computed in batches that span blocks.
//! * `sampled`: [`MatchMode::Sampled`], the best of the first `k` passing
//!   rows from a random start, checking capacity last where it can.
//! * `reserve`: taking the demand from the chosen row with compare-and-swap,
//!   the user's in-flight quota, and [`ServerTable::release`].
//!
//! # Ties
//!
//! Servers with the same `prefer` score are ordered by a rotating start,
//! not by id alone: a match takes, among the tied best, the first server at
//! or after the table's tie start (wrapping past the last id to the
//! first), and each reservation moves the start to just after the server
//! reserved. Identical workers therefore take turns (round robin over the
//! tied ones) instead of the lowest id taking every task. In rank terms a
//! row's tie rank is `id - start` wrapped to `u32` ([`Tie::rank`]): the
//! scans compare (score, rank) where they compared (score, id), and since
//! ids grow in scan order, ranks grow too except across the row at the
//! start, which the scans treat as a boundary ([`Tie::split`]). The start
//! is read once per scan and written after each reservation (relaxed: a
//! start seen late only changes which of the tied servers wins).
//!
//! Below this layer, [`crate::query`] holds what a match reads (the plan,
//! the footprint to prefetch) and [`crate::scan`] the per-block kernels;
//! [`crate::explain`] answers the question a failed match leaves.

mod exact;
mod reserve;
mod sampled;

use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Guard};

use crate::explain::Explain;
use crate::query::plan::Scratch;
use crate::query::Query;
use crate::scan::score::key;
use crate::schema::{ServerId, BLOCK_ROWS};
use crate::table::ServerTable;

/// Scans per match when reservations keep losing races to other threads.
pub const MAX_ATTEMPTS: usize = 32;

/// How much of the table a match looks at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MatchMode {
    /// The best server of the whole table.
    Exact,
    /// The best of the first `k` matching servers found from a random block:
    /// for very large tables, where the best of a few thousand is as good as
    /// the best of all and costs a fraction of the scan.
    ///
    /// Free capacity (`slots_free`, `cores_free`, `mem_free`, the task's
    /// demand among them) is checked last: `k` counts the servers that pass
    /// every other clause, and the answer is the best of the servers scanned
    /// that also has the capacity. It is never a full server; when none of
    /// the scanned servers has room, the match goes on until `k` that do
    /// are found. In a cluster where most servers are full, the choice is
    /// therefore among fewer than `k`; raise `k` there.
    ///
    /// The chosen server is reserved moments after it was read: only that
    /// it is still live and up (and not re-registered) is checked again
    /// before the compare-and-swap on its free capacity, not every clause
    /// (an exact match, whose read can be a whole scan old, re-checks
    /// every clause).
    Sampled {
        /// Candidates to collect before choosing (at least 1).
        k: u32,
    },
}

/// Capacity held on a server for one task. Give it back with
/// [`ServerTable::release`] when the task ends (releasing twice is harmless).
#[derive(Debug)]
pub struct Reservation {
    /// The chosen server.
    pub server: ServerId,
    /// Slots reserved.
    pub slots: u32,
    /// Cores reserved.
    pub cores: u32,
    /// Bytes of memory reserved.
    pub mem: u64,
    /// The server's `prefer` score when chosen.
    pub score: f64,
    gen: u32,
    /// Where the server's row is (shard, block, row): release finds it
    /// without dividing the id.
    at: (u32, u32, u32),
    user: Option<Arc<AtomicU32>>,
    released: AtomicBool,
}

/// No server can take the task. Carries the explanation, so a placement
/// error needs no second request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no server matches: {explain}")]
pub struct NoMatch {
    /// Per-clause counts and nearest misses.
    pub explain: Explain,
}

#[derive(Copy, Clone, Debug)]
struct Candidate {
    shard: usize,
    b: usize,
    i: usize,
    id: ServerId,
    score: f64,
    gen: u32,
}

/// The tie order of one scan: rows of equal score rank by their id's
/// distance past `start` (wrapping), so the first row at or after the
/// start comes first and the row just before it last.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tie {
    start: u32,
}

impl Tie {
    /// The order that starts at id `start`.
    #[inline(always)]
    pub(crate) fn at(start: u32) -> Tie {
        Tie { start }
    }

    /// The id the order starts at (one past the table's last id, when the
    /// last server reserved was the last row: the order is then by id).
    #[inline(always)]
    pub(crate) fn start(self) -> ServerId {
        ServerId(self.start)
    }

    /// The rank of `id` among tied rows (lower wins).
    #[inline(always)]
    pub(crate) fn rank(self, id: ServerId) -> u32 {
        id.0.wrapping_sub(self.start)
    }

    /// The lowest rank of any row of the block whose first row is `first`:
    /// 0 when the block holds the start, else its first row's (ranks grow
    /// along a block that does not hold the start).
    #[inline(always)]
    pub(crate) fn block_min(self, first: ServerId) -> u32 {
        if self.start.wrapping_sub(first.0) < BLOCK_ROWS as u32 {
            0
        } else {
            self.rank(first)
        }
    }

    /// The rows of `m`, a mask of the block whose first row is `first`, as
    /// (rows at or after the start, rows before it): the first part ranks
    /// below the second, and within each, ranks grow with the row. The
    /// second part is empty unless the start lies inside the block.
    #[inline(always)]
    pub(crate) fn split(self, first: ServerId, m: u64) -> (u64, u64) {
        let off = self.start.wrapping_sub(first.0);
        if off == 0 || off >= BLOCK_ROWS as u32 {
            return (m, 0);
        }
        let before = m & ((1u64 << off) - 1);
        (m & !before, before)
    }
}

/// Whether (score, id) beats the current best: higher score, then the
/// lower tie rank ([`Tie`]).
#[inline]
pub(crate) fn better(
    score: f64,
    id: ServerId,
    best_score: f64,
    best_id: ServerId,
    tie: Tie,
) -> bool {
    let (a, b) = (key(score), key(best_score));
    a > b || (a == b && tie.rank(id) < tie.rank(best_id))
}

enum Attempt {
    Reserved(Reservation),
    Lost,
    Quota,
}

impl ServerTable {
    /// The best server for `query` (see [`MatchMode`]), with the task's
    /// demand reserved on it.
    pub fn match_and_reserve(
        &self,
        query: &Query,
        mode: MatchMode,
    ) -> Result<Reservation, NoMatch> {
        self.match_and_reserve_excluding(query, mode, &[])
    }

    /// As [`ServerTable::match_and_reserve`], skipping `excluded` servers
    /// (those that already refused this task).
    pub fn match_and_reserve_excluding(
        &self,
        query: &Query,
        mode: MatchMode,
        excluded: &[ServerId],
    ) -> Result<Reservation, NoMatch> {
        if !query.impossible && !self.at_quota(query) {
            let guard = &epoch::pin();
            for _ in 0..MAX_ATTEMPTS {
                let Some(c) = self.best(query, mode, excluded, guard) else {
                    break;
                };
                match self.try_reserve(query, c, mode == MatchMode::Exact, guard) {
                    Attempt::Reserved(r) => {
                        // The next tie goes to the server after this one.
                        self.tie.store(r.server.0.wrapping_add(1), Relaxed);
                        return Ok(r);
                    }
                    Attempt::Lost => continue,
                    Attempt::Quota => break,
                }
            }
        }
        Err(NoMatch {
            explain: self.explain_excluding(query, excluded),
        })
    }

    /// Where ties on `prefer` start now: among servers of equal score, a
    /// match takes the first at or after this id (wrapping around the
    /// table); every reservation sets it to the reserved server's id + 1,
    /// so tied servers take turns.
    pub fn tie_start(&self) -> u32 {
        self.tie.load(Relaxed)
    }

    /// Sets where ties start (see [`ServerTable::tie_start`]): for a probe
    /// that reserves and releases at once to put it back, so that the
    /// probe does not move the next placement, and for tests that pin it.
    pub fn set_tie_start(&self, start: u32) {
        self.tie.store(start, Relaxed);
    }

    /// The rows of `m` left after dropping the `excluded` servers of block
    /// `b` of shard `s`.
    #[inline]
    fn exclude(&self, s: usize, b: usize, mut m: u64, excluded: &[ServerId]) -> u64 {
        for &x in excluded {
            let (xs, xb, xi) = self.split(x);
            if xs == s && xb == b {
                m &= !(1u64 << xi);
            }
        }
        m
    }

    fn best(
        &self,
        q: &Query,
        mode: MatchMode,
        excluded: &[ServerId],
        guard: &Guard,
    ) -> Option<Candidate> {
        let tie = Tie::at(self.tie.load(Relaxed));
        let mut best = Scratch::with(|sc| match mode {
            MatchMode::Exact => self.best_exact(q, excluded, tie, guard, sc),
            MatchMode::Sampled { k } => self.best_sampled(q, k.max(1), excluded, tie, guard, sc),
        })?;
        if let MatchMode::Sampled { .. } = mode {
            // Read when the match ends, not per candidate: by then the line
            // asked for when the row became the candidate (`warm_row`,
            // with the other cells reserving and releasing it touch) has
            // had the rest of the scan to arrive.
            let block = self.shards.get(best.shard)?.block(best.b)?;
            best.gen = block.gen[best.i].load(Acquire);
        }
        Some(best)
    }
}

// Masks are `u64`: one bit per row of a block.
const _: () = assert!(BLOCK_ROWS == 64);
