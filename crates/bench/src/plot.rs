//! The comparison chart, written as SVG by hand. For a load run: p99 and p50 latency
//! against the offered rate, server CPU per delivery against the rate (medians, with
//! min–max whiskers over repeated runs), and the latency-by-percentile curves at the
//! verdict's rate on the log "1/(1−p)" axis HdrHistogram plots use. For an idle run: server
//! memory per idle connection. Every panel says that lower is better; steps where the
//! harness was the bottleneck are drawn hollow.

use super::compare::{representative, Group, Spread};
use super::hist;
use super::report::{plural, StepResult};
use super::verdict::{self, thousands};
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Right end of the percentile axis: 99.9999%.
const MAX_NINES: f64 = 6.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round number at or above `v` (1, 2, 5 × 10^k).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * magnitude)
}

/// A round number at or below `v`, for the bottom of a log axis.
fn nice_floor(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.01;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c <= v)
        .unwrap_or(magnitude)
}

/// A value axis from `lo` to `hi`, linear from zero or logarithmic.
#[derive(Clone, Copy)]
struct ValueAxis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl ValueAxis {
    /// An axis holding values from `lo` to `hi`: a log axis starts at a round number at or
    /// below `lo` (at least 0.01), a linear one at zero.
    fn new(lo: f64, hi: f64, log: bool) -> Self {
        if log {
            ValueAxis {
                lo: nice_floor(lo.max(0.01)),
                hi: nice_ceiling(hi.max(0.02)),
                log,
            }
        } else {
            ValueAxis {
                lo: 0.0,
                hi: nice_ceiling(hi),
                log,
            }
        }
    }

    /// Where `v` falls, from 0 (bottom) to 1 (top).
    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            v / self.hi
        }
    }

    /// Grid values: 1, 2 and 5 of each decade on a log axis, fifths on a linear one.
    fn ticks(&self) -> Vec<f64> {
        if !self.log {
            return (0..=5).map(|k| self.hi * k as f64 / 5.0).collect();
        }
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(self.lo.log10().floor());
        while decade <= self.hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= self.lo * 0.9999 && v <= self.hi * 1.0001 {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        ticks
    }

    fn label(v: f64) -> String {
        if v >= 1.0 || v == 0.0 {
            format!("{v}")
        } else {
            format!("{v:.2}").trim_end_matches('0').to_string()
        }
    }
}

