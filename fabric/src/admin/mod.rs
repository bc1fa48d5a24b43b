//! NVMe admin commands as typed calls over the passthrough ioctl.
//!
//! Layers, bottom up:
//! * [`passthru`]: the uapi struct, the ioctl, [`AdminCommand`] and the
//!   [`AdminPassthru`] trait (kernel implementation: [`NvmeCharDevice`]);
//! * [`identify`], [`ns_mgmt`], [`virt_mgmt`], [`log_page`]: pure encoding
//!   of each command and decoding of the structures it returns;
//! * [`status`]: the completion status and its names;
//! * [`AdminDevice`] (here): typed methods that tie them together, check
//!   the status and attach the device and command to every error.

pub mod identify;
pub mod log_page;
pub mod ns_mgmt;
pub mod passthru;
pub mod status;
pub mod virt_mgmt;

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::DecodeError;
use crate::root::SysRoot;

pub use identify::{
    Cns, ControllerType, IdentifyController, IdentifyNamespace, LbaFormat, NamespaceId,
    NvmeVersion, PrimaryControllerCapabilities, SecondaryController,
};
pub use log_page::{ErrorLogEntry, LogPageRequest, SmartLog};
pub use ns_mgmt::{Attachment, NamespaceCreate};
pub use passthru::{AdminCommand, AdminPassthru, NvmeCharDevice, NvmePassthruCmd, SubmitError};
pub use status::{NvmeStatus, StatusCode};
pub use virt_mgmt::{ResourceType, VirtAction};

