//! Plots: files of the right format and size, with the expected text and
//! colours; projections with known answers; bad input is an error and leaves
//! no file behind.
#![cfg(feature = "plots")]

mod common;

use std::fs;
use std::path::Path;

use common::listing;
use ndarray::{Array1, Array2, ArrayView4, Axis, array};
use oodkit::Error;
use oodkit::metrics::auroc;
use oodkit::model::from_fn_with_features;
use oodkit::plots::{
    FeaturePlot, Projection, RocPlot, ScorePlot, pca, plot_2d_features, plot_model_features,
    plot_ood_scores, plot_roc_curve, tsne,
};

/// Scores of two overlapping bumps: ID around 0, OOD around 2.
fn scores() -> (Vec<f32>, Vec<f32>) {
    let bump = |centre: f32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                centre + ((i * 7919) % 1000) as f32 / 1000.0 * 2.0 - 1.0
                    + ((i % 3) as f32 - 1.0) * 0.3
            })
            .collect()
    };
    (bump(0.0, 2000), bump(1.5, 1500))
}

/// Width, height and RGB pixels of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let pixels = buf[..info.buffer_size()]
        .chunks(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

/// How many pixels are within 4 of `rgb` in every channel.
fn count_near(pixels: &[[u8; 3]], rgb: [u8; 3]) -> usize {
    pixels
        .iter()
        .filter(|p| p.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 4))
        .count()
}

/// `rgb` at opacity `alpha` over white.
fn over_white(rgb: [u8; 3], alpha: f32) -> [u8; 3] {
    rgb.map(|c| (alpha * c as f32 + (1.0 - alpha) * 255.0).round() as u8)
}

/// `rgb` at 50% over white.
fn half_over_white(rgb: [u8; 3]) -> [u8; 3] {
    over_white(rgb, 0.5)
}

#[test]
fn score_histogram_png_has_both_series() {
    let dir = tempfile::tempdir().unwrap();
    let (s_in, s_out) = scores();
    let path = dir.path().join("scores.png");
    plot_ood_scores(&s_in, &s_out, &ScorePlot::new(), &path).unwrap();
    let (w, h, pixels) = decode_png(&path);
    assert_eq!((w, h), (800, 600));
    let id = count_near(&pixels, half_over_white([31, 119, 180]));
    let ood = count_near(&pixels, half_over_white([255, 127, 14]));
    assert!(
        id > 2000 && ood > 2000,
        "ID-coloured pixels {id}, OOD-coloured {ood}"
    );
    let white = count_near(&pixels, [255, 255, 255]);
    assert!(
        white > pixels.len() / 3 && white < pixels.len(),
        "white pixels {white}"
    );

    // Log scale and another size.
    let path = dir.path().join("scores_log.png");
    plot_ood_scores(
        &s_in,
        &s_out,
        &ScorePlot::new().log_scale(true).size(640, 480),
        &path,
    )
    .unwrap();
    let (w, h, pixels) = decode_png(&path);
    assert_eq!((w, h), (640, 480));
    assert!(count_near(&pixels, half_over_white([255, 127, 14])) > 500);
    assert_eq!(listing(dir.path()), vec!["scores.png", "scores_log.png"]);
}

