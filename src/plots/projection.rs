//! Projections of features to a few dimensions: PCA (faer) and t-SNE
//! (bhtsne, Barnes-Hut).

use bhtsne::tSNE;
use faer::{Mat, Side};
use ndarray::{Array2, ArrayView2, Axis};

use crate::error::{Error, Result};

/// How [`plot_2d_features`](super::plot_2d_features) projects features to
/// 2-D.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Projection {
    /// Principal component analysis: the two directions of largest variance.
    /// Linear, fast, deterministic.
    #[default]
    Pca,
    /// Barnes-Hut t-SNE (θ = 0.5, 1000 iterations) with this perplexity
    /// (scikit-learn's default is 30), on the first 50 principal components
    /// and initialised from the first two, as scikit-learn does. Slower;
    /// shows clusters better.
    Tsne {
        /// Effective number of neighbours; needs at least `3 * perplexity + 1`
        /// samples.
        perplexity: f32,
    },
}

impl Projection {
    /// t-SNE with perplexity 30.
    pub fn tsne() -> Self {
        Projection::Tsne { perplexity: 30.0 }
    }

    /// Projects `features` `(N, D)` to `(N, 2)`.
    pub fn project(&self, features: ArrayView2<f32>) -> Result<Array2<f32>> {
        let (n, d) = features.dim();
        if n < 2 || d < 2 {
            return Err(Error::ShapeMismatch {
                what: "features to project to 2-D".into(),
                expected: "(N, D) with at least 2 points and 2 features".into(),
                found: format!("({n}, {d})"),
            });
        }
        match *self {
            Projection::Pca => pca(features, 2),
            Projection::Tsne { perplexity } => tsne(features, perplexity),
        }
    }
}

fn check_finite(features: &ArrayView2<f32>) -> Result<()> {
    if let Some(index) = features.iter().position(|v| !v.is_finite()) {
        let d = features.ncols().max(1);
        return Err(Error::NotANumber {
            what: format!("features (row {}, column {})", index / d, index % d),
            index: index / d,
            hint: "every feature must be finite to be projected".into(),
        });
    }
    Ok(())
}

