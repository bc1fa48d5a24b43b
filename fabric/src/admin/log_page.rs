//! Get Log Page (opcode 02h): command encoding and the Error Information
//! and SMART / Health Information log pages.
//!
//! The number of dwords to transfer is zero-based and split across CDW10
//! bits 31:16 (NUMDL) and CDW11 bits 15:0 (NUMDU); the byte offset into the
//! log is split across CDW12 (LPOL) and CDW13 (LPOU), so a large log can be
//! read in pieces that respect the controller's transfer limit.

use crate::bytes::Fields;
use crate::error::DecodeError;

use super::passthru::{opcode, AdminCommand};
use super::status::NvmeStatus;

/// Log page identifiers used here.
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Discovery (fabrics discovery controllers).
    pub const DISCOVERY: u8 = 0x70;
}

/// The namespace meaning "the controller as a whole" for SMART.
pub const NSID_ALL: u32 = 0xffff_ffff;

/// One Get Log Page command's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPageRequest {
    /// Log Page Identifier.
    pub lid: u8,
    /// Namespace the log applies to.
    pub nsid: u32,
    /// Log Specific Field (7 bits).
    pub lsp: u8,
    /// Log Specific Identifier.
    pub lsi: u16,
    /// Retain Asynchronous Event: do not clear the event this log reports.
    pub rae: bool,
    /// Byte offset into the log; a multiple of 4.
    pub offset: u64,
    /// Bytes to transfer; a non-zero multiple of 4.
    pub len: usize,
}

/// A log request whose length or offset cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log page {lid:#04x}: {reason}")]
pub struct LogRequestError {
    /// The log page.
    pub lid: u8,
    /// What is wrong.
    pub reason: &'static str,
}

impl LogPageRequest {
    /// A request for `len` bytes of log `lid` from its start.
    pub fn new(lid: u8, nsid: u32, len: usize) -> Self {
        Self {
            lid,
            nsid,
            lsp: 0,
            lsi: 0,
            rae: false,
            offset: 0,
            len,
        }
    }

    /// The Get Log Page command.
    pub fn command(&self) -> Result<AdminCommand, LogRequestError> {
        let err = |reason| LogRequestError {
            lid: self.lid,
            reason,
        };
        if self.len == 0 || self.len % 4 != 0 {
            return Err(err("length must be a non-zero multiple of 4 bytes"));
        }
        if self.offset % 4 != 0 {
            return Err(err("offset must be a multiple of 4 bytes"));
        }
        if self.lsp > 0x7f {
            return Err(err("the log specific field has 7 bits"));
        }
        let numd = u32::try_from(self.len / 4 - 1)
            .map_err(|_| err("length exceeds the 32-bit dword count"))?;
        Ok(AdminCommand {
            opcode: opcode::GET_LOG_PAGE,
            nsid: self.nsid,
            cdw10: u32::from(self.lid)
                | (u32::from(self.lsp) << 8)
                | (u32::from(self.rae) << 15)
                | ((numd & 0xffff) << 16),
            cdw11: (numd >> 16) | (u32::from(self.lsi) << 16),
            cdw12: self.offset as u32,
            cdw13: (self.offset >> 32) as u32,
            ..AdminCommand::default()
        })
    }
}

/// Size of the SMART / Health Information log.
pub const SMART_LOG_LEN: usize = 512;

