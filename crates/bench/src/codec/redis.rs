//! Redis pub/sub (RESP2): `SUBSCRIBE roomN` on each client, `PUBLISH` on a second
//! connection (a subscribed connection may not publish).

use super::{room_subject, ClientCodec, Incoming, Reply};
use crate::peers::{self, ProtocolError, Resp};
use crate::wire;

#[derive(Debug, Default, Clone, Copy)]
pub struct Redis;

impl ClientCodec for Redis {
    fn join(&mut self, room: usize, out: &mut Vec<u8>) {
        out.clear();
        peers::encode_resp_command(&[b"SUBSCRIBE", room_subject(room).as_bytes()], out);
    }

    fn change_room(&mut self, from: Option<usize>, to: Option<usize>, _: u32, out: &mut Vec<u8>) {
        out.clear();
        if let Some(from) = from {
            peers::encode_resp_command(&[b"UNSUBSCRIBE", room_subject(from).as_bytes()], out);
        }
        if let Some(to) = to {
            peers::encode_resp_command(&[b"SUBSCRIBE", room_subject(to).as_bytes()], out);
        }
    }

    fn publish(&mut self, room: usize, text: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let subject = room_subject(room);
        peers::encode_resp_command(&[b"PUBLISH", subject.as_bytes(), text], out);
    }

    /// RESP2 has no server pings.
    fn pong(&mut self, _payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
    }

    fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Incoming<'a>, usize)>, ProtocolError> {
        let Some((frame, n)) = peers::parse_resp(buf)? else {
            return Ok(None);
        };
        let incoming = if let Some((_, payload)) = peers::resp_message(&frame) {
            Incoming::Delivery(wire::decode_payload(payload))
        } else if let Some((subscribed, channel)) = peers::resp_subscription(&frame) {
            Incoming::Reply(if subscribed {
                Reply::Subscribed(channel)
            } else {
                Reply::Unsubscribed
            })
        } else if let Resp::Error(text) = frame {
            Incoming::ServerError(text)
        } else {
            Incoming::Nothing
        };
        Ok(Some((incoming, n)))
    }

    fn refusal(&self, text: &[u8]) -> String {
        format!(
            "server refused the subscribe: {}",
            String::from_utf8_lossy(text)
        )
    }
}
