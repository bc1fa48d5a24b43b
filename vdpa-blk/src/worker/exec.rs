//! The io_uring executor: a parsed request becomes readv/writev/fsync/fallocate/discard SQEs
//! whose iovecs point into the guest mappings (no copy); completions are folded back per
//! request into one status byte and one used entry.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{opcode, types};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use std::sync::Weak;

use io_uring::IoUring;
use virtio_queue::Queue;

use super::drain::Sink;
use super::{DriverInstance, Interrupt, Parked, QueueStats, WorkerError};
use crate::backing::Backing;
use crate::blk::exec::write_id;
use crate::blk::request::{Rejected, VIRTIO_BLK_ID_BYTES};
use crate::blk::request::{Request, RequestType, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use crate::inflight::QueueLog;
use crate::iotlb::IotlbMemory;
use crate::iotlb::{IotlbSource, IotlbTable, SnapshotCache};

/// Most iovecs per readv/writev SQE (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// `BLOCK_URING_CMD_DISCARD` (`linux/blkdev.h`, 6.12+): `_IO(0x12, 0)`, an asynchronous
/// BLKDISCARD through `IORING_OP_URING_CMD`; the range is `sqe->addr` (start) and
/// `sqe->addr3` (length), in bytes.
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

#[derive(Debug, Clone, Copy)]
pub(super) enum OpKind {
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
pub(super) struct Slot {
    /// A request with this head is in flight.
    pub(super) busy: bool,
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
    pub(super) fn new(iovecs: usize) -> Self {
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

/// The executor's state: the ring, the in-flight slots and what completions need.
pub(crate) struct Exec {
    pub(super) index: u16,
    pub(super) ring: IoUring,
    pub(super) backing: Arc<Backing>,
    pub(super) iotlb: Arc<IotlbTable>,
    /// This thread's copy of the current IOTLB snapshot.
    pub(super) mem: SnapshotCache,
    /// Weak: a worker left running past a reset must not keep the device fd open (VDUSE
    /// refuses to destroy a device whose fd is open).
    pub(super) irq: Weak<dyn Interrupt>,
    pub(super) stats: Arc<QueueStats>,
    pub(super) id: [u8; VIRTIO_BLK_ID_BYTES],
    /// The backing is the ring's fixed file 0 (readv/writev name it by index).
    pub(super) fixed_backing: bool,
    /// One per head index.
    pub(super) slots: Vec<Slot>,
    /// Requests in flight (busy slots).
    pub(super) busy: usize,
    /// Scratch for the SQEs of the request being started.
    pub(super) sqes: Vec<io_uring::squeue::Entry>,
    pub(super) used_since_notify: bool,
    pub(super) fault: Option<Weak<dyn IotlbSource + Send + Sync>>,
    pub(super) instance: DriverInstance,
    /// Once stopping (or the instance ended), the worker keeps the snapshot it has: the table
    /// may already describe the next driver's memory.
    pub(super) pinned: bool,
    /// Completions waiting for their ring or status byte to be mapped again.
    pub(super) parked: Vec<Parked>,
    /// Discards go to a block device as `BLOCK_URING_CMD_DISCARD` until the kernel answers
    /// EOPNOTSUPP (before 6.12, or a device without discard).
    pub(super) discard_cmd: bool,
    /// Whether the used ring is writable in the snapshot named (see `used_ring_writable`).
    pub(super) used_ring: Option<(Weak<IotlbMemory>, bool)>,
    /// Inject the next interrupt whatever EVENT_IDX says (a resumed queue: the dead daemon
    /// may have written used entries and died before their interrupt).
    pub(super) force_notify: bool,
    /// This queue's in-flight log (see [`crate::inflight`]).
    pub(super) log: Option<QueueLog>,
    /// The next fetch sequence number written to the log.
    pub(super) seq: u64,
}

/// The production sink of the drain: parsed requests go to the ring, rejected ones are
/// answered through the completion path, and rejected chains may fault in memory.
impl Sink<Arc<IotlbMemory>> for Exec {
    fn in_flight(&self, head: u16) -> bool {
        self.slots.get(usize::from(head)).is_some_and(|s| s.busy)
    }

    fn start(&mut self, q: &mut Queue, mem: &Arc<IotlbMemory>, req: &Request) {
        // Write order (1) of the in-flight log: fetched, before any I/O of it starts.
        if let Some(log) = &self.log {
            log.fetched(req.head_index, self.seq);
            self.seq += 1;
        }
        self.start_request(q, mem, req);
    }

    fn answer(&mut self, q: &mut Queue, mem: &Arc<IotlbMemory>, rej: &Rejected, status: u8) {
        if let Some(addr) = rej.status_addr {
            self.complete_chain(q, mem, rej.head_index, Some((addr, status)), 1);
        }
    }

    fn fault_in(
        &mut self,
        q: &Queue,
        mem: &Arc<IotlbMemory>,
        head: u16,
    ) -> Option<Arc<IotlbMemory>> {
        let src = self.fault.as_ref()?.upgrade()?;
        (self.fault_in_chain(q, mem, &*src, head) > 0).then(|| self.mem())
    }
}

impl Exec {
    /// Pushes one SQE, flushing the SQ with a submit if it is full.
    pub(super) fn push(&mut self, sqe: io_uring::squeue::Entry) -> Result<(), WorkerError> {
        loop {
            // SAFETY: every buffer an SQE points to (kick/stop buffers, iovec arrays and the
            // guest mappings they reference) is owned by this worker and kept alive until the
            // matching completion is reaped: the boxes live as long as the worker, iovec arrays
            // and the IOTLB snapshot live in the in-flight slot until its last completion.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit().map_err(|source| WorkerError::Io {
                queue: self.index,
                op: "io_uring_enter (SQ full)",
                source,
            })?;
        }
    }

    /// The current IOTLB snapshot (one atomic load unless it changed); once pinned, the one
    /// the worker has.
    pub(super) fn mem(&mut self) -> Arc<IotlbMemory> {
        if self.pinned {
            return self.mem.cached().clone();
        }
        self.mem.current(&self.iotlb).clone()
    }

    /// Whether guest memory and interrupts may still be touched: false once the driver
    /// instance this worker serves has ended (a reset was acknowledged without it).
    pub(super) fn instance_live(&mut self) -> bool {
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

    pub(super) fn finish_now(
        &mut self,
        q: &mut Queue,
        mem: &Arc<IotlbMemory>,
        req: &Request,
        ok: bool,
    ) {
        let status = if ok {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let used_len = if ok { req.used_len_ok() } else { 1 };
        self.complete_chain(
            q,
            mem,
            req.head_index,
            Some((req.status_addr, status)),
            used_len,
        );
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
            // The common case: the buffer lies in one mapping (one lookup, no iterator).
            if let Some(s) = mem.host_slice(addr.0, len, access) {
                out.push(libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: s.len(),
                });
                continue;
            }
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

    pub(super) fn start_request(&mut self, q: &mut Queue, mem: &Arc<IotlbMemory>, req: &Request) {
        let fd = types::Fd(self.backing.fd());
        let Some(slot) = self.slots.get_mut(usize::from(req.head_index)) else {
            // Unreachable: the caller checked the head against the slots.
            self.finish_now(q, mem, req, false);
            return;
        };
        debug_assert!(!slot.busy);
        let mut sqes = std::mem::take(&mut self.sqes);
        sqes.clear();
        slot.ops.clear();
        match req.request_type {
            RequestType::GetId => {
                let ok = self.instance_live() && write_id(&**mem, req, &self.id);
                self.sqes = sqes;
                self.finish_now(q, mem, req, ok);
                return;
            }
            RequestType::In | RequestType::Out => {
                if req.data_len == 0 {
                    self.sqes = sqes;
                    self.finish_now(q, mem, req, true);
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
                    self.finish_now(q, mem, req, false);
                    return;
                }
                let mut offset = req.offset();
                // The SQEs point into the slot's iovec buffer, which is not touched again
                // until the slot's last completion.
                for chunk in slot.iovecs.0.chunks(MAX_IOVECS) {
                    let bytes: u64 = chunk.iter().map(|i| i.iov_len as u64).sum();
                    macro_rules! rw {
                        ($op:ident, $fd:expr) => {
                            opcode::$op::new($fd, chunk.as_ptr(), chunk.len() as u32)
                                .offset(offset)
                                .build()
                        };
                    }
                    let sqe = match (read, self.fixed_backing) {
                        (true, true) => rw!(Readv, types::Fixed(0)),
                        (true, false) => rw!(Readv, fd),
                        (false, true) => rw!(Writev, types::Fixed(0)),
                        (false, false) => rw!(Writev, fd),
                    };
                    let kind = if read {
                        OpKind::Read { expected: bytes }
                    } else {
                        OpKind::Write { expected: bytes }
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
                        _ if !self.backing.is_block() => (OpKind::Zero, PUNCH),
                        _ if s.unmap => (OpKind::ZeroPunch { offset, len }, PUNCH),
                        _ => (OpKind::Zero, ZERO),
                    };
                    slot.ops.push(kind);
                    sqes.push(fallocate(fd, offset, len, mode));
                }
                if sqes.is_empty() {
                    self.sqes = sqes;
                    self.finish_now(q, mem, req, true);
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
                self.complete_op(q, mem, ud, -libc::EIO);
            }
        }
        self.sqes = sqes;
    }

    pub(super) fn complete_op(&mut self, q: &mut Queue, mem: &Arc<IotlbMemory>, ud: u64, res: i32) {
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
        let used_len = if failed { 1 } else { used_len_ok };
        self.complete_chain(q, mem, head, Some((status_addr, status)), used_len);
    }
}
