//! One simulated client: connects (at its time in the ramp), joins its room through its
//! protocol's codec, then publishes, moves or stops reading as the plan says, and reads
//! until the connection ends.

use super::churners::Churner;
use super::link::{self, ReadHalf, WriteHalf};
use super::publish::publish;
use super::receive::{receive, Inbound};
use super::slow::{SlowReader, SLOW_READER_BUFFER, SLOW_READER_MSS};
use super::state::SharedRef;
use crate::churn::Interval;
use crate::clock::{instant_at, mono_ns};
use crate::codec::{self, room_subject, ClientCodec, Incoming};
use crate::peers::{self, Proto, Resp};
use crate::tls::TlsClient;
use crate::ws::{self, Masker};
use anyhow::Context as _;
use bytes::{Buf as _, BytesMut};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Time one client may take to connect and join before it counts as failed.
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if let Some(bytes) = recv_buffer {
        // Before connecting, so that the window and MSS it advertises are small from the
        // start.
        socket.set_recv_buffer_size(bytes)?;
        set_mss(&socket, SLOW_READER_MSS)?;
    }
    let stream = socket.connect(addr).await?;
    // Chat lines are small and latency is what we measure: do not let Nagle batch them.
    stream.set_nodelay(true)?;
    Ok(stream)
}

