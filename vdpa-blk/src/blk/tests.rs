//! Every request type and every malformed-chain case, driven through virtio-queue's mock
//! driver on `GuestMemoryMmap` with the in-memory backend.

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::exec::{execute, id_bytes, MemBackend};
use super::request::*;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const MEM_SIZE: usize = 0x40_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn dn(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn hdr(m: &GuestMemoryMmap, type_: u32, sector: u64) {
    m.write_obj(type_.to_le(), GuestAddress(HDR)).expect("hdr");
    m.write_obj(0u32, GuestAddress(HDR + 4)).expect("hdr");
    m.write_obj(sector.to_le(), GuestAddress(HDR + 8))
        .expect("hdr");
}

fn seg(m: &GuestMemoryMmap, at: u64, sector: u64, n: u32, flags: u32) {
    m.write_obj(sector.to_le(), GuestAddress(at)).expect("seg");
    m.write_obj(n.to_le(), GuestAddress(at + 8)).expect("seg");
    m.write_obj(flags.to_le(), GuestAddress(at + 12))
        .expect("seg");
}

fn ctx() -> ParseContext {
    ParseContext {
        capacity: 2048,
        read_only: false,
        max_chain: 16,
        discard: true,
        write_zeroes: true,
        max_discard_sectors: 1024,
        max_discard_seg: 4,
        max_write_zeroes_sectors: 1024,
        max_write_zeroes_seg: 4,
    }
}

fn parse_chain(
    m: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    c: &ParseContext,
) -> Result<Request, Rejected> {
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq.build_desc_chain(descs).expect("chain");
    parse(chain, c)
}

fn status(m: &GuestMemoryMmap) -> u8 {
    m.read_obj::<u8>(GuestAddress(STATUS)).expect("status")
}

fn rejected(r: Result<Request, Rejected>) -> Rejected {
    r.expect_err("request must be rejected")
}

#[test]
fn in_reads_backend_into_guest_buffers() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 2);
    let mut b = MemBackend::new(2048 * 512);
    for (i, x) in b.data[1024..2048].iter_mut().enumerate() {
        *x = i as u8;
    }
    let req = parse_chain(
        &m,
        &[
            d(HDR, 16, 0),
            d(DATA, 512, F_WRITE),
            d(DATA + 0x1000, 512, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    )
    .expect("valid IN");
    assert_eq!(req.request_type, RequestType::In);
    assert_eq!(
        req.data,
        vec![
            (GuestAddress(DATA), 512),
            (GuestAddress(DATA + 0x1000), 512)
        ]
    );
    let c = execute(&m, &req, &mut b, &id_bytes("s")).expect("status written");
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
    assert_eq!(c.used_len, 1025);
    let mut got = vec![0u8; 512];
    m.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .expect("read");
    assert_eq!(got, b.data[1536..2048]);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
}

#[test]
fn out_writes_guest_buffers_to_backend() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 8);
    m.write_slice(&[0xab; 1024], GuestAddress(DATA))
        .expect("fill");
    let mut b = MemBackend::new(2048 * 512);
    let req = parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 1024, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    )
    .expect("valid OUT");
    let c = execute(&m, &req, &mut b, &id_bytes("s")).expect("status written");
    assert_eq!((c.status, c.used_len), (VIRTIO_BLK_S_OK, 1));
    assert!(b.data[4096..5120].iter().all(|&x| x == 0xab));
    assert!(b.data[5120..5121].iter().all(|&x| x == 0));
}

#[test]
fn flush_reaches_backend_and_ignores_data() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
    let mut b = MemBackend::new(512);
    let req = parse_chain(&m, &[d(HDR, 16, 0), d(STATUS, 1, F_WRITE)], &ctx()).expect("flush");
    execute(&m, &req, &mut b, &id_bytes("s")).expect("status");
    assert_eq!(b.flushes, 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
}

#[test]
fn get_id_writes_serial_padded_to_20_bytes() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_GET_ID, 0);
    m.write_slice(&[0xff; 20], GuestAddress(DATA))
        .expect("fill");
    let req = parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 20, F_WRITE), d(STATUS, 1, F_WRITE)],
        &ctx(),
    )
    .expect("get id");
    let c = execute(&m, &req, &mut MemBackend::new(512), &id_bytes("vol-1")).expect("status");
    assert_eq!(c.used_len, 21);
    let mut got = [0u8; 20];
    m.read_slice(&mut got, GuestAddress(DATA)).expect("read");
    assert_eq!(&got[..5], b"vol-1");
    assert!(got[5..].iter().all(|&x| x == 0));
    assert_eq!(id_bytes(&"x".repeat(30)), [b'x'; 20]);
}

