//! Connections on the nvmet ports, counted from the transport, for kernels whose nvmet does not
//! show its controllers (no `CONFIG_NVME_TARGET_DEBUGFS`, as Debian's 6.12 and every kernel
//! before 6.10): RDMA CM ids through RDMA netlink (`RDMA_NLDEV_CMD_RES_CM_ID_GET`, what
//! `rdma resource show cm_id` prints) and established TCP sockets in `/proc/net/tcp*`. A
//! connection cannot be attributed to a subsystem this way, but none at all on every listener
//! means no host is connected to any of them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use fabric::transport::{TransportAddress, TransportType};

/// `NETLINK_RDMA`.
const NETLINK_RDMA: libc::c_int = 20;
/// `RDMA_NL_NLDEV`: the device interface client.
const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_GET: u16 = 1;
const RDMA_NLDEV_CMD_RES_CM_ID_GET: u16 = 11;
const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1;
const RDMA_NLDEV_ATTR_RES_STATE: u16 = 27;
const RDMA_NLDEV_ATTR_RES_CM_ID: u16 = 30;
const RDMA_NLDEV_ATTR_RES_CM_ID_ENTRY: u16 = 31;
const RDMA_NLDEV_ATTR_RES_SRC_ADDR: u16 = 33;
/// `RDMA_CM_LISTEN` in `enum rdma_cm_state`: the port's own listening id.
const RDMA_CM_LISTEN: u8 = 8;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// `RDMA_NL_GET_TYPE(client, op)`.
fn nl_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

/// Why the transport could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("RDMA netlink: {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("RDMA netlink: {0}")]
    Malformed(String),
    #[error("{path}: {source}")]
    Proc {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A netlink request: header and attributes.
fn request(nl_type: u16, flags: u16, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        let len = 4 + v.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&t.to_ne_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&nl_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&body);
    m
}

/// The attributes in `buf` (type without flags, payload).
fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, CountError> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let t = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(CountError::Malformed(format!(
                "attribute of length {len} in {} bytes",
                buf.len()
            )));
        }
        out.push((t, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// One message of a reply: its type and its attributes' bytes; `Err` for an error message.
fn messages(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, CountError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let t = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            return Err(CountError::Malformed(format!(
                "message of length {len} in {} bytes",
                buf.len()
            )));
        }
        if t == libc::NLMSG_ERROR as u16 {
            let errno = buf
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| {
                    CountError::Malformed("an error message without its errno".into())
                })?;
            if errno != 0 {
                return Err(CountError::Netlink {
                    op: "reply",
                    source: io::Error::from_raw_os_error(-errno),
                });
            }
        } else {
            out.push((t, &buf[16..len]));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// A `__kernel_sockaddr_storage` as the kernel fills it (family, port big endian, address).
fn sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// The source addresses of the non-listening CM ids in a `RES_CM_ID_GET` reply message.
fn cm_id_sources(msg: &[u8]) -> Result<Vec<SocketAddr>, CountError> {
    let mut out = Vec::new();
    for (t, table) in attrs(msg)? {
        if t != RDMA_NLDEV_ATTR_RES_CM_ID {
            continue;
        }
        for (e, entry) in attrs(table)? {
            if e != RDMA_NLDEV_ATTR_RES_CM_ID_ENTRY {
                continue;
            }
            let fields = attrs(entry)?;
            let state = fields
                .iter()
                .find(|(t, _)| *t == RDMA_NLDEV_ATTR_RES_STATE)
                .and_then(|(_, v)| v.first().copied());
            let src = fields
                .iter()
                .find(|(t, _)| *t == RDMA_NLDEV_ATTR_RES_SRC_ADDR)
                .and_then(|(_, v)| sockaddr(v));
            if let (Some(s), Some(src)) = (state, src) {
                if s != RDMA_CM_LISTEN {
                    out.push(src);
                }
            }
        }
    }
    Ok(out)
}

/// A netlink socket of family `NETLINK_RDMA`, closed on drop.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> Result<Socket, CountError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_RDMA,
            )
        };
        if fd < 0 {
            return Err(CountError::Netlink {
                op: "socket",
                source: io::Error::last_os_error(),
            });
        }
        let s = Socket(fd);
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(CountError::Netlink {
                op: "setsockopt",
                source: io::Error::last_os_error(),
            });
        }
        Ok(s)
    }

    /// Sends a dump request and collects every reply message until `NLMSG_DONE`.
    fn dump(&self, req: &[u8]) -> Result<Vec<Vec<u8>>, CountError> {
        // SAFETY: `req` is a valid buffer of its length; the kernel's address is implied.
        let n = unsafe { libc::send(self.0, req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(CountError::Netlink {
                op: "send",
                source: io::Error::last_os_error(),
            });
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(CountError::Netlink {
                    op: "recv",
                    source: io::Error::last_os_error(),
                });
            }
            let got = &buf[..n as usize];
            let done = messages_done(got);
            for (t, payload) in messages(got)? {
                if t != libc::NLMSG_DONE as u16 {
                    replies.push(payload.to_vec());
                }
            }
            if done || n == 0 {
                return Ok(replies);
            }
        }
    }
}

