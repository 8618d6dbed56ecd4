//! The publish API (issue 25): `POST /api/publish` on the HTTP listeners, for an
//! application's backend to say a line in a room without being a chat client.
//!
//! This module decides everything about a request up to the line itself, from its head
//! and body (sans-IO, like the rest of `web`): the key (`Authorization: Bearer KEY`,
//! compared in constant time with every key of `--api-keys`), the method, the body's
//! framing (`Content-Length` only, at most `--max-line` bytes, waited for across reads),
//! the key's rate (`--api-rate`) and the body (`ringcast_proto::publish`). What passes is
//! a `Publish` that the hub sends through the same path as a chat client's line
//! (`hub/publish.rs`); what does not is answered here with its status and a one-line
//! `{"error": "..."}`.
//!
//! Order of the checks: method (405), key (401), framing (411, 413), the whole body
//! (waited for; `100 Continue` first if the client asked, see `web`), shutdown (503),
//! rate (429), body (400). A request refused before its
//! body is read is answered at once; the connection then closes, reading and dropping
//! what the client still sends (as every HTTP response here: one request per
//! connection).

use super::stats::Stats;
use super::time::{Clock, RateLimit, Tick};
use bytes::Bytes;
use ringcast_proto::http::{self, Request};
use ringcast_proto::publish::parse_publish;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The endpoint's path.
pub const PUBLISH_PATH: &str = "/api/publish";
/// Who a line is from when the request names nobody.
pub const DEFAULT_FROM: &str = "server";

/// How a publish request was answered: `ringcast_publish_total{status=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStatus {
    Ok,
    BadRequest,
    Unauthorized,
    MethodNotAllowed,
    LengthRequired,
    TooLarge,
    TooMany,
    Unavailable,
}

crate::label!(PublishStatus, "status", {
    Ok = "200",
    BadRequest = "400",
    Unauthorized = "401",
    MethodNotAllowed = "405",
    LengthRequired = "411",
    TooLarge = "413",
    TooMany = "429",
    Unavailable = "503",
});

/// A request that passed every check: the line to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub room: String,
    /// The sender's name: the body's `from`, or [`DEFAULT_FROM`].
    pub from: String,
    pub text: String,
}

/// A refused request: its status (counted) and the whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: PublishStatus,
    pub response: Bytes,
}

/// The keys of `--api-keys` and each key's rate limit, shared by every thread (a key's
/// requests land on any of them).
pub struct PublishApi {
    keys: Vec<Box<[u8]>>,
    rate: Option<RateLimit>,
    /// Each key's theoretical arrival time (GCRA, as `--max-msg-rate`), on a clock of its
    /// own: every hub's clock has its own epoch. Locked once per request that reaches
    /// the rate check, never on the chat path.
    limiter: Mutex<(Clock, Vec<Tick>)>,
}

impl std::fmt::Debug for PublishApi {
    /// Never the keys themselves: this ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishApi")
            .field("keys", &self.keys.len())
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// The keys in the text of an `--api-keys` file: one per line, surrounding whitespace
/// and blank lines ignored.
pub fn parse_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

impl PublishApi {
    /// The API with these keys (at least one: the server refuses to start without) and
    /// this rate per key (`None`: no limit), its clock starting at `now`.
    pub fn new(keys: Vec<String>, rate: Option<RateLimit>, now: Instant) -> PublishApi {
        let limiter = Mutex::new((Clock::new(now), vec![Tick::NONE; keys.len()]));
        PublishApi {
            keys: keys
                .into_iter()
                .map(|key| key.into_bytes().into_boxed_slice())
                .collect(),
            rate,
            limiter,
        }
    }

    /// Which key an `Authorization` header holds, if any: `Bearer KEY` (the scheme in
    /// any case). Every key is compared, each in time that does not depend on where the
    /// bytes differ, so the answer's timing tells nothing of a key's bytes.
    fn key_of(&self, authorization: Option<&str>) -> Option<usize> {
        let (scheme, given) = authorization?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let given = given.trim().as_bytes();
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if same_bytes(given, key) {
                found = Some(index);
            }
        }
        found
    }

    /// Counts one request of key `key` at `now` against its rate; over it: how long until
    /// one would be admitted.
    fn admit(&self, key: usize, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        // A poisoned lock only means another thread panicked while holding it; the
        // ticks are still ticks.
        let mut limiter = self.limiter.lock().unwrap_or_else(|err| err.into_inner());
        let (clock, tats) = &mut *limiter;
        let now = clock.tick(now);
        let tat = &mut tats[key];
        match rate.admit(tat, now) {
            true => Ok(()),
            false => Err(rate.retry_after(*tat, now)),
        }
    }
}

