//! Guest memory backed by the VDUSE IOTLB: every IOVA range `[start, last]` the kernel reports
//! through `VDUSE_IOTLB_GET_FD` is mmapped (MAP_SHARED, at the entry's offset, with its
//! permission) and addressed by IOVA.
//!
//! [`IotlbMemory`] is an immutable snapshot that implements vm-memory's (IOMMU-aware)
//! [`GuestMemory`] trait, so virtio-queue reads rings from it and every access is checked
//! against the mapping's permission: a write into a read-only mapping is refused, not
//! attempted. [`IotlbTable`] holds the current snapshot; an `UPDATE_IOTLB` message builds a new
//! one (drop what overlaps the range, map what the kernel now reports), and in-flight I/O keeps
//! its old snapshot alive through an `Arc`, so a mapping is never unmapped under an iovec.

use std::fs::File;
use std::iter::FusedIterator;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::volatile_memory::VolatileMemory;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, GuestMemoryResult,
    MmapRegion, Permissions, VolatileSlice,
};

use crate::uapi::vduse::{
    VduseError, VduseIotlbEntry, VDUSE_ACCESS_RO, VDUSE_ACCESS_RW, VDUSE_ACCESS_WO,
};

/// Errors of IOTLB mapping.
#[derive(Debug, thiserror::Error)]
pub enum IotlbError {
    /// The kernel described an impossible range.
    #[error("IOTLB entry [{start:#x}, {last:#x}] is empty or too large to map")]
    BadRange {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
    },
    /// The entry's permission is not RO/WO/RW.
    #[error("IOTLB entry [{start:#x}, {last:#x}] has unknown permission {perm:#x}")]
    BadPerm {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
        /// Raw perm.
        perm: u8,
    },
    /// mmap failed.
    #[error("mmap of IOTLB entry [{start:#x}, {last:#x}] at offset {offset:#x}: {source}")]
    Mmap {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
        /// File offset.
        offset: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Asking the kernel for the mapping failed.
    #[error(transparent)]
    Vduse(#[from] VduseError),
    /// A second handle on a memory region's file could not be made (vhost-user regions).
    #[error("duplicating the fd of memory region [{start:#x}, {last:#x}]: {source}")]
    Dup {
        /// First guest address.
        start: u64,
        /// Last guest address.
        last: u64,
        /// errno.
        #[source]
        source: std::io::Error,
    },
}

/// One mapped IOVA range.
#[derive(Debug)]
pub struct Mapping {
    start: u64,
    last: u64,
    perm: Permissions,
    /// What the kernel said the range is: with the backing file's identity, an update that
    /// reports the same region again reuses this mapping instead of mapping it anew.
    offset: u64,
    raw_perm: u8,
    file_id: (u64, u64),
    /// Known to the SIGBUS handler while mapped. Declared before `region`, so it is dropped
    /// first: the range is forgotten just before it is unmapped.
    _sigbus: crate::sigbus::Registration,
    region: MmapRegion<()>,
}

/// `(st_dev, st_ino)` of an open file (0, 0 when fstat fails: never equal to a real file).
fn file_identity(file: &File) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0))
}

