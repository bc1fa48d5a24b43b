//! The in-flight log: what a `vdpa-blk` that dies leaves for the next one to reconnect with.
//!
//! One file per device (default `/run/vdpa-blk/NAME.inflight`, on tmpfs: it survives the
//! process but not a reboot, like the VDUSE device), mmapped `MAP_SHARED` and written with
//! plain atomic stores: a store is in the page cache the instant it executes, so a process
//! killed between two stores leaves exactly the first. No system call per request.
//!
//! In the spirit of vhost-user's inflight I/O tracking (split rings): per queue, one 64-bit
//! slot per descriptor head (0: not in flight; else the fetch sequence number, so that
//! re-submission keeps the fetch order) and the used index the log last saw.
//!
//! The order of writes, per queue (one worker thread writes its queue's region):
//! 1. **fetch**: `desc[head] = seq`, once the chain is parsed and before its I/O starts;
//! 2. **complete**: the used entry and `used->idx` in guest memory (virtio-queue's `add_used`),
//!    then `desc[head] = 0`, then `log.used_idx = used->idx`;
//! 3. **start** of a fresh queue: every `desc[] = 0`, `log.used_idx = used->idx`, then
//!    `active = 1` (a queue not active has nothing to recover);
//! 4. **reset** (status 0), by the control thread once the workers stopped: `active = 0`.
//!
//! Recovery ([`QueueLog::recover`]): when `log.used_idx != used->idx`, the daemon died between
//! (2)'s `used->idx` store and its log update: the entries `[log.used_idx, used->idx)` of the
//! used ring completed, and their heads are cleared. Every head still set was fetched and not
//! completed: it is re-submitted, in fetch order. The next available index is
//! `used->idx + in flight` (each chain popped is either in the used ring or in flight; one
//! popped but not logged yet is simply popped again). A head logged in flight that the guest
//! already saw complete cannot exist: its used entry is written before its slot is cleared.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"VDPABLKI";
/// Layout version; another one is refused.
pub const VERSION: u32 = 1;
/// Default directory of the logs.
pub const DEFAULT_DIR: &str = "/run/vdpa-blk";

const NAME_LEN: usize = 64;
const HEADER_LEN: usize = 128;
/// Per queue: `active` (u32), `used_idx` (u32), then one u64 per head.
const QUEUE_HEADER_LEN: usize = 8;

// Header field offsets.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_QUEUES: usize = 12;
const OFF_QUEUE_SIZE: usize = 16;
const OFF_OFFERED: usize = 24;
const OFF_NEGOTIATED: usize = 32;
const OFF_CAPACITY: usize = 40;
const OFF_STATUS: usize = 48;
const OFF_RECONNECTS: usize = 52;
const OFF_NAME: usize = 56;

/// Errors of the in-flight log, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// A file operation failed.
    #[error("in-flight log {path}: {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The file is not the log of this device, of this version or of this negotiation.
    #[error("in-flight log {path} refused: {reason}; the device was left untouched")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The log and the ring disagree in a way no crash of ours can produce.
    #[error("in-flight log {path}, queue {queue}: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
}

/// What identifies the device a log belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogIdentity {
    /// VDUSE device name.
    pub name: String,
    /// Queues offered.
    pub queues: u16,
    /// Largest queue size offered (slots per queue).
    pub queue_size: u16,
    /// Feature bits offered.
    pub offered: u64,
}

/// The path of the log of device `name` under `dir`.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.inflight"))
}

fn queue_region_len(queue_size: u16) -> usize {
    QUEUE_HEADER_LEN + 8 * usize::from(queue_size)
}

fn file_len(queues: u16, queue_size: u16) -> usize {
    HEADER_LEN + usize::from(queues) * queue_region_len(queue_size)
}

/// An open, mapped log.
pub struct InflightLog {
    path: PathBuf,
    base: *mut u8,
    len: usize,
    queues: u16,
    queue_size: u16,
    _file: File,
}

// SAFETY: the mapping is only accessed through atomics (or, before it is shared, through
// plain writes on the creating thread), and it stays mapped as long as the log lives.
unsafe impl Send for InflightLog {}
// SAFETY: as above: every shared access is atomic.
unsafe impl Sync for InflightLog {}

