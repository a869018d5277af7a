//! The stride-1, padding-1 3x3 convolution (most of a ResNet's work)
//! computed directly on zero-padded planes, without a patch matrix.
//!
//! Each plane is stored with its one-pixel zero border, rows `w + 2` long.
//! In those coordinates tap `(ky, kx)` of output `q = y·(w + 2) + x` reads
//! input `q + ky·(w + 2) + kx`: every tap is a plain shift, so a run of
//! consecutive outputs reads a run of consecutive inputs, straight from the
//! activation. A tile of 32 outputs × 8 output channels stays in vector
//! registers while the loop streams through the input channels and taps
//! (a register-blocked direct convolution, as oneDNN's); the two outputs a
//! row gets on the border are computed as junk and cleared. The result goes
//! straight into the next layer's padded layout (output `q` is its input
//! `q + w + 3`) with the bias, an optional residual and the ReLU added on
//! the way out. AVX-512 or AVX2 + FMA are picked at run time; other CPUs
//! run the same loops in portable code.

use super::FoldedConv;

/// Outputs per tile (two 16-lane vectors).
const TILE: usize = 32;
/// Outputs per vector of the narrowest tile, which ends a plane's run.
const LANES: usize = 16;
/// Output channels per tile.
const BLOCK: usize = 8;
/// Room after each plane for the last tile's reads, which run past the
/// plane's last row by less than a vector.
const SLACK: usize = 2 * LANES;

/// Where one image's zero-padded planes lie in a buffer: `channels` planes
/// of `(h + 2) × (w + 2)` values, [`Self::plane`] apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PaddedPlanes {
    pub(crate) channels: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
}

impl PaddedPlanes {
    /// The length of a padded row.
    fn row(&self) -> usize {
        self.w + 2
    }

    /// The distance between two planes.
    fn plane(&self) -> usize {
        ((self.h + 2) * self.row() + SLACK).next_multiple_of(LANES)
    }

    /// The buffer length the planes need.
    pub(crate) fn len(&self) -> usize {
        self.channels * self.plane()
    }

    /// The index of pixel `(y, x)` of plane `c`.
    pub(crate) fn at(&self, c: usize, y: usize, x: usize) -> usize {
        c * self.plane() + (y + 1) * self.row() + x + 1
    }

    /// Copies compact `(channels, h, w)` planes into `padded`, borders
    /// zero; `None` if a buffer is too short.
    pub(crate) fn pad(&self, compact: &[f32], padded: &mut [f32]) -> Option<()> {
        let (row, area) = (self.row(), self.h * self.w);
        let compact = compact.get(..self.channels * area)?;
        let padded = padded.get_mut(..self.len())?;
        for (source, plane) in compact
            .chunks_exact(area)
            .zip(padded.chunks_exact_mut(self.plane()))
        {
            let plane = &mut plane[..(self.h + 2) * row];
            plane[..row].fill(0.0);
            plane[(self.h + 1) * row..].fill(0.0);
            for (line, source) in plane[row..]
                .chunks_exact_mut(row)
                .zip(source.chunks(self.w))
            {
                line[0] = 0.0;
                line[1..=self.w].copy_from_slice(source);
                line[self.w + 1] = 0.0;
            }
        }
        Some(())
    }

    /// Copies compact `(channels, h + 2, w + 2)` planes into `padded`
    /// whole, their outer ring taking the border's place: a valid 3x3
    /// convolution of them is the padded convolution of these planes.
    /// `None` if a buffer is too short.
    pub(crate) fn load_bordered(&self, compact: &[f32], padded: &mut [f32]) -> Option<()> {
        let area = (self.h + 2) * self.row();
        let compact = compact.get(..self.channels * area)?;
        let padded = padded.get_mut(..self.len())?;
        for (source, plane) in compact
            .chunks_exact(area)
            .zip(padded.chunks_exact_mut(self.plane()))
        {
            plane[..area].copy_from_slice(source);
        }
        Some(())
    }

    /// Copies the planes' pixels out of `padded` into compact `(channels,
    /// h, w)` planes; `None` if a buffer is too short.
    pub(crate) fn unpad(&self, padded: &[f32], compact: &mut [f32]) -> Option<()> {
        let (row, area) = (self.row(), self.h * self.w);
        let compact = compact.get_mut(..self.channels * area)?;
        let padded = padded.get(..self.len())?;
        for (out, plane) in compact
            .chunks_exact_mut(area)
            .zip(padded.chunks_exact(self.plane()))
        {
            for (out, line) in out.chunks_mut(self.w).zip(plane[row..].chunks(row)) {
                out.copy_from_slice(&line[1..=self.w]);
            }
        }
        Some(())
    }