impl Mapping {
    /// Maps `len = last - start + 1` bytes of `file` at `offset`.
    pub fn map(entry: &VduseIotlbEntry, file: File) -> Result<Self, IotlbError> {
        let (start, last) = (entry.start, entry.last);
        let len = last
            .checked_sub(start)
            .and_then(|l| l.checked_add(1))
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or(IotlbError::BadRange { start, last })?;
        let (perm, prot) = match entry.perm {
            VDUSE_ACCESS_RO => (Permissions::Read, libc::PROT_READ),
            // x86 cannot map write-only; the permission check still refuses reads.
            VDUSE_ACCESS_WO => (Permissions::Write, libc::PROT_READ | libc::PROT_WRITE),
            VDUSE_ACCESS_RW => (Permissions::ReadWrite, libc::PROT_READ | libc::PROT_WRITE),
            p => {
                return Err(IotlbError::BadPerm {
                    start,
                    last,
                    perm: p,
                })
            }
        };
        let file_id = file_identity(&file);
        let region = MmapRegion::build(
            Some(FileOffset::new(file, entry.offset)),
            len,
            prot,
            libc::MAP_SHARED,
        )
        .map_err(|source| IotlbError::Mmap {
            start,
            last,
            offset: entry.offset,
            source,
        })?;
        // Guest RAM stays out of the daemon's core dumps. Advisory: a failure changes nothing.
        // SAFETY: the range is exactly the mapping just created, owned by `region`.
        unsafe {
            libc::madvise(region.as_ptr().cast(), region.size(), libc::MADV_DONTDUMP);
        }
        let _sigbus = crate::sigbus::register(region.as_ptr() as usize, region.size());
        Ok(Mapping {
            _sigbus,
            start,
            last,
            perm,
            offset: entry.offset,
            raw_perm: entry.perm,
            file_id,
            region,
        })
    }

    /// Whether the mapping shares an address with `[start, last]`.
    fn overlaps(&self, start: u64, last: u64) -> bool {
        self.start <= last && start <= self.last
    }

    /// Whether this mapping is the region `entry` describes, in `file`.
    fn is(&self, entry: &VduseIotlbEntry, file_id: (u64, u64)) -> bool {
        self.start == entry.start
            && self.last == entry.last
            && self.offset == entry.offset
            && self.raw_perm == entry.perm
            && self.file_id == file_id
            && file_id != (0, 0)
    }

    /// First IOVA.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last IOVA.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Permission.
    pub fn perm(&self) -> Permissions {
        self.perm
    }

    /// What is mapped, for a report: IOVA range, file offset and the file's identity.
    pub fn info(&self) -> MappingInfo {
        MappingInfo {
            start: self.start,
            last: self.last,
            offset: self.offset,
            writable: self.perm.has_write(),
            dev: self.file_id.0,
            ino: self.file_id.1,
        }
    }
}

/// One mapping as the control socket reports it: which file (device and inode numbers, as
/// `stat` gives them) backs which IOVA range. For vhost-vdpa that file is the VMM's own memory
/// (its memfd): zero copy shown by what is mapped, not by a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MappingInfo {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA.
    pub last: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Mapped writable.
    pub writable: bool,
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
}

/// An immutable set of mappings, sorted by IOVA start and non-overlapping. A flat sorted
/// vector, not a tree: every guest access looks its address up (several times per request),
/// and a binary search over a few contiguous entries costs a fraction of a B-tree walk (the
/// walk was a tenth of the worker's time in a profile at 4k QD32).
#[derive(Debug, Default, Clone)]
pub struct IotlbMemory {
    maps: Vec<Arc<Mapping>>,
}

impl IotlbMemory {
    /// No mappings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True if nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The mappings, in IOVA order.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.iter().map(|m| m.as_ref())
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        self.maps
            .get(i.checked_sub(1)?)
            .map(|m| m.as_ref())
            .filter(|m| addr <= m.last)
    }

    /// A copy without any mapping that overlaps `[start, last]`.
    pub fn without_range(&self, start: u64, last: u64) -> Self {
        IotlbMemory {
            maps: self
                .maps
                .iter()
                .filter(|m| !m.overlaps(start, last))
                .cloned()
                .collect(),
        }
    }

    /// A copy with `mapping` added (replacing whatever it overlaps).
    pub fn with_mapping(&self, mapping: Mapping) -> Self {
        let mut next = self.clone();
        next.insert(Arc::new(mapping));
        next
    }

    fn insert(&mut self, mapping: Arc<Mapping>) {
        let (start, last) = (mapping.start, mapping.last);
        self.maps.retain(|m| !m.overlaps(start, last));
        let at = self.maps.partition_point(|m| m.start < start);
        self.maps.insert(at, mapping);
    }

    /// The mappings that overlap `[start, last]`.
    fn overlapping(&self, start: u64, last: u64) -> impl Iterator<Item = &Arc<Mapping>> {
        self.maps.iter().filter(move |m| m.overlaps(start, last))
    }

    /// The host address for `len` bytes at `addr` if they lie in one mapping that allows
    /// `access` (for building iovecs).
    pub fn host_slice(
        &self,
        addr: u64,
        len: u32,
        access: Permissions,
    ) -> Option<VolatileSlice<'_, ()>> {
        let m = self.find(addr)?;
        if !m.perm.allow(access) {
            return None;
        }
        let end = addr.checked_add(u64::from(len))?.checked_sub(1)?;
        if end > m.last {
            return None;
        }
        m.region
            .get_slice((addr - m.start) as usize, len as usize)
            .ok()
    }
}

