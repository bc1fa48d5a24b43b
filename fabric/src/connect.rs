//! Connecting and disconnecting NVMe-oF controllers through the kernel.
//!
//! The kernel creates a fabrics controller when an option string such as
//! `transport=rdma,traddr=192.0.2.1,trsvcid=4420,nqn=...` is written to
//! `/dev/nvme-fabrics`, and answers `instance=N,cntlid=M` on a read of the
//! same open file. A controller is deleted by writing `1` to
//! `/sys/class/nvme/nvmeN/delete_controller`.
//!
//! The work is split so that everything but the system calls is pure and
//! unit-tested: [`ConnectOptions::encode`] builds the option string with the
//! range checks of `drivers/nvme/host/fabrics.c`, [`parse_answer`] accepts
//! only the answer the kernel gives, and [`classify_errno`] turns the
//! kernel's errno into something a user can act on.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use uuid::Uuid;

use crate::host::HostIdentity;
use crate::nqn::Nqn;
use crate::root::SysRoot;
use crate::transport::{TransportAddress, TransportType};

/// The kernel stores NQNs in 223-byte buffers including the NUL, so its
/// fabrics host code takes at most 222 bytes (`nqnlen >= NVMF_NQN_SIZE`).
pub const KERNEL_NQN_MAX_LEN: usize = 222;

/// The kernel refuses writes to `/dev/nvme-fabrics` longer than a page;
/// 4096 is the smallest page size Linux runs with.
pub const MAX_OPTIONS_LEN: usize = 4096;

/// Queue depth bounds (`NVMF_MIN_QUEUE_SIZE`, `NVMF_MAX_QUEUE_SIZE`).
pub const QUEUE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=1024;

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const IFNAME_MAX_LEN: usize = 15;

/// What is needed to create one fabrics controller.
///
/// `None` / `false` leaves the kernel default in place. Fields are named
/// after the kernel's option names.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Transport and target address.
    pub address: TransportAddress,
    /// Subsystem NQN to connect to.
    pub nqn: Nqn,
    /// Host NQN; the kernel's default host NQN when absent.
    pub hostnqn: Option<Nqn>,
    /// Host ID; the kernel's default host ID when absent.
    pub hostid: Option<Uuid>,
    /// Number of I/O queues (>= 1; the kernel caps it at the CPU count).
    pub nr_io_queues: Option<u32>,
    /// I/O queue depth, 16..=1024.
    pub queue_size: Option<u32>,
    /// Seconds between reconnect attempts (>= 1).
    pub reconnect_delay: Option<u32>,
    /// Seconds before a lost controller is removed; -1 retries forever.
    pub ctrl_loss_tmo: Option<i32>,
    /// Seconds before I/O fails while reconnecting; -1 disables it.
    pub fast_io_fail_tmo: Option<i32>,
    /// Keep-alive timeout in seconds.
    pub keep_alive_tmo: Option<u32>,
    /// Allow a second controller to the same subsystem and address.
    pub duplicate_connect: bool,
    /// DH-HMAC-CHAP host secret (`DHHC-1:...`).
    pub dhchap_secret: Option<String>,
    /// DH-HMAC-CHAP controller secret for bidirectional authentication.
    pub dhchap_ctrl_secret: Option<String>,
    /// Local IP address to connect from (RDMA, TCP).
    pub host_traddr: Option<IpAddr>,
    /// Local interface to connect through (TCP only).
    pub host_iface: Option<String>,
    /// IP type of service, 0..=255 (RDMA, TCP).
    pub tos: Option<u32>,
    /// NVMe/TCP header digest.
    pub hdr_digest: bool,
    /// NVMe/TCP data digest.
    pub data_digest: bool,
}

impl fmt::Debug for ConnectOptions {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectOptions")
            .field("address", &self.address.to_string())
            .field("nqn", &self.nqn.as_str())
            .field("hostnqn", &self.hostnqn.as_ref().map(Nqn::as_str))
            .field("hostid", &self.hostid)
            .field("nr_io_queues", &self.nr_io_queues)
            .field("queue_size", &self.queue_size)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("ctrl_loss_tmo", &self.ctrl_loss_tmo)
            .field("fast_io_fail_tmo", &self.fast_io_fail_tmo)
            .field("keep_alive_tmo", &self.keep_alive_tmo)
            .field("duplicate_connect", &self.duplicate_connect)
            .field("dhchap_secret", &redact(&self.dhchap_secret))
            .field("dhchap_ctrl_secret", &redact(&self.dhchap_ctrl_secret))
            .field("host_traddr", &self.host_traddr)
            .field("host_iface", &self.host_iface)
            .field("tos", &self.tos)
            .field("hdr_digest", &self.hdr_digest)
            .field("data_digest", &self.data_digest)
            .finish()
    }
}

/// The controller the kernel created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectedController {
    /// N in `/dev/nvmeN` and `/sys/class/nvme/nvmeN`.
    pub instance: u32,
    /// Controller ID the target assigned.
    pub cntlid: u16,
}

impl ConnectedController {
    /// The controller's device name, `nvmeN`.
    pub fn name(&self) -> String {
        format!("nvme{}", self.instance)
    }
}

/// Where in the exchange with the kernel an errno came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricsStage {
    /// Opening `/dev/nvme-fabrics`.
    Open,
    /// Writing the option string, i.e. creating the controller.
    Write,
}

