//! The HTTP/1.1 that ringcast speaks, bytes only: one request head parsed with
//! `httparse` (a connection serves one request; no keep-alive), and whole responses.

use bytes::Bytes;
use std::fmt::Write as _;

/// Longest request head accepted; a longer one gets 431 and the connection closes.
pub const MAX_HEAD: usize = 8192;
/// Most header lines in a request head.
const MAX_HEADERS: usize = 32;

/// What a request head asked for, with the headers ringcast looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The query string (after `?`), if any, as it came.
    pub query: Option<String>,
    /// `Upgrade: websocket` was asked for (with `Connection: upgrade`).
    pub upgrade_websocket: bool,
    pub websocket_key: Option<String>,
    pub websocket_version: Option<String>,
    /// The `Accept` header, for content negotiation (`/metrics`).
    pub accept: Option<String>,
}

impl Request {
    /// The value of query parameter `name` (`?name=value&...`), as it came: no percent
    /// decoding (a token is base64url and dots, which need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Why a request head was refused before it was understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The response that says so.
    pub fn response(self) -> Bytes {
        match self {
            HeadError::TooLarge => text(431, "request head too large\n"),
            HeadError::Malformed(_) => text(400, "bad request\n"),
        }
    }
}

/// Parses the request head at the front of `buf`: `Ok(None)` while it is incomplete,
/// `Ok(Some((request, length of the head)))` once the blank line has come.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.x request head")),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("no request line"));
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        ..Request::default()
    };
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for header in req.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade = value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            request.websocket_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            request.websocket_version = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("accept") {
            request.accept = Some(value.to_owned());
        }
    }
    request.upgrade_websocket = upgrade && connection_upgrade;
    Ok(Some((request, len)))
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A whole response that ends the connection: status, extra headers, body.
pub fn response(status: u16, content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A plain-text response that ends the connection.
pub fn text(status: u16, body: &str) -> Bytes {
    response(status, "text/plain; charset=utf-8", &[], body.as_bytes())
}

/// The 101 response that accepts a WebSocket handshake whose key was `key`.
pub fn switching_protocols(key: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        super::ws::accept_key(key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_upgrade_is_recognised_in_any_case_and_split_anywhere() {
        let head = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\
                     Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     sec-websocket-version: 13\r\n\r\nrest";
        for split in 0..head.len() - 4 {
            assert_eq!(parse_head(&head[..split]), Ok(None), "split at {split}");
        }
        let (request, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(len, head.len() - 4);
        assert_eq!(request.path, "/ws");
        assert_eq!(request.query_param("token"), None);
        assert!(request.upgrade_websocket);
        assert_eq!(
            request.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(request.websocket_version.as_deref(), Some("13"));
    }

    #[test]
    fn over_long_and_broken_heads_are_refused() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        assert!(matches!(
            parse_head(b"\x16\x03\x01 hello\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let (plain, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!plain.upgrade_websocket);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let r = text(404, "no\n");
        let r = std::str::from_utf8(&r).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 3\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nno\n"));
        let ws = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==");
        // The example of RFC 6455 section 1.3.
        assert!(std::str::from_utf8(&ws)
            .unwrap()
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }
}
