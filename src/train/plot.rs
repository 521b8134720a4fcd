//! loss.png: training and validation loss, and the data's unigram entropy, against
//! step (plotters, with an embedded DejaVu font so labels render on machines with
//! no fonts installed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::metrics::{EvalRecord, TrainRecord};

static FONT: Once = Once::new();

/// Registers the embedded DejaVu font once (every plot in hgpt draws through it).
pub(crate) fn ensure_font() {
    FONT.call_once(|| {
        // The embedded font is valid TrueType; failure would only lose the labels.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The unigram entropy's line: the loss of a model that knows only token
/// frequencies, which training should fall well below.
pub const ENTROPY_COLOR: RGBColor = RGBColor(0, 150, 0);

/// Draws training loss (a line), validation loss (a line through marked points, so
/// a single one shows) and the data's unigram entropy (a horizontal line) against
/// step. The y range leaves a band above every trace for the legend, drawn there.
pub fn plot_losses(
    path: &Path,
    title: &str,
    train: &[TrainRecord],
    eval: &[EvalRecord],
    unigram_entropy: f64,
) -> Result<()> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let points = train
        .iter()
        .map(|r| (r.step, r.train_loss))
        .chain(eval.iter().map(|r| (r.step, r.val_loss)))
        .chain([(0, unigram_entropy)]);
    let (mut x_max, mut y_min, mut y_max) = (1usize, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points.filter(|p| p.1.is_finite()) {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let span = (y_max - y_min).max(1e-3);
    // The legend's three rows take under a quarter of the plot's height: the top
    // 30% of the range holds no data, so the legend there covers no trace.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0..x_max,
            (y_min - 0.05 * span).max(0.0)..y_max + 0.45 * span,
        )
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
