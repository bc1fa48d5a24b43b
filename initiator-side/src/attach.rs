//! The attachment service: one call turns a remote subsystem's namespace into a vdpa-blk
//! device, one call undoes it, and a reconcile at start converges records and kernel after a
//! crash. No HTTP here: the API maps [`AttachError::kind`] to a status and returns the
//! [`AttachmentView`]s as they are (they are `Serialize`).
//!
//! Attach ([`Attachments::attach`]), in this order, each change recorded before the next
//! kernel step:
//! 1. the request is checked whole ([`AttachRequest::check`]: NQN, addresses, queues, NGUID,
//!    DH-HMAC-CHAP secrets in their `DHHC-1` form with their CRC) and the same subsystem
//!    already attached answers with that attachment when the spec is the same
//!    (`created = false`), else [`ErrorKind::Conflict`] (one attachment per subsystem);
//! 2. the record (state `attaching`, the checked spec as JSON);
//! 3. each path: a controller already connected to the subsystem at that address is reused,
//!    else one is connected; a path about to be connected is marked `connecting` first and
//!    its controller is recorded (with `made`) right after, so a kill -9 between the two
//!    still leaves the agent knowing the controller is its own;
//! 4. the namespace's block device (multipath head first), its NGUID checked when given;
//! 5. vdpa-blk: recorded without a pid first, then started with its control socket and
//!    output files under `<state_dir>/vdpa/<id>.{sock,out,log}` (a process whose pid never
//!    reached the store is found again by who has that stdout file open), then recorded
//!    with its pid and device; state `ready`.
//!
//! A failing step undoes what this call made, newest first (vdpa-blk stopped, controllers it
//! connected that nobody else uses disconnected, record forgotten); if undoing fails too the
//! record stays `attaching` and the next [`Attachments::reconcile`] finishes the job. The
//! error names the step and the cause, and its kind tells the caller's mistakes (4xx) from
//! the node's (5xx).
//!
//! Detach ([`Attachments::detach`]) is refused while the exported device (`/dev/vhost-vdpa-N`
//! or `/dev/vdX`) is open, mounted, stacked on or swapped to (unless forced), then marks the
//! record `detaching`, stops vdpa-blk, disconnects the controllers the agent made that no
//! other attachment uses (also one a crash left `connecting`), and forgets the record last;
//! a failure leaves it `detaching` and calling again (or reconcile) finishes it.
//!
//! The paths are the request's, or what the discovery controller it names lists for the
//! subsystem (asked through a temporary discovery controller, deleted again).
//!
//! Not done here: restarting dead vdpa-blk processes
//! (that is the supervisor's: reconcile reports them in [`Reconciled::dead`] with the spec to
//! restart them with). Every call blocks the calling thread (the namespace wait, vdpa-blk's
//! ready line, a stop), and the service holds `&mut Store`: calls are serialised.
//!
//! Status: complete for attach, detach, list/get with live health and reconcile; unit-tested
//! against the fake kernel of [`crate::paths`], a fake launcher and fake `/proc` trees.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fabric::host::HostIdentity;
use fabric::nqn::Nqn;
use fabric::root::SysRoot;
use fabric::sysfs::NvmeSysfs;
use fabric::transport::{TransportAddress, TransportType, DEFAULT_TRSVCID};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::holders;
use crate::namespace::{self, NamespaceDevice, NamespaceError, NamespaceWant};
use crate::paths::{self, Fabrics, Observed, PathError, PathFailure, PathOptions};
use crate::snippets::{self, SnippetOptions, Snippets};
use crate::store::{
    Attachment as Record, AttachmentState, ControllerRecord, Store, StoreError, VdpaRecord,
};
use crate::vdpa::{
    self, CopyMode, LaunchSpec, Launcher, Mode, ProcessRecord, Running, Stats, Stopped,
};

/// Most request queues accepted (one io_uring worker each in vdpa-blk).
pub const MAX_QUEUES: u16 = 64;
/// Largest virtqueue size accepted (the virtio maximum).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most paths of one attachment.
pub const MAX_PATHS: usize = 8;
/// Default wait for the namespace's block device after the connects.
pub const DEFAULT_NAMESPACE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait for vdpa-blk to exit after SIGTERM before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the vdpa/VDUSE device names the agent makes (`nvmf-<id>`, 17 characters, far
/// below vdpa-blk's 63).
pub const VDPA_PREFIX: &str = "nvmf-";

/// One path as the request gives it (the fields nvme-cli names `-t`, `-a`, `-s`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRequest {
    /// `rdma`, `tcp` or `loop`.
    pub trtype: String,
    /// The target's IP address (none for `loop`).
    #[serde(default)]
    pub traddr: Option<String>,
    /// The port; 4420 when absent.
    #[serde(default)]
    pub trsvcid: Option<u16>,
}

/// An attach request, as the API receives it.
#[derive(Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The subsystem NQN.
    pub nqn: String,
    /// Its paths; more than one is native NVMe multipath (all to this subsystem). Empty when
    /// `discovery` is given.
    #[serde(default)]
    pub paths: Vec<PathRequest>,
    /// A discovery controller to ask for the paths instead (every address it lists for this
    /// subsystem becomes a path).
    #[serde(default)]
    pub discovery: Option<PathRequest>,
    /// `vhost-vdpa` (for a VMM) or `virtio-vdpa` (a block device on this host).
    pub mode: Mode,
    /// Request queues; the configured default when absent.
    #[serde(default)]
    pub queues: Option<u16>,
    /// Virtqueue size; the configured default when absent.
    #[serde(default)]
    pub queue_size: Option<u16>,
    /// Export read-only.
    #[serde(default)]
    pub read_only: bool,
    /// The namespace; the subsystem's only one when absent.
    #[serde(default)]
    pub nsid: Option<u32>,
    /// The NGUID the namespace must have (dashed or not), checked when given.
    #[serde(default)]
    pub nguid: Option<String>,
    /// DH-HMAC-CHAP host secret (`DHHC-1:NN:BASE64:`).
    #[serde(default)]
    pub dhchap_secret: Option<String>,
    /// DH-HMAC-CHAP controller secret, for bidirectional authentication.
    #[serde(default)]
    pub dhchap_ctrl_secret: Option<String>,
}

impl fmt::Debug for AttachRequest {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("AttachRequest")
            .field("nqn", &self.nqn)
            .field("paths", &self.paths)
            .field("discovery", &self.discovery)
            .field("mode", &self.mode)
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .field("read_only", &self.read_only)
            .field("nsid", &self.nsid)
            .field("nguid", &self.nguid)
            .field("dhchap_secret", &redact(&self.dhchap_secret))
            .field("dhchap_ctrl_secret", &redact(&self.dhchap_ctrl_secret))
            .finish()
    }
}

