//! Authenticated names in the bucket (`--auth` with `--cluster`). The connections of one
//! token `sub` share its name on every node (several tabs, a phone and a laptop), so its
//! `name.<NAME>` key belongs to no single node: its value is [`AUTHENTICATED`], which a
//! node's authenticated claim of that name finds and is granted, and which a `/nick` (a
//! guest's claim, whose value is its node's name) finds and is refused.
//!
//! Every node with a connection of the `sub` refreshes the key every lease / 3; a node
//! whose last such connection leaves stops refreshing it but never deletes it (another
//! node may still hold it), so the name is free one lease after the last node holding it
//! let go or died.

use super::*;

/// The value of a name key held by the authenticated connections of the name's `sub`.
/// No node's name is it: a command-line argument (`--node`) holds no NUL.
pub(super) const AUTHENTICATED: &[u8] = b"\0authenticated";

impl Node {
    /// Claims `name` for this node's connections authenticated as that `sub`: granted
    /// if nobody holds it, or if it is held by authenticated connections (of that `sub`:
    /// a token's name is its `sub`) on any node.
    pub(super) async fn claim_authenticated(&self, name: &Arc<str>) -> Claim {
        if !self.view.is_available() {
            return Claim::Unavailable;
        }
        let key = name_key(name);
        let value = Bytes::from_static(AUTHENTICATED);
        let attempt = async {
            match self.kv.create(&key, value.clone()).await {
                Ok(_) => return Claim::Granted,
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => {
                    tracing::warn!(%name, "claiming an authenticated name: {err}");
                    return Claim::Unavailable;
                }
            }
            let Ok(Some(entry)) = self.kv.entry(key.as_str()).await else {
                return Claim::Unavailable;
            };
            if entry.value == AUTHENTICATED {
                return Claim::Granted;
            }
            // This node's own guest claim, whose holder is gone (its release is on its
            // way): this node knows its clients. Taken over only if nobody changed it.
            let stale = entry.value == self.config.node.as_bytes() && !self.dir.has_name(name);
            match stale {
                true => match self.kv.update(&key, value, entry.revision).await {
                    Ok(_) => Claim::Granted,
                    Err(_) => Claim::Taken,
                },
                false => Claim::Taken,
            }
        };
        let claim = tokio::time::timeout(CLAIM_TIMEOUT, attempt)
            .await
            .unwrap_or(Claim::Unavailable);
        if claim == Claim::Granted {
            self.state.borrow_mut().owned.insert(name.clone());
        }
        claim
    }

    /// Claims again a name this node holds (after the link came back), as what holds
    /// it here: authenticated connections or a guest.
    pub(super) async fn claim_again(&self, name: &Arc<str>) -> Claim {
        match self.dir.is_authenticated(name) {
            true => self.claim_authenticated(name).await,
            false => self.claim(name).await,
        }
    }

    /// What this node refreshes a name it holds with: its own name for a guest's,
    /// [`AUTHENTICATED`] for a `sub`'s.
    pub(super) fn held_value(&self, name: &str, node: &Bytes) -> Bytes {
        match self.dir.is_authenticated(name) {
            true => Bytes::from_static(AUTHENTICATED),
            false => node.clone(),
        }
    }
}
