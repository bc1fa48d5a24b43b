//! The vdpa-blk side of an attachment: start one detached `vdpa-blk` process, read its ready
//! line, tell whether it still runs, stop it, and ask its control socket for counters.
//!
//! The [`Launcher`] trait is what the attachment service and the supervisor use; [`BinaryLauncher`]
//! is the real one over the `vdpa-blk` binary, and tests of the layers above use a fake.
//!
//! What the process is to us:
//! - it runs in its own session (`setsid`), with stdin `/dev/null` and stdout and stderr sent to
//!   files in the state directory, never to pipes: a dead or restarted agent can neither
//!   SIGPIPE it nor hold its output hostage, and the process outlives the agent;
//! - it is known by its pid *and* its start time (field 22 of `/proc/PID/stat`, clock ticks
//!   since boot), so a recycled pid is never taken for it and never signalled;
//! - its contract is vdpa-blk's client side only: the `{"event":"ready",...}` JSON line on
//!   stdout (`vdpa_blk::device::ReadyInfo`) and the control socket (`vdpa_blk::control`: one
//!   command line per connection, one JSON line back). Both are parsed here into our own
//!   types, without linking the datapath crate; fields we do not know are ignored, so a newer
//!   vdpa-blk with more counters still parses.
//!
//! After an agent restart, [`Launcher::adopt`] turns a stored [`ProcessRecord`] back into a
//! [`Running`] (re-reading the ready line from the stdout file) when the process is alive.
//!
//! Status: complete for the launcher's job; unit-tested with a fake vdpa-blk (a shell script)
//! and a control socket served by the test.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often a wait looks again (ready line, process exit).
const POLL: Duration = Duration::from_millis(20);
/// How much of the stderr log an error carries.
const STDERR_TAIL: usize = 2048;
/// Longest stdout we read looking for the ready line, and longest control socket answer.
const MAX_READ: u64 = 1 << 20;
/// How long a killed process is waited for after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The vdpa bus driver vdpa-blk binds its device to (its `--driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Mode {
    /// `/dev/vhost-vdpa-N` for a VMM; the IOTLB maps the VMM's shared memory (zero copy).
    #[serde(rename = "vhost-vdpa")]
    VhostVdpa,
    /// `/dev/vdX` on the host (or for a container); the kernel's VDUSE bounce buffer copies once.
    #[serde(rename = "virtio-vdpa")]
    VirtioVdpa,
}

impl Mode {
    /// The `--driver` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::VhostVdpa => "vhost-vdpa",
            Mode::VirtioVdpa => "virtio-vdpa",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the data costs on its way to the backing device, as the ready line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum CopyMode {
    /// vhost-vdpa: requests point into the VMM's shared guest memory; nobody copies.
    #[serde(rename = "zero-copy")]
    ZeroCopy,
    /// virtio-vdpa: the kernel's VDUSE bounce buffer copies each payload once.
    #[serde(rename = "bounce")]
    Bounce,
}

/// Everything needed to start one vdpa-blk process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// VDUSE and vdpa device name (`--name`): 1 to 63 characters from `[A-Za-z0-9._-]`.
    pub name: String,
    /// Backing block device, e.g. `/dev/nvme1n1` (`--backing`).
    pub backing: PathBuf,
    /// vdpa bus driver (`--driver`).
    pub mode: Mode,
    /// Request queues (`--queues`).
    pub queues: u16,
    /// Queue size, a power of two (`--queue-size`).
    pub queue_size: u16,
    /// Export read-only (`--read-only`).
    pub read_only: bool,
    /// Worker busy-poll window in microseconds, 0 for none (`--poll-us`).
    pub poll_us: u32,
    /// The control socket vdpa-blk answers `stats` on (`--control-socket`).
    pub control_socket: PathBuf,
    /// File that receives the process's stdout (its JSON lines); truncated at each start.
    pub stdout: PathBuf,
    /// File that receives the process's stderr (its log); appended to.
    pub stderr: PathBuf,
}

impl LaunchSpec {
    /// The vdpa-blk arguments for this spec.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--backing".into(),
            self.backing.clone().into(),
            "--driver".into(),
            self.mode.as_str().into(),
            "--queues".into(),
            self.queues.to_string().into(),
            "--queue-size".into(),
            self.queue_size.to_string().into(),
            "--poll-us".into(),
            self.poll_us.to_string().into(),
            "--control-socket".into(),
            self.control_socket.clone().into(),
        ];
        if self.read_only {
            a.push("--read-only".into());
        }
        a
    }
}

/// The ready line: what the device became. Parsed from vdpa-blk's `ReadyInfo`; unknown fields
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// VDUSE device name.
    pub name: String,
    /// vdpa device name.
    pub vdpa: String,
    /// The driver the device is bound to.
    pub driver: Mode,
    /// `/dev/vhost-vdpa-N` (vhost-vdpa) or `/dev/vdX` (virtio-vdpa).
    pub path: PathBuf,
    /// `/dev/vduse/NAME`.
    pub vduse: PathBuf,
    /// The backing device.
    pub backing: PathBuf,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Request queues.
    pub queues: u16,
    /// Queue size.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// Who copies the payload.
    pub copy_mode: CopyMode,
    /// Busy-poll window, microseconds.
    pub poll_us: u64,
    /// Offered virtio feature bits.
    pub features: u64,
    /// The daemon's own pid.
    pub pid: u32,
}

