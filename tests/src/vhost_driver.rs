//! `testbed vhost-driver`: brings a `/dev/vhost-vdpa-N` device up the way a VMM does, with the
//! vhost and vhost-vdpa ioctls and one IOTLB update, with its "guest memory" either shared
//! (a memfd, as QEMU's `memory-backend-memfd,share=on`) or private anonymous memory (QEMU's
//! default `memory-backend-ram`). It then waits and prints a `RESULT {json}` line; the test
//! reads the device daemon's log to see what the daemon made of that memory.
//!
//! vhost-vdpa hands VDUSE only shared, file-backed mappings (the daemon maps them through
//! `VDUSE_IOTLB_GET_FD`); private anonymous memory reaches the daemon as no mapping at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

const VHOST: u64 = 0xAF;

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (VHOST << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    ioc(1, nr, size as u64)
}
const fn ior(nr: u64, size: usize) -> u64 {
    ioc(2, nr, size as u64)
}

// linux/vhost.h (6.12).
const VHOST_GET_FEATURES: u64 = ior(0x00, 8);
const VHOST_SET_FEATURES: u64 = iow(0x00, 8);
const VHOST_SET_OWNER: u64 = ioc(0, 0x01, 0);
const VHOST_SET_VRING_NUM: u64 = iow(0x10, 8);
const VHOST_SET_VRING_ADDR: u64 = iow(0x11, 40);
const VHOST_SET_VRING_BASE: u64 = iow(0x12, 8);
const VHOST_SET_VRING_KICK: u64 = iow(0x20, 8);
const VHOST_SET_VRING_CALL: u64 = iow(0x21, 8);
const VHOST_VDPA_GET_STATUS: u64 = ior(0x71, 1);
const VHOST_VDPA_SET_STATUS: u64 = iow(0x72, 1);
const VHOST_VDPA_SET_VRING_ENABLE: u64 = iow(0x75, 8);

const VHOST_IOTLB_MSG: u32 = 1;
const VHOST_IOTLB_UPDATE: u8 = 2;
const VHOST_ACCESS_RW: u8 = 3;

const S_ACKNOWLEDGE: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;

const F_VERSION_1: u64 = 1 << 32;
const F_ACCESS_PLATFORM: u64 = 1 << 33;

const QUEUE_SIZE: u32 = 16;
/// IOVA of the memory region.
const IOVA: u64 = 0x10_0000;
const REGION: usize = 2 << 20;

#[repr(C)]
struct VringState {
    index: u32,
    num: u32,
}

#[repr(C)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc: u64,
    used: u64,
    avail: u64,
    log: u64,
}

#[repr(C)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_msg` with a `vhost_iotlb_msg` (72 bytes).
#[repr(C)]
struct IotlbMsg {
    type_: u32,
    _pad: u32,
    iova: u64,
    size: u64,
    uaddr: u64,
    perm: u8,
    kind: u8,
    _rest: [u8; 38],
}

/// The memory the "VMM" gives its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Memory {
    /// MAP_SHARED memfd (what vhost-vdpa can pass to VDUSE).
    Memfd,
    /// MAP_PRIVATE | MAP_ANONYMOUS.
    Anon,
}

