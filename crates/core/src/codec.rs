//! Each transport's framing of a connection, so the hub can keep to rooms, policy and
//! deadlines: a connection's [`Codec`] turns its input into [`Event`]s (input lines, and
//! what the transport answers by itself) and encodes what the hub sends it: reply lines,
//! a read's chat batch ([`Encoded`]), the farewell for the reason it is closed and the
//! transport's close frame. The hub never asks which transport a member uses.
//!
//! A new member kind is a new variant here (and its connection loop in the server); the
//! hub only learns which [`Transport`] to count it under.

use super::hub::Protocol;
use super::metrics;
use super::stats::{Disconnect, Transport};
use bytes::{Bytes, BytesMut};
use ringcast_proto::ws::{self, CloseCode, Message, WsCodec};
use ringcast_proto::{http, reply, Frame, LineDecoder};
use std::ops::ControlFlow;

/// How a connection's input is read and its output encoded.
#[derive(Debug)]
pub(crate) enum Codec {
    /// Lines in, lines out.
    Line(LineDecoder),
    /// An HTTP request head in, one response out (the web module answers it).
    Http,
    /// WebSocket frames both ways; the fragmented text message in progress, if any.
    Ws(ws::Partial),
}

/// What every codec of one thread shares: the scratch space that frames are built in,
/// so a connection's codec holds nothing but its decoder's state.
#[derive(Debug, Clone)]
pub(crate) struct Framer {
    ws: WsCodec,
}

impl Framer {
    /// A framer whose WebSocket decoder takes messages of at most `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            ws: WsCodec::new(max_message),
        }
    }
}

/// What a connection's input means to the hub.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// One input line of a chat member: a TCP line, or a line of a WebSocket message.
    Line(Frame<'a>),
    /// Send these bytes back as they are (a WebSocket pong): the transport answers by
    /// itself, and nothing else follows from it.
    Answer(Bytes),
    /// The client ends the conversation: send these bytes (the echo of its close frame),
    /// then close it as one that quit.
    Close(Bytes),
}

/// The client broke its transport's protocol: `close` tells it how, and it is closed.
#[derive(Debug)]
pub(crate) struct Broken {
    pub close: Bytes,
    pub code: u16,
    pub reason: &'static str,
}

/// A connection's decoder state, moved out of its codec while its input is handled: the
/// handling encodes replies to the same connection, which needs its codec in place.
#[derive(Debug)]
pub(crate) enum Decoder {
    Line(LineDecoder),
    Ws(ws::Partial),
    /// Input that is not decoded into events (an HTTP request head, read by the hub's
    /// web handler before any decoding).
    None,
}

impl Codec {
    /// The codec a connection from a listener of `protocol` starts with.
    pub(crate) fn new(protocol: Protocol, max_line: usize) -> Self {
        match protocol {
            Protocol::Line => Codec::Line(LineDecoder::new(max_line)),
            Protocol::Http => Codec::Http,
        }
    }

