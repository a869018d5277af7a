//! The principal subspace of a layer's fit features, and its complement,
//! the residual space that ViM and Residual score in.

use ndarray::{Array1, Array2, Axis, s};

use super::PrincipalDims;
use super::moments::ClassMoments;
use crate::error::{Error, Result};
use crate::linalg::symmetric_eigen;

/// A basis `(D, D − k)` of the residual space: the complement of the top
/// `dims` eigenvectors of the second moment (1/N) Σ (f − u)(f − u)ᵀ of the
/// features streamed into `moments` (one class) about `origin`.
pub(crate) fn residual_basis(
    m: &ClassMoments,
    origin: &Array1<f64>,
    dims: PrincipalDims,
    detector: &str,
) -> Result<Array2<f64>> {
    let dim = m.dim();
    let n = m.count() as f64;
    let mean = m
        .classes()
        .values()
        .next()
        .map(|c| c.mean.clone())
        .ok_or_else(|| Error::Empty {
            what: format!("the fit data of {detector}"),
            hint: "fit on at least one sample".into(),
        })?;
    if m.count() < 2 {
        return Err(Error::Empty {
            what: format!("the fit data of {detector} ({} sample)", m.count()),
            hint: format!("{detector}'s subspace needs at least 2 samples (in practice thousands)"),
        });
    }
    // Second moment about the origin: scatter + N (m − u)(m − u)ᵀ.
    let shift = (&mean - origin).insert_axis(Axis(1));
    let moment = (m.within() + &(shift.dot(&shift.t()) * n)) / n;
    let (values, vectors) = symmetric_eigen(&moment, &format!("{detector}'s feature covariance"))?;
    let principal = match dims {
        PrincipalDims::Count(k) => k,
        PrincipalDims::Explained(fraction) => {
            let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
            let mut explained = 0.0;
            let mut k = 0;
            for v in values.iter().rev() {
                if total > 0.0 && explained / total >= fraction {
                    break;
                }
                explained += v.max(0.0);
                k += 1;
            }
            k
        }
    };
    if principal >= dim {
        return Err(Error::invalid(
            "principal_dims",
            format!("{dims:?} (= {principal} of {dim} dimensions)"),
            "no residual dimension would be left: keep fewer principal dimensions",
        ));
    }
    // Eigenvalues ascend: the residual space is spanned by the first ones.
    Ok(vectors.slice(s![.., ..dim - principal]).to_owned())
}

/// Errors unless `residual` is a basis `(D, D − k)` of a residual space of
/// `width` = D features, 1 ≤ D − k < D (a state read back); `detector`
/// names it.
pub(crate) fn check_residual(width: usize, residual: &Array2<f64>, detector: &str) -> Result<()> {
    if residual.nrows() != width || residual.ncols() == 0 || residual.ncols() >= width {
        return Err(Error::custom(format!(
            "{detector}'s residual space is {:?} for {width} features: it needs 1 to {} \
             dimensions",
            residual.shape(),
            width.saturating_sub(1)
        )));
    }
    Ok(())
}
