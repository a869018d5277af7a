//! The weight gradient of a valid 3x3 convolution, one image at a time,
//! without a patch matrix.
//!
//! With the output gradient laid out on the input's rows ("wide": output
//! `(y, x)` at `q = y·w + x`, the two columns past each row zero), tap
//! `(ky, kx)` of output `q` reads input `q + ky·w + kx`, so the gradient of
//! weight `(o, c, tap)` is `Σ_q grad[q][o] · x[c][q + shift(tap)]`: a
//! matrix product whose second operand is a row of the input itself,
//! shifted. A tile of input rows × output channels stays in vector
//! registers while `q` streams; the gradient is stored `q`-major so each
//! step loads whole vectors of output channels and broadcasts one input
//! value per row (the register blocking of a GEMM micro-kernel, with no
//! packing: both operands are read in place). AVX-512 or AVX2 + FMA are
//! picked at run time; other CPUs run a portable loop.

use super::padded_conv3x3::Isa;

/// Output channels the gradient's rows are padded to a multiple of.
pub(crate) const CHANNEL_BLOCK: usize = 16;

/// The shapes of one image's weight-gradient product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeightGradShape {
    /// Input channels.
    pub(crate) channels: usize,
    /// Input height and width (the output is two smaller each way).
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Output channels, and the length of a gradient row (a multiple of
    /// [`CHANNEL_BLOCK`] at least that).
    pub(crate) out_channels: usize,
}

impl WeightGradShape {
    /// The gradient's row length: `out_channels` rounded up to a block.
    pub(crate) fn stride(&self) -> usize {
        self.out_channels.next_multiple_of(CHANNEL_BLOCK)
    }

    /// Rows of the wide gradient that can hold an output: up to the last
    /// pixel, so every shifted read ends inside the input plane.
    pub(crate) fn positions(&self) -> usize {
        (self.h - 3) * self.w + self.w - 2
    }

    /// The wide gradient's length.
    pub(crate) fn grad_len(&self) -> usize {
        self.positions() * self.stride()
    }

    /// The accumulator's length: `channels · 9` rows of [`Self::stride`].
    pub(crate) fn acc_len(&self) -> usize {
        self.channels * 9 * self.stride()
    }

    /// Where output `(y, x)`'s gradient for channel `o` goes in the wide
    /// gradient.
    pub(crate) fn at(&self, o: usize, y: usize, x: usize) -> usize {
        (y * self.w + x) * self.stride() + o
    }

    /// Adds one image's contribution to `acc`: row `c·9 + tap`, column `o`
    /// gains `Σ_q grad[q][o] · x[c][q + shift(tap)]`. `x` holds the image's
    /// compact `(channels, h, w)` planes, `grad` the wide gradient (zero
    /// wherever no output is). `None` if the shape is smaller than 3x3 or
    /// a buffer is too short.
    pub(crate) fn accumulate(&self, x: &[f32], grad: &[f32], acc: &mut [f32]) -> Option<()> {
        self.accumulate_with(Isa::detect(), x, grad, acc)
    }

    /// [`Self::accumulate`] with the given instructions, which must be
    /// available (tests run each).
    fn accumulate_with(&self, isa: Isa, x: &[f32], grad: &[f32], acc: &mut [f32]) -> Option<()> {
        if self.h < 3 || self.w < 3 || self.channels == 0 || self.out_channels == 0 {
            return None;
        }
        let x = x.get(..self.channels * self.h * self.w)?;
        let grad = grad.get(..self.grad_len())?;
        let acc = acc.get_mut(..self.acc_len())?;
        let args = Args {
            x,
            grad,
            acc,
            plane: self.h * self.w,
            w: self.w,
            positions: self.positions(),
            stride: self.stride(),
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512(args),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2(args),
            _ => portable(args),
        }
        Some(())
    }
}

/// One product's operands, their lengths checked by
/// [`WeightGradShape::accumulate`].
struct Args<'a> {
    x: &'a [f32],
    grad: &'a [f32],
    acc: &'a mut [f32],
    plane: usize,
    w: usize,
    positions: usize,
    stride: usize,
}

/// A tile's operands: `ROWS` input rows of `positions` values, the wide
/// gradient from the tile's first channel (`positions` rows, `stride`
/// apart) and the accumulator at the tile's first row and channel (rows
/// `stride` apart). [`drive`] checked every pointer against its slice.
struct Tile<const ROWS: usize> {
    rows: [*const f32; ROWS],
    positions: usize,
    grad: *const f32,
    stride: usize,
    acc: *mut f32,
}