/// The first `k` principal components of `features` `(N, D)`: the centred
/// data projected on the `k` directions of largest variance, `(N, k)`,
/// strongest first. Each component's sign makes its largest entry positive,
/// so the result is deterministic.
///
/// Computed in `f64` from the eigendecomposition of the `D x D` covariance
/// (or of the `N x N` Gram matrix when `D > N`) by `faer`.
///
/// ```
/// use ndarray::array;
/// // Points on the line y = 2x: one component carries everything.
/// let x = array![[0.0_f32, 0.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0]];
/// let p = oodkit::plots::pca(x.view(), 2)?;
/// let spread = (p[[3, 0]] - p[[0, 0]]).abs();
/// assert!((spread - 3.0 * 5.0_f32.sqrt()).abs() < 1e-4);
/// assert!(p.column(1).iter().all(|v| v.abs() < 1e-4));
/// # Ok::<(), oodkit::Error>(())
/// ```
pub fn pca(features: ArrayView2<f32>, k: usize) -> Result<Array2<f32>> {
    let (n, d) = features.dim();
    if n < 2 || d == 0 {
        return Err(Error::ShapeMismatch {
            what: "features to project".into(),
            expected: "(N, D) with N >= 2 and D >= 1".into(),
            found: format!("({n}, {d})"),
        });
    }
    if k == 0 || k > n.min(d) {
        return Err(Error::InvalidParameter {
            name: "k",
            value: k.to_string(),
            reason: format!("need 1 <= k <= min(N, D) = {}", n.min(d)),
        });
    }
    check_finite(&features)?;
    let mean = features
        .mapv(f64::from)
        .mean_axis(Axis(0))
        .unwrap_or_default();
    let centred = Mat::<f64>::from_fn(n, d, |i, j| f64::from(features[[i, j]]) - mean[j]);
    let failed = |e| Error::numerical("PCA", format!("the eigendecomposition failed ({e:?})"));

    let mut out = Array2::<f32>::zeros((n, k));
    if d <= n {
        let covariance = centred.transpose() * &centred;
        let eigen = covariance.self_adjoint_eigen(Side::Lower).map_err(failed)?;
        let vectors = eigen.U();
        // Eigenvalues ascend: the strongest directions are the last columns.
        for c in 0..k {
            let v = vectors.col(d - 1 - c);
            let scores = &centred * v;
            for i in 0..n {
                out[[i, c]] = scores[i] as f32;
            }
        }
    } else {
        let gram = &centred * centred.transpose();
        let eigen = gram.self_adjoint_eigen(Side::Lower).map_err(failed)?;
        let (vectors, values) = (eigen.U(), eigen.S());
        for c in 0..k {
            let scale = values[n - 1 - c].max(0.0).sqrt();
            for i in 0..n {
                out[[i, c]] = (vectors[(i, n - 1 - c)] * scale) as f32;
            }
        }
    }
    for mut column in out.columns_mut() {
        let largest = column
            .iter()
            .fold(0.0_f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if largest < 0.0 {
            column.mapv_inplace(|v| -v);
        }
    }
    Ok(out)
}

/// A 2-D t-SNE embedding of `features` `(N, D)`: Barnes-Hut (θ = 0.5),
/// 1000 iterations, learning rate `max(N / 12, 200)` (openTSNE's), on the
/// first 50 principal components when `D > 50`, initialised from the first
/// two components scaled to a standard deviation of 1e-4 (scikit-learn's
/// `init="pca"`), so runs repeat up to floating-point summation order.
pub fn tsne(features: ArrayView2<f32>, perplexity: f32) -> Result<Array2<f32>> {
    let n = features.nrows();
    if !(perplexity.is_finite() && perplexity >= 1.0) {
        return Err(Error::InvalidParameter {
            name: "perplexity",
            value: perplexity.to_string(),
            reason: "must be at least 1 (scikit-learn's default is 30)".into(),
        });
    }
    let needed = (3.0 * perplexity).floor() as usize + 1;
    if n < needed {
        return Err(Error::InvalidParameter {
            name: "perplexity",
            value: perplexity.to_string(),
            reason: format!(
                "t-SNE with this perplexity needs at least {needed} samples, got {n}; lower it"
            ),
        });
    }
    let reduced = if features.ncols() > 50 {
        pca(features, 50)?
    } else {
        check_finite(&features)?;
        features.as_standard_layout().into_owned()
    };
    let init = pca(reduced.view(), 2)?;
    let std = init.column(0).std(0.0).max(f32::MIN_POSITIVE);
    let init: Vec<f32> = init.iter().map(|v| v / std * 1e-4).collect();

    let d = reduced.ncols();
    let flat = reduced.as_slice().unwrap_or_default();
    let rows: Vec<&[f32]> = flat.chunks(d).collect();
    let euclidean = |a: &&[f32], b: &&[f32]| {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    };
    // openTSNE's learning rate, max(N / 12, 200): with bhtsne's default,
    // max(N / 48, 50), tight clusters collapsed to single points here.
    let learning_rate = (n as f32 / 12.0).max(200.0);
    let mut model: tSNE<f32, &[f32]> = tSNE::new(&rows);
    model
        .perplexity(perplexity)
        .learning_rate(learning_rate)
        .epochs(1000)
        .initial_embedding(init)
        .barnes_hut(0.5, euclidean);
    let embedding = Array2::from_shape_vec((n, 2), model.embedding())?;
    if embedding.iter().any(|v| !v.is_finite()) {
        return Err(Error::numerical(
            "t-SNE",
            "the embedding is not finite (identical or nearly identical points give t-SNE \
             zero distances to divide by): use PCA, or remove the duplicates",
        ));
    }
    Ok(embedding)
}
