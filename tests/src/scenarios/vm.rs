//! A real VM on an attached volume, in the pair topology with both daemons running:
//! - `nvmf-target` exports `vol1`; `nvmf-initiator` attaches it in vhost-vdpa mode with two
//!   queues (what a multi-queue attach gives a VM);
//! - a VMM that keeps the snippet's device but not its shared memory (private guest RAM) is
//!   refused at DRIVER_OK, and both vdpa-blk's log and the agent's `show`
//!   (`driver_ok_refused`) name private memory as the cause;
//! - the nested VMM (bookworm-backports' QEMU 10.0, [`crate::vmm`]) runs in the compute guest
//!   with exactly the attach answer's fastest QEMU snippet (`vhost-vdpa-device-pci` and the
//!   shared memfd guest memory), plus a kernel, the nested initramfs, a serial console, a
//!   control port and the compute guest's root over 9p (for fio);
//! - the nested guest (one vCPU, so its virtio_blk drives one of the two queues, as SeaBIOS
//!   does before it) writes 4 MiB and reads them back, then keeps 1 MiB write-and-compare
//!   rounds going while vdpa-blk is killed with -9 under them (the agent starts one with
//!   `--reconnect`) and then while the only path is cut for 15 s (the rounds stall, then go on
//!   verified), until the host says stop; it reboots (the device is reset and driven again
//!   through VDUSE by the same vdpa-blk), reads the 4 MiB back again, runs a fio job and
//!   powers off;
//! - while it runs, vdpa-blk maps QEMU's own guest memory file (zero copy shown, not claimed);
//!   afterwards the bytes are on the storage node's VF namespace, the agent's statistics show
//!   one restart and requests served by the vdpa-blk that took over (the same pid from the
//!   restart to the end: the reboot did not restart it), and a detach leaves nothing;
//! - the migratable VMM (trixie's QEMU with libblkio, [`crate::vmm`]) then runs the attach
//!   answer's migratable snippet (QEMU's own virtio-blk-pci over libblkio's
//!   `virtio-blk-vhost-vdpa` driver) on the same device for one boot that writes and reads back;
//!   the same vdpa-blk maps that QEMU's memfd and serves it, and its bytes are on the VF
//!   namespace;
//! - the nested guest's fio figures are set next to the same job's on the raw nvme-rdma device
//!   and through virtio_vdpa (the volume attached again in that mode, then detached): under
//!   emulation only the ratios mean something.

use std::time::Duration;

use serde_json::Value;

use super::compare::{profile_dir, run_profile, ProfileRun};
use super::nvmf_initiator::{
    detach_leaves_nothing, kernel_has, restarted, state_dir, Attached, Binaries, Initiator, Mode,
};
use super::nvmf_target::Target;
use super::steps::{self, check, secs, with_lib};
use crate::bed::{Bed, BedParams, Role, StepResult, Topology};
use crate::error::{Error, Result};
use crate::fio::{self, FioFigures};
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
/// The control port's FIFOs (`CTL.in`, `CTL.out`): the host tells the nested guest's I/O
/// rounds to stop through them.
const CTL: &str = "/run/nested-ctl";
/// How long the only path is cut under the VM's I/O (far below the agent's ctrl_loss_tmo).
const CUT: Duration = Duration::from_secs(15);
/// The fio job the nested guest runs, and the compute node after it on the raw nvme-rdma
/// device and through virtio_vdpa (`fio-profiles/`), with its RUNTIME and SIZE.
const FIO_JOB: &str = "randread-4k-qd32.fio";
const FIO_RUNTIME_S: u32 = 20;
const FIO_SIZE: &str = "64M";

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
    /// Whether the migratable snippet can run on that VMM, and why not ([`crate::vmm`]).
    pub migratable: String,
    /// The migratable snippet's VM, on the migratable VMM.
    pub migratable_vm: MigratableVm,
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
    /// The nested guest's I/O rounds under the faults.
    pub rounds: Rounds,
    /// The same fio job in the nested VM, on the raw nvme-rdma device and through virtio_vdpa
    /// (in that order).
    pub figures: Vec<(String, FioFigures)>,
    pub teardown: Vec<String>,
}

/// The nested guest's I/O rounds (1 MiB written and read back) as the host counted them.
#[derive(Debug, Clone, Default)]
pub struct Rounds {
    /// Rounds completed when the agent had restarted vdpa-blk, when the path was cut, when it
    /// was restored.
    pub at_restart: usize,
    pub at_cut: usize,
    pub at_restore: usize,
    /// Each round's duration, seconds, up to a round that began after the restore.
    pub seconds: Vec<u64>,
}

