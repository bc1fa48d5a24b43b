//! The datapath's answers to drivers and faults that a well-behaved guest never shows (issue 8
//! of the project), against the real kernel:
//!
//! - a driver that enables a subset of the queues (firmware, fewer vCPUs than queues), one
//!   of them only after DRIVER_OK, and reports garbage for another;
//! - a VMM that maps and unmaps memory while its writes are in flight (each change is a
//!   `VDUSE_UPDATE_IOTLB`): no completion may be lost;
//! - SIGTERM while a VMM holds `/dev/vhost-vdpa-N`: the daemon names the holder and keeps
//!   serving instead of hanging in `vdpa dev del`;
//! - over the fabric, a reset while a write is stuck behind a cut path: the reset is answered
//!   within the budget, the stuck worker writes nothing for the next driver, DRIVER_OK is
//!   refused until the write completes, and the daemon still removes its device cleanly.
//!
//! The guest-side shell lives in `sh/`; each script says what it expects in its variables.

use super::steps::{
    check, count, path_of, result_with, secs, vdpa_blk_start, vdpa_blk_stats, vdpa_blk_stop,
};
use super::vdpa_blk::{check_clean, stat_sum};
use crate::bed::{Bed, Role};
use crate::error::Result;

/// A script's environment: `AGENT`, `DEV` and `NAME`.
fn vars(agent: &str, dev: &str, name: &str) -> [(&'static str, String); 3] {
    [
        ("AGENT", agent.to_string()),
        ("DEV", dev.to_string()),
        ("NAME", name.to_string()),
    ]
}

/// Single topology, over the local namespace `backing_dev`.
pub(super) fn local(bed: &mut Bed, bin: &str, agent: &str, backing_dev: &str) -> Result<()> {
    // A subset of three queues.
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb4",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa --queues 3"),
    )?;
    let dev = path_of(&ready, "the ready line")?;
    let step = bed.step_env(
        Role::Compute,
        "io",
        "a driver that enables one queue of three, a second after DRIVER_OK",
        include_str!("sh/subset_queues.sh"),
        &vars(agent, &dev, "vb4"),
        secs(120),
    )?;
    let subset = result_with(&step, "subset", "subset driver")?;
    let logs = result_with(&step, "started", "daemon log counts")?;
    check(
        subset["subset"]["driver_ok"] == true
            && subset["subset"]["queue0"] == "served"
            && subset["subset"]["queue1_enabled_later"] == "served",
        "a subset of the queues is served, and a queue enabled later starts",
        || format!("{subset} {logs}"),
    )?;
    check(
        count(&logs, "started") == Some(2) && count(&logs, "refused") == Some(0),
        "two queues started, none refused the device",
        || logs.to_string(),
    )?;
    vdpa_blk_stop(bed, "vb4", None, &[])?;

    // IOTLB updates while writes are in flight.
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb5",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa"),
    )?;
    let dev = path_of(&ready, "the ready line")?;
    let step = bed.step_env(
        Role::Compute,
        "io",
        "a VMM maps and unmaps memory while its writes are in flight",
        include_str!("sh/remap_during_io.sh"),
        &vars(agent, &dev, "vb5"),
        secs(300),
    )?;
    let remap = result_with(&step, "remap_rounds", "remap rounds")?;
    check(
        remap["remap_readback_matches"] == true && remap["remap_requests"].as_u64() > Some(0),
        "every write completed across the IOTLB updates",
        || remap.to_string(),
    )?;
    let st = vdpa_blk_stats(bed, "vb5")?;
    check_clean(&st, "after the IOTLB updates")?;
    check(
        stat_sum(&st, "requests") >= remap["remap_requests"].as_u64(),
        "the daemon served every write of the remap rounds",
        || format!("{st} {remap}"),
    )?;
    vdpa_blk_stop(bed, "vb5", None, &[])?;

    // SIGTERM while a VMM holds the device.
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb6",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa"),
    )?;
    let dev = path_of(&ready, "the ready line")?;
    bed.step_env(
        Role::Compute,
        "teardown",
        "SIGTERM while a VMM holds the vhost-vdpa device",
        include_str!("sh/removal_while_held.sh"),
        &vars(agent, &dev, "vb6"),
        secs(120),
    )?;
    // Let go: the next SIGTERM removes everything and exits 0.
    vdpa_blk_stop(bed, "vb6", None, &[])
}

