//! `GET /metrics`: the server's counters in the Prometheus text formats, written by hand
//! from one model so both formats carry the same samples.
//!
//! - **Classic** (`text/plain; version=0.0.4`), the default: `# HELP` and `# TYPE` on
//!   every family, counters named with their `_total`. This is what `promtool check
//!   metrics` accepts.
//! - **OpenMetrics** 1.0, when the scraper's `Accept` prefers it (Prometheus does): the
//!   counter families are named without `_total` (their samples keep it), and the
//!   exposition ends with `# EOF`.
//!
//! Every family is listed on every scrape, a labelled one with each of its label values
//! (from the enums that define them) even while its count is 0: a dashboard or alert
//! never sees a series appear from nothing.
//!
//! The families are the rows of the counter tables, the core's and the backend's, in
//! their order (see [`crate::counters`]); nothing here names a counter. Nothing here is
//! computed on the fan-out path: the threads' counters are summed when a scrape comes.

use super::counters::{HistogramTotals, Kind, Row, Value};
use super::directory::Directory;
use super::stats::{this_thread, Stats, Transport};
use bytes::Bytes;
use std::fmt::{Display, Write as _};
use std::time::Instant;

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0 and not below that of
    /// `text/plain`; the classic format otherwise (no header, `*/*`, anything else).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut openmetrics: f32 = 0.0;
        let mut plain: f32 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let quality = parts
                .filter_map(|param| {
                    let (key, value) = param.split_once('=')?;
                    (key.trim() == "q").then(|| value.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics = openmetrics.max(quality);
            } else if media.eq_ignore_ascii_case("text/plain") {
                plain = plain.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The whole exposition of a server: the directory's gauges and the server's info, then
/// every row of the core's table and of the backend's (see [`crate::counters`]).
pub fn render(stats: &Stats, dir: &Directory, format: Format) -> String {
    let reading = stats.read();
    let info = stats.info();
    let mut w = Writer::new(format);

    w.family(
        "ringcast_clients",
        Kind::Gauge,
        "Chat clients connected now, by transport (HTTP requests are not clients).",
    );
    for tr in Transport::ALL {
        w.sample(
            "ringcast_clients",
            &[("transport", tr.name())],
            dir.clients_by(tr),
        );
    }
    w.gauge(
        "ringcast_rooms",
        "Rooms with at least one member now.",
        dir.room_count() as u64,
    );
    w.gauge(
        "ringcast_threads",
        "Worker threads.",
        stats.threads() as u64,
    );
    w.family(
        "ringcast_info",
        Kind::Gauge,
        "The server's backend, version and git revision; always 1.",
    );
    w.sample(
        "ringcast_info",
        &[
            ("backend", &info.backend),
            ("version", &info.version),
            ("git_rev", &info.git_rev),
        ],
        1,
    );

    let mut family = "";
    for table in reading.tables() {
        for (row, value) in table.rows().iter().zip(table.values()) {
            // Consecutive rows of one name are one family: one HELP and TYPE.
            if row.name != family {
                w.family(row.name, row.kind, row.help);
                family = row.name;
            }
            w.row(row, value);
        }
    }
    w.finish()
}

/// One read's chat, timed: the buffer every recipient's outbox shares is made from an
/// owner that records, when the last clone of the buffer goes, the time since the read
/// into the fan-out histogram of the thread it goes on. The last clone goes when the
/// last write carrying it has ended (a writer drops what it wrote once the write
/// completes; a completion-based op keeps its buffer until its completion), or when the
/// last recipient that would have got it is cut off or gone. Copies in hand-offs and the
/// WebSocket frames of the same lines keep it alive too (see [`linked`]), so it records
/// once per read, with the weight of its lines, on whichever thread lets go last.
pub(crate) fn timed_batch(text: Bytes, read_at: Instant, lines: u64) -> Bytes {
    Bytes::from_owner(FanoutClock {
        text,
        read_at,
        lines,
    })
}

/// `derived` (e.g. the WebSocket frames of a read's lines), holding `source` alive until
/// it goes too: a timed batch records only once everything made from it is written.
pub(crate) fn linked(derived: Bytes, source: &Bytes) -> Bytes {
    Bytes::from_owner(Linked {
        derived,
        _source: source.clone(),
    })
}

struct FanoutClock {
    /// The plain batch: room history keeps a clone of it, which does not hold the
    /// clock back.
    text: Bytes,
    read_at: Instant,
    lines: u64,
}

impl AsRef<[u8]> for FanoutClock {
    fn as_ref(&self) -> &[u8] {
        &self.text
    }
}

impl Drop for FanoutClock {
    fn drop(&mut self) {
        // The one reading of the clock the core makes itself: the moment measured is
        // this drop, which no caller can hand in.
        let nanos = u64::try_from(self.read_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let lines = self.lines;
        // Off a worker thread (nothing bound) the sample is lost; the server's threads
        // are always bound while metrics are on.
        this_thread(|counters| counters.fanout.observe(nanos, lines));
    }
}

struct Linked {
    derived: Bytes,
    _source: Bytes,
}

impl AsRef<[u8]> for Linked {
    fn as_ref(&self) -> &[u8] {
        &self.derived
    }
}

/// Writes families in one format.
struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    fn new(format: Format) -> Self {
        Self {
            out: String::with_capacity(8 * 1024),
            format,
        }
    }

    /// `# HELP` and `# TYPE` of a family. `name` is the family's name; a counter's samples
    /// add `_total`, which the classic format also puts in the family name.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let suffix = match (kind, self.format) {
            (Kind::Counter, Format::Classic) => "_total",
            _ => "",
        };
        let help = escape_help(help, self.format);
        let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {}", kind.name());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    /// A row's samples (its family's HELP and TYPE written before): a counter's name
    /// with `_total`, one sample per label value, or a histogram's series.
    fn row(&mut self, row: &Row, value: Value<'_>) {
        let name = match row.kind {
            Kind::Counter => format!("{}_total", row.name),
            Kind::Gauge | Kind::Histogram => row.name.to_owned(),
        };
        match value {
            Value::Count(n) => match row.series {
                Some(series) => self.sample(&name, &[series], n),
                None => self.sample(&name, &[], n),
            },
            Value::Series(counts) => {
                let label = row.label.unwrap_or("value");
                for (value, n) in row.values.iter().zip(counts) {
                    self.sample(&name, &[(label, *value)], n);
                }
            }
            Value::Histogram(h) => self.histogram(row.name, h, row.scale),
        }
    }

    /// A histogram whose bounds and sum are in units `per` times smaller than the unit
    /// exposed (1e9 for nanoseconds shown as seconds). Buckets are cumulative.
    fn histogram(&mut self, name: &str, h: &HistogramTotals, per: f64) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (&bound, &count) in h.bounds.iter().zip(&h.buckets) {
            cumulative += count;
            let le = if bound == u64::MAX {
                "+Inf".to_owned()
            } else {
                // Divided, not multiplied by 1/per: 20000 / 1e9 prints as 0.00002.
                format_float(bound as f64 / per)
            };
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        if h.bounds.is_empty() {
            self.sample(&bucket, &[("le", "+Inf")], 0);
        }
        self.sample(
            &format!("{name}_sum"),
            &[],
            format_float(h.sum as f64 / per),
        );
        self.sample(&format!("{name}_count"), &[], cumulative);
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A float as both formats read it; whole numbers keep a `.0` so that OpenMetrics sees a
/// float where one is meant (`le`, sums).
fn format_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and line feed escaped (both formats).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: backslash and line feed escaped, and in OpenMetrics double quotes too.
fn escape_help(help: &str, format: Format) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{ByLabel, Counter, ProbeCounter, Row, Show};
    use crate::stats::{Disconnect, ErrorKind, ServerInfo};
    use crate::this_backend;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A backend's table as a server registers one: a probed series and a counted,
    /// labelled row of one family, and a plain counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Trigger {
        Full,
        Timer,
    }

    crate::label!(Trigger, "trigger", { Full = "full", Timer = "timer" });

    crate::table! {
        struct TestBackend, TestTotals {
            parks: ProbeCounter = Row::new("ringcast_test_enters", "Enters, by trigger.")
                .series("trigger", "park"),
            enters: ByLabel<Trigger> = Row::new("ringcast_test_enters", "not shown")
                .show(&[Show::Sum { key: "early", of: &["timer"] }]),
            calls: Counter = Row::new("ringcast_test_calls", "Calls."),
        }
    }

    fn server(backend: &str) -> (Stats, Directory) {
        let info = ServerInfo {
            backend: backend.into(),
            version: "1.2.3".into(),
            git_rev: "abc\"d\\e\nf".into(),
        };
        let stats = Stats::with_info(2, info, true).with_backend::<TestBackend>();
        (stats, Directory::new(16, 0))
    }

    /// Family name -> (TYPE, HELP present) from the comment lines, and every sample line.
    fn parse(text: &str) -> (BTreeMap<String, (String, bool)>, Vec<String>) {
        let mut families: BTreeMap<String, (String, bool)> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                families.entry(name).or_default().1 = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_owned();
                families.entry(name).or_default().0 = parts.next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                samples.push(line.to_owned());
            }
        }
        (families, samples)
    }

    fn value(samples: &[String], series: &str) -> String {
        samples
            .iter()
            .find_map(|s| s.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series}"))
            .to_owned()
    }

    #[test]
    fn every_family_has_help_and_type_and_labelled_ones_list_every_value_at_zero() {
        let (stats, dir) = server("uring");
        let text = render(&stats, &dir, Format::Classic);
        let (families, samples) = parse(&text);
        for (name, (kind, help)) in &families {
            assert!(*help, "{name} has no HELP");
            assert!(!kind.is_empty(), "{name} has no TYPE");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "classic counter {name}");
            }
            assert!(
                samples.iter().any(|s| s.starts_with(name.as_str())),
                "{name} has no sample"
            );
        }
        for family in [
            "ringcast_clients",
            "ringcast_rooms",
            "ringcast_outbound_queued_bytes",
            "ringcast_threads",
            "ringcast_info",
            "ringcast_messages_in_total",
            "ringcast_deliveries_total",
            "ringcast_bytes_in_total",
            "ringcast_bytes_out_total",
            "ringcast_connections_total",
            "ringcast_disconnects_total",
            "ringcast_errors_total",
            "ringcast_fanout_seconds",
            "ringcast_write_batch_lines",
            "ringcast_test_enters_total",
            "ringcast_test_calls_total",
        ] {
            assert!(families.contains_key(family), "{family} missing:\n{text}");
        }
        assert_eq!(families["ringcast_fanout_seconds"].0, "histogram");
        assert_eq!(families["ringcast_clients"].0, "gauge");
        // No client, no message yet: every label value is there, at 0.
        for reason in Disconnect::ALL {
            let series = format!("ringcast_disconnects_total{{reason=\"{}\"}}", reason.name());
            assert_eq!(value(&samples, &series), "0");
        }
        for kind in ErrorKind::ALL {
            let series = format!("ringcast_errors_total{{kind=\"{}\"}}", kind.name());
            assert_eq!(value(&samples, &series), "0");
        }
        assert_eq!(value(&samples, "ringcast_clients{transport=\"ws\"}"), "0");
        // A family of two rows: one HELP (the first row's), the probed series first.
        assert_eq!(
            text.matches("# HELP ringcast_test_enters_total ").count(),
            1
        );
        assert!(text.contains("# HELP ringcast_test_enters_total Enters, by trigger.\n"));
        assert!(text.contains(
            "ringcast_test_enters_total{trigger=\"park\"} 0\n\
             ringcast_test_enters_total{trigger=\"full\"} 0\n\
             ringcast_test_enters_total{trigger=\"timer\"} 0\n"
        ));
        assert_eq!(value(&samples, "ringcast_threads"), "2");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn counts_from_every_thread_are_summed_and_histograms_are_cumulative() {
        let stats = Arc::new(server("test").0);
        let dir = Directory::new(16, 0);
        for (thread, messages) in [(0, 3), (1, 1)] {
            stats.thread(thread).messages_in.add(messages);
            stats.thread(thread).deliveries.add(messages * 10);
        }
        stats.thread(1).disconnects.inc(Disconnect::SlowConsumer);
        stats.thread(0).errors.inc(ErrorKind::UnknownCommand);
        stats.thread(1).errors.inc(ErrorKind::UnknownCommand);
        stats.thread(0).fanout.observe(15_000, 2); // 15 µs, two lines: the 20 µs bucket
        stats.thread(1).fanout.observe(2_500_000_000, 1); // 2.5 s: the 3 s bucket
        stats.thread(0).write_lines.observe(3, 1);
        stats.thread(0).queued_bytes.add(100);
        stats.thread(1).queued_bytes.add(50);
        stats.thread(0).queued_bytes.add(-30);
        // The backend's block, counted through the thread's binding as a backend does.
        let bound = stats.bind_thread(1);
        this_backend(|b: &TestBackend| b.calls.add(2)).expect("bound, registered");
        this_backend(|b: &TestBackend| b.enters.inc(Trigger::Timer)).expect("registered");
        drop(bound);
        stats
            .thread(0)
            .backend::<TestBackend>()
            .expect("a block")
            .calls
            .inc();
        stats
            .thread(0)
            .backend::<TestBackend>()
            .expect("a block")
            .parks
            .set(Box::new(|| 7));
        let (families, samples) = parse(&render(&stats, &dir, Format::Classic));
        assert_eq!(value(&samples, "ringcast_messages_in_total"), "4");
        assert_eq!(value(&samples, "ringcast_deliveries_total"), "40");
        assert_eq!(
            value(
                &samples,
                "ringcast_disconnects_total{reason=\"slow_consumer\"}"
            ),
            "1"
        );
        assert_eq!(
            value(&samples, "ringcast_errors_total{kind=\"unknown_command\"}"),
            "2"
        );
        assert_eq!(value(&samples, "ringcast_outbound_queued_bytes"), "120");
        assert_eq!(
            value(&samples, "ringcast_fanout_seconds_bucket{le=\"0.00001\"}"),
            "0"
        );
        assert_eq!(
            value(&samples, "ringcast_fanout_seconds_bucket{le=\"0.00002\"}"),
            "2"
        );
        assert_eq!(
            value(&samples, "ringcast_fanout_seconds_bucket{le=\"2.0\"}"),
            "2"
        );
        assert_eq!(
            value(&samples, "ringcast_fanout_seconds_bucket{le=\"3.0\"}"),
            "3"
        );
        assert_eq!(
            value(&samples, "ringcast_fanout_seconds_bucket{le=\"+Inf\"}"),
            "3"
        );
        assert_eq!(value(&samples, "ringcast_fanout_seconds_count"), "3");
        assert_eq!(value(&samples, "ringcast_fanout_seconds_sum"), "2.50003");
        assert_eq!(
            value(&samples, "ringcast_write_batch_lines_bucket{le=\"2.0\"}"),
            "0"
        );
        assert_eq!(
            value(&samples, "ringcast_write_batch_lines_bucket{le=\"4.0\"}"),
            "1"
        );
        assert_eq!(families["ringcast_test_calls_total"].0, "counter");
        assert_eq!(value(&samples, "ringcast_test_calls_total"), "3");
        assert_eq!(
            value(&samples, "ringcast_test_enters_total{trigger=\"park\"}"),
            "7"
        );
        assert_eq!(
            value(&samples, "ringcast_test_enters_total{trigger=\"timer\"}"),
            "1"
        );
        // /stats shows the backend's fields after the core's.
        let fields = stats.read().stat_fields();
        assert!(
            fields.starts_with(" messages_in=4 deliveries=40 bytes_out=0 connections=0 "),
            "{fields}"
        );
        assert!(fields.ends_with(" rate_limited=0 early=1"), "{fields}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let (stats, dir) = server("uring");
        let text = render(&stats, &dir, Format::Classic);
        assert!(
            text.contains(
                "ringcast_info{backend=\"uring\",version=\"1.2.3\",git_rev=\"abc\\\"d\\\\e\\nf\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(
            escape_help("a \\ b\nc \"d\"", Format::Classic),
            "a \\\\ b\\nc \"d\""
        );
        assert_eq!(
            escape_help("a \\ b\nc \"d\"", Format::OpenMetrics),
            "a \\\\ b\\nc \\\"d\\\""
        );
        // One sample per line: nothing unescaped broke a line.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("ringcast_"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let (stats, dir) = server("uring");
        stats.thread(0).messages_in.add(2);
        let text = render(&stats, &dir, Format::OpenMetrics);
        assert!(text.contains("# TYPE ringcast_messages_in counter\n"));
        assert!(text.contains("# HELP ringcast_messages_in "));
        assert!(text.contains("\nringcast_messages_in_total 2\n"));
        assert!(!text.contains("# TYPE ringcast_messages_in_total"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        // The same samples as the classic format.
        let classic = render(&stats, &dir, Format::Classic);
        let (_, a) = parse(&classic);
        let (_, b) = parse(&text);
        assert_eq!(a, b);
    }

    #[test]
    fn accept_headers_choose_the_format() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Classic);
        assert_eq!(Format::negotiate(Some("text/plain")), Classic);
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.5")),
            Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Classic
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            OpenMetrics
        );
    }
}
