//! Parsing a virtio-blk descriptor chain into a [`Request`] (parse, then execute elsewhere).
//!
//! The parser validates the whole chain before anything is executed and records data buffers
//! as `(GuestAddress, len)` pairs; it never reads or writes payload. Every access is checked
//! against the guest memory with the access mode it will need (`GuestMemory::check_range`
//! with `Permissions`), so a request never makes the daemon touch memory outside the mappings
//! or write into a read-only mapping.
//!
//! A failure is a [`Rejected`]: when the status descriptor is usable the request is answered
//! with [`Error::status`]; otherwise it is dropped (used length 0) with a log line.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory, Le32, Le64, Permissions};

use super::config::{feature, DeviceModel};

/// Bytes per sector in virtio-blk.
pub const SECTOR_SIZE: u64 = 512;
/// `VIRTIO_BLK_T_IN`.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// `VIRTIO_BLK_S_OK`.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// `VIRTIO_BLK_ID_BYTES`.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_SIZE: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const SEGMENT_SIZE: u32 = 16;

/// `struct virtio_blk_outhdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub type_: Le32,
    /// I/O priority (ignored).
    pub ioprio: Le32,
    /// First sector.
    pub sector: Le64,
}

// SAFETY: three little-endian integers, no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawSegment {
    /// First sector.
    pub sector: Le64,
    /// Number of sectors.
    pub num_sectors: Le32,
    /// Flags (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
    pub flags: Le32,
}

// SAFETY: three little-endian integers, no padding; any bit pattern is valid.
unsafe impl ByteValued for RawSegment {}

/// The request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read.
    In,
    /// Write.
    Out,
    /// Cache flush.
    Flush,
    /// Device id string.
    GetId,
    /// Discard ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
}

/// One discard / write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// May deallocate (write zeroes with UNMAP).
    pub unmap: bool,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Head index of the chain (for the used ring).
    pub head_index: u16,
    /// What to do.
    pub request_type: RequestType,
    /// First sector (IN/OUT).
    pub sector: u64,
    /// Data buffers, in chain order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Sum of the data buffer lengths.
    pub data_len: u32,
    /// Discard / write-zeroes ranges.
    pub segments: Vec<Segment>,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

impl Default for Request {
    /// An empty FLUSH-typed request without buffers (storage for [`parse_into`]).
    fn default() -> Self {
        Request {
            head_index: 0,
            request_type: RequestType::Flush,
            sector: 0,
            data: Vec::new(),
            data_len: 0,
            segments: Vec::new(),
            status_addr: GuestAddress(0),
        }
    }
}

impl Request {
    /// An empty request whose buffers hold `data` buffers and `segments` ranges without
    /// growing.
    pub fn with_capacity(data: usize, segments: usize) -> Self {
        Request {
            data: Vec::with_capacity(data),
            segments: Vec::with_capacity(segments),
            ..Request::default()
        }
    }

    /// Byte offset on the backing device.
    pub fn offset(&self) -> u64 {
        self.sector * SECTOR_SIZE
    }

    /// Bytes the device writes into the chain when the request succeeds (used length).
    pub fn used_len_ok(&self) -> u32 {
        match self.request_type {
            RequestType::In => self.data_len + 1,
            RequestType::GetId => (self.data_len as usize).min(VIRTIO_BLK_ID_BYTES) as u32 + 1,
            _ => 1,
        }
    }
}

/// What the parser needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseContext {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Read-only device.
    pub read_only: bool,
    /// Longest chain accepted, in descriptors: what the device promises the driver (`seg_max`
    /// data segments plus header and status) or the queue size, whichever is larger. Linux
    /// sends up to `seg_max + 2` descriptors through an indirect table whatever queue size it
    /// chose.
    pub max_chain: u16,
    /// DISCARD offered.
    pub discard: bool,
    /// WRITE_ZEROES offered.
    pub write_zeroes: bool,
    /// `max_discard_sectors`.
    pub max_discard_sectors: u32,
    /// `max_discard_seg`.
    pub max_discard_seg: u32,
    /// `max_write_zeroes_sectors`.
    pub max_write_zeroes_sectors: u32,
    /// `max_write_zeroes_seg`.
    pub max_write_zeroes_seg: u32,
}

/// The longest chain a driver may send: `seg_max` data descriptors plus header and status, or
/// the queue size, whichever is larger.
pub fn max_chain(queue_size: u16, seg_max: u32) -> u16 {
    let promised = u16::try_from(seg_max.saturating_add(2)).unwrap_or(u16::MAX);
    queue_size.max(promised)
}

