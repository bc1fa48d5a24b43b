//! One path of an attachment: a fabrics controller of the subsystem at one transport
//! address.
//!
//! [`attach_path`] reuses a controller the kernel already has for the subsystem at exactly
//! that address (and this host's NQN), else connects one with `duplicate_connect` off; it
//! reports the controller's name, whether this agent made it, and its state.
//! [`detach_path`] disconnects a controller only when this agent made it, no other
//! attachment uses it, and the controller now under that name is still the same one (the
//! kernel reuses `nvmeN` numbers). The kernel boundary is the [`Fabrics`] trait: the real
//! [`FabricsClient`] in production, a fake that edits a fake sysfs tree in tests.
//!
//! Errors say which path and why; [`PathError::failure`] classifies them so the API can
//! answer 4xx for the caller's mistakes (unreachable address, unknown subsystem, host not
//! allowed, wrong DH-HMAC-CHAP secret, malformed options) and 5xx for the node's.
//!
//! Status: complete for one path at a time; the caller records each result (store) before
//! the next kernel change and rolls back what it made.

use std::collections::BTreeSet;

use fabric::connect::{ConnectError, ConnectFailure, ConnectOptions, ConnectedController};
use fabric::discovery::DiscoveryError;
use fabric::host::HostIdentity;
use fabric::nqn::Nqn;
use fabric::sysfs::{Controller, ControllerState, NvmeSysfs, SysfsError};
use fabric::transport::{TransportAddress, TransportType};
use fabric::FabricsClient;

use crate::config::ConnectDefaults;
use crate::store::ControllerRecord;

/// Creates and deletes fabrics controllers: the kernel's `/dev/nvme-fabrics` and
/// `delete_controller`, or a fake.
pub trait Fabrics {
    /// Creates a controller (the kernel's answer is its instance and controller ID).
    fn connect(&self, opts: &ConnectOptions) -> Result<ConnectedController, ConnectError>;
    /// Deletes controller `name` (`nvmeN`).
    fn disconnect(&self, name: &str) -> Result<(), ConnectError>;
    /// Asks the discovery controller at `opts.address` (`opts.nqn` the discovery NQN) which
    /// NVM subsystems this host may reach, and where: a temporary controller, its Discovery
    /// log page, the controller deleted again.
    fn discover(&self, opts: &ConnectOptions) -> Result<Vec<Discovered>, DiscoveryError>;
}

/// One NVM subsystem a discovery controller listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub nqn: Nqn,
    pub address: TransportAddress,
}

impl Fabrics for FabricsClient {
    fn connect(&self, opts: &ConnectOptions) -> Result<ConnectedController, ConnectError> {
        FabricsClient::connect(self, opts)
    }

    fn disconnect(&self, name: &str) -> Result<(), ConnectError> {
        FabricsClient::disconnect(self, name)
    }

    fn discover(&self, opts: &ConnectOptions) -> Result<Vec<Discovered>, DiscoveryError> {
        let log = fabric::discovery::discover(self, self.root(), opts)?;
        Ok(log
            .subsystems()
            .into_iter()
            .filter(|s| s.subtype == fabric::discovery::SubsystemType::Nvm)
            .map(|s| Discovered {
                nqn: s.nqn,
                address: s.address,
            })
            .collect())
    }
}

/// What an attachment request adds to the configured connect defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct PathOptions {
    /// This node's host NQN and host ID.
    pub host: HostIdentity,
    /// DH-HMAC-CHAP host secret (`DHHC-1:...`).
    pub dhchap_secret: Option<String>,
    /// DH-HMAC-CHAP controller secret, for bidirectional authentication.
    pub dhchap_ctrl_secret: Option<String>,
    /// I/O queues, overriding the configured default.
    pub nr_io_queues: Option<u32>,
}

impl std::fmt::Debug for PathOptions {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("PathOptions")
            .field("host", &self.host)
            .field("dhchap_secret", &redact(&self.dhchap_secret))
            .field("dhchap_ctrl_secret", &redact(&self.dhchap_ctrl_secret))
            .field("nr_io_queues", &self.nr_io_queues)
            .finish()
    }
}

/// The options for connecting `nqn` at `address`: the configured defaults, then the
/// request's host identity, secrets and queue count; never a duplicate controller. The
/// reconnect options are left out on the loop transport, which takes none.
pub fn connect_options(
    defaults: &ConnectDefaults,
    nqn: &Nqn,
    address: &TransportAddress,
    opts: &PathOptions,
) -> ConnectOptions {
    let mut o = ConnectOptions::new(address.clone(), nqn.clone()).with_host(&opts.host);
    if address.trtype() != TransportType::Loop {
        o.ctrl_loss_tmo = Some(defaults.ctrl_loss_tmo);
        o.reconnect_delay = Some(defaults.reconnect_delay);
    }
    o.fast_io_fail_tmo = Some(defaults.fast_io_fail_tmo);
    o.keep_alive_tmo = Some(defaults.keep_alive_tmo);
    o.nr_io_queues = opts.nr_io_queues.or(defaults.nr_io_queues);
    o.dhchap_secret = opts.dhchap_secret.clone();
    o.dhchap_ctrl_secret = opts.dhchap_ctrl_secret.clone();
    o.duplicate_connect = false;
    o
}

