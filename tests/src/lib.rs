//! The soft-RoCE test bed: the project's real kernel stack (NVMe SR-IOV, nvmet, rdma_rxe,
//! nvme-rdma, VDUSE, vDPA) in QEMU guests booted under software emulation, because the
//! machines that build and test this project run a kernel with none of it.
//!
//! Layers, bottom up: [`setup`] (host tools, the guest kernel, the initramfs) -> [`qemu`]
//! (a guest's command line) -> [`guest`] (a QEMU process that never outlives us, and its
//! [`agent`]) -> [`bed`] (topologies, steps by role) -> [`scenarios`].

pub mod agent;
pub mod backports;
pub mod bed;
pub mod blkio_client;
pub mod blkio_load;
pub mod build;
pub mod cmd;
pub mod compare;
pub mod error;
pub mod fio;
pub mod fio_profile;
pub mod guest;
pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod kernel_crash;
pub mod link;
pub mod native_bench;
pub mod probe;
pub mod progress;
pub mod qemu;
pub mod qmp;
pub mod scenarios;
pub mod setup;
pub mod vhost_driver;
pub mod vmm;

pub use error::{Error, Result};
