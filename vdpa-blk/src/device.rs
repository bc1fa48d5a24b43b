//! The VDUSE device: creation and teardown (VDUSE control device, vdpa netlink, driver binding)
//! and the control loop that answers the kernel's messages on `/dev/vduse/NAME`.
//!
//! The control loop runs on its own thread and never does backing-device I/O: it only does
//! ioctls, mmaps and thread start/stop, so it answers within VDUSE's `msg_timeout`. DRIVER_OK
//! starts one worker per ready queue; a reset (status 0) stops them after their in-flight I/O
//! (bounded by [`STOP_TIMEOUT`]) and forgets the IOTLB; the device can then be driven again.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::blk::config::{
    feature, BlkConfig, DeviceModel, DeviceOptions, LimitsError, QueueLimits, VIRTIO_ID_BLOCK,
};
use crate::blk::exec::id_bytes;
use crate::blk::request::{max_chain, ParseContext, VIRTIO_BLK_ID_BYTES};
use crate::driver::{self, BoundNode, DriverError, SysRoot, VdpaDriver};
use crate::iotlb::{IotlbError, IotlbSource, IotlbTable};
use crate::netlink::{NetlinkError, VdpaNetlink};
use crate::uapi::vduse::{
    ControlMessage, DevConfigBuf, NameError, VduseControl, VduseDevFd, VduseDevRequest,
    VduseDevResponse, VduseError, VduseVqInfo, VDUSE_API_VERSION,
};
use crate::worker::{
    self, Backing, BackingError, EventFd, Interrupt, QueueConfig, QueueStats, QueueStatsSnapshot,
    WorkerError, WorkerHandle, WorkerParams,
};

/// virtio status bit DRIVER_OK.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// How long a reset waits for in-flight I/O before answering anyway (below VDUSE's default
/// 30 s `msg_timeout`).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What the control loop needs from the VDUSE device fd (a fake in tests).
pub trait VduseOps: IotlbSource + Interrupt + Send + Sync + 'static {
    /// `VDUSE_DEV_GET_FEATURES`.
    fn get_features(&self) -> Result<u64, VduseError>;
    /// `VDUSE_VQ_GET_INFO`.
    fn vq_get_info(&self, index: u32) -> Result<VduseVqInfo, VduseError>;
    /// `VDUSE_VQ_SETUP_KICKFD`.
    fn vq_setup_kickfd(&self, index: u32, fd: Option<RawFd>) -> Result<(), VduseError>;
    /// `VDUSE_DEV_SET_CONFIG`.
    fn set_config(&self, offset: u32, data: &[u8]) -> Result<(), VduseError>;
    /// `VDUSE_DEV_INJECT_CONFIG_IRQ`.
    fn inject_config_irq(&self) -> Result<(), VduseError>;
}

impl VduseOps for VduseDevFd {
    fn get_features(&self) -> Result<u64, VduseError> {
        VduseDevFd::get_features(self)
    }
    fn vq_get_info(&self, index: u32) -> Result<VduseVqInfo, VduseError> {
        VduseDevFd::vq_get_info(self, index)
    }
    fn vq_setup_kickfd(&self, index: u32, fd: Option<RawFd>) -> Result<(), VduseError> {
        VduseDevFd::vq_setup_kickfd(self, index, fd)
    }
    fn set_config(&self, offset: u32, data: &[u8]) -> Result<(), VduseError> {
        VduseDevFd::set_config(self, offset, data)
    }
    fn inject_config_irq(&self) -> Result<(), VduseError> {
        VduseDevFd::inject_config_irq(self)
    }
}

