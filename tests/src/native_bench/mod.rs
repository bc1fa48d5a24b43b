//! `testbed native-bench`: the datapath at native speed, on this host, side by side with the
//! daemon users would pick instead. No test bed: the host has io_uring but no VDUSE, so
//! vdpa-blk serves over its vhost-user transport (the same workers as over VDUSE), and every
//! target is driven by the same blkio load generator (`testbed blkio-load`):
//!
//! - `raw`: the backing file through blkio's io_uring driver, in the load generator's own
//!   process (the ceiling);
//! - `vdpa-blk`, `vdpa-blk-poll`: `vdpa-blk --transport vhost-user`, without and with
//!   `--poll-us`, through blkio's virtio-blk-vhost-user driver;
//! - `qsd`: `qemu-storage-daemon --export type=vhost-user-blk` with an iothread,
//!   `aio=io_uring`, one virtqueue per job queue and O_DIRECT where the backing takes it.
//!
//! Backings: a file on tmpfs (nothing to wait for: each daemon's own cost per request) and a
//! file on the disk with O_DIRECT. Each round runs every job on every target back to back, in
//! an order that rotates with the round and the job; daemons run pinned to one CPU, the load
//! generator to another. Figures per run: IOPS, bandwidth, latency percentiles, the daemon's
//! CPU time per I/O (`/proc/PID/stat`) and the load generator's (its rusage); the report gives
//! medians over rounds with their range, and ratios against raw and against
//! qemu-storage-daemon as medians of the per-round ratios ([`report`]).

pub mod daemons;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::blkio_load::allowed_cpus;
use crate::fio_profile;
use crate::progress::Progress;
use daemons::Daemon;
use report::{Row, Sample};

/// `--poll-us` of the polling vdpa-blk.
pub const POLL_US: u32 = 50;

/// What the backing file lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackingKind {
    /// A file on tmpfs (`/dev/shm`), opened without O_DIRECT.
    Tmpfs,
    /// A file on the disk (`/var/tmp`), opened with O_DIRECT.
    Disk,
}

impl BackingKind {
    /// Both, in the report's order.
    pub const ALL: [BackingKind; 2] = [BackingKind::Tmpfs, BackingKind::Disk];

    /// Short name.
    pub fn id(self) -> &'static str {
        match self {
            BackingKind::Tmpfs => "tmpfs",
            BackingKind::Disk => "disk",
        }
    }

    /// Heading in the report.
    pub fn title(self) -> &'static str {
        match self {
            BackingKind::Tmpfs => "A file on tmpfs (CPU-bound: each daemon's own cost per request)",
            BackingKind::Disk => "A file on the disk, O_DIRECT",
        }
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Result<BackingKind, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.id() == s)
            .ok_or_else(|| format!("unknown backing {s:?}: tmpfs or disk"))
    }
}

/// What serves the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// blkio's io_uring driver on the backing file itself.
    Raw,
    /// vdpa-blk over vhost-user.
    VdpaBlk,
    /// vdpa-blk over vhost-user with `--poll-us`.
    VdpaBlkPoll,
    /// qemu-storage-daemon's vhost-user-blk export.
    Qsd,
}

impl Target {
    /// Every target, in the report's order.
    pub const ALL: [Target; 4] = [
        Target::Raw,
        Target::VdpaBlk,
        Target::VdpaBlkPoll,
        Target::Qsd,
    ];

    /// Short name.
    pub fn id(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::VdpaBlk => "vdpa-blk",
            Target::VdpaBlkPoll => "vdpa-blk-poll",
            Target::Qsd => "qsd",
        }
    }

    /// Name in the report.
    pub fn title(self) -> &'static str {
        match self {
            Target::Raw => "raw io_uring",
            Target::VdpaBlk => "vdpa-blk",
            Target::VdpaBlkPoll => "vdpa-blk poll 50us",
            Target::Qsd => "qemu-storage-daemon",
        }
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Result<Target, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.id() == s)
            .ok_or_else(|| format!("unknown target {s:?}: raw, vdpa-blk, vdpa-blk-poll or qsd"))
    }

    /// The blkio driver the load generator uses.
    pub fn driver(self) -> &'static str {
        match self {
            Target::Raw => "io-uring",
            _ => "virtio-blk-vhost-user",
        }
    }
}

