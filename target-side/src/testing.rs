//! Test fakes shared by the crate's unit tests: a drive that keeps the state QEMU's emulated
//! NVMe controller keeps (secondary controllers and their resources, attachments, allocated
//! namespaces) and answers the admin commands the service sends.

use std::collections::{BTreeMap, BTreeSet};

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use fabric::admin::status::NvmeStatus;
use fabric::admin::{AdminCommand, AdminDevice, SubmitError};
use fabric::testing::{FakeAdmin, FakeSysfs};

use crate::carve::CarvedVf;
use crate::inventory::{Flexible, LbaFormatView, Namespace, PfInventory};
use crate::store::Placement;
use crate::volume::{Backend, PlaceError, Taken};

/// A drive's secondary controllers and namespace attachments, changed by the commands the
/// way QEMU's emulated controller does (resources only while offline, online only with
/// resources, no double attach).
#[derive(Debug, Default)]
pub struct Drive {
    /// scid -> (vfn, online, nvq, nvi)
    pub secondaries: BTreeMap<u16, (u16, bool, u16, u16)>,
    pub attached: BTreeMap<u32, BTreeSet<u16>>,
    /// Allocated namespaces: nsid -> (blocks, LBA data size shift, NGUID first byte).
    pub namespaces: BTreeMap<u32, (u64, u8, u8)>,
    /// Whether create is implemented (QEMU's claims it and answers Invalid Command Opcode).
    pub creates: bool,
    pub unallocated: u128,
}

fn status(raw: u32) -> SubmitError {
    SubmitError::Status(NvmeStatus::from_ioctl(raw))
}

