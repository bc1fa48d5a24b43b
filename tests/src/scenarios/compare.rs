//! `testbed compare`: every storage path of the stack measured with the profiles of
//! `fio-profiles/`, side by side, in the pair bed with the project's own daemons:
//!
//! - on the storage node, `nvmf-target` exports two volumes (each a namespace on its own VF)
//!   to the compute node, over NVMe-oF RDMA with DH-HMAC-CHAP;
//! - on the compute node, `nvmf-initiator` attaches `vol1` in virtio-vdpa mode (a `/dev/vdX`)
//!   and `vol2` in vhost-vdpa mode (a `/dev/vhost-vdpa-N`), and `qemu-storage-daemon` exports
//!   `vol1`'s nvme-rdma device as a VDUSE block device bound to virtio_vdpa;
//! - each profile then runs on each path ([`StoragePath`]): fio on `vol1`'s VF namespace on
//!   the storage node (local), on its nvme-rdma device (raw), on vdpa-blk's virtio disk and on
//!   qemu-storage-daemon's; the blkio load generator (`testbed blkio-load`, as a VMM drives
//!   the device) on `vol2`'s vhost-vdpa device.
//!
//! Every daemon runs for the whole run; each round runs every path of a profile back to back,
//! in an order that rotates, because the emulated machine's speed drifts over minutes. Per run
//! the node's CPU time (`/proc/stat`) and the path's daemons' (`/proc/PID/stat`) are read
//! before and after, in the same step (`sh/compare_measure.sh`). Figures, not a test: the run
//! fails only when a number is missing or a step fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::nvmf_initiator::{Attached, Binaries, Initiator, Mode};
use super::nvmf_target::Target;
use super::steps::{self, secs};
use crate::bed::{Bed, BedParams, Role, StepResult, Topology};
use crate::compare::{Report, RunInfo, Sample, StoragePath};
use crate::error::{Error, Result};
use crate::fio_profile;
use crate::setup::Prepared;

/// The volumes: `vol1` (local, raw, virtio-vdpa, qemu-storage-daemon) and `vol2` (vhost-vdpa).
const VOLUMES: [(&str, &str); 2] = [("vol1", "256M"), ("vol2", "256M")];
/// qemu-storage-daemon's vdpa device.
const QSD: &str = "cmp-qsd";
/// What a profile's run may take beyond its runtime (fio's start and the step's round trips,
/// under emulation) before its step is cancelled.
const STEP_SLACK: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct CompareParams {
    /// The job files, in order (`fio-profiles/*.fio`).
    pub profiles: Vec<PathBuf>,
    /// The paths, in order.
    pub paths: Vec<StoragePath>,
    /// `RUNTIME` of the time-based profiles, seconds.
    pub runtime_s: u32,
    /// `SIZE` of the time-based profiles (a fio size, e.g. `128M`).
    pub size: String,
    /// `SIZE` of the profiles that are not time based (they write the whole region once).
    pub once_size: String,
    /// `QUEUES`: jobs of the multiqueue profile, and the queues of every VDUSE device.
    pub queues: u16,
    pub rounds: u32,
    /// Smoke mode: said in the report.
    pub smoke: bool,
    /// The command line, for the report.
    pub command: String,
}

impl CompareParams {
    /// The full run's defaults: every profile of `dir`, every path, 5 s, 3 rounds.
    pub fn full(dir: &Path) -> Result<CompareParams> {
        Ok(CompareParams {
            profiles: profiles_in(dir)?,
            paths: StoragePath::ALL.to_vec(),
            runtime_s: 5,
            size: "128M".into(),
            once_size: "16M".into(),
            queues: 2,
            rounds: 3,
            smoke: false,
            command: String::new(),
        })
    }

    /// Smoke mode: every profile for 2 s on `paths`, one round.
    pub fn smoke(dir: &Path, paths: Vec<StoragePath>) -> Result<CompareParams> {
        Ok(CompareParams {
            paths,
            runtime_s: 2,
            size: "64M".into(),
            once_size: "4M".into(),
            rounds: 1,
            smoke: true,
            ..CompareParams::full(dir)?
        })
    }

