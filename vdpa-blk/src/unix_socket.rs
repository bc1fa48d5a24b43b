//! Binding a Unix socket path the way a restarted daemon needs: a stale socket left by a
//! daemon that died is replaced; one a live process listens on, or any other file, is refused
//! and left alone. Used by the control socket and the vhost-user socket.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a socket path could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live process already listens there.
    #[error("{what} {path}: another process is listening on it")]
    InUse {
        /// What the socket is for.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{what} {path}: the path exists and is not a socket")]
    NotASocket {
        /// What the socket is for.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{what} {path}: {op}: {source}")]
    Io {
        /// What the socket is for.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
}

/// Binds `path` for the socket `what` (named in errors).
pub fn bind_listener(path: &Path, what: &'static str) -> Result<UnixListener, SocketError> {
    let io_err = |op| {
        let path = path.to_path_buf();
        move |source| SocketError::Io {
            what,
            path,
            op,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(SocketError::NotASocket {
                    what,
                    path: path.to_path_buf(),
                });
            }
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        what,
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
                }
                Err(e) => return Err(io_err("connect to the existing socket")(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat")(e)),
    }
    UnixListener::bind(path).map_err(io_err("bind"))
}
