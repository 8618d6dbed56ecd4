//! What each codec sends, and what it makes of what a server sends.

use super::*;
use crate::peers::{parse_resp, resp_subscription, Resp};

fn codec(proto: Proto) -> Box<dyn ClientCodec> {
    for_proto(proto, Masker::new(1))
}

#[test]
fn resp_commands_round_trip() {
    let mut out = Vec::new();
    codec(Proto::Redis).publish(7, b"1 2 3 4 xx", &mut out);
    assert_eq!(
        out,
        b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nroom7\r\n$10\r\n1 2 3 4 xx\r\n"
    );
    let (frame, n) = parse_resp(&out).unwrap().unwrap();
    assert_eq!(n, out.len());
    assert_eq!(
        frame,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"PUBLISH")),
            Resp::Bulk(Some(b"room7")),
            Resp::Bulk(Some(b"1 2 3 4 xx")),
        ]))
    );
    codec(Proto::Redis).join(2, &mut out);
    assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nroom2\r\n");
}

#[test]
fn nats_frames() {
    let mut out = Vec::new();
    codec(Proto::Nats).publish(4, b"hello", &mut out);
    assert_eq!(out, b"PUB room4 5\r\nhello\r\n");
    codec(Proto::Nats).join(4, &mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains("\"echo\":false") && text.ends_with("SUB room4 1\r\nPING\r\n"));
    codec(Proto::Ringcast).publish(4, b"hello", &mut out);
    assert_eq!(out, b"hello\n");
    codec(Proto::Ws).publish(4, b"hello", &mut out);
    let (header, payload) = out.split_at(6);
    assert_eq!(&header[..2], &[0x81, 0x80 | 5]);
    let unmasked: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ header[2 + i % 4])
        .collect();
    assert_eq!(unmasked, b"hello");
}

#[test]
fn moves_between_rooms() {
    let mut out = Vec::new();
    codec(Proto::Ringcast).change_room(Some(1), Some(2), 1, &mut out);
    assert_eq!(out, b"/join room2\n");
    codec(Proto::Ringcast).change_room(Some(1), None, 1, &mut out);
    assert_eq!(out, b"/join lobby\n");
    codec(Proto::Redis).change_room(Some(1), Some(2), 1, &mut out);
    assert_eq!(
        out,
        b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$5\r\nroom1\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nroom2\r\n"
    );
    codec(Proto::Redis).change_room(None, Some(3), 1, &mut out);
    assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nroom3\r\n");
    codec(Proto::Nats).change_room(Some(1), Some(2), 4, &mut out);
    assert_eq!(out, b"UNSUB 4\r\nSUB room2 5\r\nPING\r\n");
    codec(Proto::Nats).change_room(Some(1), None, 4, &mut out);
    assert_eq!(out, b"UNSUB 4\r\nPING\r\n");
    let unsub = b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nroom1\r\n:0\r\n";
    let (frame, _) = parse_resp(unsub).unwrap().unwrap();
    assert_eq!(resp_subscription(&frame), Some((false, &b"room1"[..])));
}

/// Every event a codec decodes from a complete stream, as owned text for comparing.
fn decode_all(proto: Proto, stream: &[u8]) -> Vec<String> {
    let mut codec = codec(proto);
    let mut used = 0;
    let mut out = Vec::new();
    while let Some((event, n)) = codec.decode(&stream[used..]).expect("valid stream") {
        assert!(n > 0);
        out.push(format!("{event:?}"));
        used += n;
    }
    assert_eq!(used, stream.len(), "a partial frame left");
    out
}

fn stamp(text: &[u8]) -> String {
    format!(
        "{:?}",
        Incoming::Delivery(crate::wire::decode_payload(text))
    )
}

