//! The hub's side of cluster mode: questions only the cluster can answer (`/join`'s
//! subscription, `/nick`, `/who`, `/rooms`), asked through [`Action::Cluster`] and
//! answered later through [`Hub::handle_answer`].
//!
//! A client's replies come in the order of its requests, as from a single node: while an
//! answer is owed, the client's later replies are held behind it (`Client::held`), and a
//! client on its way out is not closed before what it asked for is written (within
//! `--drain-timeout`, as any closing client's output).

use super::*;

/// Replies one client may have waiting behind owed answers; past it, a request for the
/// cluster is refused (the input rate limit keeps an honest client far below). What the
/// held replies take counts against `--max-outbound` (see `hold_reply`).
const MAX_HELD: usize = 256;

/// A client's ordered replies while an answer is owed: boxed, so that a client with none
/// (nearly always) pays 8 bytes for it, not the 32 of an empty `VecDeque`.
#[allow(clippy::box_collection)]
pub(super) type HeldQueue = Option<Box<VecDeque<Held>>>;

/// A reply in a client's ordered queue: owed by the cluster, or ready behind one that is.
#[derive(Debug)]
pub(super) enum Held {
    Waiting(u64),
    Ready(Bytes),
}

impl<H: Clone> Hub<H> {
    /// Asks the cluster a question whose answer is a reply to client `id`: its later
    /// replies wait behind this one. `request` is built from this thread's index and the
    /// request's id.
    pub(super) fn ask(
        &mut self,
        id: ClientId,
        what: Awaited,
        request: impl FnOnce(usize, u64) -> Request,
        now: Tick,
    ) {
        let held = self.clients[id].held.as_ref().map_or(0, |held| held.len());
        if held >= MAX_HELD {
            if let Awaited::Nick { .. } = what {
                self.clients[id].nick_pending = false;
            }
            self.error(id, ErrorKind::BadArgument, reply::TOO_MANY_PENDING, now);
            return;
        }
        self.next_id += 1;
        let request_id = self.next_id;
        let client = &mut self.clients[id];
        client
            .held
            .get_or_insert_with(Default::default)
            .push_back(Held::Waiting(request_id));
        self.pending.insert(
            request_id,
            Pending {
                client: id,
                serial: client.serial,
                what,
            },
        );
        self.requests.push_back(request(self.thread, request_id));
    }

    /// Registers a default name (given at connect, or after a name was lost) with the
    /// cluster. Nobody waits: if someone took the name meanwhile, the bridge says so with
    /// [`Answer::NameLost`].
    pub(super) fn register_name(&mut self, name: Arc<str>) {
        self.requests.push_back(Request::Register {
            thread: self.thread,
            name,
        });
    }