/// Equal length and bytes, with no early exit on the first difference (the length is
/// not secret: a key's length says little, and `subtle` does the same).
fn same_bytes(given: &[u8], key: &[u8]) -> bool {
    if given.len() != key.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(key)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// What the web layer needs of the server to answer a publish request.
pub(crate) struct Context<'a> {
    pub api: &'a PublishApi,
    pub max_line: usize,
    pub draining: bool,
    pub now: Instant,
}

/// Answers the `POST /api/publish` whose head (`head` bytes long) is at the front of
/// `buf`: `None` while its body has not all come (the head stays in `buf` and is read
/// again with more), else the line to send or the refusal. What the answer ends is
/// removed from `buf`: all of it.
pub(crate) fn serve(
    request: &Request,
    head: usize,
    buf: &mut Vec<u8>,
    cx: &Context<'_>,
) -> Option<Result<Publish, Refusal>> {
    let answer = decide(request, head, buf, cx)?;
    buf.clear();
    Some(answer)
}

fn decide(
    request: &Request,
    head: usize,
    buf: &[u8],
    cx: &Context<'_>,
) -> Option<Result<Publish, Refusal>> {
    use PublishStatus as S;
    if request.method != "POST" {
        return Some(Err(refuse(
            S::MethodNotAllowed,
            "use POST",
            &[("Allow", "POST")],
        )));
    }
    let Some(key) = cx.api.key_of(request.authorization.as_deref()) else {
        let text = "missing or wrong API key (Authorization: Bearer KEY)";
        return Some(Err(refuse(
            S::Unauthorized,
            text,
            &[("WWW-Authenticate", "Bearer")],
        )));
    };
    if request.transfer_encoding {
        let text = "Transfer-Encoding is not supported: send the body with Content-Length";
        return Some(Err(refuse(S::LengthRequired, text, &[])));
    }
    let Some(length) = request.content_length else {
        return Some(Err(refuse(
            S::LengthRequired,
            "Content-Length required",
            &[],
        )));
    };
    let length = match usize::try_from(length) {
        Ok(length) if length <= cx.max_line => length,
        _ => {
            let text = format!("body over --max-line ({} bytes)", cx.max_line);
            return Some(Err(refuse(S::TooLarge, &text, &[])));
        }
    };
    // Bounded: the head is at most `http::MAX_HEAD`, the body at most `--max-line`.
    let body = buf.get(head..head + length)?;
    if cx.draining {
        return Some(Err(refuse(S::Unavailable, "shutting down", &[])));
    }
    if let Err(wait) = cx.api.admit(key, cx.now) {
        // Whole seconds, rounded up: a client that waits that long is admitted.
        let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1).to_string();
        let text = "rate limit of this key (--api-rate) reached";
        return Some(Err(refuse(S::TooMany, text, &[("Retry-After", &secs)])));
    }
    Some(match parse_publish(body) {
        Ok(body) => Ok(Publish {
            room: body.room,
            from: body.from.unwrap_or_else(|| DEFAULT_FROM.to_owned()),
            text: body.text,
        }),
        Err(err) => Err(refuse(S::BadRequest, &err.to_string(), &[])),
    })
}

/// A refusal: its status and `{"error": TEXT}`.
fn refuse(status: PublishStatus, text: &str, headers: &[(&str, &str)]) -> Refusal {
    let mut body = String::from("{\"error\":");
    json_string(text, &mut body);
    body.push_str("}\n");
    Refusal {
        status,
        response: json(code(status), headers, &body),
    }
}

/// `200 {"delivered": N}`.
pub(crate) fn delivered(members: usize) -> Bytes {
    json(200, &[], &format!("{{\"delivered\":{members}}}\n"))
}

fn json(status: u16, headers: &[(&str, &str)], body: &str) -> Bytes {
    http::response(status, "application/json", headers, body.as_bytes())
}

fn code(status: PublishStatus) -> u16 {
    status.name().parse().unwrap_or(500)
}

