//! Carving a VF for a volume, in the order real drives need: the secondary controller gets its
//! flexible resources while offline, VFs are enabled with driver autoprobe off (nothing binds
//! behind our back), the secondary goes online, the namespace is attached to it, and the VF is
//! bound to `nvme` through `driver_override`. Each step is skipped when already done, so a
//! carve interrupted by a crash completes when run again; `release` undoes it.
//!
//! The SR-IOV sysfs writes live here; the admin commands and the sysfs model are `fabric`'s.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fabric::admin::virt_mgmt::ResourceType;
use fabric::admin::{AdminDevice, AdminError, AdminPassthru};
use fabric::root::SysRoot;
use fabric::sysfs::sriov::{PciAddress, PciFunction};
use fabric::sysfs::SysfsError;

use crate::config::VfResources;
use crate::plan::per_vf;

/// A carve (or release) step that failed: which VF, which step, and why.
#[derive(Debug, thiserror::Error)]
pub enum CarveError {
    #[error("VF {vf} of {pf}: {step}: {source}")]
    Admin {
        pf: PciAddress,
        vf: u16,
        step: &'static str,
        #[source]
        source: AdminError,
    },
    #[error("VF {vf} of {pf}: {step}: {}: {source}", path.display())]
    Write {
        pf: PciAddress,
        vf: u16,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("VF {vf} of {pf}: {step}: {source}")]
    Sysfs {
        pf: PciAddress,
        vf: u16,
        step: &'static str,
        #[source]
        source: SysfsError,
    },
    /// The device is in a state this daemon did not make and will not override.
    #[error("VF {vf} of {pf}: {step}: {detail}")]
    State {
        pf: PciAddress,
        vf: u16,
        step: &'static str,
        detail: String,
    },
}

/// A VF carved for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarvedVf {
    /// The VF number (1-based).
    pub vf: u16,
    /// Its secondary controller's identifier.
    pub cntlid: u16,
    /// Its PCI address.
    pub address: PciAddress,
}

/// One PF: its sysfs function and its admin device.
pub struct Carver<'a, P: AdminPassthru> {
    root: &'a SysRoot,
    pf: PciAddress,
    admin: &'a AdminDevice<P>,
}

impl<'a, P: AdminPassthru> Carver<'a, P> {
    pub fn new(root: &'a SysRoot, pf: PciAddress, admin: &'a AdminDevice<P>) -> Self {
        Carver { root, pf, admin }
    }

    fn pf_dir(&self) -> PathBuf {
        self.root.sys_bus_pci_devices().join(self.pf.to_string())
    }