    /// The transport a member with this codec is counted under.
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Codec::Ws(_) => Transport::Ws,
            _ => Transport::Tcp,
        }
    }

    /// Whether the connection's input is an HTTP request head, read before any decoding.
    pub(crate) fn reads_request(&self) -> bool {
        matches!(self, Codec::Http)
    }

    /// The HTTP request was a WebSocket handshake: frames from now on.
    pub(crate) fn upgrade(&mut self) {
        *self = Codec::Ws(None);
    }

    /// Takes the decoder's state out; give it back with [`Codec::put_decoder`].
    pub(crate) fn take_decoder(&mut self) -> Decoder {
        match self {
            Codec::Line(decoder) => Decoder::Line(*decoder),
            Codec::Ws(partial) => Decoder::Ws(partial.take()),
            Codec::Http => Decoder::None,
        }
    }

    /// Puts back the decoder's state taken by [`Codec::take_decoder`].
    pub(crate) fn put_decoder(&mut self, decoder: Decoder) {
        match (self, decoder) {
            (Codec::Line(kept), Decoder::Line(decoder)) => *kept = decoder,
            (Codec::Ws(kept), Decoder::Ws(partial)) => *kept = partial,
            _ => {}
        }
    }

    /// Reply lines (`* ...\n`, one or more) as this connection is sent them.
    pub(crate) fn encode(&self, lines: Bytes, framer: &mut Framer) -> Bytes {
        match self {
            Codec::Ws(_) => framer.ws.lines(&lines),
            _ => lines,
        }
    }

    /// What follows the bye of a client that quit: the transport's own end of the
    /// conversation (a WebSocket close frame), if it has one beside the FIN.
    pub(crate) fn close_frame(&self, framer: &mut Framer) -> Option<Bytes> {
        match self {
            Codec::Ws(_) => Some(framer.ws.close(CloseCode::Normal as u16, "")),
            _ => None,
        }
    }

    /// A WebSocket's close frame with code 1008 (policy violation) and `reason`: how a
    /// refused token ends one (`--auth`); none for other transports.
    pub(crate) fn policy_close(&self, framer: &mut Framer, reason: &str) -> Option<Bytes> {
        match self {
            Codec::Ws(_) => Some(framer.ws.close(CloseCode::Policy as u16, reason)),
            _ => None,
        }
    }

    /// The last thing a connection closed by the server for `reason` is sent, if the
    /// reason has one: a notice saying why, and the transport's close frame with the code
    /// that says so. A request whose head has not come yet gets an HTTP answer instead.
    pub(crate) fn farewell(&self, reason: Disconnect, framer: &mut Framer) -> Option<Bytes> {
        let (line, close) = match reason {
            Disconnect::SlowConsumer | Disconnect::WriteTimeout => (
                reply::error(reply::SLOW_CONSUMER),
                (CloseCode::Policy, "slow consumer"),
            ),
            Disconnect::Shutdown => (
                reply::notice(reply::SHUTTING_DOWN),
                (CloseCode::GoingAway, ""),
            ),
            Disconnect::Quit | Disconnect::PeerGone | Disconnect::ProtocolError => return None,
        };
        Some(match self {
            Codec::Line(_) => line,
            Codec::Ws(_) => {
                let mut out = BytesMut::from(&framer.ws.lines(&line)[..]);
                out.extend_from_slice(&framer.ws.close(close.0 as u16, close.1));
                out.freeze()
            }
            // Only a cut connection (a response that overflowed) has a notice without a
            // close frame; at shutdown an HTTP request gets an HTTP answer, not a line.
            Codec::Http if reason == Disconnect::Shutdown => http::text(503, "shutting down\n"),
            Codec::Http => line,
        })
    }
}

