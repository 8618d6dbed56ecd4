//! The human summary of a report: what `ringcast bench` prints at the end of a run.

use super::{
    capacity, fmt_bytes, fmt_us, harness_count, join_rates, plural, transport, IdleReport, Report,
    StepResult,
};
use crate::peers::Proto;
use std::fmt::Write as _;

impl Report {
    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(idle) = &self.idle {
            self.idle_summary(idle, &mut out);
        } else {
            self.header(&mut out);
            self.connect_line(&mut out);
            self.step_table(&mut out);
            self.fanout_lines(&mut out);
            self.socket_lines(&mut out);
            self.mix_lines(&mut out);
            self.cost_lines(&mut out);
            self.capacity_line(&mut out);
            self.count_checks(&mut out);
            self.error_lines(&mut out);
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        if self.lost > 0 {
            let _ = writeln!(
                out,
                "LOSS: {} deliveries were never received (their causes are counted above)",
                self.lost
            );
        }
        out
    }

    /// "backend uring, 1 server thread".
    fn system(&self) -> String {
        let e = &self.environment;
        let system = match (self.config.proto, &e.system_version) {
            (Proto::Ringcast | Proto::Ws, version) => {
                let transport = transport(self.config.proto, self.config.tls);
                let build = version
                    .as_deref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default();
                format!("backend {}{transport}{build}", e.backend)
            }
            (_, Some(version)) => format!("{} {version}", e.backend),
            (_, None) => e.backend.clone(),
        };
        let each = if self.nodes.is_empty() {
            ""
        } else {
            " per node"
        };
        match e.server_threads {
            Some(t) => format!("{system}, {}{each}", plural(t, "server thread")),
            None => system,
        }
    }

    /// "at 127.0.0.1:7878", or "on 3 nodes of one cluster: n1 at A (334 clients, 4
    /// publishers), ...".
    fn whereabouts(&self) -> String {
        if self.nodes.is_empty() {
            return format!("at {}", self.config.addr);
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match self.idle {
                // Nobody publishes in an idle run.
                Some(_) => format!("{} ({})", n.label(), plural(n.clients, "client")),
                None => format!(
                    "{} ({}, {})",
                    n.label(),
                    plural(n.clients, "client"),
                    plural(n.publishers, "publisher")
                ),
            })
            .collect();
        format!(
            "on {} nodes of one cluster: {}",
            self.nodes.len(),
            nodes.join(", ")
        )
    }

    /// The server's command line, or each node's.
    fn command_lines(&self, out: &mut String) {
        if let Some(command) = &self.config.server_command {
            let _ = writeln!(out, "server command: {}", command.join(" "));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(command) = &n.command {
                let _ = writeln!(out, "{} command: {}", n.short(i), command.join(" "));
            }
        }
    }

    fn idle_summary(&self, idle: &IdleReport, out: &mut String) {
        let c = &self.config;
        let _ = writeln!(
            out,
            "ringcast bench --idle: {} {}; {} in {}",
            self.system(),
            self.whereabouts(),
            plural(c.clients as u64, "idle client"),
            plural(c.rooms as u64, "room")
        );
        self.command_lines(out);
        let servers = if self.nodes.is_empty() {
            "server RSS"
        } else {
            "the nodes' RSS added up"
        };
        let _ = writeln!(
            out,
            "idle: {}; {servers} {} before, {} with them: {:.0} bytes per idle connection",
            plural(idle.connections, "connection"),
            fmt_bytes(idle.rss_before_bytes),
            fmt_bytes(idle.rss_after_bytes),
            idle.bytes_per_connection
        );
    }

    fn header(&self, out: &mut String) {
        let c = &self.config;
        let mix = c.mix();
        let mix = if mix.is_empty() {
            String::new()
        } else {
            format!("; {mix}")
        };
        let _ = writeln!(
            out,
            "ringcast bench: {} {}; {} ({}) in {}, {}, {}s per step{mix}",
            self.system(),
            self.whereabouts(),
            plural(c.clients as u64, "client"),
            plural(c.publishers as u64, "publisher"),
            plural(c.rooms as u64, "room"),
            c.message_sizes(),
            c.duration_s
        );
        self.command_lines(out);
    }

    fn connect_line(&self, out: &mut String) {
        let k = &self.connect;
        let _ = writeln!(
            out,
            "connect: {} connected, {} failed; p50 {} p99 {} max {}",
            k.connected,
            k.failed,
            fmt_us(k.latency.p50),
            fmt_us(k.latency.p99),
            fmt_us(k.latency.max)
        );
        for line in k.errors.lines() {
            let _ = writeln!(out, "  connect errors: {line}");
        }
    }