#[test]
fn score_histogram_svg_has_title_axes_and_legend() {
    let dir = tempfile::tempdir().unwrap();
    let (s_in, s_out) = scores();
    let path = dir.path().join("scores.svg");
    plot_ood_scores(&s_in, &s_out, &ScorePlot::new().bins(30), &path).unwrap();
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.contains(r#"width="800""#) && svg.contains(r#"height="600""#));
    for text in [
        "Histograms of OOD detection scores",
        "OOD score",
        "Density",
        "ID data",
        "OOD data",
        "TPR=95%",
    ] {
        assert!(svg.contains(text), "missing {text:?}");
    }
    let custom = dir.path().join("custom.SVG");
    plot_ood_scores(
        &s_in,
        &s_out,
        &ScorePlot::new().title("MSP scores"),
        &custom,
    )
    .unwrap();
    assert!(fs::read_to_string(&custom).unwrap().contains("MSP scores"));
}

#[test]
fn roc_plot_shows_the_auroc_and_the_fpr95_point() {
    let dir = tempfile::tempdir().unwrap();
    let (s_in, s_out) = scores();
    let area = auroc(&s_in, &s_out).unwrap();
    let svg_path = dir.path().join("roc.svg");
    plot_roc_curve(&s_in, &s_out, &RocPlot::new(), &svg_path).unwrap();
    let svg = fs::read_to_string(&svg_path).unwrap();
    for text in [
        format!("ROC curve (AuC = {area:.3})"),
        "False positive rate (FPR)".into(),
        "True positive rate (TPR)".into(),
        "at TPR = 0.95".into(),
    ] {
        assert!(svg.contains(&text), "missing {text:?}");
    }
    let png_path = dir.path().join("roc.png");
    plot_roc_curve(&s_in, &s_out, &RocPlot::new().size(900, 700), &png_path).unwrap();
    let (w, h, pixels) = decode_png(&png_path);
    assert_eq!((w, h), (900, 700));
    // The curve's line and the area's fill.
    assert!(count_near(&pixels, [31, 119, 180]) > 500);
    assert!(count_near(&pixels, [210, 228, 240]) > 10_000, "filled area");
}

#[test]
fn roc_svg_of_many_scores_stays_small() {
    // 2 x 10^5 distinct scores: uniform ID, OOD shifted by 0.3, so
    // AUROC = 1 - 0.7^2 / 2 = 0.755.
    let n = 100_000;
    let s_in: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 / n as f32).collect();
    let s_out: Vec<f32> = s_in.iter().map(|s| s + 0.3 + 0.5 / n as f32).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roc.svg");
    plot_roc_curve(&s_in, &s_out, &RocPlot::new(), &path).unwrap();
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.contains("ROC curve (AuC = 0.755)"), "title");
    // The curve is drawn at a fraction of a pixel, not point by point
    // (drawing every point wrote 3 MB here).
    assert!(svg.len() < 300_000, "{} bytes", svg.len());
}

#[test]
fn bad_scores_and_paths_are_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (s_in, s_out) = scores();
    let png = dir.path().join("out.png");
    let empty: [f32; 0] = [];
    assert!(matches!(
        plot_ood_scores(&empty, &s_out, &ScorePlot::new(), &png),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        plot_roc_curve(&s_in, &empty, &RocPlot::new(), &png),
        Err(Error::Empty { .. })
    ));
    let mut with_nan = s_out.clone();
    with_nan[7] = f32::NAN;
    let err = plot_ood_scores(&s_in, &with_nan, &ScorePlot::new(), &png).unwrap_err();
    assert!(matches!(err, Error::NotANumber { index: 7, .. }), "{err}");
    assert!(plot_roc_curve(&s_in, &with_nan, &RocPlot::new(), &png).is_err());
    let mut with_inf = s_in.clone();
    with_inf[3] = f32::INFINITY;
    assert!(plot_ood_scores(&with_inf, &s_out, &ScorePlot::new(), &png).is_err());
    assert!(plot_ood_scores(&s_in, &s_out, &ScorePlot::new().bins(0), &png).is_err());
    assert!(plot_ood_scores(&s_in, &s_out, &ScorePlot::new().size(10, 10), &png).is_err());

    for bad in ["plot.jpg", "plot", "plot.png.txt"] {
        let err = plot_roc_curve(&s_in, &s_out, &RocPlot::new(), dir.path().join(bad)).unwrap_err();
        assert!(err.to_string().contains(".png or .svg"), "{bad}: {err}");
    }
    // A folder that does not exist, and a path that is a folder.
    let missing = dir.path().join("no/such/dir/roc.png");
    assert!(matches!(
        plot_roc_curve(&s_in, &s_out, &RocPlot::new(), &missing),
        Err(Error::Io { .. })
    ));
    let folder = dir.path().join("taken.png");
    fs::create_dir(&folder).unwrap();
    let err = plot_roc_curve(&s_in, &s_out, &RocPlot::new(), &folder).unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter { .. })
            && err.to_string().contains("not a regular file"),
        "{err}"
    );
    // Nothing written but the folder made above: no partial files.
    assert_eq!(listing(dir.path()), vec!["taken.png"]);
    assert!(listing(&folder).is_empty());
}

