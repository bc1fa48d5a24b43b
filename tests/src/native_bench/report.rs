//! The native benchmark's figures: per backing, job and target, the medians over rounds and
//! their spread (min..max), and the ratios against the raw baseline and against
//! qemu-storage-daemon, each the median of the per-round ratios (never a ratio of medians).

use std::fmt::Write as _;

use serde::Serialize;

use super::{BackingKind, Target};
use crate::compare::median_of;
use crate::fio::FioFigures;

/// One run: a job on a target in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub backing: BackingKind,
    pub job: String,
    pub target: Target,
    pub round: u32,
    pub figures: FioFigures,
    /// CPU seconds the target's daemon spent during the run (None: the raw baseline).
    pub daemon_cpu_s: Option<f64>,
    /// CPU seconds the load generator spent (its own process).
    pub load_cpu_s: f64,
}

impl Sample {
    /// Daemon CPU microseconds per I/O.
    pub fn daemon_us_per_io(&self) -> Option<f64> {
        let ios = self.figures.ios;
        self.daemon_cpu_s
            .filter(|_| ios > 0)
            .map(|s| s * 1e6 / ios as f64)
    }

    /// Load generator CPU microseconds per I/O.
    pub fn load_us_per_io(&self) -> Option<f64> {
        let ios = self.figures.ios;
        (ios > 0).then(|| self.load_cpu_s * 1e6 / ios as f64)
    }
}

/// A median and the range it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Over the finite values of `v` (None: none).
    pub fn of(v: Vec<f64>) -> Option<Spread> {
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        let min = v.iter().copied().reduce(f64::min)?;
        let max = v.iter().copied().reduce(f64::max)?;
        Some(Spread {
            median: median_of(v)?,
            min,
            max,
        })
    }
}

/// One backing, job and target over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub backing: BackingKind,
    pub job: String,
    pub target: Target,
    pub rounds: usize,
    pub iops: Spread,
    pub bw_mib_s: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    pub daemon_us_per_io: Option<Spread>,
    pub load_us_per_io: Option<Spread>,
    /// IOPS over the raw baseline's in the same round.
    pub vs_raw: Option<Spread>,
    /// IOPS over qemu-storage-daemon's in the same round.
    pub vs_qsd: Option<Spread>,
    /// Daemon CPU per I/O over qemu-storage-daemon's in the same round.
    pub cpu_vs_qsd: Option<Spread>,
}

/// Per-round ratios of `f` between `target` and `base` on one backing and job.
fn ratios(
    samples: &[Sample],
    backing: BackingKind,
    job: &str,
    target: Target,
    base: Target,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Option<Spread> {
    let find = |t: Target, r: u32| {
        samples
            .iter()
            .find(|s| s.backing == backing && s.job == job && s.target == t && s.round == r)
    };
    let v = samples
        .iter()
        .filter(|s| s.backing == backing && s.job == job && s.target == target)
        .filter_map(|s| {
            let b = find(base, s.round)?;
            Some(f(s)? / f(b)?)
        })
        .collect();
    Spread::of(v)
}

/// The rows, in the order backings, jobs and targets first appear in `samples`.
pub fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut keys: Vec<(BackingKind, String, Target)> = Vec::new();
    for s in samples {
        let k = (s.backing, s.job.clone(), s.target);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut jobs_order: Vec<&str> = Vec::new();
    for s in samples {
        if !jobs_order.contains(&s.job.as_str()) {
            jobs_order.push(&s.job);
        }
    }
    keys.sort_by_key(|(b, j, t)| (*b, jobs_order.iter().position(|x| x == j), *t));
    keys.into_iter()
        .filter_map(|(backing, job, target)| {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.backing == backing && s.job == job && s.target == target)
                .collect();
            let over = |f: &dyn Fn(&Sample) -> f64| Spread::of(mine.iter().map(|s| f(s)).collect());
            let opt = |f: &dyn Fn(&Sample) -> Option<f64>| {
                Spread::of(mine.iter().filter_map(|s| f(s)).collect())
            };
            let iops = |s: &Sample| Some(s.figures.iops);
            let vs = |base| {
                (target != base)
                    .then(|| ratios(samples, backing, &job, target, base, iops))
                    .flatten()
            };
            Some(Row {
                rounds: mine.len(),
                iops: over(&|s| s.figures.iops)?,
                bw_mib_s: over(&|s| s.figures.bw_mib_s)?,
                p50_us: over(&|s| s.figures.p50_us)?,
                p99_us: over(&|s| s.figures.p99_us)?,
                p999_us: over(&|s| s.figures.p999_us)?,
                daemon_us_per_io: opt(&Sample::daemon_us_per_io),
                load_us_per_io: opt(&Sample::load_us_per_io),
                vs_raw: vs(Target::Raw),
                vs_qsd: vs(Target::Qsd),
                cpu_vs_qsd: (target != Target::Qsd)
                    .then(|| {
                        ratios(
                            samples,
                            backing,
                            &job,
                            target,
                            Target::Qsd,
                            Sample::daemon_us_per_io,
                        )
                    })
                    .flatten(),
                backing,
                job,
                target,
            })
        })
        .collect()
}

