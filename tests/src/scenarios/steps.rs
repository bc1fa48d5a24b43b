//! Steps several scenarios share: preparing the guests, the soft-RoCE network, the nvmet
//! export through configfs, carving, connecting (stock tools only), starting and stopping
//! vdpa-blk and qemu-storage-daemon, fio and checksums; and the one way results are read.
//!
//! Their guest-side shell lives in `sh/`; each script says what it expects in its variables.

use std::time::Duration;

use serde_json::Value;

use crate::bed::{Bed, Role, StepResult, Topology, STORAGE_ADDR};
use crate::error::{Error, Result};
use crate::fio::{self, FioFigures};

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The value of `key` in a step's results, or a check failure naming `what`.
pub(crate) fn required(step: &StepResult, key: &str, what: &str) -> Result<String> {
    step.get_str(key).ok_or_else(|| Error::Check {
        check: what.to_string(),
        reason: format!("the step printed no `{key}` result"),
    })
}

fn net_module(topology: Topology) -> &'static str {
    match topology {
        Topology::Pair | Topology::Trio => "virtio_net",
        Topology::Single => "veth",
    }
}

/// Modules of the storage role: the PCIe NVMe driver, the target, soft-RoCE.
pub(crate) fn storage_modules(topology: Topology) -> String {
    format!("nvme nvmet nvmet-rdma rdma_rxe {}", net_module(topology))
}

/// Modules of the compute role's fabric side (callers add their publishing modules).
pub(crate) fn compute_modules(topology: Topology) -> String {
    format!("nvme-rdma rdma_rxe {}", net_module(topology))
}

/// Mounts configfs, brings loopback up, loads the modules of each role and gives each compute
/// node a host NQN and host ID (kept on its state disk); returns the compute node's NQN.
pub(crate) fn prepare(bed: &mut Bed, storage_mods: &str, compute_mods: &str) -> Result<String> {
    let script = include_str!("../sh/prepare.sh");
    let env = |mods: &str| [("MODULES", mods.to_string())];
    let host = match bed.topology() {
        Topology::Pair | Topology::Trio => {
            bed.step_env(
                Role::Storage,
                "prepare",
                "prepare",
                script,
                &env(storage_mods),
                secs(90),
            )?;
            let host = bed.step_env(
                Role::Compute,
                "prepare",
                "host identity",
                script,
                &env(compute_mods),
                secs(90),
            )?;
            if bed.topology() == Topology::Trio {
                bed.step_env(
                    Role::Compute2,
                    "prepare",
                    "host identity of the second compute node",
                    script,
                    &env(compute_mods),
                    secs(90),
                )?;
            }
            host
        }
        Topology::Single => {
            let all = format!("{storage_mods} {compute_mods}");
            bed.step_env(
                Role::Storage,
                "prepare",
                "prepare",
                script,
                &env(&all),
                secs(90),
            )?
        }
    };
    required(&host, "hostnqn", "compute host NQN")
}

/// Prepares both nodes for the whole stack (the storage node's modules; the compute node's
/// with vdpa, VDUSE, virtio_vdpa, vhost_vdpa and virtio_blk) and brings the links up; gives
/// the compute node's host NQN.
pub(crate) fn prepare_stack(bed: &mut Bed) -> Result<String> {
    let topology = bed.topology();
    let hostnqn = prepare(
        bed,
        &storage_modules(topology),
        &format!(
            "{} vdpa vduse virtio_vdpa vhost_vdpa virtio_blk",
            compute_modules(topology)
        ),
    )?;
    network(bed)?;
    Ok(hostnqn)
}

/// Soft-RoCE: on each guest's NICs (one rxe device per link), or on a veth pair inside the one
/// guest (single); then every compute node reaches the storage node on every link.
pub(crate) fn network(bed: &mut Bed) -> Result<()> {
    let roles: &[Role] = match bed.topology() {
        Topology::Single => &[Role::Storage],
        Topology::Pair => &[Role::Storage, Role::Compute],
        Topology::Trio => &[Role::Storage, Role::Compute, Role::Compute2],
    };
    network_on(bed, roles)
}