/// Iterator over the slices backing an IOVA range.
pub struct IotlbSlices<'a> {
    mem: &'a IotlbMemory,
    addr: u64,
    remaining: usize,
    access: Permissions,
    failed: bool,
}

impl<'a> Iterator for IotlbSlices<'a> {
    type Item = GuestMemoryResult<VolatileSlice<'a, BS<'a, ()>>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let Some(m) = self
            .mem
            .find(self.addr)
            .filter(|m| m.perm.allow(self.access))
        else {
            self.failed = true;
            return Some(Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(
                self.addr,
            ))));
        };
        let in_map = (m.last - self.addr).saturating_add(1);
        let n = (self.remaining as u64).min(in_map) as usize;
        match m.region.get_slice((self.addr - m.start) as usize, n) {
            Ok(s) => {
                self.remaining -= n;
                self.addr = self.addr.wrapping_add(n as u64);
                Some(Ok(s))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e.into()))
            }
        }
    }
}

impl FusedIterator for IotlbSlices<'_> {}

impl<'a> GuestMemorySliceIterator<'a, BS<'a, ()>> for IotlbSlices<'a> {}

impl GuestMemory for IotlbMemory {
    type PhysicalMemory = GuestMemoryMmap<()>;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        if count == 0 {
            return true;
        }
        let Some(mut remaining) = u64::try_from(count).ok() else {
            return false;
        };
        let mut a = addr.0;
        if a.checked_add(remaining - 1).is_none() {
            return false;
        }
        loop {
            let Some(m) = self.find(a) else { return false };
            if !m.perm.allow(access) {
                return false;
            }
            let in_map = (m.last - a).saturating_add(1);
            if remaining <= in_map {
                return true;
            }
            remaining -= in_map;
            a = m.last + 1;
        }
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if count > 0 && addr.0.checked_add(count as u64 - 1).is_none() {
            return Err(GuestMemoryError::GuestAddressOverflow);
        }
        Ok(IotlbSlices {
            mem: self,
            addr: addr.0,
            remaining: count,
            access,
            failed: false,
        })
    }
}

/// Where IOTLB entries come from (`VDUSE_IOTLB_GET_FD` in production, memfds in tests).
pub trait IotlbSource {
    /// The first region overlapping `[start, last]` and an fd to mmap it, or `None`.
    fn get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError>;
}

impl IotlbSource for crate::uapi::vduse::VduseDevFd {
    fn get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
        Ok(self.iotlb_get_fd(start, last)?)
    }
}

/// The current IOTLB snapshot, shared by the control thread (writer) and workers (readers).
#[derive(Debug, Default)]
pub struct IotlbTable {
    current: Mutex<Arc<IotlbMemory>>,
    /// Bumped after every store, so a reader that holds a snapshot can tell with one atomic
    /// load whether it is still current (see [`SnapshotCache`]).
    generation: AtomicU64,
    /// Serialises writers (control thread updates, worker fault-ins) so that none of them
    /// overwrites another's change.
    writer: Mutex<()>,
}

