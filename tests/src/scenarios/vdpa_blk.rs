//! The project's datapath, `vdpa-blk`, in the bed: over a local NVMe namespace (one guest) or
//! over the nvme-rdma namespace of a carved and exported VF (two guests).
//!
//! - virtio_vdpa: the /dev/vdX passes fio randwrite with crc32c verify, discard and
//!   write-zeroes work, a flush (sync) works, the serial is the one given, and a pattern
//!   written through it is on the backing device (and, over the fabric, on the VF namespace).
//! - vhost_vdpa: `testbed blkio-client` drives /dev/vhost-vdpa-N as a VMM does, with an
//!   fd-backed memory region, so the daemon maps it and copies nothing.
//! - SIGTERM during fio: the daemon exits 0 and leaves nothing in `vdpa dev show` or
//!   /dev/vduse.
//!
//! Each daemon's ready line and SIGUSR1 statistics come back as results for the host to check.

use std::path::Path;

use serde_json::Value;

use super::steps::{
    self, check, count, disk_of, path_of, required, result_with, secs, vdpa_blk_start,
    vdpa_blk_stats, vdpa_blk_stop, with_lib,
};
use crate::bed::{Bed, BedParams, Role, Topology};
use crate::error::Result;
use crate::setup::Prepared;

/// The exported subsystem, when the backing is reached over the fabric.
pub const SUBSYSTEM_NQN: &str = "nqn.2026-11.io.testbed:vdpa-blk-vol1";
const SERIAL: &str = "vdpablk-serial-1";

/// Where the backing device comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// The VF namespace (emulated PCIe), in the single topology.
    Local,
    /// The VF namespace exported over nvme-rdma, in the pair topology.
    Fabric,
}

impl Backing {
    /// The topology this backing needs.
    pub fn topology(self) -> Topology {
        match self {
            Backing::Local => Topology::Single,
            Backing::Fabric => Topology::Pair,
        }
    }
}

/// What the run found (all checks have passed when this is returned).
#[derive(Debug, Clone)]
pub struct Report {
    pub backing: String,
    /// The virtio-vdpa daemon's ready line and its statistics after the I/O.
    pub virtio_ready: Value,
    pub virtio_stats: Value,
    /// The vhost-vdpa daemon's ready line, the blkio client's result and the statistics.
    pub vhost_ready: Value,
    pub blkio: Value,
    pub vhost_stats: Value,
    /// Over the fabric: the crash and upgrade figures of `vdpa_blk_reconnect`.
    pub reconnect: Option<super::vdpa_blk_reconnect::Report>,
}

/// Sum of one counter over the queues of a stats line; `None` when there are no queues or a
/// queue lacks the counter (a renamed counter must fail a check, not read as 0).
pub(super) fn stat_sum(stats: &Value, key: &str) -> Option<u64> {
    let qs = stats.get("queues").and_then(Value::as_array)?;
    if qs.is_empty() {
        return None;
    }
    qs.iter().map(|q| q.get(key).and_then(Value::as_u64)).sum()
}

/// The counters every healthy run must show at zero, and no broken queue.
pub(super) fn check_clean(stats: &Value, what: &str) -> Result<()> {
    for key in ["errors", "dropped", "parked", "copied_bytes"] {
        check(
            stat_sum(stats, key) == Some(0),
            &format!("{what}: {key} is 0"),
            || stats.to_string(),
        )?;
    }
    let broken = stats.get("queues").and_then(Value::as_array).map(|qs| {
        qs.iter()
            .map(|q| q.get("broken").and_then(Value::as_bool))
            .collect::<Vec<_>>()
    });
    check(
        broken
            .as_ref()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|x| *x == Some(false))),
        &format!("{what}: no queue broken"),
        || stats.to_string(),
    )
}

