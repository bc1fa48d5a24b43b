//! Mapping on demand what a chain points to and the snapshot lacks: the VDUSE bounce region
//! (virtio_vdpa) appears on the driver's first DMA mapping and is announced by no message.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use virtio_queue::Queue;

use super::exec::Exec;
use crate::iotlb::{IotlbMemory, IotlbSource};

impl Exec {
    /// Walks the chain at `head` with raw reads and maps every range it needs that the
    /// snapshot lacks and the source knows. Returns the number of regions mapped.
    pub(super) fn fault_in_chain(
        &self,
        q: &Queue,
        mem: &IotlbMemory,
        src: &dyn IotlbSource,
        head: u16,
    ) -> usize {
        const F_NEXT: u16 = 1;
        const F_INDIRECT: u16 = 4;
        let mut missing: Vec<(u64, u32)> = Vec::new();
        let mut table = q.desc_table();
        let mut size = q.size();
        let mut idx = head;
        let mut indirect = false;
        let mut ttl = u32::from(size);
        while ttl > 0 && idx < size {
            ttl -= 1;
            let Some(daddr) = table.checked_add(u64::from(idx) * 16) else {
                break;
            };
            if !mem.check_range(GuestAddress(daddr), 16, Permissions::No) {
                missing.push((daddr, 16));
                break;
            }
            let Ok(raw) = mem.read_obj::<virtio_queue::desc::RawDescriptor>(GuestAddress(daddr))
            else {
                break;
            };
            let d = virtio_queue::desc::split::Descriptor::from(raw);
            let (addr, len, flags) = (d.addr().0, d.len(), d.flags());
            let mapped = len == 0 || mem.check_range(d.addr(), len as usize, Permissions::No);
            if !mapped {
                missing.push((addr, len));
            }
            if flags & F_INDIRECT != 0 && !indirect {
                if !mapped {
                    break;
                }
                table = addr;
                size = u16::try_from(len / 16).unwrap_or(u16::MAX);
                ttl = u32::from(size);
                idx = 0;
                indirect = true;
                continue;
            }
            if flags & F_NEXT == 0 {
                break;
            }
            idx = d.next();
        }
        let mut n = 0;
        for (addr, len) in missing {
            match self.iotlb.fault_in(src, addr, len) {
                Ok(m) => n += m,
                Err(e) => tracing::debug!(queue = self.index, addr, len, "IOTLB fault-in: {e}"),
            }
        }
        n
    }
}
