//! The commit the running binary was built from. Only the `ringcast` binary has a build
//! script that knows it (so an edit anywhere does not rebuild every crate); it records it
//! here at start, and the server's `/metrics` and the harness's reports read it back.

use std::sync::OnceLock;

static GIT_REV: OnceLock<&'static str> = OnceLock::new();

/// Records the commit of this build; the first call wins.
pub fn set_git_rev(rev: &'static str) {
    let _ = GIT_REV.set(rev);
}

/// The commit recorded by [`set_git_rev`], or `unknown` (a library used without the
/// `ringcast` binary, as in tests that start a server in-process).
pub fn git_rev() -> &'static str {
    GIT_REV.get().copied().unwrap_or("unknown")
}
