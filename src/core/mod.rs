//! The sans-IO core: rooms, names, per-client outboxes and limits. It is fed events
//! (bytes read, a hand-off from another thread, a peer that went away) and says what to
//! do (which writers to wake, which connections to cut). It has no tokio in it.

mod directory;
mod hub;
mod outbox;
mod stats;

pub use directory::{Directory, Full, NameTaken};
pub use hub::{ClientId, Handoff, Hub, Limits, Output};
pub use outbox::{CloseReason, Outbox, Overflow};
pub use stats::{Stats, Totals};
