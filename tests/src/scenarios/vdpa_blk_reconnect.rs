//! vdpa-blk outliving its own crash and upgrade (issue 13), on the real kernel over an
//! nvme-rdma namespace, through virtio_vdpa:
//!
//! - kill -9 in the middle of fio `verify=crc32c` (randwrite, 32 in flight: two jobs of depth
//!   16 on two CPUs, so both queues carry I/O), then `vdpa-blk --reconnect`: fio completes with no error and
//!   verified data, the ready line says "reconnected" and counts the reconnects, and what was
//!   in flight is re-submitted; [`KILL_CYCLES`] times during one fio run;
//! - a live upgrade (SIGUSR2, then a new daemon with `--reconnect`) during fio: zero errors,
//!   nothing left in flight to re-submit, and the pause measured;
//! - a SIGTERM afterwards still removes everything, the in-flight log included;
//! - through vhost_vdpa, a VMM-like `blkio` client writing and reading back 32 requests at a
//!   time while vdpa-blk is killed [`VHOST_KILL_CYCLES`] times and taken over: every request
//!   completes, the data reads back.

use std::time::Instant;

use serde_json::Value;

use super::steps::{
    check, disk_of, fio_verify_load_while, longest_completion_ms, secs, vdpa_blk_start,
    vdpa_blk_stats, vdpa_blk_stop, VerifyLoad,
};
use super::vdpa_blk::check_clean;
use crate::bed::{Bed, Role};
use crate::error::Result;

/// kill -9 / reconnect cycles during one fio run.
pub const KILL_CYCLES: u32 = 20;
/// kill -9 / reconnect cycles under the blkio client.
pub const VHOST_KILL_CYCLES: u32 = 5;

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests re-submitted after each kill -9, in order.
    pub resubmitted: Vec<u64>,
    /// fio's longest completion during the kill cycles, ms.
    pub kill_longest_ms: f64,
    /// Live upgrade: the old daemon's drain time, ms (its "left" line).
    pub upgrade_drain_ms: f64,
    /// Live upgrade: SIGUSR2 sent to the new daemon's ready line, as the test saw it, ms.
    pub upgrade_gap_ms: f64,
    /// fio's longest completion during the live upgrade, ms.
    pub upgrade_longest_ms: f64,
    /// The blkio client's result across the vhost-vdpa kill cycles.
    pub vhost_soak: Value,
}

/// The load during the kills and the upgrade: fio crc32c verify, two jobs of depth 16 (32
/// requests in flight over the two queues) over 32M each, the fault 3 s in. (Two jobs of
/// depth 32 once crashed the storage guest's kernel in rdma_rxe, a double fault under
/// emulation: the bed's soft-RoCE is not what is tested here.)
fn two_jobs(runtime: u64) -> VerifyLoad<'static> {
    VerifyLoad {
        iodepth: 16,
        jobs: 2,
        head_start: secs(3),
        ..VerifyLoad::new("32M", runtime)
    }
}

/// The `pgrep -f` patterns of the I/O loads a kill must hit.
const FIO: &str = "fio --name=";
const BLKIO_CLIENT: &str = "blkio-client --path";

fn stop_with(
    bed: &mut Bed,
    name: &str,
    signal: &str,
    during: &str,
    what: &str,
) -> Result<Vec<Value>> {
    let step = bed.step_env(
        Role::Compute,
        "fault",
        what,
        include_str!("sh/vdpa_blk_kill.sh"),
        &[
            ("NAME", name.to_string()),
            ("SIGNAL", signal.to_string()),
            ("WHILE", during.to_string()),
        ],
        secs(60),
    )?;
    Ok(step.results)
}

