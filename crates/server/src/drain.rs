//! Shutdown of one worker thread, in one order for every driver (the async worker of the
//! `uring` and `epoll` backends, and the `uring-direct` completion loop).
//!
//! 1. [`Drain::LineListener`]: input is read and dropped, the line listeners (plain and
//!    TLS) stop; wait until their accepts have ended.
//! 2. [`Drain::Inbox`]: this thread drops its senders to the other threads and to the
//!    cluster bridge (readers hand off right after reading, so with input ignored
//!    nothing more is sent); wait until every other thread has dropped its senders to
//!    this one: then every line accepted anywhere is in this thread's outboxes.
//! 3. [`Drain::Members`]: every client starts closing with the farewell, each with
//!    `--drain-timeout` (the hub's deadline); wait until no chat member is left.
//! 4. [`Drain::HttpListener`] (with an HTTP listener, plain or TLS): the HTTP listeners
//!    have answered `/healthz` with 503 so far; they stop now; wait until their accepts
//!    have ended.
//! 5. [`Drain::Connections`]: requests that came during the drain and are unanswered
//!    are closed too; wait until the hub holds no connection.
//!
//! The stages and what the hub does on entering each are here; what a driver does to its
//! sockets and how it waits are its own.

use ringcast_core::{Hub, Protocol};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    Running,
    LineListener,
    Inbox,
    Members,
    HttpListener,
    Connections,
    Done,
}

impl Drain {
    /// The stage after this one; a thread without an HTTP listener skips its stage.
    pub(crate) fn next(self, has_http: bool) -> Drain {
        match self {
            Drain::Running => Drain::LineListener,
            Drain::LineListener => Drain::Inbox,
            Drain::Inbox => Drain::Members,
            Drain::Members if has_http => Drain::HttpListener,
            Drain::Members | Drain::HttpListener => Drain::Connections,
            Drain::Connections | Drain::Done => Drain::Done,
        }
    }

    /// Does the hub's part of entering this stage (the caller then carries out the
    /// hub's actions).
    pub(crate) fn enter<H: Clone>(self, hub: &mut Hub<H>, has_http: bool, now: Instant) {
        match self {
            Drain::LineListener => hub.stop_input(),
            Drain::Members => hub.shutdown_all(now),
            // Requests that came while the chat clients drained, still unanswered.
            Drain::Connections if has_http => hub.shutdown_all(now),
            _ => {}
        }
    }

    /// Whether a listener of `protocol` still takes connections at this stage.
    pub(crate) fn accepts(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Line => self == Drain::Running,
            Protocol::Http => matches!(
                self,
                Drain::Running | Drain::LineListener | Drain::Inbox | Drain::Members
            ),
        }
    }

    /// Whether the hub is where this stage waits for it to be (the other conditions,
    /// listeners and inboxes, are the driver's to see).
    pub(crate) fn hub_done<H: Clone>(self, hub: &Hub<H>) -> bool {
        match self {
            Drain::Members => hub.members() == 0,
            Drain::Connections => hub.is_empty(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Drain;
    use ringcast_core::Protocol;

    #[test]
    fn the_line_listener_stops_first_and_http_last() {
        let mut stages = vec![Drain::Running];
        while *stages.last().unwrap() != Drain::Done {
            stages.push(stages.last().unwrap().next(true));
        }
        assert_eq!(
            stages,
            [
                Drain::Running,
                Drain::LineListener,
                Drain::Inbox,
                Drain::Members,
                Drain::HttpListener,
                Drain::Connections,
                Drain::Done
            ]
        );
        assert_eq!(Drain::Members.next(false), Drain::Connections);
        let line: Vec<bool> = stages.iter().map(|s| s.accepts(Protocol::Line)).collect();
        let http: Vec<bool> = stages.iter().map(|s| s.accepts(Protocol::Http)).collect();
        assert_eq!(line, [true, false, false, false, false, false, false]);
        assert_eq!(http, [true, true, true, true, false, false, false]);
    }
}
