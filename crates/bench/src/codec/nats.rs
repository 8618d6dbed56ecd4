//! NATS core: `SUB roomN`, `PUB`, with `echo:false` so senders get no copy; every
//! subscription change ends with a `PING` whose `PONG` confirms it.

use super::{room_subject, ClientCodec, Incoming, Reply};
use crate::peers::{self, ProtocolError};
use crate::wire;
use std::io::Write as _;

#[derive(Debug, Default, Clone, Copy)]
pub struct Nats;

impl ClientCodec for Nats {
    fn join(&mut self, room: usize, out: &mut Vec<u8>) {
        out.clear();
        let subject = room_subject(room);
        out.extend_from_slice(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"ringcast-bench\"}}\r\nSUB {subject} 1\r\nPING\r\n"
            )
            .as_bytes(),
        );
    }

    fn change_room(&mut self, from: Option<usize>, to: Option<usize>, sid: u32, out: &mut Vec<u8>) {
        out.clear();
        // Writing into a Vec cannot fail.
        if from.is_some() {
            let _ = write!(out, "UNSUB {sid}\r\n");
        }
        if let Some(to) = to {
            let _ = write!(out, "SUB room{to} {}\r\n", sid + 1);
        }
        out.extend_from_slice(b"PING\r\n");
    }

    fn publish(&mut self, room: usize, text: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let _ = write!(out, "PUB room{room} {}\r\n", text.len());
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }

    fn pong(&mut self, _payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"PONG\r\n");
    }

    fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Incoming<'a>, usize)>, ProtocolError> {
        let Some((op, n)) = peers::parse_nats(buf)? else {
            return Ok(None);
        };
        let incoming = match op {
            peers::Nats::Msg { payload, .. } => Incoming::Delivery(wire::decode_payload(payload)),
            peers::Nats::Ping => Incoming::Ping(&[]),
            peers::Nats::Pong => Incoming::Reply(Reply::Pong),
            peers::Nats::Err(text) => Incoming::ServerError(text),
            peers::Nats::Info(_) | peers::Nats::Ok => Incoming::Nothing,
        };
        Ok(Some((incoming, n)))
    }

    fn refusal(&self, text: &[u8]) -> String {
        format!(
            "server refused the subscription: {}",
            String::from_utf8_lossy(text)
        )
    }

    fn ping_name(&self) -> &'static str {
        "PING"
    }
}
