//! TLS connections (see `crate::secure`): a connection on a TLS listener has a session,
//! which opens what is read into plaintext before its codec sees it, and seals each batch
//! its writer takes into one buffer. The rest of the hub does not know: rooms, fan-out
//! and encodings are the same, so a read's chat is still encoded once and shared, and
//! sealed per connection only at this last step.
//!
//! - The handshake has `--tls-handshake-timeout` (the connection's `close_by`); a line
//!   connection becomes a member, and an HTTP one gets the request-head timeout, only
//!   when it completes.
//! - What fails (garbage, plaintext, a failed handshake, a bad record) closes that
//!   connection only, after the alert the session has for it, and is counted
//!   (`ringcast_tls_handshakes_total{result}` before the handshake's end, a
//!   `protocol_error` disconnect after it).
//! - Memory is bounded: at most one sealed batch per connection, of at most
//!   [`seal_max`] plaintext bytes (a buffer longer than that goes alone), and what is
//!   sealed and not yet written counts toward `--max-outbound` with what waits in the
//!   outbox: the outbox's limit shrinks by it until the socket has taken it.

use super::*;
use crate::secure::{Handshake, Opened, Session, SessionError};

/// Most plaintext sealed into one batch (four full TLS records). Smaller when
/// `--max-outbound` is small, so that a batch in flight leaves room to queue behind it.
const SEAL_MAX: usize = 64 * 1024;

/// A TLS connection's session and what the hub keeps beside it.
#[derive(Debug)]
pub(super) struct Secure {
    session: Box<dyn Session>,
    /// Plaintext opened and not decoded yet: the start of a line, message or request
    /// head whose end has not come (the codec's carry, as the I/O layer keeps it for a
    /// plain connection).
    plain: Vec<u8>,
    /// Sealed bytes handed to the writer and not written yet.
    in_flight: usize,
    /// The listener's protocol: what the connection becomes when the handshake ends.
    protocol: Protocol,
    /// How the handshake ended was counted (once per connection).
    counted: bool,
    /// A close_notify (or a fatal alert) was sealed: nothing more is.
    notified: bool,
}

/// The plaintext of one sealed batch, kept alive until the batch is written: a timed
/// chat batch (`metrics::timed_batch`) records its fan-out time when the write carrying
/// it ends, not when it is sealed.
struct Sealed {
    wire: Bytes,
    _plain: Vec<Bytes>,
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        &self.wire
    }
}

impl<H: Clone> Hub<H> {
    /// The session of a new connection on a TLS listener of `protocol`; none (logged)
    /// when the server has no TLS acceptor or it cannot make one.
    pub(super) fn new_session(&self, protocol: Protocol, peer: IpAddr) -> Option<Box<Secure>> {
        let Some(acceptor) = self.shared.tls.as_ref() else {
            tracing::error!(%peer, "a connection on a TLS listener, but no TLS configured");
            return None;
        };
        match acceptor.session(protocol) {
            Ok(session) => Some(Box::new(Secure {
                session,
                plain: Vec::new(),
                in_flight: 0,
                protocol,
                counted: false,
                notified: false,
            })),
            Err(err) => {
                tracing::warn!(%peer, "refused a TLS connection: {err}");
                None
            }
        }
    }

