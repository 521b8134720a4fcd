//! Pictures of an LLC estimate: per-chain loss traces (llc.png), and LLC beside the
//! training loss over a run's steps (llc_over_training.png). An estimate that
//! carries a warning (see [`LlcEstimate::warnings`]) is marked with an orange
//! triangle, and each legend sits in the band its y range keeps above the traces.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::estimate::LlcEstimate;
use super::stats::mean;
use crate::plot::{draw_err, draw_legend, ensure_font, range_with_legend_band};

/// The marker's colour for an estimate with a warning: no chain's colour.
pub const WARNING_COLOR: RGBColor = RGBColor(255, 140, 0);
/// The LLC's line and error bars in llc_over_training.png.
pub const LLC_COLOR: RGBColor = RED;
/// The training loss's line in llc_over_training.png.
pub const TRAIN_LOSS_COLOR: RGBColor = BLUE;
const WARNING_LABEL: &str = "estimate with a warning";

/// Chain `c`'s colour in llc.png.
pub fn chain_color(c: usize) -> RGBColor {
    let (r, g, b) = Palette99::COLORS[c % Palette99::COLORS.len()];
    RGBColor(r, g, b)
}

fn warning_marker<C>(at: C) -> TriangleMarker<C, i32> {
    TriangleMarker::new(at, 7, WARNING_COLOR.filled())
}

/// Each chain's L_B(w) against SGLD step, the burn-in shaded, the mean loss at w*
/// as a dashed line, and each chain's mean over the draws marked halfway through
/// them: the estimate is nbeta times its height over the dashed line. The marks
/// are warning triangles when the estimate carries a warning, and a chain that
/// diverged gets one where it stopped.
pub fn plot_traces(path: &Path, title: &str, est: &LlcEstimate) -> Result<()> {
    ensure_font();
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let burnin = est.settings.burnin;
    let steps = burnin + est.settings.draws;
    let warned = !est.trustworthy();
    let (y_lo, y_hi) = range_with_legend_band(
        est.traces
            .iter()
            .flat_map(|t| t.losses.iter().copied())
            .chain([est.init_loss]),
    );
    let caption = format!("{title}: LLC {:.3} ± {:.3}", est.estimate, est.std);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..steps.max(1), y_lo..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("SGLD step")
        .y_desc("minibatch loss")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series([Rectangle::new(
            [(0, y_lo), (burnin, y_hi)],
            BLACK.mix(0.06).filled(),
        )])
        .map_err(|e| err(&e))?
        .label("burn-in")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLACK.mix(0.1).filled()));
    for (c, trace) in est.traces.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(
                trace
                    .losses
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_finite())
                    .map(|(s, &l)| (s, l)),
                chain_color(c),
            ))
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0, est.init_loss), (steps, est.init_loss)],
            8,
            6,
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("loss at w*")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    // (chain, mean loss of its draws) where finite; a diverged chain's is not.
    let means: Vec<(usize, f64)> = est
        .traces
        .iter()
        .map(|t| mean(t.draws(burnin)))
        .enumerate()
        .filter(|(_, m)| m.is_finite())
        .collect();
    let middle = burnin + est.settings.draws / 2;
    if warned {
        let stops = est
            .traces
            .iter()
            .filter(|t| t.diverged_at.is_some())
            .filter_map(|t| {
                t.losses
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, l)| l.is_finite())
                    .map(|(s, &l)| (s, l))
            });
        chart
            .draw_series(
                means
                    .iter()
                    .map(|&(_, m)| (middle, m))
                    .chain(stops)
                    .map(warning_marker),
            )
            .map_err(|e| err(&e))?
            .label(WARNING_LABEL)
            .legend(|(x, y)| warning_marker((x + 10, y)));
    } else {
        chart
            .draw_series(
                means
                    .iter()
                    .map(|&(c, m)| Circle::new((middle, m), 5, chain_color(c).filled())),
            )
            .map_err(|e| err(&e))?
            .label("a chain's mean over the draws")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK));
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One point of the LLC-over-training picture.
pub struct StepPoint {
    pub step: usize,
    pub llc: f64,
    pub llc_std: f64,
    /// Whether the estimate carries a warning.
    pub warned: bool,
}

/// Two panels on a shared step axis: the training loss above, the LLC (with ± std
/// bars, and a warning triangle on each estimate that carries a warning) below.
pub fn plot_over_training(
    path: &Path,
    title: &str,
    llc: &[StepPoint],
    train_loss: &[(usize, f64)],
) -> Result<()> {
    ensure_font();
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let x_max = llc
        .iter()
        .map(|p| p.step)
        .chain(train_loss.iter().map(|p| p.0))
        .max()
        .unwrap_or(0)
        .max(1);

    let (lo, hi) = range_with_legend_band(train_loss.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..x_max, lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .y_desc("training loss")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            train_loss.iter().copied(),
            TRAIN_LOSS_COLOR,
        ))
        .map_err(|e| err(&e))?
        .label("training loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TRAIN_LOSS_COLOR));
    draw_legend(&mut chart).map_err(|e| err(&e))?;

    let (lo, hi) = range_with_legend_band(
        llc.iter()
            .flat_map(|p| [p.llc - p.llc_std, p.llc + p.llc_std]),
    );
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..x_max, lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("LLC")
        .draw()
        .map_err(|e| err(&e))?;
    let finite: Vec<&StepPoint> = llc.iter().filter(|p| p.llc.is_finite()).collect();
    chart
        .draw_series(LineSeries::new(
            finite.iter().map(|p| (p.step, p.llc)),
            LLC_COLOR,
        ))
        .map_err(|e| err(&e))?
        .label("LLC ± std")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LLC_COLOR));
    chart
        .draw_series(finite.iter().map(|p| {
            PathElement::new(
                vec![(p.step, p.llc - p.llc_std), (p.step, p.llc + p.llc_std)],
                LLC_COLOR,
            )
        }))
        .map_err(|e| err(&e))?;
    if finite.iter().any(|p| p.warned) {
        chart
            .draw_series(
                finite
                    .iter()
                    .filter(|p| p.warned)
                    .map(|p| warning_marker((p.step, p.llc))),
            )
            .map_err(|e| err(&e))?
            .label(WARNING_LABEL)
            .legend(|(x, y)| warning_marker((x + 10, y)));
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
