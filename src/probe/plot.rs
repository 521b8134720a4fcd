//! Pictures of the head's geometry: a labelled 2-D map of chosen centres, and the
//! histogram of hidden-state distances to the true token's centre.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::text::TextReport;
use crate::plot::{draw_err, ensure_font};

/// (lo, hi) of `values`, padded by 8% (or by 1 when they are all equal).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = if hi > lo { (hi - lo) * 0.08 } else { 1.0 };
    (lo - pad, hi + pad)
}

/// Labelled points on the plane of the first two principal components.
pub fn plot_map(path: &Path, title: &str, points: &[(String, f64, f64)]) -> Result<()> {
    ensure_font();
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (800, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (x_lo, x_hi) = padded(points.iter().map(|p| p.1));
    let (y_lo, y_hi) = padded(points.iter().map(|p| p.2));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("PC 1")
        .y_desc("PC 2")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().enumerate().map(|(i, (label, x, y))| {
            let color = Palette99::pick(i).to_rgba();
            EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 4, color.filled())
                + Text::new(label.clone(), (6, -6), ("sans-serif", 16).into_font())
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Positions per bin of distance to the true token's centre, each bar labelled
/// with its mean probability of the true token.
pub fn plot_histogram(path: &Path, title: &str, report: &TextReport) -> Result<()> {
    ensure_font();
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let bins = &report.histogram;
    let x_lo = bins.first().map_or(0.0, |b| b.lo);
    let x_hi = bins.last().map_or(1.0, |b| b.hi);
    let y_hi = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "|h - w_target| (rms distance between centres: {:.2})",
            report.rms_centre_distance
        ))
        .y_desc("positions")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bins.iter().map(|b| {
            Rectangle::new(
                [(b.lo, 0.0), (b.hi, b.count as f64)],
                BLUE.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
            Text::new(
                format!("p {:.2}", b.mean_p_target),
                (b.lo, b.count as f64 + y_hi * 0.02),
                ("sans-serif", 13).into_font(),
            )
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
