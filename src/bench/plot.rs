//! The comparison chart, written as SVG by hand: latency by percentile on the log
//! "1/(1−p)" axis HdrHistogram plots use, then throughput and CPU-per-delivery bars.

use super::compare::{comparison_rate, step_at, Labeled};
use super::hist;
use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const CURVE_HEIGHT: f64 = 420.0;
const BAR_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Right end of the x axis: 99.9999%.
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

pub fn svg(reports: &[Labeled]) -> anyhow::Result<String> {
    let rate = comparison_rate(reports);
    let mut curves = Vec::new();
    for r in reports {
        let points = match step_at(&r.report, rate) {
            Some(step) => hist::percentile_curve(&hist::decode(&step.histogram)?),
            None => Vec::new(),
        };
        curves.push(points);
    }
    let height = CURVE_HEIGHT + BAR_HEIGHT + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);

    // Latency by percentile.
    let (top, bottom) = (40.0, CURVE_HEIGHT - 40.0);
    let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT - 160.0);
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
    let y_max_us = curves
        .iter()
        .flat_map(|c| c.iter().map(|&(_, v)| v as f64))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_max_us / 1000.0);
    let px = |n: f64| left + (right - left) * n / x_max;
    let py = |ms: f64| bottom - (bottom - top) * ms / y_max;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Latency by percentile (receive − scheduled send){}</text>"#,
        WIDTH / 2.0,
        rate.map(|r| format!(" at {r} msg/s")).unwrap_or_default()
    );
    for k in 0..=x_max as usize {
        let x = px(k as f64);
        let label = match k {
            0 => "0%".to_string(),
            _ => format!("{}%", 100.0 - 100.0 / 10f64.powi(k as i32)),
        };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 16.0
        );
    }
    for k in 0..=5 {
        let ms = y_max * k as f64 / 5.0;
        let y = py(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (log scale of 1/(1−p))</text>"#,
        (left + right) / 2.0,
        bottom + 34.0
    );
    for (i, (points, r)) in curves.iter().zip(reports).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(q, v)| format!("{:.1},{:.1}", px(nines(q)), py(v as f64 / 1000.0)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        let y = top + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            right + 12.0,
            y,
            right + 30.0,
            y + 10.0,
            escape(&r.label)
        );
    }

    // Bars: throughput and server CPU per delivery.
    type Value = Box<dyn Fn(&Labeled) -> Option<f64>>;
    // An idle run (`bench --idle`) has no latency or throughput, only memory.
    let bars: Vec<(&str, Value)> = if reports.iter().any(|r| r.report.idle.is_some()) {
        vec![(
            "Server RSS per idle connection (bytes)",
            Box::new(|r: &Labeled| r.report.idle.as_ref().map(|i| i.bytes_per_connection)),
        )]
    } else {
        vec![
            (
                "Throughput (deliveries/s)",
                Box::new(move |r: &Labeled| step_at(&r.report, rate).map(|s| s.throughput)),
            ),
            (
                "Server CPU per delivery (µs)",
                Box::new(move |r: &Labeled| {
                    step_at(&r.report, rate)
                        .and_then(|s| s.server.as_ref())
                        .map(|c| c.cpu_us_per_delivery)
                }),
            ),
        ]
    };
    let panel_width = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / 2.0;
    let panel_top = CURVE_HEIGHT + 10.0;
    for (p, (title, value)) in bars.iter().enumerate() {
        let x0 = MARGIN_LEFT + panel_width * p as f64;
        let values: Vec<Option<f64>> = reports.iter().map(value).collect();
        let max = nice_ceiling(values.iter().flatten().fold(0.0f64, |a, &b| a.max(b)));
        let chart_top = panel_top + 30.0;
        let chart_bottom = panel_top + BAR_HEIGHT - 20.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{title}</text>"#,
            x0 + panel_width / 2.0,
            panel_top + 14.0
        );
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{chart_bottom}" x2="{}" y2="{chart_bottom}" stroke="#888"/>"##,
            x0 + panel_width - 20.0
        );
        let slot = (panel_width - 20.0) / reports.len().max(1) as f64;
        for (i, v) in values.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let bx = x0 + slot * i as f64 + slot * 0.2;
            let bw = slot * 0.6;
            match v {
                Some(v) => {
                    let h = (chart_bottom - chart_top) * v / max;
                    let text = if *v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    };
                    let _ = writeln!(
                        out,
                        r#"<rect x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{text}</text>"#,
                        chart_bottom - h,
                        bx + bw / 2.0,
                        chart_bottom - h - 4.0
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">n/a</text>"#,
                        bx + bw / 2.0,
                        chart_bottom - 4.0
                    );
                }
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bx + bw / 2.0,
                chart_bottom + 14.0,
                escape(&reports[i].label)
            );
        }
    }
    out.push_str("</svg>\n");
    Ok(out)
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
    }
}
