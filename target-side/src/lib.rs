//! `nvmf-target`: the storage node service. The configuration ([`config`]), the nvmet
//! configfs model ([`nvmet`] over [`configfs`]), VF carving ([`carve`]), the PF inventory
//! ([`inventory`]), placement ([`plan`]), the drive backend ([`backend`]), the desired-state
//! store ([`store`]) and its nvmetcli-format copy ([`nvmetcli`], kept current by [`copy`]),
//! DH-HMAC-CHAP keys (`fabric::dhchap`), host registration ([`hosts`]), connected hosts
//! ([`connections`]), volumes: create with rollback, delete, resize, grants and reconcile
//! ([`volume`]), metrics ([`metrics`]) and the HTTP API ([`api`]); the daemon and the CLI are
//! the binary (`main.rs`, `daemon.rs`, `client.rs`). ARCHITECTURE.md has the layering.

pub mod api;
pub mod backend;
pub mod carve;
pub mod config;
pub mod configfs;
pub mod connections;
pub mod copy;
pub mod hosts;
pub mod inventory;
pub mod metrics;
pub mod nvmet;
pub mod nvmetcli;
pub mod plan;
pub mod port_connections;
pub mod store;
#[cfg(test)]
mod testing;
pub mod volume;
