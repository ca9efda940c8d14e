//! Latency samples and their summaries.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::call::Call;

/// Nearest-rank percentile of an ascending slice: the smallest sample such that at
/// least `p` percent of the samples are less than or equal to it. No interpolation, so
/// every reported figure is a latency that was really observed.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What the report prints for one set of samples; times in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let max = *sorted.last()?;
        let total: Duration = sorted.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        let mean_ms = ms(total) / sorted.len() as f64;
        Some(Self {
            count: sorted.len(),
            p50_ms: ms(percentile(&sorted, 50.0)?),
            p90_ms: ms(percentile(&sorted, 90.0)?),
            p99_ms: ms(percentile(&sorted, 99.0)?),
            max_ms: ms(max),
            mean_ms,
        })
    }
}

/// Latencies of successful calls, per call, plus whole lifecycle cycles.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: BTreeMap<Call, Vec<Duration>>,
    cycles: Vec<Duration>,
}

impl Recorder {
    pub fn record(&mut self, call: Call, took: Duration) {
        self.calls.entry(call).or_default().push(took);
    }

    pub fn record_cycle(&mut self, took: Duration) {
        self.cycles.push(took);
    }

    pub fn merge(&mut self, other: Recorder) {
        for (call, samples) in other.calls {
            self.calls.entry(call).or_default().extend(samples);
        }
        self.cycles.extend(other.cycles);
    }

    /// Per-call summaries in lifecycle order.
    pub fn call_summaries(&self) -> Vec<(Call, Summary)> {
        self.calls
            .iter()
            .filter_map(|(call, samples)| Summary::of(samples).map(|s| (*call, s)))
            .collect()
    }

    pub fn cycle_summary(&self) -> Option<Summary> {
        Summary::of(&self.cycles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 90.0), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));

        // Ten samples: p99 is the largest, p50 the fifth.
        let ten = millis(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&ten, 90.0), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&ten, 99.0), Some(Duration::from_millis(10)));
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(percentile(&[], 50.0), None);
        let one = millis(&[7]);
        assert_eq!(percentile(&one, 1.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 101.0), None);
        assert_eq!(percentile(&one, f64::NAN), None);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn summary_sorts_unordered_samples() {
        let summary = Summary::of(&millis(&[30, 10, 20, 40])).unwrap();
        assert_eq!(summary.count, 4);
        assert!((summary.p50_ms - 20.0).abs() < 1e-9);
        assert!((summary.p90_ms - 40.0).abs() < 1e-9);
        assert!((summary.max_ms - 40.0).abs() < 1e-9);
        assert!((summary.mean_ms - 25.0).abs() < 1e-9);
    }

    #[test]
    fn recorders_merge_per_call() {
        let mut a = Recorder::default();
        a.record(Call::DeleteVolume, Duration::from_millis(3));
        a.record(Call::CreateVolume, Duration::from_millis(1));
        a.record_cycle(Duration::from_millis(10));
        let mut b = Recorder::default();
        b.record(Call::CreateVolume, Duration::from_millis(2));
        b.record_cycle(Duration::from_millis(20));
        a.merge(b);

        let summaries = a.call_summaries();
        let order: Vec<_> = summaries.iter().map(|(c, s)| (*c, s.count)).collect();
        assert_eq!(order, [(Call::CreateVolume, 2), (Call::DeleteVolume, 1)]);
        let cycles = a.cycle_summary().unwrap();
        assert_eq!(cycles.count, 2);
        assert!((cycles.max_ms - 20.0).abs() < 1e-9);
    }
}
