//! The chat page in a real browser, once per backend: `tests/web/browser.py` drives two
//! headless Chromium sessions (Debian's `chromium` and `chromium-driver` through
//! `python3-selenium`, paths given so nothing is downloaded) and a TCP client against a
//! server started here; it keeps its screenshot in `docs/chat-page.png`. Halfway through
//! it asks for the pages' connections to be cut (they reach the server through a proxy
//! here), to see them reconnect and show what they missed, and then for the server to go
//! away and come back on the same ports.
//!
//! Without those packages the test fails naming them, unless `RINGCAST_SKIP_BROWSER=1`.

mod common;

use common::browser::{self, PYTHON};
use common::{Proxy, Server};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

backend_tests!(two_tabs_and_a_tcp_client_chat_and_the_page_reconnects);

/// What the whole browser run may take; it needs about 10 s on a quiet machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// One browser run at a time: each starts two Chromiums, and the machine may have two
/// cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn two_tabs_and_a_tcp_client_chat_and_the_page_reconnects(backend: &str) {
    if !browser::ready("the browser test", &[]) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut server = Server::start(backend, &[]);
    let (addr, http) = (server.addr.to_string(), server.http_addr().to_string());
    // The pages connect through the proxy, which can cut them off; a restarted server
    // comes back on the same ports, behind the same proxy.
    let proxy = Proxy::start(server.http_addr()).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = tokio::process::Command::new(PYTHON)
        .arg(format!("{root}/tests/web/browser.py"))
        .args([
            &proxy.addr.to_string(),
            &addr,
            &format!("{root}/docs/chat-page.png"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting tests/web/browser.py");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");

    let run = async {
        let mut said = Vec::new();
        while let Some(line) = stdout.next_line().await.expect("reading browser.py") {
            if line == "cut" {
                proxy.cut().await;
                stdin.write_all(b"cut\n").await.expect("answering");
            }
            if line == "restart" {
                server.signal(libc::SIGTERM);
                server.wait_exit();
                server = Server::start(backend, &["--listen", &addr, "--http", &http]);
                stdin.write_all(b"restarted\n").await.expect("answering");
            }
            said.push(line);
        }
        said
    };
    let said = tokio::time::timeout(BROWSER_TIMEOUT, run).await;
    let mut errors = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_string(&mut errors)).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let ok = matches!(&said, Ok(said) if said.last().is_some_and(|l| l == "ok"))
        && matches!(status, Ok(Ok(s)) if s.success());
    assert!(
        ok,
        "browser.py failed (said {said:?}, exit {status:?}):\n{errors}\nserver log:\n{}",
        server.log()
    );
}
