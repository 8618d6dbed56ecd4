//! The server-wide view shared by all threads: who is connected under which name, and
//! which names are in which room. It changes on connect, `/nick`, `/join` and disconnect,
//! never per chat message, so one mutex serves it.

use super::stats::{Refusal, Transport};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

/// The room every client starts in.
pub const LOBBY: &str = "lobby";

/// Why a new connection was not admitted. The `Display` text is what the client reads
/// after `* error: ` before its connection is closed.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum Refused {
    /// The server has `max_clients` connections already.
    #[error("server full")]
    Full,
    /// That address has `max_per_ip` connections already.
    #[error("too many connections from your address")]
    PerAddress,
}

impl Refused {
    pub fn reason(self) -> Refusal {
        match self {
            Refused::Full => Refusal::ServerFull,
            Refused::PerAddress => Refusal::PerAddress,
        }
    }
}

/// Another client has that name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("name {0} is taken")]
pub struct NameTaken(pub String);

#[derive(Debug, Default)]
struct Inner {
    names: HashSet<Arc<str>>,
    /// Room name to member names; a room exists while it has members.
    rooms: BTreeMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Open connections per peer address, kept only while `max_per_ip` is set.
    per_address: HashMap<IpAddr, usize>,
}

/// Names, rooms and the client count of the whole server.
#[derive(Debug)]
pub struct Directory {
    inner: Mutex<Inner>,
    /// Clients with a name and a room, by transport.
    clients: [AtomicUsize; Transport::ALL.len()],
    /// Connections admitted and not yet disconnected, closing ones included: this is what
    /// `max_clients` bounds, since a closing connection still holds a descriptor.
    connections: AtomicUsize,
    max_clients: usize,
    /// Most connections from one address; 0: no limit.
    max_per_ip: usize,
    next_user: AtomicU64,
    /// Default names are `user<N>` with N = k * stride + offset for k = 1, 2, ...: in a
    /// cluster each node has its own offset, so defaults are unique across nodes by
    /// construction (stride 1, offset 0 on a single node).
    name_stride: AtomicU64,
    name_offset: AtomicU64,
    lobby: Arc<str>,
}

