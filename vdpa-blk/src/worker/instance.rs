//! Which driver instance a worker serves. A reset ends an instance: the control loop bumps
//! the shared counter, and a worker left over from before (still waiting for I/O that a lost
//! path holds) sees it before every guest write and interrupt, so it never touches the rings
//! or the memory of the driver that came next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The device's instance counter, shared by the control loop and its workers.
#[derive(Debug, Clone, Default)]
pub struct Instances(Arc<AtomicU64>);

impl Instances {
    /// A new counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The instance being driven now.
    pub fn current(&self) -> DriverInstance {
        DriverInstance {
            shared: self.0.clone(),
            mine: self.0.load(Ordering::Acquire),
        }
    }

    /// Ends the current instance (device reset acknowledged).
    pub fn end_current(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// One worker's instance: the value of the counter when it was started.
#[derive(Debug, Clone, Default)]
pub struct DriverInstance {
    shared: Arc<AtomicU64>,
    mine: u64,
}

impl DriverInstance {
    /// Whether the driver that started this worker is still the one driving the device.
    pub fn is_current(&self) -> bool {
        self.shared.load(Ordering::Acquire) == self.mine
    }
}