/// A rectangle of the drawing.
#[derive(Clone, Copy)]
struct Area {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

/// One system's series on a by-rate panel: (x index, median, min, max, harness-bound).
type Series = Vec<(usize, f64, f64, f64, bool)>;

pub fn svg(groups: &[Group<'_>]) -> anyhow::Result<String> {
    let idle = groups.iter().any(|g| g.runs[0].idle.is_some());
    let height = if idle { 420.0 } else { 880.0 };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    title(groups, &mut out);
    legend(groups, &mut out);
    if idle {
        idle_bars(
            groups,
            Area {
                left: 90.0,
                top: 90.0,
                right: WIDTH - 40.0,
                bottom: height - 50.0,
            },
            &mut out,
        );
    } else {
        let rates = verdict::rates(groups);
        let half = WIDTH / 2.0;
        by_rate(
            groups,
            &rates,
            Area {
                left: 70.0,
                top: 100.0,
                right: half - 20.0,
                bottom: 400.0,
            },
            "p99 (solid), p50 (dashed), socket p99 (dotted) vs rate (ms, log; lower is better)",
            &[verdict::p99, verdict::p50, verdict::socket_p99],
            true,
            &mut out,
        );
        by_rate(
            groups,
            &rates,
            Area {
                left: half + 60.0,
                top: 100.0,
                right: WIDTH - 20.0,
                bottom: 400.0,
            },
            "Server CPU per delivery vs offered rate (µs; lower is better)",
            &[verdict::cpu],
            false,
            &mut out,
        );
        percentiles(
            groups,
            verdict::verdict_rate(groups),
            Area {
                left: 70.0,
                top: 500.0,
                right: WIDTH - 50.0,
                bottom: height - 60.0,
            },
            &mut out,
        )?;
    }
    out.push_str("</svg>\n");
    Ok(out)
}

fn title(groups: &[Group<'_>], out: &mut String) {
    let c = &groups[0].runs[0].config;
    let rounds = groups.iter().map(|g| g.runs.len()).max().unwrap_or(1);
    let scenario = if c.idle {
        format!(
            "{} in {}",
            plural(c.clients as u64, "idle client"),
            plural(c.rooms as u64, "room")
        )
    } else {
        format!(
            "{} ({}) in {}, {}, {}s per rate",
            plural(c.clients as u64, "client"),
            plural(c.publishers as u64, "publisher"),
            plural(c.rooms as u64, "room"),
            c.message_sizes(),
            c.duration_s
        )
    };
    let spread = if rounds > 1 {
        format!("{rounds} rounds: medians, whiskers min–max")
    } else {
        "1 round".to_string()
    };
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(&format!("{scenario} — {spread}"))
    );
}

fn legend(groups: &[Group<'_>], out: &mut String) {
    let mut x = 70.0;
    for (i, g) in groups.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="40" width="12" height="12" fill="{color}"/><text x="{}" y="50">{}</text>"#,
            x + 16.0,
            escape(g.label)
        );
        x += 30.0 + 8.0 * g.label.chars().count() as f64;
    }
    let _ = writeln!(
        out,
        r##"<circle cx="{}" cy="46" r="4" fill="white" stroke="#555" stroke-width="2"/><text x="{}" y="50">hollow: the harness was the bottleneck at that rate (not judged)</text>"##,
        x + 10.0,
        x + 20.0
    );
}

/// One by-rate panel: a line per system and figure, rates evenly spaced on x.
#[allow(clippy::too_many_arguments)]
fn by_rate(
    groups: &[Group<'_>],
    rates: &[u64],
    area: Area,
    heading: &str,
    figures: &[fn(&StepResult) -> Option<f64>],
    log: bool,
    out: &mut String,
) {
    // Latency is in µs in the reports and drawn in ms.
    let scale = if log { 1e-3 } else { 1.0 };
    let mut all: Vec<(usize, usize, Series)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for (fi, figure) in figures.iter().enumerate() {
            let mut series = Series::new();
            for (xi, &rate) in rates.iter().enumerate() {
                let values = g
                    .runs
                    .iter()
                    .filter_map(|r| r.steps.iter().find(|s| s.rate == rate).and_then(figure));
                if let Some(s) = Spread::of(values.map(|v| v * scale)) {
                    series.push((
                        xi,
                        s.median,
                        s.min,
                        s.max,
                        verdict::harness_bound_at(g, rate),
                    ));
                }
            }
            all.push((gi, fi, series));
        }
    }
    let values = all
        .iter()
        .flat_map(|(_, _, s)| s.iter().flat_map(|p| [p.2, p.3]));
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
        (area.left + area.right) / 2.0,
        area.top - 14.0,
        escape(heading)
    );
    if all.iter().all(|(_, _, s)| s.is_empty()) {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no figures (no --server-pid?)</text>"#,
            (area.left + area.right) / 2.0,
            (area.top + area.bottom) / 2.0
        );
        return;
    }
    let axis = ValueAxis::new(lo, hi, log);
    let y = |v: f64| area.bottom - (area.bottom - area.top) * axis.fraction(v);
    let n = rates.len().max(1);
    let x = |i: usize| area.left + (area.right - area.left) * (i as f64 + 0.5) / n as f64;
    // Axes and grid.
    for v in axis.ticks() {
        let yy = y(v);
        let label = ValueAxis::label(v);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            area.left,
            area.right,
            area.left - 6.0,
            yy + 4.0
        );
    }
    for (i, &rate) in rates.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            area.bottom + 16.0,
            thousands(rate)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/><text x="{3}" y="{4}" text-anchor="middle">offered rate (msg/s)</text>"##,
        area.left,
        area.bottom,
        area.right,
        (area.left + area.right) / 2.0,
        area.bottom + 34.0
    );
    // Series: a small offset per system keeps whiskers apart.
    let shift = |gi: usize| (gi as f64 - (groups.len() as f64 - 1.0) / 2.0) * 4.0;
    for (gi, fi, series) in &all {
        let color = COLORS[gi % COLORS.len()];
        let dash = match fi {
            0 => "",
            1 => r#" stroke-dasharray="6 4""#,
            _ => r#" stroke-dasharray="2 3""#,
        };
        let points: Vec<String> = series
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0) + shift(*gi), y(p.1)))
            .collect();
        if points.len() > 1 {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
        for p in series {
            let (px, py) = (x(p.0) + shift(*gi), y(p.1));
            if p.3 > p.2 {
                let _ = writeln!(
                    out,
                    r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{color}"/>"#,
                    y(p.2),
                    y(p.3)
                );
            }
            let fill = if p.4 { "white" } else { color };
            let _ = writeln!(
                out,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"/>"#
            );
        }
    }
}

