//! `ringcast bench --addr A,B,C` against three real ringcast nodes sharing their rooms
//! over a real nats-server (JetStream on, loopback, started and stopped by PID), for both
//! backends and both transports: no loss, every room spanning the nodes, and the nodes'
//! own delivery counts, added up, matching the harness's. Without nats-server installed
//! these tests fail, naming the package, unless `RINGCAST_SKIP_PEERS=1`.

mod bench_common;
mod common;

use bench_common::{bench, ringcast, scratch, server_deliveries, text};
use common::Server;
use ringcast_bench::plan::{Plan, Step};
use ringcast_bench::report::Report;
use ringcast_testkit::{BenchCommand, NatsServer};
use std::time::Duration;

/// nats-server, or `None` when it is missing and skipping was asked for.
fn nats() -> Option<NatsServer> {
    NatsServer::start_or_skip()
}

/// Three nodes `n0`, `n1`, `n2` of one cluster.
fn cluster(backend: &str, nats: &NatsServer) -> Vec<Server> {
    (0..3)
        .map(|i| {
            Server::start(
                backend,
                &["--cluster", &nats.url(), "--node", &format!("n{i}")],
            )
        })
        .collect()
}

/// Joined with commas, as `--addr` and `--server-pid` take them.
fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// 60 clients in 3 rooms of 20 over 3 nodes (each room's members dealt round-robin over
/// them, so every line crosses to both other nodes), over the line protocol (`proto`
/// "ringcast") or WebSocket ("ws", the nodes' HTTP addresses).
fn cluster_run(backend: &str, proto: &str) {
    let Some(nats) = nats() else { return };
    let nodes = cluster(backend, &nats);
    let addrs = list(nodes.iter().map(|n| match proto {
        "ws" => n.http_addr(),
        _ => n.addr,
    }));
    let pids = list(nodes.iter().map(Server::pid));
    let out = scratch(&format!("bench-cluster-{backend}-{proto}"));
    // The nodes' own counts, read apart from the harness, before and after the run.
    let count = || -> u64 { nodes.iter().map(|n| server_deliveries(n.addr)).sum() };
    let before = count();
    let run = bench(
        &BenchCommand::new(&addrs)
            .proto(proto)
            .server_pid(&pids)
            .clients(60)
            .publishers(6)
            .rooms(3)
            .rates(&[150, 300])
            .warmup(Duration::from_millis(300))
            .duration(Duration::from_secs(1))
            .quiet()
            .out(&out),
    );
    let after = count();
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed: {:?}\n{stdout}\n{}",
        run.status,
        text(&run.stderr)
    );
    let report = Report::load(&out).expect("report");
    assert_eq!(report.environment.backend, backend);
    assert_eq!(report.config.addr, addrs);
    assert_eq!(report.connect.connected, 60);
    assert_eq!(report.lost, 0, "{stdout}");

    // The report names the nodes, in the order given, with the clients dealt to each.
    assert_eq!(report.nodes.len(), 3);
    for (i, node) in report.nodes.iter().enumerate() {
        assert_eq!(node.name.as_deref(), Some(format!("n{i}").as_str()));
        assert_eq!(node.pid, Some(nodes[i].pid() as u32));
        assert_eq!(node.addr, addrs.split(',').nth(i).unwrap());
        assert_eq!((node.clients, node.publishers), (20, 2), "{node:?}");
        assert_eq!(node.cluster_nodes, Some(3));
        assert!(
            stdout.contains(&format!("n{i} at {}", node.addr)),
            "{stdout}"
        );
    }
    assert_eq!(report.config.server_pid, None, "the pids are the nodes'");

    let plan = Plan::uniform(60, 6, 3);
    let warmup = report.warmup.as_ref().expect("a warm-up step");
    // Each node's CPU over the whole run: /proc counts it in 10 ms ticks, so a node may
    // show none in the 300 ms warm-up.
    let mut node_cpu = [0.0; 3];
    for step in report.steps.iter().chain([warmup]) {
        let t = &step.tally;
        // Rooms are cluster-wide: 2 publishers per room of 20, 19 deliveries a message.
        assert_eq!(t.expected, t.sent * 19, "rate {}", step.rate);
        assert_eq!(t.received, t.expected, "rate {}: {t:?}", step.rate);
        assert_eq!(
            (t.duplicates, t.out_of_order, t.unexpected, t.disconnects),
            (0, 0, 0, 0),
            "rate {}: {t:?}",
            step.rate
        );
        // Each node counts its own members' deliveries: together, exactly the harness's.
        assert_eq!(
            step.server_deliveries,
            Some(t.received),
            "rate {}",
            step.rate
        );
        assert_eq!(step.count_mismatch, Some(0.0));
        assert_eq!(step.nodes.len(), 3);
        let planned = Step {
            rate: step.rate,
            duration: Duration::from_secs_f64(step.duration_s),
        };
        let mut total = 0;
        for (i, n) in step.nodes.iter().enumerate() {
            let deliveries = n.deliveries.expect("a node's deliveries");
            // Exactly what its own members were owed.
            let owed: u64 = (0..60)
                .filter(|&c| plan.node_of(c, 3) == i)
                .map(|c| plan.expected_for(&planned, c))
                .sum();
            assert_eq!(deliveries, owed, "n{i} at {}/s", step.rate);
            total += deliveries;
            // Every node published its publishers' lines and received the others'.
            assert!(n.cluster_published.expect("published") > 0, "n{i}: {n:?}");
            assert!(n.cluster_received.expect("received") > 0, "n{i}: {n:?}");
            assert_eq!(n.cluster_dropped, Some(0), "n{i}");
            let cost = n.server.as_ref().expect("a node's cost with its pid");
            assert!(cost.peak_rss_bytes > 0, "n{i}: {cost:?}");
            node_cpu[i] += cost.cpu_s;
        }
        assert_eq!(total, t.received);
        // The total cost is the nodes' added up.
        let cost = step.server.as_ref().expect("the nodes' cost");
        let cpu: f64 = step
            .nodes
            .iter()
            .map(|n| n.server.as_ref().unwrap().cpu_s)
            .sum();
        assert!((cost.cpu_s - cpu).abs() < 1e-3, "{} vs {cpu}", cost.cpu_s);
        let rss: u64 = step
            .nodes
            .iter()
            .map(|n| n.server.as_ref().unwrap().peak_rss_bytes)
            .sum();
        assert!(cost.peak_rss_bytes <= rss && cost.peak_rss_bytes * 3 >= rss);
    }
    assert!(node_cpu.iter().all(|&cpu| cpu > 0.0), "{node_cpu:?}");
    // Independent of the harness: the nodes' counts over the whole run.
    let received: u64 = report
        .steps
        .iter()
        .chain([warmup])
        .map(|s| s.tally.received)
        .sum();
    assert_eq!(after - before, received);
    assert!(stdout.contains("the 3 nodes together"), "{stdout}");

    // compare names the nodes and their command lines.
    let compared = ringcast(&["compare", out.to_str().unwrap()]);
    let table = text(&compared.stdout);
    assert!(compared.status.success(), "{}", text(&compared.stderr));
    assert!(
        table.contains(&format!(
            "3 nodes of one cluster (n0 at {}",
            report.nodes[0].addr
        )),
        "{table}"
    );
    assert!(table.contains("Node n2 of "), "{table}");
}

