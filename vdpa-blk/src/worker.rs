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

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::blk::exec::{answer_rejected, write_id, write_status};
use crate::blk::request::{
    parse_into, ParseContext, Request, RequestType, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use crate::iotlb::{IotlbMemory, IotlbSource, IotlbTable, SnapshotCache};

const KICK_TOKEN: u64 = u64::MAX;
const STOP_TOKEN: u64 = u64::MAX - 1;
/// Most iovecs per readv/writev SQE (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// `BLOCK_URING_CMD_DISCARD` (`linux/blkdev.h`, 6.12+): `_IO(0x12, 0)`, an asynchronous
/// BLKDISCARD through `IORING_OP_URING_CMD`; the range is `sqe->addr` (start) and
/// `sqe->addr3` (length), in bytes.
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

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

/// The backing device or file.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    is_block: bool,
    direct: bool,
}

/// Errors opening the backing device.
#[derive(Debug, thiserror::Error)]
#[error("open backing {path} ({mode}): {source}")]
pub struct BackingError {
    path: PathBuf,
    mode: &'static str,
    #[source]
    source: io::Error,
}

impl Backing {
    /// Opens `path` read-write (or read-only) and, if `direct`, with `O_DIRECT`.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, BackingError> {
        let mode = match (read_only, direct) {
            (true, true) => "read-only, O_DIRECT",
            (true, false) => "read-only",
            (false, true) => "read-write, O_DIRECT",
            (false, false) => "read-write",
        };
        let err = |source| BackingError {
            path: path.to_path_buf(),
            mode,
            source,
        };
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(!read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path).map_err(err)?;
        let is_block = file.metadata().map_err(err)?.file_type().is_block_device();
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            is_block,
            direct,
        })
    }

    /// The path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether O_DIRECT is on.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Current size in bytes (for resize detection).
    pub fn size_bytes(&self) -> io::Result<u64> {
        if self.is_block {
            let mut size: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
            // SAFETY: the kernel writes one u64 into `size`.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(size)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// An eventfd.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-semaphore eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2); result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1.
    pub fn signal(&self) -> io::Result<()> {
        let v: u64 = 1;
        // SAFETY: writes 8 bytes from `v`.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&v as *const u64).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The raw fd.
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A second handle on the same eventfd.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFd(self.0.try_clone()?))
    }
}

/// How the worker signals the driver (VDUSE_VQ_INJECT_IRQ in production).
pub trait Interrupt: Send + Sync {
    /// Injects the used-buffer interrupt of `queue`.
    fn notify(&self, queue: u16) -> io::Result<()>;
}

impl Interrupt for crate::uapi::vduse::VduseDevFd {
    fn notify(&self, queue: u16) -> io::Result<()> {
        self.vq_inject_irq(u32::from(queue)).map_err(|e| e.source)
    }
}

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
    /// 1 once the driver broke the queue (an impossible available index, a head already in
    /// flight, a chain with no status byte): the worker stops taking requests until a reset.
    pub broken: AtomicU64,
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
    /// See [`QueueStats::broken`].
    pub broken: bool,
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
            broken: l(&self.broken) != 0,
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

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Read {
        expected: u64,
    },
    Write {
        expected: u64,
    },
    Flush,
    /// Discard as a hole punched with fallocate (regular files; block devices whose kernel
    /// has no discard command).
    Discard,
    /// Discard as the block layer's discard command; on EOPNOTSUPP retried as [`Discard`].
    DiscardCmd {
        offset: u64,
        len: u64,
    },
    /// Write zeroes by punching a hole; on EOPNOTSUPP retried as ZERO_RANGE.
    ZeroPunch {
        offset: u64,
        len: u64,
    },
    Zero,
}

/// The iovecs of one request's readv/writev SQEs. They point into IOTLB mappings.
struct Iovecs(Vec<libc::iovec>);

