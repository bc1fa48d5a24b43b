//! The raw admin passthrough binding: `struct nvme_passthru_cmd` and
//! `NVME_IOCTL_ADMIN_CMD` from `linux/nvme_ioctl.h`.
//!
//! Commands are described by [`AdminCommand`], a plain value that tests can
//! compare; the [`AdminPassthru`] trait submits one. [`NvmeCharDevice`] is
//! the kernel implementation; tests implement the trait with a fake.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::status::NvmeStatus;
use super::AdminError;

/// `struct nvme_passthru_cmd` (alias `nvme_admin_cmd`), 72 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NvmePassthruCmd {
    /// Command opcode.
    pub opcode: u8,
    /// FUSE and PSDT bits; always 0 here.
    pub flags: u8,
    /// Reserved.
    pub rsvd1: u16,
    /// Namespace ID.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// User address of a metadata buffer.
    pub metadata: u64,
    /// User address of the data buffer.
    pub addr: u64,
    /// Metadata buffer length.
    pub metadata_len: u32,
    /// Data buffer length.
    pub data_len: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds; 0 uses the kernel's admin timeout.
    pub timeout_ms: u32,
    /// Completion dword 0, written by the kernel.
    pub result: u32,
}

/// The raw ioctl, kept private: only [`NvmeCharDevice::submit`] calls it.
mod sys {
    use super::NvmePassthruCmd;
    // NVME_IOCTL_ADMIN_CMD = _IOWR('N', 0x41, struct nvme_admin_cmd)
    nix::ioctl_readwrite!(nvme_ioctl_admin_cmd, b'N', 0x41, NvmePassthruCmd);
}

/// Admin command opcodes used here (NVMe Base Specification 2.0, Fig. 138).
pub mod opcode {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Namespace Management.
    pub const NAMESPACE_MANAGEMENT: u8 = 0x0D;
    /// Namespace Attachment.
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
    /// Virtualization Management.
    pub const VIRTUALIZATION_MANAGEMENT: u8 = 0x1C;
}

/// One admin command: opcode, namespace and command dwords. The data
/// buffer travels beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminCommand {
    /// Command opcode.
    pub opcode: u8,
    /// Namespace ID.
    pub nsid: u32,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds; 0 for the kernel default.
    pub timeout_ms: u32,
}

impl AdminCommand {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self.opcode {
            opcode::GET_LOG_PAGE => "Get Log Page",
            opcode::IDENTIFY => "Identify",
            opcode::NAMESPACE_MANAGEMENT => "Namespace Management",
            opcode::NAMESPACE_ATTACHMENT => "Namespace Attachment",
            opcode::VIRTUALIZATION_MANAGEMENT => "Virtualization Management",
            _ => "admin command",
        }
    }

    /// The ioctl argument for this command with `data` as its buffer.
    ///
    /// `data_len` is a u32 in the uapi; a larger buffer is refused rather
    /// than silently cut.
    pub fn to_passthru(&self, data: &mut [u8]) -> Result<NvmePassthruCmd, SubmitError> {
        let data_len = u32::try_from(data.len()).map_err(|_| SubmitError::Os(Errno::EINVAL))?;
        Ok(NvmePassthruCmd {
            opcode: self.opcode,
            nsid: self.nsid,
            addr: if data.is_empty() {
                0
            } else {
                data.as_mut_ptr() as u64
            },
            data_len,
            cdw10: self.cdw10,
            cdw11: self.cdw11,
            cdw12: self.cdw12,
            cdw13: self.cdw13,
            cdw14: self.cdw14,
            cdw15: self.cdw15,
            timeout_ms: self.timeout_ms,
            ..NvmePassthruCmd::default()
        })
    }
}

/// Why a submitted command failed, before it is given context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The controller completed the command with an error status.
    Status(NvmeStatus),
    /// The kernel refused or could not deliver the command.
    Os(Errno),
}

/// Something that executes admin commands: the kernel or a test fake.
pub trait AdminPassthru {
    /// What to call the device in messages (its path).
    fn describe(&self) -> String;

    /// Executes `cmd` with `data` as its data buffer (read by the controller
    /// for host-to-controller commands, written for the others) and returns
    /// completion dword 0.
    fn submit(&self, cmd: &AdminCommand, data: &mut [u8]) -> Result<u32, SubmitError>;
}

/// An open NVMe controller character device, `/dev/nvmeN`.
#[derive(Debug)]
pub struct NvmeCharDevice {
    file: File,
    path: PathBuf,
}

