//! The report as GitHub Markdown: how the run was made, a table per profile, the datapath
//! properties with their sources, and every round's IOPS so the machine's drift shows.

use std::fmt::Write as _;

use super::{Cell, Report};

/// The whole report.
pub fn report(r: &Report) -> String {
    let mut s = heading(r);
    s.push_str("\n## Profiles\n");
    for profile in &r.profiles {
        s.push('\n');
        s.push_str(&profile_table(r, profile));
    }
    s.push('\n');
    s.push_str(&properties_table(r));
    s.push('\n');
    s.push_str(&rounds_appendix(r));
    s
}

/// One compact table, rows = profiles and columns = paths, each cell IOPS and p99: for the
/// README and the terminal, so its columns are padded to line up in plain text too.
pub fn summary_table(r: &Report) -> String {
    let mut header = vec!["profile (IOPS / p99 µs)".to_string()];
    header.extend(r.paths.iter().map(|p| p.id().to_string()));
    let rows: Vec<Vec<String>> = r
        .profiles
        .iter()
        .map(|profile| {
            let mut row = vec![profile.clone()];
            row.extend(r.paths.iter().map(|&path| match r.cell(path, profile) {
                Some(c) => format!("{} / {}", iops(c.median.iops), us(c.median.p99_us)),
                None => "-".into(),
            }));
            row
        })
        .collect();
    padded_table(&header, &rows)
}

fn heading(r: &Report) -> String {
    let run = &r.run;
    let mut s = format!("# Storage paths compared, {}\n\n", run.date);
    if run.smoke {
        s.push_str("**smoke mode: figures checked, not meaningful**\n\n");
    }
    let rows = [
        ("date", run.date.clone()),
        ("machine", run.machine.clone()),
        ("command", code(&run.command)),
        ("bed", run.bed.clone()),
        ("build profile", run.build_profile.clone()),
        (
            "each profile",
            format!(
                "{} s runtime, size {}, {} queue{}, {} round{}",
                run.runtime_s,
                run.size,
                run.queues,
                plural(run.queues.into()),
                run.rounds,
                plural(run.rounds.into())
            ),
        ),
        ("wall time", duration(run.wall_s)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "- **{k}**: {v}");
    }
    let _ = writeln!(
        s,
        "\nFigures are medians of {n} round{}. Each round runs every path back to back, so the \
         ratios to `nvme-rdma` and `local` are medians of the rounds' own IOPS ratios, not \
         ratios of the medians: the emulated machine's speed drifts between rounds. CPU is \
         microseconds of CPU time per I/O: the whole node's, and the path's daemons' alone.",
        plural(run.rounds.into()),
        n = run.rounds
    );
    s
}

/// The table of one profile, a row per path.
fn profile_table(r: &Report, profile: &str) -> String {
    let cells: Vec<&Cell> = r.paths.iter().filter_map(|&p| r.cell(p, profile)).collect();
    let mixed = cells
        .iter()
        .any(|c| c.median.read_iops.is_some() && c.median.write_iops.is_some());
    let mut header = vec![
        "path",
        "IOPS",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "node CPU µs/IO",
        "daemon CPU µs/IO",
        "/ nvme-rdma",
        "/ local",
    ];
    if mixed {
        header.push("R/W IOPS");
    }
    let mut s = format!("### {profile}\n\n");
    s.push_str(&row(header.iter().map(|h| h.to_string())));
    s.push_str(&rule(header.len(), 1));
    for c in cells {
        let m = &c.median;
        let mut v = vec![
            c.path.title().to_string(),
            iops(m.iops),
            us(m.bw_mib_s),
            us(m.p50_us),
            us(m.p99_us),
            us(m.p999_us),
            opt(m.node_cpu_us_per_io, us),
            opt(m.daemon_cpu_us_per_io, us),
            opt(m.vs_nvme_rdma, ratio),
            opt(m.vs_local, ratio),
        ];
        if mixed {
            v.push(match (m.read_iops, m.write_iops) {
                (Some(rd), Some(wr)) => format!("{} / {}", iops(rd), iops(wr)),
                _ => "-".into(),
            });
        }
        s.push_str(&row(v));
    }
    s
}

