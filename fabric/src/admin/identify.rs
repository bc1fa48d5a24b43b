//! Identify (opcode 06h): command encoding and decoding of the returned
//! data structures, with offsets from the NVMe Base Specification 2.0.

use crate::bytes::Fields;
use crate::error::DecodeError;

use super::passthru::{opcode, AdminCommand};

/// Every Identify data structure is 4096 bytes.
pub const IDENTIFY_DATA_LEN: usize = 4096;

/// Identify Controller or Namespace Structure (CNS) values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cns {
    /// 00h: Identify Namespace for an active NSID.
    Namespace = 0x00,
    /// 01h: Identify Controller.
    Controller = 0x01,
    /// 02h: Active Namespace ID list.
    ActiveNamespaceList = 0x02,
    /// 03h: Namespace Identification Descriptor list of an active NSID.
    NamespaceDescriptors = 0x03,
    /// 10h: Allocated Namespace ID list.
    AllocatedNamespaceList = 0x10,
    /// 11h: Identify Namespace for an allocated NSID, attached or not.
    AllocatedNamespace = 0x11,
    /// 12h: controllers attached to the namespace in NSID.
    NamespaceControllerList = 0x12,
    /// 13h: all controllers in the NVM subsystem.
    SubsystemControllerList = 0x13,
    /// 14h: Primary Controller Capabilities.
    PrimaryControllerCapabilities = 0x14,
    /// 15h: Secondary Controller List.
    SecondaryControllerList = 0x15,
}

/// An Identify command: CNS in CDW10 bits 7:0, CNTID in CDW10 bits 31:16.
pub fn identify_command(cns: Cns, nsid: u32, cntid: u16) -> AdminCommand {
    AdminCommand {
        opcode: opcode::IDENTIFY,
        nsid,
        cdw10: u32::from(cns as u8) | (u32::from(cntid) << 16),
        ..AdminCommand::default()
    }
}

/// The NVMe version a controller implements (VER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NvmeVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u8,
    /// Tertiary version.
    pub tertiary: u8,
}

impl NvmeVersion {
    fn from_raw(v: u32) -> Self {
        Self {
            major: (v >> 16) as u16,
            minor: (v >> 8) as u8,
            tertiary: v as u8,
        }
    }
}

/// Controller type (CNTRLTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerType {
    /// 0: not reported (controllers before NVMe 1.4).
    NotReported,
    /// 1: I/O controller.
    Io,
    /// 2: discovery controller.
    Discovery,
    /// 3: administrative controller.
    Administrative,
    /// A reserved value.
    Reserved(u8),
}

impl ControllerType {
    fn from_raw(v: u8) -> Self {
        match v {
            0 => ControllerType::NotReported,
            1 => ControllerType::Io,
            2 => ControllerType::Discovery,
            3 => ControllerType::Administrative,
            r => ControllerType::Reserved(r),
        }
    }
}

