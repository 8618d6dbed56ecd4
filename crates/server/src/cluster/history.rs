//! Room history in the cluster: a JetStream stream, `RINGCAST_HISTORY`, captures every
//! room's chat subject (`ringcast.room.>`), so the batches the nodes publish are stored
//! as they are published, with no second publish.
//!
//! - **Bounds:** `--history` messages per subject (a message is one read's batch, so a
//!   room keeps at least `--history` lines), `--history-age`, and `--history-max-bytes`
//!   for the whole stream, oldest first.
//! - **Storage** (`--history-storage`): `file` by default, in nats-server's JetStream
//!   store directory (written as stored, not synced per batch), so the history and its
//!   positions outlive a nats-server restart. `memory` keeps disk out of it and loses
//!   the history with a restart; nats-server 2.9's memory store also finds the room's
//!   previous batch for each republished one by scanning the room's stretch of the
//!   stream, which with many busy rooms interleaved costs it a core (its file store, and
//!   by their source later versions' memory store, look it up directly). A stream
//!   created again numbers afresh; its creation time is the positions' epoch, so a
//!   client that names the old epoch is told its positions are void.
//! - **Positions:** a line's position is its batch's stream sequence times
//!   `LINES_PER_SEQ` plus its index in the batch: cluster-wide, increasing in each room,
//!   not contiguous.
//! - **Live delivery:** the stream **republishes** each batch the moment it stores it
//!   (RePublish, nats-server 2.9+) on `ringcast.live.<nonce>.<room>`, with its sequence
//!   and the sequence of the room's batch before it (`Nats-Sequence`,
//!   `Nats-Last-Sequence`). A node subscribes there while it has members in the room
//!   (the lobby always). Live delivery so depends on nothing the stream may evict: a
//!   burst stored at once after a NATS stall, larger than the room's history, still
//!   reaches every subscribed node whole. A node that sees a batch whose predecessor it
//!   has not forwarded (NATS or its client dropped some) reads the missing ones from the
//!   stream by direct get first; one that was away (its link down) reads everything
//!   after the last batch it forwarded when the link is back. What the stream no longer
//!   holds then is lost to that node, counted in `cluster_dropped`. The nonce is chosen
//!   by the node that creates the stream, so a stream created again after a nats-server
//!   restart republishes on subjects no node's old subscription hears: sequences of two
//!   streams are never mixed.
//! - **Own chat:** every node, the sender's included, receives each batch once,
//!   numbered, in the stream's order; the sender's own client is named in a header so
//!   that it does not get its lines back. While the link to NATS is down, a node
//!   delivers its own chat locally, unnumbered; and a batch of its own that has not come
//!   back from the stream within [`ECHO_TIMEOUT`] (NATS stalled, or restarted without
//!   the stream yet) is delivered locally too, unnumbered, as are the node's earlier
//!   ones when a later one comes back first (each then skipped if it still comes back):
//!   local chat is late in an outage, never lost.
//! - **Reading:** `/history` and `/resume` walk the room's messages with direct gets
//!   (`next_by_subj`), at most `--history` of them. A resume whose position's batch is
//!   no longer held is told so; the stream cannot say how many of the room's lines went
//!   with it, so the notice names the positions between which lines may be lost.