impl Report {
    /// The fio figures as a table, with each row's IOPS against the raw nvme-rdma device's.
    pub fn figures_table(&self) -> String {
        let raw = self
            .figures
            .iter()
            .find(|(d, _)| d.starts_with("raw"))
            .map(|(_, f)| f.iops);
        let mut s = fio::table(&self.figures);
        if let Some(raw) = raw.filter(|r| *r > 0.0) {
            for (d, f) in &self.figures {
                s.push_str(&format!("{d}: {:.2}x raw IOPS\n", f.iops / raw));
            }
        }
        s
    }
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
        bed.progress().note(&r.figures_table());
        bed.progress().note(&r.migratable);
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
        migratable: nested.vmm.migratable_note(),
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
    let vol = target.exported(bed, name, &key)?;

    // The compute node: the agent, vol1 in vhost-vdpa mode with two queues.
    let init = Initiator::configure(
        bed,
        &bins.nvmf_initiator.display().to_string(),
        &bins.vdpa_blk.display().to_string(),
    )?;
    let (_agent, _) = init.start(bed)?;
    let what = format!("attach {name} in vhost-vdpa mode with {QUEUES} queues");
    let (view, a) = init.attach_one_path(bed, &vol, &traddr, Mode::VhostVdpa, QUEUES, &what)?;
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

    // The VM, both boots, in the background: vdpa-blk is killed, then the only path cut,
    // under its sustained I/O.
    let console = "/run/nested-console.log";
    let fio_job = profile_dir().join(FIO_JOB);
    let vm = bed.spawn_step(
        Role::Compute,
        "vm",
        "QEMU runs the snippet's VM: write, I/O under a vdpa-blk kill and a path cut, reboot, read back, fio",
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
                ("CTL", CTL.to_string()),
                ("FIO_JOB", fio_job.display().to_string()),
                ("FIO_RUNTIME", FIO_RUNTIME_S.to_string()),
                ("FIO_SIZE", FIO_SIZE.to_string()),
                ("WAIT_S", FIRST_LOOK_S.to_string()),
            ],
        ),
        secs(3 * FIRST_LOOK_S + 300),
    )?;
    let faults = faults_under_io(bed, &init, &a, console, pid_before, &mut report);
    let pid_restarted = match faults {
        Ok(pid) => pid,
        Err(e) => {
            // The VM's own failure says more (QEMU or the nested guest gone first). Either way
            // its I/O rounds must end: they wait for the host's stop.
            let _ = stop_io(bed);
            vm.finish()?;
            return Err(e);
        }
    };
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
    maps_vm_memory(&vm, "the VM")?;
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

    // The migratable snippet on the migratable VMM, same attachment, same vdpa-blk.
    report.migratable_vm = migratable_vm(bed, prepared, nested, &init, &a, &view, &storage_dev)?;

    // The nested guest's fio, next to the same job on the compute node: the raw nvme-rdma
    // device, then the volume through virtio_vdpa (attached once the VM's attachment is gone).
    let nested_fio = steps::fio_figures(&vm, "the nested guest's fio")?;
    report.figures.push((
        format!("nested VM /dev/vda ({}, vhost-vdpa)", a.disk),
        nested_fio,
    ));
    let raw = fio_on(
        bed,
        &a.backing,
        "the nested guest's fio job on the raw nvme-rdma device",
    )?;
    report
        .figures
        .push((format!("raw nvme-rdma /dev/{}", a.backing), raw));
    report
        .teardown
        .push(detach_leaves_nothing(bed, &init, &a, &vol.nqn)?);
    let what = format!("attach {name} in virtio-vdpa mode");
    let (_, v) = init.attach_one_path(bed, &vol, &traddr, Mode::VirtioVdpa, 1, &what)?;
    let virtio = fio_on(
        bed,
        &v.disk,
        "the nested guest's fio job through virtio_vdpa",
    )?;
    report
        .figures
        .push((format!("virtio_vdpa /dev/{}", v.disk), virtio));
    report
        .teardown
        .push(detach_leaves_nothing(bed, &init, &v, &vol.nqn)?);
    Ok(report)
}

/// What the VM on the migratable snippet showed.
#[derive(Debug, Clone, Default)]
pub struct MigratableVm {
    /// The migratable VMM's version line.
    pub vmm: String,
    pub snippet: String,
    /// The md5 of the region the nested guest wrote and read back, and the VF namespace's.
    pub written_md5: String,
    pub storage_md5: String,
    /// Requests vdpa-blk served for it.
    pub requests: u64,
    /// The VM's run time, seconds.
    pub seconds: u64,
}

