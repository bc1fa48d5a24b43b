//! Structure-aware fuzzing of vdpa-blk's descriptor-chain path.
//!
//! An input ([`FuzzInput`]) describes what a (possibly hostile) driver put in guest memory: a
//! split virtqueue of 2..=256 entries, request chains that are well formed until
//! [`Mutation`]s bend them (addresses in holes, at the top of the address space or on the
//! rings themselves, odd lengths, flipped directions, loops, next indexes past the table,
//! INDIRECT flags inside chains and indirect tables), raw descriptor overrides, extra available-ring entries, wrapped
//! ring indexes and heads that are "in flight". Headers and discard/write-zeroes segments are
//! written where the chains point, so most chains parse and execution is reached.
//!
//! Guest memory is either a `GuestMemoryMmap` or vdpa-blk's own `IotlbMemory` (the production
//! type: mappings of one memfd with per-region read-only / write-only / read-write
//! permissions, one of them ending at the top of the 64-bit IOVA space).
//!
//! [`run`] then drains the queue the way `worker.rs` does (at most the queue size per round,
//! a head already in flight or out of range dropped without a used entry, EVENT_IDX
//! disable/enable rounds) and sends each chain through `blk::request::parse_into`, the
//! function the worker calls, into descriptor and request buffers reused across chains as the
//! worker reuses them. Accepted requests run on the reference executor (`blk::exec::execute`,
//! in-memory backend) which shares the status/id writers with the worker; rejected ones go to
//! `blk::exec::answer_rejected`, as in the worker.
//!
//! Invariants (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics (overflow checks and debug assertions are on in `cargo fuzz build`);
//! - a status address, whether of an accepted or a rejected chain, is the address of the
//!   chain's last descriptor, which is complete, device-writable and at least one byte long;
//!   the status byte written there is the one the outcome calls for;
//! - a rejected chain maps to a virtio status (IOERR or UNSUPP, used length 1) or to a drop
//!   (no status address, used length 0), and a chain whose status descriptor is usable is
//!   never dropped;
//! - an accepted request agrees with the chain (header, data buffers in order with the right
//!   direction and accessible with the permission they need, sector ranges inside the
//!   capacity, no writes on a read-only device, segment limits) and its used length does
//!   not exceed the chain's device-writable bytes;
//! - comparing all of guest memory before and after, every changed byte lies in the used
//!   ring, in a status byte that was written, or in a device-writable data buffer of an
//!   executed IN or GET_ID request.
//!
//! Running (stable toolchain; cargo-fuzz needs nightly flags, hence `RUSTC_BOOTSTRAP=1`), from
//! `vdpa-blk/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run descriptor_chain -- -max_total_time=60`.
//! The harness's own tests: `cargo test --release` in this directory.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use arbitrary::Arbitrary;
use vdpa_blk::blk::exec::{answer_rejected, execute, MemBackend};
use vdpa_blk::blk::request::{
    parse_into, ParseContext, Rejected, Request, RequestType, HEADER_SIZE, SECTOR_SIZE,
    SEGMENT_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vdpa_blk::iotlb::{IotlbMemory, Mapping};
use vdpa_blk::uapi::vduse::{VduseIotlbEntry, VDUSE_ACCESS_RO, VDUSE_ACCESS_RW, VDUSE_ACCESS_WO};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

// Guest memory layout (IOVA); every region is backed at `file_off` in one snapshot buffer.
/// Rings (descriptor table at 0, available and used rings after it) and indirect tables.
const QUEUE: u64 = 0;
const QUEUE_LEN: u64 = 0x1_0000;
/// Indirect tables are placed from here to the end of the queue region.
const INDIRECT: u64 = 0x2000;
/// Request headers, 16-byte slots.
const HEADERS: u64 = 0x1_0000;
const HEADERS_LEN: u64 = 0x1000;
/// Two adjacent data regions (different permissions in IOTLB mode), then a hole.
const DATA1: u64 = 0x2_0000;
const DATA1_LEN: u64 = 0x1_0000;
const DATA2: u64 = 0x3_0000;
const DATA2_LEN: u64 = 0x8000;
const DATA_LEN: u64 = DATA1_LEN + DATA2_LEN;
const DATA_SECTORS: u64 = DATA_LEN / SECTOR_SIZE;
/// Unmapped.
const HOLE: u64 = 0x3_8000;
const HOLE_LEN: u64 = 0x8000;
/// Status bytes.
const STATUS: u64 = 0x4_0000;
const STATUS_LEN: u64 = 0x1000;
/// A page at the top of the address space: ending at `u64::MAX` with IOTLB memory,
/// one page lower with `GuestMemoryMmap` (which cannot end a region there).
const TOP_LEN: u64 = 0x1000;
const TOP_IOTLB: u64 = u64::MAX - TOP_LEN + 1;
const TOP_MMAP: u64 = TOP_IOTLB - 0x1000;
/// The largest capacity a backing device can have (its size in bytes fits in a u64).
const MAX_CAPACITY: u64 = u64::MAX / SECTOR_SIZE;
/// In-memory backing size cap (requests past it fail with IOERR at execution).
const BACKEND_SECTORS: u64 = 256;
/// EVENT_IDX rounds per run (a driver can keep a device busy forever; the harness stops).
const MAX_ROUNDS: u32 = 4;

#[derive(Debug, Clone, Copy)]
struct Region {
    iova: u64,
    len: u64,
    file_off: u64,
}

const REGION_COUNT: usize = 6;
const TOTAL_LEN: u64 = QUEUE_LEN + HEADERS_LEN + DATA1_LEN + DATA2_LEN + STATUS_LEN + TOP_LEN;
static ZEROS: [u8; TOTAL_LEN as usize] = [0; TOTAL_LEN as usize];

fn regions(top: u64) -> [Region; REGION_COUNT] {
    let spans = [
        (QUEUE, QUEUE_LEN),
        (HEADERS, HEADERS_LEN),
        (DATA1, DATA1_LEN),
        (DATA2, DATA2_LEN),
        (STATUS, STATUS_LEN),
        (top, TOP_LEN),
    ];
    let mut off = 0;
    spans.map(|(iova, len)| {
        let r = Region {
            iova,
            len,
            file_off: off,
        };
        off += len;
        r
    })
}

// ---------------------------------------------------------------------------------------------
// The input.

/// One fuzz input.
#[derive(Arbitrary, Debug)]
pub struct FuzzInput {
    /// What the parser is told about the device.
    pub device: DeviceSpec,
    /// Which `GuestMemory` implementation and, for IOTLB memory, the permissions.
    pub memory: MemorySpec,
    /// Request chains, placed one after the other in the descriptor table.
    pub chains: Vec<ChainSpec>,
    /// Descriptors written over the table after the chains are placed.
    pub raw_descriptors: Vec<RawDescSpec>,
    /// Extra available-ring entries `(position, head)`, heads possibly past the table.
    pub extra_heads: Vec<(u8, u16)>,
    /// Heads the device considers in flight.
    pub in_flight: Vec<u16>,
    /// Available index written instead of the right one.
    pub avail_idx: Option<u16>,
}

/// Device and queue parameters.
#[derive(Arbitrary, Debug)]
pub struct DeviceSpec {
    /// Queue size `2 << (x % 8)`.
    pub queue_size_log2: u8,
    /// The parser's longest acceptable chain, if not the queue size.
    pub max_chain: Option<u16>,
    /// Capacity in sectors.
    pub capacity: CapacitySpec,
    /// Read-only device.
    pub read_only: bool,
    /// DISCARD offered.
    pub discard: bool,
    /// WRITE_ZEROES offered.
    pub write_zeroes: bool,
    /// `max_discard_sectors`, `max_discard_seg`, `max_write_zeroes_sectors`,
    /// `max_write_zeroes_seg`.
    pub limits: [u32; 4],
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Ring index where the driver and the device start (tests wrap-around).
    pub start_idx: u16,
    /// `used_event` in the available ring.
    pub used_event: u16,
    /// The GET_ID string.
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
}

/// Capacity in sectors.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CapacitySpec {
    /// A few sectors.
    Small(u8),
    /// Up to 64 Ki sectors.
    Medium(u16),
    /// The largest possible.
    Max,
    /// Anything a backing device could have.
    Raw(u64),
}