    /// Refuses what the run cannot do, naming it.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.profiles.is_empty() {
            return bad("no fio profile to run".into());
        }
        if self.paths.is_empty() {
            return bad("no path to measure".into());
        }
        for (i, p) in self.paths.iter().enumerate() {
            if self.paths[..i].contains(p) {
                return bad(format!("path {} given twice", p.id()));
            }
        }
        if !(1..=600).contains(&self.runtime_s) {
            return bad(format!("runtime {} s: expected 1..=600", self.runtime_s));
        }
        if !(1..=9).contains(&self.rounds) {
            return bad(format!("rounds {}: expected 1..=9", self.rounds));
        }
        if !(1..=8).contains(&self.queues) {
            return bad(format!("queues {}: expected 1..=8", self.queues));
        }
        let volume = crate::bed::parse_size(VOLUMES[0].1)?;
        for (what, s) in [("size", &self.size), ("once size", &self.once_size)] {
            let n = crate::bed::parse_size(s)?;
            if n == 0 || n % (1 << 20) != 0 || n > volume {
                return bad(format!(
                    "{what} {s}: expected whole MiB, at most the volumes' {}",
                    VOLUMES[0].1
                ));
            }
        }
        // Each profile parses with the values it will get (so a bad one fails before the bed
        // boots), and names one job.
        let mut names = Vec::new();
        for p in &self.profiles {
            let (prof, _) = self.profile(p, "/dev/null")?;
            if names.contains(&prof.name) {
                return bad(format!("two profiles name job {}", prof.name));
            }
            names.push(prof.name);
        }
        Ok(())
    }

    /// The profile at `path` parsed with the environment the run gives it, and the `SIZE` it
    /// got: [`Self::size`], or [`Self::once_size`] for a profile that is not time based (the
    /// parser says which; it writes its whole region once).
    fn profile(&self, path: &Path, target: &str) -> Result<(fio_profile::Profile, String)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("reading {}: {e}", path.display())))?;
        let parse = |size: &str| {
            let env = |v: &str| match v {
                "TARGET" => Some(target.to_string()),
                "RUNTIME" => Some(self.runtime_s.to_string()),
                "SIZE" => Some(size.to_string()),
                "QUEUES" => Some(self.queues.to_string()),
                _ => None,
            };
            fio_profile::parse(&text, &path.display().to_string(), &env).map_err(Error::Invalid)
        };
        let prof = parse(&self.size)?;
        if prof.runtime_s.is_some() {
            return Ok((prof, self.size.clone()));
        }
        Ok((parse(&self.once_size)?, self.once_size.clone()))
    }
}

/// The `*.fio` files of `dir`, sorted by name.
pub fn profiles_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Invalid(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fio"))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Invalid(format!(
            "no *.fio file in {}",
            dir.display()
        )));
    }
    Ok(v)
}

/// The repository's `fio-profiles/`.
pub fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fio-profiles")
}

/// Boots the pair bed (one link), sets the stack up and measures; `build_profile` is the
/// binaries' cargo profile, for the report.
pub fn run(
    prepared: &Prepared,
    params: &BedParams,
    bins: &Binaries,
    cp: &CompareParams,
    build_profile: &str,
) -> Result<Report> {
    cp.validate()?;
    let t0 = Instant::now();
    let mut params = params.clone();
    params.topology = Topology::Pair;
    params.paths = 1;
    let mut bed = Bed::start(prepared, &params, "compare")?;
    let measured = steps_of(&mut bed, bins, &params.agent.display().to_string(), cp);
    bed.shutdown();
    let (profiles, samples) = measured?;
    let run = RunInfo {
        date: utc_now(),
        machine: machine(),
        command: cp.command.clone(),
        smoke: cp.smoke,
        runtime_s: cp.runtime_s,
        size: format!("{} (not time based: {})", cp.size, cp.once_size),
        queues: cp.queues,
        rounds: cp.rounds,
        bed: format!(
            "pair topology, one link (soft-RoCE over a QEMU socket netdev), {} vCPUs and {} MiB per guest, TCG",
            params.cpus, params.memory_mib
        ),
        build_profile: build_profile.to_string(),
        wall_s: t0.elapsed().as_secs_f64(),
    };
    let report =
        Report::build(run, cp.paths.clone(), profiles, &samples).map_err(Error::Invalid)?;
    let missing = report.missing();
    if !missing.is_empty() {
        return Err(Error::Check {
            check: "every figure of the comparison is there".into(),
            reason: missing.join("; "),
        });
    }
    Ok(report)
}

