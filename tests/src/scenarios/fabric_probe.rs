//! The `fabric` crate against the real kernel: `testbed probe-fabric` carves a VF with admin
//! commands and finds its namespace through the sysfs model (storage side), then discovers,
//! connects, checks the kernel's refusals and disconnects through /dev/nvme-fabrics (compute
//! side). The export in between uses the same configfs steps as the reference scenario.

use serde_json::Value;

use super::steps::{self, check, required, secs};
use crate::bed::{Bed, BedParams, Role, StepResult, STORAGE_ADDR};
use crate::error::{Error, Result};
use crate::setup::Prepared;

/// The exported subsystem.
pub const SUBSYSTEM_NQN: &str = "nqn.2026-11.io.testbed:fabric-probe";
/// The VF carved, and the namespace attached to it.
const VF: u32 = 1;
const NSID: u32 = 1;
/// The flexible resources the probe assigns the VF (`probe::carve`): queues, interrupts.
const VQ_RESOURCES: u64 = 2;
const VI_RESOURCES: u64 = 1;

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
    let carve: StepResult = bed.step_env(
        Role::Storage,
        "carve",
        "fabric: carve VF 1 with admin commands",
        include_str!("sh/probe_carve.sh"),
        &[
            ("AGENT", agent.clone()),
            ("VF", VF.to_string()),
            ("NSID", NSID.to_string()),
        ],
        secs(120),
    )?;
    let dev = required(&carve, "dev", "VF namespace block device")?;
    let ns_size = params
        .namespace_sizes
        .get(NSID as usize - 1)
        .copied()
        .ok_or_else(|| Error::Invalid(format!("the bed has no namespace {NSID}")))?;
    check_carve(&carve.results, ns_size)?;
    steps::network(bed)?;
    steps::export(bed, SUBSYSTEM_NQN, &hostnqn, &dev)?;
    let connect = bed.step_env(
        Role::Compute,
        "connect",
        "fabric: discover, connect, refusals, disconnect",
        include_str!("sh/probe_connect.sh"),
        &[
            ("AGENT", agent),
            ("TRADDR", STORAGE_ADDR.to_string()),
            ("NQN", SUBSYSTEM_NQN.to_string()),
        ],
        secs(120),
    )?;
    check_connect(&connect.results)?;
    steps::unexport(bed, SUBSYSTEM_NQN, &hostnqn)?;
    Ok(Report {
        carve: carve.results,
        connect: connect.results,
    })
}

fn value<'a>(results: &'a [Value], key: &str) -> &'a Value {
    results
        .iter()
        .find_map(|r| r.get(key))
        .unwrap_or(&Value::Null)
}

/// After the carve, the secondary controller of the VF is online with the resources assigned,
/// and the attached namespace has the size of the bed's namespace image.
fn check_carve(results: &[Value], ns_size: u64) -> Result<()> {
    let all = || format!("{results:?}");
    // (SCS, NVQ, NVI) of the VF's Secondary Controller Entry, read after the carve.
    let state = value(results, "secondary_state");
    let field = |i: usize| state.get(i).and_then(Value::as_u64);
    check(
        field(0).is_some_and(|scs| scs & 1 == 1),
        &format!("the secondary controller of VF {VF} is online"),
        all,
    )?;
    check(
        field(1) == Some(VQ_RESOURCES) && field(2) == Some(VI_RESOURCES),
        &format!("VF {VF} has {VQ_RESOURCES} VQ and {VI_RESOURCES} VI flexible resources assigned"),
        all,
    )?;
    check(
        value(results, "ns_bytes").as_u64() == Some(ns_size),
        &format!("namespace {NSID} holds {ns_size} bytes (NSZE x LBA size, through the VF)"),
        all,
    )?;
    check(
        value(results, "dev_bytes").as_u64() == Some(ns_size),
        &format!("the block device of namespace {NSID} holds {ns_size} bytes"),
        all,
    )
}

/// The controller the probe connected is an rdma one, live, of the exported subsystem.
fn check_connect(results: &[Value]) -> Result<()> {
    let all = || format!("{results:?}");
    check(!results.is_empty(), "fabric connect probe results", all)?;
    check(
        value(results, "transport") == "Rdma",
        "the connected controller's transport is rdma",
        all,
    )?;
    check(
        value(results, "state") == "Live",
        "the connected controller is live",
        all,
    )?;
    check(
        value(results, "model_nqn") == SUBSYSTEM_NQN,
        "the connected controller belongs to the exported subsystem",
        all,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn carve_results(state: Value, ns_bytes: u64) -> Vec<Value> {
        vec![
            json!({"sn": "testbed0001"}),
            json!({"secondary_state": state, "nsze": ns_bytes / 512, "lba_bytes": 512,
                   "ns_bytes": ns_bytes, "dev_bytes": ns_bytes}),
        ]
    }

    #[test]
    fn carve_checks_fail_on_an_offline_vf_wrong_resources_or_size() {
        check_carve(&carve_results(json!([1, 2, 1]), 1 << 30), 1 << 30).expect("as carved");
        for (state, size) in [
            (json!([0, 2, 1]), 1 << 30),
            (json!([1, 0, 1]), 1 << 30),
            (json!([1, 2, 0]), 1 << 30),
            (Value::Null, 1 << 30),
            (json!([1, 2, 1]), 512 << 20),
        ] {
            assert!(
                check_carve(&carve_results(state.clone(), size), 1 << 30).is_err(),
                "{state} {size}"
            );
        }
    }

    #[test]
    fn connect_checks_fail_unless_rdma_live_and_the_subsystem() {
        let ok = json!({"transport": "Rdma", "state": "Live", "model_nqn": SUBSYSTEM_NQN});
        check_connect(std::slice::from_ref(&ok)).expect("as connected");
        check_connect(&[]).expect_err("no results");
        for (k, v) in [
            ("transport", "Tcp"),
            ("state", "Connecting"),
            ("model_nqn", "nqn.other"),
        ] {
            let mut r = ok.clone();
            r[k] = json!(v);
            assert!(check_connect(&[r]).is_err(), "{k}={v}");
        }
    }
}
