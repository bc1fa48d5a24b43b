//! NVMe-oF discovery: reading and decoding the Discovery log page (log
//! 70h) of a discovery controller.
//!
//! [`discover`] connects to the discovery controller, reads its log
//! (header first for the record count and generation counter, then the
//! whole page, then the header again: if the generation moved the log
//! changed while being read and is read again), and always deletes the
//! controller afterwards.

use crate::admin::log_page::lid;
use crate::admin::{AdminDevice, AdminError, AdminOpen, AdminPassthru, LogPageRequest};
use crate::bytes::Fields;
use crate::connect::{ConnectError, ConnectOptions, FabricsClient};
use crate::error::DecodeError;
use crate::nqn::{Nqn, NqnError};
use crate::transport::{AddressError, TransportAddress};

/// Size of the log header; entries start right after it.
pub const DISCOVERY_LOG_HEADER_LEN: usize = 1024;
/// Size of one log entry.
pub const DISCOVERY_LOG_ENTRY_LEN: usize = 1024;
/// Most records accepted (a 4 MiB log); more is treated as corruption
/// rather than allocated.
pub const MAX_DISCOVERY_RECORDS: u64 = 4096;
/// How often the log is read before a generation counter that keeps
/// moving is reported.
pub const DISCOVERY_READ_ATTEMPTS: usize = 10;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Fewer than 1024 bytes.
    #[error("discovery log header truncated: {got} of 1024 bytes")]
    TruncatedHeader {
        /// Bytes present.
        got: usize,
    },
    /// The header announces more entries than the buffer holds.
    #[error("discovery log entry {index} truncated: log needs {needed} bytes, has {got}")]
    TruncatedEntry {
        /// Zero-based entry number.
        index: u64,
        /// Bytes needed to hold this entry.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// An implausible record count.
    #[error(
        "discovery log claims {numrec} records, more than the {MAX_DISCOVERY_RECORDS} accepted"
    )]
    TooManyRecords {
        /// NUMREC from the header.
        numrec: u64,
    },
    /// The log kept changing while being read.
    #[error("discovery log changed while being read, {attempts} times in a row")]
    GenerationChanged {
        /// Reads attempted.
        attempts: usize,
    },
    /// The options do not name the discovery NQN.
    #[error("{0} is not the discovery NQN nqn.2014-08.org.nvmexpress.discovery")]
    NotADiscoveryNqn(Nqn),
    /// Connecting to or disconnecting from the discovery controller failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The log could not be read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The log was read but the discovery controller could not be deleted.
    #[error("discovery controller {controller} could not be deleted: {source}")]
    Disconnect {
        /// The controller left behind.
        controller: String,
        /// Why.
        source: ConnectError,
    },
}

/// The Discovery log page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryLogHeader {
    /// Generation Counter: changes whenever the log changes.
    pub genctr: u64,
    /// Number of Records.
    pub numrec: u64,
    /// Record Format.
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    /// Decodes the first 1024 bytes of the log.
    pub fn decode(buf: &[u8]) -> Result<Self, DiscoveryError> {
        let f = Fields::new(buf, "Discovery Log header", DISCOVERY_LOG_HEADER_LEN)
            .map_err(|_| DiscoveryError::TruncatedHeader { got: buf.len() })?;
        Ok(Self {
            genctr: f.u64(0),
            numrec: f.u64(8),
            recfmt: f.u16(16),
        })
    }

    fn log_len(&self) -> Result<usize, DiscoveryError> {
        if self.numrec > MAX_DISCOVERY_RECORDS {
            return Err(DiscoveryError::TooManyRecords {
                numrec: self.numrec,
            });
        }
        Ok(DISCOVERY_LOG_HEADER_LEN + self.numrec as usize * DISCOVERY_LOG_ENTRY_LEN)
    }
}

/// Subsystem Type (SUBTYPE) of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemType {
    /// 1: a referral to another discovery service.
    Referral,
    /// 2: an NVM subsystem.
    Nvm,
    /// 3: the discovery subsystem being queried.
    CurrentDiscovery,
    /// A reserved value.
    Reserved(u8),
}

impl SubsystemType {
    fn from_raw(v: u8) -> Self {
        match v {
            1 => SubsystemType::Referral,
            2 => SubsystemType::Nvm,
            3 => SubsystemType::CurrentDiscovery,
            r => SubsystemType::Reserved(r),
        }
    }
}

