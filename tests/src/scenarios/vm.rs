//! A real VM on an attached volume, in the pair topology with both daemons running:
//! - `nvmf-target` exports `vol1`; `nvmf-initiator` attaches it in vhost-vdpa mode with two
//!   queues (what a multi-queue attach gives a VM);
//! - a VMM that keeps the snippet's device but not its shared memory (private guest RAM) is
//!   refused at DRIVER_OK, and both vdpa-blk's log and the agent's `show`
//!   (`driver_ok_refused`) name private memory as the cause;
//! - the nested VMM (bookworm-backports' QEMU 10.0, [`crate::vmm`]) runs in the compute guest
//!   with exactly the attach answer's fastest QEMU snippet (`vhost-vdpa-device-pci` and the
//!   shared memfd guest memory), plus a kernel, the nested initramfs and a serial console;
//! - the nested guest (one vCPU, so its virtio_blk drives one of the two queues, as SeaBIOS
//!   does before it) writes 4 MiB and reads them back, keeps I/O going for 30 s while vdpa-blk
//!   is killed with -9 under it (the agent starts one with `--reconnect`; every round reads
//!   back what it wrote), reboots (the device is reset and driven again through VDUSE by the
//!   same vdpa-blk), reads the 4 MiB back again and powers off;
//! - while it runs, vdpa-blk maps QEMU's own guest memory file (zero copy shown, not claimed);
//!   afterwards the bytes are on the storage node's VF namespace, the agent's statistics show
//!   one restart and requests served by the vdpa-blk that took over (the same pid from the
//!   restart to the end: the reboot did not restart it), and a detach leaves nothing.

use serde_json::Value;

use super::nvmf_initiator::{
    detach_leaves_nothing, kernel_has, ready_view, restarted, state_dir, Attached, Binaries,
    Initiator, Mode,
};
use super::nvmf_target::{Target, Volume};
use super::steps::{self, check, secs, with_lib};
use crate::bed::{Bed, BedParams, Role, Topology};
use crate::error::{Error, Result};
use crate::setup::{NestedVm, Prepared};

/// The volume the VM runs on.
const VOLUME: (&str, &str) = ("vol1", "100M");
/// Queues of the attachment (the nested guest drives one).
const QUEUES: u16 = 2;
/// The nested guest's RAM (the snippet's `${GUEST_RAM}`).
const GUEST_RAM: &str = "256M";
/// The region the nested guest writes: the first 4 MiB (`sh/nested_init.sh`).
const REGION_MIB: u64 = 4;
/// How long one nested boot may take to reach its disk (measured under nested TCG: about
/// three and a half minutes to a shell).
const FIRST_LOOK_S: u64 = 900;

/// What the scenario found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub attachment: String,
    /// `vhost-vdpa-N`.
    pub device: String,
    /// The snippet the VM was started with.
    pub snippet: String,
    /// The nested VMM's version line.
    pub vmm: String,
    /// Why vdpa-blk refused the VMM with private memory, as the agent's `show` gave it.
    pub private_memory_refusal: String,
    /// What the nested guest printed, by key (`boot1_written_md5`, `boot2_read_md5`, ...).
    pub nested: serde_json::Map<String, Value>,
    /// The md5 of the region on the storage node's VF namespace after the VM.
    pub storage_md5: String,
    /// The VM's run time, both boots, seconds.
    pub vm_seconds: u64,
    /// The requests of the vdpa-blk that took over after the kill, when the VM had gone.
    pub requests: u64,
    /// vdpa-blk's pid before the kill, after the agent's restart, after the VM.
    pub pids: (u64, u64, u64),
    pub teardown: Vec<String>,
}

/// Runs the scenario in a new pair bed and tears the bed down, whatever happens.
pub fn run(prepared: &Prepared, params: &BedParams, bins: &Binaries) -> Result<Report> {
    let nested = crate::setup::prepare_nested_vm(prepared, &crate::progress::Progress::new("vm"))?;
    let mut params = params.clone();
    params.topology = Topology::Pair;
    params.paths = 1;
    let mut bed = Bed::start(prepared, &params, "vm")?;
    let report = steps_of(&mut bed, prepared, &nested, bins);
    if let Ok(r) = &report {
        bed.progress()
            .phase("done", &format!("vm scenario passed: {r:?}"));
    }
    bed.shutdown();
    report
}

