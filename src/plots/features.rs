//! [`plot_2d_features`]: ID and OOD features projected to 2-D.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, concatenate};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::HSLColor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;

use super::{DEFAULT_SIZE, Figure, TextSizes, draw_legend, plot_err, save};
use crate::datasets::BatchSource;
use crate::error::{Error, Result};
use crate::model::{CheckedFeatures, FeatureModel, LayerId};
use crate::plots::Projection;

/// Options of [`plot_2d_features`].
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePlot {
    /// How to project to 2-D (default PCA).
    pub method: Projection,
    /// At most this many points in all (default 4000): when there are more,
    /// a seeded random subset of each side, in proportion to its size.
    pub max_samples: usize,
    /// Seed of the subset.
    pub seed: u64,
    /// Title; default "2D projection of the features (PCA)" or "(t-SNE)".
    pub title: Option<String>,
    /// Width and height in pixels (default 800x600).
    pub size: (u32, u32),
}

impl Default for FeaturePlot {
    fn default() -> Self {
        FeaturePlot {
            method: Projection::Pca,
            max_samples: 4000,
            seed: 0,
            title: None,
            size: DEFAULT_SIZE,
        }
    }
}

impl FeaturePlot {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the projection.
    pub fn method(mut self, method: Projection) -> Self {
        self.method = method;
        self
    }

    /// Sets the maximum number of points.
    pub fn max_samples(mut self, max_samples: usize) -> Self {
        self.max_samples = max_samples;
        self
    }

    /// Sets the seed of the subset.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the title.
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

/// Writes a scatter plot of `features_in` `(N_in, D)` (coloured by
/// `labels_in`, legend "class k") and `features_out` `(N_out, D)` (grey,
/// "unknown"), projected together to 2-D, to `path` (`.png` or `.svg`).
///
/// Errors on empty sides, mismatched widths or label counts, non-finite
/// features, or a path that cannot be written (no partial file is left).
pub fn plot_2d_features<'a, 'b, 'c>(
    features_in: impl Into<ArrayView2<'a, f32>>,
    labels_in: impl Into<ArrayView1<'b, i64>>,
    features_out: impl Into<ArrayView2<'c, f32>>,
    options: &FeaturePlot,
    path: impl AsRef<Path>,
) -> Result<()> {
    let (features_in, labels_in, features_out) =
        (features_in.into(), labels_in.into(), features_out.into());
    for (n, what) in [
        (features_in.nrows(), "ID features"),
        (features_out.nrows(), "OOD features"),
    ] {
        if n == 0 {
            return Err(Error::Empty {
                what: what.into(),
                hint: "a feature plot needs points on both sides".into(),
            });
        }
    }
    if features_in.ncols() != features_out.ncols() {
        return Err(Error::ShapeMismatch {
            what: "OOD features".into(),
            expected: format!("(_, {}) like the ID features", features_in.ncols()),
            found: format!("{:?}", features_out.shape()),
        });
    }
    if labels_in.len() != features_in.nrows() {
        return Err(Error::LengthMismatch {
            what: "ID labels vs ID features".into(),
            left: labels_in.len(),
            right: features_in.nrows(),
        });
    }
    if options.max_samples < 2 {
        return Err(Error::InvalidParameter {
            name: "max_samples",
            value: options.max_samples.to_string(),
            reason: "need at least 2 points".into(),
        });
    }

    // A proportional, seeded subset of each side.
    let (n_in, n_out) = (features_in.nrows(), features_out.nrows());
    let total = n_in + n_out;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let (keep_in, keep_out) = if total > options.max_samples {
        let k_in = ((n_in * options.max_samples) / total).max(1);
        let k_out = (options.max_samples - k_in).clamp(1, n_out);
        let mut pick = |n, k| {
            let mut idx = sample(&mut rng, n, k).into_vec();
            idx.sort_unstable();
            idx
        };
        (pick(n_in, k_in.min(n_in)), pick(n_out, k_out))
    } else {
        ((0..n_in).collect(), (0..n_out).collect())
    };
    let chosen_in = features_in.select(Axis(0), &keep_in);
    let chosen_out = features_out.select(Axis(0), &keep_out);
    let labels: Array1<i64> = labels_in.select(Axis(0), &keep_in);
    let all = concatenate(Axis(0), &[chosen_in.view(), chosen_out.view()])?;

    let projected = options.method.project(all.view())?;
    if let Some(index) = projected.iter().position(|v| !v.is_finite()) {
        return Err(Error::numerical(
            "the 2-D projection of the features",
            format!(
                "point {} came out as {} (features too large for f32 arithmetic, or t-SNE \
                 diverging on identical points): scale the features, or use Projection::Pca",
                index / 2,
                projected.iter().nth(index).copied().unwrap_or(f32::NAN)
            ),
        ));
    }
    let title = options.title.clone().unwrap_or_else(|| {
        let method = match options.method {
            Projection::Pca => "PCA",
            Projection::Tsne { .. } => "t-SNE",
        };
        format!("2D projection of the features ({method})")
    });
    let figure = FeatureFigure {
        points: projected,
        labels,
        size: options.size,
        title,
    };
    save(&figure, options.size, path.as_ref())
}

