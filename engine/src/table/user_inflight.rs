//! Per-user in-flight task counts, for the `max_in_flight` quota.
//!
//! Counts live in memory (they are soft state like the server table: after a
//! restart nothing is in flight here). A compiled query holds an
//! `Arc<AtomicU32>` for its user, so matching bumps the count with a
//! compare-and-swap and never looks the user up by name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::schema::MAX_TRACKED_USERS;

/// Tracks how many tasks each user has in flight.
///
/// Bound: [`MAX_TRACKED_USERS`] users. When it is reached, users with nothing
/// in flight and no compiled query holding their counter are forgotten; if
/// there are none, [`UserInFlight::counter`] returns `None`.
#[derive(Debug, Default)]
pub struct UserInFlight {
    users: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

impl UserInFlight {
    /// An empty tracker.
    pub fn new() -> UserInFlight {
        UserInFlight::default()
    }

    /// The shared counter of `user`, created at 0 if new.
    pub fn counter(&self, user: &str) -> Option<Arc<AtomicU32>> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = users.get(user) {
            return Some(c.clone());
        }
        if users.len() >= MAX_TRACKED_USERS {
            // Only entries nobody else holds can go: a held counter may still
            // be incremented, and a second counter for the same user would
            // split the count.
            users.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Relaxed) > 0);
            if users.len() >= MAX_TRACKED_USERS {
                return None;
            }
        }
        let c = Arc::new(AtomicU32::new(0));
        users.insert(user.to_string(), c.clone());
        Some(c)
    }

    /// Tasks `user` has in flight.
    pub fn count(&self, user: &str) -> u32 {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.get(user).map_or(0, |c| c.load(Relaxed))
    }

    /// Every tracked user with a non-zero count, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, u32)> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, u32)> = users
            .iter()
            .map(|(k, c)| (k.clone(), c.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }
}

/// Takes one unit of `c` if it is below `max` (0 = unlimited).
pub(crate) fn try_acquire(c: &AtomicU32, max: u32) -> bool {
    c.fetch_update(Relaxed, Relaxed, |n| {
        (max == 0 || n < max).then_some(n.saturating_add(1))
    })
    .is_ok()
}

/// Gives one unit back.
pub(crate) fn release(c: &AtomicU32) {
    let _ = c.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_and_bounded_by_max() {
        let f = UserInFlight::new();
        let a = f.counter("alice").unwrap();
        let a2 = f.counter("alice").unwrap();
        assert!(try_acquire(&a, 2));
        assert!(try_acquire(&a2, 2));
        assert!(!try_acquire(&a, 2));
        assert_eq!(f.count("alice"), 2);
        assert_eq!(f.snapshot(), vec![("alice".to_string(), 2)]);
        release(&a);
        assert_eq!(f.count("alice"), 1);
        assert!(try_acquire(&a, 0));
        assert_eq!(f.count("bob"), 0);
    }
}
