//! Guest memory that vanishes under the daemon. A VMM that truncates the memfd behind its
//! guest RAM turns every access to the lost pages into SIGBUS, which would kill the daemon
//! (and every other VM's disk it serves). The kernel's own accesses (io_uring reads and
//! writes) just fail with EFAULT; ours (rings, status bytes, headers) go through this handler:
//! a fault inside a registered guest mapping gets a private zero page mapped over the lost
//! page, and the access goes on (the driver reads back zeroes from memory it gave up). A fault
//! anywhere else is a real bug and takes the default action.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Guest mappings the handler knows, as `(start, len)`; a slot is free while `len` is 0.
const SLOTS: usize = 1024;
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static REPLACED: AtomicUsize = AtomicUsize::new(0);

/// A guest mapping registered with the handler for as long as this lives.
#[derive(Debug)]
pub struct Registration(Option<usize>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            LENS[i].store(0, Ordering::Release);
            STARTS[i].store(0, Ordering::Release);
        }
    }
}

/// Registers `[start, start + len)` as guest memory. Without a free slot (more than 1024
/// mappings) the range is not covered, which only matters if the VMM truncates it.
pub fn register(start: usize, len: usize) -> Registration {
    for i in 0..SLOTS {
        if STARTS[i]
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            LENS[i].store(len, Ordering::Release);
            return Registration(Some(i));
        }
    }
    Registration(None)
}

/// Pages replaced by zero pages so far (the control loop reports growth).
pub fn replaced_pages() -> usize {
    REPLACED.load(Ordering::Relaxed)
}

fn in_guest_memory(addr: usize) -> bool {
    (0..SLOTS).any(|i| {
        let len = LENS[i].load(Ordering::Acquire);
        let start = STARTS[i].load(Ordering::Acquire);
        len != 0 && addr >= start && addr - start < len
    })
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if in_guest_memory(addr) {
        let page = PAGE.load(Ordering::Relaxed);
        let base = addr & !(page - 1);
        // SAFETY: replaces one page of a guest mapping this process owns (registered above)
        // with anonymous memory; nothing in Rust holds a reference into guest memory (it is
        // only reached through volatile accesses), so no invariant depends on its contents.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            REPLACED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not guest memory (or the page could not be replaced): the default action, on return.
    // SAFETY: resetting a signal disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// Installs the handler (once per process; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    static DONE: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    DONE.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn of the
        // SA_SIGINFO signature, and the struct lives across the call.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
    });
    result
}