/// Runs `tile` over every tile of `rows_per_tile` input rows (then the
/// leftover rows one at a time) × `vectors · lanes` output channels (the
/// widest of 4, 2 or 1 vectors that fits). `tile(rows, vectors, tile)`
/// must stay within the tile's operands.
fn drive(args: Args, rows_per_tile: usize, lanes: usize, tile: impl Fn(usize, usize, &Tile<6>)) {
    let Args {
        x,
        grad,
        acc,
        plane,
        w,
        positions,
        stride,
    } = args;
    let rows = acc.len() / stride;
    // Input row `r = c·9 + tap` starts at `c·plane + ky·w + kx`; every row
    // is `positions` long and ends inside plane `c`.
    let row = |r: usize| {
        let start = r / 9 * plane + r % 9 / 3 * w + r % 3;
        x[start..start + positions].as_ptr()
    };
    let mut first = 0;
    while first < rows {
        let count = if first + rows_per_tile <= rows {
            rows_per_tile
        } else {
            1
        };
        let mut o = 0;
        while o < stride {
            let vectors = [4, 2, 1]
                .into_iter()
                .find(|v| o + v * lanes <= stride)
                .unwrap_or(1);
            let acc =
                &mut acc[first * stride + o..(first + count - 1) * stride + o + vectors * lanes];
            let operands = Tile {
                rows: std::array::from_fn(|i| row(first + i.min(count - 1))),
                positions,
                grad: grad[o..].as_ptr(),
                stride,
                acc: acc.as_mut_ptr(),
            };
            tile(count, vectors, &operands);
            o += vectors * lanes;
        }
        first += count;
    }
}

/// The tiles with AVX-512: 6 rows × 64 channels keep 24 of the 32 vector
/// registers.
#[cfg(target_arch = "x86_64")]
fn avx512(args: Args) {
    drive(args, 6, 16, |rows, vectors, t| {
        // SAFETY: `accumulate` detected AVX-512F; `drive` gives operands
        // for `rows` rows and `vectors` vectors.
        unsafe {
            match (rows, vectors) {
                (6, 4) => avx512::tile::<6, 4>(t),
                (6, 2) => avx512::tile::<6, 2>(t),
                (6, _) => avx512::tile::<6, 1>(t),
                (_, 4) => avx512::tile::<1, 4>(t),
                (_, 2) => avx512::tile::<1, 2>(t),
                (_, _) => avx512::tile::<1, 1>(t),
            }
        }
    });
}

/// The tiles with AVX2: 3 rows × 32 channels keep 12 of the 16 vector
/// registers.
#[cfg(target_arch = "x86_64")]
fn avx2(args: Args) {
    drive(args, 3, 8, |rows, vectors, t| {
        // SAFETY: `accumulate` detected AVX2 and FMA; `drive` gives
        // operands for `rows` rows and `vectors` vectors.
        unsafe {
            match (rows, vectors) {
                (3, 4) => avx2::tile::<3, 4>(t),
                (3, 2) => avx2::tile::<3, 2>(t),
                (3, _) => avx2::tile::<3, 1>(t),
                (_, 4) => avx2::tile::<1, 4>(t),
                (_, 2) => avx2::tile::<1, 2>(t),
                (_, _) => avx2::tile::<1, 1>(t),
            }
        }
    });
}