/// One path as attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStatus {
    /// The path's transport address.
    pub address: TransportAddress,
    /// Its controller, `nvmeN`.
    pub controller: String,
    /// This agent connected it (it was not there before).
    pub made: bool,
    /// The controller's state when looked at.
    pub state: ControllerState,
}

impl PathStatus {
    /// What the store keeps of it.
    pub fn record(&self) -> ControllerRecord {
        ControllerRecord {
            controller: self.controller.clone(),
            address: self.address.clone(),
            made: self.made,
        }
    }
}

/// What a path failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFailure {
    /// An option (a secret's form, a queue count) the kernel would not take.
    InvalidOptions,
    /// Nothing answered at the address.
    Unreachable,
    /// The target refused: no such subsystem there, this host not allowed, or the
    /// DH-HMAC-CHAP authentication failed (the kernel does not tell these apart).
    Refused,
    /// The nvme-fabrics module is not loaded.
    ModuleNotLoaded,
    /// The agent may not use `/dev/nvme-fabrics`.
    PermissionDenied,
    /// The kernel has such a controller but it could not be found in sysfs.
    AlreadyConnected,
    /// The kernel rejected the options (e.g. the transport module is missing).
    OptionsRejected,
    /// Anything else (sysfs unreadable, an unexpected errno).
    Other,
}

impl PathFailure {
    /// The failure of a connect or disconnect error.
    pub fn of(e: &ConnectError) -> Self {
        match e {
            ConnectError::InvalidOption { .. } => PathFailure::InvalidOptions,
            ConnectError::ModuleNotLoaded { .. } => ConnectFailure::ModuleNotLoaded.into(),
            ConnectError::PermissionDenied { .. } => ConnectFailure::PermissionDenied.into(),
            ConnectError::AlreadyConnected { .. } => ConnectFailure::AlreadyConnected.into(),
            ConnectError::Unreachable { .. } => ConnectFailure::Unreachable.into(),
            ConnectError::Refused { .. } => ConnectFailure::Refused.into(),
            ConnectError::OptionsRejected { .. } => ConnectFailure::OptionsRejected.into(),
            _ => PathFailure::Other,
        }
    }

    /// A short stable name (`unreachable`, `refused`, ...) for API error kinds and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PathFailure::InvalidOptions => "invalid_options",
            PathFailure::Unreachable => "unreachable",
            PathFailure::Refused => "refused",
            PathFailure::ModuleNotLoaded => "module_not_loaded",
            PathFailure::PermissionDenied => "permission_denied",
            PathFailure::AlreadyConnected => "already_connected",
            PathFailure::OptionsRejected => "options_rejected",
            PathFailure::Other => "other",
        }
    }

    /// Whether the caller can fix it by changing the request (a 4xx), rather than the node
    /// being unable to do its job (a 5xx).
    pub fn is_callers_mistake(self) -> bool {
        matches!(
            self,
            PathFailure::InvalidOptions | PathFailure::Unreachable | PathFailure::Refused
        )
    }
}

impl From<ConnectFailure> for PathFailure {
    fn from(f: ConnectFailure) -> Self {
        match f {
            ConnectFailure::ModuleNotLoaded => PathFailure::ModuleNotLoaded,
            ConnectFailure::PermissionDenied => PathFailure::PermissionDenied,
            ConnectFailure::AlreadyConnected => PathFailure::AlreadyConnected,
            ConnectFailure::Unreachable => PathFailure::Unreachable,
            ConnectFailure::Refused => PathFailure::Refused,
            ConnectFailure::OptionsRejected => PathFailure::OptionsRejected,
            ConnectFailure::Other => PathFailure::Other,
        }
    }
}

/// Why a path could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Connecting failed.
    #[error("path {address} of {nqn}: connect failed ({}): {source}", failure.as_str())]
    Connect {
        /// The subsystem.
        nqn: String,
        /// The path.
        address: TransportAddress,
        /// What it means.
        failure: PathFailure,
        /// The kernel's answer.
        #[source]
        source: Box<ConnectError>,
    },
    /// Disconnecting failed.
    #[error("path {address} of {nqn}: disconnecting {controller} failed: {source}")]
    Disconnect {
        /// The subsystem.
        nqn: String,
        /// The path.
        address: TransportAddress,
        /// The controller.
        controller: String,
        /// The kernel's answer.
        #[source]
        source: Box<ConnectError>,
    },
    /// The controllers could not be read from sysfs.
    #[error("path {address} of {nqn}: reading the controllers: {source}")]
    Sysfs {
        /// The subsystem.
        nqn: String,
        /// The path.
        address: TransportAddress,
        /// What could not be read.
        #[source]
        source: Box<SysfsError>,
    },
}

impl PathError {
    /// What the failure means (sysfs and disconnect failures are the node's).
    pub fn failure(&self) -> PathFailure {
        match self {
            PathError::Connect { failure, .. } => *failure,
            PathError::Disconnect { .. } | PathError::Sysfs { .. } => PathFailure::Other,
        }
    }

    /// The path it is about.
    pub fn address(&self) -> &TransportAddress {
        match self {
            PathError::Connect { address, .. }
            | PathError::Disconnect { address, .. }
            | PathError::Sysfs { address, .. } => address,
        }
    }
}