/// Where one path's load runs.
struct Endpoint {
    role: Role,
    /// The device the profile gets as `TARGET`.
    target: String,
    tool: &'static str,
    /// The daemons whose CPU time the path costs.
    pids: Vec<u64>,
}

/// Samples per round, path and profile.
type Samples = Vec<Vec<Vec<Sample>>>;

fn steps_of(
    bed: &mut Bed,
    bins: &Binaries,
    agent: &str,
    cp: &CompareParams,
) -> Result<(Vec<String>, Samples)> {
    let hostnqn = steps::prepare_stack(bed)?;
    let traddrs: Vec<String> = bed
        .nics(Role::Compute)?
        .iter()
        .map(|n| n.storage_addr.clone())
        .collect();
    let traddr = traddrs.first().cloned().ok_or_else(|| Error::Check {
        check: "the compute node has a link".into(),
        reason: "no NIC".into(),
    })?;

    // The storage node: nvmf-target, the compute node's host, both volumes.
    bed.progress()
        .note("setting up: nvmf-target, two volumes, nvmf-initiator, qemu-storage-daemon");
    let target = Target::configure(
        bed,
        &bins.nvmf_target.display().to_string(),
        &hostnqn,
        &traddrs,
    )?;
    let (_target_daemon, _) = target.start(bed)?;
    let key = target.add_host(bed, &hostnqn)?;
    for (name, size) in VOLUMES {
        target.create(bed, name, size)?;
    }
    let names: Vec<&str> = VOLUMES.iter().map(|(n, _)| *n).collect();
    let placed = target.converged(bed, "both volumes created", &names)?;
    let local_dev = placed
        .first()
        .map(|(_, dev)| dev.clone())
        .ok_or_else(|| Error::Invalid("no VF namespace for vol1".into()))?;

    // The compute node: the agent, vol1 in virtio-vdpa mode, vol2 in vhost-vdpa mode.
    let init = Initiator::configure(
        bed,
        &bins.nvmf_initiator.display().to_string(),
        &bins.vdpa_blk.display().to_string(),
    )?;
    let (_agent_daemon, _) = init.start(bed)?;
    let attach = |bed: &mut Bed, vol: usize, mode: Mode| -> Result<Attached> {
        let (name, _) = VOLUMES[vol];
        let v = target.exported(bed, name, &key)?;
        let what = format!("attach {name} in {} mode", mode.words().0);
        Ok(init
            .attach_one_path(bed, &v, &traddr, mode, cp.queues, &what)?
            .1)
    };
    let virtio = attach(bed, 0, Mode::VirtioVdpa)?;
    let vhost = attach(bed, 1, Mode::VhostVdpa)?;
    let qsd_disk = steps::qsd_start(bed, QSD, &virtio.backing, cp.queues, Some("io_uring"))?;
    let qsd_pid = pid_in(bed, &format!("/run/qsd-{QSD}.pid"))?;

    let endpoint = |p: StoragePath| -> Endpoint {
        let (role, target, tool, pids) = match p {
            StoragePath::Local => (Role::Storage, local_dev.clone(), "fio", vec![]),
            StoragePath::NvmeRdma => (Role::Compute, virtio.backing.clone(), "fio", vec![]),
            StoragePath::VdpaBlkVirtio => {
                (Role::Compute, virtio.disk.clone(), "fio", vec![virtio.pid])
            }
            StoragePath::VdpaBlkVhost => (
                Role::Compute,
                vhost.disk.clone(),
                "blkio-load",
                vec![vhost.pid],
            ),
            StoragePath::QsdVduse => (Role::Compute, qsd_disk.clone(), "fio", vec![qsd_pid]),
        };
        Endpoint {
            role,
            target: format!("/dev/{target}"),
            tool,
            pids,
        }
    };
    let endpoints: Vec<Endpoint> = cp.paths.iter().map(|&p| endpoint(p)).collect();
    bed.progress().note(&format!(
        "paths: {}",
        cp.paths
            .iter()
            .zip(&endpoints)
            .map(|(p, e)| format!("{} = {} ({})", p.id(), e.target, e.tool))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let (profiles, sizes): (Vec<fio_profile::Profile>, Vec<String>) = cp
        .profiles
        .iter()
        .map(|p| cp.profile(p, "/dev/null"))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let names: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
    let mut clock = Clock::new(cp, &profiles);
    let mut samples: Samples = Vec::new();
    for round in 0..cp.rounds as usize {
        let mut per_path: Vec<Vec<Option<Sample>>> =
            vec![vec![None; profiles.len()]; cp.paths.len()];
        for (j, file) in cp.profiles.iter().enumerate() {
            for k in 0..cp.paths.len() {
                let pi = (k + round + j) % cp.paths.len();
                let path = cp.paths[pi];
                bed.progress().note(&format!(
                    "round {}/{}, profile {} ({}/{}), path {} ({}/{}), about {} left",
                    round + 1,
                    cp.rounds,
                    names[j],
                    j + 1,
                    names.len(),
                    path.id(),
                    k + 1,
                    cp.paths.len(),
                    clock.left()
                ));
                let started = Instant::now();
                let s = measure(
                    bed,
                    cp,
                    agent,
                    (file, &names[j], &sizes[j]),
                    path,
                    &endpoints[pi],
                )?;
                clock.done(j, started.elapsed());
                per_path[pi][j] = Some(s);
            }
        }
        samples.push(
            per_path
                .into_iter()
                .map(|v| v.into_iter().flatten().collect())
                .collect(),
        );
    }
    Ok((names, samples))
}

/// Runs profile `file` (job `name`, with `SIZE` `size`) on `path` once.
fn measure(
    bed: &mut Bed,
    cp: &CompareParams,
    agent: &str,
    (file, name, size): (&Path, &str, &str),
    path: StoragePath,
    e: &Endpoint,
) -> Result<Sample> {
    let what = format!("{name} on {} ({})", path.id(), e.target);
    let step = run_profile(
        bed,
        &what,
        &ProfileRun {
            role: e.role,
            tool: e.tool,
            file,
            target: &e.target,
            runtime_s: cp.runtime_s,
            size,
            queues: cp.queues,
            out: format!("/tmp/compare-{}-{name}.json", path.id()),
            pids: &e.pids,
            testbed: agent,
        },
    )?;
    sample_of(&step, &what, !e.pids.is_empty())
}

/// One run of a profile: by whom, on what, with which of the profile's variables.
pub(super) struct ProfileRun<'a> {
    pub(super) role: Role,
    /// `fio`, or `blkio-load` (the testbed's load generator, for a vhost-vdpa device).
    pub(super) tool: &'a str,
    pub(super) file: &'a Path,
    /// `TARGET`.
    pub(super) target: &'a str,
    /// `RUNTIME`, seconds.
    pub(super) runtime_s: u32,
    /// `SIZE`.
    pub(super) size: &'a str,
    /// `QUEUES`.
    pub(super) queues: u16,
    /// The JSON output file in the guest.
    pub(super) out: String,
    /// The daemons whose CPU time the run costs.
    pub(super) pids: &'a [u64],
    /// The testbed binary (for `blkio-load`).
    pub(super) testbed: &'a str,
}

/// Runs a profile once (`sh/compare_measure.sh`): the step, whose results are the fio JSON
/// and the CPU times.
pub(super) fn run_profile(bed: &mut Bed, what: &str, r: &ProfileRun) -> Result<StepResult> {
    let pids: Vec<String> = r.pids.iter().map(u64::to_string).collect();
    bed.step_env(
        r.role,
        "measure",
        what,
        include_str!("sh/compare_measure.sh"),
        &[
            ("TOOL", r.tool.to_string()),
            ("PROFILE", r.file.display().to_string()),
            ("TARGET", r.target.to_string()),
            ("RUNTIME", r.runtime_s.to_string()),
            ("SIZE", r.size.to_string()),
            ("QUEUES", r.queues.to_string()),
            ("OUT", r.out.clone()),
            ("PIDS", pids.join(" ")),
            ("TESTBED", r.testbed.to_string()),
        ],
        secs(u64::from(r.runtime_s)) + STEP_SLACK,
    )
}

/// A step's sample: its fio figures and the CPU times it printed.
fn sample_of(step: &StepResult, what: &str, has_daemon: bool) -> Result<Sample> {
    let figures = steps::fio_figures(step, what)?;
    let cpu = steps::result_with(step, "node_cpu_s", what)?;
    let seconds = |k: &str| -> Result<Option<f64>> {
        match cpu[k].as_str() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|e| Error::Check {
                check: format!("{what}: {k}"),
                reason: format!("{s:?}: {e}"),
            }),
        }
    };
    let node_cpu_s = seconds("node_cpu_s")?.ok_or_else(|| Error::Check {
        check: format!("{what}: the node's CPU time"),
        reason: cpu.to_string(),
    })?;
    let daemon_cpu_s = seconds("daemon_cpu_s")?;
    steps::check(
        daemon_cpu_s.is_some() == has_daemon,
        &format!("{what}: a daemon CPU time exactly when the path has a daemon"),
        || cpu.to_string(),
    )?;
    Ok(Sample {
        figures,
        node_cpu_s,
        daemon_cpu_s,
    })
}