/// A checked request with the defaults filled in: what the store keeps as the attachment's
/// spec, and what "the same spec" means for a repeated attach.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSpec {
    /// The subsystem.
    pub nqn: Nqn,
    /// Its paths, sorted.
    pub paths: Vec<TransportAddress>,
    /// The vdpa bus driver.
    pub mode: Mode,
    /// Request queues.
    pub queues: u16,
    /// Virtqueue size.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// The namespace, if named.
    pub nsid: Option<u32>,
    /// The NGUID, normalised (32 lower-case hex digits), if given.
    pub nguid: Option<String>,
    /// DH-HMAC-CHAP host secret.
    pub dhchap_secret: Option<String>,
    /// DH-HMAC-CHAP controller secret.
    pub dhchap_ctrl_secret: Option<String>,
}

impl fmt::Debug for AttachSpec {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachSpec")
            .field("nqn", &self.nqn)
            .field("paths", &self.paths)
            .field("mode", &self.mode)
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .field("read_only", &self.read_only)
            .field("nsid", &self.nsid)
            .field("nguid", &self.nguid)
            .field("authentication", &self.authentication())
            .finish()
    }
}

impl AttachSpec {
    /// `none`, `host` (the target checks the host) or `bidirectional`.
    pub fn authentication(&self) -> &'static str {
        match (&self.dhchap_secret, &self.dhchap_ctrl_secret) {
            (None, _) => "none",
            (Some(_), None) => "host",
            (Some(_), Some(_)) => "bidirectional",
        }
    }
}

impl AttachRequest {
    /// Checks the request and fills in the configured defaults (queues, queue size).
    pub fn check(&self, config: &Config) -> Result<AttachSpec, AttachError> {
        let bad = |reason: String| AttachError::new(ErrorKind::Invalid, Step::Validate, reason);
        let nqn = Nqn::new(self.nqn.trim()).map_err(|e| bad(format!("nqn: {e}")))?;
        if nqn.is_discovery() {
            return Err(bad(format!(
                "nqn: {nqn} is the discovery subsystem, which has no namespaces"
            )));
        }
        if self.paths.is_empty() {
            return Err(bad("paths: at least one path is needed".into()));
        }
        if self.paths.len() > MAX_PATHS {
            return Err(bad(format!(
                "paths: {} given, at most {MAX_PATHS}",
                self.paths.len()
            )));
        }
        let mut paths = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            let a = path_address(p).map_err(|e| bad(format!("paths[{i}]: {e}")))?;
            if paths.contains(&a) {
                return Err(bad(format!("paths[{i}]: {a} is given twice")));
            }
            paths.push(a);
        }
        paths.sort_by_key(|a| a.to_string());
        let queues = self.queues.unwrap_or(config.vdpa_blk.queues);
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(bad(format!("queues: {queues}: expected 1 to {MAX_QUEUES}")));
        }
        let queue_size = self.queue_size.unwrap_or(config.vdpa_blk.queue_size);
        if queue_size < 2 || !queue_size.is_power_of_two() || queue_size > MAX_QUEUE_SIZE {
            return Err(bad(format!(
                "queue_size: {queue_size}: expected a power of two from 2 to {MAX_QUEUE_SIZE}"
            )));
        }
        if self.nsid == Some(0) || self.nsid == Some(u32::MAX) {
            return Err(bad(format!(
                "nsid: {}: not a namespace ID (1 to 4294967294)",
                self.nsid.unwrap_or_default()
            )));
        }
        let nguid = self
            .nguid
            .as_deref()
            .map(|g| {
                namespace::normalize_nguid(g).ok_or_else(|| {
                    bad(format!(
                        "nguid: {g:?} is not 32 hexadecimal digits (dashes allowed)"
                    ))
                })
            })
            .transpose()?;
        let secret = |field: &str, s: &Option<String>| {
            s.as_deref()
                .map(|s| {
                    let s = s.trim();
                    check_dhchap_secret(s)
                        .map(|()| s.to_string())
                        .map_err(|why| bad(format!("{field}: {why}")))
                })
                .transpose()
        };
        let dhchap_secret = secret("dhchap_secret", &self.dhchap_secret)?;
        let dhchap_ctrl_secret = secret("dhchap_ctrl_secret", &self.dhchap_ctrl_secret)?;
        if dhchap_ctrl_secret.is_some() && dhchap_secret.is_none() {
            return Err(bad(
                "dhchap_ctrl_secret: bidirectional authentication needs dhchap_secret too".into(),
            ));
        }
        if dhchap_secret.is_some() && paths.iter().any(|a| a.trtype() == TransportType::Loop) {
            return Err(bad(
                "dhchap_secret: the loop transport does not authenticate".into(),
            ));
        }
        Ok(AttachSpec {
            nqn,
            paths,
            mode: self.mode,
            queues,
            queue_size,
            read_only: self.read_only,
            nsid: self.nsid,
            nguid,
            dhchap_secret,
            dhchap_ctrl_secret,
        })
    }
}

fn path_address(p: &PathRequest) -> Result<TransportAddress, String> {
    let trtype: TransportType = p
        .trtype
        .parse()
        .map_err(|e| format!("trtype {:?}: {e}", p.trtype))?;
    if trtype == TransportType::Loop {
        if p.traddr.is_some() || p.trsvcid.is_some() {
            return Err("the loop transport takes no traddr or trsvcid".into());
        }
        return Ok(TransportAddress::loopback());
    }
    let traddr = p
        .traddr
        .as_deref()
        .ok_or_else(|| format!("traddr: the {trtype} transport needs the target's IP address"))?;
    let ip: IpAddr = traddr
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("traddr {traddr:?} is not an IP address"))?;
    TransportAddress::ip(trtype, ip, p.trsvcid.unwrap_or(DEFAULT_TRSVCID))
        .map_err(|e| format!("{traddr}: {e}"))
}

