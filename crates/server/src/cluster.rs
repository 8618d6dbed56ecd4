//! The cluster bridge: several ringcast nodes share their rooms and names through an
//! existing message engine, NATS (core pub/sub for chat, a JetStream key-value bucket for
//! names and node heartbeats). It runs on a thread of its own with a plain tokio runtime;
//! to the worker threads it is one more peer with an inbox (`ringcast_core::cluster`).
//!
//! - **Chat:** each read's chat batch for a room is published once, on one connection
//!   (so NATS keeps each sender's order), to `ringcast.room.<room>`, with `no_echo` so a
//!   node never gets its own back. A node subscribes to a room's subject while it has
//!   members there (the lobby always); a batch received is handed to every worker thread
//!   like a hand-off from another thread. At most once across nodes: what is published
//!   while NATS is unreachable is lost to the other nodes.
//! - **Names:** `name.<NAME>` keys of the `ringcast` bucket, created atomically (one
//!   claim wins), refreshed by the node that holds them every lease / 3, and expiring
//!   with the bucket's `max_age` (the lease) when their node dies. Default names are
//!   `user<k * 1000 + node number>`: unique by construction, registered in the background.
//!   Authenticated names (`--auth`) are shared by the nodes with connections of their
//!   `sub` (`cluster/names.rs`).
//! - **Nodes:** each node holds `node.<number>` (its number in 1..1000, claimed at start)
//!   the same way; the live nodes are the keys present.
//! - **Questions:** `/who` and `/rooms` are asked of every node on `ringcast.ask.who` and
//!   `ringcast.ask.rooms`; a node that does not answer within `ASK_TIMEOUT` is left out
//!   and the reply says so.
//! - **History** (`--history` above 0): a JetStream stream captures the room subjects;
//!   rooms are then received from it, numbered, and `/history` and `/resume` read it
//!   (`cluster/history.rs`).

use crate::worker::INBOX_TAKE;
use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt as _;
use ringcast_core::cluster::{Answer, Claim, ClusterView, Inbox, Request, ToBridge};
use ringcast_core::{Directory, Handoff, HistoryConfig, Origin};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

mod history;

/// The key-value bucket of names and node heartbeats.
const BUCKET: &str = "ringcast";
/// Node numbers a cluster can give out (the stride of default names).
pub const MAX_NODES: u64 = 1000;
/// How long connecting at start may take before the server gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a name claim waits for the cluster: a stopped nats-server does not close its
/// connections, so without a bound a claim would wait for the client's ping timeout.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/who` and `/rooms` wait for the other nodes.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to reach NATS again.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How often the refresher looks whether the link came back.
const REFRESH_TICK: Duration = Duration::from_millis(250);
/// Batches kept for one worker whose inbox is full before more are dropped.
const SPILL_MAX: usize = 1 << 16;
/// How long a room keeps its subscription after its last local member left (a member
/// who comes straight back does not pay for a new one).
const UNSUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// How the node joins the cluster (`ringcast serve --cluster`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// How long a dead node's names and members are remembered.
    pub lease: Duration,
    /// The bounds of the cluster's history stream (none with `--history 0`).
    pub history: HistoryConfig,
    /// Where the stream keeps its batches.
    pub history_storage: crate::config::HistoryStorage,
}

/// The default node name: this host and process.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The bridge, started.
pub struct Bridge {
    pub view: Arc<ClusterView>,
    thread: std::thread::JoinHandle<()>,
}

impl Bridge {
    /// Waits for the bridge thread to end (after every worker has dropped its sender).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Connects to NATS, sets up the bucket and this node's number (giving `dir` the node's
/// share of default names), and starts the bridge thread. Fails within a few seconds,
/// naming the URL and the cause, if NATS cannot be reached: a node that cannot check
/// names would hand out duplicates.
pub fn start(
    config: Config,
    dir: Arc<Directory>,
    workers: Vec<mpsc::Sender<Inbox>>,
    inbox: mpsc::Receiver<ToBridge>,
) -> anyhow::Result<Bridge> {
    let view = Arc::new(ClusterView::new(config.node.clone()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let thread_view = view.clone();
    let thread = std::thread::Builder::new()
        .name("ringcast-cluster".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(anyhow!(err).context("starting its runtime")));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let node = match Node::connect(&config, dir, workers, thread_view).await {
                    Ok(node) => node,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                node.run(inbox).await;
            });
        })
        .context("starting the cluster thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Bridge { view, thread }),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(anyhow!("the cluster thread ended before connecting")),
    }
}