/// The attach answer's migratable snippet (QEMU's own virtio-blk front end over libblkio's
/// `virtio-blk-vhost-vdpa` driver) run by the migratable VMM ([`crate::vmm`]) on the same
/// attachment: one boot writes the region and reads it back; vdpa-blk (the same process)
/// maps the VM's memfd and serves its requests, and the bytes are on the VF namespace.
fn migratable_vm(
    bed: &mut Bed,
    prepared: &Prepared,
    nested: &NestedVm,
    init: &Initiator,
    a: &Attached,
    view: &Value,
    storage_dev: &str,
) -> Result<MigratableVm> {
    let vmm = &nested.migratable_vmm;
    let snippet = view["snippets"]["qemu_migratable"]["command_line"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Check {
            check: "the answer has the migratable QEMU snippet".into(),
            reason: view["snippets"].to_string(),
        })?;
    check(
        snippet.contains(&format!(
            "driver={},path=/dev/{}",
            crate::vmm::MIGRATABLE_DRIVER,
            a.disk
        )) && snippet.contains("share=on"),
        "the migratable snippet names libblkio's driver on the device and shared guest memory",
        || snippet.clone(),
    )?;
    let before = served(init, bed, a, "show before the migratable VM")?;
    let sock = format!("{}/vdpa/{}.sock", state_dir(), a.id);
    let mut env = vmm.script_env();
    env.extend([
        ("KERNEL", prepared.kernel.vmlinuz.display().to_string()),
        ("INITRD", nested.initramfs.display().to_string()),
        ("SNIPPET", snippet.clone()),
        ("GUEST_RAM", GUEST_RAM.to_string()),
        ("SOCK", sock),
        ("CONSOLE", "/run/nested-migratable-console.log".to_string()),
        ("CTL", CTL.to_string()),
        ("WAIT_S", FIRST_LOOK_S.to_string()),
        ("ONE_BOOT", "1".to_string()),
    ]);
    let vm = bed.step_env(
        Role::Compute,
        "vm",
        &format!(
            "{} runs the migratable snippet's VM: write, read back",
            vmm.version
        ),
        &with_lib(include_str!("sh/vm_run.sh")),
        &env,
        secs(FIRST_LOOK_S + 300),
    )?;
    let nested_result = |key: &str| {
        steps::required(
            &vm,
            &format!("nested_{key}"),
            "the migratable VM's nested guest",
        )
    };
    let written = nested_result("boot1_written_md5")?;
    maps_vm_memory(&vm, "the migratable VM")?;
    let storage_md5 = steps::checksums(
        bed,
        Role::Storage,
        "the migratable VM's region on the VF namespace",
        storage_dev,
        &[("region", 0, REGION_MIB)],
    )?
    .pop()
    .unwrap_or_default();
    check(
        storage_md5 == written,
        "the migratable VM's bytes are on the storage node's VF namespace",
        || format!("VF namespace {storage_md5}, VM wrote {written}"),
    )?;
    let after = served(init, bed, a, "show after the migratable VM")?;
    check(
        after.pid == before.pid && after.requests > before.requests,
        "the same vdpa-blk served the migratable VM's requests",
        || format!("before {before:?}, after {after:?}"),
    )?;
    let run_time = steps::result_with(&vm, "vm_seconds", "the migratable VM's run time")?;
    Ok(MigratableVm {
        vmm: vmm.version.clone(),
        snippet,
        written_md5: written,
        storage_md5,
        requests: after.requests - before.requests,
        seconds: steps::count(&run_time, "vm_seconds").ok_or_else(|| Error::Check {
            check: "the migratable VM's run time is a number of seconds".into(),
            reason: run_time.to_string(),
        })?,
    })
}

/// Zero copy: the daemon maps the VM's own guest memory file, writable (`sh/vm_run.sh` reads
/// both while the VM runs).
fn maps_vm_memory(vm: &StepResult, which: &str) -> Result<()> {
    let memfd = steps::result_with(vm, "vm_memfd_ino", "QEMU's guest memory file")?;
    let file = steps::count(&memfd, "vm_memfd_dev")
        .zip(steps::count(&memfd, "vm_memfd_ino"))
        .ok_or_else(|| Error::Check {
            check: format!("{which}: QEMU's guest memory file has a device and an inode number"),
            reason: memfd.to_string(),
        })?;
    let maps = steps::result_with(vm, "mappings", "the daemon's mappings")?;
    let ours = |m: &Value| steps::count(m, "dev").zip(steps::count(m, "ino")) == Some(file);
    check(
        maps["mappings"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| ours(m) && m["writable"] == true)),
        &format!("zero copy: vdpa-blk maps {which}'s own guest memory file"),
        || format!("QEMU's memfd {memfd}, vdpa-blk maps {maps}"),
    )
}

