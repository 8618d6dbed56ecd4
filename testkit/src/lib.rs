//! Support for ringcast's tests and tools, kept out of the server's library and binary.
//!
//! - [`server`]: a `ringcast serve` child process started on port 0, its address read
//!   from its `listening on ADDR` line, its log, memory and descriptors watched.
//! - [`nats`]: a `nats-server` with JetStream on a loopback port, for cluster tests.
//! - [`soak`]: the soak driver behind the `ringcast-soak` binary and `scripts/soak.sh`:
//!   the server under churn and faults for a set time, checked for leaks and loss.

pub mod nats;
pub mod server;
pub mod soak;

pub use nats::NatsServer;
pub use server::ServerProcess;
