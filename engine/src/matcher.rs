//! Compiling queries, matching them against the table, and reserving the
//! chosen server's capacity.
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

use std::cell::Cell;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Guard};

use crate::block::Cols;
use crate::eval::{Pred, View};
use crate::explain::Explain;
use crate::expr::parser::{conjuncts, parse};
use crate::expr::{compile::Lowerer, ExprError, Which, DEFAULT_PREFER};
use crate::inflight;
use crate::lookahead::{self, Footprint, Starts, AHEAD};
use crate::schema::{format_bytes, Column, Env, ServerId, BLOCK_ROWS};
use crate::score::{best_of_sum, upper_bound, Score};
use crate::table::{ServerTable, Shard};

/// How many blocks ahead of itself the exact scan warms a block's columns
/// (and twice that, its header).
const SCAN_AHEAD: usize = 4;

/// Blocks warmed from each sampled start (a match at k = 8 usually reads
/// two).
const SAMPLED_WARM_BLOCKS: usize = 2;

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
    Sampled {
        /// Candidates to collect before choosing (at least 1).
        k: u32,
    },
}

/// Resources a task takes from the server it is placed on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Demand {
    /// Slots.
    pub slots: u32,
    /// Cores.
    pub cores: u32,
    /// Bytes of memory.
    pub mem: u64,
}

pub(crate) struct Clause {
    pub(crate) name: String,
    pub(crate) pred: Pred,
}

pub(crate) struct UserQuota {
    pub(crate) name: String,
    pub(crate) max: u32,
    pub(crate) counter: Arc<AtomicU32>,
}

/// A compiled `require`/`prefer` pair for one task shape: a program over
/// server columns. Reusable for every task of the same shape (see
/// [`crate::QueryCache`]); valid only for the table that compiled it.
pub struct Query {
    pub(crate) clauses: Vec<Clause>,
    /// Indices of the clauses over plain columns and masks, evaluated per
    /// block, in clause order.
    pub(crate) plain: Vec<usize>,
    /// Indices of the clauses that read reservation columns, evaluated per
    /// remaining row after the plain ones.
    pub(crate) sparse: Vec<usize>,
    /// What the query reads of a block, for prefetching.
    pub(crate) footprint: Footprint,
    pub(crate) prefer: Score,
    pub(crate) demand: Demand,
    pub(crate) user: Option<UserQuota>,
    /// Some clause is constant false: nothing can match.
    pub(crate) impossible: bool,
    /// The app every match must have: the exact scan skips a block whose
    /// app mask is empty with one load, before any bound or prefetch (a
    /// table of many servers running other apps costs a load per block).
    pub(crate) app_gate: Option<u32>,
    require_text: String,
    prefer_text: String,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("require", &self.require_text)
            .field("prefer", &self.prefer_text)
            .field("demand", &self.demand)
            .field("clauses", &self.clause_names())
            .finish()
    }
}