/// Guest memory implementation.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MemorySpec {
    /// `GuestMemoryMmap` (no permissions).
    Mmap,
    /// vdpa-blk's `IotlbMemory` with these permissions for headers, data 1, data 2, status
    /// and the top page (the queue region is read-write).
    Iotlb([PermSpec; 5]),
}

/// An IOTLB mapping's permission.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PermSpec {
    /// `VDUSE_ACCESS_RW`.
    ReadWrite,
    /// `VDUSE_ACCESS_RO`.
    ReadOnly,
    /// `VDUSE_ACCESS_WO`.
    WriteOnly,
}

/// A request chain: header, data, status, then mutations.
#[derive(Arbitrary, Debug)]
pub struct ChainSpec {
    /// Header slot (16 bytes each).
    pub header_slot: u8,
    /// Request type written in the header.
    pub request: ReqType,
    /// Sector written in the header.
    pub sector: SectorSpec,
    /// Data buffers (direction follows the request type).
    pub data: Vec<DataSpec>,
    /// Offset of the status byte in the status region.
    pub status_at: u16,
    /// Discard / write-zeroes segments written across the data buffers.
    pub segments: Vec<SegSpec>,
    /// Direct or indirect.
    pub placement: Placement,
    /// Changes to the chain's descriptors before placement.
    pub mutations: Vec<Mutation>,
}

/// Request type.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ReqType {
    /// IN.
    In,
    /// OUT.
    Out,
    /// FLUSH.
    Flush,
    /// GET_ID.
    GetId,
    /// DISCARD.
    Discard,
    /// WRITE_ZEROES.
    WriteZeroes,
    /// Anything.
    Raw(u32),
}

/// A sector number.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SectorSpec {
    /// Near the start.
    Low(u8),
    /// Capacity minus this (just inside or at the end).
    FromEnd(u8),
    /// Anything.
    Raw(u64),
}

/// A data buffer.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct DataSpec {
    /// Sector-aligned position in the data regions (may run into the hole).
    pub at: u16,
    /// Size in units that suit the request type (sectors, segments or bytes).
    pub size: u8,
}

/// A discard / write-zeroes segment.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct SegSpec {
    /// First sector.
    pub sector: SectorSpec,
    /// Sectors: small, or anything.
    pub num_sectors: Result<u8, u32>,
    /// Flags.
    pub flags: SegFlags,
}

/// Segment flags.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SegFlags {
    /// None.
    None,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
    Unmap,
    /// Anything.
    Raw(u32),
}

/// Where a chain goes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Placement {
    /// In the descriptor table, after skipping `skip % 4` free slots.
    Direct {
        /// Free slots to skip.
        skip: u8,
    },
    /// In an indirect table referenced by one descriptor of the table.
    Indirect {
        /// Free slots to skip.
        skip: u8,
        /// Table length in bytes written in the referencing descriptor, if not the right one.
        table_len: Option<u32>,
        /// Extra flags on the referencing descriptor (WRITE, NEXT, ...).
        head_flags: u16,
    },
}

/// A change to a chain's descriptor list (indexes wrap around the list).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mutation {
    /// Move a buffer.
    Addr(u8, AddrSpec),
    /// Resize a buffer.
    Len(u8, LenSpec),
    /// Flip device-writable.
    FlipWrite(u8),
    /// OR raw flags in (INDIRECT inside a chain, unknown bits).
    Flags(u8, u16),
    /// Point NEXT somewhere (loops, past the table).
    Next(u8, u16),
    /// Clear NEXT (the chain ends here).
    Cut(u8),
    /// Remove a descriptor.
    Remove(u8),
    /// Insert a descriptor.
    Insert(u8, AddrSpec, LenSpec, bool),
    /// Duplicate a descriptor.
    Duplicate(u8),
}

