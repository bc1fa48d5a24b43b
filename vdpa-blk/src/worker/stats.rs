//! Per-queue counters, written by the worker with relaxed atomics and read by the stats dump.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Per-queue counters (read by the stats dump).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Bytes read from the backing device into guest buffers.
    pub bytes_read: AtomicU64,
    /// Bytes written from guest buffers to the backing device.
    pub bytes_written: AtomicU64,
    /// Requests answered with an error status or dropped.
    pub errors: AtomicU64,
    /// Chains dropped without a status.
    pub dropped: AtomicU64,
    /// Requests submitted and not yet completed.
    pub in_flight: AtomicU64,
    /// Interrupts injected.
    pub interrupts: AtomicU64,
    /// Kicks (driver notifications) read from the kick eventfd. One kick may cover many
    /// requests (EVENT_IDX batching); while the worker polls, the driver is told not to kick.
    pub kicks: AtomicU64,
    /// Requests found by busy-polling the ring (`--poll-us`), with no kick.
    pub polled: AtomicU64,
    /// Payload bytes the daemon copied. The datapath has no copy: this stays 0.
    pub copied_bytes: AtomicU64,
    /// Completions waiting for their ring or status byte to be mapped again (IOTLB update).
    pub parked: AtomicU64,
    /// Times the queue's worker died (a fatal ring error) and the control loop noticed; it is
    /// restarted a few times, then the queue stays failed.
    pub failures: AtomicU64,
    /// 1 once the driver broke the queue (an impossible available index, a head already in
    /// flight, a chain with no status byte): the worker stops taking requests until a reset.
    pub broken: AtomicU64,
    /// Requests a dead daemon had fetched and not completed, submitted again by this one on
    /// reconnect.
    pub resubmitted: AtomicU64,
}

/// A snapshot of [`QueueStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStatsSnapshot {
    /// Queue index.
    pub queue: u16,
    /// See [`QueueStats`].
    pub requests: u64,
    /// See [`QueueStats`].
    pub bytes_read: u64,
    /// See [`QueueStats`].
    pub bytes_written: u64,
    /// See [`QueueStats`].
    pub errors: u64,
    /// See [`QueueStats`].
    pub dropped: u64,
    /// See [`QueueStats`].
    pub in_flight: u64,
    /// See [`QueueStats`].
    pub interrupts: u64,
    /// See [`QueueStats`].
    pub kicks: u64,
    /// See [`QueueStats`].
    pub polled: u64,
    /// See [`QueueStats`].
    pub copied_bytes: u64,
    /// See [`QueueStats::parked`].
    pub parked: u64,
    /// See [`QueueStats::failures`].
    pub failures: u64,
    /// See [`QueueStats::broken`].
    pub broken: bool,
    /// See [`QueueStats::resubmitted`].
    pub resubmitted: u64,
}

impl QueueStats {
    /// Reads every counter.
    pub fn snapshot(&self, queue: u16) -> QueueStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStatsSnapshot {
            queue,
            requests: l(&self.requests),
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            errors: l(&self.errors),
            dropped: l(&self.dropped),
            in_flight: l(&self.in_flight),
            interrupts: l(&self.interrupts),
            kicks: l(&self.kicks),
            polled: l(&self.polled),
            copied_bytes: l(&self.copied_bytes),
            parked: l(&self.parked),
            failures: l(&self.failures),
            broken: l(&self.broken) != 0,
            resubmitted: l(&self.resubmitted),
        }
    }
}

/// Every queue's counters, queue `i` at index `i`.
pub fn snapshot_all(stats: &[Arc<QueueStats>]) -> Vec<QueueStatsSnapshot> {
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| s.snapshot(i as u16))
        .collect()
}