/// The pid in a file on the compute node.
fn pid_in(bed: &mut Bed, file: &str) -> Result<u64> {
    let step = bed.step_env(
        Role::Compute,
        "publish",
        &format!("the pid in {file}"),
        include_str!("sh/pid_in.sh"),
        &[("PIDFILE", file.to_string())],
        secs(30),
    )?;
    let v = steps::required(&step, "pid", file)?;
    v.parse().map_err(|e| Error::Check {
        check: format!("a pid in {file}"),
        reason: format!("{v:?}: {e}"),
    })
}

/// What is left of the run, from what the profiles took so far.
struct Clock {
    /// Per profile: runs left, and seconds per run so far (or the estimate).
    left: Vec<u32>,
    took: Vec<Option<f64>>,
    guess: Vec<f64>,
}

impl Clock {
    fn new(cp: &CompareParams, profiles: &[fio_profile::Profile]) -> Clock {
        let runs = cp.rounds * cp.paths.len() as u32;
        Clock {
            left: vec![runs; profiles.len()],
            took: vec![None; profiles.len()],
            // A first guess: the runtime and a few seconds of start-up under emulation; a
            // profile that is not time based, the time of its size at 1000 IOPS.
            guess: profiles
                .iter()
                .map(|p| match p.runtime_s {
                    Some(r) => f64::from(r) + 4.0,
                    None => 2.0 * (p.size / p.bs.max(1)) as f64 / 1000.0 + 4.0,
                })
                .collect(),
        }
    }