    fn step_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:>8} {:>9} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>5}",
            "rate/s",
            "sent",
            "delivered/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "lost",
            "srv µs/d",
            "srv RSS",
            "held"
        );
        for s in &self.steps {
            let (cpu, rss) = match &s.server {
                Some(cost) => (
                    format!("{:.2}", cost.cpu_us_per_delivery),
                    fmt_bytes(cost.peak_rss_bytes),
                ),
                None => ("-".into(), "-".into()),
            };
            let held = match (s.held, s.harness_bound(self.config.slo_ms).is_some()) {
                (_, true) => "H",
                (true, false) => "yes",
                (false, false) => "NO",
            };
            let _ = writeln!(
                out,
                "{:>8} {:>9} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>5}",
                s.rate,
                s.tally.sent,
                s.throughput,
                fmt_us(s.latency.p50),
                fmt_us(s.latency.p90),
                fmt_us(s.latency.p99),
                fmt_us(s.latency.p999),
                fmt_us(s.latency.max),
                s.lost,
                cpu,
                rss,
                held
            );
        }
        if self
            .steps
            .iter()
            .any(|s| s.harness_bound(self.config.slo_ms).is_some())
        {
            let _ = writeln!(
                out,
                "(held H: the harness was the bottleneck at that rate; see the warnings)"
            );
        }
    }

    /// Socket latency per step, and how much of read p99 was the harness's own queueing.
    fn socket_lines(&self, out: &mut String) {
        for s in &self.steps {
            let Some(socket) = &s.socket_latency else {
                continue;
            };
            let _ = writeln!(
                out,
                "at {}/s: socket latency (arrival at the client's socket) p50 {} p90 {} p99 {} p99.9 {} max {}; harness queueing at p99 (read − socket) {}",
                s.rate,
                fmt_us(socket.p50),
                fmt_us(socket.p90),
                fmt_us(socket.p99),
                fmt_us(socket.p999),
                fmt_us(socket.max),
                fmt_us(s.latency.p99.saturating_sub(socket.p99))
            );
        }
        if self.config.rx_timestamps && self.steps.iter().all(|s| s.socket_latency.is_none()) {
            let _ = writeln!(out, "socket latency: not measured (see the warnings)");
        }
    }

    /// Room changes, deliveries in doubt and slow readers' cut-offs, apart from loss.
    fn mix_lines(&self, out: &mut String) {
        let c = &self.config;
        for s in self.warmup.iter().chain(&self.steps) {
            if c.churners > 0 {
                let late = match s.tally.in_doubt_received {
                    0 => String::new(),
                    n => format!(", and {n} that arrived after their recipient left the room"),
                };
                let _ = writeln!(
                    out,
                    "at {}/s: churn: {} room changes confirmed; in doubt (neither expected nor lost): {} messages sent while their recipient was moving that it did not receive{late}",
                    s.rate, s.tally.churn_ops, s.tally.in_doubt
                );
            }
        }
        if c.slow_readers > 0 {
            let steps = self.warmup.iter().chain(&self.steps);
            let (cuts, read) = steps.fold((0, 0), |(cuts, read), s| {
                (
                    cuts + s.tally.slow_reader_cuts,
                    read + s.tally.slow_reader_deliveries,
                )
            });
            let server: Option<u64> = self
                .steps
                .iter()
                .chain(self.warmup.iter())
                .map(|s| s.server_cuts)
                .sum();
            let said = match server {
                Some(n) => format!("; the server counted {n} slow consumers cut"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "slow readers: {cuts} of {} cut off by the server (expected, not loss), having read {read} deliveries (not counted as received){said}",
                c.slow_readers
            );
        }
    }

    fn cost_lines(&self, out: &mut String) {
        for s in &self.steps {
            let server = match &s.server {
                Some(cost) => match cost.softirq_cpu_s {
                    Some(softirq) => format!(
                        "server CPU {:.0}% of a core (of it {:.0}% in ksoftirqd), ",
                        cost.cpu_util * 100.0,
                        100.0 * softirq / cost.cpu_s.max(1e-9) * cost.cpu_util
                    ),
                    None => format!("server CPU {:.0}% of a core, ", cost.cpu_util * 100.0),
                },
                None => String::new(),
            };
            let nodes = if self.nodes.is_empty() || s.server.is_none() {
                ""
            } else {
                "the nodes' "
            };
            let _ = writeln!(
                out,
                "at {}/s: {nodes}{server}harness CPU {:.1}s (busiest thread {:.0}% of a core), sends p99 {} behind schedule",
                s.rate,
                s.harness_cpu_s,
                s.harness_peak_util * 100.0,
                fmt_us(s.send_lag.p99)
            );
            self.node_lines(s, out);
        }
    }

    /// Each node's share of a cluster step: its deliveries, CPU and RSS, and its chat
    /// batches to and from the other nodes.
    fn node_lines(&self, s: &StepResult, out: &mut String) {
        for (i, (info, n)) in self.nodes.iter().zip(&s.nodes).enumerate() {
            let mut parts = Vec::new();
            if let Some(d) = n.deliveries {
                parts.push(format!("{d} deliveries"));
            }
            if let Some(cost) = &n.server {
                parts.push(format!(
                    "CPU {:.0}% of a core ({:.2} µs/delivery), peak RSS {}",
                    cost.cpu_util * 100.0,
                    cost.cpu_us_per_delivery,
                    fmt_bytes(cost.peak_rss_bytes)
                ));
            }
            if let (Some(p), Some(r)) = (n.cluster_published, n.cluster_received) {
                let dropped = match n.cluster_dropped {
                    Some(0) | None => String::new(),
                    Some(d) => format!(", DROPPED {d}"),
                };
                parts.push(format!(
                    "chat batches to the other nodes {p}, from them {r}{dropped}"
                ));
            }
            let _ = writeln!(
                out,
                "  {} ({}): {}",
                info.short(i),
                info.addr,
                parts.join("; ")
            );
        }
    }

    fn capacity_line(&self, out: &mut String) {
        let c = &self.config;
        let cap = capacity(&self.steps, c.slo_ms);
        let skipped = match cap.skipped.as_slice() {
            [] => String::new(),
            rates => format!(
                "; not judged at {} msg/s, where the harness was the bottleneck",
                join_rates(rates)
            ),
        };
        let _ = match cap.rate {
            Some(rate) => writeln!(
                out,
                "capacity: {rate} msg/s (highest rate with no loss and p99 under {} ms{skipped})",
                c.slo_ms
            ),
            None => writeln!(
                out,
                "capacity: no rate held (loss, or p99 over {} ms{skipped})",
                c.slo_ms
            ),
        };
    }

    /// The server's fan-out quantiles beside the clients' latency, per step measured
    /// with `--metrics-url`.
    fn fanout_lines(&self, out: &mut String) {
        for s in &self.steps {
            let Some(f) = &s.server_fanout else {
                continue;
            };
            let _ = writeln!(
                out,
                "server fan-out at {}/s (its /metrics): p50 {} p99 {} over {} lines; clients' latency p50 {} p99 {}",
                s.rate,
                fmt_us(f.p50_us.round() as u64),
                fmt_us(f.p99_us.round() as u64),
                f.lines,
                fmt_us(s.latency.p50),
                fmt_us(s.latency.p99)
            );
        }
    }

    fn count_checks(&self, out: &mut String) {
        for s in &self.steps {
            if let (Some(server), Some(mismatch)) = (s.server_deliveries, s.count_mismatch) {
                let slow = if self.config.slow_readers > 0 {
                    ", the difference allowing for what it queued for the slow readers"
                } else {
                    ""
                };
                let who = if self.nodes.is_empty() {
                    "server".to_string()
                } else {
                    let each: Vec<String> = s
                        .nodes
                        .iter()
                        .map(|n| n.deliveries.map_or("-".to_string(), |d| d.to_string()))
                        .collect();
                    format!(
                        "the {} nodes together (each its own members': {})",
                        self.nodes.len(),
                        each.join(" + ")
                    )
                };
                let _ = writeln!(
                    out,
                    "count check at {}/s: harness received {}, {who} queued {} ({:.2}% apart{slow})",
                    s.rate,
                    harness_count(&s.tally),
                    server,
                    mismatch * 100.0
                );
            }
        }
        let e = &self.environment;
        if !self.config.proto.is_ringcast() {
            let _ = writeln!(
                out,
                "count check: skipped ({} has no /stats to count its deliveries independently)",
                e.backend
            );
        }
        let echoed: u64 = self.steps.iter().map(|s| s.tally.self_echo).sum();
        if echoed > 0 {
            let _ = writeln!(
                out,
                "self-echo: {} delivered {echoed} messages back to their own publishers (discarded, not counted as deliveries): extra work that ringcast and NATS (echo off) do not do",
                e.backend
            );
        }
    }

    fn error_lines(&self, out: &mut String) {
        for s in self.warmup.iter().chain(&self.steps) {
            for line in s.errors.lines() {
                let _ = writeln!(out, "errors at {}/s: {line}", s.rate);
            }
        }
    }
}