/// Latency by percentile at `rate`, one curve per system (its run with the median p99).
fn percentiles(
    groups: &[Group<'_>],
    rate: Option<u64>,
    area: Area,
    out: &mut String,
) -> anyhow::Result<()> {
    // Read latency (solid) and socket latency (dotted) per system, in its colour.
    let mut curves = Vec::new();
    let mut socket_curves = Vec::new();
    for g in groups {
        let report = representative(g, rate);
        let step = rate.and_then(|rate| report.steps.iter().find(|s| s.rate == rate));
        let (points, socket) = match step {
            Some(step) => (
                hist::percentile_curve(&hist::decode(&step.histogram)?),
                match &step.socket_histogram {
                    Some(text) => hist::percentile_curve(&hist::decode(text)?),
                    None => Vec::new(),
                },
            ),
            None => (Vec::new(), Vec::new()),
        };
        curves.push(points);
        socket_curves.push(socket);
    }
    let has_socket = socket_curves.iter().any(|c| !c.is_empty());
    let finite = |q: f64| (1.0 / (1.0 - q)).log10().min(MAX_NINES);
    // The axis ends one decade past the deepest percentile any curve reaches; the 100th
    // percentile (the max) is drawn at that end.
    let x_max = (curves
        .iter()
        .flat_map(|c| c.iter().filter(|&&(q, _)| q < 1.0).map(|&(q, _)| finite(q)))
        .fold(1.0f64, f64::max)
        + 1.0)
        .floor()
        .min(MAX_NINES);
    let nines = |q: f64| {
        if q >= 1.0 {
            x_max
        } else {
            finite(q).min(x_max)
        }
    };
    let maxima_ms: Vec<f64> = curves
        .iter()
        .filter_map(|c| c.iter().map(|&(_, v)| v as f64 / 1000.0).reduce(f64::max))
        .collect();
    let lowest_ms = curves
        .iter()
        .flat_map(|c| c.iter().map(|&(_, v)| v as f64 / 1000.0))
        .filter(|&v| v > 0.0)
        .fold(f64::MAX, f64::min);
    let axis = percentile_axis(&maxima_ms, lowest_ms);
    let px = |n: f64| area.left + (area.right - area.left) * n / x_max;
    let py = |ms: f64| area.bottom - (area.bottom - area.top) * axis.fraction(ms);
    let at = rate
        .map(|r| format!(" at {} msg/s (the verdict's rate)", thousands(r)))
        .unwrap_or_default();
    let what = if has_socket {
        "read (solid) and socket arrival (dotted) − scheduled send"
    } else {
        "receive − scheduled send"
    };
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">Latency by percentile{at}: {what} (ms{}; lower is better)</text>"#,
        (area.left + area.right) / 2.0,
        area.top - 14.0,
        if axis.log { ", log" } else { "" }
    );
    for k in 0..=x_max as usize {
        let x = px(k as f64);
        let label = match k {
            0 => "0%".to_string(),
            _ => format!("{}%", 100.0 - 100.0 / 10f64.powi(k as i32)),
        };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            area.top,
            area.bottom,
            area.bottom + 16.0
        );
    }
    for ms in axis.ticks() {
        let y = py(ms);
        let label = ValueAxis::label(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            area.left,
            area.right,
            area.left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (log scale of 1/(1−p))</text>"#,
        (area.left + area.right) / 2.0,
        area.bottom + 34.0
    );
    let styles = [
        ("", &curves),
        (r#" stroke-dasharray="2 3""#, &socket_curves),
    ];
    for (dash, set) in styles {
        for (i, points) in set.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let path: Vec<String> = points
                .iter()
                .map(|&(q, v)| format!("{:.1},{:.1}", px(nines(q)), py(v as f64 / 1000.0)))
                .collect();
            if !path.is_empty() {
                let _ = writeln!(
                    out,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                    path.join(" ")
                );
            }
        }
    }
    Ok(())
}