impl ParseContext {
    /// From the device model.
    pub fn from_model(m: &DeviceModel) -> Self {
        ParseContext {
            capacity: m.config.capacity,
            read_only: m.read_only,
            max_chain: max_chain(m.queue_size, m.config.seg_max),
            discard: m.has(feature::DISCARD),
            write_zeroes: m.has(feature::WRITE_ZEROES),
            max_discard_sectors: m.config.max_discard_sectors,
            max_discard_seg: m.config.max_discard_seg,
            max_write_zeroes_sectors: m.config.max_write_zeroes_sectors,
            max_write_zeroes_seg: m.config.max_write_zeroes_seg,
        }
    }
}

/// Why a chain was not turned into a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The chain has no descriptor at all (bad head index or unreadable table).
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The chain ends with NEXT set: a loop, a next index past the table, or an unreadable
    /// descriptor.
    #[error("descriptor chain is cut short (loop, bad next index or unreadable descriptor)")]
    ChainTruncated,
    /// More descriptors than the device accepts (see [`ParseContext::max_chain`]).
    #[error("descriptor chain longer than {0} descriptors")]
    ChainTooLong(u16),
    /// The last descriptor is not device-writable: there is no status byte.
    #[error("last descriptor is not device-writable: no status byte")]
    StatusNotWritable,
    /// The last descriptor has length 0.
    #[error("last descriptor is empty: no status byte")]
    StatusTooShort,
    /// The chain starts with a device-writable descriptor: no header.
    #[error("chain starts with a device-writable descriptor: no request header")]
    WriteOnlyHeader,
    /// Fewer than 16 device-readable bytes.
    #[error("request header has {0} device-readable bytes, need 16")]
    HeaderTooShort(u32),
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A buffer lies (partly) outside the mappings or lacks the needed permission.
    #[error("buffer {addr:#x}+{len} is outside guest memory or not accessible")]
    InvalidAddress {
        /// IOVA.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A data descriptor has the wrong direction for the request type.
    #[error("data descriptor has the wrong direction for this request type")]
    WrongDirection,
    /// IN/OUT data length not a multiple of 512.
    #[error("data length {0} is not a multiple of 512")]
    DataLengthNotSectorMultiple(u32),
    /// The data adds up to more than 4 GiB.
    #[error("data length overflows")]
    DataTooLong,
    /// The sectors touched are past the capacity.
    #[error("sectors {sector}+{count} past capacity {capacity}")]
    SectorOutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Device capacity.
        capacity: u64,
    },
    /// A write-class request on a read-only device.
    #[error("write to a read-only device")]
    ReadOnly,
    /// An unknown or not offered request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Discard/write-zeroes data not a non-zero multiple of 16 bytes.
    #[error("discard/write-zeroes data length {0} is not a non-zero multiple of 16")]
    BadSegmentLength(u32),
    /// More segments than `max_*_seg`.
    #[error("{count} segments, at most {max} allowed")]
    TooManySegments {
        /// Given.
        count: u32,
        /// Allowed.
        max: u32,
    },
    /// A segment longer than `max_*_sectors`.
    #[error("segment of {count} sectors, at most {max} allowed")]
    SegmentTooLarge {
        /// Given.
        count: u32,
        /// Allowed.
        max: u32,
    },
    /// Reserved or not allowed segment flags.
    #[error("unsupported segment flags {0:#x}")]
    UnsupportedFlags(u32),
}

impl Error {
    /// The virtio-blk status to answer with, or `None` when the chain must be dropped
    /// (no usable status descriptor).
    pub fn status(&self) -> Option<u8> {
        match self {
            Error::EmptyChain
            | Error::ChainTruncated
            | Error::StatusNotWritable
            | Error::StatusTooShort => None,
            Error::Unsupported(_) | Error::UnsupportedFlags(_) => Some(VIRTIO_BLK_S_UNSUPP),
            _ => Some(VIRTIO_BLK_S_IOERR),
        }
    }
}

/// A chain that did not parse, with what is needed to answer or drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Head index (for the used ring).
    pub head_index: u16,
    /// What was wrong.
    pub error: Error,
    /// Where to write [`Error::status`], when the status descriptor is usable.
    pub status_addr: Option<GuestAddress>,
}

fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> Result<(), Error> {
    if len > 0 && !mem.check_range(addr, len as usize, access) {
        return Err(Error::InvalidAddress {
            addr: addr.raw_value(),
            len,
        });
    }
    // The buffer's last byte must be addressable; a buffer may end at the very top of the IOVA
    // space (its exclusive end, 2^64, is not representable and is not needed).
    if len > 0 && addr.checked_add(u64::from(len) - 1).is_none() {
        return Err(Error::InvalidAddress {
            addr: addr.raw_value(),
            len,
        });
    }
    Ok(())
}

