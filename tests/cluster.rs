//! Several ringcast nodes sharing rooms and names over a real nats-server (JetStream on),
//! all on loopback, every process started and stopped by PID. Each test runs for both
//! backends. Without nats-server installed these tests fail, naming the package, unless
//! `RINGCAST_SKIP_PEERS=1`.

mod common;

use common::{Client, Server, TIMEOUT};
use ringcast_testkit::{poll, NatsServer};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

backend_tests!(
    every_line_reaches_every_member_on_every_node_once_in_order,
    one_name_claimed_on_two_nodes_at_once_goes_to_one,
    a_killed_node_frees_its_names_and_members_within_the_lease,
    a_nats_outage_keeps_local_chat_and_loses_only_its_window,
    nothing_listening_at_the_cluster_url_stops_the_server_at_start,
    replies_come_in_the_order_of_the_requests,
    a_cluster_answer_reaches_a_client_that_half_closed_or_quit,
    names_that_are_not_nats_tokens_cross_nodes_or_are_refused,
    who_is_answered_promptly_around_a_nats_stop,
    a_node_keeps_nothing_per_connection,
);

/// Lease of the tests' clusters: short, so that expiry is tested in seconds.
const LEASE: &str = "2s";

/// nats-server, or `None` when it is missing and skipping was asked for.
fn nats() -> Option<NatsServer> {
    NatsServer::start_or_skip()
}

fn node(backend: &str, nats: &NatsServer, name: &str) -> Server {
    Server::start(
        backend,
        &[
            "--cluster",
            &nats.url(),
            "--node",
            name,
            "--cluster-lease",
            LEASE,
        ],
    )
}

/// Asks `line` until the reply satisfies `done` (the cluster settles in its own time);
/// returns that reply.
async fn ask_until(client: &mut Client, line: &str, done: impl Fn(&str) -> bool) -> String {
    poll::Wait::new(format!("the reply to {line} to settle"), TIMEOUT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            let reply = client.ask(line).await;
            if done(&reply) {
                Ok(reply)
            } else {
                Err(reply)
            }
        })
        .await
}

async fn every_line_reaches_every_member_on_every_node_once_in_order(backend: &str) {
    let Some(nats) = nats() else { return };
    let nodes: Vec<Server> = (0..3)
        .map(|i| node(backend, &nats, &format!("n{i}")))
        .collect();
    // A line said in the lobby right after someone connects elsewhere reaches them.
    let mut first = Client::connect(nodes[0].addr).await;
    let mut fresh = Client::connect(nodes[2].addr).await;
    first.send("welcome").await;
    assert_eq!(fresh.line().await, format!("{}: welcome", first.name));
    drop((first, fresh));

    // Two members per node in room `r`; a line sent right after the joins reaches all.
    // (The lobby's `welcome` may still be on its way to a node when a new client arrives
    // there: a batch reaches the members its node has when it comes.)
    let mut members: Vec<Client> = Vec::new();
    for server in &nodes {
        for _ in 0..2 {
            let mut client = Client::connect(server.addr).await;
            client.send("/join r").await;
            let reply = loop {
                let line = client.line().await;
                if !line.ends_with(": welcome") {
                    break line;
                }
            };
            assert!(reply.starts_with("* joined r ("), "{reply}");
            members.push(client);
        }
    }
    members[0].send("after the joins").await;
    for member in &mut members[1..] {
        assert!(member.line().await.ends_with(": after the joins"));
    }

    // One sender per node, 500 lines each, all at once.
    const LINES: u32 = 500;
    let senders = [0, 2, 4];
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let mut tasks = Vec::new();
    for (i, member) in members.into_iter().enumerate() {
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut member = member;
            if senders.contains(&i) {
                let mut burst = String::new();
                for seq in 0..LINES {
                    burst.push_str(&format!("seq {seq}\n"));
                }
                member.send_raw(burst.as_bytes()).await;
            }
            let from: Vec<&String> = senders
                .iter()
                .filter(|&&s| s != i)
                .map(|&s| &names[s])
                .collect();
            let mut next: HashMap<String, u32> = from.iter().map(|n| ((*n).clone(), 0)).collect();
            for _ in 0..from.len() as u32 * LINES {
                let line = member.line().await;
                let (name, seq) = line.split_once(": ").expect("a chat line");
                let expected = next.get_mut(name).unwrap_or_else(|| panic!("from {name}?"));
                assert_eq!(seq, format!("seq {expected}"), "{} from {name}", names[i]);
                *expected += 1;
            }
            // Nothing more: no line came twice.
            let reply = member.ask("/help").await;
            assert!(reply.starts_with("* commands"), "{reply}");
        }));
    }
    for task in tasks {
        task.await.expect("member");
    }
}

