//! The control loop's decisions against a fake VDUSE device: memfd-backed IOTLB, the mock
//! queue's rings, a counting interrupt.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;

use super::*;
use crate::blk::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};
use crate::inflight::{self, InflightLog, LogIdentity};
use crate::iotlb::tests::FakeIotlb;
use crate::iotlb::IotlbMemory;
use crate::uapi::vduse::{
    VduseIotlbEntry, VduseVqStateSplit, VduseVqStateUnion, VDUSE_ACCESS_RW,
    VDUSE_REQ_RESULT_FAILED, VDUSE_REQ_RESULT_OK,
};

const MEM: u64 = 4 << 20;

struct FakeOps {
    iotlb: FakeIotlb,
    rings: Mutex<(u64, u64, u64)>,
    avail_index: Mutex<u16>,
    kick: Mutex<Vec<Option<OwnedFd>>>,
    /// (ready, num) per queue, as the driver set them up.
    queues: Mutex<Vec<(u8, u32)>>,
    /// While true, an interrupt blocks (a worker stuck past the reset).
    block_irq: (Mutex<bool>, std::sync::Condvar),
    /// The next interrupt panics (a worker dying).
    panic_irq: std::sync::atomic::AtomicBool,
    irqs: AtomicU32,
    config_irqs: AtomicU32,
    config_writes: Mutex<Vec<(u32, Vec<u8>)>>,
    features: u64,
}

impl IotlbSource for FakeOps {
    fn get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
        self.iotlb.get_fd(start, last)
    }
}

