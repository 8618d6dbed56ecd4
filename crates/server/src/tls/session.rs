//! One connection's TLS session: a rustls `ServerConnection` fed and drained through
//! the hub's buffers (nothing here touches a socket).

use bytes::Bytes;
use ringcast_core::secure::{Opened, Session, SessionError};
use rustls::{ServerConfig, ServerConnection};
use std::io::{IoSlice, Read as _, Write as _};
use std::sync::Arc;

/// Most plaintext rustls buffers to send. The hub seals a batch of bounded size and
/// takes the records at once, so this only bounds what a session can hold if it is
/// asked for more: a full session refuses plaintext instead of growing.
const SEND_BUFFER_LIMIT: usize = 256 * 1024;

pub(super) struct RustlsSession {
    conn: ServerConnection,
}

impl std::fmt::Debug for RustlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("version", &self.conn.protocol_version())
            .finish()
    }
}

impl RustlsSession {
    pub(super) fn new(config: Arc<ServerConfig>) -> Result<Self, SessionError> {
        let mut conn = ServerConnection::new(config)
            .map_err(|err| SessionError::Handshake(err.to_string()))?;
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Ok(RustlsSession { conn })
    }

    /// What rustls said went wrong, as the core counts it: bytes that are not TLS
    /// records at all before the handshake completed are `NotTls` (plaintext HTTP, a
    /// chat line, garbage).
    fn failure(&self, err: rustls::Error) -> SessionError {
        let text = err.to_string();
        match (self.conn.is_handshaking(), err) {
            (true, rustls::Error::InvalidMessage(_)) => SessionError::NotTls(text),
            (true, _) => SessionError::Handshake(text),
            (false, _) => SessionError::Protocol(text),
        }
    }

    /// Moves every record rustls has to send into `out`.
    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), SessionError> {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            self.conn
                .write_tls(out)
                .map_err(|err| SessionError::Protocol(err.to_string()))?;
        }
        Ok(())
    }
}

impl Session for RustlsSession {
    fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<Opened, SessionError> {
        let mut wire = wire;
        let mut closed = false;
        while !wire.is_empty() {
            // rustls takes what fits its buffer (a record or so); the rest goes round again
            // once this is processed and its plaintext moved out.
            match self.conn.read_tls(&mut wire) {
                Ok(_) => {}
                Err(err) => return Err(SessionError::Protocol(err.to_string())),
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|err| self.failure(err))?;
            let ready = state.plaintext_bytes_to_read();
            closed |= state.peer_has_closed();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(|err| SessionError::Protocol(err.to_string()))?;
            }
        }
        Ok(if closed { Opened::Closed } else { Opened::Open })
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    fn seal(&mut self, plain: &[Bytes]) -> Result<Bytes, SessionError> {
        let total: usize = plain.iter().map(Bytes::len).sum();
        // Records add 22 bytes at most each (TLS 1.3: header, tag, content type).
        let mut out = Vec::with_capacity(total + total / 512 + 256);
        self.flush(&mut out)?;
        if total > 0 && !self.conn.is_handshaking() {
            let mut slices: Vec<IoSlice<'_>> = plain
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| IoSlice::new(b))
                .collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                // One call seals the buffers together: records are filled across them,
                // not one (or more) per buffer.
                let n = self
                    .conn
                    .writer()
                    .write_vectored(rest)
                    .map_err(|err| SessionError::Protocol(err.to_string()))?;
                self.flush(&mut out)?;
                if n == 0 {
                    return Err(SessionError::Protocol("send buffer full".into()));
                }
                IoSlice::advance_slices(&mut rest, n);
            }
        }
        Ok(Bytes::from(out))
    }

    fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}
