//! Where a new volume goes: which namespace (a new one rounded up to the LBA size, or the
//! smallest free pre-provisioned one that fits, on drives without Namespace Management
//! create) and which VF (the lowest one no volume holds, while the PF's flexible queue and
//! interrupt resources last). Pure decisions over an inventory, so every rule is tested.

use std::collections::BTreeSet;

use crate::config::VfResources;

/// Why a volume cannot be placed on a PF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("size 0: a volume needs at least one logical block")]
    ZeroSize,
    #[error("{requested} bytes do not fit: the largest free namespace has {largest} bytes")]
    NoNamespace { requested: u64, largest: u64 },
    #[error("{requested} bytes do not fit in the {free} unallocated bytes")]
    NoCapacity { requested: u64, free: u64 },
    #[error("every VF of the PF ({total}) holds a volume")]
    NoVf { total: u16 },
    #[error("the PF's flexible resources are used up: {what} {free} left, a VF needs {needed}")]
    NoResources {
        what: &'static str,
        free: u32,
        needed: u32,
    },
}

/// A namespace of the PF's subsystem, as the inventory sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceSlot {
    pub nsid: u32,
    pub size_bytes: u64,
    /// Attached to some controller already (then it belongs to someone).
    pub attached: bool,
}

/// The namespace a volume gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceChoice {
    /// Create one of this many bytes (the request rounded up to whole blocks).
    Create { size_bytes: u64 },
    /// Take this existing namespace.
    Pool { nsid: u32, size_bytes: u64 },
}

/// The request rounded up to whole logical blocks of `lba_bytes`.
pub fn round_up(requested: u64, lba_bytes: u64) -> Result<u64, PlanError> {
    if requested == 0 {
        return Err(PlanError::ZeroSize);
    }
    let lba = lba_bytes.max(1);
    requested
        .div_ceil(lba)
        .checked_mul(lba)
        .ok_or(PlanError::NoCapacity { requested, free: 0 })
}

/// Chooses the namespace: created when the drive can (and has the room), else the smallest
/// free, unattached namespace that fits; `taken` are namespaces other volumes hold.
pub fn choose_namespace(
    requested: u64,
    lba_bytes: u64,
    can_create: bool,
    unallocated: u64,
    slots: &[NamespaceSlot],
    taken: &BTreeSet<u32>,
) -> Result<NamespaceChoice, PlanError> {
    let size = round_up(requested, lba_bytes)?;
    if can_create {
        return if size <= unallocated {
            Ok(NamespaceChoice::Create { size_bytes: size })
        } else {
            Err(PlanError::NoCapacity {
                requested: size,
                free: unallocated,
            })
        };
    }
    let free = slots
        .iter()
        .filter(|s| !s.attached && !taken.contains(&s.nsid));
    let best = free
        .clone()
        .filter(|s| s.size_bytes >= size)
        .min_by_key(|s| (s.size_bytes, s.nsid));
    match best {
        Some(s) => Ok(NamespaceChoice::Pool {
            nsid: s.nsid,
            size_bytes: s.size_bytes,
        }),
        None => Err(PlanError::NoNamespace {
            requested: size,
            largest: free.map(|s| s.size_bytes).max().unwrap_or(0),
        }),
    }
}

/// The PF's flexible resources still unassigned (from Primary Controller Capabilities and the
/// secondary controllers' assignments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeResources {
    pub vq: u32,
    pub vi: u32,
}

/// What one VF's secondary controller is given: its I/O queues plus the admin queue, and its
/// interrupt vectors.
pub fn per_vf(r: VfResources) -> FreeResources {
    FreeResources {
        vq: u32::from(r.io_queues) + 1,
        vi: u32::from(r.interrupt_vectors),
    }
}

