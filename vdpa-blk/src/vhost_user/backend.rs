//! The vhost-user-blk backend: answers a front end's requests (rust-vmm's `vhost` crate
//! decodes them) and starts and stops the same queue workers VDUSE uses.
//!
//! What this transport owns: the memory table (fed to the [`IotlbTable`] the workers read),
//! each queue's setup (size, ring addresses translated to guest addresses, base index, kick
//! and call eventfds, enable), the call eventfds the workers signal instead of injecting an
//! interrupt, and the lifecycle: a ring starts once it has a kick fd and is enabled, stops on
//! `GET_VRING_BASE` (answering where it stopped) or on a disable, and a reset or a
//! disconnect stops everything and forgets the memory. Requests, io_uring execution, polling,
//! batching and statistics are the worker's, unchanged.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{Bytes, GuestAddress};

use super::memory::{MemoryTable, Region};
use crate::backing::Backing;
use crate::blk::config::{feature, DeviceModel, CONFIG_SIZE};
use crate::blk::request::{ParseContext, VIRTIO_BLK_ID_BYTES};
use crate::iotlb::IotlbTable;
use crate::worker::{
    self, EventFd, Instances, Interrupt, QueueConfig, QueueStats, WorkerHandle, WorkerParams,
};

/// Memory regions a front end may give (`GET_MAX_MEM_SLOTS`): what the kernel's vhost
/// accepts by default, more than QEMU uses without memory hot-plug.
pub const MAX_MEM_SLOTS: usize = 64;

/// How long a removed memory region may stay in use by in-flight requests before the
/// removal is answered anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The call eventfds, one per queue: a worker's interrupt is a write to its queue's.
#[derive(Debug)]
pub struct CallFds(Vec<Mutex<Option<EventFd>>>);

impl CallFds {
    /// No call fd for any of `queues` queues yet.
    pub fn new(queues: u16) -> Self {
        CallFds((0..queues).map(|_| Mutex::new(None)).collect())
    }

    fn set(&self, queue: u16, fd: Option<EventFd>) {
        if let Some(slot) = self.0.get(usize::from(queue)) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = fd;
        }
    }
}

impl Interrupt for CallFds {
    fn notify(&self, queue: u16) -> io::Result<()> {
        let Some(slot) = self.0.get(usize::from(queue)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no queue {queue}"),
            ));
        };
        match &*slot.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(fd) => fd.signal(),
            // The front end polls this queue's used ring: nothing to signal.
            None => Ok(()),
        }
    }
}

/// Front-end addresses of one queue's rings (`SET_VRING_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingAddrs {
    desc: u64,
    avail: u64,
    used: u64,
}

/// One queue as the front end set it up.
#[derive(Default)]
struct QueueSetup {
    size: Option<u16>,
    addrs: Option<RingAddrs>,
    /// Next available index (`SET_VRING_BASE`, or where the worker stopped).
    base: u16,
    kick: Option<EventFd>,
    enabled: bool,
    worker: Option<WorkerHandle>,
}

/// What every queue's worker shares (the device, not the connection).
pub struct DeviceParts {
    /// Offered features and config space.
    pub model: DeviceModel,
    /// The backing device.
    pub backing: Arc<Backing>,
    /// Guest memory, as the workers read it.
    pub iotlb: Arc<IotlbTable>,
    /// Per-queue counters (they outlive connections).
    pub stats: Arc<Vec<Arc<QueueStats>>>,
    /// GET_ID answer.
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
    /// Busy-poll window of the workers.
    pub poll: Duration,
}

/// The backend of one device; serves one front end at a time.
pub struct VhostUserBlk {
    parts: DeviceParts,
    calls: Arc<CallFds>,
    memory: MemoryTable,
    queues: Vec<QueueSetup>,
    acked_features: u64,
    acked_protocol: u64,
    instances: Instances,
}

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