use super::{room_subject, Node, CLAIM_TIMEOUT};
use crate::config::HistoryStorage;
use anyhow::Context as _;
use async_nats::jetstream::{self, message::StreamMessage, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use ringcast_core::cluster::{Answer, Query, LINES_PER_SEQ};
use ringcast_core::history::Replay;
use ringcast_core::Handoff;
use ringcast_core::Origin;
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
/// Where the stream republishes what it stores: this, the stream's nonce, the room.
const LIVE_PREFIX: &str = "ringcast.live";
/// How long a node waits for a batch of its own to come back from the stream before it
/// delivers it to its own members without it.
pub(super) const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a batch delivered without the stream is remembered, so that it is not
/// delivered again if it comes back after all.
const DELIVERED_MEMORY: Duration = Duration::from_secs(60);
/// How long a republished batch waits for its room's batch before it to come.
const REORDER_WAIT: Duration = Duration::from_millis(250);
/// How many republished batches of a room may wait for one before it.
const REORDER_MAX: usize = 1024;
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

/// The history stream as a node uses it.
pub(super) struct Stored {
    pub(super) stream: stream::Stream,
    /// The stream's creation time (ms since the Unix epoch): the positions' epoch.
    pub(super) epoch: u64,
    /// The subject prefix the stream republishes rooms under (`ringcast.live.<nonce>`).
    live: String,
}

/// Creates the history stream unless it exists (the first node's bounds win; a node
/// with other flags says so), and returns it with its epoch and where it republishes.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    cluster: &super::Config,
) -> anyhow::Result<Stored> {
    let history = &cluster.history;
    let storage = match cluster.history_storage {
        HistoryStorage::File => stream::StorageType::File,
        HistoryStorage::Memory => stream::StorageType::Memory,
    };
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["ringcast.room.>".to_owned()],
        max_messages_per_subject: history.lines as i64,
        max_age: history.max_age,
        max_bytes: history.max_bytes as i64,
        storage,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: 1,
        republish: Some(stream::Republish {
            source: "ringcast.room.>".to_owned(),
            destination: format!("{LIVE_PREFIX}.{}.>", nonce()),
            headers_only: false,
        }),
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
        || held.storage != storage
    {
        tracing::warn!(
            lines = held.max_messages_per_subject, age = ?held.max_age, bytes = held.max_bytes,
            storage = ?held.storage,
            "the cluster's history stream has other bounds than this node's flags: it keeps its own"
        );
    }
    let live = held
        .republish
        .as_ref()
        .filter(|r| r.source == "ringcast.room.>" && !r.headers_only)
        .and_then(|r| r.destination.strip_suffix(".>"))
        .filter(|prefix| prefix.starts_with(LIVE_PREFIX))
        .with_context(|| {
            format!(
                "the stream {STREAM} on this NATS server does not republish chat as this \
                 ringcast needs (an older ringcast made it): delete it \
                 (`nats stream rm {STREAM}`), or restart nats-server if it is in memory"
            )
        })?
        .to_owned();
    let epoch = (info.created.unix_timestamp_nanos() / 1_000_000).max(1) as u64;
    Ok(Stored {
        stream,
        epoch,
        live,
    })
}

/// A token no earlier stream's republish subject is likely to have had.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64);
    format!("{:x}", nanos ^ (u64::from(std::process::id()) << 40))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The room's first batch held at or after `seq`, if any.
async fn next_held(
    stream: &stream::Stream,
    subject: &str,
    seq: u64,
) -> anyhow::Result<Option<StreamMessage>> {
    match stream.direct_get_next_for_subject(subject, Some(seq)).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(err) => Err(anyhow::anyhow!("{err}")),
    }
}

/// The room's last batch held, if any.
async fn last_held(
    stream: &stream::Stream,
    subject: &str,
) -> anyhow::Result<Option<StreamMessage>> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(err) => Err(anyhow::anyhow!("{err}")),
    }
}

/// A republished batch's stream sequence and the sequence of its room's batch before it.
fn sequences(headers: Option<&async_nats::HeaderMap>) -> Option<(u64, u64)> {
    use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
    let headers = headers?;
    // Named by the client's own constants: a name parsed from text would not match them.
    let number = |name| headers.get(name)?.as_str().parse::<u64>().ok();
    // Its room's batch before it (0: none held).
    Some((number(NATS_SEQUENCE)?, number(NATS_LAST_SEQUENCE)?))
}

