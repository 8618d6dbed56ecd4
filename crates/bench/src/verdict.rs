//! The verdict of a comparison: a few sentences that answer "which system did better,
//! by how much, and how sure is that", with the numbers behind them. It reads the same
//! medians the table shows, never uses a step where the harness was the bottleneck to
//! judge latency or capacity, and calls a difference noise unless it clears the run's
//! noise rule (10% for a single round; ranges that do not overlap for several).

use super::compare::{Group, Spread};
use super::report::{capacity, join_words, Report, StepResult};

/// A difference smaller than this, between single runs, is noise.
pub const NOISE: f64 = 0.10;

/// How one system's figure compares with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Lower,
    Same,
    Higher,
}

/// One figure of one system at one rate, over its runs, and whether the harness was the
/// bottleneck in any of those runs.
#[derive(Debug, Clone, Copy)]
struct Figure {
    value: Spread,
    harness_bound: bool,
}

/// The rates of the sweep: those of the first report.
pub fn rates(groups: &[Group<'_>]) -> Vec<u64> {
    groups
        .first()
        .map(|g| g.runs[0].steps.iter().map(|s| s.rate).collect())
        .unwrap_or_default()
}

fn step(report: &Report, rate: u64) -> Option<&StepResult> {
    report.steps.iter().find(|s| s.rate == rate)
}

/// Whether the harness was the bottleneck at `rate` in any run of the group.
pub fn harness_bound_at(group: &Group<'_>, rate: u64) -> bool {
    group
        .runs
        .iter()
        .any(|r| step(r, rate).is_some_and(|s| s.harness_bound(r.config.slo_ms).is_some()))
}

fn figure(
    group: &Group<'_>,
    rate: u64,
    value: impl Fn(&StepResult) -> Option<f64>,
) -> Option<Figure> {
    let value = Spread::of(
        group
            .runs
            .iter()
            .filter_map(|r| step(r, rate).and_then(&value)),
    )?;
    Some(Figure {
        value,
        harness_bound: harness_bound_at(group, rate),
    })
}

pub fn p99(s: &StepResult) -> Option<f64> {
    Some(s.latency.p99 as f64)
}

pub fn p50(s: &StepResult) -> Option<f64> {
    Some(s.latency.p50 as f64)
}

/// Socket latency percentiles: `None` where socket latency was not measured.
pub fn socket_p99(s: &StepResult) -> Option<f64> {
    s.socket_latency.as_ref().map(|l| l.p99 as f64)
}

pub fn socket_p50(s: &StepResult) -> Option<f64> {
    s.socket_latency.as_ref().map(|l| l.p50 as f64)
}

pub fn cpu(s: &StepResult) -> Option<f64> {
    s.server.as_ref().map(|c| c.cpu_us_per_delivery)
}

/// The rate the verdict's details (and the percentile chart) are shown at: the highest
/// rate where no system lost deliveries or had the harness as its bottleneck; failing
/// that the first report's headline rate.
pub fn verdict_rate(groups: &[Group<'_>]) -> Option<u64> {
    let clean = |rate: u64| {
        groups.iter().all(|g| {
            !harness_bound_at(g, rate)
                && g.runs
                    .iter()
                    .all(|r| step(r, rate).is_some_and(|s| s.lost == 0))
        })
    };
    rates(groups)
        .into_iter()
        .filter(|&r| clean(r))
        .max()
        .or_else(|| groups.first()?.runs[0].headline_step().map(|s| s.rate))
}

/// Is `other` lower, the same or higher than `base`, by the noise rule?
fn call(base: &Spread, other: &Spread) -> Call {
    if base.runs > 1 && other.runs > 1 {
        if other.max < base.min {
            Call::Lower
        } else if other.min > base.max {
            Call::Higher
        } else {
            Call::Same
        }
    } else {
        let ratio = other.median / base.median.max(f64::MIN_POSITIVE);
        if ratio < 1.0 - NOISE {
            Call::Lower
        } else if ratio > 1.0 + NOISE {
            Call::Higher
        } else {
            Call::Same
        }
    }
}

/// "1,000".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate_list(rates: &[u64]) -> String {
    let words: Vec<String> = rates.iter().map(|&r| thousands(r)).collect();
    join_words(&words)
}

fn ratio_list(ratios: &[f64]) -> String {
    let words: Vec<String> = ratios.iter().map(|&r| ratio(r)).collect();
    words.join(", ")
}

/// "0.87×"; within half a percent of 1 one more digit ("0.997×"), so that a difference the
/// rounds' ranges call real never reads "lower (1.00×)".
pub fn ratio(r: f64) -> String {
    format!("{}×", ratio_digits(r))
}

/// [`ratio`] without its sign, for tables that write "(×0.87)".
pub fn ratio_digits(r: f64) -> String {
    if (r - 1.0).abs() < 0.005 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

/// Server or harness CPU per delivery in µs: two decimals, three below 1 µs (a saturated
/// server's coalesced deliveries cost ~0.2 µs, where 0.20 against 0.20 hides a difference
/// the ranges show).
pub fn micros(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// How `a` (the baseline) compares with `b` on one figure over the rates, in words:
/// "used 0.79× epoll's server CPU per delivery at every rate (0.74× to 0.83×)". Rates
/// where either system was harness-bound are left out when `skip_bound`; they are
/// returned for the caller to name.
struct Comparison {
    /// (rate, ratio a/b, call of a against b).
    points: Vec<(u64, f64, Call)>,
    skipped: Vec<u64>,
}

fn compare_on(
    a: &Group<'_>,
    b: &Group<'_>,
    rates: &[u64],
    value: fn(&StepResult) -> Option<f64>,
    skip_bound: bool,
) -> Comparison {
    let mut points = Vec::new();
    let mut skipped = Vec::new();
    for &rate in rates {
        let (Some(fa), Some(fb)) = (figure(a, rate, value), figure(b, rate, value)) else {
            continue;
        };
        if skip_bound && (fa.harness_bound || fb.harness_bound) {
            skipped.push(rate);
            continue;
        }
        let ratio = fa.value.median / fb.value.median.max(f64::MIN_POSITIVE);
        points.push((rate, ratio, call(&fb.value, &fa.value)));
    }
    Comparison { points, skipped }
}

/// "lower at 250 and 500 msg/s (0.62×, 0.70×), about the same at 1,000 msg/s (0.97×)".
fn describe_calls(c: &Comparison, lower: &str, same: &str, higher: &str) -> String {
    let mut parts = Vec::new();
    for (want, word) in [
        (Call::Lower, lower),
        (Call::Same, same),
        (Call::Higher, higher),
    ] {
        let (rates, ratios): (Vec<u64>, Vec<f64>) = c
            .points
            .iter()
            .filter(|p| p.2 == want)
            .map(|p| (p.0, p.1))
            .unzip();
        if !rates.is_empty() {
            parts.push(format!(
                "{word} at {} msg/s ({})",
                rate_list(&rates),
                ratio_list(&ratios)
            ));
        }
    }
    join_words(&parts)
}

fn min_max(ratios: impl Iterator<Item = f64>) -> (f64, f64) {
    ratios.fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// The CPU sentence for baseline `a` against `b`.
fn cpu_sentence(a: &Group<'_>, b: &Group<'_>, rates: &[u64]) -> Option<String> {
    let c = compare_on(a, b, rates, cpu, false);
    let first = c.points.first()?;
    let all_same = c.points.iter().all(|p| p.2 == first.2);
    let where_ = if rates.len() == 1 {
        format!("at {} msg/s", thousands(first.0))
    } else {
        "at every rate".to_string()
    };
    let (lo, hi) = min_max(c.points.iter().map(|p| p.1));
    // One ratio, or the range of them over the rates.
    let ratio = if hi - lo >= 0.005 {
        format!("{}–{}", ratio(lo), ratio(hi))
    } else {
        ratio(lo)
    };
    let (na, nb) = (a.label, b.label);
    Some(if all_same {
        match first.2 {
            Call::Lower | Call::Higher => {
                let word = if first.2 == Call::Lower { "less" } else { "more" };
                format!(
                    "{na} used {ratio} {nb}'s server CPU per delivery ({word}; lower is better) {where_}"
                )
            }
            Call::Same => format!(
                "{na} and {nb} used about the same server CPU per delivery {where_} ({ratio}, within the noise)"
            ),
        }
    } else {
        format!(
            "{na}'s server CPU per delivery against {nb}'s (lower is better) was {}",
            describe_calls(&c, "lower", "about the same", "higher")
        )
    })
}

/// The latency sentence for baseline `a` against `b`.
fn p99_sentence(a: &Group<'_>, b: &Group<'_>, rates: &[u64]) -> Option<String> {
    let c = compare_on(a, b, rates, p99, true);
    let bound = match c.skipped.as_slice() {
        [] => String::new(),
        skipped => format!(
            "; not compared at {} msg/s, where the harness was the bottleneck",
            rate_list(skipped)
        ),
    };
    if c.points.is_empty() {
        return (!c.skipped.is_empty()).then(|| {
            format!(
                "p99 latency could not be compared{}",
                bound
                    .trim_start_matches(';')
                    .replacen(" not compared", "", 1)
            )
        });
    }
    Some(format!(
        "its p99 latency against {}'s (lower is better) was {}{bound}",
        b.label,
        describe_calls(&c, "lower", "about the same", "higher")
    ))
}

/// "Capacity (...): uring 250 msg/s (not judged at 500), epoll 500 msg/s."
pub fn capacity_cell(group: &Group<'_>) -> Option<String> {
    let mut rates = Vec::new();
    let mut skipped = Vec::new();
    for r in &group.runs {
        let cap = capacity(&r.steps, r.config.slo_ms);
        rates.push(cap.rate);
        skipped.extend(cap.skipped);
    }
    skipped.sort_unstable();
    skipped.dedup();
    let held: Vec<f64> = rates.iter().flatten().map(|&r| r as f64).collect();
    let mut cell = match Spread::of(held) {
        Some(s) if s.runs == rates.len() => format!("{} msg/s", thousands(s.median as u64)),
        Some(s) => format!(
            "{} msg/s in {} of {} runs",
            thousands(s.median as u64),
            s.runs,
            rates.len()
        ),
        None => "none".to_string(),
    };
    if !skipped.is_empty() {
        cell.push_str(&format!(
            " (not judged at {}: harness-bound)",
            rate_list(&skipped)
        ));
    }
    Some(cell)
}

fn loss_sentence(groups: &[Group<'_>]) -> String {
    let lost: Vec<String> = groups
        .iter()
        .filter_map(|g| {
            let lost: u64 = g.runs.iter().map(|r| r.lost).sum();
            let noun = if lost == 1 { "delivery" } else { "deliveries" };
            (lost > 0).then(|| format!("{} lost {lost} {noun}", g.label))
        })
        .collect();
    if lost.is_empty() {
        "No delivery was lost.".to_string()
    } else {
        format!("LOSS: {}.", join_words(&lost))
    }
}

fn certainty(groups: &[Group<'_>]) -> String {
    let runs = groups.iter().map(|g| g.runs.len()).min().unwrap_or(1);
    if runs <= 1 {
        format!(
            "1 round, so differences under ~{:.0}% count as noise.",
            NOISE * 100.0
        )
    } else {
        format!(
            "{runs} rounds: figures are medians, and a difference counts only where the rounds' [min–max] ranges do not overlap."
        )
    }
}

fn idle_sentence(a: &Group<'_>, b: &Group<'_>) -> Option<String> {
    let per = |g: &Group<'_>| {
        Spread::of(
            g.runs
                .iter()
                .filter_map(|r| r.idle.as_ref().map(|i| i.bytes_per_connection)),
        )
    };
    let (pa, pb) = (per(a)?, per(b)?);
    let times = ratio(pa.median / pb.median.max(f64::MIN_POSITIVE));
    let word = match call(&pb, &pa) {
        Call::Lower => "less than",
        Call::Same => "about the same as",
        Call::Higher => "more than",
    };
    Some(format!(
        "{} held {:.0} B of server memory per idle connection, {times} {}'s {:.0} B ({word}; lower is better)",
        a.label, pa.median, b.label, pb.median
    ))
}

/// The verdict paragraph: the baseline (first group) against each other system, then
/// capacity, loss and how sure the figures are.
pub fn verdict(groups: &[Group<'_>]) -> String {
    let Some((base, others)) = groups.split_first() else {
        return String::new();
    };
    let rates = rates(groups);
    let mut sentences = Vec::new();
    for other in others {
        if base.runs[0].idle.is_some() {
            if let Some(s) = idle_sentence(base, other) {
                sentences.push(format!("{s}."));
            }
            continue;
        }
        let parts: Vec<String> = [
            cpu_sentence(base, other, &rates),
            p99_sentence(base, other, &rates),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !parts.is_empty() {
            sentences.push(format!("{}.", parts.join("; ")));
        }
    }
    if base.runs[0].idle.is_none() {
        if rates.len() > 1 {
            let slo = base.runs[0].config.slo_ms;
            let cells: Vec<String> = groups
                .iter()
                .filter_map(|g| Some(format!("{} {}", g.label, capacity_cell(g)?)))
                .collect();
            sentences.push(format!(
                "Capacity (highest rate with no loss and p99 under {slo} ms where the harness was not the bottleneck; higher is better): {}.",
                join_words(&cells)
            ));
        }
        sentences.push(loss_sentence(groups));
    }
    sentences.push(certainty(groups));
    sentences.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_near_one_keeps_the_digit_that_tells_it_from_one() {
        assert_eq!(ratio(0.8712), "0.87×");
        assert_eq!(ratio(0.996), "0.996×");
        assert_eq!(ratio(1.004), "1.004×");
        assert_eq!(ratio(1.0), "1.000×");
        assert_eq!(ratio_digits(1.2), "1.20");
        assert_eq!(micros(0.1994), "0.199");
        assert_eq!(micros(4.567), "4.57");
    }

    #[test]
    fn numbers_in_words() {
        assert_eq!(thousands(250), "250");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate_list(&[250, 500, 1000]), "250, 500 and 1,000");
    }

    #[test]
    fn noise_rule() {
        let one = |v| Spread::of([v]).unwrap();
        assert_eq!(call(&one(100.0), &one(95.0)), Call::Same);
        assert_eq!(call(&one(100.0), &one(80.0)), Call::Lower);
        assert_eq!(call(&one(100.0), &one(120.0)), Call::Higher);
        let three = |a, b, c| Spread::of([a, b, c]).unwrap();
        // Ranges overlap: the same, whatever the medians.
        assert_eq!(
            call(&three(90.0, 100.0, 110.0), &three(70.0, 80.0, 95.0)),
            Call::Same
        );
        assert_eq!(
            call(&three(90.0, 100.0, 110.0), &three(84.0, 86.0, 88.0)),
            Call::Lower
        );
    }
}