fn ioctl<T>(f: &File, what: &str, req: u64, arg: *mut T) -> anyhow::Result<()> {
    // SAFETY: every request number above is paired by the callers with a pointer to the
    // #[repr(C)] struct of the size encoded in it, live for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg) };
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_status(f: &File, status: u8) -> anyhow::Result<()> {
    let mut s = status;
    ioctl(f, "VHOST_VDPA_SET_STATUS", VHOST_VDPA_SET_STATUS, &mut s)
}

/// The device status as the kernel holds it (VDUSE keeps DRIVER_OK only if the device took it).
fn get_status(f: &File) -> anyhow::Result<u8> {
    let mut s = 0u8;
    ioctl(f, "VHOST_VDPA_GET_STATUS", VHOST_VDPA_GET_STATUS, &mut s)?;
    Ok(s)
}

fn eventfd() -> anyhow::Result<File> {
    // SAFETY: plain eventfd(2); the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        bail!("eventfd: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The region: its address, and the memfd keeping it (None for anonymous memory).
fn alloc(memory: Memory) -> anyhow::Result<(*mut u8, Option<File>)> {
    let (flags, fd, file) = match memory {
        Memory::Anon => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, None),
        Memory::Memfd => {
            // SAFETY: valid C string; the result is checked.
            let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                bail!("memfd_create: {}", std::io::Error::last_os_error());
            }
            // SAFETY: a fresh fd we own.
            let f = unsafe { File::from_raw_fd(fd) };
            f.set_len(REGION as u64).context("size the memfd")?;
            (libc::MAP_SHARED, f.as_raw_fd(), Some(f))
        }
    };
    // SAFETY: a new mapping of REGION bytes; the result is checked. It is never unmapped: the
    // process exits after the run.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is REGION bytes, readable and writable; nothing else uses it yet.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, REGION) };
    Ok((p.cast(), file))
}

/// Opens the device and negotiates like a VMM: owner, features (VERSION_1 and
/// ACCESS_PLATFORM), status up to FEATURES_OK.
fn open_negotiated(path: &str) -> anyhow::Result<File> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    ioctl::<u8>(
        &dev,
        "VHOST_SET_OWNER",
        VHOST_SET_OWNER,
        std::ptr::null_mut(),
    )?;
    let mut features = 0u64;
    ioctl(
        &dev,
        "VHOST_GET_FEATURES",
        VHOST_GET_FEATURES,
        &mut features,
    )?;
    let wanted = F_VERSION_1 | F_ACCESS_PLATFORM;
    if features & wanted != wanted {
        bail!("device features {features:#x} lack VERSION_1 or ACCESS_PLATFORM");
    }
    set_status(&dev, S_ACKNOWLEDGE | S_DRIVER)?;
    let mut f = wanted;
    ioctl(&dev, "VHOST_SET_FEATURES", VHOST_SET_FEATURES, &mut f)?;
    set_status(&dev, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK)?;
    Ok(dev)
}

/// Sets up queue 0 in a region of `memory`, sets DRIVER_OK, waits `hold`, resets.
pub fn run(path: &str, memory: Memory, hold: Duration) -> anyhow::Result<()> {
    let dev = open_negotiated(path)?;
    let (mem, _keep) = alloc(memory)?;
    iotlb_update(&dev, mem)?;
    let (kick, call) = (eventfd()?, eventfd()?);
    setup_queue(&dev, &QUEUE_LAYOUT[0], &kick, &call)?;
    enable(&dev, 0)?;
    set_status(&dev, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)?;
    std::thread::sleep(hold);
    let status = get_status(&dev)?;
    set_status(&dev, 0)?;
    println!(
        "RESULT {}",
        json!({"vhost_driver": {"memory": format!("{memory:?}").to_lowercase(), "status": status}})
    );
    Ok(())
}

/// One split virtqueue laid out in the region: descriptors, available ring, used ring.
struct Ring {
    index: u32,
    /// Offsets into the region (= IOVA - IOVA base).
    desc: usize,
    avail: usize,
    used: usize,
}

const QUEUE_LAYOUT: [Ring; 3] = [
    Ring {
        index: 0,
        desc: 0x0,
        avail: 0x100,
        used: 0x1000,
    },
    Ring {
        index: 1,
        desc: 0x2000,
        avail: 0x2100,
        used: 0x3000,
    },
    Ring {
        index: 2,
        desc: 0x4000,
        avail: 0x4100,
        used: 0x5000,
    },
];