impl std::fmt::Debug for InflightLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightLog")
            .field("path", &self.path)
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl InflightLog {
    fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> InflightError + 'a {
        move |source| InflightError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// A new, empty log for a device just created (a file left by an earlier device of the
    /// same name is replaced: that device is gone, or VDUSE would not have created this one).
    /// The directory is made 0700, the file 0600.
    pub fn create(
        path: &Path,
        id: &LogIdentity,
        capacity: u64,
    ) -> Result<Arc<Self>, InflightError> {
        if id.name.len() > NAME_LEN {
            return Err(InflightError::Mismatch {
                path: path.to_path_buf(),
                reason: format!("device name {:?} longer than {NAME_LEN} bytes", id.name),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(Self::io(dir, "create directory"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(Self::io(path, "create"))?;
        let len = file_len(id.queues, id.queue_size);
        file.set_len(len as u64)
            .map_err(Self::io(path, "set length"))?;
        let log = Self::map(path, file, len, id.queues, id.queue_size)?;
        // The file is all zeroes: every queue inactive. The magic goes last, so a file cut
        // short by a crash here is refused as not a log.
        log.u32(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        log.u32(OFF_QUEUES)
            .store(u32::from(id.queues), Ordering::Relaxed);
        log.u32(OFF_QUEUE_SIZE)
            .store(u32::from(id.queue_size), Ordering::Relaxed);
        log.u64(OFF_OFFERED).store(id.offered, Ordering::Relaxed);
        log.u64(OFF_CAPACITY).store(capacity, Ordering::Relaxed);
        let mut name = [0u8; NAME_LEN];
        name[..id.name.len()].copy_from_slice(id.name.as_bytes());
        for (k, chunk) in name.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            log.u64(OFF_NAME + 8 * k)
                .store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        log.u64(OFF_MAGIC)
            .store(u64::from_le_bytes(MAGIC), Ordering::Release);
        Ok(Arc::new(log))
    }

    /// Opens the log a previous daemon of device `id` left, refusing one of another device,
    /// version or option set (nothing is written to a refused file).
    pub fn open(path: &Path, id: &LogIdentity) -> Result<Arc<Self>, InflightError> {
        let mismatch = |reason: String| InflightError::Mismatch {
            path: path.to_path_buf(),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Self::io(path, "open"))?;
        let len = file.metadata().map_err(Self::io(path, "stat"))?.len();
        if len < HEADER_LEN as u64 {
            return Err(mismatch(format!(
                "{len} bytes, shorter than a log header ({HEADER_LEN})"
            )));
        }
        let log = Self::map(path, file, HEADER_LEN, 0, 0)?;
        if log.u64(OFF_MAGIC).load(Ordering::Acquire).to_le_bytes() != MAGIC {
            return Err(mismatch("not a vdpa-blk in-flight log (bad magic)".into()));
        }
        let version = log.u32(OFF_VERSION).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(mismatch(format!(
                "layout version {version}, this vdpa-blk reads version {VERSION}"
            )));
        }
        let name = log.name();
        if name != id.name {
            return Err(mismatch(format!(
                "it belongs to device {name:?}, not {:?}",
                id.name
            )));
        }
        let queues = log.u32(OFF_QUEUES).load(Ordering::Relaxed);
        let queue_size = log.u32(OFF_QUEUE_SIZE).load(Ordering::Relaxed);
        if queues != u32::from(id.queues) || queue_size != u32::from(id.queue_size) {
            return Err(mismatch(format!(
                "the device has {queues} queue(s) of size {queue_size}; asked for {} of size {}",
                id.queues, id.queue_size
            )));
        }
        let offered = log.u64(OFF_OFFERED).load(Ordering::Relaxed);
        if offered != id.offered {
            return Err(mismatch(format!(
                "the device offered features {offered:#x}, these options offer {:#x} \
                 (another --read-only, backing device or version?)",
                id.offered
            )));
        }
        let want = file_len(id.queues, id.queue_size);
        if len != want as u64 {
            return Err(mismatch(format!("{len} bytes, expected {want}")));
        }
        let file = log._file.try_clone().map_err(Self::io(path, "dup"))?;
        drop(log);
        Ok(Arc::new(Self::map(
            path,
            file,
            want,
            id.queues,
            id.queue_size,
        )?))
    }

    fn map(
        path: &Path,
        file: File,
        len: usize,
        queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address; the result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(InflightError::Io {
                path: path.to_path_buf(),
                op: "mmap",
                source: io::Error::last_os_error(),
            });
        }
        Ok(InflightLog {
            path: path.to_path_buf(),
            base: base.cast(),
            len,
            queues,
            queue_size,
            _file: file,
        })
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.len, "log offset {off}");
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the memory lives as
        // long as `self`; every access to it is atomic.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }

    fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len, "log offset {off}");
        // SAFETY: as in `u32`, 8-aligned.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn name(&self) -> String {
        let mut b = Vec::with_capacity(NAME_LEN);
        for k in 0..NAME_LEN / 8 {
            b.extend_from_slice(
                &self
                    .u64(OFF_NAME + 8 * k)
                    .load(Ordering::Relaxed)
                    .to_le_bytes(),
            );
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device status the driver last set (as the daemon acknowledged it).
    pub fn status(&self) -> u8 {
        self.u32(OFF_STATUS).load(Ordering::Acquire) as u8
    }

    /// Records the device status, before the reply to SET_STATUS.
    pub fn set_status(&self, status: u8) {
        self.u32(OFF_STATUS)
            .store(u32::from(status), Ordering::Release);
    }

    /// The features negotiated by the driver (recorded at DRIVER_OK; 0 before).
    pub fn negotiated(&self) -> u64 {
        self.u64(OFF_NEGOTIATED).load(Ordering::Acquire)
    }

    /// Records the negotiated features (at DRIVER_OK).
    pub fn set_negotiated(&self, features: u64) {
        self.u64(OFF_NEGOTIATED).store(features, Ordering::Release);
    }

    /// The capacity (sectors) the guest was last told.
    pub fn capacity(&self) -> u64 {
        self.u64(OFF_CAPACITY).load(Ordering::Acquire)
    }

    /// Records the capacity announced to the guest.
    pub fn set_capacity(&self, sectors: u64) {
        self.u64(OFF_CAPACITY).store(sectors, Ordering::Release);
    }

    /// Times a daemon reconnected to this device.
    pub fn reconnects(&self) -> u32 {
        self.u32(OFF_RECONNECTS).load(Ordering::Acquire)
    }

    /// Counts one more reconnect; returns the new count.
    pub fn count_reconnect(&self) -> u32 {
        self.u32(OFF_RECONNECTS).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues in the log.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The log of queue `index` (None past the last queue).
    pub fn queue(self: &Arc<Self>, index: u16) -> Option<QueueLog> {
        (index < self.queues).then(|| QueueLog {
            log: self.clone(),
            index,
            off: HEADER_LEN + usize::from(index) * queue_region_len(self.queue_size),
        })
    }

    /// Reset (status 0): every queue inactive. Called once the workers stopped.
    pub fn reset(self: &Arc<Self>) {
        for q in 0..self.queues {
            if let Some(l) = self.queue(q) {
                l.active().store(0, Ordering::Release);
            }
        }
    }

    /// Removes the file (the device is gone).
    pub fn remove(&self) -> Result<(), InflightError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(InflightError::Io {
                path: self.path.clone(),
                op: "remove",
                source: e,
            }),
        }
    }
}

impl Drop for InflightLog {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `map`; nothing refers to it any more
        // (QueueLogs hold an Arc of the log).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// What recovery found for one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Heads fetched and not completed, in fetch order: to be submitted again.
    pub heads: Vec<u16>,
    /// The next available index to read.
    pub next_avail: u16,
    /// Used entries the dead daemon wrote but had not logged (0 or 1).
    pub completed_unlogged: u16,
    /// The next fetch sequence number.
    pub next_seq: u64,
}

/// One queue's region of the log, written by that queue's worker.
#[derive(Debug, Clone)]
pub struct QueueLog {
    log: Arc<InflightLog>,
    index: u16,
    off: usize,
}

impl QueueLog {
    fn active(&self) -> &AtomicU32 {
        self.log.u32(self.off)
    }

    fn used_idx(&self) -> &AtomicU32 {
        self.log.u32(self.off + 4)
    }

    fn slot(&self, head: u16) -> Option<&AtomicU64> {
        (head < self.log.queue_size).then(|| self.log.u64(self.off + 8 + 8 * usize::from(head)))
    }

    /// Queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.log.path
    }

    /// Whether a worker served this queue for the current driver (something to recover).
    pub fn is_active(&self) -> bool {
        self.active().load(Ordering::Acquire) != 0
    }

    /// Write order (3): a fresh queue whose used index is `used_idx`.
    pub fn start(&self, used_idx: u16) {
        self.active().store(0, Ordering::Release);
        for h in 0..self.log.queue_size {
            if let Some(s) = self.slot(h) {
                s.store(0, Ordering::Relaxed);
            }
        }
        self.used_idx()
            .store(u32::from(used_idx), Ordering::Release);
        self.active().store(1, Ordering::Release);
    }

    /// Write order (1): `head` fetched with sequence number `seq` (never 0).
    #[inline]
    pub fn fetched(&self, head: u16, seq: u64) {
        if let Some(s) = self.slot(head) {
            s.store(seq.max(1), Ordering::Release);
        }
    }

    /// Write order (2), after `used->idx` became `used_idx`: `head` is done.
    #[inline]
    pub fn completed(&self, head: u16, used_idx: u16) {
        self.clear(head);
        self.note_used(used_idx);
    }

    #[inline]
    fn clear(&self, head: u16) {
        if let Some(s) = self.slot(head) {
            s.store(0, Ordering::Release);
        }
    }

    #[inline]
    fn note_used(&self, used_idx: u16) {
        self.used_idx()
            .store(u32::from(used_idx), Ordering::Release);
    }

    /// The recovery of a queue of `size` entries whose used ring says `ring_used` and whose
    /// used entry `k` names the head `used_head(k)` (None: unreadable). Clears what
    /// completed unlogged and leaves the log consistent with the ring.
    pub fn recover(
        &self,
        size: u16,
        ring_used: u16,
        used_head: impl Fn(u16) -> Option<u16>,
    ) -> Result<Recovered, InflightError> {
        let bad = |reason: String| InflightError::Inconsistent {
            path: self.log.path.clone(),
            queue: self.index,
            reason,
        };
        if size == 0 || size > self.log.queue_size {
            return Err(bad(format!(
                "queue size {size}, the log has room for {}",
                self.log.queue_size
            )));
        }
        let logged = self.used_idx().load(Ordering::Acquire) as u16;
        let unlogged = ring_used.wrapping_sub(logged);
        // One completion at most is between its used->idx store and its log update.
        if unlogged > 1 {
            return Err(bad(format!(
                "the used ring is at {ring_used}, the log at {logged}: not this driver's log"
            )));
        }
        for k in 0..unlogged {
            let at = logged.wrapping_add(k);
            let head = used_head(at).ok_or_else(|| bad(format!("used entry {at} unreadable")))?;
            self.clear(head);
        }
        self.note_used(ring_used);
        let mut found: Vec<(u64, u16)> = Vec::new();
        for h in 0..self.log.queue_size {
            let seq = self.slot(h).map_or(0, |s| s.load(Ordering::Acquire));
            if seq == 0 {
                continue;
            }
            if h >= size {
                return Err(bad(format!(
                    "head {h} logged in flight, past the queue size {size}"
                )));
            }
            found.push((seq, h));
        }
        found.sort_unstable();
        let n = u16::try_from(found.len()).unwrap_or(u16::MAX);
        Ok(Recovered {
            next_seq: found.last().map_or(1, |(s, _)| s + 1),
            heads: found.into_iter().map(|(_, h)| h).collect(),
            next_avail: ring_used.wrapping_add(n),
            completed_unlogged: unlogged,
        })
    }
}

#[cfg(test)]
mod tests;