/// The nested VMM's variables (`QEMU`, ...) followed by `env`, for a step that runs it.
fn with_vmm(nested: &NestedVm, env: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut all = nested.vmm.script_env();
    all.extend_from_slice(env);
    all
}

/// A string the nested guest printed (`nested_KEY` results), or a check failure.
fn nested_value(r: &Report, key: &str) -> Result<String> {
    r.nested
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: format!("the nested guest reports {key}"),
            reason: format!("it printed {:?}", r.nested),
        })
}

/// What the agent's `show` says of an attachment's vdpa-blk.
#[derive(Debug)]
struct Served {
    /// Requests, summed over the queues.
    requests: u64,
    pid: u64,
    /// Queues in its statistics.
    queues: usize,
    /// `driver_ok_refused` (present, null or a reason).
    refused: Option<String>,
}

/// The agent's `show` of `a`, read into [`Served`]; a missing field is a check failure.
fn served(init: &Initiator, bed: &mut Bed, a: &Attached, what: &str) -> Result<Served> {
    let v = init.cli(bed, what, &["show", &a.id])?;
    let fail = |field: &str| Error::Check {
        check: format!("{what}: vdpa-blk's {field}"),
        reason: v.to_string(),
    };
    let stats = &v["vdpa"]["stats"];
    let queues = stats["queues"]
        .as_array()
        .ok_or_else(|| fail("per-queue statistics"))?;
    let requests = queues
        .iter()
        .map(|q| {
            q["requests"]
                .as_u64()
                .ok_or_else(|| fail("`requests` counters"))
        })
        .sum::<Result<u64>>()?;
    let refused = match stats.get("driver_ok_refused") {
        Some(Value::Null) => None,
        Some(Value::String(why)) => Some(why.clone()),
        _ => return Err(fail("driver_ok_refused")),
    };
    Ok(Served {
        requests,
        pid: v["vdpa"]["pid"].as_u64().ok_or_else(|| fail("pid"))?,
        queues: queues.len(),
        refused,
    })
}