/// Transport Specific Address Subtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tsas {
    /// RDMA: queue pair type, provider type, connection management, P_Key.
    Rdma {
        /// RDMA QP Service Type (1 reliable connected, 2 reliable datagram).
        qptype: u8,
        /// RDMA Provider Type (1 none, 2 InfiniBand, 3 RoCE, 4 RoCEv2, 5 iWARP).
        prtype: u8,
        /// RDMA Connection Management Service (1 RDMA_CM).
        cms: u8,
        /// RDMA Partition Key.
        pkey: u16,
    },
    /// TCP: security type (0 none, 1 TLS 1.2, 2 TLS 1.3).
    Tcp {
        /// Security Type.
        sectype: u8,
    },
    /// Another transport; not decoded.
    Other,
}

/// One Discovery log entry, every field decoded as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport Type code (byte 0).
    pub trtype: u8,
    /// Address Family code (1).
    pub adrfam: u8,
    /// Subsystem Type (2).
    pub subtype: SubsystemType,
    /// Transport Requirements (3).
    pub treq: u8,
    /// Port ID (5:4).
    pub portid: u16,
    /// Controller ID; 0xFFFF for the dynamic model (7:6).
    pub cntlid: u16,
    /// Admin Max SQ Size (9:8).
    pub asqsz: u16,
    /// Entry Flags (11:10).
    pub eflags: u16,
    /// Transport Service Identifier (63:32).
    pub trsvcid: String,
    /// Subsystem NQN (511:256).
    pub subnqn: String,
    /// Transport Address (767:512).
    pub traddr: String,
    /// Transport Specific Address Subtype (1023:768).
    pub tsas: Tsas,
}

impl DiscoveryEntry {
    /// Decodes one 1024-byte entry.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::new(buf, "Discovery Log entry", DISCOVERY_LOG_ENTRY_LEN)?;
        let trtype = f.u8(0);
        let tsas = match trtype {
            1 => Tsas::Rdma {
                qptype: f.u8(768),
                prtype: f.u8(769),
                cms: f.u8(770),
                pkey: f.u16(776),
            },
            3 => Tsas::Tcp { sectype: f.u8(768) },
            _ => Tsas::Other,
        };
        Ok(Self {
            trtype,
            adrfam: f.u8(1),
            subtype: SubsystemType::from_raw(f.u8(2)),
            treq: f.u8(3),
            portid: f.u16(4),
            cntlid: f.u16(6),
            asqsz: f.u16(8),
            eflags: f.u16(10),
            trsvcid: f.text(32, 32),
            subnqn: f.text(256, 256),
            traddr: f.text(512, 256),
            tsas,
        })
    }

    /// The entry's transport address.
    pub fn transport_address(&self) -> Result<TransportAddress, AddressError> {
        TransportAddress::from_discovery(self.trtype, self.adrfam, &self.traddr, &self.trsvcid)
    }

    /// TREQ bits 1:0: 1 if a secure channel is required, 2 if not
    /// required, 0 if not specified.
    pub fn secure_channel(&self) -> u8 {
        self.treq & 0x3
    }
}

/// A decoded Discovery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryLog {
    /// Its header.
    pub header: DiscoveryLogHeader,
    /// Every entry, in log order.
    pub entries: Vec<DiscoveryEntry>,
}

/// A subsystem port a host can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredSubsystem {
    /// Subsystem NQN.
    pub nqn: Nqn,
    /// Subsystem type.
    pub subtype: SubsystemType,
    /// Where to connect.
    pub address: TransportAddress,
    /// Port ID.
    pub portid: u16,
    /// Controller ID (0xFFFF: dynamic).
    pub cntlid: u16,
    /// Transport requirements.
    pub treq: u8,
    /// Transport specific address subtype.
    pub tsas: Tsas,
}

/// Why an entry cannot be connected to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Its transport or address is unusable.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// Its subsystem NQN is invalid.
    #[error(transparent)]
    Nqn(#[from] NqnError),
}

impl DiscoveryLog {
    fn usable(e: &DiscoveryEntry) -> Result<DiscoveredSubsystem, EntryError> {
        Ok(DiscoveredSubsystem {
            nqn: Nqn::new(&e.subnqn)?,
            subtype: e.subtype,
            address: e.transport_address()?,
            portid: e.portid,
            cntlid: e.cntlid,
            treq: e.treq,
            tsas: e.tsas,
        })
    }