/// Whether a datagram holds the `NLMSG_DONE` that ends a dump.
fn messages_done(mut buf: &[u8]) -> bool {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let t = u16::from_ne_bytes([buf[4], buf[5]]);
        if t == libc::NLMSG_DONE as u16 || t == libc::NLMSG_ERROR as u16 {
            return true;
        }
        if len < 16 || len > buf.len() {
            return true;
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    false
}

/// The source addresses of every RDMA CM id that is not listening, on every RDMA device.
fn rdma_sources() -> Result<Vec<SocketAddr>, CountError> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let sock = Socket::open()?;
    let mut devices = Vec::new();
    for msg in sock.dump(&request(nl_type(RDMA_NLDEV_CMD_GET), flags, 1, &[]))? {
        for (t, v) in attrs(&msg)? {
            if t == RDMA_NLDEV_ATTR_DEV_INDEX && v.len() >= 4 {
                devices.push(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
            }
        }
    }
    let mut out = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let idx = dev.to_ne_bytes();
        let req = request(
            nl_type(RDMA_NLDEV_CMD_RES_CM_ID_GET),
            flags,
            2 + i as u32,
            &[(RDMA_NLDEV_ATTR_DEV_INDEX, &idx)],
        );
        for msg in sock.dump(&req)? {
            out.extend(cm_id_sources(&msg)?);
        }
    }
    Ok(out)
}

/// The local addresses of established sockets in a `/proc/net/tcp` or `tcp6` table.
fn tcp_established(table: &str, v6: bool) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "01" {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            // The kernel prints each 32-bit word of the address in host order.
            let words: Vec<u32> = (0..ip.len() / 8)
                .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
                .collect::<Option<_>>()?;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?))
            } else {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?))
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

