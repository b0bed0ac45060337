//! Charts of a sweep, as SVG files: latency CDFs per level, and throughput and TTFT against the
//! closed loop's concurrency.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::client::RequestRecord;
use crate::closed_loop::{LevelRun, Load};
use crate::report::LevelReport;

const SIZE: (u32, u32) = (880, 520);

/// A request's value a CDF is drawn of, in seconds.
type Measure = fn(&RequestRecord) -> Option<f64>;

/// Writes the charts into `dir` (created if needed) and returns their paths.
pub fn write_charts(
    dir: &Path,
    runs: &[LevelRun],
    reports: &[LevelReport],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = cdf_charts(dir, runs)?;
    written.extend(concurrency_charts(dir, &closed_levels(reports))?);
    Ok(written)
}

/// The latency CDFs (TTFT, TPOT, end to end), each drawn where some level has a value.
fn cdf_charts(dir: &Path, runs: &[LevelRun]) -> anyhow::Result<Vec<PathBuf>> {
    let cdfs: [(&str, &str, Measure); 3] = [
        ("ttft-cdf.svg", "Time to first token", |r| r.ttft_s),
        ("tpot-cdf.svg", "Time per output token", |r| r.tpot_s()),
        ("e2e-cdf.svg", "End-to-end latency", |r| Some(r.e2e_s)),
    ];
    let mut written = Vec::new();
    for (file, title, value) in cdfs {
        let series = cdf_series(runs, value);
        if series.is_empty() {
            continue;
        }
        written.push(draw(dir.join(file), |path| {
            cdf_chart(path, title, &series)
        })?);
    }
    Ok(written)
}

/// Per level with any, its name and the sorted values in ms of its successful requests.
fn cdf_series(runs: &[LevelRun], value: Measure) -> Vec<(String, Vec<f64>)> {
    runs.iter()
        .map(|run| {
            let mut ms: Vec<f64> = run
                .records
                .iter()
                .filter(|r| r.error.is_none())
                .filter_map(value)
                .map(|s| s * 1e3)
                .collect();
            ms.sort_by(f64::total_cmp);
            (run.load.to_string(), ms)
        })
        .filter(|(_, ms)| !ms.is_empty())
        .collect()
}

/// The closed-loop levels, by concurrency: lines run left to right whatever order the
/// concurrencies were given in.
fn closed_levels(reports: &[LevelReport]) -> Vec<&LevelReport> {
    let mut closed: Vec<&LevelReport> = reports
        .iter()
        .filter(|r| matches!(r.load, Load::Clients(_)))
        .collect();
    closed.sort_by_key(|r| match r.load {
        Load::Clients(n) => n,
        Load::Rate { .. } => 0,
    });
    closed
}

/// Throughput and TTFT (p50, p95, p99) against concurrency, drawn with two closed-loop levels
/// or more.
fn concurrency_charts(dir: &Path, closed: &[&LevelReport]) -> anyhow::Result<Vec<PathBuf>> {
    if closed.len() < 2 {
        return Ok(Vec::new());
    }
    let tps: Vec<(f64, f64)> = closed
        .iter()
        .map(|r| (concurrency(r), r.output_tokens_per_s))
        .collect();
    let throughput = draw(dir.join("throughput-by-concurrency.svg"), |path| {
        by_concurrency(
            path,
            "Output tokens/s",
            "tokens/s",
            &[("output tokens/s".into(), tps)],
        )
    })?;
    let mut lines = Vec::new();
    for (name, pick) in [("p50", 0usize), ("p95", 1), ("p99", 2)] {
        let points: Vec<(f64, f64)> = closed
            .iter()
            .filter_map(|r| {
                r.ttft_ms
                    .as_ref()
                    .map(|s| (concurrency(r), [s.p50, s.p95, s.p99][pick]))
            })
            .collect();
        lines.push((format!("TTFT {name}"), points));
    }
    let ttft = draw(dir.join("ttft-by-concurrency.svg"), |path| {
        by_concurrency(path, "Time to first token", "ms", &lines)
    })?;
    Ok(vec![throughput, ttft])
}

/// A closed-loop level's concurrency, as a chart's x.
fn concurrency(r: &LevelReport) -> f64 {
    match r.load {
        Load::Clients(n) => n as f64,
        Load::Rate { .. } => unreachable!("closed-loop levels only"),
    }
}

/// Draws the chart at `path` with `chart`, the path named in its error, and returns the path.
fn draw(path: PathBuf, chart: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<PathBuf> {
    chart(&path).with_context(|| format!("drawing {}", path.display()))?;
    Ok(path)
}

/// One line per level: the share of requests at or below each latency.
fn cdf_chart(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let xmax = series
        .iter()
        .filter_map(|(_, v)| v.last())
        .fold(0.0f64, |a, &b| a.max(b))
        * 1.05;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: share of requests at or below"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax.max(1e-3), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("share of requests")
        .draw()?;
    for (i, (name, values)) in series.iter().enumerate() {
        let n = values.len() as f64;
        let points = values
            .iter()
            .enumerate()
            .map(|(j, &v)| (v, (j + 1) as f64 / n));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Lines against the closed loop's concurrency.
fn by_concurrency(
    path: &Path,
    title: &str,
    unit: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let xmax = points.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let ymax = points.map(|p| p.1).fold(0.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title} by concurrency"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc(unit)
        .draw()?;
    for (i, (name, p)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            p.iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