/// The nested guest's fio job ([`FIO_JOB`]) on `/dev/{dev}` of the compute node.
fn fio_on(bed: &mut Bed, dev: &str, what: &str) -> Result<FioFigures> {
    let file = profile_dir().join(FIO_JOB);
    let target = format!("/dev/{dev}");
    let step = run_profile(
        bed,
        what,
        &ProfileRun {
            role: Role::Compute,
            tool: "fio",
            file: &file,
            target: &target,
            runtime_s: FIO_RUNTIME_S,
            size: FIO_SIZE,
            queues: 1,
            out: format!("/tmp/vm-fio-{dev}.json"),
            pids: &[],
            testbed: "",
        },
    )?;
    steps::fio_figures(&step, what)
}

/// Under the nested guest's I/O rounds: vdpa-blk killed with -9 (the agent starts one that
/// takes over), a whole round after that, the only path cut for [`CUT`] (the rounds stall, then
/// go on), a whole round after the restore; then the host tells the rounds to stop. Gives the
/// pid of the vdpa-blk that took over.
fn faults_under_io(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    console: &str,
    pid_before: u64,
    report: &mut Report,
) -> Result<u64> {
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
    )?;
    check(
        steps::required(&kill, "killed_during_io", "the kill")? == "yes",
        "vdpa-blk was killed while the VM's I/O went on",
        || format!("{:?}", kill.results),
    )?;
    let back = restarted(bed, init, &a.id, pid_before)?;
    let pid = back["vdpa"]["pid"].as_u64().ok_or_else(|| Error::Check {
        check: "the agent names the vdpa-blk that took over".into(),
        reason: back.to_string(),
    })?;
    let at_restart = rounds(bed, console, None)?.len();
    // The round in flight at the restart may have begun before the kill: wait for the next.
    rounds(bed, console, Some(at_restart + 1))?;
    let cut = bed.cut_link(Role::Compute, 0, CUT)?;
    let at_cut = rounds(bed, console, None)?.len();
    cut.join()?;
    let at_restore = rounds(bed, console, None)?.len();
    let seconds = rounds(bed, console, Some(at_restore + 1))?;
    stop_io(bed)?;
    let longest = seconds.get(at_cut..).and_then(|s| s.iter().max().copied());
    report.rounds = Rounds {
        at_restart,
        at_cut,
        at_restore,
        seconds,
    };
    check(
        longest.is_some_and(|l| l >= CUT.as_secs() / 2),
        "the VM's I/O stalled while its only path was cut, then went on",
        || format!("link down {}s; rounds {:?}", CUT.as_secs(), report.rounds),
    )?;
    Ok(pid)
}

/// The durations (seconds) of the nested guest's completed I/O rounds, once more than `after`
/// have completed (`None`: now).
fn rounds(bed: &mut Bed, console: &str, after: Option<usize>) -> Result<Vec<u64>> {
    let what = match after {
        Some(n) => format!("the VM's I/O completes more than {n} rounds"),
        None => "the VM's I/O rounds so far".to_string(),
    };
    let step = bed.step_env(
        Role::Compute,
        "fault",
        &what,
        &with_lib(include_str!("sh/vm_rounds.sh")),
        &[
            ("CONSOLE", console.to_string()),
            ("AFTER", after.map_or("-1".to_string(), |n| n.to_string())),
            ("WAIT_S", FIRST_LOOK_S.to_string()),
        ],
        secs(FIRST_LOOK_S + 60),
    )?;
    let listed = steps::required(&step, "round_seconds", &what)?;
    listed
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>().map_err(|e| Error::Check {
                check: format!("{what}: each round's seconds"),
                reason: format!("{listed:?}: {e}"),
            })
        })
        .collect()
}

/// Tells the nested guest's I/O rounds to stop (`sh/vm_stop_io.sh`).
fn stop_io(bed: &mut Bed) -> Result<()> {
    bed.step_env(
        Role::Compute,
        "vm",
        "tell the VM's I/O rounds to stop",
        include_str!("sh/vm_stop_io.sh"),
        &[("CTL", CTL.to_string())],
        secs(30),
    )
    .map(|_| ())
}