#[test]
fn discard_segments_reach_backend() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    seg(&m, DATA, 8, 16, 0);
    seg(&m, DATA + 16, 100, 4, 0);
    let mut b = MemBackend::new(2048 * 512);
    b.data.fill(1);
    let req = parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 32, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    )
    .expect("discard");
    assert_eq!(req.segments.len(), 2);
    execute(&m, &req, &mut b, &id_bytes("s")).expect("status");
    assert_eq!(b.discarded, vec![(4096, 8192), (51200, 2048)]);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
}

#[test]
fn discard_with_unmap_flag_is_unsupp() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    seg(&m, DATA, 8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::UnsupportedFlags(1));
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_UNSUPP));
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    seg(&m, DATA, 0, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    seg(&m, DATA + 16, 10, 2, 0);
    let mut b = MemBackend::new(2048 * 512);
    b.data.fill(7);
    let req = parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 32, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    )
    .expect("write zeroes");
    assert_eq!(
        req.segments,
        vec![
            Segment {
                sector: 0,
                num_sectors: 2,
                unmap: true
            },
            Segment {
                sector: 10,
                num_sectors: 2,
                unmap: false
            }
        ]
    );
    execute(&m, &req, &mut b, &id_bytes("s")).expect("status");
    assert!(b.data[..1024].iter().all(|&x| x == 0));
    assert!(b.data[5120..6144].iter().all(|&x| x == 0));
    assert_eq!(b.data[1024], 7);
    assert_eq!(b.unmapped, vec![(0, 1024)]);
}

#[test]
fn write_zeroes_with_reserved_flag_is_unsupp() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    seg(&m, DATA, 0, 2, 0x4);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn segments_may_straddle_descriptors() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    seg(&m, DATA, 8, 16, 0);
    // Copy the 16 bytes so that 10 are in one descriptor and 6 in the next.
    let mut raw = [0u8; 16];
    m.read_slice(&mut raw, GuestAddress(DATA)).expect("read");
    m.write_slice(&raw[..10], GuestAddress(DATA + 0x1000))
        .expect("w");
    m.write_slice(&raw[10..], GuestAddress(DATA + 0x2000))
        .expect("w");
    let req = parse_chain(
        &m,
        &[
            d(HDR, 16, 0),
            d(DATA + 0x1000, 10, 0),
            d(DATA + 0x2000, 6, 0),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    )
    .expect("discard");
    assert_eq!(
        req.segments,
        vec![Segment {
            sector: 8,
            num_sectors: 16,
            unmap: false
        }]
    );
}

#[test]
fn unsupported_type_returns_unsupp() {
    let m = mem();
    hdr(&m, 2, 0); // SCSI_CMD
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::Unsupported(2));
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn discard_not_offered_returns_unsupp() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    seg(&m, DATA, 8, 16, 0);
    let c = ParseContext {
        discard: false,
        ..ctx()
    };
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &c,
    ));
    assert_eq!(r.error, Error::Unsupported(VIRTIO_BLK_T_DISCARD));
}

#[test]
fn write_to_read_only_device_returns_ioerr() {
    let m = mem();
    let c = ParseContext {
        read_only: true,
        ..ctx()
    };
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, F_WRITE)],
        &c,
    ));
    assert_eq!(r.error, Error::ReadOnly);
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    hdr(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    seg(&m, DATA, 0, 1, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &c,
    ));
    assert_eq!(r.error, Error::ReadOnly);
    // Reads still work.
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
        &c,
    )
    .expect("read on read-only device");
}

#[test]
fn read_past_capacity_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 2047);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 1024, F_WRITE), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert!(matches!(
        r.error,
        Error::SectorOutOfRange {
            sector: 2047,
            count: 2,
            capacity: 2048
        }
    ));
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    hdr(&m, VIRTIO_BLK_T_IN, u64::MAX);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert!(
        matches!(r.error, Error::SectorOutOfRange { .. }),
        "overflow is out of range"
    );
}

#[test]
fn discard_past_capacity_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    seg(&m, DATA, 2040, 16, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert!(matches!(r.error, Error::SectorOutOfRange { .. }));
}

