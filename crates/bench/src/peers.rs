//! The protocols `ringcast bench` speaks: ringcast's line protocol, ringcast over
//! WebSocket (its frames are in [`super::ws`]), and the peers the harness can load instead
//! of ringcast, Redis pub/sub (RESP2) and nats-server: pure parsers for the peers' frames
//! (what a client sends and reads in each protocol is in [`super::codec`]). Decoding
//! works on a buffer and returns `Ok(None)` for an incomplete frame; nothing here touches
//! a socket.

use serde::{Deserialize, Serialize};

/// The protocol `ringcast bench --proto` speaks, and so the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// ringcast's line protocol: `/join roomN`, chat lines, `/stats`.
    #[default]
    Ringcast,
    /// ringcast over WebSocket (`GET /ws` on its HTTP address): the same commands and
    /// lines, one text frame each, client frames masked.
    Ws,
    /// Redis pub/sub: `SUBSCRIBE roomN` on each client, `PUBLISH` on a second connection.
    Redis,
    /// NATS core: `SUB roomN`, `PUB`, with `echo:false` so senders get no copy.
    Nats,
}

impl Proto {
    /// Whether the system under test is a ringcast server (which answers `/stats`).
    pub fn is_ringcast(self) -> bool {
        matches!(self, Proto::Ringcast | Proto::Ws)
    }

    /// Redis delivers a message to every subscriber of its channel, its publisher's own
    /// subscription included: the harness counts those echoes apart from deliveries.
    pub fn echoes_to_publisher(self) -> bool {
        self == Proto::Redis
    }

    /// Redis: a subscribed connection may not PUBLISH, so each publisher opens a second
    /// connection for its sends.
    pub fn publishes_on_own_connection(self) -> bool {
        self == Proto::Redis
    }

    /// NATS does not order the PONG that confirms a subscription change with deliveries
    /// already routed: a mover's new room counts from when the move is sent, and messages
    /// of the room it left are in doubt until then.
    pub fn confirms_moves_out_of_order(self) -> bool {
        self == Proto::Nats
    }

    /// Redis answers a move's UNSUBSCRIBE and SUBSCRIBE apart: the move is confirmed by
    /// the second answer.
    pub fn confirms_leave_apart(self) -> bool {
        self == Proto::Redis
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Ringcast => "ringcast",
            Proto::Ws => "ws",
            Proto::Redis => "redis",
            Proto::Nats => "nats",
        }
    }
}

/// A frame that breaks the protocol: the connection cannot be trusted past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{proto} protocol error: {what}")]
pub struct ProtocolError {
    pub proto: &'static str,
    pub what: String,
}

fn error(proto: &'static str, what: impl Into<String>) -> ProtocolError {
    ProtocolError {
        proto,
        what: what.into(),
    }
}

/// Longest control line or bulk length accepted, so garbage cannot make us buffer forever.
const MAX_LINE: usize = 64 * 1024;
const MAX_BULK: usize = 64 * 1024 * 1024;
/// Arrays nest this deep at most; Redis pushes are flat.
const MAX_DEPTH: usize = 8;

/// The position of the `\r\n` ending the line that starts at `from`, if complete.
fn line_end(buf: &[u8], from: usize, proto: &'static str) -> Result<Option<usize>, ProtocolError> {
    match memchr::memchr(b'\n', &buf[from..]) {
        Some(i) => {
            let end = from + i;
            if end == from || buf[end - 1] != b'\r' {
                return Err(error(proto, "line not ended by CRLF"));
            }
            Ok(Some(end - 1))
        }
        None if buf.len() - from > MAX_LINE => Err(error(proto, "control line too long")),
        None => Ok(None),
    }
}

fn parse_int(text: &[u8], proto: &'static str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            error(
                proto,
                format!("bad number {:?}", String::from_utf8_lossy(text)),
            )
        })
}

/// One RESP2 value, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// `None` is the null bulk string `$-1`.
    Bulk(Option<&'a [u8]>),
    /// `None` is the null array `*-1`.
    Array(Option<Vec<Resp<'a>>>),
}

/// Decodes one RESP2 value from the start of `buf`: the value and the bytes it took, or
/// `None` when `buf` holds only part of it.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>, ProtocolError> {
    parse_resp_at(buf, 0, 0)
}

