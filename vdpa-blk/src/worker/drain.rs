//! Draining the available ring: pop every chain the driver made available (EVENT_IDX rounds),
//! parse it, start it or answer it, and mark the queue broken when the driver breaks it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::QueueT;

use super::fault_in::MAX_FAULT_RETRIES;
use super::Worker;
use crate::blk::request::parse_into;
use crate::iotlb::IotlbMemory;

impl Worker {
    /// Pops, parses and starts every available chain. With `rearm`, notifications are turned
    /// back on at the end and the ring checked once more (so a request that raced with the
    /// re-enable is not left waiting for a kick); without it (polling) they stay off.
    /// Returns the number of chains popped.
    pub(super) fn process_available(&mut self, rearm: bool) -> u32 {
        if self.broken || !self.instance_live() {
            return 0;
        }
        if let Some(c) = &self.capacity {
            self.parse.capacity = c.load(Ordering::Acquire);
        }
        let mut mem = self.mem();
        let mut total = 0u32;
        loop {
            // A no-op with EVENT_IDX (the avail event is only moved by the re-enable);
            // VRING_USED_F_NO_NOTIFY otherwise. A polling caller disabled them already.
            if rearm {
                if let Err(e) = self.q.disable_notification(&*mem) {
                    tracing::debug!(queue = self.index, "disable_notification: {e}");
                }
            }
            // The driver cannot have more chains available than the queue has entries: such
            // an index is a broken (or hostile) driver, and popping would find nothing forever.
            match self.q.avail_idx(&*mem, Ordering::Acquire) {
                Ok(idx) if idx.0.wrapping_sub(self.q.next_avail()) > self.q.size() => {
                    self.mark_broken(format_args!(
                        "available index {} is more than the queue size {} ahead of {}",
                        idx.0,
                        self.q.size(),
                        self.q.next_avail()
                    ));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    // The ring is not mapped right now; the control loop kicks the queue
                    // again once it is.
                    tracing::debug!(queue = self.index, "available index: {e}");
                    break;
                }
            }
            let popped = self.pop_round(&mut mem);
            self.next_avail
                .store(self.q.next_avail(), Ordering::Release);
            total += popped;
            if !rearm || self.broken {
                break;
            }
            match self.q.enable_notification(&*mem) {
                // More arrived while popping. A round that popped nothing ends the loop
                // (an unreadable available entry): the next kick tries again.
                Ok(true) if popped > 0 => continue,
                Ok(_) => break,
                Err(e) => {
                    // Typically the ring is not mapped right now (IOTLB update in progress);
                    // the control loop kicks the queue again after remapping.
                    tracing::debug!(queue = self.index, "enable_notification: {e}");
                    break;
                }
            }
        }
        total
    }

    /// Stops taking requests from a queue the driver broke, until the reset; said once.
    fn mark_broken(&mut self, why: std::fmt::Arguments<'_>) {
        if !self.broken {
            self.broken = true;
            self.stats.broken.store(1, Ordering::Relaxed);
            tracing::error!(
                queue = self.index,
                "the driver broke the queue ({why}); serving no more requests until it resets \
                 the device"
            );
        }
    }

    /// One round: pops, parses and starts at most a queue's worth of available chains.
    /// Returns the number popped.
    fn pop_round(&mut self, mem: &mut Arc<IotlbMemory>) -> u32 {
        let mut popped = 0u32;
        // Times the chain at the current next-avail index was popped again after a fault-in.
        let mut retries = 0u32;
        while let Some(chain) = self.q.pop_descriptor_chain(&**mem) {
            popped += 1;
            let head = chain.head_index();
            if self.slots.get(usize::from(head)).is_none_or(|s| s.busy) {
                // A head already in flight (or out of range): the driver is confused or
                // hostile. Never complete it twice, and take nothing more from it.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.mark_broken(format_args!(
                    "head {head} is already in flight or out of range"
                ));
                break;
            }
            // The same parse path the fuzz target (vdpa-blk/fuzz) drives, into buffers
            // reused across requests.
            let mut req = std::mem::take(&mut self.req);
            let parsed = parse_into(chain, &self.parse, &mut self.descs, &mut req);
            match parsed {
                Ok(()) => {
                    retries = 0;
                    self.start_request(mem, &req);
                }
                Err(rej) => {
                    // The VDUSE bounce region (virtio_vdpa) appears on the driver's first
                    // DMA mapping and is announced by no message: when a chain does not
                    // parse, map on demand whatever it (including an indirect table)
                    // points to that we have not mapped yet, then pop the same chain again
                    // with the new snapshot. Only rejected chains pay for this walk.
                    if retries < MAX_FAULT_RETRIES {
                        if let Some(src) = self.fault.as_ref().and_then(|w| w.upgrade()) {
                            if self.fault_in_chain(mem, &*src, head) > 0 {
                                // Un-pop: the chain is read again with the new snapshot.
                                self.q.set_next_avail(self.q.next_avail().wrapping_sub(1));
                                popped -= 1;
                                retries += 1;
                                *mem = self.mem();
                                self.req = req;
                                continue;
                            }
                        }
                    }
                    retries = 0;
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    match (rej.error.status(), rej.status_addr) {
                        (Some(status), Some(addr)) => {
                            tracing::debug!(
                                queue = self.index,
                                head = rej.head_index,
                                "request failed: {}",
                                rej.error
                            );
                            self.complete_chain(mem, rej.head_index, Some((addr, status)), 1);
                        }
                        _ => {
                            // No status byte to answer: completing it with a zero length
                            // would let the driver read a status it wrote itself (often 0,
                            // OK). Fail the queue instead, loudly.
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            self.req = req;
                            self.mark_broken(format_args!(
                                "chain at head {} has no usable status byte: {}",
                                rej.head_index, rej.error
                            ));
                            break;
                        }
                    }
                }
            }
            self.req = req;
            if popped >= u32::from(self.q.size()) {
                break;
            }
        }
        popped
    }
}