/// A backing file, made for the run.
#[derive(Debug, Clone)]
pub struct Backing {
    pub kind: BackingKind,
    pub path: PathBuf,
    /// Opened with O_DIRECT (by every target).
    pub direct: bool,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct NativeParams {
    pub rounds: u32,
    pub runtime_s: u32,
    /// Size of each backing file and of the jobs' region.
    pub size: u64,
    pub backings: Vec<BackingKind>,
    pub targets: Vec<Target>,
    /// Job files (fio's format, read by the load generator).
    pub jobs: Vec<PathBuf>,
    /// Where the results go.
    pub out: PathBuf,
    /// Directory of the tmpfs backing and the sockets.
    pub tmpfs_dir: PathBuf,
    /// Directory of the disk backing.
    pub disk_dir: PathBuf,
    pub vdpa_blk: PathBuf,
    pub qsd: PathBuf,
    /// The `testbed` binary (its `blkio-load`).
    pub testbed: PathBuf,
    pub daemon_cpu: usize,
    pub load_cpu: usize,
}

/// The repository's native-benchmark job files, in the report's order.
pub fn job_files(repo: &Path) -> Vec<PathBuf> {
    let dir = repo.join("tests/native-bench");
    [
        "randread-4k-qd1",
        "randread-4k-qd32",
        "randwrite-4k-qd32",
        "seqread-128k-qd8",
        "randread-4k-4q-qd32",
    ]
    .iter()
    .map(|j| dir.join(format!("{j}.fio")))
    .collect()
}

/// The jobs of `all` named in `names` (file names without `.fio`), in the order asked; an
/// unknown or repeated name is refused with the names there are.
pub fn select_jobs(all: &[PathBuf], names: &[String]) -> Result<Vec<PathBuf>, String> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out: Vec<PathBuf> = Vec::with_capacity(names.len());
    for n in names {
        let Some(p) = all.iter().find(|p| stem(p) == *n) else {
            let known: Vec<String> = all.iter().map(stem).collect();
            return Err(format!("no job {n:?}; the jobs are {}", known.join(", ")));
        };
        if out.contains(p) {
            return Err(format!("job {n:?} is named twice"));
        }
        out.push(p.clone());
    }
    if out.is_empty() {
        return Err("no job named".into());
    }
    Ok(out)
}

impl NativeParams {
    /// The full run: both backings, every target, 3 rounds of 5 s, 1 GiB files.
    pub fn full(repo: &Path, out: PathBuf) -> NativeParams {
        let bin = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        NativeParams {
            rounds: 3,
            runtime_s: 5,
            size: 1 << 30,
            backings: BackingKind::ALL.to_vec(),
            targets: Target::ALL.to_vec(),
            jobs: job_files(repo),
            out,
            tmpfs_dir: PathBuf::from("/dev/shm/vdpa-blk-native-bench"),
            disk_dir: PathBuf::from("/var/tmp/vdpa-blk-native-bench"),
            vdpa_blk: bin.join("vdpa-blk"),
            qsd: PathBuf::from("/usr/bin/qemu-storage-daemon"),
            testbed: bin.join("testbed"),
            daemon_cpu: 0,
            load_cpu: 1,
        }
    }

    /// The quick mode (CI): the tmpfs backing, every target, one round of 2 s, 256 MiB.
    pub fn quick(repo: &Path, out: PathBuf) -> NativeParams {
        NativeParams {
            rounds: 1,
            runtime_s: 2,
            size: 256 << 20,
            backings: vec![BackingKind::Tmpfs],
            ..Self::full(repo, out)
        }
    }

