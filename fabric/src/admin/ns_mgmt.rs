//! Namespace Management (opcode 0Dh) and Namespace Attachment (opcode
//! 15h): command encoding and their host-to-controller data structures.

use crate::bytes::FieldsMut;

use super::identify::{CONTROLLER_LIST_MAX, IDENTIFY_DATA_LEN};
use super::passthru::{opcode, AdminCommand};

/// What a new namespace looks like. Fields are named after the Identify
/// Namespace fields they set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceCreate {
    /// Namespace Size in logical blocks of the chosen format.
    pub nsze: u64,
    /// Namespace Capacity in logical blocks (equal to `nsze` unless thin
    /// provisioned).
    pub ncap: u64,
    /// Formatted LBA Size: the LBA format index (see
    /// [`IdentifyNamespace::lba_format_index`](super::IdentifyNamespace::lba_format_index)).
    pub flbas: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Multi-path I/O and Namespace Sharing: 1 to allow attaching the
    /// namespace to more than one controller.
    pub nmic: u8,
    /// ANA Group Identifier, 0 to let the controller choose.
    pub anagrpid: u32,
    /// NVM Set Identifier, 0 for none.
    pub nvmsetid: u16,
    /// Endurance Group Identifier, 0 for none.
    pub endgid: u16,
    /// Command Set Identifier (0 = NVM command set).
    pub csi: u8,
}

impl NamespaceCreate {
    /// A private (non-shared), unprotected, fully provisioned NVM namespace
    /// of `blocks` logical blocks in LBA format `flbas`.
    pub fn new(blocks: u64, flbas: u8) -> Self {
        Self {
            nsze: blocks,
            ncap: blocks,
            flbas,
            dps: 0,
            nmic: 0,
            anagrpid: 0,
            nvmsetid: 0,
            endgid: 0,
            csi: 0,
        }
    }

    /// The 4096-byte data structure, laid out as Identify Namespace: NSZE
    /// at 0, NCAP at 8, FLBAS at 26, DPS at 29, NMIC at 30, ANAGRPID at 92,
    /// NVMSETID at 100, ENDGID at 102.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; IDENTIFY_DATA_LEN];
        let mut w = FieldsMut::new(&mut buf);
        w.put_u64(0, self.nsze);
        w.put_u64(8, self.ncap);
        w.put_u8(26, self.flbas);
        w.put_u8(29, self.dps);
        w.put_u8(30, self.nmic);
        w.put_u32(92, self.anagrpid);
        w.put_u16(100, self.nvmsetid);
        w.put_u16(102, self.endgid);
        buf
    }

    /// The create command: NSID 0, SEL 0 in CDW10, CSI in CDW11 bits 31:24.
    /// Completion dword 0 is the new NSID.
    pub fn command(&self) -> AdminCommand {
        AdminCommand {
            opcode: opcode::NAMESPACE_MANAGEMENT,
            nsid: 0,
            cdw10: SEL_CREATE,
            cdw11: u32::from(self.csi) << 24,
            ..AdminCommand::default()
        }
    }
}

/// SEL value of Namespace Management: create.
const SEL_CREATE: u32 = 0;
/// SEL value of Namespace Management: delete.
const SEL_DELETE: u32 = 1;

/// Namespace Management delete of `nsid` (SEL 1, no data).
pub fn delete_namespace_command(nsid: u32) -> AdminCommand {
    AdminCommand {
        opcode: opcode::NAMESPACE_MANAGEMENT,
        nsid,
        cdw10: SEL_DELETE,
        ..AdminCommand::default()
    }
}

/// Namespace Attachment selector (CDW10 bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Attachment {
    /// 0h: Controller Attach.
    Attach = 0,
    /// 1h: Controller Detach.
    Detach = 1,
}