/// What a kernel errno means for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// `/dev/nvme-fabrics` is missing: the module is not loaded.
    ModuleNotLoaded,
    /// The caller may not open `/dev/nvme-fabrics`.
    PermissionDenied,
    /// A controller with the same parameters already exists.
    AlreadyConnected,
    /// Nothing answered at the address.
    Unreachable,
    /// The target answered but refused: no such subsystem, host not
    /// allowed, or authentication failed (the kernel reports a rejected
    /// Connect command as EIO).
    Refused,
    /// The kernel rejected an option (unknown transport module, an option
    /// the transport does not allow, ...); the kernel log says which.
    OptionsRejected,
    /// Anything else.
    Other,
}

/// Maps an errno from `/dev/nvme-fabrics` to what it means.
pub fn classify_errno(stage: FabricsStage, errno: Errno) -> ConnectFailure {
    use ConnectFailure as F;
    match stage {
        FabricsStage::Open => match errno {
            Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => F::ModuleNotLoaded,
            Errno::EACCES | Errno::EPERM => F::PermissionDenied,
            _ => F::Other,
        },
        FabricsStage::Write => match errno {
            Errno::EALREADY => F::AlreadyConnected,
            Errno::ECONNREFUSED
            | Errno::EHOSTUNREACH
            | Errno::ETIMEDOUT
            | Errno::ENETUNREACH
            | Errno::EHOSTDOWN
            | Errno::ENETDOWN => F::Unreachable,
            Errno::EIO | Errno::EPERM | Errno::EACCES | Errno::ECONNRESET | Errno::EKEYREJECTED => {
                F::Refused
            }
            Errno::EINVAL => F::OptionsRejected,
            _ => F::Other,
        },
    }
}

/// Why connecting or disconnecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An option is out of the range the kernel accepts.
    #[error("connect option {option}={value}: {rule}")]
    InvalidOption {
        /// Kernel option name.
        option: &'static str,
        /// The offending value (secrets are not shown).
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// `/dev/nvme-fabrics` does not exist.
    #[error(
        "cannot open {}: {}: the nvme-fabrics kernel module is not loaded \
         (run `modprobe nvme-fabrics`, plus nvme-rdma or nvme-tcp for the transport)",
        path.display(), errno.desc()
    )]
    ModuleNotLoaded {
        /// The device path.
        path: PathBuf,
        /// The errno from open.
        errno: Errno,
    },
    /// `/dev/nvme-fabrics` may not be opened by this process.
    #[error("cannot open {}: {} (connecting needs CAP_SYS_ADMIN)", path.display(), errno.desc())]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
        /// The errno from open.
        errno: Errno,
    },
    /// The kernel already has this controller.
    #[error("already connected to {target}")]
    AlreadyConnected {
        /// Subsystem and address.
        target: String,
    },
    /// The address did not answer.
    #[error("target {target} is unreachable: {}", errno.desc())]
    Unreachable {
        /// Subsystem and address.
        target: String,
        /// The kernel's errno.
        errno: Errno,
    },
    /// The target refused the connection.
    #[error(
        "{target} refused the connection ({}): the subsystem does not exist there, \
         this host is not allowed, or authentication failed",
        errno.desc()
    )]
    Refused {
        /// Subsystem and address.
        target: String,
        /// The kernel's errno.
        errno: Errno,
    },
    /// The kernel rejected the options.
    #[error(
        "the kernel rejected the connect options for {target} (EINVAL): \
         is the transport module (nvme-rdma, nvme-tcp, nvme-loop) loaded? see dmesg"
    )]
    OptionsRejected {
        /// Subsystem and address.
        target: String,
    },
    /// Any other OS error.
    #[error("{op} {} ({target}): {}", path.display(), errno.desc())]
    Os {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Subsystem and address, or controller name.
        target: String,
        /// The errno.
        errno: Errno,
    },
    /// The kernel wrote fewer bytes than given, so the option string was cut.
    #[error("short write to {}: {written} of {len} bytes", path.display())]
    ShortWrite {
        /// The device path.
        path: PathBuf,
        /// Bytes written.
        written: usize,
        /// Bytes offered.
        len: usize,
    },
    /// The answer is not `instance=N,cntlid=M`.
    #[error("{} answered {answer:?}, expected \"instance=N,cntlid=M\"", path.display())]
    UnexpectedAnswer {
        /// The device path.
        path: PathBuf,
        /// What was read.
        answer: String,
    },
    /// The kernel answered that no controller was created.
    #[error("{} reports no controller was created (answer {answer:?})", path.display())]
    NoController {
        /// The device path.
        path: PathBuf,
        /// What was read.
        answer: String,
    },
    /// `nvmeN` has no `delete_controller` file: it does not exist (anymore).
    #[error("controller {name} does not exist: {} is missing", path.display())]
    ControllerNotFound {
        /// Controller name.
        name: String,
        /// The missing file.
        path: PathBuf,
    },
    /// Not a controller name of the form `nvmeN`.
    #[error("{0:?} is not a controller name of the form nvmeN")]
    InvalidControllerName(String),
}

/// A failure of [`parse_answer`], before the device path is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// Not the kernel's format.
    Unexpected,
    /// The kernel's "no controller" answer (`instance=-1,cntlid=-1,...`).
    NoController,
}

