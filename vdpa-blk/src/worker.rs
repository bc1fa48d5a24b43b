//! One worker thread and one io_uring per virtqueue.
//!
//! The loop: the kick eventfd and the stop eventfd are read *through the ring*
//! (`IORING_OP_READ`), so one `io_uring_enter` both submits the SQEs queued since the last
//! iteration and waits for the next event. On a kick every available chain is popped (with
//! EVENT_IDX: process, re-enable notification, repeat until nothing new), parsed, and turned
//! into SQEs whose iovecs point straight into the IOTLB mappings; the SQEs go out with the
//! next single submit. Completions of one wake-up are written to the used ring together and
//! followed by at most one `VDUSE_VQ_INJECT_IRQ` (if `needs_notification` says so).
//!
//! The daemon never copies payload: `copied_bytes` exists to prove it and stays 0. The only
//! bytes the worker writes into guest memory itself are device-generated (status byte, id
//! string). A request keeps an `Arc` of the IOTLB snapshot its iovecs point into, so an IOTLB
//! update cannot unmap memory under in-flight I/O.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, Permissions};

use crate::blk::exec::write_status;

use crate::backing::Backing;
use crate::blk::request::{ParseContext, Request, VIRTIO_BLK_ID_BYTES};
use crate::iotlb::{IotlbMemory, IotlbSource, IotlbTable, SnapshotCache};

mod drain;
mod exec;
mod fault_in;
mod instance;
mod signal;
mod stats;

use exec::Slot;
pub use instance::{DriverInstance, Instances};
pub use signal::{EventFd, Interrupt};
pub use stats::{snapshot_all, QueueStats, QueueStatsSnapshot};

const KICK_TOKEN: u64 = u64::MAX;
const STOP_TOKEN: u64 = u64::MAX - 1;
const CANCEL_TOKEN: u64 = u64::MAX - 2;

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Setting up or driving the ring failed.
    #[error("queue {queue}: {op}: {source}")]
    Io {
        /// Queue index.
        queue: u16,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The ring addresses do not lie in the mapped memory.
    #[error("queue {queue}: ring addresses are not valid in the mapped memory")]
    InvalidRing {
        /// Queue index.
        queue: u16,
    },
    /// virtio-queue refused the configuration.
    #[error("queue {queue}: {source}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// The worker thread panicked.
    #[error("queue {0}: worker thread panicked")]
    Panicked(u16),
}

/// Where the driver put the rings and where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue index.
    pub index: u16,
    /// Queue size the driver chose.
    pub size: u16,
    /// IOVA of the descriptor table.
    pub desc: u64,
    /// IOVA of the available ring.
    pub driver: u64,
    /// IOVA of the used ring.
    pub device: u64,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Next available index to read.
    pub next_avail: u16,
    /// Next used index to write.
    pub next_used: u16,
}

/// Everything a worker needs.
pub struct WorkerParams {
    /// Ring location.
    pub queue: QueueConfig,
    /// Request validation parameters.
    pub parse: ParseContext,
    /// Backing device.
    pub backing: Arc<Backing>,
    /// Guest memory.
    pub iotlb: Arc<IotlbTable>,
    /// The kick eventfd (registered with VDUSE_VQ_SETUP_KICKFD).
    pub kick: EventFd,
    /// Interrupt injection.
    pub irq: Arc<dyn Interrupt>,
    /// Counters.
    pub stats: Arc<QueueStats>,
    /// GET_ID answer.
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
    /// Current capacity in sectors, updated by the control loop on resize (None: fixed).
    pub capacity: Option<Arc<AtomicU64>>,
    /// Where to map IOVA ranges the snapshot lacks (VDUSE_IOTLB_GET_FD); None: never fault in.
    pub fault: Option<Arc<dyn IotlbSource + Send + Sync>>,
    /// Busy-poll window: after activity, keep checking the available ring and the completion
    /// queue for this long, with driver notifications off, before sleeping again. Zero: never
    /// poll (sleep in `io_uring_enter` as soon as there is nothing to do).
    pub poll: Duration,
    /// The driver instance the worker serves: once it ends (reset), the worker writes nothing
    /// into guest memory and injects no interrupt.
    pub instance: DriverInstance,
}

