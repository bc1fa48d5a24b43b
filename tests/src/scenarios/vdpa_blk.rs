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

use super::steps::{self, required, secs};
use crate::bed::{Bed, BedParams, Role, StepResult, Topology};
use crate::error::{Error, Result};
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
}

pub(super) fn result_with(step: &StepResult, key: &str, what: &str) -> Result<Value> {
    step.results
        .iter()
        .find(|r| r.get(key).is_some())
        .cloned()
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: format!("no result with `{key}`"),
        })
}

pub(super) fn check(ok: bool, check: &str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check {
            check: check.to_string(),
            reason: reason(),
        })
    }
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

/// Starts a daemon in the background on the compute guest and returns its ready line.
pub(super) fn start_daemon(bed: &mut Bed, bin: &str, name: &str, args: &str) -> Result<Value> {
    let step = bed.step(
        Role::Compute,
        "publish",
        &format!("start vdpa-blk {name} ({args})"),
        &format!(
            r#"rm -f /run/{name}.exit
(
  {bin} --name {name} {args} > /run/{name}.out 2> /run/{name}.err &
  echo $! > /run/{name}.pid
  wait $!
  echo $? > /run/{name}.exit
) > /dev/null 2>&1 &
wait_for 10 "the daemon's pid" test -s /run/{name}.pid
if ! wait_for 60 "the ready line" grep -q '"event":"ready"' /run/{name}.out; then
  cat /run/{name}.err; exit 1
fi
grep '"event":"ready"' /run/{name}.out | head -n1 | sed 's/^/RESULT /'
"#
        ),
        secs(90),
    )?;
    result_with(&step, "event", "the ready line")
}

/// A VMM whose guest memory is private anonymous memory gets a warning that names the cause
/// (vhost-vdpa passes VDUSE only shared file-backed memory); one with a memfd gets its queue
/// started and no warning. Before either, no driver (virtio_vdpa is loaded) drove the device.
fn vmm_memory(bed: &mut Bed, bin: &str, agent: &str, backing_dev: &str) -> Result<()> {
    let ready = start_daemon(
        bed,
        bin,
        "vb3",
        &format!("--backing /dev/{backing_dev} --driver vhost-vdpa"),
    )?;
    let path = ready["path"].as_str().unwrap_or_default().to_string();
    let step = bed.step(
        Role::Compute,
        "io",
        "a VMM with private anonymous memory, then one with a memfd",
        &format!(
            r#"count() {{ grep -c "$1" /run/vb3.err || true; }}
w0=$(count 'private anonymous'); s0=$(count 'queue started')
{agent} vhost-driver --path {path} --memory anon
w1=$(count 'private anonymous'); s1=$(count 'queue started')
{agent} vhost-driver --path {path} --memory memfd
w2=$(count 'private anonymous'); s2=$(count 'queue started')
result queues_before "$s0" anon_warnings "$((w1 - w0))" anon_queues "$((s1 - s0))" memfd_warnings "$((w2 - w1))" memfd_queues "$((s2 - s1))"
"#
        ),
        secs(120),
    )?;
    let r = result_with(&step, "anon_warnings", "VMM memory checks")?;
    let n = |k: &str| r[k].as_str().and_then(|v| v.parse::<u64>().ok());
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
    stop_daemon(bed, "vb3", None)
}

/// Asks a daemon for its statistics (SIGUSR1) and returns the stats line.
pub(super) fn stats(bed: &mut Bed, name: &str) -> Result<Value> {
    let step = bed.step(
        Role::Compute,
        "stats",
        &format!("SIGUSR1 statistics of {name}"),
        &format!(
            r#"n=$(grep -c '"event":"stats"' /run/{name}.out || true)
kill -USR1 $(cat /run/{name}.pid)
wait_for 20 "a stats line" sh -c "[ \$(grep -c '\"event\":\"stats\"' /run/{name}.out) -gt $n ]"
grep '"event":"stats"' /run/{name}.out | tail -n1 | sed 's/^/RESULT /'
"#
        ),
        secs(60),
    )?;
    result_with(&step, "queues", "the stats line")
}