fn check_sectors(sector: u64, count: u64, capacity: u64) -> Result<(), Error> {
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(Error::SectorOutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}

/// Reads `buf.len()` bytes at byte `offset` of the concatenated data buffers.
fn read_data<M: GuestMemory + ?Sized>(
    mem: &M,
    data: &[(GuestAddress, u32)],
    mut offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    let mut done = 0usize;
    for &(addr, len) in data {
        if done == buf.len() {
            break;
        }
        let len = u64::from(len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = ((len - offset) as usize).min(buf.len() - done);
        let a = addr.unchecked_add(offset);
        mem.read_slice(&mut buf[done..done + n], a)
            .map_err(|_| Error::InvalidAddress {
                addr: a.raw_value(),
                len: n as u32,
            })?;
        done += n;
        offset = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(Error::BadSegmentLength(done as u32))
    }
}

/// Parses one chain. `chain` is consumed; at most `max_chain` descriptors are kept (the rest
/// of a longer chain is only walked to find its status byte).
///
/// Allocates a fresh [`Request`]; the worker uses [`parse_into`], which reuses its buffers.
pub fn parse<M>(chain: DescriptorChain<M>, ctx: &ParseContext) -> Result<Request, Rejected>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut descs = Vec::new();
    let mut req = Request::default();
    parse_into(chain, ctx, &mut descs, &mut req)?;
    Ok(req)
}

/// [`parse`] into caller-owned storage: `descs` is scratch space for the chain's descriptors
/// and `req` receives the request; both keep their capacity across calls, so parsing in a
/// steady state does not allocate. On error `req` holds unspecified contents.
pub fn parse_into<M>(
    chain: DescriptorChain<M>,
    ctx: &ParseContext,
    descs: &mut Vec<Descriptor>,
    req: &mut Request,
) -> Result<(), Rejected>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let head_index = chain.head_index();
    let reject = |error: Error, status_addr: Option<GuestAddress>| Rejected {
        head_index,
        error,
        status_addr,
    };
    let mut chain = chain;
    descs.clear();
    // Past the limit the chain is still walked (virtio-queue bounds the walk by the table
    // size) so that its status byte can be answered: a longer chain the driver thinks valid
    // must fail loudly, not complete with nothing done.
    let mut overflow: Option<Descriptor> = None;
    for d in chain.by_ref() {
        if descs.len() >= usize::from(ctx.max_chain) {
            overflow = Some(d);
            continue;
        }
        descs.push(d);
    }
    let mem = chain.memory();
    if let Some(last) = overflow {
        let st = status_address(mem, &last);
        return Err(reject(Error::ChainTooLong(ctx.max_chain), st));
    }
    parse_descriptors_into(mem, head_index, descs, ctx, req).map_err(|(e, s)| reject(e, s))
}

/// Parses the chain at `head` of the descriptor table at `desc_table` (a queue of
/// `queue_size` entries) without going through the available ring: a request re-submitted
/// after a reconnect, whose available entry the driver may have overwritten since. The walk
/// follows virtio-queue's rules (at most `queue_size` descriptors, one indirect table whose
/// length is a multiple of 16, no indirect inside it), so a chain parses here exactly as it
/// parsed when it was popped.
pub fn parse_head_into<M: GuestMemory + ?Sized>(
    mem: &M,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    ctx: &ParseContext,
    descs: &mut Vec<Descriptor>,
    req: &mut Request,
) -> Result<(), Rejected> {
    let reject = |error: Error, status_addr: Option<GuestAddress>| Rejected {
        head_index: head,
        error,
        status_addr,
    };
    descs.clear();
    let (mut table, mut len, mut next) = (desc_table, queue_size, head);
    let mut indirect = false;
    let mut ttl = u32::from(queue_size);
    let mut last: Option<Descriptor> = None;
    let mut count = 0usize;
    let mut complete = false;
    while ttl > 0 && next < len {
        let at = table.checked_add(u64::from(next) * 16);
        let Some(d) = at.and_then(|a| mem.read_obj::<Descriptor>(a).ok()) else {
            break;
        };
        if d.refers_to_indirect_table() {
            if indirect || d.len() % 16 != 0 || d.len() / 16 > u32::from(u16::MAX) {
                break;
            }
            (table, len, next) = (d.addr(), (d.len() / 16) as u16, 0);
            ttl = u32::from(len);
            indirect = true;
            continue;
        }
        last = Some(d);
        count += 1;
        if descs.len() < usize::from(ctx.max_chain) {
            descs.push(d);
        }
        ttl -= 1;
        if !d.has_next() {
            complete = true;
            break;
        }
        next = d.next();
    }
    let Some(last) = last else {
        return Err(reject(Error::EmptyChain, None));
    };
    if !complete {
        return Err(reject(Error::ChainTruncated, None));
    }
    if count > usize::from(ctx.max_chain) {
        let st = status_address(mem, &last);
        return Err(reject(Error::ChainTooLong(ctx.max_chain), st));
    }
    parse_descriptors_into(mem, head, descs, ctx, req).map_err(|(e, s)| reject(e, s))
}

