//! A connection's writer and the deadlines that drive it: what the writer takes and when
//! (the coalescing window), its progress (and the slow consumer that makes none), the
//! end of a closing connection (drain, FIN, linger), and the deadlines that wake all of
//! these on simulated or real time alike.

use super::*;

impl<H: Clone> Hub<H> {
    /// Moves up to `max_lines` queued lines for the client into `batch`, and says what
    /// its writer should do. Asking again also says the previous write has ended.
    pub fn take_output(
        &mut self,
        id: ClientId,
        batch: &mut Vec<Bytes>,
        max_lines: usize,
        now: Instant,
    ) -> Output {
        let now = self.clock.tick(now);
        let Some(client) = self.clients.get_mut(id) else {
            return Output::Close;
        };
        client.writing = false;
        secure::write_ended(client, &self.limits);
        if client.finished {
            return Output::Close;
        }
        if !client.outbox.is_empty() {
            if client.wake_at.is_set() {
                // Within the coalescing window: the deadline wakes the writer.
                return Output::Idle;
            }
            let queued = client.outbox.queued();
            let start = batch.len();
            let lines = if client.secure.is_some() {
                // One sealed batch at a time, of bounded size (it counts toward
                // `--max-outbound` until written).
                let most = secure::seal_max(&self.limits);
                client.outbox.take_within(batch, max_lines, most)
            } else {
                client.outbox.take(batch, max_lines)
            };
            client.writing = true;
            let counters = self.shared.stats.thread(self.thread);
            counters
                .queued_bytes
                .add(client.outbox.queued() as i64 - queued as i64);
            if self.shared.stats.metrics_enabled() {
                counters.write_lines.observe(lines, 1);
            }
            if !client.stalled_since.is_set() {
                client.stalled_since = now;
            }
            if client.secure.is_some() {
                return self.seal_output(id, batch, start, now);
            }
            return Output::Write;
        }
        // The session's own records (handshake, tickets, alerts, key updates), and a
        // closing session's close_notify before the FIN.
        if let Some(output) = self.session_output(id, batch, now) {
            return output;
        }
        let client = &mut self.clients[id];
        client.stalled_since = Tick::NONE;
        match client.closing {
            None => Output::Idle,
            // Replies the cluster still owes go before the FIN (within the drain).
            Some(_) if client.lingering || client.held.is_some() => Output::Idle,
            Some(_) if client.reading => {
                client.lingering = true;
                client.close_by = now.plus(LINGER);
                self.arm(id);
                Output::Finish
            }
            Some(_) => {
                client.finished = true;
                Output::Close
            }
        }
    }

    /// The client's socket took `bytes` of the write in flight.
    pub fn wrote(&mut self, id: ClientId, bytes: usize, now: Instant) {
        let now = self.clock.tick(now);
        self.counters().bytes_out.add(bytes as u64);
        if let Some(client) = self.clients.get_mut(id) {
            if bytes > 0 && client.stalled_since.is_set() {
                client.stalled_since = now;
            }
            secure::wrote(client, bytes, &self.limits);
        }
    }

    /// A write failed: nothing more can reach the client.
    pub fn write_failed(&mut self, id: ClientId, now: Instant) {
        let now = self.clock.tick(now);
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let dropped = client.outbox.queued() as i64;
        client.outbox.clear();
        client.finished = true;
        self.counters().queued_bytes.add(-dropped);
        self.begin_close(id, Disconnect::PeerGone, now);
    }

