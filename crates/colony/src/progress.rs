//! Progress on a terminal (indicatif), silent when stderr is not one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Shows files, bytes and rate while an archive is made or extracted, and
/// prints warnings above the bar.
pub struct Progress {
    bar: ProgressBar,
    files: AtomicU64,
    bytes: AtomicU64,
    warnings: AtomicU64,
}

impl Progress {
    pub fn new(verb: &str) -> Progress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(&format!("{{spinner}} {verb} {{msg}} [{{elapsed}}]"))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
        }
    }

    fn refresh(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.bar.set_message(format!(
            "{} files, {:.1} MB, {:.0} MB/s",
            self.files.load(Ordering::Relaxed),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        ));
    }

    /// Shows `msg` as where the work stands.
    pub fn say(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl vac::walk::Observer for Progress {
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.refresh();
    }

    fn file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    fn warn(&self, path: &Path, why: &str) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
        self.bar
            .suspend(|| eprintln!("colony: {}: {why}", path.display()));
    }
}
