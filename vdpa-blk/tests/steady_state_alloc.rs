//! The datapath rule "no allocation per request in steady state", checked: a counting global
//! allocator around a worker that serves many batches of requests (reads, multi-buffer writes,
//! flushes, discards, GET_ID and rejected chains) after a warm-up. The test thread itself does
//! not allocate while it counts (it writes the rings with `Bytes::write_obj` and waits by
//! polling), and this binary runs without the libtest harness so no other thread runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdpa_blk::backing::Backing;
use vdpa_blk::blk::exec::id_bytes;
use vdpa_blk::blk::request::{
    ParseContext, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vdpa_blk::inflight::{InflightLog, LogIdentity};
use vdpa_blk::iotlb::{IotlbError, IotlbMemory, IotlbSource, IotlbTable};
use vdpa_blk::uapi::vduse::{VduseIotlbEntry, VDUSE_ACCESS_RW};
use vdpa_blk::worker::{
    spawn, DriverInstance, EventFd, Interrupt, QueueConfig, QueueStats, WorkerParams,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the one of `System.alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MEM: u64 = 8 << 20;
const QSIZE: u16 = 64;
const DISK: u64 = 4 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x60_0000;
/// The split ring, laid out by hand: virtio-queue 0.18's `MockSplitQueue` places the used
/// ring inside the available ring (it adds the entry count, not the byte size), so the device's
/// used-flags write would land on an available entry.
const DESC: u64 = 0;
const AVAIL: u64 = 16 * QSIZE as u64;
const USED: u64 = 0x1000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Guest memory: one memfd region, RW.
struct Memfd(File);

impl IotlbSource for Memfd {
    fn get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
        if start > MEM - 1 || last < start {
            return Ok(None);
        }
        let fd = OwnedFd::from(self.0.try_clone().expect("dup memfd"));
        Ok(Some((
            fd,
            VduseIotlbEntry {
                offset: 0,
                start: 0,
                last: MEM - 1,
                perm: VDUSE_ACCESS_RW,
                padding: [0; 7],
            },
        )))
    }
}

struct NoIrq;

impl Interrupt for NoIrq {
    fn notify(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

struct Driver<'a> {
    mem: &'a IotlbMemory,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
}

impl Driver<'_> {
    fn put(&self, i: u16, d: RawDescriptor) {
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(i)))
            .expect("descriptor");
    }

    fn hdr(&self, slot: u16, type_: u32, sector: u64) -> u64 {
        let at = HDR + 0x100 * u64::from(slot);
        self.mem
            .write_obj(type_.to_le(), GuestAddress(at))
            .expect("hdr");
        self.mem.write_obj(0u32, GuestAddress(at + 4)).expect("hdr");
        self.mem
            .write_obj(sector.to_le(), GuestAddress(at + 8))
            .expect("hdr");
        at
    }

    fn offer(&mut self, head: u16) {
        let pos = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * pos))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn publish(&self) {
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(self.used + 2))
            .expect("used idx")
    }

    /// Eight chains: 2 reads, 2 writes (one of them over three buffers), a flush, a discard,
    /// a GET_ID and one unsupported request type. Returns the number of chains.
    fn batch(&mut self, round: u64) -> u16 {
        let sector = (round % 64) * 16;
        let mut d = 0u16; // next free descriptor index
        let mut chains = 0u16;
        let mut chain = |drv: &mut Self, type_: u32, bufs: &[(u64, u32, u16)]| {
            let head = d;
            let h = drv.hdr(chains, type_, sector);
            drv.put(d, desc(h, 16, F_NEXT, d + 1));
            d += 1;
            for &(addr, len, flags) in bufs {
                drv.put(d, desc(addr, len, flags | F_NEXT, d + 1));
                d += 1;
            }
            drv.put(d, desc(STATUS + u64::from(chains), 1, F_WRITE, 0));
            d += 1;
            drv.offer(head);
            chains += 1;
        };
        chain(self, VIRTIO_BLK_T_IN, &[(DATA, 4096, F_WRITE)]);
        chain(self, VIRTIO_BLK_T_IN, &[(DATA + 0x1_0000, 8192, F_WRITE)]);
        chain(self, VIRTIO_BLK_T_OUT, &[(DATA + 0x2_0000, 4096, 0)]);
        chain(
            self,
            VIRTIO_BLK_T_OUT,
            &[
                (DATA + 0x3_0000, 4096, 0),
                (DATA + 0x4_0000, 4096, 0),
                (DATA + 0x5_0000, 512, 0),
            ],
        );
        chain(self, VIRTIO_BLK_T_FLUSH, &[]);
        let seg = DATA + 0x6_0000;
        self.mem
            .write_obj((sector + 2048).to_le(), GuestAddress(seg))
            .expect("segment");
        self.mem
            .write_obj(8u32.to_le(), GuestAddress(seg + 8))
            .expect("segment");
        self.mem
            .write_obj(0u32, GuestAddress(seg + 12))
            .expect("segment");
        chain(self, VIRTIO_BLK_T_DISCARD, &[(seg, 16, 0)]);
        chain(self, VIRTIO_BLK_T_GET_ID, &[(DATA + 0x7_0000, 20, F_WRITE)]);
        chain(self, 0x7777, &[]);
        self.publish();
        chains
    }
}

fn main() {
    // Sleeping between kicks, then busy-polling the ring and the completions.
    for poll in [Duration::ZERO, Duration::from_millis(5)] {
        steady_state(poll);
    }
}

fn steady_state(poll: Duration) {
    ALLOCS.store(0, Ordering::SeqCst);
    // SAFETY: valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM).expect("size guest memory");
    let src = Memfd(file);
    let table = Arc::new(IotlbTable::new());
    table.map_all(&src).all_mapped().expect("map guest memory");
    let mem = table.snapshot();
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(DISK).expect("disk size");
    let kick = EventFd::new().expect("kick");
    let stats = Arc::new(QueueStats::default());
    let logdir = tempfile::tempdir().expect("log dir");
    let log = InflightLog::create(
        &logdir.path().join("alloc.inflight"),
        &LogIdentity {
            name: "alloc".into(),
            queues: 1,
            queue_size: QSIZE,
            offered: 0,
        },
        DISK / 512,
    )
    .expect("in-flight log");
    let h = spawn(WorkerParams {
        queue: QueueConfig {
            index: 0,
            size: QSIZE,
            desc: DESC,
            driver: AVAIL,
            device: USED,
            event_idx: false,
            next_avail: 0,
            next_used: 0,
        },
        parse: ParseContext {
            capacity: DISK / 512,
            read_only: false,
            max_chain: QSIZE,
            discard: true,
            write_zeroes: true,
            max_discard_sectors: 1 << 20,
            max_discard_seg: 4,
            max_write_zeroes_sectors: 1 << 20,
            max_write_zeroes_seg: 4,
        },
        backing: Arc::new(Backing::open(disk.path(), false, false).expect("backing")),
        iotlb: table.clone(),
        kick: kick.try_clone().expect("dup kick"),
        irq: Arc::new(NoIrq),
        stats: stats.clone(),
        id: id_bytes("steady"),
        capacity: None,
        fault: None,
        poll,
        instance: DriverInstance::default(),
        // Logged, as in production: the in-flight log must not allocate either.
        log: log.queue(0),
        resume: false,
    })
    .expect("spawn worker");
    let mut drv = Driver {
        mem: &mem,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        avail_idx: 0,
    };

    let run = |drv: &mut Driver<'_>, rounds: u64| {
        for round in 0..rounds {
            let n = drv.batch(round);
            kick.signal().expect("kick");
            let deadline = Instant::now() + Duration::from_secs(10);
            while drv.used_idx() != drv.avail_idx {
                assert!(Instant::now() < deadline, "worker stalled");
                std::thread::sleep(Duration::from_micros(50));
            }
            for i in 0..n - 1 {
                let st = mem
                    .read_obj::<u8>(GuestAddress(STATUS + u64::from(i)))
                    .expect("status");
                assert_eq!(st, VIRTIO_BLK_S_OK, "request {i} of round {round}");
            }
            let st = mem
                .read_obj::<u8>(GuestAddress(STATUS + u64::from(n - 1)))
                .expect("status");
            assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
        }
    };

    // Warm-up: buffers reach their steady capacity, lazy statics initialise.
    run(&mut drv, 50);
    COUNTING.store(true, Ordering::SeqCst);
    run(&mut drv, 500);
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);

    h.stop().expect("stop worker");
    let s = stats.snapshot(0);
    assert_eq!(s.requests, 550 * 8);
    assert_eq!(s.errors, 550, "only the unsupported chains fail");
    assert_eq!(s.copied_bytes, 0);
    assert_eq!(
        allocs, 0,
        "the worker (poll {poll:?}) allocated {allocs} times over 4000 requests after warm-up"
    );
    println!("steady_state_alloc: poll {poll:?}: 4000 requests after warm-up, 0 allocations");
}