/// One reader's copy of the current snapshot, refreshed only when the table changed: the
/// datapath checks it on every wake-up (and every poll iteration) with one atomic load instead
/// of a lock and a reference-count update.
#[derive(Debug)]
pub struct SnapshotCache {
    generation: u64,
    mem: Arc<IotlbMemory>,
}

impl SnapshotCache {
    /// The snapshot this cache holds, without looking at the table.
    pub fn cached(&self) -> &Arc<IotlbMemory> {
        &self.mem
    }

    /// The current snapshot of `table`.
    pub fn current(&mut self, table: &IotlbTable) -> &Arc<IotlbMemory> {
        let g = table.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.mem = table.snapshot();
        }
        &self.mem
    }
}

impl IotlbTable {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot (cheap: one Arc clone under a short lock).
    pub fn snapshot(&self) -> Arc<IotlbMemory> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn store(&self, next: IotlbMemory) {
        let next = Arc::new(next);
        match self.current.lock() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        // After the swap: a reader that sees the new generation takes the lock and gets the
        // new snapshot (or a newer one).
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A cache of the current snapshot for one reader (a worker thread).
    pub fn cache(&self) -> SnapshotCache {
        let generation = self.generation.load(Ordering::Acquire);
        SnapshotCache {
            generation,
            mem: self.snapshot(),
        }
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops everything (device reset).
    pub fn clear(&self) {
        let _w = self.write_lock();
        self.store(IotlbMemory::new());
    }

    /// Maps the parts of `[addr, addr + len)` that the snapshot lacks but the source knows
    /// (the VDUSE bounce region is created on the driver's first DMA mapping and announced by
    /// no message). Returns the number of regions mapped.
    pub fn fault_in(
        &self,
        source: &dyn IotlbSource,
        addr: u64,
        len: u32,
    ) -> Result<usize, IotlbError> {
        let Some(end) = addr.checked_add(u64::from(len.max(1)) - 1) else {
            return Ok(0);
        };
        let _w = self.write_lock();
        let mut next = (*self.snapshot()).clone();
        let mut a = addr;
        let mut mapped = 0;
        loop {
            if let Some(m) = next.find(a) {
                match m.last().checked_add(1) {
                    Some(n) if m.last() < end => {
                        a = n;
                        continue;
                    }
                    _ => break,
                }
            }
            let Some((fd, entry)) = source.get_fd(a, end)? else {
                break;
            };
            if entry.start > a || entry.last < a {
                break;
            }
            next = next.with_mapping(Mapping::map(&entry, File::from(fd))?);
            mapped += 1;
            match entry.last.checked_add(1) {
                Some(n) if entry.last < end => a = n,
                _ => break,
            }
        }
        if mapped > 0 {
            self.store(next);
        }
        Ok(mapped)
    }

    /// Handles `VDUSE_UPDATE_IOTLB [start, last]`: builds the next snapshot (what the source
    /// now reports inside the range; an unchanged region keeps its mapping, nothing is mapped
    /// twice) and swaps it in once, so readers never see the range empty. Each region is
    /// mapped on its own: one that fails is left out and reported, the others are served.
    pub fn update(&self, source: &dyn IotlbSource, start: u64, last: u64) -> IotlbUpdate {
        let _w = self.write_lock();
        let before = self.snapshot();
        let mut next = before.without_range(start, last);
        let mut report = IotlbUpdate::default();
        let mut cursor = start;
        while cursor <= last {
            let (fd, entry) = match source.get_fd(cursor, last) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                // The rest of the range cannot be read: what was found so far is served,
                // nothing of the old mappings in the range is kept.
                Err(e) => {
                    report.failed.push(e);
                    break;
                }
            };
            if entry.last < entry.start {
                report.failed.push(IotlbError::BadRange {
                    start: entry.start,
                    last: entry.last,
                });
                break;
            }
            if entry.last < cursor || entry.start > last {
                // The kernel answered with a region outside what we asked: stop, do not loop.
                break;
            }
            let file = File::from(fd);
            let id = file_identity(&file);
            let same = before
                .overlapping(entry.start, entry.last)
                .find(|m| m.is(&entry, id))
                .cloned();
            match same {
                Some(m) => {
                    next.insert(m);
                    report.kept += 1;
                }
                None => match Mapping::map(&entry, file) {
                    Ok(m) => {
                        next.insert(Arc::new(m));
                        report.mapped += 1;
                    }
                    Err(e) => report.failed.push(e),
                },
            }
            match entry.last.checked_add(1) {
                Some(c) => cursor = c,
                None => break,
            }
        }
        report.removed = before
            .overlapping(start, last)
            .filter(|m| !next.maps.iter().any(|n| Arc::ptr_eq(n, m)))
            .map(Arc::downgrade)
            .collect();
        self.store(next);
        report
    }

    /// Maps everything the source knows (`[0, u64::MAX]`), e.g. at DRIVER_OK.
    pub fn map_all(&self, source: &dyn IotlbSource) -> IotlbUpdate {
        self.update(source, 0, u64::MAX)
    }
}

/// What one [`IotlbTable::update`] did.
#[derive(Debug, Default)]
pub struct IotlbUpdate {
    /// Regions newly mapped.
    pub mapped: usize,
    /// Regions the kernel reported again unchanged (their mapping was kept).
    pub kept: usize,
    /// Regions that could not be mapped (left out of the snapshot; the rest is served).
    pub failed: Vec<IotlbError>,
    /// Mappings the update took out of the snapshot. In-flight I/O may still point into them
    /// (through older snapshots); [`IotlbUpdate::wait_released`] waits until none does.
    pub removed: Vec<std::sync::Weak<Mapping>>,
}

impl IotlbUpdate {
    /// The report, or the first failure when every region had to be mapped.
    pub fn all_mapped(mut self) -> Result<Self, IotlbError> {
        if self.failed.is_empty() {
            Ok(self)
        } else {
            Err(self.failed.swap_remove(0))
        }
    }