/// The latency axis of the percentile panel, in ms: linear from zero, as HdrHistogram's
/// plots are, unless one system's worst latency is over ten times another's (a system
/// seconds behind, beside others at milliseconds), where a linear axis would flatten the
/// fast systems' curves onto its floor; then logarithmic.
fn percentile_axis(maxima_ms: &[f64], lowest_ms: f64) -> ValueAxis {
    let highest = maxima_ms.iter().copied().fold(0.0f64, f64::max);
    let lowest_max = maxima_ms.iter().copied().fold(f64::MAX, f64::min);
    let log = maxima_ms.len() > 1 && lowest_max > 0.0 && highest > 10.0 * lowest_max;
    ValueAxis::new(if log { lowest_ms } else { 0.0 }, highest, log)
}

/// Server memory per idle connection, one bar per system (median, whisker min–max).
fn idle_bars(groups: &[Group<'_>], area: Area, out: &mut String) {
    let values: Vec<Option<Spread>> = groups
        .iter()
        .map(|g| {
            Spread::of(
                g.runs
                    .iter()
                    .filter_map(|r| r.idle.as_ref().map(|i| i.bytes_per_connection)),
            )
        })
        .collect();
    let max = nice_ceiling(values.iter().flatten().fold(0.0f64, |a, s| a.max(s.max)));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">Server RSS per idle connection (bytes; lower is better)</text>"#,
        (area.left + area.right) / 2.0,
        area.top - 14.0
    );
    let _ = writeln!(
        out,
        r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/>"##,
        area.left, area.bottom, area.right
    );
    let slot = (area.right - area.left) / groups.len().max(1) as f64;
    let y = |v: f64| area.bottom - (area.bottom - area.top) * v / max;
    for (i, v) in values.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let bx = area.left + slot * i as f64 + slot * 0.25;
        let bw = slot * 0.5;
        if let Some(s) = v {
            let _ = writeln!(
                out,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0} B</text>"#,
                y(s.median),
                area.bottom - y(s.median),
                bx + bw / 2.0,
                y(s.max) - 6.0,
                s.median
            );
            if s.max > s.min {
                let cx = bx + bw / 2.0;
                let _ = writeln!(
                    out,
                    r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#333"/>"##,
                    y(s.min),
                    y(s.max)
                );
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bx + bw / 2.0,
            area.bottom + 16.0,
            escape(groups[i].label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_floor(0.7), 0.5);
        assert_eq!(nice_floor(3.2), 2.0);
    }

    #[test]
    fn the_percentile_axis_turns_logarithmic_only_when_systems_are_far_apart() {
        // A: every system's worst within a few times the others'.
        let near = percentile_axis(&[28.6, 28.6, 33.3, 111.9], 0.05);
        assert!(!near.log);
        assert_eq!((near.lo, near.hi), (0.0, 200.0));
        // C: Redis seconds behind, ringcast at tens of milliseconds.
        let far = percentile_axis(&[65.7, 68.6, 3090.0, 2360.0], 0.08);
        assert!(far.log);
        assert_eq!((far.lo, far.hi), (0.05, 5000.0));
        assert_eq!(far.ticks().first(), Some(&0.05));
        assert_eq!(far.ticks().last(), Some(&5000.0));
        // The fast systems' curves stay off the floor: 60 ms is above half the height.
        assert!(far.fraction(60.0) > 0.5);
        // One system alone: linear.
        assert!(!percentile_axis(&[500.0], 0.1).log);
    }
}
