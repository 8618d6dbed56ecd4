//! The server's behaviour as clients see it, through real sockets to a real process.
//! Every test runs against both backends.

mod common;

use common::{stat, Client, Server, TIMEOUT};
use ringcast_testkit::poll;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

backend_tests!(
    chat_reaches_every_other_member_of_the_room_only,
    per_sender_order_holds_with_concurrent_senders_across_threads,
    flush_delay_coalesces_without_losing_or_reordering,
    commands_reply_and_errors_say_what_is_wrong,
    names_are_unique_and_freed_on_quit,
    over_long_line_is_refused_and_connection_survives,
    server_full_refuses_one_more,
    slow_consumer_is_cut_off_while_others_get_everything,
    abrupt_disconnects_free_names_and_membership,
    shutdown_delivers_everything_accepted_then_closes,
    sigint_drains_and_exits_zero,
    fd_exhaustion_backs_off_and_keeps_serving,
    stats_line_reports_backend_and_traffic,
    python_asyncio_readline_client_can_chat,
);

/// The uring backend submits while a scheduler pass runs (every `--submit-every` ops), not
/// only when the thread parks: a fan-out longer than that starts its first sends before
/// the pass ends. Pinned through the count of such submits in `/stats`, so a change that
/// returns to submit-at-park fails here. (uring only: epoll has no submission queue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_submits_while_a_long_fan_out_runs() {
    for (every, expect_early) in [("8", true), ("0", false)] {
        let server = Server::start("uring", &["--threads", "1", "--submit-every", every]);
        let mut clients = Vec::new();
        for _ in 0..60 {
            clients.push(Client::connect(server.addr).await);
        }
        let before = stat(&clients[0].ask("/stats").await, "early_submits");
        clients[0].send("one line for 59 members").await;
        for client in &mut clients[1..] {
            assert!(client.line().await.ends_with("one line for 59 members"));
        }
        let after = stat(&clients[0].ask("/stats").await, "early_submits");
        if expect_early {
            // 59 sends in one pass: at least 59 / 8 submits before it ends.
            assert!(
                after - before >= 7,
                "--submit-every {every}: {before} -> {after}"
            );
        } else {
            assert_eq!(after, 0, "--submit-every 0 must submit only at park");
        }
    }
}

async fn chat_reaches_every_other_member_of_the_room_only(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    let mut c = Client::connect(server.addr).await;
    let mut d = Client::connect(server.addr).await;
    d.join("elsewhere").await;

    a.send("hello, room").await;
    let expected = format!("{}: hello, room", a.name);
    assert_eq!(b.line().await, expected);
    assert_eq!(c.line().await, expected);
    // The sender's next line is the reply to its next command, not its own message.
    assert!(a.ask("/who").await.starts_with("* members of lobby (3)"));
    // Per-sender order: had `hello` reached `d` in the other room, it would come first.
    a.join("elsewhere").await;
    a.send("marker").await;
    assert_eq!(d.line().await, format!("{}: marker", a.name));
    // Bytes are relayed as they are, and `//` escapes a leading slash.
    a.send_raw(b"//join is text\r\n\xff\xfe raw\n").await;
    assert_eq!(d.line().await, format!("{}: /join is text", a.name));
    let mut raw = Vec::new();
    let (mut reader, _w) = d.into_parts();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut raw),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(raw, [a.name.as_bytes(), b": \xff\xfe raw\n"].concat());
}

async fn per_sender_order_holds_with_concurrent_senders_across_threads(backend: &str) {
    check_order(Server::start(backend, &[])).await;
}

async fn flush_delay_coalesces_without_losing_or_reordering(backend: &str) {
    // Lines wait in outboxes for the window before their write: all must still arrive,
    // once each, in each sender's order.
    check_order(Server::start(backend, &["--flush-delay", "2ms"])).await;
}

