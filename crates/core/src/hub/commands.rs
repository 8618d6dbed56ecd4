//! What the chat commands that concern names and rooms answer (`/join`, `/nick`,
//! `/who`, `/rooms`; `/stats` too): from this node's directory, or, in cluster mode,
//! by asking the cluster (see `cluster.rs`).

use super::*;

impl<H: Clone> Hub<H> {
    pub(super) fn join(&mut self, id: ClientId, room: &str, now: Tick) {
        let member = self.clients[id].member();
        if &*member.room == room {
            let text = format!("you are in {room} already");
            self.error(id, ErrorKind::AlreadyInRoom, text, now);
            return;
        }
        let (room, members) = self.move_to(id, room);
        if self.shared.cluster.is_some() {
            // Confirmed once this node receives the room's chat from the others, so a
            // line sent right after the reply reaches this client from any node.
            self.ask(
                id,
                Awaited::Join {
                    room: room.clone(),
                    members,
                },
                |thread, id| Request::Join { thread, id, room },
                now,
            );
            return;
        }
        let text = format!(
            "joined {room} ({})",
            reply::count(members, "member", "members")
        );
        self.reply(id, reply::notice(text), now);
    }

    /// Moves a member to another room (in the directory and among this thread's local
    /// members); returns the room and its size there.
    pub(super) fn move_to(&mut self, id: ClientId, room: &str) -> (Arc<str>, usize) {
        let member = self.clients[id].member();
        let (room, members) = self.shared.dir.join(&member.name, &member.room, room);
        self.counters().room_joins.inc();
        self.leave_local_room(id);
        let local = self.rooms.entry(room.clone()).or_default();
        let slot = local.len() as u32;
        local.push(id);
        if let Some(member) = self.clients[id].member.as_mut() {
            member.slot = slot;
            member.room = room.clone();
            member.seen_through = 0;
        }
        (room, members)
    }

    pub(super) fn nick(&mut self, id: ClientId, name: &str, now: Tick) {
        let member = self.clients[id].member();
        if let Some(cluster) = &self.shared.cluster {
            if &*member.name == name {
                let text = reply::notice(format_args!("you are {name}"));
                self.reply(id, text, now);
            } else if self.clients[id].nick_pending {
                self.error(id, ErrorKind::BadArgument, reply::NICK_PENDING, now);
            } else if self.shared.dir.has_name(name) {
                let taken = crate::directory::NameTaken(name.to_owned());
                self.error(id, ErrorKind::NameTaken, taken, now);
            } else if !cluster.is_available() {
                let text = reply::CLUSTER_UNAVAILABLE;
                self.error(id, ErrorKind::ClusterUnavailable, text, now);
            } else {
                self.clients[id].nick_pending = true;
                let name: Arc<str> = Arc::from(name);
                let nick = Awaited::Nick { name: name.clone() };
                self.ask(
                    id,
                    nick,
                    |thread, id| Request::ClaimName { thread, id, name },
                    now,
                );
            }
            return;
        }
        match self.shared.dir.rename(&member.name, &member.room, name) {
            Ok(name) => {
                let text = reply::notice(format_args!("you are {name}"));
                if let Some(member) = self.clients[id].member.as_mut() {
                    member.name = name;
                }
                self.reply(id, text, now);
            }
            Err(taken) => self.error(id, ErrorKind::NameTaken, taken, now),
        }
    }

    pub(super) fn who(&mut self, id: ClientId, now: Tick) {
        if self.shared.cluster.is_some() {
            let room = self.clients[id].member().room.clone();
            // This node's members as they are now, in the order of the client's requests:
            // a `/join` after this `/who` does not change its answer.
            let local = self.shared.dir.members(&room);
            self.ask(
                id,
                Awaited::Text,
                |thread, id| Request::Who {
                    thread,
                    id,
                    room,
                    local,
                },
                now,
            );
            return;
        }
        let room = &self.clients[id].member().room;
        let members = self.shared.dir.members(room);
        let mut text = format!("members of {room} ({}): ", members.len());
        for (i, name) in members.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(name);
        }
        self.reply(id, reply::notice(text), now);
    }

    pub(super) fn list_rooms(&mut self, id: ClientId, now: Tick) {
        if self.shared.cluster.is_some() {
            let local = self.shared.dir.rooms();
            self.ask(
                id,
                Awaited::Text,
                |thread, id| Request::Rooms { thread, id, local },
                now,
            );
            return;
        }
        let rooms = self.shared.dir.rooms();
        let mut text = format!("rooms ({}): ", rooms.len());
        for (i, (room, members)) in rooms.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "{room} ({members})");
        }
        self.reply(id, reply::notice(text), now);
    }

    pub(super) fn server_stats(&mut self, id: ClientId, now: Tick) {
        // The counters' fields are the tables' (see `counters`): what a row shows here.
        let text = format!(
            "stats {} clients={} rooms={}{}",
            self.shared.label,
            self.shared.dir.clients(),
            self.shared.dir.room_count(),
            self.shared.stats.read().stat_fields()
        );
        let text = match &self.shared.cluster {
            Some(cluster) => format!("{text} {}", cluster.stats()),
            None => text,
        };
        self.reply(id, reply::notice(text), now);
    }
}
