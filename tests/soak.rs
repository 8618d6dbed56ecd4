//! The short soak through the real binary, for each backend, so `cargo test` covers it:
//! healthy clients must lose and reorder nothing while churn, slow consumers, garbage,
//! resets, half-closes and bursts past `--max-clients` hit the same server, RSS and fds
//! must stay flat, and the server must exit 0 on SIGTERM. See `src/soak/`.

use std::process::Command;

fn soak(backend: &str) {
    let report = std::env::temp_dir().join(format!(
        "ringcast-soak-test-{backend}-{}.json",
        std::process::id()
    ));
    let bin = env!("CARGO_BIN_EXE_ringcast");
    let out = Command::new(bin)
        .args([
            "soak",
            "--backends",
            backend,
            "--duration",
            "15s",
            "--server-bin",
            bin,
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("running ringcast soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "soak {backend} failed: {}",
        out.status
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("soak report")).expect("JSON");
    let _ = std::fs::remove_file(&report);
    let run = &json["runs"][0];
    assert_eq!(json["passed"], true);
    assert_eq!(run["backend"], backend);
    // The soak did what it claims: every kind of fault happened and lines were checked.
    for kind in [
        "slow_consumer",
        "garbage_line",
        "over_long_line",
        "invalid_command",
        "reset",
        "half_close",
        "burst_refused",
    ] {
        assert!(
            run["faults"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} injected"
        );
    }
    assert!(run["messages_verified"].as_u64().unwrap_or(0) > 1000);
    assert_eq!(run["fds"]["last"], run["fds"]["baseline"]);
}

#[test]
fn short_soak_uring() {
    soak("uring");
}

#[test]
fn short_soak_epoll() {
    soak("epoll");
}