fn check_reconnected(ready: &Value, reconnects: u64) -> Result<u64> {
    check(
        ready["start"] == "reconnected" && ready["reconnects"].as_u64() == Some(reconnects),
        &format!("reconnect {reconnects}: the ready line says reconnected and counts it"),
        || ready.to_string(),
    )?;
    ready["resubmitted"]
        .as_u64()
        .ok_or_else(|| crate::error::Error::Check {
            check: "the ready line says how many requests were re-submitted".into(),
            reason: ready.to_string(),
        })
}

/// kill -9 and `--reconnect`, `cycles` times while the load `during` runs, the ready lines
/// checked; returns the requests re-submitted each time.
fn kill_cycles(
    bed: &mut Bed,
    bin: &str,
    (name, args): (&str, &str),
    during: &str,
    cycles: u32,
) -> Result<Vec<u64>> {
    let mut counts = Vec::new();
    for cycle in 1..=cycles {
        std::thread::sleep(std::time::Duration::from_millis(
            300 + 97 * u64::from(cycle % 7),
        ));
        stop_with(
            bed,
            name,
            "KILL",
            during,
            &format!("kill -9 vdpa-blk {name} ({cycle}/{cycles})"),
        )?;
        let ready = vdpa_blk_start(bed, bin, name, args)?;
        counts.push(check_reconnected(&ready, u64::from(cycle))?);
    }
    Ok(counts)
}

/// Through vhost_vdpa: the blkio client (a VMM) keeps 32 requests in flight while vdpa-blk is
/// killed and taken over.
fn vhost(bed: &mut Bed, bin: &str, agent: &str, backing_dev: &str) -> Result<Value> {
    let name = "vb9";
    let args = format!("--backing /dev/{backing_dev} --driver vhost-vdpa");
    let ready = vdpa_blk_start(bed, bin, name, &args)?;
    let dev = super::steps::path_of(&ready, "the ready line")?;
    let soak_ms = 30_000;
    let client = bed.spawn_step(
        Role::Compute,
        "io",
        &format!("blkio client writing and reading back through {dev} for {soak_ms} ms"),
        include_str!("sh/blkio_soak.sh"),
        &[
            ("AGENT", agent.to_string()),
            ("DEV", dev.clone()),
            ("MS", soak_ms.to_string()),
        ],
        secs(soak_ms / 1000 + 240),
    )?;
    std::thread::sleep(secs(4));
    let cycles = kill_cycles(
        bed,
        bin,
        (name, &format!("{args} --reconnect")),
        BLKIO_CLIENT,
        VHOST_KILL_CYCLES,
    );
    let client = client.finish()?;
    let resubmitted = cycles?;
    let soak = super::steps::result_with(&client, "soak_rounds", "the blkio client's result")?;
    check(
        soak["soak_readback_matches"] == true && soak["soak_rounds"].as_u64() > Some(0),
        "the VMM's requests all completed and read back across the kills",
        || soak.to_string(),
    )?;
    check(
        resubmitted.iter().sum::<u64>() > 0,
        "requests the VMM had in flight at a kill -9 were re-submitted",
        || format!("re-submitted per cycle: {resubmitted:?}"),
    )?;
    let st = vdpa_blk_stats(bed, name)?;
    check_clean(&st, "vhost-vdpa after the kill cycles")?;
    vdpa_blk_stop(bed, name, None, &[])?;
    Ok(soak)
}

