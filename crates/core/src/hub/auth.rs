//! `--auth` in the hub: who a connection is, and what its token lets it do. One place
//! decides it for every transport (`/auth TOKEN` on a line, `GET /ws?token=` on a
//! WebSocket), with named errors and counters, before a line reaches the commands or the
//! fan-out (STYLE.md practice 18).
//!
//! - `required`: a line connection is in no room (no member, no name) until `/auth`
//!   succeeds, and may only `/auth`, `/help` or `/quit`; a WebSocket without a valid
//!   token is told why in a text frame and closed with code 1008.
//! - `optional`: unauthenticated clients chat as without auth; an authenticated
//!   connection takes its token's name, which nobody can then take.
//! - An authenticated client keeps its token's name (`/nick` to another is refused), may
//!   join only its token's `rooms`, and with `publish: false` its chat goes nowhere.
//! - Its token's `exp` is a deadline like any other: when it comes the client is told
//!   `* error: token expired` and closed.
//!
//! Names are unique on a server, as without auth: a second connection presenting a token
//! whose `sub` is in use (another tab of the same user) is refused with the name taken.

use super::*;
use crate::auth::{AuthMode, Identity, TokenError, MAX_BAD_TOKENS};
use crate::stats::AuthOutcome;

/// What a command needs before `/auth` in `required` mode.
pub(super) const AUTH_FIRST: &str = "authenticate first (/auth TOKEN)";
const WELCOME_REQUIRED: &str = "welcome; authenticate with /auth TOKEN (/help lists commands)";

/// A connection's standing under `--auth`.
#[derive(Debug, Default)]
pub(super) struct ClientAuth {
    /// Set once a token was accepted.
    identity: Option<Box<Identity>>,
    /// Invalid tokens it sent; the `MAX_BAD_TOKENS`th closes it.
    bad_tokens: u32,
    /// When its token expires (unset: no token).
    pub(super) expires: Tick,
}

impl From<TokenError> for AuthOutcome {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Expired => AuthOutcome::Expired,
            TokenError::NotYetValid => AuthOutcome::NotYetValid,
            TokenError::BadSignature => AuthOutcome::BadSignature,
            TokenError::Malformed => AuthOutcome::Malformed,
            TokenError::MissingClaim => AuthOutcome::MissingClaim,
        }
    }
}

impl<H: Clone> Hub<H> {
    fn auth_mode(&self) -> AuthMode {
        self.shared
            .auth
            .as_ref()
            .map_or(AuthMode::Off, |auth| auth.mode)
    }

    /// A new line connection: a chat client in the lobby at once, or with `--auth
    /// required`, one told to authenticate first.
    pub(super) fn admit_line(&mut self, id: ClientId, now: Tick) {
        match self.auth_mode() {
            AuthMode::Required => self.reply(id, reply::notice(WELCOME_REQUIRED), now),
            AuthMode::Off | AuthMode::Optional => self.add_member(id, now),
        }
    }

    /// A connection just upgraded to WebSocket, with the token of its `?token=`.
    pub(super) fn admit_websocket(&mut self, id: ClientId, token: Option<&str>, now: Tick) {
        let mode = self.auth_mode();
        let token = match (mode, token) {
            (AuthMode::Off, _) | (AuthMode::Optional, None) => return self.add_member(id, now),
            (AuthMode::Required, None) => return self.refuse(id, AUTH_FIRST.to_owned(), now),
            (_, Some(token)) => token,
        };
        match self.verify(token, now) {
            Ok(identity) => {
                if self.accept(id, identity, now) {
                    return;
                }
                // Its name is in use (told already).
                if mode == AuthMode::Required {
                    self.begin_close(id, Disconnect::Quit, now);
                    return;
                }
                self.add_member(id, now);
            }
            Err(text) if mode == AuthMode::Required => self.refuse(id, text, now),
            Err(text) => {
                self.add_member(id, now);
                self.error(id, ErrorKind::Auth, text, now);
            }
        }
    }