#[test]
fn pca_recovers_known_components_both_ways() {
    // Points with coordinates a (spread 3) along u and b (spread 1) along v,
    // u and v orthonormal in 8-D.
    let u = Array1::from(vec![1.0_f32, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]) / 2.0;
    let v = Array1::from(vec![0.0_f32, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0, -1.0]) / 2.0;
    for n in [6_usize, 40] {
        // n = 6 < D = 8 takes the Gram-matrix path, n = 40 the covariance
        // path. Each a in -3..3 comes with b = +0.5 and b = -0.5, so a and b
        // are uncorrelated and var(a) > var(b): the components are exactly
        // the centred (a, b).
        let m = n / 2;
        let coords: Vec<(f32, f32)> = (0..n)
            .map(|i| {
                let a = (i / 2) as f32 / (m - 1) as f32 * 6.0 - 3.0;
                (a, if i % 2 == 0 { 0.5 } else { -0.5 })
            })
            .collect();
        let x = Array2::from_shape_fn((n, 8), |(i, j)| {
            coords[i].0 * u[j] + coords[i].1 * v[j] + 10.0
        });
        let p = pca(x.view(), 2).unwrap();
        let mean_a = coords.iter().map(|c| c.0).sum::<f32>() / n as f32;
        let mean_b = coords.iter().map(|c| c.1).sum::<f32>() / n as f32;
        for (i, &(a, b)) in coords.iter().enumerate() {
            // Up to sign, the components are the centred coordinates.
            assert!(
                (p[[i, 0]].abs() - (a - mean_a).abs()).abs() < 1e-3,
                "n={n} row {i}: {} vs {a}",
                p[[i, 0]]
            );
            assert!(
                (p[[i, 1]].abs() - (b - mean_b).abs()).abs() < 1e-3,
                "n={n} row {i}: {} vs {b}",
                p[[i, 1]]
            );
        }
        // Sign convention: each component's largest entry is positive.
        for c in 0..2 {
            let col = p.column(c);
            let largest = col
                .iter()
                .fold(0.0_f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            assert!(largest > 0.0);
        }
    }
    assert!(pca(array![[1.0_f32, 2.0]].view(), 1).is_err());
    assert!(pca(array![[1.0_f32, 2.0], [3.0, f32::NAN]].view(), 1).is_err());
    assert!(pca(array![[1.0_f32, 2.0], [3.0, 4.0]].view(), 3).is_err());
}

/// A seeded stream of roughly standard normal numbers (a sum of 12
/// uniforms from an LCG, minus 6), so the tests need no distribution crate.
fn normals(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        (0..12)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .sum::<f32>()
            - 6.0
    }
}

/// `k` clusters of `per` points in 10-D, centred at 10 * e_c, noise 0.5.
fn clusters(k: usize, per: usize, offset: usize) -> (Array2<f32>, Array1<i64>) {
    let n = k * per;
    let mut noise = normals(offset as u64 + 1);
    let x = Array2::from_shape_fn((n, 10), |(i, j)| {
        let c = i / per + offset;
        let jitter = 0.5 * noise();
        if j == c { 10.0 + jitter } else { jitter }
    });
    (x, Array1::from_iter((0..n).map(|i| (i / per) as i64)))
}

#[test]
fn tsne_separates_clusters_and_checks_its_perplexity() {
    let (x, labels) = clusters(3, 40, 0);
    let y = tsne(x.view(), 10.0).unwrap();
    assert_eq!(y.shape(), &[120, 2]);
    // Nearly every point is nearer its own cluster's centre than the others'
    // (t-SNE's neighbour search breaks ties at random: allow a stray point).
    let centre = |c: i64| {
        let rows: Vec<usize> = (0..120).filter(|&i| labels[i] == c).collect();
        y.select(Axis(0), &rows).mean_axis(Axis(0)).unwrap()
    };
    let centres: Vec<_> = (0..3).map(centre).collect();
    let nearest_own = (0..120)
        .filter(|&i| {
            let d = |c: &Array1<f32>| (&y.row(i) - c).mapv(|v| v * v).sum();
            let own = d(&centres[labels[i] as usize]);
            centres.iter().all(|c| d(c) >= own)
        })
        .count();
    assert!(
        nearest_own >= 118,
        "{nearest_own} of 120 points nearest their own cluster"
    );
    let err = tsne(x.view(), 40.0).unwrap_err();
    assert!(err.to_string().contains("at least 121 samples"), "{err}");
    assert!(tsne(x.view(), 0.5).is_err());
}

