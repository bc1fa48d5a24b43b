//! The comparison report of `testbed compare`: every storage path of the stack measured with
//! the same fio profiles in one run, side by side. This module is the data (what one run
//! measured) and the statistics over it (medians over rounds, ratios taken within a round);
//! [`markdown`], [`charts`] and [`properties`] render it, [`crate::scenarios::compare`]
//! measures it in the bed.
//!
//! Ratios are medians of per-round ratios, never ratios of medians: each round runs every path
//! back to back, and the emulated machine's speed drifts by tens of percent over minutes.

pub mod charts;
pub mod markdown;
pub mod properties;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fio::FioFigures;

/// A storage path of the stack, as the comparison names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoragePath {
    /// The VF's namespace through the kernel nvme driver on the storage node itself.
    Local,
    /// The same namespace through NVMe-oF RDMA: the kernel nvme-rdma host's block device on
    /// the compute node.
    NvmeRdma,
    /// `vdpa-blk` over the nvme-rdma device, attached by `nvmf-initiator` in virtio-vdpa mode:
    /// a virtio disk on the compute node (containers).
    VdpaBlkVirtio,
    /// `vdpa-blk` over the nvme-rdma device, attached in vhost-vdpa mode and driven by the
    /// `blkio` load generator as a VMM drives it (fd-backed buffers, zero copy).
    VdpaBlkVhost,
    /// `qemu-storage-daemon --export type=vduse-blk` over the nvme-rdma device, bound to
    /// virtio_vdpa: the userspace VDUSE device users would pick instead of vdpa-blk.
    QsdVduse,
}

impl StoragePath {
    /// Every path, in the report's order.
    pub const ALL: [StoragePath; 5] = [
        StoragePath::Local,
        StoragePath::NvmeRdma,
        StoragePath::VdpaBlkVirtio,
        StoragePath::VdpaBlkVhost,
        StoragePath::QsdVduse,
    ];

    /// The short name (command line, JSON, file names).
    pub fn id(self) -> &'static str {
        match self {
            StoragePath::Local => "local",
            StoragePath::NvmeRdma => "nvme-rdma",
            StoragePath::VdpaBlkVirtio => "vdpa-blk-virtio",
            StoragePath::VdpaBlkVhost => "vdpa-blk-vhost",
            StoragePath::QsdVduse => "qsd-vduse",
        }
    }

    /// The name in tables and charts.
    pub fn title(self) -> &'static str {
        match self {
            StoragePath::Local => "local VF namespace (storage node)",
            StoragePath::NvmeRdma => "nvme-rdma (compute node, raw)",
            StoragePath::VdpaBlkVirtio => "vdpa-blk, virtio_vdpa",
            StoragePath::VdpaBlkVhost => "vdpa-blk, vhost_vdpa (blkio)",
            StoragePath::QsdVduse => "qemu-storage-daemon vduse-blk",
        }
    }

    /// The path named `id`, or an error listing the names.
    pub fn parse(id: &str) -> Result<StoragePath, String> {
        StoragePath::ALL
            .into_iter()
            .find(|p| p.id() == id)
            .ok_or_else(|| {
                let names: Vec<&str> = StoragePath::ALL.iter().map(|p| p.id()).collect();
                format!("unknown path {id:?}: expected one of {}", names.join(", "))
            })
    }
}

/// What one profile on one path measured in one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// fio's (or the load generator's, in fio's format) figures.
    pub figures: FioFigures,
    /// CPU seconds the node running the load spent over the run, every CPU, all but idle and
    /// iowait (`/proc/stat`); the load generator's own included.
    pub node_cpu_s: f64,
    /// CPU seconds (user + system, every thread) of the path's daemons over the run; `None`
    /// for a path without one.
    pub daemon_cpu_s: Option<f64>,
}

impl Sample {
    /// The node's CPU microseconds per I/O.
    pub fn node_cpu_us_per_io(&self) -> Option<f64> {
        per_io(self.node_cpu_s, self.figures.ios)
    }

    /// The daemons' CPU microseconds per I/O.
    pub fn daemon_cpu_us_per_io(&self) -> Option<f64> {
        per_io(self.daemon_cpu_s?, self.figures.ios)
    }
}