    /// Zeroes the border of every plane, after junk was written there.
    fn clear_borders(&self, padded: &mut [f32]) {
        let row = self.row();
        for plane in padded.chunks_exact_mut(self.plane()) {
            plane[..row].fill(0.0);
            plane[(self.h + 1) * row..(self.h + 2) * row].fill(0.0);
            for y in 1..=self.h {
                plane[y * row] = 0.0;
                plane[y * row + self.w + 1] = 0.0;
            }
        }
    }
}

/// The vector instructions a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best this CPU has.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// A folded stride-1, padding-1 3x3 convolution followed by a ReLU (or
/// not: [`Self::without_relu`]), with its weights laid out for the tiles.
#[derive(Debug, Clone)]
pub(crate) struct PaddedConv3x3 {
    in_channels: usize,
    out_channels: usize,
    relu: bool,
    /// `(out_channels / BLOCK, in_channels, 9, BLOCK)`, zero past
    /// `out_channels`: a tile's weights for one tap are adjacent.
    packed: Vec<f32>,
    /// `BLOCK`-padded with zeros.
    bias: Vec<f32>,
}

/// One tile's operands. Every pointer is valid for the reads and writes
/// [`PaddedConv3x3::run`] checked: `input` and `residual` for
/// `channels`/`valid` planes from the tile's first output, `out` likewise.
struct Tile {
    /// Input channel 0 at the tile's first output's top-left tap.
    input: *const f32,
    /// Output channel 0 of the block at the tile's first output.
    out: *mut f32,
    /// The residual at the same place as `out`, if any.
    residual: Option<*const f32>,
    /// The block's packed weights.
    weights: *const f32,
    bias: *const f32,
    channels: usize,
    plane: usize,
    row: usize,
    /// The block's output channels that exist (the rest are padding).
    valid: usize,
    relu: bool,
}

impl Tile {
    /// Each tap's input offset from its output, `ky·row + kx`.
    fn taps(&self) -> [usize; 9] {
        std::array::from_fn(|tap| tap / 3 * self.row + tap % 3)
    }
}

impl PaddedConv3x3 {
    /// `conv` repacked, or `None` unless it is 3x3 with stride 1 and
    /// padding 1.
    pub(crate) fn new(conv: &FoldedConv) -> Option<Self> {
        if conv.kernel() != 3 || conv.stride() != 1 || conv.padding() != 1 {
            return None;
        }
        Self::from_parts(conv.weight(), conv.bias(), conv.out_channels())
    }

    /// A convolution of `weight` (`(out_channels, in_channels, 3, 3)`,
    /// row-major) and `bias`; `None` if their lengths disagree.
    pub(crate) fn from_parts(weight: &[f32], bias: &[f32], out_channels: usize) -> Option<Self> {
        if out_channels == 0
            || bias.len() != out_channels
            || !weight.len().is_multiple_of(out_channels * 9)
        {
            return None;
        }
        let in_channels = weight.len() / (out_channels * 9);
        let blocks = out_channels.div_ceil(BLOCK);
        let mut packed = vec![0.0; blocks * in_channels * 9 * BLOCK];
        for (o, taps) in weight.chunks_exact(in_channels * 9).enumerate() {
            for (c, taps) in taps.chunks_exact(9).enumerate() {
                for (t, &w) in taps.iter().enumerate() {
                    packed[((o / BLOCK * in_channels + c) * 9 + t) * BLOCK + o % BLOCK] = w;
                }
            }
        }
        let mut bias = bias.to_vec();
        bias.resize(blocks * BLOCK, 0.0);
        Some(PaddedConv3x3 {
            in_channels,
            out_channels,
            relu: true,
            packed,
            bias,
        })
    }

    /// The same convolution with its output stored as is (a gradient's
    /// convolution in the backward pass).
    pub(crate) fn without_relu(mut self) -> Self {
        self.relu = false;
        self
    }