    fn env(&self, backing: &Backing, target: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TARGET", target.to_string()),
            ("RUNTIME", self.runtime_s.to_string()),
            ("SIZE", self.size.to_string()),
            ("DIRECT", u8::from(backing.direct).to_string()),
        ]
    }

    /// Refuses parameters that cannot run, naming them, before anything is created.
    pub fn validate(&self) -> Result<Vec<String>, String> {
        if !(1..=20).contains(&self.rounds) {
            return Err(format!("--rounds {} is not in 1..=20", self.rounds));
        }
        if !(1..=600).contains(&self.runtime_s) {
            return Err(format!("--runtime {} is not in 1..=600 s", self.runtime_s));
        }
        if self.size < 16 << 20 || self.size % (1 << 20) != 0 {
            return Err(format!(
                "--size {} must be a whole number of MiB, at least 16 MiB",
                self.size
            ));
        }
        for (what, list) in [
            (
                "--backing",
                self.backings.iter().map(|b| b.id()).collect::<Vec<_>>(),
            ),
            ("--target", self.targets.iter().map(|t| t.id()).collect()),
        ] {
            if list.is_empty() {
                return Err(format!("{what}: nothing to run"));
            }
            if let Some(d) = list
                .iter()
                .enumerate()
                .find(|(i, x)| list[..*i].contains(x))
            {
                return Err(format!("{what}: {} is given twice", d.1));
            }
        }
        let cpus = allowed_cpus();
        for (what, c) in [
            ("--daemon-cpu", self.daemon_cpu),
            ("--load-cpu", self.load_cpu),
        ] {
            if !cpus.contains(&c) {
                return Err(format!(
                    "{what} {c}: this process may run on CPUs {cpus:?} only"
                ));
            }
        }
        if self.daemon_cpu == self.load_cpu {
            return Err(format!(
                "--daemon-cpu and --load-cpu are both {}: they must differ",
                self.daemon_cpu
            ));
        }
        let needs_daemon = |t: &Target| *t != Target::Raw;
        for (bin, needed, hint) in [
            (&self.testbed, true, "cargo build --release -p testbed"),
            (
                &self.vdpa_blk,
                self.targets
                    .iter()
                    .any(|t| matches!(t, Target::VdpaBlk | Target::VdpaBlkPoll)),
                "cargo build --release -p vdpa-blk, or --vdpa-blk PATH",
            ),
            (
                &self.qsd,
                self.targets.contains(&Target::Qsd),
                "apt-get install qemu-utils, or --qsd PATH",
            ),
        ] {
            if needed && !bin.is_file() {
                return Err(format!("{} does not exist ({hint})", bin.display()));
            }
        }
        if self.targets.iter().any(needs_daemon) && which("taskset").is_none() {
            return Err("taskset (util-linux) is not on PATH".into());
        }
        // Every job file parses with the values it will get, on both kinds of backing.
        let mut names = Vec::new();
        for job in &self.jobs {
            for direct in [false, true] {
                let b = Backing {
                    kind: BackingKind::Tmpfs,
                    path: PathBuf::new(),
                    direct,
                };
                let env = self.env(&b, "/dev/null");
                let text = std::fs::read_to_string(job)
                    .map_err(|e| format!("reading {}: {e}", job.display()))?;
                let prof = fio_profile::parse(&text, &job.display().to_string(), &|v| {
                    env.iter().find(|(k, _)| *k == v).map(|(_, x)| x.clone())
                })?;
                if prof.numjobs > daemons::QUEUES {
                    return Err(format!(
                        "{}: numjobs={} is more than the {} queues the daemons offer",
                        job.display(),
                        prof.numjobs,
                        daemons::QUEUES
                    ));
                }
                if !direct {
                    names.push(prof.name);
                }
            }
        }
        if names.is_empty() {
            return Err("no job files".into());
        }
        Ok(names)
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Writes `size` bytes of non-zero data (reads of a hole would cost nothing anywhere).
fn fill(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut chunk = vec![0u8; 1 << 20];
    for (i, w) in chunk.chunks_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64 ^ 0x5a5a_5a5a_5a5a_5a5a).to_le_bytes());
    }
    for _ in 0..size / chunk.len() as u64 {
        f.write_all(&chunk)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    f.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// CPU seconds of the reaped children of this process so far.
fn children_cpu_seconds() -> anyhow::Result<f64> {
    // SAFETY: getrusage writes into `ru`, plain data; its result is checked.
    let (r, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru), ru)
    };
    if r != 0 {
        bail!(
            "getrusage(RUSAGE_CHILDREN): {}",
            std::io::Error::last_os_error()
        );
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(t(ru.ru_utime) + t(ru.ru_stime))
}

/// When and where a run happened.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub rounds: u32,
    pub runtime_s: u32,
    pub size: u64,
    pub daemon_cpu: usize,
    pub load_cpu: usize,
    pub took_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct NativeReport {
    pub info: RunInfo,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{} CPUs ({model}), Linux {kernel}", allowed_cpus().len())
}

