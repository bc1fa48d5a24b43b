//! What a PF offers, read from the drive and sysfs through `fabric`: VFs (total, enabled,
//! autoprobe), the flexible queue and interrupt resources and who holds them, the secondary
//! controllers, whether Namespace Management create is claimed, the unallocated capacity, and
//! every allocated namespace with its size, block size, NGUID and the controllers it is
//! attached to. The inventory API and placement read this.

use fabric::admin::identify::SecondaryController;
use fabric::admin::{AdminDevice, AdminError, AdminPassthru};
use fabric::root::SysRoot;
use fabric::sysfs::sriov::{PciAddress, PciFunction};
use fabric::sysfs::SysfsError;
use serde::Serialize;

use crate::plan::{FreeResources, NamespaceSlot};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory of {pf}: {source}")]
    Admin {
        pf: PciAddress,
        #[source]
        source: AdminError,
    },
    #[error("inventory of {pf}: {source}")]
    Sysfs {
        pf: PciAddress,
        #[source]
        source: SysfsError,
    },
    #[error("inventory of {pf}: not an SR-IOV physical function")]
    NotSriov { pf: PciAddress },
    #[error("inventory of {pf}: namespace {nsid} has no usable LBA format")]
    NoBlockSize { pf: PciAddress, nsid: u32 },
}

/// A flexible resource type's totals on the primary controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Flexible {
    pub total: u32,
    /// Held by the primary controller itself.
    pub primary: u32,
    /// Assigned to secondary controllers.
    pub assigned: u32,
}

/// A secondary controller (one per VF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Secondary {
    pub cntlid: u16,
    pub vf: u16,
    pub online: bool,
    pub vq: u16,
    pub vi: u16,
}

/// An allocated namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Namespace {
    pub nsid: u32,
    pub size_bytes: u64,
    pub block_bytes: u64,
    /// Hex, 32 digits (all zero when the drive reports none).
    pub nguid: String,
    /// Controllers it is attached to.
    pub attached: Vec<u16>,
    /// The drive's LBA formats for it (the one in use is marked).
    pub lba_formats: Vec<LbaFormatView>,
    /// Its UUID (Namespace Identification Descriptors, CNS 03h), when it is active on the PF
    /// itself (the drive answers CNS 03h only for those) and has one.
    pub uuid: Option<String>,
}

/// An LBA format a namespace can be formatted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LbaFormatView {
    pub index: u8,
    /// Data bytes per block (absent when the format is unusable).
    pub data_bytes: Option<u64>,
    pub metadata_bytes: u16,
    /// Relative performance, 0 (best) to 3.
    pub relative_performance: u8,
    pub in_use: bool,
}

/// One PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PfInventory {
    pub pf: String,
    pub model: String,
    pub serial: String,
    pub total_vfs: u16,
    pub enabled_vfs: u16,
    pub autoprobe: bool,
    pub vq: Flexible,
    pub vi: Flexible,
    pub secondaries: Vec<Secondary>,
    /// The drive claims Namespace Management (OACS bit 3). QEMU's emulated controller claims
    /// it yet answers create with Invalid Command Opcode: placement falls back to the pool.
    pub namespace_management: bool,
    pub unallocated_bytes: u128,
    pub namespaces: Vec<Namespace>,
}

