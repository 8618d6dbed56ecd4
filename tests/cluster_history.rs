//! Room history across the nodes of a cluster, over a real nats-server (JetStream on):
//! `/history` gives the same lines on every node, positions are the same everywhere, a
//! client that reconnects to another node resumes with every line once, in order, then
//! live lines with no gap, and a resume from an evicted position is told the gap first.
//! Each test runs on every backend; without nats-server they fail, naming the package,
//! unless `RINGCAST_SKIP_PEERS=1`.

mod common;

use common::{numbered, send_in_tens, Client, Server};
use ringcast_testkit::NatsServer;

backend_tests!(
    history_and_positions_are_the_same_on_every_node,
    a_client_resumes_on_another_node_with_every_line_once_in_order,
    a_resume_on_another_node_from_an_evicted_position_is_told_the_gap,
    with_history_off_the_cluster_relays_chat_as_plain_pub_sub,
    a_stalled_nats_loses_no_local_line_however_many,
    a_stalled_nats_loses_no_line_across_nodes_past_the_history,
    the_burst_after_a_stall_is_written_out_as_it_is_queued,
    history_and_its_epoch_outlive_a_nats_server_restart,
);

fn node(backend: &str, nats: &NatsServer, name: &str, history: &str) -> Server {
    node_with(backend, nats, name, history, &[])
}

/// A node with `extra` flags too.
fn node_with(
    backend: &str,
    nats: &NatsServer,
    name: &str,
    history: &str,
    extra: &[&str],
) -> Server {
    let url = nats.url();
    let mut flags = vec![
        "--cluster",
        &url,
        "--node",
        name,
        "--cluster-lease",
        "2s",
        "--history",
        history,
        "--max-msg-rate",
        "0",
    ];
    flags.extend_from_slice(extra);
    Server::start(backend, &flags)
}

/// Three nodes named `{prefix}0` to `{prefix}2`, each with `--history history`.
fn three_nodes(backend: &str, nats: &NatsServer, prefix: &str, history: &str) -> Vec<Server> {
    (0..3)
        .map(|i| node(backend, nats, &format!("{prefix}{i}"), history))
        .collect()
}

