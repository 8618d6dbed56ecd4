//! Workload D's parts against real servers: Zipf room sizes, a size distribution, room
//! changes while others talk, and slow readers the server must cut. The accounting must
//! stay exact (no loss, nothing unexpected) with churners' deliveries following their
//! membership, deliveries in doubt counted apart, and cut-offs reported apart from loss;
//! for ringcast (line protocol and WebSocket, both backends), Redis and NATS.

mod bench_common;
mod common;

use bench_common::{bench, scratch, text, PeerServer};
use common::Server;
use ringcast_bench::report::Report;
use ringcast_testkit::BenchCommand;
use std::time::Duration;

/// How the servers are told to cut a client that stops reading within a few seconds, yet
/// leave alone one that reads (a burst can queue tens of KiB for a moment).
const RINGCAST_LIMITS: [&str; 4] = ["--max-outbound", "128k", "--write-timeout", "2s"];

fn mixed_run(proto: &str, addr: &str, pid: u32, name: &str) -> Report {
    let out = scratch(&format!("bench-mixed-{name}"));
    // 100 clients in 5 Zipf rooms (the largest ~44, holding the 2 slow readers), 30
    // churners making 20 moves a second, messages of 100-1000 bytes: enough traffic
    // into the largest room to fill the slow readers' queues within the run.
    let run = bench(
        &BenchCommand::new(addr)
            .proto(proto)
            .clients(100)
            .publishers(10)
            .rooms(5)
            .flag("--room-sizes", "zipf")
            .flag("--size", 200)
            .flag("--size-dist", "100-1000")
            .flag("--churners", 30)
            .flag("--churn", 20)
            .flag("--slow-readers", 2)
            .rate(400)
            .warmup(Duration::from_secs(1))
            .duration(Duration::from_secs(8))
            .server_pid(pid)
            .quiet()
            .out(&out),
    );
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "{proto}: {:?}\n{stdout}\n{}",
        run.status,
        text(&run.stderr)
    );
    let report = Report::load(&out).expect("report");
    assert_eq!(report.lost, 0, "{stdout}");
    assert_eq!(report.config.churners, 30);
    assert!(stdout.contains("Zipf room sizes"), "{stdout}");
    let mut moves = 0;
    for step in report.steps.iter().chain(report.warmup.as_ref()) {
        let t = &step.tally;
        assert_eq!(t.received, t.expected, "{proto} at {}/s: {t:?}", step.rate);
        assert_eq!(
            (t.duplicates, t.unexpected, t.disconnects),
            (0, 0, 0),
            "{proto}: {t:?}\n{stdout}"
        );
        moves += t.churn_ops;
        // Deliveries in doubt need a move to be in doubt about, and stay a small part of
        // the step (how many a move puts in doubt grows with how long it takes, which a
        // loaded machine stretches): doubt never hides more than a tenth of the step.
        let doubt = t.in_doubt + t.in_doubt_received;
        assert!(doubt == 0 || t.churn_ops > 0, "{proto}: {t:?}");
        assert!(doubt <= t.expected / 10, "{proto}: {t:?}");
    }
    // 20 moves a second for 9 s, less those still unconfirmed at the end.
    assert!(moves >= 120, "{proto}: {moves} moves\n{stdout}");
    let last = report.steps.last().expect("a step");
    assert_eq!(
        last.tally.slow_reader_cuts, 2,
        "{proto}: both slow readers cut\n{stdout}"
    );
    assert!(stdout.contains("slow readers: 2 of 2 cut off"), "{stdout}");
    report
}

fn ringcast_mixed(backend: &str, proto: &str) {
    let server = Server::start(backend, &RINGCAST_LIMITS);
    let addr = match proto {
        "ws" => server.http_addr(),
        _ => server.addr,
    };
    let report = mixed_run(
        proto,
        &addr.to_string(),
        server.pid() as u32,
        &format!("{backend}-{proto}"),
    );
    for step in report.steps.iter().chain(report.warmup.as_ref()) {
        // The server's own count agrees, allowing for what it queued for slow readers.
        assert!(
            step.count_mismatch.expect("count check") <= 0.01,
            "{:?}",
            step.warnings
        );
    }
    // The server counted the cuts itself.
    let server_cuts: u64 = report
        .steps
        .iter()
        .chain(report.warmup.as_ref())
        .filter_map(|s| s.server_cuts)
        .sum();
    assert_eq!(server_cuts, 2);
}

#[test]
fn uring_mixed_workload_is_exact() {
    ringcast_mixed("uring", "ringcast");
}

#[test]
fn epoll_mixed_workload_is_exact() {
    ringcast_mixed("epoll", "ringcast");
}

#[test]
fn uring_direct_mixed_workload_is_exact() {
    ringcast_mixed("uring-direct", "ringcast");
}

#[test]
fn uring_mixed_workload_is_exact_over_websocket() {
    ringcast_mixed("uring", "ws");
}

#[test]
fn redis_mixed_workload_is_exact() {
    // Redis cuts a pub/sub client whose output buffer passes 128 KiB. (It counts its
    // reply list in ~16 KB chunks, so a reader with one message spilled shows 20 KB: a
    // limit near that would cut readers too.)
    let Some(server) = PeerServer::start_with(
        "redis",
        &["--client-output-buffer-limit", "pubsub 128kb 0 0"],
    ) else {
        return;
    };
    mixed_run("redis", &server.addr.to_string(), server.pid(), "redis");
}

#[test]
fn nats_mixed_workload_is_exact() {
    // NATS cuts a client with more than 128 KiB pending, or a write stuck for 2 s (and
    // refuses a max_pending below max_payload).
    let dir = scratch("bench-mixed-nats-conf");
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        "max_payload: 65536\nmax_pending: 131072\nwrite_deadline: \"2s\"\n",
    )
    .expect("nats.conf");
    let Some(server) = PeerServer::start_with("nats", &["-c", conf.to_str().unwrap()]) else {
        return;
    };
    mixed_run("nats", &server.addr.to_string(), server.pid(), "nats");
}