/// A VMM whose guest memory is private anonymous memory gets a warning that names the cause
/// (vhost-vdpa passes VDUSE only shared file-backed memory); one with a memfd gets its queue
/// started and no warning. Before either, no driver (virtio_vdpa is loaded) drove the device.
fn vmm_memory(bed: &mut Bed, bin: &str, agent: &str, backing_dev: &str) -> Result<()> {
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb3",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa"),
    )?;
    let step = bed.step_env(
        Role::Compute,
        "io",
        "a VMM with private anonymous memory, then one with a memfd",
        include_str!("sh/vmm_memory.sh"),
        &[
            ("AGENT", agent.to_string()),
            ("DEV", path_of(&ready, "vb3's ready line")?),
            ("NAME", "vb3".to_string()),
        ],
        secs(120),
    )?;
    let r = result_with(&step, "anon_warnings", "VMM memory checks")?;
    let n = |k: &str| count(&r, k);
    // virtio_vdpa is loaded (the virtio-vdpa daemon ran before): it must not have taken the
    // device between `vdpa dev add` and the daemon's bind to vhost_vdpa.
    check(
        n("queues_before") == Some(0),
        "no other driver drove the vhost-vdpa device first",
        || r.to_string(),
    )?;
    check(
        n("anon_warnings") == Some(1) && n("anon_queues") == Some(0),
        "warning for a VMM's private anonymous memory",
        || r.to_string(),
    )?;
    check(
        n("memfd_warnings") == Some(0) && n("memfd_queues") == Some(1),
        "a VMM's memfd memory is mapped",
        || r.to_string(),
    )?;
    vdpa_blk_stop(bed, "vb3", None, &[])
}

/// A flush from the guest side (`sh/flush.sh`) reaches vdpa-blk `name`: its request count
/// grows by at least the FLUSH requests the guest's block layer completed, and carried no data
/// (its byte counters do not move; the guest's stat counts the empty pre-flush write among its
/// writes too, so that count is not "other I/O"). (The daemon's statistics count requests of every type together; there is no
/// per-type flush counter to read.)
fn flush_reaches_the_daemon(bed: &mut Bed, name: &str, vd: &str) -> Result<()> {
    let before = vdpa_blk_stats(bed, name)?;
    let step = bed.step_env(
        Role::Compute,
        "io",
        "a flush from the guest reaches the daemon",
        include_str!("sh/flush.sh"),
        &[("VD", vd.to_string())],
        secs(60),
    )?;
    let after = vdpa_blk_stats(bed, name)?;
    let r = result_with(&step, "flushes", "guest flush counts")?;
    let flushes = count(&r, "flushes");
    check(flushes > Some(0), "the guest sent FLUSH requests", || {
        r.to_string()
    })?;
    let served = stat_sum(&after, "requests")
        .zip(stat_sum(&before, "requests"))
        .map(|(a, b)| a.saturating_sub(b));
    check(
        served.is_some() && served >= flushes,
        "the daemon served the guest's flushes",
        || format!("{served:?} requests served for {r}; before {before}, after {after}"),
    )?;
    let bytes = |v: &Value| stat_sum(v, "bytes_read").zip(stat_sum(v, "bytes_written"));
    check(
        bytes(&before).is_some() && bytes(&before) == bytes(&after),
        "the requests the flush made carried no data",
        || format!("{served:?} requests served for {r}; before {before}, after {after}"),
    )?;
    check(
        stat_sum(&after, "errors") == stat_sum(&before, "errors"),
        "the daemon answered the flushes without an error",
        || format!("before {before}, after {after}"),
    )
}