/// Turns positions on; returns the epoch the reply names.
async fn positions_on(client: &mut Client) -> String {
    let reply = client.ask("/positions on").await;
    reply
        .rsplit_once(", epoch ")
        .and_then(|(_, epoch)| epoch.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{reply:?}"))
        .to_owned()
}

/// A writer on the first node and a reader on the second, both in room `chat`, the
/// reader with positions on; returns them and the stream's epoch.
async fn writer_and_reader(nodes: &[Server]) -> (Client, Client, String) {
    let mut writer = Client::connect(nodes[0].addr).await;
    writer.join("chat").await;
    let mut reader = Client::connect(nodes[1].addr).await;
    reader.join("chat").await;
    let epoch = positions_on(&mut reader).await;
    (writer, reader, epoch)
}

/// Reads `n` numbered chat lines: their positions and texts.
async fn numbered_lines(client: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut lines = Vec::new();
    for _ in 0..n {
        let line = client.line().await;
        let (pos, rest) = numbered(&line);
        lines.push((pos, rest.to_owned()));
    }
    lines
}

async fn history_and_positions_are_the_same_on_every_node(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let nodes = three_nodes(backend, &nats, "h", "8");
    let mut writer = Client::connect(nodes[0].addr).await;
    let mut readers = Vec::new();
    for server in &nodes[1..] {
        let mut reader = Client::connect(server.addr).await;
        reader.join("r").await;
        positions_on(&mut reader).await;
        readers.push(reader);
    }
    writer.join("r").await;
    assert_eq!(
        readers[0].history("/history").await,
        ["* history of r (0 lines)", "* end of history"]
    );
    // Three reads of 2, 3 and 7 lines: 12 lines in three stream messages.
    let name = writer.name.clone();
    let mut sent = Vec::new();
    for (from, to) in [(0, 2), (2, 5), (5, 12)] {
        let lines: String = (from..to).map(|i| format!("l{i}\n")).collect();
        writer.send_raw(lines.as_bytes()).await;
        sent.extend((from..to).map(|i| format!("{name}: l{i}")));
        // Received on every node: stored in the stream.
        let mut seen = Vec::new();
        for reader in &mut readers {
            seen.push(numbered_lines(reader, to - from).await);
        }
        assert_eq!(seen[0], seen[1], "the same positions on every node");
        let positions: Vec<u64> = seen[0].iter().map(|(p, _)| *p).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
    // Every node shows the same history: the last 8 of the 12 lines (the stream keeps 8
    // messages a room, /history at most --history lines).
    let expected: Vec<String> = ["* history of r (8 lines)".to_owned()]
        .into_iter()
        .chain(sent[4..].iter().cloned())
        .chain(["* end of history".to_owned()])
        .collect();
    assert_eq!(writer.history("/history 50").await, expected);
    for reader in &mut readers {
        let shown = reader.history("/history 50").await;
        assert_eq!(shown.len(), expected.len(), "{shown:?}");
        // With positions on, each line comes as `#POS NAME: TEXT`.
        for (got, want) in shown[1..9].iter().zip(&expected[1..9]) {
            assert_eq!(numbered(got).1, want);
        }
    }
    let last_two = writer.history("/history 2").await;
    assert_eq!(last_two[1..3], sent[10..]);
}

async fn a_client_resumes_on_another_node_with_every_line_once_in_order(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let nodes = three_nodes(backend, &nats, "r", "1000");
    let (mut writer, mut reader, epoch) = writer_and_reader(&nodes).await;
    let name = writer.name.clone();
    let first: String = (0..10).map(|i| format!("m{i}\n")).collect();
    writer.send_raw(first.as_bytes()).await;
    let seen = numbered_lines(&mut reader, 10).await;
    for (i, (_, text)) in seen.iter().enumerate() {
        assert_eq!(*text, format!("{name}: m{i}"));
    }
    let last = seen[9].0;
    drop(reader);

    // Lines while the reader is away, and more while it comes back on another node.
    writer.send_raw(b"m10\nm11\nm12\n").await;
    writer.sync().await;
    let sending = tokio::spawn(async move {
        send_in_tens(&mut writer, 13, 29).await;
        writer.sync().await;
        writer
    });
    let mut reader = Client::connect(nodes[2].addr).await;
    reader
        .send_raw(format!("/positions on\n/resume chat {last} {epoch}\n").as_bytes())
        .await;
    assert_eq!(
        reader.line().await,
        format!("* positions on (lobby at 0, epoch {epoch})"),
        "positions name the same epoch on every node"
    );
    let header = reader.line().await;
    assert!(
        header.starts_with(&format!("* resuming chat after {last} (")),
        "no gap notice first: {header}"
    );
    let mut previous = last;
    for i in 10..303 {
        let line = reader.line().await;
        let (pos, rest) = numbered(&line);
        assert_eq!(rest, format!("{name}: m{i}"), "every line once, in order");
        assert!(pos > previous, "{line:?} after {previous}");
        previous = pos;
    }
    let mut writer = sending.await.expect("the writer");
    writer.send("after").await;
    let line = reader.line().await;
    let (pos, rest) = numbered(&line);
    assert_eq!(rest, format!("{name}: after"), "nothing else came between");
    assert!(pos > previous);
}

async fn a_resume_on_another_node_from_an_evicted_position_is_told_the_gap(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let nodes: Vec<Server> = (0..2)
        .map(|i| node(backend, &nats, &format!("g{i}"), "3"))
        .collect();
    let (mut writer, mut reader, epoch) = writer_and_reader(&nodes).await;
    writer.send("a").await;
    let (seen, _) = numbered_lines(&mut reader, 1).await[0].clone();
    drop(reader);
    // Ten more messages (one line each, each stored before the next is said): the
    // stream keeps the last three.
    let mut watcher = Client::connect(nodes[1].addr).await;
    watcher.join("chat").await;
    for i in 0..10 {
        writer.send(&format!("d{i}")).await;
        assert_eq!(watcher.line().await, format!("{}: d{i}", writer.name));
    }
    let mut reader = Client::connect(nodes[0].addr).await;
    reader.send("/positions on").await;
    reader.line().await;
    reader.send(&format!("/resume chat {seen} {epoch}")).await;
    let gap = reader.line().await;
    assert!(
        gap.starts_with(&format!("* error: history gap (lines after {seen} ")),
        "{gap}"
    );
    assert_eq!(
        reader.line().await,
        format!("* resuming chat after {seen} (3 lines)")
    );
    for i in 7..10 {
        let line = reader.line().await;
        assert_eq!(numbered(&line).1, format!("{}: d{i}", writer.name));
    }
    // A position from another stream (epoch) is void: everything held, and said so.
    reader.send(&format!("/resume chat {seen} 1")).await;
    assert_eq!(
        reader.line().await,
        "* error: history gap (the cluster's history was reset: earlier lines are lost)"
    );
    assert_eq!(reader.line().await, "* resuming chat after 0 (3 lines)");
}

/// `--history 0`: no stream, chat crosses nodes by plain pub/sub (the sender's node
/// delivers at once), nothing is numbered, and every history command says it is off.
async fn with_history_off_the_cluster_relays_chat_as_plain_pub_sub(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let nodes: Vec<Server> = (0..2)
        .map(|i| node(backend, &nats, &format!("o{i}"), "0"))
        .collect();
    let mut writer = Client::connect(nodes[0].addr).await;
    let mut near = Client::connect(nodes[0].addr).await;
    let mut far = Client::connect(nodes[1].addr).await;
    for command in ["/history", "/resume lobby 0", "/positions on"] {
        assert_eq!(
            far.ask(command).await,
            "* error: history is off",
            "{command}"
        );
    }
    writer.send("plain").await;
    let expected = format!("{}: plain", writer.name);
    assert_eq!(near.line().await, expected);
    assert_eq!(far.line().await, expected);
    let stats = near.ask("/stats").await;
    assert!(stats.contains("cluster_published=1 "), "{stats}");
}

/// With history in the cluster a node's own chat reaches its own members through the
/// stream; with NATS stopped (SIGSTOP: the link looks alive until pings fail) and far
/// more batches said than the workers' queue towards the bridge (1024), the bridge's
/// backlog and the NATS client's buffers hold, every local member still gets every line
/// once, in order, and none again when NATS comes back and the stream returns them.
async fn a_stalled_nats_loses_no_local_line_however_many(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let url = nats.url();
    let flags = [
        "--cluster",
        &url,
        "--node",
        "s0",
        "--cluster-lease",
        "2s",
        "--max-msg-rate",
        "0",
        "--max-per-ip",
        "0",
        "--max-outbound",
        "512m",
    ];
    let server = Server::start(backend, &flags);
    const SENDERS: usize = 4;
    const LINES: usize = 6000;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(Client::connect(server.addr).await);
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(Client::connect(server.addr).await);
    }
    // Everyone is in the lobby, which the node always receives; the stream is live.
    senders[0].send("ready").await;
    for reader in &mut readers {
        assert!(reader.line().await.ends_with(": ready"));
    }
    for sender in &mut senders[1..] {
        assert!(sender.line().await.ends_with(": ready"));
    }
    nats.signal(libc::SIGSTOP);
    let names: Vec<String> = senders.iter().map(|s| s.name.clone()).collect();
    let pad = "x".repeat(1000);
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            // An empty line after each: anything but chat ends a batch, so each line is
            // a batch of its own however the node's reads fall.
            for seq in 0..LINES {
                sender.send(&format!("{i} {seq} {pad}\n")).await;
                if seq % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            sender
        }));
    }
    let mut reading = Vec::new();
    for mut reader in readers.drain(..) {
        let names = names.clone();
        reading.push(tokio::spawn(async move {
            let mut next = [0usize; SENDERS];
            while next.iter().any(|&n| n < LINES) {
                let line = reader.line().await;
                let (name, text) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
                let mut fields = text.split(' ');
                let i: usize = fields.next().and_then(|f| f.parse().ok()).expect("sender");
                let seq: usize = fields.next().and_then(|f| f.parse().ok()).expect("seq");
                assert_eq!(name, names[i], "{line:?}");
                assert_eq!(seq, next[i], "sender {i}'s lines out of order or repeated");
                next[i] += 1;
            }
            reader
        }));
    }
    let mut senders = Vec::new();
    for task in tasks {
        senders.push(task.await.expect("sender"));
    }
    for task in reading {
        readers.push(task.await.expect("reader"));
    }
    // Back: the stream returns what NATS took meanwhile; none of it is delivered again.
    nats.signal(libc::SIGCONT);
    let mut stats = readers[0].ask("/stats").await;
    while !stats.starts_with("* stats") {
        stats = readers[0].line().await;
    }
    // NATS was stopped: some lines must have reached the readers without the stream.
    assert!(!stats.contains("cluster_dropped=0"), "{stats}");
    senders[0].send("end").await;
    for reader in &mut readers {
        let line = reader.line().await;
        assert!(
            line.ends_with(": end"),
            "after the stall, before the end: {line:?}"
        );
    }
}