/// Runs `model` over `data_in` and `data_out`, takes the activations of
/// `layer` (the reference notebook uses `-2`, the penultimate layer), and
/// plots them with [`plot_2d_features`]. The ID batches must carry class
/// labels.
pub fn plot_model_features(
    model: &dyn FeatureModel,
    data_in: &dyn BatchSource,
    data_out: &dyn BatchSource,
    layer: impl Into<LayerId>,
    options: &FeaturePlot,
    path: impl AsRef<Path>,
) -> Result<()> {
    let layers = [layer.into()];
    // One checked boundary for both sides: the same width throughout.
    let mut checked = CheckedFeatures::new(model, &layers)?;
    let (features_in, labels_in) = collect_features(&mut checked, data_in, "ID data")?;
    let (features_out, _) = collect_features(&mut checked, data_out, "OOD data")?;
    let labels_in = labels_in.ok_or_else(|| {
        Error::missing(
            "class labels of the ID data",
            "prepare the ID data with labels (PrepareConfig::with_labels(true))",
        )
    })?;
    plot_2d_features(&features_in, &labels_in, &features_out, options, path)
}

/// The activations of `layer` over every batch, and the labels when all
/// batches carry them.
fn collect_features(
    checked: &mut CheckedFeatures,
    data: &dyn BatchSource,
    what: &str,
) -> Result<(Array2<f32>, Option<Array1<i64>>)> {
    let mut parts = Vec::new();
    let mut labels: Option<Vec<i64>> = Some(Vec::new());
    for batch in data.batches()? {
        let batch = batch?;
        match (&mut labels, &batch.labels) {
            (Some(all), Some(l)) => all.extend(l.iter()),
            _ => labels = None,
        }
        let offset: usize = parts.iter().map(|p: &Array2<f32>| p.nrows()).sum();
        let out = checked
            .forward(batch.inputs)
            .map_err(|e| e.in_batch_at(offset))?;
        parts.extend(out.features);
    }
    if parts.is_empty() {
        return Err(Error::Empty {
            what: what.into(),
            hint: "it yielded no batch".into(),
        });
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let features = concatenate(Axis(0), &views)?;
    Ok((features, labels.map(Array1::from)))
}

/// The tab10 palette without its grey, which marks OOD points.
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const UNKNOWN: RGBColor = RGBColor(127, 127, 127);

fn class_color(rank: usize, classes: usize) -> RGBAColor {
    if classes <= PALETTE.len() {
        PALETTE[rank].to_rgba()
    } else {
        HSLColor(rank as f64 / classes as f64, 0.65, 0.45).to_rgba()
    }
}

struct FeatureFigure {
    /// ID points first, then OOD points.
    points: Array2<f32>,
    labels: Array1<i64>,
    size: (u32, u32),
    title: String,
}

impl Figure for FeatureFigure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let text = TextSizes::for_size(self.size);
        let (xs, ys) = (self.points.column(0), self.points.column(1));
        // In f64, so points spanning ±f32::MAX give a finite axis, and
        // padded relative to the values, so the axis never has zero width
        // (the plotting library's tick search never ends on one).
        let range = |v: ArrayView1<f32>| {
            let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(f64::from(x)), hi.max(f64::from(x)))
            });
            let pad = ((hi - lo) * 0.05)
                .max(lo.abs().max(hi.abs()) * 1e-6)
                .max(1e-6);
            (lo - pad)..(hi + pad)
        };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text.font(text.title))
            .margin(20)
            .x_label_area_size(text.axis * 2)
            .y_label_area_size(text.axis * 3)
            .build_cartesian_2d(range(xs), range(ys))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style(text.font(text.ticks))
            .draw()
            .map_err(plot_err)?;

        let n_in = self.labels.len();
        let point = |i: usize| (f64::from(xs[i]), f64::from(ys[i]));
        let radius = (text.ticks / 6).max(2);
        let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &label) in self.labels.iter().enumerate() {
            by_class.entry(label).or_default().push(i);
        }
        let classes = by_class.len();
        for (rank, (label, rows)) in by_class.iter().enumerate() {
            let style = class_color(rank, classes).mix(0.8).filled();
            chart
                .draw_series(rows.iter().map(|&i| Circle::new(point(i), radius, style)))
                .map_err(plot_err)?
                .label(format!("class {label}"))
                .legend(move |(x, y)| Circle::new((x + 8, y), radius + 2, style));
        }
        let style = UNKNOWN.mix(0.45).filled();
        chart
            .draw_series((n_in..self.points.nrows()).map(|i| Circle::new(point(i), radius, style)))
            .map_err(plot_err)?
            .label("unknown")
            .legend(move |(x, y)| Circle::new((x + 8, y), radius + 2, style));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, &text)
    }
}
