//! Server-wide counters: one cache line per thread, summed when read.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one worker thread. Only that thread writes them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ThreadCounters {
    messages_in: AtomicU64,
    deliveries: AtomicU64,
    bytes_out: AtomicU64,
    slow_consumers: AtomicU64,
    connections: AtomicU64,
}

/// Totals since start, summed over threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Chat lines received.
    pub messages_in: u64,
    /// Chat lines queued to recipients (one per recipient).
    pub deliveries: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Clients cut off as slow consumers.
    pub slow_consumers: u64,
    /// Connections accepted.
    pub connections: u64,
}

/// The counters of every worker thread.
#[derive(Debug)]
pub struct Stats {
    threads: Box<[ThreadCounters]>,
}

impl Stats {
    pub fn new(threads: usize) -> Self {
        Self {
            threads: (0..threads).map(|_| ThreadCounters::default()).collect(),
        }
    }

    pub fn thread(&self, index: usize) -> &ThreadCounters {
        &self.threads[index]
    }

    pub fn totals(&self) -> Totals {
        self.threads.iter().fold(Totals::default(), |t, c| Totals {
            messages_in: t.messages_in + c.messages_in.load(Relaxed),
            deliveries: t.deliveries + c.deliveries.load(Relaxed),
            bytes_out: t.bytes_out + c.bytes_out.load(Relaxed),
            slow_consumers: t.slow_consumers + c.slow_consumers.load(Relaxed),
            connections: t.connections + c.connections.load(Relaxed),
        })
    }
}

impl ThreadCounters {
    /// `messages` chat lines came in and were queued `deliveries` times in all.
    pub fn messages_in(&self, messages: u64, deliveries: u64) {
        self.messages_in.fetch_add(messages, Relaxed);
        self.add_deliveries(deliveries);
    }

    pub fn add_deliveries(&self, n: u64) {
        if n > 0 {
            self.deliveries.fetch_add(n, Relaxed);
        }
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Relaxed);
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }
}