/// A guest address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AddrSpec {
    /// A header slot.
    Header(u8),
    /// Sector-aligned in the data regions (or past them).
    Data(u16),
    /// Any byte of the data regions (or past them).
    DataByte(u32),
    /// In the status region (or just past it).
    Status(u16),
    /// On the rings or indirect tables.
    Queue(u16),
    /// In the hole after the data regions.
    Hole(u16),
    /// In (or wrapping past) the top page of the address space.
    Top(u16),
    /// Anything.
    Raw(u64),
}

/// A buffer length.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LenSpec {
    /// Whole sectors.
    Sectors(u8),
    /// Whole segments.
    Segments(u8),
    /// Bytes.
    Bytes(u16),
    /// Anything.
    Raw(u32),
}

/// A descriptor written over the table.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RawDescSpec {
    /// Slot (modulo the queue size).
    pub slot: u16,
    /// Address.
    pub addr: AddrSpec,
    /// Length.
    pub len: LenSpec,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl SectorSpec {
    fn resolve(self, capacity: u64) -> u64 {
        match self {
            SectorSpec::Low(x) => u64::from(x),
            SectorSpec::FromEnd(x) => capacity.saturating_sub(u64::from(x)),
            SectorSpec::Raw(x) => x,
        }
    }
}

impl AddrSpec {
    fn resolve(self, top: u64) -> u64 {
        match self {
            AddrSpec::Header(x) => HEADERS + u64::from(x) * 16,
            AddrSpec::Data(x) => DATA1 + u64::from(x) % (DATA_SECTORS + 16) * SECTOR_SIZE,
            AddrSpec::DataByte(x) => DATA1 + u64::from(x) % (DATA_LEN + 0x1000),
            AddrSpec::Status(x) => STATUS + u64::from(x) % (STATUS_LEN + 16),
            AddrSpec::Queue(x) => QUEUE + u64::from(x) % QUEUE_LEN,
            AddrSpec::Hole(x) => HOLE + u64::from(x) % HOLE_LEN,
            // Wrapping on purpose: addresses past the top wrap to the start of the space.
            AddrSpec::Top(x) => top.wrapping_add(u64::from(x) % (TOP_LEN + 64)),
            AddrSpec::Raw(x) => x,
        }
    }
}

impl LenSpec {
    fn resolve(self) -> u32 {
        match self {
            LenSpec::Sectors(x) => u32::from(x) * SECTOR_SIZE as u32,
            LenSpec::Segments(x) => u32::from(x) * SEGMENT_SIZE,
            LenSpec::Bytes(x) => u32::from(x),
            LenSpec::Raw(x) => x,
        }
    }
}