/// Over a loop device (which can grow): a backing resize reaches the guest's disk through a
/// config interrupt, and a reset of the device (unbinding and rebinding virtio_vdpa, as a VM
/// reboot does) is served again without restarting the daemon.
fn resize_and_redrive(bed: &mut Bed, bin: &str) -> Result<()> {
    let img = "/tmp/vb2.img".to_string();
    let lo = bed.step_env(
        Role::Compute,
        "io",
        "loop backing: resize announced, reset and re-drive",
        include_str!("sh/loop_backing.sh"),
        &[("IMG", img.clone())],
        secs(60),
    )?;
    let lo = required(&lo, "loop", "the loop device")?;
    let ready = vdpa_blk_start(
        bed,
        bin,
        "vb2",
        &format!("--backing {lo} --driver virtio-vdpa"),
    )?;
    let vd = disk_of(&ready, "vb2's ready line")?;
    bed.step_env(
        Role::Compute,
        "io",
        "grow the backing; reset and re-drive",
        &with_lib(include_str!("sh/resize_redrive.sh")),
        &[
            ("NAME", "vb2".to_string()),
            ("VD", vd),
            ("LOOP", lo.clone()),
            ("IMG", img),
        ],
        secs(120),
    )?;
    vdpa_blk_stop(bed, "vb2", None, &[])?;
    bed.step_env(
        Role::Compute,
        "teardown",
        "release the loop device",
        include_str!("sh/loop_release.sh"),
        &[("LOOP", lo)],
        secs(30),
    )?;
    Ok(())
}

/// Runs the scenario in a new bed (topology from `backing`) and tears the bed down.
pub fn run(
    prepared: &Prepared,
    params: &BedParams,
    binary: &Path,
    backing: Backing,
) -> Result<Report> {
    let mut params = params.clone();
    params.topology = backing.topology();
    let mut bed = Bed::start(
        prepared,
        &params,
        &format!("vdpa-blk-{backing:?}").to_lowercase(),
    )?;
    let report = steps_of(&mut bed, &params, binary, backing);
    bed.shutdown();
    report
}

