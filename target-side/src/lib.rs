//! `nvmf-target`: the storage node service.
//!
//! Built so far: the configuration ([`config`]), the nvmet configfs model ([`nvmet`] over
//! [`configfs`]), VF carving ([`carve`]), the PF inventory ([`inventory`]), placement
//! ([`plan`]), the drive backend ([`backend`]), the desired-state store ([`store`]), its
//! nvmetcli-format copy ([`nvmetcli`]), DH-HMAC-CHAP keys ([`dhchap`]), host registration
//! ([`hosts`]), volume creation with rollback, deletion and reconcile ([`volume`]), and the
//! first part of the HTTP API ([`api`]); the daemon and CLI are `main.rs`. What is still to
//! come is in ARCHITECTURE.md; nothing here pretends to do it.

pub mod api;
pub mod backend;
pub mod carve;
pub mod config;
pub mod configfs;
pub mod connections;
pub mod copy;
pub mod dhchap;
pub mod hosts;
pub mod inventory;
pub mod metrics;
pub mod nvmet;
pub mod nvmetcli;
pub mod plan;
pub mod store;
#[cfg(test)]
mod testing;
pub mod volume;
