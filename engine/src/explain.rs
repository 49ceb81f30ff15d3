//! Why a task matches where it does, or nowhere: per clause, how many servers
//! it rejects, and the servers that came closest.
//!
//! `eliminated` counts, for each clause on its own, the servers that fail it
//! (HTCondor's `-better-analyze` view): it answers "which of my conditions is
//! the problem" independently of clause order.

use std::fmt;
use std::sync::atomic::Ordering::Acquire;

use crate::query::Query;
use crate::scan::eval::View;
use crate::schema::{ServerId, BLOCK_ROWS, MAX_NEAREST};
use crate::table::ServerTable;

/// Rejections of one clause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClauseStat {
    /// The clause as the user wrote it, or a description of an implicit one.
    pub clause: String,
    /// Servers that fail this clause.
    pub eliminated: u32,
}

/// A server that failed few clauses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearMiss {
    /// Server name.
    pub server: String,
    /// The clauses it failed.
    pub failed: Vec<String>,
}

/// The analysis of a query against the table.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Explain {
    /// Servers in the table (any state).
    pub total: u32,
    /// Servers passing every clause.
    pub matched: u32,
    /// Every clause, implicit ones included, in evaluation order.
    pub clauses: Vec<ClauseStat>,
    /// Up to [`MAX_NEAREST`] servers failing the fewest clauses (at least
    /// one), fewest first, then by id.
    pub nearest: Vec<NearMiss>,
    /// Servers that fail only clauses they may pass later by themselves:
    /// free slots, cores or memory, the up state, the user's in-flight
    /// quota. When a task matches nowhere but this is above zero, it can
    /// wait for capacity; when it is zero, waiting cannot help. Counted over
    /// the whole table, not only the `nearest` shown.
    pub waitable: u32,
}

impl fmt::Display for Explain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} servers pass every clause",
            self.matched, self.total
        )?;
        let mut worst: Vec<&ClauseStat> =
            self.clauses.iter().filter(|c| c.eliminated > 0).collect();
        worst.sort_by_key(|c| std::cmp::Reverse(c.eliminated));
        for c in worst {
            write!(f, "; `{}` rejects {}", c.clause, c.eliminated)?;
        }
        if let Some(n) = self.nearest.first() {
            write!(f, "; nearest: {} (fails {})", n.server, n.failed.join(", "))?;
        }
        Ok(())
    }
}

impl ServerTable {
    /// Analyses `query` against the whole table.
    pub fn explain(&self, query: &Query) -> Explain {
        self.explain_excluding(query, &[])
    }

    /// As [`ServerTable::explain`], with `excluded` servers counted as
    /// failing a clause of their own.
    pub fn explain_excluding(&self, query: &Query, excluded: &[ServerId]) -> Explain {
        let quota = query.user.as_ref().filter(|u| u.max > 0);
        let at_quota = self.at_quota(query);
        let mut names: Vec<String> = query.clauses.iter().map(|c| c.name.clone()).collect();
        if let Some(u) = quota {
            names.push(format!(
                "user {:?} below max_in_flight {} ({} in flight)",
                u.name,
                u.max,
                u.counter.load(Acquire)
            ));
        }
        if !excluded.is_empty() {
            names.push("not already tried for this task (excluded)".into());
        }
        let mut elim = vec![0u32; names.len()];
        // Per clause of `names`: whether failing it is waitable (the
        // quota is; being excluded for this task is not).
        let mut frees_up: Vec<bool> = query.clauses.iter().map(|c| c.pred.frees_up()).collect();
        if quota.is_some() {
            frees_up.push(true);
        }
        if !excluded.is_empty() {
            frees_up.push(false);
        }
        let mut waitable = 0u32;
        let guard = &crossbeam_epoch::pin();
        let (mut total, mut matched) = (0u32, 0u32);
        // (failures, id) of the best near misses so far, sorted.
        let mut nearest: Vec<(u32, ServerId)> = Vec::new();
        let fails_at = |s: usize, b: usize, view: &View<'_>, live: u64| -> Vec<u64> {
            let mut fails: Vec<u64> = query
                .clauses
                .iter()
                .map(|c| live & !c.pred.eval(view))
                .collect();
            if quota.is_some() {
                fails.push(if at_quota { live } else { 0 });
            }
            if !excluded.is_empty() {
                let mut m = 0u64;
                for &x in excluded {
                    let (xs, xb, xi) = self.split(x);
                    if xs == s && xb == b {
                        m |= 1 << xi;
                    }
                }
                fails.push(live & m);
            }
            fails
        };
        for (s, shard) in self.shards.iter().enumerate() {
            for b in 0..shard.nblocks() {
                let Some(block) = shard.block(b) else {
                    continue;
                };
                let live = block.live.load(Acquire);
                if live == 0 {
                    continue;
                }
                let view = View::new(shard, block, b, guard);
                let fails = fails_at(s, b, &view, live);
                let mut counts = [0u8; BLOCK_ROWS];
                let (mut any, mut lasting) = (0u64, 0u64);
                for (c, &f) in fails.iter().enumerate() {
                    elim[c] += f.count_ones();
                    any |= f;
                    if !frees_up[c] {
                        lasting |= f;
                    }
                    let mut m = f;
                    while m != 0 {
                        let i = m.trailing_zeros() as usize;
                        m &= m - 1;
                        counts[i] = counts[i].saturating_add(1);
                    }
                }
                total += live.count_ones();
                matched += (live & !any).count_ones();
                waitable += (any & !lasting).count_ones();
                let mut m = any;
                while m != 0 {
                    let i = m.trailing_zeros() as usize;
                    m &= m - 1;
                    let cand = (counts[i] as u32, self.id_of(s, b, i));
                    if nearest.len() < MAX_NEAREST || cand < nearest[nearest.len() - 1] {
                        let at = nearest.partition_point(|x| *x < cand);
                        nearest.insert(at, cand);
                        nearest.truncate(MAX_NEAREST);
                    }
                }
            }
        }
        let nearest = nearest
            .into_iter()
            .filter_map(|(_, id)| {
                let (s, b, i) = self.split(id);
                let shard = &self.shards[s];
                let block = shard.block(b)?;
                let view = View::new(shard, block, b, guard);
                let live = block.live.load(Acquire);
                let fails = fails_at(s, b, &view, live);
                let failed = fails
                    .iter()
                    .zip(names.iter())
                    .filter(|(f, _)| **f & (1 << i) != 0)
                    .map(|(_, n)| n.clone())
                    .collect();
                Some(NearMiss {
                    server: self.name(id).unwrap_or_else(|| id.to_string()),
                    failed,
                })
            })
            .collect();
        Explain {
            total,
            matched,
            clauses: names
                .into_iter()
                .zip(elim)
                .map(|(clause, eliminated)| ClauseStat { clause, eliminated })
                .collect(),
            nearest,
            waitable,
        }
    }
}
