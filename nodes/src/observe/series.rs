//! The dashboard's charts: a ring of per-second samples of a
//! distributor's counters, taken by the shell once a second while the
//! metrics address is served (the core only counts; the rates and the
//! latency quantiles of each second are worked out here).
//!
//! Bound: [`SERIES_LEN`] samples (ten minutes); past it the oldest goes.

use std::collections::VecDeque;
use std::time::Instant;

use super::Log2Histogram;
use crate::distributor::DistributorMetrics;

/// Samples kept: one a second for ten minutes.
pub const SERIES_LEN: usize = 600;

/// Samples `tasks_per_s` averages over.
const RATE_WINDOW: usize = 10;

/// One second (about) of a distributor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it was taken (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// Tasks ended per second since the sample before.
    pub completed_per_s: f64,
    /// Tasks received per second since the sample before.
    pub submitted_per_s: f64,
    /// Median latency of the tasks that ended since the sample before, in
    /// microseconds (none ended: `None`).
    pub p50_us: Option<u64>,
    /// Their 99th percentile.
    pub p99_us: Option<u64>,
    /// Tasks waiting at the sample.
    pub waiting: usize,
    /// Tasks running at the sample.
    pub running: usize,
}

/// What the previous sample read, to take differences from.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    completed: u64,
    submitted: u64,
    latency: Log2Histogram,
}

/// The ring of samples (see the module docs).
#[derive(Debug, Default)]
pub struct Series {
    points: VecDeque<Point>,
    last: Option<Mark>,
}

impl Series {
    /// Takes a sample of `m`, read at `at` (wall clock `unix_ms`). The
    /// first one only marks where the next starts.
    pub fn record(&mut self, at: Instant, unix_ms: u64, m: &DistributorMetrics) {
        let mark = Mark {
            at,
            completed: m.stats.completed,
            submitted: m.stats.submitted,
            latency: m.observed.latency_us,
        };
        let Some(last) = self.last.replace(mark) else {
            return;
        };
        let dt = at.saturating_duration_since(last.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let lat = mark.latency.since(&last.latency);
        if self.points.len() == SERIES_LEN {
            self.points.pop_front();
        }
        self.points.push_back(Point {
            unix_ms,
            completed_per_s: mark.completed.saturating_sub(last.completed) as f64 / dt,
            submitted_per_s: mark.submitted.saturating_sub(last.submitted) as f64 / dt,
            p50_us: lat.quantile(0.5),
            p99_us: lat.quantile(0.99),
            waiting: m.waiting,
            running: m.placed,
        });
    }

    /// The samples, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// Tasks ended per second over the last ten samples (0 before any).
    pub fn tasks_per_s(&self) -> f64 {
        let n = self.points.len().min(RATE_WINDOW);
        if n == 0 {
            return 0.0;
        }
        let sum: f64 = self
            .points
            .iter()
            .rev()
            .take(n)
            .map(|p| p.completed_per_s)
            .sum();
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::distributor::{Observed, Stats};

    fn metrics(completed: u64, latencies: &[u64]) -> DistributorMetrics {
        let mut observed = Observed::default();
        for &l in latencies {
            observed.latency_us.record(l);
        }
        DistributorMetrics {
            stats: Stats {
                completed,
                submitted: completed + 1,
                ..Stats::default()
            },
            observed,
            placed: 1,
            waiting: 2,
            workers_up: 1,
            workers_draining: 0,
            workers_down: 0,
            jobs: 0,
            job_tasks: Default::default(),
            draining: false,
        }
    }

    #[test]
    fn samples_give_rates_and_quantiles_per_second_and_stay_bounded() {
        let t0 = Instant::now();
        let mut s = Series::default();
        s.record(t0, 0, &metrics(0, &[]));
        assert_eq!(s.points().count(), 0);
        assert_eq!(s.tasks_per_s(), 0.0);
        // 20 tasks in two seconds, latencies of 100 us.
        s.record(t0 + Duration::from_secs(2), 2000, &metrics(20, &[100; 20]));
        let p = *s.points().last().unwrap();
        assert_eq!(p.completed_per_s, 10.0);
        assert_eq!(p.submitted_per_s, 10.0);
        assert!((64..=127).contains(&p.p50_us.unwrap()), "{p:?}");
        assert_eq!((p.waiting, p.running, p.unix_ms), (2, 1, 2000));
        // Nothing ended in the next second: no latency, rate 0.
        s.record(t0 + Duration::from_secs(3), 3000, &metrics(20, &[100; 20]));
        let p = *s.points().last().unwrap();
        assert_eq!((p.completed_per_s, p.p50_us, p.p99_us), (0.0, None, None));
        assert_eq!(s.tasks_per_s(), 5.0);
        for i in 0..SERIES_LEN as u64 + 5 {
            s.record(t0 + Duration::from_secs(4 + i), 0, &metrics(20, &[]));
        }
        assert_eq!(s.points().count(), SERIES_LEN);
    }
}
