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
//! # Layers
//!
//! From the bottom up; a layer imports only from the layers below it.
//!
//! * `schema` and `error`: the records, columns, limits and errors that
//!   everything shares.
//! * `table`: storage. The [`ServerTable`]'s shards of 64-row blocks, read
//!   without locks under an epoch and written copy-on-write, with the
//!   arena, interners and per-user in-flight counters they are built from.
//! * [`expr`]: the expression language, from text to the lowered form: a
//!   predicate per `require` clause and a number for `prefer`, over server
//!   columns only.
//! * `scan`: kernels over one block: predicates into row masks (SIMD where
//!   the storage allows), scores of the passing rows, bounds on a block's
//!   scores.
//! * `query`: the compiled [`Query`] and what the scan runs of it (its plan
//!   and its footprint for prefetching), and the [`QueryCache`].
//! * `matcher` and `explain`: running a query over the table (exact or
//!   sampled) and reserving the chosen server, or saying why none fits.
//!
//! `db` (the [`Store`]) stands beside them, on `schema` alone, and
//! [`reference`] is the naive matcher the tests and fuzzers compare with.
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

// `unsafe` is confined to `table::arena` (the huge-page allocator),
// `table::rcu` (epoch reclamation and recycling), `scan::simd` and
// `table::minmax` (SSE2 kernels) and `scan::prefetch`, each with a SAFETY
// comment per block and tests run under Miri.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod db;
mod error;
mod explain;
pub mod expr;
#[doc(hidden)]
pub mod fixture;
#[doc(hidden)]
pub mod fuzzing;
mod matcher;
mod query;
pub mod reference;
mod scan;
pub mod schema;
mod table;

pub use db::{
    precheck as precheck_redb_file, Store, StoreError, TaskClass, TaskClassDb, UserDb, STORE_FILE,
    STORE_VERSION,
};
pub use error::EngineError;
pub use explain::{ClauseStat, Explain, NearMiss};
pub use expr::{ExprError, Which, DEFAULT_PREFER};
pub use matcher::{MatchMode, NoMatch, Reservation, MAX_ATTEMPTS};
pub use query::cache::{QueryCache, DEFAULT_QUERY_CACHE};
pub use query::{Demand, Query};
pub use schema::{
    Change, Column, DeltaOutcome, Env, LabelValue, ServerId, ServerRecord, ServerState, TaskAttrs,
    UserRecord,
};
pub use table::user_inflight::UserInFlight;
pub use table::{ServerSnapshot, ServerTable, TableConfig, TableTotals};