/// The fields of the Identify Controller data structure this stack uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI Vendor ID (bytes 1:0).
    pub vid: u16,
    /// PCI Subsystem Vendor ID (3:2).
    pub ssvid: u16,
    /// Serial Number (23:4).
    pub sn: String,
    /// Model Number (63:24).
    pub mn: String,
    /// Firmware Revision (71:64).
    pub fr: String,
    /// Recommended Arbitration Burst (72).
    pub rab: u8,
    /// IEEE OUI Identifier (75:73), as stored (least significant byte first).
    pub ieee: [u8; 3],
    /// Multi-path I/O and Namespace Sharing Capabilities (76).
    pub cmic: u8,
    /// Maximum Data Transfer Size, a power of two in units of CAP.MPSMIN; 0
    /// is no limit (77).
    pub mdts: u8,
    /// Controller ID (79:78).
    pub cntlid: u16,
    /// Version (83:80).
    pub ver: NvmeVersion,
    /// Optional Asynchronous Events Supported (95:92).
    pub oaes: u32,
    /// Controller Attributes (99:96).
    pub ctratt: u32,
    /// Controller Type (111).
    pub cntrltype: ControllerType,
    /// FRU Globally Unique Identifier (127:112).
    pub fguid: [u8; 16],
    /// Optional Admin Command Support (257:256).
    pub oacs: u16,
    /// Abort Command Limit (258).
    pub acl: u8,
    /// Asynchronous Event Request Limit (259).
    pub aerl: u8,
    /// Firmware Updates (260).
    pub frmw: u8,
    /// Log Page Attributes (261).
    pub lpa: u8,
    /// Error Log Page Entries, zero-based (262).
    pub elpe: u8,
    /// Number of Power States Support, zero-based (263).
    pub npss: u8,
    /// Total NVM Capacity in bytes (295:280).
    pub tnvmcap: u128,
    /// Unallocated NVM Capacity in bytes (311:296).
    pub unvmcap: u128,
    /// Submission Queue Entry Size: bits 3:0 required, 7:4 maximum (512).
    pub sqes: u8,
    /// Completion Queue Entry Size: bits 3:0 required, 7:4 maximum (513).
    pub cqes: u8,
    /// Maximum Outstanding Commands (515:514).
    pub maxcmd: u16,
    /// Number of Namespaces: the largest valid NSID (519:516).
    pub nn: u32,
    /// Optional NVM Command Support (521:520).
    pub oncs: u16,
    /// Volatile Write Cache (525).
    pub vwc: u8,
    /// SGL Support (539:536).
    pub sgls: u32,
    /// Maximum Number of Allowed Namespaces (543:540).
    pub mnan: u32,
    /// NVM Subsystem NVMe Qualified Name (1023:768).
    pub subnqn: String,
    /// I/O Queue Command Capsule Supported Size, fabrics only (1795:1792).
    pub ioccsz: u32,
    /// I/O Queue Response Capsule Supported Size, fabrics only (1799:1796).
    pub iorcsz: u32,
    /// In Capsule Data Offset, fabrics only (1801:1800).
    pub icdoff: u16,
    /// Fabrics Controller Attributes (1802).
    pub fcatt: u8,
    /// Maximum SGL Data Block Descriptors (1803).
    pub msdbd: u8,
}

/// OACS bit 3: Namespace Management and Attachment supported.
const OACS_NS_MGMT: u16 = 1 << 3;
/// OACS bit 7: Virtualization Management supported.
const OACS_VIRT_MGMT: u16 = 1 << 7;
/// CMIC bit 1: the subsystem may have two or more controllers.
const CMIC_MULTI_CTRL: u8 = 1 << 1;

impl IdentifyController {
    /// Decodes a 4096-byte Identify Controller data structure.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "Identify Controller", IDENTIFY_DATA_LEN)?;
        Ok(Self {
            vid: f.u16(0),
            ssvid: f.u16(2),
            sn: f.text(4, 20),
            mn: f.text(24, 40),
            fr: f.text(64, 8),
            rab: f.u8(72),
            ieee: f.bytes(73),
            cmic: f.u8(76),
            mdts: f.u8(77),
            cntlid: f.u16(78),
            ver: NvmeVersion::from_raw(f.u32(80)),
            oaes: f.u32(92),
            ctratt: f.u32(96),
            cntrltype: ControllerType::from_raw(f.u8(111)),
            fguid: f.bytes(112),
            oacs: f.u16(256),
            acl: f.u8(258),
            aerl: f.u8(259),
            frmw: f.u8(260),
            lpa: f.u8(261),
            elpe: f.u8(262),
            npss: f.u8(263),
            tnvmcap: f.u128(280),
            unvmcap: f.u128(296),
            sqes: f.u8(512),
            cqes: f.u8(513),
            maxcmd: f.u16(514),
            nn: f.u32(516),
            oncs: f.u16(520),
            vwc: f.u8(525),
            sgls: f.u32(536),
            mnan: f.u32(540),
            subnqn: f.text(768, 256),
            ioccsz: f.u32(1792),
            iorcsz: f.u32(1796),
            icdoff: f.u16(1800),
            fcatt: f.u8(1802),
            msdbd: f.u8(1803),
        })
    }

    /// Namespace Management and Namespace Attachment are supported.
    pub fn supports_namespace_management(&self) -> bool {
        self.oacs & OACS_NS_MGMT != 0
    }

    /// Virtualization Management (SR-IOV flexible resources) is supported.
    pub fn supports_virtualization_management(&self) -> bool {
        self.oacs & OACS_VIRT_MGMT != 0
    }

    /// The subsystem may contain more than one controller, so namespaces
    /// can be shared.
    pub fn multi_controller(&self) -> bool {
        self.cmic & CMIC_MULTI_CTRL != 0
    }
}