/// The tiles in plain Rust, one row × 16 channels at a time.
fn portable(args: Args) {
    drive(args, 1, CHANNEL_BLOCK, |_, vectors, t| {
        for v in 0..vectors {
            // SAFETY: `drive` gives operands for one row and `vectors`
            // blocks of 16 channels.
            unsafe {
                let mut sums = [0.0_f32; CHANNEL_BLOCK];
                let (row, mut g) = (t.rows[0], t.grad.add(v * CHANNEL_BLOCK));
                for q in 0..t.positions {
                    let x = *row.add(q);
                    for (j, s) in sums.iter_mut().enumerate() {
                        *s = x.mul_add(*g.add(j), *s);
                    }
                    g = g.add(t.stride);
                }
                for (j, s) in sums.iter().enumerate() {
                    *t.acc.add(v * CHANNEL_BLOCK + j) += s;
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// `acc[i][j] += Σ_q rows[i][q] · grad[q][j]` for `i < ROWS`, `j < 16·V`,
    /// the sums in registers over all of `q`.
    ///
    /// # Safety
    /// AVX-512F must be available; `t` holds operands for `ROWS` rows (the
    /// first `ROWS` of its six) and `V` vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const ROWS: usize, const V: usize>(t: &Tile<6>) {
        unsafe {
            let mut sums = [[_mm512_setzero_ps(); V]; ROWS];
            let mut g = t.grad;
            for q in 0..t.positions {
                let mut gs = [_mm512_setzero_ps(); V];
                for (v, gv) in gs.iter_mut().enumerate() {
                    *gv = _mm512_loadu_ps(g.add(16 * v));
                }
                for (sum, row) in sums.iter_mut().zip(&t.rows) {
                    let x = _mm512_set1_ps(*row.add(q));
                    for (s, &gv) in sum.iter_mut().zip(&gs) {
                        *s = _mm512_fmadd_ps(x, gv, *s);
                    }
                }
                g = g.add(t.stride);
            }
            for (i, sum) in sums.iter().enumerate() {
                for (v, &s) in sum.iter().enumerate() {
                    let a = t.acc.add(i * t.stride + 16 * v);
                    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), s));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// `acc[i][j] += Σ_q rows[i][q] · grad[q][j]` for `i < ROWS`, `j < 8·V`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `t` holds operands for `ROWS` rows
    /// and `V` vectors of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const ROWS: usize, const V: usize>(t: &Tile<6>) {
        unsafe {
            let mut sums = [[_mm256_setzero_ps(); V]; ROWS];
            let mut g = t.grad;
            for q in 0..t.positions {
                let mut gs = [_mm256_setzero_ps(); V];
                for (v, gv) in gs.iter_mut().enumerate() {
                    *gv = _mm256_loadu_ps(g.add(8 * v));
                }
                for (sum, row) in sums.iter_mut().zip(&t.rows) {
                    let x = _mm256_set1_ps(*row.add(q));
                    for (s, &gv) in sum.iter_mut().zip(&gs) {
                        *s = _mm256_fmadd_ps(x, gv, *s);
                    }
                }
                g = g.add(t.stride);
            }
            for (i, sum) in sums.iter().enumerate() {
                for (v, &s) in sum.iter().enumerate() {
                    let a = t.acc.add(i * t.stride + 8 * v);
                    _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), s));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WeightGradShape;
    use crate::kernels::test_values::{isas, values};

    #[test]
    fn equals_the_sum_over_outputs_of_gradient_times_input() {
        // Channel counts on and off the tiles' blocks; odd sides.
        for [c, o, h, w] in [[1, 32, 8, 9], [32, 64, 7, 7], [5, 20, 3, 3], [7, 3, 6, 4]] {
            let shape = WeightGradShape {
                channels: c,
                h,
                w,
                out_channels: o,
            };
            let (oh, ow) = (h - 2, w - 2);
            let x = values(c * h * w, 1);
            let g = values(o * oh * ow, 2);
            let mut wide = vec![0.0; shape.grad_len()];
            for ch in 0..o {
                for y in 0..oh {
                    for xx in 0..ow {
                        wide[shape.at(ch, y, xx)] = g[(ch * oh + y) * ow + xx];
                    }
                }
            }
            for isa in isas() {
                let mut acc = vec![0.5; shape.acc_len()];
                shape.accumulate_with(isa, &x, &wide, &mut acc).unwrap();
                for ch in 0..o {
                    for ci in 0..c {
                        for tap in 0..9 {
                            let (ky, kx) = (tap / 3, tap % 3);
                            let mut want = 0.5_f64;
                            for y in 0..oh {
                                for xx in 0..ow {
                                    want += f64::from(g[(ch * oh + y) * ow + xx])
                                        * f64::from(x[(ci * h + y + ky) * w + xx + kx]);
                                }
                            }
                            let got = acc[(ci * 9 + tap) * shape.stride() + ch];
                            assert!(
                                (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{isa:?} {c}->{o} {h}x{w}: ({ch}, {ci}, {tap}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_buffers_and_small_images_are_refused() {
        let shape = WeightGradShape {
            channels: 2,
            h: 5,
            w: 5,
            out_channels: 4,
        };
        let (x, g) = (vec![0.0; 50], vec![0.0; shape.grad_len()]);
        let mut acc = vec![0.0; shape.acc_len()];
        assert!(shape.accumulate(&x, &g, &mut acc).is_some());
        assert!(shape.accumulate(&x[1..], &g, &mut acc).is_none());
        assert!(shape.accumulate(&x, &g[1..], &mut acc).is_none());
        assert!(shape.accumulate(&x, &g, &mut acc[1..]).is_none());
        let tiny = WeightGradShape { h: 2, ..shape };
        assert!(tiny.accumulate(&x, &g, &mut acc).is_none());
    }
}