    /// Regions in the snapshot for the range now (mapped or kept).
    pub fn served(&self) -> usize {
        self.mapped + self.kept
    }

    /// Waits until no snapshot holds a removed mapping any more (in-flight requests into the
    /// old range completed and every reader moved on), calling `nudge` once first (to wake
    /// readers that hold an old snapshot). Returns false at `deadline` (None: no deadline)
    /// with mappings still held.
    pub fn wait_released(
        &self,
        deadline: Option<std::time::Instant>,
        nudge: impl FnOnce(),
    ) -> bool {
        if self.removed.iter().all(|w| w.strong_count() == 0) {
            return true;
        }
        nudge();
        loop {
            if self.removed.iter().all(|w| w.strong_count() == 0) {
                return true;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::sync::Mutex as TestMutex;
    use vm_memory::Bytes;

    /// A memfd of `len` bytes.
    pub(crate) fn memfd(len: u64) -> File {
        let name = c"vdpa-blk-test";
        // SAFETY: valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd we own.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).expect("set_len");
        f
    }

    /// A fake kernel IOTLB: entries over one memfd.
    pub(crate) struct FakeIotlb {
        pub(crate) file: File,
        pub(crate) entries: TestMutex<Vec<VduseIotlbEntry>>,
    }

    impl FakeIotlb {
        pub(crate) fn new(len: u64, entries: &[(u64, u64, u64, u8)]) -> Self {
            FakeIotlb {
                file: memfd(len),
                entries: TestMutex::new(
                    entries
                        .iter()
                        .map(|&(start, last, offset, perm)| VduseIotlbEntry {
                            offset,
                            start,
                            last,
                            perm,
                            padding: [0; 7],
                        })
                        .collect(),
                ),
            }
        }
    }

    impl IotlbSource for FakeIotlb {
        fn get_fd(
            &self,
            start: u64,
            last: u64,
        ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
            let mut es = self.entries.lock().expect("entries").clone();
            es.sort_by_key(|e| e.start);
            Ok(es
                .into_iter()
                .find(|e| e.last >= start && e.start <= last)
                .map(|e| (OwnedFd::from(self.file.try_clone().expect("dup")), e)))
        }
    }

    #[test]
    fn translates_iova_through_offsets() {
        // Two IOVA ranges backed by different offsets of one memfd.
        let src = FakeIotlb::new(
            0x4000,
            &[
                (0x10000, 0x10fff, 0x2000, VDUSE_ACCESS_RW),
                (0x20000, 0x21fff, 0x0000, VDUSE_ACCESS_RW),
            ],
        );
        let t = IotlbTable::new();
        assert_eq!(t.map_all(&src).all_mapped().expect("map").served(), 2);
        let m = t.snapshot();
        m.write_obj(0xdead_beef_u32, GuestAddress(0x10010))
            .expect("write");
        // Visible through the file at offset 0x2010.
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&src.file, &mut b, 0x2010).expect("pread");
        assert_eq!(u32::from_ne_bytes(b), 0xdead_beef);
        // The second range maps file offset 0 at IOVA 0x20000.
        std::os::unix::fs::FileExt::write_all_at(&src.file, &0x55aa_u16.to_ne_bytes(), 0x10)
            .expect("pwrite");
        assert_eq!(
            m.read_obj::<u16>(GuestAddress(0x20010)).expect("read"),
            0x55aa
        );
        // Just past the end of the second range nothing is mapped.
        assert!(m.read_obj::<u8>(GuestAddress(0x22000)).is_err());
    }

    #[test]
    fn unmapped_and_boundary_crossing_accesses_fail() {
        let src = FakeIotlb::new(0x2000, &[(0x1000, 0x1fff, 0, VDUSE_ACCESS_RW)]);
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let m = t.snapshot();
        assert!(m.check_range(GuestAddress(0x1000), 0x1000, Permissions::ReadWrite));
        assert!(!m.check_range(GuestAddress(0x1000), 0x1001, Permissions::Read));
        assert!(!m.check_range(GuestAddress(0xfff), 2, Permissions::Read));
        assert!(!m.check_range(GuestAddress(u64::MAX), 2, Permissions::Read));
        assert!(m.read_obj::<u64>(GuestAddress(0x1ffc)).is_err());
        assert!(m.read_obj::<u64>(GuestAddress(0x0)).is_err());
    }

    #[test]
    fn adjacent_mappings_form_one_contiguous_range() {
        let src = FakeIotlb::new(
            0x3000,
            &[
                (0x1000, 0x1fff, 0x2000, VDUSE_ACCESS_RW),
                (0x2000, 0x2fff, 0x0000, VDUSE_ACCESS_RW),
            ],
        );
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let m = t.snapshot();
        assert!(m.check_range(GuestAddress(0x1ff0), 0x20, Permissions::Read));
        m.write_slice(&[7u8; 32], GuestAddress(0x1ff0))
            .expect("straddling write");
        let mut b = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&src.file, &mut b, 0x0).expect("pread");
        assert_eq!(b, [7u8; 16]);
        // A single iovec cannot straddle two mappings.
        assert!(m.host_slice(0x1ff0, 0x20, Permissions::Read).is_none());
        assert!(m.host_slice(0x1ff0, 0x10, Permissions::Read).is_some());
    }

    #[test]
    fn read_only_mapping_refuses_writes() {
        let src = FakeIotlb::new(0x1000, &[(0x1000, 0x1fff, 0, VDUSE_ACCESS_RO)]);
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let m = t.snapshot();
        assert!(m.check_range(GuestAddress(0x1000), 16, Permissions::Read));
        assert!(!m.check_range(GuestAddress(0x1000), 16, Permissions::Write));
        assert!(
            m.write_obj(1u8, GuestAddress(0x1000)).is_err(),
            "refused, not a SIGSEGV"
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000)).expect("read"), 0);
        assert!(m.host_slice(0x1000, 16, Permissions::Write).is_none());
    }

