//! The compiled query: what a task asks of a server, in the form the scan
//! runs.
//!
//! [`ServerTable::compile`] turns a task's `require` and `prefer` texts
//! (after the user's defaults) into a [`Query`]: the `require` conjuncts and
//! the implicit checks (the server is up, has the app, the user may run it,
//! the task's [`Demand`] of free capacity) each become a [`Clause`] with a
//! name that `explain` reports, and `prefer` a score program. A query is
//! reusable for every task of the same shape, and [`cache`] keeps them by
//! shape; it is valid only for the table that compiled it.
//!
//! What the match layer reads of a query is compiled with it:
//!
//! * [`plan`]: the clauses flattened into what a block needs: the starting
//!   mask, one SIMD kernel per plain clause with its operands resolved per
//!   shard, one fused test of the capacity clauses.
//! * [`lookahead`]: the parts of a block the query reads (its footprint),
//!   and warming those lines before the scan gets there.
//!
//! Below it are the expression language ([`crate::expr`]) and the per-block
//! kernels ([`crate::scan`]); above it, [`crate::matcher`] runs queries.

pub(crate) mod cache;
pub(crate) mod lookahead;
pub(crate) mod plan;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::expr::compile::Lowerer;
use crate::expr::parser::{conjuncts, parse};
use crate::expr::pred::Pred;
use crate::expr::{ExprError, Which, DEFAULT_PREFER};
use crate::query::lookahead::Footprint;
use crate::query::plan::Plan;
use crate::scan::bound::Bound;
use crate::scan::score::Score;
use crate::schema::{format_bytes, Column, Env};
use crate::table::ServerTable;

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
    /// The user the query was compiled for (its tasks run as this user).
    user_name: String,
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
    /// The name of the user the query was compiled for: a distributor
    /// names it to the worker that runs the task.
    pub fn user_name(&self) -> &str {
        &self.user_name
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
            user_name: env.user.name.clone(),
        })
    }
}
