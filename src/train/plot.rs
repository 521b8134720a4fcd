//! loss.png: training and validation loss, and the data's unigram entropy, against
//! step.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::metrics::{EvalRecord, TrainRecord};
use crate::plot::{draw_err, draw_legend, ensure_font, range_with_legend_band};

/// The unigram entropy's line: the loss of a model that knows only token
/// frequencies, which training should fall well below.
pub const ENTROPY_COLOR: RGBColor = RGBColor(0, 150, 0);

/// Draws training loss (a line), validation loss (a line through marked points, so
/// a single one shows) and the data's unigram entropy (a horizontal line) against
/// step, the legend in the band above every trace.
pub fn plot_losses(
    path: &Path,
    title: &str,
    train: &[TrainRecord],
    eval: &[EvalRecord],
    unigram_entropy: f64,
) -> Result<()> {
    ensure_font();
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_max = train
        .iter()
        .map(|r| r.step)
        .chain(eval.iter().map(|r| r.step))
        .max()
        .unwrap_or(0)
        .max(1);
    let (y_lo, y_hi) = range_with_legend_band(
        train
            .iter()
            .map(|r| r.train_loss)
            .chain(eval.iter().map(|r| r.val_loss))
            .chain([unigram_entropy]),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..x_max, y_lo.max(0.0)..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/token)")
        .draw()
        .map_err(|e| err(&e))?;
    if unigram_entropy.is_finite() {
        chart
            .draw_series(LineSeries::new(
                [(0, unigram_entropy), (x_max, unigram_entropy)],
                ENTROPY_COLOR.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(format!("unigram entropy ({unigram_entropy:.3})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ENTROPY_COLOR));
    }
    chart
        .draw_series(LineSeries::new(
            train.iter().map(|r| (r.step, r.train_loss)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let val = || eval.iter().map(|r| (r.step, r.val_loss));
    chart
        .draw_series(LineSeries::new(val(), RED.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("validation")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
    chart
        .draw_series(val().map(|p| Circle::new(p, 4, RED.filled())))
        .map_err(|e| err(&e))?;
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