impl ReqType {
    fn raw(self) -> u32 {
        match self {
            ReqType::In => VIRTIO_BLK_T_IN,
            ReqType::Out => VIRTIO_BLK_T_OUT,
            ReqType::Flush => VIRTIO_BLK_T_FLUSH,
            ReqType::GetId => VIRTIO_BLK_T_GET_ID,
            ReqType::Discard => VIRTIO_BLK_T_DISCARD,
            ReqType::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            ReqType::Raw(t) => t,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Guest memory.

/// Guest memory plus driver-side access that ignores the device's permissions.
trait Arena {
    type Mem: GuestMemory;
    fn mem(&self) -> &Self::Mem;
    fn regions(&self) -> &[Region; REGION_COUNT];
    /// Raw bytes of every region, indexed by `Region::file_off` (`buf` is `TOTAL_LEN` long).
    fn snapshot(&self, buf: &mut [u8]);
    /// Writes `bytes` at `file_off` of the backing.
    fn write_backing(&self, file_off: u64, bytes: &[u8]);
    /// Reads one byte at `file_off` of the backing.
    fn read_backing(&self, file_off: u64) -> u8;

    /// The driver writes `bytes` at `iova`; bytes outside the regions are lost.
    fn poke(&self, iova: u64, bytes: &[u8]) {
        // u128: a region may end at 2^64.
        let (a, b) = (u128::from(iova), u128::from(iova) + bytes.len() as u128);
        for r in self.regions() {
            let (ra, rb) = (u128::from(r.iova), u128::from(r.iova) + u128::from(r.len));
            let (start, end) = (a.max(ra), b.min(rb));
            if start >= end {
                continue;
            }
            let off = r.file_off + (start - ra) as u64;
            self.write_backing(off, &bytes[(start - a) as usize..(end - a) as usize]);
        }
    }

    /// The driver reads the byte at `iova`.
    fn peek(&self, iova: u64) -> Option<u8> {
        let r = self
            .regions()
            .iter()
            .find(|r| iova >= r.iova && iova - r.iova < r.len)?;
        Some(self.read_backing(r.file_off + (iova - r.iova)))
    }

    /// The IOVA of snapshot offset `off`.
    fn iova_of(&self, off: u64) -> u64 {
        let r = self
            .regions()
            .iter()
            .find(|r| off >= r.file_off && off - r.file_off < r.len)
            .expect("snapshot offsets lie in a region");
        r.iova + (off - r.file_off)
    }
}

struct MmapArena {
    mem: GuestMemoryMmap,
    regions: [Region; REGION_COUNT],
}

impl MmapArena {
    /// The thread's guest memory, zeroed (mapped once: fresh mappings cost page faults).
    fn new() -> Self {
        thread_local! {
            static MEM: GuestMemoryMmap = {
                let ranges: Vec<(GuestAddress, usize)> = regions(TOP_MMAP)
                    .iter()
                    .map(|r| (GuestAddress(r.iova), r.len as usize))
                    .collect();
                GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
            };
        }
        let regions = regions(TOP_MMAP);
        let mem = MEM.with(|m| m.clone());
        for r in &regions {
            mem.write_slice(&ZEROS[..r.len as usize], GuestAddress(r.iova))
                .expect("zero region");
        }
        MmapArena { mem, regions }
    }

    fn at(&self, file_off: u64) -> GuestAddress {
        let r = self
            .regions
            .iter()
            .find(|r| file_off >= r.file_off && file_off - r.file_off < r.len)
            .expect("offset in a region");
        GuestAddress(r.iova + (file_off - r.file_off))
    }
}

impl Arena for MmapArena {
    type Mem = GuestMemoryMmap;
    fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }
    fn regions(&self) -> &[Region; REGION_COUNT] {
        &self.regions
    }
    fn snapshot(&self, buf: &mut [u8]) {
        for r in &self.regions {
            let at = r.file_off as usize;
            self.mem
                .read_slice(&mut buf[at..at + r.len as usize], GuestAddress(r.iova))
                .expect("region readable");
        }
    }
    fn write_backing(&self, file_off: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, self.at(file_off))
            .expect("poke inside one region");
    }
    fn read_backing(&self, file_off: u64) -> u8 {
        self.mem
            .read_obj(self.at(file_off))
            .expect("peek in a region")
    }
}

struct IotlbArena {
    mem: IotlbMemory,
    file: File,
    regions: [Region; REGION_COUNT],
}

fn memfd() -> File {
    let name = c"vdpa-blk-fuzz";
    // SAFETY: a valid C string; the result is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

impl IotlbArena {
    fn new(perms: [PermSpec; 5]) -> Self {
        thread_local! {
            static FILE: File = memfd();
        }
        let file = FILE.with(|f| f.try_clone()).expect("dup memfd");
        file.write_all_at(&ZEROS, 0).expect("zero memfd");
        let regions = regions(TOP_IOTLB);
        let mut mem = IotlbMemory::new();
        let access = [
            PermSpec::ReadWrite,
            perms[0],
            perms[1],
            perms[2],
            perms[3],
            perms[4],
        ];
        for (r, p) in regions.iter().zip(access) {
            let entry = VduseIotlbEntry {
                offset: r.file_off,
                start: r.iova,
                last: r.iova + (r.len - 1),
                perm: match p {
                    PermSpec::ReadWrite => VDUSE_ACCESS_RW,
                    PermSpec::ReadOnly => VDUSE_ACCESS_RO,
                    PermSpec::WriteOnly => VDUSE_ACCESS_WO,
                },
                padding: [0; 7],
            };
            let mapping =
                Mapping::map(&entry, file.try_clone().expect("dup memfd")).expect("map memfd");
            mem = mem.with_mapping(mapping);
        }
        IotlbArena { mem, file, regions }
    }
}

impl Arena for IotlbArena {
    type Mem = IotlbMemory;
    fn mem(&self) -> &IotlbMemory {
        &self.mem
    }
    fn regions(&self) -> &[Region; REGION_COUNT] {
        &self.regions
    }
    fn snapshot(&self, buf: &mut [u8]) {
        self.file.read_exact_at(buf, 0).expect("read memfd");
    }
    fn write_backing(&self, file_off: u64, bytes: &[u8]) {
        self.file
            .write_all_at(bytes, file_off)
            .expect("write memfd");
    }
    fn read_backing(&self, file_off: u64) -> u8 {
        let mut b = [0u8];
        self.file
            .read_exact_at(&mut b, file_off)
            .expect("read memfd");
        b[0]
    }
}

// ---------------------------------------------------------------------------------------------
// Laying out the queue.

#[derive(Debug, Clone, Copy)]
enum NextMode {
    /// The following descriptor of the list (none after the last).
    Follow,
    /// No NEXT flag.
    Stop,
    /// NEXT to this index.
    Raw(u16),
}

#[derive(Debug, Clone, Copy)]
struct Proto {
    addr: u64,
    len: u32,
    write: bool,
    flags: u16,
    next: NextMode,
}

impl Proto {
    fn new(addr: u64, len: u32, write: bool) -> Self {
        Proto {
            addr,
            len,
            write,
            flags: 0,
            next: NextMode::Follow,
        }
    }
}

fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// The descriptors of a chain, before mutations.
fn chain_protos<A: Arena>(arena: &A, spec: &ChainSpec, capacity: u64) -> Vec<Proto> {
    let header_addr = HEADERS + u64::from(spec.header_slot) * 16;
    let mut header = [0u8; HEADER_SIZE as usize];
    header[..4].copy_from_slice(&spec.request.raw().to_le_bytes());
    header[8..].copy_from_slice(&spec.sector.resolve(capacity).to_le_bytes());
    arena.poke(header_addr, &header);

    let mut protos = vec![Proto::new(header_addr, HEADER_SIZE, false)];
    let device_writes = matches!(spec.request, ReqType::In | ReqType::GetId);
    for d in &spec.data {
        let addr = DATA1 + u64::from(d.at) % DATA_SECTORS * SECTOR_SIZE;
        let len = match spec.request {
            ReqType::In | ReqType::Out => u32::from(d.size % 9) * SECTOR_SIZE as u32,
            ReqType::Discard | ReqType::WriteZeroes => u32::from(d.size % 5) * SEGMENT_SIZE,
            ReqType::Flush | ReqType::GetId => u32::from(d.size),
            ReqType::Raw(_) => u32::from(d.size) * SEGMENT_SIZE,
        };
        protos.push(Proto::new(addr, len, device_writes));
    }
    protos.push(Proto::new(
        STATUS + u64::from(spec.status_at) % STATUS_LEN,
        1,
        true,
    ));

    // Segments go across the data buffers, in chain order.
    if !spec.segments.is_empty() {
        let mut bytes = Vec::with_capacity(spec.segments.len() * SEGMENT_SIZE as usize);
        for s in &spec.segments {
            bytes.extend_from_slice(&s.sector.resolve(capacity).to_le_bytes());
            let n = match s.num_sectors {
                Ok(n) => u32::from(n),
                Err(n) => n,
            };
            bytes.extend_from_slice(&n.to_le_bytes());
            let flags = match s.flags {
                SegFlags::None => 0,
                SegFlags::Unmap => 1,
                SegFlags::Raw(f) => f,
            };
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        let mut rest = &bytes[..];
        for p in &protos[1..protos.len() - 1] {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(p.len as usize);
            arena.poke(p.addr, &rest[..n]);
            rest = &rest[n..];
        }
    }
    protos
}

fn mutate(protos: &mut Vec<Proto>, m: Mutation, top: u64) {
    const MAX_CHAIN: usize = 300;
    let pick = |i: u8, len: usize| usize::from(i) % len;
    if let Mutation::Insert(i, addr, len, write) = m {
        if protos.len() < MAX_CHAIN {
            let at = usize::from(i) % (protos.len() + 1);
            protos.insert(at, Proto::new(addr.resolve(top), len.resolve(), write));
        }
        return;
    }
    if protos.is_empty() {
        return;
    }
    match m {
        Mutation::Addr(i, a) => {
            let i = pick(i, protos.len());
            protos[i].addr = a.resolve(top);
        }
        Mutation::Len(i, l) => {
            let i = pick(i, protos.len());
            protos[i].len = l.resolve();
        }
        Mutation::FlipWrite(i) => {
            let i = pick(i, protos.len());
            protos[i].write = !protos[i].write;
        }
        Mutation::Flags(i, f) => {
            let i = pick(i, protos.len());
            protos[i].flags |= f;
        }
        Mutation::Next(i, n) => {
            let i = pick(i, protos.len());
            protos[i].next = NextMode::Raw(n);
        }
        Mutation::Cut(i) => {
            let i = pick(i, protos.len());
            protos[i].next = NextMode::Stop;
        }
        Mutation::Remove(i) => {
            let i = pick(i, protos.len());
            protos.remove(i);
        }
        Mutation::Duplicate(i) => {
            if protos.len() < MAX_CHAIN {
                let i = pick(i, protos.len());
                protos.insert(i, protos[i]);
            }
        }
        Mutation::Insert(..) => unreachable!("handled above"),
    }
}

/// Encodes `protos` as a table whose entry `i` is `protos[i]`, `Follow` meaning `i + 1`.
fn encode(protos: &[Proto], base_index: u16) -> Vec<RawDescriptor> {
    protos
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut flags = p.flags & !F_NEXT;
            if p.write {
                flags |= F_WRITE;
            }
            let last = i + 1 == protos.len();
            let next = match p.next {
                NextMode::Follow if !last => {
                    flags |= F_NEXT;
                    base_index.wrapping_add(i as u16 + 1)
                }
                NextMode::Follow | NextMode::Stop => 0,
                NextMode::Raw(n) => {
                    flags |= F_NEXT;
                    n
                }
            };
            raw_desc(p.addr, p.len, flags, next)
        })
        .collect()
}

fn write_descs<A: Arena>(arena: &A, table: u64, first: u16, descs: &[RawDescriptor]) {
    for (i, d) in descs.iter().enumerate() {
        let at = table + (u64::from(first) + i as u64) * 16;
        arena.poke(at, vm_memory::ByteValued::as_slice(d));
    }
}

// ---------------------------------------------------------------------------------------------
// Running and checking.

fn writable_bytes(walk: &[Descriptor]) -> u64 {
    walk.iter()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum()
}

/// The chain as virtio-queue yields it is complete: it ends without NEXT within the limit.
fn complete(walk: &[Descriptor], max_chain: u16) -> bool {
    walk.last().is_some_and(|d| !d.has_next()) && walk.len() <= usize::from(max_chain)
}

fn check_status_descriptor(walk: &[Descriptor], ctx: &ParseContext, status_addr: GuestAddress) {
    assert!(
        complete(walk, ctx.queue_size),
        "status address on an incomplete chain"
    );
    assert!(walk.len() >= 2, "status address on a one-descriptor chain");
    let last = walk.last().expect("complete chains are not empty");
    assert!(
        last.is_write_only(),
        "status written into a device-readable descriptor"
    );
    assert!(last.len() >= 1, "status written into an empty descriptor");
    assert_eq!(
        status_addr,
        last.addr(),
        "status address outside the status descriptor"
    );
}

fn check_rejected<M: GuestMemory>(
    mem: &M,
    ctx: &ParseContext,
    head: u16,
    walk: &[Descriptor],
    rej: &Rejected,
) {
    assert_eq!(rej.head_index, head);
    let status = rej.error.status();
    assert!(
        matches!(
            status,
            None | Some(VIRTIO_BLK_S_IOERR | VIRTIO_BLK_S_UNSUPP)
        ),
        "{:?} maps to status {status:?}",
        rej.error
    );
    if let Some(addr) = rej.status_addr {
        assert!(
            status.is_some(),
            "{:?}: a dropped chain has a status address",
            rej.error
        );
        check_status_descriptor(walk, ctx, addr);
        assert!(mem.check_range(addr, 1, Permissions::Write));
    }
    // A usable status descriptor means an answer, never a drop.
    let usable = complete(walk, ctx.queue_size)
        && walk.len() >= 2
        && walk.last().is_some_and(|d| {
            d.is_write_only() && d.len() >= 1 && mem.check_range(d.addr(), 1, Permissions::Write)
        });
    if usable {
        assert!(
            status.is_some() && rej.status_addr.is_some(),
            "{:?}: chain dropped although its status descriptor is usable",
            rej.error
        );
    }
}

fn check_accepted<M: GuestMemory>(
    mem: &M,
    ctx: &ParseContext,
    head: u16,
    walk: &[Descriptor],
    req: &Request,
) {
    assert_eq!(req.head_index, head);
    check_status_descriptor(walk, ctx, req.status_addr);
    let first = walk[0];
    assert!(!first.is_write_only(), "accepted a write-only header");
    assert!(first.len() >= HEADER_SIZE, "accepted a short header");
    let mut hdr = [0u8; HEADER_SIZE as usize];
    mem.read_slice(&mut hdr, first.addr())
        .expect("accepted header is readable");
    let type_ = u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..].try_into().expect("8 bytes"));
    let expected_type = match req.request_type {
        RequestType::In => VIRTIO_BLK_T_IN,
        RequestType::Out => VIRTIO_BLK_T_OUT,
        RequestType::Flush => VIRTIO_BLK_T_FLUSH,
        RequestType::GetId => VIRTIO_BLK_T_GET_ID,
        RequestType::Discard => VIRTIO_BLK_T_DISCARD,
        RequestType::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
    };
    assert_eq!(type_, expected_type);
    assert_eq!(sector, req.sector);

    let middle = &walk[1..walk.len() - 1];
    let device_writes = matches!(req.request_type, RequestType::In | RequestType::GetId);
    if req.request_type == RequestType::Flush {
        assert!(req.data.is_empty() && req.data_len == 0);
    } else {
        let expected: Vec<(GuestAddress, u32)> = middle
            .iter()
            .filter(|d| d.len() > 0)
            .map(|d| (d.addr(), d.len()))
            .collect();
        assert_eq!(req.data, expected, "data buffers differ from the chain");
        let total: u64 = middle.iter().map(|d| u64::from(d.len())).sum();
        assert_eq!(u64::from(req.data_len), total);
        for d in middle {
            assert_eq!(
                d.is_write_only(),
                device_writes,
                "data buffer with the wrong direction"
            );
        }
        let access = if device_writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        for &(addr, len) in &req.data {
            assert!(
                mem.check_range(addr, len as usize, access),
                "accepted buffer {addr:?}+{len} is not accessible"
            );
        }
    }
    match req.request_type {
        RequestType::In | RequestType::Out => {
            assert_eq!(u64::from(req.data_len) % SECTOR_SIZE, 0);
            let end = req
                .sector
                .checked_add(u64::from(req.data_len) / SECTOR_SIZE);
            assert!(
                end.is_some_and(|e| e <= ctx.capacity),
                "request past capacity"
            );
            assert!(!(ctx.read_only && req.request_type == RequestType::Out));
        }
        RequestType::Flush | RequestType::GetId => {}
        RequestType::Discard | RequestType::WriteZeroes => {
            let discard = req.request_type == RequestType::Discard;
            assert!(if discard {
                ctx.discard
            } else {
                ctx.write_zeroes
            });
            assert!(!ctx.read_only);
            let (max_seg, max_sectors) = if discard {
                (ctx.max_discard_seg, ctx.max_discard_sectors)
            } else {
                (ctx.max_write_zeroes_seg, ctx.max_write_zeroes_sectors)
            };
            assert!(!req.segments.is_empty());
            assert_eq!(
                req.segments.len() as u64,
                u64::from(req.data_len / SEGMENT_SIZE)
            );
            assert_eq!(req.data_len % SEGMENT_SIZE, 0);
            assert!(req.segments.len() as u64 <= u64::from(max_seg));
            for s in &req.segments {
                assert!(s.num_sectors <= max_sectors);
                let end = s.sector.checked_add(u64::from(s.num_sectors));
                assert!(
                    end.is_some_and(|e| e <= ctx.capacity),
                    "segment past capacity"
                );
                assert!(!(discard && s.unmap), "discard with UNMAP accepted");
            }
        }
    }
    assert!(
        u64::from(req.used_len_ok()) <= writable_bytes(walk),
        "used length {} exceeds the chain's {} writable bytes",
        req.used_len_ok(),
        writable_bytes(walk)
    );
}