impl Interrupt for FakeOps {
    fn notify(&self, _queue: u16) -> std::io::Result<()> {
        if self.panic_irq.swap(false, Ordering::SeqCst) {
            panic!("injected worker failure");
        }
        let (m, cv) = &self.block_irq;
        let mut blocked = m.lock().expect("block");
        while *blocked {
            blocked = cv.wait(blocked).expect("wait");
        }
        self.irqs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl VduseOps for FakeOps {
    fn get_features(&self) -> Result<u64, VduseError> {
        Ok(self.features)
    }
    fn vq_get_info(&self, index: u32) -> Result<VduseVqInfo, VduseError> {
        let (desc, driver, device) = *self.rings.lock().expect("rings");
        let mut state = VduseVqStateUnion::default();
        state.split = VduseVqStateSplit {
            avail_index: *self.avail_index.lock().expect("avail"),
        };
        let (ready, num) = self
            .queues
            .lock()
            .expect("queues")
            .get(index as usize)
            .copied()
            .unwrap_or((1, 16));
        Ok(VduseVqInfo {
            index,
            num,
            desc_addr: desc,
            driver_addr: driver,
            device_addr: device,
            state,
            ready,
            padding: [0; 7],
        })
    }
    fn vq_setup_kickfd(&self, index: u32, fd: Option<RawFd>) -> Result<(), VduseError> {
        // Keep our own reference, as the kernel does (eventfd_ctx_fdget).
        // SAFETY: dup of a valid fd; the result is checked and owned.
        let dup = fd.map(|f| unsafe { libc::dup(f) });
        let mut k = self.kick.lock().expect("kick");
        let i = index as usize;
        if k.len() <= i {
            k.resize_with(i + 1, || None);
        }
        k[i] = dup.filter(|&d| d >= 0).map(|d| {
            // SAFETY: fresh fd from dup.
            unsafe { OwnedFd::from_raw_fd(d) }
        });
        Ok(())
    }
    fn set_config(&self, offset: u32, data: &[u8]) -> Result<(), VduseError> {
        self.config_writes
            .lock()
            .expect("cfg")
            .push((offset, data.to_vec()));
        Ok(())
    }
    fn inject_config_irq(&self) -> Result<(), VduseError> {
        self.config_irqs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl FakeOps {
    fn kick(&self) {
        self.kick_queue(0);
    }

    fn kick_queue(&self, i: usize) {
        let g = self.kick.lock().expect("kick");
        let fd = g
            .get(i)
            .and_then(|k| k.as_ref())
            .expect("kickfd registered")
            .as_raw_fd();
        let v: u64 = 1;
        // SAFETY: 8-byte write from a u64 to an eventfd we own.
        let n = unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
        assert_eq!(n, 8);
    }
}

fn request(type_: u32, id: u32, payload: &[u8]) -> VduseDevRequest {
    let mut b = [0u8; VduseDevRequest::SIZE];
    b[0..4].copy_from_slice(&type_.to_ne_bytes());
    b[4..8].copy_from_slice(&id.to_ne_bytes());
    b[24..24 + payload.len()].copy_from_slice(payload);
    VduseDevRequest::from_bytes(&b)
}

fn set_status(s: u8) -> VduseDevRequest {
    request(1, 10 + u32::from(s), &[s])
}

fn result(r: &VduseDevResponse) -> u32 {
    r.result
}

struct Rig {
    ops: Arc<FakeOps>,
    ctrl: Controller<FakeOps>,
    disk: tempfile::NamedTempFile,
}

fn rig(entries: &[(u64, u64, u64, u8)]) -> Rig {
    rig_queues(entries, 1)
}

fn rig_queues(entries: &[(u64, u64, u64, u8)], queues: u16) -> Rig {
    let ops = Arc::new(FakeOps {
        iotlb: FakeIotlb::new(MEM, entries),
        rings: Mutex::new((0, 0, 0)),
        avail_index: Mutex::new(0),
        kick: Mutex::new(Vec::new()),
        queues: Mutex::new(Vec::new()),
        block_irq: (Mutex::new(false), std::sync::Condvar::new()),
        panic_irq: std::sync::atomic::AtomicBool::new(false),
        irqs: AtomicU32::new(0),
        config_irqs: AtomicU32::new(0),
        config_writes: Mutex::new(Vec::new()),
        features: (1 << 32) | (1 << 33),
    });
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(1 << 20).expect("len");
    let limits = QueueLimits::for_file(1 << 20);
    let model = DeviceModel::new(
        &limits,
        &DeviceOptions {
            num_queues: queues,
            queue_size: 16,
            read_only: false,
        },
    );
    let backing = Arc::new(Backing::open(disk.path(), false, false).expect("backing"));
    let ctrl = Controller::new(ops.clone(), model, backing, "ser", true);
    Rig { ops, ctrl, disk }
}

/// A view of the guest memory the fake IOTLB exposes (the same memfd).
fn guest(r: &Rig) -> IotlbMemory {
    let t = IotlbTable::new();
    t.map_all(&r.ops.iotlb).all_mapped().expect("map");
    (*t.snapshot()).clone()
}

fn wait_used(mem: &IotlbMemory, used: GuestAddress, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mem
        .read_obj::<u16>(used.unchecked_add(2))
        .expect("used idx")
        < n
    {
        assert!(Instant::now() < deadline, "request not completed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn driver_ok_starts_workers_and_reset_stops_them_and_the_device_can_be_driven_again() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);

    for s in [1u8, 3, 11] {
        let resp = r.ctrl.handle(&set_status(s));
        assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
        assert_eq!(r.ctrl.running(), 0, "no worker before DRIVER_OK");
    }
    let resp = r.ctrl.handle(&set_status(15));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    assert_eq!(resp.request_id, 25);
    assert_eq!(r.ctrl.running(), 1);

    let flush = |at: u16, hdr: u64, status: u64| {
        mem.write_obj(VIRTIO_BLK_T_FLUSH.to_le(), GuestAddress(hdr))
            .expect("hdr");
        vq.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, at + 1)),
                RawDescriptor::from(SplitDescriptor::new(status, 1, 2, 0)),
            ],
            at,
        )
        .expect("chain");
    };
    flush(0, 0x10_0000, 0x30_0000);
    r.ops.kick();
    wait_used(&mem, vq.used_addr(), 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0000)).expect("st"),
        VIRTIO_BLK_S_OK
    );
    assert!(r.ops.irqs.load(Ordering::SeqCst) >= 1);

    // GET_VQ_STATE while running: the worker's next avail index.
    let resp = r.ctrl.handle(&request(0, 77, &0u32.to_ne_bytes()));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    let b = resp.to_bytes();
    assert_eq!(&b[28..30], &1u16.to_ne_bytes());

