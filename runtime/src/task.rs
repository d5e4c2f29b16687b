//! Spawning and signals.
//!
//! Every background task goes through [`spawn`]: it is named, runs inside the caller's
//! tracing span, stops when its cancellation token fires, and logs its error with the whole
//! cause chain instead of dropping it.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Spawns `fut` as a named task that ends early when `cancel` fires.
pub fn spawn<F>(name: &'static str, cancel: CancellationToken, fut: F) -> JoinHandle<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            tokio::select! {
                res = fut => {
                    if let Err(e) = res {
                        tracing::warn!(task = name, "task failed: {e:#}");
                    }
                }
                _ = cancel.cancelled() => {
                    tracing::trace!(task = name, "task cancelled");
                }
            }
        }
        .instrument(span),
    )
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C): both start a graceful drain.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install SIGTERM handler: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The tail of every service binary: runs `serve` until SIGTERM or SIGINT, then cancels
/// `shutdown` and waits for the drain. Returns at once, with its result, if `serve` ends
/// before any signal.
pub async fn serve_until_signal<F, E>(serve: F, shutdown: CancellationToken) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    serve_until_signal_within(serve, shutdown, None).await
}

/// As [`serve_until_signal`], failing when the drain after the signal outlasts `deadline`
/// (the service's own grace period plus some slack), so a stuck drain cannot hold the
/// process.
pub async fn serve_until_signal_within<F, E>(
    serve: F,
    shutdown: CancellationToken,
    deadline: Option<std::time::Duration>,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    // Awaited below, so no cancellation token: the drain is what `shutdown` starts.
    let mut server = tokio::spawn(serve);
    tokio::select! {
        res = &mut server => return Ok(res??),
        () = wait_for_signal() => {}
    }
    shutdown.cancel();
    match deadline {
        None => server.await??,
        Some(deadline) => match tokio::time::timeout(deadline, &mut server).await {
            Ok(res) => res??,
            Err(_) => {
                tracing::error!(?deadline, "drain deadline passed; exiting with work in flight");
                anyhow::bail!("the drain outlasted {deadline:?}");
            }
        },
    }
    Ok(())
}

/// Returns a loaded config, or prints why it is bad and exits with [`crate::EX_CONFIG`]
/// before anything binds; with `check_only`, exits 0 after a good check.
pub fn config_or_exit<T>(binary: &str, loaded: Result<T, crate::ConfigError>, check_only: bool) -> T {
    match loaded {
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            std::process::exit(crate::EX_CONFIG);
        }
        Ok(_) if check_only => {
            println!("config ok");
            std::process::exit(0);
        }
        Ok(c) => c,
    }
}

/// How a service writes its log lines to stderr: the `log_format` key of every service config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per event, with its fields, level, target and enclosing spans (among
    /// them a request's `request_id`), for log collectors.
    Json,
}

/// Installs the process-wide log subscriber (binaries only). `RUST_LOG` overrides `default`.
pub fn init_tracing(default: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(true).try_init(),
    };
}
