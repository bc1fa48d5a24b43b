//! A small generic-netlink client for the `vdpa` family (what `vdpa mgmtdev show`,
//! `vdpa dev add`, `vdpa dev del` and `vdpa dev show` do), over a raw
//! `AF_NETLINK`/`NETLINK_GENERIC` socket.
//!
//! Message encoding and decoding are pure functions (byte-exact unit tests); [`VdpaNetlink`]
//! only sends and receives. Attribute and command numbers are those of kernel 6.12's
//! `linux/vdpa.h` and `linux/genetlink.h`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_GENERIC`.
const NETLINK_GENERIC: i32 = 16;
/// `GENL_ID_CTRL`: the id of the `nlctrl` family.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID` (u16).
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME` (string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// `VDPA_GENL_NAME`.
pub const VDPA_GENL_NAME: &str = "vdpa";
/// `VDPA_GENL_VERSION`.
pub const VDPA_GENL_VERSION: u8 = 1;

/// `enum vdpa_command` values used here.
pub mod cmd {
    /// `VDPA_CMD_MGMTDEV_GET` (can dump).
    pub const MGMTDEV_GET: u8 = 2;
    /// `VDPA_CMD_DEV_NEW`.
    pub const DEV_NEW: u8 = 3;
    /// `VDPA_CMD_DEV_DEL`.
    pub const DEV_DEL: u8 = 4;
    /// `VDPA_CMD_DEV_GET` (can dump).
    pub const DEV_GET: u8 = 5;
}

/// `enum vdpa_attr` values used here.
pub mod attr {
    /// `VDPA_ATTR_MGMTDEV_BUS_NAME` (string).
    pub const MGMTDEV_BUS_NAME: u16 = 1;
    /// `VDPA_ATTR_MGMTDEV_DEV_NAME` (string).
    pub const MGMTDEV_DEV_NAME: u16 = 2;
    /// `VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES` (u64).
    pub const MGMTDEV_SUPPORTED_CLASSES: u16 = 3;
    /// `VDPA_ATTR_DEV_NAME` (string).
    pub const DEV_NAME: u16 = 4;
    /// `VDPA_ATTR_DEV_ID` (u32).
    pub const DEV_ID: u16 = 5;
    /// `VDPA_ATTR_DEV_VENDOR_ID` (u32).
    pub const DEV_VENDOR_ID: u16 = 6;
    /// `VDPA_ATTR_DEV_MAX_VQS` (u32).
    pub const DEV_MAX_VQS: u16 = 7;
    /// `VDPA_ATTR_DEV_MAX_VQ_SIZE` (u16).
    pub const DEV_MAX_VQ_SIZE: u16 = 8;
}

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;

const NLM_F_REQUEST: u16 = 0x1;
#[cfg(test)]
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;

const NLMSG_NOOP: u16 = 0x1;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;

const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Errors of the netlink client.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be created, or a send/receive failed.
    #[error("netlink {op}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// The generic-netlink family `vdpa` is not registered: the module is not loaded.
    #[error("generic netlink family `vdpa` not found: the `vdpa` kernel module is not loaded (modprobe vdpa)")]
    FamilyMissing,
    /// The kernel answered a command with an error.
    #[error("vdpa {cmd}: kernel answered {source}{}", ext.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        /// The command name.
        cmd: &'static str,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
        /// The extended-ack message, if the kernel sent one.
        ext: Option<String>,
    },
    /// The management device `vduse` does not exist: the `vduse` module is not loaded.
    #[error("vdpa management device `{0}` not found: the `vduse` kernel module is not loaded (modprobe vduse)")]
    MgmtDevMissing(String),
    /// A reply did not parse.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno of a kernel answer, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Appends one attribute (header, payload, padding).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = NLA_HDRLEN + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Appends a NUL-terminated string attribute.
pub fn put_attr_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut p = Vec::with_capacity(s.len() + 1);
    p.extend_from_slice(s.as_bytes());
    p.push(0);
    put_attr(buf, kind, &p);
}

/// Builds one generic-netlink request: nlmsghdr, genlmsghdr, then `attrs` (already encoded).
pub fn encode_genl(
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&family.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(cmd);
    b.push(version);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(attrs);
    b
}

/// `CTRL_CMD_GETFAMILY` for `name`.
pub fn encode_get_family(seq: u32, name: &str) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr_str(&mut a, CTRL_ATTR_FAMILY_NAME, name);
    encode_genl(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &a,
    )
}

/// `VDPA_CMD_MGMTDEV_GET` dump.
pub fn encode_mgmtdev_dump(family: u16, seq: u32) -> Vec<u8> {
    encode_genl(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        cmd::MGMTDEV_GET,
        VDPA_GENL_VERSION,
        &[],
    )
}

/// `VDPA_CMD_DEV_GET` dump.
pub fn encode_dev_dump(family: u16, seq: u32) -> Vec<u8> {
    encode_genl(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        cmd::DEV_GET,
        VDPA_GENL_VERSION,
        &[],
    )
}

/// `VDPA_CMD_DEV_NEW name NAME mgmtdev MGMTDEV` (no bus name, as for `vduse`).
pub fn encode_dev_new(family: u16, seq: u32, mgmtdev: &str, name: &str) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr_str(&mut a, attr::MGMTDEV_DEV_NAME, mgmtdev);
    put_attr_str(&mut a, attr::DEV_NAME, name);
    encode_genl(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        cmd::DEV_NEW,
        VDPA_GENL_VERSION,
        &a,
    )
}

/// `VDPA_CMD_DEV_DEL name NAME`.
pub fn encode_dev_del(family: u16, seq: u32, name: &str) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr_str(&mut a, attr::DEV_NAME, name);
    encode_genl(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        cmd::DEV_DEL,
        VDPA_GENL_VERSION,
        &a,
    )
}

/// One decoded netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A generic-netlink data message: command and raw attributes.
    Genl {
        /// nlmsg_type (the family id).
        family: u16,
        /// nlmsg_seq.
        seq: u32,
        /// genl command.
        cmd: u8,
        /// The attribute bytes after the genl header.
        attrs: Vec<u8>,
    },
    /// `NLMSG_ERROR` with error 0: an ACK.
    Ack {
        /// nlmsg_seq.
        seq: u32,
    },
    /// `NLMSG_ERROR` with a negative errno.
    Error {
        /// nlmsg_seq.
        seq: u32,
        /// Positive errno.
        errno: i32,
        /// Extended ack message (NLMSGERR_ATTR_MSG).
        ext_msg: Option<String>,
    },
    /// `NLMSG_DONE`: end of a dump.
    Done {
        /// nlmsg_seq.
        seq: u32,
    },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Iterates over `(type, payload)` of a packed attribute area. Stops at the first malformed
/// attribute and reports it as an error.
pub fn parse_attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
    let mut out = Vec::new();
    while b.len() >= NLA_HDRLEN {
        let len = u16_at(b, 0).ok_or(NetlinkError::Malformed("attribute header"))? as usize;
        let kind = u16_at(b, 2).ok_or(NetlinkError::Malformed("attribute header"))? & 0x3fff;
        if len < NLA_HDRLEN || len > b.len() {
            return Err(NetlinkError::Malformed("attribute length"));
        }
        out.push((kind, &b[NLA_HDRLEN..len]));
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

fn attr_str(p: &[u8]) -> String {
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

fn attr_u16(p: &[u8]) -> Option<u16> {
    u16_at(p, 0)
}

fn attr_u32(p: &[u8]) -> Option<u32> {
    u32_at(p, 0)
}

fn attr_u64(p: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(p.get(0..8)?.try_into().ok()?))
}

/// Splits a receive buffer into messages.
pub fn parse_messages(mut b: &[u8]) -> Result<Vec<Message>, NetlinkError> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(NetlinkError::Malformed("header"))? as usize;
        let kind = u16_at(b, 4).ok_or(NetlinkError::Malformed("header"))?;
        let flags = u16_at(b, 6).ok_or(NetlinkError::Malformed("header"))?;
        let seq = u32_at(b, 8).ok_or(NetlinkError::Malformed("header"))?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(NetlinkError::Malformed("message length"));
        }
        let body = &b[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_NOOP => {}
            NLMSG_DONE => out.push(Message::Done { seq }),
            NLMSG_ERROR => {
                let err = u32_at(body, 0).ok_or(NetlinkError::Malformed("error message"))? as i32;
                if err == 0 {
                    out.push(Message::Ack { seq });
                } else {
                    let mut ext_msg = None;
                    if flags & NLM_F_ACK_TLVS != 0 {
                        // errno, then the original header, then (unless capped) its payload.
                        let orig_len = u32_at(body, 4)
                            .ok_or(NetlinkError::Malformed("error message"))?
                            as usize;
                        let skip = if flags & NLM_F_CAPPED != 0 {
                            4 + NLMSG_HDRLEN
                        } else {
                            4 + align4(orig_len)
                        };
                        if let Some(tlvs) = body.get(skip..) {
                            for (k, p) in parse_attrs(tlvs)? {
                                if k == NLMSGERR_ATTR_MSG {
                                    ext_msg = Some(attr_str(p));
                                }
                            }
                        }
                    }
                    out.push(Message::Error {
                        seq,
                        errno: -err,
                        ext_msg,
                    });
                }
            }
            family => {
                if body.len() < GENL_HDRLEN {
                    return Err(NetlinkError::Malformed("genl header"));
                }
                out.push(Message::Genl {
                    family,
                    seq,
                    cmd: body[0],
                    attrs: body[GENL_HDRLEN..].to_vec(),
                });
            }
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

/// Reads the family id out of a `CTRL_CMD_GETFAMILY` reply's attributes.
pub fn decode_family_id(attrs: &[u8]) -> Result<u16, NetlinkError> {
    parse_attrs(attrs)?
        .into_iter()
        .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, p)| attr_u16(p))
        .ok_or(NetlinkError::Malformed("no CTRL_ATTR_FAMILY_ID"))
}

/// A vdpa management device (`vdpa mgmtdev show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtDev {
    /// Bus name (absent for `vduse`).
    pub bus_name: Option<String>,
    /// Device name (`vduse` for VDUSE).
    pub dev_name: String,
    /// Bitmap of virtio device classes it can create.
    pub supported_classes: Option<u64>,
}