pub fn answer(d: &mut Drive, cmd: &AdminCommand, data: &mut [u8]) -> Result<u32, SubmitError> {
    let put16 =
        |data: &mut [u8], at: usize, v: u16| data[at..at + 2].copy_from_slice(&v.to_le_bytes());
    match cmd.opcode {
        0x06 => {
            data.fill(0);
            let from = (cmd.cdw10 >> 16) as u16;
            match cmd.cdw10 & 0xff {
                0x15 => {
                    let list: Vec<_> = d
                        .secondaries
                        .iter()
                        .filter(|(id, _)| **id >= from)
                        .collect();
                    data[0] = list.len() as u8;
                    for (i, (scid, (vfn, online, nvq, nvi))) in list.into_iter().enumerate() {
                        let e = 32 + i * 32;
                        put16(data, e, *scid);
                        put16(data, e + 2, 0);
                        data[e + 4] = u8::from(*online);
                        put16(data, e + 8, *vfn);
                        put16(data, e + 10, *nvq);
                        put16(data, e + 12, *nvi);
                    }
                }
                0x01 => {
                    put16(data, 256, 0x0008);
                    data[296..312].copy_from_slice(&d.unallocated.to_le_bytes());
                }
                0x14 => {
                    data[32..36].copy_from_slice(&8u32.to_le_bytes());
                    data[64..68].copy_from_slice(&4u32.to_le_bytes());
                }
                0x10 => {
                    let ids: Vec<u32> = d
                        .namespaces
                        .keys()
                        .copied()
                        .filter(|n| *n > cmd.nsid)
                        .collect();
                    for (i, id) in ids.iter().enumerate() {
                        data[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                    }
                }
                0x11 => {
                    let Some((blocks, lbads, g)) = d.namespaces.get(&cmd.nsid) else {
                        return Err(status(0x0B));
                    };
                    data[0..8].copy_from_slice(&blocks.to_le_bytes());
                    data[130] = *lbads;
                    data[104] = *g;
                }
                // Active on the PF (controller 0, its Identify Controller's CNTLID).
                0x02 => {
                    let ids: Vec<u32> = d
                        .attached
                        .iter()
                        .filter(|(n, c)| **n > cmd.nsid && c.contains(&0))
                        .map(|(n, _)| *n)
                        .collect();
                    for (i, id) in ids.iter().enumerate() {
                        data[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                    }
                }
                0x03 => {
                    let active = d.attached.get(&cmd.nsid).is_some_and(|c| c.contains(&0));
                    let Some((_, _, g)) = d.namespaces.get(&cmd.nsid).filter(|_| active) else {
                        return Err(status(0x0B));
                    };
                    data[0..4].copy_from_slice(&[3, 16, 0, 0]);
                    data[4..20].fill(*g);
                }
                0x12 => {
                    let ids: Vec<u16> = d
                        .attached
                        .get(&cmd.nsid)
                        .map(|s| s.iter().copied().filter(|i| *i >= from).collect())
                        .unwrap_or_default();
                    put16(data, 0, ids.len() as u16);
                    for (i, id) in ids.iter().enumerate() {
                        put16(data, 2 + 2 * i, *id);
                    }
                }
                _ => return Err(status(0x2)),
            }
            Ok(0)
        }
        0x1C => {
            let scid = (cmd.cdw10 >> 16) as u16;
            let nr = (cmd.cdw11 & 0xffff) as u16;
            let Some(sec) = d.secondaries.get_mut(&scid) else {
                return Err(status(0x11F));
            };
            match cmd.cdw10 & 0xf {
                0x8 if sec.1 => Err(status(0x120)),
                0x8 => {
                    if (cmd.cdw10 >> 8) & 7 == 0 {
                        sec.2 = nr
                    } else {
                        sec.3 = nr
                    }
                    Ok(u32::from(nr))
                }
                0x9 if sec.2 == 0 || sec.3 == 0 => Err(status(0x120)),
                0x9 => {
                    sec.1 = true;
                    Ok(0)
                }
                0x7 => {
                    sec.1 = false;
                    Ok(0)
                }
                _ => Err(status(0x2)),
            }
        }
        0x15 => {
            let n = u16::from_le_bytes([data[0], data[1]]) as usize;
            let ids: Vec<u16> = (0..n)
                .map(|i| u16::from_le_bytes([data[2 + 2 * i], data[3 + 2 * i]]))
                .collect();
            let set = d.attached.entry(cmd.nsid).or_default();
            match cmd.cdw10 & 0xf {
                0 if ids.iter().any(|i| set.contains(i)) => Err(status(0x118)),
                0 => {
                    set.extend(ids);
                    Ok(0)
                }
                1 => {
                    for i in ids {
                        set.remove(&i);
                    }
                    Ok(0)
                }
                _ => Err(status(0x2)),
            }
        }
        0x0D if !d.creates => Err(status(0x1)),
        0x0D => {
            let blocks = u64::from_le_bytes(data[0..8].try_into().map_err(|_| status(0x2))?);
            let nsid = d.namespaces.keys().max().copied().unwrap_or(0) + 1;
            d.namespaces.insert(nsid, (blocks, 12, 0xc0 + nsid as u8));
            Ok(nsid)
        }
        _ => Err(status(0x1)),
    }
}

/// A drive with two VFs and pool namespaces of 1 GiB; fails the call numbered `fail_at`.
#[derive(Debug, Default)]
pub struct FakeBackend {
    pub carved: BTreeSet<u16>,
    pub calls: usize,
    pub fail_at: Option<usize>,
    pub fail_release: bool,
}

impl FakeBackend {
    fn tick(&mut self, what: &str) -> Result<(), String> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            return Err(format!(
                "{what} failed (injected): {}",
                NvmeStatus::from_ioctl(0x120)
            ));
        }
        Ok(())
    }
}

/// The fake backend's VF `vf`: controller `vf` at function `vf` of the PF's slot.
fn fake_vf(vf: u16) -> Result<CarvedVf, String> {
    Ok(CarvedVf {
        vf,
        cntlid: vf,
        address: format!("0000:01:00.{vf}")
            .parse()
            .map_err(|e| format!("{e}"))?,
    })
}