    #[test]
    fn update_remaps_and_invalidation_drops() {
        let src = FakeIotlb::new(
            0x4000,
            &[
                (0x1000, 0x1fff, 0, VDUSE_ACCESS_RW),
                (0x8000, 0x8fff, 0x1000, VDUSE_ACCESS_RW),
            ],
        );
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let old = t.snapshot();
        assert_eq!(old.len(), 2);
        // The kernel removes the first region and tells us about [0x1000, 0x1fff].
        src.entries
            .lock()
            .expect("entries")
            .retain(|e| e.start != 0x1000);
        assert_eq!(
            t.update(&src, 0x1000, 0x1fff)
                .all_mapped()
                .expect("update")
                .served(),
            0
        );
        let now = t.snapshot();
        assert_eq!(now.len(), 1);
        assert!(now.find(0x1000).is_none());
        // An in-flight holder of the old snapshot still reads the old mapping.
        assert!(old.read_obj::<u8>(GuestAddress(0x1000)).is_ok());
        // A new region appears at the same IOVA but another file offset.
        src.entries.lock().expect("entries").push(VduseIotlbEntry {
            offset: 0x3000,
            start: 0x1000,
            last: 0x1fff,
            perm: VDUSE_ACCESS_RO,
            padding: [0; 7],
        });
        assert_eq!(
            t.update(&src, 0x1000, 0x1fff)
                .all_mapped()
                .expect("update")
                .served(),
            1
        );
        let m = t
            .snapshot()
            .find(0x1000)
            .map(|m| (m.start(), m.last(), m.perm()));
        assert_eq!(m, Some((0x1000, 0x1fff, Permissions::Read)));
        t.clear();
        assert!(t.snapshot().is_empty());
    }