/// One Namespace Identification Descriptor (CNS 03h; NVMe Base 2.0, Figure 315).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceId {
    /// NIDT 1: IEEE Extended Unique Identifier, 8 bytes.
    Eui64([u8; 8]),
    /// NIDT 2: Namespace Globally Unique Identifier, 16 bytes.
    Nguid([u8; 16]),
    /// NIDT 3: Namespace UUID, 16 bytes.
    Uuid([u8; 16]),
    /// NIDT 4: Command Set Identifier, 1 byte.
    Csi(u8),
}

/// Decodes a Namespace Identification Descriptor list: {NIDT, NIDL, 2 reserved, NID} entries
/// until an NIDT of 0 or the end of the buffer. A descriptor whose length does not match its
/// type, or that runs past the buffer, is an error; unknown types are skipped.
pub fn decode_namespace_descriptors(buf: &[u8]) -> Result<Vec<NamespaceId>, DecodeError> {
    const S: &str = "Namespace Identification Descriptor list";
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let (nidt, nidl) = (buf[at], usize::from(buf[at + 1]));
        if nidt == 0 {
            break;
        }
        let start = at + 4;
        let nid = buf.get(start..start + nidl).ok_or(DecodeError::Truncated {
            structure: S,
            needed: start + nidl,
            got: buf.len(),
        })?;
        let want = match nidt {
            1 => Some(8),
            2 | 3 => Some(16),
            4 => Some(1),
            _ => None,
        };
        if let Some(w) = want {
            if nidl != w {
                return Err(DecodeError::InvalidField {
                    structure: S,
                    field: "NIDL (wrong for its NIDT)",
                    value: nidl as u64,
                });
            }
        }
        match nidt {
            1 => out.push(NamespaceId::Eui64(nid.try_into().unwrap_or([0; 8]))),
            2 => out.push(NamespaceId::Nguid(nid.try_into().unwrap_or([0; 16]))),
            3 => out.push(NamespaceId::Uuid(nid.try_into().unwrap_or([0; 16]))),
            4 => out.push(NamespaceId::Csi(nid[0])),
            _ => {}
        }
        at = start + nidl;
    }
    Ok(out)
}

/// One LBA Format entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata Size in bytes per LBA.
    pub ms: u16,
    /// LBA Data Size as a power of two; 0 means the format is unavailable.
    pub lbads: u8,
    /// Relative Performance (0 best .. 3 degraded).
    pub rp: u8,
}

impl LbaFormat {
    /// The data size in bytes, if the format is usable (LBADS >= 9, i.e.
    /// at least 512 bytes, as the specification requires).
    pub fn data_size(&self) -> Option<u64> {
        (9..64).contains(&self.lbads).then(|| 1u64 << self.lbads)
    }
}

/// The fields of the Identify Namespace data structure this stack uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks (7:0).
    pub nsze: u64,
    /// Namespace Capacity in logical blocks (15:8).
    pub ncap: u64,
    /// Namespace Utilization in logical blocks (23:16).
    pub nuse: u64,
    /// Namespace Features (24).
    pub nsfeat: u8,
    /// Number of LBA Formats, zero-based (25).
    pub nlbaf: u8,
    /// Formatted LBA Size (26).
    pub flbas: u8,
    /// Metadata Capabilities (27).
    pub mc: u8,
    /// End-to-end Data Protection Capabilities (28).
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings (29).
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (30).
    pub nmic: u8,
    /// Reservation Capabilities (31).
    pub rescap: u8,
    /// NVM Capacity in bytes (63:48).
    pub nvmcap: u128,
    /// ANA Group Identifier (95:92).
    pub anagrpid: u32,
    /// Namespace Attributes (99).
    pub nsattr: u8,
    /// NVM Set Identifier (101:100).
    pub nvmsetid: u16,
    /// Endurance Group Identifier (103:102).
    pub endgid: u16,
    /// Namespace Globally Unique Identifier (119:104).
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier (127:120).
    pub eui64: [u8; 8],
    /// The valid LBA formats (nlbaf + 1 entries from byte 128, 4 bytes each).
    pub lbaf: Vec<LbaFormat>,
}

/// The most LBA formats the structure can hold.
const MAX_LBA_FORMATS: usize = 64;

