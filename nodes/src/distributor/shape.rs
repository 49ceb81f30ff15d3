//! Query shapes: what identifies a compiled query on one client link, and
//! how a shape is compiled with the user's defaults filled in.
//!
//! Identical tasks are the common case (HTCondor's autoclusters, Ray's
//! worker leases), so each client link caches its compiled shapes and a
//! submit of a known shape costs a hash of its strings, or not even that
//! when it has the shape of the link's previous submit.

use std::hash::{Hash, Hasher};
use std::rc::Rc;

use allot_engine::{Env, ExprError, LabelValue, Query, ServerTable, TaskAttrs, UserRecord};
use allot_wire::message::ArchivedSubmit;

/// What identifies a query shape on one client link (client attributes
/// are fixed per link).
#[derive(Hash, PartialEq, Eq, Debug)]
pub(crate) struct Shape {
    pub app: String,
    pub require: String,
    pub prefer: String,
    pub user: String,
    pub demands: (u32, u64, u32),
    pub priority: i32,
}

fn demands_of(s: &ArchivedSubmit) -> (u32, u64, u32) {
    (
        s.demands.cores.to_native(),
        s.demands.mem.to_native(),
        s.demands.slots.to_native(),
    )
}

/// Hashes what identifies a query shape straight from the archived
/// submit, so a cache hit allocates nothing.
pub(crate) fn shape_hash(s: &ArchivedSubmit, user: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    s.app.as_str().hash(&mut h);
    s.require.as_str().hash(&mut h);
    s.prefer.as_str().hash(&mut h);
    user.hash(&mut h);
    s.demands.cores.to_native().hash(&mut h);
    s.demands.mem.to_native().hash(&mut h);
    s.demands.slots.to_native().hash(&mut h);
    s.priority.to_native().hash(&mut h);
    h.finish()
}

impl Shape {
    /// The shape of a submit by `user`.
    pub(crate) fn of(s: &ArchivedSubmit, user: &str) -> Shape {
        Shape {
            app: s.app.as_str().to_owned(),
            require: s.require.as_str().to_owned(),
            prefer: s.prefer.as_str().to_owned(),
            user: user.to_owned(),
            demands: demands_of(s),
            priority: s.priority.to_native(),
        }
    }

    /// Whether this shape is the one of `s` (a hash hit is verified).
    pub(crate) fn is(&self, s: &ArchivedSubmit, user: &str) -> bool {
        self.app == s.app.as_str()
            && self.require == s.require.as_str()
            && self.prefer == s.prefer.as_str()
            && self.user == user
            && self.demands == demands_of(s)
            && self.priority == s.priority.to_native()
    }

    /// Compiles this shape for a client whose attributes are `client`, with
    /// `user`'s defaults filled in.
    pub(crate) fn compile(
        &self,
        table: &ServerTable,
        user: &UserRecord,
        client: &[(String, LabelValue)],
    ) -> Result<Query, ExprError> {
        let (demands, priority) = (self.demands, self.priority);
        let require = if self.require.is_empty() {
            user.default_require.as_str()
        } else {
            self.require.as_str()
        };
        // A demand no worker could meet even when idle is a static clause of
        // its own, so the task fails at once (and explain names it) instead
        // of waiting for capacity that can never come.
        let mut clauses: Vec<String> = Vec::new();
        if demands.0 > 0 {
            clauses.push(format!("server.cores >= {}", demands.0));
        }
        if demands.1 > 0 {
            clauses.push(format!("server.mem >= {}", demands.1));
        }
        if require.contains("||") {
            // Keep the user's disjunction together.
            clauses.push(format!("({require})"));
        } else if !require.trim().is_empty() {
            // Every other operator binds tighter than `&&`: joining keeps the
            // user's clauses as they were written, for explain.
            clauses.push(require.to_owned());
        }
        let full = clauses.join(" && ");
        let prefer = if self.prefer.is_empty() {
            user.default_prefer.as_str()
        } else {
            self.prefer.as_str()
        };
        let env = Env {
            task: TaskAttrs {
                app: self.app.clone(),
                cores: demands.0,
                mem: demands.1,
                // Every task holds at least one slot while it runs.
                slots: demands.2.max(1),
                priority,
                extra: Vec::new(),
            },
            user: user.clone(),
            client: client.to_vec(),
        };
        table.compile(&full, prefer, &env)
    }
}

/// Compiled shapes of one client link, bounded by [`QUERY_CACHE`]
/// (cleared when full: a client that sends more shapes than that pays a
/// compile per new shape, nothing grows).
#[derive(Default)]
pub(crate) struct ShapeCache {
    map: crate::FxMap<u64, (Shape, Rc<Query>, Rc<str>)>,
    /// The hash of the shape of this link's last submit.
    last: Option<u64>,
}

/// Compiled query shapes cached per client link.
pub const QUERY_CACHE: usize = 1024;

impl ShapeCache {
    /// The compiled query and app name of `s`'s shape, compiling (with
    /// `compile`) and caching it on a miss.
    pub(crate) fn get_or_compile(
        &mut self,
        s: &ArchivedSubmit,
        user: &str,
        compile: impl FnOnce(&Shape) -> Result<Query, ExprError>,
    ) -> Result<(Rc<Query>, Rc<str>), ExprError> {
        // A link mostly sends one shape: try the last one before hashing
        // the submit's strings.
        let same_as_last = self
            .last
            .and_then(|h| self.map.get(&h))
            .filter(|(shape, _, _)| shape.is(s, user));
        let hash = match (same_as_last, self.last) {
            (Some(_), Some(h)) => h,
            _ => shape_hash(s, user),
        };
        let cached = same_as_last
            .or_else(|| {
                self.map
                    .get(&hash)
                    .filter(|(shape, _, _)| shape.is(s, user))
            })
            .map(|(_, q, app)| (q.clone(), app.clone()));
        self.last = Some(hash);
        if let Some(hit) = cached {
            return Ok(hit);
        }
        let shape = Shape::of(s, user);
        let q = Rc::new(compile(&shape)?);
        let app: Rc<str> = Rc::from(s.app.as_str());
        if self.map.len() >= QUERY_CACHE {
            self.map.clear();
        }
        // A hash collision replaces the older shape.
        self.map.insert(hash, (shape, q.clone(), app.clone()));
        Ok((q, app))
    }
}
