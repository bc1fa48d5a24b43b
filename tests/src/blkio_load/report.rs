//! The report: a job's [`JobStats`] (numjobs of them) merged as fio's group_reporting merges
//! them, and written in fio's `--output-format=json` shape.
//!
//! Apart from the engine because its contract is fio's format, not the I/O: the document must
//! read through [`crate::fio::parse`] like fio's own, which its tests check.

use std::time::Duration;

use serde_json::{json, Value};

use super::engine::{Direction, Failure, JobStats};

/// One job as fio reports it (numjobs merged, as with group_reporting).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct JobReport {
    pub(super) name: String,
    /// fio's `error`: 0, or the errno that stopped a job.
    pub(super) error: i32,
    pub(super) read: Direction,
    pub(super) write: Direction,
    pub(super) elapsed: Duration,
}

impl JobReport {
    /// The report of `jobs` (in job order) merged, and the first job's failure with its number.
    pub(super) fn merged(name: &str, jobs: &[JobStats]) -> (JobReport, Option<(usize, Failure)>) {
        let mut r = JobReport {
            name: name.to_string(),
            error: 0,
            read: Direction::default(),
            write: Direction::default(),
            elapsed: Duration::ZERO,
        };
        let mut first = None;
        for (i, j) in jobs.iter().enumerate() {
            r.read.merge(&j.read);
            r.write.merge(&j.write);
            r.elapsed = r.elapsed.max(j.elapsed);
            if let (None, Some(f)) = (&first, &j.failure) {
                r.error = f.errno;
                first = Some((i, f.clone()));
            }
        }
        (r, first)
    }
}

fn direction_json(d: &Direction) -> Value {
    let secs = d.runtime.as_secs_f64();
    let per_s = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
    let mut v = json!({
        "io_bytes": d.bytes,
        "io_kbytes": d.bytes / 1024,
        "bw_bytes": per_s(d.bytes).round() as u64,
        "bw": (per_s(d.bytes) / 1024.0).round() as u64,
        "iops": per_s(d.ios),
        "runtime": d.runtime.as_millis() as u64,
        "total_ios": d.ios,
    });
    if d.ios > 0 {
        let p = |pct: f64| d.hist.percentile(pct).unwrap_or(0);
        v["clat_ns"] = json!({
            "min": d.hist.min().unwrap_or(0),
            "max": d.hist.max().unwrap_or(0),
            "mean": d.hist.mean().unwrap_or(0.0),
            "N": d.hist.count(),
            "percentile": {
                "50.000000": p(50.0),
                "99.000000": p(99.0),
                "99.900000": p(99.9),
            },
        });
    }
    v
}

/// fio's `--output-format=json` document of `jobs`.
pub(super) fn document(jobs: &[JobReport]) -> Value {
    json!({
        "fio version": "testbed-blkio-load",
        "jobs": jobs.iter().map(|j| json!({
            "jobname": j.name,
            "groupid": 0,
            "error": j.error,
            "read": direction_json(&j.read),
            "write": direction_json(&j.write),
            "elapsed": j.elapsed.as_secs_f64().round() as u64,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blkio_load::engine::EILSEQ;
    use crate::blkio_load::histogram::{Histogram, PRECISION};

    fn dir(ios: u64, bs: u64, ms: u64, lat_ns: u64) -> Direction {
        let mut d = Direction {
            bytes: ios * bs,
            ios,
            runtime: Duration::from_millis(ms),
            hist: Histogram::new(),
        };
        for i in 0..ios {
            d.hist.record(lat_ns + i % 10);
        }
        d
    }

    fn report(read: Direction, write: Direction, error: i32) -> JobReport {
        JobReport {
            name: "job".into(),
            error,
            read,
            write,
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_read_only_document_is_read_by_fio_parse() {
        let doc = document(&[report(
            dir(2000, 4096, 2000, 50_000),
            Direction::default(),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        assert_eq!(f.len(), 1);
        let r = f[0].read.as_ref().expect("read");
        assert!(f[0].write.is_none());
        assert_eq!((f[0].job.as_str(), r.ios), ("job", 2000));
        assert!((r.iops - 1000.0).abs() < 1e-9, "{r:?}");
        assert!(
            (r.bw_mib_s - 1000.0 * 4096.0 / 1048576.0).abs() < 0.01,
            "{r:?}"
        );
        assert!((r.p50_us - 50.0).abs() <= 50.0 * PRECISION, "{r:?}");
        assert!(doc["jobs"][0]["write"].get("clat_ns").is_none());
        assert_eq!(doc["jobs"][0]["write"]["total_ios"], 0);
    }

    #[test]
    fn a_write_only_document_is_read_by_fio_parse() {
        let doc = document(&[report(
            Direction::default(),
            dir(500, 131072, 1000, 2_000_000),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        let w = f[0].write.as_ref().expect("write");
        assert!(f[0].read.is_none());
        assert_eq!(w.ios, 500);
        assert!((w.bw_mib_s - 62.5).abs() < 0.01, "{w:?}");
        assert!((f[0].p99_us - 2000.0).abs() <= 2000.0 * PRECISION, "{f:?}");
    }

    #[test]
    fn a_mixed_document_has_both_directions() {
        let doc = document(&[report(
            dir(700, 4096, 1000, 30_000),
            dir(300, 4096, 1000, 60_000),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        let (r, w) = (
            f[0].read.as_ref().expect("r"),
            f[0].write.as_ref().expect("w"),
        );
        assert_eq!((r.ios, w.ios, f[0].ios), (700, 300, 1000));
        assert!((f[0].iops - 1000.0).abs() < 1e-9);
        assert!(r.p50_us < w.p50_us);
        assert_eq!(doc["fio version"], "testbed-blkio-load");
        assert_eq!(doc["jobs"][0]["read"]["runtime"], 1000);
    }

    #[test]
    fn a_failed_verify_document_is_an_error_for_fio_parse() {
        let doc = document(&[report(
            dir(16, 4096, 10, 1000),
            dir(16, 4096, 10, 1000),
            EILSEQ,
        )]);
        let e = crate::fio::parse(&doc.to_string()).expect_err("failed");
        assert!(e.contains("failed with error 84"), "{e}");
    }

    #[test]
    fn jobs_merge_as_one_group() {
        let a = JobStats {
            read: dir(100, 4096, 1000, 1000),
            elapsed: Duration::from_secs(1),
            ..Default::default()
        };
        let b = JobStats {
            read: dir(300, 4096, 1500, 3000),
            elapsed: Duration::from_millis(1500),
            failure: Some(Failure {
                errno: libc::EIO,
                offset: Some(0),
                what: "x".into(),
            }),
            ..Default::default()
        };
        let (r, first) = JobReport::merged("m", &[a, b]);
        assert_eq!((r.read.ios, r.read.bytes), (400, 400 * 4096));
        assert_eq!(r.read.runtime, Duration::from_millis(1500));
        assert_eq!(r.read.hist.count(), 400);
        assert_eq!(r.elapsed, Duration::from_millis(1500));
        assert_eq!((r.error, first.map(|(j, _)| j)), (libc::EIO, Some(1)));
    }
}