    fn done(&mut self, profile: usize, took: Duration) {
        if let Some(n) = self.left.get_mut(profile) {
            *n = n.saturating_sub(1);
        }
        if let Some(t) = self.took.get_mut(profile) {
            let s = took.as_secs_f64();
            *t = Some(t.map_or(s, |old| (old + s) / 2.0));
        }
    }

    fn left(&self) -> String {
        let s: f64 = self
            .left
            .iter()
            .enumerate()
            .map(|(i, &n)| f64::from(n) * self.took[i].unwrap_or(self.guess[i]))
            .sum();
        let s = s.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The host, for the report: CPU model and count, memory, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// Now, UTC, RFC 3339 (seconds).
pub fn utc_now() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(s)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the days-to-civil conversion of the
/// proleptic Gregorian calendar).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_210_523), "2026-12-02T11:22:03Z");
    }

    #[test]
    fn the_full_run_and_the_smoke_take_every_profile_of_the_repository() {
        let full = CompareParams::full(&profile_dir()).expect("profiles");
        full.validate().expect("the full run's defaults are valid");
        assert_eq!(full.profiles.len(), 9, "{:?}", full.profiles);
        assert_eq!(full.paths, StoragePath::ALL);
        let smoke = CompareParams::smoke(&profile_dir(), vec![StoragePath::VdpaBlkVhost])
            .expect("profiles");
        smoke.validate().expect("the smoke's defaults are valid");
        assert!(smoke.smoke && smoke.rounds == 1 && smoke.profiles.len() == 9);
    }