fn tcp_sources(proc_net: &Path) -> Result<Vec<SocketAddr>, CountError> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let p = proc_net.join(file);
        match std::fs::read_to_string(&p) {
            Ok(t) => out.extend(tcp_established(&t, v6)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && v6 => {}
            Err(source) => {
                return Err(CountError::Proc {
                    path: p.display().to_string(),
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// Whether a connection from local address `src` is on listener `l`.
fn on_listener(src: &SocketAddr, l: &TransportAddress) -> bool {
    l.traddr() == Some(src.ip()) && l.trsvcid() == Some(src.port())
}

/// How many transport connections are on `listeners`, read from the kernel (`proc_net` is
/// `/proc/net` under the root).
pub fn count(listeners: &[TransportAddress], proc_net: &Path) -> Result<usize, CountError> {
    let mut n = 0;
    if listeners.iter().any(|l| l.trtype() == TransportType::Rdma) {
        let rdma: Vec<_> = listeners
            .iter()
            .filter(|l| l.trtype() == TransportType::Rdma)
            .collect();
        n += rdma_sources()?
            .iter()
            .filter(|s| rdma.iter().any(|l| on_listener(s, l)))
            .count();
    }
    if listeners.iter().any(|l| l.trtype() == TransportType::Tcp) {
        let tcp: Vec<_> = listeners
            .iter()
            .filter(|l| l.trtype() == TransportType::Tcp)
            .collect();
        n += tcp_sources(proc_net)?
            .iter()
            .filter(|s| tcp.iter().any(|l| on_listener(s, l)))
            .count();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(t: u16, v: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&t.to_ne_bytes());
        b.extend_from_slice(v);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn sockaddr_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut s = vec![0u8; 128];
        s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        s[2..4].copy_from_slice(&port.to_be_bytes());
        s[4..8].copy_from_slice(&ip);
        s
    }

    fn entry(state: u8, src: Vec<u8>) -> Vec<u8> {
        let mut e = nla(RDMA_NLDEV_ATTR_RES_STATE, &[state]);
        e.extend(nla(RDMA_NLDEV_ATTR_RES_SRC_ADDR, &src));
        nla(RDMA_NLDEV_ATTR_RES_CM_ID_ENTRY | NLA_F_NESTED, &e)
    }

    #[test]
    fn requests_are_encoded_as_rdma_netlink_wants() {
        let r = request(
            nl_type(RDMA_NLDEV_CMD_RES_CM_ID_GET),
            0x301,
            7,
            &[(1, &5u32.to_ne_bytes())],
        );
        assert_eq!(r.len(), 24);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().expect("len")), 24);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), (5 << 10) + 11);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().expect("seq")), 7);
        assert_eq!(&r[16..20], &[8, 0, 1, 0]);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().expect("idx")), 5);
    }

    #[test]
    fn connected_cm_ids_are_counted_and_the_listening_one_is_not() {
        let mut table = entry(RDMA_CM_LISTEN, sockaddr_v4([192, 0, 2, 1], 4420));
        table.extend(entry(5, sockaddr_v4([192, 0, 2, 1], 4420)));
        table.extend(entry(5, sockaddr_v4([192, 0, 2, 1], 4420)));
        table.extend(entry(5, sockaddr_v4([198, 51, 100, 1], 4420)));
        let msg = nla(RDMA_NLDEV_ATTR_RES_CM_ID | NLA_F_NESTED, &table);
        let srcs = cm_id_sources(&msg).expect("decode");
        assert_eq!(srcs.len(), 3);
        let l = TransportAddress::rdma("192.0.2.1".parse().expect("ip"), 4420).expect("addr");
        assert_eq!(srcs.iter().filter(|s| on_listener(s, &l)).count(), 2);
    }

    #[test]
    fn a_truncated_attribute_is_an_error_not_a_panic() {
        assert!(attrs(&[200, 0, 1, 0, 0]).is_err());
        assert!(messages(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // An NLMSG_ERROR cut before its errno is malformed, not an acknowledgement.
        let mut err = vec![16u8, 0, 0, 0];
        err.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        assert!(matches!(messages(&err), Err(CountError::Malformed(_))));
    }

    #[test]
    fn established_tcp_sockets_are_read_from_proc_net_tcp() {
        // 192.0.2.1:4420 established, 192.0.2.1:4420 listening, 127.0.0.1:22 established.
        let local = |ip: [u8; 4], port: u16| format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip));
        let t = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {} 0201000A:C000 01 00000000:00000000 00:00000000 00000000 0 0 1 1\n\
             1: {} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2 1\n\
             2: {} 0100007F:C001 01 00000000:00000000 00:00000000 00000000 0 0 3 1\n",
            local([192, 0, 2, 1], 4420),
            local([192, 0, 2, 1], 4420),
            local([127, 0, 0, 1], 22),
        );
        let est = tcp_established(&t, false);
        assert_eq!(
            est,
            vec![
                "192.0.2.1:4420".parse().expect("addr"),
                "127.0.0.1:22".parse().expect("addr")
            ]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tcp"), t).expect("tcp");
        let l = TransportAddress::tcp("192.0.2.1".parse().expect("ip"), 4420).expect("addr");
        assert_eq!(count(&[l], dir.path()).expect("count"), 1);
    }
}