/// Sends SIGTERM, expects exit status 0 and nothing left behind.
pub(super) fn stop_daemon(bed: &mut Bed, name: &str, during_fio_on: Option<&str>) -> Result<()> {
    let fio = match during_fio_on {
        Some(dev) => format!(
            "fio --name=bg --filename=/dev/{dev} --rw=randread --bs=4k --size=32M --iodepth=16 \
             --ioengine=libaio --direct=1 --time_based --runtime=60 > /run/{name}.fio 2>&1 &\n\
             FIO=$!\nsleep 3\nkill -0 $FIO\n"
        ),
        None => String::new(),
    };
    bed.step(
        Role::Compute,
        "teardown",
        &format!(
            "SIGTERM to {name}{}",
            if during_fio_on.is_some() { " during fio" } else { "" }
        ),
        &format!(
            r#"{fio}pid=$(cat /run/{name}.pid)
kill -TERM $pid
t0=$(date +%s.%N)
for i in $(seq 1 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
echo "vdpa-blk {name} exited $(awk "BEGIN {{ print $(date +%s.%N) - $t0 }}") s after SIGTERM"
if kill -0 $pid 2>/dev/null; then echo "vdpa-blk {name} still running 30 s after SIGTERM"; exit 1; fi
wait_for 10 "the exit status" test -s /run/{name}.exit
code=$(cat /run/{name}.exit)
[ "$code" = 0 ] || {{ echo "vdpa-blk {name} exited with $code"; tail -n 20 /run/{name}.err; exit 1; }}
{wait_fio}left=$(vdpa dev show)
[ -z "$left" ] || {{ echo "vdpa devices left: $left"; exit 1; }}
[ "$(ls /dev/vduse)" = control ] || {{ echo "VDUSE devices left: $(ls /dev/vduse)"; exit 1; }}
"#,
            wait_fio = if during_fio_on.is_some() {
                format!("kill -9 $FIO 2>/dev/null || true\nwait $FIO || true\ntail -n 5 /run/{name}.fio\n")
            } else {
                String::new()
            }
        ),
        secs(90),
    )?;
    Ok(())
}

/// Over a loop device (which can grow): a backing resize reaches the guest's disk through a
/// config interrupt, and a reset of the device (unbinding and rebinding virtio_vdpa, as a VM
/// reboot does) is served again without restarting the daemon.
fn resize_and_redrive(bed: &mut Bed, bin: &str) -> Result<()> {
    bed.step(
        Role::Compute,
        "io",
        "loop backing: resize announced, reset and re-drive",
        "modprobe loop\ntruncate -s 256M /tmp/vb2.img\nlosetup -f --show /tmp/vb2.img > /run/vb2.loop",
        secs(60),
    )?;
    let ready = start_daemon(
        bed,
        bin,
        "vb2",
        "--backing $(cat /run/vb2.loop) --driver virtio-vdpa",
    )?;
    let vd = ready["path"]
        .as_str()
        .and_then(|p| p.strip_prefix("/dev/"))
        .unwrap_or_default()
        .to_string();
    bed.step(
        Role::Compute,
        "io",
        "grow the backing; reset and re-drive",
        &format!(
            r#"[ "$(cat /sys/block/{vd}/size)" = 524288 ] || {{ echo "size $(cat /sys/block/{vd}/size) before the resize"; exit 1; }}
truncate -s 384M /tmp/vb2.img
losetup -c $(cat /run/vb2.loop)
wait_for 20 "the guest disk to grow to 786432 sectors" sh -c '[ "$(cat /sys/block/{vd}/size)" = 786432 ]'
echo "resize announced: $(cat /sys/block/{vd}/size) sectors"
head -c 1048576 /dev/urandom > /tmp/vb2-pat
dd if=/tmp/vb2-pat of=/dev/{vd} bs=1M seek=300 oflag=direct conv=fsync 2>/dev/null
echo vb2 > /sys/bus/vdpa/drivers/virtio_vdpa/unbind
echo vb2 > /sys/bus/vdpa/drivers/virtio_vdpa/bind
wait_for 30 "the disk after re-driving" sh -c "ls /sys/bus/vdpa/devices/vb2/virtio*/block/ | grep -q vd"
vd2=$(ls /sys/bus/vdpa/devices/vb2/virtio*/block/)
wait_for 10 /dev/$vd2 test -b /dev/$vd2
[ "$(md5sum < /tmp/vb2-pat)" = "$(dd if=/dev/$vd2 bs=1M skip=300 count=1 iflag=direct 2>/dev/null | md5sum)" ] || {{ echo "data differs after re-driving"; exit 1; }}
echo "re-driven as $vd2, data intact"
"#
        ),
        secs(120),
    )?;
    stop_daemon(bed, "vb2", None)?;
    bed.step(
        Role::Compute,
        "teardown",
        "release the loop device",
        "losetup -d $(cat /run/vb2.loop)",
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
    let virtio_ready = start_daemon(
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
    let vd = virtio_ready["path"]
        .as_str()
        .and_then(|p| p.strip_prefix("/dev/"))
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: "virtio-vdpa ready line".into(),
            reason: format!("no /dev path in {virtio_ready}"),
        })?;
    let io = bed.step(
        Role::Compute,
        "io",
        "fio crc32c verify, discard, write-zeroes, flush, pattern on the backing",
        &format!(
            r#"[ "$(cat /sys/block/{vd}/serial)" = {SERIAL} ] || {{ echo "serial is $(cat /sys/block/{vd}/serial)"; exit 1; }}
fio --name=verify --filename=/dev/{vd} --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
  --iodepth=16 --numjobs=2 --size=16M --offset_increment=16M --verify=crc32c --do_verify=1 \
  --verify_fatal=1 --group_reporting --output-format=json --output=/tmp/vb-verify.json
fio_result /tmp/vb-verify.json
d0=$(awk '{{print $12}}' /sys/block/{backing_dev}/stat)
blkdiscard -o 33554432 -l 1048576 /dev/{vd}
d1=$(awk '{{print $12}}' /sys/block/{backing_dev}/stat)
[ "$d1" -gt "$d0" ] || {{ echo "blkdiscard through /dev/{vd} reached /dev/{backing_dev} as no discard ($d0 -> $d1 completed, discard_max_bytes $(cat /sys/block/{backing_dev}/queue/discard_max_bytes))"; exit 1; }}
result backing_discards "$((d1 - d0))"
head -c 1048576 /dev/urandom > /tmp/ones
dd if=/tmp/ones of=/dev/{vd} bs=1M seek=34 oflag=direct conv=fsync 2>/dev/null
nz() {{ dd if=/dev/{vd} of=/tmp/zr bs=1M skip=34 count=1 iflag=direct 2>/dev/null && [ "$(stat -c %s /tmp/zr)" = 1048576 ] || {{ echo "reading back 1 MiB at 34 MiB of /dev/{vd} failed"; exit 1; }}; tr -d '\0' < /tmp/zr | wc -c; }}
z0=$(nz)
[ "$z0" -gt 0 ] || {{ echo "the pattern under the write-zeroes range reads back as zeroes already"; exit 1; }}
blkdiscard -z -o 35651584 -l 1048576 /dev/{vd}
z=$(nz)
[ "$z" = 0 ] || {{ echo "write-zeroes left $z non-zero bytes"; exit 1; }}
head -c 4194304 /dev/urandom > /tmp/pattern
dd if=/tmp/pattern of=/dev/{vd} bs=1M seek=40 oflag=direct 2>/dev/null
sync
a=$(md5sum < /tmp/pattern | cut -d' ' -f1)
b=$(dd if=/dev/{backing_dev} bs=1M skip=40 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$a" = "$b" ] || {{ echo "pattern md5 $a through /dev/{vd}, $b on /dev/{backing_dev}"; exit 1; }}
result pattern "$a"
"#
        ),
        secs(600),
    )?;
    let pattern = required(&io, "pattern", "pattern checksum")?;
    if backing == Backing::Fabric {
        let landed = bed.step(
            Role::Storage,
            "check",
            "the pattern is on the VF namespace",
            &format!(
                "result pattern \"$(dd if=/dev/{storage_dev} bs=1M skip=40 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\""
            ),
            secs(60),
        )?;
        let there = required(&landed, "pattern", "VF namespace checksum")?;
        check(there == pattern, "bytes landed on the VF namespace", || {
            format!("md5 {pattern} written, {there} on /dev/{storage_dev}")
        })?;
    }
    let virtio_stats = stats(bed, "vb0")?;
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
    stop_daemon(bed, "vb0", Some(&vd))?;

    // vhost_vdpa, driven by the blkio crate as a VMM would.
    let vhost_ready = start_daemon(
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
    let vhost_path = vhost_ready["path"].as_str().unwrap_or_default().to_string();
    let client = bed.step(
        Role::Compute,
        "io",
        "blkio client over vhost-vdpa: write, flush, read back, write-zeroes; what the daemon maps",
        &format!(
            "AGENT='{agent}'\nDEV='{vhost_path}'\nSOCK=/run/vb1.sock\n{}",
            include_str!("sh/zero_copy_client.sh")
        ),
        secs(300),
    )?;
    let blkio = result_with(&client, "readback_matches", "blkio client")?;
    let region = result_with(&client, "region_ino", "the client's memory region")?;
    let maps = result_with(&client, "mappings", "the daemon's mappings")?;
    let ours = |m: &Value| m["dev"] == region["region_dev"] && m["ino"] == region["region_ino"];
    check(
        maps["mappings"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| ours(m) && m["writable"] == true)),
        "zero copy: the daemon maps the VMM's own memory file",
        || format!("client region {region}, daemon maps {maps}"),
    )?;
    check(blkio["readback_matches"] == true, "blkio read-back", || {
        blkio.to_string()
    })?;
    check(
        blkio["write_zeroes"] == "zeroed",
        "blkio write-zeroes",
        || blkio.to_string(),
    )?;
    let vhost_stats = stats(bed, "vb1")?;
    // The same counters through the control socket (nothing ran in between).
    let sock = bed.step(
        Role::Compute,
        "stats",
        "statistics of vb1 through its control socket",
        "echo stats | socat -t 10 - UNIX-CONNECT:/run/vb1.sock | sed 's/^/RESULT /'",
        secs(30),
    )?;
    let via_socket = result_with(&sock, "queues", "control socket stats")?;
    check(
        via_socket["queues"] == vhost_stats["queues"],
        "control socket stats equal the SIGUSR1 stats",
        || format!("socket {via_socket}, SIGUSR1 {vhost_stats}"),
    )?;
    check_clean(&vhost_stats, "vhost-vdpa")?;
    stop_daemon(bed, "vb1", None)?;
    bed.step(
        Role::Compute,
        "check",
        "vb1's control socket is gone",
        "[ ! -e /run/vb1.sock ] || { echo '/run/vb1.sock left behind'; exit 1; }",
        secs(30),
    )?;

    if backing == Backing::Local {
        vmm_memory(bed, &bin, &agent, &backing_dev)?;
        resize_and_redrive(bed, &bin)?;
        super::vdpa_blk_faults::local(bed, &bin, &agent, &backing_dev)?;
    }
    if backing == Backing::Fabric {
        super::vdpa_blk_faults::fabric(bed, &bin, &agent, &backing_dev, SUBSYSTEM_NQN)?;
    }

    if backing == Backing::Fabric {
        bed.step(
            Role::Compute,
            "teardown",
            "disconnect",
            &format!("nvme disconnect -n {SUBSYSTEM_NQN}"),
            secs(60),
        )?;
        steps::unexport(bed, SUBSYSTEM_NQN, &hostnqn)?;
    }
    Ok(Report {
        backing: backing_dev,
        virtio_ready,
        virtio_stats,
        vhost_ready,
        blkio,
        vhost_stats,
    })
}
