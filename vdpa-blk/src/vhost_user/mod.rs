//! The second transport: the same virtio-blk device served over vhost-user-blk, to any
//! vhost-user front end (QEMU, cloud-hypervisor, libblkio), on a Unix socket.
//!
//! [`backend::VhostUserBlk`] answers the protocol (decoded by rust-vmm's `vhost` crate; its
//! `vhost-user-backend` crate is not used because its event loop would replace the worker's
//! io_uring loop); [`memory::MemoryTable`] turns the front end's memory regions into the IOTLB
//! table the workers read. [`VhostUserServer`] owns the socket and one thread that serves one
//! front end at a time: when it disconnects, every queue is stopped after its in-flight I/O
//! and the next front end can connect.

pub mod backend;
pub mod memory;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::{BackendReqHandler, Error as VuError};

use crate::blk::exec::id_bytes;
use crate::device::{model_for, DeviceError, ModelOptions};
use crate::driver::SysRoot;
use crate::iotlb::IotlbTable;
use crate::ready::{poll_us, ReadyCommon};
use crate::unix_socket::{bind_listener, SocketError};
use crate::worker::{QueueStats, QueueStatsSnapshot};
use backend::{DeviceParts, VhostUserBlk};

/// Errors starting or stopping the vhost-user server.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The options or the backing device were refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A system call failed.
    #[error("vhost-user socket {path}: {op}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: std::io::Error,
    },
    /// The serving thread panicked.
    #[error("vhost-user socket {0}: the serving thread panicked")]
    Panicked(PathBuf),
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct VhostUserConfig {
    /// Device name (for logs and the ready line).
    pub name: String,
    /// Backing block device or file.
    pub backing: PathBuf,
    /// Request queues offered.
    pub queues: u16,
    /// Queue size offered.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// GET_ID serial.
    pub serial: String,
    /// Open the backing with O_DIRECT.
    pub direct: bool,
    /// Busy-poll window of the workers.
    pub poll: Duration,
    /// The socket to listen on.
    pub socket: PathBuf,
    /// Root for /sys.
    pub root: SysRoot,
}

/// What the ready line reports for a vhost-user device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VhostUserReady {
    /// What every transport reports (`copy_mode` is always "zero-copy": requests point into
    /// the front end's shared memory regions).
    #[serde(flatten)]
    pub common: ReadyCommon,
    /// The socket front ends connect to.
    pub socket: PathBuf,
}

/// The connection being served, so that a shutdown can end it.
#[derive(Debug, Default)]
struct Current {
    stream: Mutex<Option<UnixStream>>,
    stop: AtomicBool,
    /// Front ends served so far (the one now included).
    connections: AtomicU64,
}

/// A listening vhost-user-blk device.
pub struct VhostUserServer {
    ready: VhostUserReady,
    stats: Arc<Vec<Arc<QueueStats>>>,
    iotlb: Arc<IotlbTable>,
    current: Arc<Current>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
}

/// Errors after which the connection cannot go on (the stream is gone or out of step).
fn ends_connection(e: &VuError) -> bool {
    matches!(
        e,
        VuError::Disconnected
            | VuError::PartialMessage
            | VuError::SocketBroken(_)
            | VuError::SocketError(_)
            | VuError::IncorrectFds
            | VuError::OversizedMsg
            | VuError::InvalidMessage
    )
}

/// Waits up to `timeout` for the listener to be readable.
fn readable(l: &UnixListener, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

fn serve(listener: UnixListener, backend: Arc<Mutex<VhostUserBlk>>, current: Arc<Current>) {
    while !current.stop.load(Ordering::SeqCst) {
        if !readable(&listener, Duration::from_millis(200)) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("vhost-user accept: {e}");
                continue;
            }
        };
        match stream.try_clone() {
            Ok(c) => *current.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
            Err(e) => {
                tracing::error!("vhost-user: dup the connection: {e}; refusing it");
                continue;
            }
        }
        // Checked after the stream is published: a shutdown either sees the stream or is
        // seen here.
        if current.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = current.connections.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(connection = n, "vhost-user front end connected");
        let mut h = BackendReqHandler::from_stream(stream, backend.clone());
        loop {
            match h.handle_request() {
                Ok(()) => {}
                Err(e) if ends_connection(&e) => {
                    if !matches!(e, VuError::Disconnected) {
                        tracing::warn!(connection = n, "vhost-user connection ends: {e}");
                    }
                    break;
                }
                Err(e) => tracing::warn!(connection = n, "vhost-user request refused: {e}"),
            }
        }
        backend.lock().unwrap_or_else(|p| p.into_inner()).reset();
        *current.stream.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(connection = n, "vhost-user front end gone; queues stopped");
    }
}

