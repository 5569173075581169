//! `tessera-loadgen plot`: latency-percentile curves of several result files on one chart, so two
//! systems can be compared at a glance. x: percentile on a "nines" scale (50 %, 90 %, 99 %, ...);
//! y: latency in microseconds on a log scale. SVG, which needs no fonts on the machine.

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        5.2
    } else {
        -(1.0 - percentile / 100.0).log10()
    }
}

/// The percentile at `x` nines, written with as many decimals as it has nines.
fn nines_label(x: &f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-*x));
    let decimals = (x.floor() as usize).saturating_sub(1).min(4);
    format!("{percentile:.decimals$}%")
}

/// Draws `group` ("all", "read", "write") of each result into `out` (an .svg file).
pub fn plot(results: &[RunResult], group: &str, title: &str, out: &Path) -> Result<(), String> {
    let curve = |result: &RunResult| -> Vec<(f64, f64)> {
        let latency = match group {
            "read" => &result.latency_us.read,
            "write" => &result.latency_us.write,
            _ => &result.latency_us.all,
        };
        latency
            .curve
            .iter()
            .map(|&(p, us)| (nines(p), us.max(1) as f64))
            .collect()
    };
    let max_us = results
        .iter()
        .flat_map(curve)
        .map(|(_, us)| us)
        .fold(10.0, f64::max);
    let root = SVGBackend::new(out, (1000, 600)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| format!("plot: {e}");
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5.3f64, (1f64..max_us * 2.0).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(12)
        .x_label_formatter(&nines_label)
        .draw()
        .map_err(draw)?;
    for (i, result) in results.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(curve(result), color.stroke_width(2)))
            .map_err(draw)?
            .label(format!(
                "{} ({:.0} ops/s)",
                result.label, result.throughput_ops_s
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}
