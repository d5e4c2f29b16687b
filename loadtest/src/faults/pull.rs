//! A client that pulls a blob as a container runtime would under faults: it asks again after
//! an error, and it checks every byte of every answer, failed ones included, against the bytes
//! the harness generated. A byte that differs from the source at its offset is an unverified
//! byte served, whatever the status or however the response ends.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One agent's pull of one blob, over all its attempts.
#[derive(Clone, Debug, Default)]
pub struct PullLog {
    pub attempts: u32,
    /// Why each failed attempt failed: an HTTP status, "connect" (refused or reset before a
    /// status), "cut" (a 200 whose body ended early or in an error).
    pub failures: Vec<String>,
    /// Body bytes that differed from the source, or ran past its end, over every attempt.
    pub wrong_bytes: u64,
    /// When the exact blob was received, from the start of the pull.
    pub done: Option<Duration>,
}

impl PullLog {
    /// The failures, counted: e.g. "507×3, connect×1".
    pub fn failure_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for f in &self.failures {
            match counts.iter_mut().find(|(k, _)| k == f) {
                Some((_, n)) => *n += 1,
                None => counts.push((f.clone(), 1)),
            }
        }
        counts.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join(", ")
    }
}

/// Pulls `url` until it returns exactly `data`, `stop` is cancelled or `deadline` passes,
/// waiting `retry` between attempts.
pub async fn pull_exact(
    http: &reqwest::Client,
    url: &str,
    data: Arc<Vec<u8>>,
    stop: &CancellationToken,
    deadline: Instant,
    retry: Duration,
) -> PullLog {
    let t0 = Instant::now();
    let mut log = PullLog::default();
    while Instant::now() < deadline && !stop.is_cancelled() {
        log.attempts += 1;
        let attempt = tokio::select! {
            r = tokio::time::timeout_at(deadline, attempt(http, url, &data, &mut log.wrong_bytes)) => r,
            () = stop.cancelled() => return log,
        };
        match attempt {
            Ok(Ok(())) => {
                log.done = Some(t0.elapsed());
                return log;
            }
            Ok(Err(why)) => log.failures.push(why),
            Err(_) => log.failures.push("deadline".into()),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.cancelled() => return log,
        }
    }
    log
}

/// One GET: `Ok` when the body was exactly `data`; every byte is compared as it arrives.
async fn attempt(http: &reqwest::Client, url: &str, data: &[u8], wrong: &mut u64) -> Result<(), String> {
    let resp = http.get(url).send().await.map_err(|_| "connect".to_string())?;
    let status = resp.status();
    let mut off = 0usize;
    let mut body = resp.bytes_stream();
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            cut = true;
            break;
        };
        if status.is_success() {
            *wrong += count_wrong(data, off, &chunk);
        }
        off += chunk.len();
    }
    if !status.is_success() {
        return Err(status.as_u16().to_string());
    }
    if cut || off != data.len() {
        return Err("cut".into());
    }
    Ok(())
}

/// Bytes of `chunk`, received at `off`, that differ from `data` there or lie past its end.
fn count_wrong(data: &[u8], off: usize, chunk: &[u8]) -> u64 {
    let want = data.get(off..).unwrap_or_default();
    let n = chunk.len().min(want.len());
    let differ = chunk[..n].iter().zip(&want[..n]).filter(|(a, b)| a != b).count();
    (differ + (chunk.len() - n)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_bytes_are_counted_where_they_land() {
        let data = b"0123456789";
        assert_eq!(count_wrong(data, 0, b"0123"), 0);
        assert_eq!(count_wrong(data, 4, b"4x6"), 1);
        assert_eq!(count_wrong(data, 8, b"89ab"), 2, "past the end");
        assert_eq!(count_wrong(data, 12, b"z"), 1);
    }

    #[test]
    fn failures_are_summarized_by_kind() {
        let log = PullLog { failures: vec!["507".into(), "connect".into(), "507".into()], ..PullLog::default() };
        assert_eq!(log.failure_summary(), "507×2, connect×1");
    }
}