impl IdentifyNamespace {
    /// Decodes a 4096-byte Identify Namespace data structure.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "Identify Namespace", IDENTIFY_DATA_LEN)?;
        let nlbaf = f.u8(25);
        let count = (usize::from(nlbaf) + 1).min(MAX_LBA_FORMATS);
        let lbaf = (0..count)
            .map(|i| {
                let off = 128 + i * 4;
                LbaFormat {
                    ms: f.u16(off),
                    lbads: f.u8(off + 2),
                    rp: f.u8(off + 3) & 0x3,
                }
            })
            .collect();
        Ok(Self {
            nsze: f.u64(0),
            ncap: f.u64(8),
            nuse: f.u64(16),
            nsfeat: f.u8(24),
            nlbaf,
            flbas: f.u8(26),
            mc: f.u8(27),
            dpc: f.u8(28),
            dps: f.u8(29),
            nmic: f.u8(30),
            rescap: f.u8(31),
            nvmcap: f.u128(48),
            anagrpid: f.u32(92),
            nsattr: f.u8(99),
            nvmsetid: f.u16(100),
            endgid: f.u16(102),
            nguid: f.bytes(104),
            eui64: f.bytes(120),
            lbaf,
        })
    }

    /// The index of the LBA format in use: FLBAS bits 3:0, with bits 6:5
    /// as the upper bits when more than 16 formats exist.
    pub fn lba_format_index(&self) -> usize {
        usize::from(self.flbas & 0x0f) | (usize::from((self.flbas >> 5) & 0x3) << 4)
    }

    /// The LBA format in use, if FLBAS points at a listed one.
    pub fn current_lba_format(&self) -> Option<LbaFormat> {
        self.lbaf.get(self.lba_format_index()).copied()
    }

    /// The logical block size in bytes.
    pub fn block_size(&self) -> Option<u64> {
        self.current_lba_format().and_then(|f| f.data_size())
    }

    /// The namespace may be attached to more than one controller.
    pub fn shared(&self) -> bool {
        self.nmic & 1 != 0
    }
}

/// Decodes a Namespace ID list (CNS 02h, 10h): up to 1024 NSIDs in
/// increasing order, ended by the first zero.
pub fn decode_namespace_list(buf: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let f = Fields::new(buf, "Namespace List", IDENTIFY_DATA_LEN)?;
    Ok((0..IDENTIFY_DATA_LEN / 4)
        .map(|i| f.u32(i * 4))
        .take_while(|&id| id != 0)
        .collect())
}

/// Most identifiers a Controller List can hold.
pub const CONTROLLER_LIST_MAX: usize = 2047;

/// Decodes a Controller List (CNS 12h, 13h): a count, then that many
/// controller IDs.
pub fn decode_controller_list(buf: &[u8]) -> Result<Vec<u16>, DecodeError> {
    let f = Fields::new(buf, "Controller List", IDENTIFY_DATA_LEN)?;
    let n = usize::from(f.u16(0));
    if n > CONTROLLER_LIST_MAX {
        return Err(DecodeError::InvalidField {
            structure: "Controller List",
            field: "Number of Identifiers",
            value: n as u64,
        });
    }
    Ok((0..n).map(|i| f.u16(2 + i * 2)).collect())
}

/// Primary Controller Capabilities (CNS 14h): the flexible resources an
/// SR-IOV physical function can hand to its secondary controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryControllerCapabilities {
    /// Controller Identifier (1:0).
    pub cntlid: u16,
    /// Port Identifier (3:2).
    pub portid: u16,
    /// Controller Resource Types: bit 0 VQ, bit 1 VI (4).
    pub crt: u8,
    /// VQ Resources Flexible Total (35:32).
    pub vqfrt: u32,
    /// VQ Resources Flexible Assigned to secondaries (39:36).
    pub vqrfa: u32,
    /// VQ Resources Flexible Allocated to Primary (41:40).
    pub vqrfap: u16,
    /// VQ Resources Private Total (43:42).
    pub vqprt: u16,
    /// VQ Resources Flexible Secondary Maximum (45:44).
    pub vqfrsm: u16,
    /// VQ Flexible Resource Preferred Granularity (47:46).
    pub vqgran: u16,
    /// VI Resources Flexible Total (67:64).
    pub vifrt: u32,
    /// VI Resources Flexible Assigned to secondaries (71:68).
    pub virfa: u32,
    /// VI Resources Flexible Allocated to Primary (73:72).
    pub virfap: u16,
    /// VI Resources Private Total (75:74).
    pub viprt: u16,
    /// VI Resources Flexible Secondary Maximum (77:76).
    pub vifrsm: u16,
    /// VI Flexible Resource Preferred Granularity (79:78).
    pub vigran: u16,
}

