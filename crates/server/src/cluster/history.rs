//! Room history in the cluster: a JetStream stream, `RINGCAST_HISTORY`, captures every
//! room's chat subject (`ringcast.room.>`), so the batches the nodes publish are stored
//! as they are published, with no second publish.
//!
//! - **Bounds:** `--history` messages per subject (a message is one read's batch, so a
//!   room keeps at least `--history` lines), `--history-age`, and `--history-max-bytes`
//!   for the whole stream, oldest first. **Memory storage**, like the names bucket: the
//!   cluster is soft state (a restarted nats-server forgets names too), and it keeps
//!   disk writes off the chat path. A stream created again (after a nats-server restart)
//!   numbers afresh; its creation time is the positions' epoch, so a client that names
//!   the old epoch is told its positions are void.
//! - **Positions:** a line's position is its batch's stream sequence times
//!   `LINES_PER_SEQ` plus its index in the batch: cluster-wide, increasing in each room,
//!   not contiguous.
//! - **Live delivery:** a node receives a room (while it has members there, the lobby
//!   always) through an ephemeral push consumer filtered on the room's subject, created
//!   after the subscription to its delivery subject (so nothing it delivers is missed)
//!   and starting with the next stored message. Every node, the sender's included,
//!   receives each batch once, numbered, in the stream's order; the sender's own client
//!   is named in a header so that it does not get its lines back. While the link to
//!   NATS is down, a node delivers its own chat locally, unnumbered; and a batch of its
//!   own that has not come back from the stream within [`ECHO_TIMEOUT`] (NATS stalled,
//!   or restarted without the stream yet) is delivered locally too, unnumbered, as are
//!   the node's earlier ones when a later one comes back first (each then skipped if it
//!   still comes back): local chat is late in an outage, never lost.
//! - **Reading:** `/history` and `/resume` walk the room's messages with direct gets
//!   (`next_by_subj`), at most `--history` of them. A resume whose position's batch is
//!   no longer held is told so; the stream cannot say how many of the room's lines went
//!   with it, so the notice names the positions between which lines may be lost.

use super::{room_subject, Node, CLAIM_TIMEOUT};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use ringcast_core::cluster::{Answer, Query, LINES_PER_SEQ};
use ringcast_core::history::Replay;
use ringcast_core::Handoff;
use ringcast_core::{HistoryConfig, Origin};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The stream holding every room's history.
pub(super) const STREAM: &str = "RINGCAST_HISTORY";
/// The header naming the client that sent a batch: `NODE.THREAD.CLIENT.SERIAL`.
const ORIGIN: &str = "Ringcast-Origin";
/// How long reading a room's history may take in all.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a consumer outlives its node's interest (a node that died leaves it).
const CONSUMER_IDLE: Duration = Duration::from_secs(5);
/// How long a node waits for a batch of its own to come back from the stream before it
/// delivers it to its own members without it.
pub(super) const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a batch delivered without the stream is remembered, so that it is not
/// delivered again if it comes back after all.
const DELIVERED_MEMORY: Duration = Duration::from_secs(60);
/// Batches the bridge holds for NATS beyond what the client's own buffers take: past
/// it a batch is not published (NATS has stalled long enough that the other nodes miss
/// it, counted in `cluster_dropped`), and reaches this node's members without it.
pub(super) const PUBLISH_BACKLOG: usize = 4096;

/// A batch waiting for the publisher task.
struct Outgoing {
    /// Its id among this node's own batches (none: not said on this node).
    id: Option<u64>,
    room: Arc<str>,
    headers: async_nats::HeaderMap,
    text: Bytes,
}

/// This node's own batches on their way through the stream, by the id each got when it
/// was published (in publish order).
#[derive(Default)]
pub(super) struct Own {
    next: u64,
    /// Published and not back yet, with when.
    waiting: BTreeMap<u64, (Instant, Handoff)>,
    /// Delivered here without the stream, with when.
    delivered: BTreeMap<u64, Instant>,
    /// Taken from the workers, not yet given to the NATS client, in order.
    outgoing: VecDeque<Outgoing>,
}

