//! A vhost-user front end's memory table, served as the IOTLB the workers already read.
//!
//! vhost-user hands the backend each guest RAM region as an fd (a memfd or hugetlbfs file)
//! with its guest physical address, its size, where the front end mapped it (`user_addr`) and
//! the offset into the fd. Descriptors carry guest physical addresses and rings are given as
//! front-end virtual addresses (`SET_VRING_ADDR`), so the table answers both lookups: as an
//! [`IotlbSource`] keyed by guest physical address (IOVA = GPA, read-write), it feeds the same
//! [`crate::iotlb::IotlbTable`] that VDUSE's `IOTLB_GET_FD` feeds, and [`MemoryTable::to_gpa`]
//! turns a ring's front-end address into a guest address.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;

use crate::iotlb::{IotlbError, IotlbSource};
use crate::uapi::vduse::{VduseIotlbEntry, VDUSE_ACCESS_RW};

/// One region of guest RAM.
#[derive(Debug)]
pub struct Region {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
    /// Where the front end mapped it in its own address space.
    pub user_addr: u64,
    /// Offset of the region in `file`.
    pub mmap_offset: u64,
    /// The memory itself.
    pub file: File,
}

impl Region {
    fn last_gpa(&self) -> u64 {
        self.gpa + (self.size - 1)
    }
}

/// Why a region or a ring address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// A region of size 0, or one whose guest or front-end range wraps around.
    #[error("memory region at guest address {gpa:#x} of {size:#x} bytes (front-end address {user_addr:#x}) is empty or wraps around")]
    BadRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// Front-end address.
        user_addr: u64,
    },
    /// The region overlaps one already in the table.
    #[error("memory region [{gpa:#x}, +{size:#x}) overlaps the region at {other:#x}")]
    Overlap {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// The existing region's guest address.
        other: u64,
    },
    /// More regions than the slots this backend announced.
    #[error("memory table full: {max} regions")]
    Full {
        /// The announced maximum.
        max: usize,
    },
    /// A removal named a region the table does not hold.
    #[error("no memory region at guest address {gpa:#x} of {size:#x} bytes to remove")]
    NoSuchRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// A ring's front-end address lies in no region.
    #[error("front-end address {addr:#x} lies in no memory region")]
    Unmapped {
        /// Front-end virtual address.
        addr: u64,
    },
}

/// The regions, keyed by guest physical address.
#[derive(Debug, Default)]
pub struct MemoryTable {
    regions: BTreeMap<u64, Region>,
    max: usize,
}

