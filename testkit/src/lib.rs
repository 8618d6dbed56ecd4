//! Support for ringcast's tests and tools, kept out of the server's library and binary.
//!
//! - [`server`]: a `ringcast serve` child process started on port 0, its address read
//!   from its `listening on ADDR` line, its log, memory and descriptors watched.
//! - [`nats`]: a `nats-server` with JetStream on a loopback port, for cluster tests.
//! - [`mod@bench`]: [`BenchCommand`], the one builder of `ringcast bench` command lines.
//! - [`poll`]: the one polling loop: wait until something is so, or fail on a deadline
//!   naming what was awaited and the last thing seen.
//! - [`mod@skip`]: how a test that cannot run here says so (`scripts/test.sh` lists them).
//! - [`soak`]: the soak driver behind the `ringcast-soak` binary and `scripts/soak.sh`:
//!   the server under churn and faults for a set time, checked for leaks and loss.

pub mod bench;
pub mod nats;
pub mod poll;
pub mod server;
pub mod skip;
pub mod soak;

pub use bench::BenchCommand;
pub use nats::NatsServer;
pub use server::ServerProcess;
pub use skip::skip;

/// The most a socket's send buffer can grow to on this machine (the third field of
/// `net.ipv4.tcp_wmem`): anything beyond it that a client does not read cannot leave the
/// server. Panics when the sysctl cannot be read (tests need it).
pub fn max_send_buffer() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    wmem.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem max")
}
