//! `nvmf-target`: the storage node service.
//!
//! Built so far: the configuration ([`config`]) and the nvmet configfs model ([`nvmet`] over
//! [`configfs`]). Carving, the store, the reconcile loop and the API are still to come (see
//! ARCHITECTURE.md); nothing here pretends to do them.

pub mod config;
pub mod configfs;
pub mod nvmet;