fn type_index(t: RequestType) -> usize {
    match t {
        RequestType::In => 0,
        RequestType::Out => 1,
        RequestType::Flush => 2,
        RequestType::GetId => 3,
        RequestType::Discard => 4,
        RequestType::WriteZeroes => 5,
    }
}

fn queue_size(dev: &DeviceSpec) -> u16 {
    2 << (dev.queue_size_log2 % 8)
}

/// What happened to the chains of one run (for tests and corpus statistics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Requests executed, by type: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES.
    pub executed: [u32; 6],
    /// Rejected chains answered with a status (IOERR or UNSUPP).
    pub answered: u32,
    /// Rejected chains dropped (used length 0).
    pub dropped: u32,
    /// Chains whose head was in flight or out of range (no used entry).
    pub skipped: u32,
}

/// Runs one input (see the crate documentation); panics when an invariant does not hold.
pub fn run(input: &FuzzInput) -> Outcome {
    match input.memory {
        MemorySpec::Mmap => drive(&MmapArena::new(), input),
        MemorySpec::Iotlb(perms) => drive(&IotlbArena::new(perms), input),
    }
}

fn drive<A: Arena>(arena: &A, input: &FuzzInput) -> Outcome {
    let dev = &input.device;
    let size = queue_size(dev);
    let top = arena.regions()[REGION_COUNT - 1].iova;
    let capacity = match dev.capacity {
        CapacitySpec::Small(x) => u64::from(x),
        CapacitySpec::Medium(x) => u64::from(x),
        CapacitySpec::Max => MAX_CAPACITY,
        CapacitySpec::Raw(x) => x % (MAX_CAPACITY + 1),
    };
    let ctx = ParseContext {
        capacity,
        read_only: dev.read_only,
        queue_size: dev.max_chain.unwrap_or(size),
        discard: dev.discard,
        write_zeroes: dev.write_zeroes,
        max_discard_sectors: dev.limits[0],
        max_discard_seg: dev.limits[1],
        max_write_zeroes_sectors: dev.limits[2],
        max_write_zeroes_seg: dev.limits[3],
    };

    let mem = arena.mem();
    let mock = MockSplitQueue::create(mem, GuestAddress(QUEUE), size);
    let table = mock.desc_table_addr().0;
    let avail = mock.avail_addr().0;
    let used = mock.used_addr().0;
    let used_end = used + 4 + 8 * u64::from(size) + 2;
    assert!(used_end <= INDIRECT, "rings overlap the indirect tables");

    // Place the chains.
    let mut heads: Vec<u16> = Vec::new();
    let mut slot: u16 = 0;
    let mut indirect = INDIRECT;
    for spec in &input.chains {
        let mut protos = chain_protos(arena, spec, capacity);
        for m in &spec.mutations {
            mutate(&mut protos, *m, top);
        }
        if protos.is_empty() {
            continue;
        }
        match spec.placement {
            Placement::Direct { skip } => {
                let first = slot.saturating_add(u16::from(skip % 4));
                if usize::from(first) + protos.len() > usize::from(size) {
                    continue;
                }
                write_descs(arena, table, first, &encode(&protos, first));
                heads.push(first);
                slot = first + protos.len() as u16;
            }
            Placement::Indirect {
                skip,
                table_len,
                head_flags,
            } => {
                let first = slot.saturating_add(u16::from(skip % 4));
                let bytes = protos.len() as u64 * 16;
                if first >= size || indirect + bytes > QUEUE_LEN {
                    continue;
                }
                write_descs(arena, indirect, 0, &encode(&protos, 0));
                let len = table_len.unwrap_or(bytes as u32);
                let flags = F_INDIRECT | head_flags;
                let head = raw_desc(indirect, len, flags, first.wrapping_add(1));
                write_descs(arena, table, first, &[head]);
                heads.push(first);
                slot = first + 1;
                indirect += bytes;
            }
        }
    }
    for r in &input.raw_descriptors {
        let d = raw_desc(r.addr.resolve(top), r.len.resolve(), r.flags, r.next);
        write_descs(arena, table, r.slot % size, &[d]);
    }
    for &(pos, head) in &input.extra_heads {
        let at = usize::from(pos) % (heads.len() + 1);
        heads.insert(at, head);
    }
    heads.truncate(usize::from(size));

    // The available ring, starting at `start_idx` (indexes wrap).
    let start = dev.start_idx;
    for (i, h) in heads.iter().enumerate() {
        let pos = start.wrapping_add(i as u16) % size;
        arena.poke(avail + 4 + 2 * u64::from(pos), &h.to_le_bytes());
    }
    let avail_idx = input
        .avail_idx
        .unwrap_or(start.wrapping_add(heads.len() as u16));
    arena.poke(avail + 2, &avail_idx.to_le_bytes());
    arena.poke(
        avail + 4 + 2 * u64::from(size),
        &dev.used_event.to_le_bytes(),
    );
    arena.poke(used + 2, &start.to_le_bytes());

    // Reused buffers: fresh ones cost a page fault per page.
    thread_local! {
        static SNAPSHOTS: RefCell<(Vec<u8>, Vec<u8>)> =
            RefCell::new((vec![0; TOTAL_LEN as usize], vec![0; TOTAL_LEN as usize]));
    }
    SNAPSHOTS.with(|s| {
        let (before, after) = &mut *s.borrow_mut();
        arena.snapshot(before);
        let (allowed, outcome) = process(arena, input, &ctx, &mock, (used, used_end));
        arena.snapshot(after);
        check_changes(arena, before, after, &allowed);
        outcome
    })
}

