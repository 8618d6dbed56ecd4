//! Where a worker thread's chat and questions go beyond its own hub: the inboxes of the
//! other threads and the cluster bridge. Both drivers (the async worker and the
//! uring-direct loop) route through this; they differ only in how they wait for room in
//! a full inbox.

use ringcast_core::cluster::{Inbox, Request, ToBridge};
use ringcast_core::{Handoff, Hub};
use std::time::Instant;
use tokio::sync::mpsc;

pub(crate) struct Routes {
    /// Senders to the inboxes of the other threads.
    pub(crate) peers: Vec<mpsc::Sender<Inbox>>,
    /// The cluster bridge's inbox (cluster mode). Chat and questions go there without
    /// waiting: a full queue towards NATS drops (and counts) rather than hold back local
    /// chat.
    bridge: Option<mpsc::Sender<ToBridge>>,
}

impl Routes {
    pub(crate) fn new(
        peers: Vec<mpsc::Sender<Inbox>>,
        bridge: Option<mpsc::Sender<ToBridge>>,
    ) -> Routes {
        Routes { peers, bridge }
    }

    /// Publishes a read's chat to the other nodes, if there is a bridge and room in its
    /// queue; counts what is dropped.
    pub(crate) fn publish<H: Clone>(&self, hub: &Hub<H>, handoffs: &[Handoff]) {
        let Some(bridge) = &self.bridge else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            bridge.try_send(ToBridge::Chat(handoffs.to_vec()))
        {
            hub.cluster_dropped();
        }
    }

    /// With history in the cluster: gives a read's chat to the bridge, which numbers it
    /// through the stream and delivers it to this node's members too, so it is never
    /// dropped here. `Err` gives it back when the bridge's queue is full (the bridge does
    /// not wait for NATS, so only for a moment): the caller waits for room, as for a
    /// peer's inbox. Nothing to do without a bridge, or once it has gone.
    pub(crate) fn try_publish_numbered(&self, handoffs: Vec<Handoff>) -> Result<(), Vec<Handoff>> {
        let Some(bridge) = &self.bridge else {
            return Ok(());
        };
        match bridge.try_send(ToBridge::Chat(handoffs)) {
            Err(mpsc::error::TrySendError::Full(ToBridge::Chat(handoffs))) => Err(handoffs),
            _ => Ok(()),
        }
    }

    /// The bridge's inbox, to wait for room in it.
    pub(crate) fn bridge(&self) -> Option<mpsc::Sender<ToBridge>> {
        self.bridge.clone()
    }

    /// Passes a question to the cluster bridge. One it cannot take (NATS is slow, or
    /// shutting down) is answered here as failed, so no client waits for it for ever.
    pub(crate) fn ask<H: Clone>(&self, hub: &mut Hub<H>, request: Request) {
        let refused = match &self.bridge {
            Some(bridge) => match bridge.try_send(ToBridge::Request(request)) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(message))
                | Err(mpsc::error::TrySendError::Closed(message)) => Some(message),
            },
            None => Some(ToBridge::Request(request)),
        };
        if let Some(ToBridge::Request(request)) = refused {
            hub.request_failed(request, Instant::now());
        }
    }

    /// Drops every sender (shutdown, once nothing more will be handed off), so that the
    /// other threads' inboxes and the bridge's can end.
    pub(crate) fn close(&mut self) {
        self.peers.clear();
        self.bridge = None;
    }
}
