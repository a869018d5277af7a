//! Inference-only convolution with its batch norm folded in, on plain
//! slices, one image at a time.
//!
//! At inference a batch norm after a convolution is an affine map per
//! output channel, so it folds into the convolution's weights and a bias
//! once per forward call. One image's convolution is then one patch copy
//! (im2col, with the zero padding and the stride) into a workspace the
//! caller reuses, one matrix product (faer's, which picks AVX-512 at run
//! time) written straight into the output, and one pass adding the bias,
//! an optional residual and the ReLU while the output is still in cache.
//! burn's layers instead allocate a fresh tensor per operation and run
//! batch norm as four broadcast passes (BENCHMARKS.md has the profile).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// A batch norm's inference statistics: `γ (x − μ) / √(σ² + ε) + β`.
pub(crate) struct BatchNormStats<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub epsilon: f64,
}

/// A square-kernel convolution without bias followed by a batch norm,
/// folded into one convolution with bias.
#[derive(Debug, Clone)]
pub(crate) struct FoldedConv {
    out_channels: usize,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// `(out_channels, in_channels · kernel²)`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl FoldedConv {
    /// Folds `bn` into `weight` (`(out, in, k, k)` row-major, as `dims`).
    /// `None` if the lengths disagree with `dims`.
    pub(crate) fn fold(
        weight: &[f32],
        dims: [usize; 4],
        stride: usize,
        padding: usize,
        bn: &BatchNormStats<'_>,
    ) -> Option<Self> {
        let [out_channels, in_channels, kh, kw] = dims;
        let per_output = in_channels * kh * kw;
        let stats = [bn.gamma, bn.beta, bn.mean, bn.var];
        if kh != kw
            || stride == 0
            || weight.len() != out_channels * per_output
            || stats.iter().any(|s| s.len() != out_channels)
        {
            return None;
        }
        let mut folded = weight.to_vec();
        let mut bias = Vec::with_capacity(out_channels);
        for (o, row) in folded.chunks_mut(per_output).enumerate() {
            // In f64 so the folded weights round once.
            let scale = f64::from(bn.gamma[o]) / (f64::from(bn.var[o]) + bn.epsilon).sqrt();
            for w in row.iter_mut() {
                *w = (f64::from(*w) * scale) as f32;
            }
            bias.push((f64::from(bn.beta[o]) - f64::from(bn.mean[o]) * scale) as f32);
        }
        Some(FoldedConv {
            out_channels,
            in_channels,
            kernel: kh,
            stride,
            padding,
            weight: folded,
            bias,
        })
    }