/// SMART / Health Information (log 02h).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartLog {
    /// Critical Warning bits (0).
    pub critical_warning: u8,
    /// Composite Temperature in Kelvin (2:1).
    pub temperature: u16,
    /// Available Spare, percent (3).
    pub avail_spare: u8,
    /// Available Spare Threshold, percent (4).
    pub spare_thresh: u8,
    /// Percentage Used (5).
    pub percent_used: u8,
    /// Endurance Group Critical Warning Summary (6).
    pub endurance_group_warning: u8,
    /// Data Units Read, in thousands of 512-byte units (47:32).
    pub data_units_read: u128,
    /// Data Units Written (63:48).
    pub data_units_written: u128,
    /// Host Read Commands (79:64).
    pub host_read_commands: u128,
    /// Host Write Commands (95:80).
    pub host_write_commands: u128,
    /// Controller Busy Time, minutes (111:96).
    pub controller_busy_time: u128,
    /// Power Cycles (127:112).
    pub power_cycles: u128,
    /// Power On Hours (143:128).
    pub power_on_hours: u128,
    /// Unsafe Shutdowns (159:144).
    pub unsafe_shutdowns: u128,
    /// Media and Data Integrity Errors (175:160).
    pub media_errors: u128,
    /// Number of Error Information Log Entries (191:176).
    pub num_err_log_entries: u128,
    /// Warning Composite Temperature Time, minutes (195:192).
    pub warning_temp_time: u32,
    /// Critical Composite Temperature Time, minutes (199:196).
    pub critical_temp_time: u32,
    /// Temperature Sensors 1-8 in Kelvin, 0 if absent (215:200).
    pub temp_sensors: [u16; 8],
    /// Thermal Management Temperature 1 Transition Count (219:216).
    pub thm_temp1_trans_count: u32,
    /// Thermal Management Temperature 2 Transition Count (223:220).
    pub thm_temp2_trans_count: u32,
    /// Total Time For Thermal Management Temperature 1, seconds (227:224).
    pub thm_temp1_total_time: u32,
    /// Total Time For Thermal Management Temperature 2, seconds (231:228).
    pub thm_temp2_total_time: u32,
}

impl SmartLog {
    /// Decodes the 512-byte log.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "SMART / Health Information log", SMART_LOG_LEN)?;
        let mut temp_sensors = [0u16; 8];
        for (i, t) in temp_sensors.iter_mut().enumerate() {
            *t = f.u16(200 + i * 2);
        }
        Ok(Self {
            critical_warning: f.u8(0),
            temperature: f.u16(1),
            avail_spare: f.u8(3),
            spare_thresh: f.u8(4),
            percent_used: f.u8(5),
            endurance_group_warning: f.u8(6),
            data_units_read: f.u128(32),
            data_units_written: f.u128(48),
            host_read_commands: f.u128(64),
            host_write_commands: f.u128(80),
            controller_busy_time: f.u128(96),
            power_cycles: f.u128(112),
            power_on_hours: f.u128(128),
            unsafe_shutdowns: f.u128(144),
            media_errors: f.u128(160),
            num_err_log_entries: f.u128(176),
            warning_temp_time: f.u32(192),
            critical_temp_time: f.u32(196),
            temp_sensors,
            thm_temp1_trans_count: f.u32(216),
            thm_temp2_trans_count: f.u32(220),
            thm_temp1_total_time: f.u32(224),
            thm_temp2_total_time: f.u32(228),
        })
    }
}

/// Size of one Error Information log entry.
pub const ERROR_LOG_ENTRY_LEN: usize = 64;

/// One Error Information log entry (log 01h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorLogEntry {
    /// Error Count: unique, increasing; 0 marks an unused entry (7:0).
    pub error_count: u64,
    /// Submission Queue ID (9:8).
    pub sqid: u16,
    /// Command ID (11:10).
    pub cmdid: u16,
    /// Status of the failed command (15:1 of bytes 13:12; bit 0 is the
    /// phase tag).
    pub status: NvmeStatus,
    /// Parameter Error Location (15:14).
    pub parm_error_location: u16,
    /// First LBA that hit the error (23:16).
    pub lba: u64,
    /// Namespace (27:24).
    pub nsid: u32,
    /// Vendor Specific Information Available: log page with more data (28).
    pub vs: u8,
    /// Transport Type (29).
    pub trtype: u8,
    /// Command Set Identifier (30).
    pub csi: u8,
    /// Opcode of the failed command (31).
    pub opcode: u8,
    /// Command Specific Information (39:32).
    pub cs: u64,
    /// Transport Type Specific Information (41:40).
    pub trtype_spec_info: u16,
    /// Log Page Version (63).
    pub log_page_version: u8,
}

