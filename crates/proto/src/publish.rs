//! The body of `POST /api/publish` (issue 25): `{"room": "...", "text": "...", "from":
//! "..."}`, read by a small strict parser (the crates below the server link no serde):
//! one flat object of string values, the keys `room`, `text` and optional `from`, each at
//! most once, JSON string escapes (`\uXXXX` with surrogate pairs included), nothing after
//! the object but whitespace.
//!
//! Not wired to an endpoint yet: this is the part that faces the network, fuzzed first.

use thiserror::Error;

/// A publish request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishBody {
    pub room: String,
    pub text: String,
    /// Who the line is from; `None`: the endpoint's default (`server`).
    pub from: Option<String>,
}

/// Why a body was refused; the `Display` text is the `{"error": ...}` of the 400.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("invalid JSON at byte {0}")]
    Syntax(usize),
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {0} given twice")]
    Duplicate(&'static str),
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid room {0:?}")]
    InvalidRoom(String),
    #[error("invalid from {0:?}")]
    InvalidFrom(String),
    #[error("text must be one line")]
    Multiline,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), BodyError> {
        self.skip_ws();
        match self.bytes.get(self.at) {
            Some(&b) if b == byte => {
                self.at += 1;
                Ok(())
            }
            _ => Err(BodyError::Syntax(self.at)),
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.at).copied()
    }

    fn hex4(&mut self) -> Result<u32, BodyError> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or(BodyError::Syntax(self.at))?;
        let text = std::str::from_utf8(digits).map_err(|_| BodyError::Syntax(self.at))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BodyError::Syntax(self.at));
        }
        let value = u32::from_str_radix(text, 16).map_err(|_| BodyError::Syntax(self.at))?;
        self.at += 4;
        Ok(value)
    }

    /// A JSON string (the opening quote next).
    fn string(&mut self) -> Result<String, BodyError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let at = self.at;
            let &byte = self.bytes.get(at).ok_or(BodyError::Syntax(at))?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let &esc = self.bytes.get(self.at).ok_or(BodyError::Syntax(self.at))?;
                    self.at += 1;
                    let c = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(BodyError::Syntax(at)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(BodyError::Syntax(at)),
                _ => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| BodyError::Syntax(self.at))
    }

    /// After `\u`: one code point, a surrogate pair taking two escapes.
    fn unicode_escape(&mut self) -> Result<char, BodyError> {
        let at = self.at;
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err(BodyError::Syntax(at));
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&low) {
                    return Err(BodyError::Syntax(at));
                }
                0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(BodyError::Syntax(at)),
            code => code,
        };
        char::from_u32(code).ok_or(BodyError::Syntax(at))
    }
}

/// Parses and checks a publish body: `room` a valid room name, `from` (if given) a valid
/// name, `text` one line (no `\n` or `\r`).
pub fn parse_publish(body: &[u8]) -> Result<PublishBody, BodyError> {
    let mut reader = Reader { bytes: body, at: 0 };
    let (mut room, mut text, mut from) = (None, None, None);
    reader.expect(b'{')?;
    if reader.peek() == Some(b'}') {
        reader.at += 1;
    } else {
        loop {
            let key = reader.string()?;
            reader.expect(b':')?;
            let value = reader.string()?;
            let (slot, name) = match key.as_str() {
                "room" => (&mut room, "room"),
                "text" => (&mut text, "text"),
                "from" => (&mut from, "from"),
                _ => return Err(BodyError::UnknownField(key)),
            };
            if slot.replace(value).is_some() {
                return Err(BodyError::Duplicate(name));
            }
            match reader.peek() {
                Some(b',') => reader.at += 1,
                Some(b'}') => {
                    reader.at += 1;
                    break;
                }
                _ => return Err(BodyError::Syntax(reader.at)),
            }
        }
    }
    reader.skip_ws();
    if reader.at != body.len() {
        return Err(BodyError::Syntax(reader.at));
    }
    let room = room.ok_or(BodyError::Missing("room"))?;
    let text = text.ok_or(BodyError::Missing("text"))?;
    if !crate::valid_name(&room) {
        return Err(BodyError::InvalidRoom(room));
    }
    if let Some(from) = &from {
        if !crate::valid_name(from) {
            return Err(BodyError::InvalidFrom(from.clone()));
        }
    }
    if text.contains(['\n', '\r']) {
        return Err(BodyError::Multiline);
    }
    Ok(PublishBody { room, text, from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_object_of_strings_parses_with_escapes() {
        let body = br#" { "room" : "news.x", "text": "a \"b\" \\ \u00e9 \ud83d\ude00 \/", "from":"bot" } "#;
        assert_eq!(
            parse_publish(body),
            Ok(PublishBody {
                room: "news.x".into(),
                text: "a \"b\" \\ \u{e9} \u{1f600} /".into(),
                from: Some("bot".into()),
            })
        );
        let plain = parse_publish(br#"{"text":"hi","room":"a"}"#).expect("valid");
        assert_eq!(plain.from, None);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let cases: &[(&[u8], BodyError)] = &[
            (b"", BodyError::Syntax(0)),
            (b"[]", BodyError::Syntax(0)),
            (br#"{"room":"a","text":"x"} x"#, BodyError::Syntax(24)),
            (br#"{"room":"a","text":1}"#, BodyError::Syntax(19)),
            (br#"{"room":"a","text":"x",}"#, BodyError::Syntax(23)),
            (
                br#"{"room":"a","x":"y"}"#,
                BodyError::UnknownField("x".into()),
            ),
            (br#"{"room":"a","room":"b"}"#, BodyError::Duplicate("room")),
            (br#"{"room":"a"}"#, BodyError::Missing("text")),
            (br#"{}"#, BodyError::Missing("room")),
            (
                br#"{"room":"a b","text":"x"}"#,
                BodyError::InvalidRoom("a b".into()),
            ),
            (
                br#"{"room":"a","text":"x","from":""}"#,
                BodyError::InvalidFrom("".into()),
            ),
            (br#"{"room":"a","text":"x\ny"}"#, BodyError::Multiline),
            (b"{\"room\":\"a\",\"text\":\"x\ny\"}", BodyError::Syntax(21)),
            (br#"{"room":"a","text":"\ud800"}"#, BodyError::Syntax(22)),
            (br#"{"room":"a","text":"\q"}"#, BodyError::Syntax(20)),
            (b"{\"room\":\"a\",\"text\":\"\xff\"}", BodyError::Syntax(22)),
        ];
        for (body, err) in cases {
            assert_eq!(
                parse_publish(body).as_ref(),
                Err(err),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