impl PfInventory {
    /// Reads the PF at `pf` through its admin device.
    pub fn read<P: AdminPassthru>(
        root: &SysRoot,
        pf: PciAddress,
        admin: &AdminDevice<P>,
    ) -> Result<PfInventory, InventoryError> {
        let a = |source| InventoryError::Admin { pf, source };
        let func =
            PciFunction::read(root, &pf).map_err(|source| InventoryError::Sysfs { pf, source })?;
        let sriov = func.sriov.ok_or(InventoryError::NotSriov { pf })?;
        let ctrl = admin.identify_controller().map_err(a)?;
        let caps = admin
            .primary_controller_capabilities(ctrl.cntlid)
            .map_err(a)?;
        let secondaries = admin
            .secondary_controllers()
            .map_err(a)?
            .into_iter()
            .map(|s: SecondaryController| Secondary {
                cntlid: s.scid,
                vf: s.vfn,
                online: s.is_online(),
                vq: s.nvq,
                vi: s.nvi,
            })
            .collect();
        let mut namespaces = Vec::new();
        let active = admin.active_namespaces().map_err(a)?;
        for nsid in admin.allocated_namespaces().map_err(a)? {
            let uuid = if active.contains(&nsid) {
                admin
                    .namespace_descriptors(nsid)
                    .map_err(a)?
                    .into_iter()
                    .find_map(|d| match d {
                        fabric::admin::NamespaceId::Uuid(u) => {
                            Some(uuid::Uuid::from_bytes(u).to_string())
                        }
                        _ => None,
                    })
            } else {
                None
            };
            let id = admin.identify_allocated_namespace(nsid).map_err(a)?;
            let block = id
                .block_size()
                .ok_or(InventoryError::NoBlockSize { pf, nsid })?;
            namespaces.push(Namespace {
                nsid,
                size_bytes: id.nsze.saturating_mul(block),
                block_bytes: block,
                nguid: id.nguid.iter().map(|b| format!("{b:02x}")).collect(),
                attached: admin.namespace_controllers(nsid).map_err(a)?,
                lba_formats: id
                    .lbaf
                    .iter()
                    .enumerate()
                    .map(|(i, f)| LbaFormatView {
                        index: u8::try_from(i).unwrap_or(u8::MAX),
                        data_bytes: f.data_size(),
                        metadata_bytes: f.ms,
                        relative_performance: f.rp,
                        in_use: i == id.lba_format_index(),
                    })
                    .collect(),
                uuid,
            });
        }
        Ok(PfInventory {
            pf: pf.to_string(),
            model: ctrl.mn.trim().to_string(),
            serial: ctrl.sn.trim().to_string(),
            total_vfs: sriov.total_vfs,
            enabled_vfs: sriov.num_vfs,
            autoprobe: sriov.drivers_autoprobe,
            vq: Flexible {
                total: caps.vqfrt,
                primary: u32::from(caps.vqrfap),
                assigned: caps.vqrfa,
            },
            vi: Flexible {
                total: caps.vifrt,
                primary: u32::from(caps.virfap),
                assigned: caps.virfa,
            },
            secondaries,
            namespace_management: ctrl.supports_namespace_management(),
            unallocated_bytes: ctrl.unvmcap,
            namespaces,
        })
    }

    /// The namespaces as placement sees them.
    pub fn slots(&self) -> Vec<NamespaceSlot> {
        self.namespaces
            .iter()
            .map(|n| NamespaceSlot {
                nsid: n.nsid,
                size_bytes: n.size_bytes,
                attached: !n.attached.is_empty(),
            })
            .collect()
    }