impl Node {
    /// The history stream, when history is on.
    fn stream(&self) -> Option<stream::Stream> {
        self.history
            .borrow()
            .as_ref()
            .map(|stored| stored.stream.clone())
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

    /// Receives `room`'s chat from the stream, each batch numbered: from now on
    /// (`after` none), or every batch after stream sequence `after` (0: all the stream
    /// holds) when it is received again. A task forwards it to the workers. The caller
    /// holds `subscribing`.
    pub(super) async fn receive_numbered(
        self: &Rc<Self>,
        room: Arc<str>,
        after: Option<u64>,
    ) -> anyhow::Result<()> {
        let (stream, live) = {
            let stored = self.history.borrow();
            let stored = stored.as_ref().context("history is off")?;
            (stored.stream.clone(), stored.live.clone())
        };
        let subject = room_subject(&room);
        let live_subject = format!("{live}.{}", super::hex(&room));
        // Subscribed before anything is read: the read below goes out after the SUB on
        // the same connection, so its answer proves the server sees the subscription,
        // and every batch stored after what the read saw is republished to it.
        let subscriber = tokio::time::timeout(CLAIM_TIMEOUT, self.client.subscribe(live_subject))
            .await
            .context("NATS did not answer")??;
        // The room's cell, if it had one, so that what a failed attempt forwarded
        // counts for the next.
        let last = self
            .state
            .borrow_mut()
            .received
            .entry(room.clone())
            .or_default()
            .clone();
        match after {
            None => {
                let held = tokio::time::timeout(CLAIM_TIMEOUT, last_held(&stream, &subject))
                    .await
                    .context("NATS did not answer")??;
                last.set(held.map_or(0, |message| message.sequence));
                tracing::debug!(%room, last = last.get(), "receiving the room from its last batch held");
            }
            Some(after) => {
                last.set(after);
                let caught_up = self.catch_up(&stream, &room, &last, None);
                tokio::time::timeout(READ_TIMEOUT, caught_up)
                    .await
                    .context("NATS did not answer")??;
            }
        }
        let node = self.clone();
        let forwarded = last.clone();
        let forward_room = room.clone();
        let task = tokio::task::spawn_local(async move {
            node.forward_live(forward_room, stream, subscriber, forwarded)
                .await;
        });
        let mut state = self.state.borrow_mut();
        state.received.insert(room.clone(), last);
        if let Some(old) = state.rooms.insert(room, task) {
            old.abort();
        }
        Ok(())
    }

    /// Forwards a room's republished batches in the stream's order. nats-server 2.9
    /// republishes batches from different connections in the order their publishers'
    /// goroutines get there, not always the stream's, so a batch whose predecessor in the
    /// room (`Nats-Last-Sequence`) has not been forwarded waits, up to [`REORDER_WAIT`]
    /// (or while fewer than [`REORDER_MAX`] wait), for it to come; then the missing ones
    /// are read from the stream (NATS or its client dropped them); what the stream no
    /// longer holds either is lost, counted in `cluster_dropped`. A read that fails is
    /// tried again after another wait: the batches it could not read may still be held.
    async fn forward_live(
        &self,
        room: Arc<str>,
        stream: stream::Stream,
        mut subscriber: async_nats::Subscriber,
        last: Rc<std::cell::Cell<u64>>,
    ) {
        // Batches that came before their predecessor, by sequence, with it.
        let mut held: BTreeMap<u64, (u64, async_nats::Message)> = BTreeMap::new();
        // Until when the first held batch may wait, and for what `last`.
        let mut wait: Option<(Instant, u64)> = None;
        loop {
            let deadline = wait.map(|(at, _)| at);
            let received = tokio::select! {
                message = subscriber.next() => Some(message),
                () = sleep_until_some(deadline) => None,
            };
            let give_up = match received {
                Some(None) => return,
                Some(Some(message)) => {
                    match sequences(message.headers.as_ref()) {
                        // At or before `last`: read from the stream already.
                        Some((seq, before)) if seq > last.get() => {
                            tracing::trace!(%room, seq, before, last = last.get(), "republished");
                            held.insert(seq, (before, message));
                        }
                        Some((seq, _)) => {
                            tracing::trace!(%room, seq, last = last.get(), "republished, read already");
                        }
                        None => tracing::warn!(%room, "a republished batch without its sequences"),
                    }
                    held.len() > REORDER_MAX
                }
                None => true,
            };
            // Past a gap only once the stream has said what it holds: a read that failed
            // (NATS busy, just restarted) is tried again later, unless too many wait.
            let mut force = false;
            if give_up {
                if let Some(&first) = held.keys().next() {
                    tracing::debug!(
                        %room, first, held = held.len(), last = last.get(),
                        "a republished batch waited too long for the one before it: reading the stream"
                    );
                    let caught_up = self.catch_up(&stream, &room, &last, Some(first));
                    let read = match tokio::time::timeout(READ_TIMEOUT, caught_up).await {
                        Ok(Ok(())) => true,
                        Ok(Err(err)) => {
                            tracing::warn!(%room, "reading missed chat: {err:#}");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(%room, "reading missed chat: NATS did not answer");
                            false
                        }
                    };
                    force = read || held.len() > REORDER_MAX;
                }
            }
            self.forward_held(&room, &mut held, &last, force);
            wait = match (held.is_empty(), wait) {
                (true, _) => None,
                // Still waiting for the same batch: the same deadline.
                (false, Some((at, since))) if since == last.get() && !give_up => Some((at, since)),
                (false, _) => Some((Instant::now() + REORDER_WAIT, last.get())),
            };
        }
    }

    /// Forwards the held batches that follow `last`, in order; with `force`, all of
    /// them, counting the gaps before them as lost.
    fn forward_held(
        &self,
        room: &Arc<str>,
        held: &mut BTreeMap<u64, (u64, async_nats::Message)>,
        last: &std::cell::Cell<u64>,
        force: bool,
    ) {
        while let Some(entry) = held.first_entry() {
            let seq = *entry.key();
            let before = entry.get().0;
            if seq > last.get() && before > last.get() {
                if !force {
                    return;
                }
                self.view.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %room, seq, before, last = last.get(),
                    "cluster chat lost on its way from the stream"
                );
            }
            let (_, message) = entry.remove();
            if seq > last.get() {
                self.forward(room, seq, message.headers.as_ref(), message.payload);
                last.set(seq);
            }
        }
    }

