//! The HTTP member handler: what the HTTP listener answers, decided from a request head
//! read off the connection: the chat page, health, metrics, and the WebSocket upgrade
//! that turns the connection into a chat client. The hub hands it an HTTP connection's
//! input and sends what it says.
//! Every other request gets a short error; a connection serves one request.

use super::directory::Directory;
use super::metrics::{self, Format};
use super::stats::Stats;
use bytes::Bytes;
use ringcast_proto::http::{self, Request};
use ringcast_proto::ws;
use std::net::IpAddr;

/// The chat page, embedded in the binary: no build step, nothing fetched from elsewhere.
pub const CHAT_PAGE: &str = include_str!("../web/chat.html");

/// How long an HTTP connection may take to send its request head.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What an HTTP connection's input comes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// The request head is not complete yet.
    Waiting,
    /// Send this whole response, then close.
    Respond(Bytes),
    /// Send this 101 response: from then on the connection speaks WebSocket as a chat
    /// client, and its first frames may follow in the buffer; with the request's
    /// `?token=` (`--auth`), if any.
    Upgrade(Bytes, Option<String>),
}

/// Reads the request head at the front of `buf` (from `peer`) once it is complete and
/// says how to answer it; `draining` is true once shutdown has begun. What the answer
/// ends is removed from `buf`: all of it, but for an upgrade, whose frames may follow.
pub(crate) fn serve(
    buf: &mut Vec<u8>,
    draining: bool,
    stats: &Stats,
    dir: &Directory,
    peer: IpAddr,
) -> Served {
    let request = match http::parse_head(buf) {
        Ok(None) => return Served::Waiting,
        Ok(Some((request, len))) => {
            buf.drain(..len);
            request
        }
        Err(err) => {
            buf.clear();
            tracing::debug!(%peer, "HTTP request refused: {err}");
            return Served::Respond(err.response());
        }
    };
    match route(&request, draining) {
        Route::Respond(response) => {
            buf.clear();
            Served::Respond(response)
        }
        Route::Metrics(format) => {
            buf.clear();
            Served::Respond(serve_metrics(stats, dir, format))
        }
        Route::Upgrade(response) => {
            let token = request.query_param("token").map(str::to_owned);
            Served::Upgrade(response, token)
        }
    }
}

/// The response to `GET /metrics`: the exposition, or 404 with `--metrics off`.
fn serve_metrics(stats: &Stats, dir: &Directory, format: Format) -> Bytes {
    if !stats.metrics_enabled() {
        return http::text(404, "metrics are off (--metrics off)\n");
    }
    let body = metrics::render(stats, dir, format);
    http::response(200, format.content_type(), &[], body.as_bytes())
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Send this whole response, then close.
    Respond(Bytes),
    /// Send this 101 response: from then on the connection speaks WebSocket as a chat
    /// client.
    Upgrade(Bytes),
    /// Send the server's metrics in this format, then close.
    Metrics(Format),
}

/// Routes one request; `draining` is true once shutdown has begun.
pub(crate) fn route(request: &Request, draining: bool) -> Route {
    let path = request.path.as_str();
    let known = matches!(path, "/" | "/index.html" | "/healthz" | "/ws" | "/metrics");
    if !known {
        return Route::Respond(http::text(404, "not found\n"));
    }
    if request.method != "GET" {
        return Route::Respond(http::response(
            405,
            "text/plain; charset=utf-8",
            &[("Allow", "GET")],
            b"method not allowed\n",
        ));
    }
    match path {
        "/healthz" if draining => Route::Respond(http::text(503, "draining\n")),
        "/healthz" => Route::Respond(http::text(200, "ok\n")),
        "/ws" => upgrade(request, draining),
        "/metrics" => Route::Metrics(Format::negotiate(request.accept.as_deref())),
        _ => Route::Respond(http::response(
            200,
            "text/html; charset=utf-8",
            &[],
            CHAT_PAGE.as_bytes(),
        )),
    }
}

