//! NVM subsystems as `/sys/class/nvme-subsystem/nvme-subsysX` shows them:
//! their NQN, their controllers (`nvmeN` links) and, with native
//! multipath, their namespace head block devices.

use std::path::{Path, PathBuf};

use super::attr::{self, DiskName};
use super::SysfsError;

/// A namespace block device that belongs to the subsystem itself: with
/// native multipath, the one device per namespace that I/O goes to,
/// whichever controller carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadNamespace {
    /// Block device name (`nvme0n1`).
    pub name: String,
    /// Namespace ID.
    pub nsid: u32,
}

/// One NVM subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsystem {
    /// `nvme-subsysX`.
    pub name: String,
    /// X.
    pub instance: u32,
    /// `<root>/sys/class/nvme-subsystem/nvme-subsysX`.
    pub sysfs_path: PathBuf,
    /// Subsystem NQN (`subsysnqn` attribute).
    pub nqn: String,
    /// Names of its controllers (`nvmeN`), by instance.
    pub controllers: Vec<String>,
    /// Multipath head block devices, by NSID.
    pub namespaces: Vec<HeadNamespace>,
}

impl Subsystem {
    /// Reads subsystem `name` from `class_dir/name`.
    pub(crate) fn read(class_dir: &Path, name: &str) -> Result<Self, SysfsError> {
        let instance =
            attr::instance(name, "nvme-subsys").ok_or_else(|| SysfsError::InvalidName {
                what: "subsystem",
                name: name.to_string(),
            })?;
        let dir = class_dir.join(name);
        let nqn = attr::read(&attr::at(&dir, "subsysnqn"))?;
        let mut controllers = Vec::new();
        let mut namespaces = Vec::new();
        for entry in attr::list(&dir)? {
            if attr::instance(&entry, "nvme").is_some() {
                controllers.push(entry);
            } else if attr::disk_name(&entry) == Some(DiskName::Disk) {
                let nsid = attr::parse(&dir.join(&entry).join("nsid"), "a namespace ID")?;
                namespaces.push(HeadNamespace { name: entry, nsid });
            }
        }
        controllers.sort_by_key(|c| attr::instance(c, "nvme"));
        namespaces.sort_by_key(|n| (n.nsid, n.name.clone()));
        Ok(Self {
            name: name.to_string(),
            instance,
            sysfs_path: dir,
            nqn,
            controllers,
            namespaces,
        })
    }
}
