//! The test bed's error type: every failure names what broke and, where a user can fix it,
//! the command that fixes it.

use std::path::PathBuf;

/// Why a test bed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the test bed needs is missing on this machine.
    #[error("missing {what}; fix with: {fix}")]
    Missing { what: String, fix: String },

    /// A host command (apt-get, dpkg-deb, depmod, xz, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The machine's apt sources could not be turned into a backports source.
    #[error("cannot derive a bookworm-backports source from {}: {reason}", path.display())]
    AptSources { path: PathBuf, reason: String },

    /// A guest did not come up (QEMU exited, or the agent never said it was ready).
    #[error(
        "guest `{guest}` did not boot: {reason}\n--- last console lines ({console}) ---\n{tail}"
    )]
    Boot {
        guest: String,
        reason: String,
        console: String,
        tail: String,
    },

    /// A scenario step failed or timed out.
    #[error("{0}")]
    Step(Box<StepFailure>),

    /// The agent channel to a guest broke or spoke nonsense.
    #[error("agent of guest `{guest}`: {reason}")]
    Agent { guest: String, reason: String },

    /// QEMU refused or did not answer a QMP command.
    #[error("{what}: {reason}")]
    Qmp { what: String, reason: String },

    /// A scenario's own check on collected results failed.
    #[error("check `{check}` failed: {reason}")]
    Check { check: String, reason: String },

    /// Invalid parameters given to the test bed.
    #[error("invalid parameter: {0}")]
    Invalid(String),
}

/// A failed step, with what the guest said about it.
#[derive(Debug, thiserror::Error)]
#[error("step `{step}` on guest `{guest}` failed: {reason}\n--- step output ---\n{output}\n--- guest kernel log ---\n{dmesg}\n--- last console lines ({console}) ---\n{tail}")]
pub struct StepFailure {
    pub step: String,
    pub guest: String,
    pub reason: String,
    pub output: String,
    pub dmesg: String,
    pub console: String,
    pub tail: String,
    /// The console's first crash line when the guest died under the step (went away or
    /// booted again) of a kernel crash.
    pub kernel_crash: Option<String>,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl Error {
    /// The crash line when this failure is a guest kernel dying (a step's guest gone, or a
    /// boot that crashed on every attempt), not the stack under test failing.
    pub fn guest_kernel_crash(&self) -> Option<&str> {
        match self {
            Error::Step(f) => f.kernel_crash.as_deref(),
            Error::Boot { tail, .. } => crate::kernel_crash::crash_line(tail),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