pub(super) fn set_mss(socket: &TcpSocket, mss: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a c_int option of the size we pass, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Appends what the socket has to `buf` (with a plain read: for the join and the Redis
/// publish connections, whose arrival times nobody measures); `Ok(false)` at end of
/// stream.
pub(super) async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<bool> {
    reserve(buf);
    Ok(rd.read_buf(buf).await? > 0)
}

pub(super) fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// A connection's write side: its half (which seals what it sends under TLS) and the
/// codec that frames what is sent on it (holding, for WebSocket, the masking keys). NATS and WebSocket subscribers answer the
/// server's pings on the connection a publisher also writes to, so it is shared; the lock
/// is never contended for long.
pub(super) struct WriteSide {
    pub(super) half: WriteHalf,
    pub(super) codec: Box<dyn ClientCodec>,
}

pub(super) type Writer = Rc<tokio::sync::Mutex<WriteSide>>;

/// How a client reaches its server: where from, and over TLS or not.
#[derive(Clone)]
pub(super) struct Route {
    pub(super) addr: SocketAddr,
    pub(super) source: Option<IpAddr>,
    pub(super) tls: Option<TlsClient>,
}

/// Connects (with the TLS handshake under `--tls`) and joins `room`: the read half with
/// what was read past the join, and the write side, whose codec goes on framing what the
/// client sends.
pub(super) async fn join(
    proto: Proto,
    route: &Route,
    room: usize,
    mut masker: Masker,
    recv_buffer: Option<u32>,
) -> anyhow::Result<(ReadHalf, BytesMut, WriteSide)> {
    let addr = route.addr;
    let stream = connect(addr, route.source, recv_buffer)
        .await
        .context("connect")?;
    let mut buf = BytesMut::with_capacity(4096);
    let (mut rd, mut wr) = link::open(stream, addr, route.tls.as_ref(), &mut buf).await?;
    if proto == Proto::Ws {
        websocket_handshake(addr, &mut rd, &mut wr, &mut buf, &mut masker).await?;
    }
    let mut codec = codec::for_proto(proto, masker);
    let mut request = Vec::new();
    codec.join(room, &mut request);
    wr.send(&request).await.context("sending the join")?;
    let subject = room_subject(room);
    loop {
        match join_progress(&mut *codec, &mut buf, subject.as_bytes())? {
            JoinProgress::Joined => return Ok((rd, buf, WriteSide { half: wr, codec })),
            JoinProgress::Ping(payload) => {
                codec.pong(&payload, &mut request);
                wr.send(&request).await.context("answering a ping")?;
            }
            JoinProgress::Waiting => anyhow::ensure!(
                rd.read_more(&mut buf).await.context("reading")?,
                "server closed the connection before the join was confirmed"
            ),
        }
    }
}

/// What the buffer says so far of a join.
enum JoinProgress {
    Joined,
    /// A ping (its payload) to answer before anything else.
    Ping(Vec<u8>),
    Waiting,
}

/// Reads the join's answer from `buf` (consumed up to it): a refusal or a close is an
/// error; what follows the answer stays in `buf`.
fn join_progress(
    codec: &mut dyn ClientCodec,
    buf: &mut BytesMut,
    subject: &[u8],
) -> anyhow::Result<JoinProgress> {
    while let Some((incoming, n)) = codec.decode(buf)? {
        let progress = match incoming {
            Incoming::Reply(reply) if reply.confirms_join(subject) => Some(JoinProgress::Joined),
            Incoming::Ping(payload) => Some(JoinProgress::Ping(payload.to_vec())),
            Incoming::ServerError(text) => {
                let text = text.to_vec();
                anyhow::bail!(codec.refusal(&text));
            }
            Incoming::Close(code) => anyhow::bail!(
                "server closed the WebSocket (code {code:?}) before the join was confirmed"
            ),
            _ => None,
        };
        buf.advance(n);
        if let Some(progress) = progress {
            return Ok(progress);
        }
    }
    Ok(JoinProgress::Waiting)
}

/// The WebSocket opening handshake on a fresh connection; leaves in `buf` whatever
/// followed the server's response head.
pub(super) async fn websocket_handshake(
    addr: SocketAddr,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    masker: &mut Masker,
) -> anyhow::Result<()> {
    let key = ws::new_key(masker);
    let mut request = Vec::new();
    ws::handshake_request(&addr.to_string(), &key, &mut request);
    wr.send(&request)
        .await
        .context("sending the WebSocket handshake")?;
    loop {
        if let Some(head) = ws::parse_handshake_response(buf, &key)? {
            buf.advance(head);
            return Ok(());
        }
        anyhow::ensure!(
            rd.read_more(buf)
                .await
                .context("reading the handshake response")?,
            "server closed the connection during the WebSocket handshake"
        );
    }
}

/// Redis: a subscribed connection may not PUBLISH, so a publisher opens a second one for
/// its sends. Its replies (receiver counts) are read and discarded by a task of their own.
pub(super) async fn publish_connection(
    c: usize,
    addr: SocketAddr,
    source: Option<IpAddr>,
    shared: &SharedRef,
) -> anyhow::Result<OwnedWriteHalf> {
    let stream = connect(addr, source, None)
        .await
        .context("connect (publish connection)")?;
    let (rd, wr) = stream.into_split();
    tokio::task::spawn_local(discard_replies(c, rd, shared.clone()));
    Ok(wr)
}

pub(super) async fn discard_replies(c: usize, mut rd: OwnedReadHalf, shared: SharedRef) {
    let mut buf = BytesMut::with_capacity(4096);
    let error = loop {
        let mut errors = Vec::new();
        loop {
            match peers::parse_resp(&buf) {
                Ok(Some((frame, n))) => {
                    if let Resp::Error(text) = frame {
                        errors.push(String::from_utf8_lossy(text).into_owned());
                    }
                    buf.advance(n);
                }
                Ok(None) => break,
                Err(err) => {
                    errors.push(err.to_string());
                    break;
                }
            }
        }
        if !errors.is_empty() {
            let mut s = shared.borrow_mut();
            for e in errors {
                s.note_server_error(format!("publisher {c}: {e}"));
            }
        }
        match read_more(&mut rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => break "server closed the publish connection".to_string(),
            Err(err) => break format!("read error on the publish connection: {err}"),
        }
    };
    shared
        .borrow_mut()
        .note_disconnect(format!("publisher {c}: {error}"));
}

/// One simulated client, from its connect time in the ramp to the end of its connection:
/// reports to `ready` when it has joined (or failed to), then reads until the connection
/// ends, publishing, moving or not reading at all as the plan has it.
pub(super) async fn client(
    c: usize,
    route: Route,
    connect_at: u64,
    shared: SharedRef,
    ready: mpsc::Sender<Result<u64, String>>,
    steps: watch::Receiver<Option<(u32, u64)>>,
) {
    tokio::time::sleep_until(instant_at(connect_at)).await;
    let (proto, room, publisher, want_stamps, slow, churner) = {
        let s = shared.borrow();
        (
            s.proto,
            s.plan.room_of(c),
            s.plan.is_publisher(c) && !s.idle,
            s.rx_timestamps,
            s.plan.is_slow_reader(c) && !s.idle,
            s.plan.is_churner(c) && !s.idle,
        )
    };
    let started = mono_ns();
    // Masking keys differ per connection and per run.
    let masker = Masker::new(started ^ ((c as u64) << 40));
    let recv_buffer = slow.then_some(SLOW_READER_BUFFER);
    let connected = async {
        let joined = join(proto, &route, room, masker, recv_buffer).await?;
        let publish_writer = if publisher && proto.publishes_on_own_connection() {
            Some(publish_connection(c, route.addr, route.source, &shared).await?)
        } else {
            None
        };
        anyhow::Ok((joined, publish_writer))
    };
    let joined = tokio::time::timeout(JOIN_TIMEOUT, connected).await;
    let ((rd, buf, writer), publish_writer) = match joined {
        Ok(Ok(parts)) => parts,
        Ok(Err(err)) => {
            let _ = ready.send(Err(format!("client {c}: {err:#}"))).await;
            return;
        }
        Err(_) => {
            let _ = ready
                .send(Err(format!(
                    "client {c}: no join confirmation within {JOIN_TIMEOUT:?}"
                )))
                .await;
            return;
        }
    };
    let joined_at = mono_ns();
    let _ = ready.send(Ok((joined_at - started) / 1000)).await;
    drop(ready);
    if slow {
        // From now on nobody reads this connection, until a step ends.
        shared.borrow_mut().slow.push(SlowReader {
            half: rd,
            _writer: writer,
            buf,
            codec: codec::for_proto(proto, Masker::new(0)),
            cut: false,
        });
        return;
    }
    let (inbound, refused) = Inbound::new(rd, buf, want_stamps);
    if let Some(err) = refused {
        shared.borrow_mut().note_stamps_refused(c, &err);
    }
    // The write side stays alive while the client reads (dropping it would half-close the
    // connection), and pings are answered through it.
    let writer: Writer = Rc::new(tokio::sync::Mutex::new(writer));
    if churner {
        let mut first = Interval::new(room, started);
        first.join_confirmed = Some(joined_at);
        let churner = Churner::new(writer.clone(), room, first);
        shared.borrow_mut().churners.insert(c, churner);
    }
    if publisher {
        shared.borrow_mut().live_publishers += 1;
        let out = match publish_writer {
            Some(half) => Rc::new(tokio::sync::Mutex::new(WriteSide {
                half: WriteHalf::plain(half),
                codec: codec::for_proto(proto, Masker::new(0)),
            })),
            None => writer.clone(),
        };
        tokio::task::spawn_local(publish(c, room, out, shared.clone(), steps));
    }
    // The read side decodes with a codec of its own: what it answers (pongs, a close) is
    // framed by the write side's, which holds the connection's masking keys.
    let decoder = codec::for_proto(proto, Masker::new(0));
    let error = receive(c, inbound, decoder, &writer, &shared).await;
    let mut s = shared.borrow_mut();
    if let Some(ch) = s.churners.get_mut(&c) {
        ch.gone = true;
    }
    s.note_disconnect(format!("client {c}: {error}"));
}