/// Checks a DH-HMAC-CHAP secret in the text form `nvme gen-dhchap-key` prints and the kernel
/// takes: `DHHC-1:<hmac 00..03>:<base64(secret || crc32(secret))>:`, the secret 32, 48 or 64
/// bytes (the length the transformation implies), the CRC-32 matching. The reason never
/// contains the secret.
pub fn check_dhchap_secret(text: &str) -> Result<(), String> {
    fabric::dhchap::DhchapKey::parse(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What an error means for the caller: the API's status is chosen from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A malformed request (400).
    Invalid,
    /// No such attachment (404).
    NotFound,
    /// The subsystem is attached with another spec, or being attached or detached (409).
    Conflict,
    /// The device is in use; force to detach anyway (409).
    Busy,
    /// Nothing answered at a path's address (422: the caller gave it).
    Unreachable,
    /// The target refused the connect: unknown subsystem, host not allowed, or wrong
    /// DH-HMAC-CHAP secret; the kernel does not tell these apart (422).
    Refused,
    /// The subsystem's namespace is not the one asked for: another NGUID, or several
    /// namespaces and no NSID (422).
    WrongNamespace,
    /// The namespace's block device did not appear in time (504).
    Timeout,
    /// The kernel or sysfs failed, or a kernel module is missing (500).
    Kernel,
    /// vdpa-blk did not start or stop (500).
    Vdpa,
    /// The state store failed (500).
    Store,
}

impl ErrorKind {
    /// What a failed connect (of a path or of a discovery controller) means for the caller.
    fn of_connect(f: PathFailure) -> ErrorKind {
        match f {
            PathFailure::Unreachable => ErrorKind::Unreachable,
            PathFailure::Refused => ErrorKind::Refused,
            PathFailure::InvalidOptions => ErrorKind::Invalid,
            _ => ErrorKind::Kernel,
        }
    }

    /// The stable name used as the API's error kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Busy => "busy",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::WrongNamespace => "wrong_namespace",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Vdpa => "vdpa",
            ErrorKind::Store => "store",
        }
    }

    /// Whether the caller can fix it by changing the request or waiting (a 4xx), rather than
    /// the node failing (a 5xx).
    pub fn is_callers_mistake(self) -> bool {
        matches!(
            self,
            ErrorKind::Invalid
                | ErrorKind::NotFound
                | ErrorKind::Conflict
                | ErrorKind::Busy
                | ErrorKind::Unreachable
                | ErrorKind::Refused
                | ErrorKind::WrongNamespace
        )
    }
}

/// The step an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Checking the request.
    Validate,
    /// Reading or writing the records.
    Record,
    /// Asking a discovery controller for the paths.
    Discover,
    /// Connecting a path.
    Connect,
    /// Waiting for the namespace's block device.
    Namespace,
    /// Starting vdpa-blk.
    StartVdpa,
    /// Looking at who uses the device.
    CheckUse,
    /// Stopping vdpa-blk.
    StopVdpa,
    /// Disconnecting a path.
    Disconnect,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Validate => "checking the request",
            Step::Record => "recording",
            Step::Discover => "discovering the paths",
            Step::Connect => "connecting",
            Step::Namespace => "waiting for the namespace",
            Step::StartVdpa => "starting vdpa-blk",
            Step::CheckUse => "checking who uses the device",
            Step::StopVdpa => "stopping vdpa-blk",
            Step::Disconnect => "disconnecting",
        })
    }
}

/// Why an attachment call failed. An attach that failed changed nothing unless `undo` says
/// undoing failed (the record then stays `attaching` for reconcile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{step}: {reason}{}",
    attachment.as_ref().map(|a| format!("attachment {a}: ")).unwrap_or_default(),
    undo.as_ref().map(|u| format!(" (and undoing it failed: {u})")).unwrap_or_default())]
pub struct AttachError {
    /// What it means for the caller.
    pub kind: ErrorKind,
    /// Where it happened.
    pub step: Step,
    /// The attachment, once it has an id.
    pub attachment: Option<String>,
    /// The cause, naming what failed (path, device, process).
    pub reason: String,
    /// Why undoing the call's changes failed, if it did.
    pub undo: Option<String>,
}

impl AttachError {
    fn new(kind: ErrorKind, step: Step, reason: impl Into<String>) -> Self {
        AttachError {
            kind,
            step,
            attachment: None,
            reason: reason.into(),
            undo: None,
        }
    }

    fn of(mut self, id: &str) -> Self {
        self.attachment = Some(id.to_string());
        self
    }

    fn store(e: StoreError) -> Self {
        AttachError::new(ErrorKind::Store, Step::Record, e.to_string())
    }

    fn path(e: &PathError) -> Self {
        let kind = ErrorKind::of_connect(e.failure());
        let step = match e {
            PathError::Disconnect { .. } => Step::Disconnect,
            _ => Step::Connect,
        };
        AttachError::new(kind, step, e.to_string())
    }

    fn namespace(e: &NamespaceError) -> Self {
        let kind = match e {
            NamespaceError::Timeout { .. } => ErrorKind::Timeout,
            NamespaceError::InvalidNguid(_) => ErrorKind::Invalid,
            _ => ErrorKind::WrongNamespace,
        };
        AttachError::new(kind, Step::Namespace, e.to_string())
    }
}

/// A path's controller as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ControllerView {
    /// `nvmeN`.
    pub controller: String,
    /// The path's address.
    #[schema(value_type = String)]
    pub address: TransportAddress,
    /// The agent connected it (and disconnects it when the last attachment using it goes).
    pub made: bool,
    /// The kernel's state (`live`, `connecting`, ...), `gone`, `replaced` (the name is
    /// another controller's now) or `unreadable: <why>`.
    pub state: String,
}

/// The vdpa-blk process as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VdpaView {
    /// The vdpa/VDUSE device name.
    pub name: String,
    /// Its pid (none while starting).
    pub pid: Option<u32>,
    /// Whether that process runs.
    pub alive: bool,
    /// Restarts after it died.
    pub restarts: u32,
    /// Its control socket.
    #[schema(value_type = String)]
    pub control_socket: PathBuf,
    /// Per-queue counters, when the control socket answered.
    pub stats: Option<Stats>,
    /// Why there are no counters, when it did not.
    pub stats_error: Option<String>,
}

/// An attachment as the API shows it: the record, what the kernel and vdpa-blk say now, and
/// what to hand the guest. Never holds the secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AttachmentView {
    /// Its id.
    pub id: String,
    /// `attaching`, `ready` or `detaching`.
    pub state: AttachmentState,
    /// The subsystem.
    pub nqn: String,
    /// The vdpa bus driver.
    pub mode: Mode,
    /// Request queues.
    pub queues: u16,
    /// Virtqueue size.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// The namespace asked for.
    pub nsid: Option<u32>,
    /// The NGUID asked for.
    pub nguid: Option<String>,
    /// DH-HMAC-CHAP: `none`, `host` or `bidirectional`.
    pub authentication: &'static str,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Each path's controller.
    pub controllers: Vec<ControllerView>,
    /// The namespace's block device on this node, if it is there now.
    #[schema(value_type = Option<String>)]
    pub backing_device: Option<PathBuf>,
    /// vdpa-blk.
    pub vdpa: Option<VdpaView>,
    /// What to hand over: `/dev/vhost-vdpa-N` (vhost-vdpa) or `/dev/vdX` (virtio-vdpa).
    #[schema(value_type = Option<String>)]
    pub device: Option<PathBuf>,
    /// Who copies guest data: nobody through vhost-vdpa with shared guest memory; the
    /// kernel's VDUSE bounce buffer once through virtio-vdpa.
    pub copy_mode: Option<CopyMode>,
    /// QEMU and libvirt snippets (vhost-vdpa) or the block device (virtio-vdpa), once ready.
    pub snippets: Option<Snippets>,
}

