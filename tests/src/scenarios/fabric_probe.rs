//! The `fabric` crate against the real kernel: `testbed probe-fabric` carves a VF with admin
//! commands and finds its namespace through the sysfs model (storage side), then discovers,
//! connects, checks the kernel's refusals and disconnects through /dev/nvme-fabrics (compute
//! side). The export in between uses the same configfs steps as the reference scenario.

use serde_json::Value;

use super::steps::{self, required, secs};
use crate::bed::{Bed, BedParams, Role, StepResult, STORAGE_ADDR};
use crate::error::{Error, Result};
use crate::setup::Prepared;

/// The exported subsystem.
pub const SUBSYSTEM_NQN: &str = "nqn.2026-11.io.testbed:fabric-probe";

/// What the probes reported.
#[derive(Debug, Clone)]
pub struct Report {
    /// The storage-side probe's results (identify, capabilities, carve).
    pub carve: Vec<Value>,
    /// The compute-side probe's results (discovery, connect, refusals, disconnect).
    pub connect: Vec<Value>,
}

impl Report {
    /// The first value of `key` in the carve results.
    pub fn carve_value(&self, key: &str) -> Option<&Value> {
        self.carve.iter().find_map(|r| r.get(key))
    }

    /// The first value of `key` in the connect results.
    pub fn connect_value(&self, key: &str) -> Option<&Value> {
        self.connect.iter().find_map(|r| r.get(key))
    }
}

/// Runs the probes in a new bed and tears it down.
pub fn run(prepared: &Prepared, params: &BedParams) -> Result<Report> {
    let mut bed = Bed::start(prepared, params, "fabric-probe")?;
    let report = steps_of(&mut bed, params);
    bed.shutdown();
    report
}

fn steps_of(bed: &mut Bed, params: &BedParams) -> Result<Report> {
    let topology = bed.topology();
    let agent = params.agent.display().to_string();
    let hostnqn = steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &steps::compute_modules(topology),
    )?;
    let carve: StepResult = bed.step(
        Role::Storage,
        "carve",
        "fabric: carve VF 1 with admin commands",
        &format!("{agent} probe-fabric carve --vf 1 --nsid 1"),
        secs(120),
    )?;
    let dev = required(&carve, "dev", "VF namespace block device")?;
    steps::network(bed)?;
    steps::export(bed, SUBSYSTEM_NQN, &hostnqn, &dev)?;
    let connect = bed.step(
        Role::Compute,
        "connect",
        "fabric: discover, connect, refusals, disconnect",
        &format!("{agent} probe-fabric connect --traddr {STORAGE_ADDR} --nqn {SUBSYSTEM_NQN}"),
        secs(120),
    )?;
    if connect.results.is_empty() {
        return Err(Error::Check {
            check: "fabric connect probe".into(),
            reason: "no results".into(),
        });
    }
    steps::unexport(bed, SUBSYSTEM_NQN, &hostnqn)?;
    Ok(Report {
        carve: carve.results,
        connect: connect.results,
    })
}