/// [`network`] on the guests of `roles` only: after one of them rebooted, the others keep
/// theirs.
pub(crate) fn network_on(bed: &mut Bed, roles: &[Role]) -> Result<()> {
    for &role in roles {
        let nics = bed.nics(role)?;
        let words: Vec<String> = nics
            .iter()
            .map(|n| format!("{}={}", n.mac, n.addr))
            .collect();
        let what = if nics.is_empty() {
            "soft-RoCE on a veth pair".to_string()
        } else if nics.len() == 1 {
            "soft-RoCE on the NIC".to_string()
        } else {
            format!("soft-RoCE on {} NICs", nics.len())
        };
        // Compute nodes then wait until the storage node answers on every link.
        let peers: Vec<String> = match role {
            Role::Storage => Vec::new(),
            _ => nics.iter().map(|n| n.storage_addr.clone()).collect(),
        };
        bed.step_env(
            role,
            "network",
            &what,
            include_str!("../sh/network.sh"),
            &[
                ("NICS", words.join(" ")),
                ("VETH_ADDR", STORAGE_ADDR.to_string()),
                ("PEERS", peers.join(" ")),
            ],
            secs(90),
        )?;
    }
    Ok(())
}

/// Exports block device `dev` as namespace 1 of subsystem `nqn` on an rdma port at the
/// storage address, for `hostnqn` only.
pub(crate) fn export(bed: &mut Bed, nqn: &str, hostnqn: &str, dev: &str) -> Result<()> {
    bed.step_env(
        Role::Storage,
        "export",
        "nvmet subsystem, namespace, rdma port",
        include_str!("sh/export.sh"),
        &[
            ("NQN", nqn.to_string()),
            ("HOSTNQN", hostnqn.to_string()),
            ("DEV", dev.to_string()),
            ("TRADDR", STORAGE_ADDR.to_string()),
        ],
        secs(60),
    )?;
    Ok(())
}

/// Removes what [`export`] made, in reverse order.
pub(crate) fn unexport(bed: &mut Bed, nqn: &str, hostnqn: &str) -> Result<()> {
    bed.step_env(
        Role::Storage,
        "teardown",
        "unexport",
        include_str!("sh/unexport.sh"),
        &[("NQN", nqn.to_string()), ("HOSTNQN", hostnqn.to_string())],
        secs(60),
    )?;
    Ok(())
}

/// Carves VF `vf` of the emulated controller with nvme-cli (flexible queue and interrupt
/// resources, online, namespace `nsid` attached, VF bound to nvme); returns the VF's PCI
/// address and the namespace's block device, found through the subsystem NQN.
pub(crate) fn carve(bed: &mut Bed, vf: u32, nsid: u32) -> Result<(String, String)> {
    if vf == 0 {
        return Err(Error::Invalid("VF numbers start at 1".into()));
    }
    let carve = bed.step_env(
        Role::Storage,
        "carve",
        "carve VF and attach namespace",
        include_str!("sh/carve.sh"),
        &[("VF", vf.to_string()), ("NSID", nsid.to_string())],
        secs(120),
    )?;
    Ok((
        required(&carve, "vf", "VF address")?,
        required(&carve, "dev", "VF namespace block device")?,
    ))
}

/// Discovers the storage node (the log must list `listed_nqn`), connects to `connect_nqn`
/// with nvme-cli over rdma and returns the block device of namespace 1 of `listed_nqn`.
pub(crate) fn connect(bed: &mut Bed, listed_nqn: &str, connect_nqn: &str) -> Result<String> {
    let connect = bed.step_env(
        Role::Compute,
        "connect",
        "discover and connect over nvme-rdma",
        include_str!("sh/connect.sh"),
        &[
            ("TRADDR", STORAGE_ADDR.to_string()),
            ("LISTED_NQN", listed_nqn.to_string()),
            ("CONNECT_NQN", connect_nqn.to_string()),
        ],
        secs(120),
    )?;
    required(&connect, "dev", "fabric block device")
}

/// Disconnects the compute node from subsystem `nqn`.
pub(crate) fn disconnect(bed: &mut Bed, nqn: &str) -> Result<()> {
    bed.step_env(
        Role::Compute,
        "teardown",
        "disconnect",
        include_str!("sh/disconnect.sh"),
        &[("NQN", nqn.to_string())],
        secs(60),
    )?;
    Ok(())
}

