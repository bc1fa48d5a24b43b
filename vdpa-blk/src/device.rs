//! The VDUSE device: creation and teardown (VDUSE control device, vdpa netlink, driver binding)
//! and the control loop that answers the kernel's messages on `/dev/vduse/NAME`.
//!
//! The control loop runs on its own thread and never does backing-device I/O: it only does
//! ioctls, mmaps and thread start/stop, so it answers within VDUSE's `msg_timeout`. DRIVER_OK
//! starts one worker per ready queue; a reset (status 0) stops them after their in-flight I/O
//! (bounded by the reply budget, derived from VDUSE's `msg_timeout`) and forgets the IOTLB;
//! the device can then be driven again.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::backing::{Backing, BackingError};
use crate::blk::config::{
    feature, BlkConfig, DeviceModel, DeviceOptions, LimitsError, QueueLimits, VIRTIO_ID_BLOCK,
};
use crate::blk::exec::id_bytes;
use crate::blk::request::{max_chain, ParseContext, VIRTIO_BLK_ID_BYTES};
use crate::driver::{self, BoundNode, DriverError, SysRoot, VdpaDriver};
use crate::inflight::{self, InflightError, InflightLog, LogIdentity};
use crate::iotlb::{IotlbError, IotlbSource, IotlbTable, IotlbUpdate};
use crate::netlink::{NetlinkError, VdpaNetlink};
use crate::ready::{poll_us, ReadyCommon};
use crate::uapi::vduse::{
    ControlMessage, DevConfigBuf, NameError, VduseControl, VduseDevFd, VduseDevRequest,
    VduseDevResponse, VduseError, VduseVqInfo, VDUSE_API_VERSION,
};
use crate::worker::{
    self, EventFd, Instances, Interrupt, QueueConfig, QueueStats, QueueStatsSnapshot, WorkerError,
    WorkerHandle, WorkerParams,
};

