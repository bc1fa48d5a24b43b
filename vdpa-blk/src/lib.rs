//! `vdpa-blk`: a VDUSE virtio-blk device served with io_uring.
//!
//! Not built yet (see ARCHITECTURE.md in this folder for what will live here).