/// Guest-side helpers (`read_md5`, `vdpa_left`) some scripts use besides the bed's library.
const LIB: &str = include_str!("sh/helpers.sh");

/// `script` with [`LIB`] in front.
pub(crate) fn with_lib(script: &str) -> String {
    format!("{LIB}\n{script}")
}

/// A check: `Ok` when `ok`, else a check failure naming `check` with `reason()`.
pub(crate) fn check(ok: bool, check: &str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check {
            check: check.to_string(),
            reason: reason(),
        })
    }
}

/// The first of a step's results that has `key` (the whole result object), or a check
/// failure naming `what`. [`required`] is the same for one string value.
pub(crate) fn result_with(step: &StepResult, key: &str, what: &str) -> Result<Value> {
    step.results
        .iter()
        .find(|r| r.get(key).is_some())
        .cloned()
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: format!("the step printed no `{key}` result"),
        })
}

/// A count in a result: a number, or a string of digits (the shell's `result` prints strings).
pub(crate) fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

/// The figures of the one fio job of a step that printed a `{"fio": ...}` result.
pub(crate) fn fio_figures(step: &StepResult, what: &str) -> Result<FioFigures> {
    let fail = |reason: String| Error::Check {
        check: what.to_string(),
        reason,
    };
    let v = result_with(step, "fio", what)?;
    let mut f = fio::from_value(&v["fio"]).map_err(fail)?;
    f.pop().ok_or_else(|| fail("fio reported no job".into()))
}

/// Runs one fio job (`sh/fio.sh`): `args` are fio's arguments without the output options,
/// `out` the JSON file in the guest.
pub(crate) fn fio(
    bed: &mut Bed,
    role: Role,
    phase: &str,
    name: &str,
    args: &str,
    out: &str,
    timeout: Duration,
) -> Result<FioFigures> {
    let step = bed.step_env(
        role,
        phase,
        name,
        include_str!("sh/fio.sh"),
        &[("FIO_ARGS", args.to_string()), ("OUT", out.to_string())],
        timeout,
    )?;
    fio_figures(&step, name)
}

/// The md5 of each range (key, first MiB, MiB) of `/dev/{dev}`, in order; a range that cannot
/// be read in full fails the step (`sh/checksums.sh`).
pub(crate) fn checksums(
    bed: &mut Bed,
    role: Role,
    name: &str,
    dev: &str,
    ranges: &[(&str, u64, u64)],
) -> Result<Vec<String>> {
    let list: Vec<String> = ranges
        .iter()
        .map(|(key, skip, count)| format!("{key}:{skip}:{count}"))
        .collect();
    let step = bed.step_env(
        role,
        "check",
        name,
        &with_lib(include_str!("sh/checksums.sh")),
        &[("DEV", dev.to_string()), ("RANGES", list.join(" "))],
        secs(120),
    )?;
    ranges
        .iter()
        .map(|(key, ..)| md5_result(&step, key, name))
        .collect()
}

/// A checksum result: present and an md5, never the empty string a failed read would give.
pub(crate) fn md5_result(step: &StepResult, key: &str, what: &str) -> Result<String> {
    let m = required(step, key, what)?;
    check(
        m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()),
        what,
        || format!("`{key}` is {m:?}, not an md5"),
    )?;
    Ok(m)
}

/// The disk name (`vda`) of a `/dev/vda` path in a ready line, or a check failure.
pub(crate) fn disk_of(ready: &Value, what: &str) -> Result<String> {
    path_of(ready, what)?
        .strip_prefix("/dev/")
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: format!("no /dev path in {ready}"),
        })
}

/// The `path` of a daemon's ready line, or a check failure.
pub(crate) fn path_of(ready: &Value, what: &str) -> Result<String> {
    ready["path"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: format!("no path in {ready}"),
        })
}

/// Starts vdpa-blk `name` (`bin`, with `args`) in the background on the compute guest and
/// returns its ready line (`sh/vdpa_blk_start.sh`).
pub(crate) fn vdpa_blk_start(bed: &mut Bed, bin: &str, name: &str, args: &str) -> Result<Value> {
    let step = bed.step_env(
        Role::Compute,
        "publish",
        &format!("start vdpa-blk {name} ({args})"),
        include_str!("sh/vdpa_blk_start.sh"),
        &[
            ("BIN", bin.to_string()),
            ("NAME", name.to_string()),
            ("ARGS", args.to_string()),
        ],
        secs(90),
    )?;
    result_with(&step, "event", "the ready line")
}