impl NvmeCharDevice {
    /// Opens `path`, which must be a character device.
    pub fn open(path: &Path) -> Result<Self, AdminError> {
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|source| AdminError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| AdminError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.file_type().is_char_device() {
            return Err(AdminError::NotACharDevice {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AdminPassthru for NvmeCharDevice {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn submit(&self, cmd: &AdminCommand, data: &mut [u8]) -> Result<u32, SubmitError> {
        let mut raw = cmd.to_passthru(data)?;
        // SAFETY: the fd is an open NVMe character device owned by
        // `self.file`; `raw` is a live, correctly laid out (repr(C), 72
        // bytes) nvme_passthru_cmd the kernel reads and writes back; its
        // `addr`/`data_len` describe `data`, which is exclusively borrowed
        // for the duration of this synchronous call, and `metadata` is 0.
        let ret = unsafe { sys::nvme_ioctl_admin_cmd(self.file.as_raw_fd(), &mut raw) };
        match ret {
            Ok(0) => Ok(raw.result),
            Ok(status) => Err(SubmitError::Status(NvmeStatus::from_ioctl(status as u32))),
            Err(errno) => Err(SubmitError::Os(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn passthru_struct_matches_the_uapi_layout() {
        assert_eq!(size_of::<NvmePassthruCmd>(), 72);
        assert_eq!(offset_of!(NvmePassthruCmd, opcode), 0);
        assert_eq!(offset_of!(NvmePassthruCmd, flags), 1);
        assert_eq!(offset_of!(NvmePassthruCmd, rsvd1), 2);
        assert_eq!(offset_of!(NvmePassthruCmd, nsid), 4);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw2), 8);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw3), 12);
        assert_eq!(offset_of!(NvmePassthruCmd, metadata), 16);
        assert_eq!(offset_of!(NvmePassthruCmd, addr), 24);
        assert_eq!(offset_of!(NvmePassthruCmd, metadata_len), 32);
        assert_eq!(offset_of!(NvmePassthruCmd, data_len), 36);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw10), 40);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw11), 44);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw12), 48);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw13), 52);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw14), 56);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw15), 60);
        assert_eq!(offset_of!(NvmePassthruCmd, timeout_ms), 64);
        assert_eq!(offset_of!(NvmePassthruCmd, result), 68);
    }

    #[test]
    fn admin_ioctl_number_is_iowr_n_0x41_of_72_bytes() {
        let code = nix::request_code_readwrite!(b'N', 0x41, size_of::<NvmePassthruCmd>());
        assert_eq!(code as u64, 0xC048_4E41);
    }

    #[test]
    fn command_fields_land_in_the_passthru_struct() {
        let cmd = AdminCommand {
            opcode: 0x06,
            nsid: 7,
            cdw10: 1,
            cdw11: 2,
            cdw12: 3,
            cdw13: 4,
            cdw14: 5,
            cdw15: 6,
            timeout_ms: 9,
        };
        let mut buf = [0u8; 16];
        let raw = cmd.to_passthru(&mut buf).unwrap();
        assert_eq!(raw.opcode, 0x06);
        assert_eq!(raw.flags, 0);
        assert_eq!(raw.nsid, 7);
        assert_eq!(
            (raw.cdw10, raw.cdw11, raw.cdw12, raw.cdw13, raw.cdw14, raw.cdw15),
            (1, 2, 3, 4, 5, 6)
        );
        assert_eq!(raw.addr, buf.as_ptr() as u64);
        assert_eq!(raw.data_len, 16);
        assert_eq!(raw.metadata, 0);
        assert_eq!(raw.timeout_ms, 9);
        let raw = cmd.to_passthru(&mut []).unwrap();
        assert_eq!((raw.addr, raw.data_len), (0, 0));
    }

    #[test]
    fn opening_a_regular_file_as_a_controller_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = NvmeCharDevice::open(f.path()).unwrap_err();
        assert!(matches!(err, AdminError::NotACharDevice { .. }), "{err:?}");
    }

    #[test]
    fn admin_ioctl_on_a_non_nvme_char_device_returns_an_errno() {
        // /dev/null is a character device without this ioctl: the call must
        // come back as an errno (ENOTTY), not as success or a status.
        let dev = NvmeCharDevice::open(Path::new("/dev/null")).unwrap();
        let cmd = AdminCommand {
            opcode: opcode::IDENTIFY,
            cdw10: 1,
            ..Default::default()
        };
        let mut buf = vec![0u8; 4096];
        match dev.submit(&cmd, &mut buf) {
            Err(SubmitError::Os(e)) => assert_eq!(e, Errno::ENOTTY),
            other => panic!("{other:?}"),
        }
    }
}
