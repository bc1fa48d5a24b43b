//! Progress lines with elapsed time, for the long phases (boot, carve, export, connect, I/O).
//!
//! Written straight to the process's stderr (not through `eprintln!`) so they show while
//! `cargo test` captures test output.

use std::io::Write;
use std::time::Instant;

/// A run's clock and its progress printer.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    label: String,
}

impl Progress {
    /// Starts the clock for a run called `label`.
    pub fn new(label: impl Into<String>) -> Self {
        Progress {
            start: Instant::now(),
            label: label.into(),
        }
    }

    /// Seconds since the run started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Announces the start of a phase.
    pub fn phase(&self, phase: &str, what: &str) {
        self.line(&format!("{phase:<8} {what}"));
    }

    /// A free-form note.
    pub fn note(&self, what: &str) {
        self.line(&format!("{:<8} {what}", ""));
    }

    fn line(&self, text: &str) {
        let line = format!("[{} {:>7.1}s] {text}\n", self.label, self.elapsed());
        // Progress is best effort: a closed stderr must not fail the run.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}
