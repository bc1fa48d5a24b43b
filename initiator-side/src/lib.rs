//! `nvmf-initiator`: the compute node agent.
//!
//! Not built yet (see ARCHITECTURE.md in this folder for what will live here).
//! This crate deliberately exposes nothing until the pieces are real.
