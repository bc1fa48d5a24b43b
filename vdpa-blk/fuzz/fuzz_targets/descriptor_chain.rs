//! Descriptor chains built from structured input, through the worker's parse path, with the
//! invariants of `vdpa_blk_fuzz::run` checked after every run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: vdpa_blk_fuzz::FuzzInput| {
    vdpa_blk_fuzz::run(&input);
});
