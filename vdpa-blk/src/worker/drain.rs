//! Draining the available ring: pop every chain the driver made available (EVENT_IDX rounds),
//! parse it, and hand it to a [`Sink`] to start or answer; mark the queue broken when the
//! driver breaks it.
//!
//! The worker's sink is its io_uring executor; the fuzz harness (`vdpa-blk/fuzz`) drives this
//! same [`Drain`] with a sink of its own, so what the fuzzer finds is what the worker does.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use super::QueueStats;
use crate::blk::request::{parse_head_into, parse_into, ParseContext, Rejected, Request};

/// How often one chain is popped again after the sink mapped what it points to (an indirect
/// table first, then the buffers it lists).
pub const MAX_FAULT_RETRIES: u32 = 4;

/// What a [`Drain`] does with the chains it pops.
pub trait Sink<M> {
    /// Whether a request with this head is in flight (popping it again breaks the queue).
    /// Heads past the queue size never reach the sink.
    fn in_flight(&self, head: u16) -> bool;
    /// Starts a parsed request. Its status byte and used entry are the sink's to write.
    fn start(&mut self, q: &mut Queue, mem: &M, req: &Request);
    /// Answers a rejected chain whose status byte is usable (`rej.status_addr`): writes
    /// `status` there and adds a used entry of length 1.
    fn answer(&mut self, q: &mut Queue, mem: &M, rej: &Rejected, status: u8);
    /// A rejected chain may point to memory the snapshot lacks: map what is missing and return
    /// the memory to pop it again with, or `None` (nothing new).
    fn fault_in(&mut self, _q: &Queue, _mem: &M, _head: u16) -> Option<M> {
        None
    }
}

/// One queue's available side: the queue, the parse limits and the buffers a parse reuses.
pub struct Drain {
    /// The queue (the worker also writes its used ring through it).
    pub q: Queue,
    index: u16,
    parse: ParseContext,
    /// Scratch for the descriptors of the chain being parsed.
    descs: Vec<Descriptor>,
    /// The request being parsed.
    req: Request,
    broken: bool,
    stats: Arc<QueueStats>,
}

impl Drain {
    /// A drain of queue `index` (`q` set up and ready) with its counters.
    pub fn new(q: Queue, index: u16, parse: ParseContext, stats: Arc<QueueStats>) -> Self {
        let n = usize::from(parse.max_chain);
        Drain {
            q,
            index,
            parse,
            descs: Vec::with_capacity(n),
            req: Request::with_capacity(n, 16),
            broken: false,
            stats,
        }
    }

    /// Whether the driver broke the queue (nothing is popped until a reset).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// The capacity requests are checked against (a resize changes it).
    pub fn set_capacity(&mut self, sectors: u64) {
        self.parse.capacity = sectors;
    }

