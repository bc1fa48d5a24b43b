//! The filesystem root every kernel path is resolved under.
//!
//! Production code uses `/`; tests point the same code at a temporary tree
//! that mirrors the kernel's layout, so nothing in this crate names an
//! absolute `/sys`, `/dev` or `/etc` path directly.

use std::path::{Path, PathBuf};

/// A root directory under which `/sys`, `/dev` and `/etc` are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SysRoot {
    root: PathBuf,
}

impl Default for SysRoot {
    fn default() -> Self {
        Self::host()
    }
}

impl SysRoot {
    /// The real system: paths resolve to themselves.
    pub fn host() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }

    /// A root at `path`, e.g. a temporary directory holding a fake sysfs.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { root: path.into() }
    }

    /// The root directory itself.
    pub fn as_path(&self) -> &Path {
        &self.root
    }

    /// Resolves an absolute kernel path (`/sys/class/nvme`) under this root.
    ///
    /// Leading slashes are ignored so that `join` cannot escape the root.
    pub fn path(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let rel = absolute
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(absolute.as_ref());
        self.root.join(rel)
    }

    /// `<root>/sys/class/nvme`: one entry per NVMe controller.
    pub fn sys_class_nvme(&self) -> PathBuf {
        self.path("/sys/class/nvme")
    }

    /// `<root>/sys/class/nvme-subsystem`: one entry per NVM subsystem.
    pub fn sys_class_nvme_subsystem(&self) -> PathBuf {
        self.path("/sys/class/nvme-subsystem")
    }

    /// `<root>/sys/bus/pci/devices`: one entry per PCI function.
    pub fn sys_bus_pci_devices(&self) -> PathBuf {
        self.path("/sys/bus/pci/devices")
    }

    /// `<root>/dev/<name>`.
    pub fn dev(&self, name: &str) -> PathBuf {
        self.path("/dev").join(name)
    }

    /// `<root>/etc/nvme`: where nvme-cli keeps the host identity.
    pub fn etc_nvme(&self) -> PathBuf {
        self.path("/etc/nvme")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_resolves_paths_to_themselves() {
        let root = SysRoot::host();
        assert_eq!(
            root.path("/sys/class/nvme"),
            PathBuf::from("/sys/class/nvme")
        );
        assert_eq!(root.dev("nvme-fabrics"), PathBuf::from("/dev/nvme-fabrics"));
    }

    #[test]
    fn temp_root_keeps_absolute_paths_inside_it() {
        let root = SysRoot::new("/tmp/x");
        assert_eq!(root.path("/etc/nvme"), PathBuf::from("/tmp/x/etc/nvme"));
        assert_eq!(root.path("sys"), PathBuf::from("/tmp/x/sys"));
        assert_eq!(
            root.sys_class_nvme_subsystem(),
            PathBuf::from("/tmp/x/sys/class/nvme-subsystem")
        );
        assert_eq!(
            root.sys_bus_pci_devices(),
            PathBuf::from("/tmp/x/sys/bus/pci/devices")
        );
        assert_eq!(root.etc_nvme(), PathBuf::from("/tmp/x/etc/nvme"));
    }
}