fn steps_of(
    bed: &mut Bed,
    prepared: &Prepared,
    nested: &NestedVm,
    bins: &Binaries,
) -> Result<Report> {
    let mut report = Report {
        vmm: nested.vmm.version.clone(),
        ..Report::default()
    };
    let hostnqn = steps::prepare_stack(bed)?;
    let traddr = bed
        .nics(Role::Compute)?
        .first()
        .map(|n| n.storage_addr.clone())
        .ok_or_else(|| Error::Check {
            check: "the compute node has a link".into(),
            reason: "no NIC".into(),
        })?;

    // The storage node: nvmf-target, the compute node's host, vol1.
    let target = Target::configure(
        bed,
        &bins.nvmf_target.display().to_string(),
        &hostnqn,
        std::slice::from_ref(&traddr),
    )?;
    let (_target_daemon, _) = target.start(bed)?;
    let key = target.add_host(bed, &hostnqn)?;
    let (name, size) = VOLUME;
    target.create(bed, name, size)?;
    let storage_dev = target
        .converged(bed, &format!("{name} created"), &[name])?
        .pop()
        .map(|(_, dev)| dev)
        .ok_or_else(|| Error::Invalid(format!("no VF namespace for {name}")))?;
    let what = format!("volume show {name}");
    let shown = target.cli(bed, &what, &["volume", "show", name])?;
    let vol = Volume::of(&shown, &what)?;
    let nguid = vol.nguid.clone().ok_or_else(|| Error::Check {
        check: format!("{what} gives the NGUID"),
        reason: shown.to_string(),
    })?;

    // The compute node: the agent, vol1 in vhost-vdpa mode with two queues.
    let init = Initiator::configure(
        bed,
        &bins.nvmf_initiator.display().to_string(),
        &bins.vdpa_blk.display().to_string(),
    )?;
    let (_agent, _) = init.start(bed)?;
    let what = format!("attach {name} in vhost-vdpa mode with {QUEUES} queues");
    let path = format!("rdma:{traddr}:4420");
    let queues = QUEUES.to_string();
    let view = init.cli(
        bed,
        &what,
        &[
            "attach",
            &vol.nqn,
            "--path",
            &path,
            "--mode",
            "vhost-vdpa",
            "--dhchap-secret",
            &key,
            "--nguid",
            &nguid,
            "--queues",
            &queues,
        ],
    )?;
    let answered = [format!("rdma://{traddr}:4420")];
    let a = ready_view(&view, &vol.nqn, &nguid, Mode::VhostVdpa, &answered, &what)?;
    kernel_has(bed, &a, &vol.nqn, "the kernel holds the vhost-vdpa chain")?;
    report.attachment = a.id.clone();
    report.device = a.disk.clone();
    let snippet = view["snippets"]["qemu_fastest"]["command_line"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: format!("{what}: the answer has the fastest QEMU snippet"),
            reason: view["snippets"].to_string(),
        })?;
    check(
        snippet.contains(&format!("vhostdev=/dev/{}", a.disk)) && snippet.contains("share=on"),
        "the snippet names the device and shared guest memory",
        || snippet.clone(),
    )?;
    report.snippet = snippet.clone();
    // A VMM that drops the snippet's shared memory: refused, and the agent's health and
    // vdpa-blk's log say why.
    let sock = format!("{}/vdpa/{}.sock", state_dir(), a.id);
    let device_args: Vec<String> = view["snippets"]["qemu_fastest"]["device_args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    check(
        !device_args.is_empty(),
        "the fastest QEMU snippet has device arguments",
        || view["snippets"].to_string(),
    )?;
    let private = bed.step_env(
        Role::Compute,
        "vm",
        "a VMM with private guest memory (the snippet's device, not its memory): refused",
        &with_lib(include_str!("sh/vm_private_memory.sh")),
        &with_vmm(
            nested,
            &[
                ("DEVICE_ARGS", device_args.join(" ")),
                ("SOCK", sock.clone()),
                ("LOG", format!("{}/vdpa/{}.log", state_dir(), a.id)),
                ("WAIT_S", "300".to_string()),
            ],
        ),
        secs(400),
    )?;
    let warnings = steps::required(&private, "log_warnings", "the private-memory VMM")?;
    check(
        warnings.parse::<u64>().is_ok_and(|n| n > 0),
        "vdpa-blk's log names private guest memory as the cause",
        || format!("{:?}", private.results),
    )?;
    let why = served(&init, bed, &a, "show after the private-memory VMM")?
        .refused
        .unwrap_or_default();
    check(
        why.contains("private anonymous memory") && why.contains("share=on"),
        "the agent's health names why the private-memory VMM's disk is dead",
        || format!("driver_ok_refused: {why:?}"),
    )?;
    report.private_memory_refusal = why;

    let pid_before = served(&init, bed, &a, "show before the VM")?.pid;

    // The VM, both boots, in the background: vdpa-blk is killed under its sustained I/O.
    let console = "/run/nested-console.log";
    let vm = bed.spawn_step(
        Role::Compute,
        "vm",
        "QEMU runs the snippet's VM: write, I/O under a vdpa-blk kill, reboot, read back",
        &with_lib(include_str!("sh/vm_run.sh")),
        &with_vmm(
            nested,
            &[
                ("KERNEL", prepared.kernel.vmlinuz.display().to_string()),
                ("INITRD", nested.initramfs.display().to_string()),
                ("SNIPPET", snippet),
                ("GUEST_RAM", GUEST_RAM.to_string()),
                ("SOCK", sock.clone()),
                ("CONSOLE", console.to_string()),
                ("WAIT_S", FIRST_LOOK_S.to_string()),
            ],
        ),
        secs(2 * FIRST_LOOK_S + 300),
    )?;
    let kill = bed.step_env(
        Role::Compute,
        "fault",
        &format!("kill -9 vdpa-blk (pid {pid_before}) under the VM's I/O"),
        &with_lib(include_str!("sh/vm_kill_daemon.sh")),
        &[
            ("PID", pid_before.to_string()),
            ("CONSOLE", console.to_string()),
            ("WAIT_S", FIRST_LOOK_S.to_string()),
        ],
        secs(FIRST_LOOK_S + 60),
    );
    let kill = match kill {
        Ok(k) => k,
        Err(e) => {
            // The VM's own failure says more (QEMU or the nested guest gone first).
            vm.finish()?;
            return Err(e);
        }
    };
    check(
        steps::required(&kill, "killed_during_io", "the kill")? == "yes",
        "vdpa-blk was killed while the VM's I/O went on",
        || format!("{:?}", kill.results),
    )?;
    let back = restarted(bed, &init, &a.id, pid_before)?;
    let pid_restarted = back["vdpa"]["pid"].as_u64().ok_or_else(|| Error::Check {
        check: "the agent names the vdpa-blk that took over".into(),
        reason: back.to_string(),
    })?;
    let vm = vm.finish()?;
    for r in &vm.results {
        if let Some(o) = r.as_object() {
            for (k, v) in o {
                if let Some(k) = k.strip_prefix("nested_") {
                    report.nested.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    let run_time = steps::result_with(&vm, "vm_seconds", "the VM's run time")?;
    report.vm_seconds = steps::count(&run_time, "vm_seconds").ok_or_else(|| Error::Check {
        check: "the VM's run time is a number of seconds".into(),
        reason: run_time.to_string(),
    })?;
    // Zero copy: the daemon mapped QEMU's own guest memory file, writable.
    let memfd = steps::result_with(&vm, "vm_memfd_ino", "QEMU's guest memory file")?;
    let file = steps::count(&memfd, "vm_memfd_dev")
        .zip(steps::count(&memfd, "vm_memfd_ino"))
        .ok_or_else(|| Error::Check {
            check: "QEMU's guest memory file has a device and an inode number".into(),
            reason: memfd.to_string(),
        })?;
    let maps = steps::result_with(&vm, "mappings", "the daemon's mappings")?;
    let ours = |m: &Value| steps::count(m, "dev").zip(steps::count(m, "ino")) == Some(file);
    check(
        maps["mappings"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| ours(m) && m["writable"] == true)),
        "zero copy: vdpa-blk maps the VM's own guest memory file",
        || format!("QEMU's memfd {memfd}, vdpa-blk maps {maps}"),
    )?;
    let written = nested_value(&report, "boot1_written_md5")?;
    let read = nested_value(&report, "boot2_read_md5")?;
    check(
        written == read,
        "the second boot reads what the first wrote",
        || format!("{:?}", report.nested),
    )?;
    for b in ["boot1_queues", "boot2_queues"] {
        check(
            nested_value(&report, b)? == "1",
            "the nested guest (one vCPU) drives one of the two queues",
            || format!("{:?}", report.nested),
        )?;
    }

    // The bytes are on the VF namespace, and vdpa-blk served the VM without a restart.
    report.storage_md5 = steps::checksums(
        bed,
        Role::Storage,
        "the VM's region on the VF namespace",
        &storage_dev,
        &[("region", 0, REGION_MIB)],
    )?
    .pop()
    .unwrap_or_default();
    check(
        report.storage_md5 == written,
        "the VM's bytes are on the storage node's VF namespace",
        || format!("VF namespace {}, VM wrote {written}", report.storage_md5),
    )?;
    let after = served(&init, bed, &a, "show after the VM")?;
    report.requests = after.requests;
    report.pids = (pid_before, pid_restarted, after.pid);
    check(
        after.requests > 0 && after.pid == pid_restarted,
        "the vdpa-blk that took over served the rest of the VM, its reboot included, without a restart",
        || format!("{after:?}, pids {:?}", report.pids),
    )?;
    check(
        after.queues == usize::from(QUEUES),
        &format!("vdpa-blk offers {QUEUES} queues while the VM drove one"),
        || format!("{after:?}"),
    )?;
    check(
        after.refused.is_none(),
        "the refusal is gone once a VMM with shared memory drove the device",
        || format!("{after:?}"),
    )?;
    let rounds = nested_value(&report, "boot1_io_rounds")?;
    check(
        rounds.parse::<u64>().is_ok_and(|n| n > 0),
        "the VM's I/O rounds across the kill all read back what they wrote",
        || format!("{:?}", report.nested),
    )?;

    report
        .teardown
        .push(detach_leaves_nothing(bed, &init, &a, &vol.nqn)?);
    Ok(report)
}