impl Directory {
    /// A directory for at most `max_clients` connections, and at most `max_per_ip` from
    /// one address (0: any number).
    pub fn new(max_clients: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Mutex::default(),
            clients: Default::default(),
            connections: AtomicUsize::new(0),
            max_clients,
            max_per_ip,
            next_user: AtomicU64::new(1),
            name_stride: AtomicU64::new(1),
            name_offset: AtomicU64::new(0),
            lobby: Arc::from(LOBBY),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave `Inner` half-updated (each method updates it with
        // infallible operations), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `peer` (a chat client, or an HTTP request that may
    /// become one): it holds a place until `disconnected`.
    pub fn admit_connection(&self, peer: IpAddr) -> Result<(), Refused> {
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_clients).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Refused::Full);
        }
        if self.max_per_ip > 0 {
            let mut inner = self.lock();
            let from_peer = inner.per_address.entry(peer).or_default();
            if *from_peer >= self.max_per_ip {
                drop(inner);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerAddress);
            }
            *from_peer += 1;
        }
        Ok(())
    }

    /// Numbers default names `user<k * stride + offset>` from now on (cluster mode: this
    /// node's share of the numbers).
    pub fn number_names(&self, stride: u64, offset: u64) {
        self.name_stride.store(stride.max(1), Ordering::Relaxed);
        self.name_offset.store(offset, Ordering::Relaxed);
    }

    /// A default name free on this server.
    fn fresh_name(&self, inner: &Inner) -> Arc<str> {
        let (stride, offset) = (
            self.name_stride.load(Ordering::Relaxed),
            self.name_offset.load(Ordering::Relaxed),
        );
        loop {
            let k = self.next_user.fetch_add(1, Ordering::Relaxed);
            let candidate = format!("user{}", k * stride + offset);
            if !inner.names.contains(candidate.as_str()) {
                break Arc::from(candidate);
            }
        }
    }

    /// Makes an admitted connection a chat client: gives it a fresh `user<N>` name and
    /// puts it in the lobby. Returns `(name, lobby, members of the lobby now)`.
    pub fn add_member(&self, transport: Transport) -> (Arc<str>, Arc<str>, usize) {
        self.clients[transport as usize].fetch_add(1, Ordering::AcqRel);
        let mut inner = self.lock();
        let name = self.fresh_name(&inner);
        inner.names.insert(name.clone());
        let lobby = inner.rooms.entry(self.lobby.clone()).or_default();
        lobby.insert(name.clone());
        (name, self.lobby.clone(), lobby.len())
    }

    /// `add_member` with a chosen name (an authenticated client's, `--auth`): refused
    /// while another connection holds it.
    pub fn add_named_member(
        &self,
        transport: Transport,
        name: &str,
    ) -> Result<(Arc<str>, Arc<str>, usize), NameTaken> {
        let mut inner = self.lock();
        if inner.names.contains(name) {
            return Err(NameTaken(name.to_owned()));
        }
        self.clients[transport as usize].fetch_add(1, Ordering::AcqRel);
        let name: Arc<str> = Arc::from(name);
        inner.names.insert(name.clone());
        let lobby = inner.rooms.entry(self.lobby.clone()).or_default();
        lobby.insert(name.clone());
        Ok((name, self.lobby.clone(), lobby.len()))
    }

    /// Admits a line client from `peer`: `admit_connection` and `add_member`.
    pub fn admit(&self, peer: IpAddr) -> Result<(Arc<str>, Arc<str>, usize), Refused> {
        self.admit_connection(peer)?;
        Ok(self.add_member(Transport::Tcp))
    }

    /// Renames a client. Renaming to the current name succeeds and changes nothing.
    pub fn rename(&self, old: &Arc<str>, room: &str, new: &str) -> Result<Arc<str>, NameTaken> {
        if &**old == new {
            return Ok(old.clone());
        }
        let mut inner = self.lock();
        if inner.names.contains(new) {
            return Err(NameTaken(new.to_owned()));
        }
        let new: Arc<str> = Arc::from(new);
        inner.names.remove(old);
        inner.names.insert(new.clone());
        if let Some(members) = inner.rooms.get_mut(room) {
            members.remove(old);
            members.insert(new.clone());
        }
        Ok(new)
    }

    /// Gives a client a fresh default name instead of `old` (whose cluster-wide claim
    /// was lost); returns the new name.
    pub fn rename_fresh(&self, old: &Arc<str>, room: &str) -> Arc<str> {
        let mut inner = self.lock();
        let new = self.fresh_name(&inner);
        inner.names.remove(old);
        inner.names.insert(new.clone());
        if let Some(members) = inner.rooms.get_mut(room) {
            members.remove(old);
            members.insert(new.clone());
        }
        new
    }

    /// Every name in use on this server.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.lock().names.iter().cloned().collect()
    }

    /// Members in `room` on this server.
    pub fn room_size(&self, room: &str) -> usize {
        self.lock().rooms.get(room).map_or(0, BTreeSet::len)
    }

    /// Moves a client to another room. Returns the room's shared name and its member count.
    pub fn join(&self, name: &Arc<str>, from: &str, to: &str) -> (Arc<str>, usize) {
        let mut inner = self.lock();
        remove_member(&mut inner, from, name);
        let room = match inner.rooms.get_key_value(to) {
            Some((key, _)) => key.clone(),
            None => Arc::from(to),
        };
        let members = inner.rooms.entry(room.clone()).or_default();
        members.insert(name.clone());
        let count = members.len();
        (room, count)
    }

    /// Forgets a client that left: its name is free again.
    pub fn leave(&self, name: &Arc<str>, room: &str, transport: Transport) {
        let mut inner = self.lock();
        remove_member(&mut inner, room, name);
        inner.names.remove(name);
        drop(inner);
        self.clients[transport as usize].fetch_sub(1, Ordering::AcqRel);
    }

    /// A connection from `peer` admitted by `admit` has ended: its place is free.
    pub fn disconnected(&self, peer: IpAddr) {
        if self.max_per_ip > 0 {
            let mut inner = self.lock();
            if let Some(n) = inner.per_address.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    inner.per_address.remove(&peer);
                }
            }
        }
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Names in a room, sorted.
    pub fn members(&self, room: &str) -> Vec<Arc<str>> {
        let inner = self.lock();
        inner
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Rooms with their member counts, sorted by name.
    pub fn rooms(&self) -> Vec<(Arc<str>, usize)> {
        let inner = self.lock();
        inner
            .rooms
            .iter()
            .map(|(r, m)| (r.clone(), m.len()))
            .collect()
    }

    /// Chat clients connected now.
    pub fn clients(&self) -> usize {
        Transport::ALL.iter().map(|&t| self.clients_by(t)).sum()
    }

    /// Chat clients connected now over `transport`.
    pub fn clients_by(&self, transport: Transport) -> usize {
        self.clients[transport as usize].load(Ordering::Acquire)
    }

    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Rooms with members now.
    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    /// Whether a name is in use (for tests and checks).
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().names.contains(name)
    }
}