/// `text` as a JSON string (RFC 8259 section 7): quotes, backslashes and control
/// characters escaped; the rest as it is (UTF-8).
fn json_string(text: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Counts a publish request's answer.
pub(crate) fn count(stats: &Stats, thread: usize, status: PublishStatus) {
    stats.thread(thread).publish.inc(status);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"room":"news","text":"hi \"all\"","from":"bot"}"#;

    fn api(rate: Option<RateLimit>) -> PublishApi {
        let keys = parse_keys("  k1  \n\n\tsecond key\r\n");
        assert_eq!(keys, ["k1", "second key"]);
        PublishApi::new(keys, rate, Instant::now())
    }

    fn request(head: &str) -> (Request, usize) {
        let (request, len) = http::parse_head(head.as_bytes())
            .expect("a valid head")
            .expect("a whole head");
        (request, len)
    }

    fn post(key: &str, body: &str) -> String {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Serves `raw` (one read) and returns the answer's status and response text.
    fn answer(api: &PublishApi, raw: &str, now: Instant) -> (PublishStatus, String) {
        let cx = Context {
            api,
            max_line: 100,
            draining: false,
            now,
        };
        let (req, head) = request(raw);
        let mut buf = raw.as_bytes().to_vec();
        match serve(&req, head, &mut buf, &cx).expect("a whole request") {
            Ok(publish) => (PublishStatus::Ok, format!("{publish:?}")),
            Err(refusal) => {
                assert!(buf.is_empty(), "an answered request leaves nothing");
                let text = String::from_utf8(refusal.response.to_vec()).expect("UTF-8");
                (refusal.status, text)
            }
        }
    }

    #[test]
    fn a_valid_request_is_a_line_from_its_sender_or_the_server() {
        let api = api(None);
        let (status, publish) = answer(&api, &post("k1", BODY), Instant::now());
        assert_eq!(status, PublishStatus::Ok, "{publish}");
        assert!(publish.contains(r#"from: "bot""#) && publish.contains(r#"hi \"all\""#));
        let plain = post("second key", r#"{"room":"r","text":"x"}"#);
        let (status, publish) = answer(&api, &plain, Instant::now());
        assert_eq!(status, PublishStatus::Ok);
        assert!(publish.contains(r#"from: "server""#), "{publish}");
    }

    #[test]
    fn every_refusal_has_its_status_headers_and_a_json_error() {
        use PublishStatus::*;
        let api = api(None);
        let head = |extra: &str| format!("POST /api/publish HTTP/1.1\r\n{extra}\r\n");
        let cases: Vec<(String, PublishStatus, &str)> = vec![
            (
                "GET /api/publish HTTP/1.1\r\n\r\n".into(),
                MethodNotAllowed,
                "Allow: POST\r\n",
            ),
            (
                post("k2", BODY),
                Unauthorized,
                "WWW-Authenticate: Bearer\r\n",
            ),
            (post("k", BODY), Unauthorized, "missing or wrong API key"),
            (post("k1x", BODY), Unauthorized, "WWW-Authenticate"),
            (
                head("Authorization: Basic k1\r\nContent-Length: 2\r\n"),
                Unauthorized,
                "Bearer",
            ),
            (head("Content-Length: 2\r\n"), Unauthorized, "Bearer"),
            (
                head("Authorization: bearer k1\r\nTransfer-Encoding: chunked\r\n"),
                LengthRequired,
                "Transfer-Encoding is not supported",
            ),
            (
                head("Authorization: Bearer k1\r\n"),
                LengthRequired,
                "Content-Length required",
            ),
            (
                head("Authorization: Bearer k1\r\nContent-Length: 101\r\n"),
                TooLarge,
                r#"{"error":"body over --max-line (100 bytes)"}"#,
            ),
            (
                post("k1", "{"),
                BadRequest,
                r#"{"error":"invalid JSON at byte 1"}"#,
            ),
            (
                post("k1", r#"{"room":"a b","text":"x"}"#),
                BadRequest,
                r#"{"error":"invalid room \"a b\""}"#,
            ),
            (
                post("k1", r#"{"room":"a","text":""}"#),
                BadRequest,
                "text must not be empty",
            ),
            (
                post("k1", r#"{"room":"a","text":"x\ny"}"#),
                BadRequest,
                "text must be one line",
            ),
            (
                post("k1", r#"{"room":"a","text":"x","from":"b c"}"#),
                BadRequest,
                "invalid from",
            ),
            (
                post("k1", r#"{"text":"x"}"#),
                BadRequest,
                "missing field room",
            ),
        ];
        for (raw, status, wanted) in cases {
            let (got, response) = answer(&api, &raw, Instant::now());
            assert_eq!(got, status, "{raw}");
            assert!(
                response.starts_with(&format!("HTTP/1.1 {} ", status.name())),
                "{response}"
            );
            assert!(response.contains("Content-Type: application/json\r\n"));
            assert!(response.contains(wanted), "{wanted:?} in {response}");
            let body = response.split("\r\n\r\n").nth(1).expect("a body");
            assert!(
                body.starts_with("{\"error\":\"") && body.ends_with("\"}\n"),
                "{body:?}"
            );
            assert_eq!(body.lines().count(), 1, "one line: {body:?}");
        }
    }

    #[test]
    fn the_body_is_waited_for_across_reads_and_a_large_one_refused_before_it_comes() {
        let api = api(None);
        let cx = Context {
            api: &api,
            max_line: 100,
            draining: false,
            now: Instant::now(),
        };
        let raw = post("k1", BODY);
        let (req, head) = request(&raw);
        for split in head..raw.len() {
            let mut buf = raw.as_bytes()[..split].to_vec();
            assert_eq!(serve(&req, head, &mut buf, &cx), None, "split at {split}");
            assert_eq!(buf.len(), split, "what came is kept");
        }
        // Bytes beyond the body are dropped with it: one request per connection.
        let mut buf = format!("{raw}GET / HTTP/1.1\r\n\r\n").into_bytes();
        assert!(matches!(serve(&req, head, &mut buf, &cx), Some(Ok(_))));
        assert!(buf.is_empty());
        // 413 from the head alone, no body read.
        let big = "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer k1\r\n\
                   Content-Length: 18446744073709551615\r\n\r\n";
        let (req, head) = request(big);
        let mut buf = big.as_bytes().to_vec();
        let refused = serve(&req, head, &mut buf, &cx).expect("answered at once");
        assert_eq!(refused.map_err(|r| r.status), Err(PublishStatus::TooLarge));
        // While draining, a whole request is refused with 503.
        let draining = Context {
            draining: true,
            ..cx
        };
        let (req, head) = request(&raw);
        let mut buf = raw.clone().into_bytes();
        let refused = serve(&req, head, &mut buf, &draining).expect("answered");
        assert_eq!(
            refused.map_err(|r| r.status),
            Err(PublishStatus::Unavailable)
        );
    }

    #[test]
    fn each_key_has_its_own_rate_and_the_refusal_says_when_to_retry() {
        let rate = RateLimit {
            per_second: 2,
            burst: 2,
        };
        let api = api(Some(rate));
        let start = Instant::now();
        let status = |key: &str, at: Duration| answer(&api, &post(key, BODY), start + at);
        assert_eq!(status("k1", Duration::ZERO).0, PublishStatus::Ok);
        assert_eq!(status("k1", Duration::ZERO).0, PublishStatus::Ok);
        let (over, response) = status("k1", Duration::ZERO);
        assert_eq!(over, PublishStatus::TooMany);
        assert!(response.contains("Retry-After: 1\r\n"), "{response}");
        // Another key is not held back by the first.
        assert_eq!(status("second key", Duration::ZERO).0, PublishStatus::Ok);
        // Half a second gives one more request to the first key.
        let later = Duration::from_millis(500);
        assert_eq!(status("k1", later).0, PublishStatus::Ok);
        assert_eq!(status("k1", later).0, PublishStatus::TooMany);
        // A refused key's requests are not counted: rejected ones do not push it back.
        assert_eq!(
            status("k1", Duration::from_millis(1000)).0,
            PublishStatus::Ok
        );
        // Bad bodies count: the check comes before the body is parsed.
        let bad = post("k1", "{");
        let at = start + Duration::from_secs(60);
        assert_eq!(answer(&api, &bad, at).0, PublishStatus::BadRequest);
        assert_eq!(answer(&api, &bad, at).0, PublishStatus::BadRequest);
        assert_eq!(answer(&api, &bad, at).0, PublishStatus::TooMany);
    }

    #[test]
    fn keys_compare_whole_and_the_debug_text_hides_them() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd") && !same_bytes(b"ab", b"abc"));
        let api = api(None);
        assert_eq!(api.key_of(Some("Bearer k1")), Some(0));
        assert_eq!(api.key_of(Some("BEARER second key")), Some(1));
        assert_eq!(api.key_of(Some("Bearer")), None);
        assert_eq!(api.key_of(Some("Bearer ")), None);
        assert_eq!(api.key_of(None), None);
        let debug = format!("{api:?}");
        assert!(
            !debug.contains("k1") && debug.contains("keys: 2"),
            "{debug}"
        );
        let mut out = String::new();
        json_string("a\"\\\u{1}é\t", &mut out);
        assert_eq!(out, r#""a\"\\\u0001é\t""#);
    }
}
