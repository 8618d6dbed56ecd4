//! The sans-IO core: rooms, names, per-client outboxes, limits and deadlines. It is fed
//! events with the time they happened (bytes read, a hand-off from another thread, a
//! write's progress, a peer that went away, a deadline that came) and says what to do
//! through one question, [`Hub::poll_action`] (which writers to wake, which sockets to
//! shut down), and when to ask again, [`Hub::poll_timeout`]. It has no tokio in it, and
//! no TLS library: [`secure`] is the trait a connection's record layer implements.

pub mod auth;
pub mod cluster;
mod codec;
pub mod counters;
mod directory;
pub mod history;
mod hub;
pub mod metrics;
mod outbox;
pub mod publish;
pub mod secure;
mod stats;
mod time;
mod web;

pub use cluster::Origin;
pub use counters::{HistogramTotals, Probe};
pub use directory::{Directory, NameTaken, Refused, LOBBY};
pub use history::{History, HistoryConfig};
pub use hub::{
    Action, ClientId, Handoff, Hub, Limits, ListenerKind, Output, Protocol, Shared, ACCEPT_BACKOFF,
    LINGER, RATE_NOTICE_INTERVAL,
};
pub use outbox::{Outbox, Overflow, MAX_OUTBOX_BYTES};
pub use stats::{
    this_backend, this_thread, AuthOutcome, CoreCounters, Disconnect, ErrorKind, HttpStatus,
    Reading, Refusal, ServerInfo, Stats, ThreadBinding, ThreadCounters, Totals, Transport,
    FANOUT_BOUNDS_NS, WRITE_LINES_BOUNDS,
};
pub use time::RateLimit;
pub use web::{CHAT_PAGE, HEAD_TIMEOUT};