/// Four senders, four receivers, every line received once and in each sender's order.
async fn check_order(server: Server) {
    const SENDERS: usize = 4;
    const RECEIVERS: usize = 4;
    const PER_SENDER: u32 = 500;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(Client::connect(server.addr).await);
    }
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        receivers.push(Client::connect(server.addr).await);
    }
    let names: Vec<String> = senders.iter().map(|s| s.name.clone()).collect();
    let receiving: Vec<_> = receivers
        .into_iter()
        .map(|mut r| {
            let names = names.clone();
            tokio::spawn(async move {
                let mut next: HashMap<String, u32> = names.iter().map(|n| (n.clone(), 0)).collect();
                for _ in 0..SENDERS as u32 * PER_SENDER {
                    let line = r.line().await;
                    let (name, seq) = line.split_once(": ").expect("chat line");
                    let expected = next.get_mut(name).expect("known sender");
                    assert_eq!(seq, format!("seq {expected}"), "order from {name}");
                    *expected += 1;
                }
                assert!(r.ask("/help").await.starts_with("* commands"));
            })
        })
        .collect();
    let sending: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut burst = String::new();
                for i in 0..PER_SENDER {
                    burst.push_str(&format!("seq {i}\n"));
                    if i % 50 == 49 {
                        s.send_raw(burst.as_bytes()).await;
                        burst.clear();
                    }
                }
                s.send_raw(burst.as_bytes()).await;
                s
            })
        })
        .collect();
    let mut senders = Vec::new();
    for task in sending {
        senders.push(task.await.unwrap());
    }
    for task in receiving {
        task.await.unwrap();
    }
    // Each sender got every other sender's lines, in order, and none of its own.
    for s in &mut senders {
        let mut next: HashMap<String, u32> = HashMap::new();
        for _ in 0..(SENDERS as u32 - 1) * PER_SENDER {
            let line = s.line().await;
            let (name, seq) = line.split_once(": ").expect("chat line");
            assert_ne!(name, s.name, "sender got its own line");
            let expected = next.entry(name.to_owned()).or_default();
            assert_eq!(seq, format!("seq {expected}"));
            *expected += 1;
        }
    }
}

async fn commands_reply_and_errors_say_what_is_wrong(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    assert!(a.name.starts_with("user") && b.name.starts_with("user") && a.name != b.name);

    assert_eq!(a.ask("/join chess").await, "* joined chess (1 member)");
    assert_eq!(b.ask("/join chess").await, "* joined chess (2 members)");
    assert_eq!(
        b.ask("/join chess").await,
        "* error: you are in chess already"
    );
    a.nick("alice").await;
    assert_eq!(a.ask("/nick alice").await, "* you are alice");
    assert_eq!(b.ask("/nick alice").await, "* error: name alice is taken");
    assert_eq!(
        b.ask("/who").await,
        format!("* members of chess (2): alice, {}", b.name)
    );
    let c = Client::connect(server.addr).await;
    assert_eq!(a.ask("/rooms").await, "* rooms (2): chess (2), lobby (1)");
    assert!(a
        .ask("/help")
        .await
        .starts_with("* commands: /join ROOM, /nick NAME"));
    let stats = a.ask("/stats").await;
    assert!(
        stats.starts_with(&format!("* stats backend={backend} threads=2 ")),
        "{stats}"
    );
    assert_eq!(stat(&stats, "clients"), 3);

    for (line, reply) in [
        ("/dance", "* error: unknown command /dance (try /help)"),
        ("/join", "* error: /join needs room name"),
        ("/nick", "* error: /nick needs name"),
        ("/who me", "* error: /who takes no arguments"),
        ("/rooms x", "* error: /rooms takes no arguments"),
        ("/quit now", "* error: /quit takes no arguments"),
        (
            "/join bad room",
            "* error: invalid room name \"bad room\": use 1-32 letters, digits, '_', '-' or '.'",
        ),
        (
            "/nick way_too_long_name_for_this_server_x",
            "* error: invalid name \"way_too_long_name_for_this_server_x\": use 1-32 letters, digits, '_', '-' or '.'",
        ),
    ] {
        assert_eq!(a.ask(line).await, reply, "reply to {line:?}");
    }
    // Empty lines are ignored: the next line b sees is a's chat.
    a.send_raw(b"\n\r\nstill here\n").await;
    assert_eq!(b.line().await, "alice: still here");

    assert_eq!(a.ask("/quit").await, "* bye");
    assert_eq!(a.rest().await, Vec::<String>::new());
    drop(c);
}

async fn names_are_unique_and_freed_on_quit(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    let given = a.name.clone();
    a.nick("zed").await;
    assert_eq!(b.ask("/nick zed").await, "* error: name zed is taken");
    // The name a had before is free as soon as it is renamed.
    b.nick(&given).await;
    assert_eq!(a.ask("/quit").await, "* bye");
    assert!(a.rest().await.is_empty());
    b.nick("zed").await;
    assert_eq!(b.ask("/who").await, "* members of lobby (1): zed");
}

