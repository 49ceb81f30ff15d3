//! What a distributor tells the gateways about itself, and when: its
//! share of its set's attributes ([`SetAttrs`]), summed from the server
//! table, and the decision to send a heartbeat or a full report.
//!
//! Liveness and attributes travel apart, as they do from workers to
//! distributors: a small [`MemberHeartbeat`] every period, the full
//! [`MemberReport`] when an attribute moved by more than the threshold
//! (checked at every sweep), on an event (a worker joins or is lost, the
//! waiting queue turns non-empty or empty, the member starts draining) and
//! every Nth period, so that a gateway that missed one is whole again
//! soon. Registration (on every new gateway link) carries the full share
//! too. No I/O and no clock: the core passes the time in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use allot_engine::TableTotals;
use allot_wire::{SetAttrs, WorkerState};

/// Applications listed in a report at most (sorted; the rest are left
/// out): the gateway shows them, it does not place by them.
pub const MAX_APPS_PER_REPORT: usize = 256;

/// Completion counts kept for `tasks_per_s`: one per period, so the rate
/// is over the last this-many periods.
const RATE_SAMPLES: usize = 6;

/// The member's share from the table's totals and its own queues, with
/// its own `state` (up, or draining once it stops taking tasks).
pub(crate) fn summarize(
    t: &TableTotals,
    waiting: usize,
    running: usize,
    tasks_per_s: f64,
    state: WorkerState,
) -> SetAttrs {
    SetAttrs {
        workers_up: t.up,
        workers_down: t.down,
        workers_draining: t.draining,
        slots: t.slots,
        slots_free: t.slots_free,
        cores_free: t.cores_free,
        mem_free: t.mem_free,
        waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
        running: u32::try_from(running).unwrap_or(u32::MAX),
        tasks_per_s,
        apps: t.apps.iter().take(MAX_APPS_PER_REPORT).cloned().collect(),
        state,
    }
}

/// Whether `now` differs from what was last reported enough to report:
/// any change in the workers' counts, the apps, the state or whether tasks
/// wait; a capacity or load figure that moved by more than `threshold` of
/// its larger value (1 at least, so that a figure near zero is measured
/// against one).
pub(crate) fn differs(last: &SetAttrs, now: &SetAttrs, threshold: f64) -> bool {
    fn moved(a: f64, b: f64, t: f64) -> bool {
        (a - b).abs() > t * a.abs().max(b.abs()).max(1.0)
    }
    last.workers_up != now.workers_up
        || last.workers_down != now.workers_down
        || last.workers_draining != now.workers_draining
        || last.slots != now.slots
        || last.apps != now.apps
        || last.state != now.state
        || (last.waiting == 0) != (now.waiting == 0)
        || moved(last.slots_free.into(), now.slots_free.into(), threshold)
        || moved(last.cores_free.into(), now.cores_free.into(), threshold)
        || moved(last.mem_free as f64, now.mem_free as f64, threshold)
        || moved(last.waiting.into(), now.waiting.into(), threshold)
        || moved(last.running.into(), now.running.into(), threshold)
        || moved(last.tasks_per_s, now.tasks_per_s, threshold)
}

/// What to send at a period's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// The small liveness frame.
    Heartbeat,
    /// The full report (every Nth period).
    Report,
}

/// The reporting clock and memory of one distributor.
pub(crate) struct Reporter {
    period: Duration,
    every: u32,
    beats: u32,
    next: Instant,
    /// Increases per report sent (on every link).
    pub seq: u64,
    /// What was reported last (to every gateway).
    pub last: Option<SetAttrs>,
    rate: VecDeque<(Instant, u64)>,
}

impl Reporter {
    pub(crate) fn new(period: Duration, every: u32, now: Instant) -> Reporter {
        let period = period.max(Duration::from_millis(10));
        Reporter {
            period,
            every: every.max(1),
            beats: 0,
            next: now + period,
            seq: 0,
            last: None,
            rate: VecDeque::with_capacity(RATE_SAMPLES + 1),
        }
    }

    /// When the next period ends.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// The period ended at `now` with `completed` tasks done so far: what
    /// to send.
    pub(crate) fn beat(&mut self, now: Instant, completed: u64) -> Beat {
        self.next = now + self.period;
        self.rate.push_back((now, completed));
        if self.rate.len() > RATE_SAMPLES {
            self.rate.pop_front();
        }
        self.beats = self.beats.wrapping_add(1);
        if self.beats % self.every == 0 {
            Beat::Report
        } else {
            Beat::Heartbeat
        }
    }

    /// Tasks completed per second over the samples kept.
    pub(crate) fn tasks_per_s(&self) -> f64 {
        match (self.rate.front(), self.rate.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                c1.saturating_sub(*c0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> SetAttrs {
        summarize(&TableTotals::default(), 0, 0, 0.0, WorkerState::Up)
    }

    #[test]
    fn small_moves_are_not_reported_and_large_ones_are() {
        let mut a = attrs();
        a.slots_free = 100;
        let mut b = a.clone();
        b.slots_free = 95;
        assert!(!differs(&a, &b, 0.1));
        b.slots_free = 80;
        assert!(differs(&a, &b, 0.1));
        let mut c = a.clone();
        c.waiting = 1;
        assert!(differs(&a, &c, 0.1), "the queue turning non-empty counts");
    }

    #[test]
    fn every_nth_period_is_a_full_report() {
        let t = Instant::now();
        let mut r = Reporter::new(Duration::from_secs(1), 3, t);
        let beats: Vec<Beat> = (1..=6)
            .map(|i| r.beat(t + Duration::from_secs(i), i * 10))
            .collect();
        assert_eq!(beats[2], Beat::Report);
        assert_eq!(beats[5], Beat::Report);
        assert_eq!(beats[0], Beat::Heartbeat);
        assert!((r.tasks_per_s() - 10.0).abs() < 1e-9);
    }
}
