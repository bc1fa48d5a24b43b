//! `vdpa-blk`: a VDUSE virtio-blk device served with io_uring.
//!
//! Layers, bottom up (see ARCHITECTURE.md):
//! - [`uapi`]: the VDUSE uapi structs and one thin wrapper per ioctl;
//! - [`netlink`]: the `vdpa` generic-netlink client; [`driver`]: vdpa bus driver binding;
//! - [`blk`]: the virtio-blk device model (config space, features, request parsing, backends);
//! - [`backing`]: the backing block device or file;
//! - [`iotlb`]: guest memory over the VDUSE IOTLB mappings ([`sigbus`]: when a VMM truncates it);
//! - [`worker`]: one thread and one io_uring per virtqueue;
//! - [`device`]: the VDUSE control loop tying them together; [`vhost_user`]: the same device
//!   served over vhost-user instead (its memory table, queue setup and notifications);
//! - [`control`]: the daemon's control socket (stats on request); [`unix_socket`]: binding
//!   socket paths.

pub mod backing;
pub mod blk;
pub mod control;
pub mod device;
pub mod driver;
pub mod inflight;
pub mod iotlb;
pub mod netlink;
pub mod ready;
pub mod sigbus;
pub mod uapi;
pub mod unix_socket;
pub mod vhost_user;
pub mod worker;
