//! The reference scenario, with stock tools only: carve a VF (virtualization management),
//! export its namespace with the kernel target over soft-RoCE, discover and connect from the
//! compute side with nvme-rdma, publish it through `qemu-storage-daemon --export
//! type=vduse-blk` and virtio_vdpa, run fio with crc32c verification on the resulting
//! /dev/vdX, and check on the storage side that the bytes landed in the VF's namespace.
//!
//! It proves the bed, and it is the baseline the project's own components are compared with.

use super::steps::{self, required, secs};
use crate::bed::{Bed, BedParams, Role, StepResult, Topology};
use crate::error::{Error, Result};
use crate::fio::{self, FioFigures};
use crate::setup::Prepared;

/// The exported subsystem.
pub const SUBSYSTEM_NQN: &str = "nqn.2026-11.io.testbed:reference-vol1";
/// The VF carved (secondary controller id = VF number on QEMU's controller).
const VF: u32 = 1;
/// The namespace attached to the VF.
const NSID: u32 = 1;
/// The vdpa / VDUSE device name.
const VDPA_NAME: &str = "refvol1";

/// A deliberate breakage, to prove that failures are caught and named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The compute node connects to a subsystem NQN the target does not export.
    WrongNqn,
    /// A kernel module the preparation step loads does not exist.
    MissingModule,
    /// The guests are told to run an agent that does not exist, so they never come up.
    NoBoot,
}

/// Options of a reference run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub fault: Option<Fault>,
    /// Also measure 4k random reads on each layer for the result table.
    pub measure: bool,
}

/// What a successful run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub topology: Topology,
    /// The fio verification job (randwrite with crc32c, read back).
    pub verify: FioFigures,
    /// Measurements: (layer description, figures).
    pub table: Vec<(String, FioFigures)>,
    /// The VF, its namespace block device on the storage side, the nvme-rdma block device
    /// and the virtio block device on the compute side.
    pub vf: String,
    pub storage_dev: String,
    pub fabric_dev: String,
    pub virtio_dev: String,
}

/// Runs the scenario in a new bed with `params` and tears the bed down, whatever happens.
pub fn run(prepared: &Prepared, params: &BedParams, opts: &Options) -> Result<Report> {
    let mut params = params.clone();
    if opts.fault == Some(Fault::NoBoot) {
        params.agent = "/nonexistent/testbed-agent".into();
        params.boot_timeout = secs(120);
    }
    let mut bed = Bed::start(prepared, &params, "reference")?;
    let report = steps(&mut bed, opts);
    if report.is_ok() {
        bed.progress().phase("done", "reference scenario passed");
    }
    bed.shutdown();
    report
}

