//! Completions: a finished chain's status byte and used entry, written through the snapshot
//! of the moment or parked until its memory is mapped again, and the interrupt that tells the
//! driver; nothing is written once the driver instance the worker serves has ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::exec::Exec;
use super::Parked;
use crate::blk::exec::write_status;
use crate::iotlb::IotlbMemory;

impl Exec {
    pub(super) fn notify_if_needed(&mut self, q: &mut Queue) {
        if !self.used_since_notify && !self.force_notify {
            return;
        }
        self.used_since_notify = false;
        if !self.instance_live() {
            return;
        }
        let mem = self.mem();
        let forced = std::mem::take(&mut self.force_notify);
        let needed = forced
            || match q.needs_notification(&*mem) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(queue = self.index, "needs_notification: {e}");
                    true
                }
            };
        if needed {
            let Some(irq) = self.irq.upgrade() else {
                // The device is being torn down.
                return;
            };
            match irq.notify(self.index) {
                Ok(()) => {
                    self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(queue = self.index, "inject irq: {e}"),
            }
        }
    }

    /// Completes one chain: its status byte (if any) and its used entry. When either is not
    /// mapped in `mem` (an IOTLB update moved it), the completion is parked and written once
    /// it is mapped again; after a reset acknowledged without this worker, nothing is written.
    pub(super) fn complete_chain(
        &mut self,
        q: &mut Queue,
        mem: &Arc<IotlbMemory>,
        head: u16,
        status: Option<(GuestAddress, u8)>,
        used_len: u32,
    ) {
        let p = Parked {
            head,
            status,
            used_len,
        };
        if let Some(p) = self.try_complete(q, mem, p) {
            if !self.parked.iter().any(|q| q.head == p.head) {
                tracing::debug!(queue = self.index, head, "completion parked until remapped");
                self.parked.push(p);
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what `p` still needs; returns what is left to write (None: done, or dropped
    /// because the driver instance ended).
    fn try_complete(
        &mut self,
        q: &mut Queue,
        mem: &Arc<IotlbMemory>,
        mut p: Parked,
    ) -> Option<Parked> {
        if !self.instance_live() {
            return None;
        }
        if let Some((addr, status)) = p.status {
            if !write_status(&**mem, addr, status) {
                return Some(p);
            }
            p.status = None;
        }
        // Checked first, so that add_used never fails half-way (entry written, index not).
        if !self.used_ring_writable(q, mem) {
            return Some(p);
        }
        if let Err(e) = q.add_used(&**mem, p.head, p.used_len) {
            tracing::debug!(queue = self.index, head = p.head, "add_used: {e}");
            return Some(p);
        }
        // Write order (2) of the in-flight log: after the used index moved.
        if let Some(log) = &self.log {
            log.completed(p.head, q.next_used());
        }
        self.used_since_notify = true;
        None
    }

    /// Whether the whole used ring (flags, index, entries, avail event) is writable in `mem`:
    /// looked up once per snapshot, not per completion. The `Weak` keeps the snapshot's
    /// address from being reused without keeping its mappings alive.
    fn used_ring_writable(&mut self, q: &Queue, mem: &Arc<IotlbMemory>) -> bool {
        if let Some((seen, ok)) = &self.used_ring {
            if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(mem)) {
                return *ok;
            }
        }
        let len = 4 + 8 * usize::from(q.size()) + 2;
        let ok = mem.check_range(GuestAddress(q.used_ring()), len, Permissions::Write);
        self.used_ring = Some((Arc::downgrade(mem), ok));
        ok
    }

    /// Writes the parked completions whose memory is mapped again.
    pub(super) fn retry_parked(&mut self, q: &mut Queue) {
        let mem = self.mem();
        let mut i = 0;
        while i < self.parked.len() {
            let p = self.parked[i];
            match self.try_complete(q, &mem, p) {
                Some(left) => {
                    self.parked[i] = left;
                    i += 1;
                }
                None => {
                    self.parked.swap_remove(i);
                    self.stats.parked.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}