/// Which process is ours: what the store keeps to find it again after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` when it was started (clock ticks since boot).
    pub start_time: u64,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// Its stdout file (the ready line is read again from here on adoption).
    pub stdout: PathBuf,
    /// Its stderr log.
    pub stderr: PathBuf,
}

/// A vdpa-blk process that printed its ready line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The process.
    pub process: ProcessRecord,
    /// Its ready line.
    pub ready: Ready,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// It exited after SIGTERM (vdpa-blk removes its device on the way out).
    Exited,
    /// It did not exit within the timeout and was killed: its VDUSE device may be left.
    Killed,
    /// It was not running (already gone, or the pid now belongs to another process).
    NotRunning,
}

/// One queue's counters from the control socket (`QueueStatsSnapshot` in vdpa-blk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Queue index.
    pub queue: u16,
    /// Requests completed.
    pub requests: u64,
    /// Bytes read from the backing device.
    pub bytes_read: u64,
    /// Bytes written to the backing device.
    pub bytes_written: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Malformed chains dropped.
    pub dropped: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Interrupts injected.
    pub interrupts: u64,
    /// Kicks received.
    pub kicks: u64,
    /// Requests found by polling, with no kick.
    pub polled: u64,
    /// Payload bytes the daemon copied (stays 0).
    pub copied_bytes: u64,
    /// Completions parked while their ring was unmapped.
    pub parked: u64,
    /// Worker failures (restarted by the daemon).
    pub failures: u64,
    /// The queue is broken for good.
    pub broken: bool,
}

/// The `stats` answer of the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    /// Device name.
    pub name: String,
    /// Why vdpa-blk refused the driver's last DRIVER_OK, until one succeeds (a VMM whose guest
    /// memory is private, say: its disk never works); null when it did not.
    // Required in vdpa-blk's answer, so a vdpa-blk that stopped saying it is noticed.
    #[serde(deserialize_with = "present")]
    pub driver_ok_refused: Option<String>,
    /// Per-queue counters.
    pub queues: Vec<QueueStats>,
}

/// An `Option` field that must be in the JSON (null or a value): serde takes a missing
/// `Option` as `None` otherwise.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::deserialize(d)
}