#[test]
fn too_many_or_too_large_segments_return_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
    for i in 0..5 {
        seg(&m, DATA + 16 * i, i * 8, 8, 0);
    }
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 80, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::TooManySegments { count: 5, max: 4 });
    seg(&m, DATA, 0, 1025, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(
        r.error,
        Error::SegmentTooLarge {
            count: 1025,
            max: 1024
        }
    );
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 15, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::BadSegmentLength(15));
}

#[test]
fn write_only_header_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(parse_chain(
        &m,
        &[
            d(HDR, 16, F_WRITE),
            d(DATA, 512, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    ));
    assert_eq!(r.error, Error::WriteOnlyHeader);
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}

#[test]
fn short_header_returns_ioerr() {
    let m = mem();
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 8, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::HeaderTooShort(8));
}

#[test]
fn read_only_status_descriptor_is_dropped() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, 0)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::StatusNotWritable);
    assert_eq!(r.error.status(), None);
    assert_eq!(r.status_addr, None);
}

#[test]
fn empty_status_descriptor_is_dropped() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(STATUS, 0, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::StatusTooShort);
    assert_eq!(r.status_addr, None);
}

#[test]
fn single_descriptor_chain_is_dropped() {
    let m = mem();
    let r = rejected(parse_chain(&m, &[d(HDR, 16, 0)], &ctx()));
    assert_eq!(r.error, Error::StatusNotWritable);
    assert_eq!(r.status_addr, None);
}

#[test]
fn status_outside_memory_is_dropped() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(MEM_SIZE as u64 + 0x1000, 1, F_WRITE)],
        &ctx(),
    ));
    assert!(matches!(r.error, Error::InvalidAddress { .. }));
    assert_eq!(r.status_addr, None);
}

#[test]
fn data_outside_memory_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(parse_chain(
        &m,
        &[
            d(HDR, 16, 0),
            d(MEM_SIZE as u64 - 512, 1024, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    ));
    assert!(
        matches!(r.error, Error::InvalidAddress { len: 1024, .. }),
        "{:?}",
        r.error
    );
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    let r = rejected(parse_chain(
        &m,
        &[
            d(HDR, 16, 0),
            d(u64::MAX - 100, 512, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    ));
    assert!(matches!(r.error, Error::InvalidAddress { .. }));
}

#[test]
fn header_outside_memory_returns_ioerr() {
    let m = mem();
    let r = rejected(parse_chain(
        &m,
        &[d(MEM_SIZE as u64, 16, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert!(matches!(r.error, Error::InvalidAddress { .. }));
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}

#[test]
fn data_length_not_sector_multiple_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 500, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::DataLengthNotSectorMultiple(500));
}

#[test]
fn wrong_data_direction_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::WrongDirection);
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::WrongDirection);
}

#[test]
fn chain_longer_than_the_limit_is_answered_with_ioerr() {
    // A longer chain must never complete with nothing done (Linux would read its own
    // never-written status byte, 0 = OK): its status byte is reachable, so it gets IOERR.
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let c = ParseContext {
        max_chain: 4,
        ..ctx()
    };
    let mut descs = vec![d(HDR, 16, 0)];
    for i in 0..4 {
        descs.push(d(DATA + i * 512, 512, 0));
    }
    descs.push(d(STATUS, 1, F_WRITE));
    let r = rejected(parse_chain(&m, &descs, &c));
    assert_eq!(r.error, Error::ChainTooLong(4));
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}

#[test]
fn the_chain_limit_is_what_seg_max_promises_not_the_chosen_queue_size() {
    // Offered 256 entries and seg_max 254; the driver chose 64 entries but may still send
    // 256-descriptor chains through an indirect table (Linux sizes requests by seg_max).
    assert_eq!(max_chain(64, 254), 256);
    assert_eq!(max_chain(256, 6), 256);
    assert_eq!(max_chain(16, u32::MAX), u16::MAX);
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let c = ParseContext {
        max_chain: max_chain(4, 6),
        ..ctx()
    };
    let mut descs = vec![d(HDR, 16, 0)];
    for i in 0..6 {
        descs.push(d(DATA + i * 512, 512, 0));
    }
    descs.push(d(STATUS, 1, F_WRITE));
    let req = parse_chain(&m, &descs, &c).expect("seg_max + 2 descriptors parse");
    assert_eq!(req.data_len, 6 * 512);
}

#[test]
fn header_and_data_in_one_descriptor_are_parsed_by_offset() {
    // virtio 1.2, 2.6.4.1: the device must not assume the framing. OUT with header and
    // 1024 bytes of data in one readable descriptor.
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 4);
    m.write_slice(&[0x5a; 1024], GuestAddress(HDR + 16))
        .expect("data after the header");
    let req =
        parse_chain(&m, &[d(HDR, 16 + 1024, 0), d(STATUS, 1, F_WRITE)], &ctx()).expect("parses");
    assert_eq!(req.request_type, RequestType::Out);
    assert_eq!(req.sector, 4);
    assert_eq!(req.data, vec![(GuestAddress(HDR + 16), 1024)]);
    assert_eq!(req.data_len, 1024);
    assert_eq!(req.status_addr, GuestAddress(STATUS));
}

#[test]
fn header_split_over_descriptors_and_data_with_status_in_one_descriptor() {
    // IN: the header in two 8-byte pieces, then one writable descriptor holding 512 data
    // bytes and the status byte after them.
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 2);
    // Second half of the header (the sector) somewhere else.
    m.write_slice(&[0u8; 8], GuestAddress(HDR + 0x100))
        .expect("zero");
    m.write_obj(2u64.to_le(), GuestAddress(HDR + 0x100))
        .expect("sector");
    let req = parse_chain(
        &m,
        &[d(HDR, 8, 0), d(HDR + 0x100, 8, 0), d(DATA, 513, F_WRITE)],
        &ctx(),
    )
    .expect("parses");
    assert_eq!(req.request_type, RequestType::In);
    assert_eq!(req.sector, 2);
    assert_eq!(req.data, vec![(GuestAddress(DATA), 512)]);
    assert_eq!(req.status_addr, GuestAddress(DATA + 512));
    assert_eq!(req.used_len_ok(), 513);
}