/// After a NATS stall nats-server stores at once what two nodes sent meanwhile, many
/// more batches of the room than its history keeps (10), from two connections whose
/// republished copies it may send out of order: the third node's reader still gets
/// every line, once, each writer's in order, and the node counts nothing dropped.
async fn a_stalled_nats_loses_no_line_across_nodes_past_the_history(backend: &str) {
    stalled_burst(backend, "t", &[], "").await;
}

/// The same burst, 400 lines of about 60 bytes, to a reader whose node lets a client
/// have only 8 KiB queued: the reader takes what comes as it comes, so it is not cut as
/// a slow consumer although the burst is three times the limit. (A worker used to queue
/// all it found in its inbox before its writers ran: the cluster soak's readers were
/// cut so after its 9 s stop.)
async fn the_burst_after_a_stall_is_written_out_as_it_is_queued(backend: &str) {
    let reader_node = ["--max-outbound", "8k", "--max-line", "512"];
    stalled_burst(backend, "q", &reader_node, &"x".repeat(40)).await;
}

/// Two writers on two nodes, each sending 200 lines (`I SEQ PAD`) while NATS is
/// stopped; a reader on the third node (with `reader_node`'s flags) must get all of
/// them once, each writer's in order, and its node must count nothing dropped.
async fn stalled_burst(backend: &str, prefix: &str, reader_node: &[&str], pad: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let mut nodes: Vec<Server> = (0..2)
        .map(|i| node(backend, &nats, &format!("{prefix}{i}"), "10"))
        .collect();
    nodes.push(node_with(
        backend,
        &nats,
        &format!("{prefix}2"),
        "10",
        reader_node,
    ));
    const LINES: usize = 200;
    let mut writers = Vec::new();
    for server in &nodes[..2] {
        let mut writer = Client::connect(server.addr).await;
        writer.join("stall").await;
        writers.push(writer);
    }
    let mut reader = Client::connect(nodes[2].addr).await;
    reader.join("stall").await;
    // The room is live from each writer's node to the reader's.
    for writer in &mut writers {
        writer.send("ready").await;
        let line = reader.line().await;
        assert_eq!(line, format!("{}: ready", writer.name));
    }
    let names: Vec<String> = writers.iter().map(|w| w.name.clone()).collect();
    nats.signal(libc::SIGSTOP);
    let mut tasks = Vec::new();
    for (i, mut writer) in writers.into_iter().enumerate() {
        let pad = pad.to_owned();
        tasks.push(tokio::spawn(async move {
            // An empty line after each: each line is a batch (a stream message) of its own.
            for seq in 0..LINES {
                writer.send(&format!("{i} {seq}{pad}\n")).await;
            }
            writer
        }));
    }
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(task.await.expect("writer"));
    }
    // A second more stopped, while the nodes queue the lines for NATS (less than their
    // ping timeout, so their links stay up).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    nats.signal(libc::SIGCONT);
    let mut next = [0usize; 2];
    while next.iter().any(|&n| n < LINES) {
        let line = reader.line().await;
        let (name, text) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
        let (i, seq) = text.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let i: usize = i.parse().unwrap_or_else(|_| panic!("{line:?}"));
        let seq = seq.strip_suffix(pad).unwrap_or_else(|| panic!("{line:?}"));
        let seq: usize = seq.parse().unwrap_or_else(|_| panic!("{line:?}"));
        assert_eq!(name, names[i], "{line:?}");
        assert_eq!(
            seq, next[i],
            "writer {i}'s lines lost, out of order or repeated"
        );
        next[i] += 1;
    }
    let stats = reader.ask("/stats").await;
    assert!(stats.starts_with("* stats"), "after every line: {stats:?}");
    assert!(stats.contains(" cluster_dropped=0"), "{stats}");
    assert!(stats.contains(" slow_consumers=0"), "{stats}");
}

