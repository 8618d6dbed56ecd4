//! Names the commit the binary is built from, for the reports it writes: `RINGCAST_GIT_REV`
//! is the abbreviated commit, with `-dirty` when the sources it is built from (`src/`,
//! `crates/`, `Cargo.toml`, `Cargo.lock`, this file) differ from that commit, or `unknown` outside a
//! git checkout. A build from elsewhere (a source tarball, a packager) can set
//! `RINGCAST_GIT_REV` in the environment instead.

use std::path::Path;
use std::process::Command;

/// What `-dirty` looks at: everything the `ringcast` binary is compiled from.
const SOURCES: [&str; 5] = ["src", "crates", "Cargo.toml", "Cargo.lock", "build.rs"];

fn main() {
    println!("cargo:rerun-if-env-changed=RINGCAST_GIT_REV");
    let rev = match std::env::var("RINGCAST_GIT_REV") {
        Ok(rev) if !rev.is_empty() => rev,
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=RINGCAST_GIT_REV={rev}");
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `rerun-if-changed` on a path that exists (cargo reruns every time for a missing one).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn from_git() -> Option<String> {
    // Run again when the sources change (they may make the tree dirty or clean) and when
    // HEAD moves: a commit rewrites the index and the branch's ref.
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "index"] {
            watch(&Path::new(&dir).join(file));
        }
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = Path::new(&common);
        let common = if common.is_absolute() {
            common.to_path_buf()
        } else {
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").ok()?).join(common)
        };
        watch(&common.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(branch));
        }
    }
    let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    status.extend(SOURCES);
    let dirty = git(&status).is_some_and(|changes| !changes.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