fn steps(bed: &mut Bed, opts: &Options) -> Result<Report> {
    let topology = bed.topology();

    // Preparation: configfs, loopback, the modules each role needs.
    let mut storage_mods = steps::storage_modules(topology);
    if opts.fault == Some(Fault::MissingModule) {
        storage_mods.push_str(" testbed_no_such_module");
    }
    let compute_mods = format!(
        "{} vduse vdpa virtio_vdpa virtio_blk",
        steps::compute_modules(topology)
    );
    let hostnqn = steps::prepare(bed, &storage_mods, &compute_mods)?;

    // Carve VF 1: flexible queue and interrupt resources, online, namespace attached, bound.
    let (vf, storage_dev) = steps::carve(bed, VF, NSID)?;

    steps::network(bed)?;

    steps::export(bed, SUBSYSTEM_NQN, &hostnqn, &storage_dev)?;

    // Discover and connect.
    let connect_nqn = if opts.fault == Some(Fault::WrongNqn) {
        "nqn.2026-11.io.testbed:not-exported"
    } else {
        SUBSYSTEM_NQN
    };
    let fabric_dev = steps::connect(bed, SUBSYSTEM_NQN, connect_nqn)?;

    // Publish through VDUSE and virtio_vdpa.
    let publish = bed.step(
        Role::Compute,
        "publish",
        "qemu-storage-daemon vduse-blk export, vdpa dev add",
        &format!(
            r#"qemu-storage-daemon --daemonize --pidfile /run/qsd-{VDPA_NAME}.pid \
  --blockdev driver=host_device,node-name=vol,filename=/dev/{fabric_dev},cache.direct=on \
  --export type=vduse-blk,id=exp0,node-name=vol,name={VDPA_NAME},writable=on,num-queues=1
wait_for 30 /dev/vduse/{VDPA_NAME} test -e /dev/vduse/{VDPA_NAME}
vdpa dev add name {VDPA_NAME} mgmtdev vduse
wait_for 30 "a virtio block device" sh -c "ls /sys/bus/vdpa/devices/{VDPA_NAME}/virtio*/block/ | grep -q vd" || {{
  ls -lR /sys/bus/vdpa/devices/{VDPA_NAME}/ | head -40; exit 1; }}
vd=$(ls /sys/bus/vdpa/devices/{VDPA_NAME}/virtio*/block/)
wait_for 10 /dev/$vd test -b /dev/$vd
vdpa dev show
result vd "$vd"
"#
        ),
        secs(120),
    )?;
    let virtio_dev = required(&publish, "vd", "virtio block device")?;

    // fio with crc32c verification through the whole stack.
    let verify = bed.step(
        Role::Compute,
        "io",
        "fio randwrite 4k with crc32c verify on the virtio disk",
        &format!(
            r#"fio --name=verify --filename=/dev/{virtio_dev} --direct=1 --ioengine=libaio \
  --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify=crc32c --do_verify=1 \
  --verify_fatal=1 --randrepeat=0 --output-format=json --output=/tmp/fio-verify.json
fio_result /tmp/fio-verify.json
"#
        ),
        secs(600),
    )?;
    let verify = fio_of(&verify, "verify")?;

    // The bytes landed in the VF's namespace: compare the fio region and a fresh pattern.
    let written = bed.step(
        Role::Compute,
        "check",
        "write a pattern through the virtio disk, checksum",
        &format!(
            r#"head -c 4194304 /dev/urandom > /tmp/pattern
dd if=/tmp/pattern of=/dev/{virtio_dev} bs=1M seek=40 oflag=direct conv=fsync 2>/dev/null
result pattern "$(md5sum < /tmp/pattern | cut -d' ' -f1)" \
       fio_region "$(dd if=/dev/{virtio_dev} bs=1M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"#
        ),
        secs(120),
    )?;
    let landed = bed.step(
        Role::Storage,
        "check",
        "checksum the same ranges on the VF namespace",
        &format!(
            r#"result pattern "$(dd if=/dev/{storage_dev} bs=1M skip=40 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)" \
       fio_region "$(dd if=/dev/{storage_dev} bs=1M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"#
        ),
        secs(120),
    )?;
    for key in ["pattern", "fio_region"] {
        let a = required(&written, key, "compute-side checksum")?;
        let b = required(&landed, key, "storage-side checksum")?;
        if a != b {
            return Err(Error::Check {
                check: format!("bytes landed on the VF namespace ({key})"),
                reason: format!(
                    "md5 through /dev/{virtio_dev} is {a}, on /dev/{storage_dev} it is {b}"
                ),
            });
        }
    }
    bed.progress()
        .note("checksums match on the VF namespace (fio region and a 4 MiB pattern)");

    let mut table = Vec::new();
    if opts.measure {
        let job = |dev: &str| {
            format!(
                r#"fio --name=randread-4k-qd16 --filename=/dev/{dev} --direct=1 --ioengine=libaio \
  --rw=randread --bs=4k --iodepth=16 --size=32M --time_based --runtime=8 --ramp_time=1 \
  --readonly --output-format=json --output=/tmp/fio-{dev}.json
fio_result /tmp/fio-{dev}.json
"#
            )
        };
        let layers = [
            (Role::Storage, storage_dev.clone(), "VF namespace (PCIe)"),
            (Role::Compute, fabric_dev.clone(), "nvme-rdma over rxe"),
            (
                Role::Compute,
                virtio_dev.clone(),
                "qemu-storage-daemon vduse",
            ),
        ];
        for (role, dev, what) in layers {
            let r = bed.step(
                role,
                "measure",
                &format!("fio 4k randread QD16 on {what}"),
                &job(&dev),
                secs(120),
            )?;
            table.push((format!("{what} /dev/{dev}"), fio_of(&r, "measure")?));
        }
    }

    // Take it all down again and check nothing is left.
    bed.step(
        Role::Compute,
        "teardown",
        "remove the vdpa device, stop the export, disconnect",
        &format!(
            r#"vdpa dev del {VDPA_NAME}
kill $(cat /run/qsd-{VDPA_NAME}.pid)
wait_for 30 "VDUSE device removal" sh -c "! test -e /dev/vduse/{VDPA_NAME}"
nvme disconnect -n {SUBSYSTEM_NQN}
left=$(vdpa dev show)
[ -z "$left" ] || {{ echo "vdpa devices left: $left"; exit 1; }}
"#
        ),
        secs(60),
    )?;
    steps::unexport(bed, SUBSYSTEM_NQN, &hostnqn)?;

    Ok(Report {
        topology,
        verify,
        table,
        vf,
        storage_dev,
        fabric_dev,
        virtio_dev,
    })
}

fn fio_of(step: &StepResult, what: &str) -> Result<FioFigures> {
    let v = step
        .results
        .iter()
        .find_map(|r| r.get("fio"))
        .ok_or_else(|| Error::Check {
            check: what.to_string(),
            reason: "the step printed no fio result".into(),
        })?;
    let mut f = fio::from_value(v).map_err(|reason| Error::Check {
        check: what.to_string(),
        reason,
    })?;
    f.pop().ok_or_else(|| Error::Check {
        check: what.to_string(),
        reason: "fio reported no job".into(),
    })
}
