//! A skipped test must be seen, not pass as `ok`: [`skip`] says so on stderr and, when
//! `scripts/test.sh` asks for it through [`LOG_VAR`], appends the same line to a file that
//! the script lists at the end of the run (cargo test hides a passing test's stderr).

use std::fmt::Display;
use std::io::Write;

/// The file `scripts/test.sh` names for the skip lines of the whole run.
pub const LOG_VAR: &str = "RINGCAST_SKIP_LOG";

/// Records that the calling test skips its checks, and why; the caller then returns.
/// The line reads `SKIPPED: <test binary>::<test name>: <why>`.
pub fn skip(why: impl Display) {
    let line = format!("SKIPPED: {}: {why}", current_test());
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(LOG_VAR) {
        // One write of a whole line to a file opened for appending: lines of tests
        // running at once (or in several test binaries) do not mix.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
        if let Err(err) = appended {
            panic!("{line}; and it could not be noted in {path:?}: {err}");
        }
    }
}

/// The running test as `binary::name`: libtest names each test's thread after the test
/// (a test run on the main thread, with one test thread, gives the binary alone).
fn current_test() -> String {
    let binary = std::env::args()
        .next()
        .and_then(|path| {
            let stem = std::path::Path::new(&path)
                .file_stem()?
                .to_str()?
                .to_owned();
            // Cargo names test binaries `NAME-HASH`.
            Some(match stem.rsplit_once('-') {
                Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    name.to_owned()
                }
                _ => stem,
            })
        })
        .unwrap_or_else(|| "?".into());
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}
