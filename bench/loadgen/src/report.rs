//! Latency histograms and the JSON line each run prints.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Longest latency a histogram records; longer samples are clamped to it.
const MAX_NANOS: u64 = 60_000_000_000;

/// What a scenario hands back to `main`.
pub struct Report {
    pub json: Value,
    /// False when the run completed no operation at all (the smoke run's failure condition).
    pub produced_numbers: bool,
}

/// A nanosecond histogram, 3 significant digits, up to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).expect("constant bounds are valid")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(MAX_NANOS);
    histogram.saturating_record(nanos.clamp(1, MAX_NANOS));
}

/// Percentiles in microseconds (one decimal), or nulls for an empty histogram.
pub fn percentiles(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return json!({"p50": null, "p90": null, "p99": null, "p999": null, "max": null, "mean": null});
    }
    let us = |nanos: f64| (nanos / 100.0).round() / 10.0;
    json!({
        "p50": us(histogram.value_at_quantile(0.50) as f64),
        "p90": us(histogram.value_at_quantile(0.90) as f64),
        "p99": us(histogram.value_at_quantile(0.99) as f64),
        "p999": us(histogram.value_at_quantile(0.999) as f64),
        "max": us(histogram.max() as f64),
        "mean": us(histogram.mean()),
    })
}

/// Rounds to 3 decimals for readable JSON.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The first few distinct error messages, so a failing run says why.
pub fn error_samples(errors: &[String]) -> Value {
    let mut samples: Vec<&String> = Vec::new();
    for error in errors {
        if samples.len() == 3 {
            break;
        }
        if !samples.contains(&error) {
            samples.push(error);
        }
    }
    json!(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles are reported in microseconds, within the histogram's 3 significant digits.
    #[test]
    fn percentiles_of_recorded_samples_are_in_microseconds() {
        let mut h = histogram();
        for _ in 0..100 {
            record(&mut h, Duration::from_micros(250));
        }
        let p = percentiles(&h);
        for key in ["p50", "p999", "max"] {
            let value = p[key].as_f64().expect("a number");
            assert!((249.7..=250.3).contains(&value), "{key} = {value}");
        }
    }

    /// An empty histogram gives nulls, not zeros that look like measurements.
    #[test]
    fn percentiles_of_empty_histogram_are_null() {
        assert!(percentiles(&histogram())["p99"].is_null());
    }

    /// Error samples keep the first three distinct messages.
    #[test]
    fn error_samples_dedupe_and_cap() {
        let errors: Vec<String> = ["a", "a", "b", "c", "d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(error_samples(&errors), json!(["a", "b", "c"]));
    }
}
