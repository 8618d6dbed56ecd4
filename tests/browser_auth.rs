//! The chat page with `--auth required` in headless Chromium, once per backend:
//! `tests/web/browser_auth.py` opens it at `/#token=VALID` (it chats as the token's `sub`
//! with a TCP client) and with a bad token (it shows why and never chats). Tokens are
//! minted as `ringcast token` mints them.
//!
//! Without Chromium, chromedriver and python3-selenium the test fails naming them, unless
//! `RINGCAST_SKIP_BROWSER=1`.

mod common;

use common::browser::{self, PYTHON};
use common::Server;
use ringcast_server::jwt::{mint, TokenSpec};
use std::process::Stdio;
use std::time::Duration;

backend_tests!(the_page_chats_as_its_tokens_sub_and_a_bad_token_never_chats);

/// What the whole browser run may take; a few seconds on a quiet machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
const SECRET: &str = "page-secret";

/// One Chromium at a time: the machine may have two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn token(sub: &str, secret: &str) -> String {
    let spec = TokenSpec {
        sub: sub.to_owned(),
        ttl: Duration::from_secs(600),
        ..TokenSpec::default()
    };
    mint(&spec, secret.as_bytes()).expect("minting a token")
}

async fn the_page_chats_as_its_tokens_sub_and_a_bad_token_never_chats(backend: &str) {
    if !browser::ready("the browser auth test", &[]) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let key = std::env::temp_dir().join(format!(
        "ringcast-browser-auth-{backend}-{}.key",
        std::process::id()
    ));
    std::fs::write(&key, format!("{SECRET}\n")).expect("writing the key file");
    let key = key.to_str().expect("a UTF-8 temp path");
    let server = Server::start(backend, &["--auth", "required", "--jwt-key", key]);
    let root = env!("CARGO_MANIFEST_DIR");
    let child = tokio::process::Command::new(PYTHON)
        .arg(format!("{root}/tests/web/browser_auth.py"))
        .args([
            server.http_addr().to_string(),
            server.addr.to_string(),
            token("ann", SECRET),
            token("bob", SECRET),
            token("ann", "another-secret"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting tests/web/browser_auth.py");
    let run = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await;
    let output = run
        .expect("browser_auth.py finished in time")
        .expect("browser_auth.py ran");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && said.lines().last() == Some("ok"),
        "browser_auth.py failed (said {said:?}, exit {:?}):\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
}
