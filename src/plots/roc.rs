//! [`plot_roc_curve`]: the ROC curve with its area and the FPR@95%TPR point.

use std::path::Path;

use ndarray::ArrayView1;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{DEFAULT_SIZE, Figure, ID_COLOR, TextSizes, draw_legend, plot_err, save};
use crate::error::Result;
use crate::metrics::{RocCurve, auroc, roc_curve};

/// Options of [`plot_roc_curve`].
#[derive(Debug, Clone, PartialEq)]
pub struct RocPlot {
    /// Title; by default "ROC curve (AuC = x.xxx)" with the curve's area.
    pub title: Option<String>,
    /// Width and height in pixels (default 800x600).
    pub size: (u32, u32),
}

impl Default for RocPlot {
    fn default() -> Self {
        RocPlot {
            title: None,
            size: DEFAULT_SIZE,
        }
    }
}

impl RocPlot {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the title (replacing the default, which shows the AUROC).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }
}

/// Writes the ROC curve of `scores_in` vs `scores_out` (OOD positive) to
/// `path` (`.png` or `.svg`): FPR on x, TPR on y, the area under the curve
/// filled, and dashed guides to the FPR@95%TPR point, marked. The default
/// title shows the AUROC, computed by [`crate::metrics::auroc`].
///
/// Errors on empty sides, NaN scores, or a path that cannot be written (no
/// partial file is left).
pub fn plot_roc_curve<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    options: &RocPlot,
    path: impl AsRef<Path>,
) -> Result<()> {
    let (scores_in, scores_out) = (scores_in.into(), scores_out.into());
    // The metrics validate the scores (empty sides, NaN).
    let curve = roc_curve(scores_in, scores_out)?;
    let area = auroc(scores_in, scores_out)?;
    let title = options
        .title
        .clone()
        .unwrap_or_else(|| format!("ROC curve (AuC = {area:.3})"));
    save(
        &RocFigure {
            options,
            curve,
            title,
        },
        options.size,
        path.as_ref(),
    )
}

struct RocFigure<'a> {
    options: &'a RocPlot,
    curve: RocCurve,
    title: String,
}

impl Figure for RocFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let text = TextSizes::for_size(self.options.size);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text.font(text.title))
            .margin(20)
            .x_label_area_size(text.axis * 3)
            .y_label_area_size(text.axis * 4)
            .build_cartesian_2d(-0.01..1.01, -0.01..1.01)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("False positive rate (FPR)")
            .y_desc("True positive rate (TPR)")
            .axis_desc_style(text.font(text.axis))
            .label_style(text.font(text.ticks))
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.08))
            .draw()
            .map_err(plot_err)?;

        let points: Vec<(f64, f64)> = self
            .curve
            .fpr
            .iter()
            .copied()
            .zip(self.curve.tpr.iter().copied())
            .collect();
        // The first point reaching TPR 95%: scikit-learn's FPR@95%TPR, taken
        // from the whole curve.
        let at = points
            .iter()
            .position(|&(_, t)| t >= 0.95)
            .unwrap_or(points.len() - 1);
        let (fpr, tpr) = points[at];

        let (w, h) = self.options.size;
        let drawn = thin(&points, 0.25 / f64::from(w.max(h)));
        chart
            .draw_series(AreaSeries::new(
                drawn.iter().copied(),
                0.0,
                ID_COLOR.mix(0.2),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                drawn.iter().copied(),
                ID_COLOR.stroke_width(3),
            ))
            .map_err(plot_err)?;

        let guide = BLACK.mix(0.7).stroke_width(2);
        for segment in [[(fpr, 0.0), (fpr, tpr)], [(0.0, tpr), (fpr, tpr)]] {
            chart
                .draw_series(DashedLineSeries::new(segment, 8, 5, guide))
                .map_err(plot_err)?;
        }
        let marker_size = (text.ticks / 2).max(4);
        chart
            .draw_series([Circle::new((fpr, tpr), marker_size, RED.filled())])
            .map_err(plot_err)?
            .label(format!("FPR = {fpr:.3} at TPR = {tpr:.3}"))
            .legend(move |(x, y)| Circle::new((x + 8, y), marker_size, RED.filled()));
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight, &text)
    }
}

/// The points of a monotone curve without those within `tol` of the last
/// kept one in both coordinates (the last point is always kept): the drawn
/// curve moves less than `tol`, a fraction of a pixel, and the image of a
/// million-score curve stays small (an SVG of every point of 10^6 scores
/// was 29 MB).
fn thin(points: &[(f64, f64)], tol: f64) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::new();
    for (i, &(x, y)) in points.iter().enumerate() {
        let is_last = i + 1 == points.len();
        let far = kept
            .last()
            .is_none_or(|&(kx, ky)| (x - kx).abs() >= tol || (y - ky).abs() >= tol);
        if far || is_last {
            kept.push((x, y));
        }
    }
    kept
}