fn refuse(msg: String) -> VuError {
    VuError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

fn failed(msg: String) -> VuError {
    VuError::ReqHandlerError(io::Error::other(msg))
}

impl VhostUserBlk {
    /// A backend for `parts`, with no front end yet.
    pub fn new(parts: DeviceParts) -> Self {
        let n = parts.model.config.num_queues;
        VhostUserBlk {
            calls: Arc::new(CallFds::new(n)),
            memory: MemoryTable::new(MAX_MEM_SLOTS),
            queues: (0..n).map(|_| QueueSetup::default()).collect(),
            acked_features: 0,
            acked_protocol: 0,
            instances: Instances::new(),
            parts,
        }
    }

    /// The virtio features offered: the VDUSE device's, less `ACCESS_PLATFORM` (vhost-user
    /// has no IOMMU here: descriptors carry guest physical addresses), plus vhost-user's
    /// `PROTOCOL_FEATURES`.
    pub fn offered_features(&self) -> u64 {
        (self.parts.model.features & !(1u64 << feature::ACCESS_PLATFORM)) | PROTOCOL_FEATURES
    }

    /// The protocol features offered.
    pub fn offered_protocol() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// Queues with a running worker.
    pub fn running(&self) -> usize {
        self.queues.iter().filter(|q| q.worker.is_some()).count()
    }

    fn queue(&mut self, index: u32) -> VuResult<&mut QueueSetup> {
        let n = self.queues.len();
        usize::try_from(index)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
            .ok_or_else(|| refuse(format!("queue {index}: the device has {n} queues")))
    }

    /// Stops queue `i`'s worker after its in-flight I/O; its base becomes where it stopped.
    fn stop_queue(&mut self, i: usize) {
        let Some(q) = self.queues.get_mut(i) else {
            return;
        };
        if let Some(h) = q.worker.take() {
            let last = h.next_avail();
            q.base = match h.stop() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(queue = i, "stopping the worker: {e}");
                    last
                }
            };
            tracing::info!(queue = i, next_avail = q.base, "queue stopped");
        }
    }

    fn stop_all(&mut self) {
        for i in 0..self.queues.len() {
            self.stop_queue(i);
        }
    }

    /// Forgets the front end: workers stopped after their I/O, the driver instance ended,
    /// memory, queue setup and negotiation cleared (a disconnect, `RESET_OWNER`).
    pub fn reset(&mut self) {
        self.stop_all();
        self.instances.end_current();
        self.parts.iotlb.clear();
        self.memory = MemoryTable::new(MAX_MEM_SLOTS);
        for (i, q) in self.queues.iter_mut().enumerate() {
            *q = QueueSetup::default();
            self.calls.set(i as u16, None);
        }
        self.acked_features = 0;
        self.acked_protocol = 0;
    }

    /// Whether a ring is enabled as soon as it has a kick fd: without `PROTOCOL_FEATURES`
    /// rings start enabled; with it, only `SET_VRING_ENABLE` enables them.
    fn enabled_by_kick(&self) -> bool {
        self.acked_features & PROTOCOL_FEATURES == 0
    }

    /// Starts queue `i`'s worker if it is set up, has a kick fd, is enabled and has none.
    fn try_start(&mut self, i: usize) -> VuResult<()> {
        let by_kick = self.enabled_by_kick();
        let Some(q) = self.queues.get(i) else {
            return Ok(());
        };
        if q.worker.is_some() || q.kick.is_none() || !(q.enabled || by_kick) {
            return Ok(());
        }
        let (Some(size), Some(addrs)) = (q.size, q.addrs) else {
            return Err(refuse(format!(
                "queue {i}: started before its size and ring addresses were set"
            )));
        };
        let gpa = |a: u64, what: &str| {
            self.memory
                .to_gpa(a)
                .map_err(|e| refuse(format!("queue {i}: {what}: {e}")))
        };
        let (desc, avail, used) = (
            gpa(addrs.desc, "descriptor table")?,
            gpa(addrs.avail, "available ring")?,
            gpa(addrs.used, "used ring")?,
        );
        let next_avail = q.base;
        // The used index the front end left in memory: where completions go on from.
        let next_used = self
            .parts
            .iotlb
            .snapshot()
            .read_obj::<u16>(GuestAddress(used.wrapping_add(2)))
            .map(u16::from_le)
            .map_err(|e| refuse(format!("queue {i}: reading the used index: {e}")))?;
        let kick = q
            .kick
            .as_ref()
            .map(EventFd::try_clone)
            .transpose()
            .map_err(|e| failed(format!("queue {i}: dup kick eventfd: {e}")))?
            .ok_or_else(|| refuse(format!("queue {i}: no kick fd")))?;
        let index = i as u16;
        let model = &self.parts.model;
        let h = worker::spawn(WorkerParams {
            queue: QueueConfig {
                index,
                size,
                desc,
                driver: avail,
                device: used,
                event_idx: self.acked_features & (1 << feature::RING_EVENT_IDX) != 0,
                next_avail,
                next_used,
            },
            parse: ParseContext {
                max_chain: crate::blk::request::max_chain(size, model.config.seg_max),
                ..ParseContext::from_model(model)
            },
            backing: self.parts.backing.clone(),
            iotlb: self.parts.iotlb.clone(),
            kick,
            irq: self.calls.clone(),
            stats: self.parts.stats[i].clone(),
            id: self.parts.id,
            capacity: None,
            fault: None,
            poll: self.parts.poll,
            instance: self.instances.current(),
            log: None,
            resume: false,
        })
        .map_err(|e| failed(format!("queue {i}: starting the worker: {e}")))?;
        tracing::info!(queue = i, size, next_avail, next_used, "queue started");
        self.queues[i].worker = Some(h);
        Ok(())
    }

    /// Wakes every running worker (so that it drops an old memory snapshot).
    fn kick_all(&self) {
        for k in self.queues.iter().filter_map(|q| q.kick.as_ref()) {
            if let Err(e) = k.signal() {
                tracing::warn!("kicking a queue: {e}");
            }
        }
    }

    /// Maps `[start, last]` again from the memory table and, when a region went away, waits
    /// until no in-flight request points into it.
    fn remap(&mut self, start: u64, last: u64) -> VuResult<()> {
        let up = self.parts.iotlb.update(&self.memory, start, last);
        if let Some(e) = up.failed.first() {
            return Err(failed(format!("mapping guest memory: {e}")));
        }
        if !up.wait_released(Some(Instant::now() + RELEASE_WAIT), || self.kick_all()) {
            tracing::warn!("a removed memory region is still used by in-flight requests");
        }
        Ok(())
    }
}

