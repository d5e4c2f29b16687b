//! Records the git commit the binaries are built from, for their `--version`.
//!
//! `SHOAL_GIT_COMMIT` in the build environment wins (an image build without `.git`); otherwise
//! `git rev-parse --short HEAD`; otherwise "unknown". Cargo reruns this when HEAD or the
//! branch it names moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHOAL_GIT_COMMIT");
    // In a worktree `.git` is a file, so ask git where HEAD and the branch's ref live. Only
    // existing files are named: cargo reruns on every build for a missing one.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let (commit, source) = match std::env::var("SHOAL_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        Some(c) => (c, "env"),
        None => match git(&["rev-parse", "--short", "HEAD"]) {
            Some(c) => (c, "git"),
            None => ("unknown".to_string(), "none"),
        },
    };
    println!("cargo:rustc-env=SHOAL_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SHOAL_GIT_COMMIT_SOURCE={source}");
}
