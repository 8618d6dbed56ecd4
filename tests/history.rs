//! Room history against a real server process, once per backend: `/history` (empty,
//! partial, full, a count over `--history`, history off), and resuming after a cut made
//! by a proxy between client and server, with lines sent during the cut and while the
//! client resumes (every line once, in order), or from a position already evicted (the
//! gap is told first). Age expiry and the memory cap are tested on simulated time in the
//! core (`crates/core/src/history.rs`, `hub/tests/history.rs`).

mod common;

use common::{numbered, send_in_tens, Client, Proxy, Server};

backend_tests!(
    history_is_empty_partial_full_and_cut_to_its_limit,
    history_off_is_an_error_for_every_history_command,
    resume_after_a_cut_gets_every_line_once_in_order,
    resume_from_an_evicted_position_is_told_the_gap_first,
);

async fn history_is_empty_partial_full_and_cut_to_its_limit(backend: &str) {
    let server = Server::start(backend, &["--history", "5"]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    assert_eq!(
        a.history("/history").await,
        ["* history of lobby (0 lines)", "* end of history"]
    );
    // One after the other: two senders' lines at once may take either order.
    a.send("one").await;
    assert_eq!(b.line().await, format!("{}: one", a.name));
    b.send("two").await;
    assert_eq!(a.line().await, format!("{}: two", b.name));
    // Partial: the asker's own lines are in it, exactly as delivered.
    let (one, two) = (format!("{}: one", a.name), format!("{}: two", b.name));
    assert_eq!(
        a.history("/history").await,
        [
            "* history of lobby (2 lines)",
            &one,
            &two,
            "* end of history"
        ]
    );
    for i in 0..6 {
        a.send(&format!("n{i}")).await;
    }
    for i in 0..6 {
        assert_eq!(b.line().await, format!("{}: n{i}", a.name));
    }
    // Full: the 5 most recent, oldest first; 50 is more than --history allows.
    let full: Vec<String> = (1..6).map(|i| format!("{}: n{i}", a.name)).collect();
    let reply = b.history("/history 50").await;
    assert_eq!(reply[0], "* history of lobby (5 lines)");
    assert_eq!(reply[1..6], full[..]);
    let reply = b.history("/history 2").await;
    assert_eq!(reply[1..3], full[3..]);
    assert_eq!(reply.len(), 4);
    assert_eq!(
        b.history("/history 0").await,
        ["* history of lobby (0 lines)", "* end of history"]
    );
    b.join("elsewhere").await;
    assert_eq!(b.history("/history").await.len(), 2);
}

async fn history_off_is_an_error_for_every_history_command(backend: &str) {
    let server = Server::start(backend, &["--history", "0"]);
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    a.send("hi").await;
    assert_eq!(b.line().await, format!("{}: hi", a.name));
    for command in ["/history", "/history 3", "/resume lobby 0", "/positions on"] {
        assert_eq!(a.ask(command).await, "* error: history is off", "{command}");
    }
}

/// A reader behind a proxy sees lines 1-10, is cut; the writer goes on (300 lines in
/// all) while the reader reconnects and resumes from 10: it must get 11-300, each once,
/// in order, whether from the replay or live.
async fn resume_after_a_cut_gets_every_line_once_in_order(backend: &str) {
    let server = Server::start(backend, &["--history", "1000"]);
    let proxy = Proxy::start(server.addr).await;
    let mut writer = Client::connect(server.addr).await;
    writer.join("chat").await;
    let mut reader = Client::connect(proxy.addr).await;
    reader.join("chat").await;
    let positions = reader.ask("/positions on").await;
    let epoch = positions
        .strip_prefix("* positions on (chat at 0, epoch ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{positions:?}"))
        .to_owned();
    let name = writer.name.clone();
    let first: String = (0..10).map(|i| format!("m{i}\n")).collect();
    writer.send_raw(first.as_bytes()).await;
    let mut last = 0;
    for i in 0..10 {
        let line = reader.line().await;
        let (pos, rest) = numbered(&line);
        assert_eq!((pos, rest), (i + 1, format!("{name}: m{i}").as_str()));
        last = pos;
    }
    proxy.cut().await;
    assert_eq!(
        reader.try_line().await,
        None,
        "the cut closes the reader's connection"
    );

    // Lines during the cut, and more while the reader comes back.
    writer.send_raw(b"m10\nm11\nm12\n").await;
    writer.sync().await;
    let sending = tokio::spawn(async move {
        send_in_tens(&mut writer, 13, 29).await;
        writer
            .send_raw(b"m303\nm304\nm305\nm306\nm307\nm308\nm309\n")
            .await;
        writer.sync().await;
        writer
    });
    let mut reader = Client::connect(proxy.addr).await;
    reader
        .send_raw(format!("/positions on\n/resume chat {last} {epoch}\n").as_bytes())
        .await;
    assert_eq!(
        reader.line().await,
        format!("* positions on (lobby at 0, epoch {epoch})")
    );
    let header = reader.line().await;
    assert!(
        header.starts_with(&format!("* resuming chat after {last} (")),
        "{header}"
    );
    let mut expected = last + 1;
    while expected <= 310 {
        let line = reader.line().await;
        let (pos, rest) = numbered(&line);
        assert_eq!(pos, expected, "{line:?} after {}", expected - 1);
        assert_eq!(rest, format!("{name}: m{}", pos - 1));
        expected += 1;
    }
    let mut writer = sending.await.expect("the writer");
    writer.send("after").await;
    let (pos, _) = numbered(&reader.line().await);
    assert_eq!(pos, 311, "nothing else came between");
}

async fn resume_from_an_evicted_position_is_told_the_gap_first(backend: &str) {
    let server = Server::start(backend, &["--history", "5"]);
    let proxy = Proxy::start(server.addr).await;
    let mut writer = Client::connect(server.addr).await;
    writer.join("chat").await;
    let mut reader = Client::connect(proxy.addr).await;
    reader.join("chat").await;
    reader.send("/positions on").await;
    let positions = reader.line().await;
    assert!(
        positions.starts_with("* positions on (chat at 0, epoch "),
        "{positions}"
    );
    writer.send_raw(b"a\nb\nc\n").await;
    for _ in 0..3 {
        reader.line().await;
    }
    proxy.cut().await;
    let lines: String = (0..10).map(|i| format!("d{i}\n")).collect();
    writer.send_raw(lines.as_bytes()).await;
    writer.sync().await;
    let mut reader = Client::connect(proxy.addr).await;
    reader.send("/positions on").await;
    reader.line().await;
    reader.send("/resume chat 3").await;
    assert_eq!(reader.line().await, "* error: history gap (5 lines lost)");
    assert_eq!(reader.line().await, "* resuming chat after 3 (5 lines)");
    for i in 5..10 {
        let line = reader.line().await;
        assert_eq!(
            numbered(&line),
            (9 + i - 5, format!("{}: d{i}", writer.name).as_str())
        );
    }
}