fn remove_member(inner: &mut Inner, room: &str, name: &str) {
    if let Some(members) = inner.rooms.get_mut(room) {
        members.remove(name);
        if members.is_empty() {
            inner.rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn admit_rename_join_leave_keep_names_and_rooms_consistent() {
        let dir = Directory::new(2, 0);
        let (a, lobby, n) = dir.admit(LOCAL).unwrap();
        assert_eq!((&*a, &*lobby, n), ("user1", "lobby", 1));
        let (b, _, n) = dir.admit(LOCAL).unwrap();
        assert_eq!(n, 2);
        assert_eq!(dir.admit(LOCAL), Err(Refused::Full));

        assert_eq!(
            dir.rename(&b, "lobby", "user1"),
            Err(NameTaken("user1".into()))
        );
        let b = dir.rename(&b, "lobby", "bob").unwrap();
        assert!(!dir.has_name("user2"));
        let (_, n) = dir.join(&a, "lobby", "chess");
        assert_eq!(n, 1);
        assert_eq!(dir.members("lobby"), vec![b.clone()]);
        assert_eq!(dir.rooms().len(), 2);

        dir.leave(&a, "chess", Transport::Tcp);
        assert_eq!(dir.rooms(), vec![(lobby, 1)]);
        assert_eq!(dir.clients(), 1);
        // Its connection still holds a place until it is gone.
        assert_eq!(dir.admit(LOCAL), Err(Refused::Full));
        dir.disconnected(LOCAL);
        let (c, _, _) = dir.admit(LOCAL).unwrap();
        assert_eq!(&*c, "user3");
    }

    #[test]
    fn fresh_names_skip_names_taken_by_nick() {
        let dir = Directory::new(10, 0);
        let (a, _, _) = dir.admit(LOCAL).unwrap();
        dir.rename(&a, "lobby", "user2").unwrap();
        let (b, _, _) = dir.admit(LOCAL).unwrap();
        assert_eq!(&*b, "user3");
    }

    #[test]
    fn connections_per_address_are_capped_and_freed() {
        let other: IpAddr = [127, 0, 0, 2].into();
        let dir = Directory::new(10, 2);
        let (a, _, _) = dir.admit(LOCAL).unwrap();
        dir.admit(LOCAL).unwrap();
        assert_eq!(dir.admit(LOCAL), Err(Refused::PerAddress));
        // A refusal takes no place, and other addresses are not affected.
        assert_eq!(dir.clients(), 2);
        dir.admit(other).unwrap();
        dir.leave(&a, LOBBY, Transport::Tcp);
        dir.disconnected(LOCAL);
        dir.admit(LOCAL).unwrap();
        assert_eq!(dir.admit(LOCAL), Err(Refused::PerAddress));
    }
}
