//! The queue of tasks waiting for capacity, in the order they get it:
//! the user's priority (highest first), then the task's, then age (the
//! distributor's task ids grow with arrival, and a task retried keeps its
//! id, so it keeps its place).
//!
//! Bounded by the distributor's `max_pending` together with the tasks in
//! flight (a submit past it is refused), so it has no bound of its own.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::FxMap;

/// Where a task stands: (user priority, task priority, task id).
type Place = (Reverse<i32>, Reverse<i32>, u64);

/// See the module docs. `P` is what waits (the distributor's task).
pub(crate) struct WaitQueue<P> {
    order: BTreeMap<Place, P>,
    /// Each task's place, to find it by id.
    places: FxMap<u64, Place>,
}

impl<P> Default for WaitQueue<P> {
    fn default() -> Self {
        WaitQueue {
            order: BTreeMap::new(),
            places: FxMap::default(),
        }
    }
}

impl<P> WaitQueue<P> {
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Queues task `task` at the place its priorities (user, task) give.
    pub(crate) fn push(&mut self, task: u64, priority: (i32, i32), p: P) {
        let place = (Reverse(priority.0), Reverse(priority.1), task);
        self.places.insert(task, place);
        self.order.insert(place, p);
    }

    pub(crate) fn remove(&mut self, task: u64) -> Option<P> {
        let place = self.places.remove(&task)?;
        self.order.remove(&place)
    }

    pub(crate) fn get_mut(&mut self, task: u64) -> Option<&mut P> {
        let place = self.places.get(&task)?;
        self.order.get_mut(place)
    }

    /// The tasks in queue order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &P)> {
        self.order.iter().map(|(place, p)| (place.2, p))
    }

    /// Keeps the tasks `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&P) -> bool) {
        let places = &mut self.places;
        self.order.retain(|place, p| {
            let k = keep(p);
            if !k {
                places.remove(&place.2);
            }
            k
        });
    }
}

#[cfg(test)]
mod tests {
    use super::WaitQueue;

    /// User priority first, then task priority, then age; a task removed
    /// and queued again keeps its place.
    #[test]
    fn tasks_wait_in_priority_then_age_order() {
        let mut q = WaitQueue::default();
        q.push(1, (0, 0), "old, plain");
        q.push(2, (0, 5), "task priority 5");
        q.push(3, (1, 0), "user priority 1");
        q.push(4, (0, 0), "new, plain");
        q.push(5, (1, 0), "user priority 1, newer");
        let order: Vec<u64> = q.iter().map(|(t, _)| t).collect();
        assert_eq!(order, [3, 5, 2, 1, 4]);
        let p = q.remove(1).unwrap();
        q.push(1, (0, 0), p);
        assert_eq!(
            q.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            [3, 5, 2, 1, 4]
        );
        q.retain(|p| !p.contains("newer"));
        assert_eq!(q.len(), 4);
        assert!(q.get_mut(5).is_none() && q.remove(5).is_none());
        *q.get_mut(4).unwrap() = "changed";
        assert_eq!(q.iter().last(), Some((4, &"changed")));
    }
}
