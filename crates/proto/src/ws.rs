//! WebSocket (RFC 6455, version 13), bytes only: the handshake's accept key, server
//! frames (unmasked, so one framed buffer serves every recipient), and a decoder of
//! client frames into messages. Frame headers are read and written by `soketto`'s
//! base codec; what is here is the message layer around it: masking rules,
//! fragmentation, UTF-8 and size limits, and close codes.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use soketto::base::{Codec, Header, OpCode};
use soketto::Parsing;
use std::ops::ControlFlow;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = Sha1::new()
        .chain_update(key.as_bytes())
        .chain_update(GUID)
        .finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 asks: 16 bytes, base64-encoded.
pub fn valid_key(key: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|raw| raw.len() == 16)
}

/// Close codes ringcast sends (RFC 6455 section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    ProtocolError = 1002,
    Unsupported = 1003,
    InvalidData = 1007,
    Policy = 1008,
    TooBig = 1009,
}

/// A client broke the protocol: the connection is closed with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: CloseCode,
    pub reason: &'static str,
}

impl Violation {
    const fn new(code: CloseCode, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// A complete message from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, reassembled from its fragments, valid UTF-8, at most the limit.
    Text(&'a [u8]),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// The client's close frame and the code it carried, if any.
    Close(Option<u16>),
}

/// A fragmented text message in progress: boxed, so that a client with none (nearly
/// always) pays 8 bytes for it, not the 24 of an empty `Vec`.
#[allow(clippy::box_collection)]
pub type Partial = Option<Box<Vec<u8>>>;

/// Frames server messages with a codec shared by a whole thread (it only holds a scratch
/// buffer), and decodes client frames up to a payload limit.
#[derive(Debug, Clone)]
pub struct WsCodec {
    codec: Codec,
}

impl WsCodec {
    /// A codec for client messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        let mut codec = Codec::new();
        codec.set_max_data_size(max_message);
        Self { codec }
    }

    fn put_frame(&mut self, opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
        let mut header = Header::new(opcode);
        header.set_fin(true).set_payload_len(payload.len());
        out.put_slice(self.codec.encode_header(&header));
        out.put_slice(payload);
    }

    /// Appends one unmasked text frame per `\n`-terminated line of `lines` (the line
    /// without its `\n`). Bytes that are not UTF-8 become U+FFFD: a text frame must be
    /// valid UTF-8, and line clients may send any bytes.
    pub fn frame_lines(&mut self, lines: &[u8], out: &mut BytesMut) {
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            match String::from_utf8_lossy(line) {
                std::borrow::Cow::Borrowed(text) => {
                    self.put_frame(OpCode::Text, text.as_bytes(), out)
                }
                std::borrow::Cow::Owned(text) => self.put_frame(OpCode::Text, text.as_bytes(), out),
            }
        }
    }

    /// `lines` as text frames, in one buffer.
    pub fn lines(&mut self, lines: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(lines.len() + 8);
        self.frame_lines(lines, &mut out);
        out.freeze()
    }

    pub fn pong(&mut self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(payload.len() + 2);
        self.put_frame(OpCode::Pong, payload, &mut out);
        out.freeze()
    }

    /// A close frame with `code` and a short reason (a control frame carries at most 125
    /// bytes).
    pub fn close(&mut self, code: u16, reason: &str) -> Bytes {
        let reason = &reason.as_bytes()[..reason.len().min(123)];
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason);
        let mut out = BytesMut::with_capacity(payload.len() + 2);
        self.put_frame(OpCode::Close, &payload, &mut out);
        out.freeze()
    }

    /// Decodes every complete frame at the front of `buf`, unmasking in place, and calls
    /// `on_message` for each complete message; consumed bytes are removed, leaving at
    /// most one incomplete frame. `partial` holds a fragmented text message between
    /// calls (none while idle). Stops at the first violation, or when `on_message`
    /// breaks.
    pub fn decode_all(
        &self,
        partial: &mut Partial,
        buf: &mut Vec<u8>,
        mut on_message: impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Violation> {
        let mut start = 0;
        let mut flow = ControlFlow::Continue(());
        let result = loop {
            let (header, offset) = match self.codec.decode_header(&buf[start..]) {
                Ok(Parsing::Done { value, offset }) => (value, offset),
                Ok(Parsing::NeedMore(_)) => break Ok(flow),
                Err(soketto::base::Error::PayloadTooLarge { .. }) => {
                    break Err(Violation::new(CloseCode::TooBig, "message too big"))
                }
                Err(_) => break Err(Violation::new(CloseCode::ProtocolError, "bad frame")),
            };
            let len = header.payload_len();
            if buf.len() - start < offset + len {
                break Ok(flow);
            }
            if !header.is_masked() {
                break Err(Violation::new(
                    CloseCode::ProtocolError,
                    "client frames must be masked",
                ));
            }
            let payload = &mut buf[start + offset..start + offset + len];
            Codec::apply_mask(&header, payload);
            start += offset + len;
            match self.message(&header, payload, partial) {
                Ok(Some(message)) => {
                    flow = on_message(message);
                    if header.opcode() == OpCode::Continue {
                        // The fragmented message just handled is over.
                        *partial = None;
                    }
                    if flow.is_break() {
                        break Ok(flow);
                    }
                }
                Ok(None) => {}
                Err(violation) => break Err(violation),
            }
        };
        buf.drain(..start);
        result
    }

    /// What one frame means, given the fragmented message in progress.
    fn message<'a>(
        &self,
        header: &Header,
        payload: &'a [u8],
        partial: &'a mut Partial,
    ) -> Result<Option<Message<'a>>, Violation> {
        let text = |bytes: &'a [u8]| match std::str::from_utf8(bytes) {
            Ok(_) => Ok(Some(Message::Text(bytes))),
            Err(_) => Err(Violation::new(CloseCode::InvalidData, "text is not UTF-8")),
        };
        match header.opcode() {
            OpCode::Text if partial.is_some() => Err(Violation::new(
                CloseCode::ProtocolError,
                "new message inside a fragmented one",
            )),
            OpCode::Text if header.is_fin() => text(payload),
            OpCode::Text => {
                *partial = Some(Box::new(payload.to_vec()));
                Ok(None)
            }
            OpCode::Continue => {
                let Some(message) = partial.as_mut() else {
                    return Err(Violation::new(
                        CloseCode::ProtocolError,
                        "continuation without a message",
                    ));
                };
                if message.len() + payload.len() > self.codec.max_data_size() {
                    return Err(Violation::new(CloseCode::TooBig, "message too big"));
                }
                message.extend_from_slice(payload);
                if !header.is_fin() {
                    return Ok(None);
                }
                text(partial.as_deref().map_or(&[][..], |m| &m[..]))
            }
            OpCode::Binary => Err(Violation::new(
                CloseCode::Unsupported,
                "binary messages are not accepted",
            )),
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(None),
            OpCode::Close => match payload {
                [] => Ok(Some(Message::Close(None))),
                [a, b, reason @ ..] if std::str::from_utf8(reason).is_ok() => {
                    Ok(Some(Message::Close(Some(u16::from_be_bytes([*a, *b])))))
                }
                _ => Err(Violation::new(CloseCode::ProtocolError, "bad close frame")),
            },
            _ => Err(Violation::new(CloseCode::ProtocolError, "unknown opcode")),
        }
    }
}

