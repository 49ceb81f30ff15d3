//! allot-engine: the sans-IO heart of allocation.
//!
//! A distributor keeps a [`ServerTable`] of its workers' attributes, current
//! through [`ServerTable::apply_delta`]; compiles each task's `require` and
//! `prefer` expressions ([`ServerTable::compile`], cached per task shape by
//! [`QueryCache`]); and places the task with
//! [`ServerTable::match_and_reserve`], which picks the best server and
//! reserves its capacity with compare-and-swap, or says why nothing fits
//! ([`NoMatch`] carries an [`Explain`]). Users and task classes persist in a
//! [`Store`].
//!
//! No tokio, no sockets: everything here is tested, benchmarked and fuzzed
//! without a network.
//!
//! ```
//! use allot_engine::*;
//! let table = ServerTable::new(TableConfig::default()).unwrap();
//! let id = table.insert(ServerRecord {
//!     name: "w1".into(), slots: 4, slots_free: 4, cores: 8, power: 10.0,
//!     idle_power: 8.0, mem: 16 << 30, mem_free: 16 << 30, load: 0.1,
//!     apps: vec!["echo".into()],
//!     labels: vec![("region".into(), LabelValue::Str("eu".into()))],
//! }).unwrap();
//! let mut env = Env::default();
//! env.task.app = "echo".into();
//! env.task.slots = 1;
//! env.client.push(("region".into(), LabelValue::Str("eu".into())));
//! let q = table.compile("server.region == client.region && server.mem >= 8GiB", "", &env).unwrap();
//! let r = table.match_and_reserve(&q, MatchMode::Exact).unwrap();
//! assert_eq!(r.server, id);
//! table.release(&r);
//! ```

// `unsafe` is confined to `rcu` (epoch reclamation and recycling), `simd`
// and `minmax` (SSE2 kernels) and `prefetch`, each with a SAFETY comment per block and tests run under
// Miri.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod arena;
mod batch;
mod block;
mod bound;
mod cache;
mod error;
mod eval;
mod explain;
pub mod expr;
mod inflight;
mod intern;
mod lazy;
mod lookahead;
mod matcher;
mod minmax;
mod names;
mod plan;
mod prefetch;
mod rcu;
pub mod reference;
pub mod schema;
mod score;
mod simd;
mod store;
mod table;

pub use cache::{QueryCache, DEFAULT_QUERY_CACHE};
pub use error::EngineError;
pub use explain::{ClauseStat, Explain, NearMiss};
pub use expr::{ExprError, Which, DEFAULT_PREFER};
pub use inflight::UserInFlight;
pub use matcher::{Demand, MatchMode, NoMatch, Query, Reservation, MAX_ATTEMPTS};
pub use schema::{
    Change, Column, DeltaOutcome, Env, LabelValue, ServerId, ServerRecord, ServerState, TaskAttrs,
    UserRecord,
};
pub use store::{Store, StoreError, TaskClass, TaskClassDb, UserDb, STORE_FILE, STORE_VERSION};
pub use table::{ServerSnapshot, ServerTable, TableConfig};
