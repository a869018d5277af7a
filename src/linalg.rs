//! The linear algebra the feature detectors need, by `faer` on `ndarray`
//! arrays: matrix products (parallel, on rayon's threads), the symmetric
//! eigendecomposition and pseudo-inverses. Statistics are kept in `f64`.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use std::cell::Cell;

use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, CowArray, Ix2, LinalgScalar};

use crate::error::{Error, Result};

/// The scalars the products run on: `f32` and `f64`.
pub(crate) trait Scalar: faer::traits::ComplexField + LinalgScalar {}
impl Scalar for f32 {}
impl Scalar for f64 {}

/// `a` in row-major memory order (a copy only when it is not already).
fn standard<'a, T: Clone>(a: &'a ArrayView2<'a, T>) -> CowArray<'a, T, Ix2> {
    a.as_standard_layout()
}

/// A faer view of a row-major array.
fn faer_ref<'a, T>(a: &'a CowArray<'_, T, Ix2>) -> MatRef<'a, T> {
    let (rows, cols) = a.dim();
    // `standard` guarantees the row-major layout `as_slice` needs.
    let slice = a.as_slice().unwrap_or(&[]);
    MatRef::from_row_major_slice(slice, rows, cols)
}

thread_local! {
    /// Set while this thread runs one of several parts run in parallel.
    static SEQUENTIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` (one of several parts run on every core: a part of a
/// batch, a shard's fit) with its matrix products on the calling thread:
/// the other threads have parts of their own, so splitting a product
/// across them too would only contend.
pub(crate) fn with_sequential_products<T>(work: impl FnOnce() -> T) -> T {
    let before = SEQUENTIAL.replace(true);
    let out = work();
    SEQUENTIAL.set(before);
    out
}

/// A mutable faer view of a row-major array.
fn faer_mut<'a, T>(a: &'a mut ArrayViewMut2<'_, T>) -> Option<MatMut<'a, T>> {
    let (rows, cols) = a.dim();
    a.as_slice_mut()
        .map(|slice| MatMut::from_row_major_slice_mut(slice, rows, cols))
}

/// `out ← beta·out + a · bᵀ` when `transpose_b`, else `a · b`; `out` must
/// be row-major (arrays built here are). `accumulate` keeps `out` (β = 1).
pub(crate) fn gemm_into<T: Scalar>(
    mut out: ArrayViewMut2<T>,
    accumulate: bool,
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    transpose_b: bool,
) {
    let (a, b) = (standard(&a), standard(&b));
    let (a, b) = (faer_ref(&a), faer_ref(&b));
    let b = if transpose_b { b.transpose() } else { b };
    let beta = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    let par = if SEQUENTIAL.get() {
        Par::Seq
    } else {
        faer::get_global_parallelism()
    };
    match faer_mut(&mut out) {
        Some(dst) => matmul(dst, beta, a, b, T::one(), par),
        None => {
            // Not row-major: compute aside, then add or copy in.
            let mut aside = Array2::<T>::zeros(out.dim());
            if let Some(dst) = faer_mut(&mut aside.view_mut()) {
                matmul(dst, Accum::Replace, a, b, T::one(), par);
            }
            if accumulate {
                out += &aside;
            } else {
                out.assign(&aside);
            }
        }
    }
}

/// Sixteen running sums: the compiler keeps them in vector registers (one
/// running sum would be a chain of dependent additions, a few times
/// slower).
const LANES: usize = 16;

/// `Σ f(a_i, b_i)` over two equally long `f32` vectors, in [`LANES`]
/// running sums (strided views fall back to one sum).
fn lanes_sum(a: ArrayView1<f32>, b: ArrayView1<f32>, f: impl Fn(f32, f32) -> f32) -> f32 {
    match (a.as_slice(), b.as_slice()) {
        (Some(a), Some(b)) => {
            let body = a.len().min(b.len()) / LANES * LANES;
            let mut sums = [0.0_f32; LANES];
            for (x, y) in a[..body]
                .chunks_exact(LANES)
                .zip(b[..body].chunks_exact(LANES))
            {
                for l in 0..LANES {
                    sums[l] += f(x[l], y[l]);
                }
            }
            let tail: f32 = a[body..]
                .iter()
                .zip(&b[body..])
                .map(|(&x, &y)| f(x, y))
                .sum();
            sums.iter().sum::<f32>() + tail
        }
        _ => a.iter().zip(&b).map(|(&x, &y)| f(x, y)).sum(),
    }
}

/// `a · b` in `f32`, vectorised (for one query against stored rows, where
/// a matrix product's packing costs more than the product).
pub(crate) fn lanes_dot(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    lanes_sum(a, b, |x, y| x * y)
}

/// `‖a − b‖²` in `f32`, vectorised like [`lanes_dot`].
pub(crate) fn lanes_squared_distance(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    lanes_sum(a, b, |x, y| (x - y) * (x - y))
}

/// `a · b` (`a · bᵀ` when `transpose_b`).
pub(crate) fn gemm<T: Scalar>(a: ArrayView2<T>, b: ArrayView2<T>, transpose_b: bool) -> Array2<T> {
    let cols = if transpose_b { b.nrows() } else { b.ncols() };
    let mut out = Array2::<T>::zeros((a.nrows(), cols));
    gemm_into(out.view_mut(), false, a, b, transpose_b);
    out
}

/// `out += aᵀ · a` on the lower triangle (diagonal included) only: a
/// scatter-matrix update at half the cost of the full product. Read the
/// result through [`symmetrized`] (or a routine that reads the lower
/// triangle).
pub(crate) fn add_gram_lower(out: &mut Array2<f64>, a: ArrayView2<f64>) {
    let a = standard(&a);
    let a = faer_ref(&a);
    let par = faer::get_global_parallelism();
    if let Some(dst) = faer_mut(&mut out.view_mut()) {
        triangular::matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Add,
            a.transpose(),
            BlockStructure::Rectangular,
            a,
            BlockStructure::Rectangular,
            1.0,
            par,
        );
    }
}

/// The symmetric matrix whose lower triangle is that of `lower`.
pub(crate) fn symmetrized(lower: &Array2<f64>) -> Array2<f64> {
    Array2::from_shape_fn(lower.dim(), |(i, j)| {
        if i >= j { lower[[i, j]] } else { lower[[j, i]] }
    })
}

fn to_faer(a: &Array2<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

fn from_faer(m: MatRef<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetric
/// matrix `a` (its lower triangle is read).
pub(crate) fn symmetric_eigen(a: &Array2<f64>, what: &str) -> Result<(Array1<f64>, Array2<f64>)> {
    let eigen = to_faer(a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::numerical(what, format!("the eigendecomposition failed ({e:?})")))?;
    let values = eigen.S().column_vector().iter().copied().collect();
    Ok((values, from_faer(eigen.U())))
}

/// The pseudo-inverse of the symmetric positive semi-definite `a`
/// (eigenvalues below `D · ε · max |λ|` count as zero, so a singular
/// covariance — a constant feature, fewer samples than dimensions —
/// inverts on its support) with, from the same eigendecomposition, a
/// factor F of it (`a⁺ = F Fᵀ`): the eigenvectors of
/// the eigenvalues the pseudo-inverse keeps (positive ones), each divided
/// by the square root of its eigenvalue. F has at least one column (zero
/// when nothing is kept).
pub(crate) fn symmetric_pinv_and_root(
    a: &Array2<f64>,
    what: &str,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let eigen = to_faer(a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::numerical(what, format!("the eigendecomposition failed ({e:?})")))?;
    let pinv = from_faer(eigen.pseudoinverse().as_ref());
    let values: Vec<f64> = eigen.S().column_vector().iter().copied().collect();
    let root = scaled_eigenvectors(&values, &from_faer(eigen.U()), |v| v.sqrt().recip());
    Ok((pinv, root))
}

/// F with `a` = F Fᵀ for a symmetric positive semi-definite `a` (e.g. a
/// precision): its eigenvectors times the square roots of their
/// eigenvalues, those [`symmetric_pinv_and_root`] counts as zero left out.
pub(crate) fn symmetric_root(a: &Array2<f64>, what: &str) -> Result<Array2<f64>> {
    let (values, vectors) = symmetric_eigen(a, what)?;
    let values = values.to_vec();
    Ok(scaled_eigenvectors(&values, &vectors, f64::sqrt))
}

/// The eigenvectors (columns of `vectors`) of the eigenvalues a
/// pseudo-inverse keeps (positive, above faer's `D · ε · max |λ|`), each
/// times `scale(λ)`; one zero column when none is kept.
fn scaled_eigenvectors(
    values: &[f64],
    vectors: &Array2<f64>,
    scale: impl Fn(f64) -> f64,
) -> Array2<f64> {
    let largest = values.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let floor = largest * values.len() as f64 * f64::EPSILON;
    let kept: Vec<usize> = (0..values.len()).filter(|&i| values[i] > floor).collect();
    let mut out = Array2::zeros((vectors.nrows(), kept.len().max(1)));
    for (j, &i) in kept.iter().enumerate() {
        out.column_mut(j)
            .assign(&(&vectors.column(i) * scale(values[i])));
    }
    out
}

/// The (Moore-Penrose) pseudo-inverse of any matrix, by SVD.
pub(crate) fn pinv(a: &Array2<f64>, what: &str) -> Result<Array2<f64>> {
    let svd = to_faer(a)
        .thin_svd()
        .map_err(|e| Error::numerical(what, format!("the SVD failed ({e:?})")))?;
    Ok(from_faer(svd.pseudoinverse().as_ref()))
}

/// `a` minus its best rank-1 approximation σ₁ u₁ v₁ᵀ (thin SVD in f64).
pub(crate) fn without_top_rank(a: ArrayView2<f32>, what: &str) -> Result<Array2<f32>> {
    let m = Mat::from_fn(a.nrows(), a.ncols(), |i, j| f64::from(a[[i, j]]));
    let svd = m
        .thin_svd()
        .map_err(|e| Error::numerical(what, format!("the SVD failed ({e:?})")))?;
    let values: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let Some(top) = (0..values.len()).max_by(|&x, &y| values[x].total_cmp(&values[y])) else {
        return Ok(a.to_owned());
    };
    let (u, v, sigma) = (svd.U(), svd.V(), values[top]);
    Ok(Array2::from_shape_fn(a.dim(), |(i, j)| {
        (f64::from(a[[i, j]]) - sigma * u[(i, top)] * v[(j, top)]) as f32
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn products_match_ndarray() {
        let a = array![[1.0_f64, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let b = array![[1.0_f64, 0.0], [2.0, 1.0], [0.5, -1.0]];
        assert_eq!(gemm(a.view(), b.view(), false), a.dot(&b));
        assert_eq!(gemm(a.view(), a.view(), true), a.dot(&a.t()));
        // Non-standard layouts in and out.
        assert_eq!(gemm(a.t(), a.t(), true), a.t().dot(&a));
        let mut out = Array2::<f64>::ones((2, 2)).reversed_axes();
        gemm_into(out.view_mut(), true, a.view(), b.view(), false);
        assert_eq!(out, a.dot(&b) + 1.0);
        let mut g = Array2::<f64>::eye(3);
        add_gram_lower(&mut g, a.view());
        assert_eq!(symmetrized(&g), a.t().dot(&a) + Array2::<f64>::eye(3));
        assert_eq!(g[[0, 2]], 0.0); // the upper triangle is left alone
    }

    #[test]
    fn removing_the_top_rank_leaves_the_rest() {
        // diag(3, 1) rotated: the residual is the rank-1 part of σ = 1.
        let (c, s) = (0.6_f32, 0.8_f32);
        let u = array![[c, -s], [s, c]];
        let a = u.dot(&array![[3.0_f32, 0.0], [0.0, 1.0]]).dot(&u.t());
        let rest = without_top_rank(a.view(), "test").unwrap();
        let expected = array![[s * s, -s * c], [-s * c, c * c]];
        assert!((&rest - &expected).iter().all(|d| d.abs() < 1e-6), "{rest}");
    }

    #[test]
    fn pseudo_inverses_invert_on_the_support() {
        let a = array![[2.0_f64, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]];
        let (p, root) = symmetric_pinv_and_root(&a, "test").unwrap();
        let expected = array![[0.5, 0.0, 0.0], [0.0, 0.25, 0.0], [0.0, 0.0, 0.0]];
        assert!((&p - &expected).iter().all(|d| d.abs() < 1e-12), "{p}");
        // Two kept directions; F Fᵀ is the pseudo-inverse.
        assert_eq!(root.ncols(), 2);
        assert!(
            (root.dot(&root.t()) - &expected)
                .iter()
                .all(|d| d.abs() < 1e-12)
        );
        let (_, none) = symmetric_pinv_and_root(&Array2::zeros((2, 2)), "test").unwrap();
        assert_eq!(none, Array2::<f64>::zeros((2, 1)));
        let w = array![[1.0_f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let wp = pinv(&w, "test").unwrap();
        assert!(
            (wp.dot(&w) - Array2::<f64>::eye(2))
                .iter()
                .all(|d| d.abs() < 1e-10)
        );
        let (values, vectors) = symmetric_eigen(&a, "test").unwrap();
        assert_eq!(values.to_vec(), vec![0.0, 2.0, 4.0]);
        assert!((vectors[[1, 2]].abs() - 1.0).abs() < 1e-12);
    }
}
