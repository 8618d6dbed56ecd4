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
//! Nothing here is computed on the fan-out path: the threads' counters are summed when a
//! scrape comes (see `stats`).

use super::directory::Directory;
use super::stats::{
    this_thread, Disconnect, EpollCall, ErrorKind, HistogramTotals, HttpStatus, Refusal, Stats,
    Transport, UringOp, UringSubmit,
};
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

/// The whole exposition of a server: its counters, the directory's gauges, and the
/// families of its backend (`uring` or `epoll`, as `stats` names it).
pub fn render(stats: &Stats, dir: &Directory, format: Format) -> String {
    let s = stats.snapshot();
    let t = &s.totals;
    let info = stats.info();
    let mut w = Writer::new(format);

    w.gauge_by(
        "ringcast_clients",
        "Chat clients connected now, by transport (HTTP requests are not clients).",
        "transport",
        Transport::ALL.map(|tr| (tr.name(), dir.clients_by(tr) as u64)),
    );
    w.gauge(
        "ringcast_rooms",
        "Rooms with at least one member now.",
        dir.room_count() as u64,
    );
    w.gauge(
        "ringcast_outbound_queued_bytes",
        "Bytes queued for clients that their writers have not taken yet.",
        s.queued_bytes,
    );
    w.gauge(
        "ringcast_threads",
        "Worker threads.",
        stats.threads() as u64,
    );
    w.family(
        "ringcast_info",
        Type::Gauge,
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

    w.counter(
        "ringcast_messages_in",
        "Chat lines received from clients.",
        t.messages_in,
    );
    w.counter(
        "ringcast_deliveries",
        "Chat lines queued to recipients, one per recipient.",
        t.deliveries,
    );
    w.counter(
        "ringcast_bytes_in",
        "Bytes read from connections (chat clients and HTTP requests).",
        t.bytes_in,
    );
    w.counter(
        "ringcast_bytes_out",
        "Bytes written to connections (chat clients and HTTP responses).",
        t.bytes_out,
    );
    w.counter_by(
        "ringcast_connections",
        "Chat clients accepted, by transport (HTTP requests that stay HTTP are not counted).",
        "transport",
        Transport::ALL.map(|tr| (tr.name(), t.connections_by[tr as usize])),
    );
    w.counter_by(
        "ringcast_disconnects",
        "Chat clients gone, by reason.",
        "reason",
        Disconnect::ALL.map(|r| (r.name(), t.disconnects(r))),
    );
    w.counter_by(
        "ringcast_refused",
        "Connections refused before they became clients, by reason.",
        "reason",
        Refusal::ALL.map(|r| (r.name(), t.refused(r))),
    );
    w.counter(
        "ringcast_rate_limited",
        "Input lines dropped for going over --max-msg-rate.",
        t.rate_limited,
    );
    w.counter_by(
        "ringcast_errors",
        "Error replies (`* error: ...`) sent to chat clients, by kind.",
        "kind",
        ErrorKind::ALL.map(|k| (k.name(), t.errors(k))),
    );
    w.counter_by(
        "ringcast_http_responses",
        "HTTP responses queued, by status code (a WebSocket upgrade is a 101).",
        "code",
        HttpStatus::ALL.map(|c| (c.name(), s.http_responses[c as usize])),
    );

    w.histogram(
        "ringcast_fanout_seconds",
        "From reading a chat line to the end of the last write carrying it to a recipient \
         (every line; the lines of one read count once each).",
        &s.fanout,
        1e9,
    );
    w.histogram(
        "ringcast_write_batch_lines",
        "Lines (chat lines and replies) a connection's writer took for one write.",
        &s.write_lines,
        1.0,
    );

    match info.backend.as_str() {
        "uring" => {
            let submits = std::iter::once(("park", s.parks)).chain(
                UringSubmit::ALL
                    .iter()
                    .map(|&why| (why.name(), s.uring_submits[why as usize])),
            );
            w.counter_by(
                "ringcast_uring_submissions",
                "io_uring_enter calls that submitted, by trigger: the park of a worker thread \
                 (the runtime's park count) or a push that found the submission queue full.",
                "trigger",
                submits,
            );
            w.counter_by(
                "ringcast_uring_ops_submitted",
                "Ops pushed to the rings, by kind.",
                "op",
                UringOp::ALL.map(|op| (op.name(), s.uring_ops[op as usize])),
            );
            w.gauge(
                "ringcast_uring_ops_in_flight",
                "Ops pushed to the rings whose completion has not been posted yet.",
                s.ring.in_flight,
            );
            w.counter(
                "ringcast_uring_cqe_overflow",
                "Times a push found a ring's completion queue overflowed (completions waiting \
                 on the kernel's overflow list) after finding it fine before.",
                s.uring_overflows_seen,
            );
            w.counter(
                "ringcast_uring_cqe_dropped",
                "Completions the kernel dropped for want of room (its own counter).",
                s.ring.cqe_dropped,
            );
        }
        "uring-direct" => uring_direct_families(&mut w, &s),
        "epoll" => {
            w.counter(
                "ringcast_epoll_parks",
                "Times a worker thread blocked in epoll_wait for events (the runtime's park \
                 count; non-blocking polls between scheduler passes are not counted).",
                s.parks,
            );
            w.counter(
                "ringcast_epoll_reads",
                "read calls on client sockets reported readable.",
                s.epoll_calls[EpollCall::Read as usize],
            );
            w.counter(
                "ringcast_epoll_writes",
                "writev calls on client sockets.",
                s.epoll_calls[EpollCall::Write as usize],
            );
            w.counter_by(
                "ringcast_epoll_wouldblock",
                "Socket calls that found nothing to read or no room to write (EAGAIN).",
                "op",
                EpollCall::ALL.map(|call| (call.name(), s.epoll_wouldblock[call as usize])),
            );
        }
        _ => {}
    }
    w.finish()
}

/// The uring-direct backend's own I/O: its loops' enters, the ops they push, and what
/// their rings show.
fn uring_direct_families(w: &mut Writer, s: &super::stats::Snapshot) {
    w.counter(
        "ringcast_uring_direct_enters",
        "io_uring_enter calls of the completion loops: each submits what a pass \
         queued and waits for the next completion.",
        s.parks,
    );
    w.counter_by(
        "ringcast_uring_ops_submitted",
        "Ops pushed to the rings, by kind.",
        "op",
        UringOp::ALL.map(|op| (op.name(), s.uring_ops[op as usize])),
    );
    w.gauge(
        "ringcast_uring_ops_in_flight",
        "Ops pushed to the rings whose last completion has not been reaped yet.",
        s.ring.in_flight,
    );
    w.counter(
        "ringcast_uring_recv_nobufs",
        "Multishot receives that ended for want of a free buffer in the thread's \
         buffer ring (re-armed once buffers are back; nothing is lost).",
        s.ring.recv_nobufs,
    );
    w.counter(
        "ringcast_uring_cqe_overflow",
        "Times a loop found its ring's completion queue overflowed (completions \
         waiting on the kernel's overflow list) after finding it fine before.",
        s.uring_overflows_seen,
    );
    w.counter(
        "ringcast_uring_cqe_dropped",
        "Completions the kernel dropped for want of room (its own counter).",
        s.ring.cqe_dropped,
    );
}

/// One read's chat, timed: the buffer every recipient's outbox shares is made from an
/// owner that records, when the last clone of the buffer goes, the time since the read
/// into the fan-out histogram of the thread it goes on. The last clone goes when the
/// last write carrying it has ended (a writer drops what it wrote once the write
/// completes; a completion-based op keeps its buffer until its completion), or when the
/// last recipient that would have got it is cut off or gone. Copies in hand-offs and the
/// WebSocket frames of the same lines keep it alive too (see [`linked`]), so it records
/// once per read, with the weight of its lines, on whichever thread lets go last.
pub(crate) fn timed_batch(text: bytes::BytesMut, read_at: Instant, lines: u64) -> Bytes {
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
    text: bytes::BytesMut,
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
        this_thread(|counters| counters.fanout(nanos, lines));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
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
    fn family(&mut self, name: &str, kind: Type, help: &str) {
        let suffix = match (kind, self.format) {
            (Type::Counter, Format::Classic) => "_total",
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
        self.family(name, Type::Gauge, help);
        self.sample(name, &[], value);
    }

    fn gauge_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.family(name, Type::Gauge, help);
        for (value, n) in series {
            self.sample(name, &[(label, value)], n);
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Type::Counter, help);
        self.sample(&format!("{name}_total"), &[], value);
    }

    fn counter_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.family(name, Type::Counter, help);
        let total = format!("{name}_total");
        for (value, n) in series {
            self.sample(&total, &[(label, value)], n);
        }
    }

    /// A histogram whose bounds and sum are in units `per` times smaller than the unit
    /// exposed (1e9 for nanoseconds shown as seconds). Buckets are cumulative.
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramTotals, per: f64) {
        self.family(name, Type::Histogram, help);
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
    use crate::stats::ServerInfo;
    use std::collections::BTreeMap;

    fn server(backend: &str) -> (Stats, Directory) {
        let info = ServerInfo {
            backend: backend.into(),
            version: "1.2.3".into(),
            git_rev: "abc\"d\\e\nf".into(),
        };
        (Stats::with_info(2, info, true), Directory::new(16, 0))
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
            "ringcast_uring_submissions_total",
            "ringcast_uring_ops_submitted_total",
            "ringcast_uring_cqe_overflow_total",
        ] {
            assert!(families.contains_key(family), "{family} missing:\n{text}");
        }
        assert_eq!(families["ringcast_fanout_seconds"].0, "histogram");
        assert_eq!(families["ringcast_clients"].0, "gauge");
        assert!(!families.contains_key("ringcast_epoll_reads_total"));
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
        assert_eq!(
            value(
                &samples,
                "ringcast_uring_submissions_total{trigger=\"sq_full\"}"
            ),
            "0"
        );
        assert_eq!(value(&samples, "ringcast_threads"), "2");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn counts_from_every_thread_are_summed_and_histograms_are_cumulative() {
        let (stats, dir) = server("epoll");
        stats.thread(0).messages_in(3, 30);
        stats.thread(1).messages_in(1, 10);
        stats.thread(1).disconnect(Disconnect::SlowConsumer);
        stats.thread(0).error(ErrorKind::UnknownCommand);
        stats.thread(1).error(ErrorKind::UnknownCommand);
        stats.thread(0).fanout(15_000, 2); // 15 µs, two lines: the 20 µs bucket
        stats.thread(1).fanout(2_500_000_000, 1); // 2.5 s: the 3 s bucket
        stats.thread(0).write_batch(3);
        stats.thread(0).epoll_call(EpollCall::Read, true);
        stats.thread(0).queued_bytes(100);
        stats.thread(1).queued_bytes(50);
        stats.thread(0).queued_bytes(-30);
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
        assert_eq!(value(&samples, "ringcast_epoll_reads_total"), "1");
        assert_eq!(
            value(&samples, "ringcast_epoll_wouldblock_total{op=\"read\"}"),
            "1"
        );
        assert!(families.contains_key("ringcast_epoll_parks_total"));
        assert!(!families.contains_key("ringcast_uring_submissions_total"));
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
        stats.thread(0).messages_in(2, 2);
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