/// Errors of the vdpa-blk side.
#[derive(Debug, thiserror::Error)]
pub enum VdpaError {
    /// The binary could not be started at all.
    #[error("vdpa-blk {name}: cannot run {binary}: {source}")]
    Spawn {
        /// Device name.
        name: String,
        /// The binary.
        binary: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// A file of the process (stdout, stderr, /proc) could not be used.
    #[error("vdpa-blk {name}: {op} {path}: {source}")]
    File {
        /// Device name (or pid).
        name: String,
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The process exited before printing its ready line.
    #[error(
        "vdpa-blk {name} exited before it was ready ({status}); its log ends with:\n{stderr_tail}"
    )]
    Exited {
        /// Device name.
        name: String,
        /// How it exited.
        status: String,
        /// The end of what it wrote to stderr during this start.
        stderr_tail: String,
    },
    /// No ready line within the timeout; the process was stopped.
    #[error("vdpa-blk {name} printed no ready line within {timeout:?} and was stopped ({stopped:?}); its log ends with:\n{stderr_tail}")]
    NotReady {
        /// Device name.
        name: String,
        /// The wait.
        timeout: Duration,
        /// How the stop went.
        stopped: Stopped,
        /// The end of what it wrote to stderr during this start.
        stderr_tail: String,
    },
    /// The ready line is not what vdpa-blk prints.
    #[error("vdpa-blk {name}: malformed ready line {line:?}: {reason}")]
    BadReady {
        /// Device name.
        name: String,
        /// The line.
        line: String,
        /// Why.
        reason: String,
    },
    /// Sending a signal failed for another reason than the process being gone.
    #[error("vdpa-blk pid {pid}: {op}: {source}")]
    Signal {
        /// Process id.
        pid: u32,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The process survived SIGKILL for longer than we wait (stuck in the kernel).
    #[error("vdpa-blk pid {pid} is still there {waited:?} after SIGKILL (stuck in the kernel?)")]
    Unkillable {
        /// Process id.
        pid: u32,
        /// How long we waited.
        waited: Duration,
    },
    /// The control socket could not be asked.
    #[error("vdpa-blk control socket {path}: {op}: {source}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The control socket answered something we cannot use.
    #[error("vdpa-blk control socket {path}: {reason}")]
    ControlAnswer {
        /// The socket.
        path: PathBuf,
        /// What was wrong (an `error` field of the answer, or why it did not parse).
        reason: String,
    },
}

/// Starting, finding and stopping vdpa-blk processes. `Send + Sync` so that the daemon's API
/// and its supervision loop can share one.
pub trait Launcher: Send + Sync {
    /// Starts a detached process for `spec` and waits for its ready line.
    fn start(&self, spec: &LaunchSpec) -> Result<Running, VdpaError>;
    /// Starts a process for `spec` in place of one that died: it takes over the VDUSE device
    /// the dead one left (`vdpa-blk --reconnect`: what was in flight is submitted again and
    /// the guest's disk stays where it is), or creates the device when there is none (the
    /// node rebooted since).
    fn restart(&self, spec: &LaunchSpec) -> Result<Running, VdpaError>;
    /// Whether the process with this pid and start time still runs (a zombie does not).
    fn alive(&self, pid: u32, start_time: u64) -> bool;
    /// SIGTERM, up to `timeout` for it to exit, then SIGKILL. Never signals a recycled pid.
    /// vdpa-blk does not exit on SIGTERM while a VMM holds its `/dev/vhost-vdpa-N` (removal
    /// would hang in the kernel), so check [`crate::holders`] first: a kill leaves the VDUSE
    /// device behind ([`Stopped::Killed`]).
    fn stop(&self, process: &ProcessRecord, timeout: Duration) -> Result<Stopped, VdpaError>;
    /// Asks the control socket for per-queue counters.
    fn stats(&self, control_socket: &Path) -> Result<Stats, VdpaError>;
    /// After an agent restart: `Some(Running)` when the recorded process still runs (its ready
    /// line read again from its stdout file), `None` when it is gone. An error means it runs
    /// but its ready line cannot be read; it can still be stopped by its record.
    fn adopt(&self, process: &ProcessRecord) -> Result<Option<Running>, VdpaError>;
}

/// The real launcher over the `vdpa-blk` binary.
#[derive(Debug)]
pub struct BinaryLauncher {
    binary: PathBuf,
    ready_timeout: Duration,
    control_timeout: Duration,
    proc_root: PathBuf,
    /// Where `vduse/NAME` is looked for (`/dev`).
    dev_root: PathBuf,
    /// Processes this launcher spawned, so their exit is reaped (no zombies). A process from
    /// before an agent restart is not our child: init reaps it, and we watch /proc.
    children: Mutex<HashMap<u32, Child>>,
}

impl BinaryLauncher {
    /// A launcher running `binary`, waiting up to `ready_timeout` for the ready line. Stats
    /// requests wait up to 2 s; `/proc` is the real one.
    pub fn new(binary: impl Into<PathBuf>, ready_timeout: Duration) -> Self {
        BinaryLauncher {
            binary: binary.into(),
            ready_timeout,
            control_timeout: Duration::from_secs(2),
            proc_root: PathBuf::from("/proc"),
            dev_root: PathBuf::from("/dev"),
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Looks for VDUSE device nodes under `dev_root` instead of `/dev` (tests).
    pub fn with_dev_root(mut self, dev_root: impl Into<PathBuf>) -> Self {
        self.dev_root = dev_root.into();
        self
    }

    /// Sets how long a control socket request may take.
    pub fn with_control_timeout(mut self, timeout: Duration) -> Self {
        self.control_timeout = timeout;
        self
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Child>> {
        // A panic while holding the lock leaves the map usable: it is only a reaping list.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps `pid` if it is our child and has exited; returns its status then.
    fn reap(&self, pid: u32) -> Option<ExitStatus> {
        let mut children = self.children();
        let child = children.get_mut(&pid)?;
        match child.try_wait() {
            Ok(Some(status)) => {
                children.remove(&pid);
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                // ECHILD: someone else reaped it; it is gone either way.
                tracing::debug!(pid, "try_wait: {e}");
                children.remove(&pid);
                None
            }
        }
    }

    fn wait_gone(&self, pid: u32, start_time: u64, deadline: Instant) -> bool {
        loop {
            self.reap(pid);
            if !self.alive(pid, start_time) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl BinaryLauncher {
    /// Spawns vdpa-blk for `spec` (taking over its existing device with `reconnect`) and
    /// waits for its ready line.
    fn launch(&self, spec: &LaunchSpec, reconnect: bool) -> Result<Running, VdpaError> {
        let name = &spec.name;
        let file_err = |op, path: &Path| {
            let (name, path) = (name.clone(), path.to_path_buf());
            move |source| VdpaError::File {
                name,
                op,
                path,
                source,
            }
        };
        let stdout = File::create(&spec.stdout).map_err(file_err("create", &spec.stdout))?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.stderr)
            .map_err(file_err("open", &spec.stderr))?;
        // The tail reported on failure starts at what this start writes.
        let stderr_from = stderr
            .metadata()
            .map_err(file_err("stat", &spec.stderr))?
            .len();
        let mut cmd = Command::new(&self.binary);
        cmd.args(spec.args());
        if reconnect {
            cmd.arg("--reconnect");
        }
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: the closure runs in the forked child before exec; it only calls setsid(2),
        // which is async-signal-safe, and allocates nothing. The child was just forked, so
        // it is not a process group leader and setsid cannot fail with EPERM in practice; any
        // error is still returned and fails the spawn.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| VdpaError::Spawn {
            name: name.clone(),
            binary: self.binary.clone(),
            source,
        })?;
        let pid = child.id();
        self.children().insert(pid, child);
        // Read right away: the process cannot have exited and been reaped yet (only we reap
        // it), so the pid is still its own.
        let start_time = match proc_start_time(&self.proc_root, pid) {
            Ok(t) => t,
            Err(source) => {
                let _ = self.kill_child(pid);
                return Err(VdpaError::File {
                    name: name.clone(),
                    op: "read",
                    path: self.proc_root.join(pid.to_string()).join("stat"),
                    source,
                });
            }
        };
        let process = ProcessRecord {
            pid,
            start_time,
            control_socket: spec.control_socket.clone(),
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
        };
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            match read_ready(&spec.stdout, name) {
                Ok(Some(ready)) => {
                    if ready.pid != pid {
                        let _ = self.stop(&process, self.ready_timeout);
                        return Err(VdpaError::BadReady {
                            name: name.clone(),
                            line: format!("pid {}", ready.pid),
                            reason: format!("the process we started is pid {pid}"),
                        });
                    }
                    return Ok(Running { process, ready });
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = self.stop(&process, self.ready_timeout);
                    return Err(e);
                }
            }
            if let Some(status) = self.reap(pid) {
                // It may have printed the line just before exiting: a ready line from a
                // process that is gone is still a failure.
                return Err(VdpaError::Exited {
                    name: name.clone(),
                    status: status.to_string(),
                    stderr_tail: tail(&spec.stderr, stderr_from),
                });
            }
            if Instant::now() >= deadline {
                let stopped = self.stop(&process, self.ready_timeout)?;
                return Err(VdpaError::NotReady {
                    name: name.clone(),
                    timeout: self.ready_timeout,
                    stopped,
                    stderr_tail: tail(&spec.stderr, stderr_from),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Launcher for BinaryLauncher {
    fn start(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
        self.launch(spec, false)
    }

    fn restart(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
        let node = self.dev_root.join("vduse").join(&spec.name);
        let reconnect = node.exists();
        if !reconnect {
            tracing::info!(
                name = %spec.name,
                "{} does not exist (the node rebooted?): creating the device again",
                node.display()
            );
        }
        self.launch(spec, reconnect)
    }

    fn alive(&self, pid: u32, start_time: u64) -> bool {
        self.reap(pid);
        match proc_stat(&self.proc_root, pid) {
            Ok(stat) => stat.start_time == start_time && !matches!(stat.state, 'Z' | 'X' | 'x'),
            Err(_) => false,
        }
    }

    fn stop(&self, process: &ProcessRecord, timeout: Duration) -> Result<Stopped, VdpaError> {
        let (pid, start_time) = (process.pid, process.start_time);
        let Some(target) = Target::open(self, pid, start_time)? else {
            return Ok(Stopped::NotRunning);
        };
        if !target.signal(libc::SIGTERM)? {
            self.reap(pid);
            return Ok(Stopped::NotRunning);
        }
        if self.wait_gone(pid, start_time, Instant::now() + timeout) {
            return Ok(Stopped::Exited);
        }
        tracing::warn!(
            pid,
            "vdpa-blk did not exit within {timeout:?} of SIGTERM; killing it"
        );
        target.signal(libc::SIGKILL)?;
        if self.wait_gone(pid, start_time, Instant::now() + KILL_WAIT) {
            Ok(Stopped::Killed)
        } else {
            Err(VdpaError::Unkillable {
                pid,
                waited: KILL_WAIT,
            })
        }
    }

    fn stats(&self, control_socket: &Path) -> Result<Stats, VdpaError> {
        let answer = ask(control_socket, "stats", self.control_timeout)?;
        parse_stats(control_socket, &answer)
    }

    fn adopt(&self, process: &ProcessRecord) -> Result<Option<Running>, VdpaError> {
        if !self.alive(process.pid, process.start_time) {
            return Ok(None);
        }
        let name = format!("pid {}", process.pid);
        match read_ready(&process.stdout, &name)? {
            Some(ready) if ready.pid == process.pid => Ok(Some(Running {
                process: process.clone(),
                ready,
            })),
            Some(ready) => Err(VdpaError::BadReady {
                name,
                line: format!("pid {}", ready.pid),
                reason: format!("{} belongs to another process", process.stdout.display()),
            }),
            None => Err(VdpaError::BadReady {
                name,
                line: String::new(),
                reason: format!("no ready line in {}", process.stdout.display()),
            }),
        }
    }
}

impl BinaryLauncher {
    /// Kills a child that never became a [`ProcessRecord`] and reaps it.
    fn kill_child(&self, pid: u32) -> io::Result<()> {
        let mut children = self.children();
        if let Some(mut child) = children.remove(&pid) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// A process to signal, pinned by a pidfd when the kernel has them (5.3+), so that the signal
/// cannot reach a process that took over the pid after the identity check.
struct Target {
    pid: u32,
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Target {
    /// `None` when the pid is not (or no longer) the recorded process.
    fn open(l: &BinaryLauncher, pid: u32, start_time: u64) -> Result<Option<Target>, VdpaError> {
        let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
            return Ok(None);
        };
        if raw_pid <= 0 {
            return Ok(None);
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        let pidfd = if fd >= 0 {
            let fd = i32::try_from(fd).expect("a file descriptor fits in an i32");
            // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
            Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        } else {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => return Ok(None),
                // No pidfds here (old kernel, seccomp): fall back to kill(2) after the check.
                Some(libc::ENOSYS) | Some(libc::EPERM) => None,
                _ => {
                    return Err(VdpaError::Signal {
                        pid,
                        op: "pidfd_open",
                        source: io::Error::last_os_error(),
                    })
                }
            }
        };
        // Checked after the pidfd exists: the pidfd now names this very process.
        if !l.alive(pid, start_time) {
            return Ok(None);
        }
        Ok(Some(Target { pid, pidfd }))
    }

    /// Sends `sig`; `false` when the process is already gone.
    fn signal(&self, sig: libc::c_int) -> Result<bool, VdpaError> {
        use std::os::fd::AsRawFd;
        let r = match &self.pidfd {
            // SAFETY: the pidfd is open for the duration of the call; a null siginfo means
            // "as kill(2) would send it"; flags 0.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            None => {
                let pid = libc::pid_t::try_from(self.pid).expect("checked in Target::open");
                // SAFETY: kill takes plain integers.
                libc::c_long::from(unsafe { libc::kill(pid, sig) })
            }
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        Err(VdpaError::Signal {
            pid: self.pid,
            op: if sig == libc::SIGKILL {
                "SIGKILL"
            } else {
                "SIGTERM"
            },
            source: e,
        })
    }
}

/// What `/proc/PID/stat` says that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3.
    state: char,
    /// Field 22: start time in clock ticks since boot.
    start_time: u64,
}

fn proc_stat(proc_root: &Path, pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// The start time (field 22 of `/proc/PID/stat`) of a process.
pub fn proc_start_time(proc_root: &Path, pid: u32) -> io::Result<u64> {
    proc_stat(proc_root, pid).map(|s| s.start_time)
}

/// Parses `pid (comm) state ... starttime ...`. The command name may hold spaces and
/// parentheses, so fields are counted after the last `)`: field 3 is the first one there.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 are skipped; the next one is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// The first complete `{"event":"ready",...}` line of a stdout file, if there is one yet.
fn read_ready(stdout: &Path, name: &str) -> Result<Option<Ready>, VdpaError> {
    let mut text = String::new();
    File::open(stdout)
        .and_then(|f| f.take(MAX_READ).read_to_string(&mut text))
        .map_err(|source| VdpaError::File {
            name: name.to_string(),
            op: "read",
            path: stdout.to_path_buf(),
            source,
        })?;
    // Only whole lines: the last one may still be being written.
    let Some(end) = text.rfind('\n') else {
        return Ok(None);
    };
    for line in text[..end].lines() {
        let bad = |reason: String| VdpaError::BadReady {
            name: name.to_string(),
            line: line.to_string(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v.get("event").and_then(|e| e.as_str()) == Some("ready") {
            return serde_json::from_value(v)
                .map(Some)
                .map_err(|e| bad(e.to_string()));
        }
    }
    Ok(None)
}

/// The last [`STDERR_TAIL`] bytes written to `path` from offset `from`, cut at a line start.
fn tail(path: &Path, from: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(STDERR_TAIL as u64));
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(STDERR_TAIL as u64).read_to_end(&mut buf)?;
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        if start > from {
            if let Some(nl) = text.find('\n') {
                text.drain(..=nl);
            }
        }
        Ok(text.trim_end().to_string())
    };
    match read() {
        Ok(t) if t.is_empty() => "(nothing on stderr)".to_string(),
        Ok(t) => t,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Sends one command line to a control socket and returns the answer line.
fn ask(path: &Path, command: &str, timeout: Duration) -> Result<String, VdpaError> {
    let io_err = |op| {
        let path = path.to_path_buf();
        move |source| VdpaError::Control { path, op, source }
    };
    let mut s = UnixStream::connect(path).map_err(io_err("connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err("set timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_err("set timeout"))?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(io_err("send"))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(io_err("shutdown"))?;
    let mut answer = String::new();
    s.take(MAX_READ)
        .read_to_string(&mut answer)
        .map_err(io_err("read the answer"))?;
    Ok(answer)
}

fn parse_stats(path: &Path, answer: &str) -> Result<Stats, VdpaError> {
    let bad = |reason: String| VdpaError::ControlAnswer {
        path: path.to_path_buf(),
        reason,
    };
    let line = answer.lines().next().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e}): {line:?}")))?;
    if let Some(err) = v.get("error") {
        return Err(bad(format!("vdpa-blk answered an error: {err}")));
    }
    if v.get("event").and_then(|e| e.as_str()) != Some("stats") {
        return Err(bad(format!("not a stats line: {line:?}")));
    }
    serde_json::from_value(v).map_err(|e| bad(format!("stats line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    /// A fake vdpa-blk: prints a ready line like the real one (with its own pid) unless told
    /// otherwise through `FAKE_MODE` in the script itself, then waits for SIGTERM.
    fn fake_binary(dir: &Path, mode: &str) -> PathBuf {
        let path = dir.join(format!("fake-vdpa-blk-{mode}"));
        let script = format!(
            r#"#!/bin/sh
# Arguments as vdpa-blk takes them; only a few are used.
echo "fake vdpa-blk args: $*" >&2
name=x; driver=vhost-vdpa
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --driver) driver=$2; shift ;;
  esac
  shift
done
mode={mode}
echo "fake vdpa-blk $name starting" >&2
case $mode in
  crash) echo "backing /dev/nvme9n1: No such file or directory" >&2; exit 3 ;;
  silent) ;;
  stubborn) trap '' TERM ;;
  garbage) echo 'this is not json' ;;
esac
if [ $mode != silent ]; then
  if [ $driver = vhost-vdpa ]; then dev=/dev/vhost-vdpa-0; copy=zero-copy; else dev=/dev/vdb; copy=bounce; fi
  echo '{{"event":"stats","name":"'$name'","queues":[]}}'
  echo '{{"event":"ready","name":"'$name'","vdpa":"'$name'","driver":"'$driver'","path":"'$dev'","vduse":"/dev/vduse/'$name'","backing":"/dev/nvme1n1","capacity_sectors":2097152,"queues":2,"queue_size":256,"read_only":false,"copy_mode":"'$copy'","bounce_size":null,"poll_us":0,"features":1,"pid":'$$',"future_field":7}}'
fi
# Sleep in short steps so a trapped SIGTERM does not wait for a long sleep to end.
while :; do sleep 0.05; done
"#
        );
        std::fs::write(&path, script).expect("write fake");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn spec(dir: &Path, mode: Mode) -> LaunchSpec {
        LaunchSpec {
            name: "vol1".into(),
            backing: "/dev/nvme1n1".into(),
            mode,
            queues: 2,
            queue_size: 256,
            read_only: false,
            poll_us: 0,
            control_socket: dir.join("vol1.sock"),
            stdout: dir.join("vol1.out"),
            stderr: dir.join("vol1.log"),
        }
    }

    fn launcher(bin: PathBuf) -> BinaryLauncher {
        BinaryLauncher::new(bin, Duration::from_secs(10))
    }

    /// Kills and reaps a process the test started, whoever holds its `Child`.
    fn cleanup(pid: u32) {
        let pid = libc::pid_t::try_from(pid).expect("pid");
        // SAFETY: plain integers; the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }

    #[test]
    fn a_restart_takes_over_the_device_left_behind_and_creates_one_when_there_is_none() {
        let d = tempfile::tempdir().expect("tempdir");
        let dev = d.path().join("dev");
        let l = launcher(fake_binary(d.path(), "ok")).with_dev_root(&dev);
        let s = spec(d.path(), Mode::VirtioVdpa);
        let args_of = |r: &Running| {
            let log = std::fs::read_to_string(&s.stderr).expect("stderr");
            let line = log
                .lines()
                .rev()
                .find(|l| l.starts_with("fake vdpa-blk args:"))
                .map(str::to_string);
            cleanup(r.process.pid);
            line.expect("the fake printed its arguments")
        };
        // No /dev/vduse/vol1 (the node rebooted): created again.
        let r = l.restart(&s).expect("restart");
        let args = args_of(&r);
        assert!(!args.contains("--reconnect"), "{args}");
        // The dead process's device is there: taken over.
        std::fs::create_dir_all(dev.join("vduse")).expect("mkdir");
        std::fs::write(dev.join("vduse/vol1"), b"").expect("node");
        let r = l.restart(&s).expect("restart");
        let args = args_of(&r);
        assert!(
            args.contains("--name vol1") && args.ends_with("--reconnect"),
            "{args}"
        );
        // A first start never reconnects.
        let r = l.start(&s).expect("start");
        let args = args_of(&r);
        assert!(!args.contains("--reconnect"), "{args}");
    }

    #[test]
    fn start_reads_the_ready_line_and_stop_terminates() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "ok"));
        let r = l.start(&spec(d.path(), Mode::VhostVdpa)).expect("start");
        assert_eq!(r.ready.path, PathBuf::from("/dev/vhost-vdpa-0"));
        assert_eq!(r.ready.copy_mode, CopyMode::ZeroCopy);
        assert_eq!(r.ready.driver, Mode::VhostVdpa);
        assert_eq!(r.ready.capacity_sectors, 2097152);
        assert_eq!(r.ready.pid, r.process.pid);
        assert!(l.alive(r.process.pid, r.process.start_time));
        assert_eq!(
            l.stop(&r.process, Duration::from_secs(10)).expect("stop"),
            Stopped::Exited
        );
        assert!(!l.alive(r.process.pid, r.process.start_time));
        // Reaped: no zombie left behind.
        assert!(!Path::new(&format!("/proc/{}", r.process.pid)).exists());
        assert_eq!(
            l.stop(&r.process, Duration::from_secs(1)).expect("again"),
            Stopped::NotRunning
        );
    }

    #[test]
    fn virtio_vdpa_reports_the_block_device_and_the_bounce_copy() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "ok"));
        let r = l.start(&spec(d.path(), Mode::VirtioVdpa)).expect("start");
        assert_eq!(r.ready.path, PathBuf::from("/dev/vdb"));
        assert_eq!(r.ready.copy_mode, CopyMode::Bounce);
        l.stop(&r.process, Duration::from_secs(10)).expect("stop");
    }

    #[test]
    fn the_process_outlives_its_launcher_in_its_own_session() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = {
            let l = launcher(fake_binary(d.path(), "ok"));
            l.start(&spec(d.path(), Mode::VhostVdpa)).expect("start")
        };
        let other = launcher(PathBuf::from("/nonexistent"));
        assert!(other.alive(r.process.pid, r.process.start_time));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.process.pid)).expect("stat");
        let after = &stat[stat.rfind(')').expect(")") + 1..];
        let fields: Vec<&str> = after.split_ascii_whitespace().collect();
        // Fields 6 (session) and 1 (pid): a session leader.
        assert_eq!(
            fields[6 - 3],
            r.process.pid.to_string(),
            "not its own session"
        );
        // stdin is /dev/null and stdout a file, not a pipe.
        let fd0 = std::fs::read_link(format!("/proc/{}/fd/0", r.process.pid)).expect("fd0");
        assert_eq!(fd0, PathBuf::from("/dev/null"));
        let fd1 = std::fs::read_link(format!("/proc/{}/fd/1", r.process.pid)).expect("fd1");
        assert_eq!(fd1, d.path().join("vol1.out"));
        // A launcher that did not spawn it (the agent after a restart) stops it through /proc.
        assert_eq!(
            other
                .stop(&r.process, Duration::from_secs(10))
                .expect("stop"),
            Stopped::Exited
        );
        cleanup(r.process.pid);
    }

    #[test]
    fn a_crash_before_ready_reports_the_status_and_the_stderr_tail() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "crash"));
        let s = spec(d.path(), Mode::VhostVdpa);
        std::fs::write(&s.stderr, "an older run's log line\n").expect("old log");
        match l.start(&s) {
            Err(VdpaError::Exited {
                status,
                stderr_tail,
                ..
            }) => {
                assert!(status.contains('3'), "{status}");
                assert!(
                    stderr_tail.contains("/dev/nvme9n1: No such file or directory"),
                    "{stderr_tail}"
                );
                assert!(!stderr_tail.contains("older run"), "{stderr_tail}");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[test]
    fn no_ready_line_in_time_stops_the_process_and_says_so() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = BinaryLauncher::new(fake_binary(d.path(), "silent"), Duration::from_secs(2));
        match l.start(&spec(d.path(), Mode::VhostVdpa)) {
            Err(VdpaError::NotReady {
                stopped,
                stderr_tail,
                ..
            }) => {
                assert_eq!(stopped, Stopped::Exited);
                assert!(stderr_tail.contains("starting"), "{stderr_tail}");
            }
            other => panic!("expected NotReady, got {other:?}"),
        }
        assert!(l.children().is_empty(), "the child was not reaped");
    }

    #[test]
    fn garbage_on_stdout_is_a_malformed_ready_line() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "garbage"));
        match l.start(&spec(d.path(), Mode::VhostVdpa)) {
            Err(VdpaError::BadReady { line, .. }) => assert_eq!(line, "this is not json"),
            other => panic!("expected BadReady, got {other:?}"),
        }
        assert!(l.children().is_empty(), "the child was left running");
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "stubborn"));
        let r = l.start(&spec(d.path(), Mode::VhostVdpa)).expect("start");
        assert_eq!(
            l.stop(&r.process, Duration::from_millis(200))
                .expect("stop"),
            Stopped::Killed
        );
        assert!(!l.alive(r.process.pid, r.process.start_time));
    }

    #[test]
    fn a_recycled_pid_is_not_alive_and_not_signalled() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = launcher(fake_binary(d.path(), "ok"));
        let r = l.start(&spec(d.path(), Mode::VhostVdpa)).expect("start");
        // The same pid with another start time is another process.
        let mut impostor = r.process.clone();
        impostor.start_time += 1;
        assert!(!l.alive(impostor.pid, impostor.start_time));
        assert_eq!(l.adopt(&impostor).expect("adopt"), None);
        assert_eq!(
            l.stop(&impostor, Duration::from_secs(1)).expect("stop"),
            Stopped::NotRunning
        );
        assert!(l.alive(r.process.pid, r.process.start_time), "signalled");
        l.stop(&r.process, Duration::from_secs(10)).expect("stop");
    }

    #[test]
    fn adoption_rebuilds_running_from_the_record() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = launcher(fake_binary(d.path(), "ok"))
            .start(&spec(d.path(), Mode::VhostVdpa))
            .expect("start");
        let record: ProcessRecord =
            serde_json::from_str(&serde_json::to_string(&r.process).expect("encode"))
                .expect("decode");
        let after_restart = launcher(PathBuf::from("/nonexistent"));
        assert_eq!(
            after_restart.adopt(&record).expect("adopt"),
            Some(r.clone())
        );
        after_restart
            .stop(&record, Duration::from_secs(10))
            .expect("stop");
        cleanup(r.process.pid);
        assert_eq!(after_restart.adopt(&record).expect("adopt dead"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        let own = proc_start_time(Path::new("/proc"), std::process::id()).expect("own");
        assert!(own > 0);
    }

    fn serve_once(path: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut cmd = String::new();
            s.read_to_string(&mut cmd).expect("read");
            s.write_all(answer.as_bytes()).expect("write");
            cmd
        })
    }

    /// A counter missing from the answer is an error, never a zero (vdpa-blk writes them all).
    #[test]
    fn a_stats_answer_missing_a_counter_is_an_error_not_a_zero() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let server = serve_once(
            &path,
            "{\"event\":\"stats\",\"name\":\"vol1\",\"driver_ok_refused\":null,\
             \"queues\":[{\"queue\":0,\"bytes_read\":4096}]}\n",
        );
        let l = launcher(PathBuf::from("/nonexistent"));
        assert!(l.stats(&path).is_err(), "a missing `requests` read as 0");
        server.join().expect("server");
    }

    /// A vdpa-blk that stopped saying whether it refused DRIVER_OK is noticed, not read as
    /// "no refusal".
    #[test]
    fn a_stats_answer_without_the_refusal_field_is_an_error_not_a_none() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let server = serve_once(
            &path,
            "{\"event\":\"stats\",\"name\":\"vol1\",\"queues\":[]}\n",
        );
        let l = launcher(PathBuf::from("/nonexistent"));
        let err = l.stats(&path).expect_err("no driver_ok_refused");
        assert!(err.to_string().contains("driver_ok_refused"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn stats_come_from_the_control_socket() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let server = serve_once(
            &path,
            "{\"event\":\"stats\",\"name\":\"vol1\",\"driver_ok_refused\":\"cannot start the \
             queues: private\",\"queues\":[{\"queue\":0,\"requests\":5,\
             \"bytes_read\":4096,\"bytes_written\":512,\"errors\":0,\"dropped\":0,\"in_flight\":1,\
             \"interrupts\":4,\"kicks\":3,\"polled\":0,\"copied_bytes\":0,\"parked\":0,\
             \"failures\":0,\"broken\":false,\"new_counter\":9}]}\n",
        );
        let l = launcher(PathBuf::from("/nonexistent"));
        let stats = l.stats(&path).expect("stats");
        assert_eq!(server.join().expect("server"), "stats\n");
        assert_eq!(stats.name, "vol1");
        assert_eq!(
            stats.driver_ok_refused.as_deref(),
            Some("cannot start the queues: private")
        );
        assert_eq!(
            stats.queues,
            vec![QueueStats {
                queue: 0,
                requests: 5,
                bytes_read: 4096,
                bytes_written: 512,
                in_flight: 1,
                interrupts: 4,
                kicks: 3,
                ..QueueStats::default()
            }]
        );
    }

    #[test]
    fn a_control_socket_error_answer_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let server = serve_once(&path, "{\"error\":\"unknown command\"}\n");
        let l = launcher(PathBuf::from("/nonexistent"));
        match l.stats(&path) {
            Err(VdpaError::ControlAnswer { reason, .. }) => {
                assert!(reason.contains("unknown command"), "{reason}")
            }
            other => panic!("expected ControlAnswer, got {other:?}"),
        }
        server.join().expect("server");
        match l.stats(&d.path().join("absent.sock")) {
            Err(VdpaError::Control { op: "connect", .. }) => {}
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn a_silent_control_socket_times_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        // Accepted by the kernel's backlog, never answered.
        let _listener = UnixListener::bind(&path).expect("bind");
        let l = launcher(PathBuf::from("/nonexistent"))
            .with_control_timeout(Duration::from_millis(100));
        match l.stats(&path) {
            Err(VdpaError::Control {
                op: "read the answer",
                ..
            }) => {}
            other => panic!("expected a read timeout, got {other:?}"),
        }
    }

    #[test]
    fn spec_becomes_vdpa_blk_arguments() {
        let d = Path::new("/run/nvmf-initiator");
        let mut s = spec(d, Mode::VirtioVdpa);
        s.read_only = true;
        let args: Vec<String> = s
            .args()
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            args.join(" "),
            "--name vol1 --backing /dev/nvme1n1 --driver virtio-vdpa --queues 2 --queue-size 256 \
             --poll-us 0 --control-socket /run/nvmf-initiator/vol1.sock --read-only"
        );
    }
}