/// Drains the queue as worker.rs `process_available` does, checking every outcome. Returns
/// the guest ranges the device may have changed: the used ring, the status bytes written,
/// the device-writable data of executed requests.
fn process<A: Arena>(
    arena: &A,
    input: &FuzzInput,
    ctx: &ParseContext,
    mock: &MockSplitQueue<'_, A::Mem>,
    (used, used_end): (u64, u64),
) -> (Vec<(u128, u128)>, Outcome) {
    let mut outcome = Outcome::default();
    let dev = &input.device;
    let mem = arena.mem();
    let (start, size) = (dev.start_idx, queue_size(dev));
    let capacity = ctx.capacity;
    let mut q: Queue = mock.create_queue().expect("valid queue");
    q.set_event_idx(dev.event_idx);
    q.set_next_avail(start);
    q.set_next_used(start);
    let mut in_flight = vec![false; usize::from(size)];
    for &h in &input.in_flight {
        if let Some(f) = in_flight.get_mut(usize::from(h)) {
            *f = true;
        }
    }
    let mut backend = MemBackend::new((capacity.min(BACKEND_SECTORS) * SECTOR_SIZE) as usize);
    let id = dev.serial;

    let mut allowed: Vec<(u128, u128)> = vec![(used.into(), used_end.into())];
    let span = |addr: u64, len: u32| (u128::from(addr), u128::from(addr) + u128::from(len));

    let mut descs = Vec::new();
    let mut reused = Request::default();
    let mut rounds = 0;
    loop {
        rounds += 1;
        if q.event_idx_enabled() {
            let _ = q.disable_notification(mem);
        }
        let mut popped = 0u32;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            popped += 1;
            let head = chain.head_index();
            if in_flight.get(usize::from(head)).copied().unwrap_or(true) {
                // Dropped without a used entry: never completed twice.
                outcome.skipped += 1;
                continue;
            }
            let walk: Vec<Descriptor> = chain
                .clone()
                .take(usize::from(ctx.queue_size) + 1)
                .collect();
            // The worker parses into buffers reused across chains: so does the harness.
            let parsed = parse_into(chain, ctx, &mut descs, &mut reused).map(|()| &reused);
            let used_len = match parsed {
                Ok(req) => {
                    check_accepted(mem, ctx, head, &walk, req);
                    outcome.executed[type_index(req.request_type)] += 1;
                    let status_addr = req.status_addr.0;
                    if matches!(req.request_type, RequestType::In | RequestType::GetId) {
                        for &(addr, len) in &req.data {
                            allowed.push(span(addr.0, len));
                        }
                    }
                    allowed.push(span(status_addr, 1));
                    // The status byte was checked writable: the answer cannot fail.
                    let c = execute(mem, req, &mut backend, &id)
                        .expect("status byte of an accepted request not writable");
                    assert!(
                        c.status == VIRTIO_BLK_S_OK || c.status == VIRTIO_BLK_S_IOERR,
                        "executed request answered {}",
                        c.status
                    );
                    assert_eq!(arena.peek(status_addr), Some(c.status));
                    assert!(u64::from(c.used_len) <= writable_bytes(&walk));
                    c.used_len
                }
                Err(rej) => {
                    check_rejected(mem, ctx, head, &walk, &rej);
                    let used_len = answer_rejected(mem, &rej);
                    match rej.status_addr {
                        Some(addr) => {
                            outcome.answered += 1;
                            assert_eq!(used_len, 1, "checked status byte not written");
                            allowed.push(span(addr.0, 1));
                            assert_eq!(arena.peek(addr.0), rej.error.status());
                        }
                        None => {
                            outcome.dropped += 1;
                            assert_eq!(used_len, 0, "answered without a status address");
                        }
                    }
                    used_len
                }
            };
            let _ = q.add_used(mem, head, used_len);
            if popped >= u32::from(q.size()) {
                break;
            }
        }
        if !q.event_idx_enabled() || rounds >= MAX_ROUNDS {
            break;
        }
        match q.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) | Err(_) => break,
        }
    }
    let _ = q.needs_notification(mem);
    (allowed, outcome)
}

