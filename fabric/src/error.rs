//! The crate-wide error: one enum callers can hold when they use several
//! parts of `fabric`, wrapping each module's own error, plus the decoding
//! error the byte-level parsers share.

use crate::admin::AdminError;
use crate::connect::ConnectError;
use crate::discovery::DiscoveryError;
use crate::host::HostIdentityError;
use crate::nqn::NqnError;
use crate::sysfs::SysfsError;
use crate::transport::AddressError;

/// A returned data structure could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is shorter than the structure.
    #[error("{structure} truncated: need {needed} bytes, have {got}")]
    Truncated {
        /// The structure.
        structure: &'static str,
        /// Bytes it occupies.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A field holds a value the specification does not allow.
    #[error("{structure}: {field} has invalid value {value}")]
    InvalidField {
        /// The structure.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid NQN.
    #[error(transparent)]
    Nqn(#[from] NqnError),
    /// An invalid transport address.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The host identity could not be read or created.
    #[error(transparent)]
    Host(#[from] HostIdentityError),
    /// Connecting or disconnecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An admin command failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Decoding a data structure failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Discovery failed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Reading sysfs failed.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}