/// What a complete run lacks: a row without its daemon's CPU, or a ratio it should have.
pub fn missing(rows: &[Row], targets: &[Target]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let name = format!("{} {} {}", r.backing.id(), r.job, r.target.id());
        if r.target != Target::Raw && r.daemon_us_per_io.is_none() {
            out.push(format!("{name}: daemon CPU per I/O"));
        }
        if r.target != Target::Raw && targets.contains(&Target::Raw) && r.vs_raw.is_none() {
            out.push(format!("{name}: ratio to raw"));
        }
        if r.target != Target::Qsd && targets.contains(&Target::Qsd) && r.vs_qsd.is_none() {
            out.push(format!("{name}: ratio to qemu-storage-daemon"));
        }
    }
    out
}

fn range(s: &Spread, digits: usize) -> String {
    format!("{:.d$} ({:.d$}-{:.d$})", s.median, s.min, s.max, d = digits)
}

fn ratio(s: &Option<Spread>) -> String {
    s.as_ref()
        .map(|s| format!("{:.2}x ({:.2}-{:.2})", s.median, s.min, s.max))
        .unwrap_or_else(|| "-".into())
}

/// A Markdown table per backing.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut backing = None;
    for r in rows {
        if backing != Some(r.backing) {
            backing = Some(r.backing);
            let _ = writeln!(out, "\n**{}**\n", r.backing.title());
            out.push_str(
                "| job | target | IOPS (min-max) | MiB/s | p50 us | p99 us | p99.9 us | daemon CPU us/IO | load gen CPU us/IO | x raw | x qsd | CPU/IO x qsd |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|---|\n",
            );
        }
        let cpu = |s: &Option<Spread>| {
            s.as_ref()
                .map(|s| format!("{:.2}", s.median))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            r.job,
            r.target.title(),
            range(&r.iops, 0),
            r.bw_mib_s.median,
            r.p50_us.median,
            r.p99_us.median,
            r.p999_us.median,
            cpu(&r.daemon_us_per_io),
            cpu(&r.load_us_per_io),
            ratio(&r.vs_raw),
            ratio(&r.vs_qsd),
            ratio(&r.cpu_vs_qsd),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(iops: f64, ios: u64) -> FioFigures {
        FioFigures {
            job: "j".into(),
            ios,
            iops,
            bw_mib_s: iops / 256.0,
            p50_us: 10.0,
            p99_us: 20.0,
            p999_us: 30.0,
            read: None,
            write: None,
        }
    }

    fn s(target: Target, round: u32, iops: f64, cpu: Option<f64>) -> Sample {
        Sample {
            backing: BackingKind::Tmpfs,
            job: "j".into(),
            target,
            round,
            figures: fig(iops, (iops * 2.0) as u64),
            daemon_cpu_s: cpu,
            load_cpu_s: 1.0,
        }
    }

    #[test]
    fn ratios_are_medians_of_each_rounds_ratio_with_their_range() {
        let samples = vec![
            s(Target::Raw, 0, 100.0, None),
            s(Target::VdpaBlk, 0, 80.0, Some(0.8)),
            s(Target::Qsd, 0, 40.0, Some(0.8)),
            s(Target::Raw, 1, 200.0, None),
            s(Target::VdpaBlk, 1, 100.0, Some(1.0)),
            s(Target::Qsd, 1, 100.0, Some(2.0)),
            s(Target::Raw, 2, 100.0, None),
            s(Target::VdpaBlk, 2, 90.0, Some(0.9)),
            s(Target::Qsd, 2, 60.0, Some(1.2)),
        ];
        let rows = rows(&samples);
        assert_eq!(rows.len(), 3);
        let v = rows
            .iter()
            .find(|r| r.target == Target::VdpaBlk)
            .expect("vdpa-blk row");
        let raw = v.vs_raw.expect("vs raw");
        // Per round 0.8, 0.5, 0.9: the median 0.8, never 90/100 of the medians' ratio.
        assert_eq!((raw.median, raw.min, raw.max), (0.8, 0.5, 0.9));
        let q = v.vs_qsd.expect("vs qsd");
        assert_eq!((q.median, q.min, q.max), (1.5, 1.0, 2.0));
        assert_eq!(v.iops.median, 90.0);
        // CPU per I/O: vdpa-blk 5000 us/IO in every round; qsd 10000, 10000, 10000.
        let c = v.cpu_vs_qsd.expect("cpu vs qsd");
        assert!((c.median - 0.5).abs() < 1e-9, "{c:?}");
        assert!(missing(&rows, &Target::ALL).is_empty());
        let r = rows.iter().find(|r| r.target == Target::Raw).expect("raw");
        assert!(r.vs_raw.is_none() && r.daemon_us_per_io.is_none());
        let md = markdown(&rows);
        assert!(md.contains("| j | vdpa-blk | 90 (80-100) |"), "{md}");
        assert!(md.contains("0.80x (0.50-0.90)"), "{md}");
    }

    #[test]
    fn a_daemon_without_cpu_time_or_a_round_without_its_baseline_is_missing() {
        let samples = vec![
            s(Target::Raw, 0, 100.0, None),
            s(Target::VdpaBlk, 0, 80.0, None),
            s(Target::Qsd, 1, 40.0, Some(0.8)),
        ];
        let m = missing(&rows(&samples), &Target::ALL);
        assert!(
            m.iter()
                .any(|x| x == "tmpfs j vdpa-blk: daemon CPU per I/O"),
            "{m:?}"
        );
        assert!(m.iter().any(|x| x == "tmpfs j qsd: ratio to raw"), "{m:?}");
        assert!(
            m.iter()
                .any(|x| x == "tmpfs j vdpa-blk: ratio to qemu-storage-daemon"),
            "{m:?}"
        );
    }
}
