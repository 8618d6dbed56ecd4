//! The chat page over https in a real browser, once per backend: `tests/web/browser_tls.py`
//! drives headless Chromium (as tests/browser.rs does) against `serve --https`, trusting
//! the server's throwaway CA through an NSS database made with `certutil` (Debian
//! `libnss3-tools`) in a temporary HOME: a Chromium without it must refuse the page, one
//! with it chats over wss with a TCP client on the plain line port.
//!
//! Without those packages the test fails naming them, unless `RINGCAST_SKIP_BROWSER=1`.

mod common;
mod tls_common;

use common::Server;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tls_common::pki;

backend_tests!(the_page_over_https_chats_over_wss_trusting_a_test_ca);

/// What the browser run may take; it needs a few seconds on a quiet machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);
const PYTHON: &str = "/usr/bin/python3";
const PACKAGES: &str = "chromium chromium-driver python3-selenium libnss3-tools";

/// One browser run at a time: the machine may have two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the browser cannot run here, if it cannot.
fn missing_browser() -> Option<String> {
    for (path, package) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        ("/usr/bin/certutil", "libnss3-tools"),
        (PYTHON, "python3"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!("{path} is missing (Debian package {package})"));
        }
    }
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .stderr(Stdio::null())
        .status();
    if !selenium.is_ok_and(|s| s.success()) {
        return Some(format!(
            "{PYTHON} cannot import selenium (Debian package python3-selenium)"
        ));
    }
    None
}

async fn the_page_over_https_chats_over_wss_trusting_a_test_ca(backend: &str) {
    if std::env::var("RINGCAST_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        ringcast_testkit::skip("RINGCAST_SKIP_BROWSER=1");
        return;
    }
    if let Some(why) = missing_browser() {
        panic!(
            "the https browser test needs {PACKAGES}: {why}. Install them (scripts/test.sh \
             does), or set RINGCAST_SKIP_BROWSER=1 to skip this test"
        );
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