    // Reset: workers stop, the IOTLB is forgotten.
    let resp = r.ctrl.handle(&set_status(0));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    assert_eq!(r.ctrl.running(), 0);
    assert!(r.ctrl.iotlb().snapshot().is_empty());

    // Driven again (a VM reboot): the kernel reports the saved avail index.
    *r.ops.avail_index.lock().expect("avail") = 1;
    let resp = r.ctrl.handle(&set_status(15));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    assert_eq!(r.ctrl.running(), 1);
    flush(2, 0x10_0100, 0x30_0001);
    r.ops.kick();
    wait_used(&mem, vq.used_addr(), 2);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0001)).expect("st"),
        VIRTIO_BLK_S_OK
    );
    r.ctrl.stop_workers();
    let st = r.ctrl.stats();
    assert_eq!(st[0].snapshot(0).requests, 2, "counters survive a reset");
}

#[test]
fn driver_ok_with_unmapped_rings_fails_and_starts_nothing() {
    let mut r = rig(&[]);
    *r.ops.rings.lock().expect("rings") = (0x1000, 0x2000, 0x3000);
    let resp = r.ctrl.handle(&set_status(15));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_FAILED);
    assert_eq!(r.ctrl.running(), 0);
    assert_eq!(r.ctrl.status(), 0);
}

#[test]
fn a_refused_driver_ok_says_why_until_one_succeeds() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let refusal = r.ctrl.refusal();
    assert_eq!(refusal.get(), None, "nothing refused yet");
    // Rings outside every mapping: what a VMM with private memory looks like through
    // vhost-vdpa (its RAM never reaches the IOTLB).
    *r.ops.rings.lock().expect("rings") = (MEM + 0x1000, MEM + 0x2000, MEM + 0x3000);
    assert_eq!(
        result(&r.ctrl.handle(&set_status(15))),
        VDUSE_REQ_RESULT_FAILED
    );
    let why = refusal.get().expect("the refusal is kept");
    assert!(why.contains("cannot start the queues"), "{why}");
    assert!(why.contains("private anonymous memory"), "{why}");
    assert!(why.contains("share=on"), "{why}");
    // A reset keeps the reason (the VMM's disk is still dead); a DRIVER_OK that works ends it.
    assert_eq!(result(&r.ctrl.handle(&set_status(0))), VDUSE_REQ_RESULT_OK);
    assert!(refusal.get().is_some());
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    assert_eq!(refusal.get(), None);
    r.ctrl.stop_workers();
}

#[test]
fn update_iotlb_swaps_the_new_mappings_in_before_the_reply() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    r.ctrl
        .iotlb()
        .map_all(&r.ops.iotlb)
        .all_mapped()
        .expect("map");
    let before = r.ctrl.iotlb().snapshot();
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&0u64.to_ne_bytes());
    p[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
    let resp = r.ctrl.handle(&request(2, 5, &p));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    // Never an empty table, and the unchanged region keeps its mapping (not mapped again).
    let now = r.ctrl.iotlb().snapshot();
    assert_eq!(now.len(), 1);
    let (a, b) = (before.mappings().next(), now.mappings().next());
    assert!(
        std::ptr::eq(a.expect("old"), b.expect("new")),
        "region re-mmapped"
    );
}

#[test]
fn unknown_queue_and_unknown_message_fail() {
    let mut r = rig(&[]);
    let resp = r.ctrl.handle(&request(0, 1, &9u32.to_ne_bytes()));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_FAILED);
    let resp = r.ctrl.handle(&request(3, 2, &[]));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_FAILED);
    // GET_VQ_STATE of an idle queue: what the kernel holds.
    *r.ops.avail_index.lock().expect("avail") = 42;
    let resp = r.ctrl.handle(&request(0, 3, &0u32.to_ne_bytes()));
    assert_eq!(&resp.to_bytes()[28..30], &42u16.to_ne_bytes());
}