/// virtio status bit DRIVER_OK.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// VDUSE's default `msg_timeout` (`VDUSE_MSG_DEFAULT_TIMEOUT`), used when sysfs does not say.
pub const DEFAULT_MSG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the control loop may hold a reply while waiting for in-flight I/O (a reset, an
/// IOTLB invalidation): three quarters of the kernel's `msg_timeout`. A reply later than
/// `msg_timeout` marks the VDUSE device broken for good (every later message fails), so the
/// wait must end first. `None` (`msg_timeout` 0: the kernel waits forever) waits as long as
/// the I/O takes.
pub fn reply_budget(msg_timeout: Option<Duration>) -> Option<Duration> {
    msg_timeout.map(|t| t * 3 / 4)
}

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
    /// The in-flight log failed or was refused.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// No device to reconnect to, or one this daemon cannot take over.
    #[error("reconnecting to {name}: {reason}")]
    Reconnect {
        /// Device name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Starting the control thread failed.
    #[error("control thread: {0}")]
    Thread(std::io::Error),
    /// Bad option.
    #[error("{0}")]
    Option(String),
    /// The driver set a queue up in a way that cannot be served.
    #[error("queue {queue}: {reason}")]
    QueueSetup {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
    /// `vdpa dev del` would block (uninterruptibly, in the kernel) until these processes
    /// close the vhost-vdpa device node.
    #[error("{path} is still open in {holders}: removing the vdpa device would block until it is closed (stop the VM first)")]
    InUse {
        /// `/dev/vhost-vdpa-N`.
        path: PathBuf,
        /// `pid (comm)`, comma-separated.
        holders: String,
    },
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
    /// See [`DriverRefusal`].
    refusal: Arc<DriverRefusal>,
    workers: Vec<Option<WorkerHandle>>,
    kicks: Vec<Option<EventFd>>,
    last_avail: Vec<Option<u16>>,
    status: u8,
    /// VDUSE's `msg_timeout` for this device (None: 0, no timeout); bounds every wait.
    msg_timeout: Option<Duration>,
    /// Ends a driver instance at each reset (see [`Instances`]).
    instances: Instances,
    /// Workers of an ended driver instance still waiting for I/O (a reset answered without
    /// them). They write nothing into guest memory, but their reads may still land in the old
    /// pages: no new DRIVER_OK is accepted until they are gone.
    orphans: Vec<WorkerHandle>,
    /// Restarts of each queue's worker since DRIVER_OK.
    restarts: Vec<u32>,
    /// Why each idle queue could not be started, last time (logged when it changes).
    idle_errors: Vec<Option<String>>,
    /// EVENT_IDX negotiated (read at DRIVER_OK).
    event_idx: bool,
    /// Guest pages the SIGBUS handler had replaced at the last tick.
    lost_pages: usize,
    /// The driver is vhost-vdpa: unmapped rings at DRIVER_OK most likely mean the VMM's memory
    /// is private anonymous memory, and the warning says so.
    warn_unmapped: bool,
    poll: Duration,
    /// The in-flight log the next daemon reconnects with (None: nothing survives a crash).
    log: Option<Arc<InflightLog>>,
    /// Per queue: its next start resumes from the log (a reconnect), instead of starting fresh.
    resume: Vec<bool>,
}

/// How often a queue whose worker died is restarted before it is left failed.
pub const MAX_QUEUE_RESTARTS: u32 = 3;

/// Says which regions an IOTLB update could not map (requests into them fail).
fn log_unmapped(report: &IotlbUpdate) {
    for e in &report.failed {
        tracing::error!("IOTLB region left unmapped (requests into it fail): {e}");
    }
}

fn worker_io(queue: u16, op: &'static str, source: std::io::Error) -> DeviceError {
    DeviceError::Worker(WorkerError::Io { queue, op, source })
}

/// What the device says when a vhost-vdpa user's rings are in memory it cannot map.
const UNMAPPED_RINGS: &str = "the driver's rings are in no memory the kernel lets us map: a \
     vhost-vdpa user (VMM) whose guest memory is private anonymous memory cannot be served; give \
     it shared memory (memfd or hugetlbfs, e.g. QEMU memory-backend-memfd with share=on)";

/// The last DRIVER_OK the device refused and why, until one succeeds: the stats line's
/// `driver_ok_refused`, so the health an operator reads names why a VMM's disk is dead instead
/// of leaving it to the daemon's log.
#[derive(Debug, Default)]
pub struct DriverRefusal(Mutex<Option<String>>);

impl DriverRefusal {
    /// Why the last DRIVER_OK was refused, if the last one was.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, why: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
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
            msg_timeout: Some(DEFAULT_MSG_TIMEOUT),
            instances: Instances::new(),
            orphans: Vec::new(),
            restarts: vec![0; n],
            idle_errors: vec![None; n],
            event_idx: false,
            lost_pages: 0,
            warn_unmapped,
            poll: Duration::ZERO,
            log: None,
            resume: vec![false; n],
            refusal: Arc::new(DriverRefusal::default()),
        }
    }

    /// The last DRIVER_OK refusal, for readers on other threads (the stats line).
    pub fn refusal(&self) -> Arc<DriverRefusal> {
        self.refusal.clone()
    }

    /// Keeps the in-flight log in `log` (see [`crate::inflight`]).
    pub fn with_log(mut self, log: Arc<InflightLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Takes over a device whose daemon died or left (see [`crate::inflight`]): the status
    /// the log recorded; when the driver was running, the IOTLB mapped again and every queue
    /// that was served resumed where the log and its used ring say, its in-flight requests
    /// submitted again. Returns the number of requests submitted again.
    pub fn resume_from_log(&mut self) -> Result<usize, DeviceError> {
        let Some(log) = self.log.clone() else {
            return Err(DeviceError::Option(
                "no in-flight log to resume from".into(),
            ));
        };
        // The guest was told this capacity; a resize while no daemon ran is announced on the
        // first tick.
        self.capacity.store(log.capacity(), Ordering::Release);
        let status = log.status();
        if status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            // No driver running: the messages still unanswered come again.
            self.status = status;
            return Ok(0);
        }
        let negotiated = self.ops.get_features()?;
        if negotiated != log.negotiated() {
            return Err(DeviceError::Inflight(InflightError::Mismatch {
                path: log.path().to_path_buf(),
                reason: format!(
                    "the driver negotiated features {negotiated:#x}, the log recorded {:#x}",
                    log.negotiated()
                ),
            }));
        }
        self.resume.iter_mut().for_each(|r| *r = true);
        self.start_workers()?;
        self.resume.iter_mut().for_each(|r| *r = false);
        self.status = status;
        Ok(self
            .workers
            .iter()
            .flatten()
            .map(WorkerHandle::resubmitted)
            .sum())
    }

    /// The device's VDUSE `msg_timeout` (None: 0, the kernel never times out).
    pub fn with_msg_timeout(mut self, msg_timeout: Option<Duration>) -> Self {
        self.msg_timeout = msg_timeout;
        self
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
    pub fn handle(&mut self, req: &VduseDevRequest) -> VduseDevResponse {
        let id = req.request_id;
        match req.message() {
            ControlMessage::SetStatus { status } => {
                let ok = self.set_status(status);
                VduseDevResponse::new(id, ok)
            }
            ControlMessage::GetVqState { index } => match self.vq_avail(index) {
                Some(avail) => VduseDevResponse::vq_state_split(id, index, avail),
                None => VduseDevResponse::new(id, false),
            },
            ControlMessage::UpdateIotlb { start, last } => {
                self.update_iotlb(start, last);
                // A failed answer would make the kernel drop the VMM's new mappings: the
                // regions we could not map are reported, the others served.
                VduseDevResponse::new(id, true)
            }
            ControlMessage::Unknown { type_ } => {
                tracing::warn!(type_, "unknown VDUSE request type");
                VduseDevResponse::new(id, false)
            }
        }
    }

    /// `VDUSE_UPDATE_IOTLB [start, last]`, answered after this returns. The kernel has already
    /// swapped its own IOTLB (vhost-vdpa's set_map always announces `[0, U64_MAX]`), and
    /// `VDUSE_IOTLB_GET_FD` works while it waits, so the next snapshot is built now and
    /// swapped in once: no window where the rings or status bytes are unmapped. The reply
    /// is then held until no in-flight request points into a mapping that went away (the
    /// memory may be reassigned once the kernel has the answer), bounded by the reply budget.
    fn update_iotlb(&mut self, start: u64, last: u64) {
        let report = self.iotlb.update(&*self.ops, start, last);
        log_unmapped(&report);
        tracing::debug!(
            start,
            last,
            mapped = report.mapped,
            kept = report.kept,
            removed = report.removed.len(),
            "IOTLB updated"
        );
        let budget = reply_budget(self.msg_timeout);
        let deadline = budget.and_then(|b| Instant::now().checked_add(b));
        // Workers pick up the new snapshot when they wake: kick them, so those holding the
        // old one let it go, and those that found their ring unmapped look again.
        if !report.wait_released(deadline, || self.kick_all()) {
            tracing::warn!(
                start,
                last,
                "in-flight I/O still points into unmapped guest memory after {budget:?}; \
                 answering the IOTLB update anyway (msg_timeout would break the device)"
            );
        }
        self.kick_all();
    }

    fn kick_all(&self) {
        for k in self.kicks.iter().flatten() {
            if let Err(e) = k.signal() {
                tracing::warn!("kicking a queue: {e}");
            }
        }
    }

    fn set_status(&mut self, status: u8) -> bool {
        tracing::info!(status, "device status");
        if status == 0 {
            self.stop_workers();
            // From here on, a worker still running belongs to a driver that is gone.
            self.instances.end_current();
            self.iotlb.clear();
            self.last_avail.iter_mut().for_each(|a| *a = None);
            self.resume.iter_mut().for_each(|r| *r = false);
            if let Some(log) = &self.log {
                log.reset();
                log.set_status(0);
            }
            self.status = 0;
            return true;
        }
        if status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            if let Some(queues) = self.live_orphans() {
                let why = format!(
                    "queue(s) {queues} of the previous driver still wait for I/O on the backing \
                     device (a lost path?); their reads could land in the new driver's memory. \
                     Reset and retry once the backing answers"
                );
                tracing::error!("DRIVER_OK refused: {why}");
                self.refusal.set(Some(why));
                return false;
            }
            if let Err(e) = self.start_workers() {
                tracing::error!("DRIVER_OK: cannot start the queues: {e}");
                let mut why = format!("cannot start the queues: {e}");
                if self.warn_unmapped
                    && matches!(e, DeviceError::Worker(WorkerError::InvalidRing { .. }))
                {
                    // vhost-vdpa passes VDUSE only shared, file-backed user memory: private
                    // anonymous memory never shows up in the IOTLB, so the rings are missing.
                    tracing::warn!("{UNMAPPED_RINGS}");
                    why = format!("{why}: {UNMAPPED_RINGS}");
                }
                self.refusal.set(Some(why));
                self.stop_workers();
                return false;
            }
            self.refusal.set(None);
        }
        if let Some(log) = &self.log {
            log.set_status(status);
        }
        self.status = status;
        true
    }

    /// DRIVER_OK: maps the IOTLB, registers a kick eventfd for every queue and starts a
    /// worker for each queue the driver enabled with a usable configuration. A queue the
    /// driver left off, or set up in a way we cannot serve, is skipped (firmware and guests
    /// with fewer vCPUs than queues drive a subset) and started when it is enabled later.
    /// Fails only when no queue could be started and one was refused (e.g. rings in memory
    /// the kernel does not let us map).
    fn start_workers(&mut self) -> Result<(), DeviceError> {
        let features = self.ops.get_features()?;
        self.event_idx = features & (1u64 << feature::RING_EVENT_IDX) != 0;
        if let Some(log) = &self.log {
            log.set_negotiated(features);
        }
        log_unmapped(&self.iotlb.map_all(&*self.ops));
        let mut first_err = None;
        for i in 0..self.workers.len() {
            let q = i as u16;
            let kick = EventFd::new().map_err(|e| worker_io(q, "create kick eventfd", e))?;
            self.ops
                .vq_setup_kickfd(u32::from(q), Some(kick.as_raw_fd()))?;
            self.kicks[i] = Some(kick);
            self.restarts[i] = 0;
            self.idle_errors[i] = None;
            match self.start_queue(i) {
                Ok(true) => {}
                Ok(false) => tracing::debug!(queue = i, "queue not enabled (yet)"),
                // Starting it fresh would serve from the wrong place: the reconnect fails.
                Err(e @ DeviceError::Worker(WorkerError::Resume { .. })) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        queue = i,
                        "queue skipped until the driver sets it up again: {e}"
                    );
                    self.idle_errors[i] = Some(e.to_string());
                    first_err = first_err.or(Some(e));
                }
            }
        }
        match first_err {
            Some(e) if self.running() == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// Starts queue `i` if the driver enabled it. Ok(false): not enabled, which includes a
    /// queue marked ready with size 0 (QEMU's vhost-vdpa marks every queue ready at start,
    /// also those a firmware or a guest with fewer vCPUs never set up).
    fn start_queue(&mut self, i: usize) -> Result<bool, DeviceError> {
        let q = i as u16;
        let info = self.ops.vq_get_info(u32::from(q))?;
        if info.ready == 0 || info.num == 0 {
            return Ok(false);
        }
        let size = u16::try_from(info.num)
            .ok()
            .filter(|n| *n > 0 && *n <= self.model.queue_size)
            .ok_or_else(|| DeviceError::QueueSetup {
                queue: q,
                reason: format!(
                    "the driver chose size {} (offered at most {})",
                    info.num, self.model.queue_size
                ),
            })?;
        let Some(own_kick) = self.kicks[i].as_ref() else {
            return Ok(false);
        };
        let kick = own_kick
            .try_clone()
            .map_err(|e| worker_io(q, "dup kick eventfd", e))?;
        let mem = self.iotlb.snapshot();
        let next_avail = info.state.split().avail_index;
        let next_used = mem
            .read_obj::<u16>(GuestAddress(info.device_addr.wrapping_add(2)))
            .map(u16::from_le)
            .unwrap_or(next_avail);
        let ctx = ParseContext::from_model(&self.model);
        let h = worker::spawn(WorkerParams {
            queue: QueueConfig {
                index: q,
                size,
                desc: info.desc_addr,
                driver: info.driver_addr,
                device: info.device_addr,
                event_idx: self.event_idx,
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
            instance: self.instances.current(),
            log: self.log.as_ref().and_then(|l| l.queue(q)),
            resume: std::mem::take(&mut self.resume[i]),
        })?;
        tracing::info!(
            queue = i,
            size,
            event_idx = self.event_idx,
            next_avail,
            "queue started"
        );
        self.workers[i] = Some(h);
        Ok(true)
    }

    /// The kick eventfds of queues without a worker (not enabled at DRIVER_OK): the control
    /// loop watches them, since VDUSE sends no message when a queue is enabled later and
    /// drops kicks on a queue that is not enabled.
    pub fn idle_kicks(&self) -> impl Iterator<Item = (usize, RawFd)> + '_ {
        let driving = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        self.kicks
            .iter()
            .zip(&self.workers)
            .enumerate()
            .filter(move |_| driving)
            .filter_map(|(i, (k, w))| match (k, w) {
                (Some(k), None) => Some((i, k.as_raw_fd())),
                _ => None,
            })
    }

    /// A kick on queue `i`, which had no worker: the driver enabled it since.
    pub fn kicked_idle(&mut self, i: usize) {
        if let Some(k) = self.kicks.get(i).and_then(|k| k.as_ref()) {
            if let Err(e) = k.consume() {
                tracing::warn!(queue = i, "reading kick eventfd: {e}");
            }
        }
        self.start_idle(i);
    }

    fn start_idle(&mut self, i: usize) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            || !matches!(self.workers.get(i), Some(None))
        {
            return;
        }
        match self.start_queue(i) {
            Ok(_) => self.idle_errors[i] = None,
            Err(e) => {
                // Checked every second: say it once, not every time.
                let text = e.to_string();
                if self.idle_errors[i].as_deref() != Some(text.as_str()) {
                    tracing::warn!(queue = i, "queue enabled but not started: {text}");
                    self.idle_errors[i] = Some(text);
                }
            }
        }
    }

    /// Once a second: starts queues enabled since DRIVER_OK (in case no kick came), restarts
    /// a worker that died on a fatal ring error (a few times, then the queue stays failed and
    /// says so), and forgets orphans that finished.
    pub fn tick(&mut self) {
        self.check_resize();
        let lost = crate::sigbus::replaced_pages();
        if lost > self.lost_pages {
            tracing::warn!(
                pages = lost - self.lost_pages,
                "guest memory vanished under the daemon (the VMM truncated its memory file): \
                 those pages now read as zeroes"
            );
            self.lost_pages = lost;
        }
        let _ = self.live_orphans();
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return;
        }
        for i in 0..self.workers.len() {
            let died = self.workers[i].as_ref().is_some_and(|w| w.is_finished());
            if died {
                let Some(w) = self.workers[i].take() else {
                    continue;
                };
                let cause = match w.join() {
                    Ok(_) => "exited".to_string(),
                    Err(e) => e.to_string(),
                };
                self.stats[i].failures.fetch_add(1, Ordering::Relaxed);
                if self.restarts[i] >= MAX_QUEUE_RESTARTS {
                    tracing::error!(
                        queue = i,
                        "queue worker stopped ({cause}) and was restarted {MAX_QUEUE_RESTARTS} \
                         times already: the queue stays failed until the driver resets the device"
                    );
                    // Leave the kick eventfd without a worker, but do not start it again.
                    self.kicks[i] = None;
                    continue;
                }
                self.restarts[i] += 1;
                tracing::error!(queue = i, "queue worker stopped ({cause}); restarting it");
                // Where it stopped and what it left in flight are in the log.
                self.resume[i] = self.log.is_some();
                self.start_idle(i);
                continue;
            }
            self.start_idle(i);
        }
    }

    /// Stops every worker after its in-flight I/O, bounded by the reply budget: a worker still
    /// waiting then becomes an orphan of the ending driver instance.
    pub fn stop_workers(&mut self) {
        for w in self.workers.iter().flatten() {
            if let Err(e) = w.signal_stop() {
                tracing::error!("{e}");
            }
        }
        self.kicks.iter_mut().for_each(|k| *k = None);
        let budget = reply_budget(self.msg_timeout);
        let deadline = budget.and_then(|b| Instant::now().checked_add(b));
        for (i, slot) in self.workers.iter_mut().enumerate() {
            let Some(w) = slot.take() else { continue };
            while !w.is_finished() && deadline.is_none_or(|d| Instant::now() < d) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !w.is_finished() {
                tracing::error!(
                    queue = i,
                    "in-flight I/O did not complete within {budget:?} (3/4 of VDUSE's \
                     msg_timeout); answering the reset anyway. The queue's worker finishes on \
                     its own and writes nothing for the next driver"
                );
                self.last_avail[i] = Some(w.next_avail());
                self.orphans.push(w);
                continue;
            }
            match w.join() {
                Ok(a) => self.last_avail[i] = Some(a),
                Err(e) => tracing::error!(queue = i, "worker: {e}"),
            }
        }
    }

    /// Joins the orphans that finished; the queues of those still running, if any.
    fn live_orphans(&mut self) -> Option<String> {
        let mut i = 0;
        while i < self.orphans.len() {
            if self.orphans[i].is_finished() {
                let w = self.orphans.swap_remove(i);
                let q = w.index();
                match w.join() {
                    Ok(_) => tracing::info!(queue = q, "the previous driver's last I/O completed"),
                    Err(e) => tracing::error!(queue = q, "orphaned worker: {e}"),
                }
            } else {
                i += 1;
            }
        }
        if self.orphans.is_empty() {
            return None;
        }
        let mut qs: Vec<String> = self.orphans.iter().map(|w| w.index().to_string()).collect();
        qs.sort();
        Some(qs.join(", "))
    }

    /// Number of workers of ended driver instances still running.
    pub fn orphans(&self) -> usize {
        self.orphans.iter().filter(|w| !w.is_finished()).count()
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
        if let Some(log) = &self.log {
            log.set_capacity(sectors);
        }
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
    let mut last_tick = Instant::now();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut idle: Vec<usize> = Vec::new();
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            ctrl.tick();
        }
        fds.clear();
        idle.clear();
        fds.push(pollfd(dev.as_fd().as_raw_fd()));
        fds.push(pollfd(stop.as_raw_fd()));
        for (i, fd) in ctrl.idle_kicks() {
            idle.push(i);
            fds.push(pollfd(fd));
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
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
        for (k, &i) in idle.iter().enumerate() {
            if fds[2 + k].revents & libc::POLLIN != 0 {
                ctrl.kicked_idle(i);
            }
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
        let resp = ctrl.handle(&req);
        if let Err(e) = dev.write_response(&resp) {
            tracing::error!("{e}");
        }
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
    /// Where the in-flight log lives (`NAME.inflight`; see [`crate::inflight`]).
    pub state_dir: PathBuf,
    /// Root for /sys and /dev.
    pub root: SysRoot,
}

/// What the ready line reports for a VDUSE device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyInfo {
    /// What every transport reports.
    #[serde(flatten)]
    pub common: ReadyCommon,
    /// vdpa device name (same as `name`).
    pub vdpa: String,
    /// Bound driver.
    pub driver: VdpaDriver,
    /// `/dev/vhost-vdpa-N` or `/dev/vdX`.
    pub path: PathBuf,
    /// `/dev/vduse/NAME`.
    pub vduse: PathBuf,
    /// Bounce buffer size requested, if any.
    pub bounce_size: Option<u64>,
    /// "fresh" (the device was created) or "reconnected" (taken over from a daemon that died
    /// or left for an upgrade).
    pub start: &'static str,
    /// Requests the previous daemon left in flight, submitted again (0 when fresh).
    pub resubmitted: u64,
    /// Times a daemon reconnected to this device since it was created.
    pub reconnects: u32,
    /// The in-flight log.
    pub inflight_log: PathBuf,
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
    refusal: Arc<DriverRefusal>,
    iotlb: Arc<IotlbTable>,
    vdpa_added: bool,
    created: bool,
    log: Option<Arc<InflightLog>>,
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

/// What the device model is derived from (any transport).
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions<'a> {
    /// Device name (checked like a VDUSE name, whatever the transport).
    pub name: &'a str,
    /// Root for /sys.
    pub root: &'a SysRoot,
    /// Backing block device or file.
    pub backing: &'a std::path::Path,
    /// Request queues.
    pub queues: u16,
    /// Queue size offered.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// Open the backing with O_DIRECT.
    pub direct: bool,
}

