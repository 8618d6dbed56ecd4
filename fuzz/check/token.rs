//! The checks of the `token` fuzz target (`fuzz_targets/token.rs`), also run on stable
//! over every file of `corpus/token` by `tests/fuzz_corpus.rs`: any bytes given to the
//! `--jwt-key` verifier as a token are refused or accepted without a panic, and an
//! accepted one names a valid chat name and has not expired.

use ringcast_core::auth::Verifier;
use ringcast_server::jwt::JwtVerifier;

/// The HS256 secret the corpus's valid tokens are signed with (`ringcast token --key`).
pub const KEY: &[u8] = b"fuzz-secret\n";

pub fn check(data: &[u8]) {
    let verifier = JwtVerifier::from_key(KEY).expect("an HS256 key");
    // `/auth` and `?token=` hand the verifier text only.
    let token = String::from_utf8_lossy(data);
    for now in [0, 1_700_000_000, u64::MAX] {
        if let Ok(identity) = verifier.verify(&token, now) {
            assert!(ringcast_proto::valid_name(&identity.name), "{identity:?}");
            assert!(identity.expires_at > now, "{identity:?} at {now}");
        }
    }
}