/// Asks vdpa-blk `name` for its statistics (SIGUSR1) and returns the stats line.
pub(crate) fn vdpa_blk_stats(bed: &mut Bed, name: &str) -> Result<Value> {
    let step = bed.step_env(
        Role::Compute,
        "stats",
        &format!("SIGUSR1 statistics of {name}"),
        include_str!("sh/vdpa_blk_stats.sh"),
        &[("NAME", name.to_string())],
        secs(60),
    )?;
    result_with(&step, "queues", "the stats line")
}

/// Sends SIGTERM to vdpa-blk `name` (while fio reads `/dev/{during_fio_on}`, if given) and
/// expects exit status 0 and no vdpa or VDUSE device left but the `remaining` ones.
pub(crate) fn vdpa_blk_stop(
    bed: &mut Bed,
    name: &str,
    during_fio_on: Option<&str>,
    remaining: &[&str],
) -> Result<()> {
    bed.step_env(
        Role::Compute,
        "teardown",
        &format!(
            "SIGTERM to {name}{}",
            if during_fio_on.is_some() {
                " during fio"
            } else {
                ""
            }
        ),
        &with_lib(include_str!("sh/vdpa_blk_stop.sh")),
        &[
            ("NAME", name.to_string()),
            ("FIO_DEV", during_fio_on.unwrap_or_default().to_string()),
            ("REMAINING", remaining.join(" ")),
        ],
        secs(90),
    )?;
    Ok(())
}

/// Publishes `/dev/{dev}` through `qemu-storage-daemon --export type=vduse-blk` (daemonized,
/// its pid in `/run/qsd-{name}.pid`) as vdpa device `name` with `queues` queues (and QEMU's
/// `aio` mode, if given); returns virtio_vdpa's disk.
pub(crate) fn qsd_start(
    bed: &mut Bed,
    name: &str,
    dev: &str,
    queues: u16,
    aio: Option<&str>,
) -> Result<String> {
    bed.step_env(
        Role::Compute,
        "publish",
        "qemu-storage-daemon vduse-blk export",
        include_str!("sh/qsd_vduse.sh"),
        &[
            ("NAME", name.to_string()),
            ("DEV", dev.to_string()),
            ("QUEUES", queues.to_string()),
            ("AIO", aio.unwrap_or_default().to_string()),
            ("PIDFILE", format!("/run/qsd-{name}.pid")),
        ],
        secs(120),
    )?;
    vduse_publish(bed, name)
}

/// Adds the VDUSE device `name` (a daemon made it) as a vdpa device bound to virtio_vdpa;
/// returns its disk.
pub(crate) fn vduse_publish(bed: &mut Bed, name: &str) -> Result<String> {
    let step = bed.step_env(
        Role::Compute,
        "publish",
        &format!("vdpa dev add {name}, virtio_vdpa's disk"),
        include_str!("sh/vduse_publish.sh"),
        &[("NAME", name.to_string())],
        secs(90),
    )?;
    required(&step, "dev", "the VDUSE device's virtio disk")
}

/// Removes vdpa device `name` and stops its qemu-storage-daemon; no vdpa or VDUSE device but
/// the `remaining` ones may be left.
pub(crate) fn qsd_stop(bed: &mut Bed, name: &str, remaining: &[&str]) -> Result<()> {
    bed.step_env(
        Role::Compute,
        "teardown",
        &format!("stop qemu-storage-daemon {name}"),
        &with_lib(include_str!("sh/qsd_stop.sh")),
        &[
            ("NAME", name.to_string()),
            ("REMAINING", remaining.join(" ")),
        ],
        secs(90),
    )?;
    Ok(())
}

