//! Every line the server writes. Chat is appended to the batch of its read, which all
//! recipients then share; notices and errors are one `Bytes` each.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Display;

/// Appends `NAME: TEXT\n`, the line every other member of the room receives.
pub fn chat(name: &str, text: &[u8], out: &mut BytesMut) {
    out.reserve(name.len() + 2 + text.len() + 1);
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(text);
    out.put_u8(b'\n');
}

/// `* TEXT\n`: a server notice or reply.
pub fn notice(text: impl Display) -> Bytes {
    Bytes::from(format!("* {text}\n"))
}

/// `* error: TEXT\n`.
pub fn error(text: impl Display) -> Bytes {
    Bytes::from(format!("* error: {text}\n"))
}

/// `1 member`, `2 members`: a count with the noun that agrees with it.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub const HELP: &str = "commands: /join ROOM, /nick NAME, /who, /rooms, /history [N], \
     /resume ROOM POS, /positions on|off, /stats, /quit, /help; \
     any other line is chat for your room (start it with // to send a line beginning with /)";

pub const LINE_TOO_LONG: &str = "line too long";
pub const SERVER_FULL: &str = "server full";
pub const SLOW_CONSUMER: &str = "disconnected: slow consumer";
pub const SHUTTING_DOWN: &str = "server shutting down";
pub const BYE: &str = "bye";
pub const HISTORY_OFF: &str = "history is off";
pub const END_OF_HISTORY: &str = "end of history";

/// Appends `#POS LINE` (`line` with its `\n`): a chat line as a client that asked for
/// positions receives it.
pub fn numbered(pos: u64, line: &[u8], out: &mut BytesMut) {
    use std::io::Write as _;
    out.reserve(line.len() + 22);
    let mut digits = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    let _ = write!(cursor, "{pos}");
    let len = cursor.position() as usize;
    out.put_u8(b'#');
    out.put_slice(&digits[..len]);
    out.put_u8(b' ');
    out.put_slice(line);
}
pub const CLUSTER_UNAVAILABLE: &str = "cluster unavailable, try again";
pub const NICK_PENDING: &str = "a name change is already in progress";
pub const TOO_MANY_PENDING: &str = "too many requests in progress, wait for their replies";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed() {
        let mut out = BytesMut::new();
        chat("ann", b"hi \xff", &mut out);
        chat("bo", b"", &mut out);
        assert_eq!(&out[..], b"ann: hi \xff\nbo: \n");
        assert_eq!(&notice("you are bob")[..], b"* you are bob\n");
        assert_eq!(&error(LINE_TOO_LONG)[..], b"* error: line too long\n");
    }
}
