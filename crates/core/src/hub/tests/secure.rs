//! TLS connections in the hub, with a fake record layer whose "records" can be read: the
//! handshake is the client's `HELLO` answered by `WELCOME`, a sealed batch is each buffer
//! in brackets, close_notify is `CN`, a 0 byte is a bad record and anything but `HELLO`
//! before the handshake is not TLS.

use super::*;
use crate::secure::{Acceptor, Opened, Session, SessionError};
use crate::ListenerKind;

#[derive(Debug, Default)]
struct Fake {
    done: bool,
    pending: Vec<u8>,
}

impl Session for Fake {
    fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<Opened, SessionError> {
        let mut wire = wire;
        if !self.done {
            let Some(rest) = wire.strip_prefix(b"HELLO") else {
                self.pending.extend_from_slice(b"ALERT");
                return Err(SessionError::NotTls("no HELLO".into()));
            };
            self.done = true;
            self.pending.extend_from_slice(b"WELCOME");
            wire = rest;
        }
        if wire == b"BYE" {
            return Ok(Opened::Closed);
        }
        if wire.contains(&0) {
            return Err(SessionError::Protocol("bad record".into()));
        }
        plain.extend_from_slice(wire);
        Ok(Opened::Open)
    }

    fn is_handshaking(&self) -> bool {
        !self.done
    }

    fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    fn seal(&mut self, plain: &[Bytes]) -> Result<Bytes, SessionError> {
        let mut out = std::mem::take(&mut self.pending);
        for buf in plain {
            out.push(b'[');
            out.extend_from_slice(buf);
            out.push(b']');
        }
        Ok(Bytes::from(out))
    }

    fn close_notify(&mut self) {
        self.pending.extend_from_slice(b"CN");
    }
}

#[derive(Debug)]
struct FakeAcceptor;

impl Acceptor for FakeAcceptor {
    fn session(&self, _: Protocol) -> Result<Box<dyn Session>, SessionError> {
        Ok(Box::<Fake>::default())
    }
}

const TLS_LINE: ListenerKind = ListenerKind {
    protocol: Protocol::Line,
    tls: true,
};

impl Sim {
    fn with_tls(limits: Limits) -> Self {
        let mut sim = Self::new(1, limits);
        sim.hub.shared.tls = Some(Arc::new(FakeAcceptor));
        sim
    }

    fn connect_tls(&mut self) -> ClientId {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.hub
            .connect(handle, LOCAL, TLS_LINE, self.now)
            .expect("admitted")
    }

    /// Every write the client's writer makes until it stops, each as written, with what
    /// it was told last.
    fn wire(&mut self, id: ClientId) -> (Vec<String>, Output) {
        let mut writes = Vec::new();
        loop {
            let mut batch = Vec::new();
            match self.hub.take_output(id, &mut batch, 8, self.now) {
                Output::Write => {
                    assert_eq!(batch.len(), 1, "one sealed buffer per write");
                    self.hub.wrote(id, batch[0].len(), self.now);
                    writes.push(String::from_utf8_lossy(&batch[0]).into_owned());
                }
                other => return (writes, other),
            }
        }
    }

    fn handshakes(&self) -> [u64; 5] {
        self.stats().tls_handshakes
    }
}

#[test]
fn a_tls_line_client_is_a_member_once_its_handshake_completes_and_chats_sealed() {
    let mut sim = Sim::with_tls(limits());
    let plain = sim.connect();
    let tls = sim.connect_tls();
    assert_eq!(sim.hub.members(), 1, "not a member before its handshake");
    assert_eq!(sim.wire(tls), (vec![], Output::Idle));

    sim.input(tls, b"HELLO");
    let (writes, _) = sim.wire(tls);
    assert_eq!(writes.len(), 1);
    // The handshake's answer first, then the welcome sealed.
    assert!(
        writes[0].starts_with("WELCOME[* you are user"),
        "{writes:?}"
    );
    assert_eq!(sim.hub.members(), 2);
    assert_eq!(sim.handshakes(), [1, 0, 0, 0, 0]);
    let name = writes[0]["WELCOME[* you are ".len()..]
        .split(' ')
        .next()
        .expect("a name")
        .to_owned();

    // Chat both ways: plaintext in after opening, each batch out sealed.
    sim.input(tls, b"hello\n");
    assert_eq!(sim.output(plain), vec![format!("{name}: hello\n")]);
    sim.input(plain, b"one\ntwo\n");
    let plain_name = sim.hub.clients[plain].member().name.to_string();
    assert_eq!(
        sim.wire(tls).0,
        vec![format!("[{plain_name}: one\n{plain_name}: two\n]")]
    );

    // /quit: the bye sealed, then close_notify, then the FIN.
    sim.input(tls, b"/quit\n");
    let (writes, last) = sim.wire(tls);
    assert_eq!(writes, vec!["[* bye\n]".to_owned(), "CN".to_owned()]);
    assert_eq!(last, Output::Finish);
}

