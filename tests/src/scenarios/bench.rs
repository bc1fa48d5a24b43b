//! The datapath benchmark: in one guest and one run, fio on the raw backing device (the
//! carved VF's namespace), on `vdpa-blk` serving it through virtio_vdpa, and on
//! `qemu-storage-daemon --export type=vduse-blk` serving the same device, and the blkio load
//! generator on `vdpa-blk` through vhost_vdpa (as a VMM drives it; the same job from
//! `tests/native-bench/`, without fio's 2 s ramp); IOPS with its range over the rounds, p50/p99
//! latency and the ratios between them, and each daemon's CPU time. Every daemon runs for a
//! whole round and each job runs on all targets back to back, because the emulated machine's
//! speed drifts by tens of percent over minutes. Figures, not a test: nothing here has a
//! threshold.

use std::path::Path;

use super::steps::{self, secs};
use crate::bed::{Bed, BedParams, Role, Topology};
use crate::error::{Error, Result};
use crate::fio::FioFigures;
use crate::native_bench::report::Spread;
use crate::setup::Prepared;

/// The fio jobs: name, rw, block size, queue depth.
pub const JOBS: &[(&str, &str, &str, u32)] = &[
    ("randread-4k-qd1", "randread", "4k", 1),
    ("randread-4k-qd32", "randread", "4k", 32),
    ("randwrite-4k-qd32", "randwrite", "4k", 32),
    ("seqread-128k-qd8", "read", "128k", 8),
];

/// One device measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The backing device itself.
    Raw,
    /// `vdpa-blk --driver virtio-vdpa` over it, with this `--poll-us`.
    VdpaBlk { poll_us: u32 },
    /// `vdpa-blk --driver vhost-vdpa` over it, driven by the blkio load generator.
    VdpaBlkVhost,
    /// `qemu-storage-daemon --export type=vduse-blk` over it.
    Qsd,
}

impl Target {
    /// The name in the table.
    pub fn name(&self) -> String {
        match self {
            Target::Raw => "raw device".into(),
            Target::VdpaBlk { poll_us: 0 } => "vdpa-blk".into(),
            Target::VdpaBlk { poll_us } => format!("vdpa-blk --poll-us {poll_us}"),
            Target::VdpaBlkVhost => "vdpa-blk vhost-vdpa (blkio)".into(),
            Target::Qsd => "qemu-storage-daemon".into(),
        }
    }