/// Errors of the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The VDUSE control node is missing.
    #[error("{0} not found: the `vduse` kernel module is not loaded (modprobe vduse)")]
    VduseMissing(PathBuf),
    /// A VDUSE call failed.
    #[error(transparent)]
    Vduse(#[from] VduseError),
    /// Bad device name.
    #[error("device name: {0}")]
    Name(#[from] NameError),
    /// `/dev/vduse/NAME` did not appear.
    #[error("{0} did not appear after VDUSE_CREATE_DEV")]
    NoDeviceNode(PathBuf),
    /// Reading the backing device's limits failed.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// Opening the backing device failed.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// The vdpa netlink exchange failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Driver binding failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// IOTLB mapping failed.
    #[error(transparent)]
    Iotlb(#[from] IotlbError),
    /// A worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Starting the control thread failed.
    #[error("control thread: {0}")]
    Thread(std::io::Error),
    /// Bad option.
    #[error("{0}")]
    Option(String),
}

/// The queue-independent state of the control loop.
pub struct Controller<O: VduseOps> {
    ops: Arc<O>,
    iotlb: Arc<IotlbTable>,
    model: DeviceModel,
    backing: Arc<Backing>,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    capacity: Arc<AtomicU64>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    workers: Vec<Option<WorkerHandle>>,
    kicks: Vec<Option<EventFd>>,
    last_avail: Vec<Option<u16>>,
    status: u8,
    stop_timeout: Duration,
    /// The driver is vhost-vdpa: unmapped rings at DRIVER_OK most likely mean the VMM's memory
    /// is private anonymous memory, and the warning says so.
    warn_unmapped: bool,
    poll: Duration,
}

/// Work to do after the response was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Nothing.
    Nothing,
    /// Map what the kernel now reports in `[start, last]`.
    Remap {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
    },
}

impl<O: VduseOps> Controller<O> {
    /// A controller for a device with `model`, serving `backing`; `warn_unmapped` for a
    /// vhost-vdpa device (see the field).
    pub fn new(
        ops: Arc<O>,
        model: DeviceModel,
        backing: Arc<Backing>,
        serial: &str,
        warn_unmapped: bool,
    ) -> Self {
        let n = usize::from(model.config.num_queues.max(1));
        Controller {
            ops,
            iotlb: Arc::new(IotlbTable::new()),
            capacity: Arc::new(AtomicU64::new(model.config.capacity)),
            model,
            backing,
            id: id_bytes(serial),
            stats: Arc::new((0..n).map(|_| Arc::new(QueueStats::default())).collect()),
            workers: (0..n).map(|_| None).collect(),
            kicks: (0..n).map(|_| None).collect(),
            last_avail: vec![None; n],
            status: 0,
            stop_timeout: STOP_TIMEOUT,
            warn_unmapped,
            poll: Duration::ZERO,
        }
    }

    /// Workers busy-poll for `poll` after activity (zero: they never poll).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Shared per-queue counters.
    pub fn stats(&self) -> Arc<Vec<Arc<QueueStats>>> {
        self.stats.clone()
    }

    /// The IOTLB table.
    pub fn iotlb(&self) -> &Arc<IotlbTable> {
        &self.iotlb
    }

    /// Number of running workers.
    pub fn running(&self) -> usize {
        self.workers.iter().filter(|w| w.is_some()).count()
    }

    /// The device status last set by the driver.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Answers one request.
    pub fn handle(&mut self, req: &VduseDevRequest) -> (VduseDevResponse, AfterReply) {
        let id = req.request_id;
        match req.message() {
            ControlMessage::SetStatus { status } => {
                let ok = self.set_status(status);
                (VduseDevResponse::new(id, ok), AfterReply::Nothing)
            }
            ControlMessage::GetVqState { index } => match self.vq_avail(index) {
                Some(avail) => (
                    VduseDevResponse::vq_state_split(id, index, avail),
                    AfterReply::Nothing,
                ),
                None => (VduseDevResponse::new(id, false), AfterReply::Nothing),
            },
            ControlMessage::UpdateIotlb { start, last } => {
                // Drop now; map after the reply (the kernel may be waiting on this answer).
                let dropped = self.iotlb.invalidate(start, last);
                tracing::debug!(start, last, dropped, "IOTLB update");
                (
                    VduseDevResponse::new(id, true),
                    AfterReply::Remap { start, last },
                )
            }
            ControlMessage::Unknown { type_ } => {
                tracing::warn!(type_, "unknown VDUSE request type");
                (VduseDevResponse::new(id, false), AfterReply::Nothing)
            }
        }
    }

    /// Runs the work left after a reply.
    pub fn after_reply(&mut self, a: AfterReply) {
        if let AfterReply::Remap { start, last } = a {
            match self.iotlb.update(&*self.ops, start, last) {
                Ok(n) => tracing::debug!(start, last, mapped = n, "IOTLB remapped"),
                Err(e) => tracing::warn!(start, last, "IOTLB remap failed: {e}"),
            }
            // A worker that found its ring unmapped during the update waits for a kick.
            for k in self.kicks.iter().flatten() {
                if let Err(e) = k.signal() {
                    tracing::warn!("re-kicking a queue after an IOTLB update: {e}");
                }
            }
        }
    }

    fn set_status(&mut self, status: u8) -> bool {
        tracing::info!(status, "device status");
        if status == 0 {
            self.stop_workers();
            self.iotlb.clear();
            self.last_avail.iter_mut().for_each(|a| *a = None);
            self.status = 0;
            return true;
        }
        if status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            if let Err(e) = self.start_workers() {
                tracing::error!("DRIVER_OK: cannot start the queues: {e}");
                if self.warn_unmapped
                    && matches!(e, DeviceError::Worker(WorkerError::InvalidRing { .. }))
                {
                    // vhost-vdpa passes VDUSE only shared, file-backed user memory: private
                    // anonymous memory never shows up in the IOTLB, so the rings are missing.
                    tracing::warn!(
                        "the driver's rings are in no memory the kernel lets us map: a vhost-vdpa \
                         user (VMM) whose guest memory is private anonymous memory cannot be \
                         served; give it shared memory (memfd or hugetlbfs, e.g. QEMU \
                         memory-backend-memfd with share=on)"
                    );
                }
                self.stop_workers();
                return false;
            }
        }
        self.status = status;
        true
    }

    fn start_workers(&mut self) -> Result<(), DeviceError> {
        let features = self.ops.get_features()?;
        let event_idx = features & (1u64 << feature::RING_EVENT_IDX) != 0;
        self.iotlb.map_all(&*self.ops)?;
        let mem = self.iotlb.snapshot();
        let ctx = ParseContext::from_model(&self.model);
        for i in 0..self.workers.len() {
            let info = self.ops.vq_get_info(i as u32)?;
            if info.ready == 0 {
                tracing::debug!(queue = i, "queue not ready, no worker");
                continue;
            }
            let size = u16::try_from(info.num).map_err(|_| {
                DeviceError::Option(format!("queue {i}: driver chose size {}", info.num))
            })?;
            let kick = EventFd::new().map_err(|e| {
                DeviceError::Worker(WorkerError::Io {
                    queue: i as u16,
                    op: "create kick eventfd",
                    source: e,
                })
            })?;
            self.ops.vq_setup_kickfd(i as u32, Some(kick.as_raw_fd()))?;
            let own_kick = kick.try_clone().map_err(|e| {
                DeviceError::Worker(WorkerError::Io {
                    queue: i as u16,
                    op: "dup kick eventfd",
                    source: e,
                })
            })?;
            let next_avail = info.state.split().avail_index;
            let next_used = mem
                .read_obj::<u16>(GuestAddress(info.device_addr.wrapping_add(2)))
                .map(u16::from_le)
                .unwrap_or(next_avail);
            let h = worker::spawn(WorkerParams {
                queue: QueueConfig {
                    index: i as u16,
                    size,
                    desc: info.desc_addr,
                    driver: info.driver_addr,
                    device: info.device_addr,
                    event_idx,
                    next_avail,
                    next_used,
                },
                parse: ParseContext {
                    max_chain: max_chain(size, self.model.config.seg_max),
                    ..ctx
                },
                backing: self.backing.clone(),
                iotlb: self.iotlb.clone(),
                kick,
                irq: self.ops.clone(),
                stats: self.stats[i].clone(),
                id: self.id,
                capacity: Some(self.capacity.clone()),
                fault: Some(self.ops.clone()),
                poll: self.poll,
            })?;
            tracing::info!(queue = i, size, event_idx, next_avail, "queue started");
            self.workers[i] = Some(h);
            self.kicks[i] = Some(own_kick);
        }
        Ok(())
    }

    /// Stops every worker after its in-flight I/O (bounded by the stop timeout).
    pub fn stop_workers(&mut self) {
        for w in self.workers.iter().flatten() {
            if let Err(e) = w.signal_stop() {
                tracing::error!("{e}");
            }
        }
        self.kicks.iter_mut().for_each(|k| *k = None);
        let deadline = Instant::now() + self.stop_timeout;
        for (i, slot) in self.workers.iter_mut().enumerate() {
            let Some(w) = slot.take() else { continue };
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !w.is_finished() {
                tracing::error!(
                    queue = i,
                    "in-flight I/O did not complete within {:?}; answering the reset anyway",
                    self.stop_timeout
                );
                self.last_avail[i] = Some(w.next_avail());
                continue;
            }
            match w.join() {
                Ok(a) => self.last_avail[i] = Some(a),
                Err(e) => tracing::error!(queue = i, "worker: {e}"),
            }
        }
    }

    fn vq_avail(&self, index: u32) -> Option<u16> {
        let i = usize::try_from(index).ok()?;
        if let Some(Some(w)) = self.workers.get(i) {
            return Some(w.next_avail());
        }
        if let Some(Some(a)) = self.last_avail.get(i) {
            return Some(*a);
        }
        if i >= self.workers.len() {
            return None;
        }
        self.ops
            .vq_get_info(index)
            .ok()
            .map(|info| info.state.split().avail_index)
    }

    /// Notices a backing resize: updates capacity, the config space, and injects a config
    /// interrupt. Returns the new capacity when it changed.
    pub fn check_resize(&mut self) -> Option<u64> {
        let sectors = self.backing.size_bytes().ok()? / 512;
        if sectors == self.capacity.load(Ordering::Acquire) {
            return None;
        }
        tracing::info!(sectors, "backing device resized");
        self.capacity.store(sectors, Ordering::Release);
        self.model.config.capacity = sectors;
        if let Err(e) = self
            .ops
            .set_config(BlkConfig::CAPACITY_OFFSET, &sectors.to_le_bytes())
            .and_then(|()| self.ops.inject_config_irq())
        {
            tracing::warn!("announcing the resize: {e}");
        }
        Some(sectors)
    }
}

