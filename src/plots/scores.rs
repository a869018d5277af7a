//! [`plot_ood_scores`]: density histograms of the ID and OOD scores.

use std::path::Path;

use ndarray::ArrayView1;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::{DEFAULT_SIZE, Figure, ID_COLOR, OOD_COLOR, TextSizes, draw_legend, plot_err, save};
use crate::error::{Error, Result};
use crate::metrics::roc_curve;

/// Options of [`plot_ood_scores`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePlot {
    /// Title; default "Histograms of OOD detection scores".
    pub title: String,
    /// Number of bins over the range of all scores (default 100).
    pub bins: usize,
    /// Density axis on a log scale (default `false`); useful for MSP, whose
    /// scores pile up near −1.
    pub log_scale: bool,
    /// Width and height in pixels (default 800x600).
    pub size: (u32, u32),
}

impl Default for ScorePlot {
    fn default() -> Self {
        ScorePlot {
            title: "Histograms of OOD detection scores".into(),
            bins: 100,
            log_scale: false,
            size: DEFAULT_SIZE,
        }
    }
}

impl ScorePlot {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the number of bins.
    pub fn bins(mut self, bins: usize) -> Self {
        self.bins = bins;
        self
    }

    /// Puts the density axis on a log scale.
    pub fn log_scale(mut self, yes: bool) -> Self {
        self.log_scale = yes;
        self
    }

    /// Sets the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }
}

/// Writes overlaid density histograms of `scores_in` ("ID data") and
/// `scores_out` ("OOD data") to `path` (`.png` or `.svg`), with a dashed
/// line at the threshold that flags 95% of the OOD data ("TPR=95%").
///
/// Both sides share the bins; each histogram integrates to one. Errors on
/// empty sides, NaN or infinite scores, zero bins, or a path that cannot be
/// written (no partial file is left).
pub fn plot_ood_scores<'a, 'b>(
    scores_in: impl Into<ArrayView1<'a, f32>>,
    scores_out: impl Into<ArrayView1<'b, f32>>,
    options: &ScorePlot,
    path: impl AsRef<Path>,
) -> Result<()> {
    let (scores_in, scores_out) = (scores_in.into().to_vec(), scores_out.into().to_vec());
    // The metrics validate the scores (empty sides, NaN) and give the
    // threshold of the dashed line.
    let curve = roc_curve(&scores_in[..], &scores_out[..])?;
    for (scores, what) in [(&scores_in, "ID scores"), (&scores_out, "OOD scores")] {
        if let Some(index) = scores.iter().position(|s| s.is_infinite()) {
            return Err(Error::InvalidParameter {
                name: "scores",
                value: format!("{what}[{index}] = {}", scores[index]),
                reason: "a histogram needs finite scores".into(),
            });
        }
    }
    if options.bins == 0 || options.bins > MAX_BINS {
        return Err(Error::InvalidParameter {
            name: "bins",
            value: options.bins.to_string(),
            reason: format!("need 1 to {MAX_BINS} bins (a figure cannot show more)"),
        });
    }
    let at95 = curve
        .tpr
        .iter()
        .position(|&t| t >= 0.95)
        .unwrap_or(curve.tpr.len() - 1);
    let threshold = f64::from(curve.thresholds[at95]);

    let histogram = Histograms::new(&scores_in, &scores_out, options.bins, threshold);
    save(
        &ScoreFigure { options, histogram },
        options.size,
        path.as_ref(),
    )
}

/// The most bins a histogram takes: far more than a figure's pixels, and
/// a bound on the memory an absurd count would ask for.
pub const MAX_BINS: usize = 100_000;

/// The binned densities of both sides.
struct Histograms {
    edges: Vec<f64>,
    density_in: Vec<f64>,
    density_out: Vec<f64>,
    threshold: f64,
}

impl Histograms {
    fn new(scores_in: &[f32], scores_out: &[f32], bins: usize, threshold: f64) -> Self {
        let all = scores_in.iter().chain(scores_out).map(|&s| f64::from(s));
        let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
        if hi - lo < 1e-12 {
            // All scores equal: one unit around them.
            lo -= 0.5;
            hi += 0.5;
        }
        let width = (hi - lo) / bins as f64;
        let edges = (0..=bins).map(|i| lo + width * i as f64).collect();
        let density = |scores: &[f32]| {
            let mut counts = vec![0_usize; bins];
            for &s in scores {
                let bin = ((f64::from(s) - lo) / width).floor() as usize;
                counts[bin.min(bins - 1)] += 1;
            }
            let norm = scores.len() as f64 * width;
            counts.into_iter().map(|c| c as f64 / norm).collect()
        };
        Histograms {
            edges,
            density_in: density(scores_in),
            density_out: density(scores_out),
            threshold,
        }
    }

