//! A record layer (TLS) under a connection, as the hub drives it: what it reads is opened
//! into plaintext before any codec sees it, and what its writer takes is sealed into one
//! buffer at the last step. The core defines the traits and knows no TLS library; the
//! server implements them (with rustls), so no backend has TLS code of its own.
//!
//! Encode-once survives up to the seal: a fan-out's shared `Bytes` are built once and
//! queued to every member as before; each TLS member's writer seals its batch for its
//! own connection when it takes it.

use crate::hub::Protocol;
use bytes::Bytes;
use std::fmt::Debug;

/// What reading some records did besides giving plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// More may come.
    Open,
    /// The peer ended the session (a close_notify alert): nothing more will be read.
    Closed,
}

/// Why a session failed; the connection is closed (after any alert the session has to
/// send). `reason` is short, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// What came was not TLS at all: plaintext (an HTTP request, a chat line) or
    /// garbage on a TLS port.
    #[error("not TLS: {0}")]
    NotTls(String),
    /// The handshake failed (no common version or cipher, a bad message, an alert from
    /// the client, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// After the handshake: a record that does not decrypt, an unexpected message, an
    /// alert from the peer, ...
    #[error("TLS error: {0}")]
    Protocol(String),
}

impl SessionError {
    /// A short name, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::NotTls(_) => "not_tls",
            SessionError::Handshake(_) => "handshake",
            SessionError::Protocol(_) => "protocol",
        }
    }
}

/// One connection's record layer: a TLS server session over the hub's own buffers.
///
/// The session buffers only what one record needs: wire bytes are taken whole by
/// [`Session::open`] and its plaintext handed out at once, and [`Session::seal`] returns
/// everything it has to send. It never touches a socket.
pub trait Session: Send + Debug {
    /// Takes bytes read from the socket, all of them, and appends the plaintext they
    /// complete to `plain`.
    fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<Opened, SessionError>;
    /// The handshake has not completed yet: no plaintext comes or goes.
    fn is_handshaking(&self) -> bool;
    /// The session has records of its own to send (its handshake flight, an alert, a
    /// session ticket, the answer to a key update).
    fn wants_write(&self) -> bool;
    /// The records to write next: the session's own pending ones first, then `plain`
    /// sealed in order (nothing of it during the handshake). Empty when there is
    /// nothing to send.
    fn seal(&mut self, plain: &[Bytes]) -> Result<Bytes, SessionError>;
    /// Queues a close_notify alert, which the next [`Session::seal`] returns.
    fn close_notify(&mut self);
}

/// Makes the session of each new connection on a TLS listener.
pub trait Acceptor: Send + Sync + Debug {
    /// A server session for a connection on a TLS listener of `protocol` (the HTTP one
    /// offers ALPN `http/1.1`).
    fn session(&self, protocol: Protocol) -> Result<Box<dyn Session>, SessionError>;
}

/// How a TLS connection's handshake ended, counted per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed.
    Ok,
    /// Failed: the peer spoke TLS, but the handshake did not work out.
    Failed,
    /// The peer did not speak TLS (plaintext or garbage on a TLS port).
    NotTls,
    /// Not completed within `--tls-handshake-timeout`.
    Timeout,
    /// The peer went away (or the server shut down) before it completed.
    Closed,
}

crate::label!(Handshake, "result", {
    Ok = "ok",
    Failed = "failed",
    NotTls = "not_tls",
    Timeout = "timeout",
    Closed = "closed",
});
