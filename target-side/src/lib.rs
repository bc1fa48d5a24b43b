//! `nvmf-target`: the storage node service.
//!
//! Not built yet (see ARCHITECTURE.md in this folder for what will live here).
//! This crate deliberately exposes nothing until the pieces are real.
