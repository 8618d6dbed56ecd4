//! A read's chat on its way to the room's members: recorded in history (which numbers
//! it), queued to this thread's members in each encoding they need, and handed to the
//! other threads; and the chat other threads hand to this one.

use super::*;

impl<H: Clone> Hub<H> {
    /// Queues the batched chat of `id` to the other members of its room, here and on
    /// the other threads; with history on, records it and gives it its room positions.
    pub(super) fn flush_chat(&mut self, id: ClientId, now: Tick) {
        if self.batch.lines == 0 {
            return;
        }
        let lines = std::mem::take(&mut self.batch.lines);
        let plain = match self.shared.history.is_on() {
            // A buffer of its own: history may keep it long after the read, and it must
            // not keep the next reads' bytes alive with it.
            true => std::mem::take(&mut self.batch.text).freeze(),
            false => self.batch.text.split().freeze(),
        };
        let room = self.clients[id].member().room.clone();
        let sender = Some((id, self.clients[id].serial));
        self.send_chat(room, plain, lines, sender, now);
    }

    /// Sends `lines` chat lines (`plain`, one after the other) to the members of `room`
    /// but `sender` (a client of this thread, by id and serial): recorded, numbered,
    /// queued here, handed to the other threads and nodes. A read's chat comes this way,
    /// and a line of the publish API (no sender).
    pub(super) fn send_chat(
        &mut self,
        room: Arc<str>,
        plain: Bytes,
        lines: u64,
        sender: Option<(ClientId, u64)>,
        now: Tick,
    ) {
        let recorded = self.shared.history.is_on();
        let timed = self.shared.stats.metrics_enabled();
        let text = match timed {
            true => metrics::timed_batch(plain.clone(), self.clock.instant(now), lines),
            false => plain.clone(),
        };
        let first = match recorded {
            true => self.record(&room, plain, lines, now),
            false => 0,
        };
        self.counters().messages_in.add(lines);
        let batch = history::Batch {
            text: text.clone(),
            lines,
            frames: None,
            except: sender,
        };
        let frames = self.deliver_in_order(&room, batch, first, now);
        if self.shared.hands_off() {
            self.handoffs.push(Handoff {
                room,
                text,
                lines,
                frames,
                first,
            });
        }
    }

    /// Queues a read's chat to every local member of `room` but `except`, each in the
    /// encoding its codec wants (each built once, for the first member wanting it), and
    /// not to a member that got these lines from history already. Returns how many got it.
    pub(super) fn fan_out(
        &mut self,
        room: &str,
        encoded: &mut Encoded<'_>,
        except: Option<ClientId>,
        now: Tick,
    ) -> u64 {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        let mut delivered = 0;
        let mut queued = 0;
        let lines = u32::try_from(encoded.count()).unwrap_or(u32::MAX);
        let last = encoded.last();
        for &member in members {
            if Some(member) == except {
                continue;
            }
            let client = &mut self.clients[member];
            if last != 0
                && client
                    .member
                    .as_ref()
                    .is_some_and(|m| m.seen_through >= last)
            {
                continue;
            }
            let bytes = encoded.for_codec(&client.codec, client.positions, &mut self.framer);
            let len = bytes.len();
            match client.outbox.push_lines(bytes, lines) {
                Ok(was_empty) => {
                    delivered += 1;
                    queued += len;
                    if was_empty {
                        output_pending(
                            client,
                            member,
                            &self.limits,
                            &mut self.deadlines,
                            &mut self.wakes,
                            now,
                        );
                    }
                }
                Err(overflow) => self.overflowed.push((member, overflow)),
            }
        }
        // One store per read, not per recipient.
        self.shared
            .stats
            .thread(self.thread)
            .queued_bytes
            .add(queued as i64);
        delivered
    }

    /// Delivers chat lines handed off by another thread to the local members of their
    /// rooms (in each room's order: see `hub/history.rs`).
    pub fn deliver(&mut self, handoffs: &[Handoff], now: Instant) {
        let now = self.clock.tick(now);
        for handoff in handoffs {
            let batch = history::Batch {
                text: handoff.text.clone(),
                lines: handoff.lines,
                frames: handoff.frames.clone(),
                except: None,
            };
            self.deliver_in_order(&handoff.room, batch, handoff.first, now);
        }
        self.cut_overflowed(now);
    }

    pub(super) fn cut_overflowed(&mut self, now: Tick) {
        while let Some((id, overflow)) = self.overflowed.pop() {
            if self.clients[id].closing.is_none() {
                tracing::warn!(
                    name = %self.clients[id].member().name, queued = overflow.queued,
                    "slow consumer disconnected: its queue is full"
                );
                self.begin_close(id, Disconnect::SlowConsumer, now);
            }
        }
    }
}
