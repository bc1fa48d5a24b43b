//! The bed's own capabilities, on the real kernel, for the daemons to come (issue 9): a hung
//! step cancelled with its dmesg returned; two paths, one cut during fio with nothing fio sees;
//! one path cut for 10 s during fio (I/O stalls, then completes verified); a daemon killed with
//! -9 during fio and restarted; warm and cold reboots that keep the state disk and the nvme host
//! identity. Pair topology with two links. Guest shell in `sh/`.

use std::time::Duration;

use serde_json::Value;

use super::steps::{self, check, secs};
use crate::bed::{Bed, BedParams, Reboot, Role, StepResult, Topology, STATE_ROOT};
use crate::error::{Error, Result};
use crate::setup::Prepared;

/// The subsystem exported on both paths.
pub const NQN: &str = "nqn.2026-12.io.testbed:lifecycle";
/// How long each link cut lasts.
pub const CUT: Duration = Duration::from_secs(10);

/// What the scenario measured (printed, and checked by the end-to-end test).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The longest completion (ms, write or verifying read) of fio while the only path was cut.
    pub single_path_max_ms: f64,
    /// The same with two paths, the busy one cut.
    pub two_path_max_ms: f64,
    /// Packets the other path's rxe device sent while the busy path was cut.
    pub failover_packets: u64,
    /// The longest completion (ms) of fio through the daemon killed with -9.
    pub daemon_kill_max_ms: f64,
    /// Boots each guest's state disk saw (storage, compute).
    pub boots: (u64, u64),
}

/// Runs the scenario in a pair bed with two paths.
pub fn run(prepared: &Prepared, params: &BedParams) -> Result<Report> {
    let mut params = params.clone();
    params.topology = Topology::Pair;
    params.paths = 2;
    let mut bed = Bed::start(prepared, &params, "lifecycle")?;
    let report = steps_of(&mut bed);
    if let Ok(r) = &report {
        bed.progress()
            .phase("done", &format!("lifecycle scenario passed: {r:?}"));
    }
    bed.shutdown();
    report
}

/// The results of a step that have `key`.
fn all_with<'a>(step: &'a StepResult, key: &str) -> Vec<&'a Value> {
    step.results
        .iter()
        .filter(|r| r.get(key).is_some())
        .collect()
}

/// Runs fio with verification on `dev` in the background for `runtime` seconds and, 5 s in,
/// `during` (the fault); fio must end without an error and have verified data. Gives the
/// longest completion (write or verifying read) in ms, and what `during` returned.
fn fio_while<T>(
    bed: &mut Bed,
    job: &str,
    what: &str,
    dev: &str,
    runtime: u64,
    during: impl FnOnce(&mut Bed) -> Result<T>,
) -> Result<(f64, T)> {
    let (job, fault) = steps::fio_verify_while(bed, job, what, dev, "64M", runtime, during)?;
    Ok((steps::longest_completion_ms(&job, what)?, fault))
}

fn state(bed: &mut Bed, role: Role, token: &str, what: &str) -> Result<Value> {
    let step = bed.step_env(
        role,
        "state",
        what,
        include_str!("sh/state_token.sh"),
        &[
            ("STATE_ROOT", STATE_ROOT.to_string()),
            ("TOKEN", token.to_string()),
        ],
        secs(30),
    )?;
    all_with(&step, "token")
        .first()
        .map(|v| (*v).clone())
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: "no state result".into(),
        })
}