    #[test]
    fn bad_parameters_are_refused_naming_them() {
        let ok = CompareParams::full(&profile_dir()).expect("profiles");
        let refused = |cp: CompareParams, want: &str| {
            let e = cp.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        refused(
            CompareParams {
                paths: vec![StoragePath::Local, StoragePath::Local],
                ..ok.clone()
            },
            "path local given twice",
        );
        refused(
            CompareParams {
                size: "1G".into(),
                ..ok.clone()
            },
            "size 1G",
        );
        refused(
            CompareParams {
                rounds: 0,
                ..ok.clone()
            },
            "rounds 0",
        );
        refused(
            CompareParams {
                profiles: vec![],
                ..ok.clone()
            },
            "no fio profile",
        );
        let twice = vec![ok.profiles[0].clone(), ok.profiles[0].clone()];
        refused(
            CompareParams {
                profiles: twice,
                ..ok.clone()
            },
            "two profiles name job",
        );
    }

    #[test]
    fn the_profiles_that_write_their_region_once_get_the_smaller_size() {
        let cp = CompareParams::full(&profile_dir()).expect("profiles");
        let mut once = Vec::new();
        for p in &cp.profiles {
            let (prof, size) = cp.profile(p, "/dev/x").expect("parses");
            let want = if prof.runtime_s.is_some() {
                "128M"
            } else {
                once.push(prof.name.clone());
                "16M"
            };
            assert_eq!(size, want, "{}", p.display());
            assert_eq!(
                prof.size,
                crate::bed::parse_size(want).expect("size"),
                "{}",
                p.display()
            );
        }
        assert_eq!(once, ["verify"]);
    }

    #[test]
    fn a_sample_needs_its_cpu_times_and_a_daemon_time_exactly_with_a_daemon() {
        let fio = serde_json::json!({"fio": {"jobs": [{"jobname": "j", "read": {
            "io_bytes": 4096, "total_ios": 1, "iops": 10.0, "bw": 40.0,
            "clat_ns": {"percentile": {"50.000000": 1000, "99.000000": 2000, "99.900000": 3000}}}}]}});
        let step = |cpu: Value| StepResult {
            lines: vec![],
            results: vec![fio.clone(), cpu],
        };
        let s = sample_of(
            &step(serde_json::json!({"node_cpu_s": "1.500", "daemon_cpu_s": "0.250"})),
            "x",
            true,
        )
        .expect("sample");
        assert_eq!((s.node_cpu_s, s.daemon_cpu_s), (1.5, Some(0.25)));
        assert_eq!(s.figures.ios, 1);
        let none = step(serde_json::json!({"node_cpu_s": "1.500", "daemon_cpu_s": ""}));
        assert!(sample_of(&none, "x", true).is_err());
        assert_eq!(
            sample_of(&none, "x", false).expect("sample").daemon_cpu_s,
            None
        );
        let bad = step(serde_json::json!({"node_cpu_s": "oops", "daemon_cpu_s": ""}));
        assert!(sample_of(&bad, "x", false).is_err());
    }
}
