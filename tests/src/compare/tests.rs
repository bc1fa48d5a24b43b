//! Unit tests of the comparison report: its statistics, its checks, and what it writes.

use super::*;
use crate::fio::{Direction, FioFigures};

const LAT: &str = properties::LATENCY_PROFILE;
const SPEED: &str = properties::SPEED_PROFILE;
const MIXED: &str = "randrw-70-30-4k-qd64";

/// A direction that did `iops` for 10 s, with latencies from `p50`.
fn direction(iops: f64, p50: f64) -> Direction {
    Direction {
        ios: (iops * 10.0) as u64,
        iops,
        bw_mib_s: iops * 4.0 / 1024.0,
        p50_us: p50,
        p99_us: p50 * 3.0,
        p999_us: p50 * 5.0,
    }
}

/// fio's figures of `job`: 70 % reads and 30 % writes for the mixed profile, reads otherwise.
fn figures(job: &str, iops: f64, p50: f64) -> FioFigures {
    let (read, write) = if job == MIXED {
        (
            Some(direction(iops * 0.7, p50)),
            Some(direction(iops * 0.3, p50 * 2.0)),
        )
    } else {
        (Some(direction(iops, p50)), None)
    };
    let sum =
        |f: fn(&Direction) -> f64| read.as_ref().map_or(0.0, f) + write.as_ref().map_or(0.0, f);
    FioFigures {
        job: job.into(),
        ios: read.as_ref().map_or(0, |d| d.ios) + write.as_ref().map_or(0, |d| d.ios),
        iops: sum(|d| d.iops),
        bw_mib_s: sum(|d| d.bw_mib_s),
        p50_us: p50,
        p99_us: p50 * 3.0,
        p999_us: p50 * 5.0,
        read,
        write,
    }
}

/// A complete sample: 1 s of the node's CPU, a quarter of it the daemon's where there is one.
fn sample(path: StoragePath, job: &str, iops: f64) -> Sample {
    Sample {
        figures: figures(job, iops, 1e6 / iops.max(1.0)),
        node_cpu_s: 1.0,
        daemon_cpu_s: has_daemon(path).then_some(0.25),
    }
}

fn run_info(rounds: u32) -> RunInfo {
    RunInfo {
        date: "2025-06-01T12:00:00Z".into(),
        machine: "test CPU x 2, 4 GiB, Linux 6.12".into(),
        command: "testbed compare".into(),
        smoke: false,
        runtime_s: 10,
        size: "128M".into(),
        queues: 2,
        rounds,
        bed: "pair, 2 vCPUs each".into(),
        build_profile: "release".into(),
        wall_s: 754.4,
    }
}

/// `samples[round][path][profile]` made by `f`.
fn samples_of(
    paths: &[StoragePath],
    profiles: &[&str],
    rounds: usize,
    f: impl Fn(usize, StoragePath, &str) -> Sample,
) -> Vec<Vec<Vec<Sample>>> {
    (0..rounds)
        .map(|r| {
            paths
                .iter()
                .map(|&p| profiles.iter().map(|j| f(r, p, j)).collect())
                .collect()
        })
        .collect()
}

fn build_with(
    paths: &[StoragePath],
    profiles: &[&str],
    rounds: usize,
    f: impl Fn(usize, StoragePath, &str) -> Sample,
) -> Report {
    Report::build(
        run_info(rounds as u32),
        paths.to_vec(),
        profiles.iter().map(|p| p.to_string()).collect(),
        &samples_of(paths, profiles, rounds, f),
    )
    .expect("a well-shaped run")
}