    /// Bytes read from a TLS connection: opened by its session, and the plaintext
    /// handled as a plain connection's input would be. `wire` is taken whole.
    pub(super) fn handle_secure_input(&mut self, id: ClientId, wire: &mut Vec<u8>, now: Tick) {
        let client = &mut self.clients[id];
        let Some(secure) = client.secure.as_mut() else {
            return;
        };
        let was_handshaking = secure.session.is_handshaking();
        let mut plain = std::mem::take(&mut secure.plain);
        let opened = secure.session.open(wire, &mut plain);
        wire.clear();
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) => {
                self.secure_failed(id, err, now);
                return;
            }
        };
        let handshaking = secure.session.is_handshaking();
        if secure.session.wants_write() && !client.writing {
            // The handshake's next flight, a ticket, an answer to a key update: the
            // writer takes it (a write in flight asks again when it ends).
            self.wakes.push_back(id);
        }
        if was_handshaking && !handshaking {
            self.handshake_done(id, now);
        }
        if !handshaking && !plain.is_empty() {
            self.handle_plain(id, &mut plain, now);
        }
        if let Some(secure) = self.clients[id].secure.as_mut() {
            // A long partial line's room is let go once it is decoded.
            if plain.is_empty() && plain.capacity() > 4096 {
                plain = Vec::new();
            }
            secure.plain = plain;
        }
        if opened == Opened::Closed && self.clients[id].closing.is_none() {
            // close_notify: the client has said all it will.
            self.begin_close(id, Disconnect::PeerGone, now);
        }
    }

    /// The handshake completed: a line connection becomes a chat member, an HTTP one
    /// has the request-head timeout to send its request.
    fn handshake_done(&mut self, id: ClientId, now: Tick) {
        let Some(secure) = self.clients[id].secure.as_mut() else {
            return;
        };
        secure.counted = true;
        let protocol = secure.protocol;
        self.counters().tls_handshakes.inc(Handshake::Ok);
        match protocol {
            Protocol::Line => {
                self.clients[id].close_by = Tick::NONE;
                self.add_member(id, now);
            }
            Protocol::Http => self.clients[id].close_by = now.plus(web::HEAD_TIMEOUT),
        }
        self.arm(id);
    }

    /// The session failed: the connection is closed at once, after the alert the
    /// session has for the peer (if no write is in flight, whose records it could
    /// split), and nothing queued is written.
    pub(super) fn secure_failed(&mut self, id: ClientId, err: SessionError, now: Tick) {
        let client = &mut self.clients[id];
        let Some(secure) = client.secure.as_mut() else {
            return;
        };
        let handshaking = secure.session.is_handshaking();
        let alert = match !client.writing && !secure.notified && secure.session.wants_write() {
            true => secure
                .session
                .seal(&[])
                .ok()
                .filter(|alert| !alert.is_empty()),
            false => None,
        };
        secure.notified = true;
        let peer = client.peer;
        if handshaking && !secure.counted {
            secure.counted = true;
            let result = match err {
                SessionError::NotTls(_) => Handshake::NotTls,
                _ => Handshake::Failed,
            };
            self.counters().tls_handshakes.inc(result);
        }
        tracing::debug!(%peer, reason = err.reason(), "TLS connection closed: {err}");
        self.begin_close(id, Disconnect::ProtocolError, now);
        let client = &mut self.clients[id];
        let dropped = client.outbox.queued() as i64;
        client.outbox.clear();
        client.finished = true;
        self.shared
            .stats
            .thread(self.thread)
            .queued_bytes
            .add(-dropped);
        self.shutdowns.push_back((client.handle.clone(), alert));
    }

    /// A TLS connection starts closing: if its handshake had not completed, that is
    /// how it ended.
    pub(super) fn closing_secure(&mut self, id: ClientId) {
        let Some(secure) = self.clients[id].secure.as_mut() else {
            return;
        };
        if secure.session.is_handshaking() && !secure.counted {
            secure.counted = true;
            self.counters().tls_handshakes.inc(Handshake::Closed);
        }
    }

    /// Seals the plaintext the writer took (`batch` from `start` on) into one buffer,
    /// which replaces it.
    pub(super) fn seal_output(
        &mut self,
        id: ClientId,
        batch: &mut Vec<Bytes>,
        start: usize,
        now: Tick,
    ) -> Output {
        let metrics = self.shared.stats.metrics_enabled();
        let client = &mut self.clients[id];
        let Some(secure) = client.secure.as_mut() else {
            return Output::Write;
        };
        match secure.session.seal(&batch[start..]) {
            Ok(wire) if wire.is_empty() => {
                // Nothing to send yet (never after the handshake, when plaintext is
                // queued): no write may go out empty.
                batch.truncate(start);
                client.writing = false;
                Output::Idle
            }
            Ok(wire) => {
                let wire = match metrics {
                    true => Bytes::from_owner(Sealed {
                        wire,
                        _plain: match start {
                            0 => std::mem::take(batch),
                            _ => batch.split_off(start),
                        },
                    }),
                    false => {
                        batch.truncate(start);
                        wire
                    }
                };
                in_flight(client, wire.len(), &self.limits);
                batch.push(wire);
                Output::Write
            }
            Err(err) => {
                batch.truncate(start);
                client.writing = false;
                self.secure_failed(id, err, now);
                Output::Close
            }
        }
    }

    /// What a TLS session has to send with nothing queued: its own records, or its
    /// close_notify once the connection is closing and everything before it is written
    /// (the FIN follows). `None`: nothing; the writer goes on as for a plain connection.
    pub(super) fn session_output(
        &mut self,
        id: ClientId,
        batch: &mut Vec<Bytes>,
        now: Tick,
    ) -> Option<Output> {
        let client = &mut self.clients[id];
        let secure = client.secure.as_mut()?;
        if secure.notified {
            return None;
        }
        let closing = client.closing.is_some()
            && !client.lingering
            && client.held.is_none()
            && !secure.session.is_handshaking();
        if !closing && !secure.session.wants_write() {
            return None;
        }
        if closing {
            secure.session.close_notify();
            secure.notified = true;
        }
        match secure.session.seal(&[]) {
            Ok(wire) if wire.is_empty() => None,
            Ok(wire) => {
                in_flight(client, wire.len(), &self.limits);
                batch.push(wire);
                client.writing = true;
                if !client.stalled_since.is_set() {
                    client.stalled_since = now;
                }
                Some(Output::Write)
            }
            Err(err) => {
                self.secure_failed(id, err, now);
                Some(Output::Close)
            }
        }
    }
}

