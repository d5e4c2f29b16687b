//! Loading a service's typed YAML configuration.
//!
//! Precedence, lowest to highest: the type's documented `Default`, then the YAML file, then
//! the few command-line flags (each with an environment twin) that the binary applies after
//! loading. Unknown keys are errors (every config type is `deny_unknown_fields`): a mistyped
//! Helm value fails loudly instead of being ignored. Loading never binds a port, so
//! `--check-config` and a bad config both exit before any listener exists.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Exit code for a bad configuration (BSD `EX_CONFIG`); `--check-config` exits 0 or this.
pub const EX_CONFIG: i32 = 64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config{}: {source}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse { path: Option<PathBuf>, source: serde_yaml::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Parses YAML text into a config; an empty document gives the defaults.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })
}

/// Reads and parses a config file; `None` gives the embedded defaults.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else { return parse("") };
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Parse { source, .. } => ConfigError::Parse { path: Some(path.to_path_buf()), source },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        port: u16,
        name: String,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg { port: 7, name: "x".into() }
        }
    }

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(parse::<Cfg>("").unwrap(), Cfg::default());
        assert_eq!(load::<Cfg>(None).unwrap(), Cfg::default());
    }

    #[test]
    fn partial_overrides() {
        assert_eq!(parse::<Cfg>("port: 9").unwrap(), Cfg { port: 9, name: "x".into() });
    }

    #[test]
    fn unknown_key_rejected_with_its_name() {
        let e = parse::<Cfg>("prot: 9").unwrap_err().to_string();
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = load::<Cfg>(Some(Path::new("/nonexistent/x.yaml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
