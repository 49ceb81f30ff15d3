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

use crate::batch::{Batch, Leaves, Scorer};
use crate::block::Block;
use crate::bound::Bound;
use crate::eval::Pred;
use crate::explain::Explain;
use crate::expr::parser::{conjuncts, parse};
use crate::expr::{compile::Lowerer, ExprError, Which, DEFAULT_PREFER};
use crate::inflight;
use crate::lookahead::{self, Footprint, Starts, AHEAD};
use crate::plan::{BlockPlan, Plan, Scratch, ShardPlan};
use crate::schema::{format_bytes, Column, Env, ServerId, BLOCK_ROWS};
use crate::score::{key, Score};
use crate::table::ServerTable;

/// How many blocks ahead of itself the exact scan warms a block's columns
/// (and twice that, its header).
const SCAN_AHEAD: usize = 4;

/// Most blocks the exact scan's seed scores before the scan
/// ([`ServerTable::seed_exact`]).
const SEED_BLOCKS: usize = 16;

/// Blocks per seed block (a table of fewer has one).
const SEED_STRETCH: usize = 256;

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
    /// The clauses and `prefer` as the scan runs them.
    pub(crate) plan: Plan,
    /// What the query reads of a block, for prefetching.
    pub(crate) footprint: Footprint,
    pub(crate) prefer: Score,
    pub(crate) demand: Demand,
    pub(crate) user: Option<UserQuota>,
    /// Some clause is constant false: nothing can match.
    pub(crate) impossible: bool,
    /// How the exact scan bounds a block's scores to skip blocks that
    /// cannot beat the best so far; `None` if `prefer` has no bound.
    pub(crate) bound: Option<Bound>,
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

    /// The same query with block pruning off: the exact scan filters and
    /// scores every block instead of skipping those whose best possible
    /// score cannot beat the best so far. Same answers, slower; for
    /// measuring the raw vectorised scan (the engine bench's
    /// `engine_unpruned`) and for checking that pruning changes no answer.
    #[doc(hidden)]
    pub fn without_pruning(mut self) -> Query {
        self.bound = None;
        self
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

/// Whether (score, id) beats the current best: higher score, then lower id.
#[inline]
pub(crate) fn better(score: f64, id: ServerId, best_score: f64, best_id: ServerId) -> bool {
    let (a, b) = (key(score), key(best_score));
    a > b || (a == b && id < best_id)
}

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
}