/// A vdpa-blk process found running at start and taken back under supervision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The attachment.
    pub id: String,
    /// How to start it again if it dies.
    pub spec: LaunchSpec,
    /// The process.
    pub running: Running,
}

/// A `ready` attachment whose vdpa-blk was not running at start: for the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// The attachment.
    pub id: String,
    /// How to start it again; `None` when the namespace's block device is not there now.
    pub spec: Option<LaunchSpec>,
    /// What was found.
    pub reason: String,
}

/// What [`Attachments::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// `ready` attachments whose vdpa-blk still runs.
    pub adopted: Vec<Adopted>,
    /// `ready` attachments whose vdpa-blk is gone (not restarted here).
    pub dead: Vec<Dead>,
    /// Paths of `ready` attachments whose controller was gone and was connected again.
    pub reconnected: Vec<String>,
    /// Detaches a crash had interrupted, now finished.
    pub finished: Vec<String>,
    /// Attaches a crash had left half made, now undone.
    pub rolled_back: Vec<String>,
    /// vdpa-blk processes and files of the agent's that no record wants, removed.
    pub removed: Vec<String>,
    /// What could not be converged this time, with why (tried again at the next start).
    pub failed: Vec<String>,
}

/// Something an attach made, for undoing it.
#[derive(Debug)]
enum Made {
    Controller(ControllerRecord),
    Vdpa(ProcessRecord),
}

/// The files of an attachment's vdpa-blk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    socket: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The attachment service over the store, the kernel's fabrics, and the vdpa-blk launcher.
pub struct Attachments<'a, F: Fabrics + ?Sized, L: Launcher + ?Sized> {
    config: &'a Config,
    store: &'a mut Store,
    fabrics: &'a F,
    launcher: &'a L,
    host: HostIdentity,
    root: SysRoot,
    proc_root: PathBuf,
    namespace_timeout: Duration,
    stop_timeout: Duration,
    snippet_options: SnippetOptions,
}

impl<'a, F: Fabrics + ?Sized, L: Launcher + ?Sized> Attachments<'a, F, L> {
    /// The service for this node (`host`: its host NQN and ID), on the real `/sys`, `/dev`
    /// and `/proc`, with the default timeouts.
    pub fn new(
        config: &'a Config,
        store: &'a mut Store,
        fabrics: &'a F,
        launcher: &'a L,
        host: HostIdentity,
    ) -> Self {
        Attachments {
            config,
            store,
            fabrics,
            launcher,
            host,
            root: SysRoot::host(),
            proc_root: PathBuf::from("/proc"),
            namespace_timeout: DEFAULT_NAMESPACE_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            snippet_options: SnippetOptions::default(),
        }
    }

    /// Looks at sysfs under `root` (`/sys`, `/dev`) and at processes under `proc_root`.
    pub fn with_roots(mut self, root: SysRoot, proc_root: impl Into<PathBuf>) -> Self {
        self.root = root;
        self.proc_root = proc_root.into();
        self
    }

    /// How long an attach waits for the namespace, and a stop for vdpa-blk to exit.
    pub fn with_timeouts(mut self, namespace: Duration, stop: Duration) -> Self {
        self.namespace_timeout = namespace;
        self.stop_timeout = stop;
        self
    }

    /// The naming the snippets use.
    pub fn with_snippet_options(mut self, opts: SnippetOptions) -> Self {
        self.snippet_options = opts;
        self
    }

    fn sysfs(&self) -> NvmeSysfs {
        NvmeSysfs::new(self.root.clone())
    }

    fn files(&self, id: &str) -> Files {
        let dir = self.config.state_dir.join("vdpa");
        Files {
            socket: dir.join(format!("{id}.sock")),
            stdout: dir.join(format!("{id}.out")),
            stderr: dir.join(format!("{id}.log")),
        }
    }

    fn path_options(&self, spec: &AttachSpec) -> PathOptions {
        PathOptions {
            host: self.host.clone(),
            dhchap_secret: spec.dhchap_secret.clone(),
            dhchap_ctrl_secret: spec.dhchap_ctrl_secret.clone(),
            nr_io_queues: None,
        }
    }

    /// Attaches a subsystem's namespace: see the module documentation for the steps. Answers
    /// the attachment and whether this call made it (`false`: the same spec was attached
    /// already).
    pub fn attach(&mut self, req: &AttachRequest) -> Result<(AttachmentView, bool), AttachError> {
        let resolved;
        let req = match &req.discovery {
            None => req,
            Some(d) => {
                resolved = self.discover_paths(req, d)?;
                &resolved
            }
        };
        let spec = req.check(self.config)?;
        let existing = self
            .store
            .attachments_for_nqn(spec.nqn.as_str())
            .map_err(AttachError::store)?;
        if let Some(r) = existing.first() {
            let same = spec_of(r).is_ok_and(|s| s == spec);
            let conflict =
                |why: String| AttachError::new(ErrorKind::Conflict, Step::Validate, why).of(&r.id);
            if !same {
                return Err(conflict(format!(
                    "subsystem {} is attached already with another spec; detach it first",
                    spec.nqn
                )));
            }
            if r.state != AttachmentState::Ready {
                return Err(conflict(format!(
                    "subsystem {} is {} (an earlier call did not finish; the agent's reconcile \
                     at start completes it)",
                    spec.nqn,
                    r.state.as_str()
                )));
            }
            return Ok((self.view(r)?, false));
        }
        let id = new_id();
        let spec_json = serde_json::to_value(&spec).map_err(|e| {
            AttachError::new(
                ErrorKind::Store,
                Step::Record,
                format!("encoding the spec: {e}"),
            )
        })?;
        self.store
            .create_attachment(&id, spec.nqn.as_str(), &spec_json)
            .map_err(|e| AttachError::store(e).of(&id))?;
        tracing::info!(attachment = %id, nqn = %spec.nqn, mode = %spec.mode, "attaching");
        let mut made = Vec::new();
        match self.build(&id, &spec, &mut made) {
            Ok(()) => {
                let r = self
                    .store
                    .attachment(&id)
                    .map_err(|e| AttachError::store(e).of(&id))?
                    .ok_or_else(|| {
                        AttachError::new(ErrorKind::Store, Step::Record, "the record vanished")
                            .of(&id)
                    })?;
                tracing::info!(attachment = %id, nqn = %spec.nqn, "ready");
                Ok((self.view(&r)?, true))
            }
            Err(e) => {
                let mut e = e.of(&id);
                tracing::warn!(attachment = %id, error = %e, "attach failed; undoing it");
                e.undo = self.roll_back(&id, &spec, made);
                Err(e)
            }
        }
    }

