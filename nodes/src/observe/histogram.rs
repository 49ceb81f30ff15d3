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
}