// SAFETY: the raw pointers refer to MAP_SHARED guest mappings owned by the `Arc<IotlbMemory>`
// stored next to them in the same `Slot`; they are only handed to the kernel, never
// dereferenced by Rust code, so moving them to the worker thread is sound.
unsafe impl Send for Iovecs {}

/// The state of one request in flight, indexed by its head index (a head is in flight at most
/// once, so a queue of size N never has more than N requests in flight). Slots are allocated
/// once when the worker starts and reused: their buffers keep their capacity, so a steady
/// state does not allocate.
struct Slot {
    /// A request with this head is in flight.
    busy: bool,
    status_addr: GuestAddress,
    used_len_ok: u32,
    /// One entry per SQE (the sub index of the token).
    ops: Vec<OpKind>,
    pending: u32,
    failed: bool,
    /// The iovec array the readv/writev SQEs point into. Not touched while `busy`, so its heap
    /// buffer stays at the address the SQEs hold until the last completion.
    iovecs: Iovecs,
    /// The snapshot the iovecs point into; keeps the mappings mapped while `busy`.
    mem: Option<Arc<IotlbMemory>>,
}

impl Slot {
    fn new(iovecs: usize) -> Self {
        Slot {
            busy: false,
            status_addr: GuestAddress(0),
            used_len_ok: 0,
            ops: Vec::with_capacity(4),
            pending: 0,
            failed: false,
            iovecs: Iovecs(Vec::with_capacity(iovecs)),
            mem: None,
        }
    }
}

/// How often one chain is popped again after mapping what it points to (an indirect table
/// first, then the buffers it lists).
const MAX_FAULT_RETRIES: u32 = 4;

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
    irq: Arc<dyn Interrupt>,
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
    fault: Option<Arc<dyn IotlbSource + Send + Sync>>,
    poll: Duration,
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

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// An fallocate SQE with `mode` over `[offset, offset + len)`.
fn fallocate(fd: types::Fd, offset: u64, len: u64, mode: i32) -> io_uring::squeue::Entry {
    opcode::Fallocate::new(fd, len)
        .offset(offset)
        .mode(mode)
        .build()
}

/// A `BLOCK_URING_CMD_DISCARD` SQE for `[offset, offset + len)` of the block device `fd`.
fn discard_cmd(fd: types::Fd, offset: u64, len: u64) -> io_uring::squeue::Entry {
    // addr3 is the first 8 bytes of the command area.
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&len.to_ne_bytes());
    opcode::UringCmd16::new(fd, BLOCK_URING_CMD_DISCARD)
        .addr(Some(offset))
        .cmd(cmd)
        .build()
}

