//! What every Shoal service shares, so each binary stays thin: typed YAML configuration with
//! unknown keys rejected ([`config`]), byte sizes and rates in humane units ([`units`]), the
//! HTTP server every service runs, with its deadlines and connection cap ([`http`]), the
//! admin endpoints `/health`, `/ready` and `/metrics` ([`admin`]), who may write
//! ([`auth`]), signal handling and task spawning tied to a cancellation token ([`task`]), and
//! TLS for every link between nodes ([`tls`]).
//!
//! Invariant: nothing here reads the environment or global state on behalf of a library;
//! binaries call these helpers, libraries receive their results.

pub mod admin;
pub mod alloc;
pub mod api_error;
pub mod auth;
pub mod cap;
pub mod config;
pub mod http;
pub mod request_id;
pub mod task;
pub mod tls;
pub mod units;
pub mod version;

pub use admin::{Admin, Listeners, Phase};
pub use api_error::{ApiError, blob_response, parse_digest};
pub use auth::{AuthConfig, AuthError, Authorizer, Grant};
pub use cap::Cap;
pub use config::{ConfigError, EX_CONFIG, PeerNames};
pub use http::{Caller, HttpConfig, serve, serve_with};
pub use task::{
    LogFormat, config_or_exit, init_tracing, serve_until_signal, serve_until_signal_within, spawn, wait_for_signal,
};
pub use tls::{Identity, Tls, TlsConfig};
pub use units::{ByteSize, Duration, Percent, SizeLimit};
pub use version::VERSION;