/// The second half of [`parse`], on already collected descriptors.
pub fn parse_descriptors<M: GuestMemory + ?Sized>(
    mem: &M,
    head_index: u16,
    descs: &[Descriptor],
    ctx: &ParseContext,
) -> Result<Request, (Error, Option<GuestAddress>)> {
    let mut req = Request::default();
    parse_descriptors_into(mem, head_index, descs, ctx, &mut req)?;
    Ok(req)
}

/// The status byte of a chain whose last descriptor is `last`: the descriptor's last byte,
/// when the descriptor ends the chain, is device-writable, and that byte is writable memory.
pub fn status_address<M: GuestMemory + ?Sized>(mem: &M, last: &Descriptor) -> Option<GuestAddress> {
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    check(mem, addr, 1, Permissions::Write).ok()?;
    Some(addr)
}

/// Calls `f` with the byte ranges of `descs` left after skipping the first `skip_front` and
/// the last `skip_back` bytes of their concatenation (empty ranges are not reported).
fn for_each_range(
    descs: &[Descriptor],
    mut skip_front: u64,
    skip_back: u64,
    mut f: impl FnMut(GuestAddress, u32) -> Result<(), Error>,
) -> Result<(), Error> {
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    let mut remaining = total.saturating_sub(skip_front).saturating_sub(skip_back);
    for d in descs {
        if remaining == 0 {
            break;
        }
        let len = u64::from(d.len());
        if skip_front >= len {
            skip_front -= len;
            continue;
        }
        let n = (len - skip_front).min(remaining);
        // Cannot overflow: the descriptor's own range was checked to end inside the IOVA space
        // before any call, and `skip_front + n <= len`.
        let addr = GuestAddress(d.addr().0.wrapping_add(skip_front));
        f(addr, n as u32)?;
        remaining -= n;
        skip_front = 0;
    }
    Ok(())
}