/// A completion whose status byte or used entry could not be written (the ring or the status
/// byte was not mapped in the snapshot of that moment): kept and written once the mapping is
/// back, never dropped.
#[derive(Debug, Clone, Copy)]
struct Parked {
    head: u16,
    /// Status byte still to write, and where.
    status: Option<(GuestAddress, u8)>,
    used_len: u32,
}

/// A running worker.
pub struct WorkerHandle {
    index: u16,
    stop: EventFd,
    next_avail: Arc<AtomicU16>,
    join: JoinHandle<Result<u16, WorkerError>>,
}

impl WorkerHandle {
    /// The available index the worker will read next (for VDUSE_GET_VQ_STATE).
    pub fn next_avail(&self) -> u16 {
        self.next_avail.load(Ordering::Acquire)
    }

    /// Whether the thread has exited (after a stop, or on a fatal ring error).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Asks the worker to stop taking new requests and exit once in-flight I/O completed.
    pub fn signal_stop(&self) -> Result<(), WorkerError> {
        self.stop.signal().map_err(|source| WorkerError::Io {
            queue: self.index,
            op: "signal stop eventfd",
            source,
        })
    }

    /// Waits for the thread and returns the final next-avail index.
    pub fn join(self) -> Result<u16, WorkerError> {
        self.join
            .join()
            .map_err(|_| WorkerError::Panicked(self.index))?
    }

    /// Queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Stops taking new requests, waits for in-flight I/O, and returns the final next-avail
    /// index.
    pub fn stop(self) -> Result<u16, WorkerError> {
        self.signal_stop()?;
        self.join()
    }
}

/// Starts the worker thread for one queue.
pub fn spawn(p: WorkerParams) -> Result<WorkerHandle, WorkerError> {
    let index = p.queue.index;
    let io = |op, source| WorkerError::Io {
        queue: index,
        op,
        source,
    };
    let stop = EventFd::new().map_err(|e| io("create stop eventfd", e))?;
    let stop2 = stop.try_clone().map_err(|e| io("dup stop eventfd", e))?;
    let next_avail = Arc::new(AtomicU16::new(p.queue.next_avail));
    let na = next_avail.clone();
    // Build the ring and queue on this thread so setup errors are reported synchronously.
    let mut w = Worker::new(p, stop2, na)?;
    let join = std::thread::Builder::new()
        .name(format!("vdpa-blk-q{index}"))
        .spawn(move || w.run())
        .map_err(|e| io("spawn thread", e))?;
    Ok(WorkerHandle {
        index,
        stop,
        next_avail,
        join,
    })
}

struct Worker {
    q: Queue,
    index: u16,
    ring: IoUring,
    parse: ParseContext,
    backing: Arc<Backing>,
    iotlb: Arc<IotlbTable>,
    /// This thread's copy of the current IOTLB snapshot.
    mem: SnapshotCache,
    kick: EventFd,
    stop: EventFd,
    kick_buf: Box<u64>,
    stop_buf: Box<u64>,
    /// Weak: a worker left running past a reset must not keep the device fd open (VDUSE
    /// refuses to destroy a device whose fd is open).
    irq: Weak<dyn Interrupt>,
    stats: Arc<QueueStats>,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    /// One per head index.
    slots: Vec<Slot>,
    /// Requests in flight (busy slots).
    busy: usize,
    /// Scratch for the descriptors of the chain being parsed.
    descs: Vec<virtio_queue::desc::split::Descriptor>,
    /// The request being parsed.
    req: Request,
    /// Scratch for the SQEs of the request being started.
    sqes: Vec<io_uring::squeue::Entry>,
    next_avail: Arc<AtomicU16>,
    used_since_notify: bool,
    capacity: Option<Arc<AtomicU64>>,
    fault: Option<Weak<dyn IotlbSource + Send + Sync>>,
    poll: Duration,
    instance: DriverInstance,
    /// Once stopping (or the instance ended), the worker keeps the snapshot it has: the table
    /// may already describe the next driver's memory.
    pinned: bool,
    /// Completions waiting for their ring or status byte to be mapped again.
    parked: Vec<Parked>,
    /// The kick / stop eventfd reads are in the ring (their buffers must outlive them).
    kick_armed: bool,
    stop_armed: bool,
    /// Discards go to a block device as `BLOCK_URING_CMD_DISCARD` until the kernel answers
    /// EOPNOTSUPP (before 6.12, or a device without discard).
    discard_cmd: bool,
    /// The driver broke the queue: no request is taken until the reset (in-flight I/O still
    /// completes).
    broken: bool,
}