    /// The targets of one run: the raw device, one vdpa-blk per poll setting, vdpa-blk
    /// through vhost-vdpa, the daemon.
    pub fn all(poll_us: &[u32]) -> Vec<Target> {
        let mut t = vec![Target::Raw];
        t.extend(poll_us.iter().map(|&poll_us| Target::VdpaBlk { poll_us }));
        t.push(Target::VdpaBlkVhost);
        t.push(Target::Qsd);
        t
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchParams {
    /// Seconds per fio job (after a 2 s ramp).
    pub runtime_s: u32,
    /// Virtqueues of both VDUSE devices.
    pub queues: u16,
    /// Rounds in which the targets take turns.
    pub rounds: u32,
    /// One vdpa-blk target per `--poll-us` value.
    pub poll_us: Vec<u32>,
}

/// Figures per target, in `targets` order, each in [`JOBS`] order.
#[derive(Debug, Clone)]
pub struct Report {
    pub device: String,
    pub runtime_s: u32,
    pub queues: u16,
    pub rounds: u32,
    pub targets: Vec<Target>,
    /// Medians over the rounds.
    pub figures: Vec<Vec<FioFigures>>,
    /// IOPS of each round: [round][target][job].
    pub per_round_iops: Vec<Vec<Vec<f64>>>,
    /// CPU seconds (user + system, all threads) each daemon used over its fio jobs, median
    /// over the rounds, per target (None for the raw device).
    pub daemon_cpu_s: Vec<Option<f64>>,
}

/// fio's arguments for job `j` on `/dev/{dev}` (without the output options), and its JSON
/// output file in the guest.
fn fio_job(dev: &str, j: usize, runtime_s: u32) -> (String, String) {
    let (name, rw, bs, qd) = JOBS[j];
    (
        format!(
            "--name={name} --filename=/dev/{dev} --direct=1 --ioengine=libaio --rw={rw} \
             --bs={bs} --iodepth={qd} --size=256M --time_based --runtime={runtime_s} \
             --ramp_time=2 --norandommap --randrepeat=0"
        ),
        format!("/tmp/bench-{name}.json"),
    )
}

fn measure(bed: &mut Bed, what: &str, dev: &str, j: usize, runtime_s: u32) -> Result<FioFigures> {
    let (args, out) = fio_job(dev, j, runtime_s);
    steps::fio(
        bed,
        Role::Compute,
        "measure",
        &format!("fio {} on {what} (/dev/{dev})", JOBS[j].0),
        &args,
        &out,
        secs(u64::from(runtime_s) + 60),
    )
}

/// Job `j` through the blkio load generator on the vhost-vdpa device `dev`
/// (`sh/compare_measure.sh`, with the native benchmark's job file of the same name).
fn measure_blkio(
    bed: &mut Bed,
    agent: &str,
    dev: &str,
    j: usize,
    runtime_s: u32,
) -> Result<FioFigures> {
    let name = JOBS[j].0;
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("native-bench/{name}.fio"));
    let what = format!("blkio-load {name} on {dev}");
    let step = bed.step_env(
        Role::Compute,
        "measure",
        &what,
        include_str!("sh/compare_measure.sh"),
        &[
            ("TOOL", "blkio-load".to_string()),
            ("PROFILE", job.display().to_string()),
            ("TARGET", dev.to_string()),
            ("RUNTIME", runtime_s.to_string()),
            ("SIZE", "256M".to_string()),
            ("QUEUES", "1".to_string()),
            ("DIRECT", "1".to_string()),
            ("OUT", format!("/tmp/bench-blkio-{name}.json")),
            ("PIDS", String::new()),
            ("TESTBED", agent.to_string()),
        ],
        secs(u64::from(runtime_s) + 60),
    )?;
    steps::fio_figures(&step, &what)
}

/// Boots one guest, carves a VF, and measures the targets in turn, `rounds` times.
pub fn run(
    prepared: &Prepared,
    params: &BedParams,
    vdpa_blk: &Path,
    bench: &BenchParams,
) -> Result<Report> {
    let BenchParams {
        runtime_s,
        queues,
        rounds,
        ref poll_us,
    } = *bench;
    if poll_us.is_empty() || poll_us.len() > 4 {
        return Err(Error::Invalid(format!(
            "{} vdpa-blk poll settings: expected 1 to 4",
            poll_us.len()
        )));
    }
    if let Some(p) = poll_us.iter().find(|&&p| p > 1_000_000) {
        return Err(Error::Invalid(format!(
            "poll {p} us: expected at most 1000000"
        )));
    }
    if !(1..=9).contains(&rounds) {
        return Err(Error::Invalid(format!("rounds {rounds}: expected 1..=9")));
    }
    if !(1..=600).contains(&runtime_s) {
        return Err(Error::Invalid(format!(
            "runtime {runtime_s} s: expected 1..=600"
        )));
    }
    if !(1..=8).contains(&queues) {
        return Err(Error::Invalid(format!("queues {queues}: expected 1..=8")));
    }
    let mut params = params.clone();
    params.topology = Topology::Single;
    let mut bed = Bed::start(prepared, &params, "bench")?;
    let targets = Target::all(poll_us);
    let agent = params.agent.display().to_string();
    let report = steps_of(
        &mut bed, vdpa_blk, &agent, &targets, runtime_s, queues, rounds,
    );
    bed.shutdown();
    report
}

fn steps_of(
    bed: &mut Bed,
    vdpa_blk: &Path,
    agent: &str,
    targets: &[Target],
    runtime_s: u32,
    queues: u16,
    rounds_n: u32,
) -> Result<Report> {
    let topology = bed.topology();
    steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &format!(
            "{} vdpa vduse virtio_vdpa vhost_vdpa virtio_blk",
            steps::compute_modules(topology)
        ),
    )?;
    let (_vf, dev) = steps::carve(bed, 1, 1)?;
    // Every daemon runs for the whole round; each job is measured on every target back to back
    // (in an order that rotates), so the emulator's drift, which is large over minutes, hits
    // the targets of one comparison alike.
    let mut rounds: Vec<Vec<Vec<FioFigures>>> = Vec::new();
    let mut cpu: Vec<Vec<Option<f64>>> = Vec::new();
    for round in 0..rounds_n as usize {
        bed.progress()
            .note(&format!("round {} of {rounds_n}", round + 1));
        let mut devs = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            devs.push(match *t {
                Target::Raw => dev.clone(),
                Target::VdpaBlk { poll_us } => start_vdpa_blk(
                    bed,
                    vdpa_blk,
                    i,
                    &format!("--backing /dev/{dev} --driver virtio-vdpa --queues {queues} --poll-us {poll_us}"),
                )?,
                Target::VdpaBlkVhost => start_vdpa_blk(
                    bed,
                    vdpa_blk,
                    i,
                    &format!("--backing /dev/{dev} --driver vhost-vdpa --queues {queues}"),
                )?,
                Target::Qsd => steps::qsd_start(bed, QSD, &dev, queues, Some("io_uring"))?,
            });
        }
        let mut figures: Vec<Vec<Option<FioFigures>>> = vec![vec![None; JOBS.len()]; targets.len()];
        for j in 0..JOBS.len() {
            for k in 0..targets.len() {
                let t = (k + round + j) % targets.len();
                let f = match targets[t] {
                    Target::VdpaBlkVhost => measure_blkio(bed, agent, &devs[t], j, runtime_s)?,
                    _ => measure(bed, &targets[t].name(), &devs[t], j, runtime_s)?,
                };
                if let Some(cell) = figures.get_mut(t).and_then(|v| v.get_mut(j)) {
                    *cell = Some(f);
                }
            }
        }
        let mut round_cpu = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            round_cpu.push(match t {
                Target::Raw => None,
                Target::VdpaBlk { .. } | Target::VdpaBlkVhost => {
                    Some(daemon_cpu_s(bed, &t.name(), &format!("/run/bench{i}.pid"))?)
                }
                Target::Qsd => Some(daemon_cpu_s(
                    bed,
                    &t.name(),
                    &format!("/run/qsd-{QSD}.pid"),
                )?),
            });
        }
        // Each stop checks that only the daemons not yet stopped still have devices.
        let names: Vec<Option<String>> = (0..targets.len())
            .map(|i| device_name(targets, i))
            .collect();
        for (i, name) in names.iter().enumerate() {
            let Some(name) = name else { continue };
            let remaining: Vec<&str> = names[i + 1..]
                .iter()
                .flatten()
                .map(String::as_str)
                .collect();
            match targets[i] {
                Target::VdpaBlk { .. } | Target::VdpaBlkVhost => {
                    steps::vdpa_blk_stop(bed, name, None, &remaining)?
                }
                _ => steps::qsd_stop(bed, name, &remaining)?,
            }
        }
        rounds.push(
            figures
                .into_iter()
                .map(|jobs| jobs.into_iter().flatten().collect())
                .collect(),
        );
        cpu.push(round_cpu);
    }
    let daemon_cpu_s = (0..targets.len())
        .map(|t| {
            let v: Vec<f64> = cpu
                .iter()
                .filter_map(|r| r.get(t).copied().flatten())
                .collect();
            (!v.is_empty()).then(|| median(v))
        })
        .collect();
    let figures = (0..targets.len())
        .map(|t| {
            (0..JOBS.len())
                .map(|j| median_figures(rounds.iter().map(|r| &r[t][j])))
                .collect()
        })
        .collect();
    Ok(Report {
        device: dev,
        runtime_s,
        queues,
        rounds: rounds_n,
        targets: targets.to_vec(),
        figures,
        per_round_iops: rounds
            .iter()
            .map(|r| {
                r.iter()
                    .map(|t| t.iter().map(|f| f.iops).collect())
                    .collect()
            })
            .collect(),
        daemon_cpu_s,
    })
}