/// Five tight classes in 64-D plus OOD points between them (the shape of
/// the plots_demo example): with bhtsne's default learning rate some classes
/// collapsed to single points.
#[test]
fn tsne_keeps_tight_clusters_spread() {
    let mut normal = normals(12345);
    let (classes, per, ood) = (5, 300, 600);
    let centres = Array2::from_shape_fn((classes, 64), |_| 4.0 * normal());
    let mut x = Array2::from_shape_fn((classes * per + ood, 64), |(i, j)| {
        if i < classes * per {
            centres[[i / per, j]]
        } else {
            centres.column(j).mean().unwrap()
        }
    });
    x.mapv_inplace(|v| v + normal());
    let y = tsne(x.view(), 30.0).unwrap();
    for c in 0..classes {
        let spread = y
            .slice(ndarray::s![c * per..(c + 1) * per, ..])
            .std_axis(Axis(0), 0.0);
        assert!(
            spread.iter().all(|&s| s > 0.1),
            "class {c} collapsed: spread {spread}"
        );
    }
}

#[test]
fn feature_plots_write_pca_and_tsne_maps() {
    let dir = tempfile::tempdir().unwrap();
    let (x_in, labels) = clusters(3, 30, 0);
    let (x_out, _) = clusters(2, 30, 5);
    let svg = dir.path().join("features.svg");
    plot_2d_features(&x_in, &labels, &x_out, &FeaturePlot::new(), &svg).unwrap();
    let text = fs::read_to_string(&svg).unwrap();
    for t in [
        "2D projection of the features (PCA)",
        "class 0",
        "class 2",
        "unknown",
    ] {
        assert!(text.contains(t), "missing {t:?}");
    }
    let png = dir.path().join("features_tsne.png");
    let options = FeaturePlot::new()
        .method(Projection::Tsne { perplexity: 10.0 })
        .max_samples(100)
        .seed(3);
    plot_2d_features(&x_in, &labels, &x_out, &options, &png).unwrap();
    let (w, h, pixels) = decode_png(&png);
    assert_eq!((w, h), (800, 600));
    // Class 2's points: green at 80% opacity.
    assert!(count_near(&pixels, over_white([44, 160, 44], 0.8)) > 20);

    // Bad input.
    let out = dir.path().join("bad.png");
    let narrow = Array2::<f32>::zeros((4, 9));
    let err = plot_2d_features(&x_in, &labels, &narrow, &FeaturePlot::new(), &out).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = plot_2d_features(
        &x_in,
        labels.slice(ndarray::s![..10]),
        &x_out,
        &FeaturePlot::new(),
        &out,
    )
    .unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    let none = Array2::<f32>::zeros((0, 10));
    assert!(matches!(
        plot_2d_features(&x_in, &labels, &none, &FeaturePlot::new(), &out),
        Err(Error::Empty { .. })
    ));
    let mut nan = x_out.clone();
    nan[[3, 4]] = f32::NAN;
    assert!(plot_2d_features(&x_in, &labels, &nan, &FeaturePlot::new(), &out).is_err());
    assert!(!out.exists());
}

#[test]
fn model_features_are_collected_from_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    // Images 1x1x4 whose pixels are the features; logits their sums.
    let model = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let pixels = x.to_shape((n, 4))?.to_owned();
        let logits = pixels.sum_axis(Axis(1)).insert_axis(Axis(1));
        Ok((vec![pixels], logits))
    });
    let images = |offset: f32, n: usize| {
        ndarray::Array4::from_shape_fn((n, 1, 1, 4), |(i, _, _, j)| {
            offset + ((i * 3 + j * 5) % 7) as f32
        })
    };
    let ds_in =
        oodkit::OodDataset::from_arrays(images(0.0, 40), Array1::from_iter((0..40).map(|i| i % 2)))
            .unwrap();
    let ds_out = oodkit::OodDataset::from_arrays(images(20.0, 25), Array1::zeros(25)).unwrap();
    let prepared = ds_in.prepare(&oodkit::PrepareConfig::new(16)).unwrap();
    let path = dir.path().join("model.svg");
    plot_model_features(&model, &prepared, &ds_out, -2, &FeaturePlot::new(), &path).unwrap();
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.contains("class 1") && svg.contains("unknown"));

    // ID data without labels cannot be coloured by class.
    let unlabelled = ds_in
        .prepare(&oodkit::PrepareConfig::new(16).with_labels(false))
        .unwrap();
    let err = plot_model_features(&model, &unlabelled, &ds_out, -2, &FeaturePlot::new(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("labels"), "{err}");
    // A layer the model does not have.
    let err = plot_model_features(
        &model,
        &prepared,
        &ds_out,
        "conv",
        &FeaturePlot::new(),
        &path,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter { name: "layer", .. }),
        "{err}"
    );
}