/// The bridge's state, shared by its tasks (all on the bridge's one thread).
struct Node {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    /// Set by the connection's event callback when the link comes back after a loss.
    reconnected: Arc<std::sync::atomic::AtomicBool>,
    config: Config,
    dir: Arc<Directory>,
    view: Arc<ClusterView>,
    /// This node's number (its `node.<number>` key and its share of default names).
    number: u64,
    workers: Vec<mpsc::Sender<Inbox>>,
    state: RefCell<State>,
    /// The history stream, its epoch and where it republishes, when history is on.
    history: RefCell<Option<history::Stored>>,
    /// Held while a room's subscription is made: two joins of one room at once must not
    /// make two (each batch would be delivered twice meanwhile).
    subscribing: tokio::sync::Mutex<()>,
    /// With history: this node's batches on their way through the stream.
    own: RefCell<history::Own>,
    /// Wakes the task that gives queued batches to the NATS client.
    publishing: tokio::sync::Notify,
    /// Chat for each worker whose inbox was full, in order (see `send_to_workers`).
    spilled: RefCell<Vec<VecDeque<Handoff>>>,
    spill_waiting: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Rooms this node receives, with the task forwarding each one's chat.
    rooms: HashMap<Arc<str>, tokio::task::JoinHandle<()>>,
    /// Names this node holds in the bucket, refreshed while held.
    owned: HashSet<Arc<str>>,
    /// With history: the stream sequence of the last batch each room's task forwarded
    /// (a room received again after a NATS outage starts right after it).
    received: HashMap<Arc<str>, Rc<std::cell::Cell<u64>>>,
}