/// Creates the history stream unless it exists (the first node's bounds win; a node
/// with other flags says so), and returns it with its epoch.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    history: &HistoryConfig,
) -> anyhow::Result<(stream::Stream, u64)> {
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["ringcast.room.>".to_owned()],
        max_messages_per_subject: history.lines as i64,
        max_age: history.max_age,
        max_bytes: history.max_bytes as i64,
        storage: stream::StorageType::Memory,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: 1,
        ..Default::default()
    };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))
        .context("creating the history stream")?;
    let info = stream.cached_info();
    let held = &info.config;
    if held.max_messages_per_subject != history.lines as i64
        || held.max_age != history.max_age
        || held.max_bytes != history.max_bytes as i64
    {
        tracing::warn!(
            lines = held.max_messages_per_subject, age = ?held.max_age, bytes = held.max_bytes,
            "the cluster's history stream has other bounds than this node's flags: it keeps its own"
        );
    }
    let epoch = (info.created.unix_timestamp_nanos() / 1_000_000).max(1) as u64;
    Ok((stream, epoch))
}

/// The stream sequence and consumer sequence of a message a push consumer delivered,
/// from its reply subject (`$JS.ACK.STREAM.CONSUMER.DELIVERED.SSEQ.CSEQ.TIME.PENDING`,
/// or with domain and account before the stream).
fn sequences(reply: &str) -> Option<(u64, u64)> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 5,
        n if n >= 11 => 7,
        _ => return None,
    };
    Some((tokens[at].parse().ok()?, tokens[at + 1].parse().ok()?))
}

impl Node {
    /// The history stream, when history is on.
    fn stream(&self) -> Option<stream::Stream> {
        self.history
            .borrow()
            .as_ref()
            .map(|(stream, _)| stream.clone())
    }

    /// Queues a read's batch for its room's subject (the stream stores it) with its
    /// sender and its id named, without waiting for NATS: the workers' queue towards the
    /// bridge never fills because NATS stalls. The batch reaches this node's own members
    /// when it comes back from the stream, or without it: at once while the link is down
    /// (the client keeps the publish for when it is back) or when NATS has stalled past
    /// [`PUBLISH_BACKLOG`], or once it is [`ECHO_TIMEOUT`] late.
    pub(super) fn publish_numbered(&self, handoff: Handoff) {
        let mut headers = async_nats::HeaderMap::new();
        let mut id = None;
        let now = Instant::now();
        if let Some(o) = handoff.origin {
            let mut own = self.own.borrow_mut();
            own.next += 1;
            let next = own.next;
            id = Some(next);
            let (node, thread, client) = (self.number, o.thread, o.client);
            let origin = format!("{node}.{thread}.{client}.{}.{next}", o.serial);
            headers.insert(ORIGIN, origin.as_str());
            if self.view.is_available() {
                own.waiting.insert(next, (now, handoff.clone()));
            } else {
                own.delivered.insert(next, now);
                drop(own);
                // Those of its room still waiting go first, in order.
                self.deliver_earlier(next, &handoff.room);
                self.deliver_without_stream(vec![handoff.clone()]);
            }
        }
        let mut own = self.own.borrow_mut();
        if own.outgoing.len() >= PUBLISH_BACKLOG {
            drop(own);
            self.view.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("NATS takes nothing: a batch is kept from the other nodes");
            if let Some(id) = id {
                self.not_published(id, &handoff.room);
            }
            return;
        }
        own.outgoing.push_back(Outgoing {
            id,
            room: handoff.room,
            headers,
            text: handoff.text,
        });
        drop(own);
        self.publishing.notify_one();
    }

    /// Batch `id` of this node will not come back from the stream: it reaches this
    /// node's members now (after its room's earlier ones), unless it did already.
    fn not_published(&self, id: u64, room: &Arc<str>) {
        let waiting = {
            let mut own = self.own.borrow_mut();
            let waiting = own.waiting.remove(&id);
            if waiting.is_some() {
                own.delivered.insert(id, Instant::now());
            }
            waiting
        };
        if let Some((_, handoff)) = waiting {
            self.deliver_earlier(id, room);
            self.deliver_without_stream(vec![handoff]);
        }
    }