use identify::{
    decode_controller_list, decode_namespace_list, decode_secondary_controller_list,
    identify_command, CONTROLLER_LIST_MAX, IDENTIFY_DATA_LEN, SECONDARY_LIST_MAX,
};
use log_page::{decode_error_log, lid, ERROR_LOG_ENTRY_LEN, NSID_ALL, SMART_LOG_LEN};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The controller device could not be opened.
    #[error("open {}: {source}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is not a character device, so not an NVMe controller.
    #[error("{} is not a character device", path.display())]
    NotACharDevice {
        /// The path.
        path: PathBuf,
    },
    /// Not a controller name of the form `nvmeN`.
    #[error("{0:?} is not a controller name of the form nvmeN")]
    InvalidControllerName(String),
    /// The controller completed the command with an error status.
    #[error("{device}: {command} failed: {status}")]
    Status {
        /// The device.
        device: String,
        /// The command.
        command: &'static str,
        /// The completion status.
        status: NvmeStatus,
    },
    /// The kernel refused the command or could not deliver it.
    #[error("{device}: {command}: {}", errno.desc())]
    Os {
        /// The device.
        device: String,
        /// The command.
        command: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The returned data is malformed.
    #[error("{device}: {command}: {source}")]
    Decode {
        /// The device.
        device: String,
        /// The command.
        command: &'static str,
        /// What is wrong with the data.
        source: DecodeError,
    },
    /// The request cannot be encoded (too many IDs, bad length, ...).
    #[error("{device}: {command}: {reason}")]
    InvalidRequest {
        /// The device.
        device: String,
        /// The command.
        command: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl AdminError {
    /// The NVMe status code, if the controller failed the command; lets
    /// callers treat e.g. "Namespace Already Attached" as success.
    pub fn status_code(&self) -> Option<StatusCode> {
        match self {
            AdminError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// The largest single data transfer used when a log is read in pieces.
/// 4 KiB fits every controller's MDTS.
pub const DEFAULT_MAX_TRANSFER: usize = 4096;

/// A controller's admin queue, reached through an [`AdminPassthru`].
#[derive(Debug)]
pub struct AdminDevice<P: AdminPassthru = NvmeCharDevice> {
    passthru: P,
    max_transfer: usize,
}

impl AdminDevice<NvmeCharDevice> {
    /// Opens the controller character device at `path`.
    pub fn open(path: &Path) -> Result<Self, AdminError> {
        Ok(Self::new(NvmeCharDevice::open(path)?))
    }

    /// Opens `<root>/dev/<name>` for controller `name` (`nvmeN`).
    pub fn open_controller(root: &SysRoot, name: &str) -> Result<Self, AdminError> {
        if !is_controller_name(name) {
            return Err(AdminError::InvalidControllerName(name.to_string()));
        }
        Self::open(&root.dev(name))
    }
}

/// Opens the admin device of a controller by name. [`SysRoot`] opens the
/// real `/dev/nvmeN`; tests supply fakes.
pub trait AdminOpen {
    /// The passthrough the opened device uses.
    type Passthru: AdminPassthru;
    /// Opens controller `name` (`nvmeN`).
    fn open_admin(&self, name: &str) -> Result<AdminDevice<Self::Passthru>, AdminError>;
}

impl AdminOpen for SysRoot {
    type Passthru = NvmeCharDevice;
    fn open_admin(&self, name: &str) -> Result<AdminDevice<NvmeCharDevice>, AdminError> {
        AdminDevice::open_controller(self, name)
    }
}

fn is_controller_name(name: &str) -> bool {
    name.strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl<P: AdminPassthru> AdminDevice<P> {
    /// Typed admin commands over `passthru`.
    pub fn new(passthru: P) -> Self {
        Self {
            passthru,
            max_transfer: DEFAULT_MAX_TRANSFER,
        }
    }

    /// Limits each log page transfer to `bytes` (rounded down to a multiple
    /// of 4, at least 4), e.g. to the controller's MDTS.
    pub fn with_max_transfer(mut self, bytes: usize) -> Self {
        self.max_transfer = (bytes / 4 * 4).max(4);
        self
    }

    /// The underlying passthrough.
    pub fn passthru(&self) -> &P {
        &self.passthru
    }

    /// Executes one raw command; returns completion dword 0.
    pub fn submit(&self, cmd: &AdminCommand, data: &mut [u8]) -> Result<u32, AdminError> {
        self.passthru.submit(cmd, data).map_err(|e| match e {
            SubmitError::Status(status) => AdminError::Status {
                device: self.passthru.describe(),
                command: cmd.name(),
                status,
            },
            SubmitError::Os(errno) => AdminError::Os {
                device: self.passthru.describe(),
                command: cmd.name(),
                errno,
            },
        })
    }

    fn decode_err(&self, command: &'static str) -> impl Fn(DecodeError) -> AdminError + '_ {
        move |source| AdminError::Decode {
            device: self.passthru.describe(),
            command,
            source,
        }
    }

    fn invalid(&self, command: &'static str, reason: impl Into<String>) -> AdminError {
        AdminError::InvalidRequest {
            device: self.passthru.describe(),
            command,
            reason: reason.into(),
        }
    }

    fn identify(&self, cns: Cns, nsid: u32, cntid: u16) -> Result<Vec<u8>, AdminError> {
        let mut buf = vec![0u8; IDENTIFY_DATA_LEN];
        self.submit(&identify_command(cns, nsid, cntid), &mut buf)?;
        Ok(buf)
    }

    /// Identify Controller (CNS 01h).
    pub fn identify_controller(&self) -> Result<IdentifyController, AdminError> {
        let buf = self.identify(Cns::Controller, 0, 0)?;
        IdentifyController::decode(&buf).map_err(self.decode_err("Identify Controller"))
    }

    /// Identify Namespace (CNS 00h) of an active namespace.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, AdminError> {
        let buf = self.identify(Cns::Namespace, nsid, 0)?;
        IdentifyNamespace::decode(&buf).map_err(self.decode_err("Identify Namespace"))
    }

    /// The Namespace Identification Descriptors (CNS 03h: EUI-64, NGUID, UUID, CSI) of a
    /// namespace active on this controller.
    pub fn namespace_descriptors(&self, nsid: u32) -> Result<Vec<NamespaceId>, AdminError> {
        let buf = self.identify(Cns::NamespaceDescriptors, nsid, 0)?;
        identify::decode_namespace_descriptors(&buf)
            .map_err(self.decode_err("Namespace Identification Descriptor list"))
    }

    /// Identify Namespace (CNS 11h) of an allocated namespace, attached to a controller or
    /// not: what a PF reads of the namespaces it attaches to its VFs.
    pub fn identify_allocated_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, AdminError> {
        let buf = self.identify(Cns::AllocatedNamespace, nsid, 0)?;
        IdentifyNamespace::decode(&buf).map_err(self.decode_err("Identify Namespace (allocated)"))
    }

    /// Every active NSID (CNS 02h), reading further lists while one is full.
    pub fn active_namespaces(&self) -> Result<Vec<u32>, AdminError> {
        self.namespace_list(Cns::ActiveNamespaceList)
    }

    /// Every allocated NSID, attached or not (CNS 10h).
    pub fn allocated_namespaces(&self) -> Result<Vec<u32>, AdminError> {
        self.namespace_list(Cns::AllocatedNamespaceList)
    }

    fn namespace_list(&self, cns: Cns) -> Result<Vec<u32>, AdminError> {
        const PER_LIST: usize = IDENTIFY_DATA_LEN / 4;
        let mut all = Vec::new();
        let mut after = 0u32;
        loop {
            let buf = self.identify(cns, after, 0)?;
            let ids = decode_namespace_list(&buf).map_err(self.decode_err("Identify"))?;
            // Each list holds NSIDs greater than `after`, ascending; anything
            // else would make the paging loop forever.
            let mut prev = after;
            for &id in &ids {
                if id <= prev || id == NSID_ALL {
                    return Err(self.decode_err("Identify")(DecodeError::InvalidField {
                        structure: "Namespace List",
                        field: "NSID order",
                        value: u64::from(id),
                    }));
                }
                prev = id;
            }
            all.extend_from_slice(&ids);
            if ids.len() < PER_LIST {
                return Ok(all);
            }
            after = prev;
        }
    }

    /// Controllers attached to namespace `nsid` (CNS 12h).
    pub fn namespace_controllers(&self, nsid: u32) -> Result<Vec<u16>, AdminError> {
        self.controller_list(Cns::NamespaceControllerList, nsid)
    }

    /// Every controller in the NVM subsystem (CNS 13h).
    pub fn subsystem_controllers(&self) -> Result<Vec<u16>, AdminError> {
        self.controller_list(Cns::SubsystemControllerList, 0)
    }

    fn controller_list(&self, cns: Cns, nsid: u32) -> Result<Vec<u16>, AdminError> {
        let mut all = Vec::new();
        let mut from = 0u16;
        loop {
            let buf = self.identify(cns, nsid, from)?;
            let ids = decode_controller_list(&buf).map_err(self.decode_err("Identify"))?;
            let last = check_ascending(&ids, from).map_err(|v| {
                self.decode_err("Identify")(DecodeError::InvalidField {
                    structure: "Controller List",
                    field: "controller ID order",
                    value: u64::from(v),
                })
            })?;
            all.extend_from_slice(&ids);
            match last {
                Some(l) if ids.len() == CONTROLLER_LIST_MAX && l < u16::MAX => from = l + 1,
                _ => return Ok(all),
            }
        }
    }

    /// Primary Controller Capabilities (CNS 14h) of controller `cntlid`.
    pub fn primary_controller_capabilities(
        &self,
        cntlid: u16,
    ) -> Result<PrimaryControllerCapabilities, AdminError> {
        let buf = self.identify(Cns::PrimaryControllerCapabilities, 0, cntlid)?;
        PrimaryControllerCapabilities::decode(&buf)
            .map_err(self.decode_err("Identify Primary Controller Capabilities"))
    }

    /// Every secondary controller (CNS 15h), reading further lists while
    /// one is full.
    pub fn secondary_controllers(&self) -> Result<Vec<SecondaryController>, AdminError> {
        let mut all = Vec::new();
        let mut from = 0u16;
        loop {
            let buf = self.identify(Cns::SecondaryControllerList, 0, from)?;
            let list = decode_secondary_controller_list(&buf)
                .map_err(self.decode_err("Identify Secondary Controller List"))?;
            let ids: Vec<u16> = list.iter().map(|s| s.scid).collect();
            let last = check_ascending(&ids, from).map_err(|v| {
                self.decode_err("Identify Secondary Controller List")(DecodeError::InvalidField {
                    structure: "Secondary Controller List",
                    field: "SCID order",
                    value: u64::from(v),
                })
            })?;
            all.extend(list);
            match last {
                Some(l) if ids.len() == SECONDARY_LIST_MAX && l < u16::MAX => from = l + 1,
                _ => return Ok(all),
            }
        }
    }

    /// Creates a namespace and returns its NSID. It is not attached to any
    /// controller yet.
    pub fn create_namespace(&self, spec: &NamespaceCreate) -> Result<u32, AdminError> {
        if spec.nsze == 0 || spec.ncap > spec.nsze {
            return Err(self.invalid(
                "Namespace Management",
                format!(
                    "namespace size must be non-zero and capacity ({}) at most size ({})",
                    spec.ncap, spec.nsze
                ),
            ));
        }
        let mut data = spec.encode();
        let nsid = self.submit(&spec.command(), &mut data)?;
        if nsid == 0 || nsid == NSID_ALL {
            return Err(self.decode_err("Namespace Management")(
                DecodeError::InvalidField {
                    structure: "Namespace Management completion",
                    field: "created NSID",
                    value: u64::from(nsid),
                },
            ));
        }
        Ok(nsid)
    }

    /// Deletes namespace `nsid`.
    pub fn delete_namespace(&self, nsid: u32) -> Result<(), AdminError> {
        self.submit(&ns_mgmt::delete_namespace_command(nsid), &mut [])?;
        Ok(())
    }

    /// Attaches namespace `nsid` to `controllers`.
    pub fn attach_namespace(&self, nsid: u32, controllers: &[u16]) -> Result<(), AdminError> {
        self.attachment(nsid, Attachment::Attach, controllers)
    }

    /// Detaches namespace `nsid` from `controllers`.
    pub fn detach_namespace(&self, nsid: u32, controllers: &[u16]) -> Result<(), AdminError> {
        self.attachment(nsid, Attachment::Detach, controllers)
    }

    fn attachment(&self, nsid: u32, sel: Attachment, ids: &[u16]) -> Result<(), AdminError> {
        let mut data = ns_mgmt::encode_controller_list(ids).ok_or_else(|| {
            self.invalid(
                "Namespace Attachment",
                format!(
                    "{} controllers, a controller list holds at most 2047",
                    ids.len()
                ),
            )
        })?;
        self.submit(&ns_mgmt::attachment_command(nsid, sel), &mut data)?;
        Ok(())
    }

    /// Virtualization Management; returns completion dword 0 (for
    /// allocations, the number of resources actually allocated in bits
    /// 15:0).
    pub fn virt_mgmt(
        &self,
        action: VirtAction,
        rt: ResourceType,
        cntlid: u16,
        nr: u16,
    ) -> Result<u32, AdminError> {
        self.submit(
            &virt_mgmt::virt_mgmt_command(action, rt, cntlid, nr),
            &mut [],
        )
    }

    /// Gives secondary controller `cntlid` `nr` flexible resources of type
    /// `rt` (the controller must be offline).
    pub fn assign_secondary_resources(
        &self,
        cntlid: u16,
        rt: ResourceType,
        nr: u16,
    ) -> Result<u32, AdminError> {
        self.virt_mgmt(VirtAction::SecondaryAssign, rt, cntlid, nr)
    }

    /// Takes secondary controller `cntlid` online.
    pub fn set_secondary_online(&self, cntlid: u16) -> Result<(), AdminError> {
        self.virt_mgmt(VirtAction::SecondaryOnline, ResourceType::Queue, cntlid, 0)
            .map(drop)
    }

    /// Takes secondary controller `cntlid` offline.
    pub fn set_secondary_offline(&self, cntlid: u16) -> Result<(), AdminError> {
        self.virt_mgmt(VirtAction::SecondaryOffline, ResourceType::Queue, cntlid, 0)
            .map(drop)
    }

    /// Reads `req.len` bytes of a log from `req.offset`, in transfers of at
    /// most the configured maximum, each at its own offset (LPOL/LPOU).
    pub fn read_log(&self, req: &LogPageRequest) -> Result<Vec<u8>, AdminError> {
        let mut out = vec![0u8; req.len];
        let mut done = 0usize;
        while done < req.len {
            let len = (req.len - done).min(self.max_transfer);
            let offset = req
                .offset
                .checked_add(done as u64)
                .ok_or_else(|| self.invalid("Get Log Page", "log offset overflows 64 bits"))?;
            let piece = LogPageRequest {
                offset,
                len,
                ..*req
            };
            let cmd = piece
                .command()
                .map_err(|e| self.invalid("Get Log Page", e.to_string()))?;
            self.submit(&cmd, &mut out[done..done + len])?;
            done += len;
        }
        Ok(out)
    }

    /// SMART / Health Information for the whole controller.
    pub fn smart_log(&self) -> Result<SmartLog, AdminError> {
        let buf = self.read_log(&LogPageRequest::new(lid::SMART, NSID_ALL, SMART_LOG_LEN))?;
        SmartLog::decode(&buf).map_err(self.decode_err("Get Log Page (SMART)"))
    }

    /// The newest `entries` Error Information log entries that are in use
    /// (the controller keeps ELPE + 1 of them).
    pub fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>, AdminError> {
        if entries == 0 {
            return Ok(Vec::new());
        }
        let len = entries
            .checked_mul(ERROR_LOG_ENTRY_LEN)
            .ok_or_else(|| self.invalid("Get Log Page", "too many error log entries"))?;
        let buf = self.read_log(&LogPageRequest::new(lid::ERROR, 0, len))?;
        decode_error_log(&buf).map_err(self.decode_err("Get Log Page (Error Information)"))
    }
}

/// Checks that `ids` ascend from `from`; returns the last one, or the first
/// out-of-order ID as the error.
fn check_ascending(ids: &[u16], from: u16) -> Result<Option<u16>, u16> {
    let mut prev: Option<u16> = None;
    for &id in ids {
        let ok = match prev {
            None => id >= from,
            Some(p) => id > p,
        };
        if !ok {
            return Err(id);
        }
        prev = Some(id);
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeAdmin;

    fn dev(fake: FakeAdmin) -> AdminDevice<FakeAdmin> {
        AdminDevice::new(fake)
    }

    #[test]
    fn nvme_status_becomes_a_typed_error_naming_device_command_and_code() {
        let d = dev(FakeAdmin::new(|_, _| {
            Err(SubmitError::Status(NvmeStatus::from_ioctl(0x4118)))
        }));
        let err = d.attach_namespace(1, &[2]).unwrap_err();
        assert_eq!(
            err.status_code(),
            Some(StatusCode::NamespaceAlreadyAttached)
        );
        assert_eq!(
            err.to_string(),
            "fake-nvme: Namespace Attachment failed: Namespace Already Attached \
             (SCT 0x1, SC 0x18, do not retry)"
        );
    }

    #[test]
    fn an_allocated_namespace_is_identified_with_cns_11h_and_its_nsid() {
        let d = dev(FakeAdmin::new(|cmd, data| {
            data[0..8].copy_from_slice(&2048u64.to_le_bytes());
            data[128 + 2] = 12; // LBA format 0: 4096-byte blocks
            Ok(cmd.cdw10)
        }));
        let ns = d.identify_allocated_namespace(3).expect("identify");
        assert_eq!((ns.nsze, ns.block_size()), (2048, Some(4096)));
        let cmd = d.passthru().commands()[0];
        assert_eq!((cmd.opcode, cmd.cdw10, cmd.nsid), (0x06, 0x11, 3));
    }

    #[test]
    fn errno_becomes_a_typed_error_with_its_text() {
        let d = dev(FakeAdmin::new(|_, _| Err(SubmitError::Os(Errno::EACCES))));
        let err = d.identify_controller().unwrap_err();
        assert!(matches!(
            err,
            AdminError::Os {
                errno: Errno::EACCES,
                ..
            }
        ));
        assert_eq!(err.status_code(), None);
        assert!(err.to_string().contains("Identify"), "{err}");
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }

    #[test]
    fn identify_controller_sends_cns_1_and_decodes_the_reply() {
        let fake = FakeAdmin::new(|cmd, data| {
            assert_eq!((cmd.opcode, cmd.cdw10, data.len()), (0x06, 0x01, 4096));
            data[78..80].copy_from_slice(&7u16.to_le_bytes());
            data[768..772].copy_from_slice(b"nqn.");
            Ok(0)
        });
        let c = dev(fake).identify_controller().unwrap();
        assert_eq!(c.cntlid, 7);
        assert_eq!(c.subnqn, "nqn.");
    }

    #[test]
    fn active_namespaces_pages_through_full_lists() {
        let fake = FakeAdmin::new(|cmd, data| {
            assert_eq!(cmd.cdw10 & 0xff, 0x02);
            // NSIDs 1..=1500: first list 1..=1024, second 1025..=1500.
            let start = cmd.nsid + 1;
            for (i, id) in (start..=1500).take(1024).enumerate() {
                data[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
            }
            Ok(0)
        });
        let d = dev(fake);
        let ids = d.active_namespaces().unwrap();
        assert_eq!(ids.len(), 1500);
        assert_eq!(ids[1024], 1025);
        let nsids: Vec<u32> = d.passthru().commands().iter().map(|c| c.nsid).collect();
        assert_eq!(nsids, vec![0, 1024]);
    }

    #[test]
    fn namespace_list_out_of_order_is_a_decode_error_not_a_loop() {
        let fake = FakeAdmin::new(|_, data| {
            data[0..4].copy_from_slice(&5u32.to_le_bytes());
            data[4..8].copy_from_slice(&3u32.to_le_bytes());
            Ok(0)
        });
        let err = dev(fake).allocated_namespaces().unwrap_err();
        assert!(matches!(err, AdminError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn namespace_controllers_uses_cns_12_with_the_nsid() {
        let fake = FakeAdmin::new(|cmd, data| {
            assert_eq!((cmd.cdw10, cmd.nsid), (0x12, 9));
            data[0..2].copy_from_slice(&2u16.to_le_bytes());
            data[2..4].copy_from_slice(&1u16.to_le_bytes());
            data[4..6].copy_from_slice(&3u16.to_le_bytes());
            Ok(0)
        });
        assert_eq!(dev(fake).namespace_controllers(9).unwrap(), vec![1, 3]);
    }

    #[test]
    fn subsystem_controllers_uses_cns_13() {
        let fake = FakeAdmin::new(|cmd, data| {
            assert_eq!((cmd.cdw10, cmd.nsid), (0x13, 0));
            data[0..2].copy_from_slice(&1u16.to_le_bytes());
            data[2..4].copy_from_slice(&0x41u16.to_le_bytes());
            Ok(0)
        });
        assert_eq!(dev(fake).subsystem_controllers().unwrap(), vec![0x41]);
    }

    #[test]
    fn primary_caps_and_secondary_list_use_cns_14_and_15() {
        let fake = FakeAdmin::new(|cmd, data| {
            match cmd.cdw10 & 0xff {
                0x14 => {
                    assert_eq!(cmd.cdw10 >> 16, 0x41);
                    data[0..2].copy_from_slice(&0x41u16.to_le_bytes());
                    data[32..36].copy_from_slice(&64u32.to_le_bytes());
                }
                0x15 => {
                    data[0] = 1;
                    data[32..34].copy_from_slice(&0x42u16.to_le_bytes());
                    data[34..36].copy_from_slice(&0x41u16.to_le_bytes());
                    data[40..42].copy_from_slice(&1u16.to_le_bytes());
                }
                other => panic!("unexpected CNS {other:#x}"),
            }
            Ok(0)
        });
        let d = dev(fake);
        let p = d.primary_controller_capabilities(0x41).unwrap();
        assert_eq!((p.cntlid, p.vqfrt), (0x41, 64));
        let s = d.secondary_controllers().unwrap();
        assert_eq!((s[0].scid, s[0].pcid, s[0].vfn), (0x42, 0x41, 1));
    }

    #[test]
    fn create_namespace_sends_the_data_structure_and_returns_dword0() {
        let fake = FakeAdmin::new(|cmd, data| {
            assert_eq!((cmd.opcode, cmd.cdw10), (0x0D, 0));
            assert_eq!(&data[0..8], &2048u64.to_le_bytes());
            assert_eq!(&data[8..16], &2048u64.to_le_bytes());
            assert_eq!(data[26], 1);
            Ok(5)
        });
        let d = dev(fake);
        assert_eq!(
            d.create_namespace(&NamespaceCreate::new(2048, 1)).unwrap(),
            5
        );
        assert_eq!(d.passthru().submitted()[0].1.len(), 4096);
    }

    #[test]
    fn create_namespace_rejects_zero_size_and_a_zero_nsid_answer() {
        let d = dev(FakeAdmin::new(|_, _| Ok(0)));
        assert!(matches!(
            d.create_namespace(&NamespaceCreate::new(0, 0)),
            Err(AdminError::InvalidRequest { .. })
        ));
        assert!(d.passthru().commands().is_empty());
        assert!(matches!(
            d.create_namespace(&NamespaceCreate::new(8, 0)),
            Err(AdminError::Decode { .. })
        ));
    }

    #[test]
    fn delete_attach_and_detach_send_the_right_selectors() {
        let d = dev(FakeAdmin::new(|_, _| Ok(0)));
        d.delete_namespace(4).unwrap();
        d.attach_namespace(4, &[0x41, 0x42]).unwrap();
        d.detach_namespace(4, &[0x42]).unwrap();
        let sent = d.passthru().submitted();
        assert_eq!(
            (sent[0].0.opcode, sent[0].0.nsid, sent[0].0.cdw10),
            (0x0D, 4, 1)
        );
        assert!(sent[0].1.is_empty());
        assert_eq!((sent[1].0.opcode, sent[1].0.cdw10), (0x15, 0));
        assert_eq!(&sent[1].1[0..6], &[2, 0, 0x41, 0, 0x42, 0]);
        assert_eq!((sent[2].0.opcode, sent[2].0.cdw10), (0x15, 1));
        assert_eq!(&sent[2].1[0..4], &[1, 0, 0x42, 0]);
        assert!(matches!(
            d.attach_namespace(4, &vec![1; 2048]),
            Err(AdminError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn virtualization_helpers_encode_their_actions() {
        let d = dev(FakeAdmin::new(|_, _| Ok(3)));
        assert_eq!(
            d.assign_secondary_resources(0x42, ResourceType::Queue, 3)
                .unwrap(),
            3
        );
        d.set_secondary_offline(0x42).unwrap();
        d.set_secondary_online(0x42).unwrap();
        let c = d.passthru().commands();
        assert_eq!((c[0].cdw10, c[0].cdw11), (0x0042_0008, 3));
        assert_eq!(c[1].cdw10, 0x0042_0007);
        assert_eq!(c[2].cdw10, 0x0042_0009);
    }

    #[test]
    fn large_logs_are_read_in_pieces_at_increasing_offsets() {
        let log: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let d = dev(FakeAdmin::serving_log(0x70, log.clone())).with_max_transfer(4096);
        let mut req = LogPageRequest::new(0x70, 0, 9_000);
        req.offset = 400;
        let got = d.read_log(&req).unwrap();
        assert_eq!(got, log[400..9_400]);
        let offsets: Vec<u64> = d
            .passthru()
            .commands()
            .iter()
            .map(|c| u64::from(c.cdw12) | (u64::from(c.cdw13) << 32))
            .collect();
        assert_eq!(offsets, vec![400, 4496, 8592]);
    }

    #[test]
    fn log_offset_overflow_is_refused_instead_of_wrapping() {
        let d = dev(FakeAdmin::new(|_, _| Ok(0))).with_max_transfer(4);
        let mut req = LogPageRequest::new(0x70, 0, 8);
        req.offset = u64::MAX - 3;
        assert!(matches!(
            d.read_log(&req),
            Err(AdminError::InvalidRequest { .. })
        ));
        assert_eq!(d.passthru().commands().len(), 1);
    }

    #[test]
    fn smart_and_error_logs_are_read_and_decoded() {
        let d = dev(FakeAdmin::new(|cmd, data| {
            match cmd.cdw10 & 0xff {
                0x02 => {
                    assert_eq!(cmd.nsid, 0xffff_ffff);
                    data[1..3].copy_from_slice(&300u16.to_le_bytes());
                }
                0x01 => data[0..8].copy_from_slice(&9u64.to_le_bytes()),
                other => panic!("unexpected log {other:#x}"),
            }
            Ok(0)
        }));
        assert_eq!(d.smart_log().unwrap().temperature, 300);
        let errs = d.error_log(4).unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].error_count, 9);
        assert!(d.error_log(0).unwrap().is_empty());
    }

    #[test]
    fn open_controller_refuses_names_that_are_not_controllers() {
        let root = SysRoot::new("/nonexistent");
        for bad in ["nvme", "nvme0n1", "../nvme0", "sda"] {
            assert!(matches!(
                AdminDevice::open_controller(&root, bad),
                Err(AdminError::InvalidControllerName(_))
            ));
        }
        assert!(matches!(
            root.open_admin("nvme0"),
            Err(AdminError::Open { .. })
        ));
    }
}