impl Decoder {
    /// Decodes every complete line or message at the front of `buf` and removes it,
    /// leaving at most one incomplete one, and calls `on_event` for each event; stops
    /// when it breaks. `framer` is a copy of the thread's (the caller's own is borrowed
    /// by `on_event`'s handling).
    pub(crate) fn decode_all(
        &mut self,
        buf: &mut Vec<u8>,
        framer: &Framer,
        mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Broken> {
        match self {
            Decoder::Line(decoder) => {
                Ok(decoder.decode_all(buf, |frame| on_event(Event::Line(frame))))
            }
            Decoder::Ws(partial) => {
                // Frames the answers (pongs, close echoes) while `framer` decodes.
                let mut answers = framer.clone();
                let decoded = framer.ws.decode_all(partial, buf, |message| {
                    ws_event(message, &mut answers, &mut on_event)
                });
                decoded.map_err(|violation| Broken {
                    close: answers.ws.close(violation.code as u16, violation.reason),
                    code: violation.code as u16,
                    reason: violation.reason,
                })
            }
            Decoder::None => Ok(ControlFlow::Continue(())),
        }
    }
}

/// What one WebSocket message of a chat client means.
fn ws_event(
    message: Message<'_>,
    framer: &mut Framer,
    on_event: &mut impl FnMut(Event<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match message {
        // As on TCP: each `\n` in it ends a line, and the message's end ends one too.
        Message::Text(text) => {
            for line in text.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                on_event(Event::Line(Frame::Line(line)))?;
            }
            ControlFlow::Continue(())
        }
        Message::Ping(payload) => on_event(Event::Answer(framer.ws.pong(payload))),
        Message::Close(code) => {
            // Answer the close handshake with the client's code when it may be echoed.
            let code = match code {
                None => CloseCode::Normal as u16,
                Some(code) if ws::valid_close_code(code) => code,
                Some(_) => CloseCode::ProtocolError as u16,
            };
            // Nothing after a close frame is read, whatever the handler says.
            let _ = on_event(Event::Close(framer.ws.close(code, "")));
            ControlFlow::Break(())
        }
    }
}

/// One read's chat in each encoding its room's members need, each built at most once
/// (on first use: a room without WebSocket members never builds frames, one without
/// members that asked for positions never numbers its lines) and shared by every member
/// that wants it.
pub(crate) struct Encoded<'a> {
    lines: &'a Bytes,
    /// How many lines.
    count: u64,
    frames: Option<Bytes>,
    /// The room position of the first line; 0: none.
    first: u64,
    /// The lines as `#POS NAME: TEXT`, and those as frames.
    numbered: Option<Bytes>,
    numbered_frames: Option<Bytes>,
    /// `lines` is timed (see `metrics::timed_batch`): what is built from it keeps it alive.
    timed: bool,
}

impl<'a> Encoded<'a> {
    /// `count` lines in `lines`, the first at room position `first` (0: none), and their
    /// frames if another thread built them already.
    pub(crate) fn new(
        lines: &'a Bytes,
        count: u64,
        first: u64,
        frames: Option<Bytes>,
        timed: bool,
    ) -> Self {
        Self {
            lines,
            count,
            frames,
            first,
            numbered: None,
            numbered_frames: None,
            timed,
        }
    }

    /// How many lines.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The room position of the last line (0: none).
    pub(crate) fn last(&self) -> u64 {
        match self.first {
            0 => 0,
            first => first + self.count - 1,
        }
    }

    fn derived(&self, built: Bytes) -> Bytes {
        match self.timed {
            true => metrics::linked(built, self.lines),
            false => built,
        }
    }

    /// The batch as a member with `codec` is sent it (numbered if it asked for positions
    /// and the lines have them).
    pub(crate) fn for_codec(
        &mut self,
        codec: &Codec,
        positions: bool,
        framer: &mut Framer,
    ) -> Bytes {
        if positions && self.first != 0 {
            let numbered = match &self.numbered {
                Some(numbered) => numbered.clone(),
                None => {
                    let built = self.derived(numbered_lines(self.lines, self.first));
                    self.numbered = Some(built.clone());
                    built
                }
            };
            return match codec {
                Codec::Ws(_) => match &self.numbered_frames {
                    Some(frames) => frames.clone(),
                    None => {
                        let built = self.derived(framer.ws.lines(&numbered));
                        self.numbered_frames = Some(built.clone());
                        built
                    }
                },
                _ => numbered,
            };
        }
        match codec {
            Codec::Ws(_) => match &self.frames {
                Some(frames) => frames.clone(),
                None => {
                    let built = self.derived(framer.ws.lines(self.lines));
                    self.frames = Some(built.clone());
                    built
                }
            },
            _ => self.lines.clone(),
        }
    }

    /// The frames, if any member wanted them (another thread's members may too).
    pub(crate) fn into_frames(self) -> Option<Bytes> {
        self.frames
    }
}

/// Whole lines (each with its `\n`) as `#POS LINE`, numbered from `first`.
pub(crate) fn numbered_lines(lines: &[u8], first: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(lines.len() + 8 * 4);
    for (i, line) in lines.split_inclusive(|&b| b == b'\n').enumerate() {
        reply::numbered(first + i as u64, line, &mut out);
    }
    out.freeze()
}