/// Parses the kernel's answer, `instance=N,cntlid=M` and a newline.
///
/// Anything else, including the kernel's list of supported options that it
/// prints when no controller was created, is rejected.
pub fn parse_answer(answer: &str) -> Result<ConnectedController, AnswerError> {
    if answer.starts_with("instance=-1,cntlid=-1") {
        return Err(AnswerError::NoController);
    }
    let line = answer.strip_suffix('\n').unwrap_or(answer);
    let (instance, cntlid) = line.split_once(',').ok_or(AnswerError::Unexpected)?;
    let instance = instance
        .strip_prefix("instance=")
        .and_then(decimal::<u32>)
        .ok_or(AnswerError::Unexpected)?;
    let cntlid = cntlid
        .strip_prefix("cntlid=")
        .and_then(decimal::<u16>)
        .ok_or(AnswerError::Unexpected)?;
    Ok(ConnectedController { instance, cntlid })
}

fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl ConnectOptions {
    /// Options for `nqn` at `address` with every kernel default.
    pub fn new(address: TransportAddress, nqn: Nqn) -> Self {
        Self {
            address,
            nqn,
            hostnqn: None,
            hostid: None,
            nr_io_queues: None,
            queue_size: None,
            reconnect_delay: None,
            ctrl_loss_tmo: None,
            fast_io_fail_tmo: None,
            keep_alive_tmo: None,
            duplicate_connect: false,
            dhchap_secret: None,
            dhchap_ctrl_secret: None,
            host_traddr: None,
            host_iface: None,
            tos: None,
            hdr_digest: false,
            data_digest: false,
        }
    }

    /// Options for the discovery controller at `address`.
    pub fn discovery(address: TransportAddress) -> Self {
        Self::new(address, Nqn::discovery())
    }

    /// Presents `host` (host NQN and host ID) to the target.
    pub fn with_host(mut self, host: &HostIdentity) -> Self {
        self.hostnqn = Some(host.hostnqn.clone());
        self.hostid = Some(host.hostid);
        self
    }

    /// `<nqn> at <address>`, for messages.
    pub fn target(&self) -> String {
        format!("{} at {}", self.nqn, self.address)
    }

    /// The option string for `/dev/nvme-fabrics`, after checking every
    /// value against the kernel's rules.
    pub fn encode(&self) -> Result<String, ConnectError> {
        let trtype = self.address.trtype();
        let mut out = Opts::default();
        out.kv("transport", trtype.as_str());
        if let (Some(ip), Some(port)) = (self.address.traddr(), self.address.trsvcid()) {
            out.kv("traddr", &ip.to_string());
            out.kv("trsvcid", &port.to_string());
        }
        out.kv("nqn", &kernel_nqn("nqn", &self.nqn)?);
        if let Some(h) = &self.hostnqn {
            out.kv("hostnqn", &kernel_nqn("hostnqn", h)?);
        }
        if let Some(id) = &self.hostid {
            out.kv("hostid", &id.hyphenated().to_string());
        }
        if let Some(v) = self.nr_io_queues {
            out.kv("nr_io_queues", &int("nr_io_queues", v, 1)?);
        }
        if let Some(v) = self.queue_size {
            if !QUEUE_SIZE_RANGE.contains(&v) {
                return Err(invalid("queue_size", v, "must be 16..=1024"));
            }
            out.kv("queue_size", &v.to_string());
        }
        if let Some(v) = self.reconnect_delay {
            allowed_on(
                "reconnect_delay",
                trtype,
                &[TransportType::Rdma, TransportType::Tcp],
            )?;
            out.kv("reconnect_delay", &int("reconnect_delay", v, 1)?);
        }
        if let Some(v) = self.ctrl_loss_tmo {
            allowed_on(
                "ctrl_loss_tmo",
                trtype,
                &[TransportType::Rdma, TransportType::Tcp],
            )?;
            out.kv("ctrl_loss_tmo", &timeout("ctrl_loss_tmo", v)?);
        }
        if let Some(v) = self.fast_io_fail_tmo {
            out.kv("fast_io_fail_tmo", &timeout("fast_io_fail_tmo", v)?);
        }
        if let Some(v) = self.keep_alive_tmo {
            out.kv("keep_alive_tmo", &int("keep_alive_tmo", v, 0)?);
        }
        if self.duplicate_connect {
            out.flag("duplicate_connect");
        }
        if let Some(s) = &self.dhchap_secret {
            out.kv("dhchap_secret", &dhchap("dhchap_secret", s)?);
        }
        if let Some(s) = &self.dhchap_ctrl_secret {
            if self.dhchap_secret.is_none() {
                return Err(invalid(
                    "dhchap_ctrl_secret",
                    "<redacted>",
                    "needs dhchap_secret too: bidirectional authentication starts with the host",
                ));
            }
            out.kv("dhchap_ctrl_secret", &dhchap("dhchap_ctrl_secret", s)?);
        }
        if let Some(ip) = &self.host_traddr {
            allowed_on(
                "host_traddr",
                trtype,
                &[TransportType::Rdma, TransportType::Tcp],
            )?;
            out.kv("host_traddr", &ip.to_string());
        }
        if let Some(iface) = &self.host_iface {
            allowed_on("host_iface", trtype, &[TransportType::Tcp])?;
            if iface.is_empty()
                || iface.len() > IFNAME_MAX_LEN
                || iface
                    .bytes()
                    .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(
                    "host_iface",
                    iface,
                    "must be an interface name of 1-15 characters without '/' or spaces",
                ));
            }
            out.kv("host_iface", &value("host_iface", iface)?);
        }
        if let Some(v) = self.tos {
            allowed_on("tos", trtype, &[TransportType::Rdma, TransportType::Tcp])?;
            if v > 255 {
                return Err(invalid("tos", v, "must be 0..=255"));
            }
            out.kv("tos", &v.to_string());
        }
        if self.hdr_digest {
            allowed_on("hdr_digest", trtype, &[TransportType::Tcp])?;
            out.flag("hdr_digest");
        }
        if self.data_digest {
            allowed_on("data_digest", trtype, &[TransportType::Tcp])?;
            out.flag("data_digest");
        }
        let s = out.0.join(",");
        if s.len() > MAX_OPTIONS_LEN {
            return Err(invalid(
                "(all)",
                format!("{} bytes", s.len()),
                "the option string must fit in 4096 bytes",
            ));
        }
        Ok(s)
    }
}

