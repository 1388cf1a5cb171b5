//! The latency-against-connections chart (PNG, bitmap backend). Plotters is used
//! without any font support, so every label is drawn here from the public-domain
//! 8×8 bitmap font: no system fonts are needed.

use crate::report::Row;
use crate::util::{BenchError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A latency series: its label, how to read it from a row, its line width.
type Series = (&'static str, fn(&Row) -> f64, u32);

fn perr<E: std::fmt::Debug>(e: E) -> BenchError {
    BenchError::Msg(format!("plot: {e:?}"))
}

/// Draws `s` with its top-left corner at (x, y), `scale` pixels per font dot.
fn text(area: &Area<'_>, x: i32, y: i32, s: &str, scale: i32, color: &RGBColor) -> Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let code = ch as usize;
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(code)
            .copied()
            .unwrap_or([0; 8]);
        let x0 = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    let px = x0 + col * scale;
                    let py = y + row as i32 * scale;
                    area.draw(&Rectangle::new(
                        [(px, py), (px + scale, py + scale)],
                        color.filled(),
                    ))
                    .map_err(perr)?;
                }
            }
        }
    }
    Ok(())
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// Plots p50/p99/p99.9 latency against connection count for each target of the
/// fan-out rows, plus the floor's round time.
pub(crate) fn latency_vs_connections(rows: &[Row], path: &Path) -> Result<()> {
    let fan: Vec<&Row> = rows.iter().filter(|r| r.phase == "fanout").collect();
    if fan.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let xmax = fan.iter().map(|r| r.conns).max().unwrap_or(1) as f64 * 1.08;
    let mut vals: Vec<f64> = fan
        .iter()
        .flat_map(|r| [r.lat.p50_ms, r.lat.p99_ms, r.lat.p999_ms])
        .filter(|v| *v > 0.0)
        .collect();
    vals.extend(
        fan.iter()
            .filter_map(|r| r.extra.get("round_p50_ms").and_then(|v| v.as_f64()))
            .filter(|v| *v > 0.0),
    );
    let lo = vals.iter().copied().fold(f64::MAX, f64::min).max(0.01);
    let hi = vals.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let ylo = 10f64.powf(lo.log10().floor());
    let yhi = 10f64.powf(hi.log10().ceil());

    let root: Area<'_> = BitMapBackend::new(path, (1100, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let mut chart = ChartBuilder::on(&root)
        .margin_left(90)
        .margin_right(320)
        .margin_top(76)
        .margin_bottom(70)
        .build_cartesian_2d(0f64..xmax, (ylo..yhi).log_scale())
        .map_err(perr)?;
    let grid = RGBColor(225, 225, 225);
    let axis = RGBColor(60, 60, 60);
    // Horizontal grid at 1-2-5 steps, labelled at decades.
    let mut decade = ylo;
    while decade <= yhi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let y = decade * m;
            if y > yhi * 1.0001 {
                break;
            }
            chart
                .draw_series(LineSeries::new([(0.0, y), (xmax, y)], grid.stroke_width(1)))
                .map_err(perr)?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            let label = if y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            };
            text(
                &root,
                px - 8 - text_width(&label, 2),
                py - 8,
                &label,
                2,
                &axis,
            )?;
        }
        decade *= 10.0;
    }
    let mut xs: Vec<u64> = fan.iter().map(|r| r.conns).collect();
    xs.sort_unstable();
    xs.dedup();
    for &x in &xs {
        let xf = x as f64;
        chart
            .draw_series(LineSeries::new(
                [(xf, ylo), (xf, yhi)],
                grid.stroke_width(1),
            ))
            .map_err(perr)?;
        let (px, py) = chart.backend_coord(&(xf, ylo));
        let label = format!("{x}");
        text(
            &root,
            px - text_width(&label, 2) / 2,
            py + 8,
            &label,
            2,
            &axis,
        )?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, ylo), (xmax, ylo)],
            axis.stroke_width(2),
        ))
        .map_err(perr)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, ylo), (0.0, yhi)],
            axis.stroke_width(2),
        ))
        .map_err(perr)?;

    let colors = [
        ("herald", RGBColor(31, 119, 180)),
        ("naive", RGBColor(214, 39, 40)),
        ("floor", RGBColor(44, 160, 44)),
    ];
    let mut legend: Vec<(String, RGBColor, u32)> = Vec::new();
    for (name, color) in colors {
        let mut pts: Vec<&Row> = fan.iter().copied().filter(|r| r.target == name).collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by_key(|r| r.conns);
        let series: [Series; 3] = [
            ("p50", |r| r.lat.p50_ms, 1),
            ("p99", |r| r.lat.p99_ms, 3),
            ("p99.9", |r| r.lat.p999_ms, 1),
        ];
        for (label, f, width) in series {
            let data: Vec<(f64, f64)> = pts
                .iter()
                .map(|r| (r.conns as f64, f(r).max(ylo)))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(width)))
                .map_err(perr)?;
            let marker = match label {
                "p50" => 0,
                "p99" => 1,
                _ => 2,
            };
            for &(x, y) in &data {
                let (px, py) = chart.backend_coord(&(x, y));
                match marker {
                    0 => root.draw(&Circle::new((px, py), 4, color.filled())),
                    1 => root.draw(&Rectangle::new(
                        [(px - 4, py - 4), (px + 4, py + 4)],
                        color.filled(),
                    )),
                    _ => root.draw(&Cross::new((px, py), 5, color.stroke_width(2))),
                }
                .map_err(perr)?;
            }
            legend.push((format!("{name} {label}"), color, width));
        }
        if name == "floor" {
            let data: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|r| {
                    r.extra
                        .get("round_p50_ms")
                        .and_then(|v| v.as_f64())
                        .map(|v| (r.conns as f64, v.max(ylo)))
                })
                .collect();
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(data, grey.stroke_width(2)))
                .map_err(perr)?;
            legend.push(("floor round time".into(), grey, 2));
        }
    }
    // Titles and legend.
    let black = RGBColor(0, 0, 0);
    text(
        &root,
        90,
        14,
        "Fan-out latency (publish -> receive) against connections",
        2,
        &black,
    )?;
    text(&root, 400, 640 - 28, "subscribed connections", 2, &axis)?;
    text(&root, 8, 44, "latency, ms (log scale)", 2, &axis)?;
    let mut rates: Vec<(u64, f64)> = fan.iter().map(|r| (r.conns, r.rate_hz)).collect();
    rates.sort_by_key(|r| r.0);
    rates.dedup_by_key(|r| r.0);
    let rates: Vec<String> = rates
        .iter()
        .filter(|r| r.1 > 0.0)
        .map(|(c, r)| format!("C={c}: {r} Hz"))
        .collect();
    if !rates.is_empty() {
        text(&root, 1100 - 300, 360, "publish rate", 2, &axis)?;
        for (i, l) in rates.iter().enumerate() {
            text(&root, 1100 - 300, 384 + i as i32 * 20, l, 2, &axis)?;
        }
    }
    let lx = 1100 - 300;
    for (i, (label, color, width)) in legend.iter().enumerate() {
        let y = 70 + i as i32 * 24;
        root.draw(&PathElement::new(
            vec![(lx, y + 7), (lx + 30, y + 7)],
            color.stroke_width(*width),
        ))
        .map_err(perr)?;
        text(&root, lx + 38, y, label, 2, &black)?;
    }
    root.present().map_err(perr)?;
    Ok(())
}

