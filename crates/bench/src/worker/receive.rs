//! A joined connection's read side: one `recvmsg` per read with its receive stamp, and
//! the one receive loop every protocol shares.

use super::account::{confirm, on_stamp, Conn};
use super::client::{reserve, Writer};
use super::link::{ReadHalf, Received};
use super::state::{Arrival, SharedRef};
use crate::clock::mono_ns;
use crate::codec::{ClientCodec, Incoming};
use crate::rx;
use bytes::{Buf as _, BytesMut};

/// A joined connection's read side: its buffer (which may already hold what came after
/// the join) and whether its socket gives receive stamps.
pub(super) struct Inbound {
    pub(super) half: ReadHalf,
    pub(super) buf: BytesMut,
    /// Receive stamps were asked for (`--rx-timestamps on`).
    pub(super) want: bool,
    /// ... and the socket agreed to give them.
    pub(super) stamped: bool,
}

impl Inbound {
    /// Turns on receive stamps when `want`; the error says why the socket refused them.
    pub(super) fn new(
        half: ReadHalf,
        buf: BytesMut,
        want: bool,
    ) -> (Inbound, Option<std::io::Error>) {
        use std::os::fd::AsFd as _;
        let refused = if want {
            rx::enable(half.socket().as_ref().as_fd()).err()
        } else {
            None
        };
        let stamped = want && refused.is_none();
        (
            Inbound {
                half,
                buf,
                want,
                stamped,
            },
            refused,
        )
    }

    /// One `recvmsg` appending to the buffer (under TLS: the plaintext of the records it
    /// completed), waiting for the socket to be readable when it has nothing: the read's
    /// arrival, or `None` at end of stream.
    pub(super) async fn read_more(&mut self) -> std::io::Result<Option<Arrival>> {
        reserve(&mut self.buf);
        loop {
            match self.half.try_recv_stamped(&mut self.buf) {
                Ok(Received { n: 0, .. }) => return Ok(None),
                Ok(Received { full, stamp, .. }) => {
                    return Ok(Some(match (self.want, self.stamped, stamp) {
                        (false, _, _) => Arrival::Off,
                        // A read shorter than the buffer emptied the receive queue, so it
                        // consumed its last buffer whole.
                        (true, true, _) if full => Arrival::Partial,
                        (true, true, Some(ns)) => Arrival::Stamped(ns),
                        // A socket that refused stamps counts its deliveries as unstamped,
                        // so that the report can say how many socket latency covers.
                        (true, _, _) => Arrival::Missing,
                    }));
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    self.half.readable().await?
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Why a connection's reading ended, from the result of its last read.
fn read_end(read: std::io::Result<Option<Arrival>>) -> Result<Arrival, String> {
    match read {
        Ok(Some(arrival)) => Ok(arrival),
        Ok(None) => Err("server closed the connection".to_string()),
        Err(err) => Err(format!("read error: {err}")),
    }
}

/// Reads a joined connection until it ends; returns why it ended. Every protocol goes
/// through here: `codec` says what the bytes are, and the accounting takes deliveries and
/// replies alike whatever framed them. Pings are answered; a close is answered and ends
/// the connection.
///
/// This is the harness's hottest loop (every delivery passes through it), so each read
/// is timestamped once and what it holds is handled under one borrow of the shared state
/// (none of which awaits); answers to the server wait until that borrow ends.
pub(super) async fn receive(
    c: usize,
    mut inbound: Inbound,
    mut codec: Box<dyn ClientCodec>,
    writer: &Writer,
    shared: &SharedRef,
) -> String {
    let mut conn = Conn::new(c);
    // What was read with the join has no stamp of its own.
    let mut arrival = Arrival::Off;
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    loop {
        let now = mono_ns();
        let mut used = 0;
        let mut closed = None;
        let broken = {
            let mut s = shared.borrow_mut();
            let at = conn.settle(arrival, &mut s);
            loop {
                let (incoming, n) = match codec.decode(&inbound.buf[used..]) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                };
                used += n;
                match incoming {
                    Incoming::Delivery(stamp) => on_stamp(&mut conn, stamp, now, at, &mut s),
                    Incoming::Reply(reply) => confirm(&mut s, c, reply, now),
                    Incoming::ServerError(text) => {
                        let text = text.to_vec();
                        let text = codec.error_text(&text);
                        s.note_server_error(format!("client {c}: {text}"));
                    }
                    Incoming::Ping(payload) => pongs.push(payload.to_vec()),
                    Incoming::Close(code) => {
                        closed = Some(code);
                        break None;
                    }
                    Incoming::Unexpected => {
                        let current = s.current;
                        s.steps_counts[current].tally.unexpected += 1;
                    }
                    Incoming::Notice(_) | Incoming::Nothing => {}
                }
            }
        };
        inbound.buf.advance(used);
        if let Some(err) = broken {
            return err.to_string();
        }
        if !pongs.is_empty() || closed.is_some() {
            if let Some(why) = answer(writer, &mut pongs, closed).await {
                return why;
            }
        }
        match read_end(inbound.read_more().await) {
            Ok(next) => arrival = next,
            Err(why) => return why,
        }
        if inbound.half.wants_write() {
            // The TLS session answers the server (a key update) through the write side.
            if let Err(err) = writer.lock().await.half.flush().await {
                return format!("write error answering the TLS session: {err}");
            }
        }
    }
}

/// Answers the server's pings and, when it sent one, its close; returns why the
/// connection ends, if it does.
async fn answer(
    writer: &Writer,
    pongs: &mut Vec<Vec<u8>>,
    closed: Option<Option<u16>>,
) -> Option<String> {
    let mut w = writer.lock().await;
    let w = &mut *w;
    let mut frame = Vec::new();
    for payload in pongs.drain(..) {
        w.codec.pong(&payload, &mut frame);
        if let Err(err) = w.half.send(&frame).await {
            return Some(format!(
                "write error answering {}: {err}",
                w.codec.ping_name()
            ));
        }
    }
    let code = closed?;
    // Answer the close (section 5.5.1) with the same code, then stop reading.
    w.codec.close(code, &mut frame);
    let _ = w.half.send(&frame).await;
    Some(match code {
        Some(code) => format!("server closed the WebSocket (code {code})"),
        None => "server closed the WebSocket".to_string(),
    })
}