/// Decodes one `VDPA_CMD_MGMTDEV_GET` reply.
pub fn decode_mgmtdev(attrs: &[u8]) -> Result<MgmtDev, NetlinkError> {
    let mut m = MgmtDev {
        bus_name: None,
        dev_name: String::new(),
        supported_classes: None,
    };
    for (k, p) in parse_attrs(attrs)? {
        match k {
            attr::MGMTDEV_BUS_NAME => m.bus_name = Some(attr_str(p)),
            attr::MGMTDEV_DEV_NAME => m.dev_name = attr_str(p),
            attr::MGMTDEV_SUPPORTED_CLASSES => m.supported_classes = attr_u64(p),
            _ => {}
        }
    }
    if m.dev_name.is_empty() {
        return Err(NetlinkError::Malformed("mgmtdev without name"));
    }
    Ok(m)
}

/// A vdpa device (`vdpa dev show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdpaDev {
    /// Device name.
    pub name: String,
    /// Its management device.
    pub mgmtdev: String,
    /// virtio device id.
    pub device_id: Option<u32>,
    /// virtio vendor id.
    pub vendor_id: Option<u32>,
    /// Number of virtqueues.
    pub max_vqs: Option<u32>,
    /// Largest queue size.
    pub max_vq_size: Option<u16>,
}

