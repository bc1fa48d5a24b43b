//! The drive side of volumes on one PF, for real: placement from the PF's inventory (a pool
//! namespace, or a created one when the drive really creates), carving, and the namespace's
//! block device once the VF's controller has probed, checked against the NGUID the drive
//! reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric::admin::{AdminDevice, AdminPassthru, NamespaceCreate, StatusCode};
use fabric::nqn::Nqn;
use fabric::root::SysRoot;
use fabric::sysfs::sriov::PciAddress;
use fabric::sysfs::NvmeSysfs;

use crate::carve::{CarvedVf, Carver};
use crate::config::VfResources;
use crate::inventory::PfInventory;
use crate::plan::{self, NamespaceChoice};
use crate::store::Placement;
use crate::volume::{Backend, PlaceError, Taken};

/// One PF and its admin device.
pub struct PfBackend<P: AdminPassthru> {
    pub root: SysRoot,
    pub pf: PciAddress,
    pub admin: AdminDevice<P>,
    pub resources: VfResources,
    /// How long the VF's controller and namespace may take to appear after binding.
    pub probe_wait: Duration,
}

impl<P: AdminPassthru> PfBackend<P> {
    fn read_inventory(&self) -> Result<PfInventory, String> {
        PfInventory::read(&self.root, self.pf, &self.admin).map_err(|e| e.to_string())
    }

