//! ringcast's line protocol: commands and chat lines out, newline-delimited lines in.

use super::{room_subject, ClientCodec, Incoming, Reply};
use crate::peers::ProtocolError;
use crate::wire;

/// ringcast over TCP: one line per command or message, `\n`-terminated.
#[derive(Debug, Default, Clone, Copy)]
pub struct Line;

/// What one ringcast line (without its newline, from either transport) is to a client.
pub fn classify(line: &[u8]) -> Incoming<'_> {
    if line.starts_with(b"* error") {
        return Incoming::ServerError(line);
    }
    if let Some(rest) = line.strip_prefix(b"* joined ") {
        let room = rest.split(|&b| b == b' ').next().unwrap_or(b"");
        return Incoming::Reply(Reply::Joined(room));
    }
    if line.starts_with(b"* ") {
        return Incoming::Notice(line);
    }
    Incoming::Delivery(wire::decode_delivery(line))
}

/// A ringcast error line as the report shows it: the line itself.
pub fn error_text(text: &[u8]) -> String {
    String::from_utf8_lossy(text).into_owned()
}

/// A ringcast refusal of the join.
pub fn refusal(text: &[u8]) -> String {
    format!("server refused the join: {}", String::from_utf8_lossy(text))
}

impl ClientCodec for Line {
    fn join(&mut self, room: usize, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(format!("/join {}\n", room_subject(room)).as_bytes());
    }

    fn change_room(&mut self, _: Option<usize>, to: Option<usize>, _: u32, out: &mut Vec<u8>) {
        out.clear();
        let target = to.map_or_else(|| "lobby".to_string(), room_subject);
        out.extend_from_slice(format!("/join {target}\n").as_bytes());
    }

    fn publish(&mut self, _room: usize, text: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(text);
        out.push(b'\n');
    }

    /// ringcast's line protocol has no pings.
    fn pong(&mut self, _payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
    }

    fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Incoming<'a>, usize)>, ProtocolError> {
        Ok(memchr::memchr(b'\n', buf).map(|end| (classify(&buf[..end]), end + 1)))
    }

    fn error_text(&self, text: &[u8]) -> String {
        error_text(text)
    }

    fn refusal(&self, text: &[u8]) -> String {
        refusal(text)
    }
}