fn cluster_run_is_clean(backend: &str) {
    cluster_run(backend, "ringcast");
}

fn cluster_run_over_websocket_is_clean(backend: &str) {
    cluster_run(backend, "ws");
}

mod uring {
    #[test]
    fn cluster_run_is_clean() {
        super::cluster_run_is_clean("uring");
    }
    #[test]
    fn cluster_run_over_websocket_is_clean() {
        super::cluster_run_over_websocket_is_clean("uring");
    }
}

mod epoll {
    #[test]
    fn cluster_run_is_clean() {
        super::cluster_run_is_clean("epoll");
    }
    #[test]
    fn cluster_run_over_websocket_is_clean() {
        super::cluster_run_over_websocket_is_clean("epoll");
    }
}

mod uring_direct {
    #[test]
    fn cluster_run_is_clean() {
        super::cluster_run_is_clean("uring-direct");
    }
    #[test]
    fn cluster_run_over_websocket_is_clean() {
        super::cluster_run_over_websocket_is_clean("uring-direct");
    }
}

/// Servers that are not one cluster would confirm every join and lose every delivery
/// meant for another server's members: refused before any client connects.
#[test]
fn separate_servers_are_refused_as_a_cluster() {
    let a = Server::start("epoll", &[]);
    let b = Server::start("epoll", &[]);
    let before = server_deliveries(a.addr);
    let run = bench(&BenchCommand::new(list([a.addr, b.addr])).quiet());
    let err = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the server at {} is not a cluster node", a.addr)),
        "{err}"
    );
    assert!(run.stdout.is_empty(), "{}", text(&run.stdout));
    assert_eq!(server_deliveries(a.addr), before);
}

/// Per-node flags must match the nodes; peers are loaded at one address.
#[test]
fn per_node_flags_must_match_the_nodes() {
    for (addr, args, says) in [
        (
            "127.0.0.1:1,127.0.0.1:2",
            vec!["--server-pid", "1"],
            "--server-pid lists 1 but --addr 2",
        ),
        (
            "127.0.0.1:1,127.0.0.1:2",
            vec!["--metrics-url", "http://127.0.0.1:3/metrics"],
            "--metrics-url lists 1 but --addr 2",
        ),
        ("127.0.0.1:1,127.0.0.1:1", vec![], "lists 127.0.0.1:1 twice"),
        (
            "127.0.0.1:1,127.0.0.1:2",
            vec!["--proto", "nats"],
            "nats is loaded at one address",
        ),
    ] {
        let all = BenchCommand::new(addr).quiet().args(args);
        let run = bench(&all);
        let err = text(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{all}: {err}");
        assert!(err.contains(says), "{all}: {err}");
    }
}
