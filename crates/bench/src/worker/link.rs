//! A client's connection, plain or under TLS (`--tls`), as its two halves: the read half
//! reads the socket (with `recvmsg` and its receive stamp where it counts) and hands
//! what came to the TLS session, if any; the write half seals what the codec framed and
//! writes it. Both halves share the session (one thread: an `Rc<RefCell>` borrowed only
//! between awaits), so records leave in the order rustls made them.

use super::client::reserve;
use crate::rx;
use crate::tls::{Session, TlsClient};
use anyhow::Context as _;
use bytes::BytesMut;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::rc::Rc;
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub(super) type SessionRef = Rc<RefCell<Session>>;

/// Ciphertext one read takes at most: a full TLS record with room to spare.
const CIPHER_READ: usize = 32 * 1024;

thread_local! {
    /// The buffer every TLS client of a thread reads ciphertext into: the session takes
    /// it whole before the next read, so one per thread is enough (per client it would
    /// be 32 KiB each for nothing).
    static CIPHER: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(CIPHER_READ));
}

/// The write half: what a codec framed goes out through [`WriteHalf::send`].
pub(super) struct WriteHalf {
    half: OwnedWriteHalf,
    tls: Option<SessionRef>,
    /// Sealed records on their way out (reused).
    sealed: Vec<u8>,
}

impl WriteHalf {
    pub(super) fn plain(half: OwnedWriteHalf) -> Self {
        WriteHalf {
            half,
            tls: None,
            sealed: Vec::new(),
        }
    }

    /// Writes `bytes` (sealed into records first under TLS).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.half.write_all(bytes).await;
        };
        self.sealed.clear();
        tls.borrow_mut().seal(bytes, &mut self.sealed)?;
        self.half.write_all(&self.sealed).await
    }

    /// Writes the records the session made of its own (the handshake, answers to what
    /// the server sent).
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        self.sealed.clear();
        tls.borrow_mut().pending(&mut self.sealed);
        if self.sealed.is_empty() {
            return Ok(());
        }
        self.half.write_all(&self.sealed).await
    }
}

/// One read's outcome on the stamped path.
pub(super) struct Received {
    /// Socket bytes read; 0: the connection (or its TLS session) ended.
    pub(super) n: usize,
    /// The read filled its buffer (so it may have stopped inside a receive-queue buffer).
    pub(super) full: bool,
    /// The kernel's receive stamp, CLOCK_REALTIME ns.
    pub(super) stamp: Option<u64>,
}

/// The read half: appends plaintext to the buffer it is given.
pub(super) struct ReadHalf {
    half: OwnedReadHalf,
    tls: Option<SessionRef>,
    /// The server closed the TLS session (close_notify) in a read that also brought
    /// plaintext: the next read reports the end.
    ended: bool,
}

impl ReadHalf {
    pub(super) fn plain(half: OwnedReadHalf) -> Self {
        ReadHalf {
            half,
            tls: None,
            ended: false,
        }
    }

    pub(super) fn socket(&self) -> &OwnedReadHalf {
        &self.half
    }

    pub(super) async fn readable(&self) -> std::io::Result<()> {
        self.half.readable().await
    }

    /// Whether the session has records of its own to send (after a read).
    pub(super) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
    }

    /// Appends what the socket has to `buf` (a plain read: for the handshakes and the
    /// join, whose arrival times nobody measures); `Ok(false)` at end of stream.
    pub(super) async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<bool> {
        loop {
            match self.try_read_more(buf) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    self.half.readable().await?
                }
                other => return other,
            }
        }
    }

    /// [`ReadHalf::read_more`] without waiting: `WouldBlock` when the socket has nothing.
    /// Under TLS a read may bring no plaintext (part of a record, a session ticket).
    pub(super) fn try_read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let Some(tls) = &self.tls else {
            reserve(buf);
            return Ok(self.half.try_read_buf(buf)? > 0);
        };
        CIPHER.with_borrow_mut(|cipher| {
            cipher.clear();
            cipher.reserve(CIPHER_READ);
            if self.half.try_read_buf(cipher)? == 0 {
                return Ok(false);
            }
            self.ended = !tls.borrow_mut().absorb(&cipher[..], buf)?;
            Ok(true)
        })
    }

    /// One `recvmsg` with its receive stamp: its bytes, or under TLS the plaintext of the
    /// records it completed, appended to `plain`. `WouldBlock` when the socket has
    /// nothing (tokio then waits for readiness again).
    pub(super) fn try_recv_stamped(&mut self, plain: &mut BytesMut) -> std::io::Result<Received> {
        if self.ended {
            return Ok(Received {
                n: 0,
                full: false,
                stamp: None,
            });
        }
        let Some(tls) = &self.tls else {
            return recv_into(&self.half, plain);
        };
        CIPHER.with_borrow_mut(|cipher| {
            cipher.clear();
            cipher.reserve(CIPHER_READ);
            let got = recv_into(&self.half, cipher)?;
            if got.n > 0 {
                self.ended = !tls.borrow_mut().absorb(&cipher[..], plain)?;
            }
            Ok(got)
        })
    }
}

