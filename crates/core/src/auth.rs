//! Who a connection is: the policy of `--auth`, decided in the core for every transport
//! alike. Verifying a token is pure computation over the key the server was given, so
//! the core owns it through [`Verifier`]; which library checks signatures is the
//! server's business (the core links no JWT or crypto crate).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How connections must identify themselves (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No tokens: `/auth` is refused, names are first come, first served.
    Off,
    /// Anyone may chat; a name held by an authenticated connection is reserved.
    Optional,
    /// A connection is in no room and may only `/auth`, `/help` or `/quit` until a
    /// valid token names it.
    Required,
}

/// A room a token allows: an exact name, or a prefix (`news.*` allows `news.sport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    Exact(String),
    Prefix(String),
}

impl RoomPattern {
    /// `news.*` is a prefix pattern; anything else an exact name.
    pub fn parse(text: &str) -> RoomPattern {
        match text.strip_suffix('*') {
            Some(prefix) => RoomPattern::Prefix(prefix.to_owned()),
            None => RoomPattern::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Exact(name) => name == room,
            RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

/// What a valid token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The chat name (the token's `sub`).
    pub name: String,
    /// The rooms it may be in; `None`: any room. The lobby is always allowed (every
    /// client starts there).
    pub rooms: Option<Vec<RoomPattern>>,
    /// False for a read-only client: its chat lines go nowhere.
    pub publish: bool,
    /// Unix seconds at which the token expires (its `exp`).
    pub expires_at: u64,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        room == crate::LOBBY
            || self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|p| p.matches(room)))
    }
}

/// Why a token was refused. The `Display` text is the REASON of
/// `* error: invalid token (REASON)`.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("expired")]
    Expired,
    /// Its `nbf` (not before) is still to come.
    #[error("not yet valid")]
    NotYetValid,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed")]
    Malformed,
    #[error("missing claim")]
    MissingClaim,
}

/// Checks a token against the server's key; `now_unix` is the core's time in Unix
/// seconds (so expiry is tested on simulated time).
pub trait Verifier: Send + Sync + Debug {
    fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, TokenError>;
}

/// The server's authentication policy, shared by every thread's hub.
#[derive(Debug, Clone)]
pub struct Auth {
    pub mode: AuthMode,
    pub verifier: Arc<dyn Verifier>,
    /// A moment and the Unix time then: how the hub turns its `Instant`s into the Unix
    /// seconds tokens are written in (the hub never reads the wall clock itself).
    pub unix_at: (Instant, Duration),
}

impl Auth {
    /// Unix seconds at `now`.
    pub fn unix_seconds(&self, now: Instant) -> u64 {
        let (then, unix) = self.unix_at;
        (unix + now.saturating_duration_since(then)).as_secs()
    }

    /// The moment the Unix time is `unix` seconds (for an expiry deadline).
    pub fn instant_of(&self, unix: u64) -> Instant {
        let (then, at) = self.unix_at;
        let unix = Duration::from_secs(unix);
        match unix.checked_sub(at) {
            Some(after) => then + after,
            None => then,
        }
    }
}

/// Invalid tokens one connection may send; the last closes it.
pub const MAX_BAD_TOKENS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_patterns_match_exact_names_and_prefixes() {
        let id = Identity {
            name: "ann".into(),
            rooms: Some(vec![RoomPattern::parse("a"), RoomPattern::parse("news.*")]),
            publish: true,
            expires_at: 0,
        };
        assert!(id.may_join("a"));
        assert!(!id.may_join("ab"));
        assert!(id.may_join("news.sport"));
        assert!(!id.may_join("news"));
        assert!(id.may_join(crate::LOBBY));
    }
}
