//! An HTTP connection's request: answered and closed by the shared web layer
//! (`web.rs`), a publish request's line sent (`hub/publish.rs`), or the connection
//! upgraded to a WebSocket chat client.

use super::*;

impl<H: Clone> Hub<H> {
    /// An HTTP connection's input: once its request head is complete, answers it (and
    /// closes) or upgrades the connection to a WebSocket chat client, whose first frames
    /// may follow in `buf`.
    pub(super) fn handle_request(&mut self, id: ClientId, buf: &mut Vec<u8>, now: Tick) {
        let site = web::Site {
            draining: self.input_stopped,
            stats: &self.shared.stats,
            dir: &self.shared.dir,
            api: self.shared.publish.as_deref(),
            max_line: self.limits.max_line,
            now: self.clock.instant(now),
        };
        match web::serve(buf, &site, self.clients[id].peer) {
            Served::Waiting => {}
            Served::Interim(response) => self.push_raw(id, response, now),
            Served::Respond(response) => self.respond(id, response, now),
            Served::Publish(answer) => self.publish(id, answer, now),
            Served::Upgrade(response, token) => {
                self.counters()
                    .http_responses
                    .inc(HttpStatus::SwitchingProtocols);
                let client = &mut self.clients[id];
                client.codec.upgrade();
                client.close_by = Tick::NONE;
                self.push_raw(id, response, now);
                self.admit_websocket(id, token.as_deref(), now);
            }
        }
    }

    /// Sends a whole HTTP response, then closes the connection.
    pub(super) fn respond(&mut self, id: ClientId, response: Bytes, now: Tick) {
        self.counters()
            .http_responses
            .inc(HttpStatus::of_response(&response));
        self.push_raw(id, response, now);
        self.begin_close(id, Disconnect::Quit, now);
    }
}
