//! Taking a match's demand from the chosen row, and giving it back.
//!
//! Capacity is reserved with compare-and-swap on the row's free counts:
//! what the scan read may be stale by then, the compare-and-swap is
//! authoritative, and a lost race sends the match back to scan (see
//! [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS)). The user's in-flight quota is
//! taken after the capacity, through the counter the query holds
//! ([`crate::table::user_inflight`]), so a match never looks a user up by
//! name.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

use crossbeam_epoch::{self as epoch, Guard};

use super::{Attempt, Candidate, Reservation};
use crate::query::plan::BlockPlan;
use crate::query::Query;
use crate::schema::BLOCK_ROWS;
use crate::table::user_inflight;
use crate::table::ServerTable;

fn cas_take32(c: &AtomicU32, n: u32) -> bool {
    n == 0
        || c.fetch_update(AcqRel, Acquire, |v| v.checked_sub(n))
            .is_ok()
}
fn cas_take64(c: &AtomicU64, n: u64) -> bool {
    n == 0
        || c.fetch_update(AcqRel, Acquire, |v| v.checked_sub(n))
            .is_ok()
}
/// Gives back `n`, never above `cap` (a delta may have lowered the free
/// count meanwhile; the worker's next report is authoritative anyway).
fn give32(c: &AtomicU32, n: u32, cap: u32) {
    if n > 0 {
        let _ = c.fetch_update(AcqRel, Acquire, |v| {
            Some(v.saturating_add(n).min(cap.max(v)))
        });
    }
}
fn give64(c: &AtomicU64, n: u64, cap: u64) {
    if n > 0 {
        let _ = c.fetch_update(AcqRel, Acquire, |v| {
            Some(v.saturating_add(n).min(cap.max(v)))
        });
    }
}

impl ServerTable {
    /// Whether the user `q` runs for has as many tasks in flight as their
    /// quota allows (a match would fail on the quota alone).
    pub fn user_at_quota(&self, q: &Query) -> bool {
        self.at_quota(q)
    }

    pub(crate) fn at_quota(&self, q: &Query) -> bool {
        q.user
            .as_ref()
            .is_some_and(|u| u.max > 0 && u.counter.load(Relaxed) >= u.max)
    }

    /// Gives a reservation's capacity back to its server (unless the server
    /// was removed or re-registered since) and its unit back to the user's
    /// quota. Returns false if it was already released.
    pub fn release(&self, r: &Reservation) -> bool {
        if r.released.swap(true, AcqRel) {
            return false;
        }
        if let Some(u) = &r.user {
            user_inflight::release(u);
        }
        let (s, b, i) = (
            r.at.0 as usize,
            r.at.1 as usize,
            r.at.2 as usize % BLOCK_ROWS,
        );
        if let Some(block) = self.shards.get(s).and_then(|sh| sh.block(b)) {
            // A vacated or re-occupied row has moved on: nothing to give.
            let live = block.live.load(Acquire) & 1 << i != 0;
            if live && block.gen[i].load(Acquire) == r.gen {
                let guard = &epoch::pin();
                let fixed = block.fixed(guard);
                let (cap, res) = (&block.cap[i], &block.reserved[i]);
                give32(&cap.slots_free, r.slots, fixed.slots[i]);
                give32(&cap.cores_free, r.cores, fixed.cores[i]);
                give64(&cap.mem_free, r.mem, fixed.mem[i]);
                let sub32 = |c: &AtomicU32, n: u32| {
                    if n > 0 {
                        let _ = c.fetch_update(AcqRel, Acquire, |v| Some(v.saturating_sub(n)));
                    }
                };
                sub32(&res.slots, r.slots);
                sub32(&res.cores, r.cores);
                if r.mem > 0 {
                    let _ = res
                        .mem
                        .fetch_update(AcqRel, Acquire, |v| Some(v.saturating_sub(r.mem)));
                }
            }
        }
        true
    }

    /// Takes the query's demand from candidate `c` with compare-and-swap.
    ///
    /// The candidate was read moments ago; the generation check catches a
    /// server removed or re-registered since, and the compare-and-swap on
    /// the free counts is authoritative for capacity. With `recheck`, every
    /// clause is evaluated again on the row as of now (a delta may have
    /// changed it): the exact scan read the row up to a whole scan ago
    /// (about a millisecond at a million servers). A sampled match read it
    /// a few hundred nanoseconds ago, so only that the server is still up
    /// is checked; a delta landing in that window is no different from
    /// one landing just after the reservation.
    pub(super) fn try_reserve(
        &self,
        q: &Query,
        c: Candidate,
        recheck: bool,
        guard: &Guard,
    ) -> Attempt {
        let shard = &self.shards[c.shard];
        let Some(block) = shard.block(c.b) else {
            return Attempt::Lost;
        };
        let i = c.i % BLOCK_ROWS;
        let still = if recheck {
            let Some(sp) = q.plan.shard(shard) else {
                return Attempt::Lost;
            };
            BlockPlan::new(&sp, block, c.b, guard).row(&q.plan, &q.clauses, i)
        } else {
            let mut m = block.live.load(Acquire);
            if q.plan.up {
                m &= block.up.load(Acquire);
            }
            m & 1 << i != 0
        };
        if !still || block.gen[i].load(Acquire) != c.gen {
            return Attempt::Lost;
        }
        let d = q.demand;
        let cap = &block.cap[i];
        if !cas_take32(&cap.slots_free, d.slots) {
            return Attempt::Lost;
        }
        let undo_slots = || give32(&cap.slots_free, d.slots, u32::MAX);
        if !cas_take32(&cap.cores_free, d.cores) {
            undo_slots();
            return Attempt::Lost;
        }
        let undo_cores = || give32(&cap.cores_free, d.cores, u32::MAX);
        if !cas_take64(&cap.mem_free, d.mem) {
            undo_cores();
            undo_slots();
            return Attempt::Lost;
        }
        let undo_all = || {
            give64(&cap.mem_free, d.mem, u64::MAX);
            undo_cores();
            undo_slots();
        };
        if block.gen[i].load(Acquire) != c.gen {
            undo_all();
            return Attempt::Lost;
        }
        let user = match &q.user {
            Some(u) => {
                if !user_inflight::try_acquire(&u.counter, u.max) {
                    undo_all();
                    return Attempt::Quota;
                }
                Some(u.counter.clone())
            }
            None => None,
        };
        let res = &block.reserved[i];
        if d.slots > 0 {
            res.slots.fetch_add(d.slots, Relaxed);
        }
        if d.cores > 0 {
            res.cores.fetch_add(d.cores, Relaxed);
        }
        if d.mem > 0 {
            res.mem.fetch_add(d.mem, Relaxed);
        }
        Attempt::Reserved(Reservation {
            server: c.id,
            slots: d.slots,
            cores: d.cores,
            mem: d.mem,
            score: c.score,
            gen: c.gen,
            // Shard, block and row numbers fit: ids are `u32`.
            at: (c.shard as u32, c.b as u32, c.i as u32),
            user,
            released: AtomicBool::new(false),
        })
    }
}