/// Every path and three profiles over three rounds, each path a bit slower than the last.
fn full_report() -> Report {
    build_with(&StoragePath::ALL, &[LAT, SPEED, MIXED], 3, |r, p, j| {
        let path = StoragePath::ALL
            .iter()
            .position(|&x| x == p)
            .expect("a path") as f64;
        let job = if j == LAT { 0.1 } else { 1.0 };
        sample(
            p,
            j,
            40_000.0 * job * (1.0 - 0.1 * path) * (1.0 + 0.05 * r as f64),
        )
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn cell<'a>(r: &'a Report, path: StoragePath, profile: &str) -> &'a Cell {
    r.cell(path, profile)
        .unwrap_or_else(|| panic!("no cell {} / {profile}", path.id()))
}

#[test]
fn medians_of_an_odd_number_of_rounds_are_the_middle_value() {
    let iops = [300.0, 100.0, 200.0];
    let r = build_with(&[StoragePath::NvmeRdma], &[SPEED], 3, |i, p, j| {
        sample(p, j, iops[i])
    });
    let m = &cell(&r, StoragePath::NvmeRdma, SPEED).median;
    assert!(close(m.iops, 200.0), "{m:?}");
    assert!(close(m.p50_us, 1e6 / 200.0), "{m:?}");
    assert!(close(m.p99_us, 3e6 / 200.0), "{m:?}");
    assert_eq!(cell(&r, StoragePath::NvmeRdma, SPEED).rounds.len(), 3);
}

#[test]
fn medians_of_an_even_number_of_rounds_are_the_mean_of_the_middle_two() {
    let iops = [1000.0, 100.0, 300.0, 200.0];
    let r = build_with(&[StoragePath::NvmeRdma], &[SPEED], 4, |i, p, j| {
        sample(p, j, iops[i])
    });
    let m = &cell(&r, StoragePath::NvmeRdma, SPEED).median;
    assert!(close(m.iops, 250.0), "{m:?}");
}

#[test]
fn ratios_are_medians_of_each_rounds_ratio_not_ratios_of_the_medians() {
    // The machine drifts: round 2 is slow, round 3 fast; vdpa-blk is 0.8, 0.9, 0.95 of
    // nvme-rdma within each round. The medians alone (800 / 1000) would say 0.8.
    let iops = |r: usize, p: StoragePath| match (r, p) {
        (0, StoragePath::NvmeRdma) => 1000.0,
        (0, _) => 800.0,
        (1, StoragePath::NvmeRdma) => 400.0,
        (1, _) => 360.0,
        (_, StoragePath::NvmeRdma) => 2000.0,
        (_, _) => 1900.0,
    };
    let paths = [StoragePath::NvmeRdma, StoragePath::VdpaBlkVirtio];
    let r = build_with(&paths, &[SPEED], 3, |i, p, j| sample(p, j, iops(i, p)));
    let v = &cell(&r, StoragePath::VdpaBlkVirtio, SPEED).median;
    assert!(close(v.iops, 800.0), "{v:?}");
    let ratio = v.vs_nvme_rdma.expect("a ratio to nvme-rdma");
    assert!(close(ratio, 0.9), "{ratio}");
    assert_eq!(v.vs_local, None, "local was not measured");
}

#[test]
fn a_baseline_has_no_ratio_to_itself() {
    let paths = [
        StoragePath::Local,
        StoragePath::NvmeRdma,
        StoragePath::VdpaBlkVirtio,
    ];
    let r = build_with(&paths, &[SPEED], 1, |_, p, j| {
        sample(
            p,
            j,
            if p == StoragePath::Local {
                2000.0
            } else {
                1000.0
            },
        )
    });
    let local = &cell(&r, StoragePath::Local, SPEED).median;
    let raw = &cell(&r, StoragePath::NvmeRdma, SPEED).median;
    assert_eq!(local.vs_local, None);
    assert!(close(local.vs_nvme_rdma.expect("local / nvme-rdma"), 2.0));
    assert_eq!(raw.vs_nvme_rdma, None);
    assert!(close(raw.vs_local.expect("nvme-rdma / local"), 0.5));
    assert!(r.missing().is_empty(), "{:?}", r.missing());
}

#[test]
fn a_baseline_not_measured_gives_no_ratio_and_is_not_missing() {
    let paths = [StoragePath::VdpaBlkVirtio, StoragePath::QsdVduse];
    let r = build_with(&paths, &[SPEED], 2, |_, p, j| sample(p, j, 1000.0));
    for c in &r.cells {
        assert_eq!(
            (c.median.vs_nvme_rdma, c.median.vs_local),
            (None, None),
            "{c:?}"
        );
    }
    assert!(r.missing().is_empty(), "{:?}", r.missing());
}

#[test]
fn samples_of_the_wrong_shape_are_refused() {
    let paths = vec![StoragePath::NvmeRdma, StoragePath::VdpaBlkVirtio];
    let profiles = vec![SPEED.to_string(), LAT.to_string()];
    let good = samples_of(&paths, &[SPEED, LAT], 2, |_, p, j| sample(p, j, 1000.0));
    let build =
        |s: &[Vec<Vec<Sample>>]| Report::build(run_info(2), paths.clone(), profiles.clone(), s);
    assert!(build(&good).is_ok());

    let mut one_path_short = good.clone();
    one_path_short[1].pop();
    let e = build(&one_path_short).expect_err("a path missing in round 2");
    assert!(
        e.contains("round 2") && e.contains("2 paths x 2 profiles"),
        "{e}"
    );

    let mut one_profile_short = good.clone();
    one_profile_short[0][1].pop();
    let e = build(&one_profile_short).expect_err("a profile missing in round 1");
    assert!(e.contains("round 1"), "{e}");

    let e = build(&[]).expect_err("no round");
    assert!(e.contains("no round"), "{e}");
}

#[test]
fn cpu_per_io_is_the_median_of_each_rounds_cpu_over_its_ios() {
    let r = build_with(&[StoragePath::VdpaBlkVhost], &[SPEED], 1, |_, p, j| {
        sample(p, j, 1000.0)
    });
    let m = &cell(&r, StoragePath::VdpaBlkVhost, SPEED).median;
    // 10 000 I/Os, 1 s of the node, 0.25 s of the daemon.
    assert!(
        close(m.node_cpu_us_per_io.expect("node CPU"), 100.0),
        "{m:?}"
    );
    assert!(
        close(m.daemon_cpu_us_per_io.expect("daemon CPU"), 25.0),
        "{m:?}"
    );
    let raw = build_with(&[StoragePath::NvmeRdma], &[SPEED], 1, |_, p, j| {
        sample(p, j, 1000.0)
    });
    assert_eq!(
        cell(&raw, StoragePath::NvmeRdma, SPEED)
            .median
            .daemon_cpu_us_per_io,
        None
    );
}

#[test]
fn a_mixed_profile_has_read_and_write_iops_medians() {
    let r = full_report();
    let m = &cell(&r, StoragePath::NvmeRdma, MIXED).median;
    let (rd, wr) = (m.read_iops.expect("reads"), m.write_iops.expect("writes"));
    assert!(close(rd + wr, m.iops), "{m:?}");
    assert!(close(rd / wr, 7.0 / 3.0), "{m:?}");
    let m = &cell(&r, StoragePath::NvmeRdma, SPEED).median;
    assert_eq!(m.write_iops, None);
}

#[test]
fn a_complete_report_has_nothing_missing() {
    let r = full_report();
    assert_eq!(r.missing(), Vec::<String>::new());
    assert_eq!(r.cells.len(), StoragePath::ALL.len() * 3);
}

#[test]
fn a_zero_iops_is_missing_naming_path_and_profile() {
    let r = build_with(&StoragePath::ALL, &[SPEED], 2, |i, p, j| {
        let zero = i == 1 && p == StoragePath::QsdVduse;
        sample(p, j, if zero { 0.0 } else { 1000.0 })
    });
    let m = r.missing();
    assert!(
        m.iter()
            .any(|x| x.starts_with("qsd-vduse / randread-4k-qd32, round 2")
                && x.contains("IOPS is 0")),
        "{m:?}"
    );
    assert!(m.iter().all(|x| x.starts_with("qsd-vduse /")), "{m:?}");
}

#[test]
fn a_daemon_path_without_its_daemons_cpu_time_is_missing() {
    let r = build_with(&StoragePath::ALL, &[SPEED], 1, |_, p, j| {
        let mut s = sample(p, j, 1000.0);
        if p == StoragePath::VdpaBlkVhost {
            s.daemon_cpu_s = None;
        }
        s
    });
    assert_eq!(
        r.missing(),
        vec!["vdpa-blk-vhost / randread-4k-qd32, round 1: no daemon CPU time".to_string()]
    );
}

#[test]
fn a_daemon_cpu_time_on_a_daemonless_path_is_reported() {
    let r = build_with(&StoragePath::ALL, &[SPEED], 1, |_, p, j| {
        let mut s = sample(p, j, 1000.0);
        if p == StoragePath::NvmeRdma {
            s.daemon_cpu_s = Some(0.1);
        }
        s
    });
    let m = r.missing();
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("nvme-rdma / randread-4k-qd32, round 1")
            && m[0].contains("without a daemon"),
        "{m:?}"
    );
}