fn steps_of(bed: &mut Bed, params: &BedParams, binary: &Path, backing: Backing) -> Result<Report> {
    let bin = binary.display().to_string();
    let agent = params.agent.display().to_string();
    let topology = bed.topology();
    let publish_mods = "vdpa vduse virtio_vdpa vhost_vdpa virtio_blk";
    let hostnqn = steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &format!("{} {publish_mods}", steps::compute_modules(topology)),
    )?;
    let (_vf, storage_dev) = steps::carve(bed, 1, 1)?;
    let backing_dev = match backing {
        Backing::Local => storage_dev.clone(),
        Backing::Fabric => {
            steps::network(bed)?;
            steps::export(bed, SUBSYSTEM_NQN, &hostnqn, &storage_dev)?;
            steps::connect(bed, SUBSYSTEM_NQN, SUBSYSTEM_NQN)?
        }
    };

    // virtio_vdpa; over the local namespace with busy-polling workers, over the fabric without.
    let poll_us = if backing == Backing::Local { 500 } else { 0 };
    let virtio_ready = vdpa_blk_start(
        bed,
        &bin,
        "vb0",
        &format!(
            "--backing /dev/{backing_dev} --driver virtio-vdpa --queues 2 --serial {SERIAL} \
             --poll-us {poll_us}"
        ),
    )?;
    check(
        virtio_ready["copy_mode"] == "bounce",
        "virtio-vdpa copy mode",
        || format!("ready line says {}", virtio_ready["copy_mode"]),
    )?;
    let vd = disk_of(&virtio_ready, "virtio-vdpa ready line")?;
    let io = bed.step_env(
        Role::Compute,
        "io",
        "fio crc32c verify, discard, write-zeroes, flush, pattern on the backing",
        &with_lib(include_str!("sh/virtio_io.sh")),
        &[
            ("VD", vd.clone()),
            ("SERIAL", SERIAL.to_string()),
            ("BACKING", backing_dev.clone()),
        ],
        secs(600),
    )?;
    let pattern = steps::md5_result(&io, "pattern", "pattern checksum")?;
    if backing == Backing::Fabric {
        let there = steps::checksums(
            bed,
            Role::Storage,
            "the pattern is on the VF namespace",
            &storage_dev,
            &[("pattern", 40, 4)],
        )?;
        check(
            there.first() == Some(&pattern),
            "bytes landed on the VF namespace",
            || format!("md5 {pattern} written, {there:?} on /dev/{storage_dev}"),
        )?;
    }
    flush_reaches_the_daemon(bed, "vb0", &vd)?;
    let virtio_stats = vdpa_blk_stats(bed, "vb0")?;
    check_clean(&virtio_stats, "virtio-vdpa")?;
    if poll_us > 0 {
        // fio kept the queues busy: the workers found requests by polling, without a kick.
        check(
            stat_sum(&virtio_stats, "polled") > Some(0),
            "requests found by polling",
            || virtio_stats.to_string(),
        )?;
    } else {
        check(
            stat_sum(&virtio_stats, "polled") == Some(0),
            "no polling when not asked for",
            || virtio_stats.to_string(),
        )?;
    }
    check(
        stat_sum(&virtio_stats, "requests") > Some(0),
        "requests served",
        || virtio_stats.to_string(),
    )?;
    vdpa_blk_stop(bed, "vb0", Some(&vd), &[])?;

    // vhost_vdpa, driven by the blkio crate as a VMM would.
    let vhost_ready = vdpa_blk_start(
        bed,
        &bin,
        "vb1",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa --control-socket /run/vb1.sock"),
    )?;
    check(
        vhost_ready["copy_mode"] == "zero-copy",
        "vhost-vdpa copy mode",
        || format!("ready line says {}", vhost_ready["copy_mode"]),
    )?;
    let blkio = steps::blkio_zero_copy(
        bed,
        &agent,
        &path_of(&vhost_ready, "vhost-vdpa ready line")?,
        "/run/vb1.sock",
    )?;
    let vhost_stats = vdpa_blk_stats(bed, "vb1")?;
    // The same counters through the control socket (nothing ran in between).
    let sock = bed.step_env(
        Role::Compute,
        "stats",
        "statistics of vb1 through its control socket",
        include_str!("sh/control.sh"),
        &[
            ("SOCK", "/run/vb1.sock".to_string()),
            ("CMD", "stats".to_string()),
        ],
        secs(30),
    )?;
    let via_socket = result_with(&sock, "queues", "control socket stats")?;
    check(
        via_socket["queues"] == vhost_stats["queues"],
        "control socket stats equal the SIGUSR1 stats",
        || format!("socket {via_socket}, SIGUSR1 {vhost_stats}"),
    )?;
    check_clean(&vhost_stats, "vhost-vdpa")?;
    vdpa_blk_stop(bed, "vb1", None, &[])?;
    bed.step_env(
        Role::Compute,
        "check",
        "vb1's control socket is gone",
        include_str!("sh/absent.sh"),
        &[("FILE", "/run/vb1.sock".to_string())],
        secs(30),
    )?;

    if backing == Backing::Local {
        vmm_memory(bed, &bin, &agent, &backing_dev)?;
        resize_and_redrive(bed, &bin)?;
        super::vdpa_blk_faults::local(bed, &bin, &agent, &backing_dev)?;
    }
    let mut reconnect = None;
    if backing == Backing::Fabric {
        super::vdpa_blk_faults::fabric(bed, &bin, &agent, &backing_dev, SUBSYSTEM_NQN)?;
        reconnect = Some(super::vdpa_blk_reconnect::fabric(
            bed,
            &bin,
            &agent,
            &backing_dev,
        )?);
    }

    if backing == Backing::Fabric {
        steps::disconnect(bed, SUBSYSTEM_NQN)?;
        steps::unexport(bed, SUBSYSTEM_NQN, &hostnqn)?;
    }
    Ok(Report {
        backing: backing_dev,
        virtio_ready,
        virtio_stats,
        vhost_ready,
        blkio,
        vhost_stats,
        reconnect,
    })
}