    #[test]
    fn bad_entries_are_reported_and_the_rest_is_mapped() {
        let src = FakeIotlb::new(0x1000, &[(0x2000, 0x1000, 0, VDUSE_ACCESS_RW)]);
        let r = IotlbTable::new().map_all(&src);
        assert!(
            matches!(r.failed[..], [IotlbError::BadRange { .. }]),
            "{r:?}"
        );
        // A bad permission on one region: the other is still mapped.
        let src = FakeIotlb::new(
            0x2000,
            &[
                (0x0, 0xfff, 0, 0x7),
                (0x1000, 0x1fff, 0x1000, VDUSE_ACCESS_RW),
            ],
        );
        let t = IotlbTable::new();
        let r = t.map_all(&src);
        assert!(
            matches!(r.failed[..], [IotlbError::BadPerm { perm: 7, .. }]),
            "{r:?}"
        );
        assert_eq!(r.mapped, 1);
        assert!(t.snapshot().find(0x1000).is_some());
        assert!(t.snapshot().find(0x0).is_none());
    }

    #[test]
    fn a_vmm_truncating_its_memory_does_not_kill_the_daemon() {
        crate::sigbus::install().expect("handler");
        let src = FakeIotlb::new(0x3000, &[(0x10000, 0x12fff, 0, VDUSE_ACCESS_RW)]);
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let m = t.snapshot();
        m.write_obj(0x5au8, GuestAddress(0x12000)).expect("write");
        let before = crate::sigbus::replaced_pages();
        // The VMM gives up the last page of its memfd.
        src.file.set_len(0x2000).expect("truncate");
        // Without the handler this read is a SIGBUS and the test process dies.
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x12000)).expect("read"), 0);
        assert_eq!(crate::sigbus::replaced_pages(), before + 1);
        m.write_obj(1u8, GuestAddress(0x12001))
            .expect("write to the zero page");
        // The pages still backed are untouched.
        m.write_obj(7u8, GuestAddress(0x10000)).expect("write");
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&src.file, &mut b, 0).expect("pread");
        assert_eq!(b[0], 7);
    }

    #[test]
    fn a_mapping_reports_the_file_it_maps() {
        use std::os::unix::fs::MetadataExt;
        let src = FakeIotlb::new(0x2000, &[(0x4000, 0x5fff, 0, VDUSE_ACCESS_RW)]);
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let meta = src.file.metadata().expect("fstat");
        let infos: Vec<MappingInfo> = t.snapshot().mappings().map(|m| m.info()).collect();
        assert_eq!(
            infos,
            vec![MappingInfo {
                start: 0x4000,
                last: 0x5fff,
                offset: 0,
                writable: true,
                dev: meta.dev(),
                ino: meta.ino(),
            }]
        );
        // Another memfd is another file.
        assert_ne!(memfd(0x1000).metadata().expect("fstat").ino(), meta.ino());
    }

    /// A source whose look-ups fail from `fail_from` on (GET_FD erroring half-way).
    struct FailingFrom<'a>(&'a FakeIotlb, u64);

    impl IotlbSource for FailingFrom<'_> {
        fn get_fd(
            &self,
            start: u64,
            last: u64,
        ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
            if start >= self.1 {
                return Err(IotlbError::BadRange { start, last });
            }
            self.0.get_fd(start, last)
        }
    }

    #[test]
    fn a_look_up_that_fails_half_way_keeps_what_was_found_and_drops_the_stale_rest() {
        let src = FakeIotlb::new(
            0x2000,
            &[
                (0x1000, 0x1fff, 0, VDUSE_ACCESS_RW),
                (0x8000, 0x8fff, 0x1000, VDUSE_ACCESS_RW),
            ],
        );
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let r = t.map_all(&FailingFrom(&src, 0x2000));
        assert!(
            matches!(r.failed[..], [IotlbError::BadRange { .. }]),
            "{r:?}"
        );
        assert_eq!((r.kept, r.removed.len()), (1, 1));
        assert!(t.snapshot().find(0x1000).is_some());
        assert!(
            t.snapshot().find(0x8000).is_none(),
            "a mapping the kernel may have removed"
        );
    }

    #[test]
    fn an_unchanged_region_is_not_mapped_again() {
        let src = FakeIotlb::new(0x3000, &[(0x1000, 0x2fff, 0, VDUSE_ACCESS_RW)]);
        let t = IotlbTable::new();
        assert_eq!(t.map_all(&src).all_mapped().expect("map").mapped, 1);
        let r = t.map_all(&src).all_mapped().expect("again");
        assert_eq!((r.mapped, r.kept, r.removed.len()), (0, 1, 0));
        // Another offset is another region.
        src.entries.lock().expect("e")[0].offset = 0x1000;
        let r = t.map_all(&src).all_mapped().expect("moved");
        assert_eq!((r.mapped, r.kept, r.removed.len()), (1, 0, 1));
    }

    #[test]
    fn host_slice_points_into_the_mapping() {
        let src = FakeIotlb::new(0x2000, &[(0x4000, 0x5fff, 0, VDUSE_ACCESS_RW)]);
        let t = IotlbTable::new();
        t.map_all(&src).all_mapped().expect("map");
        let m = t.snapshot();
        let a = m.host_slice(0x4000, 16, Permissions::Read).expect("slice");
        let b = m.host_slice(0x4100, 16, Permissions::Read).expect("slice");
        assert_eq!(
            b.ptr_guard().as_ptr() as usize - a.ptr_guard().as_ptr() as usize,
            0x100
        );
    }
}
