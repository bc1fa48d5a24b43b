//! `fabric`: the NVMe and NVMe-oF vocabulary both sides of the stack share.
//!
//! The storage node (`nvmf-target`) uses it to carve namespaces on a drive
//! and hand them to SR-IOV functions; the compute node (`nvmf-initiator`)
//! uses it to connect to remote subsystems and find their block devices.
//! Everything here talks to the kernel directly — `/dev/nvme-fabrics`,
//! the NVMe admin passthrough ioctl, sysfs — and every path is resolved
//! under a [`SysRoot`], so tests run against temporary trees.
//!
//! | module | job |
//! |---|---|
//! | [`nqn`] | NVMe Qualified Names, validated per the specification |
//! | [`host`] | the host NQN and host ID in `/etc/nvme`, created like nvme-cli does |
//! | [`transport`] | `rdma://192.0.2.1:4420`-style transport addresses |
//! | [`connect`] | the fabrics option string, the `/dev/nvme-fabrics` exchange, errno meaning |
//! | [`admin`] | Identify, Namespace Management/Attachment, Virtualization Management, Get Log Page |
//! | [`discovery`] | reading and decoding a discovery controller's log |
//! | [`sysfs`] | read-only model of `/sys/class/nvme*` and PCI SR-IOV functions |
//!
//! Pure encoding and decoding are kept apart from the system calls: option
//! strings, command dwords and returned structures are built and parsed by
//! functions that tests check byte for byte against the NVMe Base
//! Specification 2.0 and the kernel's `drivers/nvme/host/fabrics.c`.
//!
//! What this crate does not know: daemons, HTTP, persistence or policy
//! (which volume goes where); see `ARCHITECTURE.md`.
//!
//! ```no_run
//! use fabric::{ConnectOptions, FabricsClient, HostIdentity, NvmeSysfs, SysRoot};
//!
//! let root = SysRoot::host();
//! let host = HostIdentity::load_or_create(&root)?;
//! let opts = ConnectOptions::new(
//!     "rdma://192.0.2.1:4420".parse()?,
//!     "nqn.2014-08.com.example:vol1".parse()?,
//! )
//! .with_host(&host);
//! let ctrl = FabricsClient::new(root.clone()).connect(&opts)?;
//! let devices = NvmeSysfs::new(root).find_block_devices_for(&opts.nqn)?;
//! println!("{} -> {:?}", ctrl.name(), devices);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod admin;
mod bytes;
pub mod connect;
pub mod dhchap;
pub mod discovery;
pub mod error;
pub mod host;
pub mod nqn;
pub mod root;
pub mod sysfs;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod transport;

pub use admin::{AdminDevice, AdminError, AdminOpen, AdminPassthru, NvmeStatus, StatusCode};
pub use connect::{ConnectError, ConnectOptions, ConnectedController, FabricsClient};
pub use discovery::{discover, DiscoveredSubsystem, DiscoveryError, DiscoveryLog};
pub use error::{DecodeError, Error};
pub use host::{HostIdentity, HostIdentityError};
pub use nqn::{Nqn, NqnError};
pub use root::SysRoot;
pub use sysfs::{NvmeSysfs, SysfsError};
pub use transport::{AddressError, AddressFamily, TransportAddress, TransportType};
