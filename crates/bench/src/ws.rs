//! WebSocket (RFC 6455, version 13) as the harness's clients speak it: the opening
//! handshake, masked client frames, and a parser of server frames that borrows from the
//! read buffer. A pure codec, like the Redis and NATS ones in [`super::peers`]: nothing
//! here touches a socket.
//!
//! It is written here rather than taken from the server's `proto::ws` on purpose: the
//! harness checks the server's framing, so it must not share its code (a bug in one
//! would hide in both). Receiving allocates nothing per message: a frame's payload is a
//! slice of the read buffer, and only a fragmented message (ringcast never sends one) is
//! copied, into a buffer kept per connection.

use super::peers::ProtocolError;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame payload accepted: far above any chat line, low enough that garbage
/// cannot make the harness buffer without bound.
const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;
/// Longest handshake response head accepted.
const MAX_HEAD: usize = 16 * 1024;

fn error(what: impl Into<String>) -> ProtocolError {
    ProtocolError {
        proto: "WebSocket",
        what: what.into(),
    }
}

/// The masking keys of one connection. RFC 6455 (section 5.3) asks for a fresh,
/// unpredictable key per frame so that a client's frames cannot be chosen to look like
/// something else to a proxy; a per-connection xorshift generator seeded from the clock
/// and the connection is enough for a load generator on loopback, and costs a few
/// nanoseconds per frame.
#[derive(Debug, Clone)]
pub struct Masker {
    state: u64,
}

impl Masker {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 of the seed, so that neighbouring seeds give unrelated streams and
        // the state is never zero (xorshift's one fixed point).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Masker { state: z | 1 }
    }

    /// The next 64 random bits (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn key(&mut self) -> [u8; 4] {
        // The high bits of xorshift64* are its best.
        ((self.next_u64() >> 32) as u32).to_ne_bytes()
    }
}

/// XORs `data` with the 4-byte `key`, starting at key byte 0 (RFC 6455 section 5.3):
/// eight bytes at a time, as this runs over every byte a publisher sends.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so at key byte 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends one complete (FIN) masked client frame to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], masker: &mut Masker, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = masker.key();
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key(masker: &mut Masker) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&masker.next_u64().to_le_bytes());
    raw[8..].copy_from_slice(&masker.next_u64().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 section 4.2.2).
pub fn accept_for(key: &str) -> String {
    let digest = Sha1::new()
        .chain_update(key.as_bytes())
        .chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The opening handshake's request for `GET /ws` on `host`.
pub fn handshake_request(host: &str, key: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
}

/// Checks the server's answer to the handshake at the start of `buf`: the length of the
/// response head once it is complete (frames may follow it in `buf`), `None` before.
/// Anything but `101` with the right `Upgrade`, `Connection` and `Sec-WebSocket-Accept`
/// is an error naming what was wrong.
pub fn parse_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(error("handshake response head too long"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(error(format!("bad handshake response: {err}"))),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        let reason = response.reason.unwrap_or("");
        return Err(error(format!(
            "the server answered the upgrade with {code} {reason}, not 101"
        )));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(error("101 without `Upgrade: websocket`"));
    }
    if !has_token("connection", "upgrade") {
        return Err(error("101 without `Connection: Upgrade`"));
    }
    let want = accept_for(key);
    match header("sec-websocket-accept") {
        Some(got) if got == want => Ok(Some(len)),
        Some(got) => Err(error(format!(
            "Sec-WebSocket-Accept is {got:?}, expected {want:?}"
        ))),
        None => Err(error("101 without Sec-WebSocket-Accept")),
    }
}

/// One server frame, its payload borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// Decodes one server frame from the start of `buf`: the frame and the bytes it took, or
/// `None` when `buf` holds only part of it. A frame that breaks RFC 6455 for a client is
/// an error: a masked frame (servers must not mask), reserved bits or opcodes (no
/// extension was negotiated), a fragmented or over-long control frame.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(error("reserved bits set (no extension was negotiated)"));
    }
    let opcode = b0 & 0x0F;
    let control = opcode & 0x8 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(error(format!("reserved opcode {other:#x}"))),
    }
    if b1 & 0x80 != 0 {
        return Err(error("masked frame from the server"));
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            (u64::from_be_bytes(word), 10)
        }
        short => (u64::from(short), 2),
    };
    if control && (len > 125 || !fin) {
        return Err(error("control frame fragmented or longer than 125 bytes"));
    }
    if len > MAX_PAYLOAD {
        return Err(error(format!("frame of {len} bytes")));
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload: &buf[header..end],
        },
        end,
    )))
}