#[test]
fn each_codec_tells_deliveries_from_replies_errors_and_pings() {
    let payload = b"0 3 7 1000 5 xx";
    let mut line = b"* joined room2 (3 here)\nalice: ".to_vec();
    line.extend_from_slice(payload);
    line.extend_from_slice(b"\n* error: no such room\n* stats a=1\nbob: hello\n");
    let got = decode_all(Proto::Ringcast, &line);
    assert_eq!(
        got[0],
        format!("{:?}", Incoming::Reply(Reply::Joined(b"room2")))
    );
    assert_eq!(got[1], stamp(payload));
    assert_eq!(
        got[2],
        format!("{:?}", Incoming::ServerError(b"* error: no such room"))
    );
    assert_eq!(got[3], format!("{:?}", Incoming::Notice(b"* stats a=1")));
    assert_eq!(got[4], format!("{:?}", Incoming::Delivery(None)));

    let mut redis = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nroom2\r\n:1\r\n".to_vec();
    redis.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$5\r\nroom2\r\n$15\r\n");
    redis.extend_from_slice(payload);
    redis.extend_from_slice(b"\r\n-ERR wrong\r\n:3\r\n");
    let got = decode_all(Proto::Redis, &redis);
    assert_eq!(
        got[0],
        format!("{:?}", Incoming::Reply(Reply::Subscribed(b"room2")))
    );
    assert_eq!(got[1], stamp(payload));
    assert_eq!(got[2], format!("{:?}", Incoming::ServerError(b"ERR wrong")));
    assert_eq!(got[3], format!("{:?}", Incoming::Nothing));

    let mut nats = b"INFO {}\r\nPING\r\nPONG\r\nMSG room2 1 15\r\n".to_vec();
    nats.extend_from_slice(payload);
    nats.extend_from_slice(b"\r\n-ERR 'Slow Consumer'\r\n");
    let got = decode_all(Proto::Nats, &nats);
    assert_eq!(got[0], format!("{:?}", Incoming::Nothing));
    assert_eq!(got[1], format!("{:?}", Incoming::Ping(b"")));
    assert_eq!(got[2], format!("{:?}", Incoming::Reply(Reply::Pong)));
    assert_eq!(got[3], stamp(payload));
    assert_eq!(
        got[4],
        format!("{:?}", Incoming::ServerError(b"'Slow Consumer'"))
    );

    // Server frames are unmasked: text (a line), binary, ping, close with a code.
    let mut ws = vec![0x81, 15];
    ws.extend_from_slice(b"* joined room2 ");
    ws.extend_from_slice(&[0x82, 1, 0, 0x89, 2, b'h', b'i', 0x88, 2, 0x03, 0xE8]);
    let got = decode_all(Proto::Ws, &ws);
    assert_eq!(
        got[0],
        format!("{:?}", Incoming::Reply(Reply::Joined(b"room2")))
    );
    assert_eq!(got[1], format!("{:?}", Incoming::Unexpected));
    assert_eq!(got[2], format!("{:?}", Incoming::Ping(b"hi")));
    assert_eq!(got[3], format!("{:?}", Incoming::Close(Some(1000))));
    assert_eq!(
        codec(Proto::Ws).decode(&ws[..5]),
        Ok(None),
        "an incomplete frame"
    );
}

#[test]
fn joins_are_confirmed_by_their_own_reply_and_refusals_keep_their_wording() {
    assert!(Reply::Joined(b"room9").confirms_join(b"room2"));
    assert!(Reply::Subscribed(b"room2").confirms_join(b"room2"));
    assert!(!Reply::Subscribed(b"room3").confirms_join(b"room2"));
    assert!(!Reply::Unsubscribed.confirms_join(b"room2"));
    assert!(Reply::Pong.confirms_join(b"room2"));
    let text = b"* error: server full";
    assert_eq!(
        codec(Proto::Ringcast).refusal(text),
        "server refused the join: * error: server full"
    );
    assert_eq!(codec(Proto::Ws).error_text(text), "* error: server full");
    assert_eq!(
        codec(Proto::Redis).error_text(b"ERR x"),
        "server error: ERR x"
    );
    assert_eq!(
        codec(Proto::Nats).refusal(b"'x'"),
        "server refused the subscription: 'x'"
    );
}