impl<O: VduseOps> Drop for Controller<O> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// The control loop: answers requests from `dev` until `stop` is signalled; checks for a
/// backing resize once a second.
pub fn serve(ctrl: &mut Controller<VduseDevFd>, dev: &VduseDevFd, stop: &EventFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: dev.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("poll on {}: {e}", dev.path().display());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if n == 0 {
            ctrl.check_resize();
            continue;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                tracing::error!("{} hung up", dev.path().display());
                return;
            }
            continue;
        }
        let req = match dev.read_request() {
            Ok(r) => r,
            Err(e) if e.errno() == Some(libc::EAGAIN) || e.errno() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let (resp, after) = ctrl.handle(&req);
        if let Err(e) = dev.write_response(&resp) {
            tracing::error!("{e}");
        }
        ctrl.after_reply(after);
    }
}

/// Everything the binary asks for.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// VDUSE and vdpa device name.
    pub name: String,
    /// Backing block device (or file).
    pub backing: PathBuf,
    /// Number of queues.
    pub queues: u16,
    /// Queue size.
    pub queue_size: u16,
    /// Driver to bind.
    pub driver: VdpaDriver,
    /// Export read-only.
    pub read_only: bool,
    /// GET_ID serial.
    pub serial: String,
    /// VDUSE bounce buffer size (bytes), set before the vdpa device is added.
    pub bounce_size: Option<u64>,
    /// Open the backing device with O_DIRECT.
    pub direct: bool,
    /// Busy-poll window of the queue workers after activity (zero: no polling).
    pub poll: Duration,
    /// Root for /sys and /dev.
    pub root: SysRoot,
}