    /// The flexible resources VF `vf` could be given: all but what the primary and the other
    /// secondaries hold (its own are given back when it is assigned anew).
    pub fn free_for(&self, vf: u16) -> FreeResources {
        let others = |f: fn(&Secondary) -> u16| -> u32 {
            self.secondaries
                .iter()
                .filter(|s| s.vf != vf)
                .map(|s| u32::from(f(s)))
                .sum()
        };
        FreeResources {
            vq: self
                .vq
                .total
                .saturating_sub(self.vq.primary + others(|s| s.vq)),
            vi: self
                .vi
                .total
                .saturating_sub(self.vi.primary + others(|s| s.vi)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::testing::{FakeAdmin, FakeSysfs};

    fn put(data: &mut [u8], at: usize, bytes: &[u8]) {
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A PF like the test bed's: 4 VFs, 8 VQ and 4 VI flexible resources, VF 1 holding 2 and 1,
    /// namespace management claimed, namespaces 1 (1 GiB) attached to VF 1's controller and 2
    /// (512 MiB, 4 KiB blocks) free.
    fn drive(
        cmd: &fabric::admin::AdminCommand,
        data: &mut [u8],
    ) -> Result<u32, fabric::admin::SubmitError> {
        data.fill(0);
        match (cmd.opcode, cmd.cdw10 & 0xff) {
            (0x06, 0x01) => {
                put(data, 4, b"testbed0001         ");
                put(data, 24, b"QEMU NVMe Ctrl");
                put(data, 256, &0x0008u16.to_le_bytes());
                put(data, 296, &(3u128 << 30).to_le_bytes());
            }
            (0x06, 0x14) => {
                put(data, 32, &8u32.to_le_bytes());
                put(data, 36, &2u32.to_le_bytes());
                put(data, 64, &4u32.to_le_bytes());
                put(data, 68, &1u32.to_le_bytes());
            }
            (0x06, 0x15) => {
                data[0] = 4;
                for i in 0..4u16 {
                    let e = 32 + usize::from(i) * 32;
                    put(data, e, &(i + 1).to_le_bytes());
                    put(data, e + 8, &(i + 1).to_le_bytes());
                    if i == 0 {
                        data[e + 4] = 1;
                        put(data, e + 10, &2u16.to_le_bytes());
                        put(data, e + 12, &1u16.to_le_bytes());
                    }
                }
            }
            (0x06, 0x10) if cmd.nsid == 0 => {
                put(data, 0, &1u32.to_le_bytes());
                put(data, 4, &2u32.to_le_bytes());
            }
            (0x06, 0x10) => {}
            // Namespace 2 is active on the PF itself: it has descriptors.
            (0x06, 0x02) if cmd.nsid == 0 => put(data, 0, &2u32.to_le_bytes()),
            (0x06, 0x02) => {}
            (0x06, 0x03) if cmd.nsid == 2 => {
                put(data, 0, &[3, 16, 0, 0]);
                put(data, 4, &[0x22; 16]);
            }
            (0x06, 0x11) => {
                let (blocks, lbads): (u64, u8) = if cmd.nsid == 1 {
                    (2 << 20, 9)
                } else {
                    (128 << 10, 12)
                };
                put(data, 0, &blocks.to_le_bytes());
                data[130] = lbads;
                data[104] = 0xab;
            }
            (0x06, 0x12) => {
                if cmd.nsid == 1 && (cmd.cdw10 >> 16) <= 1 {
                    put(data, 0, &1u16.to_le_bytes());
                    put(data, 2, &1u16.to_le_bytes());
                }
            }
            _ => {
                return Err(fabric::admin::SubmitError::Status(
                    fabric::admin::status::NvmeStatus::from_ioctl(0x1),
                ))
            }
        }
        Ok(0)
    }

    #[test]
    fn a_pf_is_read_whole_and_feeds_placement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = FakeSysfs::new(dir.path());
        sys.add_pci_function("0000:01:00.0", Some("nvme"), None);
        sys.set_sriov("0000:01:00.0", 4, 0, false);
        let admin = AdminDevice::new(FakeAdmin::new(drive));
        let inv = PfInventory::read(&sys.root(), "0000:01:00.0".parse().expect("pci"), &admin)
            .expect("inventory");
        assert_eq!(
            (inv.total_vfs, inv.enabled_vfs, inv.autoprobe),
            (4, 0, false)
        );
        assert_eq!(inv.serial, "testbed0001");
        assert_eq!(
            inv.vq,
            Flexible {
                total: 8,
                primary: 0,
                assigned: 2
            }
        );
        assert!(inv.namespace_management);
        assert_eq!(inv.unallocated_bytes, 3 << 30);
        assert_eq!(
            inv.secondaries[0],
            Secondary {
                cntlid: 1,
                vf: 1,
                online: true,
                vq: 2,
                vi: 1
            }
        );
        assert_eq!(inv.namespaces.len(), 2);
        assert_eq!(
            (
                inv.namespaces[0].size_bytes,
                inv.namespaces[0].attached.clone()
            ),
            (1 << 30, vec![1])
        );
        assert_eq!(
            (inv.namespaces[1].size_bytes, inv.namespaces[1].block_bytes),
            (512 << 20, 4096)
        );
        let in_use: Vec<_> = inv.namespaces[1]
            .lba_formats
            .iter()
            .filter(|f| f.in_use)
            .map(|f| f.data_bytes)
            .collect();
        assert_eq!(
            in_use,
            vec![Some(4096)],
            "{:?}",
            inv.namespaces[1].lba_formats
        );
        assert!(inv.namespaces[0].nguid.starts_with("ab") && inv.namespaces[0].nguid.len() == 32);
        assert_eq!(
            inv.slots()
                .iter()
                .filter(|s| !s.attached)
                .map(|s| s.nsid)
                .collect::<Vec<_>>(),
            vec![2]
        );
        // VF 2 may have what the primary and VF 1 do not hold; VF 1 gets its own back.
        assert_eq!(inv.free_for(2), FreeResources { vq: 6, vi: 3 });
        assert_eq!(inv.free_for(1), FreeResources { vq: 8, vi: 4 });
    }

    #[test]
    fn a_function_without_sr_iov_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = FakeSysfs::new(dir.path());
        sys.add_pci_function("0000:02:00.0", Some("nvme"), None);
        let admin = AdminDevice::new(FakeAdmin::new(drive));
        let e = PfInventory::read(&sys.root(), "0000:02:00.0".parse().expect("pci"), &admin)
            .expect_err("not sriov");
        assert!(
            e.to_string().contains("0000:02:00.0") && e.to_string().contains("SR-IOV"),
            "{e}"
        );
    }
}