/// Whether the kernel still counts `state` as an existing controller (one a new connect
/// with the same parameters would collide with): anything but deleting or dead.
fn counts(state: &ControllerState) -> bool {
    !matches!(
        state,
        ControllerState::Deleting | ControllerState::DeletingNoIo | ControllerState::Dead
    )
}

/// The value of a controller attribute the model does not read (`hostnqn`, `hostid`), if
/// the kernel shows it.
fn extra_attr(c: &Controller, name: &str) -> Option<String> {
    std::fs::read_to_string(c.sysfs_path.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `c` was connected with `host`'s identity (the kernel shows `hostnqn` and
/// `hostid` on fabrics controllers; when it does not, the identity cannot differ, the
/// node having one).
fn same_host(c: &Controller, host: &HostIdentity) -> bool {
    let nqn_ok = extra_attr(c, "hostnqn").is_none_or(|n| n == host.hostnqn.as_str());
    let id_ok = extra_attr(c, "hostid").is_none_or(|i| i == host.hostid.hyphenated().to_string());
    nqn_ok && id_ok
}

/// The controller the kernel has for `nqn` at exactly `address` for `host`, in any state
/// but deleting or dead (a reconnecting controller is the one to use: the kernel would
/// refuse a second one). Controllers of other host identities are not this host's paths.
pub fn find_controller(
    sysfs: &NvmeSysfs,
    nqn: &Nqn,
    address: &TransportAddress,
    host: &HostIdentity,
) -> Result<Option<Controller>, SysfsError> {
    Ok(sysfs.controllers_for(nqn)?.into_iter().find(|c| {
        c.transport_address().as_ref() == Some(address) && counts(&c.state) && same_host(c, host)
    }))
}

/// Attaches one path: reuses the controller the kernel has for the subsystem at that
/// address, or connects one with `opts` (see [`connect_options`]). A controller made here
/// that cannot be read back is disconnected again before the error is returned.
pub fn attach_path<F: Fabrics + ?Sized>(
    fabrics: &F,
    sysfs: &NvmeSysfs,
    opts: &ConnectOptions,
    host: &HostIdentity,
) -> Result<PathStatus, PathError> {
    let address = opts.address.clone();
    let nqn = opts.nqn.to_string();
    let sysfs_err = |source| PathError::Sysfs {
        nqn: nqn.clone(),
        address: address.clone(),
        source: Box::new(source),
    };
    let reused = |c: Controller| PathStatus {
        address: address.clone(),
        controller: c.name,
        made: false,
        state: c.state,
    };
    if let Some(c) = find_controller(sysfs, &opts.nqn, &address, host).map_err(sysfs_err)? {
        tracing::debug!(controller = %c.name, path = %address, nqn = %nqn, "reusing controller");
        return Ok(reused(c));
    }
    let made = match fabrics.connect(opts) {
        Ok(made) => made,
        Err(e @ ConnectError::AlreadyConnected { .. }) => {
            // Made by someone else between the look and the connect: use it.
            return match find_controller(sysfs, &opts.nqn, &address, host).map_err(sysfs_err)? {
                Some(c) => Ok(reused(c)),
                None => Err(PathError::Connect {
                    nqn,
                    address,
                    failure: PathFailure::AlreadyConnected,
                    source: Box::new(e),
                }),
            };
        }
        Err(e) => {
            return Err(PathError::Connect {
                nqn,
                address,
                failure: PathFailure::of(&e),
                source: Box::new(e),
            })
        }
    };
    let name = made.name();
    match sysfs.controller(&name) {
        Ok(c) => {
            tracing::info!(controller = %name, path = %address, nqn = %nqn, "connected");
            Ok(PathStatus {
                address,
                controller: name,
                made: true,
                state: c.state,
            })
        }
        Err(source) => {
            if let Err(e) = fabrics.disconnect(&name) {
                tracing::warn!(controller = %name, error = %e, "rolling back a controller that cannot be read failed");
            }
            Err(PathError::Sysfs {
                nqn,
                address,
                source: Box::new(source),
            })
        }
    }
}

/// What the controller recorded for a path is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The recorded controller, still of the subsystem at the path's address.
    Present(Box<Controller>),
    /// No controller has that name any more.
    Gone,
    /// The name now belongs to another controller (the kernel reused the number, e.g. after
    /// a reboot) or one still being set up: not the recorded one.
    Replaced,
}

/// Looks at the controller `record` names: is it still the one of `nqn` at its address?
pub fn observe(
    sysfs: &NvmeSysfs,
    nqn: &Nqn,
    record: &ControllerRecord,
) -> Result<Observed, SysfsError> {
    match sysfs.controller(&record.controller) {
        Ok(c) => {
            let same = c.subsysnqn == nqn.as_str()
                && c.transport_address().as_ref() == Some(&record.address);
            Ok(if same {
                Observed::Present(Box::new(c))
            } else {
                Observed::Replaced
            })
        }
        Err(SysfsError::NotFound { .. }) => Ok(Observed::Gone),
        Err(SysfsError::ControllerWithoutSubsystem { .. }) => Ok(Observed::Replaced),
        Err(e) => Err(e),
    }
}

/// What [`detach_path`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Disconnected.
    Disconnected,
    /// Kept: this agent did not make it.
    KeptNotMade,
    /// Kept: another attachment uses it.
    KeptInUse,
    /// Nothing to do: it is gone (or already being deleted).
    Gone,
    /// Nothing done: the name now belongs to another controller.
    Replaced,
}

