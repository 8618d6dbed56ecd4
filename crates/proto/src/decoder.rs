//! Splits a byte stream into lines, with a hard bound on the memory a partial line may take.

use std::ops::ControlFlow;

/// One decoded frame.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Frame<'a> {
    /// A complete line without its `\n` (and without a trailing `\r`).
    Line(&'a [u8]),
    /// A line longer than the limit. Its bytes were discarded up to the next `\n`.
    TooLong,
}

/// Line decoder state for one connection.
///
/// The decoder never holds input itself: the caller owns the buffer (so a backend can read
/// into it with an owned-buffer API) and the decoder consumes complete lines from its front.
#[derive(Debug, Clone, Copy)]
pub struct LineDecoder {
    /// 32 bits: one decoder per client, and `--max-line` is far below 4 GiB.
    max_line: u32,
    /// True after a too-long line was reported and until its terminating `\n` arrives:
    /// the rest of that line is dropped as it comes, so it never occupies memory.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line` bytes (not counting `\r\n`).
    /// (Limits above 4 GiB are taken as 4 GiB.)
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: u32::try_from(max_line).unwrap_or(u32::MAX),
            discarding: false,
        }
    }

    /// Longest partial line `decode_all` may leave in the buffer: a line of `max_line` bytes
    /// plus its `\r` while the `\n` has not arrived yet.
    pub fn max_pending(&self) -> usize {
        self.max_line as usize + 1
    }

    /// Decodes the next frame from the front of `buf`.
    ///
    /// Returns `Ok(Some((frame, consumed)))` for a frame that took `consumed` bytes,
    /// `Ok(None)` when the buffer holds only an incomplete line, and `Err(consumed)` when
    /// bytes were dropped without producing a frame (the tail of a too-long line).
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, usize> {
        match memchr::memchr(b'\n', buf) {
            Some(end) if self.discarding => {
                self.discarding = false;
                Err(end + 1)
            }
            None if self.discarding => {
                if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(buf.len())
                }
            }
            Some(end) => {
                let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
                if line.len() > self.max_line as usize {
                    Ok(Some((Frame::TooLong, end + 1)))
                } else {
                    Ok(Some((Frame::Line(line), end + 1)))
                }
            }
            None if buf.len() > self.max_pending() => {
                self.discarding = true;
                Ok(Some((Frame::TooLong, buf.len())))
            }
            None => Ok(None),
        }
    }

    /// Decodes every complete frame in `buf`, in order, and removes what was consumed,
    /// leaving at most `max_pending()` bytes of an incomplete line. Stops early (leaving
    /// the rest unread) when `on_frame` breaks.
    pub fn decode_all(
        &mut self,
        buf: &mut Vec<u8>,
        mut on_frame: impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut start = 0;
        let mut flow = ControlFlow::Continue(());
        loop {
            match self.decode(&buf[start..]) {
                Ok(None) => break,
                Err(dropped) => start += dropped,
                Ok(Some((frame, used))) => {
                    start += used;
                    flow = on_frame(frame);
                    if flow.is_break() {
                        break;
                    }
                }
            }
        }
        buf.drain(..start);
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after another through one decoder, as reads would arrive.
    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> (Vec<Option<Vec<u8>>>, Vec<u8>) {
        let mut dec = LineDecoder::new(max);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let _ = dec.decode_all(&mut buf, |f| {
                out.push(match f {
                    Frame::Line(l) => Some(l.to_vec()),
                    Frame::TooLong => None,
                });
                ControlFlow::Continue(())
            });
            assert!(
                buf.len() <= dec.max_pending(),
                "pending {} bytes",
                buf.len()
            );
        }
        (out, buf)
    }

    fn lines(v: &[&str]) -> Vec<Option<Vec<u8>>> {
        v.iter().map(|s| Some(s.as_bytes().to_vec())).collect()
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let (out, rest) = decode_chunks(64, &[b"hello\nwor", b"ld\r\n\npartial"]);
        assert_eq!(out, lines(&["hello", "world", ""]));
        assert_eq!(rest, b"partial");
    }

    #[test]
    fn only_one_trailing_cr_is_stripped_and_inner_cr_kept() {
        let (out, _) = decode_chunks(64, &[b"a\r\r\nb\rc\n"]);
        assert_eq!(out, lines(&["a\r", "b\rc"]));
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let input: &[u8] = b"one\r\ntwo\n\nthree is longer than ten\nfour\r\n";
        let (whole, whole_rest) = decode_chunks(10, &[input]);
        assert_eq!(
            whole,
            vec![
                Some(b"one".to_vec()),
                Some(b"two".to_vec()),
                Some(Vec::new()),
                None,
                Some(b"four".to_vec())
            ]
        );
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (out, rest) = decode_chunks(10, &[&input[..a], &input[a..b], &input[b..]]);
                assert_eq!(out, whole, "split at {a},{b}");
                assert_eq!(rest, whole_rest);
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_chunks(10, &bytes).0, whole);
    }

    #[test]
    fn too_long_line_is_reported_once_and_discarded_to_newline() {
        let long = vec![b'x'; 1000];
        let (out, rest) = decode_chunks(8, &[&long, &long, b"tail\nok\n"]);
        assert_eq!(out, vec![None, Some(b"ok".to_vec())]);
        assert!(rest.is_empty());
    }

    #[test]
    fn line_of_exactly_max_is_accepted_with_crlf_split() {
        let (out, _) = decode_chunks(4, &[b"abcd\r", b"\n"]);
        assert_eq!(out, lines(&["abcd"]));
        let (out, _) = decode_chunks(4, &[b"abcde\n"]);
        assert_eq!(out, vec![None]);
    }

    #[test]
    fn decode_all_stops_when_asked_and_keeps_the_rest() {
        let mut dec = LineDecoder::new(16);
        let mut buf = b"a\nb\nc\n".to_vec();
        let mut seen = 0;
        let flow = dec.decode_all(&mut buf, |_| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(flow.is_break());
        assert_eq!(buf, b"c\n");
    }
}
