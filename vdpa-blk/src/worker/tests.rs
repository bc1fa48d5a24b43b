//! The worker driven through virtio-queue's mock driver: guest memory is a memfd reached
//! through fake IOTLB mappings, the backing device a regular temporary file.
//!
//! virtio-queue 0.18's `MockSplitQueue` puts the used ring 20 bytes after the available ring
//! of a 16-entry queue (it adds the entry count, not the byte size): available entries 8 and up
//! share memory with the used ring, so every test here offers at most 8 chains per queue.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, Permissions};

use super::*;
use crate::blk::exec::id_bytes;
use crate::blk::request::*;
use crate::iotlb::tests::FakeIotlb;
use crate::uapi::vduse::VDUSE_ACCESS_RW;

const F_WRITE: u16 = 2;
const MEM: u64 = 4 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK: u64 = 1 << 20;

#[derive(Default)]
struct CountingIrq(AtomicU64);

impl Interrupt for CountingIrq {
    fn notify(&self, _queue: u16) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    _src: FakeIotlb,
    table: Arc<IotlbTable>,
    mem: Arc<IotlbMemory>,
    disk: tempfile::NamedTempFile,
    irq: Arc<CountingIrq>,
    stats: Arc<QueueStats>,
}

impl Rig {
    fn new() -> Self {
        let src = FakeIotlb::new(MEM, &[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
        let table = Arc::new(IotlbTable::new());
        table.map_all(&src).all_mapped().expect("map guest memory");
        let mem = table.snapshot();
        let disk = tempfile::NamedTempFile::new_in(std::env::temp_dir()).expect("disk");
        let pattern: Vec<u8> = (0..DISK).map(|i| (i / 512) as u8).collect();
        disk.as_file().write_all_at(&pattern, 0).expect("fill disk");
        Rig {
            _src: src,
            table,
            mem,
            disk,
            irq: Arc::new(CountingIrq::default()),
            stats: Arc::new(QueueStats::default()),
        }
    }

    fn start(
        &self,
        vq: &MockSplitQueue<'_, IotlbMemory>,
        event_idx: bool,
        direct: bool,
    ) -> (WorkerHandle, EventFd) {
        self.start_polling(vq, event_idx, direct, Duration::ZERO)
    }

    fn start_polling(
        &self,
        vq: &MockSplitQueue<'_, IotlbMemory>,
        event_idx: bool,
        direct: bool,
        poll: Duration,
    ) -> (WorkerHandle, EventFd) {
        let (p, kick) = self.params(vq, event_idx, direct, poll);
        (spawn(p).expect("spawn worker"), kick)
    }

    fn params(
        &self,
        vq: &MockSplitQueue<'_, IotlbMemory>,
        event_idx: bool,
        direct: bool,
        poll: Duration,
    ) -> (WorkerParams, EventFd) {
        self.params_at(
            (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0),
            event_idx,
            direct,
            poll,
        )
    }

    /// Worker parameters for a 16-entry queue whose rings are at `(desc, avail, used)`.
    fn params_at(
        &self,
        (desc, driver, device): (u64, u64, u64),
        event_idx: bool,
        direct: bool,
        poll: Duration,
    ) -> (WorkerParams, EventFd) {
        let kick = EventFd::new().expect("kick");
        let backing = Arc::new(Backing::open(self.disk.path(), false, direct).expect("backing"));
        let p = WorkerParams {
            queue: QueueConfig {
                index: 0,
                size: 16,
                desc,
                driver,
                device,
                event_idx,
                next_avail: 0,
                next_used: 0,
            },
            parse: ParseContext {
                capacity: DISK / 512,
                read_only: false,
                max_chain: 16,
                discard: true,
                write_zeroes: true,
                max_discard_sectors: 1 << 20,
                max_discard_seg: 4,
                max_write_zeroes_sectors: 1 << 20,
                max_write_zeroes_seg: 4,
            },
            backing,
            iotlb: self.table.clone(),
            kick: kick.try_clone().expect("dup kick"),
            irq: self.irq.clone(),
            stats: self.stats.clone(),
            id: id_bytes("serial-7"),
            capacity: None,
            fault: None,
            poll,
            instance: DriverInstance::default(),
            log: None,
            resume: false,
        };
        (p, kick)
    }

    fn hdr(&self, at: u64, type_: u32, sector: u64) {
        self.mem
            .write_obj(type_.to_le(), GuestAddress(at))
            .expect("hdr");
        self.mem.write_obj(0u32, GuestAddress(at + 4)).expect("hdr");
        self.mem
            .write_obj(sector.to_le(), GuestAddress(at + 8))
            .expect("hdr");
    }

    fn used_idx(&self, vq: &MockSplitQueue<'_, IotlbMemory>) -> u16 {
        self.mem
            .read_obj::<u16>(vq.used_addr().unchecked_add(2))
            .expect("used idx")
    }

    fn used_elem(&self, vq: &MockSplitQueue<'_, IotlbMemory>, i: u64) -> (u32, u32) {
        let a = vq.used_addr().unchecked_add(4 + 8 * i);
        (
            self.mem.read_obj::<u32>(a).expect("id"),
            self.mem.read_obj::<u32>(a.unchecked_add(4)).expect("len"),
        )
    }

    fn wait_used(&self, vq: &MockSplitQueue<'_, IotlbMemory>, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx(vq) < n {
            assert!(
                Instant::now() < deadline,
                "worker did not complete {n} requests"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj::<u8>(GuestAddress(at)).expect("status")
    }
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Three descriptors (header, data, status) at table index `at`, as one chain.
fn chain3(
    at: u16,
    hdr: u64,
    data: u64,
    len: u32,
    data_flags: u16,
    status: u64,
) -> [RawDescriptor; 3] {
    [
        d(hdr, 16, 1, at + 1),
        d(data, len, data_flags | 1, at + 2),
        d(status, 1, F_WRITE, 0),
    ]
}

use vm_memory::Address;

fn roundtrip(direct: bool) {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let (h, kick) = r.start(&vq, false, direct);
    // OUT 4 KiB of 0xa5 at sector 8.
    r.mem
        .write_slice(&[0xa5; 4096], GuestAddress(DATA))
        .expect("fill");
    r.hdr(HDR, VIRTIO_BLK_T_OUT, 8);
    vq.add_desc_chains(&chain3(0, HDR, DATA, 4096, 0, STATUS), 0)
        .expect("chain");
    kick.signal().expect("kick");
    r.wait_used(&vq, 1);
    assert_eq!(r.status(STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(r.used_elem(&vq, 0), (0, 1));
    let mut on_disk = [0u8; 4096];
    r.disk
        .as_file()
        .read_exact_at(&mut on_disk, 8 * 512)
        .expect("pread");
    assert_eq!(on_disk, [0xa5; 4096]);

    // IN the same sectors into another buffer, then FLUSH.
    r.hdr(HDR + 0x100, VIRTIO_BLK_T_IN, 8);
    vq.add_desc_chains(
        &chain3(3, HDR + 0x100, DATA + 0x1_0000, 4096, F_WRITE, STATUS + 1),
        3,
    )
    .expect("chain");
    r.hdr(HDR + 0x200, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(&[d(HDR + 0x200, 16, 1, 7), d(STATUS + 2, 1, F_WRITE, 0)], 6)
        .expect("chain");
    kick.signal().expect("kick");
    r.wait_used(&vq, 3);
    let mut back = [0u8; 4096];
    r.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1_0000))
        .expect("read");
    assert_eq!(back, [0xa5; 4096]);
    assert_eq!(r.status(STATUS + 1), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(STATUS + 2), VIRTIO_BLK_S_OK);
    // The IN and the FLUSH were submitted together and may complete in either order (no
    // VIRTIO_F_IN_ORDER): the IN's used entry is one of the two.
    let used = [r.used_elem(&vq, 1), r.used_elem(&vq, 2)];
    assert!(used.contains(&(3, 4097)), "{used:?}");
    assert!(used.contains(&(6, 1)), "{used:?}");
    assert_eq!(h.stop().expect("stop"), 3);
    let s = r.stats.snapshot(0);
    assert_eq!(s.requests, 3);
    assert_eq!(s.bytes_written, 4096);
    assert_eq!(s.bytes_read, 4096);
    assert_eq!(s.errors, 0);
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.copied_bytes, 0, "the datapath never copies payload");
    assert!(r.irq.0.load(Ordering::SeqCst) >= 1);
}

#[test]
fn write_read_flush_roundtrip_through_io_uring() {
    roundtrip(false);
}

#[test]
fn write_read_roundtrip_with_o_direct() {
    // /tmp is ext4 on this machine and in CI; O_DIRECT works there.
    roundtrip(true);
}

#[test]
fn batch_is_processed_from_one_kick() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    for i in 0..4u16 {
        let hdr = HDR + 0x100 * u64::from(i);
        r.hdr(hdr, VIRTIO_BLK_T_IN, u64::from(i));
        vq.add_desc_chains(
            &chain3(
                i * 3,
                hdr,
                DATA + 0x1000 * u64::from(i),
                512,
                F_WRITE,
                STATUS + u64::from(i),
            ),
            i * 3,
        )
        .expect("chain");
    }
    let (h, kick) = r.start(&vq, false, false);
    kick.signal().expect("kick");
    r.wait_used(&vq, 4);
    for i in 0..4u64 {
        let mut b = [0u8; 512];
        r.mem
            .read_slice(&mut b, GuestAddress(DATA + 0x1000 * i))
            .expect("read");
        assert_eq!(b, [i as u8; 512], "sector {i} pattern");
    }
    h.stop().expect("stop");
    let irqs = r.irq.0.load(Ordering::SeqCst);
    assert!((1..=4).contains(&irqs), "{irqs} interrupts for 4 requests");
}

#[test]
fn event_idx_suppresses_interrupt_until_used_event() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    // used_event (after the avail ring) = 5: the driver wants an interrupt only after the 6th.
    let used_event = vq.avail_addr().unchecked_add(4 + 2 * 16);
    r.mem
        .write_obj(5u16.to_le(), used_event)
        .expect("used_event");
    r.hdr(HDR, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(&[d(HDR, 16, 1, 1), d(STATUS, 1, F_WRITE, 0)], 0)
        .expect("chain");
    let (h, kick) = r.start(&vq, true, false);
    kick.signal().expect("kick");
    r.wait_used(&vq, 1);
    h.stop().expect("stop");
    assert_eq!(
        r.irq.0.load(Ordering::SeqCst),
        0,
        "no interrupt before used_event"
    );
    // And avail_event was published for the driver.
    let avail_event = vq.used_addr().unchecked_add(4 + 8 * 16);
    assert_eq!(r.mem.read_obj::<u16>(avail_event).expect("avail_event"), 1);
}

#[test]
fn malformed_chains_are_answered_or_dropped_and_the_worker_survives() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let (h, kick) = r.start(&vq, false, false);
    // 1: write-only header -> IOERR, used len 1.
    r.hdr(HDR, VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(&[d(HDR, 16, 1 | F_WRITE, 1), d(STATUS, 1, F_WRITE, 0)], 0)
        .expect("chain");
    // 2: header split over two descriptors (parsed by offset) -> OK.
    r.hdr(HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(
        &[
            d(HDR + 0x100, 8, 1, 3),
            d(HDR + 0x108, 8, 1, 4),
            d(STATUS + 1, 1, F_WRITE, 0),
        ],
        2,
    )
    .expect("chain");
    // 3: data outside guest memory -> IOERR.
    r.hdr(HDR + 0x200, VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(
        &chain3(5, HDR + 0x200, MEM - 256, 512, F_WRITE, STATUS + 2),
        5,
    )
    .expect("chain");
    // 4: past capacity -> IOERR.
    r.hdr(HDR + 0x300, VIRTIO_BLK_T_IN, DISK / 512);
    vq.add_desc_chains(&chain3(8, HDR + 0x300, DATA, 512, F_WRITE, STATUS + 3), 8)
        .expect("chain");
    // 5: unsupported type -> UNSUPP.
    r.hdr(HDR + 0x400, 99, 0);
    vq.add_desc_chains(
        &[d(HDR + 0x400, 16, 1, 12), d(STATUS + 4, 1, F_WRITE, 0)],
        11,
    )
    .expect("chain");
    // 6: a valid GET_ID after all that.
    r.hdr(HDR + 0x500, VIRTIO_BLK_T_GET_ID, 0);
    vq.add_desc_chains(
        &chain3(13, HDR + 0x500, DATA + 0x8000, 20, F_WRITE, STATUS + 5),
        13,
    )
    .expect("chain");
    kick.signal().expect("kick");
    r.wait_used(&vq, 6);
    assert_eq!(r.status(STATUS), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.status(STATUS + 1), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(STATUS + 2), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.status(STATUS + 3), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.status(STATUS + 4), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(r.status(STATUS + 5), VIRTIO_BLK_S_OK);
    // The FLUSH completes through io_uring, after the synchronous answers.
    let mut lens: Vec<(u32, u32)> = (0..6).map(|i| r.used_elem(&vq, i)).collect();
    lens.sort_unstable();
    assert_eq!(
        lens,
        vec![(0, 1), (2, 1), (5, 1), (8, 1), (11, 1), (13, 21)]
    );
    let mut id = [0u8; 20];
    r.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x8000))
        .expect("id");
    assert_eq!(&id[..8], b"serial-7");
    h.stop().expect("stop");
    let s = r.stats.snapshot(0);
    assert_eq!(s.errors, 4);
    assert_eq!(s.dropped, 0);
    assert!(!s.broken);
}

/// Stops the worker on another thread, failing (instead of hanging the test) if it does not
/// exit.
fn stop_within(h: WorkerHandle, what: &str) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.stop());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: the worker did not stop"))
        .expect("stop")
}

fn wait_broken(r: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.stats.snapshot(0).broken {
        assert!(
            Instant::now() < deadline,
            "the queue was never marked broken"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_impossible_available_index_breaks_the_queue_and_the_worker_still_stops() {
    for event_idx in [false, true] {
        let r = Rig::new();
        let vq = MockSplitQueue::new(&*r.mem, 16);
        let (h, kick) = r.start(&vq, event_idx, false);
        // One good request first.
        r.hdr(HDR, VIRTIO_BLK_T_FLUSH, 0);
        vq.add_desc_chains(&[d(HDR, 16, 1, 1), d(STATUS, 1, F_WRITE, 0)], 0)
            .expect("chain");
        kick.signal().expect("kick");
        r.wait_used(&vq, 1);
        // The driver claims 100 chains on a 16-entry queue.
        r.mem
            .write_obj(100u16.to_le(), vq.avail_addr().unchecked_add(2))
            .expect("avail idx");
        kick.signal().expect("kick");
        wait_broken(&r);
        // Further kicks are not served (and do not spin the worker).
        kick.signal().expect("kick");
        assert_eq!(stop_within(h, "broken queue"), 1);
        let s = r.stats.snapshot(0);
        assert!(s.broken);
        assert_eq!(s.requests, 1);
        assert_eq!(r.used_idx(&vq), 1);
    }
}

#[test]
fn a_chain_without_a_status_byte_breaks_the_queue_instead_of_completing_empty() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let (h, kick) = r.start(&vq, false, false);
    // Read-only "status": the driver would read back whatever it left there.
    r.hdr(HDR, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(&[d(HDR, 16, 1, 1), d(STATUS, 1, 0, 0)], 0)
        .expect("chain");
    r.hdr(HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(&[d(HDR + 0x100, 16, 1, 3), d(STATUS + 1, 1, F_WRITE, 0)], 2)
        .expect("chain");
    kick.signal().expect("kick");
    wait_broken(&r);
    stop_within(h, "broken queue");
    assert_eq!(r.used_idx(&vq), 0, "no zero-length completion");
    let s = r.stats.snapshot(0);
    assert_eq!(s.dropped, 1);
}

#[test]
fn discard_and_write_zeroes_zero_the_file_range() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let (h, kick) = r.start(&vq, false, false);
    let seg = |at: u64, sector: u64, n: u32, flags: u32| {
        r.mem
            .write_obj(sector.to_le(), GuestAddress(at))
            .expect("seg");
        r.mem
            .write_obj(n.to_le(), GuestAddress(at + 8))
            .expect("seg");
        r.mem
            .write_obj(flags.to_le(), GuestAddress(at + 12))
            .expect("seg");
    };
    r.hdr(HDR, VIRTIO_BLK_T_DISCARD, 0);
    seg(DATA, 16, 8, 0);
    vq.add_desc_chains(&chain3(0, HDR, DATA, 16, 0, STATUS), 0)
        .expect("chain");
    r.hdr(HDR + 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    seg(DATA + 0x100, 40, 8, 0);
    seg(DATA + 0x110, 64, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    vq.add_desc_chains(&chain3(3, HDR + 0x100, DATA + 0x100, 32, 0, STATUS + 1), 3)
        .expect("chain");
    kick.signal().expect("kick");
    r.wait_used(&vq, 2);
    h.stop().expect("stop");
    assert_eq!(r.status(STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(STATUS + 1), VIRTIO_BLK_S_OK);
    for (sector, zero) in [
        (15u64, false),
        (16, true),
        (23, true),
        (24, false),
        (40, true),
        (64, true),
        (72, false),
    ] {
        let mut b = [0u8; 512];
        r.disk
            .as_file()
            .read_exact_at(&mut b, sector * 512)
            .expect("pread");
        if zero {
            assert_eq!(b, [0u8; 512], "sector {sector} zeroed");
        } else {
            assert_eq!(b, [sector as u8; 512], "sector {sector} untouched");
        }
    }
}

#[test]
fn invalid_ring_address_is_refused_at_start() {
    let r = Rig::new();
    let kick = EventFd::new().expect("kick");
    let e = spawn(WorkerParams {
        queue: QueueConfig {
            index: 1,
            size: 16,
            desc: MEM + 0x1000,
            driver: 0x1000,
            device: 0x2000,
            event_idx: false,
            next_avail: 0,
            next_used: 0,
        },
        parse: ParseContext {
            capacity: 1,
            read_only: false,
            max_chain: 16,
            discard: false,
            write_zeroes: false,
            max_discard_sectors: 0,
            max_discard_seg: 0,
            max_write_zeroes_sectors: 0,
            max_write_zeroes_seg: 0,
        },
        backing: Arc::new(Backing::open(r.disk.path(), true, false).expect("backing")),
        iotlb: r.table.clone(),
        kick,
        irq: r.irq.clone(),
        stats: r.stats.clone(),
        id: id_bytes(""),
        capacity: None,
        fault: None,
        poll: Duration::ZERO,
        instance: DriverInstance::default(),
        log: None,
        resume: false,
    })
    .err()
    .expect("must refuse");
    assert!(matches!(e, WorkerError::InvalidRing { queue: 1 }), "{e}");
}

#[test]
fn buffers_in_a_region_mapped_later_are_faulted_in_including_indirect_tables() {
    // Like the VDUSE bounce region: the kernel knows the region, but nothing announced it.
    let src = Arc::new(FakeIotlb::new(
        MEM,
        &[
            (0, 0xf_ffff, 0, VDUSE_ACCESS_RW),
            (0x10_0000, MEM - 1, 0x10_0000, VDUSE_ACCESS_RW),
        ],
    ));
    let table = Arc::new(IotlbTable::new());
    assert_eq!(
        table
            .update(&*src, 0, 0xf_ffff)
            .all_mapped()
            .expect("rings")
            .served(),
        1
    );
    // A full view for the test's own writes.
    let full = IotlbTable::new();
    full.map_all(&*src).all_mapped().expect("map");
    let view = full.snapshot();
    let vq = MockSplitQueue::new(&*view, 16);
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().write_all_at(&[0x5a; 4096], 0).expect("fill");
    // An indirect chain: head -> table at 0x38_0000 -> header, data, status.
    let itable = 0x38_0000u64;
    view.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .expect("hdr");
    view.write_obj(0u64, GuestAddress(HDR + 8)).expect("hdr");
    for (i, e) in [
        d(HDR, 16, 1, 1),
        d(DATA, 4096, F_WRITE | 1, 2),
        d(STATUS, 1, F_WRITE, 0),
    ]
    .iter()
    .enumerate()
    {
        view.write_obj(*e, GuestAddress(itable + 16 * i as u64))
            .expect("itable");
    }
    vq.add_desc_chains(&[d(itable, 48, 4, 0)], 0)
        .expect("chain");
    let kick = EventFd::new().expect("kick");
    let stats = Arc::new(QueueStats::default());
    let h = spawn(WorkerParams {
        queue: QueueConfig {
            index: 0,
            size: 16,
            desc: vq.desc_table_addr().0,
            driver: vq.avail_addr().0,
            device: vq.used_addr().0,
            event_idx: true,
            next_avail: 0,
            next_used: 0,
        },
        parse: ParseContext {
            capacity: 8,
            read_only: false,
            max_chain: 16,
            discard: false,
            write_zeroes: false,
            max_discard_sectors: 0,
            max_discard_seg: 0,
            max_write_zeroes_sectors: 0,
            max_write_zeroes_seg: 0,
        },
        backing: Arc::new(Backing::open(disk.path(), false, false).expect("backing")),
        iotlb: table.clone(),
        kick: kick.try_clone().expect("dup"),
        irq: Arc::new(CountingIrq::default()),
        stats: stats.clone(),
        id: id_bytes(""),
        capacity: None,
        fault: Some(src.clone()),
        poll: Duration::ZERO,
        instance: DriverInstance::default(),
        log: None,
        resume: false,
    })
    .expect("spawn");
    kick.signal().expect("kick");
    let deadline = Instant::now() + Duration::from_secs(10);
    while view
        .read_obj::<u16>(vq.used_addr().unchecked_add(2))
        .expect("idx")
        < 1
    {
        assert!(Instant::now() < deadline, "request not completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    h.stop().expect("stop");
    assert_eq!(
        view.read_obj::<u8>(GuestAddress(STATUS)).expect("st"),
        VIRTIO_BLK_S_OK
    );
    let mut b = [0u8; 4096];
    view.read_slice(&mut b, GuestAddress(DATA)).expect("data");
    assert_eq!(b, [0x5a; 4096]);
    assert_eq!(
        table.snapshot().len(),
        2,
        "the second region was faulted in"
    );
    assert_eq!(stats.snapshot(0).dropped, 0);
}

/// The avail event the device publishes with EVENT_IDX (after the used ring).
fn avail_event(r: &Rig, vq: &MockSplitQueue<'_, IotlbMemory>) -> u16 {
    r.mem
        .read_obj::<u16>(vq.used_addr().unchecked_add(4 + 8 * 16))
        .map(u16::from_le)
        .expect("avail event")
}

fn flush_chain(r: &Rig, vq: &MockSplitQueue<'_, IotlbMemory>, i: u16) {
    let hdr = HDR + 0x100 * u64::from(i);
    r.hdr(hdr, VIRTIO_BLK_T_FLUSH, 0);
    vq.add_desc_chains(
        &[
            d(hdr, 16, 1, i * 2 + 1),
            d(STATUS + u64::from(i), 1, F_WRITE, 0),
        ],
        i * 2,
    )
    .expect("chain");
}

#[test]
fn a_sleeping_worker_needs_a_kick_for_each_batch() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    flush_chain(&r, &vq, 0);
    let (h, kick) = r.start(&vq, true, false);
    kick.signal().expect("kick");
    r.wait_used(&vq, 1);
    flush_chain(&r, &vq, 1);
    // Without polling nothing looks at the ring until the next kick.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        r.used_idx(&vq),
        1,
        "served without a kick while not polling"
    );
    assert_eq!(
        avail_event(&r, &vq),
        1,
        "notifications re-enabled after the batch"
    );
    kick.signal().expect("kick");
    r.wait_used(&vq, 2);
    h.stop().expect("stop");
    assert_eq!(r.stats.kicks.load(Ordering::Relaxed), 2);
    assert_eq!(r.stats.polled.load(Ordering::Relaxed), 0);
}

#[test]
fn a_polling_worker_serves_requests_that_come_without_a_kick() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    flush_chain(&r, &vq, 0);
    // A window far longer than the test: the worker is still polling when the next requests
    // come, and a stop must end the window at once.
    let (h, kick) = r.start_polling(&vq, true, false, Duration::from_secs(60));
    kick.signal().expect("kick");
    r.wait_used(&vq, 1);
    for i in 1..4 {
        flush_chain(&r, &vq, i);
        r.wait_used(&vq, i + 1);
    }
    // The avail event still says 1: the driver was told not to kick for requests 2 to 4.
    assert_eq!(
        avail_event(&r, &vq),
        1,
        "notifications stayed off while polling"
    );
    let t = Instant::now();
    h.stop().expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "stop waited for the poll window"
    );
    assert_eq!(r.stats.kicks.load(Ordering::Relaxed), 1);
    assert_eq!(r.stats.polled.load(Ordering::Relaxed), 3);
    assert_eq!(r.stats.requests.load(Ordering::Relaxed), 4);
    for i in 0..4 {
        assert_eq!(r.status(STATUS + i), VIRTIO_BLK_S_OK, "request {i}");
    }
}

#[test]
fn a_polling_worker_turns_notifications_back_on_when_idle() {
    for event_idx in [true, false] {
        let r = Rig::new();
        let vq = MockSplitQueue::new(&*r.mem, 16);
        flush_chain(&r, &vq, 0);
        let (h, kick) = r.start_polling(&vq, event_idx, false, Duration::from_millis(20));
        kick.signal().expect("kick");
        r.wait_used(&vq, 1);
        flush_chain(&r, &vq, 1);
        r.wait_used(&vq, 2);
        // Idle for a window: back to sleep, with notifications on at the current index.
        let used_flags = vq.used_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on = if event_idx {
                avail_event(&r, &vq) == 2
            } else {
                r.mem.read_obj::<u16>(used_flags).expect("flags") == 0
            };
            if on {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "notifications still off (event_idx {event_idx})"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let kicks = r.stats.kicks.load(Ordering::Relaxed);
        flush_chain(&r, &vq, 2);
        kick.signal().expect("kick");
        r.wait_used(&vq, 3);
        h.stop().expect("stop");
        assert!(r.stats.kicks.load(Ordering::Relaxed) > kicks);
    }
}

#[test]
fn a_completion_whose_status_or_ring_is_unmapped_is_parked_and_written_after_the_remap() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    // Drive the completion path of a worker directly: the snapshot at completion time lacks
    // the status byte and the ring (an IOTLB update moved them).
    let (stop, na) = (EventFd::new().expect("stop"), Arc::new(AtomicU16::new(0)));
    let mut w =
        Worker::new(r.params(&vq, false, false, Duration::ZERO).0, stop, na).expect("worker");
    let unmapped = Arc::new(IotlbMemory::new());
    w.exec.complete_chain(
        &mut w.drain.q,
        &unmapped,
        3,
        Some((GuestAddress(STATUS), VIRTIO_BLK_S_IOERR)),
        1,
    );
    assert_eq!(r.stats.snapshot(0).parked, 1);
    assert_eq!(r.used_idx(&vq), 0);
    // Mapped again (the table the rig maps): the parked completion is written, once.
    w.exec.retry_parked(&mut w.drain.q);
    w.exec.retry_parked(&mut w.drain.q);
    assert_eq!(r.stats.snapshot(0).parked, 0);
    assert_eq!(r.used_idx(&vq), 1);
    assert_eq!(r.used_elem(&vq, 0), (3, 1));
    assert_eq!(r.status(STATUS), VIRTIO_BLK_S_IOERR);
}

#[test]
fn a_worker_of_an_ended_driver_instance_writes_nothing() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let instances = Instances::new();
    let (mut p, kick) = r.params(&vq, false, false, Duration::ZERO);
    p.instance = instances.current();
    let h = spawn(p).expect("spawn");
    r.hdr(HDR, VIRTIO_BLK_T_GET_ID, 0);
    vq.add_desc_chains(&chain3(0, HDR, DATA, 20, F_WRITE, STATUS), 0)
        .expect("chain");
    kick.signal().expect("kick");
    r.wait_used(&vq, 1);
    // The reset is acknowledged without this worker; the next driver's chain must stay put.
    instances.end_current();
    r.mem
        .write_obj(0xeeu8, GuestAddress(STATUS + 1))
        .expect("st");
    r.hdr(HDR + 0x100, VIRTIO_BLK_T_GET_ID, 0);
    vq.add_desc_chains(
        &chain3(3, HDR + 0x100, DATA + 0x100, 20, F_WRITE, STATUS + 1),
        3,
    )
    .expect("chain");
    kick.signal().expect("kick");
    stop_within(h, "ended instance");
    assert_eq!(r.used_idx(&vq), 1);
    assert_eq!(r.status(STATUS + 1), 0xee);
    let mut id = [0u8; 20];
    r.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x100))
        .expect("id");
    assert_eq!(id, [0u8; 20], "no id written for the next driver");
}

#[test]
fn a_stopped_worker_has_no_read_left_on_the_kick_eventfd() {
    // The kick eventfd stays registered with VDUSE after a worker stops; a read still armed
    // in the ring would consume the next kick (into a buffer that is gone).
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let (h, kick) = r.start(&vq, false, false);
    h.stop().expect("stop");
    kick.signal().expect("kick");
    // SAFETY: plain fcntl/read on an eventfd we own; `v` lives across the read.
    let (n, v) = unsafe {
        let fd = kick.as_raw_fd();
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let mut v = 0u64;
        let n = libc::read(fd, (&mut v as *mut u64).cast(), 8);
        (n, v)
    };
    assert_eq!(
        (n, v),
        (8, 1),
        "the kick was consumed after the worker stopped"
    );
}

/// A driver on its own thread, as a guest's virtio-blk is: FLUSH requests on up to 8 heads at
/// a time, published while the worker runs, kicking only when EVENT_IDX says the device asked
/// for it. Returns the requests completed; fails if the worker stops making progress (a
/// request it will never see without a kick the driver was told not to send).
fn race_with_a_driver(poll: Duration, requests: u32) -> u32 {
    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const SIZE: u16 = 16;
    let r = Rig::new();
    let (p, kick) = r.params_at((DESC, AVAIL, USED), true, false, poll);
    let h = spawn(p).expect("spawn");
    let m = &r.mem;
    let w16 = |a: u64, v: u16| m.write_obj(v.to_le(), GuestAddress(a)).expect("w16");
    let r16 = |a: u64| u16::from_le(m.read_obj::<u16>(GuestAddress(a)).expect("r16"));
    // Eight two-descriptor FLUSH chains, heads 0, 2, .. 14, each with its own status byte.
    for slot in 0..8u16 {
        let head = slot * 2;
        let hdr = HDR + u64::from(slot) * 16;
        r.hdr(hdr, VIRTIO_BLK_T_FLUSH, 0);
        let d0 = d(hdr, 16, 1, head + 1);
        let d1 = d(STATUS + u64::from(slot), 1, F_WRITE, 0);
        m.write_obj(d0, GuestAddress(DESC + 16 * u64::from(head)))
            .expect("desc");
        m.write_obj(d1, GuestAddress(DESC + 16 * u64::from(head + 1)))
            .expect("desc");
    }
    let (mut avail, mut used_seen, mut done) = (0u16, 0u16, 0u32);
    // Heads not in flight (completions may come back in any order).
    let mut free: Vec<u16> = (0..8).map(|s| s * 2).collect();
    let mut last_progress = Instant::now();
    while done < requests {
        // Offer what the free heads allow, then publish and kick if asked to.
        let old = avail;
        while let Some(head) = free.pop() {
            w16(AVAIL + 4 + 2 * u64::from(avail % SIZE), head);
            avail = avail.wrapping_add(1);
        }
        if avail != old {
            std::sync::atomic::fence(Ordering::SeqCst);
            w16(AVAIL + 2, avail);
            std::sync::atomic::fence(Ordering::SeqCst);
            let event = r16(USED + 4 + 8 * u64::from(SIZE));
            // vring_need_event(event, new, old)
            if avail.wrapping_sub(event).wrapping_sub(1) < avail.wrapping_sub(old) {
                kick.signal().expect("kick");
            }
        }
        // Reap.
        let used = r16(USED + 2);
        while used_seen != used {
            let id = m
                .read_obj::<u32>(GuestAddress(USED + 4 + 8 * u64::from(used_seen % SIZE)))
                .expect("used id");
            free.push(id as u16);
            used_seen = used_seen.wrapping_add(1);
            done += 1;
            last_progress = Instant::now();
        }
        assert!(
            !r.stats.snapshot(0).broken,
            "the test driver broke the queue"
        );
        assert!(
            last_progress.elapsed() < Duration::from_secs(10),
            "the worker stopped serving after {done} requests ({} offered): a request the \
             driver published without a kick was never seen",
            avail
        );
        std::thread::yield_now();
    }
    stop_within(h, "race");
    done
}

#[test]
fn a_driver_racing_the_worker_never_strands_a_request() {
    assert!(race_with_a_driver(Duration::ZERO, 5_000) >= 5_000);
    assert!(race_with_a_driver(Duration::from_micros(200), 5_000) >= 5_000);
}

/// Guest memory that runs `hook` once, just before the device writes `event_addr` (the avail
/// event, written by the re-enable of notifications): the moment a driver can publish a chain
/// after the device's last pop, see the old avail event, and not kick.
struct RacyMem<'a> {
    inner: &'a IotlbMemory,
    event_addr: u64,
    hook: std::cell::RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl vm_memory::GuestMemory for RacyMem<'_> {
    type PhysicalMemory = <IotlbMemory as vm_memory::GuestMemory>::PhysicalMemory;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> vm_memory::GuestMemoryResult<
        impl vm_memory::guest_memory::GuestMemorySliceIterator<'b, vm_memory::bitmap::BS<'b, ()>>,
    > {
        if access.has_write() && addr.0 == self.event_addr {
            if let Some(h) = self.hook.borrow_mut().take() {
                h();
            }
        }
        self.inner.get_slices(addr, count, access)
    }
}

/// Records the heads the drain starts.
#[derive(Default)]
struct Started(Vec<u16>);

impl<M> drain::Sink<M> for Started {
    fn in_flight(&self, _head: u16) -> bool {
        false
    }
    fn start(&mut self, _q: &mut Queue, _mem: &M, req: &Request) {
        self.0.push(req.head_index);
    }
    fn answer(&mut self, _q: &mut Queue, _mem: &M, rej: &Rejected, _status: u8) {
        panic!("unexpected rejection: {}", rej.error);
    }
}

#[test]
fn a_chain_published_between_the_last_pop_and_the_re_enable_is_drained() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    let mut q: Queue = vq.create_queue().expect("queue");
    q.set_event_idx(true);
    let ctx = ParseContext {
        capacity: DISK / 512,
        read_only: false,
        max_chain: 16,
        discard: false,
        write_zeroes: false,
        max_discard_sectors: 0,
        max_discard_seg: 0,
        max_write_zeroes_sectors: 0,
        max_write_zeroes_seg: 0,
    };
    let mut drain = drain::Drain::new(q, 0, ctx, r.stats.clone());
    let flush = |at: u16, hdr: u64, st: u64| {
        r.hdr(hdr, VIRTIO_BLK_T_FLUSH, 0);
        vq.add_desc_chains(&[d(hdr, 16, 1, at + 1), d(st, 1, F_WRITE, 0)], at)
            .expect("chain");
    };
    let mem = RacyMem {
        inner: &r.mem,
        event_addr: vq.used_addr().0 + 4 + 8 * 16,
        hook: std::cell::RefCell::new(None),
    };
    let mut sink = Started::default();
    flush(0, HDR, STATUS);
    assert_eq!(drain.drain(&mut &mem, &mut sink, true), 1);
    // A wake-up that finds nothing new (a late kick, or the end of a polling window), while
    // the driver publishes a chain right before the re-enable.
    *mem.hook.borrow_mut() = Some(Box::new(|| flush(2, HDR + 0x100, STATUS + 1)));
    assert_eq!(
        drain.drain(&mut &mem, &mut sink, true),
        1,
        "the raced chain was left"
    );
    assert_eq!(sink.0, vec![0, 2]);
    assert!(!drain.broken());
}

#[test]
fn a_resumed_worker_skips_what_completed_unlogged_and_resubmits_the_rest_once() {
    let r = Rig::new();
    let vq = MockSplitQueue::new(&*r.mem, 16);
    // Three writes of 0x11, 0x22, 0x33 at sectors 8, 16, 24; heads 0, 3, 6 at avail 0, 1, 2.
    for k in 0..3u16 {
        let (hdr, data) = (HDR + u64::from(k) * 0x100, DATA + u64::from(k) * 0x1_0000);
        r.mem
            .write_slice(&[0x11 * (k as u8 + 1); 4096], GuestAddress(data))
            .expect("fill");
        r.hdr(hdr, VIRTIO_BLK_T_OUT, 8 * (u64::from(k) + 1));
        vq.add_desc_chains(
            &chain3(3 * k, hdr, data, 4096, 0, STATUS + u64::from(k)),
            3 * k,
        )
        .expect("chain");
    }
    let dir = tempfile::tempdir().expect("dir");
    let log = crate::inflight::InflightLog::create(
        &dir.path().join("w.inflight"),
        &crate::inflight::LogIdentity {
            name: "w".into(),
            queues: 1,
            queue_size: 16,
            offered: 0,
        },
        DISK / 512,
    )
    .expect("log");
    let q = log.queue(0).expect("q0");
    // The dead daemon fetched heads 0 and 3, wrote head 3's used entry and index, and died
    // before logging that completion.
    q.start(0);
    q.fetched(0, 1);
    q.fetched(3, 2);
    let used = vq.used_addr();
    r.mem.write_obj(3u32, used.unchecked_add(4)).expect("id");
    r.mem.write_obj(1u32, used.unchecked_add(8)).expect("len");
    r.mem.write_obj(1u16, used.unchecked_add(2)).expect("idx");
    let (mut p, _kick) = r.params(&vq, false, false, Duration::ZERO);
    p.queue.next_used = 1;
    p.log = Some(q);
    p.resume = true;
    let h = spawn(p).expect("spawn");
    assert_eq!(h.resubmitted(), 1, "only head 0 was in flight");
    r.wait_used(&vq, 3);
    let _ = h.stop().expect("stop");
    let mut heads: Vec<u32> = (0..3).map(|i| r.used_elem(&vq, i).0).collect();
    heads.sort_unstable();
    assert_eq!(heads, vec![0, 3, 6], "each head completed exactly once");
    assert_eq!(r.used_idx(&vq), 3);
    for k in [0u64, 2] {
        let mut on_disk = [0u8; 4096];
        r.disk
            .as_file()
            .read_exact_at(&mut on_disk, 8 * (k + 1) * 512)
            .expect("pread");
        assert_eq!(on_disk, [0x11 * (k as u8 + 1); 4096], "write {k}");
    }
    assert!(r.irq.0.load(Ordering::SeqCst) >= 1, "the driver was told");
    assert_eq!(r.stats.resubmitted.load(Ordering::Relaxed), 1);
}

#[test]
fn the_ring_is_bound_to_the_worker_thread_and_names_the_backing_as_fixed_file_0() {
    let r = Rig::new();
    let mem = r.table.snapshot();
    let vq = MockSplitQueue::new(&*mem, 16);
    let (p, _kick) = r.params(&vq, false, false, Duration::ZERO);
    let stop = EventFd::new().expect("stop");
    let mut w = Worker::new(p, stop, Arc::new(AtomicU16::new(0))).expect("worker");
    assert!(
        !w.exec.fixed_backing,
        "nothing is registered before the worker thread runs"
    );
    let w = std::thread::spawn(move || {
        w.prepare_ring().expect("prepare ring");
        w
    })
    .join()
    .expect("worker thread");
    assert!(w.exec.fixed_backing, "the backing was not registered");
    if w.single_issuer {
        // Only the thread that enabled the ring may submit to it now.
        let mut w = w;
        let nop = opcode::Nop::new().build();
        // SAFETY: a NOP refers to no memory.
        unsafe { w.exec.ring.submission().push(&nop) }.expect("push a NOP");
        let err = w
            .exec
            .ring
            .submit()
            .expect_err("a second issuer was accepted");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    }
}