async fn one_name_claimed_on_two_nodes_at_once_goes_to_one(backend: &str) {
    let Some(nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let b = node(backend, &nats, "b");
    let mut on_a = Client::connect(a.addr).await;
    let mut on_b = Client::connect(b.addr).await;
    for name in ["bob", "eve", "mallory"] {
        let line = format!("/nick {name}");
        let (from_a, from_b) = tokio::join!(on_a.ask(&line), on_b.ask(&line));
        let won = format!("* you are {name}");
        let lost = format!("* error: name {name} is taken");
        assert!(
            (from_a == won && from_b == lost) || (from_a == lost && from_b == won),
            "{name}: {from_a:?} / {from_b:?}"
        );
        // Whoever lost still cannot have it a moment later.
        let loser = if from_a == lost { &mut on_a } else { &mut on_b };
        assert_eq!(loser.ask(&line).await, lost);
    }
    // /who lists the members of every node.
    let who = on_a.ask("/who").await;
    assert!(who.starts_with("* members of lobby (2): "), "{who}");
}

async fn a_killed_node_frees_its_names_and_members_within_the_lease(backend: &str) {
    let Some(nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let mut b = node(backend, &nats, "b");
    let mut on_a = Client::connect(a.addr).await;
    let mut on_b = Client::connect(b.addr).await;
    on_b.nick("carol").await;
    ask_until(&mut on_a, "/who", |who| who.contains("carol")).await;
    assert_eq!(
        on_a.ask("/nick carol").await,
        "* error: name carol is taken"
    );

    b.signal(libc::SIGKILL);
    b.wait_exit();
    let killed = Instant::now();
    // Within the lease (and one refresh), the name is free and the member gone.
    let nick = ask_until(&mut on_a, "/nick carol", |reply| reply == "* you are carol").await;
    assert_eq!(nick, "* you are carol");
    let who = ask_until(&mut on_a, "/who", |who| {
        who == "* members of lobby (1): carol"
    })
    .await;
    assert_eq!(who, "* members of lobby (1): carol");
    // The node count comes from the heartbeat keys, listed at each refresh and each
    // question; the killed node's key expires with its lease like its names, but the
    // listing that notices may come a refresh after the names are free.
    let stats = ask_until(&mut on_a, "/stats", |stats| stats.contains(" nodes=1 ")).await;
    assert!(stats.contains(" nodes=1 "), "{stats}");
    assert!(
        killed.elapsed() < Duration::from_secs(2 * 2 + 3),
        "took {:?} with a 2 s lease",
        killed.elapsed()
    );
}

async fn a_nats_outage_keeps_local_chat_and_loses_only_its_window(backend: &str) {
    let Some(mut nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let b = node(backend, &nats, "b");
    let talker = Client::connect(a.addr).await;
    let mut local = Client::connect(a.addr).await;
    let mut remote = Client::connect(b.addr).await;

    // The talker says numbered lines all along; `remote` (on the other node) records
    // which arrive, `local` (same node) must get every one.
    let (mut talker_in, mut talker_out) = talker.into_parts();
    let _ = &mut talker_in;
    let sent: std::sync::Arc<std::sync::Mutex<Vec<(u32, Instant)>>> = Default::default();
    let sent_log = sent.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_talking = stop.clone();
    let talking = tokio::spawn(async move {
        let mut seq = 0u32;
        while !stop_talking.load(std::sync::atomic::Ordering::Relaxed) {
            let line = format!("n {seq}\n");
            tokio::io::AsyncWriteExt::write_all(&mut talker_out, line.as_bytes())
                .await
                .expect("talk");
            sent_log.lock().unwrap().push((seq, Instant::now()));
            seq += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        talker_out
    });
    let received: std::sync::Arc<std::sync::Mutex<Vec<(u32, Instant)>>> = Default::default();
    let received_log = received.clone();
    let remote_name = remote.name.clone();
    let listening = tokio::spawn(async move {
        loop {
            let Some(line) = remote.try_line().await else {
                break;
            };
            if let Some(seq) = line.split_once(": n ").and_then(|(_, s)| s.parse().ok()) {
                received_log.lock().unwrap().push((seq, Instant::now()));
            }
            if line.ends_with(": the end") {
                break;
            }
        }
        remote
    });
    let got_since = |since: Instant| {
        let received = received.clone();
        async move {
            poll::until_async("cross-node chat to come back", TIMEOUT, async || {
                let back = received.lock().unwrap().iter().any(|(_, at)| *at > since);
                back.then(Instant::now).ok_or("nothing received since")
            })
            .await
        }
    };
    got_since(Instant::now()).await;

    let mut windows = Vec::new();
    for fault in ["stop", "kill"] {
        let fault_at = Instant::now();
        match fault {
            "stop" => nats.signal(libc::SIGSTOP),
            _ => nats.kill(),
        }
        // Local chat goes on; a new name cannot be checked, so it is refused.
        local.send("local still works").await;
        let mut saw_local = false;
        let nick = loop {
            let reply = local.ask("/nick zed").await;
            if reply.starts_with("* error: cluster unavailable") {
                break reply;
            }
            saw_local |= reply.ends_with(": local still works") || reply.contains(": n ");
            assert!(
                fault_at.elapsed() < TIMEOUT,
                "{fault}: /nick not refused: {reply}"
            );
        };
        assert_eq!(nick, "* error: cluster unavailable, try again");
        let _ = saw_local;
        match fault {
            "stop" => nats.signal(libc::SIGCONT),
            _ => nats.restart().expect("restarting nats-server"),
        }
        let back_at = Instant::now();
        let recovered = got_since(back_at).await;
        assert!(
            recovered - back_at < Duration::from_secs(10),
            "{fault}: cross-node chat came back only after {:?}",
            recovered - back_at
        );
        windows.push((fault_at, recovered));
        // Names work again once the bucket is back.
        ask_until(&mut local, "/nick zed", |reply| {
            reply == "* you are zed" || reply.contains("is taken")
        })
        .await;
        local.send("/nick anon").await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut talker_out = talking.await.expect("talker");
    tokio::io::AsyncWriteExt::write_all(&mut talker_out, b"the end\n")
        .await
        .expect("the end");
    let remote = tokio::time::timeout(TIMEOUT, listening)
        .await
        .expect("remote listener")
        .expect("join");
    drop(remote);

    // At most once, in order, and nothing lost outside the outage windows.
    let sent = sent.lock().unwrap().clone();
    let received = received.lock().unwrap().clone();
    let seqs: Vec<u32> = received.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{remote_name}: out of order or twice"
    );
    let got: std::collections::HashSet<u32> = seqs.into_iter().collect();
    for (seq, at) in &sent {
        let in_window = windows
            .iter()
            .any(|(from, to)| *at >= *from - Duration::from_millis(500) && *at <= *to);
        assert!(
            in_window || got.contains(seq),
            "line {seq} was lost outside every outage window"
        );
    }
    let lost = sent.len() - got.len();
    eprintln!(
        "{backend}: {} lines sent, {lost} lost, all inside the outage windows",
        sent.len()
    );
}

async fn nothing_listening_at_the_cluster_url_stops_the_server_at_start(backend: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "off"])
        .args(["--backend", backend, "--cluster", &url])
        .stdin(Stdio::null())
        .output()
        .expect("running ringcast serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&url) && stderr.contains("cannot reach the cluster"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "it claimed to listen"
    );
}

/// Lines until the server closes the connection (bounded by `TIMEOUT`).
async fn lines_until_closed(
    reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return lines,
            Ok(Ok(_)) => lines.push(line.trim_end().to_owned()),
            Err(_) => panic!("not closed within {TIMEOUT:?}; got {lines:?}"),
        }
    }
}

