//! Structure-aware fuzzing of vdpa-blk's descriptor-chain path.
//!
//! An input ([`FuzzInput`]) describes what a (possibly hostile) driver put in guest memory: a
//! split virtqueue of 2..=256 entries, request chains that are well formed until
//! [`Mutation`]s bend them (addresses in holes, at the top of the address space or on the
//! rings themselves, odd lengths, flipped directions, loops, next indexes past the table,
//! INDIRECT flags inside chains and indirect tables; and the framings a driver may choose
//! because a device must not assume any (virtio 1.2, 2.6.4.1): a header split over
//! descriptors, header and data in one descriptor, data and status in one, a status
//! descriptor longer than one byte, a device-readable descriptor after a device-writable one,
//! empty padding descriptors and chains longer than the parser's limit), raw descriptor
//! overrides, extra available-ring entries, wrapped or impossible ring indexes and heads that
//! are "in flight". Headers and discard/write-zeroes segments are written where the chains
//! point, so most chains parse and execution is reached.
//!
//! Guest memory is either a `GuestMemoryMmap` or vdpa-blk's own `IotlbMemory` (the production
//! type: mappings of one memfd with per-region read-only / write-only / read-write
//! permissions, one of them ending at the top of the 64-bit IOVA space).
//!
//! [`run`] then drives the worker's own drain, `vdpa_blk::worker::drain::Drain` (what
//! `worker.rs` calls on a kick and while polling), through a sink of the harness's, so what
//! the fuzzer finds is what the worker does. On a kick (`rearm`) the drain pops rounds of at
//! most the queue size, notifications disabled during a round and re-enabled after it,
//! another round while more chains arrived and the last one popped something; with
//! [`DeviceSpec::poll`] it is driven as the worker's polling loop drives it (notifications
//! off, drained without re-arming while chains are available, then once more re-armed). The
//! driver breaks the queue, and nothing more is popped, with an available index more than the
//! queue size ahead of the device's, a head already in flight or out of range (no used
//! entry), or a chain without a usable status byte (dropped, no used entry). The drain parses
//! each chain with `blk::request::parse_into` into buffers it reuses across chains.
//!
//! The harness's sink stands in for the worker's io_uring executor: heads of
//! [`FuzzInput::in_flight`] are in flight for it; it runs accepted requests on the reference
//! executor (`blk::exec::execute`, in-memory backend, sharing the status/id writers with the
//! worker) and answers rejected ones with the status the drain gives it
//! (`blk::exec::write_status`, as the worker's completions do), each with its status byte
//! and one used entry (the outcome's used length; 1 for an answer), and records what it saw.
//! With [`DeviceSpec::fault_in`] each fault-in the drain asks for "maps" something that does
//! not help, so every rejected chain is popped again as often as the drain allows. The oracle
//! runs in the sink, on each chain the moment the drain hands it over (re-walking it from the
//! ring position just popped: memory is as the drain parsed it), and over the whole drain
//! afterwards (the chain the queue broke on, parsed again, the indexes, the drain's counters).
//!
//! The oracle re-derives, from the descriptors virtio-queue yields for the chain and the
//! guest memory alone (never from the parser), what the chain must become (`Expected`): the
//! chain is a byte stream; the status is its last byte, the last byte of the last descriptor,
//! usable when the chain ends there (no NEXT), that descriptor is device-writable and
//! non-empty and the byte is writable memory; device-readable descriptors come before
//! device-writable ones; the header is the first 16 device-readable bytes; the data are the
//! bytes between the header and the status (device-writable for IN and GET_ID,
//! device-readable for OUT, DISCARD and WRITE_ZEROES, ignored by FLUSH), reported as the
//! non-empty parts of descriptors that hold them; a chain longer than the limit
//! (`ParseContext::max_chain`) is answered IOERR whatever it holds. A malformed chain has a
//! set of true errors (structure first: IOVA overflow, readable after writable, header; then
//! the type; then data direction and access; then lengths, capacity and segments), and the
//! parser's error must be one of them.
//!
//! Invariants (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics (overflow checks and debug assertions are on in `cargo fuzz build`);
//! - a chain the oracle finds valid is accepted as exactly the expected request (type,
//!   sector, data byte ranges in order, data length, segments, status address), and a chain
//!   it finds malformed is rejected with one of its errors;
//! - a status address, whether of an accepted or a rejected chain, is the last byte of the
//!   last descriptor of a complete chain, that descriptor device-writable and the byte
//!   writable memory; the status byte written there is the one the outcome calls for (an
//!   executed request OK or IOERR, a rejected one UNSUPP for an unsupported type or flags and
//!   IOERR otherwise);
//! - a chain whose status byte is usable is never dropped (too-long chains included), and
//!   one whose status byte is not usable is never answered;
//! - an accepted request is consistent on its own (buffers accessible with the permission
//!   they need, sector ranges inside the capacity, no writes on a read-only device, segment
//!   limits) and its used length does not exceed the chain's device-writable bytes;
//! - the drain stops exactly when the queue breaks (impossible available index, head in
//!   flight or out of range, chain dropped), otherwise it consumes every available chain, and
//!   every chain it completes has one used entry; a head in flight or out of range never
//!   reaches the sink's `start` or `answer`, nor one past the queue size its `in_flight`;
//! - a rejected chain is offered to fault-in once, or as often as `MAX_FAULT_RETRIES` allows
//!   when each fault-in maps something, and a parsed one never;
//! - the drain's counters (`QueueStats`: requests, errors, dropped, broken) add up to what
//!   the sink saw and the chain the queue broke on;
//! - comparing all of guest memory before and after, every changed byte lies in the used
//!   ring, in a status byte that was written, or in a device-writable data range of an
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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arbitrary::Arbitrary;
use vdpa_blk::blk::exec::{execute, write_status, MemBackend};
use vdpa_blk::blk::request::{
    parse_into, Error, ParseContext, Rejected, Request, RequestType, Segment, HEADER_SIZE,
    SECTOR_SIZE, SEGMENT_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vdpa_blk::iotlb::{IotlbMemory, Mapping};
use vdpa_blk::uapi::vduse::{VduseIotlbEntry, VDUSE_ACCESS_RO, VDUSE_ACCESS_RW, VDUSE_ACCESS_WO};
use vdpa_blk::worker::drain::{Drain, Sink, MAX_FAULT_RETRIES};
use vdpa_blk::worker::QueueStats;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
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
/// Longest chain the mutations build (longer than any queue: indirect tables may be).
const MAX_PROTOS: usize = 600;
/// Most bytes a [`Mutation::Join`] moves.
const MAX_JOIN_MOVE: u32 = 0x1_0000;

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
    /// Heads the device considers in flight (popping one breaks the queue).
    pub in_flight: Vec<u16>,
    /// Available index written instead of the right one (more than the queue size ahead of
    /// `start_idx` breaks the queue).
    pub avail_idx: Option<u16>,
}

