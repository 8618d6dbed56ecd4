//! The HTTP member handler: what the HTTP listener answers, decided from a request head
//! read off the connection: the chat page, health, metrics, the WebSocket upgrade that
//! turns the connection into a chat client, and `POST /api/publish` (with `--api-keys`;
//! see `publish.rs`), whose body it waits for. The hub hands it an HTTP connection's
//! input and sends what it says.
//! Every other request gets a short error; a connection serves one request.

use super::directory::Directory;
use super::metrics::{self, Format};
use super::publish::{self, Publish, PublishApi, Refusal, PUBLISH_PATH};
use super::stats::Stats;
use bytes::Bytes;
use ringcast_proto::http::{self, Request};
use ringcast_proto::ws;
use std::net::IpAddr;
use std::time::Instant;

/// The chat page, embedded in the binary: no build step, nothing fetched from elsewhere.
pub const CHAT_PAGE: &str = include_str!("../web/chat.html");

/// How long an HTTP connection may take to send its request head.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What an HTTP connection's input comes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// The request head is not complete yet (or the body of `/api/publish`).
    Waiting,
    /// Send this interim response (`100 Continue`), then wait for the body.
    Interim(Bytes),
    /// Send this whole response, then close.
    Respond(Bytes),
    /// Send this 101 response: from then on the connection speaks WebSocket as a chat
    /// client, and its first frames may follow in the buffer; with the request's
    /// `?token=` (`--auth`), if any.
    Upgrade(Bytes, Option<String>),
    /// A request to `/api/publish`: the line to send (then answer 200), or the refusal
    /// to send.
    Publish(Result<Publish, Refusal>),
}

/// What the server is, as an HTTP request sees it.
pub(crate) struct Site<'a> {
    /// Shutdown has begun.
    pub draining: bool,
    pub stats: &'a Stats,
    pub dir: &'a Directory,
    /// `--api-keys`, if given.
    pub api: Option<&'a PublishApi>,
    /// `--max-line`: the longest body `/api/publish` takes.
    pub max_line: usize,
    pub now: Instant,
}

/// Reads the request head at the front of `buf` (from `peer`) once it is complete, and
/// for `/api/publish` its body, and says how to answer it. What the answer ends is
/// removed from `buf`: all of it, but for an upgrade, whose frames may follow.
pub(crate) fn serve(buf: &mut Vec<u8>, site: &Site<'_>, peer: IpAddr) -> Served {
    let request = match http::parse_head(buf) {
        Ok(None) => return Served::Waiting,
        Ok(Some((request, len))) => {
            if let (PUBLISH_PATH, Some(api)) = (request.path.as_str(), site.api) {
                let cx = publish::Context {
                    api,
                    max_line: site.max_line,
                    draining: site.draining,
                    now: site.now,
                };
                return match publish::serve(&request, len, buf, &cx) {
                    // Once, when the head has come and none of the body: a client that
                    // asked waits for it (RFC 9110 section 10.1.1).
                    None if request.expect_continue && buf.len() == len => {
                        Served::Interim(Bytes::from_static(http::CONTINUE))
                    }
                    None => Served::Waiting,
                    Some(answer) => Served::Publish(answer),
                };
            }
            buf.drain(..len);
            request
        }
        Err(err) => {
            buf.clear();
            tracing::debug!(%peer, "HTTP request refused: {err}");
            return Served::Respond(err.response());
        }
    };
    let (draining, stats, dir) = (site.draining, site.stats, site.dir);
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

    fn site<'a>(stats: &'a Stats, dir: &'a Directory) -> Site<'a> {
        Site {
            draining: false,
            stats,
            dir,
            api: None,
            max_line: 4096,
            now: Instant::now(),
        }
    }

    #[test]
    fn serve_waits_for_the_head_and_leaves_what_follows_an_upgrade() {
        let (dir, peer) = (Directory::new(10, 0), IpAddr::from([127, 0, 0, 1]));
        let stats = Stats::new(1);
        let serve = |buf: &mut Vec<u8>, _: bool, stats: &Stats, dir: &Directory, peer| {
            serve(buf, &site(stats, dir), peer)
        };
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

    #[test]
    fn the_publish_api_is_found_only_with_keys_and_waits_for_its_body() {
        let (dir, peer) = (Directory::new(10, 0), IpAddr::from([127, 0, 0, 1]));
        let stats = Stats::new(1);
        let body = r#"{"room":"r","text":"hi"}"#;
        let raw = format!(
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer k\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // Without --api-keys: 404, like any unknown path.
        let mut buf = raw.clone().into_bytes();
        let Served::Respond(none) = serve(&mut buf, &site(&stats, &dir), peer) else {
            panic!("answered otherwise")
        };
        assert!(none.starts_with(b"HTTP/1.1 404"));
        let api = PublishApi::new(vec!["k".into()], None, Instant::now());
        let with_keys = Site {
            api: Some(&api),
            ..site(&stats, &dir)
        };
        let mut buf = raw.as_bytes()[..raw.len() - 3].to_vec();
        assert_eq!(serve(&mut buf, &with_keys, peer), Served::Waiting);
        buf.extend_from_slice(&raw.as_bytes()[raw.len() - 3..]);
        let Served::Publish(Ok(publish)) = serve(&mut buf, &with_keys, peer) else {
            panic!("not published")
        };
        assert_eq!((publish.room.as_str(), publish.text.as_str()), ("r", "hi"));
        assert!(buf.is_empty());
        // Asked for, `100 Continue` once the head is in and none of the body.
        let expect = raw.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
        let head = expect.find("\r\n\r\n").expect("a head") + 4;
        let mut buf = expect.as_bytes()[..head].to_vec();
        let Served::Interim(interim) = serve(&mut buf, &with_keys, peer) else {
            panic!("no 100 Continue")
        };
        assert_eq!(&interim[..], b"HTTP/1.1 100 Continue\r\n\r\n");
        buf.push(b'{');
        assert_eq!(serve(&mut buf, &with_keys, peer), Served::Waiting);
        // Other paths are as they were.
        let mut buf = b"GET /healthz HTTP/1.1\r\n\r\n".to_vec();
        let Served::Respond(ok) = serve(&mut buf, &with_keys, peer) else {
            panic!("no answer to /healthz")
        };
        assert!(ok.starts_with(b"HTTP/1.1 200"));
    }
}
