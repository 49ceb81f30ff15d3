//! A bounded cache of compiled queries keyed by task shape (HTCondor's
//! autoclusters): identical tasks (same expressions, demands, user and client
//! attributes) share one compiled [`Query`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::expr::ExprError;
use crate::query::Query;
use crate::schema::Env;
use crate::table::ServerTable;

/// Compiled queries by task shape.
///
/// Bound: `capacity` entries. When full, the oldest entry (by insertion) is
/// evicted: shapes come and go with workloads, and recompiling an evicted
/// shape costs microseconds. The key is the whole compile input (texts and
/// [`Env`], user record included), so a changed user record or client
/// attribute is a different shape, never a stale hit. A cache serves one
/// table.
pub struct QueryCache {
    map: HashMap<String, Arc<Query>>,
    order: VecDeque<String>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

/// Default [`QueryCache`] bound.
pub const DEFAULT_QUERY_CACHE: usize = 4096;

impl QueryCache {
    /// An empty cache holding at most `capacity` (at least 1) queries.
    pub fn new(capacity: usize) -> QueryCache {
        QueryCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// The compiled query for this shape, compiling it on a miss. Errors are
    /// not cached.
    pub fn get_or_compile(
        &mut self,
        table: &ServerTable,
        require: &str,
        prefer: &str,
        env: &Env,
    ) -> Result<Arc<Query>, ExprError> {
        let key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{:?}",
            require.len(),
            require,
            prefer,
            env
        );
        if let Some(q) = self.map.get(&key) {
            self.hits += 1;
            return Ok(q.clone());
        }
        self.misses += 1;
        let q = Arc::new(table.compile(require, prefer, env)?);
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, q.clone());
        Ok(q)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that compiled.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}
