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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::backing::Backing;
use crate::blk::request::{ParseContext, VIRTIO_BLK_ID_BYTES};
use crate::inflight::{InflightError, QueueLog, Recovered};
use crate::iotlb::{IotlbMemory, IotlbSource, IotlbTable};

mod complete;
pub mod drain;
mod exec;
mod fault_in;
mod instance;
mod signal;
mod stats;

use drain::Drain;
use exec::{Exec, Slot};
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
    /// The in-flight log cannot be resumed from.
    #[error("queue {queue}: resuming: {source}")]
    Resume {
        /// Queue index.
        queue: u16,
        /// Cause.
        #[source]
        source: InflightError,
    },
}

/// Sets `q` where the dead daemon's log and the used ring say (see [`crate::inflight`]).
fn resume<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    log: &QueueLog,
    used_ring: u64,
) -> Result<Recovered, InflightError> {
    let size = q.size();
    let read_u16 = |addr: u64| {
        mem.read_obj::<u16>(GuestAddress(addr))
            .ok()
            .map(u16::from_le)
    };
    let ring_used =
        read_u16(used_ring.wrapping_add(2)).ok_or_else(|| InflightError::Inconsistent {
            path: log.path().to_path_buf(),
            queue: log.index(),
            reason: format!("the used ring at {used_ring:#x} is not mapped"),
        })?;
    let r = log.recover(size, ring_used, |k| {
        let at = used_ring
            .wrapping_add(4)
            .wrapping_add(8 * u64::from(k % size));
        mem.read_obj::<u32>(GuestAddress(at))
            .ok()
            .and_then(|id| u16::try_from(u32::from_le(id)).ok())
    })?;
    q.set_next_used(ring_used);
    q.set_next_avail(r.next_avail);
    Ok(r)
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
    /// This queue's region of the in-flight log (None: not logged, nothing survives a crash).
    pub log: Option<QueueLog>,
    /// Resume from the log (a reconnect): the position and the requests to submit again come
    /// from it and the used ring, not from `queue.next_avail`.
    pub resume: bool,
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
    resubmitted: usize,
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

    /// Requests of a dead daemon this worker submitted again when it resumed.
    pub fn resubmitted(&self) -> usize {
        self.resubmitted
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
    let resubmitted = w.resubmit.len();
    let join = std::thread::Builder::new()
        .name(format!("vdpa-blk-q{index}"))
        .spawn(move || w.run())
        .map_err(|e| io("spawn thread", e))?;
    Ok(WorkerHandle {
        index,
        resubmitted,
        stop,
        next_avail,
        join,
    })
}

/// One queue's worker: the loop (this file) around the drain of the available ring
/// ([`drain::Drain`]) and the io_uring executor ([`exec::Exec`]).
struct Worker {
    drain: Drain,
    exec: Exec,
    kick: EventFd,
    stop: EventFd,
    kick_buf: Box<u64>,
    stop_buf: Box<u64>,
    next_avail: Arc<AtomicU16>,
    capacity: Option<Arc<AtomicU64>>,
    poll: Duration,
    /// Heads a dead daemon fetched and did not complete, submitted again before anything else.
    resubmit: Vec<u16>,
    /// The kick / stop eventfd reads are in the ring (their buffers must outlive them).
    kick_armed: bool,
    stop_armed: bool,
    /// The ring was made disabled, single-issuer and with deferred task work (see
    /// [`new_ring`]): the worker thread enables it before its first submit.
    single_issuer: bool,
}

/// The queue's io_uring. Single issuer with deferred task work where the kernel has them
/// (6.1+): completions (the io-wq workers' included) are run as task work only when this
/// thread enters the kernel to wait for them, in a batch, instead of interrupting it one at a
/// time; `TASKRUN_FLAG` tells the polling loop when such work is pending. The ring is made
/// disabled because it is made on the spawning thread and the kernel binds a single-issuer
/// ring to the thread that enables it. Older kernels (EINVAL) get a plain ring.
fn new_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .build(entries)
    {
        Ok(ring) => Ok((ring, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((IoUring::new(entries)?, false)),
        Err(e) => Err(e),
    }
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
        let (resubmit, seq) = match &p.log {
            Some(log) if p.resume && log.is_active() => {
                let r = resume(&mut q, &*mem, log, p.queue.device).map_err(|source| {
                    WorkerError::Resume {
                        queue: index,
                        source,
                    }
                })?;
                tracing::info!(
                    queue = index,
                    in_flight = r.heads.len(),
                    next_avail = r.next_avail,
                    completed_unlogged = r.completed_unlogged,
                    "queue resumed from the in-flight log"
                );
                next_avail.store(r.next_avail, Ordering::Release);
                (r.heads, r.next_seq)
            }
            Some(log) => {
                log.start(q.next_used());
                (Vec::new(), 1)
            }
            None => (Vec::new(), 1),
        };
        let entries = (u32::from(p.queue.size) * 2 + 8)
            .next_power_of_two()
            .max(64);
        let (ring, single_issuer) = new_ring(entries).map_err(|source| WorkerError::Io {
            queue: index,
            op: "io_uring_setup",
            source,
        })?;
        Ok(Worker {
            drain: Drain::new(q, index, p.parse, p.stats.clone()),
            exec: Exec {
                index,
                ring,
                discard_cmd: p.backing.is_block(),
                backing: p.backing,
                mem: p.iotlb.cache(),
                iotlb: p.iotlb,
                irq: Arc::downgrade(&p.irq),
                stats: p.stats,
                id: p.id,
                fixed_backing: false,
                slots: (0..p.queue.size)
                    .map(|_| Slot::new(usize::from(p.parse.max_chain)))
                    .collect(),
                busy: 0,
                sqes: Vec::with_capacity(16),
                used_since_notify: false,
                fault: p.fault.as_ref().map(Arc::downgrade),
                instance: p.instance,
                pinned: false,
                parked: Vec::with_capacity(usize::from(p.queue.size)),
                used_ring: None,
                // A resumed queue tells the driver once: the dead daemon may have written used
                // entries without the interrupt.
                force_notify: p.resume,
                log: p.log,
                seq,
            },
            kick: p.kick,
            stop,
            kick_buf: Box::new(0),
            stop_buf: Box::new(0),
            next_avail,
            capacity: p.capacity,
            poll: p.poll,
            resubmit,
            kick_armed: false,
            stop_armed: false,
            single_issuer,
        })
    }

    /// On the worker thread, before anything is submitted: a single-issuer ring is enabled
    /// (which makes this thread its only submitter) and the backing is registered as fixed
    /// file 0, so no SQE takes and drops a reference on it. Enabling a disabled ring must
    /// work (nothing can be submitted otherwise); a registration that fails only leaves
    /// readv/writev naming the backing by its descriptor.
    fn prepare_ring(&mut self) -> Result<(), WorkerError> {
        let index = self.exec.index;
        if self.single_issuer {
            self.exec
                .ring
                .submitter()
                .register_enable_rings()
                .map_err(|source| WorkerError::Io {
                    queue: index,
                    op: "io_uring_register(ENABLE_RINGS)",
                    source,
                })?;
        }
        match self
            .exec
            .ring
            .submitter()
            .register_files(&[self.exec.backing.fd()])
        {
            Ok(()) => self.exec.fixed_backing = true,
            Err(e) => tracing::debug!(queue = index, "backing not registered with the ring: {e}"),
        }
        Ok(())
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> WorkerError {
        WorkerError::Io {
            queue: self.exec.index,
            op,
            source,
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
        self.exec.push(sqe)?;
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
        self.exec.push(sqe)?;
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
                if let Err(e) = self.exec.push(sqe) {
                    tracing::warn!(queue = self.exec.index, "cancel eventfd read: {e}");
                }
            }
        }
        while self.kick_armed || self.stop_armed || self.exec.busy > 0 {
            match self.exec.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    // The ring is unusable; closing it makes the kernel cancel what is left.
                    tracing::error!(
                        queue = self.exec.index,
                        "io_uring_enter while quiescing: {e}"
                    );
                    return;
                }
            }
            let done: Vec<(u64, i32)> = self
                .exec
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
                    _ => self.exec.complete_op(&mut self.drain.q, &mem, ud, res),
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.exec.busy
    }

    fn mem(&mut self) -> Arc<IotlbMemory> {
        self.exec.mem()
    }

    /// Pops, parses and starts every available chain (see [`Drain::drain`]).
    fn process_available(&mut self, rearm: bool) -> u32 {
        if !self.exec.instance_live() {
            return 0;
        }
        if let Some(c) = &self.capacity {
            self.drain.set_capacity(c.load(Ordering::Acquire));
        }
        let mut mem = self.exec.mem();
        let n = self.drain.drain(&mut mem, &mut self.exec, rearm);
        self.next_avail
            .store(self.drain.q.next_avail(), Ordering::Release);
        n
    }

    fn notify_if_needed(&mut self) {
        self.exec.notify_if_needed(&mut self.drain.q);
    }

    /// Submits again what the dead daemon had in flight, in fetch order.
    fn resubmit_in_flight(&mut self) {
        if self.resubmit.is_empty() || !self.exec.instance_live() {
            return;
        }
        if let Some(c) = &self.capacity {
            self.drain.set_capacity(c.load(Ordering::Acquire));
        }
        let mut mem = self.exec.mem();
        let heads = std::mem::take(&mut self.resubmit);
        for &head in &heads {
            self.drain.resubmit(&mut mem, &mut self.exec, head);
        }
        self.exec
            .stats
            .resubmitted
            .fetch_add(heads.len() as u64, Ordering::Relaxed);
    }

    fn run(&mut self) -> Result<u16, WorkerError> {
        self.prepare_ring()?;
        self.arm_kick()?;
        self.arm_stop()?;
        self.resubmit_in_flight();
        // Requests may already be waiting (resume after a reset or a VM start).
        let mut ev = Events {
            kicked: true,
            stopping: false,
        };
        // Whether the last wake-up found work: only then is polling worth its CPU time.
        let mut busy = false;
        // Room for a full completion queue: reaping never grows it.
        let cq_entries = self.exec.ring.params().cq_entries() as usize;
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(cq_entries);
        loop {
            if !self.exec.parked.is_empty() {
                self.exec.retry_parked(&mut self.drain.q);
            }
            // The completions just reaped are told before new chains are parsed: the driver
            // handles them while this thread works on the next batch.
            self.notify_if_needed();
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
            match self.exec.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(self.io_err("io_uring_enter", e)),
            }
            busy = self.reap(&mut cqes, &mut ev)? > 0;
        }
        let na = self.drain.q.next_avail();
        self.next_avail.store(na, Ordering::Release);
        Ok(na)
    }

    /// Handles every completion in the CQ (no system call). Returns how many there were.
    fn reap(&mut self, cqes: &mut Vec<(u64, i32)>, ev: &mut Events) -> Result<usize, WorkerError> {
        cqes.clear();
        cqes.extend(
            self.exec
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result())),
        );
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
                    self.exec.stats.kicks.fetch_add(1, Ordering::Relaxed);
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
                    self.exec.pinned = true;
                }
                CANCEL_TOKEN => {}
                _ => self.exec.complete_op(&mut self.drain.q, &mem, ud, res),
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
        if let Err(e) = self.drain.q.disable_notification(&*mem) {
            tracing::debug!(queue = self.exec.index, "disable_notification: {e}");
        }
        drop(mem);
        let mut deadline = Instant::now() + self.poll;
        loop {
            // Deferred task work (completions) runs only in an enter: one when the kernel flags
            // some pending, not one per spin.
            let pending = {
                let sq = self.exec.ring.submission();
                !sq.is_empty() || sq.taskrun()
            };
            if pending {
                match self.exec.ring.submit() {
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
                self.exec
                    .stats
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

    /// Whether the driver made chains available that were not popped yet (without cloning
    /// the snapshot's `Arc`, whose count every polling worker shares).
    fn has_available(&mut self) -> bool {
        let e = &mut self.exec;
        let mem = if e.pinned {
            e.mem.cached()
        } else {
            e.mem.current(&e.iotlb)
        };
        self.drain.has_available(&**mem)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.quiesce();
    }
}

#[cfg(test)]
mod tests;