/// One `recvmsg` appending to `target`'s spare capacity.
fn recv_into(half: &OwnedReadHalf, target: &mut BytesMut) -> std::io::Result<Received> {
    let fd = half.as_ref().as_fd();
    let room = target.capacity() - target.len();
    let mut drained = None;
    let read = half.as_ref().try_io(tokio::io::Interest::READABLE, || {
        let mut control = [0u8; rx::CONTROL_LEN];
        let (n, stamp) = rx::recv_stamped(fd, target.spare_capacity_mut(), &mut control)?;
        if n > 0 && n < room {
            // A read shorter than the buffer emptied the receive queue: told "would
            // block", tokio forgets the readiness this read used (not one that came after
            // it), so the next read waits for data instead of making a recvmsg that finds
            // none, as tokio's own `poll_read` does. That halves the system calls of a
            // harness that keeps up.
            drained = Some((n, stamp));
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok((n, stamp))
    });
    let (n, stamp) = drained.map_or(read, Ok)?;
    // SAFETY: recvmsg initialised the first `n` bytes of the spare capacity, and
    // `n <= room` (it wrote into no more than the spare capacity it was given).
    unsafe { target.set_len(target.len() + n) };
    Ok(Received {
        n,
        full: n == room,
        stamp,
    })
}

/// Splits a connected stream into its halves; under TLS, runs the handshake first (its
/// failure, e.g. a certificate the CA did not sign, is the error). What the server sent
/// after the handshake is left in `buf`.
pub(super) async fn open(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    buf: &mut BytesMut,
) -> anyhow::Result<(ReadHalf, WriteHalf)> {
    let (rd, wr) = stream.into_split();
    let Some(tls) = tls else {
        return Ok((ReadHalf::plain(rd), WriteHalf::plain(wr)));
    };
    let session = Rc::new(RefCell::new(tls.session(addr)?));
    let mut rd = ReadHalf {
        half: rd,
        tls: Some(session.clone()),
        ended: false,
    };
    let mut wr = WriteHalf {
        half: wr,
        tls: Some(session.clone()),
        sealed: Vec::new(),
    };
    loop {
        // The ClientHello first, then whatever each read made the session answer (its
        // Finished last).
        wr.flush().await.context("TLS handshake: writing")?;
        if !session.borrow().is_handshaking() {
            return Ok((rd, wr));
        }
        anyhow::ensure!(
            rd.read_more(buf).await.context("TLS handshake")?,
            "server closed the connection during the TLS handshake"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;

    fn realtime_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn server_config(pki: &cert::TestPki) -> Arc<rustls::ServerConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// A real socket and a rustls server on a thread: the handshake, a sealed line to the
    /// server, and lines back whose reads carry kernel receive stamps taken between the
    /// server's write and the read that completed the record.
    #[test]
    fn a_tls_link_handshakes_seals_and_stamps_the_read_that_completes_a_record() {
        let dir = std::env::temp_dir().join(format!("ringcast-link-tls-{}", std::process::id()));
        let pki = cert::throwaway(&["127.0.0.1"], 1).expect("a CA");
        let files = cert::write(&pki, &dir).expect("PEM files");
        let client = TlsClient::new(&files.ca, None, None).expect("client config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let config = server_config(&pki);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<u64>();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().expect("accept");
            let conn = rustls::ServerConnection::new(config).expect("server connection");
            let mut tls = rustls::StreamOwned::new(conn, socket);
            let mut hello = [0u8; 6];
            tls.read_exact(&mut hello).expect("the client's line");
            assert_eq!(&hello, b"hello\n");
            while go_rx.recv().is_ok() {
                let _ = sent_tx.send(realtime_ns());
                tls.write_all(b"ping\n").expect("write");
                tls.flush().expect("flush");
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut buf = BytesMut::new();
            let (mut rd, mut wr) = open(stream, addr, Some(&client), &mut buf)
                .await
                .expect("the handshake");
            wr.send(b"hello\n").await.expect("a sealed line");
            rx::enable(rd.socket().as_ref().as_fd()).expect("SO_TIMESTAMPING");
            // The kernel turns receive stamping on from a work queue, so the first
            // segments may come without a stamp: ask for lines until one has one.
            for _ in 0..100 {
                go_tx.send(()).expect("the server thread");
                let sent = sent_rx.recv().expect("the server's send time");
                let got = loop {
                    match rd.try_recv_stamped(&mut buf) {
                        Ok(r) => {
                            assert!(r.n > 0, "the server closed the connection");
                            // A read with only a session ticket or part of the record
                            // brings no line: the stamp that counts is the completing
                            // read's.
                            if buf.ends_with(b"ping\n") {
                                break r;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            rd.readable().await.expect("readable")
                        }
                        Err(e) => panic!("read: {e}"),
                    }
                };
                let after = realtime_ns();
                assert!(buf.iter().all(|&b| b"ping\n".contains(&b)), "{buf:?}");
                buf.clear();
                let Some(stamp) = got.stamp else {
                    continue;
                };
                // CLOCK_REALTIME both sides; a millisecond of slack for the clocks' reads.
                assert!(
                    stamp + 1_000_000 >= sent && stamp <= after + 1_000_000,
                    "stamp {stamp} outside [{sent}, {after}]"
                );
                drop(go_tx);
                return;
            }
            panic!("no read of a TLS record came with a receive stamp");
        });
        server.join().expect("the server thread");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