#[test]
fn backing_resize_updates_capacity_and_raises_config_interrupt() {
    let mut r = rig(&[]);
    assert_eq!(r.ctrl.check_resize(), None);
    r.disk.as_file().set_len(2 << 20).expect("grow");
    assert_eq!(r.ctrl.check_resize(), Some(4096));
    assert_eq!(
        *r.ops.config_writes.lock().expect("cfg"),
        vec![(0, 4096u64.to_le_bytes().to_vec())]
    );
    assert_eq!(r.ops.config_irqs.load(Ordering::SeqCst), 1);
    assert_eq!(r.ctrl.check_resize(), None);
    let _ = r.disk.as_file().write_at(&[0], 0);
}

#[test]
fn missing_vduse_module_is_named() {
    let root = tempfile::tempdir().expect("root");
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(1 << 20).expect("len");
    let Err(e) = Device::start(DeviceConfig {
        name: "t0".into(),
        backing: disk.path().to_path_buf(),
        queues: 1,
        queue_size: 16,
        driver: VdpaDriver::VirtioVdpa,
        read_only: false,
        serial: String::new(),
        bounce_size: None,
        direct: false,
        poll: Duration::ZERO,
        state_dir: root.path().join("run"),
        root: SysRoot::new(root.path()),
    }) else {
        panic!("no vduse here");
    };
    assert!(matches!(e, DeviceError::VduseMissing(_)), "{e}");
    assert!(e.to_string().contains("modprobe vduse"), "{e}");
}

#[test]
fn bad_options_are_refused_before_anything_is_created() {
    let root = tempfile::tempdir().expect("root");
    let cfg = DeviceConfig {
        name: "t0".into(),
        backing: "/nonexistent".into(),
        queues: 1,
        queue_size: 100,
        driver: VdpaDriver::VirtioVdpa,
        read_only: false,
        serial: String::new(),
        bounce_size: None,
        direct: false,
        poll: Duration::ZERO,
        state_dir: root.path().join("run"),
        root: SysRoot::new(root.path()),
    };
    let e = Device::start(cfg.clone()).err().expect("bad queue size");
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = Device::start(DeviceConfig {
        queue_size: 16,
        ..cfg
    })
    .err()
    .expect("no backing");
    assert!(e.to_string().contains("/nonexistent"), "{e}");
}

#[test]
fn request_kicked_during_an_iotlb_update_completes_after_the_remap() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let resp = r.ctrl.handle(&set_status(15));
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    let mut p = [0u8; 16];
    p[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
    // The VMM unmaps its memory (the kernel's IOTLB is empty when the message comes).
    let entries = std::mem::take(&mut *r.ops.iotlb.entries.lock().expect("entries"));
    assert_eq!(
        result(&r.ctrl.handle(&request(2, 5, &p))),
        VDUSE_REQ_RESULT_OK
    );
    assert!(r.ctrl.iotlb().snapshot().is_empty());
    // The driver queues a request while nothing is mapped; the worker cannot see it.
    mem.write_obj(VIRTIO_BLK_T_FLUSH.to_le(), GuestAddress(0x10_0000))
        .expect("hdr");
    vq.add_desc_chains(
        &[
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 16, 1, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 1, 2, 0)),
        ],
        0,
    )
    .expect("chain");
    r.ops.kick();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
            .expect("idx"),
        0
    );
    // Mapped again: the update re-kicks the queue.
    *r.ops.iotlb.entries.lock().expect("entries") = entries;
    assert_eq!(
        result(&r.ctrl.handle(&request(2, 6, &p))),
        VDUSE_REQ_RESULT_OK
    );
    wait_used(&mem, vq.used_addr(), 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0000)).expect("st"),
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn device_names_are_validated_before_anything_is_created() {
    assert!(validate_name("vol-1_a.b").is_ok());
    assert!(validate_name(&"a".repeat(63)).is_ok());
    for (name, why) in [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a b", "' '"),
        ("-x", "start"),
        (".x", "start"),
        ("é", "'é'"),
    ] {
        let e = validate_name(name).expect_err(name).to_string();
        assert!(e.contains(why), "{name:?}: {e}");
    }
    assert!(validate_name(&"a".repeat(64))
        .expect_err("64")
        .to_string()
        .contains("63"));
}