fn per_io(cpu_s: f64, ios: u64) -> Option<f64> {
    (ios > 0).then(|| cpu_s * 1e6 / ios as f64)
}

/// One profile on one path: the samples of every round, and their medians.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub path: StoragePath,
    pub profile: String,
    /// One per round, in round order.
    pub rounds: Vec<Sample>,
    pub median: Summary,
}

/// The medians over a cell's rounds, and its ratios to the baselines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub iops: f64,
    pub bw_mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Read and write IOPS apart, for a mixed profile (medians).
    pub read_iops: Option<f64>,
    pub write_iops: Option<f64>,
    pub node_cpu_us_per_io: Option<f64>,
    pub daemon_cpu_us_per_io: Option<f64>,
    /// IOPS over the nvme-rdma path's, median of the rounds' ratios (None on that path or
    /// when it was not measured).
    pub vs_nvme_rdma: Option<f64>,
    /// IOPS over the local path's, likewise.
    pub vs_local: Option<f64>,
}

/// How a run was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// UTC, RFC 3339.
    pub date: String,
    /// The host: CPU model and count, memory, kernel.
    pub machine: String,
    /// The command that made it.
    pub command: String,
    /// Smoke mode (a few seconds per profile, figures only checked to be there).
    pub smoke: bool,
    pub runtime_s: u32,
    /// The `SIZE` each profile got.
    pub size: String,
    /// The `QUEUES` each profile got (and the virtqueues of every VDUSE device).
    pub queues: u16,
    pub rounds: u32,
    /// The bed: topology, guests' vCPUs and memory, links, emulation.
    pub bed: String,
    /// The binaries' cargo profile (release or dev).
    pub build_profile: String,
    /// Seconds the whole run took, boot included.
    pub wall_s: f64,
}

/// A whole comparison run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run: RunInfo,
    /// In the order measured and shown.
    pub paths: Vec<StoragePath>,
    /// Profile names (the fio job names), in order.
    pub profiles: Vec<String>,
    /// Every (path, profile) pair: path-major, in `paths` then `profiles` order.
    pub cells: Vec<Cell>,
    /// The datapath comparison table.
    pub properties: Vec<properties::Row>,
}