    /// Steps 3 to 5 of an attach; `made` collects what to undo.
    fn build(
        &mut self,
        id: &str,
        spec: &AttachSpec,
        made: &mut Vec<Made>,
    ) -> Result<(), AttachError> {
        for address in &spec.paths {
            self.connect_path(id, spec, address, made)?;
        }
        let dev = namespace::wait_for_namespace(
            &self.sysfs(),
            &spec.nqn,
            &NamespaceWant {
                nsid: spec.nsid,
                nguid: spec.nguid.clone(),
            },
            self.namespace_timeout,
        )
        .map_err(|e| AttachError::namespace(&e))?;
        let launch = self.launch_spec(id, spec, dev.dev_path.clone());
        let dir = self.config.state_dir.join("vdpa");
        make_private_dir(&dir).map_err(|e| {
            AttachError::new(
                ErrorKind::Kernel,
                Step::StartVdpa,
                format!("creating {}: {e}", dir.display()),
            )
        })?;
        // Recorded before the start: a crash while it starts leaves a record that says to
        // look for the process by its stdout file.
        let mut record = VdpaRecord {
            name: launch.name.clone(),
            pid: None,
            start_time: None,
            control_socket: launch.control_socket.clone(),
            device_path: None,
            copy_mode: copy_mode_name(expected_copy_mode(spec.mode)).to_string(),
            restarts: 0,
        };
        self.store
            .put_vdpa(id, &record)
            .map_err(AttachError::store)?;
        let running = self.launcher.start(&launch).map_err(|e| {
            AttachError::new(
                ErrorKind::Vdpa,
                Step::StartVdpa,
                format!("backing {}: {e}", dev.dev_path.display()),
            )
        })?;
        made.push(Made::Vdpa(running.process.clone()));
        record.pid = Some(running.process.pid);
        record.start_time = Some(running.process.start_time);
        record.device_path = Some(running.ready.path.clone());
        record.copy_mode = copy_mode_name(running.ready.copy_mode).to_string();
        self.store
            .put_vdpa(id, &record)
            .map_err(AttachError::store)?;
        self.store
            .set_state(id, AttachmentState::Ready)
            .map_err(AttachError::store)?;
        Ok(())
    }

    /// Reuses or connects one path, recording it as it goes (the `connecting` mark before a
    /// connect, the controller right after).
    fn connect_path(
        &mut self,
        id: &str,
        spec: &AttachSpec,
        address: &TransportAddress,
        made: &mut Vec<Made>,
    ) -> Result<ControllerRecord, AttachError> {
        let sysfs = self.sysfs();
        let present =
            paths::find_controller(&sysfs, &spec.nqn, address, &self.host).map_err(|e| {
                AttachError::new(
                    ErrorKind::Kernel,
                    Step::Connect,
                    format!(
                        "path {address} of {}: reading the controllers: {e}",
                        spec.nqn
                    ),
                )
            })?;
        if present.is_none() {
            self.store
                .put_connecting(id, address)
                .map_err(AttachError::store)?;
        }
        let opts = paths::connect_options(
            &self.config.connect,
            &spec.nqn,
            address,
            &self.path_options(spec),
        );
        let status = match paths::attach_path(self.fabrics, &sysfs, &opts, &self.host) {
            Ok(s) => s,
            Err(e) => {
                // Nothing was made at this address: the mark can go (a failure to forget
                // it only costs reconcile a look).
                if let Err(se) = self.store.remove_connecting(id, address) {
                    tracing::warn!(attachment = %id, error = %se, "forgetting a connecting mark failed");
                }
                return Err(AttachError::path(&e));
            }
        };
        let record = status.record();
        if record.made {
            made.push(Made::Controller(record.clone()));
        }
        self.store
            .put_controller(id, &record)
            .map_err(AttachError::store)?;
        Ok(record)
    }

    fn launch_spec(&self, id: &str, spec: &AttachSpec, backing: PathBuf) -> LaunchSpec {
        let files = self.files(id);
        LaunchSpec {
            name: vdpa_name(id),
            backing,
            mode: spec.mode,
            queues: spec.queues,
            queue_size: spec.queue_size,
            read_only: spec.read_only,
            poll_us: self.config.vdpa_blk.poll_us,
            control_socket: files.socket,
            stdout: files.stdout,
            stderr: files.stderr,
        }
    }

    /// The spec to (re)start attachment `id`'s vdpa-blk with, its backing device looked up
    /// now (for the supervisor's restarts).
    pub fn launch_spec_for(&self, id: &str) -> Result<LaunchSpec, AttachError> {
        let r = self.record(id)?;
        let spec = spec_of(&r).map_err(|e| e.of(id))?;
        let dev = self.namespace_now(&spec).map_err(|e| e.of(id))?;
        Ok(self.launch_spec(id, &spec, dev.dev_path))
    }

    fn namespace_now(&self, spec: &AttachSpec) -> Result<NamespaceDevice, AttachError> {
        namespace::wait_for_namespace(
            &self.sysfs(),
            &spec.nqn,
            &NamespaceWant {
                nsid: spec.nsid,
                nguid: spec.nguid.clone(),
            },
            Duration::ZERO,
        )
        .map_err(|e| AttachError::namespace(&e))
    }

