//! Histogram helpers: one unit (microseconds) everywhere, and a text form that survives JSON.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Latencies are recorded in microseconds: loopback latencies are tens of µs, and three
/// significant digits keep them exact while a one-hour outlier still fits.
pub const UNIT: &str = "us";

/// Largest value a histogram can hold (one hour in µs); larger values are clamped so a
/// pathological stall is still recorded rather than dropped.
const HIGHEST: u64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HistError {
    #[error("histogram is not valid base64")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not decode: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
    #[error("histograms cannot be merged: {0:?}")]
    Merge(hdrhistogram::AdditionError),
}

/// A new empty latency histogram.
pub fn new() -> Histogram<u64> {
    // Bounds are constants that are valid, so this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST, 3).expect("constant histogram bounds are valid")
}

/// Records one value, clamped into the histogram's range.
pub fn record(hist: &mut Histogram<u64>, value: u64) {
    hist.saturating_record(value.clamp(1, HIGHEST));
}

/// V2 serialization, base64-encoded, as the HdrHistogram tools exchange histograms.
pub fn encode(hist: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec only fails on a histogram that cannot exist.
    V2Serializer::new()
        .serialize(hist, &mut bytes)
        .expect("serializing a histogram into memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode`].
pub fn decode(text: &str) -> Result<Histogram<u64>, HistError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    let hist: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(HistError::Decode)?;
    let mut out = new();
    out.add(&hist).map_err(HistError::Merge)?;
    Ok(out)
}

/// Adds `other` into `into`.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<(), HistError> {
    into.add(other).map_err(HistError::Merge)
}

/// The percentiles every report shows, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        Self {
            count: hist.len(),
            min: hist.min(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            p9999: hist.value_at_quantile(0.9999),
            max: hist.max(),
        }
    }
}

/// The standard HdrHistogram percentile-distribution text (as `outputPercentileDistribution`
/// writes it), with values in milliseconds.
pub fn percentile_text(hist: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0; // µs -> ms
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !hist.is_empty() {
        for v in hist.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    count_up_to(hist, v.value_iterated_to()),
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>2.12} {:>10}",
                    value,
                    q,
                    count_up_to(hist, v.value_iterated_to())
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        hist.mean() / SCALE,
        hist.stdev() / SCALE
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        hist.max() as f64 / SCALE,
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    );
    out
}

/// Sub-buckets per bucket, as the Java implementation prints them: the power of two that
/// holds `2 × 10^sigfig` distinct values.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

fn count_up_to(hist: &Histogram<u64>, value: u64) -> u64 {
    hist.count_between(0, value)
}

/// Points (percentile, value µs) for plotting latency by percentile.
pub fn percentile_curve(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    hist.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_and_merges() {
        let mut a = new();
        for v in [10, 20, 30, 5_000_000_000] {
            record(&mut a, v);
        }
        let b = decode(&encode(&a)).unwrap();
        assert_eq!(Summary::of(&a), Summary::of(&b));
        let mut c = new();
        merge(&mut c, &a).unwrap();
        merge(&mut c, &b).unwrap();
        assert_eq!(c.len(), 8);
        assert!(decode("not base64!").is_err());
    }

    #[test]
    fn percentile_text_ends_with_totals() {
        let mut a = new();
        for v in 1..=1000 {
            record(&mut a, v);
        }
        let text = percentile_text(&a);
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =         1000"));
        assert!(text.contains("SubBuckets     =         2048"));
    }
}