    /// Forwards the batches of `room` the stream holds after `last` (and before `until`)
    /// in order, moving `last` on with each. If the batch at `last` is no longer held,
    /// some after it may have gone with it: counted in `cluster_dropped`.
    async fn catch_up(
        &self,
        stream: &stream::Stream,
        room: &Arc<str>,
        last: &std::cell::Cell<u64>,
        until: Option<u64>,
    ) -> anyhow::Result<()> {
        let subject = room_subject(room);
        let from = last.get();
        let mut seq = from.max(1);
        let mut forwarded = 0u64;
        // The sequence of the second batch read (see below).
        let mut second = None;
        let most = self.config.history.lines + 1000;
        for read in 0..most {
            let Some(message) = next_held(stream, &subject, seq).await? else {
                break;
            };
            if until.is_some_and(|until| message.sequence >= until) {
                break;
            }
            if read == 1 {
                second = Some(message.sequence);
            }
            seq = message.sequence + 1;
            if read == 0 && last.get() > 0 && message.sequence != last.get() {
                self.view.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %room, last = last.get(), next = message.sequence,
                    "the batch this node forwarded last has left the stream: some after it may have too"
                );
            }
            if message.sequence > last.get() {
                self.forward(
                    room,
                    message.sequence,
                    Some(&message.headers),
                    message.payload,
                );
                last.set(message.sequence);
                forwarded += 1;
            }
        }
        tracing::debug!(%room, from, to = last.get(), ?until, forwarded, "read from the stream");
        // A room written faster than this node reads it (a late node catching up on a
        // burst) loses its oldest batches while they are read: one may go between two
        // reads, unseen. The stream evicts a room's batches oldest first, so that can
        // have happened only if its oldest batch now is at or past the second one read.
        if let Some(second) = second {
            if let Some(oldest) = next_held(stream, &subject, 1).await? {
                if oldest.sequence >= second {
                    self.view.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        %room, from, oldest = oldest.sequence,
                        "the stream evicted the room's batches while this node read them: \
                         some may be lost (more --history would hold them)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Hands a batch from the stream to the workers, numbered; one of this node's own
    /// only if it was not delivered without the stream already.
    fn forward(
        &self,
        room: &Arc<str>,
        seq: u64,
        headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
    ) {
        let header = headers.and_then(|h| h.get(ORIGIN));
        let (origin, own) = header.map_or((None, None), |h| self.origin(h.as_str()));
        if own.is_some_and(|id| !self.came_back(id, room)) {
            return;
        }
        self.deliver(room, payload, seq * LINES_PER_SEQ, origin);
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
            let Some(message) = next_held(stream, subject, seq).await? else {
                break;
            };
            seq = message.sequence + 1;
            messages.push((message.sequence, message.payload));
        }
        Ok(messages)
    }

    /// The position of the room's last line held (0: none).
    async fn last_position(&self, stream: &stream::Stream, subject: &str) -> anyhow::Result<u64> {
        Ok(last_held(stream, subject).await?.map_or(0, |message| {
            let lines = memchr::memchr_iter(b'\n', &message.payload).count() as u64;
            message.sequence * LINES_PER_SEQ + lines.saturating_sub(1)
        }))
    }

    /// After the link came back: sets the stream up again (a restarted nats-server kept
    /// nothing; a new stream has a new epoch and republishes elsewhere), and receives
    /// every room again, reading first what the stream stored after the last batch
    /// forwarded (in a new stream: all it holds): what was stored meanwhile is
    /// delivered, once. Fails (to be tried again) if a room could not be received again.
    pub(super) async fn reassert_history(self: &Rc<Self>) -> anyhow::Result<()> {
        if self.history.borrow().is_none() {
            return Ok(());
        }
        let stored = ensure_stream(&self.js, &self.config).await?;
        let epoch = stored.epoch;
        let old = self.view.epoch.swap(epoch, Ordering::Relaxed);
        *self.history.borrow_mut() = Some(stored);
        let _one_at_a_time = self.subscribing.lock().await;
        if old != epoch {
            tracing::warn!("the cluster's history stream is new: positions start afresh");
            // In a new stream the old sequences name nothing: all it holds is new here.
            for last in self.state.borrow().received.values() {
                last.set(0);
            }
        }
        let rooms: Vec<Arc<str>> = self.state.borrow().rooms.keys().cloned().collect();
        let mut failed = 0;
        for room in rooms {
            let last = self
                .state
                .borrow()
                .received
                .get(&room)
                .map_or(0, |last| last.get());
            if let Some(task) = self.state.borrow_mut().rooms.remove(&room) {
                task.abort();
            }
            if let Err(err) = self.receive_numbered(room.clone(), Some(last)).await {
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