/// Device and queue parameters.
#[derive(Arbitrary, Debug)]
pub struct DeviceSpec {
    /// Queue size `2 << (x % 8)`.
    pub queue_size_log2: u8,
    /// The parser's longest acceptable chain (`ParseContext::max_chain`), if not the queue
    /// size.
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
    /// The worker polls (`--poll-us`): the queue is drained without re-arming notifications
    /// while chains are available, then once more re-armed; otherwise as on a kick.
    pub poll: bool,
    /// Every fault-in the drain asks for maps something, but nothing that helps: each
    /// rejected chain is popped again `MAX_FAULT_RETRIES` times.
    pub fault_in: bool,
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
    /// Split a buffer in two adjacent descriptors at byte `1 + at % (len - 1)`: a header
    /// split over descriptors, data cut off sector boundaries, a status descriptor whose last
    /// byte is in the second half. The bytes stay where they are.
    Split(u8, u16),
    /// Join a descriptor and the following one into one descriptor with the second one's
    /// direction, moving the shorter one's bytes next to the longer one: the header in front
    /// of the data (header and data in one descriptor), the status after the data (data and
    /// status in one). Moves at most 64 KiB.
    Join(u8),
    /// Lengthen the last descriptor at its front: a status descriptor longer than one byte,
    /// its last byte (the status) where it was.
    WidenStatus(LenSpec),
    /// Insert a device-readable descriptor after the first device-writable one and before the
    /// last one (when the last one is the only device-writable one, a copy of it goes first).
    ReadableAfterWritable(u8, AddrSpec, LenSpec),
    /// Insert this many empty descriptors before a descriptor, with its direction: the
    /// request is the same, the chain longer (past `ParseContext::max_chain`, in an indirect
    /// table past the queue size).
    Pad(u8, u8),
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
    /// Reads `buf.len()` bytes at `file_off` of the backing (inside one region).
    fn read_backing(&self, file_off: u64, buf: &mut [u8]);

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
        let mut b = [0u8];
        self.read_backing(r.file_off + (iova - r.iova), &mut b);
        Some(b[0])
    }

    /// The driver reads `len` bytes at `iova`; bytes outside the regions read as 0.
    fn peek_range(&self, iova: u64, len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; len as usize];
        let (a, b) = (u128::from(iova), u128::from(iova) + u128::from(len));
        for r in self.regions() {
            let (ra, rb) = (u128::from(r.iova), u128::from(r.iova) + u128::from(r.len));
            let (start, end) = (a.max(ra), b.min(rb));
            if start >= end {
                continue;
            }
            let off = r.file_off + (start - ra) as u64;
            self.read_backing(off, &mut bytes[(start - a) as usize..(end - a) as usize]);
        }
        bytes
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
    fn read_backing(&self, file_off: u64, buf: &mut [u8]) {
        self.mem
            .read_slice(buf, self.at(file_off))
            .expect("peek inside one region");
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
    fn read_backing(&self, file_off: u64, buf: &mut [u8]) {
        self.file.read_exact_at(buf, file_off).expect("read memfd");
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

/// The driver copies `len` bytes from `from` to `to` (unmapped bytes read as 0 and are lost,
/// and so are bytes past the top of the address space).
fn copy_bytes<A: Arena>(arena: &A, from: u64, to: u64, len: u32) {
    arena.poke(to, &arena.peek_range(from, len));
}

fn mutate<A: Arena>(arena: &A, protos: &mut Vec<Proto>, m: Mutation, top: u64) {
    let pick = |i: u8, len: usize| usize::from(i) % len;
    if let Mutation::Insert(i, addr, len, write) = m {
        if protos.len() < MAX_PROTOS {
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
            if protos.len() < MAX_PROTOS {
                let i = pick(i, protos.len());
                protos.insert(i, protos[i]);
            }
        }
        Mutation::Split(i, at) => {
            let i = pick(i, protos.len());
            let p = protos[i];
            if p.len < 2 || protos.len() >= MAX_PROTOS {
                return;
            }
            let k = 1 + u32::from(at) % (p.len - 1);
            let second = Proto {
                addr: p.addr.wrapping_add(u64::from(k)),
                len: p.len - k,
                ..p
            };
            protos[i] = Proto {
                len: k,
                next: NextMode::Follow,
                ..p
            };
            protos.insert(i + 1, second);
        }
        Mutation::Join(i) => {
            if protos.len() < 2 {
                return;
            }
            let i = usize::from(i) % (protos.len() - 1);
            let (a, b) = (protos[i], protos[i + 1]);
            let Some(len) = a.len.checked_add(b.len) else {
                return;
            };
            let addr = if a.len <= b.len {
                // `a`'s bytes go right in front of `b`'s.
                if a.len > MAX_JOIN_MOVE {
                    return;
                }
                let at = b.addr.wrapping_sub(u64::from(a.len));
                copy_bytes(arena, a.addr, at, a.len);
                at
            } else {
                // `b`'s bytes go right after `a`'s.
                if b.len > MAX_JOIN_MOVE {
                    return;
                }
                copy_bytes(arena, b.addr, a.addr.wrapping_add(u64::from(a.len)), b.len);
                a.addr
            };
            protos[i] = Proto {
                addr,
                len,
                write: b.write,
                flags: a.flags | b.flags,
                next: b.next,
            };
            protos.remove(i + 1);
        }
        Mutation::WidenStatus(l) => {
            let last = protos.last_mut().expect("not empty");
            let extra = l.resolve();
            if let Some(len) = last.len.checked_add(extra) {
                last.addr = last.addr.wrapping_sub(u64::from(extra));
                last.len = len;
            }
        }
        Mutation::ReadableAfterWritable(at, addr, len) => {
            let Some(mut w) = protos.iter().position(|p| p.write) else {
                return;
            };
            if protos.len() + 2 > MAX_PROTOS {
                return;
            }
            let n = protos.len();
            if w == n - 1 {
                let copy = Proto {
                    next: NextMode::Follow,
                    ..protos[n - 1]
                };
                protos.insert(n - 1, copy);
                w = n - 1;
            }
            // Somewhere after the first device-writable descriptor, before the last one.
            let n = protos.len();
            let pos = w + 1 + usize::from(at) % (n - 1 - w);
            protos.insert(pos, Proto::new(addr.resolve(top), len.resolve(), false));
        }
        Mutation::Pad(i, count) => {
            let i = pick(i, protos.len());
            let count = usize::from(count).min(MAX_PROTOS.saturating_sub(protos.len()));
            let pad = Proto::new(protos[i].addr, 0, protos[i].write);
            protos.splice(i..i, std::iter::repeat_n(pad, count));
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

/// What the parser must make of a chain, derived from its walk and guest memory alone.
#[derive(Debug)]
enum Expected {
    /// No usable status byte: rejected with one of these errors and dropped.
    Drop(Vec<Error>),
    /// Rejected with one of these errors and answered at this status byte.
    Answer(GuestAddress, Vec<Error>),
    /// Accepted as this request.
    Accept(Request),
}

/// The non-empty parts of the descriptors that hold bytes `[from, to)` of the chain's byte
/// stream (the concatenation of its buffers), in order, with their direction.
fn stream_ranges(walk: &[Descriptor], from: u64, to: u64) -> Vec<(GuestAddress, u32, bool)> {
    let mut ranges = Vec::new();
    let mut start = 0u64;
    for d in walk {
        let end = start + u64::from(d.len());
        let (a, b) = (start.max(from), end.min(to));
        if a < b {
            let addr = GuestAddress(d.addr().0.wrapping_add(a - start));
            ranges.push((addr, (b - a) as u32, d.is_write_only()));
        }
        start = end;
    }
    ranges
}

/// The virtio-blk status an error is answered with (`None`: dropped), as the spec says:
/// UNSUPP for an unsupported request (type or segment flags), IOERR for any other error.
fn status_of(e: &Error) -> Option<u8> {
    match e {
        Error::EmptyChain
        | Error::ChainTruncated
        | Error::StatusNotWritable
        | Error::StatusTooShort => None,
        Error::Unsupported(_) | Error::UnsupportedFlags(_) => Some(VIRTIO_BLK_S_UNSUPP),
        _ => Some(VIRTIO_BLK_S_IOERR),
    }
}

/// The oracle: re-derives from the chain walk (every descriptor virtio-queue yields, however
/// many) what the parser must return. See the crate documentation for the rules; where a
/// chain breaks several of them, every error found at the first level that fails is an
/// acceptable answer (the levels: status byte, length limit, structure, type, data, request).
fn expected<M: GuestMemory>(
    mem: &M,
    ctx: &ParseContext,
    head: u16,
    walk: &[Descriptor],
) -> Expected {
    let too_long = walk.len() > usize::from(ctx.max_chain);
    let mut errors = Vec::new();
    if too_long {
        errors.push(Error::ChainTooLong(ctx.max_chain));
    }

    // The status byte: the last byte of the chain.
    let Some(last) = walk.last() else {
        errors.push(Error::EmptyChain);
        return Expected::Drop(errors);
    };
    if last.has_next() {
        errors.push(Error::ChainTruncated);
        return Expected::Drop(errors);
    }
    if !last.is_write_only() {
        errors.push(Error::StatusNotWritable);
        return Expected::Drop(errors);
    }
    if last.len() == 0 {
        errors.push(Error::StatusTooShort);
        return Expected::Drop(errors);
    }
    let status = last
        .addr()
        .0
        .checked_add(u64::from(last.len()) - 1)
        .map(GuestAddress)
        .filter(|&a| mem.check_range(a, 1, Permissions::Write));
    let Some(status) = status else {
        errors.push(Error::InvalidAddress {
            addr: last.addr().0,
            len: last.len(),
        });
        return Expected::Drop(errors);
    };
    if too_long {
        return Expected::Answer(status, errors);
    }

    // Structure: every buffer inside the IOVA space, readable before writable, a header.
    for d in walk {
        if d.len() > 0 && d.addr().0.checked_add(u64::from(d.len()) - 1).is_none() {
            errors.push(Error::InvalidAddress {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    let overflow = !errors.is_empty();
    let first_writable = walk
        .iter()
        .position(|d| d.is_write_only())
        .expect("the last descriptor is device-writable");
    if walk[first_writable..].iter().any(|d| !d.is_write_only()) {
        errors.push(Error::ReadableAfterWritable);
    }
    let readable_len: u64 = walk[..first_writable]
        .iter()
        .map(|d| u64::from(d.len()))
        .sum();
    let mut hdr = [0u8; HEADER_SIZE as usize];
    if first_writable == 0 {
        errors.push(Error::WriteOnlyHeader);
    } else if readable_len < u64::from(HEADER_SIZE) {
        errors.push(Error::HeaderTooShort(readable_len as u32));
    } else if !overflow {
        // The header: the first 16 bytes, all in device-readable descriptors.
        let mut at = 0usize;
        for (addr, len, _) in stream_ranges(walk, 0, u64::from(HEADER_SIZE)) {
            let n = len as usize;
            if !mem.check_range(addr, n, Permissions::Read)
                || mem.read_slice(&mut hdr[at..at + n], addr).is_err()
            {
                errors.push(Error::InvalidAddress { addr: addr.0, len });
            }
            at += n;
        }
    }
    if !errors.is_empty() {
        return Expected::Answer(status, errors);
    }

    // The type.
    let type_ = u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..].try_into().expect("8 bytes"));
    let request_type = match type_ {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        VIRTIO_BLK_T_DISCARD if ctx.discard => RequestType::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES if ctx.write_zeroes => RequestType::WriteZeroes,
        t => return Expected::Answer(status, vec![Error::Unsupported(t)]),
    };

    // The data: every byte between the header and the status, in the right direction.
    let device_writes = matches!(request_type, RequestType::In | RequestType::GetId);
    let writes_disk = matches!(
        request_type,
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
    );
    let read_only = ctx.read_only && writes_disk;
    let total: u64 = walk.iter().map(|d| u64::from(d.len())).sum();
    let mut data = Vec::new();
    if request_type != RequestType::Flush {
        let access = if device_writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        for (addr, len, writable) in stream_ranges(walk, u64::from(HEADER_SIZE), total - 1) {
            if writable != device_writes {
                errors.push(Error::WrongDirection);
            } else if !mem.check_range(addr, len as usize, access) {
                errors.push(Error::InvalidAddress { addr: addr.0, len });
            }
            data.push((addr, len));
        }
    }
    let data_len: u64 = data.iter().map(|&(_, len)| u64::from(len)).sum();
    if data_len > u64::from(u32::MAX) {
        errors.push(Error::DataTooLong);
    }
    if !errors.is_empty() {
        if read_only {
            errors.push(Error::ReadOnly);
        }
        return Expected::Answer(status, errors);
    }
    let data_len = data_len as u32;

    // The request: lengths, capacity, segments.
    let capacity = ctx.capacity;
    let mut segments = Vec::new();
    match request_type {
        RequestType::In | RequestType::Out => {
            if u64::from(data_len) % SECTOR_SIZE != 0 {
                errors.push(Error::DataLengthNotSectorMultiple(data_len));
            } else {
                let count = u64::from(data_len) / SECTOR_SIZE;
                if sector.checked_add(count).is_none_or(|end| end > capacity) {
                    errors.push(Error::SectorOutOfRange {
                        sector,
                        count,
                        capacity,
                    });
                }
            }
        }
        RequestType::Flush | RequestType::GetId => {}
        RequestType::Discard | RequestType::WriteZeroes => {
            let discard = request_type == RequestType::Discard;
            let (max_seg, max_sectors) = if discard {
                (ctx.max_discard_seg, ctx.max_discard_sectors)
            } else {
                (ctx.max_write_zeroes_seg, ctx.max_write_zeroes_sectors)
            };
            let allowed_flags = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            let count = data_len / SEGMENT_SIZE;
            if data_len == 0 || !data_len.is_multiple_of(SEGMENT_SIZE) {
                errors.push(Error::BadSegmentLength(data_len));
            } else if count > max_seg {
                errors.push(Error::TooManySegments {
                    count,
                    max: max_seg,
                });
            } else {
                // The segments, 16 bytes each, across the data ranges.
                let mut raw = [0u8; SEGMENT_SIZE as usize];
                let mut fill = 0usize;
                for &(addr, len) in &data {
                    let mut off = 0usize;
                    while off < len as usize {
                        let n = (raw.len() - fill).min(len as usize - off);
                        mem.read_slice(&mut raw[fill..fill + n], GuestAddress(addr.0 + off as u64))
                            .expect("readable data can be read");
                        fill += n;
                        off += n;
                        if fill < raw.len() {
                            continue;
                        }
                        fill = 0;
                        let seg_sector = u64::from_le_bytes(raw[..8].try_into().expect("8"));
                        let num_sectors = u32::from_le_bytes(raw[8..12].try_into().expect("4"));
                        let flags = u32::from_le_bytes(raw[12..].try_into().expect("4"));
                        if flags & !allowed_flags != 0 {
                            errors.push(Error::UnsupportedFlags(flags));
                        }
                        if num_sectors > max_sectors {
                            errors.push(Error::SegmentTooLarge {
                                count: num_sectors,
                                max: max_sectors,
                            });
                        }
                        let count = u64::from(num_sectors);
                        if seg_sector
                            .checked_add(count)
                            .is_none_or(|end| end > capacity)
                        {
                            errors.push(Error::SectorOutOfRange {
                                sector: seg_sector,
                                count,
                                capacity,
                            });
                        }
                        segments.push(Segment {
                            sector: seg_sector,
                            num_sectors,
                            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                        });
                    }
                }
            }
        }
    }
    if read_only {
        errors.push(Error::ReadOnly);
    }
    if !errors.is_empty() {
        return Expected::Answer(status, errors);
    }
    if request_type == RequestType::Flush {
        data.clear();
    }
    Expected::Accept(Request {
        head_index: head,
        request_type,
        sector,
        data,
        data_len,
        segments,
        status_addr: status,
    })
}

/// A status address is the last byte of the last descriptor of a complete chain, a
/// non-empty device-writable descriptor, and writable memory.
fn check_status_descriptor<M: GuestMemory>(
    mem: &M,
    walk: &[Descriptor],
    status_addr: GuestAddress,
) {
    let last = walk.last().expect("status address on an empty chain");
    assert!(!last.has_next(), "status address on an incomplete chain");
    assert!(
        last.is_write_only(),
        "status written into a device-readable descriptor"
    );
    assert!(last.len() >= 1, "status written into an empty descriptor");
    assert_eq!(
        Some(status_addr.0),
        last.addr().0.checked_add(u64::from(last.len()) - 1),
        "status address is not the last byte of the last descriptor"
    );
    assert!(
        mem.check_range(status_addr, 1, Permissions::Write),
        "status address not writable"
    );
}

fn check_rejected<M: GuestMemory>(
    mem: &M,
    head: u16,
    walk: &[Descriptor],
    expected: &Expected,
    rej: &Rejected,
) {
    assert_eq!(rej.head_index, head);
    let status = rej.error.status();
    assert_eq!(
        status,
        status_of(&rej.error),
        "{:?} maps to status {status:?}",
        rej.error
    );
    match expected {
        Expected::Accept(req) => {
            panic!("rejected ({:?}) a valid chain: {req:?}", rej.error)
        }
        Expected::Drop(errors) => {
            assert_eq!(
                rej.status_addr, None,
                "{:?}: answered a chain without a usable status byte",
                rej.error
            );
            assert!(
                errors.contains(&rej.error),
                "dropped with {:?}, expected one of {errors:?}",
                rej.error
            );
        }
        Expected::Answer(addr, errors) => {
            // A usable status byte means an answer, never a drop.
            assert_eq!(
                rej.status_addr,
                Some(*addr),
                "{:?}: status byte {addr:?} is usable but the chain is not answered there",
                rej.error
            );
            assert!(
                errors.contains(&rej.error),
                "rejected with {:?}, expected one of {errors:?}",
                rej.error
            );
            assert!(
                status.is_some(),
                "{:?}: answered without a status",
                rej.error
            );
        }
    }
    if let Some(addr) = rej.status_addr {
        check_status_descriptor(mem, walk, addr);
    }
}

fn check_accepted<M: GuestMemory>(
    mem: &M,
    ctx: &ParseContext,
    walk: &[Descriptor],
    expected: &Expected,
    req: &Request,
) {
    match expected {
        Expected::Accept(e) => assert_eq!(req, e, "accepted request differs from the chain"),
        Expected::Drop(errors) | Expected::Answer(_, errors) => {
            panic!("accepted a chain that is not valid ({errors:?}): {req:?}")
        }
    }
    // The request on its own, independently of how it was derived.
    check_status_descriptor(mem, walk, req.status_addr);
    let device_writes = matches!(req.request_type, RequestType::In | RequestType::GetId);
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let total: u64 = req.data.iter().map(|&(_, len)| u64::from(len)).sum();
    assert_eq!(u64::from(req.data_len), total);
    for &(addr, len) in &req.data {
        assert!(len > 0, "empty data range");
        assert!(
            mem.check_range(addr, len as usize, access),
            "accepted buffer {addr:?}+{len} is not accessible"
        );
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
        RequestType::Flush => assert!(req.data.is_empty() && req.data_len == 0),
        RequestType::GetId => {}
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
    /// Rejected chains dropped (no usable status byte; no used entry, the queue breaks).
    pub dropped: u32,
    /// Chains whose head was in flight or out of range (no used entry, the queue breaks).
    pub skipped: u32,
    /// The driver broke the queue: nothing more was popped.
    pub broken: bool,
    /// `(head, status, used length)` of every completed chain, in completion order.
    pub completions: Vec<(u16, u8, u32)>,
    /// Accepted requests framed other than one descriptor each for header, data buffers and
    /// status, and rejections of the new framing rules (how much the fuzzer reaches them).
    pub framings: Framings,
}

/// See [`Outcome::framings`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Framings {
    /// Accepted with the header over more than one descriptor.
    pub split_header: u32,
    /// Accepted with header bytes and data bytes in one descriptor.
    pub header_with_data: u32,
    /// Accepted with a status descriptor longer than one byte (data and status in one
    /// descriptor, for IN and GET_ID).
    pub wide_status: u32,
    /// Accepted with empty descriptors in the chain.
    pub padded: u32,
    /// Answered `ReadableAfterWritable`.
    pub readable_after_writable: u32,
    /// Answered `ChainTooLong` (a usable status byte past the limit).
    pub too_long: u32,
}

impl Framings {
    fn accepted(&mut self, walk: &[Descriptor], req: &Request) {
        if stream_ranges(walk, 0, u64::from(HEADER_SIZE)).len() > 1 {
            self.split_header += 1;
        }
        // The descriptor holding the header's last byte also holds the first data byte.
        let desc_at = |off: u64| {
            let mut end = 0u64;
            walk.iter().position(|d| {
                end += u64::from(d.len());
                off < end
            })
        };
        if !req.data.is_empty() && desc_at(u64::from(HEADER_SIZE) - 1) == desc_at(16) {
            self.header_with_data += 1;
        }
        if walk.last().is_some_and(|d| d.len() > 1) {
            self.wide_status += 1;
        }
        if walk.iter().any(|d| d.len() == 0) {
            self.padded += 1;
        }
    }

    fn rejected(&mut self, rej: &Rejected) {
        if rej.status_addr.is_none() {
            return;
        }
        match rej.error {
            Error::ReadableAfterWritable => self.readable_after_writable += 1,
            Error::ChainTooLong(_) => self.too_long += 1,
            _ => {}
        }
    }

    #[cfg(test)]
    fn add(&mut self, o: &Framings) {
        self.split_header += o.split_header;
        self.header_with_data += o.header_with_data;
        self.wide_status += o.wide_status;
        self.padded += o.padded;
        self.readable_after_writable += o.readable_after_writable;
        self.too_long += o.too_long;
    }
}

/// Where the rings of a queue are: the descriptor table at [`QUEUE`], the available ring and
/// the used ring after it, each aligned as virtio requires and none overlapping. (virtio-queue's
/// `MockSplitQueue::create` would put the used ring over the second half of the available
/// ring: it ends the available ring after as many bytes as it has entries.)
#[derive(Debug, Clone, Copy)]
struct Rings {
    table: u64,
    avail: u64,
    used: u64,
    /// Just past the used ring (and its `avail_event`).
    used_end: u64,
}

impl Rings {
    fn new(size: u16) -> Self {
        let n = u64::from(size);
        let table = QUEUE;
        let avail = table + 16 * n;
        // flags, idx, ring, used_event.
        let avail_end = avail + 4 + 2 * n + 2;
        let used = avail_end.next_multiple_of(4);
        // flags, idx, ring of (id, len), avail_event.
        let used_end = used + 4 + 8 * n + 2;
        assert!(used_end <= INDIRECT, "rings overlap the indirect tables");
        Rings {
            table,
            avail,
            used,
            used_end,
        }
    }

    /// The device's view of the queue, as the driver configured it.
    fn queue(&self, size: u16) -> Queue {
        let mut q = Queue::new(size).expect("valid queue size");
        q.set_size(size);
        q.set_ready(true);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.table);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q
    }
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
        max_chain: dev.max_chain.unwrap_or(size),
        discard: dev.discard,
        write_zeroes: dev.write_zeroes,
        max_discard_sectors: dev.limits[0],
        max_discard_seg: dev.limits[1],
        max_write_zeroes_sectors: dev.limits[2],
        max_write_zeroes_seg: dev.limits[3],
    };

    let rings = Rings::new(size);
    let Rings {
        table, avail, used, ..
    } = rings;

    // Place the chains.
    let mut heads: Vec<u16> = Vec::new();
    let mut slot: u16 = 0;
    let mut indirect = INDIRECT;
    for spec in &input.chains {
        let mut protos = chain_protos(arena, spec, capacity);
        for m in &spec.mutations {
            mutate(arena, &mut protos, *m, top);
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
        let (allowed, outcome) = process(arena, input, &ctx, &rings);
        arena.snapshot(after);
        check_changes(arena, before, after, &allowed);
        outcome
    })
}

/// What the drain handed the harness's sink, in order.
#[derive(Debug)]
enum Seen {
    /// A parsed request, executed, with its status and used length.
    Started {
        req: Request,
        status: u8,
        used_len: u32,
    },
    /// A rejected chain, answered with this status (used length 1).
    Answered { rej: Rejected, status: u8 },
}

/// The harness's [`Sink`] of the worker's [`Drain`]: runs the oracle on every chain the
/// drain hands over, executes accepted requests on the reference executor and answers
/// rejected ones, each with its status byte and one used entry (as the worker's `Exec` does),
/// and records what it saw.
struct Harness<'a, A: Arena> {
    arena: &'a A,
    ctx: &'a ParseContext,
    rings: Rings,
    size: u16,
    /// Heads the device considers in flight ([`FuzzInput::in_flight`]).
    in_flight: Vec<bool>,
    backend: MemBackend,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    /// The drain's counters: the sink counts what it completes, as the worker's sink does.
    stats: Arc<QueueStats>,
    /// [`DeviceSpec::fault_in`]: every fault-in "maps" something (the same memory again).
    fault_in: bool,
    /// Fault-ins asked for the chain being handled.
    faults: u32,
    seen: Vec<Seen>,
    framings: Framings,
    /// Guest ranges the device may change: the used ring, the status bytes written, the
    /// device-writable data of executed requests.
    allowed: Vec<(u128, u128)>,
}

fn span(addr: u64, len: u32) -> (u128, u128) {
    (u128::from(addr), u128::from(addr) + u128::from(len))
}

impl<A: Arena> Harness<'_, A> {
    /// Fault-ins the drain asks for a rejected chain: one that finds nothing new, or as many
    /// as it allows when each finds something.
    fn faults_per_rejection(&self) -> u32 {
        if self.fault_in {
            MAX_FAULT_RETRIES
        } else {
            1
        }
    }

    /// The chain just popped from `q` (the one at `next_avail - 1`) as virtio-queue yields it
    /// (every descriptor, however many): memory is as the drain parsed it, nothing was
    /// written since the pop.
    fn walk(&self, q: &Queue, mem: &A::Mem, head: u16) -> Vec<Descriptor> {
        let chain = popped_chain(&self.rings, q, mem);
        assert_eq!(
            chain.head_index(),
            head,
            "handed a head the ring does not hold"
        );
        chain.collect()
    }

    /// A chain that reaches the sink has a head inside the queue and not in flight.
    fn check_head(&self, head: u16) {
        assert!(
            head < self.size,
            "head {head} past the queue size reached the sink"
        );
        assert!(
            !self.in_flight[usize::from(head)],
            "head {head} is in flight and was popped again"
        );
    }
}

/// The chain at `q.next_avail() - 1`, popped again from a queue with the same rings.
fn popped_chain<'m, M: GuestMemory>(
    rings: &Rings,
    q: &Queue,
    mem: &'m M,
) -> virtio_queue::DescriptorChain<&'m M> {
    let mut probe = rings.queue(q.size());
    probe.set_next_avail(q.next_avail().wrapping_sub(1));
    probe
        .pop_descriptor_chain(mem)
        .expect("the chain just popped pops again")
}

impl<'a, A: Arena> Sink<&'a A::Mem> for Harness<'a, A> {
    fn in_flight(&self, head: u16) -> bool {
        assert!(
            head < self.size,
            "head {head} past the queue size reached the sink"
        );
        self.in_flight[usize::from(head)]
    }

    fn start(&mut self, q: &mut Queue, mem: &&'a A::Mem, req: &Request) {
        let (mem, head) = (*mem, req.head_index);
        self.check_head(head);
        assert_eq!(self.faults, 0, "fault-in asked for a chain that parses");
        let walk = self.walk(q, mem, head);
        let expect = expected(mem, self.ctx, head, &walk);
        check_accepted(mem, self.ctx, &walk, &expect, req);
        self.framings.accepted(&walk, req);
        if matches!(req.request_type, RequestType::In | RequestType::GetId) {
            for &(addr, len) in &req.data {
                self.allowed.push(span(addr.0, len));
            }
        }
        let status_addr = req.status_addr.0;
        self.allowed.push(span(status_addr, 1));
        // The status byte was checked writable: the answer cannot fail.
        let c = execute(mem, req, &mut self.backend, &self.id)
            .expect("status byte of an accepted request not writable");
        assert!(
            c.status == VIRTIO_BLK_S_OK || c.status == VIRTIO_BLK_S_IOERR,
            "executed request answered {}",
            c.status
        );
        assert_eq!(self.arena.peek(status_addr), Some(c.status));
        assert!(u64::from(c.used_len) <= writable_bytes(&walk));
        // Counted as the worker's executor counts a finished request.
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if c.status != VIRTIO_BLK_S_OK {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        q.add_used(mem, head, c.used_len)
            .expect("used entry for a head inside the queue");
        self.seen.push(Seen::Started {
            req: req.clone(),
            status: c.status,
            used_len: c.used_len,
        });
    }

    fn answer(&mut self, q: &mut Queue, mem: &&'a A::Mem, rej: &Rejected, status: u8) {
        let (mem, head) = (*mem, rej.head_index);
        self.check_head(head);
        assert_eq!(
            self.faults,
            self.faults_per_rejection(),
            "fault-ins asked for a rejected chain"
        );
        self.faults = 0;
        let walk = self.walk(q, mem, head);
        let expect = expected(mem, self.ctx, head, &walk);
        check_rejected(mem, head, &walk, &expect, rej);
        self.framings.rejected(rej);
        assert_eq!(
            Some(status),
            rej.error.status(),
            "{:?} answered with status {status}",
            rej.error
        );
        let addr = rej.status_addr.expect("answered without a status address");
        assert!(
            write_status(mem, addr, status),
            "checked status byte not written"
        );
        self.allowed.push(span(addr.0, 1));
        assert_eq!(self.arena.peek(addr.0), Some(status));
        q.add_used(mem, head, 1)
            .expect("used entry for a head inside the queue");
        self.seen.push(Seen::Answered {
            rej: rej.clone(),
            status,
        });
    }

    fn fault_in(&mut self, q: &Queue, mem: &&'a A::Mem, head: u16) -> Option<&'a A::Mem> {
        let m = *mem;
        self.check_head(head);
        // Asked for the chain just popped.
        self.walk(q, m, head);
        self.faults += 1;
        assert!(
            self.faults <= self.faults_per_rejection(),
            "more than {MAX_FAULT_RETRIES} fault-ins for one chain"
        );
        self.fault_in.then_some(m)
    }
}

/// Drains the queue with the worker's [`Drain`] and the harness's sink ([`Harness`]): as the
/// worker does on a kick (`rearm`), or with [`DeviceSpec::poll`] as its polling loop does
/// (notifications off, drained without re-arming while chains are available, then once more
/// re-armed). Checks what the drain did as a whole: the chain it broke the queue on, its
/// counters, the indexes. Returns the guest ranges the device may have changed and the
/// outcome.
fn process<A: Arena>(
    arena: &A,
    input: &FuzzInput,
    ctx: &ParseContext,
    rings: &Rings,
) -> (Vec<(u128, u128)>, Outcome) {
    let dev = &input.device;
    let mut mem = arena.mem();
    let (start, size) = (dev.start_idx, queue_size(dev));
    let mut q = rings.queue(size);
    assert!(q.is_valid(mem), "rings outside guest memory");
    q.set_event_idx(dev.event_idx);
    q.set_next_avail(start);
    q.set_next_used(start);
    let mut in_flight = vec![false; usize::from(size)];
    for &h in &input.in_flight {
        if let Some(f) = in_flight.get_mut(usize::from(h)) {
            *f = true;
        }
    }
    let stats = Arc::new(QueueStats::default());
    let mut sink = Harness {
        arena,
        ctx,
        rings: *rings,
        size,
        in_flight,
        backend: MemBackend::new((ctx.capacity.min(BACKEND_SECTORS) * SECTOR_SIZE) as usize),
        id: dev.serial,
        stats: stats.clone(),
        fault_in: dev.fault_in,
        faults: 0,
        seen: Vec::new(),
        framings: Framings::default(),
        allowed: vec![(rings.used.into(), rings.used_end.into())],
    };

    // What the driver wrote: an impossible index must break the queue before any pop.
    let avail_at_start = q
        .avail_idx(mem, Ordering::Acquire)
        .expect("available ring mapped")
        .0;
    let impossible_at_start = avail_at_start.wrapping_sub(start) > size;

    let mut drain = Drain::new(q, 0, *ctx, stats.clone());
    let mut popped_total = 0u32;
    if dev.poll {
        // The worker's `poll_for_work`: notifications off, then a drain without re-arming
        // whenever chains are available, until an idle spin.
        let _ = drain.q.disable_notification(mem);
        while drain.has_available(mem) {
            let popped = drain.drain(&mut mem, &mut sink, false);
            popped_total += popped;
            if popped == 0 {
                break;
            }
        }
        // Idle: notifications back on, and what arrived meanwhile popped (nothing here, the
        // harness completes every request at once).
        let popped = drain.drain(&mut mem, &mut sink, true);
        assert!(
            drain.broken() || popped == 0,
            "{popped} chains left behind by polling"
        );
        popped_total += popped;
    } else {
        // A kick.
        popped_total = drain.drain(&mut mem, &mut sink, true);
    }
    let broken = drain.broken();
    let q = &mut drain.q;
    let _ = q.needs_notification(mem);

    // Why the queue broke. An impossible available index breaks it before a pop, and no
    // chain is popped after; otherwise the chain popped last broke it (the drain stops at
    // once, so nothing was written since: its index was possible then, and still is).
    let avail = q.avail_idx(mem, Ordering::Acquire).expect("mapped").0;
    let bad_index = broken && avail.wrapping_sub(q.next_avail()) > size;
    let (mut dropped, mut skipped) = (0u32, 0u32);
    if broken && !bad_index {
        assert!(popped_total > 0, "the queue broke with nothing popped");
        let chain = popped_chain(rings, q, mem);
        let head = chain.head_index();
        if sink
            .in_flight
            .get(usize::from(head))
            .copied()
            .unwrap_or(true)
        {
            // Never completed twice, and nothing more is taken from this driver.
            skipped = 1;
            assert_eq!(sink.faults, 0, "fault-in asked for a head in flight");
        } else {
            // Dropped: the drain parsed it as it parses here (nothing changed since) and
            // found no usable status byte.
            dropped = 1;
            let walk: Vec<Descriptor> = chain.clone().collect();
            let expect = expected(mem, ctx, head, &walk);
            match parse_into(chain, ctx, &mut Vec::new(), &mut Request::default()) {
                Ok(()) => panic!("the queue broke on chain {head}, which parses"),
                Err(rej) => check_rejected(mem, head, &walk, &expect, &rej),
            }
            assert!(
                matches!(expect, Expected::Drop(_)),
                "dropped a chain whose status byte is usable: {expect:?}"
            );
            assert_eq!(
                sink.faults,
                sink.faults_per_rejection(),
                "fault-ins asked for a dropped chain"
            );
        }
    } else {
        assert_eq!(sink.faults, 0, "fault-ins for no chain");
    }

    let mut outcome = Outcome {
        dropped,
        skipped,
        broken,
        framings: sink.framings,
        ..Outcome::default()
    };
    let mut ioerr = 0u32;
    for s in &sink.seen {
        let completion = match s {
            Seen::Started {
                req,
                status,
                used_len,
            } => {
                outcome.executed[type_index(req.request_type)] += 1;
                ioerr += u32::from(*status != VIRTIO_BLK_S_OK);
                (req.head_index, *status, *used_len)
            }
            Seen::Answered { rej, status } => {
                outcome.answered += 1;
                (rej.head_index, *status, 1)
            }
        };
        outcome.completions.push(completion);
    }

    // The drain stops when, and only when, the queue breaks; otherwise it takes everything.
    if impossible_at_start {
        assert!(
            bad_index && popped_total == 0,
            "available index {avail_at_start} with next_avail {start} and {size} entries \
             did not break the queue"
        );
    }
    assert_eq!(q.next_avail(), start.wrapping_add(popped_total as u16));
    assert_eq!(
        outcome.completions.len() as u32 + dropped + skipped,
        popped_total,
        "a popped chain neither completed nor the one that broke the queue"
    );
    if !broken {
        assert_eq!(avail, q.next_avail(), "available chains left behind");
    }
    assert_eq!(
        q.next_used(),
        start.wrapping_add(outcome.completions.len() as u16),
        "a completed chain without exactly one used entry"
    );
    // The drain's counters say the same.
    let s = stats.snapshot(0);
    let rejected = u64::from(outcome.answered + dropped);
    assert_eq!(s.broken, broken, "{s:?}");
    assert_eq!(s.dropped, u64::from(dropped + skipped), "{s:?}");
    assert_eq!(
        s.requests,
        outcome.completions.len() as u64 + u64::from(dropped),
        "{s:?}"
    );
    assert_eq!(s.errors, u64::from(ioerr + skipped) + rejected, "{s:?}");
    (sink.allowed, outcome)
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
    //! The harness itself: well-formed inputs must reach execution, the permission cases must
    //! come out as the parser documents, every framing a driver may choose must parse as the
    //! spec says (through `run`, where parser and oracle must also agree) and the oracle must
    //! say so on its own. Run with `cargo test --release` in this directory.

    use super::*;

    const IOERR: u8 = VIRTIO_BLK_S_IOERR;
    const OK: u8 = VIRTIO_BLK_S_OK;

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
            poll: false,
            fault_in: false,
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

    /// A chain with these mutations.
    fn mutated(request: ReqType, size: u8, status_at: u16, mutations: Vec<Mutation>) -> ChainSpec {
        ChainSpec {
            mutations,
            ..chain(request, size, status_at)
        }
    }

    /// A chain without data descriptors.
    fn bare(request: ReqType, status_at: u16, mutations: Vec<Mutation>) -> ChainSpec {
        ChainSpec {
            data: Vec::new(),
            mutations,
            ..chain(request, 0, status_at)
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

    /// The ways the drain is driven: `(poll, fault_in)`.
    const DRIVES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

    /// Runs `chains` (in both memory types, the drain driven every way) and returns the
    /// `(status, used length)` of each, after checking that every chain was completed and the
    /// queue did not break.
    fn answers(chains: impl Fn() -> Vec<ChainSpec>) -> Vec<(u8, u32)> {
        let rw = [PermSpec::ReadWrite; 5];
        let mut first = None;
        for memory in [MemorySpec::Mmap, MemorySpec::Iotlb(rw)] {
            for (poll, fault_in) in DRIVES {
                let c = chains();
                let n = c.len();
                let mut i = input(memory, c);
                (i.device.poll, i.device.fault_in) = (poll, fault_in);
                let o = run(&i);
                let how = format!("{memory:?}, poll {poll}, fault-in {fault_in}");
                assert!(!o.broken, "{how}: {o:?}");
                assert_eq!(o.completions.len(), n, "{how}: {o:?}");
                let got: Vec<(u8, u32)> = o.completions.iter().map(|&(_, s, u)| (s, u)).collect();
                assert_eq!(*first.get_or_insert_with(|| got.clone()), got, "{how}");
            }
        }
        first.expect("eight runs")
    }

    #[test]
    fn well_formed_chains_of_every_type_execute() {
        let rw = [PermSpec::ReadWrite; 5];
        for memory in [MemorySpec::Mmap, MemorySpec::Iotlb(rw)] {
            let o = run(&input(memory, every_type()));
            assert_eq!(o.executed, [1; 6], "{memory:?}: {o:?}");
            assert_eq!(
                (o.answered, o.dropped, o.skipped, o.broken),
                (0, 0, 0, false)
            );
        }
        // IN: 1024 bytes of data and the status; GET_ID: the 20-byte id and the status.
        let used: Vec<u32> = answers(every_type).iter().map(|&(_, u)| u).collect();
        assert_eq!(used, [1025, 1, 1, 21, 1, 1]);
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
        // Read-only status region: the first chain has no usable status byte, it is dropped
        // and the queue breaks.
        let o = run(&input(
            MemorySpec::Iotlb([ReadWrite, ReadWrite, ReadWrite, ReadOnly, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.dropped, o.broken), ([0; 6], 1, true));
        assert!(o.completions.is_empty());
        // Write-only headers: unreadable, every chain is answered with IOERR.
        let o = run(&input(
            MemorySpec::Iotlb([WriteOnly, ReadWrite, ReadWrite, ReadWrite, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.answered, o.broken), ([0; 6], 6, false));
        assert!(o.completions.iter().all(|&(_, s, u)| (s, u) == (IOERR, 1)));
        // Read-only data: IN and GET_ID cannot write their buffers; the others execute.
        let o = run(&input(
            MemorySpec::Iotlb([ReadWrite, ReadOnly, ReadOnly, ReadWrite, ReadWrite]),
            every_type(),
        ));
        assert_eq!((o.executed, o.answered), ([0, 1, 1, 0, 1, 1], 2));
    }

    #[test]
    fn a_head_in_flight_breaks_the_queue() {
        let mut i = input(MemorySpec::Mmap, every_type());
        i.in_flight = vec![0];
        let o = run(&i);
        assert_eq!((o.skipped, o.broken), (1, true));
        assert_eq!(o.executed, [0; 6]);
        assert!(o.completions.is_empty());
    }

    #[test]
    fn a_head_out_of_range_breaks_the_queue_after_the_chains_before_it() {
        let mut i = input(MemorySpec::Mmap, every_type());
        i.extra_heads = vec![(3, 200)];
        let o = run(&i);
        assert_eq!((o.skipped, o.broken), (1, true));
        assert_eq!(o.executed, [1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn a_chain_without_a_status_byte_breaks_the_queue_after_the_chains_before_it() {
        let mut chains = every_type();
        // The status descriptor of the third chain is device-readable.
        chains[2].mutations = vec![Mutation::FlipWrite(2)];
        let o = run(&input(MemorySpec::Mmap, chains));
        assert_eq!((o.dropped, o.broken), (1, true));
        assert_eq!(o.executed, [1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn an_impossible_available_index_breaks_the_queue() {
        for start in [0, 7, u16::MAX - 3] {
            // Exactly a queue's worth ahead is possible: the ring entries past the six
            // chains are 0, the IN chain again.
            let mut i = input(MemorySpec::Mmap, every_type());
            i.device.start_idx = start;
            i.avail_idx = Some(start.wrapping_add(32));
            let o = run(&i);
            assert!(!o.broken, "{o:?}");
            assert_eq!(o.completions.len(), 32);
            assert_eq!(o.executed, [27, 1, 1, 1, 1, 1]);
            // One more, or an index behind the device's, and nothing is popped.
            for idx in [start.wrapping_add(33), start.wrapping_sub(1)] {
                i.avail_idx = Some(idx);
                let o = run(&i);
                assert!(o.broken && o.completions.is_empty(), "{o:?}");
            }
        }
    }

    #[test]
    fn event_idx_drain_ends_by_itself() {
        let mut i = input(MemorySpec::Mmap, every_type());
        i.device.event_idx = true;
        i.device.used_event = 3;
        let o = run(&i);
        assert_eq!((o.executed, o.broken), ([1; 6], false));
    }

    #[test]
    fn polling_and_fault_ins_drain_as_a_kick_does() {
        // Every way of breaking the queue, and none, on a plain and a wrapped ring.
        /// How a case changes the input.
        type Change = fn(&mut FuzzInput);
        let cases: [(&str, Change); 8] = [
            ("plain", |_| {}),
            ("in flight", |i| i.in_flight = vec![3]),
            ("out of range", |i| i.extra_heads = vec![(3, 200)]),
            ("no status byte", |i| {
                i.chains[2].mutations = vec![Mutation::FlipWrite(2)]
            }),
            ("malformed", |i| {
                i.chains[1].request = ReqType::Raw(77);
                i.chains[3].mutations = vec![Mutation::Len(0, LenSpec::Bytes(3))];
            }),
            ("impossible index", |i| i.avail_idx = Some(40)),
            ("a queue's worth", |i| i.avail_idx = Some(32)),
            ("event idx", |i| {
                i.device.event_idx = true;
                i.device.used_event = 2;
            }),
        ];
        for (what, change) in &cases {
            for start in [0, u16::MAX - 2] {
                let mut first = None;
                for (poll, fault_in) in DRIVES {
                    let mut i = input(MemorySpec::Mmap, every_type());
                    change(&mut i);
                    i.device.start_idx = start;
                    if let Some(idx) = &mut i.avail_idx {
                        *idx = idx.wrapping_add(start);
                    }
                    (i.device.poll, i.device.fault_in) = (poll, fault_in);
                    let o = run(&i);
                    let first = first.get_or_insert_with(|| o.clone());
                    assert_eq!(
                        *first, o,
                        "{what}, start {start}: poll {poll}, fault-in {fault_in}"
                    );
                }
                let o = first.expect("four runs");
                let breaks = !matches!(
                    *what,
                    "plain" | "malformed" | "a queue's worth" | "event idx"
                );
                assert_eq!(o.broken, breaks, "{what}: {o:?}");
                if *what == "malformed" {
                    assert_eq!((o.answered, o.completions.len()), (2, 6), "{o:?}");
                }
            }
        }
    }

    #[test]
    fn status_byte_at_the_top_of_the_iova_space_is_answered() {
        // The first crash the fuzzer found, as a harness input.
        let mut c = chain(ReqType::Flush, 0, 1);
        c.mutations = vec![Mutation::Addr(1, AddrSpec::Top(0xfff))];
        let o = run(&input(MemorySpec::Iotlb([PermSpec::ReadWrite; 5]), vec![c]));
        assert_eq!(o.executed, [0, 0, 1, 0, 0, 0]);
    }

    // ---- Framings (virtio 1.2, 2.6.4.1: the device must not assume one). ----------------

    #[test]
    fn header_split_over_descriptors_executes() {
        for k in 0..15u16 {
            // Header 1 + k and 15 - k bytes; OUT and IN with two sectors, DISCARD, FLUSH.
            let chains = || {
                vec![
                    mutated(ReqType::Out, 2, 2, vec![Mutation::Split(0, k)]),
                    mutated(ReqType::In, 2, 3, vec![Mutation::Split(0, k)]),
                    mutated(ReqType::Discard, 1, 4, vec![Mutation::Split(0, k)]),
                    bare(ReqType::Flush, 5, vec![Mutation::Split(0, k)]),
                    // Three pieces.
                    bare(
                        ReqType::Flush,
                        6,
                        vec![Mutation::Split(0, k), Mutation::Split(0, 0)],
                    ),
                ]
            };
            assert_eq!(
                answers(chains),
                [(OK, 1), (OK, 1025), (OK, 1), (OK, 1), (OK, 1)],
                "header split after {} bytes",
                k + 1
            );
        }
    }

    #[test]
    fn data_split_off_sector_boundaries_executes() {
        // 1024 bytes in 100 + 924: still two sectors.
        let chains = || {
            vec![
                mutated(ReqType::Out, 2, 2, vec![Mutation::Split(1, 99)]),
                mutated(ReqType::In, 2, 3, vec![Mutation::Split(1, 99)]),
                // A segment split over two descriptors.
                mutated(ReqType::WriteZeroes, 1, 4, vec![Mutation::Split(1, 6)]),
            ]
        };
        assert_eq!(answers(chains), [(OK, 1), (OK, 1025), (OK, 1)]);
    }

    #[test]
    fn header_and_data_in_one_descriptor() {
        let chains = || {
            vec![
                // Device-readable data after the header: one descriptor serves both.
                mutated(ReqType::Out, 2, 2, vec![Mutation::Join(0)]),
                mutated(ReqType::Discard, 1, 3, vec![Mutation::Join(0)]),
                mutated(ReqType::WriteZeroes, 1, 4, vec![Mutation::Join(0)]),
                // Header and 16 bytes that FLUSH ignores.
                mutated(ReqType::Flush, 1, 5, vec![Mutation::Join(0)]),
                // IN data must be device-writable: the joined descriptor (device-writable,
                // the data's direction) leaves no header.
                mutated(ReqType::In, 2, 6, vec![Mutation::Join(0)]),
                // Device-readable header and IN data: the data has the wrong direction.
                mutated(
                    ReqType::In,
                    2,
                    7,
                    vec![Mutation::FlipWrite(1), Mutation::Join(0)],
                ),
            ]
        };
        assert_eq!(
            answers(chains),
            [(OK, 1), (OK, 1), (OK, 1), (OK, 1), (IOERR, 1), (IOERR, 1)]
        );
    }

    #[test]
    fn data_and_status_in_one_descriptor() {
        let chains = || {
            vec![
                // The status byte right after 1024 bytes of IN data, in one descriptor.
                mutated(ReqType::In, 2, 2, vec![Mutation::Join(1)]),
                mutated(ReqType::GetId, 20, 3, vec![Mutation::Join(1)]),
                // Everything in two descriptors: header + data, data + status.
                mutated(
                    ReqType::In,
                    4,
                    4,
                    vec![Mutation::Split(1, 511), Mutation::Join(2)],
                ),
                // OUT data before the status must be device-readable: here it is not.
                mutated(ReqType::Out, 2, 5, vec![Mutation::Join(1)]),
            ]
        };
        assert_eq!(
            answers(chains),
            [(OK, 1025), (OK, 21), (OK, 2049), (IOERR, 1)]
        );
    }

    #[test]
    fn status_descriptor_longer_than_one_byte() {
        let wide = |l| vec![Mutation::WidenStatus(l)];
        let chains = || {
            vec![
                // FLUSH and GET_ID ignore / use the extra bytes; the status is the last byte.
                bare(ReqType::Flush, 0x800, wide(LenSpec::Bytes(7))),
                bare(ReqType::GetId, 0x801, wide(LenSpec::Bytes(20))),
                bare(ReqType::GetId, 0x802, wide(LenSpec::Bytes(5))),
                // IN data in the status descriptor: one sector, then the status.
                bare(ReqType::In, 0x803, wide(LenSpec::Sectors(1))),
                mutated(ReqType::In, 2, 0x804, wide(LenSpec::Sectors(2))),
                // Not a sector.
                bare(ReqType::In, 0x805, wide(LenSpec::Bytes(5))),
                // OUT with device-writable bytes before the status.
                bare(ReqType::Out, 0x806, wide(LenSpec::Bytes(1))),
                // Segments cannot be device-writable.
                mutated(ReqType::Discard, 1, 0x807, wide(LenSpec::Segments(1))),
            ]
        };
        assert_eq!(
            answers(chains),
            [
                (OK, 1),
                (OK, 21),
                (OK, 6),
                (OK, 513),
                (OK, 2049),
                (IOERR, 1),
                (IOERR, 1),
                (IOERR, 1)
            ]
        );
    }

    #[test]
    fn readable_after_writable_is_answered_ioerr() {
        let raw = |at| {
            vec![Mutation::ReadableAfterWritable(
                at,
                AddrSpec::Data(600),
                LenSpec::Sectors(1),
            )]
        };
        let chains = || {
            vec![
                mutated(ReqType::In, 2, 2, raw(0)),
                mutated(ReqType::GetId, 20, 3, raw(7)),
                // The status descriptor is copied first: readable after that copy.
                mutated(ReqType::Out, 2, 4, raw(0)),
                bare(ReqType::Flush, 5, raw(0)),
                // An empty one counts too.
                mutated(
                    ReqType::In,
                    2,
                    6,
                    vec![Mutation::ReadableAfterWritable(
                        0,
                        AddrSpec::Data(0),
                        LenSpec::Bytes(0),
                    )],
                ),
                // Unsupported type: the structure is checked first.
                mutated(ReqType::Raw(77), 1, 7, raw(0)),
            ]
        };
        assert_eq!(answers(chains), [(IOERR, 1); 6]);
    }

    #[test]
    fn chains_longer_than_max_chain_are_answered_ioerr() {
        // Direct chains against a limit of 4 descriptors.
        let limited = |chains: Vec<ChainSpec>| {
            let mut i = input(MemorySpec::Mmap, chains);
            i.device.max_chain = Some(4);
            let o = run(&i);
            assert!(!o.broken, "{o:?}");
            o.completions
                .iter()
                .map(|&(_, s, u)| (s, u))
                .collect::<Vec<_>>()
        };
        let mut four = chain(ReqType::Out, 1, 2);
        four.data.push(DataSpec { at: 40, size: 1 });
        let mut five = chain(ReqType::Out, 1, 3);
        five.data
            .extend([DataSpec { at: 40, size: 1 }, DataSpec { at: 50, size: 1 }]);
        let padded = mutated(ReqType::In, 2, 4, vec![Mutation::Pad(1, 2)]);
        let flush = bare(ReqType::Flush, 5, vec![Mutation::Pad(0, 3)]);
        assert_eq!(
            limited(vec![four, five, padded, flush]),
            [(OK, 1), (IOERR, 1), (IOERR, 1), (IOERR, 1)]
        );
        // Indirect tables longer than the queue (32): 34 descriptors (IN and GET_ID) are
        // answered, 32 (FLUSH) execute.
        let indirect = |mut c: ChainSpec| {
            c.placement = Placement::Indirect {
                skip: 0,
                table_len: None,
                head_flags: 0,
            };
            c
        };
        let chains = || {
            vec![
                indirect(mutated(ReqType::In, 2, 2, vec![Mutation::Pad(1, 31)])),
                indirect(mutated(ReqType::GetId, 20, 3, vec![Mutation::Pad(2, 31)])),
                indirect(bare(ReqType::Flush, 4, vec![Mutation::Pad(0, 30)])),
                indirect(mutated(ReqType::In, 2, 5, vec![Mutation::Pad(1, 29)])),
            ]
        };
        assert_eq!(
            answers(chains),
            [(IOERR, 1), (IOERR, 1), (OK, 1), (OK, 1025)]
        );
        // Too long and no usable status byte: dropped, the queue breaks.
        let mut i = input(
            MemorySpec::Mmap,
            vec![indirect(mutated(
                ReqType::In,
                2,
                2,
                vec![Mutation::Pad(1, 40), Mutation::FlipWrite(42)],
            ))],
        );
        i.device.max_chain = None;
        let o = run(&i);
        assert_eq!((o.dropped, o.broken), (1, true));
    }

    #[test]
    fn framings_are_counted() {
        let wide = Mutation::WidenStatus(LenSpec::Sectors(1));
        let raw = Mutation::ReadableAfterWritable(0, AddrSpec::Data(9), LenSpec::Bytes(1));
        let chains = vec![
            mutated(ReqType::Out, 2, 2, vec![Mutation::Split(0, 3)]),
            mutated(ReqType::Out, 2, 3, vec![Mutation::Join(0)]),
            bare(ReqType::In, 0x804, vec![wide]),
            mutated(ReqType::Flush, 0, 5, vec![Mutation::Pad(0, 1)]),
            mutated(ReqType::In, 2, 6, vec![raw]),
            ChainSpec {
                placement: Placement::Indirect {
                    skip: 0,
                    table_len: None,
                    head_flags: 0,
                },
                ..mutated(ReqType::In, 2, 7, vec![Mutation::Pad(1, 40)])
            },
        ];
        let o = run(&input(MemorySpec::Mmap, chains));
        let f = Framings {
            split_header: 1,
            header_with_data: 1,
            wide_status: 1,
            padded: 1,
            readable_after_writable: 1,
            too_long: 1,
        };
        assert_eq!(o.framings, f, "{o:?}");
    }

    /// `(addr, len, device-writable)` of a chain's descriptors after its mutations.
    fn shape(spec: &ChainSpec) -> Vec<(u64, u32, bool)> {
        let arena = MmapArena::new();
        let mut protos = chain_protos(&arena, spec, 2048);
        for m in &spec.mutations {
            mutate(&arena, &mut protos, *m, TOP_MMAP);
        }
        protos.iter().map(|p| (p.addr, p.len, p.write)).collect()
    }

    #[test]
    fn mutations_build_the_framings() {
        // chain(_, 2, 1): header at slot 1, 1024 bytes of data at sector 8, status at 1.
        let (h, d, st) = (HEADERS + 16, DATA1 + 8 * 512, STATUS + 1);
        let out = |m| shape(&mutated(ReqType::Out, 2, 1, vec![m]));
        let in_ = |m| shape(&mutated(ReqType::In, 2, 1, vec![m]));
        assert_eq!(
            out(Mutation::Split(0, 4)),
            [
                (h, 5, false),
                (h + 5, 11, false),
                (d, 1024, false),
                (st, 1, true)
            ]
        );
        assert_eq!(
            out(Mutation::Join(0)),
            [(d - 16, 1040, false), (st, 1, true)]
        );
        assert_eq!(in_(Mutation::Join(1)), [(h, 16, false), (d, 1025, true)]);
        assert_eq!(
            in_(Mutation::WidenStatus(LenSpec::Bytes(3))),
            [(h, 16, false), (d, 1024, true), (st - 3, 4, true)]
        );
        let x = AddrSpec::Data(600).resolve(TOP_MMAP);
        let raw = Mutation::ReadableAfterWritable(0, AddrSpec::Data(600), LenSpec::Bytes(9));
        assert_eq!(
            in_(raw),
            [
                (h, 16, false),
                (d, 1024, true),
                (x, 9, false),
                (st, 1, true)
            ]
        );
        assert_eq!(
            out(raw),
            [
                (h, 16, false),
                (d, 1024, false),
                (st, 1, true),
                (x, 9, false),
                (st, 1, true)
            ]
        );
        let padded = out(Mutation::Pad(2, 3));
        assert_eq!(padded.len(), 6);
        assert_eq!(padded[2..5], [(st, 0, true); 3]);
        // The moved bytes are where the joined descriptor says: the header before the data.
        let arena = MmapArena::new();
        let spec = mutated(ReqType::Out, 2, 1, vec![Mutation::Join(0)]);
        let mut protos = chain_protos(&arena, &spec, 2048);
        mutate(&arena, &mut protos, Mutation::Join(0), TOP_MMAP);
        assert_eq!(arena.peek(d - 16), Some(VIRTIO_BLK_T_OUT as u8));
        assert_eq!(arena.peek(d - 8), Some(4)); // sector 4
    }

    // ---- The oracle on its own. ---------------------------------------------------------

    const H: u64 = HEADERS + 0x100;
    const D: u64 = DATA1 + 0x1000;
    const S: u64 = STATUS + 0x100;

    fn ctx() -> ParseContext {
        ParseContext {
            capacity: 2048,
            read_only: false,
            max_chain: 8,
            discard: true,
            write_zeroes: true,
            max_discard_sectors: 1024,
            max_discard_seg: 4,
            max_write_zeroes_sectors: 1024,
            max_write_zeroes_seg: 4,
        }
    }

    fn header(arena: &MmapArena, at: u64, type_: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        arena.poke(at, &h);
    }

    /// A chain of `(addr, len, device-writable)`, linked in order.
    fn walk(bufs: &[(u64, u32, bool)]) -> Vec<Descriptor> {
        bufs.iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= F_NEXT;
                }
                Descriptor::new(addr, len, flags, i as u16 + 1)
            })
            .collect()
    }

    fn accepted(e: Expected) -> Request {
        match e {
            Expected::Accept(r) => r,
            other => panic!("expected a valid request, got {other:?}"),
        }
    }

    fn answered(e: Expected) -> (GuestAddress, Vec<Error>) {
        match e {
            Expected::Answer(a, errors) => (a, errors),
            other => panic!("expected an answered rejection, got {other:?}"),
        }
    }

    #[test]
    fn oracle_header_split_and_data_with_status() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_IN, 3);
        let w = walk(&[(H, 5, false), (H + 5, 11, false), (D, 1025, true)]);
        let r = accepted(expected(arena.mem(), &ctx(), 9, &w));
        assert_eq!(r.request_type, RequestType::In);
        assert_eq!((r.head_index, r.sector), (9, 3));
        assert_eq!(r.data, [(GuestAddress(D), 1024)]);
        assert_eq!(r.data_len, 1024);
        assert_eq!(r.status_addr, GuestAddress(D + 1024));
        assert_eq!(r.used_len_ok(), 1025);
    }

    #[test]
    fn oracle_header_and_data_in_one_descriptor() {
        let arena = MmapArena::new();
        header(&arena, D, VIRTIO_BLK_T_OUT, 0);
        let w = walk(&[(D, 16 + 512, false), (D + 0x800, 512, false), (S, 1, true)]);
        let r = accepted(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(r.request_type, RequestType::Out);
        assert_eq!(
            r.data,
            [(GuestAddress(D + 16), 512), (GuestAddress(D + 0x800), 512)]
        );
        assert_eq!((r.data_len, r.status_addr), (1024, GuestAddress(S)));
        // A discard segment right after the header, in the same descriptor.
        header(&arena, D, VIRTIO_BLK_T_DISCARD, 0);
        let mut seg = [0u8; 16];
        seg[..8].copy_from_slice(&100u64.to_le_bytes());
        seg[8..12].copy_from_slice(&7u32.to_le_bytes());
        arena.poke(D + 16, &seg);
        let w = walk(&[(D, 32, false), (S, 1, true)]);
        let r = accepted(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(r.data, [(GuestAddress(D + 16), 16)]);
        let s = Segment {
            sector: 100,
            num_sectors: 7,
            unmap: false,
        };
        assert_eq!(r.segments, [s]);
    }

    #[test]
    fn oracle_out_with_writable_bytes_before_the_status_is_wrong_direction() {
        let arena = MmapArena::new();
        header(&arena, D, VIRTIO_BLK_T_OUT, 0);
        let w = walk(&[(D, 16 + 512, false), (S, 2, true)]);
        let (st, errors) = answered(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(st, GuestAddress(S + 1));
        assert_eq!(errors, [Error::WrongDirection]);
    }

    #[test]
    fn oracle_wide_status_descriptor() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_FLUSH, 0);
        let w = walk(&[(H, 16, false), (S, 8, true)]);
        let r = accepted(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!((r.status_addr, r.data.len()), (GuestAddress(S + 7), 0));
        header(&arena, H, VIRTIO_BLK_T_GET_ID, 0);
        let r = accepted(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(r.data, [(GuestAddress(S), 7)]);
        assert_eq!(r.used_len_ok(), 8);
    }

    #[test]
    fn oracle_readable_after_writable() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_IN, 0);
        let w = walk(&[
            (H, 16, false),
            (D, 512, true),
            (D + 512, 512, false),
            (S, 1, true),
        ]);
        let (st, errors) = answered(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(st, GuestAddress(S));
        assert_eq!(errors, [Error::ReadableAfterWritable]);
    }

    #[test]
    fn oracle_chain_too_long() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_FLUSH, 0);
        let mut bufs = vec![(H, 16, false)];
        bufs.extend([(D, 0, false); 7]);
        bufs.push((S + 3, 2, true));
        // Nine descriptors, the limit is eight: answered at the last byte.
        let (st, errors) = answered(expected(arena.mem(), &ctx(), 0, &walk(&bufs)));
        assert_eq!(st, GuestAddress(S + 4));
        assert_eq!(errors, [Error::ChainTooLong(8)]);
        // Eight are fine.
        bufs.remove(1);
        let r = accepted(expected(arena.mem(), &ctx(), 0, &walk(&bufs)));
        assert_eq!(r.request_type, RequestType::Flush);
        // Too long and cut short: dropped.
        bufs.insert(1, (D, 0, false));
        let mut w = walk(&bufs);
        w.pop();
        match expected(arena.mem(), &ctx(), 0, &w) {
            Expected::Drop(errors) => assert!(errors.contains(&Error::ChainTruncated)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oracle_one_writable_descriptor_is_answered() {
        // A usable status byte and nothing else: no header, but answered.
        let arena = MmapArena::new();
        let w = walk(&[(S, 1, true)]);
        let (st, errors) = answered(expected(arena.mem(), &ctx(), 0, &w));
        assert_eq!(
            (st, errors),
            (GuestAddress(S), vec![Error::WriteOnlyHeader])
        );
        // A readable one is dropped.
        let w = walk(&[(H, 16, false)]);
        assert!(matches!(
            expected(arena.mem(), &ctx(), 0, &w),
            Expected::Drop(e) if e == [Error::StatusNotWritable]
        ));
    }

    #[test]
    #[should_panic(expected = "accepted request differs from the chain")]
    fn oracle_catches_a_status_at_the_first_byte_of_its_descriptor() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_FLUSH, 0);
        let w = walk(&[(H, 16, false), (S, 8, true)]);
        let e = expected(arena.mem(), &ctx(), 0, &w);
        let mut wrong = match &e {
            Expected::Accept(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        wrong.status_addr = GuestAddress(S);
        check_accepted(arena.mem(), &ctx(), &w, &e, &wrong);
    }

    #[test]
    #[should_panic(expected = "accepted request differs from the chain")]
    fn oracle_catches_data_taken_by_descriptor() {
        let arena = MmapArena::new();
        header(&arena, D, VIRTIO_BLK_T_OUT, 0);
        let w = walk(&[(D, 16 + 512, false), (S, 1, true)]);
        let e = expected(arena.mem(), &ctx(), 0, &w);
        let mut wrong = match &e {
            Expected::Accept(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        wrong.data = vec![(GuestAddress(D), 528)];
        wrong.data_len = 528;
        check_accepted(arena.mem(), &ctx(), &w, &e, &wrong);
    }

    #[test]
    #[should_panic(expected = "is usable but the chain is not answered there")]
    fn oracle_catches_a_dropped_too_long_chain() {
        let arena = MmapArena::new();
        let mut bufs = vec![(H, 16, false)];
        bufs.extend([(D, 0, false); 8]);
        bufs.push((S, 1, true));
        let w = walk(&bufs);
        let e = expected(arena.mem(), &ctx(), 0, &w);
        let rej = Rejected {
            head_index: 0,
            error: Error::ChainTooLong(8),
            status_addr: None,
        };
        check_rejected(arena.mem(), 0, &w, &e, &rej);
    }

    #[test]
    #[should_panic(expected = "rejected (HeaderTooShort(5)) a valid chain")]
    fn oracle_catches_a_split_header_rejected() {
        let arena = MmapArena::new();
        header(&arena, H, VIRTIO_BLK_T_FLUSH, 0);
        let w = walk(&[(H, 5, false), (H + 5, 11, false), (S, 1, true)]);
        let e = expected(arena.mem(), &ctx(), 0, &w);
        let rej = Rejected {
            head_index: 0,
            error: Error::HeaderTooShort(5),
            status_addr: Some(GuestAddress(S)),
        };
        check_rejected(arena.mem(), 0, &w, &e, &rej);
    }

    /// Outcome totals over the local corpus:
    /// `cargo test --release -- --ignored --nocapture corpus_statistics`.
    #[test]
    #[ignore = "needs a local corpus in corpus/descriptor_chain"]
    fn corpus_statistics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/descriptor_chain");
        let mut total = Outcome::default();
        let (mut inputs, mut broken) = (0, 0);
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
            broken += u32::from(o.broken);
            total.framings.add(&o.framings);
        }
        println!(
            "{inputs} inputs ({broken} broke the queue): executed {:?}, answered {}, \
             dropped {}, skipped {}; {:?}",
            total.executed, total.answered, total.dropped, total.skipped, total.framings
        );
    }
}
