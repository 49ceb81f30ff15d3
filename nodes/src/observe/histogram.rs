//! A fixed-bucket histogram of plain counts, cheap enough for a core's hot
//! path: recording a value is a leading-zeros count and an add (no
//! allocation, no atomic, no lock; the cores are single-threaded), and the
//! scrape turns the counts into Prometheus buckets.

/// Buckets kept: bucket `i` holds values below `2^i` (and at least
/// `2^(i-1)`), bucket 0 the value 0; the last one also holds everything
/// larger (its bound is +Inf). In microseconds, 2^31 us is 36 minutes.
pub const BUCKETS: usize = 32;

/// Counts of values (microseconds, by the callers' convention) in
/// power-of-two buckets, with their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log2Histogram {
    counts: [u64; BUCKETS],
    sum: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram {
            counts: [0; BUCKETS],
            sum: 0,
        }
    }
}

impl Log2Histogram {
    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        let i = (u64::BITS - v.leading_zeros()) as usize;
        self.counts[i.min(BUCKETS - 1)] += 1;
        self.sum = self.sum.wrapping_add(v);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum (wraps after 2^64, which no counter here reaches).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The counts recorded since `earlier` (an earlier copy of this
    /// histogram): what a sampler shows for one period.
    pub fn since(&self, earlier: &Log2Histogram) -> Log2Histogram {
        let mut d = Log2Histogram::default();
        for (i, c) in d.counts.iter_mut().enumerate() {
            *c = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        d.sum = self.sum.wrapping_sub(earlier.sum);
        d
    }

    /// An estimate of quantile `q` (0 to 1): the value at that rank,
    /// interpolated linearly within its bucket (so off by at most the
    /// bucket's width, a factor of two). `None` when nothing was counted.
    /// Values in the last bucket are shown as its lower bound.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the value wanted, from 1.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 || below + c < rank {
                below += c;
                continue;
            }
            if i == 0 {
                return Some(0);
            }
            let lo = 1u64 << (i - 1);
            if i == BUCKETS - 1 {
                return Some(lo);
            }
            let width = lo; // the bucket holds lo ..= 2 * lo - 1
            let into = (rank - below) as f64 / c as f64;
            return Some(lo + ((width - 1) as f64 * into).round() as u64);
        }
        None
    }

    /// (upper bound, values in this bucket alone) for every bucket; the
    /// last bound is `None` (+Inf).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, &c)| {
            let bound = (i + 1 < BUCKETS).then(|| (1u64 << i) - 1);
            (bound, c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_below_their_bucket_bound() {
        let mut h = Log2Histogram::default();
        for v in [0, 1, 2, 3, 4, 1000, u64::MAX] {
            h.record(v);
        }
        assert_eq!(h.count(), 7);
        let b: Vec<(Option<u64>, u64)> = h.buckets().collect();
        assert_eq!(b[0], (Some(0), 1)); // 0
        assert_eq!(b[1], (Some(1), 1)); // 1
        assert_eq!(b[2], (Some(3), 2)); // 2, 3
        assert_eq!(b[3], (Some(7), 1)); // 4
        assert_eq!(b[10], (Some(1023), 1)); // 1000
        assert_eq!(b[BUCKETS - 1], (None, 1)); // u64::MAX
                                               // Every value is at most its bucket's bound.
        let mut cum = 0;
        for (bound, c) in &b {
            cum += c;
            if let Some(bound) = bound {
                assert!(cum <= 7 && *bound < u64::MAX);
            }
        }
        assert_eq!(cum, 7);
    }

    #[test]
    fn quantiles_fall_in_the_bucket_of_their_rank() {
        let mut h = Log2Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        // 90 values of 100 (bucket 64..=127), 10 of 5000 (4096..=8191).
        for _ in 0..90 {
            h.record(100);
        }
        let before = h;
        for _ in 0..10 {
            h.record(5000);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((64..=127).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((4096..=8191).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Some(8191));
        // Since `before`: only the ten slow ones.
        let d = h.since(&before);
        assert_eq!(d.count(), 10);
        assert_eq!(d.sum(), 50_000);
        assert!((4096..=8191).contains(&d.quantile(0.5).unwrap()));
        let mut z = Log2Histogram::default();
        z.record(0);
        assert_eq!(z.quantile(0.99), Some(0));
    }
}
