//! Descriptor chains built from structured input, drained by the worker's own `Drain` (its
//! parse path included), with the invariants of `vdpa_blk_fuzz::run` checked on every run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: vdpa_blk_fuzz::FuzzInput| {
    vdpa_blk_fuzz::run(&input);
});
