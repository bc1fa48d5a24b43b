//! The reference scenario, with stock tools only: carve a VF (virtualization management),
//! export its namespace with the kernel target over soft-RoCE, discover and connect from the
//! compute side with nvme-rdma, publish it through `qemu-storage-daemon --export
//! type=vduse-blk` and virtio_vdpa, run fio with crc32c verification on the resulting
//! /dev/vdX, and check on the storage side that the bytes landed in the VF's namespace.
//!
//! It proves the bed, and it is the baseline the project's own components are compared with.

use super::steps::{self, secs};
use crate::bed::{Bed, BedParams, Role, Topology};
use crate::error::{Error, Result};
use crate::fio::FioFigures;
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
    /// The compute node's kernel is crashed (sysrq `c`) under a step, so the failure must
    /// name the crash (what `testbed::kernel_crash` runs a scenario again for).
    KernelCrash,
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
    if opts.fault == Some(Fault::KernelCrash) {
        bed.step(
            Role::Compute,
            "fault",
            "crash the guest kernel",
            include_str!("sh/crash_kernel.sh"),
            secs(120),
        )?;
    }

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
    let virtio_dev = steps::qsd_start(bed, VDPA_NAME, &fabric_dev, 1, None)?;

    // fio with crc32c verification through the whole stack.
    let verify = steps::fio(
        bed,
        Role::Compute,
        "io",
        "fio randwrite 4k with crc32c verify on the virtio disk",
        &format!(
            "--name=verify --filename=/dev/{virtio_dev} --direct=1 --ioengine=libaio \
             --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify=crc32c --do_verify=1 \
             --verify_fatal=1 --randrepeat=0"
        ),
        "/tmp/fio-verify.json",
        secs(600),
    )?;

    // The bytes landed in the VF's namespace: compare the fio region and a fresh pattern. Each
    // read must succeed in full (two failed reads would otherwise hash alike).
    let written = bed.step_env(
        Role::Compute,
        "check",
        "write a pattern through the virtio disk, checksum",
        &steps::with_lib(include_str!("sh/reference_pattern.sh")),
        &[("DEV", virtio_dev.clone())],
        secs(120),
    )?;
    let landed = steps::checksums(
        bed,
        Role::Storage,
        "checksum the same ranges on the VF namespace",
        &storage_dev,
        &[("pattern", 40, 4), ("fio_region", 0, 32)],
    )?;
    for (key, b) in ["pattern", "fio_region"].into_iter().zip(&landed) {
        let a = steps::md5_result(&written, key, "compute-side checksum")?;
        if a != *b {
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
            let f = steps::fio(
                bed,
                role,
                "measure",
                &format!("fio 4k randread QD16 on {what}"),
                &format!(
                    "--name=randread-4k-qd16 --filename=/dev/{dev} --direct=1 \
                     --ioengine=libaio --rw=randread --bs=4k --iodepth=16 --size=32M \
                     --time_based --runtime=8 --ramp_time=1 --readonly"
                ),
                &format!("/tmp/fio-{dev}.json"),
                secs(120),
            )?;
            table.push((format!("{what} /dev/{dev}"), f));
        }
    }

    // Take it all down again and check nothing is left.
    steps::qsd_stop(bed, VDPA_NAME, &[])?;
    steps::disconnect(bed, SUBSYSTEM_NQN)?;
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
