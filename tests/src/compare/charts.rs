//! The report's SVG charts: grouped bars, one group per profile and one bar per path, drawn
//! with plotters' SVG backend. Without a font feature plotters only estimates text extents and
//! the backend writes `<text>` elements the viewer renders, so no font file or system font is
//! needed here. A value that is not there draws no bar (a zero bar would read as measured).

use std::ops::Range;

use plotters::coord::ranged1d::{
    AsRangedCoord, KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter,
};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Cell, Report, StoragePath};

/// The plot's height; the legend's rows are added below it.
const PLOT_H: u32 = 460;
/// Pixels per legend row.
const LEGEND_ROW: u32 = 22;
/// Width of one legend column (the longest path title fits at the legend's font size).
const LEGEND_COL: u32 = 300;
/// Values spanning more than this factor are drawn on a log scale, or the small ones vanish.
const LOG_SPAN: f64 = 100.0;

/// One chart: its file, what it shows and how to read a cell.
struct Chart {
    file: &'static str,
    what: &'static str,
    y_desc: &'static str,
    value: fn(&Cell) -> Option<f64>,
}

const CHARTS: [Chart; 4] = [
    Chart {
        file: "iops.svg",
        what: "IOPS",
        y_desc: "IOPS",
        value: |c| Some(c.median.iops),
    },
    Chart {
        file: "latency-p50.svg",
        what: "p50 completion latency",
        y_desc: "p50 completion latency (µs)",
        value: |c| Some(c.median.p50_us),
    },
    Chart {
        file: "latency-p99.svg",
        what: "p99 completion latency",
        y_desc: "p99 completion latency (µs)",
        value: |c| Some(c.median.p99_us),
    },
    Chart {
        file: "cpu-per-io.svg",
        what: "node CPU per I/O",
        y_desc: "CPU time of the node per I/O (µs)",
        value: |c| c.median.node_cpu_us_per_io,
    },
];

/// Every chart: (file name, SVG text).
pub fn all(r: &Report) -> Result<Vec<(String, String)>, String> {
    CHARTS
        .iter()
        .map(|c| Ok((c.file.to_string(), draw(r, c)?)))
        .collect()
}

/// A path's colour, fixed per path so every chart (and every run) agrees (Okabe-Ito, which
/// colour-blind readers can tell apart).
pub fn colour(path: StoragePath) -> RGBColor {
    match path {
        StoragePath::Local => RGBColor(0, 114, 178),
        StoragePath::NvmeRdma => RGBColor(230, 159, 0),
        StoragePath::VdpaBlkVirtio => RGBColor(0, 158, 115),
        StoragePath::VdpaBlkVhost => RGBColor(204, 121, 167),
        StoragePath::QsdVduse => RGBColor(213, 94, 0),
    }
}

/// Whether values this far apart need a log scale.
pub fn needs_log_scale(values: &[f64]) -> bool {
    let (lo, hi) = bounds(values);
    lo > 0.0 && hi / lo > LOG_SPAN
}