/// CPU seconds (user + system, every thread) the daemon whose pid is in `pidfile` has used.
fn daemon_cpu_s(bed: &mut Bed, what: &str, pidfile: &str) -> Result<f64> {
    let step = bed.step_env(
        Role::Compute,
        "measure",
        &format!("CPU time of {what}"),
        include_str!("sh/cpu_time.sh"),
        &[("PIDFILE", pidfile.to_string())],
        secs(30),
    )?;
    let v = steps::required(&step, "cpu_s", "daemon CPU seconds")?;
    v.parse().map_err(|e| Error::Check {
        check: format!("CPU time of {what}"),
        reason: format!("{v:?}: {e}"),
    })
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of each figure over the rounds (the mean of the middle two for an even count).
fn median_figures<'a>(figs: impl Iterator<Item = &'a FioFigures>) -> FioFigures {
    let figs: Vec<&FioFigures> = figs.collect();
    let med = |get: fn(&FioFigures) -> f64| median(figs.iter().map(|f| get(f)).collect());
    FioFigures {
        job: figs.first().map(|f| f.job.clone()).unwrap_or_default(),
        ios: med(|f| f.ios as f64) as u64,
        iops: med(|f| f.iops),
        bw_mib_s: med(|f| f.bw_mib_s),
        p50_us: med(|f| f.p50_us),
        p99_us: med(|f| f.p99_us),
        p999_us: med(|f| f.p999_us),
        // Per-direction medians are not kept: the bench reports the summed figures.
        read: None,
        write: None,
    }
}

