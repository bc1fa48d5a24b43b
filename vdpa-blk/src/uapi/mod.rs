//! Raw kernel interfaces, bound by hand: only what this crate uses, each layout tested.

pub mod vduse;
