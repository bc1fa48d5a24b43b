//! `nvmf-target`: the storage node service.
//!
//! Built so far: the configuration ([`config`]). Carving, the nvmet configfs model, the store,
//! the reconcile loop and the API are still to come (see ARCHITECTURE.md); nothing here
//! pretends to do them.

pub mod config;