impl PrimaryControllerCapabilities {
    /// Decodes the 4096-byte structure.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "Primary Controller Capabilities", IDENTIFY_DATA_LEN)?;
        Ok(Self {
            cntlid: f.u16(0),
            portid: f.u16(2),
            crt: f.u8(4),
            vqfrt: f.u32(32),
            vqrfa: f.u32(36),
            vqrfap: f.u16(40),
            vqprt: f.u16(42),
            vqfrsm: f.u16(44),
            vqgran: f.u16(46),
            vifrt: f.u32(64),
            virfa: f.u32(68),
            virfap: f.u16(72),
            viprt: f.u16(74),
            vifrsm: f.u16(76),
            vigran: f.u16(78),
        })
    }
}

/// One Secondary Controller Entry (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondaryController {
    /// Secondary Controller Identifier (1:0).
    pub scid: u16,
    /// Primary Controller Identifier (3:2).
    pub pcid: u16,
    /// Secondary Controller State: bit 0 set when online (4).
    pub scs: u8,
    /// Virtual Function Number, 1-based; 0 if not a VF (9:8).
    pub vfn: u16,
    /// Number of VQ Flexible Resources Assigned (11:10).
    pub nvq: u16,
    /// Number of VI Flexible Resources Assigned (13:12).
    pub nvi: u16,
}

impl SecondaryController {
    /// The secondary controller is online.
    pub fn is_online(&self) -> bool {
        self.scs & 1 != 0
    }
}

/// Most entries a Secondary Controller List holds.
pub const SECONDARY_LIST_MAX: usize = 127;