/// Releases one path: disconnects its controller if this agent made it, no other
/// attachment uses it (`used_by_others`: their controller names) and it is still the
/// recorded controller of `nqn` at the recorded address.
pub fn detach_path<F: Fabrics + ?Sized>(
    fabrics: &F,
    sysfs: &NvmeSysfs,
    nqn: &Nqn,
    record: &ControllerRecord,
    used_by_others: &BTreeSet<String>,
) -> Result<Release, PathError> {
    if !record.made {
        return Ok(Release::KeptNotMade);
    }
    if used_by_others.contains(&record.controller) {
        return Ok(Release::KeptInUse);
    }
    let observed = observe(sysfs, nqn, record).map_err(|source| PathError::Sysfs {
        nqn: nqn.to_string(),
        address: record.address.clone(),
        source: Box::new(source),
    })?;
    match observed {
        Observed::Gone => Ok(Release::Gone),
        Observed::Replaced => {
            tracing::warn!(controller = %record.controller, path = %record.address, nqn = %nqn,
                "recorded controller now names another one; left alone");
            Ok(Release::Replaced)
        }
        Observed::Present(c) if !counts(&c.state) => Ok(Release::Gone),
        Observed::Present(_) => match fabrics.disconnect(&record.controller) {
            Ok(()) => {
                tracing::info!(controller = %record.controller, path = %record.address, nqn = %nqn, "disconnected");
                Ok(Release::Disconnected)
            }
            Err(ConnectError::ControllerNotFound { .. }) => Ok(Release::Gone),
            Err(source) => Err(PathError::Disconnect {
                nqn: nqn.to_string(),
                address: record.address.clone(),
                controller: record.controller.clone(),
                source: Box::new(source),
            }),
        },
    }
}