/// The stream is on nats-server's disk (`--history-storage file`, the default): a
/// nats-server killed and started again on the same store still holds the room's lines
/// with their positions (the reader has them on), under the same epoch, and numbers the
/// next line after them.
async fn history_and_its_epoch_outlive_a_nats_server_restart(backend: &str) {
    let Some(mut nats) = NatsServer::start_or_skip() else {
        return;
    };
    let nodes = three_nodes(backend, &nats, "k", "8");
    let (mut writer, mut reader, epoch) = writer_and_reader(&nodes).await;
    writer.send("before the restart").await;
    let before = reader.line().await;
    let (pos, text) = numbered(&before);
    assert_eq!(text, format!("{}: before the restart", writer.name));
    nats.restart().expect("restarting nats-server");
    // Until the node has its link back, /history says it cannot read the stream.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let history = loop {
        reader.send("/history").await;
        let first = reader.line().await;
        if first.starts_with("* history of ") {
            let mut lines = vec![first];
            while lines.last().map(String::as_str) != Some("* end of history") {
                lines.push(reader.line().await);
            }
            break lines;
        }
        assert_eq!(first, "* error: history unavailable, try again");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never read the stream again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        history,
        [
            "* history of chat (1 line)".to_owned(),
            before.clone(),
            "* end of history".to_owned(),
        ]
    );
    assert_eq!(
        positions_on(&mut reader).await,
        epoch,
        "the same stream, the same epoch"
    );
    // The writer's node is back too once a line of its reaches the reader numbered.
    let after = loop {
        writer.send("after the restart").await;
        let line = reader.line().await;
        if line.ends_with(": after the restart") {
            break line;
        }
        assert!(tokio::time::Instant::now() < deadline, "{line:?}");
    };
    let (next, _) = numbered(&after);
    assert!(
        next > pos,
        "numbered after the line before the restart: {next} vs {pos}"
    );
}