    /// The cluster's answer to an earlier question. An answer for a client that has gone
    /// (or whose connection has ended) is dropped.
    pub fn handle_answer(&mut self, answer: Answer, now: Instant) {
        let now = self.clock.tick(now);
        let id = match &answer {
            Answer::Joined { id }
            | Answer::Name { id, .. }
            | Answer::Text { id, .. }
            | Answer::Replay { id, .. } => *id,
            Answer::NameLost { name } => {
                // Every holder: the connections of a `sub` share its name.
                let holders: Vec<ClientId> = (self.clients.iter())
                    .filter(|(_, c)| c.member.as_ref().is_some_and(|m| m.name == *name))
                    .filter_map(|(client, c)| c.closing.is_none().then_some(client))
                    .collect();
                for client in holders {
                    self.name_lost(client, name.clone(), now);
                }
                return;
            }
        };
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        let client = pending.client;
        // A connection claiming its token's name may be no member yet (`required`).
        let seated = |c: &Client<H>| c.member.is_some() || matches!(pending.what, Awaited::Auth(_));
        let live = self
            .clients
            .get(client)
            .is_some_and(|c| c.serial == pending.serial && !c.finished && seated(c));
        if !live {
            // A name granted to a client that is gone goes back.
            if let (
                Awaited::Nick { name },
                Answer::Name {
                    claim: Claim::Granted,
                    ..
                },
            ) = (&pending.what, &answer)
            {
                self.requests
                    .push_back(Request::Release { name: name.clone() });
            }
            return;
        }
        // What the answer makes the hub reply fills the answer's place in the queue.
        self.filling = Some((client, Vec::new()));
        match (pending.what, answer) {
            (Awaited::Join { room, members }, Answer::Joined { .. }) => {
                let text = format!(
                    "joined {room} ({} on this node)",
                    reply::count(members, "member", "members")
                );
                self.reply(client, reply::notice(text), now);
            }
            (Awaited::Auth(claimed), Answer::Name { claim, .. }) => {
                self.auth_claimed(client, *claimed, claim, now);
            }
            (Awaited::Nick { name }, Answer::Name { claim, .. }) => {
                self.clients[client].nick_pending = false;
                self.claimed(client, name, claim, now);
            }
            (Awaited::Text, Answer::Text { text, .. }) => {
                self.reply(client, reply::notice(text), now);
            }
            (Awaited::History { room }, Answer::Replay { replay, .. }) => {
                self.history_answered(client, room, replay, now);
            }
            (Awaited::Resume { room, after }, Answer::Replay { replay, gap, .. }) => {
                self.resume_answered(client, (room, after), replay, gap, now);
            }
            _ => tracing::warn!("cluster answer of the wrong kind dropped"),
        }
        let replies = self.filling.take().map(|(_, r)| r).unwrap_or_default();
        self.fill(client, id, replies, now);
    }

    /// Puts `replies` in the place of owed answer `id` in the client's queue, and writes
    /// whatever is ready at its front.
    fn fill(&mut self, client: ClientId, id: u64, replies: Vec<Bytes>, now: Tick) {
        let Some(held) = self.clients[client].held.as_mut() else {
            return;
        };
        if let Some(at) = held
            .iter()
            .position(|h| matches!(h, Held::Waiting(w) if *w == id))
        {
            held.remove(at);
            let mut added = 0;
            for (i, reply) in replies.into_iter().enumerate() {
                added += reply.len() as u32;
                held.insert(at + i, Held::Ready(reply));
            }
            let held_bytes = &mut self.clients[client].held_bytes;
            *held_bytes = held_bytes.saturating_add(added);
        }
        while let Some(held) = self.clients[client].held.as_mut() {
            match held.pop_front() {
                Some(Held::Ready(bytes)) => {
                    let held_bytes = &mut self.clients[client].held_bytes;
                    *held_bytes = held_bytes.saturating_sub(bytes.len() as u32);
                    self.push_out(client, bytes, now);
                }
                Some(waiting) => {
                    held.push_front(waiting);
                    break;
                }
                None => {
                    self.clients[client].held = None;
                    // A closing client waits for its owed replies before its FIN.
                    if self.clients[client].closing.is_some() {
                        self.wakes.push_back(client);
                    }
                    break;
                }
            }
        }
    }

    /// `name`, which `client` holds here, belongs to another client of the cluster: a
    /// guest gets a fresh default name and a notice saying so; an authenticated client,
    /// whose name is its token's, is told and closed.
    fn name_lost(&mut self, client: ClientId, name: Arc<str>, now: Tick) {
        if self.clients[client].auth.identity.is_none() {
            return self.rename_to_default(client, name, now);
        }
        tracing::warn!(%name, "authenticated name taken elsewhere in the cluster");
        self.counters().errors.inc(ErrorKind::NameTaken);
        let text = reply::error(format_args!("your name {name} was taken elsewhere"));
        self.reply(client, text, now);
        self.begin_close(client, Disconnect::Quit, now);
    }

    fn rename_to_default(&mut self, client: ClientId, name: Arc<str>, now: Tick) {
        let member = self.clients[client].member();
        let fresh = self.shared.dir.rename_fresh(&member.name, &member.room);
        tracing::info!(%name, %fresh, "name taken elsewhere in the cluster; renamed");
        if let Some(member) = self.clients[client].member.as_mut() {
            member.name = fresh.clone();
        }
        let text = format!("your name {name} was taken elsewhere; you are {fresh}");
        self.reply(client, reply::notice(text), now);
        self.register_name(fresh);
    }