/// What the ready line reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyInfo {
    /// Always "ready".
    pub event: &'static str,
    /// VDUSE device name.
    pub name: String,
    /// vdpa device name (same as `name`).
    pub vdpa: String,
    /// Bound driver.
    pub driver: VdpaDriver,
    /// `/dev/vhost-vdpa-N` or `/dev/vdX`.
    pub path: PathBuf,
    /// `/dev/vduse/NAME`.
    pub vduse: PathBuf,
    /// Backing path.
    pub backing: PathBuf,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Queues.
    pub queues: u16,
    /// Queue size.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// "zero-copy" (vhost-vdpa: the IOTLB maps the VMM's shared memory) or "bounce"
    /// (virtio-vdpa: the kernel's VDUSE bounce buffer copies once).
    pub copy_mode: &'static str,
    /// Bounce buffer size requested, if any.
    pub bounce_size: Option<u64>,
    /// Busy-poll window of the queue workers, microseconds (0: no polling).
    pub poll_us: u64,
    /// Offered feature bits.
    pub features: u64,
    /// Daemon pid.
    pub pid: u32,
}

/// A running device.
pub struct Device {
    cfg: DeviceConfig,
    ready: ReadyInfo,
    control: Option<VduseControl>,
    dev: Option<Arc<VduseDevFd>>,
    stop: Option<EventFd>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Vec<Arc<QueueStats>>>,
    vdpa_added: bool,
    created: bool,
}