/// Runs the benchmark and writes `report.json` and `report.md` into `p.out`.
pub fn run(p: &NativeParams, command: &str) -> anyhow::Result<NativeReport> {
    let names = p.validate().map_err(anyhow::Error::msg)?;
    let progress = Progress::new("native-bench");
    let started = Instant::now();
    let runs_dir = p.out.join("runs");
    for d in [&p.out, &runs_dir, &p.tmpfs_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut backings = Vec::new();
    for &kind in &p.backings {
        let (dir, direct) = match kind {
            BackingKind::Tmpfs => (&p.tmpfs_dir, false),
            BackingKind::Disk => (&p.disk_dir, true),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("backing.img");
        progress.phase(
            "prepare",
            &format!("{} ({} MiB)", path.display(), p.size >> 20),
        );
        fill(&path, p.size)?;
        backings.push(Backing { kind, path, direct });
    }
    let mut daemons: Vec<(BackingKind, Daemon)> = Vec::new();
    for b in &backings {
        for &t in p.targets.iter().filter(|t| **t != Target::Raw) {
            progress.phase("start", &format!("{} over {}", t.id(), b.kind.id()));
            let d = Daemon::start(t, b, &p.tmpfs_dir, &p.vdpa_blk, &p.qsd, p.daemon_cpu)?;
            daemons.push((b.kind, d));
        }
    }
    let total = p.rounds as usize * backings.len() * p.jobs.len() * p.targets.len();
    let mut samples = Vec::with_capacity(total);
    for round in 0..p.rounds {
        for b in &backings {
            for (ji, job) in p.jobs.iter().enumerate() {
                let n = p.targets.len();
                for k in 0..n {
                    let target = p.targets[(k + round as usize + ji) % n];
                    let done = samples.len();
                    let left = if done == 0 {
                        (total as f64) * (f64::from(p.runtime_s) + 1.0)
                    } else {
                        started.elapsed().as_secs_f64() / done as f64 * (total - done) as f64
                    };
                    progress.phase(
                        "run",
                        &format!(
                            "round {}/{} {} {} {} ({:.0} s left)",
                            round + 1,
                            p.rounds,
                            b.kind.id(),
                            names[ji],
                            target.id(),
                            left
                        ),
                    );
                    let mut daemon = daemons
                        .iter_mut()
                        .find(|(k, d)| *k == b.kind && d.target == target)
                        .map(|(_, d)| d);
                    let path = match &daemon {
                        Some(d) => d.socket.clone(),
                        None => b.path.clone(),
                    };
                    let out = runs_dir.join(format!(
                        "{}-{}-{}-r{round}.json",
                        b.kind.id(),
                        names[ji],
                        target.id()
                    ));
                    let l0 = children_cpu_seconds()?;
                    let d0 = daemon.as_mut().map(|d| d.cpu_seconds()).transpose()?;
                    let status = crate::cmd::die_with_parent(&mut Command::new(&p.testbed))
                        .args(["blkio-load", "--driver", target.driver(), "--path"])
                        .arg(&path)
                        .arg("--profile")
                        .arg(job)
                        .arg("--output")
                        .arg(&out)
                        .args(["--cpus", &p.load_cpu.to_string()])
                        .envs(p.env(b, &path.to_string_lossy()))
                        .status()
                        .context("running testbed blkio-load")?;
                    let load_cpu_s = children_cpu_seconds()? - l0;
                    let d1 = daemon.as_mut().map(|d| d.cpu_seconds()).transpose()?;
                    if !status.success() {
                        bail!(
                            "blkio-load {} on {} over {} exited {status}",
                            names[ji],
                            target.id(),
                            b.kind.id()
                        );
                    }
                    let text = std::fs::read_to_string(&out)
                        .with_context(|| format!("reading {}", out.display()))?;
                    let figures = crate::fio::parse(&text)
                        .map_err(anyhow::Error::msg)?
                        .into_iter()
                        .next()
                        .with_context(|| format!("{}: no job", out.display()))?;
                    samples.push(Sample {
                        backing: b.kind,
                        job: names[ji].clone(),
                        target,
                        round,
                        figures,
                        daemon_cpu_s: d0.zip(d1).map(|(a, b)| b - a),
                        load_cpu_s,
                    });
                }
            }
        }
    }
    drop(daemons);
    let rows = report::rows(&samples);
    let missing = report::missing(&rows, &p.targets);
    let report = NativeReport {
        info: RunInfo {
            date: crate::scenarios::compare::utc_now(),
            machine: machine(),
            command: command.to_string(),
            rounds: p.rounds,
            runtime_s: p.runtime_s,
            size: p.size,
            daemon_cpu: p.daemon_cpu,
            load_cpu: p.load_cpu,
            took_s: started.elapsed().as_secs_f64(),
        },
        rows,
        samples,
    };
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(p.out.join("report.json"), json + "\n").context("writing report.json")?;
    let md = markdown(&report);
    std::fs::write(p.out.join("report.md"), &md).context("writing report.md")?;
    for b in &backings {
        let _ = std::fs::remove_file(&b.path);
    }
    if !missing.is_empty() {
        bail!("the run lacks figures: {}", missing.join("; "));
    }
    Ok(report)
}

/// The whole Markdown report: how it was measured, then the tables.
pub fn markdown(r: &NativeReport) -> String {
    let i = &r.info;
    format!(
        "Measured {} on {} with `{}`: {} round(s) of {} s per job, {} MiB backings; \
         daemons pinned to CPU {}, the load generator to CPU {}. Each figure is the median \
         over the rounds (range in brackets); ratios are medians of per-round ratios. \
         Daemon CPU is the daemon's user + system time per I/O; the load generator's is its own \
         (for raw it includes the kernel's io_uring work).\n{}",
        i.date,
        i.machine,
        i.command,
        i.rounds,
        i.runtime_s,
        i.size >> 20,
        i.daemon_cpu,
        i.load_cpu,
        report::markdown(&r.rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The job files say what the issue asks for: 4k randread QD1 and QD32, 4k randwrite
    /// QD32, 128k seqread QD8, 4 queues x QD32 randread, each honouring DIRECT.
    #[test]
    fn jobs_are_selected_by_name_in_the_order_asked_and_unknown_or_repeated_names_refused() {
        let all = job_files(&repo());
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = select_jobs(&all, &names(&["seqread-128k-qd8", "randread-4k-qd1"])).unwrap();
        assert_eq!(got, vec![all[3].clone(), all[0].clone()]);
        let e = select_jobs(&all, &names(&["randread-4k-qd64"])).unwrap_err();
        assert!(
            e.contains("no job \"randread-4k-qd64\"") && e.contains("randread-4k-qd32"),
            "{e}"
        );
        let e = select_jobs(&all, &names(&["randread-4k-qd1", "randread-4k-qd1"])).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        assert!(select_jobs(&all, &[]).is_err());
    }

    #[test]
    fn the_job_files_are_the_five_jobs_and_take_direct_from_the_environment() {
        use fio_profile::Rw;
        let want = [
            ("randread-4k-qd1", Rw::RandRead, 4096, 1, 1),
            ("randread-4k-qd32", Rw::RandRead, 4096, 32, 1),
            ("randwrite-4k-qd32", Rw::RandWrite, 4096, 32, 1),
            ("seqread-128k-qd8", Rw::Read, 128 << 10, 8, 1),
            ("randread-4k-4q-qd32", Rw::RandRead, 4096, 32, 4),
        ];
        let jobs = job_files(&repo());
        assert_eq!(jobs.len(), want.len());
        for (file, (name, rw, bs, depth, numjobs)) in jobs.iter().zip(want) {
            let text = std::fs::read_to_string(file).expect("job file");
            for direct in ["0", "1"] {
                let env = |v: &str| match v {
                    "TARGET" => Some("/dev/null".to_string()),
                    "RUNTIME" => Some("5".to_string()),
                    "SIZE" => Some("64M".to_string()),
                    "DIRECT" => Some(direct.to_string()),
                    _ => None,
                };
                let p =
                    fio_profile::parse(&text, &file.display().to_string(), &env).expect("parses");
                assert_eq!(
                    (p.name.as_str(), p.rw, p.bs, p.iodepth, p.numjobs),
                    (name, rw, bs, depth, numjobs)
                );
                assert_eq!(p.direct, direct == "1");
                assert_eq!(p.runtime_s, Some(5));
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused_naming_them() {
        let base = NativeParams::quick(&repo(), PathBuf::from("/tmp/x"));
        let cases: Vec<(NativeParams, &str)> = vec![
            (
                NativeParams {
                    rounds: 0,
                    ..base.clone()
                },
                "--rounds 0",
            ),
            (
                NativeParams {
                    runtime_s: 0,
                    ..base.clone()
                },
                "--runtime 0",
            ),
            (
                NativeParams {
                    size: 1 << 20,
                    ..base.clone()
                },
                "--size 1048576",
            ),
            (
                NativeParams {
                    targets: vec![Target::Qsd, Target::Qsd],
                    ..base.clone()
                },
                "qsd is given twice",
            ),
            (
                NativeParams {
                    backings: vec![],
                    ..base.clone()
                },
                "--backing: nothing to run",
            ),
            (
                NativeParams {
                    load_cpu: 4096,
                    ..base.clone()
                },
                "--load-cpu 4096",
            ),
            (
                NativeParams {
                    testbed: PathBuf::from("/nonexistent/testbed"),
                    ..base.clone()
                },
                "/nonexistent/testbed does not exist",
            ),
        ];
        for (p, what) in cases {
            let e = p.validate().expect_err(what);
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn names_parse_and_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::parse(t.id()), Ok(t));
        }
        for b in BackingKind::ALL {
            assert_eq!(BackingKind::parse(b.id()), Ok(b));
        }
        assert!(Target::parse("spdk").unwrap_err().contains("\"spdk\""));
        assert!(BackingKind::parse("nfs").unwrap_err().contains("\"nfs\""));
        assert_eq!(Target::Raw.driver(), "io-uring");
        assert_eq!(Target::Qsd.driver(), "virtio-blk-vhost-user");
    }
}
