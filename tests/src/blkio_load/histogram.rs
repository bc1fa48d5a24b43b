//! The latency histogram: log-linear buckets of nanosecond values (HdrHistogram's layout),
//! read back as min, max, mean and percentiles within [`PRECISION`].
//!
//! Its own module because it knows nothing of I/O: the engine records each completion into
//! one (fixed arrays allocated before the clock starts, so recording never allocates) and the
//! report reads percentiles out of the merged ones.

/// Sub-buckets per power of two above [`SUB`]: 2^(SUB_BITS - 1).
const SUB_BITS: u32 = 8;
/// Values below this are counted exactly.
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * HALF) as usize;

/// The largest relative width of a bucket (a value read back is within half of it).
// Read by the tests only; it stays here as the bound `percentile` documents.
#[cfg_attr(not(test), expect(dead_code))]
pub(super) const PRECISION: f64 = 1.0 / HALF as f64;

/// A log-linear histogram of u64 values (nanoseconds), as HdrHistogram lays one out: values
/// below 256 exact, then each power of two in 128 equal buckets (under 0.8 % wide). Plain
/// arrays, allocated once: recording never allocates.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Histogram {
    counts: Box<[u64]>,
    n: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (SUB_BITS - 1);
    (SUB + u64::from(shift - 1) * HALF + ((v >> shift) - HALF)) as usize
}

/// The lowest and highest value of bucket `i`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let k = i - SUB;
    let shift = k / HALF + 1;
    let lo = (k % HALF + HALF) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    pub(super) fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds `other`'s values (fio's group_reporting).
    pub(super) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub(super) fn count(&self) -> u64 {
        self.n
    }

    pub(super) fn min(&self) -> Option<u64> {
        (self.n > 0).then_some(self.min)
    }

    pub(super) fn max(&self) -> Option<u64> {
        (self.n > 0).then_some(self.max)
    }

    pub(super) fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }

    /// The value at percentile `pct` (0 to 100): the smallest recorded value with at least
    /// `pct` % of the values at or below it, read as its bucket's middle (within
    /// [`PRECISION`] / 2 of it, exact below 256) and kept within the recorded min and max.
    pub(super) fn percentile(&self, pct: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        // In parts per million, so 99.9 % of 1000 values is rank 999, not 1000.
        let ppm = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u128;
        let rank = (u128::from(self.n) * ppm).div_ceil(1_000_000).max(1) as u64;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_bounds(i);
                return Some((lo + (hi - lo) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution_are_exact_within_the_precision() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, want) in [(50.0, 50_000u64), (99.0, 99_000), (99.9, 99_900)] {
            let got = h.percentile(p).expect("values");
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= PRECISION / 2.0, "p{p}: {got} vs {want} ({err})");
        }
        assert_eq!(
            (h.min(), h.max(), h.count()),
            (Some(1), Some(100_000), 100_000)
        );
        assert_eq!(h.mean(), Some(50_000.5));
        assert_eq!(h.percentile(100.0), Some(100_000));
    }

    #[test]
    fn small_values_are_counted_exactly() {
        let mut h = Histogram::new();
        for v in 1..=200u64 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(100));
        assert_eq!(h.percentile(99.0), Some(198));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.percentile(100.0), Some(200));
    }

    #[test]
    fn a_rare_slow_request_shows_in_the_tail_only() {
        let mut h = Histogram::new();
        for _ in 0..990 {
            h.record(10_000);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * PRECISION;
        assert!(near(h.percentile(50.0).expect("p50"), 10_000));
        assert!(
            near(h.percentile(99.0).expect("p99"), 10_000),
            "rank 990 is the last fast one"
        );
        assert!(near(h.percentile(99.9).expect("p99.9"), 1_000_000));
    }

    #[test]
    fn every_value_falls_in_a_bucket_narrower_than_the_precision() {
        let mut vs = vec![
            0u64,
            1,
            255,
            256,
            257,
            511,
            512,
            1000,
            123_456_789,
            u64::MAX,
        ];
        for k in 8..64 {
            vs.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        for v in vs {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v}");
            let (lo, hi) = bucket_bounds(i);
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
            assert!(
                (hi - lo) as f64 <= lo as f64 * PRECISION,
                "{v}: [{lo}, {hi}]"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::new().percentile(50.0), None);
    }

    #[test]
    fn merged_histograms_are_the_histogram_of_all_values() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in (1..5000u64).map(|v| v * 37) {
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let mut e = Histogram::new();
        e.merge(&Histogram::new());
        assert_eq!(e.min(), None);
    }
}