impl Query {
    /// The clauses a server must pass, in evaluation order, implicit ones
    /// included, named as `explain` names them.
    pub fn clause_names(&self) -> Vec<&str> {
        self.clauses.iter().map(|c| c.name.as_str()).collect()
    }
    /// What a match reserves.
    pub fn demand(&self) -> Demand {
        self.demand
    }
    /// The `require` text that was compiled (after defaults).
    pub fn require_text(&self) -> &str {
        &self.require_text
    }
    /// The `prefer` text that was compiled (after defaults).
    pub fn prefer_text(&self) -> &str {
        &self.prefer_text
    }
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

/// Orders scores with NaN below everything, so the choice is total.
#[inline]
fn key(score: f64) -> f64 {
    if score.is_nan() {
        f64::NEG_INFINITY
    } else {
        score
    }
}

/// Whether (score, id) beats the current best: higher score, then lower id.
#[inline]
pub(crate) fn better(score: f64, id: ServerId, best_score: f64, best_id: ServerId) -> bool {
    let (a, b) = (key(score), key(best_score));
    a > b || (a == b && id < best_id)
}

/// The position of the first highest score (NaN lowest) among `scores`:
/// with rows in ascending order, the block's candidate (lowest id on ties).
#[inline]
fn best_of(scores: &[f64]) -> usize {
    let mut best = 0;
    let mut top = f64::NEG_INFINITY;
    for (j, &s) in scores.iter().enumerate() {
        let k = key(s);
        if k > top {
            top = k;
            best = j;
        }
    }
    best
}

/// The rows of `m`, in ascending order, into `rows`; returns how many.
#[inline]
fn select(m: u64, rows: &mut [u8; BLOCK_ROWS]) -> usize {
    let mut n = 0;
    let mut bits = m;
    while bits != 0 {
        rows[n % BLOCK_ROWS] = bits.trailing_zeros() as u8;
        bits &= bits - 1;
        n += 1;
    }
    n.min(BLOCK_ROWS)
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
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

enum Attempt {
    Reserved(Reservation),
    Lost,
    Quota,
}

impl ServerTable {
    /// Compiles `require` and `prefer` against a submission's context.
    ///
    /// An empty `require` falls back to the user's `default_require`, then to
    /// `true`; an empty `prefer` to the user's `default_prefer`, then to
    /// [`DEFAULT_PREFER`]. Besides the `require` clauses the query checks,
    /// as clauses of their own: the server is up, has `task.app`, the user may
    /// run the app, and the server has the task's free slots, cores and
    /// memory; the user's in-flight quota is checked when matching.
    pub fn compile(&self, require: &str, prefer: &str, env: &Env) -> Result<Query, ExprError> {
        let pick = |task: &str, user: &str, default: &str| -> String {
            if !task.trim().is_empty() {
                task.to_string()
            } else if !user.trim().is_empty() {
                user.to_string()
            } else {
                default.to_string()
            }
        };
        let require_text = pick(require, &env.user.default_require, "true");
        let prefer_text = pick(prefer, &env.user.default_prefer, DEFAULT_PREFER);
        let req_ast = parse(&require_text, Which::Require)?;
        let pref_ast = parse(&prefer_text, Which::Prefer)?;

        let mut clauses = Vec::new();
        let task = &env.task;
        if !env.user.allowed_apps.is_empty() {
            clauses.push(Clause {
                name: format!(
                    "user {:?} may run app {:?} (user.allowed_apps)",
                    env.user.name, task.app
                ),
                pred: Pred::Const(env.user.may_run(&task.app)),
            });
        }
        clauses.push(Clause {
            name: "server is up (not down or draining)".into(),
            pred: Pred::Up,
        });
        let prefer;
        {
            let mut strings = self.strings();
            if !task.app.is_empty() {
                let id = strings
                    .apps
                    .intern(&task.app)
                    .map_err(|e| ExprError::Limit(e.to_string()))?;
                clauses.push(Clause {
                    name: format!("app {:?} installed (task.app in server.apps)", task.app),
                    pred: Pred::HasApp(id),
                });
            }
            let mut low = Lowerer {
                src: &require_text,
                which: Which::Require,
                env,
                strings: &mut strings,
            };
            for c in conjuncts(&req_ast) {
                let pred = low.condition(c)?;
                if pred == Pred::Const(true) {
                    continue;
                }
                clauses.push(Clause {
                    name: require_text[c.start..c.end].trim().to_string(),
                    pred,
                });
            }
            let mut low = Lowerer {
                src: &prefer_text,
                which: Which::Prefer,
                env,
                strings: &mut strings,
            };
            prefer = low.number(&pref_ast)?;
        }
        let demand = Demand {
            slots: task.slots,
            cores: task.cores,
            mem: task.mem,
        };
        let range32 = |col, lo| Pred::Range32 {
            col,
            lo,
            hi: u32::MAX,
            negate: false,
        };
        if demand.slots > 0 {
            clauses.push(Clause {
                name: format!("slots_free >= {} (task.slots)", demand.slots),
                pred: range32(Column::SlotsFree, demand.slots),
            });
        }
        if demand.cores > 0 {
            clauses.push(Clause {
                name: format!("cores_free >= {} (task.cores)", demand.cores),
                pred: range32(Column::CoresFree, demand.cores),
            });
        }
        if demand.mem > 0 {
            clauses.push(Clause {
                name: format!("mem_free >= {} (task.mem)", format_bytes(demand.mem)),
                pred: Pred::Range64 {
                    col: Column::MemFree,
                    lo: demand.mem,
                    hi: u64::MAX,
                    negate: false,
                },
            });
        }
        let user = if env.user.name.is_empty() {
            None
        } else {
            let counter = self.inflight.counter(&env.user.name).ok_or_else(|| {
                ExprError::Limit(format!(
                    "too many users in flight at once (limit {}); retry when tasks finish",
                    crate::schema::MAX_TRACKED_USERS
                ))
            })?;
            Some(UserQuota {
                name: env.user.name.clone(),
                max: env.user.max_in_flight,
                counter,
            })
        };
        let impossible = clauses.iter().any(|c| c.pred == Pred::Const(false));
        let app_gate = clauses.iter().find_map(|c| match c.pred {
            Pred::HasApp(a) => Some(a),
            _ => None,
        });
        let (sparse, plain): (Vec<usize>, Vec<usize>) =
            (0..clauses.len()).partition(|&c| clauses[c].pred.reads_capacity());
        let footprint = Footprint::of(clauses.iter().map(|c| &c.pred), &prefer);
        let prefer = Score::new(prefer);
        Ok(Query {
            clauses,
            plain,
            sparse,
            footprint,
            prefer,
            demand,
            user,
            impossible,
            app_gate,
            require_text,
            prefer_text,
        })
    }

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
                match self.try_reserve(query, c, guard) {
                    Attempt::Reserved(r) => return Ok(r),
                    Attempt::Lost => continue,
                    Attempt::Quota => break,
                }
            }
        }
        Err(NoMatch {
            explain: self.explain_excluding(query, excluded),
        })
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
            inflight::release(u);
        }
        if let Some((_, _, block, i)) = self.locate(r.server) {
            if block.gen[i].load(Acquire) == r.gen {
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

    /// Rows of the block passing every clause (live rows only): the plain
    /// clauses over the whole block, then the capacity clauses over the rows
    /// left.
    #[inline]
    pub(crate) fn block_mask(&self, q: &Query, view: &View<'_>) -> u64 {
        let mut m = view.block().live.load(Acquire);
        for &c in &q.plain {
            if m == 0 {
                return 0;
            }
            m &= q.clauses[c].pred.eval(view);
        }
        for &c in &q.sparse {
            if m == 0 {
                return 0;
            }
            m = q.clauses[c].pred.filter(view, m);
        }
        m
    }

    /// Considers one block; returns how many rows passed.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn scan_block(
        &self,
        q: &Query,
        s: usize,
        shard: &Shard,
        b: usize,
        excluded: &[ServerId],
        best: &mut Option<Candidate>,
        guard: &Guard,
    ) -> u32 {
        let Some(block) = shard.block(b) else {
            return 0;
        };
        let view = View::new(shard, block, b, guard);
        let mut m = self.block_mask(q, &view);
        if m == 0 {
            return 0;
        }
        for &x in excluded {
            let (xs, xb, xi) = self.split(x);
            if xs == s && xb == b {
                m &= !(1u64 << xi);
            }
        }
        if m == 0 {
            return 0;
        }
        let n = m.count_ones();
        let (i, score) = match &q.prefer {
            Score::Sum(terms) => best_of_sum(terms, &view, m),
            Score::General(e) => {
                let mut rows = [0u8; BLOCK_ROWS];
                let n = select(m, &mut rows);
                let mut scores = [0.0f64; BLOCK_ROWS];
                e.eval_sel(&view, &rows[..n], &mut scores[..n]);
                let j = best_of(&scores[..n]);
                (rows[j] as usize % BLOCK_ROWS, scores[j])
            }
        };
        let id = self.id_of(s, b, i);
        if best.is_none_or(|c| better(score, id, c.score, c.id)) {
            *best = Some(Candidate {
                shard: s,
                b,
                i,
                id,
                score,
                gen: block.gen[i].load(Acquire),
            });
        }
        n
    }

    fn best(
        &self,
        q: &Query,
        mode: MatchMode,
        excluded: &[ServerId],
        guard: &Guard,
    ) -> Option<Candidate> {
        let mut best: Option<Candidate> = None;
        let fp = &q.footprint;
        match mode {
            MatchMode::Exact => {
                // Branch and bound: ids grow in scan order, so a block whose
                // best possible score does not beat the best so far cannot
                // hold the answer (ties go to the earlier row).
                let sum = match &q.prefer {
                    Score::Sum(terms) => Some(terms.as_slice()),
                    Score::General(_) => None,
                };
                for (s, shard) in self.shards.iter().enumerate() {
                    let nb = shard.nblocks();
                    for b in 0..nb {
                        if q.app_gate.is_some_and(|a| shard.app_mask(a, b) == 0) {
                            continue;
                        }
                        // Warm the header 2 * SCAN_AHEAD blocks ahead and the
                        // columns SCAN_AHEAD ahead (their pointers are in the
                        // header warmed SCAN_AHEAD blocks ago). With bounds,
                        // only the groups' first lines: most blocks end there.
                        if b + 2 * SCAN_AHEAD < nb {
                            lookahead::warm_header(shard, b + 2 * SCAN_AHEAD, fp, guard);
                        }
                        if b + SCAN_AHEAD < nb {
                            let ahead = b + SCAN_AHEAD;
                            lookahead::warm_columns(shard, ahead, fp, sum.is_some(), guard);
                        }
                        if let (Some(terms), Some(c), Some(block)) = (sum, &best, shard.block(b)) {
                            if upper_bound(terms, &Cols::of(block, guard)) <= key(c.score) {
                                continue;
                            }
                        }
                        self.scan_block(q, s, shard, b, excluded, &mut best, guard);
                    }
                }
            }
            MatchMode::Sampled { k } => {
                let k = k.max(1);
                let n = self.shards.len();
                let (r, ring) = Starts::take(|| next_random(self.seed()));
                // The starts of the next matches, one stage each: by the time
                // a start is used, its blocks' lines have arrived.
                for b in 0..SAMPLED_WARM_BLOCKS {
                    let (s1, b1) = self.start_of(ring[AHEAD - 1]);
                    lookahead::warm_slots(&self.shards[s1], b1 + b, fp);
                    let (s2, b2) = self.start_of(ring[AHEAD - 2]);
                    lookahead::warm_header(&self.shards[s2], b2 + b, fp, guard);
                    let (s3, b3) = self.start_of(ring[0]);
                    lookahead::warm_columns(&self.shards[s3], b3 + b, fp, false, guard);
                }
                let (s0, b0) = self.start_of(r);
                let mut found = 0u32;
                'outer: for off in 0..=n {
                    let s = (s0 + off) % n;
                    let shard = &self.shards[s];
                    let nb = shard.nblocks();
                    let range = if off == 0 {
                        b0.min(nb)..nb
                    } else if off == n {
                        0..b0.min(nb)
                    } else {
                        0..nb
                    };
                    for b in range {
                        if b + SAMPLED_WARM_BLOCKS < nb {
                            lookahead::warm_header(shard, b + SAMPLED_WARM_BLOCKS, fp, guard);
                            let ahead = b + SAMPLED_WARM_BLOCKS;
                            lookahead::warm_columns(shard, ahead, fp, false, guard);
                        }
                        found += self.scan_block(q, s, shard, b, excluded, &mut best, guard);
                        if found >= k {
                            break 'outer;
                        }
                    }
                }
            }
        }
        best
    }

    /// The shard and block a sampled match starting from draw `r` begins
    /// at.
    #[inline]
    fn start_of(&self, r: u64) -> (usize, usize) {
        let s = (r % self.shards.len() as u64) as usize;
        let nb = self.shards[s].nblocks();
        let b = if nb == 0 {
            0
        } else {
            ((r >> 32) % nb as u64) as usize
        };
        (s, b)
    }

    fn try_reserve(&self, q: &Query, c: Candidate, guard: &Guard) -> Attempt {
        let shard = &self.shards[c.shard];
        let Some(block) = shard.block(c.b) else {
            return Attempt::Lost;
        };
        let i = c.i;
        // A fresh view: the columns as of now, not as the scan saw them.
        let view = View::new(shard, block, c.b, guard);
        // Re-check the row now: a delta or a re-registration may have changed
        // it since the scan read it.
        let live = block.live.load(Acquire) & (1u64 << i) != 0;
        if !live
            || !q.clauses.iter().all(|cl| cl.pred.eval_row(&view, i))
            || block.gen[i].load(Acquire) != c.gen
        {
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
                if !inflight::try_acquire(&u.counter, u.max) {
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
            user,
            released: AtomicBool::new(false),
        })
    }
}

// Masks are `u64`: one bit per row of a block.
const _: () = assert!(BLOCK_ROWS == 64);
