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
        let origin = Origin {
            thread: self.thread,
            client: id,
            serial: self.clients[id].serial,
        };
        let plain = match self.shared.history.is_on() || self.shared.history_in_cluster() {
            // A buffer of its own: history may keep it long after the read, and it must
            // not keep the next reads' bytes alive with it.
            true => std::mem::take(&mut self.batch.text).freeze(),
            false => self.batch.text.split().freeze(),
        };
        let room = self.clients[id].member().room.clone();
        self.send_chat(room, plain, lines, Some(origin), now);
    }

    /// Sends `lines` chat lines (`plain`, one after the other) to the members of `room`
    /// but `sender` (a client of this thread): recorded, numbered, queued here, handed
    /// to the other threads and nodes. A read's chat comes this way, and a line of the
    /// publish API (no sender).
    pub(super) fn send_chat(
        &mut self,
        room: Arc<str>,
        plain: Bytes,
        lines: u64,
        sender: Option<Origin>,
        now: Tick,
    ) {
        if self.shared.history_in_cluster() {
            // The cluster's stream numbers the batch: it goes there only, and comes back
            // to every thread (this one too) with its position, in the stream's order. A
            // published line names a sender that matches no client, so that the bridge
            // tracks it as this node's own (delivered here without the stream if NATS
            // does not take it) and every member receives it.
            let origin = sender.unwrap_or(Origin {
                thread: self.thread,
                client: ClientId::MAX,
                serial: 0,
            });
            self.counters().messages_in.add(lines);
            self.published.push(Handoff {
                room,
                text: plain,
                lines,
                frames: None,
                first: 0,
                origin: Some(origin),
            });
            return;
        }
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
            except: sender.map(|o| (o.client, o.serial)),
        };
        let frames = self.deliver_in_order(&room, batch, first, now);
        if self.shared.hands_off() {
            self.handoffs.push(Handoff {
                room,
                text,
                lines,
                frames,
                first,
                origin: sender,
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
            if last != 0 {
                let seen = client.member.as_ref().map_or(0, |m| m.seen_through);
                if seen >= last {
                    if seen == history::RESUMING {
                        // Kept until the replay it waits for is written (see `resume`).
                        let bytes =
                            encoded.for_codec(&client.codec, client.positions, &mut self.framer);
                        let kept = self.resuming.entry(member).or_default();
                        kept.push((last, bytes));
                        let queued: usize = kept.iter().map(|(_, bytes)| bytes.len()).sum();
                        if queued > self.limits.max_outbound {
                            self.overflowed.push((member, Overflow { queued }));
                        }
                    }
                    continue;
                }
            }
            let bytes = encoded.for_codec(&client.codec, client.positions, &mut self.framer);
            let len = bytes.len();
            match client.outbox.push_lines(bytes, lines) {
                Ok(was_empty) => {
                    self.pressed |= client.outbox.passed_half(len);
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

    /// Delivers what other threads and the cluster sent, taking `messages` from the end
    /// (the backend keeps them last first), until one takes a member's queue past half
    /// its limit; returns whether one did, the rest left in `messages`. The backend then
    /// lets its writers write before it delivers more: a reader that keeps up takes a
    /// burst (the cluster's backlog after a NATS stall, another thread's) as it comes,
    /// where a burst queued whole would take it past `--max-outbound` and cut it as a
    /// slow consumer.
    pub fn deliver_inbox(&mut self, messages: &mut Vec<Inbox>, now: Instant) -> bool {
        // What the thread's own reads queued is not the inbox's.
        self.take_pressed();
        while let Some(message) = messages.pop() {
            match message {
                Inbox::Chat(batch) => self.deliver(&batch, now),
                Inbox::Answer(answer) => self.handle_answer(answer, now),
            }
            if self.take_pressed() {
                return true;
            }
        }
        false
    }

    /// Delivers chat lines handed off by another thread to the local members of their
    /// rooms (in each room's order: see `hub/history.rs`).
    pub fn deliver(&mut self, handoffs: &[Handoff], now: Instant) {
        let now = self.clock.tick(now);
        for handoff in handoffs {
            // A client of this thread does not get its own lines back from the cluster.
            let except = handoff
                .origin
                .filter(|origin| origin.thread == self.thread)
                .map(|origin| (origin.client, origin.serial));
            let batch = history::Batch {
                text: handoff.text.clone(),
                lines: handoff.lines,
                frames: handoff.frames.clone(),
                except,
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