/// Decodes a Secondary Controller List (CNS 15h): a count in byte 0, then
/// 32-byte entries from byte 32.
pub fn decode_secondary_controller_list(
    buf: &[u8],
) -> Result<Vec<SecondaryController>, DecodeError> {
    let f = Fields::new(buf, "Secondary Controller List", IDENTIFY_DATA_LEN)?;
    let n = usize::from(f.u8(0));
    if n > SECONDARY_LIST_MAX {
        return Err(DecodeError::InvalidField {
            structure: "Secondary Controller List",
            field: "Number of Identifiers",
            value: n as u64,
        });
    }
    Ok((0..n)
        .map(|i| {
            let o = 32 + i * 32;
            SecondaryController {
                scid: f.u16(o),
                pcid: f.u16(o + 2),
                scs: f.u8(o + 4),
                vfn: f.u16(o + 8),
                nvq: f.u16(o + 10),
                nvi: f.u16(o + 12),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Vec<u8> {
        vec![0u8; IDENTIFY_DATA_LEN]
    }

    fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn identify_command_puts_cns_and_cntid_in_cdw10() {
        let c = identify_command(Cns::SecondaryControllerList, 0, 0x1234);
        assert_eq!(c.opcode, 0x06);
        assert_eq!(c.cdw10, 0x1234_0015);
        let c = identify_command(Cns::Namespace, 5, 0);
        assert_eq!((c.nsid, c.cdw10), (5, 0));
        assert_eq!(Cns::Controller as u8, 0x01);
        assert_eq!(Cns::ActiveNamespaceList as u8, 0x02);
        assert_eq!(Cns::AllocatedNamespaceList as u8, 0x10);
        assert_eq!(Cns::NamespaceControllerList as u8, 0x12);
        assert_eq!(Cns::SubsystemControllerList as u8, 0x13);
        assert_eq!(Cns::PrimaryControllerCapabilities as u8, 0x14);
    }

    #[test]
    fn identify_controller_fields_are_read_at_their_spec_offsets() {
        let mut b = page();
        put(&mut b, 0, &0x8086u16.to_le_bytes());
        put(&mut b, 2, &0x1af4u16.to_le_bytes());
        put(&mut b, 4, b"SN0001              ");
        put(&mut b, 24, b"Example NVMe Drive                      ");
        put(&mut b, 64, b"1.0     ");
        b[72] = 6;
        put(&mut b, 73, &[0x11, 0x22, 0x33]);
        b[76] = 0b10;
        b[77] = 5;
        put(&mut b, 78, &0x0042u16.to_le_bytes());
        put(&mut b, 80, &0x0002_0100u32.to_le_bytes());
        put(&mut b, 92, &0x0000_0900u32.to_le_bytes());
        put(&mut b, 96, &0x0000_0001u32.to_le_bytes());
        b[111] = 1;
        put(&mut b, 112, &[0xAB; 16]);
        put(&mut b, 256, &0x008Au16.to_le_bytes());
        b[258] = 3;
        b[259] = 4;
        b[260] = 0x17;
        b[261] = 0x0e;
        b[262] = 63;
        b[263] = 2;
        put(&mut b, 280, &(4_000_000_000_000u128).to_le_bytes());
        put(&mut b, 296, &(1_000_000u128).to_le_bytes());
        b[512] = 0x66;
        b[513] = 0x44;
        put(&mut b, 514, &128u16.to_le_bytes());
        put(&mut b, 516, &1024u32.to_le_bytes());
        put(&mut b, 520, &0x005Fu16.to_le_bytes());
        b[525] = 1;
        put(&mut b, 536, &0x0010_0001u32.to_le_bytes());
        put(&mut b, 540, &256u32.to_le_bytes());
        put(&mut b, 768, b"nqn.2014-08.com.example:ssd1");
        put(&mut b, 1792, &4u32.to_le_bytes());
        put(&mut b, 1796, &1u32.to_le_bytes());
        put(&mut b, 1800, &0u16.to_le_bytes());
        b[1802] = 1;
        b[1803] = 1;
        let c = IdentifyController::decode(&b).unwrap();
        assert_eq!(c.vid, 0x8086);
        assert_eq!(c.ssvid, 0x1af4);
        assert_eq!(c.sn, "SN0001");
        assert_eq!(c.mn, "Example NVMe Drive");
        assert_eq!(c.fr, "1.0");
        assert_eq!(c.rab, 6);
        assert_eq!(c.ieee, [0x11, 0x22, 0x33]);
        assert!(c.multi_controller());
        assert_eq!(c.mdts, 5);
        assert_eq!(c.cntlid, 0x42);
        assert_eq!(
            c.ver,
            NvmeVersion {
                major: 2,
                minor: 1,
                tertiary: 0
            }
        );
        assert_eq!(c.oaes, 0x900);
        assert_eq!(c.ctratt, 1);
        assert_eq!(c.cntrltype, ControllerType::Io);
        assert_eq!(c.fguid, [0xAB; 16]);
        assert_eq!(c.oacs, 0x8A);
        assert!(c.supports_namespace_management());
        assert!(c.supports_virtualization_management());
        assert_eq!(
            (c.acl, c.aerl, c.frmw, c.lpa, c.elpe, c.npss),
            (3, 4, 0x17, 0x0e, 63, 2)
        );
        assert_eq!(c.tnvmcap, 4_000_000_000_000);
        assert_eq!(c.unvmcap, 1_000_000);
        assert_eq!((c.sqes, c.cqes), (0x66, 0x44));
        assert_eq!(c.maxcmd, 128);
        assert_eq!(c.nn, 1024);
        assert_eq!(c.oncs, 0x5F);
        assert_eq!(c.vwc, 1);
        assert_eq!(c.sgls, 0x0010_0001);
        assert_eq!(c.mnan, 256);
        assert_eq!(c.subnqn, "nqn.2014-08.com.example:ssd1");
        assert_eq!(
            (c.ioccsz, c.iorcsz, c.icdoff, c.fcatt, c.msdbd),
            (4, 1, 0, 1, 1)
        );
    }

    #[test]
    fn identify_controller_of_a_discovery_controller_reports_its_type() {
        let mut b = page();
        b[111] = 2;
        let c = IdentifyController::decode(&b).unwrap();
        assert_eq!(c.cntrltype, ControllerType::Discovery);
        assert!(!c.supports_namespace_management());
        b[111] = 9;
        assert_eq!(
            IdentifyController::decode(&b).unwrap().cntrltype,
            ControllerType::Reserved(9)
        );
    }

    #[test]
    fn truncated_identify_data_is_a_decode_error() {
        let b = vec![0u8; 4095];
        assert_eq!(
            IdentifyController::decode(&b),
            Err(DecodeError::Truncated {
                structure: "Identify Controller",
                needed: 4096,
                got: 4095
            })
        );
        assert!(IdentifyNamespace::decode(&b).is_err());
        assert!(PrimaryControllerCapabilities::decode(&b).is_err());
        assert!(decode_secondary_controller_list(&b).is_err());
        assert!(decode_namespace_list(&b).is_err());
        assert!(decode_controller_list(&b).is_err());
    }

    #[test]
    fn identify_namespace_fields_and_lba_formats_are_read_at_spec_offsets() {
        let mut b = page();
        put(&mut b, 0, &1000u64.to_le_bytes());
        put(&mut b, 8, &900u64.to_le_bytes());
        put(&mut b, 16, &800u64.to_le_bytes());
        b[24] = 0x1;
        b[25] = 1; // two formats
        b[26] = 0x01; // format 1 in use
        b[27] = 0x3;
        b[28] = 0x1f;
        b[29] = 0x1;
        b[30] = 0x1;
        b[31] = 0xff;
        put(&mut b, 48, &512_000u128.to_le_bytes());
        put(&mut b, 92, &7u32.to_le_bytes());
        b[99] = 1;
        put(&mut b, 100, &2u16.to_le_bytes());
        put(&mut b, 102, &3u16.to_le_bytes());
        put(&mut b, 104, &[0x5a; 16]);
        put(&mut b, 120, &[1, 2, 3, 4, 5, 6, 7, 8]);
        // lbaf[0]: ms 0, lbads 9 (512), rp 2
        put(&mut b, 128, &[0, 0, 9, 2]);
        // lbaf[1]: ms 8, lbads 12 (4096), rp 0 (upper bits of byte 3 ignored)
        put(&mut b, 132, &[8, 0, 12, 0xfc]);
        // lbaf[2] exists in the buffer but nlbaf says it is not valid
        put(&mut b, 136, &[0, 0, 13, 0]);
        let ns = IdentifyNamespace::decode(&b).unwrap();
        assert_eq!((ns.nsze, ns.ncap, ns.nuse), (1000, 900, 800));
        assert_eq!(
            (ns.nsfeat, ns.nlbaf, ns.flbas, ns.mc, ns.dpc, ns.dps),
            (1, 1, 1, 3, 0x1f, 1)
        );
        assert!(ns.shared());
        assert_eq!(ns.rescap, 0xff);
        assert_eq!(ns.nvmcap, 512_000);
        assert_eq!(
            (ns.anagrpid, ns.nsattr, ns.nvmsetid, ns.endgid),
            (7, 1, 2, 3)
        );
        assert_eq!(ns.nguid, [0x5a; 16]);
        assert_eq!(ns.eui64, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            ns.lbaf,
            vec![
                LbaFormat {
                    ms: 0,
                    lbads: 9,
                    rp: 2
                },
                LbaFormat {
                    ms: 8,
                    lbads: 12,
                    rp: 0
                }
            ]
        );
        assert_eq!(ns.lba_format_index(), 1);
        assert_eq!(ns.block_size(), Some(4096));
    }

    #[test]
    fn flbas_upper_bits_select_formats_above_15() {
        let mut b = page();
        b[25] = 63;
        b[26] = 0x21; // bits 6:5 = 1, bits 3:0 = 1 -> index 17
        put(&mut b, 128 + 17 * 4, &[0, 0, 12, 0]);
        let ns = IdentifyNamespace::decode(&b).unwrap();
        assert_eq!(ns.lbaf.len(), 64);
        assert_eq!(ns.lba_format_index(), 17);
        assert_eq!(ns.block_size(), Some(4096));
    }

    #[test]
    fn unusable_lba_format_has_no_block_size() {
        let b = page();
        let ns = IdentifyNamespace::decode(&b).unwrap();
        assert_eq!(ns.lbaf.len(), 1);
        assert_eq!(ns.block_size(), None);
    }

    #[test]
    fn namespace_list_stops_at_the_first_zero() {
        let mut b = page();
        for (i, id) in [1u32, 2, 5, 0, 9].iter().enumerate() {
            put(&mut b, i * 4, &id.to_le_bytes());
        }
        assert_eq!(decode_namespace_list(&b).unwrap(), vec![1, 2, 5]);
        let full: Vec<u8> = (1..=1024u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(decode_namespace_list(&full).unwrap().len(), 1024);
    }

    #[test]
    fn controller_list_is_a_count_then_ids() {
        let mut b = page();
        put(&mut b, 0, &3u16.to_le_bytes());
        put(&mut b, 2, &1u16.to_le_bytes());
        put(&mut b, 4, &2u16.to_le_bytes());
        put(&mut b, 6, &0x41u16.to_le_bytes());
        assert_eq!(decode_controller_list(&b).unwrap(), vec![1, 2, 0x41]);
        put(&mut b, 0, &2048u16.to_le_bytes());
        assert!(matches!(
            decode_controller_list(&b),
            Err(DecodeError::InvalidField { .. })
        ));
    }

    #[test]
    fn primary_controller_capabilities_fields_are_at_spec_offsets() {
        let mut b = page();
        put(&mut b, 0, &0x0041u16.to_le_bytes());
        put(&mut b, 2, &0x0001u16.to_le_bytes());
        b[4] = 0x3;
        put(&mut b, 32, &252u32.to_le_bytes());
        put(&mut b, 36, &16u32.to_le_bytes());
        put(&mut b, 40, &4u16.to_le_bytes());
        put(&mut b, 42, &2u16.to_le_bytes());
        put(&mut b, 44, &8u16.to_le_bytes());
        put(&mut b, 46, &1u16.to_le_bytes());
        put(&mut b, 64, &126u32.to_le_bytes());
        put(&mut b, 68, &8u32.to_le_bytes());
        put(&mut b, 72, &3u16.to_le_bytes());
        put(&mut b, 74, &1u16.to_le_bytes());
        put(&mut b, 76, &4u16.to_le_bytes());
        put(&mut b, 78, &1u16.to_le_bytes());
        let p = PrimaryControllerCapabilities::decode(&b).unwrap();
        assert_eq!(
            p,
            PrimaryControllerCapabilities {
                cntlid: 0x41,
                portid: 1,
                crt: 3,
                vqfrt: 252,
                vqrfa: 16,
                vqrfap: 4,
                vqprt: 2,
                vqfrsm: 8,
                vqgran: 1,
                vifrt: 126,
                virfa: 8,
                virfap: 3,
                viprt: 1,
                vifrsm: 4,
                vigran: 1,
            }
        );
    }

    #[test]
    fn secondary_controller_entries_are_32_bytes_from_offset_32() {
        let mut b = page();
        b[0] = 2;
        let e0 = 32;
        put(&mut b, e0, &0x0042u16.to_le_bytes());
        put(&mut b, e0 + 2, &0x0041u16.to_le_bytes());
        b[e0 + 4] = 1;
        put(&mut b, e0 + 8, &1u16.to_le_bytes());
        put(&mut b, e0 + 10, &4u16.to_le_bytes());
        put(&mut b, e0 + 12, &2u16.to_le_bytes());
        let e1 = 64;
        put(&mut b, e1, &0x0043u16.to_le_bytes());
        put(&mut b, e1 + 2, &0x0041u16.to_le_bytes());
        put(&mut b, e1 + 8, &2u16.to_le_bytes());
        let list = decode_secondary_controller_list(&b).unwrap();
        assert_eq!(
            list,
            vec![
                SecondaryController {
                    scid: 0x42,
                    pcid: 0x41,
                    scs: 1,
                    vfn: 1,
                    nvq: 4,
                    nvi: 2
                },
                SecondaryController {
                    scid: 0x43,
                    pcid: 0x41,
                    scs: 0,
                    vfn: 2,
                    nvq: 0,
                    nvi: 0
                },
            ]
        );
        assert!(list[0].is_online());
        assert!(!list[1].is_online());
        b[0] = 128;
        assert!(decode_secondary_controller_list(&b).is_err());
    }

    #[test]
    fn namespace_descriptors_are_decoded_by_type_and_length() {
        let mut buf = vec![0u8; 4096];
        // NGUID, UUID, CSI, then the terminating zero NIDT.
        buf[0..4].copy_from_slice(&[2, 16, 0, 0]);
        buf[4..20].copy_from_slice(&[0xab; 16]);
        buf[20..24].copy_from_slice(&[3, 16, 0, 0]);
        buf[24..40].copy_from_slice(&[0x11; 16]);
        buf[40..44].copy_from_slice(&[4, 1, 0, 0]);
        buf[44] = 0;
        assert_eq!(
            decode_namespace_descriptors(&buf).expect("decode"),
            vec![
                NamespaceId::Nguid([0xab; 16]),
                NamespaceId::Uuid([0x11; 16]),
                NamespaceId::Csi(0)
            ]
        );
        let mut bad = vec![0u8; 64];
        bad[0..4].copy_from_slice(&[3, 8, 0, 0]);
        assert!(
            decode_namespace_descriptors(&bad).is_err(),
            "a UUID of 8 bytes"
        );
        let mut short = vec![0u8; 12];
        short[0..4].copy_from_slice(&[2, 16, 0, 0]);
        assert!(
            decode_namespace_descriptors(&short).is_err(),
            "runs past the buffer"
        );
        assert_eq!(
            decode_namespace_descriptors(&[0u8; 4096]).expect("empty"),
            vec![]
        );
    }
}