    /// The entries this crate can connect to, with their addresses.
    /// Entries of other transports (FC, PCIe) or with invalid fields are
    /// listed by [`DiscoveryLog::unusable`] instead.
    pub fn subsystems(&self) -> Vec<DiscoveredSubsystem> {
        self.entries
            .iter()
            .filter_map(|e| Self::usable(e).ok())
            .collect()
    }

    /// Entries that cannot be connected to: (entry index, reason).
    pub fn unusable(&self) -> Vec<(usize, EntryError)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Self::usable(e).err().map(|err| (i, err)))
            .collect()
    }
}

/// Decodes a whole log: the header, then NUMREC entries after it.
pub fn decode_discovery_log(buf: &[u8]) -> Result<DiscoveryLog, DiscoveryError> {
    let header = DiscoveryLogHeader::decode(buf)?;
    header.log_len()?;
    let mut entries = Vec::with_capacity(header.numrec as usize);
    for index in 0..header.numrec {
        let start = DISCOVERY_LOG_HEADER_LEN + index as usize * DISCOVERY_LOG_ENTRY_LEN;
        let end = start + DISCOVERY_LOG_ENTRY_LEN;
        let raw = buf.get(start..end).ok_or(DiscoveryError::TruncatedEntry {
            index,
            needed: end,
            got: buf.len(),
        })?;
        let entry = DiscoveryEntry::decode(raw).map_err(|_| DiscoveryError::TruncatedEntry {
            index,
            needed: end,
            got: buf.len(),
        })?;
        entries.push(entry);
    }
    Ok(DiscoveryLog { header, entries })
}

fn read_part<P: AdminPassthru>(
    dev: &AdminDevice<P>,
    len: usize,
    rae: bool,
) -> Result<Vec<u8>, DiscoveryError> {
    let mut req = LogPageRequest::new(lid::DISCOVERY, 0, len);
    req.rae = rae;
    Ok(dev.read_log(&req)?)
}

/// Reads a consistent Discovery log from an open discovery controller.
///
/// Reads the header, then the whole log, then the header again (clearing
/// the asynchronous event on that last read); the result is used only if
/// all three carry the same generation counter.
pub fn read_discovery_log<P: AdminPassthru>(
    dev: &AdminDevice<P>,
    attempts: usize,
) -> Result<DiscoveryLog, DiscoveryError> {
    for _ in 0..attempts.max(1) {
        let head = DiscoveryLogHeader::decode(&read_part(dev, DISCOVERY_LOG_HEADER_LEN, true)?)?;
        let len = head.log_len()?;
        let full = if head.numrec == 0 {
            None
        } else {
            Some(read_part(dev, len, true)?)
        };
        let check = DiscoveryLogHeader::decode(&read_part(dev, DISCOVERY_LOG_HEADER_LEN, false)?)?;
        // The whole-log read carries its own header; only when it and both
        // header reads agree is the buffer one consistent generation.
        let whole = match &full {
            None => head,
            Some(buf) => DiscoveryLogHeader::decode(buf)?,
        };
        if whole.genctr == head.genctr && whole.numrec == head.numrec && check.genctr == head.genctr
        {
            return match full {
                None => Ok(DiscoveryLog {
                    header: head,
                    entries: Vec::new(),
                }),
                Some(buf) => decode_discovery_log(&buf),
            };
        }
        tracing::debug!(
            device = %dev.passthru().describe(),
            before = head.genctr,
            after = check.genctr,
            "discovery log changed while being read; reading it again"
        );
    }
    Err(DiscoveryError::GenerationChanged {
        attempts: attempts.max(1),
    })
}

