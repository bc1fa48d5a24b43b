//! Scenarios: sequences of steps run in a bed's guests (each step may use the helpers of
//! [`crate::bed::GUEST_SHELL_LIB`]).

pub mod bench;
pub mod compare;
pub mod fabric_probe;
pub mod lifecycle;
pub mod nvmf_initiator;
pub mod nvmf_target;
pub mod reference;
mod steps;
pub mod topology;
pub mod vdpa_blk;
mod vdpa_blk_faults;
pub mod vdpa_blk_reconnect;
pub mod vm;
