//! `--auth` in the hub, with a fake verifier whose tokens can be read:
//! `NAME/EXP[/ro][/rooms=a,news.*]` is valid until Unix second EXP, `bad:REASON` is
//! refused with that reason. The hub's Unix time starts at 1,000 s.

use super::*;
use crate::auth::{Auth, AuthMode, Identity, RoomPattern, TokenError, Verifier};
use crate::AuthOutcome;

#[derive(Debug)]
struct Fake;

impl Verifier for Fake {
    fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, TokenError> {
        if let Some(reason) = token.strip_prefix("bad:") {
            return Err(match reason {
                "sig" => TokenError::BadSignature,
                "claim" => TokenError::MissingClaim,
                _ => TokenError::Malformed,
            });
        }
        let mut parts = token.split('/');
        let name = parts.next().ok_or(TokenError::Malformed)?.to_owned();
        let exp: u64 = parts
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or(TokenError::MissingClaim)?;
        if exp <= now_unix {
            return Err(TokenError::Expired);
        }
        let mut identity = Identity {
            name,
            rooms: None,
            publish: true,
            expires_at: exp,
        };
        for part in parts {
            match part.strip_prefix("rooms=") {
                Some(rooms) => {
                    identity.rooms = Some(rooms.split(',').map(RoomPattern::parse).collect())
                }
                None => identity.publish = false,
            }
        }
        Ok(identity)
    }
}

impl Sim {
    fn with_auth(mode: AuthMode) -> Self {
        let mut sim = Sim::new(1, limits());
        sim.hub.shared.auth = Some(Arc::new(Auth {
            mode,
            verifier: Arc::new(Fake),
            unix_at: (sim.now, Duration::from_secs(1000)),
        }));
        sim
    }

    /// Sends one line and returns the lines the client got back.
    fn say(&mut self, id: ClientId, line: &str) -> Vec<String> {
        self.input(id, format!("{line}\n").as_bytes());
        let text = self.output(id).concat();
        text.lines().map(str::to_owned).collect()
    }

    fn auth_count(&self, outcome: AuthOutcome) -> u64 {
        self.stats().auth(outcome)
    }
}

/// The WebSocket handshake's head asking for `path`.
fn upgrade(path: &str) -> Vec<u8> {
    String::from_utf8_lossy(UPGRADE)
        .replacen("/ws", path, 1)
        .into_bytes()
}

#[test]
fn required_mode_admits_only_auth_help_and_quit_until_a_token_names_the_client() {
    let mut sim = Sim::with_auth(AuthMode::Required);
    let other = sim.connect();
    assert!(sim.say(other, "/auth zed/2000")[0].starts_with("* you are zed"));
    let id = sim.hub.connect(9, LOCAL, Protocol::Line, sim.now).unwrap();
    let welcome = sim.output(id).concat();
    assert!(welcome.contains("/auth TOKEN"), "{welcome}");
    assert_eq!(
        sim.say(id, "hello"),
        ["* error: authenticate first (/auth TOKEN)"]
    );
    assert_eq!(
        sim.say(id, "/join x"),
        ["* error: authenticate first (/auth TOKEN)"]
    );
    assert!(sim.say(id, "/help")[0].starts_with("* commands:"));
    // The first client got nothing: the unauthenticated one is in no room.
    assert!(sim.output(other).is_empty());
    let reply = sim.say(id, "/auth ann/2000");
    assert!(reply[0].starts_with("* you are ann in lobby"), "{reply:?}");
    sim.say(id, "hi all");
    assert_eq!(sim.output(other).concat(), "ann: hi all\n");
    assert_eq!(sim.auth_count(AuthOutcome::Ok), 2);
}

#[test]
fn bad_tokens_say_why_and_the_third_closes_the_connection() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let id = sim.connect();
    assert_eq!(
        sim.say(id, "/auth bad:sig"),
        ["* error: invalid token (bad signature)"]
    );
    assert_eq!(
        sim.say(id, "/auth ann/999"),
        ["* error: invalid token (expired)"]
    );
    let (out, _) = {
        sim.input(id, b"/auth bad:claim\n");
        sim.output_then(id)
    };
    assert_eq!(out.concat(), "* error: invalid token (missing claim)\n");
    assert!(sim.hub.clients[id].closing.is_some());
    assert_eq!(sim.auth_count(AuthOutcome::BadSignature), 1);
    assert_eq!(sim.auth_count(AuthOutcome::Expired), 1);
    assert_eq!(sim.auth_count(AuthOutcome::MissingClaim), 1);
}

