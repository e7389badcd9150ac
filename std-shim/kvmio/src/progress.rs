//! `kvmio nbd copy --progress`: an indicatif bar on stderr per transfer.

use std_shim::nbd::copy::{Progress, TransferProgress};

/// Draws a bar for each transfer of a copy.
pub(crate) struct Bars;

impl Progress for Bars {
    fn start(&self, total: u64) -> Box<dyn TransferProgress> {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Box::new(Bar(bar))
    }
}

/// One transfer's bar.
struct Bar(indicatif::ProgressBar);

impl TransferProgress for Bar {
    fn update(&mut self, done: u64) {
        self.0.set_position(done);
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}
