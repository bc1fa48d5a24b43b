//! Virtualization Management (opcode 1Ch): moving flexible queue and
//! interrupt resources between an SR-IOV primary controller and its
//! secondary controllers, and taking secondaries on- and offline.

use super::passthru::{opcode, AdminCommand};

/// Action (CDW10 bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum VirtAction {
    /// 1h: Primary Controller Flexible Allocation.
    PrimaryFlexibleAllocation = 0x1,
    /// 7h: Secondary Controller Offline.
    SecondaryOffline = 0x7,
    /// 8h: Secondary Controller Assign.
    SecondaryAssign = 0x8,
    /// 9h: Secondary Controller Online.
    SecondaryOnline = 0x9,
}

/// Resource Type (CDW10 bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ResourceType {
    /// 0h: VQ resources (queue pairs).
    Queue = 0,
    /// 1h: VI resources (interrupt vectors).
    Interrupt = 1,
}

/// A Virtualization Management command. `cntlid` is the controller acted
/// on (CDW10 bits 31:16); `nr` the number of resources (CDW11 bits 15:0).
/// Offline and online ignore the resource type and count.
pub fn virt_mgmt_command(
    action: VirtAction,
    rt: ResourceType,
    cntlid: u16,
    nr: u16,
) -> AdminCommand {
    AdminCommand {
        opcode: opcode::VIRTUALIZATION_MANAGEMENT,
        cdw10: (action as u32) | ((rt as u32) << 8) | (u32::from(cntlid) << 16),
        cdw11: u32::from(nr),
        ..AdminCommand::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_rt_and_cntlid_are_packed_into_cdw10_and_nr_into_cdw11() {
        let c = virt_mgmt_command(
            VirtAction::SecondaryAssign,
            ResourceType::Interrupt,
            0x0042,
            3,
        );
        assert_eq!(c.opcode, 0x1C);
        assert_eq!(c.nsid, 0);
        assert_eq!(c.cdw10, 0x0042_0108);
        assert_eq!(c.cdw11, 3);
        let c = virt_mgmt_command(VirtAction::SecondaryAssign, ResourceType::Queue, 0x0042, 8);
        assert_eq!(c.cdw10, 0x0042_0008);
        assert_eq!(c.cdw11, 8);
    }

    #[test]
    fn action_codes_match_the_specification() {
        let act = |a| virt_mgmt_command(a, ResourceType::Queue, 0, 0).cdw10 & 0xf;
        assert_eq!(act(VirtAction::PrimaryFlexibleAllocation), 1);
        assert_eq!(act(VirtAction::SecondaryOffline), 7);
        assert_eq!(act(VirtAction::SecondaryAssign), 8);
        assert_eq!(act(VirtAction::SecondaryOnline), 9);
        let c = virt_mgmt_command(VirtAction::SecondaryOnline, ResourceType::Queue, 0xffff, 0);
        assert_eq!(c.cdw10, 0xffff_0009);
    }
}
