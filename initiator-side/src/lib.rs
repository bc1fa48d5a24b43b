//! `nvmf-initiator`: the compute node agent.
//!
//! What exists so far (see ARCHITECTURE.md in this folder for the whole plan):
//!
//! | module | job |
//! |---|---|
//! | [`config`] | the TOML configuration, checked whole; the host identity files |
//! | [`store`] | the attachment records in SQLite (`<state_dir>/state.db`, private: it holds secrets) |
pub mod config;
pub mod store;
