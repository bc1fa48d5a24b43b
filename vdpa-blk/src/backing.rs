//! The backing block device (or regular file) a device serves: opened once, with or without
//! `O_DIRECT`, shared by every queue's worker.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The backing device or file.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    is_block: bool,
    direct: bool,
}

/// Errors opening the backing device.
#[derive(Debug, thiserror::Error)]
#[error("open backing {path} ({mode}): {source}")]
pub struct BackingError {
    path: PathBuf,
    mode: &'static str,
    #[source]
    source: io::Error,
}

impl Backing {
    /// Opens `path` read-write (or read-only) and, if `direct`, with `O_DIRECT`.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, BackingError> {
        let mode = match (read_only, direct) {
            (true, true) => "read-only, O_DIRECT",
            (true, false) => "read-only",
            (false, true) => "read-write, O_DIRECT",
            (false, false) => "read-write",
        };
        let err = |source| BackingError {
            path: path.to_path_buf(),
            mode,
            source,
        };
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(!read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path).map_err(err)?;
        let is_block = file.metadata().map_err(err)?.file_type().is_block_device();
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            is_block,
            direct,
        })
    }

    /// The path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a block device (a regular file otherwise).
    pub fn is_block(&self) -> bool {
        self.is_block
    }

    /// Whether O_DIRECT is on.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Current size in bytes (for resize detection).
    pub fn size_bytes(&self) -> io::Result<u64> {
        if self.is_block {
            let mut size: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
            // SAFETY: the kernel writes one u64 into `size`.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(size)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// The open file (for SQEs).
    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