async fn over_long_line_is_refused_and_connection_survives(backend: &str) {
    let server = Server::start(backend, &["--max-line", "64"]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    a.send(&"x".repeat(65)).await;
    assert_eq!(a.line().await, "* error: line too long");
    // A long line arriving in pieces is refused once and dropped up to its newline.
    for _ in 0..50 {
        a.send_raw(&[b'y'; 1000]).await;
    }
    a.send_raw(b"tail of the long line\n").await;
    assert_eq!(a.line().await, "* error: line too long");
    a.send(&"z".repeat(64)).await;
    assert_eq!(b.line().await, format!("{}: {}", a.name, "z".repeat(64)));
    a.sync().await;
    assert!(server.rss_kib() < 64 * 1024, "rss {} KiB", server.rss_kib());
}

async fn server_full_refuses_one_more(backend: &str) {
    let server = Server::start(backend, &["--max-clients", "2"]);
    let mut a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut refused = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut refused))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused, "* error: server full\n");
    server.wait_log("refused a connection: server full").await;
    assert_eq!(stat(&a.ask("/stats").await, "refused_server_full"), 1);
    // The refusal cost nobody else anything; a quit frees the place once the connection
    // is gone (a closing connection still holds its descriptor, so it still counts).
    assert_eq!(a.ask("/quit").await, "* bye");
    assert!(a.rest().await.is_empty());
    drop(a);
    poll::until_async("the quit client's place to be freed", TIMEOUT, async || {
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut first = [0u8; 9];
        let mut stream = stream;
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut first))
            .await
            .unwrap()
            .unwrap();
        if &first == b"* you are" {
            return Ok(());
        }
        assert_eq!(&first, b"* error: ");
        Err("* error: server full")
    })
    .await;
}

async fn slow_consumer_is_cut_off_while_others_get_everything(backend: &str) {
    const LINES: usize = 12_000;
    // Bursts well under the outbox limit, so the reader keeps up by construction.
    const CHUNK: usize = 30;
    let server = Server::start(backend, &["--max-outbound", "64k"]);
    // A client that never reads, with a small receive buffer so the server's queue fills.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let slow = Client::from_stream(tokio::net::TcpStream::from_std(socket.into()).unwrap()).await;
    let mut publisher = Client::connect(server.addr).await;
    let reader = Client::connect(server.addr).await;
    let mut reader = common::feed_a_reader(&server, &mut publisher, reader, LINES, CHUNK).await;
    let log = server.wait_log("slow consumer disconnected").await;
    assert!(log.contains(&format!("name={}", slow.name)), "{log}");
    let stats = reader.ask("/stats").await;
    assert_eq!(stat(&stats, "slow_consumers"), 1);
    assert_eq!(stat(&stats, "clients"), 2);
    // The slow client's connection ends: whatever it reads now is finite.
    let (mut slow_reader, _w) = slow.into_parts();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, slow_reader.read_to_end(&mut sink))
        .await
        .expect("slow consumer's connection was not closed");
    assert!(sink.len() < 16 << 20);
    assert!(
        server.rss_kib() < 128 * 1024,
        "rss {} KiB",
        server.rss_kib()
    );
}

async fn abrupt_disconnects_free_names_and_membership(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut watcher = Client::connect(server.addr).await;
    watcher.nick("watcher").await;

    // Reset: SO_LINGER 0 makes close send RST.
    let reset = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let reset = Client::from_stream(reset).await;
    let reset_name = reset.name.clone();
    let (r, w) = reset.into_parts();
    let stream = r.into_inner().reunite(w).unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);

    // Half-close: the server sees EOF, flushes, and closes its side too.
    let mut half = Client::connect(server.addr).await;
    let (hr, mut hw) = {
        half.send("/join side").await;
        assert!(half.line().await.starts_with("* joined side"));
        half.into_parts()
    };
    hw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let mut hr = hr;
    tokio::time::timeout(TIMEOUT, hr.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());

    // A partial line, then gone.
    let mut partial = Client::connect(server.addr).await;
    partial.sync().await;
    partial.send_raw(b"no newline ever").await;
    drop(partial);

    poll::until_async("the gone clients to be unlisted", TIMEOUT, async || {
        let who = watcher.ask("/who").await;
        let rooms = watcher.ask("/rooms").await;
        if who == "* members of lobby (1): watcher" && rooms == "* rooms (1): lobby (1)" {
            Ok(())
        } else {
            Err(format!("still listed: {who} / {rooms}"))
        }
    })
    .await;
    // The names are free again and the server serves on.
    let mut again = Client::connect(server.addr).await;
    again.nick(&reset_name).await;
    again.send("after the faults").await;
    assert_eq!(
        watcher.line().await,
        format!("{reset_name}: after the faults")
    );
    assert_eq!(stat(&watcher.ask("/stats").await, "clients"), 2);
    assert!(!server.log().contains("panicked"));
}

