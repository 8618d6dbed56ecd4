//! A `POST /api/publish` that passed every check (`crate::publish`) becomes a chat line
//! `FROM: TEXT` of its room, sent the way a member's line is ([`Hub::send_chat`]): to
//! this thread's members, the other threads' and, in a cluster, the other nodes',
//! encoded once per encoding, recorded in history. Then the request is answered with
//! how many members of the room this node has.

use super::*;
use crate::publish::{self as api, Publish, PublishStatus, Refusal};

impl<H: Clone> Hub<H> {
    /// Sends a publish request's line (or its refusal) and answers the request.
    pub(super) fn publish(&mut self, id: ClientId, answer: Result<Publish, Refusal>, now: Tick) {
        let publish = match answer {
            Ok(publish) => publish,
            Err(refusal) => {
                tracing::debug!(peer = %self.clients[id].peer, status = refusal.status.name(),
                    "publish request refused");
                api::count(&self.shared.stats, self.thread, refusal.status);
                self.respond(id, refusal.response, now);
                return;
            }
        };
        // The room's members on this node, every thread's: what the answer tells. The
        // directory counts them server-wide as they join and leave.
        let members = self.shared.dir.room_size(&publish.room);
        let mut line = BytesMut::new();
        reply::chat(&publish.from, publish.text.as_bytes(), &mut line);
        let room: Arc<str> = Arc::from(publish.room);
        self.send_chat(room, line.freeze(), 1, None, now);
        self.cut_overflowed(now);
        api::count(&self.shared.stats, self.thread, PublishStatus::Ok);
        self.respond(id, api::delivered(members), now);
    }
}
