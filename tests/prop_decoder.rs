//! Property tests of the line decoder and the command parser (issue 5): any byte stream
//! split at any points decodes to the same frames as the whole stream, and a partial or
//! over-long line never holds more than `max_pending()` bytes, whatever the input.

use proptest::prelude::*;
use ringcast_proto::{parse, Command, Frame, LineDecoder, NAME_MAX};
use std::ops::ControlFlow;

/// A decoded frame, owned: `Some(line)` or `None` for a too-long line.
type Owned = Option<Vec<u8>>;

/// Feeds `input` cut at `cuts` (sorted offsets) through one decoder, as reads would arrive,
/// checking the pending bound after every read. Returns the frames and what is left.
fn decode_split(max_line: usize, input: &[u8], cuts: &[usize]) -> (Vec<Owned>, Vec<u8>) {
    let mut dec = LineDecoder::new(max_line);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let end = end.clamp(start, input.len());
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let flow = dec.decode_all(&mut buf, |frame| {
            out.push(match frame {
                Frame::Line(line) => {
                    assert!(
                        line.len() <= max_line,
                        "a line longer than the limit got through"
                    );
                    assert!(!line.contains(&b'\n'));
                    Some(line.to_vec())
                }
                Frame::TooLong => None,
            });
            ControlFlow::Continue(())
        });
        assert!(flow.is_continue());
        assert!(
            buf.len() <= dec.max_pending(),
            "{} bytes pending, limit {}",
            buf.len(),
            dec.max_pending()
        );
    }
    (out, buf)
}

/// The frames a line-oriented reader would expect, computed without the decoder: split on
/// `\n`, strip one `\r`, and a line over the limit becomes one `TooLong`.
fn reference(max_line: usize, input: &[u8]) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push((line.len() <= max_line).then(|| line.to_vec()));
        rest = &rest[end + 1..];
    }
    // An unterminated tail longer than a line may be is reported as soon as it is seen.
    if rest.len() > max_line + 1 {
        out.push(None);
    }
    out
}

/// Bytes that make interesting lines: mostly letters, with many `\n`, `\r` and `/`.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => b'a'..=b'e',
        2 => Just(b'\n'),
        2 => Just(b'\r'),
        1 => Just(b'/'),
        1 => Just(b' '),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..300)
}

fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..12).prop_map(|mut cuts| {
        cuts.sort_unstable();
        cuts
    })
}

/// Failures are shrunk and printed; a case worth keeping becomes a plain `#[test]`.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_split_decodes_like_the_whole_stream(
        max_line in 1usize..40,
        (input, cuts) in stream().prop_flat_map(|s| { let n = s.len(); (Just(s), cuts(n)) }),
    ) {
        let (whole, whole_rest) = decode_split(max_line, &input, &[]);
        let (split, split_rest) = decode_split(max_line, &input, &cuts);
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(split_rest, whole_rest);
        prop_assert_eq!(whole, reference(max_line, &input));
    }

    #[test]
    fn one_byte_at_a_time_decodes_like_the_whole_stream(max_line in 1usize..20, input in stream()) {
        let every: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(
            decode_split(max_line, &input, &every),
            decode_split(max_line, &input, &[])
        );
    }

    /// Long runs without `\n`, fed in big reads: the pending buffer stays bounded and the
    /// line after a too-long one is decoded intact.
    #[test]
    fn over_long_lines_never_grow_the_pending_buffer(
        max_line in 2usize..64,
        runs in prop::collection::vec((1usize..5000, 0usize..3), 1..6),
        read in 1usize..4096,
    ) {
        let mut input = Vec::new();
        for (len, newlines) in &runs {
            input.extend_from_slice(&vec![b'x'; *len]);
            input.extend_from_slice(&vec![b'\n'; *newlines]);
        }
        input.extend_from_slice(b"\nok\n");
        let cuts: Vec<usize> = (read..input.len()).step_by(read).collect();
        let (frames, rest) = decode_split(max_line, &input, &cuts);
        prop_assert_eq!(frames.last(), Some(&Some(b"ok".to_vec())));
        prop_assert!(rest.is_empty());
        prop_assert_eq!(frames, reference(max_line, &input));
    }

    /// The parser is total: it never panics, names it accepts are valid, and every error
    /// has a one-line message of bounded length (it is sent back to the client).
    #[test]
    fn parse_accepts_only_valid_names_and_errors_are_one_short_line(line in stream()) {
        let line: Vec<u8> = line.into_iter().filter(|&b| b != b'\n').collect();
        match parse(&line) {
            Ok(Command::Join(name) | Command::Nick(name)) => {
                prop_assert!(!name.is_empty() && name.len() <= NAME_MAX);
                prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
            }
            Ok(Command::Chat(text)) => prop_assert!(line.ends_with(text)),
            Ok(Command::Empty) => prop_assert!(line.is_empty()),
            Ok(_) => prop_assert!(line.starts_with(b"/")),
            Err(err) => {
                let text = err.to_string();
                prop_assert!(!text.contains('\n'), "error text spans lines: {:?}", text);
                // The reply quotes at most 2 * NAME_MAX bytes of the input, escaped (`\u{e}`:
                // up to 6 characters a byte), whatever the length of the line.
                prop_assert!(text.len() <= 12 * NAME_MAX + 100, "error text too long: {}", text.len());
            }
        }
    }
}