fn region(r: &VhostUserMemoryRegion, file: File) -> Region {
    Region {
        gpa: r.guest_phys_addr,
        size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
        file,
    }
}

fn not_offered(what: &'static str) -> VuError {
    VuError::InvalidOperation(what)
}

impl VhostUserBackendReqHandlerMut for VhostUserBlk {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        Err(not_offered("RESET_DEVICE is not offered"))
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        let extra = features & !self.offered_features();
        if extra != 0 {
            return Err(refuse(format!(
                "features {features:#x} include bits not offered: {extra:#x}"
            )));
        }
        if self.running() > 0 && features != self.acked_features {
            return Err(refuse("features changed while queues run".into()));
        }
        self.acked_features = features;
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(refuse(format!(
                "{} memory regions with {} fds",
                ctx.len(),
                files.len()
            )));
        }
        let regions = ctx.iter().zip(files).map(|(r, f)| region(r, f)).collect();
        self.memory
            .replace(regions)
            .map_err(|e| refuse(e.to_string()))?;
        self.remap(0, u64::MAX)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let max = self.parts.model.queue_size;
        let q = self.queue(index)?;
        let size = u16::try_from(num)
            .ok()
            .filter(|s| s.is_power_of_two() && *s <= max)
            .ok_or_else(|| {
                refuse(format!(
                    "queue {index}: size {num} is not a power of two of at most {max}"
                ))
            })?;
        if q.worker.is_some() {
            return Err(refuse(format!("queue {index}: size set while it runs")));
        }
        q.size = Some(size);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let q = self.queue(index)?;
        if q.worker.is_some() {
            return Err(refuse(format!(
                "queue {index}: ring addresses set while it runs"
            )));
        }
        q.addrs = Some(RingAddrs {
            desc: descriptor,
            avail: available,
            used,
        });
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let q = self.queue(index)?;
        if q.worker.is_some() {
            return Err(refuse(format!("queue {index}: base set while it runs")));
        }
        q.base = u16::try_from(base).map_err(|_| {
            refuse(format!(
                "queue {index}: base {base} is not a split-ring index"
            ))
        })?;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.queue(index)?;
        let i = index as usize;
        self.stop_queue(i);
        // A stopped ring starts again on the next SET_VRING_KICK.
        let q = &mut self.queues[i];
        q.kick = None;
        self.calls.set(index as u16, None);
        Ok(VhostUserVringState::new(index, u32::from(q.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = u32::from(index);
        self.queue(i)?;
        let Some(fd) = fd else {
            return Err(refuse(format!(
                "queue {index}: a kick fd is needed (this backend does not poll without one)"
            )));
        };
        // A new kick fd for a running ring: restart it on the new one where it stopped.
        self.stop_queue(usize::from(index));
        self.queues[usize::from(index)].kick = Some(EventFd::from(OwnedFd::from(fd)));
        self.try_start(usize::from(index))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.queue(u32::from(index))?;
        self.calls.set(
            u16::from(index),
            fd.map(|f| EventFd::from(OwnedFd::from(f))),
        );
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        // Errors are answered in each request's status byte; the err fd is never signalled.
        self.queue(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(Self::offered_protocol())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        let extra = features & !Self::offered_protocol().bits();
        if extra != 0 {
            return Err(refuse(format!(
                "protocol features {features:#x} include bits not offered: {extra:#x}"
            )));
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.queues.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        if self.enabled_by_kick() {
            return Err(refuse(
                "SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated".into(),
            ));
        }
        self.queue(index)?.enabled = enable;
        let i = index as usize;
        if enable {
            self.try_start(i)
        } else {
            self.stop_queue(i);
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let bytes = self.parts.model.config.to_bytes();
        let (o, n) = (offset as usize, size as usize);
        match o.checked_add(n).filter(|&end| end <= CONFIG_SIZE) {
            Some(end) => Ok(bytes[o..end].to_vec()),
            None => Err(refuse(format!(
                "config read of {size} bytes at {offset} is past the {CONFIG_SIZE}-byte config space"
            ))),
        }
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(refuse(format!(
            "config write of {} bytes at {offset}: the config space is read-only (no CONFIG_WCE)",
            buf.len()
        )))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(not_offered("GPU_SET_SOCKET: not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(not_offered("SHARED_OBJECT is not offered"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(not_offered("INFLIGHT_SHMEM is not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(not_offered("INFLIGHT_SHMEM is not offered"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS as u64)
    }

    fn add_mem_region(
        &mut self,
        r: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        let (start, size) = (r.guest_phys_addr, r.memory_size);
        self.memory
            .add(region(r, fd))
            .map_err(|e| refuse(e.to_string()))?;
        self.remap(start, start + (size - 1))?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, r: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        let (start, last) = self
            .memory
            .remove(r.guest_phys_addr, r.memory_size)
            .map_err(|e| refuse(e.to_string()))?;
        self.remap(start, last)
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(not_offered("DEVICE_STATE is not offered"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(not_offered("DEVICE_STATE is not offered"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(not_offered("SHMEM is not offered"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(not_offered("LOG_SHMFD is not offered (no dirty logging)"))
    }
}
