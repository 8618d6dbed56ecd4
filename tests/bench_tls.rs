//! `ringcast bench --tls` against a real `ringcast serve` with TLS listeners, on every
//! backend: the line protocol over TLS (`--tls-listen`) and WebSocket as wss (`--https`),
//! every delivery verified, TLS recorded in the report, the server's own count agreeing;
//! and a harness that does not trust the server's CA connects no client.

mod bench_common;
mod common;
mod tls_common;

use bench_common::{bench, scratch, server_deliveries, text};
use common::Server;
use ringcast_bench::report::Report;
use ringcast_testkit::BenchCommand;
use std::time::Duration;
use tls_common::{pki, tls_flags};

fn tls_run(backend: &str, proto: &str) {
    let out = scratch(&format!("bench-tls-{backend}-{proto}"));
    let files = pki(&out.join("pki"));
    let (flags, prefix) = tls_flags(&files, proto);
    let mut server = Server::start(backend, &flags);
    let tls = server.listening(prefix);
    let before = server_deliveries(server.addr);
    let run = bench(
        &BenchCommand::new(tls)
            .proto(proto)
            .clients(30)
            .publishers(3)
            .rooms(3)
            .rates(&[200])
            .warmup(Duration::from_millis(300))
            .duration(Duration::from_secs(1))
            .server_pid(server.pid())
            .quiet()
            .out(&out.join("report"))
            .arg("--tls")
            .flag("--tls-ca", files.ca.display()),
    );
    let after = server_deliveries(server.addr);
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed: {:?}\n{stdout}\n{}\nserver log:\n{}",
        run.status,
        text(&run.stderr),
        server.log()
    );
    let json = std::fs::read_to_string(out.join("report/report.json")).expect("report.json");
    let report = Report::from_json(&json).expect("report parses");
    assert!(report.config.tls, "report.json records TLS");
    assert_eq!(report.config.proto.name(), proto);
    assert_eq!(report.environment.backend, backend);
    assert_eq!(report.connect.connected, 30);
    assert_eq!(report.lost, 0, "{stdout}");
    let warmup = report.warmup.as_ref().expect("a warm-up step");
    let mut received = 0;
    for step in report.steps.iter().chain([warmup]) {
        // 3 publishers, one per room of 10 members: 9 deliveries per message.
        assert_eq!(step.tally.expected, step.tally.sent * 9, "{stdout}");
        assert_eq!(step.tally.received, step.tally.expected, "{stdout}");
        assert_eq!(
            (
                step.tally.duplicates,
                step.tally.out_of_order,
                step.tally.disconnects,
                step.tally.unexpected
            ),
            (0, 0, 0, 0),
            "{stdout}"
        );
        // Socket latency over TLS: each delivery stamped by the read that completed its
        // record, never after it was read.
        let socket = step.socket_latency.as_ref().expect("socket latency");
        let read = &step.latency;
        assert_eq!(socket.count + step.unstamped, read.count, "{step:?}");
        assert!(step.unstamped * 100 <= read.count, "{step:?}");
        assert!(
            step.warnings.iter().all(|w| !w.contains("socket latency")),
            "{:?}",
            step.warnings
        );
        assert!(
            socket.p50 <= read.p50 && socket.max <= read.max,
            "socket {socket:?} read {read:?}"
        );
        received += step.tally.received;
    }
    assert_eq!(report.steps[0].tally.sent, 200);
    // The server's own count, over its plain listener.
    let counted = after - before;
    assert!(
        counted.abs_diff(received) as f64 <= 0.01 * received as f64,
        "server counted {counted} deliveries, harness {received}"
    );
    assert!(
        stdout.contains("over TLS"),
        "the summary says TLS:\n{stdout}"
    );
}

backend_tests!(
    line_protocol_over_tls_is_clean,
    websocket_over_tls_is_clean,
    a_certificate_from_another_ca_is_refused,
);

// The harness runs as a process of its own: these block a runtime thread while it runs,
// which the macro's two-thread runtime has to spare.
async fn line_protocol_over_tls_is_clean(backend: &str) {
    tls_run(backend, "ringcast");
}

async fn websocket_over_tls_is_clean(backend: &str) {
    tls_run(backend, "ws");
}

/// A harness trusting another CA refuses the server's certificate: no client connects,
/// and the error says why.
async fn a_certificate_from_another_ca_is_refused(backend: &str) {
    let out = scratch(&format!("bench-tls-refused-{backend}"));
    let files = pki(&out.join("pki"));
    let other = pki(&out.join("other"));
    let (flags, prefix) = tls_flags(&files, "ringcast");
    let mut server = Server::start(backend, &flags);
    let run = bench(
        &BenchCommand::new(server.listening(prefix))
            .clients(3)
            .publishers(1)
            .rooms(1)
            .rates(&[10])
            .warmup(Duration::ZERO)
            .duration(Duration::from_millis(200))
            .quiet()
            .arg("--tls")
            .flag("--tls-ca", other.ca.display()),
    );
    let stderr = text(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}\n{stderr}",
        text(&run.stdout)
    );
    assert!(
        stderr.contains("certificate") || stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}