/// Pair topology, `backing_dev` the nvme-rdma namespace on the compute node.
pub(super) fn fabric(bed: &mut Bed, bin: &str, agent: &str, backing_dev: &str) -> Result<Report> {
    let name = "vb8";
    let args = format!("--backing /dev/{backing_dev} --driver virtio-vdpa --queues 2");
    let reconnect_args = format!("{args} --reconnect");
    let ready = vdpa_blk_start(bed, bin, name, &args)?;
    check(
        ready["start"] == "fresh" && ready["reconnects"].as_u64() == Some(0),
        "a new device starts fresh",
        || ready.to_string(),
    )?;
    let vd = disk_of(&ready, "the ready line")?;

    // A daemon already serving the device is not displaced.
    bed.step_env(
        Role::Compute,
        "check",
        "--reconnect while the daemon still serves the device is refused",
        include_str!("sh/vdpa_blk_reconnect_refused.sh"),
        &[
            ("BIN", bin.to_string()),
            ("NAME", name.to_string()),
            ("ARGS", reconnect_args.clone()),
        ],
        secs(30),
    )?;

    let (kill_job, resubmitted) = fio_verify_load_while(
        bed,
        "kill-cycles",
        &format!("fio crc32c verify through {vd} while vdpa-blk is killed {KILL_CYCLES} times"),
        &vd,
        two_jobs(120),
        |bed| kill_cycles(bed, bin, (name, &reconnect_args), FIO, KILL_CYCLES),
    )?;
    check(
        resubmitted.iter().sum::<u64>() > 0,
        "requests in flight at a kill -9 were re-submitted by the next daemon",
        || format!("re-submitted per cycle: {resubmitted:?}"),
    )?;
    let kill_longest_ms = longest_completion_ms(&kill_job, "fio across the kill cycles")?;
    let st = vdpa_blk_stats(bed, name)?;
    check_clean(&st, "after the kill cycles")?;
    check(
        st["reconnects"].as_u64() == Some(u64::from(KILL_CYCLES)),
        "the stats count the reconnects",
        || st.to_string(),
    )?;

    // Live upgrade.
    let (up_job, (left, gap_ms, ready)) = fio_verify_load_while(
        bed,
        "upgrade",
        &format!("fio crc32c verify through {vd} across a live upgrade"),
        &vd,
        two_jobs(25),
        |bed| {
            std::thread::sleep(secs(4));
            let t0 = Instant::now();
            let results = stop_with(
                bed,
                name,
                "USR2",
                FIO,
                "SIGUSR2: vdpa-blk leaves the device",
            )?;
            let ready = vdpa_blk_start(bed, bin, name, &reconnect_args)?;
            let gap_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let left = results
                .into_iter()
                .find(|r| r["event"] == "left")
                .unwrap_or(Value::Null);
            Ok((left, gap_ms, ready))
        },
    )?;
    let upgrade_drain_ms = left["drain_ms"]
        .as_f64()
        .ok_or_else(|| crate::error::Error::Check {
            check: "the old daemon's left line gives its drain time".into(),
            reason: left.to_string(),
        })?;
    let resub = check_reconnected(&ready, u64::from(KILL_CYCLES) + 1)?;
    check(
        resub == 0,
        "a live upgrade leaves nothing in flight to re-submit",
        || ready.to_string(),
    )?;
    let upgrade_longest_ms = longest_completion_ms(&up_job, "fio across the live upgrade")?;
    bed.progress().phase(
        "measured",
        &format!(
            "live upgrade: old daemon drained in {upgrade_drain_ms:.1} ms, SIGUSR2 to the new \
             ready line {gap_ms:.0} ms (agent round trips included), fio's longest completion \
             {upgrade_longest_ms:.1} ms; kill -9 cycles: re-submitted {resubmitted:?}, fio's \
             longest completion {kill_longest_ms:.1} ms"
        ),
    );
    let st = vdpa_blk_stats(bed, name)?;
    check_clean(&st, "after the live upgrade")?;

    vdpa_blk_stop(bed, name, None, &[])?;
    bed.step_env(
        Role::Compute,
        "check",
        "the in-flight log went with the device",
        include_str!("sh/absent.sh"),
        &[("FILE", format!("/run/vdpa-blk/{name}.inflight"))],
        secs(30),
    )?;
    let vhost_soak = vhost(bed, bin, agent, backing_dev)?;
    Ok(Report {
        vhost_soak,
        resubmitted,
        kill_longest_ms,
        upgrade_drain_ms,
        upgrade_gap_ms: gap_ms,
        upgrade_longest_ms,
    })
}