#[test]
fn a_silent_tls_connection_is_cut_at_the_handshake_timeout() {
    let mut sim = Sim::with_tls(Limits {
        tls_handshake_timeout: Duration::from_millis(300),
        ..limits()
    });
    let start = sim.now;
    let tls = sim.connect_tls();
    sim.actions();
    let at = sim.run_next_deadline();
    assert_eq!(at - start, Duration::from_millis(300));
    let actions = sim.actions();
    assert_eq!(shutdowns(&actions), vec![(0, None)]);
    assert_eq!(sim.take(tls), Output::Close);
    assert_eq!(sim.handshakes(), [0, 0, 0, 1, 0]);
    sim.hub.release(tls, sim.now);
    assert_eq!(sim.handshakes(), [0, 0, 0, 1, 0], "counted once");
    assert_eq!(sim.hub.members(), 0);
}

#[test]
fn what_is_not_tls_closes_that_connection_after_the_alert_and_is_counted() {
    let mut sim = Sim::with_tls(limits());
    let plain = sim.connect();
    let tls = sim.connect_tls();
    sim.actions();
    sim.input(tls, b"GET / HTTP/1.1\r\n\r\n");
    let actions = sim.actions();
    assert_eq!(shutdowns(&actions), vec![(1, Some("ALERT".to_owned()))]);
    assert_eq!(sim.take(tls), Output::Close);
    assert_eq!(sim.handshakes(), [0, 0, 1, 0, 0]);

    // A member whose record is bad later: closed as a protocol error; others go on.
    let other = sim.connect_tls();
    sim.input(other, b"HELLO");
    sim.wire(other);
    sim.actions();
    sim.input(other, b"x\0y");
    assert_eq!(sim.take(other), Output::Close);
    assert_eq!(
        sim.stats().disconnects[Disconnect::ProtocolError as usize],
        1
    );
    sim.input(plain, b"/who\n");
    assert_eq!(sim.output(plain).len(), 1);
}

#[test]
fn a_sealed_batch_in_flight_counts_toward_max_outbound() {
    let mut sim = Sim::with_tls(Limits {
        max_outbound: 400,
        ..limits()
    });
    let sender = sim.connect();
    let tls = sim.connect_tls();
    sim.input(tls, b"HELLO");
    sim.wire(tls);
    // A write of about 100 sealed bytes that the socket has not taken.
    let line = "x".repeat(50);
    sim.input(sender, format!("{line}\n").as_bytes());
    let mut batch = Vec::new();
    assert_eq!(
        sim.hub.take_output(tls, &mut batch, 8, sim.now),
        Output::Write
    );
    let sealed = batch[0].len();
    assert!(sealed > 50);
    // Lines queue beside the batch in flight until the queue and the batch together
    // would pass 400 bytes: that line cuts the client, though the queue alone had room.
    let mut queued = 0;
    for _ in 0..20 {
        if sim.hub.clients[tls].closing.is_some() {
            break;
        }
        queued = sim.hub.clients[tls].outbox.queued();
        sim.input(sender, format!("{line}\n").as_bytes());
    }
    assert_eq!(
        sim.hub.clients[tls].closing,
        Some(Disconnect::SlowConsumer),
        "{sealed} bytes in flight"
    );
    let len = sealed - 2;
    assert!(queued + len + sealed > 400, "{queued} + {len} + {sealed}");
    assert!(
        queued + len <= 400,
        "{queued} + {len}: cut without the batch in flight"
    );
}

#[test]
fn a_peer_close_notify_ends_the_input_as_a_peer_gone() {
    let mut sim = Sim::with_tls(limits());
    let tls = sim.connect_tls();
    sim.input(tls, b"HELLO");
    sim.wire(tls);
    sim.input(tls, b"BYE");
    assert_eq!(sim.hub.clients[tls].closing, Some(Disconnect::PeerGone));
    let (writes, last) = sim.wire(tls);
    assert_eq!(writes, vec!["CN".to_owned()]);
    assert_eq!(last, Output::Finish);
}