/// Whether `svg`'s tags nest and close (enough XML to catch a truncated or garbled file).
fn well_formed(svg: &str) -> Result<(), String> {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').ok_or("a `<` never closed")? + i;
        let tag = &rest[i + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name.trim() => {}
                o => return Err(format!("</{name}> closes {o:?}")),
            }
        } else if !(tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/')) {
            open.push(tag.split_whitespace().next().ok_or("an empty tag")?);
        }
        rest = &rest[end + 1..];
    }
    match open.is_empty() {
        true => Ok(()),
        false => Err(format!("never closed: {open:?}")),
    }
}

#[test]
fn write_puts_the_json_the_markdown_and_every_chart_in_the_directory() {
    let r = full_report();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("made/by/write");
    let written = r.write(&dir).expect("the report's files");
    let names: Vec<String> = written
        .iter()
        .map(|w| {
            w.file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let charts = [
        "iops.svg",
        "latency-p50.svg",
        "latency-p99.svg",
        "cpu-per-io.svg",
    ];
    for name in ["report.json", "report.md"].iter().chain(&charts) {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        assert!(dir.join(name).is_file(), "{name}");
    }

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json")).expect("report.json"),
    )
    .expect("report.json parses");
    let cells = json["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), r.cells.len());
    for c in &r.cells {
        assert!(
            cells
                .iter()
                .any(|j| j["path"] == c.path.id() && j["profile"] == c.profile.as_str()),
            "{} / {} not in report.json",
            c.path.id(),
            c.profile
        );
    }
    assert_eq!(json["run"]["rounds"], 3);

    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert_eq!(md, markdown::report(&r));

    for name in charts {
        let svg = std::fs::read_to_string(dir.join(name)).expect("a chart");
        assert!(
            svg.starts_with("<svg"),
            "{name}: {}",
            &svg[..svg.len().min(80)]
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        well_formed(&svg).unwrap_or_else(|e| panic!("{name}: {e}"));
        for p in &r.paths {
            assert!(
                svg.contains(p.title()),
                "{name} has no legend for {}",
                p.id()
            );
        }
        for j in &r.profiles {
            assert!(
                svg.contains(&format!(">\n{j}\n<")),
                "{name} has no label {j}"
            );
        }
        assert!(svg.contains("medians of 3 rounds"), "{name}");
        assert!(svg.contains("2025-06-01T12:00:00Z"), "{name}");
    }
}

#[test]
fn charts_are_the_same_bytes_for_the_same_report() {
    let r = full_report();
    assert_eq!(
        charts::all(&r).expect("charts"),
        charts::all(&r.clone()).expect("charts")
    );
}

/// The chart `name` of `r`.
fn chart(r: &Report, name: &str) -> String {
    charts::all(r)
        .expect("charts")
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

#[test]
fn a_missing_value_draws_no_bar() {
    let complete = full_report();
    let mut gap = complete.clone();
    let c = gap
        .cells
        .iter_mut()
        .find(|c| c.path == StoragePath::QsdVduse && c.profile == SPEED)
        .expect("the cell");
    c.median.node_cpu_us_per_io = None;
    let (before, after) = (
        chart(&complete, "cpu-per-io.svg"),
        chart(&gap, "cpu-per-io.svg"),
    );
    // A bar is a rect filled with its path's colour (the legend's swatch is one more); a zero
    // bar would still be one.
    let qsd = charts::colour(StoragePath::QsdVduse);
    let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", qsd.0, qsd.1, qsd.2);
    assert_eq!(before.matches(&fill).count(), complete.profiles.len() + 1);
    assert_eq!(after.matches(&fill).count(), complete.profiles.len());
    assert_eq!(
        before.matches("<rect").count(),
        after.matches("<rect").count() + 1,
        "only the missing bar is gone"
    );
}

#[test]
fn values_spanning_more_than_two_decades_are_drawn_on_a_log_scale() {
    assert!(charts::needs_log_scale(&[5.0, 40.0, 600.0]));
    assert!(!charts::needs_log_scale(&[10.0, 40.0, 999.0]));
    assert!(!charts::needs_log_scale(&[]));
    // The latency profile at queue depth 1 is ten times faster than the others here: a
    // linear axis from 0 would not have a 10 µs line, a log one has its decades.
    let r = build_with(&[StoragePath::NvmeRdma], &[LAT, SPEED], 1, |_, p, j| {
        sample(p, j, if j == LAT { 100_000.0 } else { 100.0 })
    });
    let svg = chart(&r, "latency-p50.svg");
    for decade in ["10", "100", "1000", "10k"] {
        assert!(
            svg.contains(&format!(">\n{decade}\n<")),
            "no {decade} label: {svg}"
        );
    }
}

/// The cells of `path`'s row in `profile`'s table, by column.
fn md_row(md: &str, profile: &str, path: StoragePath) -> Vec<(String, String)> {
    let section = md
        .split("\n### ")
        .find(|s| s.starts_with(&format!("{profile}\n")))
        .unwrap_or_else(|| panic!("no table for {profile}:\n{md}"));
    let section = section.split("\n## ").next().expect("a section");
    let split = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut lines = section.lines().filter(|l| l.starts_with('|'));
    let header = split(lines.next().expect("a header"));
    let row = lines
        .find(|l| l.starts_with(&format!("| {} |", path.title())))
        .unwrap_or_else(|| panic!("no row for {} in {profile}:\n{section}", path.id()));
    header.into_iter().zip(split(row)).collect()
}

fn col<'a>(row: &'a [(String, String)], name: &str) -> Option<&'a str> {
    row.iter().find(|(h, _)| h == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_markdown_has_a_row_per_path_per_profile_with_its_ratios() {
    let r = full_report();
    let md = markdown::report(&r);
    for c in &r.cells {
        let row = md_row(&md, &c.profile, c.path);
        assert_eq!(
            col(&row, "IOPS"),
            Some(markdown::iops(c.median.iops).as_str())
        );
        let ratio = |v: Option<f64>| v.map_or("-".to_string(), markdown::ratio);
        assert_eq!(
            col(&row, "/ nvme-rdma"),
            Some(ratio(c.median.vs_nvme_rdma).as_str())
        );
        assert_eq!(
            col(&row, "/ local"),
            Some(ratio(c.median.vs_local).as_str())
        );
        let daemon = col(&row, "daemon CPU µs/IO").expect("a daemon column");
        assert_eq!(
            daemon == "-",
            !has_daemon(c.path),
            "{} {daemon}",
            c.path.id()
        );
    }
    // Each path 10 % below local: vdpa-blk-virtio is 0.8 of local, 0.89 of nvme-rdma.
    let row = md_row(&md, SPEED, StoragePath::VdpaBlkVirtio);
    assert_eq!(col(&row, "/ local"), Some("0.80x"));
    assert_eq!(col(&row, "/ nvme-rdma"), Some("0.89x"));
    let row = md_row(&md, SPEED, StoragePath::NvmeRdma);
    assert_eq!(col(&row, "/ nvme-rdma"), Some("-"));
    assert_eq!(col(&row, "/ local"), Some("0.90x"));
    assert_eq!(
        col(&md_row(&md, SPEED, StoragePath::Local), "/ local"),
        Some("-")
    );
}

#[test]
fn the_markdown_has_a_read_write_column_for_a_mixed_profile_only() {
    let r = full_report();
    let md = markdown::report(&r);
    let m = &cell(&r, StoragePath::VdpaBlkVhost, MIXED).median;
    let row = md_row(&md, MIXED, StoragePath::VdpaBlkVhost);
    let want = format!(
        "{} / {}",
        markdown::iops(m.read_iops.expect("reads")),
        markdown::iops(m.write_iops.expect("writes"))
    );
    assert_eq!(col(&row, "R/W IOPS"), Some(want.as_str()));
    assert_eq!(
        col(&md_row(&md, SPEED, StoragePath::VdpaBlkVhost), "R/W IOPS"),
        None
    );
}

#[test]
fn the_markdown_renders_the_properties_table_with_its_sources() {
    let r = full_report();
    assert_eq!(r.properties.len(), r.paths.len());
    let md = markdown::report(&r);
    let table = md
        .split("## Datapaths compared\n")
        .nth(1)
        .expect("the properties section")
        .split("\n## ")
        .next()
        .expect("its end");
    let header = table
        .lines()
        .find(|l| l.starts_with('|'))
        .expect("a header");
    for (column, _, _) in &r.properties[0].cells {
        assert!(header.contains(column.as_str()), "{column} not in {header}");
    }
    for row in &r.properties {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", row.path.title())))
            .unwrap_or_else(|| panic!("no row for {}:\n{table}", row.path.id()));
        for (column, value, source) in &row.cells {
            assert!(
                line.contains(value.as_str()),
                "{column}: {value} not in {line}"
            );
            let listed = table
                .lines()
                .any(|l| l.contains(". ") && l.ends_with(source.as_str()));
            assert!(listed, "source {source} not listed:\n{table}");
        }
    }
    assert!(table.contains("<sup>[1]</sup>"), "{table}");
}

#[test]
fn the_markdown_heading_says_how_the_run_was_made_and_smoke_mode() {
    let mut r = full_report();
    let md = markdown::report(&r);
    for want in [
        "2025-06-01T12:00:00Z",
        "test CPU x 2, 4 GiB, Linux 6.12",
        "`testbed compare`",
        "pair, 2 vCPUs each",
        "release",
        "10 s runtime, size 128M, 2 queues, 3 rounds",
        "12 min 34 s",
    ] {
        assert!(md.contains(want), "{want} not in:\n{md}");
    }
    assert!(!md.contains("smoke mode"));
    r.run.smoke = true;
    assert!(markdown::report(&r).contains("smoke mode: figures checked, not meaningful"));
}

#[test]
fn the_markdown_appendix_has_each_rounds_iops() {
    let r = full_report();
    let md = markdown::report(&r);
    let appendix = md.split("## Appendix").nth(1).expect("the appendix");
    let c = cell(&r, StoragePath::QsdVduse, SPEED);
    let line = appendix
        .lines()
        .find(|l| l.starts_with(&format!("| {SPEED} | {} |", StoragePath::QsdVduse.title())))
        .unwrap_or_else(|| panic!("no round row:\n{appendix}"));
    let rounds: Vec<String> = c
        .rounds
        .iter()
        .map(|s| markdown::iops(s.figures.iops))
        .collect();
    assert!(
        line.contains(&rounds.join(" | ")),
        "{rounds:?} not in {line}"
    );
    // 24 000, 25 200, 26 400: a 10 % spread around the median.
    assert!(line.ends_with("| 10 % |"), "{line}");
}

#[test]
fn figures_are_formatted_by_their_size() {
    assert_eq!(markdown::iops(12_345.6), "12346");
    assert_eq!(markdown::us(1234.6), "1235");
    assert_eq!(markdown::us(100.0), "100");
    assert_eq!(markdown::us(99.96), "100");
    assert_eq!(markdown::us(95.44), "95.4");
    assert_eq!(markdown::us(f64::NAN), "-");
    assert_eq!(markdown::ratio(0.8512), "0.85x");
}

#[test]
fn the_summary_table_has_a_row_per_profile_and_a_column_per_path() {
    let r = full_report();
    let t = markdown::summary_table(&r);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2 + r.profiles.len(), "{t}");
    for p in &r.paths {
        assert!(lines[0].contains(p.id()), "{t}");
    }
    let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
    assert!(
        widths.iter().all(|&w| w == widths[0]),
        "columns line up:\n{t}"
    );
    let m = &cell(&r, StoragePath::VdpaBlkVirtio, SPEED).median;
    let row = lines
        .iter()
        .find(|l| l.starts_with(&format!("| {SPEED} ")))
        .expect("a row");
    let want = format!("{} / {}", markdown::iops(m.iops), markdown::us(m.p99_us));
    assert!(row.contains(&want), "{want} not in {row}");
}