/// The datapath properties, columns from the first row; each value carries a footnote
/// number, its source listed under the table once however many cells share it.
fn properties_table(r: &Report) -> String {
    let mut s = String::from("## Datapaths compared\n\n");
    let Some(first) = r.properties.first() else {
        s.push_str("No path measured.\n");
        return s;
    };
    let columns: Vec<&str> = first.cells.iter().map(|(c, _, _)| c.as_str()).collect();
    let mut sources: Vec<&str> = Vec::new();
    s.push_str(&row(
        std::iter::once("path".to_string()).chain(columns.iter().map(|c| cell_text(c)))
    ));
    s.push_str(&rule(columns.len() + 1, columns.len() + 1));
    for p in &r.properties {
        let mut v = vec![p.path.title().to_string()];
        for col in &columns {
            v.push(match p.cells.iter().find(|(c, _, _)| c == col) {
                Some((_, value, source)) => {
                    let n = match sources.iter().position(|s| s == source) {
                        Some(i) => i + 1,
                        None => {
                            sources.push(source);
                            sources.len()
                        }
                    };
                    format!("{} <sup>[{n}]</sup>", cell_text(value))
                }
                None => "-".into(),
            });
        }
        s.push_str(&row(v));
    }
    s.push_str("\nSources:\n\n");
    for (i, source) in sources.iter().enumerate() {
        let _ = writeln!(s, "{}. {}", i + 1, cell_text(source));
    }
    s
}

/// Every round's IOPS per profile and path, and their spread ((max - min) / median).
fn rounds_appendix(r: &Report) -> String {
    let mut s = String::from(
        "## Appendix: IOPS of each round\n\nThe machine's drift shows as a whole round \
         faster or slower on every path; the paths run in a rotating order within a round.\n\n",
    );
    let n = r.cells.iter().map(|c| c.rounds.len()).max().unwrap_or(0);
    let mut header = vec!["profile".to_string(), "path".to_string()];
    header.extend((1..=n).map(|i| format!("round {i}")));
    header.push("spread".into());
    s.push_str(&row(header));
    s.push_str(&rule(n + 3, 2));
    for profile in &r.profiles {
        for path in &r.paths {
            let Some(c) = r.cell(*path, profile) else {
                continue;
            };
            let mut v = vec![profile.clone(), path.title().to_string()];
            let each: Vec<f64> = c.rounds.iter().map(|x| x.figures.iops).collect();
            v.extend(each.iter().map(|&x| iops(x)));
            v.extend((each.len()..n).map(|_| "-".to_string()));
            v.push(spread(&each));
            s.push_str(&row(v));
        }
    }
    s
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    match super::median_of(v.to_vec()) {
        Some(m) if m > 0.0 && v.len() > 1 => format!("{:.0} %", (hi - lo) / m * 100.0),
        _ => "-".into(),
    }
}

/// A Markdown table row.
fn row(cells: impl IntoIterator<Item = String>) -> String {
    let cells: Vec<String> = cells.into_iter().collect();
    format!("| {} |\n", cells.join(" | "))
}

/// The header rule: the first `text` columns left-aligned, the figures after them right.
fn rule(n: usize, text: usize) -> String {
    let mut s = String::from("|");
    for i in 0..n {
        s.push_str(if i < text { "---|" } else { "---:|" });
    }
    s.push('\n');
    s
}

/// A table whose columns are padded to the same width, for plain-text readers.
fn padded_table(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        std::iter::once(header)
            .chain(rows.iter().map(Vec::as_slice))
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
            .max(3)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut s = line(header);
    let rules: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if i == 0 {
                "-".repeat(w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    let _ = writeln!(s, "| {} |", rules.join(" | "));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// Text safe in a table cell: a `|` would end it, a newline the row.
fn cell_text(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `s` as inline code, fenced with more backticks than it holds.
fn code(s: &str) -> String {
    let mut run = 0;
    let mut longest = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // The spaces keep a backtick at either end from joining the fence.
    let pad = if longest > 0 { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1 h 02 min 05 s`, `3 min 07 s`, `42 s`.
fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    let t = s.round() as u64;
    let (h, m, sec) = (t / 3600, t / 60 % 60, t % 60);
    match (h, m) {
        (0, 0) => format!("{sec} s"),
        (0, _) => format!("{m} min {sec:02} s"),
        _ => format!("{h} h {m:02} min {sec:02} s"),
    }
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// IOPS: no decimals.
pub fn iops(v: f64) -> String {
    finite(v, || format!("{v:.0}"))
}

/// Microseconds (and MiB/s): no decimals from 100 up, one below.
pub fn us(v: f64) -> String {
    finite(v, || {
        // Decided on the rounded value, so 99.96 shows as 100, not 100.0.
        if (v * 10.0).round().abs() >= 1000.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    })
}

/// A ratio: two decimals and an `x`.
pub fn ratio(v: f64) -> String {
    finite(v, || format!("{v:.2}x"))
}

fn finite(v: f64, f: impl FnOnce() -> String) -> String {
    if v.is_finite() {
        f()
    } else {
        "-".into()
    }
}
