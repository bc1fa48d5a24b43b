//! PCI functions and their SR-IOV virtual functions as
//! `/sys/bus/pci/devices/<address>/` shows them (read only: carving VFs is
//! the storage node daemon's job).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::attr;
use super::SysfsError;
use crate::root::SysRoot;

/// A PCI address `DDDD:BB:DD.F` (domain, bus, device, function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// Domain (segment).
    pub domain: u32,
    /// Bus.
    pub bus: u8,
    /// Device, 0-31.
    pub device: u8,
    /// Function, 0-7.
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = SysfsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SysfsError::InvalidName {
            what: "PCI address",
            name: s.to_string(),
        };
        let hex = |p: &str, len: usize| {
            (p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(p, 16).ok())
                .flatten()
        };
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let domain = if (4..=8).contains(&domain.len()) {
            hex(domain, domain.len())
        } else {
            None
        }
        .ok_or_else(bad)?;
        let bus = hex(bus, 2).ok_or_else(bad)? as u8;
        let device = hex(device, 2).filter(|d| *d < 32).ok_or_else(bad)? as u8;
        let function = function
            .parse::<u8>()
            .ok()
            .filter(|f| *f < 8 && function.len() == 1)
            .ok_or_else(bad)?;
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One SR-IOV virtual function of a physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualFunction {
    /// N of the PF's `virtfnN` link.
    pub index: u32,
    /// Its PCI address.
    pub address: PciAddress,
    /// Bound driver.
    pub driver: Option<String>,
    /// Driver the function is reserved for (`driver_override`).
    pub driver_override: Option<String>,
    /// NVMe controllers the function carries (`nvmeN`).
    pub nvme_controllers: Vec<String>,
}

/// The SR-IOV state of a physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sriov {
    /// Most VFs the device supports (`sriov_totalvfs`).
    pub total_vfs: u16,
    /// VFs enabled now (`sriov_numvfs`).
    pub num_vfs: u16,
    /// Whether new VFs are bound to a driver automatically
    /// (`sriov_drivers_autoprobe`).
    pub drivers_autoprobe: bool,
    /// The enabled VFs, by index.
    pub vfs: Vec<VirtualFunction>,
}

/// A PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub address: PciAddress,
    /// Bound driver (`driver` link).
    pub driver: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
    /// SR-IOV state, if the function is an SR-IOV physical function.
    pub sriov: Option<Sriov>,
    /// NVMe controllers the function carries (`nvme/nvmeN`).
    pub nvme_controllers: Vec<String>,
}

impl PciFunction {
    /// Reads function `address` under `root`.
    pub fn read(root: &SysRoot, address: &PciAddress) -> Result<Self, SysfsError> {
        let dir = root.sys_bus_pci_devices().join(address.to_string());
        if !attr::exists(&dir) {
            return Err(SysfsError::NotFound {
                what: "PCI function",
                name: address.to_string(),
                path: dir,
            });
        }
        let sriov = match attr::read_optional(&dir.join("sriov_totalvfs"))? {
            None => None,
            Some(total) => Some(read_sriov(&dir, &total)?),
        };
        Ok(Self {
            address: *address,
            driver: attr::link_name(&dir.join("driver"))?,
            driver_override: driver_override(&dir)?,
            sriov,
            nvme_controllers: nvme_controllers(&dir)?,
        })
    }
}

fn read_sriov(dir: &Path, total: &str) -> Result<Sriov, SysfsError> {
    let total_vfs = total.trim().parse().map_err(|_| SysfsError::Malformed {
        path: dir.join("sriov_totalvfs"),
        value: total.to_string(),
        expected: "a VF count",
    })?;
    let num_vfs = attr::parse(&dir.join("sriov_numvfs"), "a VF count")?;
    let autoprobe: u8 = attr::parse(&dir.join("sriov_drivers_autoprobe"), "0 or 1")?;
    let mut vfs = Vec::new();
    for entry in attr::list(dir)? {
        let Some(index) = attr::instance(&entry, "virtfn") else {
            continue;
        };
        let link = dir.join(&entry);
        let target = attr::link_name(&link)?
            .ok_or_else(|| SysfsError::MissingAttribute { path: link.clone() })?;
        let address: PciAddress = target.parse().map_err(|_| SysfsError::Malformed {
            path: link.clone(),
            value: target.clone(),
            expected: "a link to a PCI function",
        })?;
        vfs.push(VirtualFunction {
            index,
            address,
            driver: attr::link_name(&link.join("driver"))?,
            driver_override: driver_override(&link)?,
            nvme_controllers: nvme_controllers(&link)?,
        });
    }
    vfs.sort_by_key(|v| v.index);
    Ok(Sriov {
        total_vfs,
        num_vfs,
        drivers_autoprobe: autoprobe != 0,
        vfs,
    })
}