impl MemoryTable {
    /// An empty table holding at most `max` regions.
    pub fn new(max: usize) -> Self {
        MemoryTable {
            regions: BTreeMap::new(),
            max,
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is known.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Checks a region on its own: non-empty, and neither range wraps.
    fn check(r: &Region) -> Result<(), MemoryError> {
        let bad = || MemoryError::BadRegion {
            gpa: r.gpa,
            size: r.size,
            user_addr: r.user_addr,
        };
        if r.size == 0 {
            return Err(bad());
        }
        r.gpa.checked_add(r.size - 1).ok_or_else(bad)?;
        r.user_addr.checked_add(r.size - 1).ok_or_else(bad)?;
        r.mmap_offset.checked_add(r.size - 1).ok_or_else(bad)?;
        Ok(())
    }

    /// Adds one region (`ADD_MEM_REG`); nothing changes when it is refused.
    pub fn add(&mut self, r: Region) -> Result<(), MemoryError> {
        Self::check(&r)?;
        if self.regions.len() >= self.max {
            return Err(MemoryError::Full { max: self.max });
        }
        if let Some(o) = self
            .regions
            .values()
            .find(|o| o.gpa <= r.last_gpa() && r.gpa <= o.last_gpa())
        {
            return Err(MemoryError::Overlap {
                gpa: r.gpa,
                size: r.size,
                other: o.gpa,
            });
        }
        self.regions.insert(r.gpa, r);
        Ok(())
    }

    /// Replaces the whole table (`SET_MEM_TABLE`); on a refusal the old table stays.
    pub fn replace(&mut self, regions: Vec<Region>) -> Result<(), MemoryError> {
        let mut next = MemoryTable::new(self.max);
        for r in regions {
            next.add(r)?;
        }
        *self = next;
        Ok(())
    }

    /// Removes the region at `gpa` of `size` bytes (`REM_MEM_REG`); returns its guest range.
    pub fn remove(&mut self, gpa: u64, size: u64) -> Result<(u64, u64), MemoryError> {
        match self.regions.get(&gpa) {
            Some(r) if r.size == size => {
                let range = (r.gpa, r.last_gpa());
                self.regions.remove(&gpa);
                Ok(range)
            }
            _ => Err(MemoryError::NoSuchRegion { gpa, size }),
        }
    }

    /// The guest address of the front end's virtual address `addr`.
    pub fn to_gpa(&self, addr: u64) -> Result<u64, MemoryError> {
        self.regions
            .values()
            .find(|r| r.user_addr <= addr && addr - r.user_addr < r.size)
            .map(|r| r.gpa + (addr - r.user_addr))
            .ok_or(MemoryError::Unmapped { addr })
    }
}

impl IotlbSource for MemoryTable {
    fn get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, IotlbError> {
        // The first region that ends at or after `start` and begins at or before `last`.
        let found = self
            .regions
            .range(..=last)
            .map(|(_, r)| r)
            .find(|r| r.last_gpa() >= start);
        let Some(r) = found else {
            return Ok(None);
        };
        let fd = r
            .file
            .try_clone()
            .map(OwnedFd::from)
            .map_err(|source| IotlbError::Dup {
                start: r.gpa,
                last: r.last_gpa(),
                source,
            })?;
        Ok(Some((
            fd,
            VduseIotlbEntry {
                offset: r.mmap_offset,
                start: r.gpa,
                last: r.last_gpa(),
                perm: VDUSE_ACCESS_RW,
                padding: [0; 7],
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iotlb::tests::memfd;
    use crate::iotlb::IotlbTable;
    use vm_memory::{Bytes, GuestAddress};

    fn region(gpa: u64, size: u64, user_addr: u64) -> Region {
        Region {
            gpa,
            size,
            user_addr,
            mmap_offset: 0,
            file: memfd(size),
        }
    }

    #[test]
    fn ring_addresses_translate_through_the_region_that_holds_them() {
        let mut t = MemoryTable::new(8);
        t.add(region(0, 0x10000, 0x7f00_0000_0000)).expect("add");
        t.add(region(0x10_0000, 0x1000, 0x7f10_0000_0000))
            .expect("add");
        assert_eq!(t.to_gpa(0x7f00_0000_0010), Ok(0x10));
        assert_eq!(t.to_gpa(0x7f10_0000_0fff), Ok(0x10_0fff));
        assert_eq!(
            t.to_gpa(0x7f00_0001_0000),
            Err(MemoryError::Unmapped {
                addr: 0x7f00_0001_0000
            })
        );
    }

    #[test]
    fn bad_overlapping_or_too_many_regions_are_refused_and_change_nothing() {
        let mut t = MemoryTable::new(2);
        assert!(matches!(
            t.add(region(0, 0, 0)),
            Err(MemoryError::BadRegion { .. })
        ));
        assert!(matches!(
            t.add(Region {
                gpa: u64::MAX - 10,
                ..region(0, 0x1000, 0)
            }),
            Err(MemoryError::BadRegion { .. })
        ));
        t.add(region(0x1000, 0x1000, 0x1000)).expect("add");
        assert_eq!(
            t.add(region(0x1fff, 0x1000, 0x9000)),
            Err(MemoryError::Overlap {
                gpa: 0x1fff,
                size: 0x1000,
                other: 0x1000
            })
        );
        t.add(region(0x2000, 0x1000, 0x2000))
            .expect("adjacent is fine");
        assert_eq!(
            t.add(region(0x8000, 0x1000, 0x8000)),
            Err(MemoryError::Full { max: 2 })
        );
        // A refused replacement keeps the old table.
        let bad = vec![region(0, 0x1000, 0), region(0x800, 0x1000, 0x5000)];
        assert!(t.replace(bad).is_err());
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.remove(0x1000, 0x2000),
            Err(MemoryError::NoSuchRegion {
                gpa: 0x1000,
                size: 0x2000
            })
        );
        assert_eq!(t.remove(0x1000, 0x1000), Ok((0x1000, 0x1fff)));
        assert_eq!(t.len(), 1);
    }

    /// Through the IOTLB table, guest addresses reach the region's file at its offset, and a
    /// removed region is gone from the next snapshot.
    #[test]
    fn the_iotlb_table_serves_guest_addresses_from_the_regions_files() {
        let mut t = MemoryTable::new(8);
        let file = memfd(0x3000);
        let probe = file.try_clone().expect("dup");
        t.add(Region {
            gpa: 0x4000,
            size: 0x2000,
            user_addr: 0x7000_0000,
            mmap_offset: 0x1000,
            file,
        })
        .expect("add");
        t.add(region(0x10000, 0x1000, 0x8000_0000)).expect("add");
        let table = IotlbTable::new();
        let up = table.map_all(&t).all_mapped().expect("mapped");
        assert_eq!(up.served(), 2);
        let mem = table.snapshot();
        mem.write_obj(0xabcd_u16, GuestAddress(0x4010))
            .expect("write");
        let mut b = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&probe, &mut b, 0x1010).expect("read");
        assert_eq!(u16::from_le_bytes(b), 0xabcd);
        assert!(mem.read_obj::<u8>(GuestAddress(0x6000)).is_err());
        let (start, last) = t.remove(0x4000, 0x2000).expect("remove");
        table.update(&t, start, last);
        let mem = table.snapshot();
        assert!(mem.read_obj::<u8>(GuestAddress(0x4010)).is_err());
        assert!(mem.read_obj::<u8>(GuestAddress(0x10000)).is_ok());
    }
}
