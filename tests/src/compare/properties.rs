//! The datapath comparison table: per path, the properties a team weighs when it picks one
//! (latency, speed, live migration, whether the guest needs only a virtio driver, vendor
//! lock-in, host CPU), each cell either measured in this run or a documented property of the
//! path, and saying which, with its source. The documented properties are explained in the
//! README's "Datapaths compared" section, which is their source.

use serde::Serialize;

use super::markdown::{iops, us};
use super::{Report, StoragePath};

/// The profile the latency column reads (p50 at queue depth 1).
pub const LATENCY_PROFILE: &str = "lat-randread-4k-qd1";
/// The profile the speed and CPU columns read (4 KiB random reads, 32 in flight).
pub const SPEED_PROFILE: &str = "randread-4k-qd32";

/// Where the documented properties are explained.
const DOCUMENTED: &str = "documented: README.md, Datapaths compared";

/// One path's row: (column, value, source) in column order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub path: StoragePath,
    pub cells: Vec<(String, String, String)>,
}

/// The table's rows, one per path of the report, in its order.
pub fn rows(r: &Report) -> Vec<Row> {
    r.paths
        .iter()
        .map(|&path| Row {
            path,
            cells: vec![
                cell("latency", latency(r, path)),
                cell("speed", speed(r, path)),
                cell("live migration", documented(live_migration(path))),
                cell("guest needs only virtio", documented(virtio_only(path))),
                cell("vendor lock-in", documented(lock_in(path))),
                cell("host CPU", host_cpu(r, path)),
            ],
        })
        .collect()
}

fn cell(column: &str, (value, source): (String, String)) -> (String, String, String) {
    (column.to_string(), value, source)
}

fn documented(value: &str) -> (String, String) {
    (value.to_string(), DOCUMENTED.to_string())
}

fn not_measured(profile: &str) -> (String, String) {
    (
        "not measured".to_string(),
        format!("profile {profile} was not in this run"),
    )
}

fn latency(r: &Report, path: StoragePath) -> (String, String) {
    match r.cell(path, LATENCY_PROFILE) {
        Some(c) => (
            format!(
                "{} us p50, {} us p99",
                us(c.median.p50_us),
                us(c.median.p99_us)
            ),
            format!("measured: {LATENCY_PROFILE}, completion latency"),
        ),
        None => not_measured(LATENCY_PROFILE),
    }
}

fn speed(r: &Report, path: StoragePath) -> (String, String) {
    match r.cell(path, SPEED_PROFILE) {
        Some(c) => {
            let vs = match (path, c.median.vs_nvme_rdma) {
                (StoragePath::NvmeRdma, _) => " (the fabric baseline)".to_string(),
                (_, Some(x)) => format!(" ({x:.2}x nvme-rdma)"),
                (_, None) => String::new(),
            };
            (
                format!("{} IOPS{vs}", iops(c.median.iops)),
                format!("measured: {SPEED_PROFILE}, IOPS"),
            )
        }
        None => not_measured(SPEED_PROFILE),
    }
}

fn host_cpu(r: &Report, path: StoragePath) -> (String, String) {
    let node = match path {
        StoragePath::Local => "storage node",
        _ => "compute node",
    };
    match r.cell(path, SPEED_PROFILE) {
        Some(c) => {
            let node_us = c
                .median
                .node_cpu_us_per_io
                .map_or("-".to_string(), |x| format!("{} us", us(x)));
            let value = match c.median.daemon_cpu_us_per_io {
                Some(d) => format!(
                    "{node_us} per I/O on the {node}, {} us of it the daemon's",
                    us(d)
                ),
                None => format!("{node_us} per I/O on the {node}, no daemon"),
            };
            (
                value,
                format!("measured: {SPEED_PROFILE}, /proc/stat and the daemons' /proc/PID/stat"),
            )
        }
        None => not_measured(SPEED_PROFILE),
    }
}

/// Whether a VM on this path can be live-migrated.
fn live_migration(path: StoragePath) -> &'static str {
    match path {
        StoragePath::Local => "no: a VM gets the VF through VFIO, whose device state does not migrate",
        StoragePath::NvmeRdma => {
            "yes, through the VMM's own emulated disk over the host device, with the volume attached at the destination"
        }
        StoragePath::VdpaBlkVirtio => "not for VMs: a host disk, for containers",
        StoragePath::VdpaBlkVhost | StoragePath::QsdVduse => {
            "yes with QEMU's virtio-blk-vhost-vdpa blockdev (libblkio); no with vhost-vdpa-device-pci (VDUSE cannot suspend)"
        }
    }
}

/// Whether the guest needs only a virtio driver.
fn virtio_only(path: StoragePath) -> &'static str {
    match path {
        StoragePath::Local => "no: the guest runs the NVMe driver on the VF",
        StoragePath::NvmeRdma => "yes, when the VMM emulates virtio-blk (its CPU in every request)",
        StoragePath::VdpaBlkVirtio => "n/a: the host's virtio_blk driver; containers need none",
        StoragePath::VdpaBlkVhost | StoragePath::QsdVduse => "yes: virtio-blk",
    }
}

/// What ties the path to a vendor.
fn lock_in(path: StoragePath) -> &'static str {
    match path {
        StoragePath::Local => {
            "a drive with SR-IOV and NVMe virtualization management (standard NVMe, not every drive has it)"
        }
        StoragePath::NvmeRdma => "none: NVMe-oF over RoCE, the kernel's host",
        StoragePath::VdpaBlkVirtio | StoragePath::VdpaBlkVhost => {
            "none: software vDPA (VDUSE), any RDMA NIC"
        }
        StoragePath::QsdVduse => "none: software vDPA (VDUSE), QEMU's daemon",
    }
}
