//! The worker's notification primitives: eventfds (kick, stop) and the interrupt it injects.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-semaphore eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2); result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1.
    pub fn signal(&self) -> io::Result<()> {
        let v: u64 = 1;
        // SAFETY: writes 8 bytes from `v`.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&v as *const u64).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads (and so resets) the counter; blocks while it is 0.
    pub fn consume(&self) -> io::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into `v`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    }

    /// The raw fd.
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A second handle on the same eventfd.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFd(self.0.try_clone()?))
    }
}

impl From<OwnedFd> for EventFd {
    /// Takes an eventfd someone else made (a vhost-user front end's kick or call fd).
    fn from(fd: OwnedFd) -> Self {
        EventFd(fd)
    }
}

/// How the worker signals the driver (VDUSE_VQ_INJECT_IRQ in production).
pub trait Interrupt: Send + Sync {
    /// Injects the used-buffer interrupt of `queue`.
    fn notify(&self, queue: u16) -> io::Result<()>;
}

impl Interrupt for crate::uapi::vduse::VduseDevFd {
    fn notify(&self, queue: u16) -> io::Result<()> {
        self.vq_inject_irq(u32::from(queue)).map_err(|e| e.source)
    }
}