/// One `--json` command of a project daemon's CLI (`bin`, talking to the API at `socket`) on
/// the guest with `role` (`sh/daemon_cli.sh`): its JSON answer (`Null` for an empty one), or,
/// when `may_fail`, the CLI's error message for a refusal (without `may_fail` a refusal fails
/// the step).
pub(crate) fn cli_json(
    bed: &mut Bed,
    role: Role,
    bin: &str,
    socket: &str,
    what: &str,
    args: &[&str],
    may_fail: bool,
) -> Result<std::result::Result<Value, String>> {
    let step = bed.step_env(
        role,
        "cli",
        what,
        include_str!("sh/daemon_cli.sh"),
        &[
            ("BIN", bin.to_string()),
            ("SOCKET", socket.to_string()),
            ("ARGS", args.join(" ")),
            ("MAY_FAIL", if may_fail { "1" } else { "" }.to_string()),
        ],
        // A refused connect may block in the kernel for minutes (see nvmf_target_refused.sh).
        secs(420),
    )?;
    if let Some(e) = step.get_str("error") {
        return Ok(Err(e));
    }
    Ok(Ok(result_with(&step, "answer", what)?["answer"].clone()))
}

/// A project daemon's metric lines (`BIN metrics`, comments dropped).
pub(crate) fn daemon_metrics(
    bed: &mut Bed,
    role: Role,
    bin: &str,
    socket: &str,
    what: &str,
) -> Result<Vec<String>> {
    let step = bed.step_env(
        role,
        "status",
        what,
        include_str!("sh/daemon_metrics.sh"),
        &[("BIN", bin.to_string()), ("SOCKET", socket.to_string())],
        secs(60),
    )?;
    Ok(result_with(&step, "metrics", what)?["metrics"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default())
}

/// The fio job of a `sh/fio_verify.sh` step, checked: no error, and data was read back and
/// verified (fio's `--verify_fatal` already failed the step on a mismatch).
pub(crate) fn fio_verified(step: &StepResult, what: &str) -> Result<Value> {
    let job = step
        .results
        .iter()
        .find_map(|r| r.get("fio"))
        .and_then(|f| f["jobs"].get(0))
        .cloned()
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: "no fio job in the step's results".into(),
        })?;
    check(
        job["error"].as_i64() == Some(0),
        &format!("{what}: no fio error"),
        || job.to_string(),
    )?;
    check(
        job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0,
        &format!("{what}: fio verified data"),
        || job.to_string(),
    )?;
    Ok(job)
}

/// fio randwrite with crc32c verify on the compute node's `/dev/{dev}` over its first `size`
/// for `runtime` seconds, while `during` runs (started 5 s after fio; fio is waited for even
/// when `during` failed, so that it does not outlive the report). Gives fio's job, checked by
/// [`fio_verified`], and what `during` returned.
pub(crate) fn fio_verify_while<T>(
    bed: &mut Bed,
    job: &str,
    what: &str,
    dev: &str,
    size: &str,
    runtime: u64,
    during: impl FnOnce(&mut Bed) -> Result<T>,
) -> Result<(Value, T)> {
    fio_verify_load_while(bed, job, what, dev, VerifyLoad::new(size, runtime), during)
}

/// The load of a verifying fio run (`sh/fio_verify.sh`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VerifyLoad<'a> {
    /// Each job's region.
    pub(crate) size: &'a str,
    /// Seconds.
    pub(crate) runtime: u64,
    pub(crate) iodepth: u32,
    /// fio jobs, each on its own region and CPU (so that every queue carries I/O).
    pub(crate) jobs: u32,
    /// How long fio runs before the fault starts.
    pub(crate) head_start: Duration,
}

