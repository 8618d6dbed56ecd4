//! What the cancellation tests of both io_uring backends share: running a test in a
//! process of its own (so that no other test's sockets or buffers count) and counting
//! the process's descriptors.

const ISOLATED: &str = "RINGCAST_ISOLATED_TEST";

/// True in the re-run process; in the first one, re-runs `name` alone and checks it
/// passed.
pub(crate) fn isolated(name: &str) -> bool {
    if std::env::var_os(ISOLATED).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED, "1")
        .output()
        .expect("re-running the test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} did not pass in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

/// The descriptors this process has open.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