/// A FLUSH chain at table index `at` (two descriptors).
fn add_flush(mem: &IotlbMemory, vq: &MockSplitQueue<'_, IotlbMemory>, at: u16, hdr: u64, st: u64) {
    mem.write_obj(VIRTIO_BLK_T_FLUSH.to_le(), GuestAddress(hdr))
        .expect("hdr");
    vq.add_desc_chains(
        &[
            RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, at + 1)),
            RawDescriptor::from(SplitDescriptor::new(st, 1, 2, 0)),
        ],
        at,
    )
    .expect("chain");
}

#[test]
fn a_driver_that_enables_one_queue_of_two_is_served_and_the_other_starts_when_enabled() {
    // SeaBIOS drives one queue; QEMU reported the other with size 0 ("invalid queue maximum
    // size" used to fail DRIVER_OK for the whole device).
    let mut r = rig_queues(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)], 2);
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    *r.ops.queues.lock().expect("q") = vec![(1, 16), (1, 0)];
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    assert_eq!(r.ctrl.running(), 1);
    assert_eq!(
        r.ctrl.idle_kicks().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![1]
    );
    add_flush(&mem, &vq, 0, 0x10_0000, 0x30_0000);
    r.ops.kick_queue(0);
    wait_used(&mem, vq.used_addr(), 1);

    // The driver now sets queue 1 up and kicks it: the control loop starts it.
    r.ops.queues.lock().expect("q")[1] = (1, 16);
    r.ops.kick_queue(1);
    r.ctrl.kicked_idle(1);
    assert_eq!(r.ctrl.running(), 2);
    assert_eq!(r.ctrl.idle_kicks().count(), 0);
    r.ctrl.stop_workers();

    // Not ready at all at DRIVER_OK, enabled later without a kick: the tick starts it.
    let mut r = rig_queues(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)], 2);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    *r.ops.queues.lock().expect("q") = vec![(1, 16), (0, 0)];
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    assert_eq!(r.ctrl.running(), 1);
    r.ctrl.tick();
    assert_eq!(r.ctrl.running(), 1);
    r.ops.queues.lock().expect("q")[1] = (1, 8);
    r.ctrl.tick();
    assert_eq!(r.ctrl.running(), 2);
}

#[test]
fn a_worker_that_dies_is_noticed_counted_and_restarted() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    r.ops.panic_irq.store(true, Ordering::SeqCst);
    add_flush(&mem, &vq, 0, 0x10_0000, 0x30_0000);
    r.ops.kick();
    // The worker panics injecting the interrupt of its first completion.
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.ctrl.workers[0].as_ref().is_some_and(|w| !w.is_finished()) {
        assert!(Instant::now() < deadline, "worker did not die");
        std::thread::sleep(Duration::from_millis(2));
    }
    r.ctrl.tick();
    assert_eq!(r.ctrl.stats()[0].snapshot(0).failures, 1);
    assert_eq!(r.ctrl.running(), 1, "restarted");
    // The restarted queue serves the next request.
    add_flush(&mem, &vq, 2, 0x10_0100, 0x30_0001);
    r.ops.kick();
    wait_used(&mem, vq.used_addr(), 2);
    r.ctrl.stop_workers();
}

