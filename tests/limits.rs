//! The limits a public server needs, through real sockets to a real process, on both
//! backends: the write deadline, input flood control, connections per address, a port
//! that is already in use, and the close reasons `/stats` counts apart.

mod common;

use common::{stat, Client, Server, TIMEOUT};
use ringcast_testkit::poll;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

backend_tests!(
    a_client_whose_socket_takes_nothing_is_cut_by_the_write_timeout,
    a_flooder_is_held_to_its_rate_and_nobody_else_is,
    connections_from_one_address_are_capped,
    a_port_in_use_is_an_error_not_a_shared_room,
    close_reasons_are_counted_apart,
);

/// A client with a tiny receive buffer that never reads: connected, welcomed, left alone.
async fn stuck_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Polls `/stats` through `monitor` until `key` reaches `value`; returns when it did.
async fn until_stat(monitor: &mut Client, key: &str, value: u64) -> (Instant, String) {
    poll::until_async(format!("{key} to reach {value}"), TIMEOUT, async || {
        let stats = monitor.ask("/stats").await;
        if stat(&stats, key) >= value {
            Ok((Instant::now(), stats))
        } else {
            Err(stats)
        }
    })
    .await
}

async fn a_client_whose_socket_takes_nothing_is_cut_by_the_write_timeout(backend: &str) {
    let server = Server::start(backend, &["--write-timeout", "2s", "--max-outbound", "64m"]);
    let mut publisher = Client::connect(server.addr).await;
    let mut reader = Client::connect(server.addr).await;
    let _stuck = stuck_client(server.addr).await;
    let mut monitor = Client::connect(server.addr).await;
    monitor.join("elsewhere").await;
    publisher.sync().await;

    // More than the stuck client's socket can ever take, far less than --max-outbound:
    // its output must stall without its queue reaching the byte limit.
    let line = format!("{}\n", "x".repeat(3990));
    let lines = (ringcast_testkit::max_send_buffer() + (4 << 20)) / line.len() + 1;
    let started = Instant::now();
    let sending = {
        let (_, mut writer) = publisher.into_parts();
        let burst = line.repeat(lines);
        tokio::spawn(async move {
            writer.write_all(burst.as_bytes()).await.expect("publish");
            writer
        })
    };
    for i in 0..lines {
        let got = reader.line().await;
        assert!(got.ends_with(&line[..3990]), "line {i}: {}", &got[..40]);
    }
    let sent = Instant::now();
    let _writer = sending.await.expect("publisher");

    let (cut_at, stats) = until_stat(&mut monitor, "closed_write_timeout", 1).await;
    let since_start = cut_at - started;
    let since_end = cut_at - sent;
    assert!(
        since_start >= Duration::from_secs(2) && since_end <= Duration::from_secs(4),
        "cut {since_start:?} after the burst began, {since_end:?} after it ended"
    );
    assert_eq!(stat(&stats, "closed_slow_consumer"), 0, "{stats}");
    assert_eq!(stat(&stats, "slow_consumers"), 1, "{stats}");
    server.wait_log("no write progress in 2s").await;
    // The others are still served.
    reader.sync().await;
}

async fn a_flooder_is_held_to_its_rate_and_nobody_else_is(backend: &str) {
    let server = Server::start(backend, &["--max-msg-rate", "50", "--max-msg-burst", "100"]);
    let flooder = Client::connect(server.addr).await;
    let flooder_name = flooder.name.clone();
    let mut talker = Client::connect(server.addr).await;
    let mut reader = Client::connect(server.addr).await;

    // The flooder's notices, with when they came.
    let (mut flood_in, mut flood_out) = flooder.into_parts();
    let notices = tokio::spawn(async move {
        let mut notices = Vec::new();
        let mut line = String::new();
        while tokio::io::AsyncBufReadExt::read_line(&mut flood_in, &mut line)
            .await
            .is_ok_and(|n| n > 0)
        {
            notices.push((Instant::now(), line.trim_end().to_owned()));
            if line.starts_with("* commands") {
                break;
            }
            line.clear();
        }
        notices
    });

    // ~5,000 lines/s for 2 s: 10 lines every 2 ms. Meanwhile another client talks at a
    // human pace.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut seq = 0;
    let mut said = 0;
    while started.elapsed() < Duration::from_secs(2) {
        tick.tick().await;
        let mut burst = String::new();
        for _ in 0..10 {
            burst.push_str(&format!("flood {seq}\n"));
            seq += 1;
        }
        flood_out.write_all(burst.as_bytes()).await.expect("flood");
        if seq % 1000 == 0 {
            talker.send(&format!("talk {said}")).await;
            said += 1;
        }
    }
    let flood_time = started.elapsed();
    talker.send("talk done").await;

    // Still connected: once it calms down it is answered, and its last line is heard.
    tokio::time::sleep(Duration::from_millis(100)).await;
    flood_out.write_all(b"/help\n").await.expect("help");
    let notices = tokio::time::timeout(TIMEOUT, notices)
        .await
        .expect("flooder's reader")
        .expect("join");
    flood_out
        .write_all(b"flood over\n")
        .await
        .expect("last line");

    // The reader gets every line of the talker and the flooder's allowance, the latter
    // ending (per-sender order) with its last line.
    let mut flooded = 0;
    let mut talked = 0;
    let (mut talk_done, mut flood_over) = (false, false);
    while !(talk_done && flood_over) {
        let line = reader.line().await;
        if let Some(text) = line.strip_prefix(&format!("{flooder_name}: ")) {
            if text == "flood over" {
                flood_over = true;
                continue;
            }
            assert!(text.starts_with("flood "), "{line}");
            flooded += 1;
        } else if line.ends_with("talk done") {
            talk_done = true;
        } else {
            assert_eq!(line, format!("{}: talk {talked}", talker.name));
            talked += 1;
        }
    }
    assert_eq!(talked, said, "every line of the other client arrived");
    let allowed = 100.0 + 50.0 * flood_time.as_secs_f64();
    assert!(
        (flooded as f64) >= 0.85 * allowed && (flooded as f64) <= 1.15 * allowed,
        "{flooded} of {seq} flood lines got through in {flood_time:?}; about {allowed} allowed"
    );

    // Besides the talker's chat, the flooder was told to slow down, and answered.
    let notices: Vec<_> = notices
        .into_iter()
        .filter(|(_, line)| line.starts_with("* "))
        .collect();
    let (slow_downs, rest): (Vec<_>, Vec<_>) = notices
        .iter()
        .partition(|(_, line)| line == "* error: slow down (50 lines/s)");
    assert!(
        rest.len() == 1 && rest[0].1.starts_with("* commands"),
        "{rest:?}"
    );
    assert!(
        !slow_downs.is_empty() && slow_downs.len() <= 3,
        "{slow_downs:?}"
    );
    for pair in slow_downs.windows(2) {
        // At most once a second (as the server counts; arrival may jitter a little).
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(900),
            "{pair:?}"
        );
    }
    // Asked by a newcomer, to whom nobody is talking any more (with two threads, the
    // flooder's last line may still be handed to the newcomer's thread after it joined).
    let mut newcomer = Client::connect(server.addr).await;
    newcomer.send("/stats").await;
    let stats = loop {
        let line = newcomer.line().await;
        if line.starts_with("* stats ") {
            break line;
        }
    };
    assert_eq!(stat(&stats, "rate_limited"), seq - flooded, "{stats}");
}