    fn write(
        &self,
        vf: u16,
        step: &'static str,
        path: &Path,
        value: &str,
    ) -> Result<(), CarveError> {
        // sysfs attributes exist or the kernel has no such knob: never create one. O_TRUNC is
        // what `echo >` does; sysfs ignores it, a plain file (a test tree) needs it.
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|source| CarveError::Write {
                pf: self.pf,
                vf,
                step,
                path: path.to_path_buf(),
                source,
            })
    }

    fn admin_err(&self, vf: u16, step: &'static str) -> impl FnOnce(AdminError) -> CarveError {
        let pf = self.pf;
        move |source| CarveError::Admin {
            pf,
            vf,
            step,
            source,
        }
    }

    fn state(&self, vf: u16, step: &'static str, detail: String) -> CarveError {
        CarveError::State {
            pf: self.pf,
            vf,
            step,
            detail,
        }
    }

    fn function(&self, vf: u16, step: &'static str) -> Result<PciFunction, CarveError> {
        PciFunction::read(self.root, &self.pf).map_err(|source| CarveError::Sysfs {
            pf: self.pf,
            vf,
            step,
            source,
        })
    }

    /// The secondary controller of VF `vf`.
    fn secondary(
        &self,
        vf: u16,
    ) -> Result<fabric::admin::identify::SecondaryController, CarveError> {
        let list = self
            .admin
            .secondary_controllers()
            .map_err(self.admin_err(vf, "read the secondary controller list"))?;
        list.into_iter().find(|s| s.vfn == vf).ok_or_else(|| {
            self.state(
                vf,
                "find the secondary controller",
                "the PF lists no secondary controller for this VF".into(),
            )
        })
    }

    /// Carves VF `vf` with `res` and attaches namespace `nsid` to it.
    pub fn carve(&self, vf: u16, nsid: u32, res: VfResources) -> Result<CarvedVf, CarveError> {
        let func = self.function(vf, "read the PF")?;
        let sriov = func.sriov.ok_or_else(|| {
            self.state(vf, "read the PF", "not an SR-IOV physical function".into())
        })?;
        if vf == 0 || vf > sriov.total_vfs {
            return Err(self.state(
                vf,
                "read the PF",
                format!("the PF has VFs 1 to {}", sriov.total_vfs),
            ));
        }
        if sriov.num_vfs != 0 && sriov.num_vfs < vf {
            return Err(self.state(
                vf,
                "enable the VFs",
                format!("{} VFs are enabled already; VF {vf} is not there, and changing the count would remove the others", sriov.num_vfs),
            ));
        }
        let sec = self.secondary(vf)?;
        let need = per_vf(res);
        if sriov.drivers_autoprobe {
            self.write(
                vf,
                "turn driver autoprobe off",
                &self.pf_dir().join("sriov_drivers_autoprobe"),
                "0",
            )?;
        }
        if sec.is_online() {
            if u32::from(sec.nvq) < need.vq || u32::from(sec.nvi) < need.vi {
                return Err(self.state(
                    vf,
                    "assign flexible resources",
                    format!("the secondary controller {} is online with {} VQ and {} VI resources, fewer than {} and {}", sec.scid, sec.nvq, sec.nvi, need.vq, need.vi),
                ));
            }
        } else {
            for (rt, have, want, step) in [
                (ResourceType::Queue, sec.nvq, need.vq, "assign VQ resources"),
                (
                    ResourceType::Interrupt,
                    sec.nvi,
                    need.vi,
                    "assign VI resources",
                ),
            ] {
                if u32::from(have) != want {
                    let nr = u16::try_from(want)
                        .map_err(|_| self.state(vf, step, format!("{want} resources")))?;
                    self.admin
                        .assign_secondary_resources(sec.scid, rt, nr)
                        .map_err(self.admin_err(vf, step))?;
                }
            }
        }
        // All VFs at once: changing a non-zero count would take the others away.
        if sriov.num_vfs == 0 {
            self.write(
                vf,
                "enable the VFs",
                &self.pf_dir().join("sriov_numvfs"),
                &sriov.total_vfs.to_string(),
            )?;
        }
        if !sec.is_online() {
            self.admin
                .set_secondary_online(sec.scid)
                .map_err(self.admin_err(vf, "bring the secondary controller online"))?;
        }
        let attached = self
            .admin
            .namespace_controllers(nsid)
            .map_err(self.admin_err(vf, "read the namespace's controllers"))?;
        if !attached.contains(&sec.scid) {
            self.admin
                .attach_namespace(nsid, &[sec.scid])
                .map_err(self.admin_err(vf, "attach the namespace"))?;
        }
        let vfn = self.vf_function(vf)?;
        let vf_dir = self
            .root
            .sys_bus_pci_devices()
            .join(vfn.address.to_string());
        if vfn.driver_override.as_deref() != Some("nvme") {
            self.write(
                vf,
                "reserve the VF for nvme",
                &vf_dir.join("driver_override"),
                "nvme",
            )?;
        }
        match vfn.driver.as_deref() {
            Some("nvme") => {}
            Some(other) => {
                return Err(self.state(vf, "bind the VF", format!("bound to {other}, not nvme")));
            }
            None => {
                let bind = self.root.path("/sys/bus/pci/drivers/nvme/bind");
                self.write(vf, "bind the VF to nvme", &bind, &vfn.address.to_string())?;
            }
        }
        Ok(CarvedVf {
            vf,
            cntlid: sec.scid,
            address: vfn.address,
        })
    }

    /// VF `vf`'s PCI function (`virtfn<vf-1>` of the PF), once the VFs are enabled.
    fn vf_function(&self, vf: u16) -> Result<fabric::sysfs::sriov::VirtualFunction, CarveError> {
        let func = self.function(vf, "find the VF")?;
        func.sriov
            .and_then(|s| s.vfs.into_iter().find(|f| f.index == u32::from(vf) - 1))
            .ok_or_else(|| {
                self.state(
                    vf,
                    "find the VF",
                    format!("no virtfn{} under the PF", vf - 1),
                )
            })
    }

    /// Where VF `vf` is (PCI address, secondary controller), changing nothing.
    pub fn locate(&self, vf: u16) -> Result<CarvedVf, CarveError> {
        let sec = self.secondary(vf)?;
        let vfn = self.vf_function(vf)?;
        Ok(CarvedVf {
            vf,
            cntlid: sec.scid,
            address: vfn.address,
        })
    }

    /// Undoes a carve: unbinds the VF, detaches the namespace, takes the secondary offline.
    /// The VFs stay enabled (others may be in use) and keep their resources.
    pub fn release(&self, vf: u16, nsid: u32) -> Result<(), CarveError> {
        let sec = self.secondary(vf)?;
        let func = self.function(vf, "find the VF")?;
        if let Some(vfn) = func
            .sriov
            .and_then(|s| s.vfs.into_iter().find(|f| f.index == u32::from(vf) - 1))
        {
            let vf_dir = self
                .root
                .sys_bus_pci_devices()
                .join(vfn.address.to_string());
            if vfn.driver.is_some() {
                self.write(
                    vf,
                    "unbind the VF",
                    &vf_dir.join("driver/unbind"),
                    &vfn.address.to_string(),
                )?;
            }
            if vfn.driver_override.is_some() {
                self.write(
                    vf,
                    "clear driver_override",
                    &vf_dir.join("driver_override"),
                    "\n",
                )?;
            }
        }
        let attached = self
            .admin
            .namespace_controllers(nsid)
            .map_err(self.admin_err(vf, "read the namespace's controllers"))?;
        if attached.contains(&sec.scid) {
            self.admin
                .detach_namespace(nsid, &[sec.scid])
                .map_err(self.admin_err(vf, "detach the namespace"))?;
        }
        if sec.is_online() {
            self.admin
                .set_secondary_offline(sec.scid)
                .map_err(self.admin_err(vf, "take the secondary controller offline"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    use crate::testing::{fake_pf, FakePf as Bed, PF};

    fn bed(numvfs: u16) -> Bed {
        fake_pf(numvfs)
    }

    fn pf() -> PciAddress {
        PF.parse().expect("pci")
    }

    fn res() -> VfResources {
        VfResources {
            io_queues: 2,
            interrupt_vectors: 1,
        }
    }

    fn read(b: &Bed, p: &str) -> String {
        fs::read_to_string(b.sys.root().path(p))
            .expect(p)
            .trim()
            .to_string()
    }

    /// The commands that change the drive (not the identifies), as (opcode, cdw10, cdw11).
    fn writes(b: &Bed) -> Vec<(u8, u32, u32)> {
        b.admin
            .passthru()
            .commands()
            .iter()
            .filter(|c| c.opcode != 0x06)
            .map(|c| (c.opcode, c.cdw10, c.cdw11))
            .collect()
    }

    #[test]
    fn a_carve_goes_in_the_order_drives_need_and_a_second_one_changes_nothing() {
        let b = bed(0);
        let root = b.sys.root();
        let carved = Carver::new(&root, pf(), &b.admin)
            .carve(2, 7, res())
            .expect("carve");
        assert_eq!(
            carved,
            CarvedVf {
                vf: 2,
                cntlid: 2,
                address: "0000:01:00.2".parse().expect("pci")
            }
        );
        // Assign 3 VQ (2 I/O + admin) and 1 VI to secondary 2, online, attach nsid 7 to it.
        assert_eq!(
            writes(&b),
            vec![
                (0x1C, 0x8 | (2 << 16), 3),
                (0x1C, 0x8 | (1 << 8) | (2 << 16), 1),
                (0x1C, 0x9 | (2 << 16), 0),
                (0x15, 0, 0),
            ]
        );
        let attach = b
            .admin
            .passthru()
            .submitted()
            .into_iter()
            .find(|(c, _)| c.opcode == 0x15)
            .expect("attach");
        assert_eq!(attach.0.nsid, 7);
        assert_eq!(
            &attach.1[..4],
            &[1, 0, 2, 0],
            "a controller list of one: secondary 2"
        );
        assert_eq!(
            read(
                &b,
                &format!("/sys/bus/pci/devices/{PF}/sriov_drivers_autoprobe")
            ),
            "0"
        );
        assert_eq!(
            read(&b, &format!("/sys/bus/pci/devices/{PF}/sriov_numvfs")),
            "4"
        );
        assert_eq!(
            read(&b, "/sys/bus/pci/devices/0000:01:00.2/driver_override"),
            "nvme"
        );
        assert_eq!(read(&b, "/sys/bus/pci/drivers/nvme/bind"), "0000:01:00.2");
        assert_eq!(b.drive.borrow().secondaries[&2], (2, true, 3, 1));
        // The kernel binds it; carving again (a restart mid-create) writes nothing.
        let vf_dir = root.path("/sys/bus/pci/devices/0000:01:00.2");
        std::os::unix::fs::symlink("../../../bus/pci/drivers/nvme", vf_dir.join("driver"))
            .expect("link");
        fs::write(root.path("/sys/bus/pci/drivers/nvme/bind"), "").expect("reset");
        let before = writes(&b).len();
        Carver::new(&root, pf(), &b.admin)
            .carve(2, 7, res())
            .expect("again");
        assert_eq!(
            writes(&b).len(),
            before,
            "no admin command changes anything the second time"
        );
        assert_eq!(
            read(&b, "/sys/bus/pci/drivers/nvme/bind"),
            "",
            "not bound twice"
        );
    }

    #[test]
    fn release_detaches_and_takes_the_secondary_offline() {
        let b = bed(0);
        let root = b.sys.root();
        let c = Carver::new(&root, pf(), &b.admin);
        c.carve(1, 3, res()).expect("carve");
        c.release(1, 3).expect("release");
        assert!(b.drive.borrow().attached[&3].is_empty());
        assert!(!b.drive.borrow().secondaries[&1].1, "offline");
        assert_eq!(
            read(&b, "/sys/bus/pci/devices/0000:01:00.1/driver_override"),
            ""
        );
        c.release(1, 3).expect("releasing again is a no-op");
    }

    #[test]
    fn vfs_enabled_by_someone_else_are_refused_before_anything_changes() {
        let b = bed(2);
        let root = b.sys.root();
        let e = Carver::new(&root, pf(), &b.admin)
            .carve(3, 1, res())
            .expect_err("refused");
        assert!(e.to_string().contains("2 VFs are enabled already"), "{e}");
        assert!(writes(&b).is_empty());
        assert_eq!(
            read(
                &b,
                &format!("/sys/bus/pci/devices/{PF}/sriov_drivers_autoprobe")
            ),
            "1"
        );
    }

    #[test]
    fn an_online_secondary_short_of_resources_is_refused_and_attach_goes_beside_other_controllers()
    {
        let b = bed(0);
        b.drive.borrow_mut().secondaries.insert(1, (1, true, 2, 1));
        let root = b.sys.root();
        let e = Carver::new(&root, pf(), &b.admin)
            .carve(1, 1, res())
            .expect_err("short");
        assert!(e.to_string().contains("online with 2 VQ"), "{e}");
        // Namespace 5 is attached to another controller (9): ours is added beside it.
        b.drive
            .borrow_mut()
            .attached
            .entry(5)
            .or_default()
            .insert(9);
        b.drive.borrow_mut().secondaries.insert(9, (0, true, 1, 1));
        let ok = Carver::new(&root, pf(), &b.admin)
            .carve(2, 5, res())
            .expect("attach beside another controller");
        assert_eq!(ok.cntlid, 2);
        assert_eq!(b.drive.borrow().attached[&5], BTreeSet::from([2, 9]));
    }
}