/// A VMM that exits with a write in flight (see `sh/abandon_stuck_io.sh`).
fn abandon(bed: &mut Bed, vars: &[(&str, String)], what: &str) -> Result<()> {
    bed.step_env(
        Role::Compute,
        "io",
        what,
        include_str!("sh/abandon_stuck_io.sh"),
        vars,
        secs(180),
    )?;
    Ok(())
}

/// A new driver instance brings the device up: the device status it read back after
/// DRIVER_OK, and how many DRIVER_OKs the daemon has refused so far.
fn new_driver(bed: &mut Bed, vars: &[(&str, String)], what: &str) -> Result<(u64, Option<u64>)> {
    let step = bed.step_env(
        Role::Compute,
        "check",
        what,
        include_str!("sh/driver_ok_status.sh"),
        vars,
        secs(60),
    )?;
    let status = result_with(&step, "vhost_driver", "vhost-driver status")?;
    let counts = result_with(&step, "refusals", "refusal count")?;
    let s = status["vhost_driver"]["status"]
        .as_u64()
        .unwrap_or(u64::MAX);
    Ok((s, count(&counts, "refusals")))
}

/// Pair topology: `backing_dev` is the nvme-rdma namespace of subsystem `nqn`.
pub(super) fn fabric(
    bed: &mut Bed,
    bin: &str,
    agent: &str,
    backing_dev: &str,
    nqn: &str,
) -> Result<()> {
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb7",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa"),
    )?;
    let dev = path_of(&ready, "the ready line")?;
    let vars = vars(agent, &dev, "vb7");
    let cut = |bed: &mut Bed| {
        bed.step_env(
            Role::Storage,
            "io",
            "cut the fabric path (subsystem off the port)",
            include_str!("sh/cut_path.sh"),
            &[("NQN", nqn.to_string())],
            secs(30),
        )
    };
    let restore = |bed: &mut Bed| {
        bed.step_env(
            Role::Storage,
            "io",
            "restore the fabric path",
            include_str!("sh/restore_path.sh"),
            &[("NQN", nqn.to_string())],
            secs(30),
        )
    };
    cut(bed)?;
    abandon(
        bed,
        &vars,
        "a VMM goes away with a write stuck behind the cut path",
    )?;
    let (status, refusals) = new_driver(bed, &vars, "a new driver while the stuck write lives")?;
    check(
        status & 4 == 0 && refusals == Some(1),
        "DRIVER_OK is refused while the previous driver's write is stuck",
        || format!("status {status}, {refusals:?} refusals"),
    )?;
    restore(bed)?;
    bed.step_env(
        Role::Compute,
        "check",
        "the stuck write completes once the path is back",
        include_str!("sh/orphan_done.sh"),
        &vars,
        secs(150),
    )?;
    let (status, _) = new_driver(bed, &vars, "a new driver after the stuck write completed")?;
    check(
        status & 4 != 0,
        "DRIVER_OK holds once the stuck write completed",
        || format!("status {status}"),
    )?;
    // Again, and this time the daemon is stopped while the orphan still waits: it must still
    // remove its vdpa and VDUSE devices (the orphan holds no reference to the device fd).
    cut(bed)?;
    abandon(
        bed,
        &vars,
        "a VMM goes away with a write stuck behind the cut path (again)",
    )?;
    let stopped = vdpa_blk_stop(bed, "vb7", None, &[]);
    restore(bed)?;
    stopped
}