    /// The end of a cluster-wide `/nick`.
    fn claimed(&mut self, id: ClientId, name: Arc<str>, claim: Claim, now: Tick) {
        match claim {
            // Quit meanwhile (its name left the directory as it began to close): told
            // as on one server, and the name goes back rather than being held for ever.
            Claim::Granted if self.clients[id].closing.is_some() => {
                self.reply(id, reply::notice(format_args!("you are {name}")), now);
                self.requests.push_back(Request::Release { name });
            }
            Claim::Granted => {
                let member = self.clients[id].member();
                let old = member.name.clone();
                match self.shared.dir.rename(&old, &member.room, &name) {
                    Ok(name) => {
                        if let Some(member) = self.clients[id].member.as_mut() {
                            member.name = name.clone();
                        }
                        self.requests.push_back(Request::Release { name: old });
                        let text = reply::notice(format_args!("you are {name}"));
                        self.reply(id, text, now);
                    }
                    // Another client of this node took it meanwhile (its own claim was
                    // granted first): this one is refused, and the cluster's entry stays
                    // with that client.
                    Err(taken) => self.error(id, ErrorKind::NameTaken, taken, now),
                }
            }
            Claim::Taken => {
                let taken = super::super::directory::NameTaken(name.to_string());
                self.error(id, ErrorKind::NameTaken, taken, now);
            }
            Claim::Unavailable => self.error(
                id,
                ErrorKind::ClusterUnavailable,
                reply::CLUSTER_UNAVAILABLE,
                now,
            ),
        }
    }

    /// A question could not be given to the bridge (its queue was full: NATS is slow):
    /// it is answered here as the bridge would when the cluster does not answer, so no
    /// client waits for it for ever.
    pub fn request_failed(&mut self, request: Request, now: Instant) {
        self.cluster_dropped();
        let answer = match request {
            Request::Join { id, .. } => Answer::Joined { id },
            Request::ClaimName { id, .. } | Request::ClaimAuthenticated { id, .. } => {
                Answer::Name {
                    id,
                    claim: Claim::Unavailable,
                }
            }
            Request::Who { id, .. } | Request::Rooms { id, .. } => Answer::Text {
                id,
                text: reply::CLUSTER_UNAVAILABLE.to_owned(),
            },
            Request::Replay { id, .. } => Answer::Replay {
                id,
                replay: Err(reply::CLUSTER_UNAVAILABLE.to_owned()),
                gap: None,
            },
            Request::Left { .. } | Request::Register { .. } | Request::Release { .. } => return,
        };
        self.handle_answer(answer, now);
    }

    /// A message for the cluster bridge was dropped: its queue was full (NATS is slow).
    pub fn cluster_dropped(&self) {
        if let Some(cluster) = &self.shared.cluster {
            let dropped = cluster
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = dropped + 1,
                    "queue towards the cluster full: dropped"
                );
            }
        }
    }

    /// Holds `bytes` behind the answers client `id` is owed, if it is owed one; `Err`
    /// gives them back if not. A client whose held replies would take it, with what is
    /// queued for it, past `--max-outbound` is cut as a slow consumer: one that floods
    /// commands while the cluster stalls must not hold the server's memory.
    pub(super) fn hold_reply(&mut self, id: ClientId, bytes: Bytes) -> Result<(), Bytes> {
        let limit = self.limits.max_outbound;
        let client = &mut self.clients[id];
        let queued = client.outbox.queued() + client.held_bytes as usize;
        let Some(held) = client.held.as_mut() else {
            return Err(bytes);
        };
        if queued + bytes.len() > limit {
            self.overflowed.push((id, Overflow { queued }));
        } else {
            client.held_bytes += bytes.len() as u32;
            held.push_back(Held::Ready(bytes));
        }
        Ok(())
    }

    /// Forgets the answers a released client was owed.
    pub(super) fn forget_owed(&mut self, held: HeldQueue) {
        for h in held.into_iter().flat_map(|held| held.into_iter()) {
            if let Held::Waiting(id) = h {
                self.pending.remove(&id);
            }
        }
    }
}