#[test]
fn a_reset_with_io_stuck_past_the_budget_leaves_an_orphan_that_writes_nothing_and_blocks_driver_ok()
{
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    r.ctrl = std::mem::replace(
        &mut r.ctrl,
        Controller::new(
            r.ops.clone(),
            DeviceModel::new(
                &QueueLimits::for_file(1 << 20),
                &DeviceOptions {
                    num_queues: 1,
                    queue_size: 16,
                    read_only: false,
                },
            ),
            Arc::new(Backing::open(r.disk.path(), false, false).expect("backing")),
            "ser",
            true,
        ),
    )
    .with_msg_timeout(Some(Duration::from_millis(400)));
    let mem = guest(&r);
    let vq = MockSplitQueue::new(&mem, 16);
    *r.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    // The worker gets stuck (as behind a lost path) right after its first completion.
    *r.ops.block_irq.0.lock().expect("block") = true;
    add_flush(&mem, &vq, 0, 0x10_0000, 0x30_0000);
    r.ops.kick();
    wait_used(&mem, vq.used_addr(), 1);
    // Reset: answered within the budget (3/4 of msg_timeout), not after the I/O.
    let t = Instant::now();
    assert_eq!(result(&r.ctrl.handle(&set_status(0))), VDUSE_REQ_RESULT_OK);
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.ctrl.orphans(), 1);
    // The next driver may not start while the orphan lives.
    assert_eq!(
        result(&r.ctrl.handle(&set_status(15))),
        VDUSE_REQ_RESULT_FAILED
    );
    assert_eq!(r.ctrl.running(), 0);
    // The next driver's request sits in the ring; the orphan, released, must not touch it.
    add_flush(&mem, &vq, 2, 0x10_0100, 0x30_0001);
    mem.write_obj(0xffu8, GuestAddress(0x30_0001)).expect("st");
    {
        let (m, cv) = &r.ops.block_irq;
        *m.lock().expect("block") = false;
        cv.notify_all();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.ctrl.orphans() > 0 {
        assert!(Instant::now() < deadline, "orphan did not finish");
        std::thread::sleep(Duration::from_millis(2));
    }
    r.ctrl.tick();
    assert_eq!(
        mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
            .expect("idx"),
        1,
        "the orphan completed nothing of the next driver"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0001)).expect("st"),
        0xff
    );
    // Now the next driver starts, and its request is served.
    *r.ops.avail_index.lock().expect("avail") = 1;
    assert_eq!(result(&r.ctrl.handle(&set_status(15))), VDUSE_REQ_RESULT_OK);
    r.ops.kick();
    wait_used(&mem, vq.used_addr(), 2);
    r.ctrl.stop_workers();
}