impl Report {
    /// Builds the cells from every round's samples, `samples[round][path][profile]`, with
    /// their medians and ratios; `None` is refused (every number must be there).
    pub fn build(
        run: RunInfo,
        paths: Vec<StoragePath>,
        profiles: Vec<String>,
        samples: &[Vec<Vec<Sample>>],
    ) -> Result<Report, String> {
        for (r, round) in samples.iter().enumerate() {
            if round.len() != paths.len() || round.iter().any(|p| p.len() != profiles.len()) {
                return Err(format!(
                    "round {}: expected {} paths x {} profiles of samples",
                    r + 1,
                    paths.len(),
                    profiles.len()
                ));
            }
        }
        if samples.is_empty() {
            return Err("no round measured".into());
        }
        let index = |p: StoragePath| paths.iter().position(|&x| x == p);
        let (raw, local) = (index(StoragePath::NvmeRdma), index(StoragePath::Local));
        let mut cells = Vec::new();
        for (pi, &path) in paths.iter().enumerate() {
            for (ji, profile) in profiles.iter().enumerate() {
                let rounds: Vec<Sample> = samples.iter().map(|r| r[pi][ji].clone()).collect();
                let ratio_to = |base: Option<usize>| -> Option<f64> {
                    let b = base.filter(|&b| b != pi)?;
                    let v: Vec<f64> = samples
                        .iter()
                        .filter_map(|r| {
                            let (x, y) = (r[pi][ji].figures.iops, r[b][ji].figures.iops);
                            (y > 0.0).then(|| x / y)
                        })
                        .collect();
                    median_of(v)
                };
                let med = |get: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
                    median_of(rounds.iter().filter_map(get).collect())
                };
                let need = |get: &dyn Fn(&Sample) -> Option<f64>| med(get).unwrap_or(0.0);
                let median = Summary {
                    iops: need(&|s| Some(s.figures.iops)),
                    bw_mib_s: need(&|s| Some(s.figures.bw_mib_s)),
                    p50_us: need(&|s| Some(s.figures.p50_us)),
                    p99_us: need(&|s| Some(s.figures.p99_us)),
                    p999_us: need(&|s| Some(s.figures.p999_us)),
                    read_iops: med(&|s| s.figures.read.as_ref().map(|d| d.iops)),
                    write_iops: med(&|s| s.figures.write.as_ref().map(|d| d.iops)),
                    node_cpu_us_per_io: med(&|s| s.node_cpu_us_per_io()),
                    daemon_cpu_us_per_io: med(&|s| s.daemon_cpu_us_per_io()),
                    vs_nvme_rdma: ratio_to(raw),
                    vs_local: ratio_to(local),
                };
                cells.push(Cell {
                    path,
                    profile: profile.clone(),
                    rounds,
                    median,
                });
            }
        }
        let mut report = Report {
            run,
            paths,
            profiles,
            cells,
            properties: Vec::new(),
        };
        report.properties = properties::rows(&report);
        Ok(report)
    }

    /// The cell of `path` and `profile`.
    pub fn cell(&self, path: StoragePath, profile: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.path == path && c.profile == profile)
    }

    /// Every number a run must have, checked: each sample did I/O and has its rates and
    /// latencies, CPU time, and a daemon's CPU time when its path has a daemon; each ratio to
    /// a measured baseline is there. The list of what is missing, when anything is.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.cells {
            let at = format!("{} / {}", c.path.id(), c.profile);
            for (r, s) in c.rounds.iter().enumerate() {
                let f = &s.figures;
                for (name, v) in [
                    ("IOPS", f.iops),
                    ("bandwidth", f.bw_mib_s),
                    ("p50", f.p50_us),
                    ("p99", f.p99_us),
                    ("p99.9", f.p999_us),
                ] {
                    if !(v.is_finite() && v > 0.0) {
                        out.push(format!("{at}, round {}: {name} is {v}", r + 1));
                    }
                }
                if f.ios == 0 {
                    out.push(format!("{at}, round {}: no I/O counted", r + 1));
                }
                if !(s.node_cpu_s.is_finite() && s.node_cpu_s > 0.0) {
                    out.push(format!(
                        "{at}, round {}: node CPU time is {}",
                        r + 1,
                        s.node_cpu_s
                    ));
                }
                match (has_daemon(c.path), s.daemon_cpu_s) {
                    (true, None) => out.push(format!("{at}, round {}: no daemon CPU time", r + 1)),
                    (true, Some(v)) if !(v.is_finite() && v >= 0.0) => {
                        out.push(format!("{at}, round {}: daemon CPU time is {v}", r + 1))
                    }
                    (false, Some(_)) => out.push(format!(
                        "{at}, round {}: a daemon CPU time without a daemon",
                        r + 1
                    )),
                    _ => {}
                }
            }
            for (base, v) in [
                (StoragePath::NvmeRdma, c.median.vs_nvme_rdma),
                (StoragePath::Local, c.median.vs_local),
            ] {
                if c.path != base && self.paths.contains(&base) && v.is_none() {
                    out.push(format!("{at}: no ratio to {}", base.id()));
                }
            }
        }
        out
    }

    /// Writes `report.json`, `report.md` and the SVG charts into `dir` (made if missing);
    /// the files written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut written = Vec::new();
        let mut put = |name: &str, text: String| -> Result<(), String> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            written.push(path);
            Ok(())
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| format!("report JSON: {e}"))?;
        put("report.json", json + "\n")?;
        put("report.md", markdown::report(self))?;
        for (name, svg) in charts::all(self)? {
            put(&name, svg)?;
        }
        Ok(written)
    }
}

/// Whether a path runs a userspace daemon on the compute node whose CPU time is counted.
pub fn has_daemon(path: StoragePath) -> bool {
    matches!(
        path,
        StoragePath::VdpaBlkVirtio | StoragePath::VdpaBlkVhost | StoragePath::QsdVduse
    )
}

/// The median (the mean of the middle two for an even count); `None` for none.
pub fn median_of(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests;