/// The smallest and largest positive finite value, (0, 0) for none.
fn bounds(values: &[f64]) -> (f64, f64) {
    let v = values.iter().copied().filter(|x| x.is_finite() && *x > 0.0);
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(0.0, f64::max);
    if hi > 0.0 {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// One chart's SVG text.
fn draw(r: &Report, chart: &Chart) -> Result<String, String> {
    // values[profile][path], None drawing nothing.
    let values: Vec<Vec<Option<f64>>> = r
        .profiles
        .iter()
        .map(|profile| {
            r.paths
                .iter()
                .map(|&path| {
                    r.cell(path, profile)
                        .and_then(chart.value)
                        .filter(|v| v.is_finite())
                })
                .collect()
        })
        .collect();
    let flat: Vec<f64> = values.iter().flatten().flatten().copied().collect();
    let longest = r.profiles.iter().map(|p| p.chars().count()).max();
    // A group as wide as its label (at about 7 px a character) and 22 px a bar.
    let group = (longest.unwrap_or(0) as u32 * 7 + 24).max(r.paths.len() as u32 * 22 + 24);
    let title = format!(
        "{} by profile and path, {}, medians of {} round{}{}",
        chart.what,
        r.run.date,
        r.run.rounds,
        if r.run.rounds == 1 { "" } else { "s" },
        if r.run.smoke { " (smoke mode)" } else { "" }
    );
    // Wide enough for the groups and for the title (about 9 px a character at its size).
    let width = (110 + group * r.profiles.len() as u32)
        .max(title.chars().count() as u32 * 9 + 60)
        .max(720);
    let columns = ((width - 40) / LEGEND_COL).max(1) as usize;
    let legend_h = LEGEND_ROW * r.paths.len().div_ceil(columns) as u32 + 16;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width, PLOT_H + legend_h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, legend) = root.split_vertically(PLOT_H);
        let (lo, hi) = bounds(&flat);
        if needs_log_scale(&flat) {
            let (lo, hi) = (decade_below(lo), decade_above(hi));
            let y = (lo..hi).log_scale();
            bars(&plot, r, chart, &title, &values, y, lo)?;
        } else {
            let hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
            bars(&plot, r, chart, &title, &values, 0.0..hi, 0.0)?;
        }
        draw_legend(&legend, &r.paths, columns)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The grouped bars on `area`, bars rising from `base` (the y axis' bottom).
fn bars<Y>(
    area: &DrawingArea<SVGBackend, Shift>,
    r: &Report,
    chart: &Chart,
    title: &str,
    values: &[Vec<Option<f64>>],
    y: Y,
    base: f64,
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(Profiles(r.profiles.clone()), y)
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("fio profile")
        .y_desc(chart.y_desc)
        .y_label_formatter(&|v| axis_number(*v))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let k = r.paths.len().max(1) as f64;
    let slot = 0.8 / k;
    for (pi, &path) in r.paths.iter().enumerate() {
        let style = colour(path).filled();
        let rects = values.iter().enumerate().filter_map(|(ji, row)| {
            let v = row[pi]?;
            let x0 = ji as f64 - 0.4 + pi as f64 * slot;
            Some(Rectangle::new(
                [(x0 + slot * 0.08, v), (x0 + slot * 0.92, base)],
                style,
            ))
        });
        c.draw_series(rects).map_err(err)?;
    }
    Ok(())
}

/// The x axis: profile `i` centred on `i`, its name as the label, one tick per profile
/// (plotters' own f64 axis would put ticks between the groups).
struct Profiles(Vec<String>);

impl Profiles {
    fn linear(&self) -> RangedCoordf64 {
        (-0.5..self.0.len().max(1) as f64 - 0.5).into()
    }
}

impl Ranged for Profiles {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear().map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.0.len()).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.linear().range()
    }
}

impl ValueFormatter<f64> for Profiles {
    fn format_ext(&self, value: &f64) -> String {
        let i = value.round();
        (i >= 0.0)
            .then(|| self.0.get(i as usize))
            .flatten()
            .cloned()
            .unwrap_or_default()
    }
}

/// The legend under the plot: a swatch and the title of each path.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    paths: &[StoragePath],
    columns: usize,
) -> Result<(), String> {
    for (i, &path) in paths.iter().enumerate() {
        let x = 40 + (i % columns) as i32 * LEGEND_COL as i32;
        let y = 4 + (i / columns) as i32 * LEGEND_ROW as i32;
        area.draw(&Rectangle::new(
            [(x, y + 2), (x + 14, y + 16)],
            colour(path).filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(
            path.title(),
            (x + 20, y + 2),
            ("sans-serif", 15),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// The power of ten at or below `v`.
fn decade_below(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

/// The power of ten above `v` (the next one when `v` is one, so its bar does not touch the
/// top).
fn decade_above(v: f64) -> f64 {
    10f64.powf(v.log10().floor() + 1.0)
}

/// An axis label: short (`50k`, `1.2M`) and without trailing zeros.
fn axis_number(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.2}"))
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}
