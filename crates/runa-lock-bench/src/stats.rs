//! Percentiles of latency samples, the series an interleaved loop collects them in, and the
//! fixed-seed generator that orders such a loop.

use std::time::{Duration, Instant};

pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Latencies {
        samples.sort_unstable();
        Latencies(samples)
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub fn mean(&self) -> Duration {
        let count = u32::try_from(self.0.len()).unwrap_or(u32::MAX).max(1);
        self.0.iter().sum::<Duration>() / count
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The median of a few repetitions of a rate.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One kind of operation in a loop that interleaves several kinds (so that load drifting on
/// a shared machine lands on all alike): every duration, and per round the operations per
/// second over this kind's own time.
#[derive(Default)]
pub struct Series {
    samples: Vec<Duration>,
    rates: Vec<f64>,
    round_time: Duration,
    round_count: usize,
}

impl Series {
    /// Times `operation` (from its first poll to its output) into this round.
    pub async fn time<T>(&mut self, operation: impl Future<Output = T>) -> T {
        let begun = Instant::now();
        let output = operation.await;
        self.record(begun.elapsed());
        output
    }

    /// Adds one operation that took `took` to this round (for an operation timed by the
    /// caller, such as the sum of two parts timed apart).
    pub fn record(&mut self, took: Duration) {
        self.samples.push(took);
        self.round_time += took;
        self.round_count += 1;
    }

    /// Ends a round: its rate is the operations timed in it over the time they took.
    pub fn end_round(&mut self) {
        self.rates
            .push(self.round_count as f64 / self.round_time.as_secs_f64());
        self.round_time = Duration::ZERO;
        self.round_count = 0;
    }

    /// The durations, and the median of the rounds' rates.
    pub fn finish(self) -> (Latencies, f64) {
        (Latencies::new(self.samples), median(self.rates))
    }
}

/// xorshift64 from a fixed seed: the same sequence every run.
pub struct Xorshift(u64);

impl Default for Xorshift {
    fn default() -> Xorshift {
        Xorshift(0x9E37_79B9_7F4A_7C15)
    }
}

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Puts `items` in a new order (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