#[test]
fn status_is_the_last_byte_of_a_longer_status_descriptor() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
    let req = parse_chain(&m, &[d(HDR, 16, 0), d(STATUS, 4, F_WRITE)], &ctx()).expect("parses");
    assert_eq!(req.status_addr, GuestAddress(STATUS + 3));
}

#[test]
fn out_with_writable_bytes_before_the_status_is_never_ok() {
    // A write whose "data" is device-writable: the old parser took the first descriptor as
    // the header and answered OK without writing anything the driver meant to write.
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_OUT, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 513, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::WrongDirection);
    assert_eq!(r.error.status(), Some(VIRTIO_BLK_S_IOERR));
    // IN with readable data after the header.
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(parse_chain(
        &m,
        &[d(HDR, 16 + 512, 0), d(STATUS, 1, F_WRITE)],
        &ctx(),
    ));
    assert_eq!(r.error, Error::WrongDirection);
    // Readable after writable.
    let r = rejected(parse_chain(
        &m,
        &[
            d(HDR, 16, 0),
            d(DATA, 512, F_WRITE),
            d(DATA + 512, 512, 0),
            d(STATUS, 1, F_WRITE),
        ],
        &ctx(),
    ));
    assert_eq!(r.error, Error::ReadableAfterWritable);
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}

fn pop(m: &GuestMemoryMmap, raw: &[RawDescriptor]) -> Result<Request, Rejected> {
    let vq = MockSplitQueue::new(m, 16);
    vq.add_desc_chains(raw, 0).expect("descs");
    let mut q: Queue = vq.create_queue().expect("queue");
    let chain = q.pop_descriptor_chain(m).expect("a chain");
    parse(chain, &ctx())
}

#[test]
fn descriptor_loop_is_dropped() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(pop(
        &m,
        &[dn(HDR, 16, F_NEXT, 1), dn(DATA, 512, F_NEXT | F_WRITE, 0)],
    ));
    assert!(
        matches!(r.error, Error::ChainTooLong(_) | Error::ChainTruncated),
        "{:?}",
        r.error
    );
    assert_eq!(r.error.status(), None);
}

#[test]
fn next_index_past_table_is_dropped() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let r = rejected(pop(&m, &[dn(HDR, 16, F_NEXT, 200)]));
    assert_eq!(r.error, Error::ChainTruncated);
}

#[test]
fn indirect_chain_is_parsed() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let table = 0x38_0000u64;
    let entries = [
        dn(HDR, 16, F_NEXT, 1),
        dn(DATA, 512, F_NEXT | F_WRITE, 2),
        dn(STATUS, 1, F_WRITE, 0),
    ];
    for (i, e) in entries.iter().enumerate() {
        m.write_obj(*e, GuestAddress(table + 16 * i as u64))
            .expect("table");
    }
    let req = parse_chain(&m, &[d(table, 48, F_INDIRECT)], &ctx()).expect("indirect IN");
    assert_eq!(req.data, vec![(GuestAddress(DATA), 512)]);
    assert_eq!(req.status_addr, GuestAddress(STATUS));
}

