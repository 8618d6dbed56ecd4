//! The checks of the `publish` fuzz target (`fuzz_targets/publish.rs`), also run on
//! stable over every file of `corpus/publish` by `tests/fuzz_corpus.rs`: any body is
//! accepted or refused without a panic, and an accepted one holds what the endpoint will
//! rely on (a valid room and sender, one line of text).

use ringcast_proto::publish::parse_publish;
use ringcast_proto::valid_name;

pub fn check(data: &[u8]) {
    if let Ok(body) = parse_publish(data) {
        assert!(valid_name(&body.room), "{body:?}");
        assert!(body.from.as_deref().is_none_or(valid_name), "{body:?}");
        assert!(!body.text.contains(['\n', '\r']), "{body:?}");
    }
}