    pub(crate) fn in_channels(&self) -> usize {
        self.in_channels
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    pub(crate) fn kernel(&self) -> usize {
        self.kernel
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    pub(crate) fn padding(&self) -> usize {
        self.padding
    }

    /// `(out_channels, in_channels · kernel²)`, row-major.
    pub(crate) fn weight(&self) -> &[f32] {
        &self.weight
    }

    pub(crate) fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The output's side for an input side.
    pub(crate) fn output_side(&self, side: usize) -> usize {
        (side + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Convolves one image `x (in_channels, h, w)` into `out (out_channels,
    /// oh, ow)`, adds the bias and then calls `epilogue(channel, plane)` on
    /// each output channel's plane while it is in cache; `cols` is the patch
    /// workspace, grown as needed.
    pub(crate) fn run(
        &self,
        x: &[f32],
        [h, w]: [usize; 2],
        cols: &mut Vec<f32>,
        out: &mut [f32],
        epilogue: impl Fn(usize, &mut [f32]),
    ) {
        let (oh, ow) = (self.output_side(h), self.output_side(w));
        let rows = self.in_channels * self.kernel * self.kernel;
        let positions = oh * ow;
        cols.resize(rows * positions, 0.0);
        self.im2col(x, [h, w], [oh, ow], cols);
        let out = &mut out[..self.out_channels * positions];
        matmul(
            MatMut::from_row_major_slice_mut(out, self.out_channels, positions),
            Accum::Replace,
            MatRef::from_row_major_slice(&self.weight, self.out_channels, rows),
            MatRef::from_row_major_slice(cols, rows, positions),
            1.0,
            Par::Seq,
        );
        for (o, plane) in out.chunks_mut(positions).enumerate() {
            let bias = self.bias[o];
            for v in plane.iter_mut() {
                *v += bias;
            }
            epilogue(o, plane);
        }
    }

    /// Row `(c, ky, kx)` of `cols` holds `x[c, oy·s + ky − p, ox·s + kx − p]`
    /// for every output `(oy, ox)`, zero outside the image.
    fn im2col(&self, x: &[f32], [h, w]: [usize; 2], [oh, ow]: [usize; 2], cols: &mut [f32]) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        for (row, patch_row) in cols.chunks_mut(oh * ow).enumerate() {
            let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
            let plane = &x[c * h * w..][..h * w];
            // The output columns whose input column is inside the image.
            let first = (p.saturating_sub(kx)).div_ceil(s).min(ow);
            let last = ((w + p).saturating_sub(kx)).div_ceil(s).clamp(first, ow);
            for (oy, out) in patch_row.chunks_mut(ow).enumerate() {
                let iy = (oy * s + ky).wrapping_sub(p);
                if iy >= h {
                    out.fill(0.0);
                    continue;
                }
                let line = &plane[iy * w..][..w];
                out[..first].fill(0.0);
                out[last..].fill(0.0);
                let start = first * s + kx - p;
                if s == 1 {
                    // An inline loop: rows are a few dozen values, where a
                    // memmove call costs more than the copy (perf).
                    for (o, v) in out[first..last].iter_mut().zip(&line[start..]) {
                        *o = *v;
                    }
                } else {
                    for (o, v) in out[first..last]
                        .iter_mut()
                        .zip(line[start..].iter().step_by(s))
                    {
                        *o = *v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchNormStats, FoldedConv};
    use crate::kernels::test_values::{TestBatchNorm, values};

    /// The convolution and batch norm computed the direct way, in f64.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        [c, h, w]: [usize; 3],
        weight: &[f32],
        [o, k]: [usize; 2],
        stride: usize,
        padding: usize,
        bn: &BatchNormStats<'_>,
    ) -> Vec<f64> {
        let oh = (h + 2 * padding - k) / stride + 1;
        let ow = (w + 2 * padding - k) / stride + 1;
        let mut out = Vec::new();
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0_f64;
                    for ic in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = x[ic * h * w + iy as usize * w + ix as usize];
                                let wt = weight[((oc * c + ic) * k + ky) * k + kx];
                                sum += f64::from(v) * f64::from(wt);
                            }
                        }
                    }
                    let normed = (sum - f64::from(bn.mean[oc]))
                        / (f64::from(bn.var[oc]) + bn.epsilon).sqrt()
                        * f64::from(bn.gamma[oc])
                        + f64::from(bn.beta[oc]);
                    out.push(normed);
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_direct_convolution_and_batch_norm() {
        for ([c, h, w], [o, k], stride, padding) in [
            ([3, 8, 8], [4, 3], 1, 1),
            ([2, 9, 7], [5, 3], 2, 1),
            ([4, 6, 6], [3, 3], 2, 1),
            ([2, 5, 5], [2, 3], 1, 0),
            ([3, 7, 7], [2, 1], 2, 0),
            ([1, 10, 10], [3, 5], 3, 2),
        ] {
            let x = values(c * h * w, 1);
            let weight = values(o * c * k * k, 2);
            let stats = TestBatchNorm::new(o);
            let bn = stats.stats();
            let conv = FoldedConv::fold(&weight, [o, c, k, k], stride, padding, &bn).unwrap();
            let (oh, ow) = (conv.output_side(h), conv.output_side(w));
            assert_eq!(
                (oh, ow),
                (
                    (h + 2 * padding - k) / stride + 1,
                    (w + 2 * padding - k) / stride + 1
                )
            );
            let mut out = vec![f32::NAN; o * oh * ow + 3];
            let mut cols = Vec::new();
            conv.run(&x, [h, w], &mut cols, &mut out, |_, _| {});
            let expected = direct(&x, [c, h, w], &weight, [o, k], stride, padding, &bn);
            for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{c}x{h}x{w} k{k} s{stride} p{padding} at {i}: {got} vs {want}"
                );
            }
            // Beyond the output nothing is written.
            assert!(out[o * oh * ow..].iter().all(|v| v.is_nan()));
        }
    }

    #[test]
    fn the_epilogue_sees_each_channel_plane_once_after_the_bias() {
        let bn = BatchNormStats {
            gamma: &[1.0, 1.0],
            beta: &[2.0, -3.0],
            mean: &[0.0, 0.0],
            var: &[1.0, 1.0],
            epsilon: 0.0,
        };
        let conv = FoldedConv::fold(&[0.0; 18], [2, 1, 3, 3], 1, 1, &bn).unwrap();
        let mut out = vec![0.0; 2 * 16];
        conv.run(&[1.0; 16], [4, 4], &mut Vec::new(), &mut out, |o, plane| {
            assert_eq!(plane.len(), 16);
            for (i, v) in plane.iter_mut().enumerate() {
                *v = *v * 10.0 + (o * 16 + i) as f32;
            }
        });
        let expected: Vec<f32> = (0..32)
            .map(|i| if i < 16 { 20.0 } else { -30.0 } + i as f32)
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let one = [1.0];
        let bn = BatchNormStats {
            gamma: &one,
            beta: &one,
            mean: &one,
            var: &one,
            epsilon: 1e-5,
        };
        assert!(FoldedConv::fold(&[0.0; 9], [1, 1, 3, 3], 1, 1, &bn).is_some());
        assert!(FoldedConv::fold(&[0.0; 8], [1, 1, 3, 3], 1, 1, &bn).is_none());
        assert!(FoldedConv::fold(&[0.0; 18], [2, 1, 3, 3], 1, 1, &bn).is_none());
        assert!(FoldedConv::fold(&[0.0; 9], [1, 1, 3, 3], 0, 1, &bn).is_none());
    }
}