/// A complete message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message: ringcast sends one per line, without its `\n`.
    Text(&'a [u8]),
    Binary(&'a [u8]),
    /// To be answered with a pong carrying the same payload.
    Ping(&'a [u8]),
    Pong,
    /// The server's close frame and its status code, if it carried one.
    Close(Option<u16>),
}

/// Puts fragmented messages back together. An unfragmented message (every one ringcast
/// sends) passes through as a slice of the read buffer; fragments are copied into a
/// buffer that keeps its capacity for the next one.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// The opcode of the fragmented message in progress (text or binary), if any.
    open: Option<u8>,
    partial: Vec<u8>,
}

impl Reassembly {
    /// Takes one frame; returns the message it completes, if any. Control frames may come
    /// between the fragments of a message (section 5.4).
    pub fn feed<'a>(&'a mut self, frame: Frame<'a>) -> Result<Option<Message<'a>>, ProtocolError> {
        let message = match frame.opcode {
            OP_PING => Message::Ping(frame.payload),
            OP_PONG => Message::Pong,
            OP_CLOSE => Message::Close(match frame.payload {
                [] => None,
                [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
                [_] => return Err(error("close frame with a 1-byte payload")),
            }),
            OP_TEXT | OP_BINARY => {
                if self.open.is_some() {
                    return Err(error("new message inside a fragmented one"));
                }
                if !frame.fin {
                    self.open = Some(frame.opcode);
                    self.partial.clear();
                    self.partial.extend_from_slice(frame.payload);
                    return Ok(None);
                }
                data(frame.opcode, frame.payload)
            }
            _ => {
                let Some(opcode) = self.open else {
                    return Err(error("continuation frame outside a fragmented message"));
                };
                if self.partial.len() as u64 + frame.payload.len() as u64 > MAX_PAYLOAD {
                    return Err(error("fragmented message too long"));
                }
                self.partial.extend_from_slice(frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                self.open = None;
                data(opcode, &self.partial)
            }
        };
        Ok(Some(message))
    }
}

fn data(opcode: u8, payload: &[u8]) -> Message<'_> {
    if opcode == OP_TEXT {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: unmasked, as a server sends it.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 65535 {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// Every message of `stream`, fed cut at `cut`, then the rest.
    fn messages(stream: &[u8], cut: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut re = Reassembly::default();
        let mut buf = stream[..cut].to_vec();
        let mut fed = cut;
        loop {
            let mut used = 0;
            while let Some((frame, n)) = parse_frame(&buf[used..]).expect("valid stream") {
                used += n;
                if let Some(m) = re.feed(frame).expect("valid message") {
                    out.push(format!("{m:?}"));
                }
            }
            buf.drain(..used);
            if fed == stream.len() {
                break;
            }
            buf.extend_from_slice(&stream[fed..]);
            fed = stream.len();
        }
        assert!(buf.is_empty(), "bytes left over at cut {cut}");
        out
    }

    #[test]
    fn server_frames_survive_every_split() {
        let long = vec![b'y'; 300];
        let huge = vec![b'z'; 70_000];
        let mut stream = Vec::new();
        stream.extend(server_frame(true, OP_TEXT, b"* you are user1 in lobby"));
        stream.extend(server_frame(true, OP_TEXT, b"user2: 1 2 3 4 xx"));
        stream.extend(server_frame(true, OP_TEXT, &long));
        // A fragmented message with a ping between its fragments.
        stream.extend(server_frame(false, OP_TEXT, b"frag"));
        stream.extend(server_frame(true, OP_PING, b"hi"));
        stream.extend(server_frame(false, OP_CONTINUATION, b"men"));
        stream.extend(server_frame(true, OP_CONTINUATION, b"ted"));
        stream.extend(server_frame(true, OP_BINARY, &huge));
        stream.extend(server_frame(true, OP_TEXT, b""));
        stream.extend(server_frame(true, OP_CLOSE, &1001u16.to_be_bytes()));
        let whole = messages(&stream, stream.len());
        assert_eq!(whole.len(), 8);
        assert_eq!(
            whole[1],
            format!("{:?}", Message::Text(b"user2: 1 2 3 4 xx"))
        );
        assert_eq!(whole[3], format!("{:?}", Message::Ping(b"hi")));
        assert_eq!(whole[4], format!("{:?}", Message::Text(b"fragmented")));
        assert_eq!(whole[7], format!("{:?}", Message::Close(Some(1001))));
        for cut in (0..stream.len()).filter(|c| *c < 400 || c % 997 == 0) {
            assert_eq!(messages(&stream, cut), whole, "cut at {cut}");
        }
    }

    #[test]
    fn broken_server_frames_are_errors() {
        // Masked, reserved bit, reserved opcode, long ping, fragmented close, a
        // continuation out of nowhere, a new message inside a fragmented one.
        assert!(parse_frame(&[0x81, 0x81, 1, 2, 3, 4, b'x']).is_err());
        assert!(parse_frame(&[0xC1, 0x00]).is_err());
        assert!(parse_frame(&[0x83, 0x00]).is_err());
        let mut long_ping = vec![0x89, 126, 0, 126];
        long_ping.extend([0u8; 126]);
        assert!(parse_frame(&long_ping).is_err());
        assert!(parse_frame(&[0x08, 0x00]).is_err());
        let mut re = Reassembly::default();
        let (cont, _) = parse_frame(&[0x80, 0x01, b'x']).unwrap().unwrap();
        assert!(re.feed(cont).is_err());
        let (first, _) = parse_frame(&[0x01, 0x01, b'a']).unwrap().unwrap();
        assert_eq!(re.feed(first).unwrap(), None);
        let (second, _) = parse_frame(&[0x81, 0x01, b'b']).unwrap().unwrap();
        assert!(re.feed(second).is_err());
        // Incomplete is not an error.
        assert_eq!(parse_frame(&[0x81]).unwrap(), None);
        assert_eq!(parse_frame(&[0x81, 127, 0, 0]).unwrap(), None);
        assert_eq!(parse_frame(&[0x81, 5, b'a']).unwrap(), None);
    }

    #[test]
    fn client_frames_are_masked_with_a_fresh_key_and_unmask_back() {
        let mut masker = Masker::new(7);
        for len in [0usize, 1, 5, 8, 13, 125, 126, 400, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(OP_TEXT, &payload, &mut masker, &mut out);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0x80, "client frames carry the mask bit");
            let (len_field, header) = match out[1] & 0x7F {
                126 => (u64::from(u16::from_be_bytes([out[2], out[3]])), 4),
                127 => (u64::from_be_bytes(out[2..10].try_into().unwrap()), 10),
                n => (u64::from(n), 2),
            };
            assert_eq!(len_field, len as u64);
            let key: [u8; 4] = out[header..header + 4].try_into().unwrap();
            let mut body = out[header + 4..].to_vec();
            assert_eq!(body.len(), len);
            // The byte-by-byte definition of RFC 6455 section 5.3.
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            assert_eq!(body, payload, "length {len}");
        }
        let keys: std::collections::HashSet<[u8; 4]> = (0..1000).map(|_| masker.key()).collect();
        assert!(
            keys.len() > 990,
            "keys repeat: {} distinct of 1000",
            keys.len()
        );
        assert_ne!(Masker::new(1).next_u64(), Masker::new(2).next_u64());
    }

    #[test]
    fn handshake_is_checked() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = new_key(&mut Masker::new(3));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&key)
                .unwrap()
                .len(),
            16
        );
        let mut request = Vec::new();
        handshake_request("127.0.0.1:1", &key, &mut request);
        let request = String::from_utf8(request).unwrap();
        assert!(request.starts_with("GET /ws HTTP/1.1\r\n") && request.ends_with("\r\n\r\n"));
        assert!(request.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));

        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(&key)
        );
        let mut with_frame = good.clone().into_bytes();
        with_frame.extend(server_frame(true, OP_TEXT, b"* you are user1"));
        assert_eq!(
            parse_handshake_response(&with_frame, &key).unwrap(),
            Some(good.len())
        );
        for cut in 0..good.len() {
            assert_eq!(
                parse_handshake_response(&good.as_bytes()[..cut], &key).unwrap(),
                None
            );
        }
        let wrong_key = good.replace(&accept_for(&key), &accept_for("x"));
        let err = parse_handshake_response(wrong_key.as_bytes(), &key).unwrap_err();
        assert!(err.to_string().contains("Sec-WebSocket-Accept"), "{err}");
        let refused = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n";
        let err = parse_handshake_response(refused.as_bytes(), &key).unwrap_err();
        assert!(err.to_string().contains("426"), "{err}");
        let no_upgrade = good.replace("Upgrade: websocket\r\n", "");
        assert!(parse_handshake_response(no_upgrade.as_bytes(), &key).is_err());
    }
}