fn steps_of(bed: &mut Bed) -> Result<Report> {
    let mut report = Report::default();
    let topology = bed.topology();
    let hostnqn = steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &format!(
            "{} vduse vdpa virtio_vdpa virtio_blk",
            steps::compute_modules(topology)
        ),
    )?;
    steps::network(bed)?;
    let paths = bed.nics(Role::Compute)?;
    check(paths.len() == 2, "two paths", || format!("{paths:?}"))?;

    // State to keep across reboots.
    let token = format!("token-{}", std::process::id());
    let storage_before = state(bed, Role::Storage, &token, "write a state token (storage)")?;
    let compute_before = state(bed, Role::Compute, &token, "write a state token (compute)")?;

    // A hung step: cancelled at its timeout, with this guest's kernel log in the failure.
    let mark = format!("testbed-hung-step-{}", std::process::id());
    let hung = bed.step_env(
        Role::Compute,
        "cancel",
        "a step that hangs",
        include_str!("sh/hung_step.sh"),
        &[("MARK", mark.clone())],
        secs(5),
    );
    match hung {
        Err(Error::Step(f)) => {
            check(
                f.reason.contains("timed out"),
                "the hung step timed out",
                || f.reason.clone(),
            )?;
            check(
                f.output.contains("hanging"),
                "the hung step's output came back",
                || f.output.clone(),
            )?;
            check(
                f.dmesg.contains(&mark),
                "the hung step's failure carries the guest's dmesg",
                || f.dmesg.clone(),
            )?;
        }
        other => {
            return Err(Error::Check {
                check: "a step that hangs fails at its timeout".into(),
                reason: format!("{other:?}"),
            })
        }
    }
    bed.step(
        Role::Compute,
        "cancel",
        "the hung step's process group is gone",
        include_str!("sh/hung_gone.sh"),
        secs(30),
    )?;

    // One namespace, exported on both paths, connected through both.
    let (_vf, vf_dev) = steps::carve(bed, 1, 1)?;
    let storage_carved = state(bed, Role::Storage, "", "the storage node's state with a VF")?;
    steps::export(bed, NQN, &hostnqn, &vf_dev)?;
    bed.step_env(
        Role::Storage,
        "export",
        "a second port, on the second path",
        include_str!("sh/add_port.sh"),
        &[
            ("PORT", "2".to_string()),
            ("TRADDR", paths[1].storage_addr.clone()),
            ("NQN", NQN.to_string()),
        ],
        secs(60),
    )?;
    let dev = steps::connect(bed, NQN, NQN)?;
    bed.step_env(
        Role::Compute,
        "connect",
        "connect the second path",
        include_str!("sh/connect_path.sh"),
        &[
            ("TRADDR", paths[1].storage_addr.clone()),
            ("NQN", NQN.to_string()),
            ("PATHS", "2".to_string()),
        ],
        secs(90),
    )?;

    // Two paths: cut the one carrying the I/O during fio; fio sees no error.
    let (max_ms, (busy, samples)) = fio_while(
        bed,
        "two-paths",
        "fio verify on the multipath namespace while its busy path is cut",
        &dev,
        30,
        |bed| {
            let (busy, before, during) = steps::busy_path(bed, NQN)?;
            let cut = bed.cut_link(Role::Compute, busy, CUT)?;
            let cut_start = steps::path_sample(bed, NQN)?;
            cut.join()?;
            let cut_end = steps::path_sample(bed, NQN)?;
            Ok((busy, [before, during, cut_start, cut_end]))
        },
    )?;
    report.two_path_max_ms = max_ms;
    let other = 1 - busy;
    let sent = |s: &steps::PathSample| s.rxe_sent.get(other).copied().unwrap_or(0);
    report.failover_packets = sent(&samples[3]).saturating_sub(sent(&samples[2]));
    check(
        report.failover_packets > 0,
        "the other path carried the I/O while the busy one was cut",
        || format!("busy path {busy}: samples (before, during, cut start, cut end) {samples:?}"),
    )?;

    // One path: cut it for 10 s during fio; I/O stalls, then completes verified.
    bed.step_env(
        Role::Compute,
        "single",
        "disconnect the second path",
        include_str!("sh/disconnect_path.sh"),
        &[
            ("NQN", NQN.to_string()),
            ("TRADDR", paths[1].storage_addr.clone()),
        ],
        secs(60),
    )?;
    let (max_ms, ()) = fio_while(
        bed,
        "one-path",
        "fio verify on the one remaining path while it is cut for 10 s",
        &dev,
        20,
        |bed| bed.cut_link(Role::Compute, 0, CUT)?.join(),
    )?;
    report.single_path_max_ms = max_ms;
    check(
        max_ms >= CUT.as_secs_f64() * 1000.0 / 2.0,
        "the I/O stalled while its only path was cut",
        || {
            format!(
                "longest completion {max_ms:.0} ms with the link down {}s",
                CUT.as_secs()
            )
        },
    )?;

    // A daemon killed with -9 during fio, and restarted: qemu-storage-daemon's vduse-blk export
    // over the fabric namespace reconnects to its VDUSE device.
    let qsd_env = [("DEV", dev.clone()), ("NAME", "lc0".to_string())];
    let mut qsd = bed.start_daemon(
        Role::Compute,
        "qsd",
        include_str!("sh/qsd_vduse.sh"),
        &qsd_env,
    )?;
    let vd = steps::vduse_publish(bed, "lc0")?;
    let (max_ms, mut qsd) = fio_while(
        bed,
        "daemon-kill",
        "fio verify through the daemon while it is killed with -9 and restarted",
        &vd,
        20,
        |bed| {
            let pid = qsd.pid()?;
            qsd.signal(libc::SIGKILL)?;
            let code = qsd.wait_exit(secs(30))?;
            check(
                code == 128 + libc::SIGKILL,
                "the daemon died of SIGKILL",
                || format!("pid {pid} exit {code}"),
            )?;
            bed.start_daemon(
                Role::Compute,
                "qsd",
                include_str!("sh/qsd_vduse.sh"),
                &qsd_env,
            )
        },
    )?;
    report.daemon_kill_max_ms = max_ms;
    check(
        qsd.running(),
        "the restarted daemon is still running",
        || qsd.lines().join("\n"),
    )?;
    bed.step(
        Role::Compute,
        "daemon",
        "remove the daemon's vdpa device",
        "vdpa dev del lc0",
        secs(60),
    )?;
    qsd.signal(libc::SIGTERM)?;
    qsd.wait_exit(secs(30))?;
    steps::disconnect(bed, NQN)?;

    // Reboots: warm on the storage node (its enabled VF goes with the reset), cold on the
    // compute node; both keep the state disk and the nvme host identity.
    bed.reboot(Role::Storage, Reboot::Warm)?;
    let storage_after = state(bed, Role::Storage, "", "the state after a warm reboot")?;
    bed.reboot(Role::Compute, Reboot::Cold)?;
    let compute_after = state(bed, Role::Compute, "", "the state after a cold reboot")?;
    for (kind, before, after) in [
        ("warm", &storage_before, &storage_after),
        ("cold", &compute_before, &compute_after),
    ] {
        for key in ["token", "hostnqn", "hostid"] {
            check(
                after[key] == before[key] && after[key].as_str().is_some_and(|s| !s.is_empty()),
                &format!("a {kind} reboot keeps {key}"),
                || format!("before {before} after {after}"),
            )?;
        }
        let boots = |v: &Value| v["boots"].as_str().and_then(|s| s.parse::<u64>().ok());
        check(
            boots(after).is_some() && boots(after) == boots(before).map(|b| b + 1),
            &format!("a {kind} reboot is one more boot on the same state disk"),
            || format!("before {before} after {after}"),
        )?;
    }
    check(
        storage_carved["numvfs"] == "1" && storage_after["numvfs"] == "0",
        "the VF enabled before a warm reboot is gone after it (the PF was reset)",
        || format!("carved {storage_carved} after {storage_after}"),
    )?;
    report.boots = (
        storage_after["boots"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        compute_after["boots"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    );
    // The links came back with the guests: the set-up works again on both paths, with the
    // same host identity.
    let again = steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &steps::compute_modules(topology),
    )?;
    check(again == hostnqn, "the host NQN after both reboots", || {
        format!("{hostnqn} became {again}")
    })?;
    steps::network(bed)?;
    Ok(report)
}
