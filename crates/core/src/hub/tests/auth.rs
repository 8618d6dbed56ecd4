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
    // A guest's name is no token's.
    assert_eq!(sim.say(guest, "/nick bob"), ["* you are bob"]);
    let other = sim.connect();
    assert_eq!(
        sim.say(other, "/auth bob/2000"),
        ["* error: name bob is taken"]
    );
    assert_eq!(sim.auth_count(AuthOutcome::NameTaken), 1);
    // An unauthenticated client chats as without auth.
    sim.say(guest, "hello");
    assert_eq!(sim.output(ann).concat(), "bob: hello\n");
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

#[test]
fn connections_of_one_sub_share_its_name_and_hear_each_other() {
    let mut sim = Sim::with_auth(AuthMode::Optional);
    let guest = sim.connect();
    let tab = sim.connect();
    let phone = sim.connect();
    assert_eq!(sim.say(tab, "/auth ann/2000"), ["* you are ann"]);
    assert_eq!(sim.say(phone, "/auth ann/2000"), ["* you are ann"]);
    // Each is a member: a line from one reaches the other, and everyone else.
    sim.say(tab, "hi");
    assert_eq!(sim.output(phone).concat(), "ann: hi\n");
    assert_eq!(sim.output(guest).concat(), "ann: hi\n");
    // Listed once, counted per connection.
    assert_eq!(
        sim.say(guest, "/who"),
        ["* members of lobby (2): ann, user1"]
    );
    assert_eq!(sim.say(guest, "/rooms"), ["* rooms (1): lobby (3)"]);
    // The name stays reserved while any of its connections lives.
    sim.say(tab, "/quit");
    assert_eq!(sim.say(guest, "/nick ann"), ["* error: name ann is taken"]);
    sim.say(phone, "/quit");
    assert_eq!(sim.say(guest, "/nick ann"), ["* you are ann"]);
}

impl Sim {
    /// A node of a cluster with `--auth required`.
    fn clustered_with_auth() -> Self {
        let mut sim = Sim::with_auth(AuthMode::Required);
        sim.hub.shared.cluster = Some(Arc::new(crate::cluster::ClusterView::new("n".into())));
        sim
    }

    /// A line connection that authenticated as nobody yet.
    fn guest_line(&mut self) -> ClientId {
        let id = self
            .hub
            .connect(99, LOCAL, Protocol::Line, self.now)
            .unwrap();
        self.output(id);
        id
    }

    /// The request id of the authenticated claim of `name` asked for now.
    fn claim_of(&mut self, name: &str) -> Option<u64> {
        use crate::cluster::Request;
        let asked = super::requests(self.actions());
        asked.iter().find_map(|r| match r {
            Request::ClaimAuthenticated { id, name: n, .. } if &**n == name => Some(*id),
            _ => None,
        })
    }

    fn answer_claim(&mut self, id: u64, claim: crate::cluster::Claim) {
        let answer = crate::cluster::Answer::Name { id, claim };
        self.hub.handle_answer(answer, self.now);
    }
}

#[test]
fn in_a_cluster_a_token_name_is_claimed_before_its_connection_is_seated() {
    use crate::cluster::{Claim, Request};
    let mut sim = Sim::clustered_with_auth();
    let tab = sim.guest_line();
    sim.input(tab, b"/auth ann/2000\n");
    let claim = sim.claim_of("ann").expect("a claim of ann");
    assert!(
        sim.output(tab).is_empty(),
        "the welcome waits for the cluster"
    );
    assert_eq!(
        sim.say(tab, "/auth ann/2000"),
        Vec::<String>::new(),
        "held behind the claim"
    );
    sim.answer_claim(claim, Claim::Granted);
    let out = sim.output(tab).concat();
    assert!(out.starts_with("* you are ann in lobby"), "{out}");
    assert!(
        out.ends_with("* error: a name change is already in progress\n"),
        "{out}"
    );

    // Another connection of ann's is seated at once: this node holds the name.
    let phone = sim.guest_line();
    assert!(sim.say(phone, "/auth ann/2000")[0].starts_with("* you are ann in lobby"));
    let asked = super::requests(sim.actions());
    assert!(
        asked.is_empty(),
        "no claim, and no guest registration: {asked:?}"
    );

    // A name a guest holds elsewhere is refused; the connection may try again.
    let bob = sim.guest_line();
    sim.input(bob, b"/auth bob/2000\n");
    let claim = sim.claim_of("bob").expect("a claim of bob");
    sim.answer_claim(claim, Claim::Taken);
    assert_eq!(sim.output(bob), ["* error: name bob is taken\n"]);
    assert_eq!(
        sim.say(bob, "hi"),
        ["* error: authenticate first (/auth TOKEN)"]
    );
    assert_eq!(sim.auth_count(AuthOutcome::NameTaken), 1);

    // The name goes back to the cluster only with its last connection.
    sim.say(tab, "/quit");
    let released = |r: &Request| matches!(r, Request::Release { name } if &**name == "ann");
    assert!(!super::requests(sim.actions()).iter().any(released));
    sim.say(phone, "/quit");
    assert!(super::requests(sim.actions()).iter().any(released));
}

#[test]
fn in_a_cluster_a_websocket_whose_token_name_is_taken_is_closed() {
    use crate::cluster::Claim;
    let mut sim = Sim::clustered_with_auth();
    let id = sim.connect_http();
    sim.input(id, &upgrade("/ws?token=ann/2000"));
    let claim = sim.claim_of("ann").expect("a claim of ann");
    sim.answer_claim(claim, Claim::Taken);
    let out = sim.output(id).concat();
    assert!(out.contains("* error: name ann is taken"), "{out}");
    assert!(sim.hub.clients[id].closing.is_some());
}

#[test]
fn in_a_cluster_a_connection_gone_before_its_claim_is_granted_holds_no_name() {
    use crate::cluster::Claim;
    let mut sim = Sim::clustered_with_auth();
    let id = sim.guest_line();
    sim.input(id, b"/auth ann/2000\n/quit\n");
    let claim = sim.claim_of("ann").expect("a claim of ann");
    sim.answer_claim(claim, Claim::Granted);
    assert!(!sim.hub.shared.dir.has_name("ann"));
    assert_eq!(sim.hub.shared.dir.clients(), 0);
}

#[test]
fn in_a_cluster_a_nick_granted_after_its_client_quit_is_given_back() {
    use crate::cluster::{Answer, Claim, Request};
    let mut sim = Sim::clustered(limits());
    let id = sim.connect();
    sim.input(id, b"/nick bo\n/quit\n");
    let asked = super::requests(sim.actions());
    let claim = asked.iter().find_map(|r| match r {
        Request::ClaimName { id, .. } => Some(*id),
        _ => None,
    });
    let answer = Answer::Name {
        id: claim.expect("a claim of bo"),
        claim: Claim::Granted,
    };
    sim.hub.handle_answer(answer, sim.now);
    assert_eq!(sim.output(id), ["* you are bo\n", "* bye\n"]);
    assert!(!sim.hub.shared.dir.has_name("bo"));
    let released = |r: &Request| matches!(r, Request::Release { name } if &**name == "bo");
    assert!(super::requests(sim.actions()).iter().any(released));
}