fn token(slot: u32, sub: u32) -> u64 {
    (u64::from(sub) << 32) | u64::from(slot)
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
            discard_cmd: p.backing.is_block,
            backing: p.backing,
            mem: p.iotlb.cache(),
            iotlb: p.iotlb,
            kick: p.kick,
            stop,
            kick_buf: Box::new(0),
            stop_buf: Box::new(0),
            irq: p.irq,
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
            fault: p.fault,
            poll: p.poll,
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
        self.push(sqe)
    }

    fn arm_stop(&mut self) -> Result<(), WorkerError> {
        let sqe = opcode::Read::new(
            types::Fd(self.stop.as_raw_fd()),
            (&mut *self.stop_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(STOP_TOKEN);
        self.push(sqe)
    }

    fn in_flight(&self) -> usize {
        self.busy
    }

    /// The current IOTLB snapshot (one atomic load unless it changed).
    fn mem(&mut self) -> Arc<IotlbMemory> {
        self.mem.current(&self.iotlb).clone()
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
                STOP_TOKEN => ev.stopping = true,
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
        let mem = self.mem();
        let needed = match self.q.needs_notification(&*mem) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(queue = self.index, "needs_notification: {e}");
                true
            }
        };
        if needed {
            match self.irq.notify(self.index) {
                Ok(()) => {
                    self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(queue = self.index, "inject irq: {e}"),
            }
        }
    }

    fn add_used(&mut self, mem: &IotlbMemory, head: u16, len: u32) {
        if let Err(e) = self.q.add_used(mem, head, len) {
            tracing::debug!(queue = self.index, head, "add_used: {e}");
        }
        self.used_since_notify = true;
    }

    /// Pops, parses and starts every available chain. With `rearm`, notifications are turned
    /// back on at the end and the ring checked once more (so a request that raced with the
    /// re-enable is not left waiting for a kick); without it (polling) they stay off.
    /// Returns the number of chains popped.
    fn process_available(&mut self, rearm: bool) -> u32 {
        if self.broken {
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
                        if let Some(src) = self.fault.clone() {
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
                    let used = answer_rejected(&**mem, &rej);
                    if used > 0 {
                        tracing::debug!(
                            queue = self.index,
                            head = rej.head_index,
                            "request failed: {}",
                            rej.error
                        );
                        self.add_used(mem, rej.head_index, used);
                    } else {
                        // No status byte to answer: completing it with a zero length would
                        // let the driver read a status it wrote itself (often 0, OK). Fail
                        // the queue instead, loudly.
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
            self.req = req;
            if popped >= u32::from(self.q.size()) {
                break;
            }
        }
        popped
    }

    /// Walks the chain at `head` with raw reads and maps every range it needs that the
    /// snapshot lacks and the source knows. Returns the number of regions mapped.
    fn fault_in_chain(&self, mem: &IotlbMemory, src: &dyn IotlbSource, head: u16) -> usize {
        const F_NEXT: u16 = 1;
        const F_INDIRECT: u16 = 4;
        let mut missing: Vec<(u64, u32)> = Vec::new();
        let mut table = self.q.desc_table();
        let mut size = self.q.size();
        let mut idx = head;
        let mut indirect = false;
        let mut ttl = u32::from(size);
        while ttl > 0 && idx < size {
            ttl -= 1;
            let Some(daddr) = table.checked_add(u64::from(idx) * 16) else {
                break;
            };
            if !mem.check_range(GuestAddress(daddr), 16, Permissions::No) {
                missing.push((daddr, 16));
                break;
            }
            let Ok(raw) = mem.read_obj::<virtio_queue::desc::RawDescriptor>(GuestAddress(daddr))
            else {
                break;
            };
            let d = virtio_queue::desc::split::Descriptor::from(raw);
            let (addr, len, flags) = (d.addr().0, d.len(), d.flags());
            let mapped = len == 0 || mem.check_range(d.addr(), len as usize, Permissions::No);
            if !mapped {
                missing.push((addr, len));
            }
            if flags & F_INDIRECT != 0 && !indirect {
                if !mapped {
                    break;
                }
                table = addr;
                size = u16::try_from(len / 16).unwrap_or(u16::MAX);
                ttl = u32::from(size);
                idx = 0;
                indirect = true;
                continue;
            }
            if flags & F_NEXT == 0 {
                break;
            }
            idx = d.next();
        }
        let mut n = 0;
        for (addr, len) in missing {
            match self.iotlb.fault_in(src, addr, len) {
                Ok(m) => n += m,
                Err(e) => tracing::debug!(queue = self.index, addr, len, "IOTLB fault-in: {e}"),
            }
        }
        n
    }

    fn finish_now(&mut self, mem: &IotlbMemory, req: &Request, ok: bool) {
        let status = if ok {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let used = if write_status(mem, req.status_addr, status) {
            if ok {
                req.used_len_ok()
            } else {
                1
            }
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            0
        };
        self.add_used(mem, req.head_index, used);
    }

    /// Fills `out` with host iovecs for the request's data buffers. False when a buffer is not
    /// (or no longer) mapped with `access`.
    fn fill_iovecs(
        mem: &IotlbMemory,
        req: &Request,
        access: Permissions,
        out: &mut Vec<libc::iovec>,
    ) -> bool {
        out.clear();
        for &(addr, len) in &req.data {
            let Ok(slices) = mem.get_slices(addr, len as usize, access) else {
                return false;
            };
            for s in slices {
                let Ok(s) = s else {
                    return false;
                };
                out.push(libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: s.len(),
                });
            }
        }
        true
    }

    fn start_request(&mut self, mem: &Arc<IotlbMemory>, req: &Request) {
        let fd = types::Fd(self.backing.fd());
        let Some(slot) = self.slots.get_mut(usize::from(req.head_index)) else {
            // Unreachable: the caller checked the head against the slots.
            self.finish_now(mem, req, false);
            return;
        };
        debug_assert!(!slot.busy);
        let mut sqes = std::mem::take(&mut self.sqes);
        sqes.clear();
        slot.ops.clear();
        match req.request_type {
            RequestType::GetId => {
                let ok = write_id(&**mem, req, &self.id);
                self.sqes = sqes;
                self.finish_now(mem, req, ok);
                return;
            }
            RequestType::In | RequestType::Out => {
                if req.data_len == 0 {
                    self.sqes = sqes;
                    self.finish_now(mem, req, true);
                    return;
                }
                let read = req.request_type == RequestType::In;
                let access = if read {
                    Permissions::Write
                } else {
                    Permissions::Read
                };
                if !Self::fill_iovecs(mem, req, access, &mut slot.iovecs.0) {
                    // Parsing checked the ranges in this snapshot; unreachable in practice.
                    self.sqes = sqes;
                    self.finish_now(mem, req, false);
                    return;
                }
                let mut offset = req.offset();
                // The SQEs point into the slot's iovec buffer, which is not touched again
                // until the slot's last completion.
                for chunk in slot.iovecs.0.chunks(MAX_IOVECS) {
                    let bytes: u64 = chunk.iter().map(|i| i.iov_len as u64).sum();
                    let (kind, sqe) = if read {
                        (
                            OpKind::Read { expected: bytes },
                            opcode::Readv::new(fd, chunk.as_ptr(), chunk.len() as u32)
                                .offset(offset)
                                .build(),
                        )
                    } else {
                        (
                            OpKind::Write { expected: bytes },
                            opcode::Writev::new(fd, chunk.as_ptr(), chunk.len() as u32)
                                .offset(offset)
                                .build(),
                        )
                    };
                    slot.ops.push(kind);
                    sqes.push(sqe);
                    offset += bytes;
                }
            }
            RequestType::Flush => {
                slot.ops.push(OpKind::Flush);
                sqes.push(
                    opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                );
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                for s in &req.segments {
                    let offset = s.sector * SECTOR_SIZE;
                    let len = u64::from(s.num_sectors) * SECTOR_SIZE;
                    if len == 0 {
                        continue;
                    }
                    if req.request_type == RequestType::Discard && self.discard_cmd {
                        slot.ops.push(OpKind::DiscardCmd { offset, len });
                        sqes.push(discard_cmd(fd, offset, len));
                        continue;
                    }
                    let (kind, mode) = match req.request_type {
                        RequestType::Discard => (OpKind::Discard, PUNCH),
                        // Regular files: a punched hole reads back as zeroes.
                        _ if !self.backing.is_block => (OpKind::Zero, PUNCH),
                        _ if s.unmap => (OpKind::ZeroPunch { offset, len }, PUNCH),
                        _ => (OpKind::Zero, ZERO),
                    };
                    slot.ops.push(kind);
                    sqes.push(fallocate(fd, offset, len, mode));
                }
                if sqes.is_empty() {
                    self.sqes = sqes;
                    self.finish_now(mem, req, true);
                    return;
                }
            }
        }
        slot.busy = true;
        slot.status_addr = req.status_addr;
        slot.used_len_ok = req.used_len_ok();
        slot.pending = sqes.len() as u32;
        slot.failed = false;
        slot.mem = Some(mem.clone());
        self.busy += 1;
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let head = u32::from(req.head_index);
        for (sub, sqe) in sqes.drain(..).enumerate() {
            let ud = token(head, sub as u32);
            if let Err(e) = self.push(sqe.user_data(ud)) {
                tracing::warn!(queue = self.index, "cannot queue I/O: {e}");
                // The SQE never reached the kernel: account it as a failed completion.
                self.complete_op(mem, ud, -libc::EIO);
            }
        }
        self.sqes = sqes;
    }

    fn complete_op(&mut self, mem: &IotlbMemory, ud: u64, res: i32) {
        let slot = (ud & 0xffff_ffff) as usize;
        let sub = (ud >> 32) as usize;
        let fd = types::Fd(self.backing.fd());
        let Some(inf) = self.slots.get_mut(slot).filter(|s| s.busy) else {
            tracing::warn!(queue = self.index, ud, "completion for an unknown request");
            return;
        };
        let kind = inf.ops.get(sub).copied();
        let mut fallback = None;
        let ok = match kind {
            Some(OpKind::Read { expected }) => {
                let ok = res >= 0 && res as u64 == expected;
                if ok {
                    self.stats.bytes_read.fetch_add(expected, Ordering::Relaxed);
                }
                ok
            }
            Some(OpKind::Write { expected }) => {
                let ok = res >= 0 && res as u64 == expected;
                if ok {
                    self.stats
                        .bytes_written
                        .fetch_add(expected, Ordering::Relaxed);
                }
                ok
            }
            // Discard is advisory: a device that cannot do it still answers OK.
            Some(OpKind::Discard) => res >= 0 || res == -libc::EOPNOTSUPP,
            Some(OpKind::DiscardCmd { offset, len }) if res == -libc::EOPNOTSUPP => {
                // No discard command on this kernel or device: punch holes from now on.
                if self.discard_cmd {
                    tracing::debug!(queue = self.index, "no BLOCK_URING_CMD_DISCARD: fallocate");
                }
                self.discard_cmd = false;
                fallback = Some((OpKind::Discard, fallocate(fd, offset, len, PUNCH)));
                true
            }
            Some(OpKind::DiscardCmd { .. }) => res >= 0,
            Some(OpKind::ZeroPunch { offset, len }) if res == -libc::EOPNOTSUPP => {
                fallback = Some((OpKind::Zero, fallocate(fd, offset, len, ZERO)));
                true
            }
            Some(OpKind::Flush | OpKind::Zero | OpKind::ZeroPunch { .. }) => res >= 0,
            None => false,
        };
        if let Some((next, sqe)) = fallback {
            if let Some(op) = inf.ops.get_mut(sub) {
                *op = next;
            }
            if self.push(sqe.user_data(ud)).is_ok() {
                return;
            }
            if let Some(inf) = self.slots.get_mut(slot) {
                inf.failed = true;
            }
        } else if !ok {
            tracing::debug!(
                queue = self.index,
                res,
                "I/O failed: {}",
                io::Error::from_raw_os_error(-res.min(0))
            );
            inf.failed = true;
        }
        let Some(inf) = self.slots.get_mut(slot) else {
            return;
        };
        inf.pending = inf.pending.saturating_sub(1);
        if inf.pending > 0 {
            return;
        }
        // Last completion: the kernel is done with the iovecs and the mappings.
        inf.busy = false;
        inf.mem = None;
        let (failed, status_addr, used_len_ok) = (inf.failed, inf.status_addr, inf.used_len_ok);
        let head = slot as u16;
        self.busy = self.busy.saturating_sub(1);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let status = if failed {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            VIRTIO_BLK_S_IOERR
        } else {
            VIRTIO_BLK_S_OK
        };
        let used = if write_status(mem, status_addr, status) {
            if failed {
                1
            } else {
                used_len_ok
            }
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            0
        };
        self.add_used(mem, head, used);
    }
}

#[cfg(test)]
mod tests;
