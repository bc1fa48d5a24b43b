//! The virtio-blk device model: config space and features ([`config`]), descriptor-chain
//! parsing ([`request`]), and synchronous reference execution with an in-memory backend
//! ([`exec`]). Nothing here knows about VDUSE or io_uring.

pub mod config;
pub mod exec;
pub mod request;

#[cfg(test)]
mod tests;
