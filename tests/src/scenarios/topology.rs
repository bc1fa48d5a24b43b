//! A topology brought up and nothing more: every guest booted with its state disk, the stack's
//! modules loaded, soft-RoCE on every link and every compute node reaching the storage node.
//! How long that takes is the price of the topology on this machine (the `trio` one is
//! measured this way).

use crate::bed::{Bed, BedParams};
use crate::error::Result;
use crate::scenarios::steps;
use crate::setup::Prepared;

/// Seconds from the first QEMU to every link up, and to the guests powered off.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub up_s: f64,
    pub total_s: f64,
}

/// Boots `params.topology`, brings its network up and stops it.
pub fn run(prepared: &Prepared, params: &BedParams) -> Result<Report> {
    let start = std::time::Instant::now();
    let mut bed = Bed::start(prepared, params, "topology")?;
    let topology = bed.topology();
    let r = steps::prepare(
        &mut bed,
        &steps::storage_modules(topology),
        &steps::compute_modules(topology),
    )
    .and_then(|_| steps::network(&mut bed));
    let up_s = start.elapsed().as_secs_f64();
    bed.progress()
        .phase("done", &format!("{topology} topology up in {up_s:.1}s"));
    bed.shutdown();
    r?;
    Ok(Report {
        up_s,
        total_s: start.elapsed().as_secs_f64(),
    })
}
