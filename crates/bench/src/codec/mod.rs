//! One client codec per protocol the harness speaks: what a simulated client sends (join,
//! move, publish, pong) and the next thing the server said, decoded from a buffer. Pure:
//! nothing here touches a socket, and decoding returns `Ok(None)` for an incomplete frame
//! (the frame parsers themselves are in [`super::peers`] and [`super::ws`]).
//!
//! The generator's join, its one receive loop, its slow readers and the orchestrator's
//! control connection all read through [`ClientCodec::decode`], so a protocol's framing
//! lives in one file: [`line`](mod@line) (ringcast), [`websocket`] (ringcast over WebSocket),
//! [`redis`] and [`nats`].

pub mod line;
pub mod nats;
pub mod redis;
pub mod websocket;

use super::peers::{Proto, ProtocolError};
use super::wire::Stamp;
use super::ws::Masker;

/// What a server sent, as a simulated client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A chat message, with the stamp it carries (`None`: not one the harness sent).
    Delivery(Option<Stamp>),
    /// An answer that may confirm a join or a move between rooms.
    Reply(Reply<'a>),
    /// A ringcast server notice (a `* ` line other than a join or an error).
    Notice(&'a [u8]),
    /// The server reports an error; [`ClientCodec::error_text`] says how it reads.
    ServerError(&'a [u8]),
    /// The server asks for a pong carrying this payload.
    Ping(&'a [u8]),
    /// WebSocket: the server's close frame and its status code, if it carried one.
    Close(Option<u16>),
    /// Something a client is never sent (a binary WebSocket message): counted.
    Unexpected,
    /// Nothing for the client (a fragment, a pong, `+OK`, `INFO`).
    Nothing,
}

/// A server's answer that may confirm a join or a churner's move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// ringcast: `* joined ROOM`.
    Joined(&'a [u8]),
    /// Redis: a `subscribe` reply for a channel, or an `unsubscribe` one.
    Subscribed(&'a [u8]),
    Unsubscribed,
    /// NATS: the `PONG` after a subscription change.
    Pong,
}

impl Reply<'_> {
    /// Whether this confirms the first join, of the room whose subject is `subject`.
    pub fn confirms_join(self, subject: &[u8]) -> bool {
        match self {
            // A fresh ringcast connection joins nothing else; NATS answers the PING sent
            // after SUB once the subscription is in place.
            Reply::Joined(_) | Reply::Pong => true,
            Reply::Subscribed(channel) => channel == subject,
            Reply::Unsubscribed => false,
        }
    }
}

/// One client connection's side of a protocol. Encoders clear `out` and leave the bytes
/// to write in it; a codec keeps the state its framing needs (WebSocket masking keys,
/// fragments of a message).
pub trait ClientCodec {
    /// What joins `room`, ending with a request whose answer confirms the join.
    fn join(&mut self, room: usize, out: &mut Vec<u8>);

    /// What a client in `from` (or in no room) sends to move to `to` (or to no room). Its
    /// answer confirms the move: ringcast `* joined ROOM` (no room is the lobby, where the
    /// harness sends nothing); Redis the `subscribe` reply (or `unsubscribe` when
    /// leaving); NATS the `PONG` after the subscription changes, `sid` being the current
    /// subscription's id (the new one is `sid + 1`).
    fn change_room(&mut self, from: Option<usize>, to: Option<usize>, sid: u32, out: &mut Vec<u8>);

    /// One message to `room`: `text` is the stamped text without ringcast's newline (for
    /// ringcast, any line: a command such as `/stats` too).
    fn publish(&mut self, room: usize, text: &[u8], out: &mut Vec<u8>);

    /// The answer to a server's ping carrying `payload`.
    fn pong(&mut self, payload: &[u8], out: &mut Vec<u8>);

    /// The answer to a server's close frame (WebSocket only; nothing elsewhere).
    fn close(&mut self, code: Option<u16>, out: &mut Vec<u8>) {
        let _ = code;
        out.clear();
    }

    /// The next thing the server said, from the start of `buf`, and the bytes it took;
    /// `None` when `buf` holds only part of it.
    fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Incoming<'a>, usize)>, ProtocolError>;

    /// How a server's error ([`Incoming::ServerError`]) reads once the client has joined.
    fn error_text(&self, text: &[u8]) -> String {
        format!("server error: {}", String::from_utf8_lossy(text))
    }

    /// ... and during the join, which it refuses.
    fn refusal(&self, text: &[u8]) -> String;

    /// What the server's ping is called in an error about answering it.
    fn ping_name(&self) -> &'static str {
        "a ping"
    }
}

/// A new connection's codec for `proto`; `masker` gives its WebSocket masking keys.
pub fn for_proto(proto: Proto, masker: Masker) -> Box<dyn ClientCodec> {
    match proto {
        Proto::Ringcast => Box::new(line::Line),
        Proto::Ws => Box::new(websocket::WebSocket::new(masker)),
        Proto::Redis => Box::new(redis::Redis),
        Proto::Nats => Box::new(nats::Nats),
    }
}

/// The channel (Redis) or subject (NATS) of a room, and ringcast's room name.
pub fn room_subject(room: usize) -> String {
    format!("room{room}")
}

#[cfg(test)]
mod tests;