#[derive(Default)]
struct Opts(Vec<String>);

impl Opts {
    fn kv(&mut self, k: &str, v: &str) {
        self.0.push(format!("{k}={v}"));
    }
    fn flag(&mut self, k: &str) {
        self.0.push(k.to_string());
    }
}

fn invalid(option: &'static str, value: impl fmt::Display, rule: &str) -> ConnectError {
    ConnectError::InvalidOption {
        option,
        value: value.to_string(),
        rule: rule.to_string(),
    }
}

/// ',' and '\n' separate kernel options, so a value holding one would
/// smuggle in another option; '=' is refused too so that the string (and
/// the kernel's `address` attribute echoing it) parses back unambiguously.
fn value(option: &'static str, v: &str) -> Result<String, ConnectError> {
    if v.contains([',', '=', '\n']) {
        return Err(invalid(
            option,
            v,
            "must not contain ',', '=' or a newline (they separate kernel options)",
        ));
    }
    Ok(v.to_string())
}

fn kernel_nqn(option: &'static str, nqn: &Nqn) -> Result<String, ConnectError> {
    if nqn.as_str().len() > KERNEL_NQN_MAX_LEN {
        return Err(invalid(
            option,
            nqn,
            "the kernel takes NQNs of at most 222 bytes",
        ));
    }
    value(option, nqn.as_str())
}

/// The kernel reads these with `match_int`, so they must fit an `int`.
fn int(option: &'static str, v: u32, min: u32) -> Result<String, ConnectError> {
    if v < min || v > i32::MAX as u32 {
        return Err(invalid(option, v, &format!("must be {min}..={}", i32::MAX)));
    }
    Ok(v.to_string())
}

fn timeout(option: &'static str, v: i32) -> Result<String, ConnectError> {
    if v < -1 {
        return Err(invalid(
            option,
            v,
            "must be -1 (off/forever) or >= 0 seconds",
        ));
    }
    Ok(v.to_string())
}

/// A DH-HMAC-CHAP secret is checked as `nvme gen-dhchap-key` writes it (form, transformation,
/// length and CRC, [`DhchapKey::parse`]) before the kernel sees it: a mistyped key is refused
/// by name here, not by a failed authentication later. The kernel matches the option with
/// `%s`, which takes the rest verbatim (base64 `=` padding included), so the separators ','
/// and newline are refused as well. The secret itself never appears in an error.
fn dhchap(option: &'static str, s: &str) -> Result<String, ConnectError> {
    if s.contains([',', '\n']) {
        return Err(invalid(
            option,
            "<redacted>",
            "must not contain ',' or a newline",
        ));
    }
    crate::dhchap::DhchapKey::parse(s).map_err(|e| {
        invalid(
            option,
            "<redacted>",
            &format!("not a DH-HMAC-CHAP secret: {e}"),
        )
    })?;
    Ok(s.to_string())
}

fn allowed_on(
    option: &'static str,
    trtype: TransportType,
    allowed: &[TransportType],
) -> Result<(), ConnectError> {
    if allowed.contains(&trtype) {
        return Ok(());
    }
    let names: Vec<_> = allowed.iter().map(|t| t.as_str()).collect();
    Err(invalid(
        option,
        "(set)",
        &format!(
            "the {trtype} transport does not take this option (only {})",
            names.join(", ")
        ),
    ))
}

/// Writes the options and reads the kernel's one-line answer.
///
/// The option string goes out in a single `write`, as the kernel parses
/// each write on its own. The answer is read from offset 0: a seek is
/// attempted first (a character device without llseek answers ESPIPE,
/// which is harmless since its read position never moved).
pub fn exchange<F: Read + Write + Seek>(
    file: &mut F,
    options: &str,
) -> Result<String, ExchangeError> {
    let written = file
        .write(options.as_bytes())
        .map_err(ExchangeError::Write)?;
    if written != options.len() {
        return Err(ExchangeError::ShortWrite {
            written,
            len: options.len(),
        });
    }
    match file.seek(SeekFrom::Start(0)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESPIPE) => {}
        Err(e) => return Err(ExchangeError::Read(e)),
    }
    let mut line = String::new();
    BufReader::new(file.take(MAX_OPTIONS_LEN as u64))
        .read_line(&mut line)
        .map_err(ExchangeError::Read)?;
    Ok(line)
}

/// A failure of [`exchange`], before it is given context.
#[derive(Debug)]
pub enum ExchangeError {
    /// The write failed: the kernel refused to create the controller.
    Write(io::Error),
    /// The write was cut short.
    ShortWrite {
        /// Bytes written.
        written: usize,
        /// Bytes offered.
        len: usize,
    },
    /// Reading the answer failed.
    Read(io::Error),
}

