//! fio's JSON output turned into the figures the bed prints: IOPS, bandwidth, completion
//! latency percentiles (p50, p99, p99.9), summed and per direction. A job fio reports as failed
//! (its `error`) or that did no I/O is an error, never a row of zeros.

use serde::Serialize;
use serde_json::Value;

/// One fio job's figures (both directions summed for IOPS and bandwidth; latency from the
/// direction that did I/O, reads first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FioFigures {
    pub job: String,
    /// I/Os completed, both directions (fio's `total_ios`).
    pub ios: u64,
    pub iops: f64,
    pub bw_mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Each direction that did I/O, on its own (a mixed job has both).
    pub read: Option<Direction>,
    pub write: Option<Direction>,
}

/// One direction's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Direction {
    pub ios: u64,
    pub iops: f64,
    pub bw_mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Parses fio `--output-format=json` text into one entry per job.
pub fn parse(json: &str) -> Result<Vec<FioFigures>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    from_value(&v)
}

/// Same, from an already parsed value.
pub fn from_value(v: &Value) -> Result<Vec<FioFigures>, String> {
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("fio JSON has no `jobs` array")?;
    jobs.iter()
        .map(|job| {
            let name = job
                .get("jobname")
                .and_then(Value::as_str)
                .ok_or("fio job without `jobname`")?;
            let error = job.get("error").and_then(Value::as_i64).unwrap_or(0);
            if error != 0 {
                return Err(format!(
                    "fio job `{name}` failed with error {error} ({})",
                    std::io::Error::from_raw_os_error(error as i32)
                ));
            }
            let dir = |d: &str| job.get(d).filter(|x| num(x, "io_bytes") > 0.0);
            let (r, w) = (dir("read"), dir("write"));
            let figures = |d: &Value| -> Result<Direction, String> {
                let pct = |p: &str| {
                    d.get("clat_ns")
                        .and_then(|c| c.get("percentile"))
                        .and_then(|c| c.get(p))
                        .and_then(Value::as_f64)
                        .map(|ns| ns / 1000.0)
                        .ok_or_else(|| format!("fio job `{name}` has no clat percentile {p}"))
                };
                // A direction that did I/O has its rates: absent ones are an error, not 0.
                let need = |k: &str| {
                    d.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| format!("fio job `{name}` has no `{k}`"))
                };
                Ok(Direction {
                    ios: d
                        .get("total_ios")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| format!("fio job `{name}` has no `total_ios`"))?,
                    iops: need("iops")?,
                    bw_mib_s: need("bw")? / 1024.0,
                    p50_us: pct("50.000000")?,
                    p99_us: pct("99.000000")?,
                    p999_us: pct("99.900000")?,
                })
            };
            let read = r.map(figures).transpose()?;
            let write = w.map(figures).transpose()?;
            // Latency from the direction that did I/O, reads first.
            let lat = read
                .as_ref()
                .or(write.as_ref())
                .ok_or_else(|| format!("fio job `{name}` did no I/O"))?;
            let sum = |f: fn(&Direction) -> f64| {
                read.as_ref().map_or(0.0, f) + write.as_ref().map_or(0.0, f)
            };
            Ok(FioFigures {
                job: name.to_string(),
                ios: read.as_ref().map_or(0, |d| d.ios) + write.as_ref().map_or(0, |d| d.ios),
                iops: sum(|d| d.iops),
                bw_mib_s: sum(|d| d.bw_mib_s),
                p50_us: lat.p50_us,
                p99_us: lat.p99_us,
                p999_us: lat.p999_us,
                read: read.clone(),
                write: write.clone(),
            })
        })
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// A plain-text table: device, job, IOPS, MiB/s, p50 and p99 in microseconds.
pub fn table(rows: &[(String, FioFigures)]) -> String {
    let mut s = format!(
        "{:<36} {:<16} {:>10} {:>9} {:>10} {:>10}\n",
        "device", "job", "IOPS", "MiB/s", "p50 us", "p99 us"
    );
    for (dev, f) in rows {
        s.push_str(&format!(
            "{:<36} {:<16} {:>10.0} {:>9.1} {:>10.0} {:>10.0}\n",
            dev, f.job, f.iops, f.bw_mib_s, f.p50_us, f.p99_us
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"fio version":"fio-3.33","jobs":[
      {"jobname":"randread-4k-qd16","read":{"io_bytes":40960000,"total_ios":10000,"iops":2500.5,"bw":10002,
        "clat_ns":{"percentile":{"50.000000":6016,"99.000000":21000,"99.900000":40000}}},
       "write":{"io_bytes":0,"iops":0,"bw":0,"clat_ns":{}}},
      {"jobname":"randwrite","read":{"io_bytes":0,"iops":0,"bw":0},
       "write":{"io_bytes":4096,"total_ios":1,"iops":100,"bw":400,
        "clat_ns":{"percentile":{"50.000000":1000,"99.000000":3000,"99.900000":5000}}}}]}"#;

    /// Recorded with fio 3.33: a 70/30 random read/write job on a file for 2 s.
    const MIXED: &str = include_str!("../testdata/fio/mixed.json");
    /// Recorded with fio 3.33: a write job on /proc/version (fio reports error 1, EPERM).
    const FAILED: &str = include_str!("../testdata/fio/failed.json");
    /// Recorded with fio 3.33: a read job whose file could not be set up
    /// (`--offset=2M --allow_file_create=0` on a 1 MiB file): fio exits 1 but reports the job
    /// with error 0 and no I/O, which must not pass as a row of zeros.
    const ZERO_IO: &str = include_str!("../testdata/fio/zero-io.json");

    #[test]
    fn a_recorded_mixed_job_has_both_directions_and_their_sum() {
        let f = parse(MIXED).expect("parses");
        assert_eq!(f.len(), 1);
        let (r, w) = (
            f[0].read.as_ref().expect("read"),
            f[0].write.as_ref().expect("write"),
        );
        assert!(r.iops > 0.0 && w.iops > 0.0, "{f:?}");
        assert!((f[0].iops - (r.iops + w.iops)).abs() < 1e-6);
        assert!((f[0].bw_mib_s - (r.bw_mib_s + w.bw_mib_s)).abs() < 1e-6);
        assert_eq!((r.ios, w.ios, f[0].ios), (50067, 21442, 50067 + 21442));
        assert!(r.iops > w.iops, "70 % reads: {r:?} {w:?}");
        assert!(r.p50_us <= r.p99_us && r.p99_us <= r.p999_us, "{r:?}");
        assert_eq!(f[0].p999_us, r.p999_us, "latency from the reads");
    }

    #[test]
    fn a_recorded_job_with_zero_io_and_no_error_is_an_error_naming_it() {
        let e = parse(ZERO_IO).expect_err("zero I/O");
        assert!(e.contains("`zero-io` did no I/O"), "{e}");
    }

    #[test]
    fn a_recorded_failed_job_is_an_error_naming_it() {
        let e = parse(FAILED).expect_err("failed job");
        assert!(e.contains("`failed` failed with error 1"), "{e}");
    }

    #[test]
    fn figures_come_from_the_direction_that_did_io() {
        let f = parse(SAMPLE).expect("parses");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].job, "randread-4k-qd16");
        assert!((f[0].iops - 2500.5).abs() < 1e-9);
        assert!((f[0].p50_us - 6.016).abs() < 1e-9);
        assert!((f[0].p99_us - 21.0).abs() < 1e-9);
        assert!((f[1].iops - 100.0).abs() < 1e-9);
        assert!((f[1].p99_us - 3.0).abs() < 1e-9);
    }

    #[test]
    fn malformed_fio_output_is_an_error() {
        assert!(parse("fio: oops").is_err());
        assert!(parse(r#"{"jobs":[{"jobname":"x","read":{"io_bytes":0}}]}"#)
            .expect_err("no io")
            .contains("did no I/O"));
        assert!(parse(r#"{"nojobs":1}"#).is_err());
        assert!(parse(
            r#"{"jobs":[{"jobname":"x","read":{"io_bytes":4096,"total_ios":1,
            "clat_ns":{"percentile":{"50.000000":1,"99.000000":2,"99.900000":3}}}}]}"#
        )
        .expect_err("no iops")
        .contains("no `iops`"));
    }

    #[test]
    fn table_has_a_row_per_device() {
        let f = parse(SAMPLE).expect("parses");
        let t = table(&[("/dev/vda".into(), f[0].clone())]);
        assert_eq!(t.lines().count(), 2);
        assert!(t.contains("/dev/vda"));
        assert!(t.contains("2500") || t.contains("2501"));
    }
}