    /// Undoes what an attach made, newest first, then forgets the record; `Some(why)` when
    /// something could not be undone (the record then stays for reconcile).
    fn roll_back(&mut self, id: &str, spec: &AttachSpec, made: Vec<Made>) -> Option<String> {
        let mut failures = Vec::new();
        for m in made.into_iter().rev() {
            match m {
                Made::Vdpa(p) => match self.launcher.stop(&p, self.stop_timeout) {
                    Ok(_) => {
                        if let Err(e) = self.store.remove_vdpa(id) {
                            failures.push(e.to_string());
                        }
                    }
                    Err(e) => failures.push(format!("stopping vdpa-blk: {e}")),
                },
                Made::Controller(c) => {
                    let others = match self.store.controllers_used_by_others(id) {
                        Ok(o) => o,
                        Err(e) => {
                            failures.push(e.to_string());
                            continue;
                        }
                    };
                    match paths::detach_path(self.fabrics, &self.sysfs(), &spec.nqn, &c, &others) {
                        Ok(_) => {
                            if let Err(e) = self.store.remove_controller(id, &c.controller) {
                                failures.push(e.to_string());
                            }
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
        }
        if !failures.is_empty() {
            return Some(failures.join("; "));
        }
        match self.store.delete_attachment(id) {
            Ok(_) => {
                self.remove_files(id);
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Detaches attachment `id`: refused while its device is in use unless `force`; see the
    /// module documentation. A detach already under way (`detaching`) goes on unchecked.
    pub fn detach(&mut self, id: &str, force: bool) -> Result<(), AttachError> {
        let r = self.record(id)?;
        if !force && r.state != AttachmentState::Detaching {
            self.check_unused(&r).map_err(|e| e.of(id))?;
        }
        if r.state != AttachmentState::Detaching {
            self.store
                .set_state(id, AttachmentState::Detaching)
                .map_err(|e| AttachError::store(e).of(id))?;
        }
        tracing::info!(attachment = %id, nqn = %r.nqn, force, "detaching");
        self.tear_down(&r).map_err(|e| e.of(id))
    }

    fn record(&self, id: &str) -> Result<Record, AttachError> {
        self.store
            .attachment(id)
            .map_err(|e| AttachError::store(e).of(id))?
            .ok_or_else(|| {
                AttachError::new(
                    ErrorKind::NotFound,
                    Step::Record,
                    format!("no attachment {id:?}"),
                )
            })
    }

    /// Busy when the exported device is held (other than by vdpa-blk itself) or when who
    /// holds it cannot be told.
    fn check_unused(&self, r: &Record) -> Result<(), AttachError> {
        let Some(v) = &r.vdpa else { return Ok(()) };
        let Some(dev) = &v.device_path else {
            return Ok(());
        };
        let spec = spec_of(r)?;
        let ignore: Vec<u32> = v.pid.into_iter().collect();
        let unknown = |e: holders::HoldersError| {
            AttachError::new(
                ErrorKind::Busy,
                Step::CheckUse,
                format!(
                    "cannot tell who uses {}: {e}; force to detach anyway",
                    dev.display()
                ),
            )
        };
        let usage = match spec.mode {
            Mode::VhostVdpa => holders::BlockUse {
                processes: holders::processes_holding(
                    &self.proc_root,
                    std::slice::from_ref(dev),
                    &ignore,
                )
                .map_err(unknown)?,
                ..holders::BlockUse::default()
            },
            Mode::VirtioVdpa => {
                holders::block_device_use(&self.root.path("/sys"), &self.proc_root, dev, &ignore)
                    .map_err(unknown)?
            }
        };
        if usage.is_free() && usage.processes.unreadable == 0 {
            return Ok(());
        }
        Err(AttachError::new(
            ErrorKind::Busy,
            Step::CheckUse,
            format!(
                "{} is in use ({}); stop its users, or force",
                dev.display(),
                usage.describe()
            ),
        ))
    }

    /// Stops vdpa-blk, releases the paths, forgets the record; each step recorded, so a
    /// failure part-way is finished by calling again.
    fn tear_down(&mut self, r: &Record) -> Result<(), AttachError> {
        let nqn = Nqn::new(&r.nqn).map_err(|e| {
            AttachError::new(ErrorKind::Store, Step::Record, format!("recorded nqn: {e}"))
        })?;
        if r.vdpa.is_some() {
            self.stop_vdpa(r)?;
            self.store.remove_vdpa(&r.id).map_err(AttachError::store)?;
        }
        let sysfs = self.sysfs();
        for c in &r.controllers {
            let others = self
                .store
                .controllers_used_by_others(&r.id)
                .map_err(AttachError::store)?;
            let release = paths::detach_path(self.fabrics, &sysfs, &nqn, c, &others)
                .map_err(|e| AttachError::path(&e))?;
            tracing::debug!(attachment = %r.id, controller = %c.controller, ?release, "path released");
            self.store
                .remove_controller(&r.id, &c.controller)
                .map_err(AttachError::store)?;
        }
        for address in &r.connecting {
            self.release_connecting(r, &nqn, address)?;
        }
        self.store
            .delete_attachment(&r.id)
            .map_err(AttachError::store)?;
        self.remove_files(&r.id);
        tracing::info!(attachment = %r.id, nqn = %r.nqn, "detached");
        Ok(())
    }

    /// A path a crash left `connecting`: a controller of the subsystem at that address for
    /// this host that no attachment records was made by that connect.
    fn release_connecting(
        &mut self,
        r: &Record,
        nqn: &Nqn,
        address: &TransportAddress,
    ) -> Result<(), AttachError> {
        let sysfs = self.sysfs();
        let found = paths::find_controller(&sysfs, nqn, address, &self.host).map_err(|e| {
            AttachError::new(
                ErrorKind::Kernel,
                Step::Disconnect,
                format!("path {address} of {nqn}: reading the controllers: {e}"),
            )
        })?;
        if let Some(c) = found {
            let recorded: BTreeSet<String> = self
                .store
                .attachments()
                .map_err(AttachError::store)?
                .iter()
                .flat_map(|a| a.controllers.iter().map(|c| c.controller.clone()))
                .collect();
            if !recorded.contains(&c.name) {
                let record = ControllerRecord {
                    controller: c.name.clone(),
                    address: address.clone(),
                    made: true,
                };
                let release =
                    paths::detach_path(self.fabrics, &sysfs, nqn, &record, &BTreeSet::new())
                        .map_err(|e| AttachError::path(&e))?;
                tracing::info!(attachment = %r.id, controller = %c.name, ?release,
                    "controller of an interrupted connect released");
            }
        }
        self.store
            .remove_connecting(&r.id, address)
            .map_err(AttachError::store)
    }

    /// Stops the recorded vdpa-blk, or, when its pid never reached the store, the processes
    /// that have its stdout file open.
    fn stop_vdpa(&self, r: &Record) -> Result<(), AttachError> {
        let files = self.files(&r.id);
        let stop_err = |e: String| AttachError::new(ErrorKind::Vdpa, Step::StopVdpa, e);
        let processes = match r.vdpa.as_ref().and_then(|v| v.pid.zip(v.start_time)) {
            Some((pid, start_time)) => vec![ProcessRecord {
                pid,
                start_time,
                control_socket: files.socket.clone(),
                stdout: files.stdout.clone(),
                stderr: files.stderr.clone(),
            }],
            None => self.processes_writing(&files).map_err(stop_err)?,
        };
        for p in processes {
            match self.launcher.stop(&p, self.stop_timeout) {
                Ok(Stopped::Killed) => tracing::warn!(attachment = %r.id, pid = p.pid,
                    "vdpa-blk had to be killed: its VDUSE device may be left behind"),
                Ok(_) => {}
                Err(e) => return Err(stop_err(format!("pid {}: {e}", p.pid))),
            }
        }
        Ok(())
    }

    /// The processes (other than this one) with `files.stdout` open: a vdpa-blk whose pid
    /// was not recorded.
    fn processes_writing(&self, files: &Files) -> Result<Vec<ProcessRecord>, String> {
        let scan = holders::processes_holding(
            &self.proc_root,
            std::slice::from_ref(&files.stdout),
            &[std::process::id()],
        )
        .map_err(|e| {
            format!(
                "looking for the process writing {}: {e}",
                files.stdout.display()
            )
        })?;
        let mut pids: Vec<u32> = scan.holders.iter().map(|h| h.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let mut out = Vec::new();
        for pid in pids {
            // Gone since the scan: nothing to stop.
            let Ok(start_time) = vdpa::proc_start_time(&self.proc_root, pid) else {
                continue;
            };
            out.push(ProcessRecord {
                pid,
                start_time,
                control_socket: files.socket.clone(),
                stdout: files.stdout.clone(),
                stderr: files.stderr.clone(),
            });
        }
        Ok(out)
    }

    fn remove_files(&self, id: &str) {
        let f = self.files(id);
        for p in [f.socket, f.stdout, f.stderr] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "removing a vdpa-blk file failed")
                }
            }
        }
    }

    /// Every attachment with its live health, oldest first.
    /// The request with the paths the discovery controller at `d` lists for its subsystem
    /// (sorted, so that the same answer makes the same spec). Nothing is left connected.
    fn discover_paths(
        &self,
        req: &AttachRequest,
        d: &PathRequest,
    ) -> Result<AttachRequest, AttachError> {
        let bad = |reason: String| AttachError::new(ErrorKind::Invalid, Step::Validate, reason);
        if !req.paths.is_empty() {
            return Err(bad("paths and discovery: give one of them, not both".into()));
        }
        let nqn = Nqn::new(req.nqn.trim()).map_err(|e| bad(format!("nqn: {e}")))?;
        let address = path_address(d).map_err(|e| bad(format!("discovery: {e}")))?;
        let opts =
            fabric::connect::ConnectOptions::discovery(address.clone()).with_host(&self.host);
        let found = self.fabrics.discover(&opts).map_err(|e| {
            let kind = match &e {
                fabric::discovery::DiscoveryError::Connect(c) => {
                    ErrorKind::of_connect(PathFailure::of(c))
                }
                _ => ErrorKind::Kernel,
            };
            AttachError::new(
                kind,
                Step::Discover,
                format!("the discovery controller at {address}: {e}"),
            )
        })?;
        let mut paths: Vec<TransportAddress> = found
            .into_iter()
            .filter(|f| f.nqn == nqn)
            .map(|f| f.address)
            .collect();
        paths.sort_by_key(|a| a.to_string());
        paths.dedup();
        if paths.is_empty() {
            return Err(AttachError::new(
                ErrorKind::Refused,
                Step::Discover,
                format!(
                    "the discovery controller at {address} lists no path to {nqn} for this host \
                     (unknown subsystem, or the host is not allowed)"
                ),
            ));
        }
        let mut out = req.clone();
        out.discovery = None;
        out.paths = paths
            .iter()
            .map(|a| PathRequest {
                trtype: a.trtype().as_str().to_string(),
                traddr: a.traddr().map(|t| t.to_string()),
                trsvcid: a.trsvcid(),
            })
            .collect();
        Ok(out)
    }

    /// The vdpa-blk process serving attachment `id` now, for the supervisor (`None` when
    /// none is recorded or it does not run).
    pub fn running(&self, id: &str) -> Result<Option<Running>, AttachError> {
        let r = self.record(id)?;
        let Some((pid, start_time)) = r.vdpa.as_ref().and_then(|v| v.pid.zip(v.start_time)) else {
            return Ok(None);
        };
        let files = self.files(id);
        self.launcher
            .adopt(&ProcessRecord {
                pid,
                start_time,
                control_socket: files.socket,
                stdout: files.stdout,
                stderr: files.stderr,
            })
            .map_err(|e| AttachError::new(ErrorKind::Vdpa, Step::StartVdpa, e.to_string()).of(id))
    }

    pub fn list(&self) -> Result<Vec<AttachmentView>, AttachError> {
        let records = self.store.attachments().map_err(AttachError::store)?;
        records.iter().map(|r| self.view(r)).collect()
    }

    /// Attachment `id` with its live health.
    pub fn get(&self, id: &str) -> Result<AttachmentView, AttachError> {
        let r = self.record(id)?;
        self.view(&r)
    }

    fn view(&self, r: &Record) -> Result<AttachmentView, AttachError> {
        let spec = spec_of(r).map_err(|e| e.of(&r.id))?;
        let sysfs = self.sysfs();
        let controllers = r
            .controllers
            .iter()
            .map(|c| ControllerView {
                controller: c.controller.clone(),
                address: c.address.clone(),
                made: c.made,
                state: match paths::observe(&sysfs, &spec.nqn, c) {
                    Ok(Observed::Present(k)) => k.state.to_string(),
                    Ok(Observed::Gone) => "gone".into(),
                    Ok(Observed::Replaced) => "replaced".into(),
                    Err(e) => format!("unreadable: {e}"),
                },
            })
            .collect();
        let vdpa = r.vdpa.as_ref().map(|v| {
            let alive = v
                .pid
                .zip(v.start_time)
                .is_some_and(|(pid, st)| self.launcher.alive(pid, st));
            let (stats, stats_error) = if alive {
                match self.launcher.stats(&v.control_socket) {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e.to_string())),
                }
            } else {
                (None, Some("vdpa-blk is not running".to_string()))
            };
            VdpaView {
                name: v.name.clone(),
                pid: v.pid,
                alive,
                restarts: v.restarts,
                control_socket: v.control_socket.clone(),
                stats,
                stats_error,
            }
        });
        let device = r.vdpa.as_ref().and_then(|v| v.device_path.clone());
        let copy_mode = r.vdpa.as_ref().and_then(|v| parse_copy_mode(&v.copy_mode));
        let snippets = match (&r.vdpa, &device, r.state) {
            (Some(v), Some(dev), AttachmentState::Ready) => Some(match spec.mode {
                Mode::VhostVdpa => Snippets::Vm(Box::new(snippets::vm_snippets(
                    &v.name,
                    dev,
                    &self.snippet_options,
                ))),
                Mode::VirtioVdpa => Snippets::Host(snippets::host_snippet(dev)),
            }),
            _ => None,
        };
        Ok(AttachmentView {
            id: r.id.clone(),
            state: r.state,
            nqn: r.nqn.clone(),
            mode: spec.mode,
            queues: spec.queues,
            queue_size: spec.queue_size,
            read_only: spec.read_only,
            nsid: spec.nsid,
            nguid: spec.nguid.clone(),
            authentication: spec.authentication(),
            created_at: r.created_at,
            controllers,
            backing_device: self.namespace_now(&spec).ok().map(|d| d.dev_path),
            vdpa,
            device,
            copy_mode,
            snippets,
        })
    }

    /// At agent start: re-adopts the running vdpa-blk of `ready` attachments (and reports
    /// the dead ones for the supervisor), reconnects their paths whose controller is gone,
    /// finishes `detaching` ones, undoes `attaching` ones, and stops vdpa-blk processes of
    /// the agent's that no record wants. One attachment failing does not stop the others.
    pub fn reconcile(&mut self) -> Result<Reconciled, AttachError> {
        let mut out = Reconciled::default();
        let records = self.store.attachments().map_err(AttachError::store)?;
        for r in &records {
            match r.state {
                AttachmentState::Detaching => match self.tear_down(r) {
                    Ok(()) => out.finished.push(format!("{}: detached", r.id)),
                    Err(e) => out.failed.push(e.of(&r.id).to_string()),
                },
                AttachmentState::Attaching => {
                    let undo = self
                        .store
                        .set_state(&r.id, AttachmentState::Detaching)
                        .map_err(AttachError::store)
                        .and_then(|()| self.tear_down(r));
                    match undo {
                        Ok(()) => out
                            .rolled_back
                            .push(format!("{}: a half-made attach undone", r.id)),
                        Err(e) => out.failed.push(e.of(&r.id).to_string()),
                    }
                }
                AttachmentState::Ready => self.reconcile_ready(r, &mut out),
            }
        }
        self.remove_orphans(&mut out);
        Ok(out)
    }

    fn reconcile_ready(&mut self, r: &Record, out: &mut Reconciled) {
        let spec = match spec_of(r) {
            Ok(s) => s,
            Err(e) => {
                out.failed.push(e.of(&r.id).to_string());
                return;
            }
        };
        let sysfs = self.sysfs();
        for c in &r.controllers {
            match paths::observe(&sysfs, &spec.nqn, c) {
                Ok(Observed::Present(_)) => {}
                Ok(Observed::Gone | Observed::Replaced) => {
                    let again = self
                        .store
                        .remove_controller(&r.id, &c.controller)
                        .map_err(AttachError::store)
                        .and_then(|()| {
                            self.connect_path(&r.id, &spec, &c.address, &mut Vec::new())
                        });
                    match again {
                        Ok(n) => out.reconnected.push(format!(
                            "{}: path {} connected again as {}",
                            r.id, c.address, n.controller
                        )),
                        Err(e) => out.failed.push(e.of(&r.id).to_string()),
                    }
                }
                Err(e) => out.failed.push(format!(
                    "attachment {}: path {}: reading {}: {e}",
                    r.id, c.address, c.controller
                )),
            }
        }
        let files = self.files(&r.id);
        let dead = |reason: String, this: &Self| Dead {
            id: r.id.clone(),
            spec: this
                .namespace_now(&spec)
                .ok()
                .map(|d| this.launch_spec(&r.id, &spec, d.dev_path)),
            reason,
        };
        match r.vdpa.as_ref().and_then(|v| v.pid.zip(v.start_time)) {
            None => out
                .dead
                .push(dead("no vdpa-blk process is recorded".into(), self)),
            Some((pid, start_time)) => {
                let process = ProcessRecord {
                    pid,
                    start_time,
                    control_socket: files.socket,
                    stdout: files.stdout,
                    stderr: files.stderr,
                };
                match self.launcher.adopt(&process) {
                    Ok(Some(running)) => {
                        let launch = self.launch_spec(&r.id, &spec, running.ready.backing.clone());
                        out.adopted.push(Adopted {
                            id: r.id.clone(),
                            spec: launch,
                            running,
                        });
                    }
                    Ok(None) => out
                        .dead
                        .push(dead(format!("vdpa-blk pid {pid} is not running"), self)),
                    Err(e) => out.failed.push(format!(
                        "attachment {}: vdpa-blk pid {pid} runs but cannot be adopted: {e}",
                        r.id
                    )),
                }
            }
        }
    }

    /// vdpa-blk files in `<state_dir>/vdpa` of ids no record has: their processes are
    /// stopped and the files removed.
    fn remove_orphans(&mut self, out: &mut Reconciled) {
        let dir = self.config.state_dir.join("vdpa");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                out.failed.push(format!("listing {}: {e}", dir.display()));
                return;
            }
        };
        let mut ids = BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = [".out", ".log", ".sock"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
            {
                ids.insert(id.to_string());
            }
        }
        for id in ids {
            match self.store.attachment(&id) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    out.failed.push(e.to_string());
                    continue;
                }
            }
            let files = self.files(&id);
            match self.processes_writing(&files) {
                Ok(ps) => {
                    let mut stopped = true;
                    for p in ps {
                        match self.launcher.stop(&p, self.stop_timeout) {
                            Ok(_) => out.removed.push(format!(
                                "{id}: vdpa-blk pid {} no record wants, stopped",
                                p.pid
                            )),
                            Err(e) => {
                                stopped = false;
                                out.failed
                                    .push(format!("{id}: stopping vdpa-blk pid {}: {e}", p.pid));
                            }
                        }
                    }
                    if stopped {
                        self.remove_files(&id);
                        out.removed.push(format!("{id}: files removed"));
                    }
                }
                Err(e) => out.failed.push(format!("{id}: {e}")),
            }
        }
    }
}

/// The checked spec a record holds.
fn spec_of(r: &Record) -> Result<AttachSpec, AttachError> {
    serde_json::from_value(r.spec.clone()).map_err(|e| {
        AttachError::new(
            ErrorKind::Store,
            Step::Record,
            format!("the recorded spec is not one this agent writes: {e}"),
        )
    })
}

/// A new attachment id: 12 hex digits (48 random bits).
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The vdpa/VDUSE device name of attachment `id`.
pub fn vdpa_name(id: &str) -> String {
    format!("{VDPA_PREFIX}{id}")
}

fn expected_copy_mode(mode: Mode) -> CopyMode {
    match mode {
        Mode::VhostVdpa => CopyMode::ZeroCopy,
        Mode::VirtioVdpa => CopyMode::Bounce,
    }
}

fn copy_mode_name(c: CopyMode) -> &'static str {
    match c {
        CopyMode::ZeroCopy => "zero-copy",
        CopyMode::Bounce => "bounce",
    }
}

fn parse_copy_mode(s: &str) -> Option<CopyMode> {
    match s {
        "zero-copy" | "none" => Some(CopyMode::ZeroCopy),
        "bounce" => Some(CopyMode::Bounce),
        _ => None,
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
pub(crate) mod tests;