/// Connects to the discovery controller described by `opts`, reads its
/// log and deletes the controller again, also when reading failed.
pub fn discover<O: AdminOpen>(
    client: &FabricsClient,
    opener: &O,
    opts: &ConnectOptions,
) -> Result<DiscoveryLog, DiscoveryError> {
    if !opts.nqn.is_discovery() {
        return Err(DiscoveryError::NotADiscoveryNqn(opts.nqn.clone()));
    }
    let ctrl = client.connect(opts)?;
    let name = ctrl.name();
    // The admin device is closed at the end of this expression, before the
    // controller is deleted.
    let result = opener
        .open_admin(&name)
        .map_err(DiscoveryError::from)
        .and_then(|dev| read_discovery_log(&dev, DISCOVERY_READ_ATTEMPTS));
    match (result, client.disconnect(&name)) {
        (Ok(log), Ok(())) => Ok(log),
        (Ok(_), Err(source)) => Err(DiscoveryError::Disconnect {
            controller: name,
            source,
        }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => {
            tracing::warn!(controller = %name, error = %d, "could not delete discovery controller");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{NvmeStatus, StatusCode, SubmitError};
    use crate::root::SysRoot;
    use crate::testing::{serve_log, FakeAdmin};
    use std::cell::Cell;
    use std::fs;
    use std::rc::Rc;

    fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn entry(trtype: u8, adrfam: u8, traddr: &str, trsvcid: &str, nqn: &str) -> Vec<u8> {
        let mut e = vec![0u8; 1024];
        e[0] = trtype;
        e[1] = adrfam;
        e[2] = 2;
        e[3] = 0x2;
        put(&mut e, 4, &1u16.to_le_bytes());
        put(&mut e, 6, &0xffffu16.to_le_bytes());
        put(&mut e, 8, &32u16.to_le_bytes());
        put(&mut e, 10, &0x3u16.to_le_bytes());
        put(&mut e, 32, trsvcid.as_bytes());
        put(&mut e, 256, nqn.as_bytes());
        put(&mut e, 512, traddr.as_bytes());
        if trtype == 1 {
            e[768] = 1;
            e[769] = 4;
            e[770] = 1;
            put(&mut e, 776, &0xffffu16.to_le_bytes());
        }
        e
    }

    fn log(genctr: u64, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        put(&mut b, 0, &genctr.to_le_bytes());
        put(&mut b, 8, &(entries.len() as u64).to_le_bytes());
        put(&mut b, 16, &0u16.to_le_bytes());
        for e in entries {
            b.extend_from_slice(e);
        }
        b
    }

    const VOL1: &str = "nqn.2014-08.com.example:vol1";
    const VOL2: &str = "nqn.2014-08.com.example:vol2";

    fn two_entries() -> Vec<Vec<u8>> {
        vec![
            entry(1, 1, "192.0.2.1", "4420", VOL1),
            entry(3, 2, "2001:db8::1", "4420", VOL2),
        ]
    }

    #[test]
    fn header_and_every_entry_field_are_decoded_at_spec_offsets() {
        let l = decode_discovery_log(&log(7, &two_entries())).unwrap();
        assert_eq!(
            l.header,
            DiscoveryLogHeader {
                genctr: 7,
                numrec: 2,
                recfmt: 0
            }
        );
        let e = &l.entries[0];
        assert_eq!(
            (e.trtype, e.adrfam, e.subtype, e.treq),
            (1, 1, SubsystemType::Nvm, 2)
        );
        assert_eq!((e.portid, e.cntlid, e.asqsz, e.eflags), (1, 0xffff, 32, 3));
        assert_eq!(e.trsvcid, "4420");
        assert_eq!(e.traddr, "192.0.2.1");
        assert_eq!(e.subnqn, VOL1);
        assert_eq!(e.secure_channel(), 2);
        assert_eq!(
            e.tsas,
            Tsas::Rdma {
                qptype: 1,
                prtype: 4,
                cms: 1,
                pkey: 0xffff
            }
        );
        assert_eq!(l.entries[1].tsas, Tsas::Tcp { sectype: 0 });
    }

    #[test]
    fn space_padded_strings_are_trimmed() {
        let mut e = entry(1, 1, "", "", "");
        put(&mut e, 32, b"4420                            ");
        put(&mut e, 512, format!("{:<256}", "192.0.2.3").as_bytes());
        put(&mut e, 256, format!("{VOL1:<256}").as_bytes());
        let d = DiscoveryEntry::decode(&e).unwrap();
        assert_eq!(d.trsvcid, "4420");
        assert_eq!(d.traddr, "192.0.2.3");
        assert_eq!(
            d.transport_address().unwrap().to_string(),
            "rdma://192.0.2.3:4420"
        );
    }

    #[test]
    fn subsystems_come_with_their_transport_address() {
        let l = decode_discovery_log(&log(1, &two_entries())).unwrap();
        let s = l.subsystems();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].nqn.as_str(), VOL1);
        assert_eq!(s[0].address.to_string(), "rdma://192.0.2.1:4420");
        assert_eq!(s[1].address.to_string(), "tcp://[2001:db8::1]:4420");
        assert!(l.unusable().is_empty());
    }

    #[test]
    fn unusable_entries_are_reported_with_their_reason_not_dropped_silently() {
        let entries = vec![
            entry(2, 4, "nn-0x1:pn-0x2", "", VOL1), // FC
            entry(1, 1, "192.0.2.1", "4420", "testnqn"),
            entry(1, 1, "192.0.2.1", "4420", VOL2),
        ];
        let l = decode_discovery_log(&log(1, &entries)).unwrap();
        assert_eq!(l.subsystems().len(), 1);
        let bad = l.unusable();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[0],
            (
                0,
                EntryError::Address(AddressError::UnsupportedTransportCode(2))
            )
        );
        assert!(matches!(bad[1], (1, EntryError::Nqn(_))));
    }

    #[test]
    fn truncated_entry_is_a_typed_error() {
        let mut b = log(1, &two_entries());
        b.truncate(1024 + 1024 + 1000);
        match decode_discovery_log(&b) {
            Err(DiscoveryError::TruncatedEntry { index, needed, got }) => {
                assert_eq!((index, needed, got), (1, 3072, 3048));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_header_and_absurd_record_counts_are_typed_errors() {
        assert!(matches!(
            decode_discovery_log(&[0u8; 1000]),
            Err(DiscoveryError::TruncatedHeader { got: 1000 })
        ));
        let mut b = log(1, &[]);
        put(&mut b, 8, &u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_discovery_log(&b),
            Err(DiscoveryError::TooManyRecords { .. })
        ));
    }

    #[test]
    fn log_is_read_header_first_then_whole_then_header_again() {
        let dev = AdminDevice::new(FakeAdmin::serving_log(0x70, log(3, &two_entries())));
        let l = read_discovery_log(&dev, 3).unwrap();
        assert_eq!(l.entries.len(), 2);
        let cmds = dev.passthru().commands();
        let lens: Vec<u32> = cmds.iter().map(|c| ((c.cdw10 >> 16) + 1) * 4).collect();
        // header, whole log (3072 bytes in one 4 KiB transfer), header
        assert_eq!(lens, vec![1024, 3072, 1024]);
        let rae: Vec<u32> = cmds.iter().map(|c| (c.cdw10 >> 15) & 1).collect();
        assert_eq!(rae, vec![1, 1, 0]);
    }

    #[test]
    fn empty_log_needs_no_entry_read() {
        let dev = AdminDevice::new(FakeAdmin::serving_log(0x70, log(3, &[])));
        let l = read_discovery_log(&dev, 3).unwrap();
        assert!(l.entries.is_empty());
        assert_eq!(dev.passthru().commands().len(), 2);
    }

    #[test]
    fn log_that_changes_while_read_is_read_again() {
        let first = log(1, &two_entries()[..1]);
        let second = log(2, &two_entries());
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let dev = AdminDevice::new(FakeAdmin::new(move |cmd, data| {
            c.set(c.get() + 1);
            // The generation moves after the first header read.
            let src = if c.get() == 1 { &first } else { &second };
            serve_log(0x70, src, cmd, data)
        }));
        let l = read_discovery_log(&dev, 3).unwrap();
        assert_eq!(l.header.genctr, 2);
        assert_eq!(l.entries.len(), 2);
        assert_eq!(calls.get(), 6);
    }

    #[test]
    fn log_that_never_settles_is_a_typed_error() {
        let n = Rc::new(Cell::new(0u64));
        let c = n.clone();
        let dev = AdminDevice::new(FakeAdmin::new(move |cmd, data| {
            c.set(c.get() + 1);
            serve_log(0x70, &log(c.get(), &[]), cmd, data)
        }));
        assert!(matches!(
            read_discovery_log(&dev, 3),
            Err(DiscoveryError::GenerationChanged { attempts: 3 })
        ));
    }

    /// Opens "nvme5" as a fake serving `log`, or failing every command
    /// with Invalid Log Page when `log` is `None`.
    struct Opener {
        log: Option<Vec<u8>>,
        opened: Rc<Cell<u32>>,
    }

    impl AdminOpen for Opener {
        type Passthru = FakeAdmin;
        fn open_admin(&self, name: &str) -> Result<AdminDevice<FakeAdmin>, AdminError> {
            assert_eq!(name, "nvme5");
            self.opened.set(self.opened.get() + 1);
            Ok(AdminDevice::new(match &self.log {
                Some(l) => FakeAdmin::serving_log(0x70, l.clone()),
                None => {
                    FakeAdmin::new(|_, _| Err(SubmitError::Status(NvmeStatus::from_ioctl(0x4109))))
                }
            }))
        }
    }

    fn fabrics_root(answer: &str) -> (tempfile::TempDir, SysRoot) {
        let d = tempfile::tempdir().unwrap();
        let root = SysRoot::new(d.path());
        fs::create_dir_all(root.path("/dev")).unwrap();
        fs::write(root.dev("nvme-fabrics"), answer).unwrap();
        let ctl = root.sys_class_nvme().join("nvme5");
        fs::create_dir_all(&ctl).unwrap();
        fs::write(ctl.join("delete_controller"), "").unwrap();
        (d, root)
    }

    #[test]
    fn discover_connects_reads_and_deletes_the_discovery_controller() {
        let (_d, root) = fabrics_root("instance=5,cntlid=1\n");
        let client = FabricsClient::new(root.clone());
        let opened = Rc::new(Cell::new(0));
        let opener = Opener {
            log: Some(log(1, &two_entries())),
            opened: opened.clone(),
        };
        let opts = ConnectOptions::discovery("rdma://192.0.2.1:4420".parse().unwrap());
        let l = discover(&client, &opener, &opts).unwrap();
        assert_eq!(l.subsystems().len(), 2);
        assert_eq!(opened.get(), 1);
        let sent = fs::read_to_string(root.dev("nvme-fabrics")).unwrap();
        assert!(
            sent.ends_with("nqn=nqn.2014-08.org.nvmexpress.discovery"),
            "{sent}"
        );
        let del = root.sys_class_nvme().join("nvme5/delete_controller");
        assert_eq!(fs::read_to_string(del).unwrap(), "1");
    }

    #[test]
    fn discover_deletes_the_controller_even_when_reading_the_log_fails() {
        let (_d, root) = fabrics_root("instance=5,cntlid=1\n");
        let opener = Opener {
            log: None,
            opened: Rc::new(Cell::new(0)),
        };
        let opts = ConnectOptions::discovery("rdma://192.0.2.1:4420".parse().unwrap());
        let err = discover(&FabricsClient::new(root.clone()), &opener, &opts).unwrap_err();
        match err {
            DiscoveryError::Admin(e) => {
                assert_eq!(e.status_code(), Some(StatusCode::InvalidLogPage))
            }
            other => panic!("{other:?}"),
        }
        let del = root.sys_class_nvme().join("nvme5/delete_controller");
        assert_eq!(fs::read_to_string(del).unwrap(), "1");
    }

    #[test]
    fn discover_reports_a_controller_it_could_not_delete() {
        let (_d, root) = fabrics_root("instance=5,cntlid=1\n");
        fs::remove_file(root.sys_class_nvme().join("nvme5/delete_controller")).unwrap();
        let opener = Opener {
            log: Some(log(1, &[])),
            opened: Rc::new(Cell::new(0)),
        };
        let opts = ConnectOptions::discovery("rdma://192.0.2.1:4420".parse().unwrap());
        assert!(matches!(
            discover(&FabricsClient::new(root), &opener, &opts),
            Err(DiscoveryError::Disconnect { controller, .. }) if controller == "nvme5"
        ));
    }

    #[test]
    fn discover_refuses_a_non_discovery_nqn() {
        let (_d, root) = fabrics_root("instance=5,cntlid=1\n");
        let opener = Opener {
            log: Some(log(1, &[])),
            opened: Rc::new(Cell::new(0)),
        };
        let opts = ConnectOptions::new(
            "rdma://192.0.2.1:4420".parse().unwrap(),
            Nqn::new(VOL1).unwrap(),
        );
        assert!(matches!(
            discover(&FabricsClient::new(root), &opener, &opts),
            Err(DiscoveryError::NotADiscoveryNqn(_))
        ));
    }
}