impl ErrorLogEntry {
    /// Decodes one 64-byte entry.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "Error Information log entry", ERROR_LOG_ENTRY_LEN)?;
        Ok(Self {
            error_count: f.u64(0),
            sqid: f.u16(8),
            cmdid: f.u16(10),
            status: NvmeStatus::from_ioctl(u32::from(f.u16(12) >> 1)),
            parm_error_location: f.u16(14),
            lba: f.u64(16),
            nsid: f.u32(24),
            vs: f.u8(28),
            trtype: f.u8(29),
            csi: f.u8(30),
            opcode: f.u8(31),
            cs: f.u64(32),
            trtype_spec_info: f.u16(40),
            log_page_version: f.u8(63),
        })
    }
}

/// Decodes consecutive error log entries, dropping unused ones (error
/// count 0). A buffer that is not a whole number of entries is truncated.
pub fn decode_error_log(buf: &[u8]) -> Result<Vec<ErrorLogEntry>, DecodeError> {
    if buf.len() % ERROR_LOG_ENTRY_LEN != 0 {
        return Err(DecodeError::Truncated {
            structure: "Error Information log",
            needed: buf.len().div_ceil(ERROR_LOG_ENTRY_LEN) * ERROR_LOG_ENTRY_LEN,
            got: buf.len(),
        });
    }
    buf.chunks_exact(ERROR_LOG_ENTRY_LEN)
        .map(ErrorLogEntry::decode)
        .filter(|e| !matches!(e, Ok(e) if e.error_count == 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::StatusCode;

    #[test]
    fn numd_is_zero_based_dwords_split_into_numdl_and_numdu() {
        let mut r = LogPageRequest::new(lid::DISCOVERY, 0, 1024);
        let c = r.command().unwrap();
        assert_eq!(c.opcode, 0x02);
        assert_eq!(c.cdw10, (255 << 16) | 0x70);
        assert_eq!(c.cdw11, 0);
        // 1 MiB: numd = 262143 = 0x3_FFFF -> NUMDL 0xFFFF, NUMDU 0x3
        r.len = 1 << 20;
        let c = r.command().unwrap();
        assert_eq!(c.cdw10 >> 16, 0xFFFF);
        assert_eq!(c.cdw11 & 0xFFFF, 0x3);
    }

    #[test]
    fn offset_is_split_into_lpol_and_lpou() {
        let mut r = LogPageRequest::new(lid::DISCOVERY, 0, 4096);
        r.offset = 0x0000_0001_0000_0400;
        let c = r.command().unwrap();
        assert_eq!(c.cdw12, 0x0000_0400);
        assert_eq!(c.cdw13, 0x0000_0001);
    }

    #[test]
    fn lsp_rae_and_lsi_are_placed_in_their_bits() {
        let mut r = LogPageRequest::new(lid::SMART, NSID_ALL, 512);
        r.lsp = 0x7f;
        r.rae = true;
        r.lsi = 0xBEEF;
        let c = r.command().unwrap();
        assert_eq!(c.nsid, 0xffff_ffff);
        assert_eq!(c.cdw10 & 0xff, 0x02);
        assert_eq!((c.cdw10 >> 8) & 0x7f, 0x7f);
        assert_eq!((c.cdw10 >> 15) & 1, 1);
        assert_eq!(c.cdw11 >> 16, 0xBEEF);
    }

    #[test]
    fn unencodable_requests_are_refused() {
        let mut r = LogPageRequest::new(lid::ERROR, 0, 0);
        assert!(r.command().is_err());
        r.len = 6;
        assert!(r.command().is_err());
        r.len = 64;
        r.offset = 2;
        assert!(r.command().is_err());
        r.offset = 0;
        r.lsp = 0x80;
        assert!(r.command().is_err());
    }

    #[test]
    fn smart_log_fields_are_read_at_spec_offsets() {
        let mut b = vec![0u8; 512];
        b[0] = 0x04;
        b[1..3].copy_from_slice(&310u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 3;
        b[6] = 1;
        b[32..48].copy_from_slice(&11u128.to_le_bytes());
        b[48..64].copy_from_slice(&12u128.to_le_bytes());
        b[64..80].copy_from_slice(&13u128.to_le_bytes());
        b[80..96].copy_from_slice(&14u128.to_le_bytes());
        b[96..112].copy_from_slice(&15u128.to_le_bytes());
        b[112..128].copy_from_slice(&16u128.to_le_bytes());
        b[128..144].copy_from_slice(&17u128.to_le_bytes());
        b[144..160].copy_from_slice(&18u128.to_le_bytes());
        b[160..176].copy_from_slice(&19u128.to_le_bytes());
        b[176..192].copy_from_slice(&20u128.to_le_bytes());
        b[192..196].copy_from_slice(&21u32.to_le_bytes());
        b[196..200].copy_from_slice(&22u32.to_le_bytes());
        for i in 0..8 {
            b[200 + i * 2..202 + i * 2].copy_from_slice(&(300 + i as u16).to_le_bytes());
        }
        b[216..220].copy_from_slice(&23u32.to_le_bytes());
        b[220..224].copy_from_slice(&24u32.to_le_bytes());
        b[224..228].copy_from_slice(&25u32.to_le_bytes());
        b[228..232].copy_from_slice(&26u32.to_le_bytes());
        let s = SmartLog::decode(&b).unwrap();
        assert_eq!(s.critical_warning, 4);
        assert_eq!(s.temperature, 310);
        assert_eq!(
            (s.avail_spare, s.spare_thresh, s.percent_used),
            (100, 10, 3)
        );
        assert_eq!(s.endurance_group_warning, 1);
        assert_eq!(
            [
                s.data_units_read,
                s.data_units_written,
                s.host_read_commands,
                s.host_write_commands,
                s.controller_busy_time,
                s.power_cycles,
                s.power_on_hours,
                s.unsafe_shutdowns,
                s.media_errors,
                s.num_err_log_entries
            ],
            [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
        );
        assert_eq!((s.warning_temp_time, s.critical_temp_time), (21, 22));
        assert_eq!(s.temp_sensors, [300, 301, 302, 303, 304, 305, 306, 307]);
        assert_eq!(
            (
                s.thm_temp1_trans_count,
                s.thm_temp2_trans_count,
                s.thm_temp1_total_time,
                s.thm_temp2_total_time
            ),
            (23, 24, 25, 26)
        );
        assert!(SmartLog::decode(&b[..511]).is_err());
    }

    fn error_entry(count: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..8].copy_from_slice(&count.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0x1234u16.to_le_bytes());
        // status 0x4002 (DNR, Invalid Field) shifted left past the phase tag
        b[12..14].copy_from_slice(&((0x4002u16 << 1) | 1).to_le_bytes());
        b[14..16].copy_from_slice(&0x0028u16.to_le_bytes());
        b[16..24].copy_from_slice(&0xABCDu64.to_le_bytes());
        b[24..28].copy_from_slice(&5u32.to_le_bytes());
        b[28] = 0;
        b[29] = 1;
        b[30] = 0;
        b[31] = 0x0D;
        b[32..40].copy_from_slice(&0x77u64.to_le_bytes());
        b[40..42].copy_from_slice(&0x99u16.to_le_bytes());
        b[63] = 1;
        b
    }

    #[test]
    fn error_log_entry_fields_are_read_at_spec_offsets() {
        let e = ErrorLogEntry::decode(&error_entry(42)).unwrap();
        assert_eq!(e.error_count, 42);
        assert_eq!((e.sqid, e.cmdid), (1, 0x1234));
        assert_eq!(e.status.code(), StatusCode::InvalidField);
        assert!(e.status.dnr());
        assert_eq!(e.parm_error_location, 0x28);
        assert_eq!(e.lba, 0xABCD);
        assert_eq!(e.nsid, 5);
        assert_eq!((e.vs, e.trtype, e.csi, e.opcode), (0, 1, 0, 0x0D));
        assert_eq!(e.cs, 0x77);
        assert_eq!(e.trtype_spec_info, 0x99);
        assert_eq!(e.log_page_version, 1);
    }

    #[test]
    fn error_log_skips_unused_entries_and_rejects_partial_ones() {
        let mut b = error_entry(2);
        b.extend(vec![0u8; 64]);
        b.extend(error_entry(1));
        let log = decode_error_log(&b).unwrap();
        assert_eq!(
            log.iter().map(|e| e.error_count).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert!(matches!(
            decode_error_log(&b[..100]),
            Err(DecodeError::Truncated {
                needed: 128,
                got: 100,
                ..
            })
        ));
    }
}
