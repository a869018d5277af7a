//! Plots (feature `plots`): score histograms, ROC curves and 2-D feature
//! maps, written as PNG or SVG in pure Rust.
//!
//! - [`plot_ood_scores`]: overlaid density histograms of the ID and OOD
//!   scores, with the threshold that flags 95% of the OOD data;
//! - [`plot_roc_curve`]: the ROC curve, its area, and the FPR@95%TPR point;
//! - [`plot_2d_features`] / [`plot_model_features`]: features projected to
//!   2-D ([`Projection::Pca`] or [`Projection::Tsne`]), one colour per ID
//!   class and grey for OOD.
//!
//! The format follows the file extension (`.png` or `.svg`; anything else is
//! an error). Text is drawn with a bundled font (DejaVu Sans), so rendering
//! needs no system font library. A file is written whole or not at all: the
//! image is rendered in memory, written beside the target and renamed.
//!
//! ```
//! use oodkit::plots::{ScorePlot, plot_ood_scores};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let scores_in: Vec<f32> = (0..500).map(|i| (i % 50) as f32 / 10.0).collect();
//! let scores_out: Vec<f32> = (0..500).map(|i| 3.0 + (i % 50) as f32 / 10.0).collect();
//! let path = dir.path().join("scores.svg");
//! plot_ood_scores(&scores_in, &scores_out, &ScorePlot::new().title("MLS"), &path)?;
//! assert!(std::fs::read_to_string(&path).unwrap().contains("MLS"));
//! # Ok::<(), oodkit::Error>(())
//! ```

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};

mod features;
mod projection;
mod roc;
mod scores;

pub use features::{FeaturePlot, plot_2d_features, plot_model_features};
pub use projection::{Projection, pca, tsne};
pub use roc::{RocPlot, plot_roc_curve};
pub use scores::{MAX_BINS, ScorePlot, plot_ood_scores};

/// The default image size in pixels, width x height.
pub const DEFAULT_SIZE: (u32, u32) = (800, 600);

/// Colour of the in-distribution series.
pub(crate) const ID_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the OOD series.
pub(crate) const OOD_COLOR: RGBColor = RGBColor(255, 127, 14);

/// The font family every plot uses, registered from the bundled file.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_bundled_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the bundled font could not be loaded".into()))
    }
}

/// Text sizes, in pixels, for a plot of the given size.
pub(crate) struct TextSizes {
    pub title: u32,
    pub axis: u32,
    pub ticks: u32,
    pub legend: u32,
}

impl TextSizes {
    pub(crate) fn for_size((w, h): (u32, u32)) -> Self {
        // Scaled from the 800x600 default.
        let scale = (w.min(h * 4 / 3) as f64 / 800.0).max(0.5);
        let px = |base: f64| (base * scale).round() as u32;
        TextSizes {
            title: px(24.0),
            axis: px(18.0),
            ticks: px(15.0),
            legend: px(16.0),
        }
    }

    pub(crate) fn font(&self, size: u32) -> TextStyle<'static> {
        (FONT, size).into_font().into()
    }
}

/// Draws the legend of the labelled series, boxed, at `position`.
pub(crate) fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    text: &TextSizes,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font(text.font(text.legend))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_err)
}

/// Something that draws itself on any plotters backend.
pub(crate) trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Maps a plotters drawing error into the crate's error.
pub(crate) fn plot_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Plot(e.to_string())
}

/// The image formats a plot can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        other => Err(Error::InvalidParameter {
            name: "path",
            value: path.display().to_string(),
            reason: format!(
                "the extension {} is not an image format oodkit writes: use .png or .svg",
                other.map_or("(none)".to_owned(), |e| format!("\".{e}\""))
            ),
        }),
    }
}

/// Renders `figure` at `size` and writes it to `path` in the format its
/// extension names, whole or not at all.
pub(crate) fn save(figure: &impl Figure, size: (u32, u32), path: &Path) -> Result<()> {
    let format = format_of(path)?;
    let (w, h) = size;
    if w < 200 || h < 150 || w > 20_000 || h > 20_000 {
        return Err(Error::InvalidParameter {
            name: "size",
            value: format!("{w}x{h}"),
            reason: "plots are 200x150 to 20000x20000 pixels".into(),
        });
    }
    register_bundled_font()?;
    let bytes = match format {
        Format::Png => {
            let mut rgb = vec![255_u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                root.fill(&WHITE).map_err(plot_err)?;
                figure.draw(&root)?;
                root.present().map_err(plot_err)?;
            }
            encode_png(&rgb, size)?
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                root.fill(&WHITE).map_err(plot_err)?;
                figure.draw(&root)?;
                root.present().map_err(plot_err)?;
            }
            svg.into_bytes()
        }
    };
    crate::datasets::files::write_atomically(path, &bytes)
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(plot_err)?;
    writer.write_image_data(rgb).map_err(plot_err)?;
    writer.finish().map_err(plot_err)?;
    Ok(out)
}
