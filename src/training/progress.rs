//! The per-epoch progress bar of [`train`](super::train).

use indicatif::{ProgressBar, ProgressStyle};

use super::EpochStats;

/// A bar over one epoch's batches with the running loss and accuracy,
/// followed by a one-line summary (the summary is printed even where no bar
/// can be drawn, e.g. into a log file).
pub(super) struct EpochProgress {
    bar: Option<ProgressBar>,
}

impl EpochProgress {
    pub(super) fn new(enabled: bool, epoch: usize, epochs: usize, batches: usize) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            bar
        });
        EpochProgress { bar }
    }

    /// One more batch done; `loss` and `accuracy` are the epoch's running means.
    pub(super) fn step(&self, loss: f64, accuracy: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4} accuracy {accuracy:.4}"));
            bar.inc(1);
        }
    }

    /// Clears the bar and prints the epoch's summary.
    pub(super) fn finish(self, stats: &EpochStats) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            let validation = stats
                .validation_accuracy
                .map(|v| format!(", validation accuracy {v:.4}"))
                .unwrap_or_default();
            eprintln!(
                "epoch {}: loss {:.4}, accuracy {:.4}{validation} ({:.1} s, {:.0} images/s)",
                stats.epoch,
                stats.loss,
                stats.accuracy,
                stats.seconds,
                stats.samples as f64 / stats.seconds.max(f64::MIN_POSITIVE),
            );
        }
    }
}