/// Checks the options and derives the device model from the backing device, opened.
pub fn model_for(o: &ModelOptions<'_>) -> Result<(DeviceModel, Arc<Backing>), DeviceError> {
    validate_name(o.name)?;
    if o.queues == 0 {
        return Err(DeviceError::Option("--queues must be at least 1".into()));
    }
    if !o.queue_size.is_power_of_two() || o.queue_size < 2 {
        return Err(DeviceError::Option(format!(
            "--queue-size {} must be a power of two >= 2",
            o.queue_size
        )));
    }
    let limits = QueueLimits::for_backing(o.root.path(), o.backing)?;
    let model = DeviceModel::new(
        &limits,
        &DeviceOptions {
            num_queues: o.queues,
            queue_size: o.queue_size,
            read_only: o.read_only,
        },
    );
    let backing = Arc::new(Backing::open(o.backing, model.read_only, o.direct)?);
    Ok((model, backing))
}

impl Device {
    /// Checks the options and derives the device model from the backing device, opened.
    fn model(cfg: &DeviceConfig) -> Result<(DeviceModel, Arc<Backing>), DeviceError> {
        model_for(&ModelOptions {
            name: &cfg.name,
            root: &cfg.root,
            backing: &cfg.backing,
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            read_only: cfg.read_only,
            direct: cfg.direct,
        })
    }

