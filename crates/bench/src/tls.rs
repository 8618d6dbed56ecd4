//! TLS for the harness's clients (`bench --tls`): rustls used sans-IO. Each simulated
//! client owns one [`Session`] (a rustls `ClientConnection`) and the harness keeps reading
//! its socket itself, one `recvmsg` per read with that read's kernel receive stamp
//! ([`crate::rx`]): the ciphertext a read brought is handed to the session, and the
//! plaintext it completes (whole records only) is decoded at once, so each delivery keeps
//! the stamp of the read that carried the last byte of its record. A tokio-rustls stream
//! would hide the socket reads, and with them the stamps.
//!
//! The crypto provider is `ring`: it builds with a C compiler alone, where aws-lc-rs (the
//! rustls default) needs cmake; the server uses it too.
//!
//! Per client the cost is the session's own buffers (rustls keeps a partial record and
//! the plaintext not yet taken); the buffer ciphertext is read into is shared by the
//! clients of a thread (`worker::link`), and everything written is sealed into the
//! writer's own buffer and written out at once.

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up or went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the CA certificates in {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCa { path: PathBuf },
    #[error("{path}: a CA certificate rustls refuses: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("--tls-name {0:?} is neither a DNS name nor an IP address")]
    Name(String),
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("TLS: {0}")]
    Io(#[from] std::io::Error),
}

impl From<TlsError> for std::io::Error {
    fn from(err: TlsError) -> Self {
        match err {
            TlsError::Io(err) => err,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// What every client's TLS session is made from: the trusted CAs, and the name the
/// server's certificate is checked against.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// `--tls-name`; without it, the IP address each client connects to (an IP SAN).
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the certificates in the PEM file `ca`; offers `alpn` when given (WebSocket:
    /// `http/1.1`, as browsers do on an https listener).
    pub fn new(ca: &Path, name: Option<&str>, alpn: Option<&[u8]>) -> Result<Self, TlsError> {
        let read_err = |source| TlsError::ReadCa {
            path: ca.to_path_buf(),
            source,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(read_err)? {
            roots
                .add(cert.map_err(read_err)?)
                .map_err(|source| TlsError::BadCa {
                    path: ca.to_path_buf(),
                    source,
                })?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa {
                path: ca.to_path_buf(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if let Some(protocol) = alpn {
            config.alpn_protocols = vec![protocol.to_vec()];
        }
        let name = name
            .map(|n| ServerName::try_from(n.to_string()).map_err(|_| TlsError::Name(n.into())))
            .transpose()?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }

    /// The name a connection to `addr` checks the certificate against.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// A new connection's rustls state (for a blocking `rustls::StreamOwned`).
    pub fn connection(&self, addr: SocketAddr) -> Result<ClientConnection, TlsError> {
        Ok(ClientConnection::new(
            self.config.clone(),
            self.server_name(addr),
        )?)
    }

    /// A new connection's session, its ClientHello ready to send.
    pub fn session(&self, addr: SocketAddr) -> Result<Session, TlsError> {
        Ok(Session::new(self.connection(addr)?))
    }
}

/// One client's TLS session over buffers the harness owns: ciphertext in from the
/// socket reads, plaintext out to the codec; plaintext in from the codec, records out to
/// the socket.
pub struct Session {
    conn: ClientConnection,
}

impl Session {
    pub fn new(mut conn: ClientConnection) -> Self {
        // What is sealed is written out at once by the caller (`seal` drains it), so
        // rustls's own cap on queued records would only turn a large write into an
        // error.
        conn.set_buffer_limit(None);
        Session { conn }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Records the session has to send of its own (the handshake, a key update's
    /// answer, an alert).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Takes the ciphertext one socket read brought, appending to `plain` the plaintext
    /// of every record it completed (a partial record waits in the session for the next
    /// read); `false` once the server has closed the session (close_notify), after which
    /// nothing more is read.
    pub fn absorb(&mut self, mut cipher: &[u8], plain: &mut BytesMut) -> Result<bool, TlsError> {
        while !cipher.is_empty() {
            // rustls takes at most a few KiB per call, and its plaintext is taken after
            // each, so its buffers stay at a record or so.
            let n = self.conn.read_tls(&mut cipher)?;
            let state = self.conn.process_new_packets()?;
            self.take_plaintext(plain)?;
            if n == 0 || state.peer_has_closed() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Moves the decrypted plaintext into `plain`, chunk by chunk (no zero-filling).
    fn take_plaintext(&mut self, plain: &mut BytesMut) -> std::io::Result<()> {
        let mut reader = self.conn.reader();
        loop {
            let n = match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(chunk) => {
                    plain.extend_from_slice(chunk);
                    chunk.len()
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                // A TCP end without close_notify: the socket read says so too.
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(err) => return Err(err),
            };
            reader.consume(n);
        }
    }

    /// Encrypts `plain` and appends the records to `out`, after any the session had to
    /// send of its own. Before the handshake is done rustls holds the plaintext back and
    /// sends it once it is.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.conn.writer().write_all(plain)?;
        self.pending(out);
        Ok(())
    }

    /// Appends to `out` the records the session has to send.
    pub fn pending(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