    fn max_density(&self) -> f64 {
        self.density_in
            .iter()
            .chain(&self.density_out)
            .fold(0.0, |m, &d| m.max(d))
    }

    /// The upper corner above the lower bars: upper left unless the tallest
    /// bar of the left third outgrows that of the right third (e.g. MSP
    /// scores piled up at -1), so the legend never hides the peak.
    fn legend_corner(&self) -> SeriesLabelPosition {
        let bins = self.density_in.len();
        let third = bins.div_ceil(3);
        let tallest = |range: std::ops::Range<usize>| {
            range
                .map(|i| self.density_in[i].max(self.density_out[i]))
                .fold(0.0, f64::max)
        };
        if tallest(0..third) > tallest(bins - third..bins) {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::UpperLeft
        }
    }

    fn min_positive_density(&self) -> f64 {
        self.density_in
            .iter()
            .chain(&self.density_out)
            .filter(|&&d| d > 0.0)
            .fold(f64::INFINITY, |m, &d| m.min(d))
    }
}

struct ScoreFigure<'a> {
    options: &'a ScorePlot,
    histogram: Histograms,
}

impl Figure for ScoreFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let h = &self.histogram;
        let top = h.max_density();
        if self.options.log_scale {
            let bottom = h.min_positive_density() / 2.0;
            // Headroom above the tallest bar for the legend.
            self.draw_on(root, (bottom..top * 8.0).log_scale(), bottom)
        } else {
            self.draw_on(root, 0.0..top * 1.25, 0.0)
        }
    }
}

impl ScoreFigure<'_> {
    fn draw_on<DB, Y>(&self, root: &DrawingArea<DB, Shift>, y_range: Y, floor: f64) -> Result<()>
    where
        DB: DrawingBackend,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let h = &self.histogram;
        let text = TextSizes::for_size(self.options.size);
        let (lo, hi) = (h.edges[0], h.edges[h.edges.len() - 1]);
        let pad = (hi - lo) * 0.02;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.options.title, text.font(text.title))
            .margin(20)
            .x_label_area_size(text.axis * 3)
            .y_label_area_size(text.axis * 4)
            .build_cartesian_2d(lo - pad..hi + pad, y_range)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("OOD score")
            .y_desc("Density")
            .axis_desc_style(text.font(text.axis))
            .label_style(text.font(text.ticks))
            .draw()
            .map_err(plot_err)?;

        let top = chart.y_range().end;
        for (densities, color, label) in [
            (&h.density_in, ID_COLOR, "ID data"),
            (&h.density_out, OOD_COLOR, "OOD data"),
        ] {
            let fill = color.mix(0.5).filled();
            let bars = densities
                .iter()
                .enumerate()
                .filter(|(_, d)| **d > 0.0)
                .map(|(i, &d)| Rectangle::new([(h.edges[i], floor), (h.edges[i + 1], d)], fill));
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill));
        }
        let line = BLACK.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(h.threshold, floor), (h.threshold, top)],
                8,
                5,
                line,
            ))
            .map_err(plot_err)?
            .label("TPR=95%")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], line));
        draw_legend(&mut chart, h.legend_corner(), &text)
    }
}

#[cfg(test)]
mod tests {
    use plotters::prelude::SeriesLabelPosition;

    use super::Histograms;

    #[test]
    fn the_legend_goes_to_the_side_without_the_peak() {
        // MSP-like: ID piled up at -1, OOD spread to the right.
        let msp_in: Vec<f32> = (0..100).map(|i| -1.0 + i as f32 * 1e-4).collect();
        let msp_out: Vec<f32> = (0..100).map(|i| -1.0 + i as f32 * 7e-3).collect();
        let h = Histograms::new(&msp_in, &msp_out, 50, -0.99);
        assert!(matches!(h.legend_corner(), SeriesLabelPosition::UpperRight));
        // MLS-like: two humps of equal height at both ends.
        let mls_in: Vec<f32> = (0..100).map(|i| -12.0 + (i % 10) as f32 * 0.1).collect();
        let mls_out: Vec<f32> = mls_in.iter().map(|s| s + 8.0).collect();
        let h = Histograms::new(&mls_in, &mls_out, 50, -8.0);
        assert!(matches!(h.legend_corner(), SeriesLabelPosition::UpperLeft));
    }
}
