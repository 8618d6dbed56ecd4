//! Runs the fuzz target's checks (`fuzz/check/decode.rs`) on stable, as a normal test:
//! every file of the seed corpus `fuzz/corpus/decode`, then a bounded number of cheap
//! deterministic mutations of them, so CI exercises the fuzz code path without nightly.

#[path = "../fuzz/check/decode.rs"]
mod check;
#[path = "../fuzz/check/publish.rs"]
mod publish_check;
#[path = "../fuzz/check/token.rs"]
mod token_check;

use std::path::PathBuf;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let data = std::fs::read(&path).expect("reading a corpus file");
            (path, data)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_the_fuzz_checks() {
    let files = corpus();
    assert!(files.len() >= 5, "the seed corpus is missing");
    for (path, data) in files {
        eprintln!("{}: {} bytes", path.display(), data.len());
        check::check(&data);
    }
}

/// xorshift64: deterministic, so a failure here reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_corpus_passes_the_fuzz_checks() {
    const INTERESTING: &[u8] = b"\n\r/ \xff\x00abc";
    let files = corpus();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    for round in 0..400 {
        let (_, base) = &files[round % files.len()];
        let mut data = base.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(data.len() + 1);
            match rng.below(4) {
                0 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                1 if at < data.len() => {
                    data.remove(at);
                }
                2 if at < data.len() => data[at] = rng.next() as u8,
                _ => {
                    let (_, other) = &files[rng.below(files.len())];
                    let from = rng.below(other.len());
                    let len = rng.below(64).min(other.len() - from);
                    data.splice(at..at, other[from..from + len].iter().copied());
                }
            }
        }
        check::check(&data);
    }
}

/// The `token` target's checks (`fuzz/check/token.rs`) over its seed corpus.
mod token {
    use super::token_check as check;
    use ringcast_core::auth::Verifier;
    use std::path::PathBuf;

    #[test]
    fn every_token_corpus_file_passes_the_fuzz_checks_and_the_valid_seed_is_valid() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/token");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the token corpus") {
            let data = std::fs::read(entry.expect("an entry").path()).expect("a corpus file");
            check::check(&data);
            n += 1;
        }
        assert!(n >= 5, "the token seed corpus is missing");
        // The seeds reach past the signature check, or the target fuzzes only the parser.
        let valid = std::fs::read_to_string(dir.join("valid")).expect("the valid seed");
        let verifier = ringcast_server::jwt::JwtVerifier::from_key(check::KEY).expect("key");
        assert_eq!(
            verifier.verify(&valid, 1_700_000_000).expect("valid").name,
            "fuzz"
        );
    }
}

#[test]
fn every_publish_corpus_file_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/publish");
    let mut accepted = 0;
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the publish corpus") {
        let data = std::fs::read(entry.expect("an entry").path()).expect("a corpus file");
        publish_check::check(&data);
        accepted += usize::from(ringcast_proto::publish::parse_publish(&data).is_ok());
        n += 1;
    }
    assert!(
        n >= 5 && accepted >= 2,
        "the publish seed corpus is missing ({n}, {accepted})"
    );
}