/// `bytes` sealed and handed to the writer: they count toward `--max-outbound` until
/// written.
fn in_flight<H>(client: &mut Client<H>, bytes: usize, limits: &Limits) {
    if let Some(secure) = client.secure.as_mut() {
        secure.in_flight = bytes;
        client
            .outbox
            .set_limit(limits.max_outbound.saturating_sub(bytes));
    }
}

/// The writer asks for more: its last write has ended, whatever of it was written.
pub(super) fn write_ended<H>(client: &mut Client<H>, limits: &Limits) {
    if client.secure.as_ref().is_some_and(|s| s.in_flight > 0) {
        in_flight(client, 0, limits);
    }
}

/// The socket took `bytes` of the write in flight.
pub(super) fn wrote<H>(client: &mut Client<H>, bytes: usize, limits: &Limits) {
    if let Some(secure) = client.secure.as_ref() {
        let left = secure.in_flight.saturating_sub(bytes);
        in_flight(client, left, limits);
    }
}

/// Whether the connection is a TLS one whose handshake has not completed.
pub(super) fn handshaking<H>(client: &Client<H>) -> bool {
    client
        .secure
        .as_ref()
        .is_some_and(|secure| secure.session.is_handshaking())
}

/// The connection's `close_by` came: for a TLS connection still in its handshake, that
/// is the handshake timeout.
pub(super) fn handshake_due<H>(client: &mut Client<H>, counters: &ThreadCounters) {
    if let Some(secure) = client.secure.as_mut() {
        if secure.session.is_handshaking() && !secure.counted {
            secure.counted = true;
            counters.tls_handshakes.inc(Handshake::Timeout);
            tracing::debug!(peer = %client.peer, "TLS handshake timed out");
        }
    }
}

/// A notice sent as the socket is shut down (a slow consumer's), as a TLS connection
/// must get it: sealed and followed by a close_notify, or not at all (in its handshake,
/// or after its session ended). A plain connection's goes as it is.
pub(super) fn seal_notice(
    secure: &mut Option<Box<Secure>>,
    notice: Option<Bytes>,
) -> Option<Bytes> {
    let Some(secure) = secure.as_mut() else {
        return notice;
    };
    if secure.session.is_handshaking() || secure.notified {
        return None;
    }
    secure.notified = true;
    let mut out = BytesMut::new();
    if let Some(notice) = notice {
        out.extend_from_slice(&secure.session.seal(&[notice]).ok()?);
    }
    secure.session.close_notify();
    out.extend_from_slice(&secure.session.seal(&[]).ok()?);
    Some(out.freeze())
}

/// Most plaintext bytes one sealed batch takes (at least one buffer is taken, however
/// long).
pub(super) fn seal_max(limits: &Limits) -> usize {
    SEAL_MAX.min(limits.max_outbound / 4).max(1)
}