#[test]
fn optional_mode_reserves_an_authenticated_name() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let guest = sim.connect();
    let ann = sim.connect();
    assert_eq!(sim.say(ann, "/auth ann/2000"), ["* you are ann"]);
    assert_eq!(sim.say(guest, "/nick ann"), ["* error: name ann is taken"]);
    // Another connection of the same user: names stay unique on a server.
    let tab = sim.connect();
    assert_eq!(
        sim.say(tab, "/auth ann/2000"),
        ["* error: name ann is taken"]
    );
    assert_eq!(sim.auth_count(AuthOutcome::NameTaken), 1);
    // An unauthenticated client chats as without auth.
    sim.say(guest, "hello");
    assert_eq!(sim.output(ann).concat(), "user1: hello\n");
}

#[test]
fn rooms_and_read_only_are_the_tokens() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let listener = sim.connect();
    let id = sim.connect();
    sim.say(id, "/auth bob/2000/ro/rooms=a,news.*");
    assert_eq!(sim.say(id, "/join b"), ["* error: not allowed in b"]);
    assert!(sim.say(id, "/join news.sport")[0].starts_with("* joined news.sport"));
    assert!(sim.say(listener, "/join news.sport")[0].starts_with("* joined"));
    assert_eq!(sim.say(id, "hello"), ["* error: read-only"]);
    assert!(sim.output(listener).is_empty());
    assert_eq!(
        sim.say(id, "/nick other"),
        ["* error: your name is bob (set by your token)"]
    );
    assert!(sim.say(id, "/join lobby")[0].starts_with("* joined lobby"));
}

#[test]
fn an_expired_token_closes_the_connection_at_its_exp_on_simulated_time() {
    let mut sim = Sim::with_auth(AuthMode::Required);
    let start = sim.now;
    let id = sim.hub.connect(0, LOCAL, Protocol::Line, sim.now).unwrap();
    sim.output(id);
    sim.advance(Duration::from_secs(10));
    sim.say(id, "/auth ann/1060");
    let at = sim.run_next_deadline();
    assert_eq!(at - start, Duration::from_secs(60));
    let (out, _) = sim.output_then(id);
    assert_eq!(out.concat(), "* error: token expired\n");
    assert!(sim.hub.clients[id].closing.is_some());
    assert_eq!(sim.auth_count(AuthOutcome::Expired), 1);
}

#[test]
fn auth_is_refused_when_off() {
    let mut sim = Sim::new(1, limits());
    let id = sim.connect();
    assert_eq!(
        sim.say(id, "/auth ann/2000"),
        ["* error: authentication is off (--auth off)"]
    );
}

#[test]
fn a_websocket_gets_its_identity_from_the_query_or_a_1008_close() {
    let mut sim = Sim::with_auth(AuthMode::Required);
    let id = sim.connect_http();
    sim.input(id, &upgrade("/ws?token=ann/2000"));
    let out = sim.output(id).concat();
    assert!(out.contains("* you are ann in lobby"), "{out}");

    for (path, reason) in [
        ("/ws", "authenticate first"),
        ("/ws?token=bad:x", "invalid token (malformed)"),
    ] {
        let id = sim.connect_http();
        sim.input(id, &upgrade(path));
        let raw = sim.raw_output(id).concat();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains(reason), "{text}");
        // The close frame: opcode 8, code 1008 (0x03f0).
        let close = raw.windows(2).position(|w| w == [0x03, 0xf0]);
        assert!(close.is_some(), "no 1008 in {raw:?}");
        assert!(sim.hub.clients[id].closing.is_some());
    }
}

#[test]
fn optional_mode_seats_a_websocket_with_a_bad_token_as_a_guest_and_says_why() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let id = sim.connect_http();
    sim.input(id, &upgrade("/ws?token=bad:sig"));
    let out = sim.output(id).concat();
    assert!(out.contains("* you are user"), "{out}");
    assert!(
        out.contains("* error: invalid token (bad signature)"),
        "{out}"
    );
    assert!(sim.hub.clients[id].closing.is_none());
}

#[test]
fn a_fresh_token_for_the_same_name_moves_the_expiry() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let start = sim.now;
    let id = sim.connect();
    assert_eq!(sim.say(id, "/auth ann/1060"), ["* you are ann"]);
    assert_eq!(sim.say(id, "/auth ann/1600"), ["* you are ann"]);
    // The old deadline's entry comes up first and finds nothing due (see `Deadlines`).
    sim.run_next_deadline();
    assert!(sim.output(id).is_empty());
    let at = sim.run_next_deadline();
    assert_eq!(at - start, Duration::from_secs(600));
    assert_eq!(sim.output(id).concat(), "* error: token expired\n");
}
