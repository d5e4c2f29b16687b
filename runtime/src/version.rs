//! The version every binary prints for `--version`: the workspace version and the git commit
//! it was built from ("unknown" outside a git checkout; see `runtime/build.rs`).

/// The short git commit of the build, or "unknown".
pub const GIT_COMMIT: &str = env!("SHOAL_GIT_COMMIT");

/// `<version> (<commit>)`, as `--version` prints it after the binary's name.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SHOAL_GIT_COMMIT"), ")");

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_commit() {
        assert!(!super::GIT_COMMIT.is_empty());
        assert_eq!(super::VERSION, format!("{} ({})", env!("CARGO_PKG_VERSION"), super::GIT_COMMIT));
    }

    #[test]
    fn the_commit_is_the_checkouts_head() {
        let head = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output();
        let head = match head {
            Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap().trim().to_string(),
            // Not a checkout (or no git): the build could not know it either.
            _ => "unknown".to_string(),
        };
        // A commit given through `SHOAL_GIT_COMMIT` at build time is taken as given.
        if env!("SHOAL_GIT_COMMIT_SOURCE") != "env" {
            assert_eq!(super::GIT_COMMIT, head);
        }
    }
}