impl Backend for FakeBackend {
    fn place(
        &mut self,
        size: u64,
        taken: &Taken,
        _only_pf: Option<&str>,
    ) -> Result<Placement, PlaceError> {
        self.tick("place").map_err(PlaceError::Failed)?;
        if size > 1 << 30 {
            return Err(PlaceError::NoRoom("no namespace that large".into()));
        }
        let vf = (1..=2u16)
            .find(|v| !taken.vfs.contains(&("0000:01:00.0".to_string(), *v)))
            .ok_or(PlaceError::NoRoom("no free VF".into()))?;
        Ok(Placement {
            pf: "0000:01:00.0".into(),
            vf,
            nsid: u32::from(vf),
            size_bytes: 1 << 30,
        })
    }
    fn carve(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        self.tick("carve")?;
        self.carved.insert(p.vf);
        fake_vf(p.vf)
    }
    fn block_device(&mut self, p: &Placement, _: &CarvedVf) -> Result<PathBuf, String> {
        self.tick("block device")?;
        Ok(PathBuf::from(format!("/dev/nvme{}n1", p.vf)))
    }
    fn release(&mut self, p: &Placement) -> Result<(), String> {
        if self.fail_release {
            return Err("release failed (injected)".into());
        }
        self.carved.remove(&p.vf);
        Ok(())
    }
    fn locate(&mut self, p: &Placement) -> Result<CarvedVf, String> {
        if !self.carved.contains(&p.vf) {
            return Err(format!("VF {} is not carved", p.vf));
        }
        fake_vf(p.vf)
    }
    fn pfs(&self) -> Vec<String> {
        vec!["0000:01:00.0".into()]
    }
    fn inventory(&mut self) -> Result<Vec<PfInventory>, String> {
        Ok(vec![PfInventory {
            pf: "0000:01:00.0".into(),
            model: "fake".into(),
            serial: "fake0".into(),
            total_vfs: 2,
            enabled_vfs: self.carved.len() as u16,
            autoprobe: false,
            vq: Flexible {
                total: 8,
                primary: 2,
                assigned: 2 * self.carved.len() as u32,
            },
            vi: Flexible {
                total: 4,
                primary: 1,
                assigned: self.carved.len() as u32,
            },
            secondaries: Vec::new(),
            namespace_management: false,
            unallocated_bytes: 0,
            namespaces: (1..=2u16)
                .map(|vf| Namespace {
                    nsid: u32::from(vf),
                    size_bytes: 1 << 30,
                    block_bytes: 512,
                    nguid: format!("{:032x}", vf),
                    attached: if self.carved.contains(&vf) {
                        vec![vf]
                    } else {
                        vec![]
                    },
                    lba_formats: vec![LbaFormatView {
                        index: 0,
                        data_bytes: Some(512),
                        metadata_bytes: 0,
                        relative_performance: 0,
                        in_use: true,
                    }],
                    uuid: None,
                })
                .collect(),
        }])
    }
}

/// The PCI address of [`fake_pf`]'s PF.
pub const PF: &str = "0000:01:00.0";

/// A PF like the test bed's in a fake sysfs tree: 4 VFs (`virtfn0..3`, unbound), `numvfs` of
/// them enabled, autoprobe on, the nvme driver's bind/unbind files, and a [`Drive`] with one
/// offline secondary controller per VF behind a fake admin device.
pub struct FakePf {
    pub dir: tempfile::TempDir,
    pub sys: FakeSysfs,
    pub drive: Rc<RefCell<Drive>>,
    pub admin: AdminDevice<FakeAdmin>,
}

pub fn fake_pf(numvfs: u16) -> FakePf {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = FakeSysfs::new(dir.path());
    sys.add_pci_function(PF, Some("nvme"), None);
    sys.set_sriov(PF, 4, numvfs, true);
    for i in 0..4u32 {
        let vf = format!("0000:01:00.{}", i + 1);
        sys.add_pci_function(&vf, None, None);
        sys.link_vf(PF, i, &vf);
    }
    let drivers = sys.root().path("/sys/bus/pci/drivers/nvme");
    std::fs::create_dir_all(&drivers).expect("drivers");
    std::fs::write(drivers.join("bind"), "").expect("bind");
    std::fs::write(drivers.join("unbind"), "").expect("unbind");
    let drive = Rc::new(RefCell::new(Drive::default()));
    for vfn in 1..=4u16 {
        drive
            .borrow_mut()
            .secondaries
            .insert(vfn, (vfn, false, 0, 0));
    }
    let d = Rc::clone(&drive);
    let admin = AdminDevice::new(FakeAdmin::new(move |cmd, data| {
        answer(&mut d.borrow_mut(), cmd, data)
    }));
    FakePf {
        dir,
        sys,
        drive,
        admin,
    }
}