    /// Gives the queued batches to the NATS client one at a time, in order (one
    /// connection: NATS keeps one publisher's order). Only this task waits when the
    /// client's buffers are full.
    pub(super) async fn publish_queued(self: Rc<Self>) {
        loop {
            let next = self.own.borrow_mut().outgoing.pop_front();
            let Some(out) = next else {
                self.publishing.notified().await;
                continue;
            };
            let subject = room_subject(&out.room);
            match self
                .client
                .publish_with_headers(subject, out.headers, out.text)
                .await
            {
                Ok(()) => {
                    self.view.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::debug!("publishing to the cluster: {err}");
                    if let Some(id) = out.id {
                        self.not_published(id, &out.room);
                    }
                }
            }
        }
    }

    /// At shutdown: waits, a bounded time, for the queued batches to reach the client.
    pub(super) async fn drain_queued(&self) {
        let drained = async {
            while !self.own.borrow().outgoing.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(CLAIM_TIMEOUT, drained).await;
    }

    /// Receives `room`'s chat from the stream, each batch numbered: from now on, or
    /// after stream sequence `after` (not 0) when it is received again. A task forwards
    /// it to the workers. The caller holds `subscribing`.
    pub(super) async fn receive_numbered(
        self: &Rc<Self>,
        room: Arc<str>,
        after: u64,
    ) -> anyhow::Result<()> {
        let stream = self.stream().context("history is off")?;
        let inbox = self.client.new_inbox();
        // Subscribed before the consumer exists: nothing it delivers can be missed.
        let mut subscriber =
            tokio::time::timeout(CLAIM_TIMEOUT, self.client.subscribe(inbox.clone()))
                .await
                .context("NATS did not answer")??;
        let config = consumer::push::Config {
            deliver_subject: inbox,
            filter_subject: room_subject(&room),
            deliver_policy: match after {
                0 => consumer::DeliverPolicy::New,
                after => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: CONSUMER_IDLE,
            memory_storage: true,
            ..Default::default()
        };
        tokio::time::timeout(CLAIM_TIMEOUT, stream.create_consumer(config))
            .await
            .context("NATS did not answer")?
            .map_err(|err| anyhow::anyhow!("{err}"))
            .context("creating the room's consumer")?;
        let node = self.clone();
        let last = Rc::new(std::cell::Cell::new(after));
        let forwarded = last.clone();
        let forward_room = room.clone();
        let task = tokio::task::spawn_local(async move {
            let room = forward_room;
            let mut expected = 1;
            while let Some(message) = subscriber.next().await {
                let Some((seq, delivered)) = message.reply.as_deref().and_then(sequences) else {
                    continue;
                };
                if delivered != expected {
                    // NATS dropped some for a slow subscriber: they are in the history.
                    node.view.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%room, "cluster chat lost on its way from the stream");
                }
                expected = delivered + 1;
                forwarded.set(seq);
                let header = message.headers.as_ref().and_then(|h| h.get(ORIGIN));
                let (origin, own) = header.map_or((None, None), |h| node.origin(h.as_str()));
                if own.is_some_and(|id| !node.came_back(id, &room)) {
                    continue;
                }
                node.deliver(&room, message.payload, seq * LINES_PER_SEQ, origin);
            }
        });
        let mut state = self.state.borrow_mut();
        state.received.insert(room.clone(), last);
        if let Some(old) = state.rooms.insert(room, task) {
            old.abort();
        }
        Ok(())
    }

    /// The sender named in a batch's header and the batch's id, if it is this node's.
    fn origin(&self, header: &str) -> (Option<Origin>, Option<u64>) {
        let mut parts = header.split('.').map(str::parse::<u64>);
        let mut next = || parts.next()?.ok();
        let (Some(node), Some(thread), Some(client), Some(serial), id) =
            (next(), next(), next(), next(), next())
        else {
            return (None, None);
        };
        if node != self.number {
            return (None, None);
        }
        let origin = Origin {
            thread: thread as usize,
            client: client as usize,
            serial,
        };
        (Some(origin), id)
    }

    /// Batch `id` of this node came back from the stream in `room`: whether to deliver
    /// it (not if it was delivered without the stream already). This node's batches of
    /// that room before it that have not come back never will (the stream keeps the
    /// order of one publisher in a room): they are delivered now, without it.
    fn came_back(&self, id: u64, room: &Arc<str>) -> bool {
        if self.own.borrow_mut().delivered.remove(&id).is_some() {
            return false;
        }
        self.own.borrow_mut().waiting.remove(&id);
        self.deliver_earlier(id, room);
        true
    }

    /// Delivers, without the stream, this node's batches of `room` before batch `id`
    /// that are still waiting to come back.
    fn deliver_earlier(&self, id: u64, room: &Arc<str>) {
        let mut own = self.own.borrow_mut();
        let later = own.waiting.split_off(&id);
        let earlier = std::mem::replace(&mut own.waiting, later);
        let now = Instant::now();
        let mut lost = Vec::new();
        for (earlier_id, (at, handoff)) in earlier {
            if handoff.room == *room {
                own.delivered.insert(earlier_id, now);
                lost.push(handoff);
            } else {
                own.waiting.insert(earlier_id, (at, handoff));
            }
        }
        drop(own);
        self.deliver_without_stream(lost);
    }

    /// Hands this node's batches to its workers unnumbered, in order, in one message per
    /// worker (many at once must not overflow the workers' inboxes).
    fn deliver_without_stream(&self, handoffs: Vec<Handoff>) {
        if handoffs.is_empty() {
            return;
        }
        let batches = handoffs.len() as u64;
        self.view.dropped.fetch_add(batches, Ordering::Relaxed);
        self.view.received.fetch_add(batches, Ordering::Relaxed);
        let handoffs: Vec<Handoff> = handoffs
            .into_iter()
            .map(|handoff| Handoff {
                first: 0,
                frames: None,
                ..handoff
            })
            .collect();
        self.send_to_workers(handoffs);
    }

    /// Delivers this node's batches that did not come back from the stream in time to
    /// its own members, and forgets those delivered so long ago that they will not.
    pub(super) async fn deliver_late(self: Rc<Self>) {
        loop {
            tokio::time::sleep(ECHO_TIMEOUT / 5).await;
            let now = Instant::now();
            let late: Vec<Handoff> = {
                let mut own = self.own.borrow_mut();
                let mut late = Vec::new();
                while let Some(entry) = own.waiting.first_entry() {
                    if now.duration_since(entry.get().0) < ECHO_TIMEOUT {
                        break;
                    }
                    let (id, (_, handoff)) = entry.remove_entry();
                    own.delivered.insert(id, now);
                    late.push(handoff);
                }
                own.delivered
                    .retain(|_, at| now.duration_since(*at) < DELIVERED_MEMORY);
                late
            };
            if !late.is_empty() {
                tracing::warn!(
                    batches = late.len(),
                    "chat did not come back from the cluster in time: delivered here without it"
                );
            }
            self.deliver_without_stream(late);
        }
    }

    /// Answers `/history` or `/resume` from the stream. A resume receives the room
    /// first: every batch after what is read then reaches this node live.
    pub(super) async fn replay(
        self: Rc<Self>,
        thread: usize,
        id: u64,
        room: Arc<str>,
        query: Query,
    ) {
        let read = self.receive_and_read(&room, query);
        let (replay, gap) = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok((replay, gap))) => (Ok(replay), gap),
            Ok(Err(err)) => {
                tracing::warn!(%room, "reading the room's history: {err:#}");
                (Err("history unavailable, try again".to_owned()), None)
            }
            Err(_) => (Err("history unavailable, try again".to_owned()), None),
        };
        self.answer(thread, Answer::Replay { id, replay, gap });
    }

    /// For a resume, receives the room first; then reads it.
    async fn receive_and_read(
        self: &Rc<Self>,
        room: &Arc<str>,
        query: Query,
    ) -> anyhow::Result<(Replay, Option<String>)> {
        if let Query::After(_) = query {
            self.subscribe(room.clone()).await?;
        }
        self.read_room(room, query).await
    }

    /// The lines `query` asks for, and the gap notice a resume must show first.
    async fn read_room(
        &self,
        room: &str,
        query: Query,
    ) -> anyhow::Result<(Replay, Option<String>)> {
        let stream = self.stream().context("history is off")?;
        let subject = room_subject(room);
        let after = match query {
            Query::Recent(_) => 0,
            Query::After(after) => after,
        };
        let seq = after / LINES_PER_SEQ;
        let mut messages = self.walk(&stream, &subject, seq.max(1)).await?;
        let mut gap = None;
        let mut void = false;
        if after > 0 {
            match messages.first() {
                Some((first, _)) if *first == seq => {}
                Some((first, _)) => {
                    let oldest = first * LINES_PER_SEQ;
                    gap = Some(format!(
                        "history gap (lines after {after} and before {oldest} are no longer held)"
                    ));
                }
                None => {
                    let last = self.last_position(&stream, &subject).await?;
                    if last < after && last > 0 {
                        // Not a position of this room: everything held, and the client told.
                        gap = Some(format!(
                            "history gap (position {after} is past {room}'s last, {last})"
                        ));
                        void = true;
                        messages = self.walk(&stream, &subject, 1).await?;
                    }
                }
            }
        }
        let mut replay = Replay {
            last: if void { 0 } else { after },
            ..Replay::default()
        };
        for (seq, text) in messages {
            let first = seq * LINES_PER_SEQ;
            let mut start = 0;
            for (i, end) in memchr::memchr_iter(b'\n', &text).enumerate() {
                let pos = first + i as u64;
                if void || pos > after {
                    replay.lines.push((pos, text.slice(start..end + 1)));
                }
                replay.last = replay.last.max(pos);
                start = end + 1;
            }
        }
        if let Query::Recent(n) = query {
            let extra = replay.lines.len().saturating_sub(n as usize);
            replay.lines.drain(..extra);
        }
        Ok((replay, gap))
    }

    /// The room's messages from stream sequence `from` on (sequence and payload), one
    /// direct get each, at most as many as the stream holds per room and a margin for
    /// what arrives meanwhile.
    async fn walk(
        &self,
        stream: &stream::Stream,
        subject: &str,
        from: u64,
    ) -> anyhow::Result<Vec<(u64, Bytes)>> {
        let most = self.config.history.lines + 1000;
        let mut messages = Vec::new();
        let mut seq = from;
        while messages.len() < most {
            match stream.direct_get_next_for_subject(subject, Some(seq)).await {
                Ok(message) => {
                    seq = message.sequence + 1;
                    messages.push((message.sequence, message.payload));
                }
                Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(err) => return Err(anyhow::anyhow!("{err}")),
            }
        }
        Ok(messages)
    }

    /// The position of the room's last line held (0: none).
    async fn last_position(&self, stream: &stream::Stream, subject: &str) -> anyhow::Result<u64> {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let lines = memchr::memchr_iter(b'\n', &message.payload).count() as u64;
                Ok(message.sequence * LINES_PER_SEQ + lines.saturating_sub(1))
            }
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => Ok(0),
            Err(err) => Err(anyhow::anyhow!("{err}")),
        }
    }

    /// After the link came back: sets the stream up again (a restarted nats-server kept
    /// nothing; a new stream has a new epoch), and receives every room through a new
    /// consumer (the old ones may have gone with the server, or expired meanwhile),
    /// starting right after the last batch forwarded if the stream is the same one: what
    /// was stored meanwhile is delivered, once. Fails (to be tried again) if a room could
    /// not be received again.
    pub(super) async fn reassert_history(self: &Rc<Self>) -> anyhow::Result<()> {
        if self.history.borrow().is_none() {
            return Ok(());
        }
        let (stream, epoch) = ensure_stream(&self.js, &self.config.history).await?;
        let old = self.view.epoch.swap(epoch, Ordering::Relaxed);
        *self.history.borrow_mut() = Some((stream, epoch));
        if old != epoch {
            tracing::warn!("the cluster's history stream is new: positions start afresh");
        }
        let _one_at_a_time = self.subscribing.lock().await;
        let rooms: Vec<(Arc<str>, u64)> = {
            let state = self.state.borrow();
            state
                .rooms
                .keys()
                .map(|room| {
                    let last = state.received.get(room).map_or(0, |last| last.get());
                    // In a new stream the old sequences name nothing.
                    (room.clone(), if old == epoch { last } else { 0 })
                })
                .collect()
        };
        let mut failed = 0;
        for (room, last) in rooms {
            if let Some(task) = self.state.borrow_mut().rooms.remove(&room) {
                task.abort();
            }
            if let Err(err) = self.receive_numbered(room.clone(), last).await {
                tracing::warn!(%room, "receiving the room again: {err:#}");
                failed += 1;
                // Kept (with its last sequence), so that the next attempt takes it again.
                let idle = tokio::task::spawn_local(async {});
                self.state.borrow_mut().rooms.insert(room, idle);
            }
        }
        if failed > 0 {
            anyhow::bail!("{failed} rooms could not be received again");
        }
        Ok(())
    }
}