#[test]
fn status_write_failure_drops_request() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
    let mut req = parse_chain(&m, &[d(HDR, 16, 0), d(STATUS, 1, F_WRITE)], &ctx()).expect("flush");
    req.status_addr = GuestAddress(MEM_SIZE as u64 + 5);
    assert_eq!(
        execute(&m, &req, &mut MemBackend::new(512), &id_bytes("s")),
        None
    );
}

#[test]
fn backend_error_returns_ioerr() {
    let m = mem();
    hdr(&m, VIRTIO_BLK_T_IN, 0);
    let req = parse_chain(
        &m,
        &[d(HDR, 16, 0), d(DATA, 1024, F_WRITE), d(STATUS, 1, F_WRITE)],
        &ctx(),
    )
    .expect("IN");
    // A backend smaller than the advertised capacity fails the read.
    let c = execute(&m, &req, &mut MemBackend::new(512), &id_bytes("s")).expect("status");
    assert_eq!((c.status, c.used_len), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
}

#[test]
fn buffers_ending_at_the_top_of_the_iova_space_are_accepted() {
    // Found by the descriptor_chain fuzz target: a buffer whose last byte is IOVA u64::MAX was
    // taken for an address overflow, so a status byte there got the chain dropped although its
    // status descriptor is usable, and data ending there got IOERR.
    use crate::iotlb::{tests::FakeIotlb, IotlbTable};
    use crate::uapi::vduse::VDUSE_ACCESS_RW;

    const TOP_PAGE: u64 = u64::MAX - 0xfff;
    let low = MEM_SIZE as u64;
    let src = FakeIotlb::new(
        low + 0x1000,
        &[
            (0, low - 1, 0, VDUSE_ACCESS_RW),
            (TOP_PAGE, u64::MAX, low, VDUSE_ACCESS_RW),
        ],
    );
    let table = IotlbTable::new();
    assert_eq!(table.map_all(&src).all_mapped().expect("map").served(), 2);
    let snapshot = table.snapshot();
    let m = &*snapshot;
    let id = id_bytes("s");

    // The status byte is the last byte of the IOVA space.
    m.write_obj(VIRTIO_BLK_T_FLUSH.to_le(), GuestAddress(HDR))
        .expect("hdr");
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq
        .build_desc_chain(&[d(HDR, 16, 0), d(u64::MAX, 1, F_WRITE)])
        .expect("chain");
    let req = parse(chain, &ctx()).expect("FLUSH with its status at u64::MAX");
    assert_eq!(req.status_addr, GuestAddress(u64::MAX));
    let c = execute(m, &req, &mut MemBackend::new(512), &id).expect("status written");
    assert_eq!((c.status, c.used_len), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(u64::MAX)).expect("status"),
        VIRTIO_BLK_S_OK
    );

    // A data buffer ending at u64::MAX.
    m.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .expect("hdr");
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq
        .build_desc_chain(&[
            d(HDR, 16, 0),
            d(u64::MAX - 511, 512, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ])
        .expect("chain");
    let req = parse(chain, &ctx()).expect("IN into a buffer ending at u64::MAX");
    assert_eq!(req.data, vec![(GuestAddress(u64::MAX - 511), 512)]);
    let mut b = MemBackend::new(512);
    b.data.fill(0x5a);
    let c = execute(m, &req, &mut b, &id).expect("status written");
    assert_eq!((c.status, c.used_len), (VIRTIO_BLK_S_OK, 513));
    let mut got = [0u8; 512];
    m.read_slice(&mut got, GuestAddress(u64::MAX - 511))
        .expect("read back");
    assert!(got.iter().all(|&x| x == 0x5a));

    // One byte further wraps: still refused.
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq
        .build_desc_chain(&[
            d(HDR, 16, 0),
            d(u64::MAX, 2, F_WRITE),
            d(STATUS, 1, F_WRITE),
        ])
        .expect("chain");
    let r = rejected(parse(chain, &ctx()));
    assert!(
        matches!(r.error, Error::InvalidAddress { .. }),
        "{:?}",
        r.error
    );
    assert_eq!(r.status_addr, Some(GuestAddress(STATUS)));
}