async fn connections_from_one_address_are_capped(backend: &str) {
    let server = Server::start(backend, &["--max-per-ip", "2"]);
    let mut a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    let mut refused = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, refused.read_to_string(&mut text))
        .await
        .expect("refusal in time")
        .expect("read");
    assert_eq!(text, "* error: too many connections from your address\n");
    // Another address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = socket.connect(server.addr).await.unwrap();
    let mut other = Client::from_stream(other).await;
    assert_eq!(stat(&other.ask("/stats").await, "refused_per_ip"), 1);
    // A place from that address is free again once its connection is gone.
    assert_eq!(a.ask("/quit").await, "* bye");
    assert!(a.rest().await.is_empty());
    drop(a);
    poll::until_async("the place to come free", TIMEOUT, async || {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut first = [0u8; 9];
        stream.read_exact(&mut first).await.unwrap();
        if &first == b"* you are" {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&first).into_owned())
        }
    })
    .await;
}

async fn a_port_in_use_is_an_error_not_a_shared_room(backend: &str) {
    let first = Server::start(backend, &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--backend", backend, "--listen"])
        .arg(first.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second server");
    let exited = poll::Wait::new(
        format!("a second server on {} to exit", first.addr),
        TIMEOUT,
    )
    .try_until_async(async || second.try_wait().expect("try_wait").ok_or("running"))
    .await;
    let status = exited.unwrap_or_else(|err| {
        let _ = second.kill();
        panic!("a second server on {} kept running: {err}", first.addr);
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        !stdout.contains("listening on"),
        "the second server claimed to listen: {stdout}"
    );
    assert!(
        stderr.contains(&format!("listening on {}", first.addr))
            && stderr.contains("address in use"),
        "{stderr}"
    );
    // The first one still serves every new client.
    let mut a = Client::connect(first.addr).await;
    a.sync().await;
}

async fn close_reasons_are_counted_apart(backend: &str) {
    let server = Server::start(backend, &["--max-outbound", "8k"]);
    let mut monitor = Client::connect(server.addr).await;
    let mut quitter = Client::connect(server.addr).await;
    assert_eq!(quitter.ask("/quit").await, "* bye");
    assert!(quitter.rest().await.is_empty());
    drop(quitter);
    let gone = Client::connect(server.addr).await;
    drop(gone);
    // Until the server has seen it go, the burst below would be queued for it too, and
    // could cut it as a slow consumer first.
    until_stat(&mut monitor, "closed_peer_gone", 1).await;
    // A slow consumer by bytes: never reads while the monitor's chat piles up.
    let _slow = stuck_client(server.addr).await;
    // More than its socket can take, in one burst.
    let burst =
        format!("{}\n", "y".repeat(999)).repeat(ringcast_testkit::max_send_buffer() / 1000 + 1000);
    monitor.send_raw(burst.as_bytes()).await;
    let (_, stats) = until_stat(&mut monitor, "closed_slow_consumer", 1).await;
    for (key, value) in [
        ("closed_slow_consumer", 1),
        ("closed_peer_gone", 1),
        ("closed_quit", 1),
        ("closed_write_timeout", 0),
        ("closed_shutdown", 0),
        ("refused_server_full", 0),
        ("refused_per_ip", 0),
        ("slow_consumers", 1),
        ("rate_limited", 0),
    ] {
        assert_eq!(stat(&stats, key), value, "{key} in {stats}");
    }
}