/// [`parse_descriptors`] into a reused [`Request`] (its `data` and `segments` keep their
/// capacity). On error `req` holds unspecified contents.
///
/// The request is parsed by byte offset, not by descriptor (virtio 1.2, 2.6.4.1: a device
/// must not assume a particular arrangement of descriptors): the header is the first 16
/// device-readable bytes, the status the last byte of the chain (which must be
/// device-writable), and the data whatever lies between, however the driver split it. A
/// header and its data in one descriptor, or data and status in one, are served as such.
pub fn parse_descriptors_into<M: GuestMemory + ?Sized>(
    mem: &M,
    head_index: u16,
    descs: &[Descriptor],
    ctx: &ParseContext,
    req: &mut Request,
) -> Result<(), (Error, Option<GuestAddress>)> {
    req.data.clear();
    req.segments.clear();
    let Some(last) = descs.last() else {
        return Err((Error::EmptyChain, None));
    };
    if last.has_next() {
        return Err((Error::ChainTruncated, None));
    }
    if !last.is_write_only() {
        return Err((Error::StatusNotWritable, None));
    }
    if last.len() < 1 {
        return Err((Error::StatusTooShort, None));
    }
    let Some(status_addr) = status_address(mem, last) else {
        return Err((
            Error::InvalidAddress {
                addr: last.addr().raw_value(),
                len: last.len(),
            },
            None,
        ));
    };
    let st = Some(status_addr);
    if descs.len() > usize::from(ctx.max_chain) {
        return Err((Error::ChainTooLong(ctx.max_chain), st));
    }
    // Every descriptor must lie in the IOVA space (its permissions are checked per use).
    for d in descs {
        if d.len() > 0 && d.addr().checked_add(u64::from(d.len()) - 1).is_none() {
            return Err((
                Error::InvalidAddress {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                },
                st,
            ));
        }
    }
    // Device-readable descriptors come first, device-writable ones after (2.7.4.2).
    let split = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    if writable.iter().any(|d| !d.is_write_only()) {
        return Err((Error::ReadableAfterWritable, st));
    }
    if readable.is_empty() {
        return Err((Error::WriteOnlyHeader, st));
    }
    let readable_len: u64 = readable.iter().map(|d| u64::from(d.len())).sum();
    if readable_len < u64::from(HEADER_SIZE) {
        return Err((Error::HeaderTooShort(readable_len as u32), st));
    }
    let mut hdr = RequestHeader::default();
    let mut at = 0usize;
    let hbuf = hdr.as_mut_slice();
    for_each_range(
        readable,
        0,
        readable_len - u64::from(HEADER_SIZE),
        |addr, len| {
            check(mem, addr, len, Permissions::Read)?;
            let n = len as usize;
            mem.read_slice(&mut hbuf[at..at + n], addr)
                .map_err(|_| Error::InvalidAddress {
                    addr: addr.raw_value(),
                    len,
                })?;
            at += n;
            Ok(())
        },
    )
    .map_err(|e| (e, st))?;
    let type_ = hdr.type_.to_native();
    let sector = hdr.sector.to_native();

    let request_type = match type_ {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        VIRTIO_BLK_T_DISCARD if ctx.discard => RequestType::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES if ctx.write_zeroes => RequestType::WriteZeroes,
        t => return Err((Error::Unsupported(t), st)),
    };
    let device_writes = matches!(request_type, RequestType::In | RequestType::GetId);

    let data = &mut req.data;
    let mut total: u64 = 0;
    if request_type != RequestType::Flush {
        let access = if device_writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        // Bytes of the wrong direction between header and status make a malformed request.
        let mut add = |in_writable_part: bool, addr: GuestAddress, len: u32| {
            if in_writable_part != device_writes {
                return Err(Error::WrongDirection);
            }
            check(mem, addr, len, access)?;
            total += u64::from(len);
            if total > u64::from(u32::MAX) {
                return Err(Error::DataTooLong);
            }
            data.push((addr, len));
            Ok(())
        };
        for_each_range(readable, u64::from(HEADER_SIZE), 0, |a, l| add(false, a, l))
            .map_err(|e| (e, st))?;
        for_each_range(writable, 0, 1, |a, l| add(true, a, l)).map_err(|e| (e, st))?;
    }
    let total = total as u32;

    let segments = &mut req.segments;
    match request_type {
        RequestType::In | RequestType::Out => {
            if u64::from(total) % SECTOR_SIZE != 0 {
                return Err((Error::DataLengthNotSectorMultiple(total), st));
            }
            if request_type == RequestType::Out && ctx.read_only {
                return Err((Error::ReadOnly, st));
            }
            check_sectors(sector, u64::from(total) / SECTOR_SIZE, ctx.capacity)
                .map_err(|e| (e, st))?;
        }
        RequestType::Flush | RequestType::GetId => {}
        RequestType::Discard | RequestType::WriteZeroes => {
            if ctx.read_only {
                return Err((Error::ReadOnly, st));
            }
            if total == 0 || total % SEGMENT_SIZE != 0 {
                return Err((Error::BadSegmentLength(total), st));
            }
            let count = total / SEGMENT_SIZE;
            let discard = request_type == RequestType::Discard;
            let (max_seg, max_sectors) = if discard {
                (ctx.max_discard_seg, ctx.max_discard_sectors)
            } else {
                (ctx.max_write_zeroes_seg, ctx.max_write_zeroes_sectors)
            };
            if count > max_seg {
                return Err((
                    Error::TooManySegments {
                        count,
                        max: max_seg,
                    },
                    st,
                ));
            }
            for i in 0..count {
                let mut raw = RawSegment::default();
                read_data(mem, data, u64::from(i * SEGMENT_SIZE), raw.as_mut_slice())
                    .map_err(|e| (e, st))?;
                let flags = raw.flags.to_native();
                let allowed = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return Err((Error::UnsupportedFlags(flags), st));
                }
                let seg = Segment {
                    sector: raw.sector.to_native(),
                    num_sectors: raw.num_sectors.to_native(),
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                };
                if seg.num_sectors > max_sectors {
                    return Err((
                        Error::SegmentTooLarge {
                            count: seg.num_sectors,
                            max: max_sectors,
                        },
                        st,
                    ));
                }
                check_sectors(seg.sector, u64::from(seg.num_sectors), ctx.capacity)
                    .map_err(|e| (e, st))?;
                segments.push(seg);
            }
        }
    }

    req.head_index = head_index;
    req.request_type = request_type;
    req.sector = sector;
    req.data_len = total;
    req.status_addr = status_addr;
    Ok(())
}