/// `plot`: redraws the chart from a saved fan-out result file.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PlotArgs {
    /// A fanout-*.json file from the results directory.
    #[arg(long)]
    pub(crate) from: std::path::PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "docs/img/latency-vs-connections.png")]
    pub(crate) out: std::path::PathBuf,
}

/// Runs `plot`.
pub(crate) fn run(a: PlotArgs) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.from)?)?;
    let rows: Vec<Row> = v["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(row_from_json).collect())
        .unwrap_or_default();
    latency_vs_connections(&rows, &a.out)
}

fn row_from_json(v: &serde_json::Value) -> Option<Row> {
    let lat = &v["lat"];
    Some(Row {
        target: v["target"].as_str()?.to_string(),
        phase: v["phase"].as_str()?.to_string(),
        conns: v["conns"].as_u64()?,
        rate_hz: v["rate_hz"].as_f64().unwrap_or(0.0),
        lat: crate::util::Lat {
            n: lat["n"].as_u64().unwrap_or(0),
            p50_ms: lat["p50_ms"].as_f64().unwrap_or(0.0),
            p99_ms: lat["p99_ms"].as_f64().unwrap_or(0.0),
            p999_ms: lat["p999_ms"].as_f64().unwrap_or(0.0),
            max_ms: lat["max_ms"].as_f64().unwrap_or(0.0),
        },
        extra: v["extra"].as_object().cloned().unwrap_or_default(),
        ..Row::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn draws_text() {
        let path = std::env::temp_dir().join("herald-bench-text.png");
        {
            let root: Area<'_> = BitMapBackend::new(&path, (300, 60)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            text(&root, 4, 4, "Ab9 p99", 5, &RGBColor(0, 0, 0)).unwrap();
            root.present().unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }
}