impl Tops {
    fn new() -> Tops {
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
        }
    }

    /// The index of the best top (or of the worst, with `worst`); 0 when
    /// there is none.
    #[inline]
    fn extreme(&self, worst: bool) -> usize {
        let mut at = 0;
        for x in 1..self.len.min(LAZY_TOPS) {
            let (t, a) = (&self.items[x], &self.items[at]);
            if better(t.score, t.id, a.score, a.id) != worst {
                at = x;
            }
        }
        at
    }

    /// Whether a row of (`score`, `id`) would be the best top.
    #[inline(always)]
    fn leads(&self, score: f64, id: ServerId) -> bool {
        let a = &self.items[self.lead % LAZY_TOPS];
        self.len == 0 || better(score, id, a.score, a.id)
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
        let out = if better(t.score, t.id, worst.score, worst.id) {
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
            .is_none_or(|(s, id)| better(out.score, out.id, s, id))
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
            .is_none_or(|(s, id)| better(t.score, t.id, s, id))
    }
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

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
        let footprint = Footprint::of(clauses.iter().map(|c| &c.pred), &prefer);
        let score = Score::new(prefer.clone());
        let bound = Bound::of(&score, &prefer);
        let prefer = score;
        let plan = Plan::new(&clauses, &prefer);
        Ok(Query {
            clauses,
            plan,
            footprint,
            prefer,
            demand,
            user,
            impossible,
            bound,
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
                match self.try_reserve(query, c, mode == MatchMode::Exact, guard) {
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
        let mut best = Scratch::with(|sc| match mode {
            MatchMode::Exact => self.best_exact(q, excluded, guard, sc),
            MatchMode::Sampled { k } => self.best_sampled(q, k.max(1), excluded, guard, sc),
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

    /// The best row of the whole table. Per block: the app word (one load;
    /// a block without the app costs nothing more), the bound, the plain
    /// clauses, then the scores of the rows left; the capacity clauses are
    /// tested only for a row that would become the best (most blocks have
    /// none, so the reservation cells are hardly read at all), the next
    /// best row of the block if it fails.
    fn best_exact(
        &self,
        q: &Query,
        excluded: &[ServerId],
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
            Some(_) => self.seed_exact(q, excluded, guard, sc),
            None => None,
        };
        // A `prefer` that is not scored row by row (the plan has leaves only
        // then) is scored in batches of rows from consecutive blocks
        // (`batch.rs` says why).
        let batched = match (&plan.leaves, Scorer::of(&q.prefer)) {
            (Some(leaves), Some(scorer)) => Some((leaves, scorer)),
            _ => None,
        };
        for (s, shard) in self.shards.iter().enumerate() {
            let Some(sp) = plan.shard(shard) else {
                continue;
            };
            sc.batch.clear();
            let nb = shard.nblocks();
            for b in 0..nb {
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
                    // A tie with the best loses only to an earlier row (ids
                    // grow in scan order; the seed may lie ahead).
                    let up = bound.upper(&bp.cols, |k| bp.label_range(k, &plan.keys));
                    let k = key(c.score);
                    if up < k || (up == k && self.id_of(s, b, 0) > c.id) {
                        continue;
                    }
                }
                let Some(m) = self.passing(q, s, b, &bp, excluded) else {
                    continue;
                };
                if let Some((leaves, scorer)) = batched {
                    if !sc.batch.has_room(m) {
                        self.settle_batch(q, s, &sp, scorer, leaves, &mut best, guard, sc);
                    }
                    sc.batch.push(b, m, leaves, |leaf, rows, out| {
                        bp.gather(leaf, &plan.keys, rows, out)
                    });
                    continue;
                }
                self.block_best(q, s, &bp, m, &mut best, sc);
            }
            if let Some((leaves, scorer)) = batched {
                self.settle_batch(q, s, &sp, scorer, leaves, &mut best, guard, sc);
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

    /// Makes the best row of `m` in block `bp` the best if it beats
    /// `best`: the first highest score (NaN lowest); if its row fails the
    /// capacity clauses, the next, and so on.
    #[inline(always)]
    fn block_best(
        &self,
        q: &Query,
        s: usize,
        bp: &BlockPlan<'_>,
        mut m: u64,
        best: &mut Option<Candidate>,
        sc: &mut Scratch,
    ) {
        while m != 0 {
            let (i, score, _) = bp.top(&q.plan, &q.prefer, m, sc);
            let id = self.id_of(s, bp.b, i);
            if best.is_some_and(|c| !better(score, id, c.score, c.id)) {
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
                self.block_best(q, s, &bp, m, &mut best, sc);
            }
        }
        best
    }

    /// Scores the rows of the exact scan's batch (from shard `s`) and, if
    /// the best of them with the capacity beats `best`, makes it the best;
    /// empties the batch. The capacity is tested only for a row that would
    /// become the best (the next best if it fails), as block by block.
    #[allow(clippy::too_many_arguments)]
    fn settle_batch(
        &self,
        q: &Query,
        s: usize,
        sp: &ShardPlan<'_>,
        scorer: Scorer<'_>,
        leaves: &Leaves,
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
        // On a tie the best keeps its place unless the batch starts before
        // it (ids grow in scan order; only the exact scan's seed can lie
        // ahead), and then the batch's first highest row is weighed.
        let (b0, i0) = batch.row(0);
        let first = self.id_of(s, b0, i0);
        if best.is_none_or(|c| top > key(c.score) || (top == key(c.score) && first < c.id)) {
            let mut alive = u64::MAX >> (64 - n.min(64));
            while alive != 0 {
                let j = Batch::best_of(&regs[0], alive);
                let score = regs[0].as_flattened()[j];
                let (b, i) = batch.row(j);
                let id = self.id_of(s, b, i);
                if best.is_some_and(|c| !better(score, id, c.score, c.id)) {
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

    /// The best row by `prefer` of block `b`, among the rows that pass the
    /// query's clauses (the capacity ones only with `capacity`) and are
    /// neither in `failed` nor `excluded`; `None` if no row does.
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
        let (i, score, passed) = bp.top(plan, &q.prefer, m, sc);
        Some(BlockTop {
            block,
            i,
            id: self.id_of(s, b, i),
            score,
            passed,
        })
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
        best: &mut Option<Candidate>,
        guard: &Guard,
        sc: &mut Scratch,
    ) -> u32 {
        let Some(t) = self.block_top(q, s, sp, b, 0, true, excluded, guard, sc) else {
            return 0;
        };
        if best.is_none_or(|c| better(t.score, t.id, c.score, c.id)) {
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
    fn best_sampled(
        &self,
        q: &Query,
        k: u32,
        excluded: &[ServerId],
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
            let mut tops = Tops::new();
            self.scan_from(q, start, k, |s, sp, b| {
                self.lazy_block(q, s, sp, b, 0, excluded, &mut tops, guard, sc)
            });
            if let Some(c) = self.verify_lazy(q, excluded, &mut tops, guard, sc) {
                return Some(c);
            }
        }
        let mut best = None;
        self.scan_from(q, start, k, |s, sp, b| {
            self.sample_block(q, s, sp, b, excluded, &mut best, guard, sc)
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
        let Some(t) = self.block_top(q, s, sp, b, failed, false, excluded, guard, sc) else {
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
    fn try_reserve(&self, q: &Query, c: Candidate, recheck: bool, guard: &Guard) -> Attempt {
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
            // Shard, block and row numbers fit: ids are `u32`.
            at: (c.shard as u32, c.b as u32, c.i as u32),
            user,
            released: AtomicBool::new(false),
        })
    }
}

// Masks are `u64`: one bit per row of a block.
const _: () = assert!(BLOCK_ROWS == 64);

#[cfg(test)]
mod tests {
    use super::{locate, scale, seed_blocks, SEED_BLOCKS, SEED_STRETCH};

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