impl VhostUserServer {
    /// Opens the backing, binds the socket and starts serving front ends.
    pub fn start(cfg: VhostUserConfig) -> Result<Self, VhostUserError> {
        let (model, backing) = model_for(&ModelOptions {
            name: &cfg.name,
            root: &cfg.root,
            backing: &cfg.backing,
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            read_only: cfg.read_only,
            direct: cfg.direct,
        })?;
        let listener = bind_listener(&cfg.socket, "vhost-user socket")?;
        let stats: Arc<Vec<Arc<QueueStats>>> = Arc::new(
            (0..cfg.queues)
                .map(|_| Arc::new(QueueStats::default()))
                .collect(),
        );
        let iotlb = Arc::new(IotlbTable::new());
        let blk = VhostUserBlk::new(DeviceParts {
            model: model.clone(),
            backing,
            iotlb: iotlb.clone(),
            stats: stats.clone(),
            id: id_bytes(&cfg.serial),
            poll: cfg.poll,
        });
        let ready = VhostUserReady {
            common: ReadyCommon {
                event: "ready",
                name: cfg.name.clone(),
                transport: "vhost-user",
                backing: cfg.backing.clone(),
                capacity_sectors: model.config.capacity,
                queues: cfg.queues,
                queue_size: cfg.queue_size,
                read_only: model.read_only,
                copy_mode: "zero-copy",
                poll_us: poll_us(cfg.poll),
                features: blk.offered_features(),
                pid: std::process::id(),
            },
            socket: cfg.socket.clone(),
        };
        let current = Arc::new(Current::default());
        let remove_socket = |e| {
            let _ = std::fs::remove_file(&cfg.socket);
            e
        };
        let thread = {
            let (backend, current) = (Arc::new(Mutex::new(blk)), current.clone());
            std::thread::Builder::new()
                .name("vdpa-blk-vhost-user".into())
                .spawn(move || serve(listener, backend, current))
                .map_err(|source| VhostUserError::Io {
                    path: cfg.socket.clone(),
                    op: "spawn the serving thread",
                    source,
                })
                .map_err(remove_socket)?
        };
        Ok(VhostUserServer {
            ready,
            stats,
            iotlb,
            current,
            thread: Some(thread),
            socket: cfg.socket,
        })
    }

    /// The ready line.
    pub fn ready(&self) -> &VhostUserReady {
        &self.ready
    }

    /// The live per-queue counters, for readers on other threads.
    pub fn stats_source(&self) -> Arc<Vec<Arc<QueueStats>>> {
        self.stats.clone()
    }

    /// The front end's memory as the workers see it (the control socket's `mappings`).
    pub fn iotlb_source(&self) -> Arc<IotlbTable> {
        self.iotlb.clone()
    }

    /// Per-queue counters now.
    pub fn stats(&self) -> Vec<QueueStatsSnapshot> {
        crate::worker::snapshot_all(&self.stats)
    }

    /// Front ends that connected so far.
    pub fn connections(&self) -> u64 {
        self.current.connections.load(Ordering::SeqCst)
    }

    /// Whether the serving thread still runs.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Ends the connection (its queues stop after their in-flight I/O), stops listening and
    /// removes the socket.
    pub fn shutdown(mut self) -> Result<(), VhostUserError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), VhostUserError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.current.stop.store(true, Ordering::SeqCst);
        if let Some(s) = &*self
            .current
            .stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            // Unblocks the request read; the thread then resets the backend.
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let joined = thread.join();
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!("removing {}: {e}", self.socket.display());
        }
        joined.map_err(|_| VhostUserError::Panicked(self.socket.clone()))
    }
}

impl Drop for VhostUserServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("{e}");
        }
    }
}
