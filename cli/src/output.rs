//! Progress bars (indicatif, on stderr) and human units. A hidden [`Progress`] draws nothing,
//! so callers update it the same way whether or not anyone watches.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One progress bar; cheap to clone (clones update the same bar).
#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// Bytes moved out of `len` (a spinner when the length is unknown), with rate and ETA.
    pub fn bytes(visible: bool, len: Option<u64>, what: &'static str) -> Progress {
        let bar = match len {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix:>7} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>7} {spinner} {bytes} {binary_bytes_per_sec} {msg}")
                    .expect("valid template"),
            ),
        };
        Progress::shown(bar.with_prefix(what), visible)
    }

    /// Items done out of `len`.
    pub fn count(visible: bool, len: u64, what: &'static str) -> Progress {
        let bar = ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} blobs, {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress::shown(bar.with_prefix(what), visible)
    }

    fn shown(bar: ProgressBar, visible: bool) -> Progress {
        bar.set_draw_target(if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        Progress(bar)
    }

    pub fn set(&self, pos: u64) {
        self.0.set_position(pos);
    }

    /// The text after the bar (where the bytes come from, say).
    pub fn message(&self, text: String) {
        self.0.set_message(text);
    }

    /// Whether the bar is drawn.
    pub fn visible(&self) -> bool {
        !self.0.is_hidden()
    }

    /// Removes the bar from the screen.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// `1.50 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    if n < 1024 { format!("{n} B") } else { scaled(n as f64) }
}

/// `120.00 MiB/s`.
pub fn human_rate(bytes_per_sec: f64) -> String {
    let v = bytes_per_sec.max(0.0);
    if v < 1024.0 { format!("{v:.0} B/s") } else { format!("{}/s", scaled(v)) }
}

/// `v` bytes (at least 1 KiB) in the largest binary unit that keeps it at or above 1.
fn scaled(mut v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1 << 30), "1.00 GiB");
        assert_eq!(human_rate(3.0 * 1048576.0), "3.00 MiB/s");
        assert_eq!(human_rate(12.4), "12 B/s");
    }
}