    pub(crate) fn in_channels(&self) -> usize {
        self.in_channels
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `relu(conv(input) + bias + residual)` for one image of `h × w`
    /// pixels: `input` and `output` (and `residual`, if any) in the padded
    /// layout with `in_channels` / `out_channels` planes; the output's
    /// borders are left zero. `None` if a buffer is too short.
    pub(crate) fn run(
        &self,
        input: &[f32],
        [h, w]: [usize; 2],
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) -> Option<()> {
        self.run_with(Isa::detect(), input, [h, w], output, residual)
    }

    /// [`Self::run`] with the given instructions (tests run each).
    pub(crate) fn run_with(
        &self,
        isa: Isa,
        input: &[f32],
        [h, w]: [usize; 2],
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) -> Option<()> {
        let source = PaddedPlanes {
            channels: self.in_channels,
            h,
            w,
        };
        let target = PaddedPlanes {
            channels: self.out_channels,
            ..source
        };
        if h == 0 || w == 0 || self.in_channels == 0 {
            return None;
        }
        let input = input.get(..source.len())?;
        let output = output.get_mut(..target.len())?;
        let residual = match residual {
            Some(r) => Some(r.get(..target.len())?),
            None => None,
        };
        let (row, plane) = (source.row(), source.plane());
        // Outputs up to the last pixel, rounded up to whole vectors: every
        // read ends before `q + 2·row + 2 + TILE` and every write before
        // `q + row + 1 + TILE`, inside the plane and its slack.
        let run = ((h - 1) * row + w).next_multiple_of(LANES);
        for start in (0..run).step_by(TILE) {
            let wide = run - start >= TILE;
            for (block, first) in (0..self.out_channels).step_by(BLOCK).enumerate() {
                let at = first * plane + row + 1 + start;
                // SAFETY: `start < run`, and the slices hold `channels`
                // whole planes, so the offsets are inside them; the tile
                // functions stay within the bounds documented on `Tile`.
                let tile = unsafe {
                    Tile {
                        input: input.as_ptr().add(start),
                        out: output.as_mut_ptr().add(at),
                        residual: residual.map(|r| r.as_ptr().add(at)),
                        weights: self
                            .packed
                            .as_ptr()
                            .add(block * self.in_channels * 9 * BLOCK),
                        bias: self.bias.as_ptr().add(block * BLOCK),
                        channels: self.in_channels,
                        plane,
                        row,
                        valid: (self.out_channels - first).min(BLOCK),
                        relu: self.relu,
                    }
                };
                // SAFETY: the features were detected (or the caller asked
                // for instructions it checked); pointers as above.
                unsafe {
                    match (isa, wide) {
                        #[cfg(target_arch = "x86_64")]
                        (Isa::Avx512, true) => avx512::tile::<2>(&tile),
                        #[cfg(target_arch = "x86_64")]
                        (Isa::Avx512, false) => avx512::tile::<1>(&tile),
                        #[cfg(target_arch = "x86_64")]
                        (Isa::Avx2, true) => {
                            for half in [0, LANES] {
                                avx2::tile(&tile, half, 0);
                                avx2::tile(&tile, half, BLOCK / 2);
                            }
                        }
                        #[cfg(target_arch = "x86_64")]
                        (Isa::Avx2, false) => {
                            avx2::tile(&tile, 0, 0);
                            avx2::tile(&tile, 0, BLOCK / 2);
                        }
                        (_, true) => portable::<TILE>(&tile),
                        (_, false) => portable::<LANES>(&tile),
                    }
                }
            }
        }
        target.clear_borders(output);
        Some(())
    }
}

/// The tile in plain Rust, `N` outputs wide.
///
/// # Safety
/// As documented on [`Tile`].
unsafe fn portable<const N: usize>(t: &Tile) {
    let mut acc = [[0.0_f32; N]; BLOCK];
    for (r, lane) in acc.iter_mut().enumerate() {
        // SAFETY: the bias holds a whole block.
        *lane = [unsafe { *t.bias.add(r) }; N];
    }
    for c in 0..t.channels {
        for tap in 0..9 {
            // SAFETY: inside the input plane and its slack (see `Tile`).
            let (x, w) = unsafe {
                let x = t.input.add(c * t.plane + tap / 3 * t.row + tap % 3);
                (
                    std::slice::from_raw_parts(x, N),
                    std::slice::from_raw_parts(t.weights.add((c * 9 + tap) * BLOCK), BLOCK),
                )
            };
            for (lane, &w) in acc.iter_mut().zip(w) {
                for (a, &x) in lane.iter_mut().zip(x) {
                    *a += w * x;
                }
            }
        }
    }
    for (r, lane) in acc.iter().enumerate().take(t.valid) {
        // SAFETY: output and residual planes of the block's valid channels.
        let (out, residual) = unsafe {
            (
                std::slice::from_raw_parts_mut(t.out.add(r * t.plane), N),
                t.residual
                    .map(|p| std::slice::from_raw_parts(p.add(r * t.plane), N)),
            )
        };
        for (i, (o, &a)) in out.iter_mut().zip(lane).enumerate() {
            let v = a + residual.map_or(0.0, |r| r[i]);
            // A NaN stays NaN, as burn's ReLU keeps it.
            *o = if t.relu && v < 0.0 { 0.0 } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, LANES, Tile};

    /// The tile, `V` vectors of 16 outputs wide.
    ///
    /// # Safety
    /// AVX-512F must be available; pointers as documented on [`Tile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(t: &Tile) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; BLOCK];
            for (r, lane) in acc.iter_mut().enumerate() {
                *lane = [_mm512_set1_ps(*t.bias.add(r)); V];
            }
            let taps = t.taps();
            let (mut x, mut w) = (t.input, t.weights);
            for _ in 0..t.channels {
                for (tap, &offset) in taps.iter().enumerate() {
                    let p = x.add(offset);
                    let mut xs = [_mm512_setzero_ps(); V];
                    for (v, x) in xs.iter_mut().enumerate() {
                        *x = _mm512_loadu_ps(p.add(v * LANES));
                    }
                    let wt = w.add(tap * BLOCK);
                    for (r, lane) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wt.add(r));
                        for (a, &x) in lane.iter_mut().zip(&xs) {
                            *a = _mm512_fmadd_ps(wv, x, *a);
                        }
                    }
                }
                // Pointer steps, not index products: no overflow checks
                // in the loop when the crate is built with them.
                x = x.add(t.plane);
                w = w.add(9 * BLOCK);
            }
            let zero = _mm512_setzero_ps();
            for (r, lane) in acc.iter().enumerate() {
                if r >= t.valid {
                    break;
                }
                let out = t.out.add(r * t.plane);
                for (v, &a) in lane.iter().enumerate() {
                    let a = match t.residual {
                        Some(res) => {
                            _mm512_add_ps(a, _mm512_loadu_ps(res.add(r * t.plane + v * LANES)))
                        }
                        None => a,
                    };
                    // max(0, a) returns a when a is NaN, as burn's ReLU.
                    let a = if t.relu { _mm512_max_ps(zero, a) } else { a };
                    _mm512_storeu_ps(out.add(v * LANES), a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Tile};

    /// Output channels per AVX2 sub-tile (16 registers: 8 sums, 2 inputs,
    /// a weight).
    const HALF: usize = BLOCK / 2;

    /// 16 outputs from `offset` × the block's channels `first..first + 4`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; pointers as documented on [`Tile`],
    /// `offset + 16` within the tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(t: &Tile, offset: usize, first: usize) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; HALF];
            for (r, lane) in acc.iter_mut().enumerate() {
                *lane = [_mm256_set1_ps(*t.bias.add(first + r)); 2];
            }
            let taps = t.taps();
            let (mut x, mut w) = (t.input.add(offset), t.weights.add(first));
            for _ in 0..t.channels {
                for (tap, &offset) in taps.iter().enumerate() {
                    let p = x.add(offset);
                    let xs = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                    let wt = w.add(tap * BLOCK);
                    for (r, lane) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(*wt.add(r));
                        lane[0] = _mm256_fmadd_ps(wv, xs[0], lane[0]);
                        lane[1] = _mm256_fmadd_ps(wv, xs[1], lane[1]);
                    }
                }
                x = x.add(t.plane);
                w = w.add(9 * BLOCK);
            }
            let zero = _mm256_setzero_ps();
            for (r, lane) in acc.iter().enumerate() {
                if first + r >= t.valid {
                    break;
                }
                let at = (first + r) * t.plane + offset;
                for (v, &a) in lane.iter().enumerate() {
                    let a = match t.residual {
                        Some(res) => _mm256_add_ps(a, _mm256_loadu_ps(res.add(at + v * 8))),
                        None => a,
                    };
                    let a = if t.relu { _mm256_max_ps(zero, a) } else { a };
                    _mm256_storeu_ps(t.out.add(at + v * 8), a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PaddedConv3x3, PaddedPlanes};
    use crate::kernels::FoldedConv;
    use crate::kernels::test_values::{TestBatchNorm, isas, values};

    fn folded(o: usize, c: usize, k: usize, stride: usize, padding: usize) -> FoldedConv {
        let bn = TestBatchNorm::new(o);
        FoldedConv::fold(
            &values(o * c * k * k, 2),
            [o, c, k, k],
            stride,
            padding,
            &bn.stats(),
        )
        .unwrap()
    }

    #[test]
    fn equals_the_patch_matrix_convolution_with_residual_with_and_without_relu() {
        // Odd sides, a single pixel, channel counts off the 8-channel
        // block, runs ending on a half tile and on a whole one.
        for [c, o, h, w] in [
            [3, 5, 7, 9],
            [16, 16, 8, 8],
            [8, 19, 16, 16],
            [2, 8, 1, 1],
            [5, 3, 3, 30],
            [4, 9, 13, 2],
        ] {
            let conv = folded(o, c, 3, 1, 1);
            let padded = PaddedConv3x3::new(&conv).unwrap();
            let x = values(c * h * w, 1);
            let extra = values(o * h * w, 7);
            let mut expected = vec![0.0; o * h * w];
            conv.run(&x, [h, w], &mut Vec::new(), &mut expected, |_, _| {});
            let (source, target) = (
                PaddedPlanes { channels: c, h, w },
                PaddedPlanes { channels: o, h, w },
            );
            let mut input = vec![f32::NAN; source.len()];
            source.pad(&x, &mut input).unwrap();
            let mut residual = vec![f32::NAN; target.len()];
            target.pad(&extra, &mut residual).unwrap();
            let linear = padded.clone().without_relu();
            for (isa, relu) in isas().into_iter().flat_map(|i| [(i, true), (i, false)]) {
                let padded = if relu { &padded } else { &linear };
                for with_residual in [false, true] {
                    // Stale values everywhere, as a reused buffer has.
                    let mut output = vec![7.0; target.len()];
                    let r = with_residual.then_some(&residual[..]);
                    padded
                        .run_with(isa, &input, [h, w], &mut output, r)
                        .unwrap();
                    let mut got = vec![0.0; o * h * w];
                    target.unpad(&output, &mut got).unwrap();
                    let mut negatives = 0;
                    for (i, g) in got.iter().enumerate() {
                        let mut want = expected[i] + if with_residual { extra[i] } else { 0.0 };
                        negatives += usize::from(want < 0.0);
                        if relu {
                            want = want.max(0.0);
                        }
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{isa:?} relu {relu} {c}->{o} {h}x{w} residual {with_residual} at {i}: {g} vs {want}"
                        );
                    }
                    assert!(negatives > 0, "the ReLU had nothing to clip");
                    // The borders are zero, ready for the next layer.
                    for ch in 0..o {
                        for y in -1..=h as isize {
                            for x in -1..=w as isize {
                                let inside = y >= 0 && x >= 0 && y < h as isize && x < w as isize;
                                let at = target.at(ch, (y + 1) as usize, (x + 1) as usize)
                                    - target.row()
                                    - 1;
                                if !inside {
                                    assert_eq!(output[at], 0.0, "{isa:?} border ({ch}, {y}, {x})");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn nan_survives_the_relu_on_every_path() {
        let conv = folded(8, 2, 3, 1, 1);
        let padded = PaddedConv3x3::new(&conv).unwrap();
        let planes = PaddedPlanes {
            channels: 2,
            h: 4,
            w: 4,
        };
        let mut x = values(2 * 16, 1);
        x[5] = f32::NAN;
        let mut input = vec![0.0; planes.len()];
        planes.pad(&x, &mut input).unwrap();
        let target = PaddedPlanes {
            channels: 8,
            ..planes
        };
        for isa in isas() {
            let mut output = vec![0.0; target.len()];
            padded
                .run_with(isa, &input, [4, 4], &mut output, None)
                .unwrap();
            let mut got = vec![0.0; 8 * 16];
            target.unpad(&output, &mut got).unwrap();
            // Pixel (1, 1) of channel 0 reaches every output channel's
            // (1, 1) through the centre tap.
            for ch in 0..8 {
                assert!(got[ch * 16 + 5].is_nan(), "{isa:?} channel {ch}");
            }
        }
    }

    #[test]
    fn other_convolutions_and_short_buffers_are_refused() {
        assert!(PaddedConv3x3::new(&folded(4, 2, 3, 2, 1)).is_none());
        assert!(PaddedConv3x3::new(&folded(4, 2, 3, 1, 0)).is_none());
        assert!(PaddedConv3x3::new(&folded(4, 2, 1, 1, 1)).is_none());
        let padded = PaddedConv3x3::new(&folded(4, 2, 3, 1, 1)).unwrap();
        let planes = |channels| PaddedPlanes {
            channels,
            h: 5,
            w: 5,
        };
        let (input, mut output) = (vec![0.0; planes(2).len()], vec![0.0; planes(4).len()]);
        assert!(padded.run(&input, [5, 5], &mut output, None).is_some());
        assert!(padded.run(&input[1..], [5, 5], &mut output, None).is_none());
        assert!(padded.run(&input, [5, 5], &mut output[1..], None).is_none());
        assert!(
            padded
                .run(&input, [5, 5], &mut output, Some(&input))
                .is_none()
        );
        assert!(padded.run(&input, [0, 5], &mut output, None).is_none());
    }
}
