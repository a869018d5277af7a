//! Progress bars on long work: a batch source that ticks a bar per batch
//! (drawn on a terminal only; hidden with --quiet or when stderr is not one).

use indicatif::{ProgressBar, ProgressStyle};
use oodkit::Result;
use oodkit::datasets::{BatchIter, BatchSource};

/// `source`, ticking a bar labelled `message` as its batches are drawn.
pub struct Progress<'a> {
    source: &'a dyn BatchSource,
    bar: ProgressBar,
}

impl<'a> Progress<'a> {
    /// A bar over one pass of `source` (hidden when `quiet`).
    pub fn new(source: &'a dyn BatchSource, message: impl Into<String>, quiet: bool) -> Self {
        let bar = match (quiet, source.num_batches()) {
            (true, _) => ProgressBar::hidden(),
            (false, Some(n)) => ProgressBar::new(n as u64),
            (false, None) => ProgressBar::new_spinner(),
        };
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} batches ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        Progress { source, bar }
    }
}

impl BatchSource for Progress<'_> {
    fn batches(&self) -> Result<BatchIter<'_>> {
        self.bar.reset();
        let bar = self.bar.clone();
        Ok(Box::new(
            self.source.batches()?.inspect(move |_| bar.inc(1)),
        ))
    }

    fn num_batches(&self) -> Option<usize> {
        self.source.num_batches()
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