/// Creates and deletes fabrics controllers under a [`SysRoot`].
#[derive(Debug, Clone)]
pub struct FabricsClient {
    root: SysRoot,
}

impl FabricsClient {
    /// A client for the kernel under `root`.
    pub fn new(root: SysRoot) -> Self {
        Self { root }
    }

    /// The root it works under (discovery opens the controller's admin device there).
    pub fn root(&self) -> &SysRoot {
        &self.root
    }

    /// `<root>/dev/nvme-fabrics`.
    pub fn device_path(&self) -> PathBuf {
        self.root.dev("nvme-fabrics")
    }

    /// Creates a controller and returns its instance and controller ID.
    ///
    /// The device is opened with `O_APPEND`, which the character device
    /// ignores; it lets a regular file stand in for it in tests, holding at
    /// its start the answer the test wants the "kernel" to give.
    pub fn connect(&self, opts: &ConnectOptions) -> Result<ConnectedController, ConnectError> {
        let options = opts.encode()?;
        let target = opts.target();
        let path = self.device_path();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| errno_error(FabricsStage::Open, errno_of(&e), &path, &target))?;
        tracing::debug!(target = %target, device = %path.display(), "creating fabrics controller");
        let answer = exchange(&mut file, &options).map_err(|e| match e {
            ExchangeError::Write(e) => {
                errno_error(FabricsStage::Write, errno_of(&e), &path, &target)
            }
            ExchangeError::ShortWrite { written, len } => ConnectError::ShortWrite {
                path: path.clone(),
                written,
                len,
            },
            ExchangeError::Read(e) => ConnectError::Os {
                op: "read answer from",
                path: path.clone(),
                target: target.clone(),
                errno: errno_of(&e),
            },
        })?;
        parse_answer(&answer).map_err(|e| match e {
            AnswerError::NoController => ConnectError::NoController {
                path: path.clone(),
                answer: answer.clone(),
            },
            AnswerError::Unexpected => ConnectError::UnexpectedAnswer {
                path: path.clone(),
                answer: answer.clone(),
            },
        })
    }

    /// Deletes controller `name` (`nvmeN`) by writing `1` to its
    /// `delete_controller` attribute.
    pub fn disconnect(&self, name: &str) -> Result<(), ConnectError> {
        let valid = name
            .strip_prefix("nvme")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return Err(ConnectError::InvalidControllerName(name.to_string()));
        }
        let path = self
            .root
            .sys_class_nvme()
            .join(name)
            .join("delete_controller");
        let os = |op, e: &io::Error| ConnectError::Os {
            op,
            path: path.clone(),
            target: name.to_string(),
            errno: errno_of(e),
        };
        let mut file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConnectError::ControllerNotFound {
                    name: name.to_string(),
                    path,
                })
            }
            Err(e) => return Err(os("open", &e)),
        };
        let written = file.write(b"1").map_err(|e| os("write", &e))?;
        if written != 1 {
            return Err(ConnectError::ShortWrite {
                path,
                written,
                len: 1,
            });
        }
        tracing::debug!(controller = name, "deleted fabrics controller");
        Ok(())
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Gives an errno from `/dev/nvme-fabrics` its meaning and context.
fn errno_error(stage: FabricsStage, errno: Errno, path: &Path, target: &str) -> ConnectError {
    let target = target.to_string();
    let path = path.to_path_buf();
    match classify_errno(stage, errno) {
        ConnectFailure::ModuleNotLoaded => ConnectError::ModuleNotLoaded { path, errno },
        ConnectFailure::PermissionDenied => ConnectError::PermissionDenied { path, errno },
        ConnectFailure::AlreadyConnected => ConnectError::AlreadyConnected { target },
        ConnectFailure::Unreachable => ConnectError::Unreachable { target, errno },
        ConnectFailure::Refused => ConnectError::Refused { target, errno },
        ConnectFailure::OptionsRejected => ConnectError::OptionsRejected { target },
        ConnectFailure::Other => ConnectError::Os {
            op: match stage {
                FabricsStage::Open => "open",
                FabricsStage::Write => "write connect options to",
            },
            path,
            target,
            errno,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Cursor;

    fn nqn() -> Nqn {
        Nqn::new("nqn.2014-08.com.example:vol1").unwrap()
    }

    fn rdma() -> ConnectOptions {
        ConnectOptions::new("rdma://192.0.2.1:4420".parse().unwrap(), nqn())
    }

    fn tcp() -> ConnectOptions {
        ConnectOptions::new("tcp://[2001:db8::1]:4420".parse().unwrap(), nqn())
    }

    fn rule_of(r: Result<String, ConnectError>) -> (&'static str, String) {
        match r {
            Err(ConnectError::InvalidOption { option, rule, .. }) => (option, rule),
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }

    #[test]
    fn minimal_rdma_options_encode_transport_address_and_nqn() {
        assert_eq!(
            rdma().encode().unwrap(),
            "transport=rdma,traddr=192.0.2.1,trsvcid=4420,nqn=nqn.2014-08.com.example:vol1"
        );
    }

    #[test]
    fn loop_options_carry_no_address() {
        let o = ConnectOptions::new(TransportAddress::loopback(), nqn());
        assert_eq!(
            o.encode().unwrap(),
            "transport=loop,nqn=nqn.2014-08.com.example:vol1"
        );
    }

    #[test]
    fn every_option_is_encoded_with_the_kernel_names_and_bare_flags() {
        let host = HostIdentity {
            hostnqn: Nqn::new("nqn.2014-08.com.example:host1").unwrap(),
            hostid: Uuid::parse_str("f81d4fae-7dec-11d0-a765-00a0c91e6bf6").unwrap(),
        };
        let mut o = tcp().with_host(&host);
        o.nr_io_queues = Some(4);
        o.queue_size = Some(128);
        o.reconnect_delay = Some(2);
        o.ctrl_loss_tmo = Some(-1);
        o.fast_io_fail_tmo = Some(5);
        o.keep_alive_tmo = Some(10);
        o.duplicate_connect = true;
        o.dhchap_secret = Some(KEY_00.into());
        o.dhchap_ctrl_secret = Some(KEY_02.into());
        o.host_traddr = Some("2001:db8::2".parse().unwrap());
        o.host_iface = Some("eth0".into());
        o.tos = Some(0);
        o.hdr_digest = true;
        o.data_digest = true;
        assert_eq!(
            o.encode().unwrap(),
            "transport=tcp,traddr=2001:db8::1,trsvcid=4420,nqn=nqn.2014-08.com.example:vol1,\
             hostnqn=nqn.2014-08.com.example:host1,hostid=f81d4fae-7dec-11d0-a765-00a0c91e6bf6,\
             nr_io_queues=4,queue_size=128,reconnect_delay=2,ctrl_loss_tmo=-1,fast_io_fail_tmo=5,\
             keep_alive_tmo=10,duplicate_connect,\
             dhchap_secret=DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:,\
             dhchap_ctrl_secret=DHHC-1:02:WMVN3y3d0PH7Y9W2VWttKhADvYw4gjHSeoHe2ikRN2T1LTF8RHyoaqRKqaJYpiCQWjyAkw==:,\
             host_traddr=2001:db8::2,\
             host_iface=eth0,tos=0,hdr_digest,data_digest"
        );
    }

    #[test]
    fn queue_size_outside_16_to_1024_is_rejected() {
        for bad in [0, 15, 1025] {
            let mut o = rdma();
            o.queue_size = Some(bad);
            assert_eq!(rule_of(o.encode()).0, "queue_size");
        }
        for good in [16, 1024] {
            let mut o = rdma();
            o.queue_size = Some(good);
            o.encode().unwrap();
        }
    }

    #[test]
    fn tos_above_255_is_rejected() {
        let mut o = rdma();
        o.tos = Some(256);
        assert_eq!(rule_of(o.encode()).0, "tos");
        o.tos = Some(255);
        assert!(o.encode().unwrap().ends_with(",tos=255"));
    }

    #[test]
    fn ctrl_loss_tmo_below_minus_one_is_rejected() {
        let mut o = rdma();
        o.ctrl_loss_tmo = Some(-2);
        assert_eq!(rule_of(o.encode()).0, "ctrl_loss_tmo");
        o.ctrl_loss_tmo = Some(0);
        o.encode().unwrap();
        o.fast_io_fail_tmo = Some(-5);
        assert_eq!(rule_of(o.encode()).0, "fast_io_fail_tmo");
    }

    #[test]
    fn zero_queues_zero_reconnect_delay_and_int_overflow_are_rejected() {
        let mut o = rdma();
        o.nr_io_queues = Some(0);
        assert_eq!(rule_of(o.encode()).0, "nr_io_queues");
        let mut o = rdma();
        o.reconnect_delay = Some(0);
        assert_eq!(rule_of(o.encode()).0, "reconnect_delay");
        let mut o = rdma();
        o.keep_alive_tmo = Some(u32::MAX);
        assert_eq!(rule_of(o.encode()).0, "keep_alive_tmo");
    }

    /// `nvme gen-dhchap-key` keys (the same as fabric::dhchap's tests).
    const KEY_00: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const KEY_02: &str =
        "DHHC-1:02:WMVN3y3d0PH7Y9W2VWttKhADvYw4gjHSeoHe2ikRN2T1LTF8RHyoaqRKqaJYpiCQWjyAkw==:";

    #[test]
    fn dhchap_secret_must_start_with_dhhc_1_and_is_never_shown() {
        let mut o = rdma();
        o.dhchap_secret = Some("hunter2-secret".into());
        let err = o.encode().unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("DHHC-1:"), "{err}");
        o.dhchap_secret = Some("DHHC-1:".into());
        assert_eq!(rule_of(o.encode()).0, "dhchap_secret");
        let mut o = rdma();
        o.dhchap_ctrl_secret = Some("DHHC-1:00:abcd:".into());
        assert_eq!(rule_of(o.encode()).0, "dhchap_ctrl_secret");
        let mut o = rdma();
        o.dhchap_secret = Some("DHHC-1:00:sec,ret:".into());
        assert_eq!(rule_of(o.encode()).0, "dhchap_secret");
        assert!(!format!("{o:?}").contains("sec,ret"));
    }

    #[test]
    fn base64_padding_in_dhchap_secrets_is_kept() {
        let mut o = rdma();
        o.dhchap_secret = Some(KEY_02.into());
        assert!(o
            .encode()
            .unwrap()
            .ends_with(&format!(",dhchap_secret={KEY_02}")));
    }

    #[test]
    fn a_mistyped_dhchap_secret_is_refused_by_its_crc_without_showing_it() {
        let mut o = rdma();
        // One character of the base64 changed: the CRC no longer matches.
        o.dhchap_secret = Some(KEY_00.replace("AAEC", "AAED"));
        let err = o.encode().unwrap_err().to_string();
        assert!(err.contains("CRC"), "{err}");
        assert!(!err.contains("AAED"), "{err}");
        let mut o = rdma();
        o.dhchap_secret = Some(KEY_02.replace("DHHC-1:02", "DHHC-1:01"));
        assert!(o.encode().unwrap_err().to_string().contains("48-byte"));
    }

    #[test]
    fn commas_and_equals_inside_values_are_rejected() {
        let o = ConnectOptions::new(
            "rdma://192.0.2.1".parse().unwrap(),
            Nqn::new("nqn.2014-08.com.example:a,b").unwrap(),
        );
        assert_eq!(rule_of(o.encode()).0, "nqn");
        let mut o = rdma();
        o.hostnqn = Some(Nqn::new("nqn.2014-08.com.example:x=y").unwrap());
        assert_eq!(rule_of(o.encode()).0, "hostnqn");
    }

    #[test]
    fn nqn_of_223_bytes_is_refused_because_the_kernel_takes_222() {
        let base = "nqn.2014-08.com.example:";
        let long = Nqn::new(&format!("{base}{}", "a".repeat(223 - base.len()))).unwrap();
        let o = ConnectOptions::new("rdma://192.0.2.1".parse().unwrap(), long);
        assert_eq!(rule_of(o.encode()).0, "nqn");
    }

    #[test]
    fn transport_specific_options_are_refused_on_other_transports() {
        let mut o = rdma();
        o.hdr_digest = true;
        assert_eq!(rule_of(o.encode()).0, "hdr_digest");
        let mut o = rdma();
        o.data_digest = true;
        assert_eq!(rule_of(o.encode()).0, "data_digest");
        let mut o = rdma();
        o.host_iface = Some("eth0".into());
        assert_eq!(rule_of(o.encode()).0, "host_iface");
        let mut o = ConnectOptions::new(TransportAddress::loopback(), nqn());
        o.ctrl_loss_tmo = Some(1);
        assert_eq!(rule_of(o.encode()).0, "ctrl_loss_tmo");
        let mut o = tcp();
        o.host_iface = Some("bad/name".into());
        assert_eq!(rule_of(o.encode()).0, "host_iface");
    }

    #[test]
    fn kernel_answer_is_parsed() {
        assert_eq!(
            parse_answer("instance=3,cntlid=17\n"),
            Ok(ConnectedController {
                instance: 3,
                cntlid: 17
            })
        );
        assert_eq!(
            parse_answer("instance=0,cntlid=65535").unwrap().cntlid,
            65535
        );
        assert_eq!(
            parse_answer("instance=12,cntlid=1\n").unwrap().name(),
            "nvme12"
        );
    }

    #[test]
    fn answer_the_kernel_never_gives_is_rejected() {
        for bad in [
            "",
            "\n",
            "instance=3\n",
            "cntlid=1,instance=3\n",
            "instance=3,cntlid=1,extra=2\n",
            "instance=3,cntlid=65536\n",
            "instance=+3,cntlid=1\n",
            "instance=3, cntlid=1\n",
            "transport=rdma,traddr=192.0.2.1\n",
            "instance=3,cntlid=1\n\n",
        ] {
            assert_eq!(parse_answer(bad), Err(AnswerError::Unexpected), "{bad:?}");
        }
    }

    #[test]
    fn kernel_no_controller_answer_is_recognised() {
        assert_eq!(
            parse_answer("instance=-1,cntlid=-1,transport=%s,traddr=%s\n"),
            Err(AnswerError::NoController)
        );
    }

    #[test]
    fn errno_mapping_tells_the_user_what_happened() {
        use ConnectFailure as F;
        use FabricsStage::{Open, Write};
        let cases = [
            (Open, Errno::ENOENT, F::ModuleNotLoaded),
            (Open, Errno::ENODEV, F::ModuleNotLoaded),
            (Open, Errno::EACCES, F::PermissionDenied),
            (Open, Errno::EPERM, F::PermissionDenied),
            (Open, Errno::EIO, F::Other),
            (Write, Errno::EALREADY, F::AlreadyConnected),
            (Write, Errno::ECONNREFUSED, F::Unreachable),
            (Write, Errno::EHOSTUNREACH, F::Unreachable),
            (Write, Errno::ETIMEDOUT, F::Unreachable),
            (Write, Errno::ENETUNREACH, F::Unreachable),
            (Write, Errno::EIO, F::Refused),
            (Write, Errno::EPERM, F::Refused),
            (Write, Errno::EACCES, F::Refused),
            (Write, Errno::ECONNRESET, F::Refused),
            (Write, Errno::EINVAL, F::OptionsRejected),
            (Write, Errno::ENOENT, F::Other),
            (Write, Errno::ENOMEM, F::Other),
        ];
        for (stage, errno, want) in cases {
            assert_eq!(classify_errno(stage, errno), want, "{stage:?} {errno}");
        }
    }

    #[test]
    fn user_facing_messages_name_the_cause() {
        use FabricsStage::{Open, Write};
        let p = Path::new("/dev/nvme-fabrics");
        let msg = errno_error(Open, Errno::ENOENT, p, "t").to_string();
        assert!(
            msg.contains("nvme-fabrics kernel module is not loaded"),
            "{msg}"
        );
        let msg = errno_error(Write, Errno::EALREADY, p, "X at Y").to_string();
        assert_eq!(msg, "already connected to X at Y");
        let msg = errno_error(Write, Errno::EIO, p, "X").to_string();
        assert!(msg.contains("refused"), "{msg}");
        let msg = errno_error(Write, Errno::ETIMEDOUT, p, "X").to_string();
        assert!(msg.contains("unreachable"), "{msg}");
    }

    /// A device whose writes are recorded and whose reads return a canned
    /// answer, like the kernel's seq_file.
    struct FakeDevice {
        written: Vec<u8>,
        answer: Cursor<Vec<u8>>,
        write_error: Option<i32>,
        seekable: bool,
    }

    impl Write for FakeDevice {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(e) = self.write_error {
                return Err(io::Error::from_raw_os_error(e));
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Read for FakeDevice {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.answer.read(buf)
        }
    }
    impl Seek for FakeDevice {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            if self.seekable {
                self.answer.seek(pos)
            } else {
                Err(io::Error::from_raw_os_error(libc::ESPIPE))
            }
        }
    }

    #[test]
    fn exchange_writes_once_and_reads_the_answer_even_when_unseekable() {
        let mut dev = FakeDevice {
            written: vec![],
            answer: Cursor::new(b"instance=7,cntlid=2\n".to_vec()),
            write_error: None,
            seekable: false,
        };
        let answer = exchange(&mut dev, "transport=loop,nqn=x").unwrap();
        assert_eq!(answer, "instance=7,cntlid=2\n");
        assert_eq!(dev.written, b"transport=loop,nqn=x");
    }

    #[test]
    fn exchange_reports_the_write_errno() {
        let mut dev = FakeDevice {
            written: vec![],
            answer: Cursor::new(vec![]),
            write_error: Some(libc::EALREADY),
            seekable: true,
        };
        match exchange(&mut dev, "x") {
            Err(ExchangeError::Write(e)) => assert_eq!(e.raw_os_error(), Some(libc::EALREADY)),
            other => panic!("{other:?}"),
        }
    }

    fn fake_root(answer: Option<&str>) -> (tempfile::TempDir, SysRoot) {
        let d = tempfile::tempdir().unwrap();
        let root = SysRoot::new(d.path());
        fs::create_dir_all(root.path("/dev")).unwrap();
        if let Some(a) = answer {
            fs::write(root.dev("nvme-fabrics"), a).unwrap();
        }
        (d, root)
    }

    #[test]
    fn connect_against_a_regular_file_writes_options_and_parses_the_answer() {
        let (_d, root) = fake_root(Some("instance=4,cntlid=9\n"));
        let client = FabricsClient::new(root.clone());
        let ctrl = client.connect(&rdma()).unwrap();
        assert_eq!(
            ctrl,
            ConnectedController {
                instance: 4,
                cntlid: 9
            }
        );
        let content = fs::read_to_string(root.dev("nvme-fabrics")).unwrap();
        assert_eq!(
            content,
            "instance=4,cntlid=9\ntransport=rdma,traddr=192.0.2.1,trsvcid=4420,\
             nqn=nqn.2014-08.com.example:vol1"
        );
    }

    #[test]
    fn connect_with_an_answer_the_kernel_never_gives_is_a_typed_error() {
        let (_d, root) = fake_root(Some("hello\n"));
        let err = FabricsClient::new(root).connect(&rdma()).unwrap_err();
        match err {
            ConnectError::UnexpectedAnswer { answer, .. } => assert_eq!(answer, "hello\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_without_the_fabrics_device_says_the_module_is_not_loaded() {
        let (_d, root) = fake_root(None);
        let err = FabricsClient::new(root).connect(&rdma()).unwrap_err();
        assert!(
            matches!(err, ConnectError::ModuleNotLoaded { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("modprobe nvme-fabrics"), "{err}");
    }

    #[test]
    fn connect_with_invalid_options_touches_nothing() {
        let (_d, root) = fake_root(Some(""));
        let mut o = rdma();
        o.queue_size = Some(1);
        let err = FabricsClient::new(root.clone()).connect(&o).unwrap_err();
        assert!(matches!(err, ConnectError::InvalidOption { .. }));
        assert_eq!(fs::read_to_string(root.dev("nvme-fabrics")).unwrap(), "");
    }

    #[test]
    fn disconnect_writes_1_to_delete_controller() {
        let (_d, root) = fake_root(None);
        let dir = root.sys_class_nvme().join("nvme3");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("delete_controller"), "").unwrap();
        FabricsClient::new(root).disconnect("nvme3").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("delete_controller")).unwrap(),
            "1"
        );
    }

    #[test]
    fn disconnect_of_a_missing_controller_names_the_path() {
        let (_d, root) = fake_root(None);
        let err = FabricsClient::new(root).disconnect("nvme8").unwrap_err();
        assert!(matches!(err, ConnectError::ControllerNotFound { .. }));
        assert!(
            err.to_string()
                .contains("sys/class/nvme/nvme8/delete_controller"),
            "{err}"
        );
    }

    #[test]
    fn disconnect_refuses_names_that_are_not_controllers() {
        let (_d, root) = fake_root(None);
        let c = FabricsClient::new(root);
        for bad in ["../nvme1", "nvme", "nvme1n1", "sda", "nvme-subsys0"] {
            assert!(matches!(
                c.disconnect(bad),
                Err(ConnectError::InvalidControllerName(_))
            ));
        }
    }
}
