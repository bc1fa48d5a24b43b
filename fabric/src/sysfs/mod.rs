//! A read-only model of the kernel's NVMe and PCI SR-IOV sysfs trees.
//!
//! Everything is read fresh on each call: controllers come and go as
//! connections are made and lost, so nothing is cached.
//!
//! Namespaces are found through their subsystem, never by guessing a block
//! device name: with native multipath the block device is named after the
//! subsystem instance (`nvme0n1` under `nvme-subsys0`) while the controller
//! only carries hidden paths (`nvme0c1n1`); without multipath the block
//! device hangs under the controller (`nvme1n1`). Either way the `nsid`
//! attribute says which namespace it is.
//!
//! A controller is tied to its subsystem by the `nvmeN` links in the
//! subsystem directory (the controller's own `subsystem` link is the
//! driver-model link to `class/nvme`, not the NVM subsystem).

mod attr;
pub mod nvme;
pub mod sriov;
pub mod subsystem;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

pub use nvme::{
    Controller, ControllerAddress, ControllerNamespace, ControllerState, ControllerTransport,
    FabricsAddress,
};
pub use sriov::{PciAddress, PciFunction, Sriov, VirtualFunction};
pub use subsystem::{HeadNamespace, Subsystem};

use crate::nqn::Nqn;
use crate::root::SysRoot;