impl<'a> VerifyLoad<'a> {
    /// One job of depth 8 over `size` for `runtime` seconds, the fault 5 s in.
    pub(crate) fn new(size: &'a str, runtime: u64) -> VerifyLoad<'a> {
        VerifyLoad {
            size,
            runtime,
            iodepth: 8,
            jobs: 1,
            head_start: secs(5),
        }
    }
}

/// [`fio_verify_while`] with the whole load given.
pub(crate) fn fio_verify_load_while<T>(
    bed: &mut Bed,
    job: &str,
    what: &str,
    dev: &str,
    load: VerifyLoad,
    during: impl FnOnce(&mut Bed) -> Result<T>,
) -> Result<(Value, T)> {
    let fio = bed.spawn_step(
        Role::Compute,
        job,
        what,
        include_str!("sh/fio_verify.sh"),
        &[
            ("DEV", dev.to_string()),
            ("NAME", job.to_string()),
            ("SIZE", load.size.to_string()),
            ("RUNTIME", load.runtime.to_string()),
            ("IODEPTH", load.iodepth.to_string()),
            ("JOBS", load.jobs.to_string()),
        ],
        secs(load.runtime + 240),
    )?;
    std::thread::sleep(load.head_start);
    let fault = during(bed);
    let fio = fio.finish()?;
    let fault = fault?;
    Ok((fio_verified(&fio, what)?, fault))
}

/// The longest completion (write or verifying read) of a fio job of [`fio_verified`], in ms;
/// a job that reports neither is a check failure naming `what`.
pub(crate) fn longest_completion_ms(job: &Value, what: &str) -> Result<f64> {
    let maxes: Vec<f64> = ["write", "read"]
        .iter()
        .filter_map(|d| job[d]["clat_ns"]["max"].as_f64())
        .collect();
    check(
        !maxes.is_empty(),
        &format!("{what}: fio reports its longest completion"),
        || job.to_string(),
    )?;
    Ok(maxes.into_iter().fold(0.0, f64::max) / 1e6)
}

/// Packets each of the compute node's soft-RoCE devices has sent, by device number (`rxeK`
/// carries path K).
#[derive(Debug, Clone)]
pub(crate) struct PathSample {
    pub(crate) rxe_sent: Vec<u64>,
}

/// Reads a [`PathSample`] on the compute node (`sh/path_of.sh`, which also prints the
/// controllers of subsystem `nqn` for the log).
pub(crate) fn path_sample(bed: &mut Bed, nqn: &str) -> Result<PathSample> {
    let step = bed.step_env(
        Role::Compute,
        "multipath",
        "paths and soft-RoCE counters",
        include_str!("sh/path_of.sh"),
        &[("NQN", nqn.to_string())],
        secs(30),
    )?;
    let mut rxe_sent = Vec::new();
    for r in step.results.iter().filter(|r| r.get("rxe").is_some()) {
        let k: usize = r["rxe"]
            .as_str()
            .and_then(|n| n.strip_prefix("rxe"))
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| Error::Check {
                check: "soft-RoCE devices are named rxeK".into(),
                reason: r.to_string(),
            })?;
        let sent = count(r, "sent").ok_or_else(|| Error::Check {
            check: format!("rxe{k} reports the packets it sent"),
            reason: r.to_string(),
        })?;
        if rxe_sent.len() <= k {
            rxe_sent.resize(k + 1, 0);
        }
        rxe_sent[k] = sent;
    }
    Ok(PathSample { rxe_sent })
}

/// The path (its NIC's index) carrying the I/O to `nqn` now: the one whose rxe device sent
/// the most packets over 2 s; gives it with the samples before and after.
pub(crate) fn busy_path(bed: &mut Bed, nqn: &str) -> Result<(usize, PathSample, PathSample)> {
    let before = path_sample(bed, nqn)?;
    std::thread::sleep(secs(2));
    let after = path_sample(bed, nqn)?;
    let busy = (0..after.rxe_sent.len())
        .max_by_key(|k| {
            after.rxe_sent[*k].saturating_sub(before.rxe_sent.get(*k).copied().unwrap_or(0))
        })
        .ok_or_else(|| Error::Check {
            check: "the compute node has soft-RoCE devices".into(),
            reason: format!("{after:?}"),
        })?;
    Ok((busy, before, after))
}

/// `testbed blkio-client` (`agent`, the bed's own binary) drives the vhost-vdpa device `dev`
/// as a VMM does (`sh/zero_copy_client.sh`): write, flush, read back identical, write-zeroes,
/// with its memory in a file it allocated; while it holds the device, the vdpa-blk behind it
/// (asked on its control socket `sock`) maps that very file, writable: zero copy. Gives the
/// client's result.
pub(crate) fn blkio_zero_copy(bed: &mut Bed, agent: &str, dev: &str, sock: &str) -> Result<Value> {
    let client = bed.step_env(
        Role::Compute,
        "io",
        "blkio client over vhost-vdpa: write, flush, read back, write-zeroes; what the daemon maps",
        include_str!("sh/zero_copy_client.sh"),
        &[
            ("AGENT", agent.to_string()),
            ("DEV", dev.to_string()),
            ("SOCK", sock.to_string()),
        ],
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
    Ok(blkio)
}
