//! Names the git revision the binary is built from (`RINGCAST_GIT_REV`, shown by
//! `ringcast_info` in `/metrics` and kept in bench reports): the short commit, with
//! `-dirty` when tracked files differ from it, or `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    // A revision set by whoever builds (a package, CI) wins.
    println!("cargo:rerun-if-env-changed=RINGCAST_GIT_REV");
    if let Ok(rev) = std::env::var("RINGCAST_GIT_REV") {
        println!("cargo:rustc-env=RINGCAST_GIT_REV={rev}");
        return;
    }
    let rev = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|status| !status.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=RINGCAST_GIT_REV={rev}");
    // Run again when HEAD moves (a commit, a checkout) or a source changes (dirtiness);
    // in a worktree HEAD is in its own git dir and branches in the common one.
    for dir in ["--git-dir", "--git-common-dir"] {
        if let Some(dir) = git(&["rev-parse", dir]) {
            for file in ["HEAD", "packed-refs"] {
                let path = Path::new(&dir).join(file);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            let path = Path::new(&common).join(reference);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for source in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={source}");
    }
}
