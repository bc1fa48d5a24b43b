//! The daemon's control socket: a Unix stream socket that takes one command line per
//! connection and answers one JSON line, then closes. `stats` answers the same line as
//! SIGUSR1 (for supervisors that cannot read the daemon's stdout); anything else gets an
//! `{"error": ...}` line. Served by one thread that never touches the datapath.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::unix_socket::{bind_listener, SocketError};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest command line read.
const MAX_LINE: u64 = 256;
/// How long a client may take to send its line.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The path could not be bound.
    #[error(transparent)]
    Bind(#[from] SocketError),
    /// A system call failed.
    #[error("control socket {path}: {op}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
}

/// A bound control socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Binds `path` (see [`bind_listener`]).
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let listener = bind_listener(path, "control socket")?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections on a thread until the process exits: each command line (without its
    /// newline) goes to `answer`, whose string is written back followed by a newline.
    pub fn serve<F>(&self, answer: F) -> Result<JoinHandle<()>, ControlError>
    where
        F: Fn(&str) -> String + Send + 'static,
    {
        let listener = self
            .listener
            .try_clone()
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                op: "dup listener",
                source,
            })?;
        std::thread::Builder::new()
            .name("vdpa-blk-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = handle(stream, &answer) {
                                tracing::debug!("control socket client: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("control socket accept: {e}"),
                    }
                }
            })
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                op: "spawn thread",
                source,
            })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("removing control socket {}: {e}", self.path.display());
        }
    }
}

fn handle<F: Fn(&str) -> String>(stream: UnixStream, answer: &F) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
    let mut reply = answer(line.trim_end_matches(['\n', '\r']));
    reply.push('\n');
    (&stream).write_all(reply.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(path: &Path, line: &str) -> String {
        let mut s = UnixStream::connect(path).expect("connect");
        s.write_all(line.as_bytes()).expect("write");
        // A command ends at a newline or at the end of what the client sends.
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn answer(cmd: &str) -> String {
        match cmd {
            "stats" => r#"{"event":"stats"}"#.to_string(),
            other => format!("unknown {other}"),
        }
    }

    #[test]
    fn answers_one_line_per_connection() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let sock = ControlSocket::bind(&path).expect("bind");
        sock.serve(answer).expect("serve");
        assert_eq!(ask(&path, "stats\n"), "{\"event\":\"stats\"}\n");
        assert_eq!(ask(&path, "stats"), "{\"event\":\"stats\"}\n");
        assert_eq!(ask(&path, "reboot\r\n"), "unknown reboot\n");
        drop(sock);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("ctl.sock");
        let first = ControlSocket::bind(&path).expect("bind");
        let Err(ControlError::Bind(SocketError::InUse { .. })) = ControlSocket::bind(&path) else {
            panic!("a second daemon bound a live socket");
        };
        drop(first);
        // A daemon that died leaves its socket file: the next one takes the path over.
        let stale = UnixListener::bind(d.path().join("other.sock")).expect("bind");
        drop(stale);
        let second = ControlSocket::bind(&d.path().join("other.sock")).expect("stale replaced");
        drop(second);
    }

    #[test]
    fn another_file_is_left_alone() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("important");
        std::fs::write(&path, "keep me").expect("write");
        let Err(ControlError::Bind(SocketError::NotASocket { .. })) = ControlSocket::bind(&path)
        else {
            panic!("bound over a regular file");
        };
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep me");
    }
}
