//! Line charts in the style of the paper's figures, as SVG files.
//!
//! Uses `plotters` with its SVG backend only: text is written as SVG
//! `<text>` elements (no font files, no system libraries), so the charts
//! build and render anywhere.

use std::path::Path;

use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
}

/// A chart to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// Logarithmic x axis (the experiments' x values double).
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (if log { 0.1 } else { 0.0 }, 1.0);
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let lo = lo.min(0.0);
        let pad = ((hi - lo) * 0.08).max(1e-9);
        (lo, hi + pad)
    }
}

/// An axis label: integers without decimals, others to 3 significant digits.
fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

macro_rules! draw_into {
    ($root:expr, $chart:expr, $x:expr, $y:expr) => {{
        let mut c = ChartBuilder::on($root)
            .caption(&$chart.title, ("sans-serif", 20))
            .margin(18)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d($x, $y)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_label_formatter(&|v: &f64| tick(*v))
            .y_label_formatter(&|v: &f64| tick(*v))
            .x_desc($chart.x_label.as_str())
            .y_desc($chart.y_label.as_str())
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in $chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| (!$chart.log_x || x > 0.0) && (!$chart.log_y || y > 0.0))
                .collect();
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            // Distinct markers, so that lines lying on top of each other
            // still show.
            match i % 3 {
                0 => c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))),
                1 => c.draw_series(
                    pts.iter()
                        .map(|&p| TriangleMarker::new(p, 6, color.stroke_width(2))),
                ),
                _ => c.draw_series(pts.iter().map(|&p| Cross::new(p, 5, color.stroke_width(2)))),
            }
            .map_err(|e| e.to_string())?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }};
}

/// Draws `chart` to the SVG file `path`.
pub fn draw(chart: &Chart, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (820, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xs = range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
        chart.log_x,
    );
    let ys = range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
        chart.log_y,
    );
    match (chart.log_x, chart.log_y) {
        (true, true) => draw_into!(
            &root,
            chart,
            (xs.0..xs.1).log_scale(),
            (ys.0..ys.1).log_scale()
        ),
        (true, false) => draw_into!(&root, chart, (xs.0..xs.1).log_scale(), ys.0..ys.1),
        (false, true) => draw_into!(&root, chart, xs.0..xs.1, (ys.0..ys.1).log_scale()),
        (false, false) => draw_into!(&root, chart, xs.0..xs.1, ys.0..ys.1),
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(10.0), "10");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.25), "0.250");
    }

    #[test]
    fn writes_an_svg_with_labels_and_lines() {
        let dir = std::env::temp_dir().join(format!("pcsim-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        for (log_x, log_y) in [(true, true), (true, false), (false, true), (false, false)] {
            let chart = Chart {
                title: "Network faults".into(),
                x_label: "working set (MiB)".into(),
                y_label: "faults".into(),
                log_x,
                log_y,
                series: vec![
                    Series {
                        label: "bubble".into(),
                        points: vec![(8.0, 10.0), (64.0, 100.0), (512.0, 900.0)],
                    },
                    Series {
                        label: "push".into(),
                        points: vec![(8.0, 0.0), (64.0, 400.0), (512.0, 5000.0)],
                    },
                ],
            };
            draw(&chart, &path).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
            assert!(
                svg.contains("Network faults") && svg.contains("bubble") && svg.contains("push")
            );
            assert!(svg.contains("<polyline"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