    /// Whether a line's command may be handled; if not, the client is told why.
    pub(super) fn permitted(
        &mut self,
        id: ClientId,
        command: &Result<Command<'_>, CommandError>,
        now: Tick,
    ) -> bool {
        let client = &self.clients[id];
        if client.member.is_none() {
            // `required`, before `/auth`: no name, no room.
            let allowed = matches!(
                command,
                Ok(Command::Auth(_) | Command::Help | Command::Quit | Command::Empty)
            );
            if !allowed {
                self.error(id, ErrorKind::Auth, AUTH_FIRST, now);
            }
            return allowed;
        }
        let Some(identity) = client.auth.identity.as_deref() else {
            return true;
        };
        let refusal = match command {
            Ok(Command::Chat(_)) if !identity.publish => "read-only".to_owned(),
            Ok(Command::Join(room) | Command::Resume(room, ..)) if !identity.may_join(room) => {
                format!("not allowed in {room}")
            }
            Ok(Command::Nick(name)) if *name != identity.name => {
                format!("your name is {} (set by your token)", identity.name)
            }
            _ => return true,
        };
        self.error(id, ErrorKind::Auth, refusal, now);
        false
    }

    /// `/auth TOKEN`.
    pub(super) fn authenticate(&mut self, id: ClientId, token: &str, now: Tick) {
        if self.auth_mode() == AuthMode::Off {
            let text = "authentication is off (--auth off)";
            self.error(id, ErrorKind::Auth, text, now);
            return;
        }
        match self.verify(token, now) {
            Ok(identity) => {
                self.accept(id, identity, now);
            }
            Err(text) => {
                let bad = &mut self.clients[id].auth.bad_tokens;
                *bad += 1;
                if *bad >= MAX_BAD_TOKENS {
                    self.refuse(id, text, now);
                } else {
                    self.error(id, ErrorKind::Auth, text, now);
                }
            }
        }
    }

    /// Checks a token on the hub's clock; a refusal is counted, and its text is what
    /// the client is told.
    fn verify(&mut self, token: &str, now: Tick) -> Result<Identity, String> {
        let Some(auth) = self.shared.auth.clone() else {
            return Err("authentication is off (--auth off)".to_owned());
        };
        let unix = auth.unix_seconds(self.clock.instant(now));
        auth.verifier.verify(token, unix).map_err(|err| {
            self.counters().auth.inc(err.into());
            format!("invalid token ({err})")
        })
    }

    /// A valid token: the connection becomes its holder (with its expiry as a
    /// deadline). False (and the client told) if its name is in use.
    fn accept(&mut self, id: ClientId, identity: Identity, now: Tick) -> bool {
        if !self.take_name(id, &identity.name, now) {
            return false;
        }
        self.counters().auth.inc(AuthOutcome::Ok);
        let expires = match &self.shared.auth {
            Some(auth) => self.clock.tick(auth.instant_of(identity.expires_at)),
            None => Tick::NONE,
        };
        let client = &mut self.clients[id];
        client.auth.expires = expires;
        client.auth.identity = Some(Box::new(identity));
        self.arm(id);
        true
    }

    /// Gives the connection its token's name: seats it in the lobby under that name, or
    /// renames the member it is. False (and the client told) if the name is in use.
    fn take_name(&mut self, id: ClientId, name: &str, now: Tick) -> bool {
        let transport = self.clients[id].codec.transport();
        let taken = match &self.clients[id].member {
            None => match self.shared.dir.add_named_member(transport, name) {
                Ok(seat) => {
                    // The welcome (`* you are NAME in lobby ...`) is the answer.
                    self.seat_member(id, seat, now);
                    return true;
                }
                Err(taken) => taken,
            },
            Some(member) => match self.shared.dir.rename(&member.name, &member.room, name) {
                Ok(name) => {
                    let text = reply::notice(format_args!("you are {name}"));
                    if let Some(member) = self.clients[id].member.as_mut() {
                        member.name = name;
                    }
                    self.reply(id, text, now);
                    return true;
                }
                Err(taken) => taken,
            },
        };
        self.counters().auth.inc(AuthOutcome::NameTaken);
        self.error(id, ErrorKind::NameTaken, taken, now);
        false
    }

    /// The client's token expired: it is told so, and closed.
    pub(super) fn token_expired(&mut self, id: ClientId, now: Tick) {
        self.clients[id].auth.expires = Tick::NONE;
        if self.clients[id].closing.is_none() {
            self.counters().auth.inc(AuthOutcome::Expired);
            self.refuse(id, "token expired".to_owned(), now);
        }
    }

    /// Tells the client `* error: TEXT` and closes it (a WebSocket with code 1008).
    fn refuse(&mut self, id: ClientId, text: String, now: Tick) {
        self.flush_chat(id, now);
        let close = self.clients[id].codec.policy_close(&mut self.framer, &text);
        self.error(id, ErrorKind::Auth, text, now);
        if let Some(close) = close {
            self.push_raw(id, close, now);
        }
        self.begin_close(id, Disconnect::Quit, now);
    }
}