/// `driver_override` reads `(null)` when unset.
fn driver_override(dir: &Path) -> Result<Option<String>, SysfsError> {
    Ok(attr::read_optional(&dir.join("driver_override"))?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "(null)"))
}

fn nvme_controllers(dir: &Path) -> Result<Vec<String>, SysfsError> {
    let mut names: Vec<String> = attr::list(&dir.join("nvme"))?
        .into_iter()
        .filter(|n| attr::instance(n, "nvme").is_some())
        .collect();
    names.sort_by_key(|n| attr::instance(n, "nvme"));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSysfs;

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn pci_addresses_parse_and_print_in_sysfs_form() {
        let a = addr("0000:3b:00.1");
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0x3b, 0, 1));
        assert_eq!(a.to_string(), "0000:3b:00.1");
        assert_eq!(addr("10000:01:1f.7").to_string(), "10000:01:1f.7");
        for bad in [
            "0000:3b:00",
            "000:3b:00.0",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "0000:xx:00.0",
            "0000:3b:00.01",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn physical_function_with_vfs_is_read_with_drivers_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_pci_function("0000:01:00.0", Some("nvme"), None);
        fs.set_sriov("0000:01:00.0", 8, 2, true);
        fs.add_pci_function("0000:01:00.1", None, Some("vfio-pci"));
        fs.add_pci_function("0000:01:00.2", Some("nvme"), None);
        fs.link_vf("0000:01:00.0", 1, "0000:01:00.2");
        fs.link_vf("0000:01:00.0", 0, "0000:01:00.1");
        fs.add_pci_nvme("0000:01:00.0", "nvme0");
        fs.add_pci_nvme("0000:01:00.2", "nvme3");
        let pf = PciFunction::read(&fs.root(), &addr("0000:01:00.0")).unwrap();
        assert_eq!(pf.driver.as_deref(), Some("nvme"));
        assert_eq!(pf.driver_override, None);
        assert_eq!(pf.nvme_controllers, vec!["nvme0"]);
        let s = pf.sriov.unwrap();
        assert_eq!((s.total_vfs, s.num_vfs, s.drivers_autoprobe), (8, 2, true));
        assert_eq!(s.vfs.len(), 2);
        assert_eq!(s.vfs[0].index, 0);
        assert_eq!(s.vfs[0].address, addr("0000:01:00.1"));
        assert_eq!(s.vfs[0].driver, None);
        assert_eq!(s.vfs[0].driver_override.as_deref(), Some("vfio-pci"));
        assert_eq!(s.vfs[1].address, addr("0000:01:00.2"));
        assert_eq!(s.vfs[1].driver.as_deref(), Some("nvme"));
        assert_eq!(s.vfs[1].nvme_controllers, vec!["nvme3"]);
    }

    #[test]
    fn function_without_sriov_has_none() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_pci_function("0000:02:00.0", None, None);
        let f = PciFunction::read(&fs.root(), &addr("0000:02:00.0")).unwrap();
        assert_eq!(f.sriov, None);
        assert_eq!(f.driver, None);
        assert!(matches!(
            PciFunction::read(&fs.root(), &addr("0000:09:00.0")),
            Err(SysfsError::NotFound { .. })
        ));
    }

    #[test]
    fn sriov_function_missing_numvfs_is_a_typed_error() {
        let d = tempfile::tempdir().unwrap();
        let fs = FakeSysfs::new(d.path());
        fs.add_pci_function("0000:01:00.0", Some("nvme"), None);
        fs.set_sriov("0000:01:00.0", 8, 0, true);
        let dir = fs.root().sys_bus_pci_devices().join("0000:01:00.0");
        std::fs::remove_file(dir.join("sriov_numvfs")).unwrap();
        let err = PciFunction::read(&fs.root(), &addr("0000:01:00.0")).unwrap_err();
        assert!(
            matches!(&err, SysfsError::MissingAttribute { path } if path.ends_with("sriov_numvfs")),
            "{err:?}"
        );
    }
}
