//! What every picture hgpt draws shares: the embedded DejaVu font (so labels render
//! on machines with no fonts installed), one error message for a failed drawing, and
//! the legend's place: a band at the top of the plot that the y range keeps free of
//! data, so the legend drawn there covers no trace.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::chart::ChartContext;
use plotters::coord::CoordTranslate;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

static FONT: Once = Once::new();

/// Registers the embedded DejaVu font once (every plot in hgpt draws through it).
pub fn ensure_font() {
    FONT.call_once(|| {
        // The embedded font is valid TrueType; failure would only lose the labels.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Turns a plotters error into "cannot draw PATH: ...".
pub fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

/// The share of the plot's height, at its top, that [`range_with_legend_band`]
/// keeps free of data. A legend of four rows at the default 12 px font is under
/// 90 px tall, so it fits there in any plot area over 300 px high.
pub const LEGEND_BAND: f64 = 0.3;

/// The y range for the finite `values`: 5% of their span below them, and above
/// them the [`LEGEND_BAND`] that [`draw_legend`] fills. (0, 1) spans nothing when
/// no value is finite.
pub fn range_with_legend_band(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let span = (hi - lo).max(1e-6 * hi.abs().max(1.0));
    // The data fill (1 - LEGEND_BAND) of the range, 5% of their span below them.
    let range = 1.05 * span / (1.0 - LEGEND_BAND);
    (lo - 0.05 * span, lo - 0.05 * span + range)
}

/// Draws the chart's series labels in its upper right corner, inside the band
/// that [`range_with_legend_band`] kept empty.
pub fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}