/// Why the sysfs model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// An attribute file the kernel always creates is missing.
    #[error("missing attribute {}", path.display())]
    MissingAttribute {
        /// The missing file.
        path: PathBuf,
    },
    /// An attribute has a value the kernel never writes.
    #[error("{}: {value:?} is not {expected}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A controller that no subsystem lists.
    #[error(
        "controller {controller} belongs to no subsystem: no {}/*/{controller} link",
        subsystems.display()
    )]
    ControllerWithoutSubsystem {
        /// The controller.
        controller: String,
        /// The subsystem class directory searched.
        subsystems: PathBuf,
    },
    /// A controller or subsystem that does not exist.
    #[error("no {what} {name} at {}", path.display())]
    NotFound {
        /// "controller", "subsystem", "PCI function".
        what: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A name of the wrong form (`nvmeN`, `nvme-subsysX`, a PCI address).
    #[error("{name:?} is not a valid {what} name")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Reading failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The NVMe part of sysfs under a root.
#[derive(Debug, Clone)]
pub struct NvmeSysfs {
    root: SysRoot,
}

impl NvmeSysfs {
    /// The model of the kernel under `root`.
    pub fn new(root: SysRoot) -> Self {
        Self { root }
    }

    /// The root it reads from.
    pub fn root(&self) -> &SysRoot {
        &self.root
    }

    /// Names of all controllers (`nvmeN`), by instance.
    pub fn controller_names(&self) -> Result<Vec<String>, SysfsError> {
        instance_names(&self.root.sys_class_nvme(), "nvme")
    }

    /// Names of all subsystems (`nvme-subsysX`), by instance.
    pub fn subsystem_names(&self) -> Result<Vec<String>, SysfsError> {
        instance_names(&self.root.sys_class_nvme_subsystem(), "nvme-subsys")
    }

    /// Every subsystem.
    pub fn subsystems(&self) -> Result<Vec<Subsystem>, SysfsError> {
        let dir = self.root.sys_class_nvme_subsystem();
        let mut out = Vec::new();
        for name in self.subsystem_names()? {
            match Subsystem::read(&dir, &name) {
                Ok(s) => out.push(s),
                // Gone between listing and reading: the last controller left.
                Err(_) if !attr::exists(&dir.join(&name)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Subsystem `name` (`nvme-subsysX`).
    pub fn subsystem(&self, name: &str) -> Result<Subsystem, SysfsError> {
        let dir = self.root.sys_class_nvme_subsystem();
        if attr::instance(name, "nvme-subsys").is_none() {
            return Err(SysfsError::InvalidName {
                what: "subsystem",
                name: name.to_string(),
            });
        }
        if !attr::exists(&dir.join(name)) {
            return Err(SysfsError::NotFound {
                what: "subsystem",
                name: name.to_string(),
                path: dir.join(name),
            });
        }
        Subsystem::read(&dir, name)
    }

    /// Subsystems whose NQN is `nqn`.
    pub fn subsystems_by_nqn(&self, nqn: &Nqn) -> Result<Vec<Subsystem>, SysfsError> {
        Ok(self
            .subsystems()?
            .into_iter()
            .filter(|s| s.nqn == nqn.as_str())
            .collect())
    }

    /// Controller name -> subsystem name, from the subsystems' links.
    fn owners(&self) -> Result<BTreeMap<String, String>, SysfsError> {
        let mut map = BTreeMap::new();
        for s in self.subsystems()? {
            for c in s.controllers {
                map.insert(c, s.name.clone());
            }
        }
        Ok(map)
    }

    fn read_controller(
        &self,
        name: &str,
        owners: &BTreeMap<String, String>,
    ) -> Result<Controller, SysfsError> {
        let class = self.root.sys_class_nvme();
        let subsystem =
            owners
                .get(name)
                .cloned()
                .ok_or_else(|| SysfsError::ControllerWithoutSubsystem {
                    controller: name.to_string(),
                    subsystems: self.root.sys_class_nvme_subsystem(),
                })?;
        Controller::read(&class, name, subsystem)
    }

    /// Whether controller `name` is in the `new` or `connecting` state.
    fn being_set_up(&self, name: &str) -> bool {
        let state = self.root.sys_class_nvme().join(name).join("state");
        matches!(
            attr::read_optional(&state),
            Ok(Some(s)) if s == "new" || s == "connecting"
        )
    }

    /// Controller `name` (`nvmeN`).
    ///
    /// A controller that is still being set up has no subsystem yet and is
    /// reported as [`SysfsError::ControllerWithoutSubsystem`].
    pub fn controller(&self, name: &str) -> Result<Controller, SysfsError> {
        if attr::instance(name, "nvme").is_none() {
            return Err(SysfsError::InvalidName {
                what: "controller",
                name: name.to_string(),
            });
        }
        let path = self.root.sys_class_nvme().join(name);
        if !attr::exists(&path) {
            return Err(SysfsError::NotFound {
                what: "controller",
                name: name.to_string(),
                path,
            });
        }
        self.read_controller(name, &self.owners()?)
    }

    /// Every usable controller. Controllers still being set up (state
    /// `new` or `connecting` and not yet in a subsystem) are left out; any
    /// other controller without a subsystem is an error.
    pub fn controllers(&self) -> Result<Vec<Controller>, SysfsError> {
        let owners = self.owners()?;
        let class = self.root.sys_class_nvme();
        let mut out = Vec::new();
        for name in self.controller_names()? {
            match self.read_controller(&name, &owners) {
                Ok(c) => out.push(c),
                // Deleted between listing and reading.
                Err(_) if !attr::exists(&class.join(&name)) => {}
                // The kernel shows a controller before it has identified it
                // and joined it to its subsystem; it is not usable yet.
                Err(SysfsError::ControllerWithoutSubsystem { .. }) if self.being_set_up(&name) => {
                    tracing::debug!(controller = %name, "skipping controller still being set up");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Controllers of the subsystem(s) named `nqn`.
    pub fn controllers_for(&self, nqn: &Nqn) -> Result<Vec<Controller>, SysfsError> {
        let owners = self.owners()?;
        let mut out = Vec::new();
        for s in self.subsystems_by_nqn(nqn)? {
            for c in &s.controllers {
                out.push(self.read_controller(c, &owners)?);
            }
        }
        Ok(out)
    }

    /// The block devices of the namespaces of subsystem `nqn`, as
    /// `(nsid, device name)` sorted by NSID: the multipath head devices
    /// under the subsystem plus any non-multipath devices under its
    /// controllers. Hidden per-controller paths are not block devices to
    /// open and are left out.
    pub fn find_block_devices_for(&self, nqn: &Nqn) -> Result<Vec<(u32, String)>, SysfsError> {
        let owners = self.owners()?;
        let mut devs: Vec<(u32, String)> = Vec::new();
        for s in self.subsystems_by_nqn(nqn)? {
            devs.extend(s.namespaces.iter().map(|n| (n.nsid, n.name.clone())));
            for c in &s.controllers {
                let ctrl = self.read_controller(c, &owners)?;
                devs.extend(
                    ctrl.namespaces
                        .iter()
                        .filter(|n| !n.hidden_path)
                        .map(|n| (n.nsid, n.name.clone())),
                );
            }
        }
        devs.sort();
        devs.dedup();
        Ok(devs)
    }
}

/// Entries of `dir` named `<prefix><N>`, ordered by N.
fn instance_names(dir: &std::path::Path, prefix: &str) -> Result<Vec<String>, SysfsError> {
    let mut names: Vec<String> = attr::list(dir)?
        .into_iter()
        .filter(|n| attr::instance(n, prefix).is_some())
        .collect();
    names.sort_by_key(|n| attr::instance(n, prefix));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeController, FakeSysfs};
    use crate::transport::TransportAddress;

    fn nqn(s: &str) -> Nqn {
        Nqn::new(s).unwrap()
    }

    const VOL: &str = "nqn.2014-08.com.example:vol1";

    /// nvme1 (rdma) in nvme-subsys0 with native multipath: head nvme0n1 and
    /// nvme0n2 under the subsystem, hidden paths under the controller.
    fn multipath_tree() -> (tempfile::TempDir, FakeSysfs) {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_fabrics_controller(
            "nvme1",
            &FakeController::rdma("192.0.2.1", 4420, VOL).cntlid(7),
        );
        fs.add_subsystem("nvme-subsys0", VOL);
        fs.link_controller("nvme-subsys0", "nvme1");
        fs.add_head_namespace("nvme-subsys0", "nvme0n1", 1);
        fs.add_head_namespace("nvme-subsys0", "nvme0n2", 2);
        fs.add_controller_namespace("nvme1", "nvme0c1n1", 1);
        fs.add_controller_namespace("nvme1", "nvme0c1n2", 2);
        (d, fs)
    }

    #[test]
    fn controller_is_read_with_transport_address_state_and_subsystem() {
        let (_d, fs) = multipath_tree();
        let sys = NvmeSysfs::new(fs.root());
        let c = sys.controller("nvme1").unwrap();
        assert_eq!(c.instance, 1);
        assert_eq!(c.transport, ControllerTransport::Rdma);
        assert_eq!(c.state, ControllerState::Live);
        assert_eq!(c.cntlid, 7);
        assert_eq!(c.subsysnqn, VOL);
        assert_eq!(c.subsystem, "nvme-subsys0");
        assert_eq!(
            c.transport_address(),
            Some("rdma://192.0.2.1:4420".parse::<TransportAddress>().unwrap())
        );
        assert_eq!(c.nqn(), Some(nqn(VOL)));
        assert!(c.namespaces.iter().all(|n| n.hidden_path));
        assert_eq!(c.namespaces.len(), 2);
    }

    #[test]
    fn multipath_block_devices_are_found_under_the_subsystem_by_nsid() {
        let (_d, fs) = multipath_tree();
        let sys = NvmeSysfs::new(fs.root());
        assert_eq!(
            sys.find_block_devices_for(&nqn(VOL)).unwrap(),
            vec![(1, "nvme0n1".to_string()), (2, "nvme0n2".to_string())]
        );
    }

    #[test]
    fn block_device_names_come_from_the_nsid_attribute_not_the_name() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_fabrics_controller("nvme4", &FakeController::tcp("192.0.2.1", 4420, VOL));
        fs.add_subsystem("nvme-subsys2", VOL);
        fs.link_controller("nvme-subsys2", "nvme4");
        // The kernel numbers heads per subsystem; the NSID need not match.
        fs.add_head_namespace("nvme-subsys2", "nvme2n1", 10);
        fs.add_controller_namespace("nvme4", "nvme2c4n1", 10);
        let sys = NvmeSysfs::new(fs.root());
        assert_eq!(
            sys.find_block_devices_for(&nqn(VOL)).unwrap(),
            vec![(10, "nvme2n1".to_string())]
        );
    }

    #[test]
    fn without_multipath_block_devices_are_under_the_controller() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_fabrics_controller("nvme1", &FakeController::rdma("192.0.2.1", 4420, VOL));
        fs.add_subsystem("nvme-subsys0", VOL);
        fs.link_controller("nvme-subsys0", "nvme1");
        fs.add_controller_namespace("nvme1", "nvme1n1", 1);
        let sys = NvmeSysfs::new(fs.root());
        assert_eq!(
            sys.find_block_devices_for(&nqn(VOL)).unwrap(),
            vec![(1, "nvme1n1".to_string())]
        );
        let c = sys.controller("nvme1").unwrap();
        assert!(!c.namespaces[0].hidden_path);
    }

    #[test]
    fn other_subsystems_are_not_matched() {
        let (_d, fs) = multipath_tree();
        fs.add_fabrics_controller(
            "nvme2",
            &FakeController::rdma("192.0.2.2", 4420, "nqn.2014-08.com.example:other"),
        );
        fs.add_subsystem("nvme-subsys5", "nqn.2014-08.com.example:other");
        fs.link_controller("nvme-subsys5", "nvme2");
        fs.add_head_namespace("nvme-subsys5", "nvme5n1", 1);
        let sys = NvmeSysfs::new(fs.root());
        assert_eq!(sys.find_block_devices_for(&nqn(VOL)).unwrap().len(), 2);
        assert_eq!(
            sys.find_block_devices_for(&nqn("nqn.2014-08.com.example:none"))
                .unwrap(),
            vec![]
        );
        let ctrls = sys
            .controllers_for(&nqn("nqn.2014-08.com.example:other"))
            .unwrap();
        assert_eq!(ctrls.len(), 1);
        assert_eq!(ctrls[0].name, "nvme2");
    }

    #[test]
    fn subsystem_lists_its_controllers_and_heads() {
        let (_d, fs) = multipath_tree();
        let sys = NvmeSysfs::new(fs.root());
        let s = sys.subsystem("nvme-subsys0").unwrap();
        assert_eq!(s.nqn, VOL);
        assert_eq!(s.controllers, vec!["nvme1"]);
        assert_eq!(
            s.namespaces.iter().map(|n| n.nsid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(sys.subsystems().unwrap().len(), 1);
        assert!(matches!(
            sys.subsystem("nvme-subsys9"),
            Err(SysfsError::NotFound { .. })
        ));
    }

    #[test]
    fn controllers_are_listed_in_instance_order() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_subsystem("nvme-subsys0", VOL);
        for n in ["nvme10", "nvme2", "nvme1"] {
            fs.add_fabrics_controller(n, &FakeController::rdma("192.0.2.1", 4420, VOL));
            fs.link_controller("nvme-subsys0", n);
        }
        let sys = NvmeSysfs::new(fs.root());
        let names: Vec<_> = sys
            .controllers()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, vec!["nvme1", "nvme2", "nvme10"]);
    }

    #[test]
    fn controller_missing_its_subsystem_is_a_typed_error() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_fabrics_controller("nvme3", &FakeController::rdma("192.0.2.1", 4420, VOL));
        let sys = NvmeSysfs::new(fs.root());
        let err = sys.controller("nvme3").unwrap_err();
        assert!(
            matches!(&err, SysfsError::ControllerWithoutSubsystem { controller, .. } if controller == "nvme3"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("sys/class/nvme-subsystem"),
            "{err}"
        );
        assert!(sys.controllers().is_err());
    }

    #[test]
    fn controller_still_connecting_without_subsystem_is_left_out_of_listings() {
        let (_d, fs) = multipath_tree();
        fs.add_fabrics_controller(
            "nvme2",
            &FakeController::rdma("192.0.2.1", 4420, VOL).state("connecting"),
        );
        let sys = NvmeSysfs::new(fs.root());
        let names: Vec<_> = sys
            .controllers()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, vec!["nvme1"]);
        assert!(matches!(
            sys.controller("nvme2"),
            Err(SysfsError::ControllerWithoutSubsystem { .. })
        ));
    }

    #[test]
    fn missing_attribute_is_a_typed_error_naming_the_path() {
        let (_d, fs) = multipath_tree();
        std::fs::remove_file(fs.root().sys_class_nvme().join("nvme1").join("state")).unwrap();
        let err = NvmeSysfs::new(fs.root()).controller("nvme1").unwrap_err();
        match err {
            SysfsError::MissingAttribute { path } => {
                assert!(path.ends_with("sys/class/nvme/nvme1/state"), "{path:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn namespace_without_nsid_attribute_is_a_typed_error() {
        let (_d, fs) = multipath_tree();
        let head = fs
            .root()
            .sys_class_nvme_subsystem()
            .join("nvme-subsys0/nvme0n1/nsid");
        std::fs::remove_file(&head).unwrap();
        let err = NvmeSysfs::new(fs.root())
            .find_block_devices_for(&nqn(VOL))
            .unwrap_err();
        assert!(matches!(err, SysfsError::MissingAttribute { path } if path == head));
    }

    #[test]
    fn malformed_cntlid_and_address_are_typed_errors() {
        let (_d, fs) = multipath_tree();
        let dir = fs.root().sys_class_nvme().join("nvme1");
        std::fs::write(dir.join("cntlid"), "lots\n").unwrap();
        assert!(matches!(
            NvmeSysfs::new(fs.root()).controller("nvme1"),
            Err(SysfsError::Malformed { .. })
        ));
        std::fs::write(dir.join("cntlid"), "7\n").unwrap();
        std::fs::write(dir.join("address"), "traddr\n").unwrap();
        assert!(matches!(
            NvmeSysfs::new(fs.root()).controller("nvme1"),
            Err(SysfsError::Malformed { .. })
        ));
    }

    #[test]
    fn pcie_controller_keeps_its_pci_address() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        let nqn_s = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        fs.add_pci_controller("nvme0", "0000:01:00.0", nqn_s);
        fs.add_subsystem("nvme-subsys0", nqn_s);
        fs.link_controller("nvme-subsys0", "nvme0");
        let c = NvmeSysfs::new(fs.root()).controller("nvme0").unwrap();
        assert_eq!(c.transport, ControllerTransport::Pcie);
        assert_eq!(c.address, ControllerAddress::Pci("0000:01:00.0".into()));
        assert_eq!(c.transport_address(), None);
    }

    #[test]
    fn empty_or_absent_class_directories_mean_no_controllers() {
        let d = tempfile::tempdir().unwrap();
        let sys = NvmeSysfs::new(SysRoot::new(d.path()));
        assert!(sys.controllers().unwrap().is_empty());
        assert!(sys.subsystems().unwrap().is_empty());
        assert!(matches!(
            sys.controller("nvme0"),
            Err(SysfsError::NotFound { .. })
        ));
        assert!(matches!(
            sys.controller("sda"),
            Err(SysfsError::InvalidName { .. })
        ));
    }
}