    /// Whether lines are queued for this client.
    pub fn has_output(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|client| !client.outbox.is_empty())
    }

    /// Acts on every deadline that has come by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.tick(now);
        let mut drained = 0;
        while let Some((at, owner)) = self.deadlines.pop_due(now) {
            match owner {
                Owner::Hub => {
                    if self.accept_armed == at {
                        self.accept_armed = Tick::NONE;
                        if self.accept_paused_until.due(now) {
                            self.accept_paused_until = Tick::NONE;
                            self.resume_accept = true;
                        } else {
                            // A later pause (the other listener's) moved the end: wait
                            // for that one, or accepting would stay paused for good.
                            let until = self.accept_paused_until;
                            self.deadlines
                                .arm(Owner::Hub, &mut self.accept_armed, until);
                        }
                    }
                }
                Owner::Client(id) => {
                    let live = self.clients.get(id).is_some_and(|c| c.armed == at);
                    if live && self.client_due(id, now) {
                        drained += 1;
                    }
                }
            }
        }
        if drained > 0 {
            tracing::warn!(
                thread = self.thread,
                connections = drained,
                "drain timeout: shutting down connections with unsent output"
            );
        }
    }

    /// Acts on what is due for one client and arms its next deadline. Returns true when
    /// a connection closing at shutdown ran out of time.
    fn client_due(&mut self, id: ClientId, now: Tick) -> bool {
        if self.clients[id].auth.expires.due(now) {
            self.token_expired(id, now);
        }
        let client = &mut self.clients[id];
        client.armed = Tick::NONE;
        if client.wake_at.due(now) {
            client.wake_at = Tick::NONE;
            self.wakes.push_back(id);
        }
        let mut shutdown_drained = false;
        if client.close_by.due(now) {
            client.close_by = Tick::NONE;
            secure::handshake_due(client, self.shared.stats.thread(self.thread));
            shutdown_drained = client.closing == Some(Disconnect::Shutdown) && !client.lingering;
            client.finished = true;
            self.shutdowns.push_back((client.handle.clone(), None));
            self.wakes.push_back(id);
        } else if write_deadline(client, &self.limits).due(now) {
            tracing::warn!(
                name = %client.member().name, queued = client.outbox.queued(),
                "slow consumer disconnected: no write progress in {:?}",
                self.limits.write_timeout.unwrap_or_default()
            );
            self.begin_close(id, Disconnect::WriteTimeout, now);
        }
        self.arm(id);
        shutdown_drained
    }

    /// Arms the client's earliest deadline.
    pub(super) fn arm(&mut self, id: ClientId) {
        let client = &mut self.clients[id];
        let next = next_deadline(client, &self.limits);
        self.deadlines
            .arm(Owner::Client(id), &mut client.armed, next);
    }
}

/// A client's outbox went from empty to not: its writer must learn of it (now, or after
/// the coalescing window) unless a write is in flight, whose end it will ask after anyway.
pub(super) fn output_pending<H>(
    client: &mut Client<H>,
    id: ClientId,
    limits: &Limits,
    deadlines: &mut Deadlines,
    wakes: &mut VecDeque<ClientId>,
    now: Tick,
) {
    if client.writing {
        return;
    }
    if !client.stalled_since.is_set() {
        client.stalled_since = now;
    }
    if limits.flush_delay.is_zero() || client.closing.is_some() {
        wakes.push_back(id);
    } else if !client.wake_at.is_set() {
        client.wake_at = now.plus(limits.flush_delay);
        // Earlier than anything armed but another coalescing window.
        deadlines.arm(Owner::Client(id), &mut client.armed, client.wake_at);
    }
    // The write deadline only when nothing is armed: an earlier entry is re-armed for
    // it when it comes up, so the fan-out path rarely touches the heap.
    if !client.armed.is_set() {
        let next = next_deadline(client, limits);
        deadlines.arm(Owner::Client(id), &mut client.armed, next);
    }
}

/// When the client is cut off for lack of write progress, if output waits.
fn write_deadline<H>(client: &Client<H>, limits: &Limits) -> Tick {
    match limits.write_timeout {
        Some(timeout) if client.closing.is_none() && client.stalled_since.is_set() => {
            client.stalled_since.plus(timeout)
        }
        _ => Tick::NONE,
    }
}

fn next_deadline<H>(client: &Client<H>, limits: &Limits) -> Tick {
    client
        .wake_at
        .earliest(client.close_by)
        .earliest(write_deadline(client, limits))
        .earliest(client.auth.expires)
}