/// Decodes one `VDPA_CMD_DEV_GET` reply.
pub fn decode_dev(attrs: &[u8]) -> Result<VdpaDev, NetlinkError> {
    let mut d = VdpaDev {
        name: String::new(),
        mgmtdev: String::new(),
        device_id: None,
        vendor_id: None,
        max_vqs: None,
        max_vq_size: None,
    };
    for (k, p) in parse_attrs(attrs)? {
        match k {
            attr::DEV_NAME => d.name = attr_str(p),
            attr::MGMTDEV_DEV_NAME => d.mgmtdev = attr_str(p),
            attr::DEV_ID => d.device_id = attr_u32(p),
            attr::DEV_VENDOR_ID => d.vendor_id = attr_u32(p),
            attr::DEV_MAX_VQS => d.max_vqs = attr_u32(p),
            attr::DEV_MAX_VQ_SIZE => d.max_vq_size = attr_u16(p),
            _ => {}
        }
    }
    if d.name.is_empty() {
        return Err(NetlinkError::Malformed("device without name"));
    }
    Ok(d)
}

/// Turns the messages answering request `seq` into its data messages, or the kernel's error.
/// `done` tells whether the exchange is complete (ACK or DONE seen).
fn collect(
    msgs: Vec<Message>,
    seq: u32,
    cmd_name: &'static str,
    out: &mut Vec<Vec<u8>>,
) -> Result<bool, NetlinkError> {
    let mut done = false;
    for m in msgs {
        match m {
            Message::Genl { seq: s, attrs, .. } if s == seq => out.push(attrs),
            Message::Ack { seq: s } | Message::Done { seq: s } if s == seq => done = true,
            Message::Error {
                seq: s,
                errno,
                ext_msg,
            } if s == seq => {
                return Err(NetlinkError::Kernel {
                    cmd: cmd_name,
                    source: io::Error::from_raw_os_error(errno),
                    ext: ext_msg,
                })
            }
            _ => {}
        }
    }
    Ok(done)
}