/// Replies come in the order of the requests, also when the cluster answers some of them,
/// as they do from a single node: a client that pipelines requests matches replies to
/// them by order. (Found by the cluster soak: `/nick` then `/join` in one write got the
/// join's reply first. A node answers `/who`, `/rooms`, `/nick` and `/join` when the
/// cluster has, and replies to later requests go out meanwhile.)
async fn replies_come_in_the_order_of_the_requests(backend: &str) {
    let Some(nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let _b = node(backend, &nats, "b");
    let mut client = Client::connect(a.addr).await;
    client
        .send_raw(b"/who\n/help\n/nick ordered\n/join r\n/rooms\n/help\n")
        .await;
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(client.line().await);
    }
    let expected = [
        "* members of lobby (",
        "* commands:",
        "* you are ordered",
        "* joined r (",
        "* rooms (",
        "* commands:",
    ];
    let in_order = replies
        .iter()
        .zip(expected)
        .all(|(reply, start)| reply.starts_with(start));
    assert!(in_order, "replies out of request order: {replies:#?}");
}

/// A client that sends a request the cluster answers and then half-closes, or quits, gets
/// the reply before the close, as from a single node (docs/operations.md, "Connections":
/// a client that quit or half-closed gets `--drain-timeout` to read what is queued).
/// (Found by the cluster soak's half-closing churn clients: the answer comes back after
/// the client began closing and is dropped, so `/rooms` + FIN gets only the close.)
async fn a_cluster_answer_reaches_a_client_that_half_closed_or_quit(backend: &str) {
    let Some(nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let _b = node(backend, &nats, "b");
    for (request, reply) in [("/rooms", "* rooms ("), ("/who", "* members of lobby (")] {
        let client = Client::connect(a.addr).await;
        let (mut reader, mut writer) = client.into_parts();
        tokio::io::AsyncWriteExt::write_all(&mut writer, format!("{request}\n").as_bytes())
            .await
            .expect("write");
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .expect("shutdown(Write)");
        let lines = lines_until_closed(&mut reader).await;
        assert!(
            lines.len() == 1 && lines[0].starts_with(reply),
            "{request} then FIN: got {lines:?} before the close"
        );

        let mut client = Client::connect(a.addr).await;
        client
            .send_raw(format!("{request}\n/quit\n").as_bytes())
            .await;
        let lines = client.rest().await;
        assert!(
            lines.len() == 2 && lines[0].starts_with(reply) && lines[1] == "* bye",
            "{request} then /quit: got {lines:?} before the close"
        );
    }
}

/// Room names and names that ringcast accepts but that are not valid NATS subject tokens
/// (a `.` at either end, `..` inside) either work across nodes like any other or are
/// refused as invalid. (Found while writing the cluster soak: room `x..y` joins on both
/// nodes but its chat never crosses them, as NATS rejects the subject and the node logs
/// it only at info; `/nick .p` is refused with `cluster unavailable, try again` for ever
/// while NATS is up, the key being invalid.)
async fn names_that_are_not_nats_tokens_cross_nodes_or_are_refused(backend: &str) {
    let Some(nats) = nats() else { return };
    let a = node(backend, &nats, "a");
    let b = node(backend, &nats, "b");
    for room in [".x", "x..y", "x."] {
        let mut on_a = Client::connect(a.addr).await;
        let mut on_b = Client::connect(b.addr).await;
        let (joined_a, joined_b) = (
            on_a.ask(&format!("/join {room}")).await,
            on_b.ask(&format!("/join {room}")).await,
        );
        let refused = "* error: invalid room name";
        if joined_a.starts_with(refused) && joined_b.starts_with(refused) {
            continue;
        }
        assert!(
            joined_a.starts_with(&format!("* joined {room} ("))
                && joined_b.starts_with(&format!("* joined {room} (")),
            "{room}: {joined_a:?} / {joined_b:?}"
        );
        on_a.send("across").await;
        let crossed = tokio::time::timeout(Duration::from_secs(10), on_b.line()).await;
        assert_eq!(
            crossed.ok(),
            Some(format!("{}: across", on_a.name)),
            "room {room:?}: joined on both nodes, but chat did not cross them"
        );
    }
    let mut client = Client::connect(a.addr).await;
    for name in [".p", "p..q", "p."] {
        let reply = client.ask(&format!("/nick {name}")).await;
        assert!(
            reply == format!("* you are {name}") || reply.starts_with("* error: invalid name"),
            "/nick {name} with NATS up: {reply:?}"
        );
    }
}

/// `/who` and `/rooms` stay prompt while NATS is stopped, as `/nick` does: other nodes
/// that do not answer within a bound are left out and the reply says how many. (Found by
/// the cluster soak: a churn client's `/who` got no reply within 15 s. Asked in a loop on
/// two nodes around SIGSTOPs, a reply waits for the whole stop, another never comes, and
/// replies say `(2 nodes did not answer)`, even 7, with one other node running. A node
/// counts the live nodes by reading the bucket's keys (`count_nodes`): only the start of
/// that read is bounded, and the key stream stalls with NATS and, once resumed, repeats
/// keys or never ends.)
async fn who_is_answered_promptly_around_a_nats_stop(backend: &str) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    /// The most a reply may take: the cluster's question bound and its claim bound,
    /// with room for a busy machine.
    const PROMPT: Duration = Duration::from_secs(5);
    let Some(nats) = nats() else { return };
    let nodes = [node(backend, &nats, "a"), node(backend, &nats, "b")];
    let stop = Arc::new(AtomicBool::new(false));
    // (slowest reply, replies that were wrong or never came)
    let seen: Arc<Mutex<(Duration, Vec<String>)>> = Default::default();
    let mut askers = Vec::new();
    for i in 0..4 {
        let mut client = Client::connect(nodes[i % 2].addr).await;
        let (stop, seen) = (stop.clone(), seen.clone());
        let (question, answer) = if i < 2 {
            ("/who", "* members of lobby (")
        } else {
            ("/rooms", "* rooms (")
        };
        askers.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let asked = Instant::now();
                let Ok(reply) = tokio::time::timeout(3 * PROMPT, client.ask(question)).await else {
                    let missing = format!("{question}: no reply within {:?}", 3 * PROMPT);
                    seen.lock().unwrap().1.push(missing);
                    return;
                };
                let mut seen = seen.lock().unwrap();
                seen.0 = seen.0.max(asked.elapsed());
                // With two nodes running, at most one other can be silent.
                let miscounted = reply.ends_with(" nodes did not answer)");
                if !reply.starts_with(answer) || miscounted {
                    seen.1.push(reply);
                }
            }
        }));
    }
    for pause in [7, 3, 3] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        nats.signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(pause)).await;
        nats.signal(libc::SIGCONT);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    for asker in askers {
        let _ = tokio::time::timeout(5 * PROMPT, asker).await;
    }
    let (slowest, wrong) = seen.lock().unwrap().clone();
    assert!(
        slowest <= PROMPT && wrong.is_empty(),
        "/who and /rooms around NATS stops of 7 s, 3 s and 3 s: slowest reply {slowest:?}; \
         wrong or missing: {wrong:#?}"
    );
}