    /// Whether the driver made chains available that were not popped yet.
    pub fn has_available<G: GuestMemory + ?Sized>(&self, mem: &G) -> bool {
        !self.broken
            && self
                .q
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|i| i.0 != self.q.next_avail())
    }

    /// Pops, parses and hands to `sink` every available chain. With `rearm`, notifications
    /// are turned back on at the end and the ring checked once more (so a request that raced
    /// with the re-enable is not left waiting for a kick); without it (polling) they stay off.
    /// Returns the number of chains popped. Ends: a round pops at most a queue's worth, a
    /// round after a re-enable that saw new chains but pops nothing ends the loop (an
    /// unreadable entry), and an impossible index breaks the queue.
    pub fn drain<M, S>(&mut self, mem: &mut M, sink: &mut S, rearm: bool) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
        S: Sink<M>,
    {
        if self.broken {
            return 0;
        }
        let mut total = 0u32;
        // The last re-enable saw chains arrive: the next round must pop them (a chain can be
        // published between a round's last pop and the re-enable, and the driver then does
        // not kick). If that round pops nothing, the entry is unreadable: stop, do not spin.
        let mut raced = false;
        loop {
            // A no-op with EVENT_IDX (the avail event is only moved by the re-enable);
            // VRING_USED_F_NO_NOTIFY otherwise. A polling caller disabled them already.
            if rearm {
                if let Err(e) = self.q.disable_notification(&**mem) {
                    tracing::debug!(queue = self.index, "disable_notification: {e}");
                }
            }
            // The driver cannot have more chains available than the queue has entries: such
            // an index is a broken (or hostile) driver, and popping would find nothing forever.
            match self.q.avail_idx(&**mem, Ordering::Acquire) {
                Ok(idx) if idx.0.wrapping_sub(self.q.next_avail()) > self.q.size() => {
                    let (i, size, next) = (idx.0, self.q.size(), self.q.next_avail());
                    self.mark_broken(format_args!(
                        "available index {i} is more than the queue size {size} ahead of {next}"
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
            let popped = self.pop_round(mem, sink);
            total += popped;
            if !rearm || self.broken || (raced && popped == 0) {
                break;
            }
            match self.q.enable_notification(&**mem) {
                // More arrived (while popping, or after the round): pop again.
                Ok(true) => {
                    raced = true;
                    continue;
                }
                Ok(false) => break,
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
    fn mark_broken(&mut self, why: fmt::Arguments<'_>) {
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

    /// Answers a rejected chain (IOERR/UNSUPP in its status byte), or breaks the queue when
    /// it has no usable status byte. Returns false when the queue is broken.
    fn reject<M, S>(&mut self, mem: &M, sink: &mut S, rej: &Rejected) -> bool
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
        S: Sink<M>,
    {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match (rej.error.status(), rej.status_addr) {
            (Some(status), Some(_)) => {
                tracing::debug!(
                    queue = self.index,
                    head = rej.head_index,
                    "request failed: {}",
                    rej.error
                );
                sink.answer(&mut self.q, mem, rej, status);
                true
            }
            _ => {
                // No status byte to answer: completing it with a zero length would let the
                // driver read a status it wrote itself (often 0, OK). Fail the queue instead,
                // loudly.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.mark_broken(format_args!(
                    "chain at head {} has no usable status byte: {}",
                    rej.head_index, rej.error
                ));
                false
            }
        }
    }

    /// Starts again the request at `head`, fetched by a daemon that died before completing
    /// it (see [`crate::inflight`]): parsed from the descriptor table, not the available ring,
    /// whose entry the driver may have reused since.
    pub fn resubmit<M, S>(&mut self, mem: &mut M, sink: &mut S, head: u16)
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
        S: Sink<M>,
    {
        if self.broken {
            return;
        }
        if head >= self.q.size() || sink.in_flight(head) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.mark_broken(format_args!(
                "head {head} to re-submit is already in flight or out of range"
            ));
            return;
        }
        let table = GuestAddress(self.q.desc_table());
        for attempt in 0..=MAX_FAULT_RETRIES {
            let parsed = parse_head_into(
                &**mem,
                table,
                self.q.size(),
                head,
                &self.parse,
                &mut self.descs,
                &mut self.req,
            );
            match parsed {
                Ok(()) => {
                    sink.start(&mut self.q, mem, &self.req);
                    return;
                }
                Err(rej) => {
                    if attempt < MAX_FAULT_RETRIES {
                        if let Some(m) = sink.fault_in(&self.q, mem, head) {
                            *mem = m;
                            continue;
                        }
                    }
                    self.reject(mem, sink, &rej);
                    return;
                }
            }
        }
    }

    /// One round: pops, parses and hands over at most a queue's worth of available chains.
    /// Returns the number popped.
    fn pop_round<M, S>(&mut self, mem: &mut M, sink: &mut S) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
        S: Sink<M>,
    {
        let mut popped = 0u32;
        // Times the chain at the current next-avail index was popped again after a fault-in.
        let mut retries = 0u32;
        while let Some(chain) = self.q.pop_descriptor_chain(&**mem) {
            popped += 1;
            let head = chain.head_index();
            if head >= self.q.size() || sink.in_flight(head) {
                // A head already in flight (or out of range): the driver is confused or
                // hostile. Never complete it twice, and take nothing more from it.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.mark_broken(format_args!(
                    "head {head} is already in flight or out of range"
                ));
                break;
            }
            // Into buffers reused across requests: no allocation per request.
            match parse_into(chain, &self.parse, &mut self.descs, &mut self.req) {
                Ok(()) => {
                    retries = 0;
                    sink.start(&mut self.q, mem, &self.req);
                }
                Err(rej) => {
                    // The VDUSE bounce region (virtio_vdpa) appears on the driver's first
                    // DMA mapping and is announced by no message: when a chain does not
                    // parse, the sink maps on demand whatever it points to that is not mapped
                    // yet, and the same chain is popped again with the new memory. Only
                    // rejected chains pay for this.
                    if retries < MAX_FAULT_RETRIES {
                        if let Some(m) = sink.fault_in(&self.q, mem, head) {
                            // Un-pop: the chain is read again with the new snapshot.
                            self.q.set_next_avail(self.q.next_avail().wrapping_sub(1));
                            popped -= 1;
                            retries += 1;
                            *mem = m;
                            continue;
                        }
                    }
                    retries = 0;
                    if !self.reject(mem, sink, &rej) {
                        break;
                    }
                }
            }
            if popped >= u32::from(self.q.size()) {
                break;
            }
        }
        popped
    }
}
