//! `POST /api/publish` in the hub: the line goes the way a member's read goes (this
//! thread's members in each encoding, a hand-off for the other threads and the cluster
//! bridge, history), the answer counts the room's members on the node, and a refusal
//! sends nothing.

use super::*;
use crate::publish::{PublishApi, PublishStatus};

fn request(key: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Sim {
    fn with_api(threads: usize) -> Self {
        let mut sim = Sim::new(threads, limits());
        let api = PublishApi::new(vec!["key".into()], None, sim.now);
        sim.hub.shared.publish = Some(Arc::new(api));
        sim
    }

    /// Sends `raw` on a new HTTP connection, in two reads split at `split`; returns the
    /// response.
    fn publish(&mut self, raw: &[u8], split: usize) -> String {
        let http = self.connect_http();
        // The connection's buffer keeps what was not taken, as a backend's does.
        let mut buf = raw[..split].to_vec();
        self.hub.handle_input(http, &mut buf, self.now);
        assert!(
            self.output(http).is_empty(),
            "answered before the body came"
        );
        buf.extend_from_slice(&raw[split..]);
        self.hub.handle_input(http, &mut buf, self.now);
        self.output(http).concat()
    }
}

#[test]
fn a_published_line_reaches_every_encoding_and_is_handed_off_like_a_read() {
    let mut sim = Sim::with_api(2);
    let (line, lobby) = (sim.connect(), sim.connect());
    let ws = sim.connect_ws();
    sim.input(line, b"/join news\n");
    sim.input(ws, &client_frame(0x1, b"/join news"));
    for id in [line, ws] {
        let joined = sim.output(id).concat();
        assert!(joined.contains("joined news"), "{joined:?}");
    }
    sim.actions();
    let raw = request("key", r#"{"room":"news","text":"goal","from":"feed"}"#);
    let response = sim.publish(&raw, raw.len() - 4);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\n{\"delivered\":2}\n"),
        "{response:?}"
    );
    assert_eq!(sim.output(line), ["feed: goal\n"]);
    let framed = sim.raw_output(ws).concat();
    assert_eq!(framed, b"\x81\x0afeed: goal");
    assert!(sim.output(lobby).is_empty());
    // The same hand-off as a member's read: the other threads and the bridge get it.
    let handoffs: Vec<Handoff> = sim
        .actions()
        .into_iter()
        .flat_map(|action| match action {
            Action::Handoff(handoffs) => handoffs,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(handoffs.len(), 1);
    assert_eq!(&*handoffs[0].room, "news");
    assert_eq!(&handoffs[0].text[..], b"feed: goal\n");
    assert_eq!((handoffs[0].lines, handoffs[0].first), (1, 1));
    // Recorded: /history shows it.
    sim.input(line, b"/history\n");
    let history = sim.output(line).concat();
    assert!(history.contains("feed: goal\n"), "{history}");
    let totals = sim.hub.shared.stats.read().core;
    assert_eq!(totals.publish(PublishStatus::Ok), 1);
    assert_eq!(totals.messages_in, 1);
}

#[test]
fn a_refused_request_sends_nothing_and_is_counted() {
    let mut sim = Sim::with_api(1);
    let member = sim.connect();
    let raw = request("nope", r#"{"room":"lobby","text":"x"}"#);
    let response = sim.publish(&raw[..raw.len() - 1], 10);
    // A wrong key is answered from the head: the body never needed to come.
    assert!(response.starts_with("HTTP/1.1 401 "), "{response}");
    let raw = request("key", r#"{"room":"lobby","text":""}"#);
    let response = sim.publish(&raw, 10);
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(sim.output(member).is_empty());
    assert!(!sim
        .actions()
        .iter()
        .any(|action| matches!(action, Action::Handoff(_))));
    let totals = sim.hub.shared.stats.read().core;
    assert_eq!(totals.publish(PublishStatus::Unauthorized), 1);
    assert_eq!(totals.publish(PublishStatus::BadRequest), 1);
    assert_eq!(totals.messages_in, 0);
}

#[test]
fn a_body_that_does_not_come_is_cut_with_the_head_deadline() {
    let mut sim = Sim::with_api(1);
    let start = sim.now;
    let http = sim.connect_http();
    let raw = request("key", r#"{"room":"lobby","text":"x"}"#);
    let mut buf = raw[..raw.len() - 2].to_vec();
    sim.hub.handle_input(http, &mut buf, sim.now);
    assert!(sim.output(http).is_empty());
    assert!(sim.actions().is_empty());
    // The 10 s a request has to come, counted from the connection, the body included.
    assert_eq!(sim.run_next_deadline(), start + web::HEAD_TIMEOUT);
    let shut = sim.actions();
    assert!(
        shut.iter().any(|action| matches!(
            action,
            Action::Shutdown {
                handle: 0,
                notice: None
            }
        )),
        "{shut:?}"
    );
}
