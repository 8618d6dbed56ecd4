//! The chat page over https in a real browser, once per backend: `tests/web/browser_tls.py`
//! drives headless Chromium (as tests/browser.rs does) against `serve --https`, trusting
//! the server's throwaway CA through an NSS database made with `certutil` (Debian
//! `libnss3-tools`) in a temporary HOME: a Chromium without it must refuse the page, one
//! with it chats over wss with a TCP client on the plain line port.
//!
//! Without those packages the test fails naming them, unless `RINGCAST_SKIP_BROWSER=1`.

mod common;
mod tls_common;

use common::browser::{self, PYTHON};
use common::Server;
use std::process::Stdio;
use std::time::Duration;
use tls_common::pki;

backend_tests!(the_page_over_https_chats_over_wss_trusting_a_test_ca);

/// What the browser run may take; it needs a few seconds on a quiet machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// One browser run at a time: the machine may have two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn the_page_over_https_chats_over_wss_trusting_a_test_ca(backend: &str) {
    if !browser::ready(
        "the https browser test",
        &[("/usr/bin/certutil", "libnss3-tools")],
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(format!(
        "ringcast-browser-tls-{backend}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let files = pki(&dir.join("pki"));
    let cert = files.cert.to_str().expect("a UTF-8 temp path");
    let key = files.key.to_str().expect("a UTF-8 temp path");
    let flags = [
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--https",
        "127.0.0.1:0",
    ];
    let mut server = Server::start(backend, &flags);
    let https = server.listening("https");
    let root = env!("CARGO_MANIFEST_DIR");
    let child = tokio::process::Command::new(PYTHON)
        .arg(format!("{root}/tests/web/browser_tls.py"))
        .args([
            &https.to_string(),
            &server.addr.to_string(),
            &files.ca.display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child).await;
    let ok = matches!(&output, Ok(Ok(out))
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim_end().ends_with("ok"));
    let said = match &output {
        Ok(Ok(out)) => format!(
            "exit {:?}, stdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        other => format!("{other:?}"),
    };
    assert!(
        ok,
        "browser_tls.py failed ({said})\nserver log:\n{}",
        server.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