    fn identity(cfg: &DeviceConfig, model: &DeviceModel) -> LogIdentity {
        LogIdentity {
            name: cfg.name.clone(),
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            offered: model.features,
        }
    }

    fn ready_info(cfg: &DeviceConfig, model: &DeviceModel) -> ReadyInfo {
        ReadyInfo {
            common: ReadyCommon {
                event: "ready",
                name: cfg.name.clone(),
                transport: "vduse",
                backing: cfg.backing.clone(),
                capacity_sectors: model.config.capacity,
                queues: cfg.queues,
                queue_size: cfg.queue_size,
                read_only: model.read_only,
                copy_mode: match cfg.driver {
                    VdpaDriver::VhostVdpa => "zero-copy",
                    VdpaDriver::VirtioVdpa => "bounce",
                },
                poll_us: poll_us(cfg.poll),
                features: model.features,
                pid: std::process::id(),
            },
            vdpa: cfg.name.clone(),
            driver: cfg.driver,
            path: PathBuf::new(),
            vduse: cfg.root.join("dev/vduse").join(&cfg.name),
            bounce_size: cfg.bounce_size,
            start: "fresh",
            resubmitted: 0,
            reconnects: 0,
            inflight_log: inflight::log_path(&cfg.state_dir, &cfg.name),
        }
    }

