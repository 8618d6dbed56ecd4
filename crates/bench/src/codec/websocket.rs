//! ringcast over WebSocket: the same commands and lines, one text frame each, client
//! frames masked (the frame codec is [`crate::ws`]).

use super::{line, room_subject, ClientCodec, Incoming};
use crate::peers::ProtocolError;
use crate::ws::{self, Masker};

/// One WebSocket connection's framing: its masking keys and a message in fragments.
#[derive(Debug)]
pub struct WebSocket {
    masker: Masker,
    reassembly: ws::Reassembly,
}

impl WebSocket {
    pub fn new(masker: Masker) -> Self {
        WebSocket {
            masker,
            reassembly: ws::Reassembly::default(),
        }
    }

    fn text(&mut self, text: &[u8], out: &mut Vec<u8>) {
        out.clear();
        ws::encode_frame(ws::OP_TEXT, text, &mut self.masker, out);
    }
}

impl ClientCodec for WebSocket {
    fn join(&mut self, room: usize, out: &mut Vec<u8>) {
        self.text(format!("/join {}", room_subject(room)).as_bytes(), out);
    }

    fn change_room(&mut self, _: Option<usize>, to: Option<usize>, _: u32, out: &mut Vec<u8>) {
        let target = to.map_or_else(|| "lobby".to_string(), room_subject);
        self.text(format!("/join {target}").as_bytes(), out);
    }

    fn publish(&mut self, _room: usize, text: &[u8], out: &mut Vec<u8>) {
        self.text(text, out);
    }

    fn pong(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        ws::encode_frame(ws::OP_PONG, payload, &mut self.masker, out);
    }

    /// Answers a close (RFC 6455 section 5.5.1) with the same code.
    fn close(&mut self, code: Option<u16>, out: &mut Vec<u8>) {
        out.clear();
        let payload = code.map(u16::to_be_bytes);
        ws::encode_frame(
            ws::OP_CLOSE,
            payload.as_ref().map_or(&[][..], |p| &p[..]),
            &mut self.masker,
            out,
        );
    }

    fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Incoming<'a>, usize)>, ProtocolError> {
        let Some((frame, n)) = ws::parse_frame(buf)? else {
            return Ok(None);
        };
        let incoming = match self.reassembly.feed(frame)? {
            Some(ws::Message::Text(text)) => line::classify(text),
            Some(ws::Message::Binary(_)) => Incoming::Unexpected,
            Some(ws::Message::Ping(payload)) => Incoming::Ping(payload),
            Some(ws::Message::Close(code)) => Incoming::Close(code),
            Some(ws::Message::Pong) | None => Incoming::Nothing,
        };
        Ok(Some((incoming, n)))
    }

    fn error_text(&self, text: &[u8]) -> String {
        line::error_text(text)
    }

    fn refusal(&self, text: &[u8]) -> String {
        line::refusal(text)
    }
}