/// A Namespace Attachment command for `nsid`.
pub fn attachment_command(nsid: u32, sel: Attachment) -> AdminCommand {
    AdminCommand {
        opcode: opcode::NAMESPACE_ATTACHMENT,
        nsid,
        cdw10: sel as u32,
        ..AdminCommand::default()
    }
}

/// A Controller List data structure: number of identifiers (u16) followed
/// by the identifiers; `None` if there are more than 2047.
pub fn encode_controller_list(ids: &[u16]) -> Option<Vec<u8>> {
    if ids.len() > CONTROLLER_LIST_MAX {
        return None;
    }
    let mut buf = vec![0u8; IDENTIFY_DATA_LEN];
    let mut w = FieldsMut::new(&mut buf);
    w.put_u16(0, ids.len() as u16);
    for (i, id) in ids.iter().enumerate() {
        w.put_u16(2 + i * 2, *id);
    }
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::identify::{decode_controller_list, IdentifyNamespace};

    #[test]
    fn create_data_puts_each_field_at_its_identify_namespace_offset() {
        let c = NamespaceCreate {
            nsze: 0x0102_0304_0506_0708,
            ncap: 0x1112_1314_1516_1718,
            flbas: 0x12,
            dps: 0x09,
            nmic: 1,
            anagrpid: 0xA1A2_A3A4,
            nvmsetid: 0xB1B2,
            endgid: 0xC1C2,
            csi: 0,
        };
        let b = c.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        assert_eq!(b[26], 0x12);
        assert_eq!(b[29], 0x09);
        assert_eq!(b[30], 1);
        assert_eq!(&b[92..96], &[0xA4, 0xA3, 0xA2, 0xA1]);
        assert_eq!(&b[100..102], &[0xB2, 0xB1]);
        assert_eq!(&b[102..104], &[0xC2, 0xC1]);
        let nonzero: usize = b.iter().filter(|&&x| x != 0).count();
        assert_eq!(nonzero, 8 + 8 + 1 + 1 + 1 + 4 + 2 + 2);
        // Round trip through the Identify Namespace decoder.
        let ns = IdentifyNamespace::decode(&b).unwrap();
        assert_eq!(
            (ns.nsze, ns.ncap, ns.flbas, ns.dps, ns.nmic),
            (c.nsze, c.ncap, 0x12, 9, 1)
        );
    }

    #[test]
    fn create_command_is_opcode_0d_sel_0_with_csi_in_cdw11() {
        let mut c = NamespaceCreate::new(100, 0);
        c.csi = 2;
        let cmd = c.command();
        assert_eq!(cmd.opcode, 0x0D);
        assert_eq!(cmd.nsid, 0);
        assert_eq!(cmd.cdw10, 0);
        assert_eq!(cmd.cdw11, 0x0200_0000);
    }

    #[test]
    fn delete_command_is_opcode_0d_sel_1_on_the_nsid() {
        let cmd = delete_namespace_command(7);
        assert_eq!((cmd.opcode, cmd.nsid, cmd.cdw10), (0x0D, 7, 1));
    }

    #[test]
    fn attachment_commands_select_attach_0_and_detach_1() {
        let a = attachment_command(3, Attachment::Attach);
        assert_eq!((a.opcode, a.nsid, a.cdw10), (0x15, 3, 0));
        let d = attachment_command(3, Attachment::Detach);
        assert_eq!((d.opcode, d.nsid, d.cdw10), (0x15, 3, 1));
    }

    #[test]
    fn controller_list_is_count_then_little_endian_ids() {
        let b = encode_controller_list(&[0x0041, 0x0102]).unwrap();
        assert_eq!(&b[0..6], &[2, 0, 0x41, 0, 0x02, 0x01]);
        assert!(b[6..].iter().all(|&x| x == 0));
        assert_eq!(decode_controller_list(&b).unwrap(), vec![0x41, 0x102]);
        assert!(encode_controller_list(&vec![1u16; 2048]).is_none());
        assert!(encode_controller_list(&vec![1u16; 2047]).is_some());
    }
}
