//! Request latency percentiles.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency recorded exactly, in microseconds (10 minutes); longer
/// ones are clamped to it.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram with microsecond resolution (3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid"),
        }
    }

    /// Records one request's latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        self.histogram.saturating_record(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with equal bounds always merge");
    }

    /// Number of recorded samples.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// `true` if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The `quantile` (0.0..=1.0) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        micros_to_ms(self.histogram.value_at_quantile(quantile))
    }

    /// The largest latency in milliseconds; 0 when empty.
    pub fn max_ms(&self) -> f64 {
        micros_to_ms(self.histogram.max())
    }
}

#[expect(clippy::cast_precision_loss, reason = "at most 6e8, exact in an f64")]
fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut latency = Latency::new();
        assert!(latency.is_empty());
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let mut other = Latency::new();
        other.record(Duration::from_secs(2));
        latency.merge(&other);
        assert_eq!(latency.len(), 101);
        assert!((latency.quantile_ms(0.5) - 51.0).abs() < 0.1);
        assert!((latency.max_ms() - 2000.0).abs() < 2.0);
    }
}