/// Chooses the VF: the lowest number (1-based) of `total` that no volume holds, if the PF
/// still has the resources a VF needs (`free` counts what unused VFs do not hold).
pub fn choose_vf(
    total: u16,
    used: &BTreeSet<u16>,
    free: FreeResources,
    need: FreeResources,
) -> Result<u16, PlanError> {
    let vf = (1..=total)
        .find(|v| !used.contains(v))
        .ok_or(PlanError::NoVf { total })?;
    if free.vq < need.vq {
        return Err(PlanError::NoResources {
            what: "queue resources (VQ)",
            free: free.vq,
            needed: need.vq,
        });
    }
    if free.vi < need.vi {
        return Err(PlanError::NoResources {
            what: "interrupt resources (VI)",
            free: free.vi,
            needed: need.vi,
        });
    }
    Ok(vf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn slot(nsid: u32, size: u64, attached: bool) -> NamespaceSlot {
        NamespaceSlot {
            nsid,
            size_bytes: size,
            attached,
        }
    }

    #[test]
    fn sizes_round_up_to_whole_blocks() {
        assert_eq!(round_up(1, 4096), Ok(4096));
        assert_eq!(round_up(4096, 4096), Ok(4096));
        assert_eq!(round_up(4097, 512), Ok(4608));
        assert_eq!(round_up(0, 512), Err(PlanError::ZeroSize));
        assert!(round_up(u64::MAX, 4096).is_err());
    }

    #[test]
    fn a_drive_that_creates_gets_a_rounded_namespace_within_its_capacity() {
        let none = BTreeSet::new();
        assert_eq!(
            choose_namespace(G + 1, 4096, true, 2 * G, &[], &none),
            Ok(NamespaceChoice::Create {
                size_bytes: G + 4096
            })
        );
        assert_eq!(
            choose_namespace(3 * G, 4096, true, 2 * G, &[], &none),
            Err(PlanError::NoCapacity {
                requested: 3 * G,
                free: 2 * G
            })
        );
    }

    #[test]
    fn a_pool_gives_the_smallest_free_unattached_namespace_that_fits() {
        let slots = [
            slot(1, G, false),
            slot(2, G / 2, false),
            slot(3, 2 * G, false),
            slot(4, G, true),
        ];
        let mut taken = BTreeSet::new();
        let pick = |req, taken: &BTreeSet<u32>| choose_namespace(req, 512, false, 0, &slots, taken);
        assert_eq!(
            pick(G / 4, &taken),
            Ok(NamespaceChoice::Pool {
                nsid: 2,
                size_bytes: G / 2
            })
        );
        assert_eq!(
            pick(G / 2 + 1, &taken),
            Ok(NamespaceChoice::Pool {
                nsid: 1,
                size_bytes: G
            })
        );
        taken.insert(1);
        assert_eq!(
            pick(G / 2 + 1, &taken),
            Ok(NamespaceChoice::Pool {
                nsid: 3,
                size_bytes: 2 * G
            })
        );
        taken.insert(3);
        assert_eq!(
            pick(G, &taken),
            Err(PlanError::NoNamespace {
                requested: G,
                largest: G / 2
            }),
            "nsid 4 is attached elsewhere, 1 and 3 are taken"
        );
    }

    #[test]
    fn vfs_go_lowest_first_while_resources_last() {
        let need = per_vf(VfResources {
            io_queues: 2,
            interrupt_vectors: 1,
        });
        assert_eq!(need, FreeResources { vq: 3, vi: 1 });
        let plenty = FreeResources { vq: 12, vi: 4 };
        let mut used = BTreeSet::new();
        assert_eq!(choose_vf(4, &used, plenty, need), Ok(1));
        used.extend([1, 2]);
        assert_eq!(choose_vf(4, &used, plenty, need), Ok(3));
        used.extend([3, 4]);
        assert_eq!(
            choose_vf(4, &used, plenty, need),
            Err(PlanError::NoVf { total: 4 })
        );
        let e =
            choose_vf(4, &BTreeSet::new(), FreeResources { vq: 2, vi: 4 }, need).expect_err("vq");
        assert!(e.to_string().contains("VQ"), "{e}");
        let e =
            choose_vf(4, &BTreeSet::new(), FreeResources { vq: 9, vi: 0 }, need).expect_err("vi");
        assert!(e.to_string().contains("VI"), "{e}");
    }
}