impl Node {
    async fn connect(
        config: &Config,
        dir: Arc<Directory>,
        workers: Vec<mpsc::Sender<Inbox>>,
        view: Arc<ClusterView>,
    ) -> anyhow::Result<Rc<Node>> {
        let url = &config.url;
        let events_view = view.clone();
        let reconnected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events_reconnected = reconnected.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("ringcast {}", config.node))
            .no_echo()
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(Duration::from_secs(2))
            // Back within a second of the server's return, not after a long backoff.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * 2u64.pow(attempts.min(4) as u32)).min(RECONNECT_MAX)
            })
            .event_callback(move |event| {
                let view = events_view.clone();
                let reconnected = events_reconnected.clone();
                async move { on_event(&view, &reconnected, event) }
            })
            .connect(url.as_str())
            .await
            .with_context(|| format!("cannot reach the cluster at {url}"))?;
        let js = jetstream::new(client.clone());
        ensure_bucket(&js, config.lease)
            .await
            .with_context(|| format!("setting up the {BUCKET} bucket at {url} (JetStream on?)"))?;
        let kv = js
            .get_key_value(BUCKET)
            .await
            .with_context(|| format!("opening the {BUCKET} bucket at {url}"))?;
        let number = claim_node_number(&kv, &config.node).await?;
        let stream = match config.history.lines {
            0 => None,
            _ => {
                let stored = history::ensure_stream(&js, config)
                    .await
                    .with_context(|| format!("setting up room history at {url}"))?;
                view.epoch.store(stored.epoch, Ordering::Relaxed);
                Some(stored)
            }
        };
        dir.number_names(MAX_NODES, number);
        tracing::info!(%url, node = %config.node, number, "joined the cluster");
        let node = Rc::new(Node {
            client,
            js,
            kv,
            reconnected,
            config: config.clone(),
            dir,
            view,
            number,
            spilled: RefCell::new(vec![VecDeque::new(); workers.len()]),
            workers,
            state: RefCell::new(State::default()),
            history: RefCell::new(stream),
            subscribing: tokio::sync::Mutex::new(()),
            own: RefCell::new(history::Own::default()),
            publishing: tokio::sync::Notify::new(),
            spill_waiting: tokio::sync::Notify::new(),
        });
        // The lobby is every client's first room: received always, so a welcome never
        // waits for a subscription.
        node.subscribe(Arc::from(ringcast_core::LOBBY))
            .await
            .with_context(|| format!("subscribing to the lobby at {url}"))?;
        node.count_nodes().await;
        Ok(node)
    }

    /// Serves the workers' messages until they have all gone, with the answering of
    /// other nodes' questions and the refreshing of this node's keys beside it.
    async fn run(self: Rc<Self>, mut inbox: mpsc::Receiver<ToBridge>) {
        let answering = tokio::task::spawn_local(self.clone().answer_questions());
        let refreshing = tokio::task::spawn_local(self.clone().refresh());
        let delivering = tokio::task::spawn_local(self.clone().deliver_late());
        let publishing = tokio::task::spawn_local(self.clone().publish_queued());
        let spilling = tokio::task::spawn_local(self.clone().flush_spilled());
        while let Some(message) = inbox.recv().await {
            match message {
                ToBridge::Chat(handoffs) if self.config.history.lines > 0 => {
                    for handoff in handoffs {
                        self.publish_numbered(handoff);
                    }
                }
                ToBridge::Chat(handoffs) => self.publish(handoffs).await,
                ToBridge::Request(Request::Left { room }) => {
                    // Every disconnect sends one, and each waits a second: a task of its
                    // own, as small as its wait, not one sized for the largest question.
                    tokio::task::spawn_local(self.clone().left(room));
                }
                ToBridge::Request(request) => {
                    // Each question in a task of its own: a slow answer must not hold back
                    // the chat behind it.
                    tokio::task::spawn_local(self.clone().handle(request));
                }
            }
        }
        self.drain_queued().await;
        self.leave().await;
        // Subscribers unsubscribe in their Drop by spawning onto the runtime: every task
        // holding one ends here, while the runtime still runs.
        let rooms: Vec<_> = self
            .state
            .borrow_mut()
            .rooms
            .drain()
            .map(|(_, t)| t)
            .collect();
        for task in rooms
            .into_iter()
            .chain([answering, refreshing, delivering, publishing, spilling])
        {
            task.abort();
            let _ = task.await;
        }
    }

    async fn publish(&self, handoffs: Vec<Handoff>) {
        for handoff in handoffs {
            let subject = room_subject(&handoff.room);
            match self.client.publish(subject, handoff.text).await {
                Ok(()) => {
                    self.view.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    self.view.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("publishing to the cluster: {err}");
                }
            }
        }
    }

    async fn handle(self: Rc<Self>, request: Request) {
        match request {
            Request::Join { thread, id, room } => {
                if let Err(err) = self.subscribe(room.clone()).await {
                    tracing::warn!(%room, "subscribing: {err:#}; the join is confirmed anyway");
                }
                self.answer(thread, Answer::Joined { id });
            }
            Request::Left { room } => self.left(room).await,
            Request::ClaimName { thread, id, name } => {
                let claim = self.claim(&name).await;
                self.answer(thread, Answer::Name { id, claim });
            }
            Request::ClaimAuthenticated { thread, id, name } => {
                let claim = self.claim_authenticated(&name).await;
                self.answer(thread, Answer::Name { id, claim });
            }
            Request::Register { thread, name } => {
                if self.claim(&name).await == Claim::Taken {
                    self.answer(thread, Answer::NameLost { name });
                }
            }
            Request::Release { name } => self.release(&name).await,
            Request::Who {
                thread,
                id,
                room,
                local,
            } => {
                let text = self.who(&room, local).await;
                self.answer(thread, Answer::Text { id, text });
            }
            Request::Rooms { thread, id, local } => {
                let text = self.rooms(local).await;
                self.answer(thread, Answer::Text { id, text });
            }
            Request::Replay {
                thread,
                id,
                room,
                query,
            } => {
                // Boxed: reading history is the largest of these futures, and every
                // question's task would be as large as it.
                Box::pin(self.clone().replay(thread, id, room, query)).await
            }
        }
    }

    /// A local member left `room`: a second later, if none is left, the node stops
    /// receiving it (a member who comes straight back does not pay for a new
    /// subscription).
    async fn left(self: Rc<Self>, room: Arc<str>) {
        tokio::time::sleep(UNSUBSCRIBE_AFTER).await;
        if &*room != ringcast_core::LOBBY && self.dir.room_size(&room) == 0 {
            let mut state = self.state.borrow_mut();
            state.received.remove(&room);
            if let Some(task) = state.rooms.remove(&room) {
                // Dropping the subscriber (in the task) unsubscribes.
                task.abort();
            }
        }
    }

    fn answer(&self, thread: usize, answer: Answer) {
        if let Some(worker) = self.workers.get(thread) {
            if worker.try_send(Inbox::Answer(answer)).is_err() {
                self.view.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Receives `room`'s chat from now on; returns once the subscription is live on the
    /// server (a request round trip on the same connection: `flush` alone does not say).
    async fn subscribe(self: &Rc<Self>, room: Arc<str>) -> anyhow::Result<()> {
        let _one_at_a_time = self.subscribing.lock().await;
        if self.state.borrow().rooms.contains_key(&room) {
            return Ok(());
        }
        if self.config.history.lines > 0 {
            return self.receive_numbered(room, None).await;
        }
        let mut subscriber =
            tokio::time::timeout(CLAIM_TIMEOUT, self.client.subscribe(room_subject(&room)))
                .await
                .context("NATS did not answer")??;
        // Any answer proves the server has seen the SUB before it: "no responders" will do.
        let _ = tokio::time::timeout(
            CLAIM_TIMEOUT,
            self.client
                .request(format!("ringcast.sync.{}", self.number), Bytes::new()),
        )
        .await;
        let node = self.clone();
        let forward_room = room.clone();
        let task = tokio::task::spawn_local(async move {
            while let Some(message) = subscriber.next().await {
                node.deliver(&forward_room, message.payload, 0, None);
            }
        });
        if let Some(old) = self.state.borrow_mut().rooms.insert(room, task) {
            // Two joins raced: keep one subscription.
            old.abort();
        }
        Ok(())
    }

    /// A batch of chat from the cluster (first at position `first`; 0: unnumbered, as
    /// without history): to every worker thread, without waiting.
    fn deliver(&self, room: &Arc<str>, text: Bytes, first: u64, origin: Option<Origin>) {
        self.view.received.fetch_add(1, Ordering::Relaxed);
        let lines = memchr::memchr_iter(b'\n', &text).count() as u64;
        let handoff = Handoff {
            room: room.clone(),
            text,
            lines,
            frames: None,
            first,
            origin,
        };
        self.send_to_workers(vec![handoff]);
    }

    /// Hands batches to every worker thread without waiting. A worker whose inbox is
    /// full gets them later, in order, gathered in one message (see `flush_spilled`):
    /// with history a node's own chat reaches its members only this way, so bursts are
    /// kept rather than dropped, up to [`SPILL_MAX`] batches per worker.
    fn send_to_workers(&self, handoffs: Vec<Handoff>) {
        let mut spilled = self.spilled.borrow_mut();
        for (worker, spill) in self.workers.iter().zip(spilled.iter_mut()) {
            if spill.is_empty() {
                match worker.try_send(Inbox::Chat(handoffs.clone())) {
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => continue,
                }
            }
            if spill.len() + handoffs.len() > SPILL_MAX {
                let dropped = self.view.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "a worker's inbox stays full: chat from the cluster dropped"
                    );
                }
                continue;
            }
            spill.extend(handoffs.iter().cloned());
            self.spill_waiting.notify_one();
        }
    }

    /// Sends what `send_to_workers` kept for full inboxes: each worker's, in one
    /// message, once there is room.
    async fn flush_spilled(self: Rc<Self>) {
        loop {
            self.spill_waiting.notified().await;
            for (i, worker) in self.workers.iter().enumerate() {
                if self.spilled.borrow()[i].is_empty() {
                    continue;
                }
                // At most `INBOX_TAKE` batches per message, so that the worker can
                // stop between them to write (see `Hub::deliver_inbox`); taken after each
                // wait, so what came meanwhile goes too, still in order.
                while !self.spilled.borrow()[i].is_empty() {
                    let Ok(permit) = worker.reserve().await else {
                        self.spilled.borrow_mut()[i].clear();
                        break;
                    };
                    let mut spilled = self.spilled.borrow_mut();
                    let take = spilled[i].len().min(INBOX_TAKE);
                    permit.send(Inbox::Chat(spilled[i].drain(..take).collect()));
                }
            }
        }
    }

    /// Claims `name` for this node, or finds it is ours already.
    async fn claim(&self, name: &Arc<str>) -> Claim {
        if !self.view.is_available() {
            return Claim::Unavailable;
        }
        let key = name_key(name);
        let created = tokio::time::timeout(
            CLAIM_TIMEOUT,
            self.kv.create(&key, Bytes::from(self.config.node.clone())),
        )
        .await;
        match created {
            Ok(Ok(_)) => {
                self.state.borrow_mut().owned.insert(name.clone());
                Claim::Granted
            }
            Ok(Err(err)) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                match tokio::time::timeout(CLAIM_TIMEOUT, self.kv.entry(key.as_str())).await {
                    Ok(Ok(Some(entry))) if entry.value == self.config.node.as_bytes() => {
                        self.state.borrow_mut().owned.insert(name.clone());
                        Claim::Granted
                    }
                    Ok(Ok(_)) => Claim::Taken,
                    _ => Claim::Unavailable,
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(%name, "claiming a name: {err}");
                Claim::Unavailable
            }
            Err(_) => Claim::Unavailable,
        }
    }

    /// Gives a name back, if this node holds it and no client here has it (again, or
    /// still: another connection of its `sub`). An authenticated name is left to expire
    /// (`cluster/names.rs`).
    async fn release(&self, name: &Arc<str>) {
        if self.dir.has_name(name) || !self.state.borrow_mut().owned.remove(name) {
            return;
        }
        let key = name_key(name);
        if let Ok(Ok(Some(entry))) =
            tokio::time::timeout(CLAIM_TIMEOUT, self.kv.entry(key.as_str())).await
        {
            if entry.value == self.config.node.as_bytes() {
                let _ = tokio::time::timeout(
                    CLAIM_TIMEOUT,
                    self.kv.delete_expect_revision(&key, Some(entry.revision)),
                )
                .await;
            }
        }
    }

    /// Keeps this node's heartbeat and names alive (they expire after the lease if not
    /// refreshed), counts the live nodes, and when the link comes back after a loss sets
    /// up the bucket again (a restarted nats-server kept nothing) and claims every local
    /// name again: one taken meanwhile elsewhere goes to its new holder, and the local
    /// client gets a fresh default name.
    async fn refresh(self: Rc<Self>) {
        let period = self.config.lease / 3;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(REFRESH_TICK).await;
            let reassert = self.reconnected.swap(false, Ordering::AcqRel);
            if !reassert && last.elapsed() < period {
                continue;
            }
            if !self.view.is_available() {
                continue;
            }
            last = tokio::time::Instant::now();
            if reassert {
                if let Err(err) = ensure_bucket(&self.js, self.config.lease).await {
                    tracing::warn!("setting up the bucket again: {err:#}");
                    self.reconnected.store(true, Ordering::Release);
                    continue;
                }
                if let Err(err) = self.reassert_history().await {
                    tracing::warn!("setting up room history again: {err:#}");
                    self.reconnected.store(true, Ordering::Release);
                    continue;
                }
            }
            let value = Bytes::from(self.config.node.clone());
            let _ = self
                .kv
                .put(format!("node.{}", self.number), value.clone())
                .await;
            let owned: Vec<Arc<str>> = self.state.borrow().owned.iter().cloned().collect();
            for name in owned {
                if !self.dir.has_name(&name) {
                    self.state.borrow_mut().owned.remove(&name);
                    continue;
                }
                if reassert && self.claim_again(&name).await == Claim::Taken {
                    self.state.borrow_mut().owned.remove(&name);
                    tracing::warn!(%name, "a name of this node was taken during an outage");
                    for thread in 0..self.workers.len() {
                        self.answer(thread, Answer::NameLost { name: name.clone() });
                    }
                    continue;
                }
                let held = self.held_value(&name, &value);
                let _ = self.kv.put(name_key(&name), held).await;
            }
            self.count_nodes().await;
        }
    }

    /// Counts the live nodes (their heartbeat keys), bounded as a whole: the key listing
    /// stalls with a stopped NATS, and may repeat keys. On failure the last count stays.
    async fn count_nodes(&self) {
        let counted = tokio::time::timeout(CLAIM_TIMEOUT, async {
            let mut keys = self.kv.keys().await.ok()?;
            let mut nodes = HashSet::new();
            while let Some(key) = keys.next().await {
                let key = key.ok()?;
                if key.starts_with("node.") {
                    nodes.insert(key);
                }
            }
            Some(nodes.len())
        })
        .await;
        if let Ok(Some(nodes)) = counted {
            self.view.nodes.store(nodes.max(1), Ordering::Relaxed);
        }
    }

    /// Answers other nodes' `/who` and `/rooms` from this node's directory.
    async fn answer_questions(self: Rc<Self>) {
        let Ok(mut questions) = self.client.subscribe("ringcast.ask.*").await else {
            tracing::warn!("cannot answer other nodes' questions");
            return;
        };
        while let Some(question) = questions.next().await {
            let Some(reply) = question.reply else {
                continue;
            };
            let answer = match question.subject.as_str() {
                "ringcast.ask.who" => {
                    let room = String::from_utf8_lossy(&question.payload);
                    let names: Vec<String> = self
                        .dir
                        .members(&room)
                        .iter()
                        .map(|n| n.to_string())
                        .collect();
                    names.join("\n")
                }
                "ringcast.ask.rooms" => self
                    .dir
                    .rooms()
                    .iter()
                    .map(|(room, n)| format!("{room} {n}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => continue,
            };
            let _ = self.client.publish(reply, Bytes::from(answer)).await;
        }
    }

    /// Asks every other live node `question` (`who` or `rooms`); returns their answers
    /// and how many live nodes did not answer in time.
    async fn ask(&self, question: &str, payload: Bytes) -> (Vec<Bytes>, usize) {
        // Counted now, not at the last refresh: a node that joined since must be asked.
        self.count_nodes().await;
        let others = self.view.nodes.load(Ordering::Relaxed).saturating_sub(1);
        if others == 0 || !self.view.is_available() {
            return (Vec::new(), others);
        }
        // Every step is bounded: a stopped NATS does not close the connection, and the
        // client's buffers then fill.
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        let inbox = self.client.new_inbox();
        let Ok(Ok(mut answers)) =
            tokio::time::timeout_at(deadline, self.client.subscribe(inbox.clone())).await
        else {
            return (Vec::new(), others);
        };
        let subject = format!("ringcast.ask.{question}");
        let published = tokio::time::timeout_at(
            deadline,
            self.client.publish_with_reply(subject, inbox, payload),
        )
        .await;
        if !matches!(published, Ok(Ok(()))) {
            return (Vec::new(), others);
        }
        let mut got = Vec::new();
        while got.len() < others {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(answer)) => got.push(answer.payload),
                _ => break,
            }
        }
        let missing = others.saturating_sub(got.len());
        (got, missing)
    }

    async fn who(&self, room: &str, local: Vec<Arc<str>>) -> String {
        let mut names: Vec<String> = local.iter().map(|n| n.to_string()).collect();
        let (answers, missing) = self.ask("who", Bytes::from(room.to_owned())).await;
        for answer in answers {
            names.extend(
                String::from_utf8_lossy(&answer)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        names.sort();
        names.dedup();
        let mut text = format!("members of {room} ({}): {}", names.len(), names.join(", "));
        text.push_str(&not_answering(missing));
        text
    }

    async fn rooms(&self, local: Vec<(Arc<str>, usize)>) -> String {
        let mut rooms: BTreeMap<String, usize> = local
            .iter()
            .map(|(room, n)| (room.to_string(), *n))
            .collect();
        let (answers, missing) = self.ask("rooms", Bytes::new()).await;
        for answer in answers {
            for line in String::from_utf8_lossy(&answer).lines() {
                if let Some((room, n)) = line.rsplit_once(' ') {
                    *rooms.entry(room.to_owned()).or_default() += n.parse::<usize>().unwrap_or(0);
                }
            }
        }
        let list: Vec<String> = rooms.iter().map(|(r, n)| format!("{r} ({n})")).collect();
        let mut text = format!("rooms ({}): {}", rooms.len(), list.join(", "));
        text.push_str(&not_answering(missing));
        text
    }

    /// At shutdown: this node's names and heartbeat go at once rather than at the end of
    /// the lease.
    async fn leave(&self) {
        let owned: Vec<Arc<str>> = self.state.borrow().owned.iter().cloned().collect();
        // Bounded: names left over expire with the lease anyway.
        let released = futures_util::future::join_all(owned.iter().map(|name| self.release(name)));
        let _ = tokio::time::timeout(CLAIM_TIMEOUT, released).await;
        let _ = tokio::time::timeout(
            CLAIM_TIMEOUT,
            self.kv.delete(format!("node.{}", self.number)),
        )
        .await;
        let _ = tokio::time::timeout(CLAIM_TIMEOUT, self.client.flush()).await;
    }
}

fn not_answering(missing: usize) -> String {
    match missing {
        0 => String::new(),
        1 => " (1 node did not answer)".to_owned(),
        n => format!(" ({n} nodes did not answer)"),
    }
}

/// Claims the first free node number.
async fn claim_node_number(kv: &kv::Store, node: &str) -> anyhow::Result<u64> {
    for number in 1..MAX_NODES {
        match kv
            .create(format!("node.{number}"), Bytes::from(node.to_owned()))
            .await
        {
            Ok(_) => return Ok(number),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(err) => return Err(anyhow!(err).context("claiming a node number")),
        }
    }
    Err(anyhow!("every node number of the cluster is taken"))
}

/// Creates the bucket's stream unless it exists. Made by hand: async-nats'
/// `create_key_value` asks for account fields that nats-server 2.9 does not send. Names
/// are leases: memory storage, and keys not refreshed within the lease expire (per-key
/// TTL needs nats-server 2.11).
async fn ensure_bucket(js: &jetstream::Context, lease: Duration) -> anyhow::Result<()> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        allow_direct: true,
        allow_rollup: true,
        deny_delete: true,
        discard: jetstream::stream::DiscardPolicy::New,
        max_age: lease,
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(())
}

fn on_event(
    view: &ClusterView,
    reconnected: &std::sync::atomic::AtomicBool,
    event: async_nats::Event,
) {
    match event {
        async_nats::Event::Disconnected => {
            view.available.store(false, Ordering::Release);
            tracing::warn!("cluster link lost: local chat goes on, other nodes are cut off");
        }
        async_nats::Event::Connected => {
            if !view.available.swap(true, Ordering::AcqRel) {
                tracing::info!("cluster link back: rooms subscribed again, names asserted");
                reconnected.store(true, Ordering::Release);
            }
        }
        async_nats::Event::SlowConsumer(sid) => {
            view.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sid, "cluster subscription too slow: NATS dropped messages");
        }
        other => tracing::debug!("cluster event: {other}"),
    }
}

/// The subject of a room's chat. Room names may hold `.`, which NATS reads as a token
/// separator (`x..y`, `.x` are no valid subjects): the name goes in as one hex token.
fn room_subject(room: &str) -> String {
    format!("ringcast.room.{}", hex(room))
}

/// The bucket key of a name, hex-encoded for the same reason.
fn name_key(name: &str) -> String {
    format!("name.{}", hex(name))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

mod names;
