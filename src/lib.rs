//! ringcast: a chat broadcaster built to measure what io_uring buys a fan-out server.
//!
//! A tour of the layers, each depending only on the ones above it:
//!
//! - [`proto`]: bytes only. The line decoder (partial input gives `Ok(None)`, memory is
//!   bounded by `--max-line`), the command parser, and the formatting of every line the
//!   server sends.
//! - [`core`](mod@core): the sans-IO server. Rooms, names, per-client byte-bounded outboxes and the
//!   slow-consumer policy. It takes events and returns what to do; it knows no runtime.
//! - [`server`]: the I/O. One thread per core, each running a [`core::Hub`] for its
//!   clients, with two interchangeable backends that only move bytes: `uring`
//!   (tokio-uring, completion-based) and `epoll` (tokio, readiness-based).
//! - [`bench`](mod@bench): the load harness (`ringcast bench`, `ringcast compare`). It talks to a
//!   server only over TCP, as users do.
//!
//! What only tests and tools need (starting server processes, the soak driver) is in the
//! `ringcast-testkit` crate beside this one, which the `ringcast` binary never links.

pub mod bench;
pub mod cluster;
pub mod core;
pub mod proto;
pub mod server;
pub mod sys;
pub mod units;