/// A node of a cluster keeps nothing per connection once it has gone. (Found by the
/// cluster soak: every node's RSS crept up through the 10-minute run, 1.3 MiB in all,
/// where a single server stays flat; connection churn alone grows a node by about
/// 120 B per connection, joins and `/who` do not. The hub remembers each question it asks
/// the cluster until the answer comes, and the registration of the default name given
/// at connect is answered only when that name turns out to be taken, so its entry in the
/// hub's `pending` stays for ever.)
async fn a_node_keeps_nothing_per_connection(backend: &str) {
    /// Connections opened and closed by each of `clients` clients at once.
    async fn churn(addr: std::net::SocketAddr, connections: usize, clients: usize) {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                tokio::spawn(async move {
                    for _ in 0..connections / clients {
                        drop(Client::connect(addr).await);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("churn task");
        }
    }
    const ROUND: usize = 20_000;
    const ROUNDS: usize = 6;
    /// A gone connection's deadlines stay in the hub's queue until they come up (its write
    /// deadline last): a short write timeout, and a wait past it before each reading,
    /// keep that bounded tail out of the figure.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Growth over the rounds (all but the largest) that fails the test: 42 B a
    /// connection. The leak this test was written for (put back by hand) grew a node by
    /// 12-19 MiB over six rounds here; without it the rounds grew at most 0.8 MiB in all
    /// on this machine.
    const LIMIT_KIB: i64 = 4 * 1024;
    // One backend at a time: each run churns 140,000 connections through two nodes, and
    // two at once on two cores make a node lag, so more connections are open or closing
    // at once than in its warm-up and a table steps to a new high-water mark mid-run
    // (seen here as single 4-16 MiB rounds once a third backend ran beside the others).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(nats) = nats() else { return };
    let a = Server::start(
        backend,
        &[
            "--cluster",
            &nats.url(),
            "--node",
            "a",
            "--cluster-lease",
            LEASE,
            "--write-timeout",
            "2s",
            "--drain-timeout",
            "1s",
        ],
    );
    let _b = node(backend, &nats, "b");
    // RSS steps up, and stays, wherever a table or queue meets a new high-water mark:
    // the runtime's registrations and the hub's deadline queue (which holds every
    // connection closed within the write timeout) follow how many connections are open
    // or closing at once, so the warm-up churns with twice the clients the rounds use.
    // A leak instead grows the node in every round, by its size times the connections,
    // in steps where its table doubles: so the figure is the growth over all rounds but
    // the one that grew most. A single late high-water step (one malloc arena growing by
    // 4.4 MiB in round five and nothing after, seen once in three CI runs) is left out
    // by that; a leak's table doubles in several rounds, and a doubling adds at most
    // what the table held before (the leak this test was written for grew 12-19 MiB).
    churn(a.addr, ROUND, 8).await;
    tokio::time::sleep(WRITE_TIMEOUT + Duration::from_millis(500)).await;
    let maps_before = resident_by_mapping(a.pid());
    let before = a.rss_kib() as i64;
    let mut growth = Vec::new();
    let mut rss = before;
    for _ in 0..ROUNDS {
        churn(a.addr, ROUND, 4).await;
        tokio::time::sleep(WRITE_TIMEOUT + Duration::from_millis(500)).await;
        let now = a.rss_kib() as i64;
        growth.push(now - rss);
        rss = now;
    }
    let largest = growth.iter().copied().max().unwrap_or(0).max(0);
    let counted = rss - before - largest;
    assert!(
        counted < LIMIT_KIB,
        "node a grew by {counted} KiB over {} connections ({} B each), leaving out its \
         largest round; by round: {growth:?} KiB; the mappings that grew most (start \
         address, what, KiB before and after): {:?}",
        (ROUNDS - 1) * ROUND,
        counted * 1024 / ((ROUNDS - 1) * ROUND) as i64,
        grown_mappings(&maps_before, &resident_by_mapping(a.pid()))
    );
}

/// Each mapping of the process (by start address) with what it maps and its resident KiB,
/// from `/proc/PID/smaps`: where a growth is (a heap arena, a thread's stack, a ring).
fn resident_by_mapping(pid: i32) -> std::collections::BTreeMap<String, (String, i64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib = kib.trim().trim_end_matches(" kB").parse().unwrap_or(0);
            if let Some((start, what)) = current.take() {
                maps.insert(start, (what, kib));
            }
        } else {
            // A mapping's header: `START-END PERMS OFFSET DEV INODE [PATH]`.
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or("");
            let header = range.split_once('-').filter(|(start, end)| {
                u64::from_str_radix(start, 16).is_ok() && u64::from_str_radix(end, 16).is_ok()
            });
            if let Some((start, _)) = header {
                let what = fields.nth(4).unwrap_or("[anon]").to_owned();
                current = Some((start.to_owned(), what));
            }
        }
    }
    maps
}

/// The five mappings whose resident size grew most between two readings.
fn grown_mappings(
    before: &std::collections::BTreeMap<String, (String, i64)>,
    after: &std::collections::BTreeMap<String, (String, i64)>,
) -> Vec<(String, String, i64, i64)> {
    let mut grown: Vec<(String, String, i64, i64)> = after
        .iter()
        .map(|(start, (what, kib))| {
            let old = before.get(start).map_or(0, |(_, kib)| *kib);
            (start.clone(), what.clone(), old, *kib)
        })
        .filter(|(_, _, old, new)| new > old)
        .collect();
    grown.sort_by_key(|(_, _, old, new)| old - new);
    grown.truncate(5);
    grown
}