/// The qemu-storage-daemon's vdpa device.
const QSD: &str = "bench-qsd";

/// The vdpa device of target `i` (None for the raw device).
fn device_name(targets: &[Target], i: usize) -> Option<String> {
    match targets.get(i)? {
        Target::Raw => None,
        Target::VdpaBlk { .. } | Target::VdpaBlkVhost => Some(format!("bench{i}")),
        Target::Qsd => Some(QSD.to_string()),
    }
}

/// Starts vdpa-blk `bench{i}` with `args`; returns its disk's name (virtio-vdpa) or its
/// `/dev/vhost-vdpa-N` (vhost-vdpa).
fn start_vdpa_blk(bed: &mut Bed, vdpa_blk: &Path, i: usize, args: &str) -> Result<String> {
    let ready = steps::vdpa_blk_start(
        bed,
        &vdpa_blk.display().to_string(),
        &format!("bench{i}"),
        args,
    )?;
    if args.contains("--driver vhost-vdpa") {
        return steps::path_of(&ready, "vdpa-blk vhost-vdpa device");
    }
    steps::disk_of(&ready, "vdpa-blk virtio disk")
}

/// IOPS of target `a` over target `b` for job `j`: the median of the rounds' ratios (the two
/// were measured back to back in each round) with their range, or the ratio of the medians
/// without rounds.
fn ratio(r: &Report, a: usize, b: usize, j: usize) -> Option<Spread> {
    let per_round: Vec<f64> = r
        .per_round_iops
        .iter()
        .filter_map(|round| {
            let x = *round.get(a)?.get(j)?;
            let y = *round.get(b)?.get(j)?;
            (y > 0.0).then(|| x / y)
        })
        .collect();
    if let Some(s) = Spread::of(per_round) {
        return Some(s);
    }
    let x = r.figures.get(a)?.get(j)?.iops;
    let y = r.figures.get(b)?.get(j)?.iops;
    (y > 0.0).then(|| Spread {
        median: x / y,
        min: x / y,
        max: x / y,
    })
}

/// Target `t`'s IOPS for job `j` over the rounds (None without rounds).
fn iops_spread(r: &Report, t: usize, j: usize) -> Option<Spread> {
    Spread::of(
        r.per_round_iops
            .iter()
            .filter_map(|round| round.get(t)?.get(j).copied())
            .collect(),
    )
}