fn wait_for(path: &std::path::Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The device name becomes `/dev/vduse/NAME`, a vdpa bus device and a netlink attribute:
/// 1 to 63 characters from `[A-Za-z0-9._-]`, not starting with a dot or a dash.
pub fn validate_name(name: &str) -> Result<(), DeviceError> {
    let bad = |why: &str| Err(DeviceError::Option(format!("--name {name:?}: {why}")));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > 63 {
        return bad("must be at most 63 characters");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

impl Device {
    /// Creates the VDUSE device, starts the control loop, adds the vdpa device and binds the
    /// driver. On failure everything created so far is removed again.
    pub fn start(cfg: DeviceConfig) -> Result<Self, DeviceError> {
        validate_name(&cfg.name)?;
        if cfg.queues == 0 {
            return Err(DeviceError::Option("--queues must be at least 1".into()));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size < 2 {
            return Err(DeviceError::Option(format!(
                "--queue-size {} must be a power of two >= 2",
                cfg.queue_size
            )));
        }
        let limits = QueueLimits::for_backing(cfg.root.path(), &cfg.backing)?;
        let model = DeviceModel::new(
            &limits,
            &DeviceOptions {
                num_queues: cfg.queues,
                queue_size: cfg.queue_size,
                read_only: cfg.read_only,
            },
        );
        let backing = Arc::new(Backing::open(&cfg.backing, model.read_only, cfg.direct)?);
        let ctl_path = cfg.root.join("dev/vduse/control");
        if !ctl_path.exists() {
            return Err(DeviceError::VduseMissing(ctl_path));
        }
        let control = VduseControl::open(&ctl_path)?;
        // Every VDUSE kernel speaks version 0, the one this crate is written against.
        let api = control.get_api_version()?;
        tracing::debug!(kernel_api = api, "VDUSE API version");
        control.set_api_version(VDUSE_API_VERSION)?;
        let buf = DevConfigBuf::new(
            &cfg.name,
            VIRTIO_ID_BLOCK,
            model.features,
            u32::from(cfg.queues),
            4096,
            &model.config.to_bytes(),
        )?;
        let vduse_path = cfg.root.join("dev/vduse").join(&cfg.name);
        let ready = ReadyInfo {
            event: "ready",
            name: cfg.name.clone(),
            vdpa: cfg.name.clone(),
            driver: cfg.driver,
            path: PathBuf::new(),
            vduse: vduse_path.clone(),
            backing: cfg.backing.clone(),
            capacity_sectors: model.config.capacity,
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            read_only: model.read_only,
            copy_mode: match cfg.driver {
                VdpaDriver::VhostVdpa => "zero-copy",
                VdpaDriver::VirtioVdpa => "bounce",
            },
            bounce_size: cfg.bounce_size,
            poll_us: u64::try_from(cfg.poll.as_micros()).unwrap_or(u64::MAX),
            features: model.features,
            pid: std::process::id(),
        };
        control.create_dev(&buf)?;
        let mut d = Device {
            cfg,
            ready,
            control: Some(control),
            dev: None,
            stop: None,
            thread: None,
            stats: Arc::new(Vec::new()),
            vdpa_added: false,
            created: true,
        };
        // From here on, `d` removes what exists when dropped on an error path.
        d.bring_up(model, backing)?;
        Ok(d)
    }

    fn bring_up(&mut self, model: DeviceModel, backing: Arc<Backing>) -> Result<(), DeviceError> {
        let vduse_path = self.ready.vduse.clone();
        if !wait_for(&vduse_path, Duration::from_secs(5)) {
            return Err(DeviceError::NoDeviceNode(vduse_path));
        }
        let dev = Arc::new(VduseDevFd::open(&vduse_path)?);
        for i in 0..u32::from(self.cfg.queues) {
            dev.vq_setup(i, self.cfg.queue_size)?;
        }
        if let Some(b) = self.cfg.bounce_size {
            driver::set_bounce_size(&self.cfg.root, &self.cfg.name, b)?;
        }
        let mut ctrl = Controller::new(
            dev.clone(),
            model,
            backing,
            &self.cfg.serial,
            self.cfg.driver == VdpaDriver::VhostVdpa,
        )
        .with_poll(self.cfg.poll);
        self.stats = ctrl.stats();
        let stop = EventFd::new().map_err(DeviceError::Thread)?;
        let stop2 = stop.try_clone().map_err(DeviceError::Thread)?;
        let dev2 = dev.clone();
        let thread = std::thread::Builder::new()
            .name("vdpa-blk-ctl".into())
            .spawn(move || {
                serve(&mut ctrl, &dev2, &stop2);
                drop(ctrl);
            })
            .map_err(DeviceError::Thread)?;
        self.dev = Some(dev);
        self.stop = Some(stop);
        self.thread = Some(thread);

        // The kernel talks to the control thread while these run (status, config reads).
        let mut nl = VdpaNetlink::connect()?;
        // No driver may take the device before ours is bound.
        let autoprobe = driver::AutoprobeOff::acquire(&self.cfg.root)?;
        nl.dev_add("vduse", &self.cfg.name)?;
        self.vdpa_added = true;
        let node: BoundNode = driver::bind(
            &self.cfg.root,
            &self.cfg.name,
            self.cfg.driver,
            Duration::from_secs(10),
        )?;
        drop(autoprobe);
        self.ready.path = node.path;
        Ok(())
    }

    /// The ready line's content.
    pub fn ready(&self) -> &ReadyInfo {
        &self.ready
    }

    /// The live per-queue counters, for readers on other threads (the control socket).
    pub fn stats_source(&self) -> Arc<Vec<Arc<QueueStats>>> {
        self.stats.clone()
    }

    /// Per-queue counters now.
    pub fn stats(&self) -> Vec<QueueStatsSnapshot> {
        worker::snapshot_all(&self.stats)
    }

    /// Whether the control loop is still running.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn teardown(&mut self) -> Result<(), DeviceError> {
        let mut first_err = None;
        if self.vdpa_added {
            // The control thread still answers the reset this causes.
            match VdpaNetlink::connect().and_then(|mut nl| nl.dev_del(&self.cfg.name)) {
                Ok(()) => self.vdpa_added = false,
                Err(e) => first_err = first_err.or(Some(DeviceError::Netlink(e))),
            }
        }
        if let Some(stop) = self.stop.take() {
            if let Err(e) = stop.signal() {
                tracing::error!("stopping the control thread: {e}");
            }
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
        // The device fd must be closed before DESTROY_DEV (EBUSY otherwise).
        self.dev = None;
        if self.created {
            if let Some(c) = &self.control {
                let mut last = None;
                for _ in 0..50 {
                    match c.destroy_dev(&self.cfg.name) {
                        Ok(()) => {
                            last = None;
                            self.created = false;
                            break;
                        }
                        Err(e) if e.errno() == Some(libc::EBUSY) => {
                            last = Some(e);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => {
                            last = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = last {
                    first_err = first_err.or(Some(DeviceError::Vduse(e)));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes the vdpa device and the VDUSE device.
    pub fn shutdown(mut self) -> Result<(), DeviceError> {
        self.teardown()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("cleanup of {}: {e}", self.cfg.name);
        }
    }
}

#[cfg(test)]
mod tests;