fn parse_resp_at(
    buf: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(Resp<'_>, usize)>, ProtocolError> {
    const P: &str = "RESP";
    if at >= buf.len() {
        return Ok(None);
    }
    let Some(end) = line_end(buf, at, P)? else {
        return Ok(None);
    };
    let body = &buf[at + 1..end];
    let next = end + 2;
    let value = match buf[at] {
        b'+' => Resp::Simple(body),
        b'-' => Resp::Error(body),
        b':' => Resp::Integer(parse_int(body, P)?),
        b'$' => {
            let len = parse_int(body, P)?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            let len = len as usize;
            if len > MAX_BULK {
                return Err(error(P, format!("bulk string of {len} bytes")));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err(error(P, "bulk string not ended by CRLF"));
            }
            return Ok(Some((
                Resp::Bulk(Some(&buf[next..next + len])),
                next + len + 2,
            )));
        }
        b'*' => {
            let len = parse_int(body, P)?;
            if len < 0 {
                return Ok(Some((Resp::Array(None), next)));
            }
            if depth >= MAX_DEPTH {
                return Err(error(P, "arrays nested too deep"));
            }
            // Each element takes at least 3 bytes, so a larger count is a lie (or
            // incomplete); capping the reservation keeps a bad length from allocating.
            let mut items = Vec::with_capacity((len as usize).min(16));
            let mut pos = next;
            for _ in 0..len {
                match parse_resp_at(buf, pos, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((Resp::Array(Some(items)), pos)));
        }
        other => {
            return Err(error(
                P,
                format!("unknown type byte {:?}", char::from(other)),
            ))
        }
    };
    Ok(Some((value, next)))
}

/// Appends a RESP array of bulk strings (a command) to `out`.
pub fn encode_resp_command(args: &[&[u8]], out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A pushed Redis pub/sub message: `["message", channel, payload]`.
pub fn resp_message<'a>(frame: &Resp<'a>) -> Option<(&'a [u8], &'a [u8])> {
    let Resp::Array(Some(items)) = frame else {
        return None;
    };
    match items.as_slice() {
        [Resp::Bulk(Some(kind)), Resp::Bulk(Some(channel)), Resp::Bulk(Some(payload))]
            if kind.eq_ignore_ascii_case(b"message") =>
        {
            Some((channel, payload))
        }
        _ => None,
    }
}

/// A (un)subscription's confirmation: `(true, channel)` for `["subscribe", channel,
/// count]`, `(false, channel)` for `["unsubscribe", channel, count]`.
pub fn resp_subscription<'a>(frame: &Resp<'a>) -> Option<(bool, &'a [u8])> {
    let Resp::Array(Some(items)) = frame else {
        return None;
    };
    match items.as_slice() {
        [Resp::Bulk(Some(kind)), Resp::Bulk(Some(channel)), Resp::Integer(_)] => {
            if kind.eq_ignore_ascii_case(b"subscribe") {
                Some((true, channel))
            } else if kind.eq_ignore_ascii_case(b"unsubscribe") {
                Some((false, channel))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The confirmation of `SUBSCRIBE channel`: `["subscribe", channel, count]`.
pub fn resp_is_subscribed(frame: &Resp<'_>, channel: &[u8]) -> bool {
    let Resp::Array(Some(items)) = frame else {
        return false;
    };
    matches!(
        items.as_slice(),
        [Resp::Bulk(Some(kind)), Resp::Bulk(Some(ch)), Resp::Integer(_)]
            if kind.eq_ignore_ascii_case(b"subscribe") && *ch == channel
    )
}

/// One operation a NATS server sends, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nats<'a> {
    /// The JSON after `INFO`.
    Info(&'a [u8]),
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// The text after `-ERR`.
    Err(&'a [u8]),
}

/// Decodes one NATS server operation from the start of `buf`, like [`parse_resp`].
pub fn parse_nats(buf: &[u8]) -> Result<Option<(Nats<'_>, usize)>, ProtocolError> {
    const P: &str = "NATS";
    let Some(end) = line_end(buf, 0, P)? else {
        return Ok(None);
    };
    let line = &buf[..end];
    let next = end + 2;
    let (op, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &[u8]| op.eq_ignore_ascii_case(name);
    let frame = if is(b"MSG") {
        let args: Vec<&[u8]> = rest
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|a| !a.is_empty())
            .collect();
        let (subject, sid, reply, len) = match args.as_slice() {
            [s, i, n] => (*s, *i, None, *n),
            [s, i, r, n] => (*s, *i, Some(*r), *n),
            _ => return Err(error(P, "MSG needs 3 or 4 arguments")),
        };
        let len = parse_int(len, P)?;
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(error(P, format!("MSG payload of {len} bytes")));
        }
        let len = len as usize;
        if buf.len() < next + len + 2 {
            return Ok(None);
        }
        if &buf[next + len..next + len + 2] != b"\r\n" {
            return Err(error(P, "MSG payload not ended by CRLF"));
        }
        let payload = &buf[next..next + len];
        return Ok(Some((
            Nats::Msg {
                subject,
                sid,
                reply,
                payload,
            },
            next + len + 2,
        )));
    } else if is(b"PING") {
        Nats::Ping
    } else if is(b"PONG") {
        Nats::Pong
    } else if is(b"+OK") {
        Nats::Ok
    } else if is(b"-ERR") {
        Nats::Err(rest)
    } else if is(b"INFO") {
        Nats::Info(rest)
    } else {
        return Err(error(
            P,
            format!("unknown operation {:?}", String::from_utf8_lossy(op)),
        ));
    };
    Ok(Some((frame, next)))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The `redis_version` field of an `INFO server` reply.
pub fn redis_version(info: &[u8]) -> Option<String> {
    String::from_utf8_lossy(info).lines().find_map(|l| {
        l.trim()
            .strip_prefix("redis_version:")
            .map(|v| v.trim().to_string())
    })
}

/// The `version` field of a NATS `INFO` JSON object.
pub fn nats_version(info_json: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(info_json).ok()?;
    value.get("version")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` cut at every byte boundary: the prefix must parse as incomplete (or as
    /// the frames wholly inside it), and the frames must come out the same each time.
    /// Returns the frames of the whole stream, as their `Debug` text.
    fn split_everywhere(
        stream: &[u8],
        parse: impl Fn(&[u8]) -> Result<Option<(String, usize)>, ProtocolError>,
    ) -> Vec<String> {
        let parse_all = |buf: &mut Vec<u8>, out: &mut Vec<String>| {
            let mut used = 0;
            while let Some((frame, n)) = parse(&buf[used..]).expect("valid stream") {
                assert!(n > 0);
                out.push(frame);
                used += n;
            }
            buf.drain(..used);
        };
        let mut whole = Vec::new();
        parse_all(&mut stream.to_vec(), &mut whole);
        for cut in 0..=stream.len() {
            let mut got = Vec::new();
            let mut buf = stream[..cut].to_vec();
            parse_all(&mut buf, &mut got);
            buf.extend_from_slice(&stream[cut..]);
            parse_all(&mut buf, &mut got);
            assert!(buf.is_empty(), "bytes left at cut {cut}");
            assert_eq!(got, whole, "cut at {cut}");
        }
        // And one byte at a time.
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for &b in stream {
            buf.push(b);
            parse_all(&mut buf, &mut got);
        }
        assert_eq!(got, whole, "byte by byte");
        whole
    }

    /// Every frame of a complete stream.
    fn all<'a, T>(
        mut stream: &'a [u8],
        parse: impl Fn(&'a [u8]) -> Result<Option<(T, usize)>, ProtocolError>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        while let Some((frame, n)) = parse(stream).expect("valid stream") {
            out.push(frame);
            stream = &stream[n..];
        }
        assert!(stream.is_empty());
        out
    }

    #[test]
    fn resp_frames_survive_every_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nroom3\r\n:1\r\n");
        // A binary payload holding CRLF and a '*': framing is by length, not lines.
        stream.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$5\r\nroom3\r\n$8\r\nab\r\n*1\r\n\r\n");
        stream.extend_from_slice(b":42\r\n+OK\r\n-ERR wrong\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n");
        let texts = split_everywhere(&stream, |b| {
            parse_resp(b).map(|o| o.map(|(f, n)| (format!("{f:?}"), n)))
        });
        let frames = all(&stream, parse_resp);
        assert_eq!(texts.len(), 9);
        assert_eq!(frames.len(), 9);
        assert!(resp_is_subscribed(&frames[0], b"room3"));
        assert!(!resp_is_subscribed(&frames[0], b"room4"));
        assert_eq!(
            resp_message(&frames[1]),
            Some((&b"room3"[..], &b"ab\r\n*1\r\n"[..]))
        );
        assert_eq!(frames[2], Resp::Integer(42));
        assert_eq!(frames[3], Resp::Simple(b"OK"));
        assert_eq!(frames[4], Resp::Error(b"ERR wrong"));
        assert_eq!(frames[5], Resp::Bulk(None));
        assert_eq!(frames[6], Resp::Array(None));
        assert_eq!(frames[7], Resp::Array(Some(vec![])));
        assert_eq!(frames[8], Resp::Bulk(Some(b"")));
    }

    #[test]
    fn resp_garbage_is_an_error() {
        assert!(parse_resp(b"?x\r\n").is_err());
        assert!(parse_resp(b":12a\r\n").is_err());
        assert!(parse_resp(b"$3\r\nabcd\r\n").is_err());
        assert!(parse_resp(b"+OK\n").is_err());
        assert_eq!(parse_resp(b"*2\r\n:1\r\n"), Ok(None));
    }

    #[test]
    fn nats_ops_survive_every_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"INFO {\"server_id\":\"x\",\"version\":\"2.9.10\"}\r\n");
        stream.extend_from_slice(b"PING\r\n+OK\r\nPONG\r\n");
        // The payload holds CRLF and something that looks like an operation.
        stream.extend_from_slice(b"MSG room1 1 10\r\nab\r\nPING\r\n\r\n");
        stream.extend_from_slice(b"MSG room2  7 _INBOX.x 0\r\n\r\n");
        stream.extend_from_slice(b"-ERR 'Slow Consumer'\r\nmsg room1 1 1\r\nz\r\n");
        let texts = split_everywhere(&stream, |b| {
            parse_nats(b).map(|o| o.map(|(f, n)| (format!("{f:?}"), n)))
        });
        let ops = all(&stream, parse_nats);
        assert_eq!(texts.len(), 8);
        assert_eq!(ops.len(), 8);
        let Nats::Info(info) = ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(nats_version(info).as_deref(), Some("2.9.10"));
        assert_eq!(ops[1..4], [Nats::Ping, Nats::Ok, Nats::Pong]);
        assert_eq!(
            ops[4],
            Nats::Msg {
                subject: b"room1",
                sid: b"1",
                reply: None,
                payload: b"ab\r\nPING\r\n"
            }
        );
        assert_eq!(
            ops[5],
            Nats::Msg {
                subject: b"room2",
                sid: b"7",
                reply: Some(b"_INBOX.x"),
                payload: b""
            }
        );
        assert_eq!(ops[6], Nats::Err(b"'Slow Consumer'"));
        assert!(matches!(ops[7], Nats::Msg { payload: b"z", .. }));
    }

    #[test]
    fn nats_garbage_is_an_error() {
        assert!(parse_nats(b"HELLO\r\n").is_err());
        assert!(parse_nats(b"MSG a\r\n").is_err());
        assert!(parse_nats(b"MSG a 1 3\r\nabcXY").is_err());
        assert!(parse_nats(b"PING\n").is_err());
        assert_eq!(parse_nats(b"MSG a 1 3\r\nab"), Ok(None));
    }

    #[test]
    fn versions() {
        let info = b"# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info).as_deref(), Some("7.0.15"));
        assert_eq!(nats_version(b"{\"version\":1}"), None);
    }
}