    /// Creates the VDUSE device, starts the control loop, adds the vdpa device and binds the
    /// driver. On failure everything created so far is removed again.
    pub fn start(cfg: DeviceConfig) -> Result<Self, DeviceError> {
        let (model, backing) = Self::model(&cfg)?;
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
        let ready = Self::ready_info(&cfg, &model);
        control.create_dev(&buf)?;
        let mut d = Device {
            cfg,
            ready,
            control: Some(control),
            dev: None,
            stop: None,
            thread: None,
            stats: Arc::new(Vec::new()),
            refusal: Arc::new(DriverRefusal::default()),
            iotlb: Arc::new(IotlbTable::new()),
            vdpa_added: false,
            created: true,
            log: None,
        };
        // From here on, `d` removes what exists when dropped on an error path. A log left by
        // an earlier device of this name is stale: VDUSE would not have created this one
        // while that one existed.
        let log = InflightLog::create(
            &d.ready.inflight_log,
            &Self::identity(&d.cfg, &model),
            model.config.capacity,
        )?;
        d.log = Some(log);
        d.bring_up(model, backing)?;
        Ok(d)
    }

    /// Takes over the existing device `cfg.name` whose daemon died or left for an upgrade,
    /// without destroying it: reopens `/dev/vduse/NAME`, checks the in-flight log against the
    /// options and the kernel's negotiation, resumes the queues (re-submitting what was in
    /// flight) and serves on. A refusal leaves the device and the log as they were.
    pub fn reconnect(cfg: DeviceConfig) -> Result<Self, DeviceError> {
        let (model, backing) = Self::model(&cfg)?;
        let refuse = |reason: String| DeviceError::Reconnect {
            name: cfg.name.clone(),
            reason,
        };
        let mut ready = Self::ready_info(&cfg, &model);
        if !ready.vduse.exists() {
            return Err(refuse(format!(
                "{} does not exist: there is no such VDUSE device (start without --reconnect)",
                ready.vduse.display()
            )));
        }
        // Checked before the device node is opened: a refused log changes nothing.
        let log = InflightLog::open(&ready.inflight_log, &Self::identity(&cfg, &model))?;
        let current = driver::current_driver(&cfg.root, &cfg.name)?;
        if current.as_deref() != Some(cfg.driver.sysfs_name()) {
            return Err(refuse(format!(
                "the vdpa device is bound to {}, not {} (--driver)",
                current.as_deref().unwrap_or("no driver"),
                cfg.driver.sysfs_name()
            )));
        }
        let node = driver::wait_for_node(&cfg.root, &cfg.name, cfg.driver, Duration::ZERO)?;
        let dev = match VduseDevFd::open(&ready.vduse) {
            Ok(d) => Arc::new(d),
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                return Err(refuse(format!(
                    "{} is open in another process: a daemon still serves it",
                    ready.vduse.display()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let msg_timeout = Self::msg_timeout(&cfg);
        let mut ctrl = Controller::new(
            dev.clone(),
            model,
            backing,
            &cfg.serial,
            cfg.driver == VdpaDriver::VhostVdpa,
        )
        .with_poll(cfg.poll)
        .with_msg_timeout(msg_timeout)
        .with_log(log.clone());
        let resubmitted = ctrl.resume_from_log()?;
        ready.reconnects = log.count_reconnect();
        ready.start = "reconnected";
        ready.resubmitted = resubmitted as u64;
        ready.path = node.path;
        ready.common.capacity_sectors = log.capacity();
        tracing::info!(
            resubmitted,
            reconnects = ready.reconnects,
            status = ctrl.status(),
            "reconnected to the device"
        );
        let mut d = Device {
            cfg,
            ready,
            control: None,
            dev: None,
            stop: None,
            thread: None,
            stats: ctrl.stats(),
            refusal: ctrl.refusal(),
            iotlb: ctrl.iotlb().clone(),
            // Ours now: a shutdown removes it as if this daemon had created it.
            vdpa_added: true,
            created: true,
            log: Some(log),
        };
        d.control = Some(VduseControl::open(&d.cfg.root.join("dev/vduse/control"))?);
        d.spawn_control(ctrl, dev)?;
        Ok(d)
    }

    fn msg_timeout(cfg: &DeviceConfig) -> Option<Duration> {
        let t = match driver::msg_timeout(&cfg.root, &cfg.name) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("{e}; assuming VDUSE's default {DEFAULT_MSG_TIMEOUT:?}");
                Some(DEFAULT_MSG_TIMEOUT)
            }
        };
        tracing::info!(msg_timeout = ?t, reply_budget = ?reply_budget(t), "VDUSE msg_timeout");
        t
    }

    /// Starts the control thread serving `dev` with `ctrl`.
    fn spawn_control(
        &mut self,
        mut ctrl: Controller<VduseDevFd>,
        dev: Arc<VduseDevFd>,
    ) -> Result<(), DeviceError> {
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
        Ok(())
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
        .with_poll(self.cfg.poll)
        .with_msg_timeout(Self::msg_timeout(&self.cfg));
        if let Some(log) = &self.log {
            ctrl = ctrl.with_log(log.clone());
        }
        self.stats = ctrl.stats();
        self.refusal = ctrl.refusal();
        self.iotlb = ctrl.iotlb().clone();
        self.spawn_control(ctrl, dev)?;

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

    /// The device's guest memory table, for readers on other threads (the control socket's
    /// `mappings`).
    pub fn iotlb_source(&self) -> Arc<IotlbTable> {
        self.iotlb.clone()
    }

    /// The last DRIVER_OK refusal, for readers on other threads (the stats line).
    pub fn refusal_source(&self) -> Arc<DriverRefusal> {
        self.refusal.clone()
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

    /// The processes holding the vhost-vdpa node open, as `pid (comm)` (none for virtio-vdpa).
    fn vhost_holders(&self) -> Option<String> {
        if self.cfg.driver != VdpaDriver::VhostVdpa || self.ready.path.as_os_str().is_empty() {
            return None;
        }
        let h = driver::holders(&self.cfg.root, &self.ready.path);
        if h.is_empty() {
            return None;
        }
        Some(
            h.iter()
                .map(|(pid, comm)| format!("{pid} ({comm})"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// Waits up to `timeout` until nothing holds the vhost-vdpa node open, so that removing
    /// the device cannot hang; the error names the holders.
    pub fn wait_removable(&self, timeout: Duration) -> Result<(), DeviceError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(holders) = self.vhost_holders() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(DeviceError::InUse {
                    path: self.ready.path.clone(),
                    holders,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the control thread and waits for it (and so for the workers it stops).
    fn stop_control(&mut self) {
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
    }

    fn teardown(&mut self) -> Result<(), DeviceError> {
        let mut first_err = None;
        if self.vdpa_added {
            if let Some(holders) = self.vhost_holders() {
                // `vdpa dev del` would sit in D state until they close it: leave the device
                // (and say so) rather than hang.
                return Err(DeviceError::InUse {
                    path: self.ready.path.clone(),
                    holders,
                });
            }
        }
        if self.vdpa_added {
            // The control thread still answers the reset this causes.
            match VdpaNetlink::connect().and_then(|mut nl| nl.dev_del(&self.cfg.name)) {
                Ok(()) => self.vdpa_added = false,
                Err(e) => first_err = first_err.or(Some(DeviceError::Netlink(e))),
            }
        }
        self.stop_control();
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
        if !self.created {
            // The device is gone: its log with it.
            if let Some(log) = self.log.take() {
                if let Err(e) = log.remove() {
                    first_err = first_err.or(Some(e.into()));
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

    /// Leaves the device to the next daemon (a live upgrade): no new request is taken, the
    /// control loop stops after every queue's in-flight I/O completed (bounded by the reply
    /// budget; what is left is re-submitted by the next daemon), and the device, its driver
    /// binding and its in-flight log stay. Returns how long the queues took to drain.
    pub fn leave(mut self) -> Duration {
        let started = Instant::now();
        // The control thread drops its controller on the way out, which stops the workers
        // after their in-flight I/O.
        self.stop_control();
        self.dev = None;
        self.vdpa_added = false;
        self.created = false;
        self.log = None;
        started.elapsed()
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