/// Whether a close code a client sent may be echoed (RFC 6455 section 7.4).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a browser sends it.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Decodes `input` fed in pieces of `step` bytes: messages as owned text, or the
    /// violation.
    fn decode(input: &[u8], step: usize) -> Result<Vec<String>, Violation> {
        let codec = WsCodec::new(64);
        let mut partial = None;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            let _ = codec.decode_all(&mut partial, &mut buf, |m| {
                out.push(match m {
                    Message::Text(t) => format!("text {}", String::from_utf8_lossy(t)),
                    Message::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
                    Message::Close(code) => format!("close {code:?}"),
                });
                ControlFlow::Continue(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn fragments_and_interleaved_pings_decode_alike_at_every_split() {
        let mut input = client_frame(0x1, false, b"hel");
        input.extend(client_frame(0x9, true, b"p"));
        input.extend(client_frame(0x0, false, b"lo "));
        input.extend(client_frame(0x0, true, "wörld".as_bytes()));
        input.extend(client_frame(0x1, true, b"second"));
        input.extend(client_frame(0x8, true, &1000u16.to_be_bytes()));
        let expected = [
            "ping p",
            "text hello wörld",
            "text second",
            "close Some(1000)",
        ];
        for step in 1..=input.len() {
            assert_eq!(decode(&input, step).unwrap(), expected, "step {step}");
        }
    }

    #[test]
    fn protocol_rules_give_their_close_codes() {
        let code = |input: &[u8]| decode(input, usize::MAX).unwrap_err().code;
        let mut unmasked = client_frame(0x1, true, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.truncate(2);
        unmasked.extend_from_slice(b"hi");
        assert_eq!(code(&unmasked), CloseCode::ProtocolError);
        assert_eq!(
            code(&client_frame(0x2, true, b"bin")),
            CloseCode::Unsupported
        );
        assert_eq!(
            code(&client_frame(0x1, true, b"\xff\xfe")),
            CloseCode::InvalidData
        );
        assert_eq!(
            code(&client_frame(0x1, true, &[b'a'; 65])),
            CloseCode::TooBig
        );
        // A message over the limit in fragments that each fit.
        let mut split = client_frame(0x1, false, &[b'a'; 40]);
        split.extend(client_frame(0x0, true, &[b'a'; 40]));
        assert_eq!(code(&split), CloseCode::TooBig);
        assert_eq!(
            code(&client_frame(0x0, true, b"x")),
            CloseCode::ProtocolError
        );
        let mut nested = client_frame(0x1, false, b"a");
        nested.extend(client_frame(0x1, true, b"b"));
        assert_eq!(code(&nested), CloseCode::ProtocolError);
        assert_eq!(
            code(&client_frame(0x9, false, b"")),
            CloseCode::ProtocolError
        );
        // Nothing is kept past an incomplete frame's header: a huge length is refused as
        // soon as it is read.
        assert_eq!(
            code(&[0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]),
            CloseCode::TooBig
        );
    }

    #[test]
    fn server_frames_are_unmasked_text_one_per_line() {
        let mut codec = WsCodec::new(64);
        let frames = codec.lines(b"ann: hi\nbo: \xff\n");
        assert_eq!(&frames[..], b"\x81\x07ann: hi\x81\x07bo: \xef\xbf\xbd");
        let long = codec.lines(&[b"x".repeat(300), b"\n".to_vec()].concat());
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&codec.close(1009, "too big")[..4], &[0x88, 9, 0x03, 0xf1]);
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("short"));
    }
}