/// Sets a queue's size, ring addresses, base and eventfds (not its enable bit).
fn setup_queue(dev: &File, r: &Ring, kick: &File, call: &File) -> anyhow::Result<()> {
    let mut num = VringState {
        index: r.index,
        num: QUEUE_SIZE,
    };
    ioctl(dev, "VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM, &mut num)?;
    let mut addr = VringAddr {
        index: r.index,
        flags: 0,
        desc: IOVA + r.desc as u64,
        avail: IOVA + r.avail as u64,
        used: IOVA + r.used as u64,
        log: 0,
    };
    ioctl(dev, "VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR, &mut addr)?;
    let mut base = VringState {
        index: r.index,
        num: 0,
    };
    ioctl(dev, "VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE, &mut base)?;
    let mut kf = VringFile {
        index: r.index,
        fd: kick.as_raw_fd(),
    };
    ioctl(dev, "VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK, &mut kf)?;
    let mut cf = VringFile {
        index: r.index,
        fd: call.as_raw_fd(),
    };
    ioctl(dev, "VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL, &mut cf)
}

fn enable(dev: &File, index: u32) -> anyhow::Result<()> {
    let mut en = VringState { index, num: 1 };
    ioctl(
        dev,
        "VHOST_VDPA_SET_VRING_ENABLE",
        VHOST_VDPA_SET_VRING_ENABLE,
        &mut en,
    )
}

/// Puts a FLUSH request (header + status descriptor) on ring `r`, kicks it and waits up to
/// 10 s for the used entry. Returns "served" (status OK), "status N" or "timeout".
fn flush_on(mem: *mut u8, r: &Ring, kick: &File) -> String {
    let hdr = 0x10000 + 0x100 * r.index as usize;
    let status = 0x11000 + r.index as usize;
    // SAFETY: every offset below lies inside the REGION-byte mapping `mem`; the device reads
    // the rings only after the avail index store, which is ordered after the other writes.
    unsafe {
        let w32 =
            |off: usize, v: u32| std::ptr::write_volatile(mem.add(off).cast::<u32>(), v.to_le());
        let w16 =
            |off: usize, v: u16| std::ptr::write_volatile(mem.add(off).cast::<u16>(), v.to_le());
        let w64 =
            |off: usize, v: u64| std::ptr::write_volatile(mem.add(off).cast::<u64>(), v.to_le());
        w32(hdr, 4); // VIRTIO_BLK_T_FLUSH
        w32(hdr + 4, 0);
        w64(hdr + 8, 0);
        std::ptr::write_volatile(mem.add(status), 0xff);
        // Descriptor 0: header (device-readable, NEXT -> 1); 1: status (device-writable).
        w64(r.desc, IOVA + hdr as u64);
        w32(r.desc + 8, 16);
        w16(r.desc + 12, 1);
        w16(r.desc + 14, 1);
        w64(r.desc + 16, IOVA + status as u64);
        w32(r.desc + 24, 1);
        w16(r.desc + 28, 2);
        w16(r.desc + 30, 0);
        w16(r.avail + 4, 0);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        w16(r.avail + 2, 1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
    let one = 1u64.to_ne_bytes();
    if (&*kick).write_all(&one).is_err() {
        return "kick failed".into();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: inside the mapping; the device writes it, hence the volatile read.
        let used = unsafe { std::ptr::read_volatile(mem.add(r.used + 2).cast::<u16>()) };
        if u16::from_le(used) == 1 {
            // SAFETY: as above.
            let st = unsafe { std::ptr::read_volatile(mem.add(status)) };
            return if st == 0 {
                "served".into()
            } else {
                format!("status {st}")
            };
        }
        if std::time::Instant::now() >= deadline {
            return "timeout".into();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A driver that uses a subset of a three-queue device, as firmware (SeaBIOS drives one
/// queue) or a guest with fewer vCPUs than queues does: queue 0 set up and enabled; queue 1
/// set up but enabled only after DRIVER_OK; queue 2 enabled but never set up (size 0, what a
/// VMM may report for a queue its guest ignored). Prints whether DRIVER_OK held and whether a
/// FLUSH on queue 0, then on queue 1, was served.
pub fn run_subset(path: &str) -> anyhow::Result<()> {
    let dev = open_negotiated(path)?;
    let (mem, _keep) = alloc(Memory::Memfd)?;
    iotlb_update(&dev, mem)?;
    let fds: Vec<(File, File)> = (0..2)
        .map(|_| Ok((eventfd()?, eventfd()?)))
        .collect::<anyhow::Result<_>>()?;
    setup_queue(&dev, &QUEUE_LAYOUT[0], &fds[0].0, &fds[0].1)?;
    enable(&dev, 0)?;
    setup_queue(&dev, &QUEUE_LAYOUT[1], &fds[1].0, &fds[1].1)?;
    enable(&dev, 2)?;
    set_status(&dev, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)?;
    let status = get_status(&dev)?;
    let driver_ok = status & S_DRIVER_OK != 0;
    let q0 = flush_on(mem, &QUEUE_LAYOUT[0], &fds[0].0);
    enable(&dev, 1)?;
    let q1 = flush_on(mem, &QUEUE_LAYOUT[1], &fds[1].0);
    set_status(&dev, 0)?;
    println!(
        "RESULT {}",
        json!({"subset": {"driver_ok": driver_ok, "queue0": q0, "queue1_enabled_later": q1}})
    );
    Ok(())
}

/// Maps the whole region at IOVA (one VHOST_IOTLB_UPDATE).
fn iotlb_update(dev: &File, mem: *mut u8) -> anyhow::Result<()> {
    let msg = IotlbMsg {
        type_: VHOST_IOTLB_MSG,
        _pad: 0,
        iova: IOVA,
        size: REGION as u64,
        uaddr: mem as u64,
        perm: VHOST_ACCESS_RW,
        kind: VHOST_IOTLB_UPDATE,
        _rest: [0; 38],
    };
    // SAFETY: `msg` is a #[repr(C)] plain-data struct of exactly this size.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&msg as *const IotlbMsg).cast::<u8>(),
            std::mem::size_of::<IotlbMsg>(),
        )
    };
    let mut d = dev;
    d.write_all(bytes).context("VHOST_IOTLB_UPDATE (write)")
}

/// Opens the device and keeps it open for `hold` (a VMM that does not let go), printing a
/// RESULT line when it is up.
pub fn hold_open(path: &str, hold: Duration) -> anyhow::Result<()> {
    let _dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    println!(
        "RESULT {}",
        json!({"holding": path, "pid": std::process::id()})
    );
    std::thread::sleep(hold);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_vhost_h() {
        // Printed by a C program built against linux/vhost.h (stable uapi).
        assert_eq!(VHOST_GET_FEATURES, 0x8008_af00);
        assert_eq!(VHOST_SET_FEATURES, 0x4008_af00);
        assert_eq!(VHOST_SET_OWNER, 0xaf01);
        assert_eq!(VHOST_SET_VRING_NUM, 0x4008_af10);
        assert_eq!(VHOST_SET_VRING_ADDR, 0x4028_af11);
        assert_eq!(VHOST_SET_VRING_BASE, 0x4008_af12);
        assert_eq!(VHOST_SET_VRING_KICK, 0x4008_af20);
        assert_eq!(VHOST_SET_VRING_CALL, 0x4008_af21);
        assert_eq!(VHOST_VDPA_GET_STATUS, 0x8001_af71);
        assert_eq!(VHOST_VDPA_SET_STATUS, 0x4001_af72);
        assert_eq!(VHOST_VDPA_SET_VRING_ENABLE, 0x4008_af75);
    }

    #[test]
    fn struct_sizes_match_linux_vhost_h() {
        assert_eq!(std::mem::size_of::<VringState>(), 8);
        assert_eq!(std::mem::size_of::<VringAddr>(), 40);
        assert_eq!(std::mem::size_of::<VringFile>(), 8);
        assert_eq!(std::mem::size_of::<IotlbMsg>(), 72);
        assert_eq!(std::mem::offset_of!(IotlbMsg, iova), 8);
        assert_eq!(std::mem::offset_of!(IotlbMsg, perm), 32);
        assert_eq!(std::mem::offset_of!(IotlbMsg, kind), 33);
    }
}