/// A fake kernel for tests here and in the modules built on this one.
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::path::Path;

    use fabric::connect::{classify_errno, FabricsStage};
    use fabric::testing::{FakeController, FakeSysfs};
    use nix::errno::Errno;

    use super::*;

    /// A subsystem a fake target exports at one address.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeExport {
        /// Namespace IDs.
        pub nsids: Vec<u32>,
        /// Host NQNs allowed; empty: any host.
        pub hosts: Vec<String>,
        /// The DH-HMAC-CHAP host secret required, if any.
        pub secret: Option<String>,
    }

    #[derive(Debug, Default)]
    struct State {
        next_instance: u32,
        next_subsys: u32,
        /// address -> nqn -> export
        targets: BTreeMap<String, BTreeMap<String, FakeExport>>,
        /// Addresses that answer connects with this errno.
        failing: BTreeMap<String, Errno>,
        connects: Vec<ConnectOptions>,
        disconnects: Vec<String>,
        /// nqn -> (size in sectors, NGUID as the kernel prints it) of its namespaces.
        namespaces: BTreeMap<String, (u64, Option<String>)>,
    }

    /// Creates and removes controllers in a [`FakeSysfs`] the way the kernel does: a
    /// controller linked into its subsystem (made on first use) with native multipath (a
    /// head device per namespace under the subsystem, hidden paths under the controller);
    /// refuses with the kernel's errnos.
    pub(crate) struct FakeFabrics {
        pub sysfs: FakeSysfs,
        state: RefCell<State>,
    }

    impl FakeFabrics {
        pub(crate) fn new(dir: &Path) -> Self {
            Self {
                sysfs: FakeSysfs::new(dir),
                state: RefCell::new(State::default()),
            }
        }

        pub(crate) fn nvme(&self) -> NvmeSysfs {
            NvmeSysfs::new(self.sysfs.root())
        }

        /// A target at `address` exporting `nqn`.
        pub(crate) fn export(&self, address: &str, nqn: &str, export: FakeExport) {
            let a: TransportAddress = address.parse().expect("address");
            self.state
                .borrow_mut()
                .targets
                .entry(a.to_string())
                .or_default()
                .insert(nqn.to_string(), export);
        }

        /// Connects to `address` fail with `errno` (as the kernel's write would).
        pub(crate) fn fail_at(&self, address: &str, errno: Errno) {
            let a: TransportAddress = address.parse().expect("address");
            self.state.borrow_mut().failing.insert(a.to_string(), errno);
        }

        /// Options of every connect the kernel was asked for.
        pub(crate) fn connects(&self) -> Vec<ConnectOptions> {
            self.state.borrow().connects.clone()
        }

        /// Every controller deleted.
        pub(crate) fn disconnects(&self) -> Vec<String> {
            self.state.borrow().disconnects.clone()
        }

        /// Controller names present in `/sys/class/nvme`.
        pub(crate) fn controller_names(&self) -> Vec<String> {
            self.nvme().controller_names().expect("list controllers")
        }

        /// The namespaces of `nqn` scan with `sectors` and `nguid` (written to the block
        /// devices' `size` and `nguid`); without this they have no size (not ready yet).
        pub(crate) fn namespace_attrs(&self, nqn: &str, sectors: u64, nguid: Option<&str>) {
            self.state
                .borrow_mut()
                .namespaces
                .insert(nqn.to_string(), (sectors, nguid.map(str::to_string)));
        }

        /// The next controller made gets instance `n`.
        pub(crate) fn next_instance(&self, n: u32) {
            self.state.borrow_mut().next_instance = n;
        }

        /// A controller made by someone else (nvme-cli) for `nqn` at `address`, in `state`.
        pub(crate) fn add_existing(&self, name: &str, address: &str, nqn: &str, state: &str) {
            let a: TransportAddress = address.parse().expect("address");
            self.make(name, &a, nqn, state, &[1]);
        }

        fn make(&self, name: &str, a: &TransportAddress, nqn: &str, state: &str, nsids: &[u32]) {
            let ip = a.traddr().expect("ip transport").to_string();
            let port = a.trsvcid().expect("ip transport");
            let ctrl = match a.trtype() {
                TransportType::Tcp => FakeController::tcp(&ip, port, nqn),
                _ => FakeController::rdma(&ip, port, nqn),
            }
            .state(state);
            self.sysfs.add_fabrics_controller(name, &ctrl);
            let subsys = match self
                .nvme()
                .subsystems_by_nqn(&Nqn::new(nqn).expect("nqn"))
                .expect("subsystems")
                .into_iter()
                .next()
            {
                Some(s) => s.name,
                None => {
                    let mut st = self.state.borrow_mut();
                    let s = format!("nvme-subsys{}", st.next_subsys);
                    st.next_subsys += 1;
                    drop(st);
                    self.sysfs.add_subsystem(&s, nqn);
                    s
                }
            };
            self.sysfs.link_controller(&subsys, name);
            let sub_instance = subsys.trim_start_matches("nvme-subsys");
            let ctrl_instance = name.trim_start_matches("nvme");
            for (i, nsid) in nsids.iter().enumerate() {
                let head = format!("nvme{sub_instance}n{}", i + 1);
                let head_dir = self.nvme().root().sys_class_nvme_subsystem().join(&subsys);
                if !head_dir.join(&head).exists() {
                    self.sysfs.add_head_namespace(&subsys, &head, *nsid);
                    let attrs = self.state.borrow().namespaces.get(nqn).cloned();
                    if let Some((sectors, nguid)) = attrs {
                        let dir = head_dir.join(&head);
                        std::fs::write(dir.join("size"), format!("{sectors}\n")).expect("size");
                        if let Some(g) = nguid {
                            std::fs::write(dir.join("nguid"), format!("{g}\n")).expect("nguid");
                        }
                    }
                }
                self.sysfs.add_controller_namespace(
                    name,
                    &format!("nvme{sub_instance}c{ctrl_instance}n{}", i + 1),
                    *nsid,
                );
            }
        }

        fn refuse(opts: &ConnectOptions, errno: Errno) -> ConnectError {
            let target = opts.target();
            match classify_errno(FabricsStage::Write, errno) {
                ConnectFailure::AlreadyConnected => ConnectError::AlreadyConnected { target },
                ConnectFailure::Unreachable => ConnectError::Unreachable { target, errno },
                ConnectFailure::Refused => ConnectError::Refused { target, errno },
                ConnectFailure::OptionsRejected => ConnectError::OptionsRejected { target },
                _ => ConnectError::Os {
                    op: "write connect options to",
                    path: "/dev/nvme-fabrics".into(),
                    target,
                    errno,
                },
            }
        }
    }

    impl Fabrics for FakeFabrics {
        fn discover(&self, opts: &ConnectOptions) -> Result<Vec<Discovered>, DiscoveryError> {
            opts.encode()?;
            let key = opts.address.to_string();
            if let Some(errno) = self.state.borrow().failing.get(&key) {
                return Err(DiscoveryError::from(Self::refuse(opts, *errno)));
            }
            let st = self.state.borrow();
            let Some(target) = st.targets.get(&key) else {
                return Err(DiscoveryError::from(Self::refuse(
                    opts,
                    Errno::EHOSTUNREACH,
                )));
            };
            let host = opts
                .hostnqn
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default();
            // nvmet lists the subsystems on the port that this host may connect to.
            Ok(target
                .iter()
                .filter(|(_, e)| e.hosts.is_empty() || e.hosts.contains(&host))
                .filter_map(|(nqn, _)| {
                    Some(Discovered {
                        nqn: Nqn::new(nqn).ok()?,
                        address: opts.address.clone(),
                    })
                })
                .collect())
        }

        fn connect(&self, opts: &ConnectOptions) -> Result<ConnectedController, ConnectError> {
            // The real client checks the options before the kernel sees them.
            opts.encode()?;
            self.state.borrow_mut().connects.push(opts.clone());
            let key = opts.address.to_string();
            if let Some(errno) = self.state.borrow().failing.get(&key) {
                return Err(Self::refuse(opts, *errno));
            }
            let export = {
                let st = self.state.borrow();
                let Some(target) = st.targets.get(&key) else {
                    return Err(Self::refuse(opts, Errno::EHOSTUNREACH));
                };
                // Unknown subsystem: the target fails the Connect command, the kernel
                // answers EIO.
                let Some(export) = target.get(opts.nqn.as_str()) else {
                    return Err(Self::refuse(opts, Errno::EIO));
                };
                export.clone()
            };
            let hostnqn = opts
                .hostnqn
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default();
            if !export.hosts.is_empty() && !export.hosts.contains(&hostnqn) {
                return Err(Self::refuse(opts, Errno::EIO));
            }
            if export.secret.is_some() && export.secret != opts.dhchap_secret {
                return Err(Self::refuse(opts, Errno::EKEYREJECTED));
            }
            if !opts.duplicate_connect {
                let dup = self
                    .nvme()
                    .controllers_for(&opts.nqn)
                    .expect("controllers")
                    .iter()
                    .any(|c| {
                        // The kernel compares the host NQN too.
                        let host = extra_attr(c, "hostnqn");
                        c.transport_address().as_ref() == Some(&opts.address)
                            && counts(&c.state)
                            && host.is_none_or(|h| {
                                Some(h) == opts.hostnqn.as_ref().map(|n| n.to_string())
                            })
                    });
                if dup {
                    return Err(Self::refuse(opts, Errno::EALREADY));
                }
            }
            let instance = {
                let mut st = self.state.borrow_mut();
                let names = self.nvme().controller_names().expect("list");
                while names.contains(&format!("nvme{}", st.next_instance)) {
                    st.next_instance += 1;
                }
                let i = st.next_instance;
                st.next_instance += 1;
                i
            };
            let name = format!("nvme{instance}");
            self.make(
                &name,
                &opts.address,
                opts.nqn.as_str(),
                "live",
                &export.nsids,
            );
            Ok(ConnectedController {
                instance,
                cntlid: 1,
            })
        }

        fn disconnect(&self, name: &str) -> Result<(), ConnectError> {
            let root = self.sysfs.root();
            let class = root.sys_class_nvme().join(name);
            let Ok(dev) = std::fs::canonicalize(&class) else {
                return Err(ConnectError::ControllerNotFound {
                    name: name.to_string(),
                    path: class.join("delete_controller"),
                });
            };
            self.state.borrow_mut().disconnects.push(name.to_string());
            let nvme = self.nvme();
            for s in nvme.subsystems().expect("subsystems") {
                if !s.controllers.iter().any(|c| c == name) {
                    continue;
                }
                let sdir = std::fs::canonicalize(&s.sysfs_path).expect("subsystem dir");
                std::fs::remove_file(sdir.join(name)).expect("unlink controller");
                if s.controllers.len() == 1 {
                    // The last path went: the kernel removes the heads and the subsystem.
                    std::fs::remove_dir_all(&sdir).expect("remove subsystem");
                    std::fs::remove_file(&s.sysfs_path).expect("unlink subsystem");
                }
            }
            std::fs::remove_dir_all(&dev).expect("remove controller");
            std::fs::remove_file(&class).expect("unlink class entry");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use nix::errno::Errno;

    use super::fake::{FakeExport, FakeFabrics};
    use super::*;

    const VOL: &str = "nqn.2014-08.com.example:vol1";
    const A1: &str = "rdma://192.0.2.1:4420";
    const A2: &str = "rdma://192.0.2.2:4420";
    /// Valid `nvme gen-dhchap-key` keys (fabric refuses a key whose length or CRC is wrong).
    const SECRET: &str = crate::attach::tests::SECRET;

    fn host() -> HostIdentity {
        HostIdentity {
            hostnqn: Nqn::new("nqn.2014-08.com.example:host1").expect("nqn"),
            hostid: uuid::Uuid::from_str("f81d4fae-7dec-11d0-a765-00a0c91e6bf6").expect("uuid"),
        }
    }

    fn nqn() -> Nqn {
        Nqn::new(VOL).expect("nqn")
    }

    fn addr(s: &str) -> TransportAddress {
        s.parse().expect("address")
    }

    fn path_opts(secret: Option<&str>) -> PathOptions {
        PathOptions {
            host: host(),
            dhchap_secret: secret.map(str::to_string),
            dhchap_ctrl_secret: None,
            nr_io_queues: None,
        }
    }

    fn opts(address: &str, secret: Option<&str>) -> ConnectOptions {
        connect_options(
            &ConnectDefaults::default(),
            &nqn(),
            &addr(address),
            &path_opts(secret),
        )
    }

    fn bed() -> (tempfile::TempDir, FakeFabrics) {
        let d = tempfile::tempdir().expect("tempdir");
        let f = FakeFabrics::new(d.path());
        for a in [A1, A2] {
            f.export(
                a,
                VOL,
                FakeExport {
                    nsids: vec![1],
                    hosts: vec!["nqn.2014-08.com.example:host1".into()],
                    secret: Some(SECRET.into()),
                },
            );
        }
        (d, f)
    }

    fn attach(
        f: &FakeFabrics,
        address: &str,
        secret: Option<&str>,
    ) -> Result<PathStatus, PathError> {
        attach_path(f, &f.nvme(), &opts(address, secret), &host())
    }

    #[test]
    fn connect_options_are_the_config_defaults_plus_the_request() {
        let defaults = ConnectDefaults {
            nr_io_queues: Some(8),
            ..ConnectDefaults::default()
        };
        let mut p = path_opts(Some(SECRET));
        p.dhchap_ctrl_secret = Some(crate::attach::tests::OTHER_SECRET.into());
        let o = connect_options(&defaults, &nqn(), &addr(A1), &p);
        assert_eq!(o.ctrl_loss_tmo, Some(600));
        assert_eq!(o.reconnect_delay, Some(5));
        assert_eq!(o.fast_io_fail_tmo, Some(-1));
        assert_eq!(o.keep_alive_tmo, Some(5));
        assert_eq!(o.nr_io_queues, Some(8));
        assert_eq!(o.hostnqn, Some(host().hostnqn));
        assert_eq!(o.hostid, Some(host().hostid));
        assert_eq!(o.dhchap_secret.as_deref(), Some(SECRET));
        assert!(!o.duplicate_connect);
        o.encode().expect("the kernel takes them");
        p.nr_io_queues = Some(2);
        let o = connect_options(&defaults, &nqn(), &addr(A1), &p);
        assert_eq!(o.nr_io_queues, Some(2), "the request wins");
        let o = connect_options(&defaults, &nqn(), &TransportAddress::loopback(), &p);
        assert_eq!((o.ctrl_loss_tmo, o.reconnect_delay), (None, None));
        o.encode().expect("loop takes no reconnect options");
        assert!(
            !format!("{p:?}").contains("c2VjcmV0"),
            "secrets are not printed"
        );
    }

    #[test]
    fn a_new_path_is_connected_and_reported_as_made() {
        let (_d, f) = bed();
        f.next_instance(3);
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        assert_eq!(
            p,
            PathStatus {
                address: addr(A1),
                controller: "nvme3".into(),
                made: true,
                state: ControllerState::Live,
            }
        );
        assert_eq!(f.controller_names(), vec!["nvme3"]);
        let c = f.nvme().controller("nvme3").expect("in sysfs");
        assert_eq!(c.subsysnqn, VOL);
        let sent = f.connects();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].ctrl_loss_tmo, Some(600));
        assert!(!sent[0].duplicate_connect);
        assert!(p.record().made);
    }

    #[test]
    fn a_controller_already_connected_to_the_same_subsystem_and_address_is_reused() {
        let (_d, f) = bed();
        f.add_existing("nvme0", A1, VOL, "live");
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        assert_eq!(p.controller, "nvme0");
        assert!(!p.made);
        assert!(f.connects().is_empty(), "no connect was attempted");
        assert_eq!(f.controller_names(), vec!["nvme0"]);
    }

    #[test]
    fn a_reconnecting_controller_is_reused_with_its_state_and_a_deleting_one_is_not() {
        let (_d, f) = bed();
        f.add_existing("nvme0", A1, VOL, "connecting");
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        assert_eq!((p.controller.as_str(), p.made), ("nvme0", false));
        assert_eq!(p.state, ControllerState::Connecting);
        f.add_existing("nvme1", A2, VOL, "deleting");
        let p = attach(&f, A2, Some(SECRET)).expect("attach");
        assert!(p.made);
        assert_ne!(p.controller, "nvme1");
    }

    #[test]
    fn controllers_of_another_address_subsystem_or_host_are_not_reused() {
        let (_d, f) = bed();
        f.add_existing("nvme0", "rdma://192.0.2.1:4421", VOL, "live");
        f.add_existing("nvme1", A1, "nqn.2014-08.com.example:other", "live");
        f.add_existing("nvme2", A2, VOL, "live");
        let dir = f.nvme().controller("nvme2").expect("nvme2").sysfs_path;
        std::fs::write(
            dir.join("hostnqn"),
            "nqn.2014-08.com.example:someone-else\n",
        )
        .expect("hostnqn");
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        assert!(p.made, "{p:?}");
        let p = attach(&f, A2, Some(SECRET)).expect("attach");
        assert!(p.made, "another host's controller is not ours: {p:?}");
        assert_eq!(f.connects().len(), 2);
    }

    #[test]
    fn refusals_name_the_path_and_classify_the_cause() {
        let (_d, f) = bed();
        f.export(
            "rdma://192.0.2.3:4420",
            "nqn.2014-08.com.example:open",
            FakeExport {
                nsids: vec![1],
                hosts: vec![],
                secret: None,
            },
        );
        f.fail_at("rdma://192.0.2.4:4420", Errno::ETIMEDOUT);
        let cases: [(&str, Option<&str>, PathFailure); 5] = [
            // Nothing listens there.
            (
                "rdma://192.0.2.9:4420",
                Some(SECRET),
                PathFailure::Unreachable,
            ),
            (
                "rdma://192.0.2.4:4420",
                Some(SECRET),
                PathFailure::Unreachable,
            ),
            // A target, but not this subsystem.
            ("rdma://192.0.2.3:4420", Some(SECRET), PathFailure::Refused),
            // Wrong secret / no secret.
            (
                A1,
                Some(crate::attach::tests::OTHER_SECRET),
                PathFailure::Refused,
            ),
            // A secret the kernel would not take at all.
            (A1, Some("hunter2"), PathFailure::InvalidOptions),
        ];
        for (a, secret, want) in cases {
            let e = attach(&f, a, secret).expect_err("refused");
            assert_eq!(e.failure(), want, "{a}: {e}");
            assert!(e.failure().is_callers_mistake(), "{a}: {e}");
            assert_eq!(e.address(), &addr(a));
            let msg = e.to_string();
            assert!(
                msg.contains(&addr(a).to_string()) && msg.contains(VOL),
                "{msg}"
            );
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        assert!(f.controller_names().is_empty(), "nothing was left behind");
    }

    #[test]
    fn a_host_the_subsystem_does_not_allow_is_refused() {
        let (_d, f) = bed();
        let mut p = path_opts(Some(SECRET));
        p.host.hostnqn = Nqn::new("nqn.2014-08.com.example:intruder").expect("nqn");
        let o = connect_options(&ConnectDefaults::default(), &nqn(), &addr(A1), &p);
        let e = attach_path(&f, &f.nvme(), &o, &p.host).expect_err("refused");
        assert_eq!(e.failure(), PathFailure::Refused);
        assert!(f.controller_names().is_empty());
    }

    #[test]
    fn node_side_failures_are_not_the_callers_mistake() {
        for (errno, want) in [
            (Errno::EINVAL, PathFailure::OptionsRejected),
            (Errno::ENOMEM, PathFailure::Other),
        ] {
            let (_d, f) = bed();
            f.fail_at(A1, errno);
            let e = attach(&f, A1, Some(SECRET)).expect_err("fails");
            assert_eq!(e.failure(), want, "{e}");
            assert!(!e.failure().is_callers_mistake());
        }
        let missing = ConnectError::ModuleNotLoaded {
            path: "/dev/nvme-fabrics".into(),
            errno: Errno::ENOENT,
        };
        assert_eq!(PathFailure::of(&missing), PathFailure::ModuleNotLoaded);
        assert!(!PathFailure::ModuleNotLoaded.is_callers_mistake());
        assert_eq!(PathFailure::ModuleNotLoaded.as_str(), "module_not_loaded");
    }

    #[test]
    fn a_made_controller_nobody_else_uses_is_disconnected_and_leaves_nothing() {
        let (_d, f) = bed();
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        assert!(!f.nvme().subsystems().expect("subsystems").is_empty());
        let r = detach_path(&f, &f.nvme(), &nqn(), &p.record(), &BTreeSet::new()).expect("detach");
        assert_eq!(r, Release::Disconnected);
        assert_eq!(f.disconnects(), vec![p.controller.clone()]);
        assert!(f.controller_names().is_empty());
        assert!(f.nvme().subsystems().expect("subsystems").is_empty());
        // Detaching again finds it gone and does not touch the kernel.
        let r = detach_path(&f, &f.nvme(), &nqn(), &p.record(), &BTreeSet::new()).expect("again");
        assert_eq!(r, Release::Gone);
        assert_eq!(f.disconnects().len(), 1);
    }

    #[test]
    fn reused_and_shared_controllers_are_kept() {
        let (_d, f) = bed();
        f.add_existing("nvme0", A1, VOL, "live");
        let reused = attach(&f, A1, Some(SECRET)).expect("attach");
        let made = attach(&f, A2, Some(SECRET)).expect("attach");
        let none = BTreeSet::new();
        assert_eq!(
            detach_path(&f, &f.nvme(), &nqn(), &reused.record(), &none).expect("detach"),
            Release::KeptNotMade
        );
        let others = BTreeSet::from([made.controller.clone()]);
        assert_eq!(
            detach_path(&f, &f.nvme(), &nqn(), &made.record(), &others).expect("detach"),
            Release::KeptInUse
        );
        assert!(f.disconnects().is_empty());
        assert_eq!(f.controller_names().len(), 2);
    }

    #[test]
    fn a_recycled_controller_name_is_never_disconnected() {
        let (_d, f) = bed();
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        f.disconnect(&p.controller).expect("gone, e.g. a reboot");
        // The kernel gives the number to a controller of another subsystem.
        f.add_existing(&p.controller, A1, "nqn.2014-08.com.example:other", "live");
        let r = detach_path(&f, &f.nvme(), &nqn(), &p.record(), &BTreeSet::new()).expect("detach");
        assert_eq!(r, Release::Replaced);
        assert_eq!(f.controller_names(), vec![p.controller.clone()]);
        assert_eq!(
            observe(&f.nvme(), &nqn(), &p.record()).expect("observe"),
            Observed::Replaced
        );
    }

    #[test]
    fn observe_tells_present_from_gone() {
        let (_d, f) = bed();
        let p = attach(&f, A1, Some(SECRET)).expect("attach");
        match observe(&f.nvme(), &nqn(), &p.record()).expect("observe") {
            Observed::Present(c) => assert_eq!(c.state, ControllerState::Live),
            other => panic!("{other:?}"),
        }
        f.disconnect(&p.controller).expect("disconnect");
        assert_eq!(
            observe(&f.nvme(), &nqn(), &p.record()).expect("observe"),
            Observed::Gone
        );
    }

    #[test]
    fn two_paths_of_one_subsystem_share_its_head_device() {
        let (_d, f) = bed();
        let p1 = attach(&f, A1, Some(SECRET)).expect("path 1");
        let p2 = attach(&f, A2, Some(SECRET)).expect("path 2");
        assert_ne!(p1.controller, p2.controller);
        let subs = f.nvme().subsystems_by_nqn(&nqn()).expect("subsystems");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].controllers.len(), 2);
        assert_eq!(
            f.nvme()
                .find_block_devices_for(&nqn())
                .expect("devices")
                .len(),
            1,
            "one head device for both paths"
        );
        // Losing one path keeps the subsystem and its head.
        detach_path(&f, &f.nvme(), &nqn(), &p1.record(), &BTreeSet::new()).expect("detach");
        assert_eq!(
            f.nvme()
                .find_block_devices_for(&nqn())
                .expect("devices")
                .len(),
            1
        );
    }
}