/// A socket bound to the `vdpa` family.
pub struct VdpaNetlink {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl VdpaNetlink {
    /// Opens a socket and resolves the `vdpa` family. A missing family (ENOENT, or
    /// EOPNOTSUPP from old kernels) becomes [`NetlinkError::FamilyMissing`].
    pub fn connect() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(NetlinkError::Socket {
                op: "socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            // SAFETY: `one` is a c_int that lives across the call. Failure is harmless (older
            // kernels): errors then come without the extended message.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        // SAFETY: an all-zero sockaddr_nl is valid (kernel picks the port id).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(NetlinkError::Socket {
                op: "bind",
                source: io::Error::last_os_error(),
            });
        }
        let mut s = VdpaNetlink {
            fd,
            family: 0,
            seq: 1,
        };
        let seq = s.next_seq();
        let replies = match s.exchange(&encode_get_family(seq, VDPA_GENL_NAME), seq, "getfamily") {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => {
                return Err(NetlinkError::FamilyMissing)
            }
            r => r?,
        };
        let first = replies
            .first()
            .ok_or(NetlinkError::Malformed("empty getfamily reply"))?;
        s.family = decode_family_id(first)?;
        Ok(s)
    }

    /// The resolved family id.
    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn exchange(
        &mut self,
        req: &[u8],
        seq: u32,
        cmd_name: &'static str,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `sa` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(NetlinkError::Socket {
                op: "send",
                source: io::Error::last_os_error(),
            });
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Socket {
                    op: "recv",
                    source: e,
                });
            }
            let msgs = parse_messages(&buf[..n as usize])?;
            if collect(msgs, seq, cmd_name, &mut out)? {
                return Ok(out);
            }
        }
    }

    /// `vdpa mgmtdev show`.
    pub fn mgmtdevs(&mut self) -> Result<Vec<MgmtDev>, NetlinkError> {
        let seq = self.next_seq();
        let req = encode_mgmtdev_dump(self.family, seq);
        self.exchange(&req, seq, "mgmtdev get")?
            .iter()
            .map(|a| decode_mgmtdev(a))
            .collect()
    }

    /// `vdpa dev show`.
    pub fn devs(&mut self) -> Result<Vec<VdpaDev>, NetlinkError> {
        let seq = self.next_seq();
        let req = encode_dev_dump(self.family, seq);
        self.exchange(&req, seq, "dev get")?
            .iter()
            .map(|a| decode_dev(a))
            .collect()
    }

    /// `vdpa dev add name NAME mgmtdev vduse`. Checks first that the `vduse` management device
    /// exists, so a missing module is named.
    pub fn dev_add(&mut self, mgmtdev: &str, name: &str) -> Result<(), NetlinkError> {
        if !self.mgmtdevs()?.iter().any(|m| m.dev_name == mgmtdev) {
            return Err(NetlinkError::MgmtDevMissing(mgmtdev.to_string()));
        }
        let seq = self.next_seq();
        let req = encode_dev_new(self.family, seq, mgmtdev, name);
        self.exchange(&req, seq, "dev add").map(drop)
    }

    /// `vdpa dev del NAME`.
    pub fn dev_del(&mut self, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let req = encode_dev_del(self.family, seq, name);
        self.exchange(&req, seq, "dev del").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_family_request_is_byte_exact() {
        let b = encode_get_family(7, "vdpa");
        // attr = 4 header + "vdpa\0" (5) = 9, padded to 12; total 16 + 4 + 12 = 32.
        let mut want = Vec::new();
        want.extend_from_slice(&32u32.to_ne_bytes());
        want.extend_from_slice(&0x10u16.to_ne_bytes());
        want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[3, 1, 0, 0]);
        want.extend_from_slice(&9u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(b"vdpa\0\0\0\0");
        assert_eq!(b, want);
    }

    #[test]
    fn dev_new_request_is_byte_exact() {
        let b = encode_dev_new(0x1d, 3, "vduse", "blk0");
        let mut want = Vec::new();
        // attrs: MGMTDEV_DEV_NAME "vduse\0" (4+6=10 -> 12), DEV_NAME "blk0\0" (4+5=9 -> 12)
        want.extend_from_slice(&(16u32 + 4 + 12 + 12).to_ne_bytes());
        want.extend_from_slice(&0x1du16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[3, 1, 0, 0]);
        want.extend_from_slice(&10u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(b"vduse\0\0\0");
        want.extend_from_slice(&9u16.to_ne_bytes());
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(b"blk0\0\0\0\0");
        assert_eq!(b, want);
    }

    #[test]
    fn dev_del_and_dumps_are_byte_exact() {
        let b = encode_dev_del(0x1d, 4, "b");
        assert_eq!(&b[0..4], &28u32.to_ne_bytes());
        assert_eq!(&b[6..8], &5u16.to_ne_bytes());
        assert_eq!(b[16], cmd::DEV_DEL);
        assert_eq!(&b[20..28], &[6, 0, 4, 0, b'b', 0, 0, 0]);

        let d = encode_mgmtdev_dump(0x1d, 5);
        assert_eq!(d.len(), 20);
        assert_eq!(&d[6..8], &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        assert_eq!(d[16], cmd::MGMTDEV_GET);
        assert_eq!(d[17], VDPA_GENL_VERSION);
        let d = encode_dev_dump(0x1d, 6);
        assert_eq!(d[16], cmd::DEV_GET);
    }

    fn reply(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
        b.resize(align4(b.len()), 0);
        b
    }

    #[test]
    fn family_reply_decodes_id() {
        let mut attrs = Vec::new();
        put_attr_str(&mut attrs, CTRL_ATTR_FAMILY_NAME, "vdpa");
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_ID, &0x22u16.to_ne_bytes());
        let mut body = vec![1, 2, 0, 0];
        body.extend_from_slice(&attrs);
        let mut buf = reply(0x10, 0, 9, &body);
        buf.extend(reply(NLMSG_ERROR, 0, 9, &[0u8; 20]));
        let msgs = parse_messages(&buf).expect("parses");
        assert_eq!(msgs.len(), 2);
        let Message::Genl { attrs, cmd, .. } = &msgs[0] else {
            panic!("first message is data")
        };
        assert_eq!(*cmd, 1);
        assert_eq!(decode_family_id(attrs).expect("id"), 0x22);
        assert_eq!(msgs[1], Message::Ack { seq: 9 });
    }

    #[test]
    fn error_reply_becomes_typed_error_with_errno() {
        let mut body = Vec::new();
        body.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        body.extend_from_slice(&[0u8; 16]);
        let msgs = parse_messages(&reply(NLMSG_ERROR, 0, 3, &body)).expect("parses");
        let mut out = Vec::new();
        let e = collect(msgs, 3, "dev add", &mut out).expect_err("error");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("dev add"), "{e}");
    }

    #[test]
    fn extended_ack_message_is_kept() {
        let mut body = Vec::new();
        body.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        // capped: only the original header follows
        body.extend_from_slice(&40u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 12]);
        put_attr_str(&mut body, NLMSGERR_ATTR_MSG, "device already exists");
        let msgs = parse_messages(&reply(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 4, &body))
            .expect("parses");
        assert_eq!(
            msgs[0],
            Message::Error {
                seq: 4,
                errno: libc::EEXIST,
                ext_msg: Some("device already exists".into())
            }
        );
    }

    #[test]
    fn dump_of_devices_decodes_until_done() {
        let mut a1 = Vec::new();
        put_attr_str(&mut a1, attr::DEV_NAME, "blk0");
        put_attr_str(&mut a1, attr::MGMTDEV_DEV_NAME, "vduse");
        put_attr(&mut a1, attr::DEV_ID, &2u32.to_ne_bytes());
        put_attr(&mut a1, attr::DEV_MAX_VQS, &4u32.to_ne_bytes());
        put_attr(&mut a1, attr::DEV_MAX_VQ_SIZE, &256u16.to_ne_bytes());
        let mut body = vec![cmd::DEV_NEW, 1, 0, 0];
        body.extend_from_slice(&a1);
        let mut buf = reply(0x1d, NLM_F_MULTI, 5, &body);
        buf.extend(reply(NLMSG_DONE, NLM_F_MULTI, 5, &[0u8; 4]));
        let mut out = Vec::new();
        let done = collect(
            parse_messages(&buf).expect("parses"),
            5,
            "dev get",
            &mut out,
        )
        .expect("no error");
        assert!(done);
        let d = decode_dev(&out[0]).expect("device");
        assert_eq!(
            d,
            VdpaDev {
                name: "blk0".into(),
                mgmtdev: "vduse".into(),
                device_id: Some(2),
                vendor_id: None,
                max_vqs: Some(4),
                max_vq_size: Some(256),
            }
        );
    }

    #[test]
    fn mgmtdev_decodes_without_bus() {
        let mut a = Vec::new();
        put_attr_str(&mut a, attr::MGMTDEV_DEV_NAME, "vduse");
        put_attr(
            &mut a,
            attr::MGMTDEV_SUPPORTED_CLASSES,
            &0x6u64.to_ne_bytes(),
        );
        let m = decode_mgmtdev(&a).expect("mgmtdev");
        assert_eq!(m.bus_name, None);
        assert_eq!(m.dev_name, "vduse");
        assert_eq!(m.supported_classes, Some(6));
    }

    #[test]
    fn truncated_messages_are_rejected() {
        let mut b = reply(0x1d, 0, 1, &[1, 1, 0, 0]);
        b[0] = 200;
        assert!(matches!(
            parse_messages(&b),
            Err(NetlinkError::Malformed(_))
        ));
        assert!(matches!(
            parse_attrs(&[50, 0, 1, 0, 0, 0]),
            Err(NetlinkError::Malformed(_))
        ));
    }

    #[test]
    fn missing_family_error_names_the_module() {
        let s = NetlinkError::FamilyMissing.to_string();
        assert!(s.contains("`vdpa`") && s.contains("modprobe vdpa"), "{s}");
        let s = NetlinkError::MgmtDevMissing("vduse".into()).to_string();
        assert!(s.contains("modprobe vduse"), "{s}");
    }

    #[test]
    fn connect_on_this_kernel_reports_family_or_works() {
        // This machine's kernel has no vdpa: the family lookup must fail with the typed error,
        // not a generic one. On a kernel with vdpa it succeeds.
        match VdpaNetlink::connect() {
            Ok(s) => assert_ne!(s.family(), 0),
            Err(NetlinkError::FamilyMissing) => {}
            Err(NetlinkError::Socket { .. }) => {} // sandbox without netlink sockets
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