    /// Creates a shared namespace of `size` bytes in LBA format 0 of `block` bytes; `None` when
    /// the drive claims Namespace Management but does not implement create (QEMU's).
    fn create(&self, size: u64, block: u64) -> Result<Option<(u32, u64)>, String> {
        let blocks = size.div_ceil(block);
        let mut spec = NamespaceCreate::new(blocks, 0);
        spec.nmic = 1;
        match self.admin.create_namespace(&spec) {
            Ok(nsid) => Ok(Some((nsid, blocks * block))),
            Err(e) if e.status_code() == Some(StatusCode::InvalidOpcode) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl<P: AdminPassthru> PfBackend<P> {
    /// The block device is the namespace the drive described: its NGUID when the kernel shows
    /// one (it hides identifiers it does not trust, as for QEMU's controller: "Ignoring bogus
    /// Namespace Identifiers"), else its size.
    fn check_identity(&self, dev: &str, nsid: u32, nguid: &str, bytes: u64) -> Result<(), String> {
        let block = self.root.path("/sys/block").join(dev);
        match std::fs::read_to_string(block.join("nguid")) {
            Ok(have) => {
                let have = have.trim().replace('-', "");
                if have != nguid {
                    return Err(format!(
                        "/dev/{dev} has NGUID {have}, not the {nguid} the drive reports for namespace {nsid}"
                    ));
                }
            }
            Err(_) => {
                let sectors = std::fs::read_to_string(block.join("size"))
                    .map_err(|e| format!("{}: {e}", block.join("size").display()))?;
                let have = sectors.trim().parse::<u64>().map_err(|_| {
                    format!(
                        "{}: {sectors:?} is not a size",
                        block.join("size").display()
                    )
                })? * 512;
                if have != bytes {
                    return Err(format!(
                        "/dev/{dev} has {have} bytes, not the {bytes} the drive reports for namespace {nsid} (and no NGUID to compare)"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl<P: AdminPassthru> Backend for PfBackend<P> {
    fn place(
        &mut self,
        size_bytes: u64,
        taken: &Taken,
        only_pf: Option<&str>,
    ) -> Result<Placement, PlaceError> {
        if only_pf.is_some_and(|p| p != self.pf.to_string()) {
            return Err(PlaceError::NoRoom(format!("not PF {}", self.pf)));
        }
        let inv = self.read_inventory().map_err(PlaceError::Failed)?;
        let pf = self.pf.to_string();
        let taken_ns = taken
            .nsids
            .iter()
            .filter(|(p, _)| *p == pf)
            .map(|(_, n)| *n)
            .collect();
        let used = taken
            .vfs
            .iter()
            .filter(|(p, _)| *p == pf)
            .map(|(_, v)| *v)
            .collect();
        let block = inv.namespaces.first().map_or(4096, |n| n.block_bytes);
        let pool = plan::choose_namespace(size_bytes, block, false, 0, &inv.slots(), &taken_ns);
        let (nsid, size) = match pool {
            Ok(NamespaceChoice::Pool { nsid, size_bytes }) => (nsid, size_bytes),
            Ok(NamespaceChoice::Create { .. }) => {
                return Err(PlaceError::Failed(
                    "placement chose to create on a pool".into(),
                ))
            }
            Err(pool_err) => {
                let fits = inv.namespace_management
                    && u128::from(
                        plan::round_up(size_bytes, block)
                            .map_err(|e| PlaceError::NoRoom(e.to_string()))?,
                    ) <= inv.unallocated_bytes;
                match fits
                    .then(|| self.create(size_bytes, block))
                    .transpose()
                    .map_err(PlaceError::Failed)?
                {
                    Some(Some(made)) => made,
                    _ => return Err(PlaceError::NoRoom(pool_err.to_string())),
                }
            }
        };
        let first_free = (1..=inv.total_vfs)
            .find(|v| !taken.vfs.contains(&(pf.clone(), *v)))
            .unwrap_or(1);
        let vf = plan::choose_vf(
            inv.total_vfs,
            &used,
            inv.free_for(first_free),
            plan::per_vf(self.resources),
        )
        .map_err(|e| PlaceError::NoRoom(e.to_string()))?;
        Ok(Placement {
            pf,
            vf,
            nsid,
            size_bytes: size,
        })
    }

    fn carve(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        Carver::new(&self.root, self.pf, &self.admin)
            .carve(p.vf, p.nsid, self.resources)
            .map_err(|e| e.to_string())
    }

    fn block_device(&mut self, p: &Placement, vf: &CarvedVf) -> Result<PathBuf, String> {
        let (want, want_bytes) = self
            .read_inventory()?
            .namespaces
            .into_iter()
            .find(|n| n.nsid == p.nsid)
            .map(|n| (n.nguid, n.size_bytes))
            .ok_or_else(|| format!("namespace {} is not on the drive any more", p.nsid))?;
        let sysfs = NvmeSysfs::new(self.root.clone());
        let vf_nvme = self
            .root
            .sys_bus_pci_devices()
            .join(vf.address.to_string())
            .join("nvme");
        let deadline = Instant::now() + self.probe_wait;
        loop {
            let found = (|| -> Option<String> {
                let ctrl = std::fs::read_dir(&vf_nvme)
                    .ok()?
                    .filter_map(|e| e.ok())
                    .find_map(|e| {
                        let n = e.file_name().into_string().ok()?;
                        n.starts_with("nvme").then_some(n)
                    })?;
                let c = sysfs.controller(&ctrl).ok()?;
                let nqn = Nqn::new(&c.subsysnqn).ok()?;
                sysfs
                    .find_block_devices_for(&nqn)
                    .ok()?
                    .into_iter()
                    .find(|(nsid, _)| *nsid == p.nsid)
                    .map(|(_, d)| d)
            })();
            if let Some(dev) = found {
                self.check_identity(&dev, p.nsid, &want, want_bytes)?;
                return Ok(PathBuf::from("/dev").join(dev));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no block device for namespace {} behind VF {} ({}) within {}s",
                    p.nsid,
                    vf.vf,
                    vf.address,
                    self.probe_wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn release(&mut self, p: &Placement) -> Result<(), String> {
        Carver::new(&self.root, self.pf, &self.admin)
            .release(p.vf, p.nsid)
            .map_err(|e| e.to_string())
    }

    fn locate(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        Carver::new(&self.root, self.pf, &self.admin)
            .locate(p.vf)
            .map_err(|e| e.to_string())
    }

    fn inventory(&mut self) -> Result<Vec<PfInventory>, String> {
        self.read_inventory().map(|i| vec![i])
    }

    fn pfs(&self) -> Vec<String> {
        vec![self.pf.to_string()]
    }
}

/// Every managed PF: a volume goes to the first one with room, in configuration order.
pub struct Pfs<P: AdminPassthru> {
    pub pfs: Vec<PfBackend<P>>,
}

impl<P: AdminPassthru> Pfs<P> {
    fn of(&mut self, pf: &str) -> Result<&mut PfBackend<P>, String> {
        self.pfs
            .iter_mut()
            .find(|b| b.pf.to_string() == pf)
            .ok_or_else(|| {
                format!("PF {pf} is not managed by this daemon (not in the configuration)")
            })
    }
}

impl<P: AdminPassthru> Backend for Pfs<P> {
    fn place(
        &mut self,
        size_bytes: u64,
        taken: &Taken,
        only_pf: Option<&str>,
    ) -> Result<Placement, PlaceError> {
        let mut why = Vec::new();
        let mut failed = false;
        for b in &mut self.pfs {
            if only_pf.is_some_and(|p| p != b.pf.to_string()) {
                continue;
            }
            match b.place(size_bytes, taken, None) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    failed |= matches!(e, PlaceError::Failed(_));
                    why.push(format!("{}: {e}", b.pf));
                }
            }
        }
        let why = if why.is_empty() {
            "no PF is managed".to_string()
        } else {
            why.join("; ")
        };
        // Room may exist on a PF that could not be read: that is a failure, not a full node.
        Err(if failed {
            PlaceError::Failed(why)
        } else {
            PlaceError::NoRoom(why)
        })
    }

    fn carve(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        self.of(&p.pf)?.carve(p)
    }

    fn block_device(&mut self, p: &Placement, vf: &CarvedVf) -> Result<PathBuf, String> {
        self.of(&p.pf)?.block_device(p, vf)
    }

    fn release(&mut self, p: &Placement) -> Result<(), String> {
        self.of(&p.pf)?.release(p)
    }

    fn locate(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        self.of(&p.pf)?.locate(p)
    }

    fn pfs(&self) -> Vec<String> {
        self.pfs.iter().map(|b| b.pf.to_string()).collect()
    }

    fn inventory(&mut self) -> Result<Vec<PfInventory>, String> {
        let mut all = Vec::new();
        for b in &mut self.pfs {
            all.extend(Backend::inventory(b)?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::testing::FakeAdmin;
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::testing::{fake_pf, FakePf, PF};

    struct Bed {
        _dir: tempfile::TempDir,
        sys: fabric::testing::FakeSysfs,
        drive: Rc<RefCell<crate::testing::Drive>>,
        backend: PfBackend<FakeAdmin>,
    }

    /// The test bed's drive: 4 VFs, pool namespaces 1 (1 GiB), 2 (512 MiB), 3 (2 GiB) of
    /// 512-byte blocks, create not implemented (as QEMU's).
    fn bed() -> Bed {
        let FakePf {
            dir,
            sys,
            drive,
            admin,
        } = fake_pf(0);
        for (nsid, bytes) in [(1u32, 1u64 << 30), (2, 512 << 20), (3, 2 << 30)] {
            drive
                .borrow_mut()
                .namespaces
                .insert(nsid, (bytes / 512, 9, 0xa0 + nsid as u8));
        }
        let backend = PfBackend {
            root: sys.root(),
            pf: PF.parse().expect("pci"),
            admin,
            resources: VfResources {
                io_queues: 1,
                interrupt_vectors: 1,
            },
            probe_wait: Duration::from_millis(300),
        };
        Bed {
            _dir: dir,
            sys,
            drive,
            backend,
        }
    }

    #[test]
    fn placement_takes_the_smallest_free_pool_namespace_and_the_lowest_free_vf() {
        let mut b = bed();
        let p = b
            .backend
            .place(600 << 20, &Taken::default(), None)
            .expect("place");
        assert_eq!((p.vf, p.nsid, p.size_bytes), (1, 1, 1 << 30));
        let mut taken = Taken::default();
        taken.vfs.insert((PF.into(), 1));
        taken.nsids.insert((PF.into(), 1));
        let p = b.backend.place(600 << 20, &taken, None).expect("place");
        assert_eq!((p.vf, p.nsid, p.size_bytes), (2, 3, 2 << 30));
        let e = b
            .backend
            .place(3 << 30, &Taken::default(), None)
            .expect_err("too big");
        assert!(
            matches!(&e, PlaceError::NoRoom(d) if d.contains("do not fit")),
            "{e}"
        );
    }

    #[test]
    fn a_drive_that_creates_gets_a_shared_namespace_when_no_pool_one_fits() {
        let mut b = bed();
        {
            let mut d = b.drive.borrow_mut();
            d.creates = true;
            d.unallocated = 8 << 30;
        }
        let p = b
            .backend
            .place(3 << 30, &Taken::default(), None)
            .expect("created");
        assert_eq!((p.nsid, p.size_bytes), (4, 3 << 30));
        let create = b
            .backend
            .admin
            .passthru()
            .submitted()
            .into_iter()
            .find(|(c, _)| c.opcode == 0x0D)
            .expect("create sent");
        assert_eq!(create.1[30], 1, "NMIC: shared");
    }

    #[test]
    fn the_block_device_is_found_through_the_vfs_subsystem_and_its_nguid_checked() {
        let mut b = bed();
        let p = b
            .backend
            .place(100 << 20, &Taken::default(), None)
            .expect("place");
        let vf = b.backend.carve(&p).expect("carve");
        let e = b
            .backend
            .block_device(&p, &vf)
            .expect_err("nothing probed yet");
        assert!(e.contains("no block device for namespace"), "{e}");
        // The kernel probes the VF: its controller, subsystem and head namespace appear.
        let nqn = "nqn.2019-08.org.qemu:testbed0001";
        b.sys
            .add_pci_controller("nvme2", &vf.address.to_string(), nqn);
        b.sys.add_subsystem("nvme-subsys2", nqn);
        b.sys.link_controller("nvme-subsys2", "nvme2");
        b.sys.add_head_namespace("nvme-subsys2", "nvme2n1", p.nsid);
        let block = b.sys.root().path("/sys/block/nvme2n1");
        std::fs::create_dir_all(&block).expect("block");
        assert_eq!(p.nsid, 2, "the smallest pool namespace that fits");
        std::fs::write(
            block.join("nguid"),
            "ff000000-0000-0000-0000-000000000000\n",
        )
        .expect("nguid");
        let e = b.backend.block_device(&p, &vf).expect_err("wrong identity");
        assert!(e.contains("has NGUID"), "{e}");
        std::fs::write(
            block.join("nguid"),
            "a2000000-0000-0000-0000-000000000000\n",
        )
        .expect("nguid");
        assert_eq!(
            b.backend.block_device(&p, &vf).expect("found"),
            PathBuf::from("/dev/nvme2n1")
        );
        // Without an NGUID (the kernel ignores QEMU's), the size must match instead.
        std::fs::remove_file(block.join("nguid")).expect("rm");
        std::fs::write(block.join("size"), "4096\n").expect("size");
        let e = b.backend.block_device(&p, &vf).expect_err("wrong size");
        assert!(e.contains("no NGUID to compare"), "{e}");
        std::fs::write(block.join("size"), format!("{}\n", (512u64 << 20) / 512)).expect("size");
        assert_eq!(
            b.backend.block_device(&p, &vf).expect("found by size"),
            PathBuf::from("/dev/nvme2n1")
        );
        b.backend.release(&p).expect("release");
        assert!(b.drive.borrow().attached[&p.nsid].is_empty());
    }
}
