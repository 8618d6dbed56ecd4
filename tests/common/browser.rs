//! What the headless-Chromium tests (tests/browser.rs, tests/browser_tls.rs) need before
//! they start, checked one way for both.

use std::path::Path;
use std::process::{Command, Stdio};

/// Debian's python3, whose modules (selenium) the browser scripts use.
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether the browser test may run: false (after printing `SKIPPED:`) when
/// `RINGCAST_SKIP_BROWSER=1`. Panics naming what is missing otherwise: Chromium,
/// chromedriver, python3 with selenium, and each of `extra` (a path and the Debian
/// package that provides it).
pub fn ready(test: &str, extra: &[(&str, &str)]) -> bool {
    if std::env::var("RINGCAST_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        ringcast_testkit::skip("RINGCAST_SKIP_BROWSER=1");
        return false;
    }
    let mut needs = vec![
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        (PYTHON, "python3"),
    ];
    needs.extend_from_slice(extra);
    let packages: Vec<&str> = needs
        .iter()
        .map(|(_, package)| *package)
        .chain(["python3-selenium"])
        .collect();
    if let Some(why) = missing(&needs) {
        panic!(
            "{test} needs {}: {why}. Install them (scripts/test.sh does), or set \
             RINGCAST_SKIP_BROWSER=1 to skip this test",
            packages.join(" ")
        );
    }
    true
}

fn missing(needs: &[(&str, &str)]) -> Option<String> {
    for (path, package) in needs {
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
