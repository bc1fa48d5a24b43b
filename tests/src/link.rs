//! The cable between two guests' NICs: both QEMUs listen on a TCP socket netdev on 127.0.0.1
//! and this relay, in the bed's process, connects to both and copies frames between them.
//!
//! Why not connect one QEMU to the other: QEMU 7.2's socket netdev never reconnects, so a cold
//! reboot of the listening guest would cut the link for good. Why not its UDP mode (which
//! survives restarts): loopback UDP drops frames when a socket buffer fills, soft-RoCE then
//! retransmits, and on the 6.12 guest kernel that path was seen corrupting the skb slab
//! (`rxe_receiver` -> `prepare_ack_packet` and `rxe_requester` -> `neigh_probe` GPFs). A TCP
//! stream loses nothing; when either QEMU goes away the relay drops both connections (the
//! surviving QEMU goes back to accepting) and connects again once both listen.
//!
//! QEMU's socket netdev leaves Nagle's algorithm on, so a small frame it sends waits for the
//! ACK of the one before; with the relay's ACKs delayed (40 ms and more), soft-RoCE's small
//! packets crawled: 12 IOPS at queue depth 1 over the fabric, every completion 80 to 100 ms.
//! The relay therefore asks for an immediate ACK after every read (`TCP_QUICKACK`, which the
//! kernel does not keep, so it is set again each time), and sends without delay itself.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest frame QEMU's socket netdev sends (a 64 KiB frame plus headers), as a sanity bound.
const MAX_FRAME: usize = 70 * 1024;

/// A running relay between two listening QEMUs; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays between the QEMUs listening on 127.0.0.1:`a` and 127.0.0.1:`b`.
    pub fn start(a: u16, b: u16) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || run(a, b, flag));
        Relay {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect(port: u16, stop: &AtomicBool) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while !stop.load(Ordering::Relaxed) {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn run(a: u16, b: u16, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(sa) = connect(a, &stop) else { return };
        let Some(sb) = connect(b, &stop) else { return };
        let pair = (sa.try_clone(), sb.try_clone());
        let (Ok(sa2), Ok(sb2)) = pair else { continue };
        let down = Arc::new(AtomicBool::new(false));
        let (d, s) = (Arc::clone(&down), Arc::clone(&stop));
        let back = std::thread::spawn(move || copy_frames(sb2, sa2, &d, &s));
        copy_frames(sa, sb, &down, &stop);
        let _ = back.join();
        // One side went away: both connections are closed; connect again when both listen.
    }
}

/// Copies length-prefixed frames from `from` to `to` until either ends or the relay stops
/// (`stop`: a relay dropped while both QEMUs still listen must not wait for them), then shuts
/// both down so the copier of the other direction ends too.
fn copy_frames(mut from: TcpStream, mut to: TcpStream, down: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; MAX_FRAME + 4];
    let quit = || down.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    loop {
        if quit() {
            break;
        }
        match read_frame(&mut from, &mut buf, &quit) {
            Ok(Some(n)) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    down.store(true, Ordering::Relaxed);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Reads one frame (4-byte big-endian length, then the frame) into `buf`; its total length,
/// `None` at a clean end.
fn read_frame(
    from: &mut TcpStream,
    buf: &mut [u8],
    quit: &impl Fn() -> bool,
) -> std::io::Result<Option<usize>> {
    if !read_full(from, &mut buf[..4], quit, true)? {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    if !read_full(from, &mut buf[4..4 + len], quit, false)? {
        return Ok(None);
    }
    Ok(Some(4 + len))
}

/// Fills `buf`, riding out read timeouts (they only let the stop flag be seen); `false` when
/// the stream ended before the first byte of a frame (`at_boundary`) or the relay stops.
fn read_full(
    from: &mut TcpStream,
    buf: &mut [u8],
    quit: &impl Fn() -> bool,
    at_boundary: bool,
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        if quit() {
            return Ok(false);
        }
        match from.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_boundary => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                got += n;
                quickack(from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Asks the kernel to ACK what `s` received at once (see the module's doc); best effort.
fn quickack(s: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor owned by `s`, and a pointer to a c_int with its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    fn read_one(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("length");
        let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut p).expect("payload");
        p
    }

    /// A fake QEMU: listens on a port and hands over each accepted connection.
    fn qemu() -> (u16, std::sync::mpsc::Receiver<TcpStream>, TcpListener) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = l.try_clone().expect("clone");
        std::thread::spawn(move || {
            for s in l2.incoming() {
                let Ok(s) = s else { return };
                if tx.send(s).is_err() {
                    return;
                }
            }
        });
        (port, rx, l)
    }

    #[test]
    fn frames_cross_both_ways_and_the_link_comes_back_after_a_side_restarts() {
        let (pa, a_conns, _la) = qemu();
        let (pb, b_conns, _lb) = qemu();
        let _relay = Relay::start(pa, pb);
        let t = Duration::from_secs(10);
        let mut a = a_conns.recv_timeout(t).expect("relay connects to a");
        let mut b = b_conns.recv_timeout(t).expect("relay connects to b");
        // A frame split over two writes still arrives whole.
        let f = frame(b"hello from a");
        a.write_all(&f[..6]).expect("w");
        std::thread::sleep(Duration::from_millis(50));
        a.write_all(&f[6..]).expect("w");
        assert_eq!(read_one(&mut b), b"hello from a");
        b.write_all(&frame(&[7u8; 1500])).expect("w");
        assert_eq!(read_one(&mut a), vec![7u8; 1500]);
        // b's QEMU goes away: the relay drops a too, then connects to both again.
        drop(b);
        let mut byte = [0u8; 1];
        a.set_read_timeout(Some(t)).expect("timeout");
        assert_eq!(a.read(&mut byte).expect("a is closed"), 0);
        let mut a = a_conns.recv_timeout(t).expect("relay reconnects to a");
        let mut b = b_conns.recv_timeout(t).expect("relay reconnects to b");
        b.write_all(&frame(b"after the restart")).expect("w");
        assert_eq!(read_one(&mut a), b"after the restart");
    }

    #[test]
    fn an_oversized_frame_drops_the_connection() {
        let (pa, a_conns, _la) = qemu();
        let (pb, b_conns, _lb) = qemu();
        let _relay = Relay::start(pa, pb);
        let t = Duration::from_secs(10);
        let mut a = a_conns.recv_timeout(t).expect("a");
        let mut b = b_conns.recv_timeout(t).expect("b");
        a.write_all(&(10_000_000u32).to_be_bytes()).expect("w");
        b.set_read_timeout(Some(t)).expect("timeout");
        let mut byte = [0u8; 1];
        assert_eq!(b.read(&mut byte).expect("b is closed"), 0);
    }
}