/// Every byte that differs lies in an allowed range.
fn check_changes<A: Arena>(arena: &A, before: &[u8], after: &[u8], allowed: &[(u128, u128)]) {
    // Whole chunks compare with one memcmp; only changed chunks are looked at byte by byte.
    const CHUNK: usize = 512;
    for (c, (b, a)) in before.chunks(CHUNK).zip(after.chunks(CHUNK)).enumerate() {
        if b == a {
            continue;
        }
        for (i, (b, a)) in b.iter().zip(a).enumerate() {
            if b == a {
                continue;
            }
            let iova = arena.iova_of((c * CHUNK + i) as u64);
            let at = u128::from(iova);
            assert!(
                allowed.iter().any(|&(s, e)| s <= at && at < e),
                "device changed guest byte {iova:#x} ({b:#04x} -> {a:#04x}) outside the used \
                 ring, the status bytes and the device-writable buffers"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The harness itself: well-formed inputs must reach execution, and the permission cases
    //! must come out as the parser documents. Run with `cargo test` in this directory.

    use super::*;

    fn device() -> DeviceSpec {
        DeviceSpec {
            queue_size_log2: 4, // 32 entries
            max_chain: None,
            capacity: CapacitySpec::Medium(2048),
            read_only: false,
            discard: true,
            write_zeroes: true,
            limits: [1024, 4, 1024, 4],
            event_idx: false,
            start_idx: 0,
            used_event: 0,
            serial: *b"vdpa-blk-fuzz-serial",
        }
    }

    fn chain(request: ReqType, size: u8, status_at: u16) -> ChainSpec {
        ChainSpec {
            header_slot: status_at as u8,
            request,
            sector: SectorSpec::Low(4),
            data: vec![DataSpec {
                at: status_at * 8,
                size,
            }],
            status_at,
            segments: vec![SegSpec {
                sector: SectorSpec::Low(8),
                num_sectors: Ok(8),
                flags: SegFlags::None,
            }],
            placement: Placement::Direct { skip: 0 },
            mutations: Vec::new(),
        }
    }

    fn input(memory: MemorySpec, chains: Vec<ChainSpec>) -> FuzzInput {
        FuzzInput {
            device: device(),
            memory,
            chains,
            raw_descriptors: Vec::new(),
            extra_heads: Vec::new(),
            in_flight: Vec::new(),
            avail_idx: None,
        }
    }

    fn every_type() -> Vec<ChainSpec> {
        vec![
            chain(ReqType::In, 2, 1),
            chain(ReqType::Out, 2, 2),
            chain(ReqType::Flush, 0, 3),
            chain(ReqType::GetId, 20, 4),
            chain(ReqType::Discard, 1, 5),
            chain(ReqType::WriteZeroes, 1, 6),
        ]
    }

    #[test]
    fn well_formed_chains_of_every_type_execute() {
        let rw = [PermSpec::ReadWrite; 5];
        for memory in [MemorySpec::Mmap, MemorySpec::Iotlb(rw)] {
            let o = run(&input(memory, every_type()));
            assert_eq!(o.executed, [1; 6], "{memory:?}: {o:?}");
            assert_eq!((o.answered, o.dropped, o.skipped), (0, 0, 0));
        }
    }

    #[test]
    fn indirect_and_wrapped_rings_execute() {
        let mut chains = every_type();
        for c in &mut chains {
            c.placement = Placement::Indirect {
                skip: 1,
                table_len: None,
                head_flags: 0,
            };
        }
        let mut i = input(MemorySpec::Mmap, chains);
        i.device.start_idx = u16::MAX - 2;
        i.device.event_idx = true;
        assert_eq!(run(&i).executed, [1; 6]);
    }

    #[test]
    fn permissions_decide_answer_or_drop() {
        use PermSpec::{ReadOnly, ReadWrite, WriteOnly};
        // Read-only status region: no usable status descriptor, every chain is dropped.
        let o = run(&input(
            MemorySpec::Iotlb([ReadWrite, ReadWrite, ReadWrite, ReadOnly, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.dropped), ([0; 6], 6));
        // Write-only headers: unreadable, every chain is answered with IOERR.
        let o = run(&input(
            MemorySpec::Iotlb([WriteOnly, ReadWrite, ReadWrite, ReadWrite, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.answered), ([0; 6], 6));
        // Read-only data: IN and GET_ID cannot write their buffers; the others execute.
        let o = run(&input(
            MemorySpec::Iotlb([ReadWrite, ReadOnly, ReadOnly, ReadWrite, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.answered), ([0, 1, 1, 0, 1, 1], 2));
    }

    #[test]
    fn in_flight_and_out_of_range_heads_get_no_used_entry() {
        let mut i = input(MemorySpec::Mmap, every_type());
        i.in_flight = vec![0];
        i.extra_heads = vec![(0, 200)];
        let o = run(&i);
        assert_eq!(o.skipped, 2);
        assert_eq!(o.executed, [0, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn status_byte_at_the_top_of_the_iova_space_is_answered() {
        // The first crash the fuzzer found, as a harness input.
        let mut c = chain(ReqType::Flush, 0, 1);
        c.mutations = vec![Mutation::Addr(1, AddrSpec::Top(0xfff))];
        let o = run(&input(MemorySpec::Iotlb([PermSpec::ReadWrite; 5]), vec![c]));
        assert_eq!(o.executed, [0, 0, 1, 0, 0, 0]);
    }

    /// Outcome totals over the local corpus:
    /// `cargo test --release -- --ignored --nocapture corpus_statistics`.
    #[test]
    #[ignore = "needs a local corpus in corpus/descriptor_chain"]
    fn corpus_statistics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/descriptor_chain");
        let mut total = Outcome::default();
        let mut inputs = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read input");
            let u = arbitrary::Unstructured::new(&data);
            let Ok(i) = FuzzInput::arbitrary_take_rest(u) else {
                continue;
            };
            let o = run(&i);
            inputs += 1;
            for (t, n) in total.executed.iter_mut().zip(o.executed) {
                *t += n;
            }
            total.answered += o.answered;
            total.dropped += o.dropped;
            total.skipped += o.skipped;
        }
        println!("{inputs} inputs: {total:?}");
    }
}