/// What the completions of one reap said besides finished I/O.
#[derive(Debug, Default, Clone, Copy)]
struct Events {
    /// The driver kicked (or requests may be waiting): pop the available ring.
    kicked: bool,
    /// Stop requested: take no new requests, exit once in-flight I/O completed.
    stopping: bool,
}

impl Worker {
    fn new(
        p: WorkerParams,
        stop: EventFd,
        next_avail: Arc<AtomicU16>,
    ) -> Result<Self, WorkerError> {
        let index = p.queue.index;
        let qerr = |source| WorkerError::Queue {
            queue: index,
            source,
        };
        let mut q = Queue::new(p.queue.size).map_err(qerr)?;
        q.try_set_size(p.queue.size).map_err(qerr)?;
        q.try_set_desc_table_address(GuestAddress(p.queue.desc))
            .map_err(qerr)?;
        q.try_set_avail_ring_address(GuestAddress(p.queue.driver))
            .map_err(qerr)?;
        q.try_set_used_ring_address(GuestAddress(p.queue.device))
            .map_err(qerr)?;
        q.set_event_idx(p.queue.event_idx);
        q.set_next_avail(p.queue.next_avail);
        q.set_next_used(p.queue.next_used);
        q.set_ready(true);
        let mem = p.iotlb.snapshot();
        if !q.is_valid(&*mem) {
            return Err(WorkerError::InvalidRing { queue: index });
        }
        let entries = (u32::from(p.queue.size) * 2 + 8)
            .next_power_of_two()
            .max(64);
        let ring = IoUring::new(entries).map_err(|source| WorkerError::Io {
            queue: index,
            op: "io_uring_setup",
            source,
        })?;
        Ok(Worker {
            q,
            index,
            ring,
            parse: p.parse,
            discard_cmd: p.backing.is_block(),
            backing: p.backing,
            mem: p.iotlb.cache(),
            iotlb: p.iotlb,
            kick: p.kick,
            stop,
            kick_buf: Box::new(0),
            stop_buf: Box::new(0),
            irq: Arc::downgrade(&p.irq),
            stats: p.stats,
            id: p.id,
            slots: (0..p.queue.size)
                .map(|_| Slot::new(usize::from(p.parse.max_chain)))
                .collect(),
            busy: 0,
            descs: Vec::with_capacity(usize::from(p.parse.max_chain)),
            req: Request::with_capacity(usize::from(p.parse.max_chain), 16),
            sqes: Vec::with_capacity(16),
            next_avail,
            used_since_notify: false,
            capacity: p.capacity,
            fault: p.fault.as_ref().map(Arc::downgrade),
            poll: p.poll,
            instance: p.instance,
            pinned: false,
            parked: Vec::with_capacity(usize::from(p.queue.size)),
            kick_armed: false,
            stop_armed: false,
            broken: false,
        })
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> WorkerError {
        WorkerError::Io {
            queue: self.index,
            op,
            source,
        }
    }

    /// Pushes one SQE, flushing the SQ with a submit if it is full.
    fn push(&mut self, sqe: io_uring::squeue::Entry) -> Result<(), WorkerError> {
        loop {
            // SAFETY: every buffer an SQE points to (kick/stop buffers, iovec arrays and the
            // guest mappings they reference) is owned by this worker and kept alive until the
            // matching completion is reaped: the boxes live as long as the worker, iovec arrays
            // and the IOTLB snapshot live in the in-flight slot until its last completion.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| self.io_err("io_uring_enter (SQ full)", e))?;
        }
    }

    fn arm_kick(&mut self) -> Result<(), WorkerError> {
        let sqe = opcode::Read::new(
            types::Fd(self.kick.as_raw_fd()),
            (&mut *self.kick_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(KICK_TOKEN);
        self.push(sqe)?;
        self.kick_armed = true;
        Ok(())
    }

    fn arm_stop(&mut self) -> Result<(), WorkerError> {
        let sqe = opcode::Read::new(
            types::Fd(self.stop.as_raw_fd()),
            (&mut *self.stop_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(STOP_TOKEN);
        self.push(sqe)?;
        self.stop_armed = true;
        Ok(())
    }

    /// Cancels the kick and stop reads still in the ring and reaps everything outstanding, so
    /// that no SQE points into this worker's buffers (or guest mappings) once it is gone.
    fn quiesce(&mut self) {
        for (armed, token) in [(self.kick_armed, KICK_TOKEN), (self.stop_armed, STOP_TOKEN)] {
            if armed {
                let sqe = opcode::AsyncCancel::new(token)
                    .build()
                    .user_data(CANCEL_TOKEN);
                if let Err(e) = self.push(sqe) {
                    tracing::warn!(queue = self.index, "cancel eventfd read: {e}");
                }
            }
        }
        while self.kick_armed || self.stop_armed || self.busy > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    // The ring is unusable; closing it makes the kernel cancel what is left.
                    tracing::error!(queue = self.index, "io_uring_enter while quiescing: {e}");
                    return;
                }
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            let mem = self.mem();
            for (ud, res) in done {
                match ud {
                    KICK_TOKEN => self.kick_armed = false,
                    STOP_TOKEN => self.stop_armed = false,
                    CANCEL_TOKEN => {}
                    _ => self.complete_op(&mem, ud, res),
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.busy
    }

    /// The current IOTLB snapshot (one atomic load unless it changed); once pinned, the one
    /// the worker has.
    fn mem(&mut self) -> Arc<IotlbMemory> {
        if self.pinned {
            return self.mem.cached().clone();
        }
        self.mem.current(&self.iotlb).clone()
    }

    /// Whether guest memory and interrupts may still be touched: false once the driver
    /// instance this worker serves has ended (a reset was acknowledged without it).
    fn instance_live(&mut self) -> bool {
        if self.instance.is_current() {
            return true;
        }
        if !self.pinned {
            self.pinned = true;
            tracing::warn!(
                queue = self.index,
                "the driver reset the device while this queue still had I/O in flight: its \
                 completions are not written to the next driver's rings"
            );
        }
        false
    }

    fn run(&mut self) -> Result<u16, WorkerError> {
        self.arm_kick()?;
        self.arm_stop()?;
        // Requests may already be waiting (resume after a reset or a VM start).
        let mut ev = Events {
            kicked: true,
            stopping: false,
        };
        // Whether the last wake-up found work: only then is polling worth its CPU time.
        let mut busy = false;
        // Room for a full completion queue: reaping never grows it.
        let cq_entries = self.ring.params().cq_entries() as usize;
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(cq_entries);
        loop {
            if !self.parked.is_empty() {
                self.retry_parked();
            }
            if ev.kicked && !ev.stopping {
                busy |= self.process_available(true) > 0;
                ev.kicked = false;
            }
            self.notify_if_needed();
            if ev.stopping && self.in_flight() == 0 {
                break;
            }
            if busy && !self.poll.is_zero() && !ev.stopping {
                busy = false;
                self.poll_for_work(&mut cqes, &mut ev)?;
                // Idle for a whole window (or stopping): notifications back on, and what
                // arrived meanwhile is popped before sleeping.
                ev.kicked = true;
                continue;
            }
            // One system call: submit everything queued, wait for at least one completion.
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(self.io_err("io_uring_enter", e)),
            }
            busy = self.reap(&mut cqes, &mut ev)? > 0;
        }
        let na = self.q.next_avail();
        self.next_avail.store(na, Ordering::Release);
        Ok(na)
    }

    /// Handles every completion in the CQ (no system call). Returns how many there were.
    fn reap(&mut self, cqes: &mut Vec<(u64, i32)>, ev: &mut Events) -> Result<usize, WorkerError> {
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        if cqes.is_empty() {
            return Ok(0);
        }
        // One snapshot for every status byte and used entry of this reap.
        let mem = self.mem();
        for &(ud, res) in cqes.iter() {
            match ud {
                KICK_TOKEN => {
                    self.kick_armed = false;
                    ev.kicked = true;
                    self.stats.kicks.fetch_add(1, Ordering::Relaxed);
                    if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
                        return Err(
                            self.io_err("read kick eventfd", io::Error::from_raw_os_error(-res))
                        );
                    }
                    if !ev.stopping {
                        self.arm_kick()?;
                    }
                }
                STOP_TOKEN => {
                    self.stop_armed = false;
                    ev.stopping = true;
                    // The table may describe the next driver's memory soon: keep this one.
                    self.pinned = true;
                }
                CANCEL_TOKEN => {}
                _ => self.complete_op(&mem, ud, res),
            }
        }
        Ok(cqes.len())
    }

    /// Busy-polls the available ring and the completion queue with driver notifications off
    /// (a stale EVENT_IDX avail event, or `VRING_USED_F_NO_NOTIFY`), so neither a kick nor a
    /// completion costs a sleep and a wake-up. Returns once nothing happened for a whole
    /// window, or on stop; the caller then turns notifications back on.
    fn poll_for_work(
        &mut self,
        cqes: &mut Vec<(u64, i32)>,
        ev: &mut Events,
    ) -> Result<(), WorkerError> {
        let mem = self.mem();
        if let Err(e) = self.q.disable_notification(&*mem) {
            tracing::debug!(queue = self.index, "disable_notification: {e}");
        }
        drop(mem);
        let mut deadline = Instant::now() + self.poll;
        loop {
            if !self.ring.submission().is_empty() {
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {
                    }
                    Err(e) => return Err(self.io_err("io_uring_enter (submit)", e)),
                }
            }
            let mut active = self.reap(cqes, ev)? > 0;
            if ev.stopping {
                return Ok(());
            }
            ev.kicked = false;
            // The common spin: nothing new. Checked without cloning the snapshot's Arc, whose
            // count every polling worker shares.
            let popped = if self.has_available() {
                self.process_available(false)
            } else {
                0
            };
            if popped > 0 {
                self.stats
                    .polled
                    .fetch_add(u64::from(popped), Ordering::Relaxed);
                active = true;
            }
            self.notify_if_needed();
            let now = Instant::now();
            if active {
                deadline = now + self.poll;
            } else if now >= deadline {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    /// Whether the driver made chains available that were not popped yet.
    fn has_available(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let mem = self.mem.current(&self.iotlb);
        self.q
            .avail_idx(&**mem, Ordering::Acquire)
            .is_ok_and(|i| i.0 != self.q.next_avail())
    }

    fn notify_if_needed(&mut self) {
        if !self.used_since_notify {
            return;
        }
        self.used_since_notify = false;
        if !self.instance_live() {
            return;
        }
        let mem = self.mem();
        let needed = match self.q.needs_notification(&*mem) {
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
    fn complete_chain(
        &mut self,
        mem: &IotlbMemory,
        head: u16,
        status: Option<(GuestAddress, u8)>,
        used_len: u32,
    ) {
        let p = Parked {
            head,
            status,
            used_len,
        };
        if let Some(p) = self.try_complete(mem, p) {
            if !self.parked.iter().any(|q| q.head == p.head) {
                tracing::debug!(queue = self.index, head, "completion parked until remapped");
                self.parked.push(p);
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what `p` still needs; returns what is left to write (None: done, or dropped
    /// because the driver instance ended).
    fn try_complete(&mut self, mem: &IotlbMemory, mut p: Parked) -> Option<Parked> {
        if !self.instance_live() {
            return None;
        }
        if let Some((addr, status)) = p.status {
            if !write_status(mem, addr, status) {
                return Some(p);
            }
            p.status = None;
        }
        // Checked first, so that add_used never fails half-way (entry written, index not).
        let size = u64::from(self.q.size());
        let used = GuestAddress(self.q.used_ring());
        let slot = 4 + 8 * (u64::from(self.q.next_used()) % size);
        let writable = |off: u64, len: usize| {
            used.checked_add(off)
                .is_some_and(|a| mem.check_range(a, len, Permissions::Write))
        };
        if !(writable(2, 2) && writable(slot, 8)) {
            return Some(p);
        }
        if let Err(e) = self.q.add_used(mem, p.head, p.used_len) {
            tracing::debug!(queue = self.index, head = p.head, "add_used: {e}");
            return Some(p);
        }
        self.used_since_notify = true;
        None
    }

    /// Writes the parked completions whose memory is mapped again.
    fn retry_parked(&mut self) {
        let mem = self.mem();
        let mut i = 0;
        while i < self.parked.len() {
            let p = self.parked[i];
            match self.try_complete(&mem, p) {
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

impl Drop for Worker {
    fn drop(&mut self) {
        self.quiesce();
    }
}

#[cfg(test)]
mod tests;