/// The WebSocket handshake (RFC 6455 section 4.2).
fn upgrade(request: &Request, draining: bool) -> Route {
    if !request.upgrade_websocket {
        return Route::Respond(http::response(
            426,
            "text/plain; charset=utf-8",
            &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            b"this is a WebSocket endpoint\n",
        ));
    }
    if request.websocket_version.as_deref() != Some("13") {
        // Section 4.4: say which version this server speaks.
        return Route::Respond(http::response(
            426,
            "text/plain; charset=utf-8",
            &[("Sec-WebSocket-Version", "13")],
            b"unsupported WebSocket version\n",
        ));
    }
    let Some(key) = request
        .websocket_key
        .as_deref()
        .filter(|k| ws::valid_key(k))
    else {
        return Route::Respond(http::text(400, "missing or invalid Sec-WebSocket-Key\n"));
    };
    if draining {
        return Route::Respond(http::text(503, "shutting down\n"));
    }
    Route::Upgrade(http::switching_protocols(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    fn status(route: Route) -> String {
        let (Route::Respond(bytes) | Route::Upgrade(bytes)) = route else {
            return "metrics".into();
        };
        String::from_utf8_lossy(&bytes[..12]).into_owned()
    }

    #[test]
    fn routes_answer_what_they_should() {
        assert_eq!(status(route(&request("GET", "/"), false)), "HTTP/1.1 200");
        assert_eq!(
            status(route(&request("GET", "/healthz"), false)),
            "HTTP/1.1 200"
        );
        assert_eq!(
            status(route(&request("GET", "/healthz"), true)),
            "HTTP/1.1 503"
        );
        assert_eq!(
            status(route(&request("GET", "/nope"), false)),
            "HTTP/1.1 404"
        );
        assert_eq!(status(route(&request("POST", "/"), false)), "HTTP/1.1 405");
        assert_eq!(status(route(&request("GET", "/ws"), false)), "HTTP/1.1 426");
        assert_eq!(
            status(route(&request("POST", "/metrics"), false)),
            "HTTP/1.1 405"
        );
    }

    #[test]
    fn serve_waits_for_the_head_and_leaves_what_follows_an_upgrade() {
        let (dir, peer) = (Directory::new(10, 0), IpAddr::from([127, 0, 0, 1]));
        let stats = Stats::new(1);
        let head: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let mut buf = head[..20].to_vec();
        assert_eq!(serve(&mut buf, false, &stats, &dir, peer), Served::Waiting);
        assert_eq!(buf, &head[..20], "an incomplete head is kept");
        let mut buf = [head, b"\x81\x80"].concat();
        let served = serve(&mut buf, false, &stats, &dir, peer);
        assert!(matches!(served, Served::Upgrade(..)), "{served:?}");
        assert_eq!(buf, b"\x81\x80", "the first frame stays for the decoder");
        let mut buf = b"GET /healthz HTTP/1.1\r\n\r\nmore".to_vec();
        let Served::Respond(ok) = serve(&mut buf, false, &stats, &dir, peer) else {
            panic!("no answer to /healthz")
        };
        assert!(ok.starts_with(b"HTTP/1.1 200") && buf.is_empty());
        let off = Stats::with_info(1, Default::default(), false);
        let mut buf = b"GET /metrics HTTP/1.1\r\n\r\n".to_vec();
        let Served::Respond(off) = serve(&mut buf, false, &off, &dir, peer) else {
            panic!("no answer to /metrics")
        };
        assert!(off.starts_with(b"HTTP/1.1 404"));
    }

    #[test]
    fn metrics_are_served_in_the_format_accept_asks_for() {
        let mut get = request("GET", "/metrics");
        assert_eq!(route(&get, false), Route::Metrics(Format::Classic));
        // Also while draining: a scraper sees the drain happen.
        assert_eq!(route(&get, true), Route::Metrics(Format::Classic));
        get.accept = Some("application/openmetrics-text;version=1.0.0".into());
        assert_eq!(route(&get, false), Route::Metrics(Format::OpenMetrics));
    }

    #[test]
    fn the_handshake_checks_version_and_key() {
        let mut ws = Request {
            upgrade_websocket: true,
            websocket_key: Some("dGhlIHNhbXBsZSBub25jZQ==".into()),
            websocket_version: Some("13".into()),
            ..request("GET", "/ws")
        };
        assert!(matches!(route(&ws, false), Route::Upgrade(_)));
        assert_eq!(status(route(&ws, true)), "HTTP/1.1 503");
        ws.websocket_version = Some("8".into());
        let Route::Respond(old) = route(&ws, false) else {
            panic!("upgraded an old version")
        };
        let old = String::from_utf8_lossy(&old);
        assert!(old.starts_with("HTTP/1.1 426") && old.contains("Sec-WebSocket-Version: 13\r\n"));
        ws.websocket_version = Some("13".into());
        ws.websocket_key = None;
        assert_eq!(status(route(&ws, false)), "HTTP/1.1 400");
    }
}