async fn shutdown_delivers_everything_accepted_then_closes(backend: &str) {
    const LINES: usize = 3000;
    let mut server = Server::start(backend, &[]);
    let mut receivers = Vec::new();
    for _ in 0..4 {
        receivers.push(Client::connect(server.addr).await);
    }
    let mut publisher = Client::connect(server.addr).await;
    let mut burst = String::new();
    for i in 0..LINES {
        burst.push_str(&format!("line {i}\n"));
    }
    publisher.send_raw(burst.as_bytes()).await;
    // Once the reply arrives, the server has accepted every line before it.
    publisher.sync().await;
    server.signal(libc::SIGTERM);
    for mut r in receivers {
        let lines = r.rest().await;
        assert_eq!(lines.len(), LINES + 1, "{}", lines.last().unwrap());
        for (i, line) in lines[..LINES].iter().enumerate() {
            assert_eq!(line, &format!("{}: line {i}", publisher.name));
        }
        assert_eq!(lines[LINES], "* server shutting down");
    }
    assert_eq!(
        publisher.rest().await,
        vec!["* server shutting down".to_owned()]
    );
    let status = server.wait_exit();
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

async fn sigint_drains_and_exits_zero(backend: &str) {
    let mut server = Server::start(backend, &[]);
    let mut a = Client::connect(server.addr).await;
    server.signal(libc::SIGINT);
    assert_eq!(a.rest().await, vec!["* server shutting down".to_owned()]);
    assert!(server.wait_exit().success());
    assert!(server.log().contains("shut down cleanly"));
}

async fn fd_exhaustion_backs_off_and_keeps_serving(backend: &str) {
    const LIMIT: u64 = 96;
    let server = Server::start_with(backend, &["--max-clients", "500"], |cmd| {
        common::limit_open_files(cmd, LIMIT)
    });
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    // More connections than descriptors: the kernel completes them, the server cannot
    // accept them all yet.
    let mut extra = Vec::new();
    for _ in 0..LIMIT {
        extra.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    server.wait_log("out of file descriptors").await;
    a.send("still serving").await;
    assert_eq!(b.line().await, format!("{}: still serving", a.name));
    // Freed descriptors let the waiting connections in: the last one gets its welcome.
    let waiting = extra.pop().unwrap();
    extra.clear();
    let late = Client::from_stream(waiting).await;
    assert!(late.name.starts_with("user"));
}

async fn stats_line_reports_backend_and_traffic(backend: &str) {
    let server = Server::start(backend, &["--stats-interval", "100ms"]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    a.send("counted").await;
    b.line().await;
    let log = server.wait_log("deliveries=1").await;
    let line = log.lines().find(|l| l.contains("deliveries=1")).unwrap();
    assert!(
        line.contains(&format!("backend=\"{backend}\""))
            || line.contains(&format!("backend={backend}")),
        "{line}"
    );
    assert!(
        line.contains("messages_in=1") && line.contains("clients=2"),
        "{line}"
    );
}

async fn python_asyncio_readline_client_can_chat(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut rust_side = Client::connect(server.addr).await;
    let script = r#"
import asyncio, sys
async def main(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    welcome = await reader.readline()
    assert welcome.startswith(b"* you are "), welcome
    writer.write(b"/nick py\r\n")
    assert await reader.readline() == b"* you are py\n"
    writer.write(b"hello from asyncio\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 20)
    print(line.decode().rstrip("\n"))
    writer.write(b"/quit\n")
    assert await reader.readline() == b"* bye\n"
    writer.close()
asyncio.run(main(int(sys.argv[1])))
"#;
    let child = tokio::process::Command::new("python3")
        .args(["-c", script, &server.addr.port().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    assert_eq!(rust_side.line().await, "py: hello from asyncio");
    rust_side.send("hi python").await;
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{}: hi python", rust_side.name)
    );
}