#[test]
fn an_iotlb_update_waits_for_in_flight_io_into_removed_memory() {
    let mut r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    r.ctrl
        .iotlb()
        .map_all(&r.ops.iotlb)
        .all_mapped()
        .expect("map");
    // An in-flight request holds the current snapshot.
    let in_flight = r.ctrl.iotlb().snapshot();
    // The VMM moves the range to another offset of its memory.
    r.ops.iotlb.entries.lock().expect("e")[0].offset = 0x1000;
    let mut p = [0u8; 16];
    p[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a2 = answered.clone();
    let ctrl = std::thread::spawn(move || {
        let resp = r.ctrl.handle(&request(2, 5, &p));
        a2.store(true, Ordering::SeqCst);
        (r, resp)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !answered.load(Ordering::SeqCst),
        "answered while I/O still points into the old mapping"
    );
    drop(in_flight);
    let (r, resp) = ctrl.join().expect("control thread");
    assert_eq!(result(&resp), VDUSE_REQ_RESULT_OK);
    assert_eq!(
        r.ctrl
            .iotlb()
            .snapshot()
            .mappings()
            .next()
            .map(|m| m.start()),
        Some(0)
    );
}

#[test]
fn one_region_that_fails_to_map_leaves_the_others_served() {
    let mut r = rig(&[
        (0, 0xfffff, 0, VDUSE_ACCESS_RW),
        (0x10_0000, 0x1f_ffff, 0x10_0000, 0x7),
        (0x20_0000, 0x2f_ffff, 0x20_0000, VDUSE_ACCESS_RW),
    ]);
    let mut p = [0u8; 16];
    p[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
    assert_eq!(
        result(&r.ctrl.handle(&request(2, 5, &p))),
        VDUSE_REQ_RESULT_OK
    );
    let starts: Vec<u64> = r
        .ctrl
        .iotlb()
        .snapshot()
        .mappings()
        .map(|m| m.start())
        .collect();
    assert_eq!(starts, vec![0, 0x20_0000]);
}

fn log_for(dir: &tempfile::TempDir, r: &Rig) -> Arc<InflightLog> {
    InflightLog::create(
        &inflight::log_path(dir.path(), "t0"),
        &LogIdentity {
            name: "t0".into(),
            queues: 1,
            queue_size: 16,
            offered: r.ctrl.model.features,
        },
        r.ctrl.model.config.capacity,
    )
    .expect("log")
}

/// A flush chain at table index `at` whose status byte at `st` reads 0xff until answered.
fn flush_chain(mem: &IotlbMemory, vq: &MockSplitQueue<'_, IotlbMemory>, at: u16, st: u64) {
    mem.write_obj(0xffu8, GuestAddress(st)).expect("status");
    add_flush(mem, vq, at, 0x10_0000 + u64::from(at) * 0x100, st);
}

#[test]
fn a_new_controller_resumes_from_the_log_a_dead_one_left_and_resubmits_its_request() {
    let dir = tempfile::tempdir().expect("dir");
    let mut a = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let log = log_for(&dir, &a);
    a.ctrl = Controller::new(
        a.ops.clone(),
        a.ctrl.model.clone(),
        a.ctrl.backing.clone(),
        "ser",
        true,
    )
    .with_log(log.clone());
    let mem = guest(&a);
    let vq = MockSplitQueue::new(&mem, 16);
    *a.ops.rings.lock().expect("rings") =
        (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    for s in [1u8, 3, 11, 15] {
        assert_eq!(result(&a.ctrl.handle(&set_status(s))), VDUSE_REQ_RESULT_OK);
    }
    assert_eq!(log.status(), 15);
    assert_eq!(log.negotiated(), a.ops.features);
    flush_chain(&mem, &vq, 0, 0x30_0000);
    a.ops.kick();
    wait_used(&mem, vq.used_addr(), 1);
    // The daemon stops serving (its workers gone, no reset: the device stays driven) ...
    a.ctrl.stop_workers();
    // ... having fetched head 2 from the available ring and died before completing it.
    flush_chain(&mem, &vq, 2, 0x30_0001);
    log.queue(0).expect("q0").fetched(2, 7);
    // The VDUSE state that survives: the same rings, the driver's initial avail index.
    let mut b = Controller::new(
        a.ops.clone(),
        a.ctrl.model.clone(),
        a.ctrl.backing.clone(),
        "ser",
        true,
    )
    .with_log(log.clone());
    let resubmitted = b.resume_from_log().expect("resume");
    assert_eq!(resubmitted, 1);
    assert_eq!(b.status(), 15);
    assert_eq!(b.running(), 1);
    wait_used(&mem, vq.used_addr(), 2);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0001)).expect("st"),
        VIRTIO_BLK_S_OK
    );
    let used1 = mem
        .read_obj::<u32>(vq.used_addr().unchecked_add(4 + 8))
        .expect("used entry");
    assert_eq!(used1, 2, "the re-submitted head completed");
    // Popping goes on after it: the next chain is served once, not the old one again.
    flush_chain(&mem, &vq, 4, 0x30_0002);
    a.ops.kick();
    wait_used(&mem, vq.used_addr(), 3);
    assert_eq!(
        mem.read_obj::<u32>(vq.used_addr().unchecked_add(4 + 16))
            .expect("used entry"),
        4
    );
    let st = b.stats()[0].snapshot(0);
    assert_eq!(st.resubmitted, 1);
    b.stop_workers();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
            .expect("used idx"),
        3,
        "nothing completed twice"
    );
}

#[test]
fn a_log_from_another_negotiation_is_refused_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let r = rig(&[(0, MEM - 1, 0, VDUSE_ACCESS_RW)]);
    let log = log_for(&dir, &r);
    log.set_status(15);
    log.set_negotiated(1 << 32);
    let mut c = Controller::new(
        r.ops.clone(),
        r.ctrl.model.clone(),
        r.ctrl.backing.clone(),
        "ser",
        true,
    )
    .with_log(log.clone());
    let e = c.resume_from_log().expect_err("other negotiation");
    assert!(e.to_string().contains("negotiated features"), "{e}");
    assert_eq!(c.running(), 0);
    assert_eq!(c.status(), 0);
    // Before DRIVER_OK: the status is taken over, nothing started, the messages come again.
    log.set_status(3);
    assert_eq!(c.resume_from_log().expect("resume"), 0);
    assert_eq!((c.status(), c.running()), (3, 0));
}