/// The report as a Markdown table: per job, one row per target with IOPS (the range over the
/// rounds in brackets), the ratios to the raw device and to qemu-storage-daemon (medians of the
/// per-round ratios, with their range), and p50/p99 latency.
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "| job | target | IOPS (min-max) | / raw (min-max) | / qsd (min-max) | p50 us | p99 us |\n|---|---|---|---|---|---|---|\n",
    );
    for (j, (name, ..)) in JOBS.iter().enumerate() {
        for (t, target) in r.targets.iter().enumerate() {
            let Some(f) = r.figures.get(t).and_then(|v| v.get(j)) else {
                continue;
            };
            let vs = |other: Target| match r.targets.iter().position(|o| *o == other) {
                Some(o) if o != t => ratio(r, t, o, j)
                    .map(|x| format!("{:.2}x ({:.2}-{:.2})", x.median, x.min, x.max))
                    .unwrap_or_else(|| "-".into()),
                _ => "-".to_string(),
            };
            let iops = match iops_spread(r, t, j) {
                Some(x) => format!("{:.0} ({:.0}-{:.0})", f.iops, x.min, x.max),
                None => format!("{:.0}", f.iops),
            };
            s.push_str(&format!(
                "| {name} | {} | {iops} | {} | {} | {:.0} | {:.0} |\n",
                target.name(),
                vs(Target::Raw),
                vs(Target::Qsd),
                f.p50_us,
                f.p99_us
            ));
        }
    }
    // Wall time of one target's fio jobs: each runs after a 2 s ramp.
    let wall = (JOBS.len() as u32 * (r.runtime_s + 2)) as f64;
    s.push_str("\n| target | daemon CPU s over its jobs | of one CPU |\n|---|---|---|\n");
    for (t, target) in r.targets.iter().enumerate() {
        if let Some(Some(c)) = r.daemon_cpu_s.get(t) {
            s.push_str(&format!(
                "| {} | {c:.1} | {:.0}% |\n",
                target.name(),
                100.0 * c / wall
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(iops: f64) -> FioFigures {
        FioFigures {
            job: "j".into(),
            ios: 1,
            iops,
            bw_mib_s: 0.0,
            p50_us: 10.0,
            p99_us: 20.0,
            p999_us: 30.0,
            read: None,
            write: None,
        }
    }

    #[test]
    fn table_has_a_row_per_job_with_ratios() {
        let r = Report {
            device: "nvme0n1".into(),
            runtime_s: 5,
            queues: 2,
            rounds: 1,
            per_round_iops: vec![],
            daemon_cpu_s: vec![None, Some(12.0), Some(48.0), Some(3.0), Some(6.0)],
            targets: Target::all(&[0, 50]),
            figures: vec![
                vec![fig(1000.0); JOBS.len()],
                vec![fig(900.0); JOBS.len()],
                vec![fig(950.0); JOBS.len()],
                vec![fig(1100.0); JOBS.len()],
                vec![fig(450.0); JOBS.len()],
            ],
        };
        let t = table(&r);
        assert_eq!(t.lines().count(), 2 + 5 * JOBS.len() + 3 + 4);
        for row in [
            "| randread-4k-qd1 | raw device | 1000 | - | 2.22x (2.22-2.22) | 10 | 20 |",
            "| randread-4k-qd1 | vdpa-blk | 900 | 0.90x (0.90-0.90) | 2.00x (2.00-2.00) | 10 | 20 |",
            "| randread-4k-qd1 | vdpa-blk --poll-us 50 | 950 | 0.95x (0.95-0.95) | 2.11x (2.11-2.11) | 10 | 20 |",
            "| randread-4k-qd1 | vdpa-blk vhost-vdpa (blkio) | 1100 | 1.10x (1.10-1.10) | 2.44x (2.44-2.44) | 10 | 20 |",
            "| randread-4k-qd1 | qemu-storage-daemon | 450 | 0.45x (0.45-0.45) | - | 10 | 20 |",
        ] {
            assert!(t.contains(row), "{row} missing from\n{t}");
        }
        // 4 jobs x (5 + 2) s = 28 s of fio per target.
        assert!(t.contains("| vdpa-blk --poll-us 50 | 48.0 | 171% |"), "{t}");
        assert!(!t.lines().any(|l| l.starts_with("| raw device |")), "{t}");
    }

    #[test]
    fn targets_are_raw_then_each_vdpa_blk_then_the_daemon() {
        assert_eq!(
            Target::all(&[0]),
            vec![
                Target::Raw,
                Target::VdpaBlk { poll_us: 0 },
                Target::VdpaBlkVhost,
                Target::Qsd
            ]
        );
        assert_eq!(Target::VdpaBlk { poll_us: 0 }.name(), "vdpa-blk");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let three = [fig(3.0), fig(1.0), fig(2.0)];
        assert_eq!(median_figures(three.iter()).iops, 2.0);
        let two = [fig(1.0), fig(4.0)];
        assert_eq!(median_figures(two.iter()).iops, 2.5);
    }

    #[test]
    fn every_job_writes_its_own_json_with_its_parameters() {
        for (j, (name, rw, bs, qd)) in JOBS.iter().enumerate() {
            let (args, out) = fio_job("vda", j, 5);
            assert_eq!(out, format!("/tmp/bench-{name}.json"));
            let args: Vec<&str> = args.split(' ').collect();
            for want in [
                format!("--name={name}"),
                "--filename=/dev/vda".to_string(),
                format!("--rw={rw}"),
                format!("--bs={bs}"),
                format!("--iodepth={qd}"),
                "--runtime=5".to_string(),
            ] {
                assert!(
                    args.contains(&want.as_str()),
                    "{want} missing from {args:?}"
                );
            }
            // sh/fio.sh splits the list at spaces and adds the output options itself.
            assert!(args.iter().all(|a| a.starts_with("--")), "{args:?}");
            assert!(!args.iter().any(|a| a.starts_with("--output")), "{args:?}");
        }
    }

    #[test]
    fn each_stop_leaves_only_the_daemons_still_to_stop() {
        let t = Target::all(&[0, 50]);
        let names: Vec<Option<String>> = (0..t.len()).map(|i| device_name(&t, i)).collect();
        assert_eq!(
            names,
            vec![
                None,
                Some("bench1".into()),
                Some("bench2".into()),
                Some("bench3".into()),
                Some(QSD.into())
            ]
        );
    }

    #[test]
    fn ratios_are_medians_of_the_rounds_ratios() {
        // Two targets, one job, three rounds in which the machine's speed drifts: the pairs
        // keep a 0.5x ratio, which the medians of the IOPS (400 / 1000) would miss.
        let r = Report {
            device: "nvme0n1".into(),
            runtime_s: 5,
            queues: 1,
            rounds: 3,
            targets: vec![Target::Raw, Target::Qsd],
            figures: vec![vec![fig(1000.0)], vec![fig(400.0)]],
            per_round_iops: vec![
                vec![vec![2000.0], vec![1000.0]],
                vec![vec![1000.0], vec![500.0]],
                vec![vec![400.0], vec![200.0]],
            ],
            daemon_cpu_s: vec![None, None],
        };
        let at = |r: &Report, a, b| ratio(r, a, b, 0).map(|s| (s.median, s.min, s.max));
        assert_eq!(at(&r, 1, 0), Some((0.5, 0.5, 0.5)));
        assert_eq!(at(&r, 0, 1), Some((2.0, 2.0, 2.0)));
        // The IOPS column's range is over the rounds.
        assert!(table(&r).contains("| qemu-storage-daemon | 400 (200-1000) | 0.50x (0.50-0.50) |"));
        let no_rounds = Report {
            per_round_iops: vec![],
            ..r
        };
        assert_eq!(at(&no_rounds, 1, 0), Some((0.4, 0.4, 0.4)));
    }
}
