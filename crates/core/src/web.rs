//! What the HTTP listener answers, decided from a parsed request head: the chat page,
//! health, metrics, and the WebSocket upgrade that turns the connection into a chat
//! client.
//! Every other request gets a short error; a connection serves one request.

use super::metrics::Format;
use bytes::Bytes;
use ringcast_proto::http::{self, Request};
use ringcast_proto::ws;

/// The chat page, embedded in the binary: no build step, nothing fetched from elsewhere.
pub const CHAT_PAGE: &str = include_str!("../web/chat.html");

/// How long an HTTP connection may take to send its request head.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Send this whole response, then close.
    Respond(Bytes),
    /// Send this 101 response: from then on the connection speaks WebSocket as a chat
    /// client.
    Upgrade(Bytes),
    /// Send the server's metrics in this format (the hub has them), then close.
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
