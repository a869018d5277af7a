//! Distances between features that several detectors share: L2
//! normalisation, the blocked search's block sizes and the running k
//! smallest (KNN, NNGuide), the distance to a centre (fDBD, NCI).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

/// Queries per block of the search: each block reads the whole index
/// once, so larger blocks read it fewer times. A multiple of 24 (see
/// [`INDEX_BLOCK`]).
pub(crate) const QUERY_BLOCK: usize = 1008;
/// Stored features per block of the search: a block of distances is
/// `QUERY_BLOCK × INDEX_BLOCK` floats (8 MiB), whatever the data's size.
/// A multiple of 24, the rows of the product kernel's tile on AVX2 (a
/// remainder runs through a narrower, slower kernel).
pub(crate) const INDEX_BLOCK: usize = 2040;

/// `features` with each row scaled to unit L2 norm (zero rows stay zero).
pub(crate) fn normalised(features: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(features.dim());
    if let Some(slice) = out.as_slice_mut() {
        normalise_into(features, slice);
    }
    out
}

/// Writes `features`' rows scaled to unit L2 norm (zero rows stay zero)
/// into `out` (`N · D` long), rows in parallel on rayon's pool.
pub(crate) fn normalise_into(features: ArrayView2<f32>, out: &mut [f32]) {
    let width = features.ncols();
    if width == 0 {
        return;
    }
    out.par_chunks_mut(width)
        .enumerate()
        .with_min_len(256)
        .for_each(|(i, out)| {
            let row = features.row(i);
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (o, &v) in out.iter_mut().zip(&row) {
                *o = if norm > 0.0 { v / norm } else { v };
            }
        });
}

/// The k smallest values offered so far (unordered), each with the index
/// of the stored feature it came from, with a bound that skips most
/// candidates once k have been seen.
pub(crate) struct KBest {
    k: usize,
    kept: Vec<(f32, usize)>,
    bound: f32,
}

impl KBest {
    pub(crate) fn new(k: usize) -> Self {
        KBest {
            k,
            kept: Vec::with_capacity(2 * k),
            bound: f32::INFINITY,
        }
    }

    /// Offers the value of stored feature `index`.
    pub(crate) fn offer(&mut self, value: f32, index: usize) {
        if value >= self.bound {
            return;
        }
        self.kept.push((value, index));
        if self.kept.len() == 2 * self.k {
            self.compact();
        }
    }

    /// Offers the squared distances `q_norm + norms[j] − 2·dots[j]` of one
    /// query to stored features `start + j`, sixteen at a time: a group
    /// none of whose values beats the bound costs vector compares only
    /// (once k are kept, nearly every group).
    pub(crate) fn offer_distances(
        &mut self,
        q_norm: f32,
        dots: &[f32],
        norms: &[f32],
        start: usize,
    ) {
        const GROUP: usize = 16;
        let n = dots.len().min(norms.len());
        let body = n / GROUP * GROUP;
        for (g, (dots, norms)) in dots[..body]
            .chunks_exact(GROUP)
            .zip(norms[..body].chunks_exact(GROUP))
            .enumerate()
        {
            let bound = self.bound;
            let mut group = [0.0_f32; GROUP];
            let mut any = false;
            for l in 0..GROUP {
                group[l] = q_norm + norms[l] - 2.0 * dots[l];
                any |= group[l] < bound;
            }
            if any {
                for (l, &d) in group.iter().enumerate() {
                    self.offer(d, start + g * GROUP + l);
                }
            }
        }
        for j in body..n {
            self.offer(q_norm + norms[j] - 2.0 * dots[j], start + j);
        }
    }

    /// Takes the values `other` kept (the k smallest of another part of the
    /// same search).
    pub(crate) fn absorb(&mut self, mut other: KBest) {
        other.compact();
        for (value, index) in other.kept {
            self.offer(value, index);
        }
    }

    /// Keeps the k smallest; the largest of them bounds later offers.
    fn compact(&mut self) {
        if self.kept.len() > self.k {
            self.kept
                .select_nth_unstable_by(self.k - 1, |a, b| a.0.total_cmp(&b.0));
            self.kept.truncate(self.k);
        }
        if self.kept.len() == self.k {
            self.bound = self
                .kept
                .iter()
                .map(|&(v, _)| v)
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }

    /// The mean of the k smallest values offered (of all, with fewer).
    pub(crate) fn mean(mut self) -> f64 {
        self.compact();
        let n = self.kept.len().max(1) as f64;
        self.kept.iter().map(|&(v, _)| f64::from(v)).sum::<f64>() / n
    }

    /// The indices of the k smallest values offered (of all, with fewer),
    /// in no order.
    pub(crate) fn indices(mut self) -> Vec<usize> {
        self.compact();
        self.kept.into_iter().map(|(_, i)| i).collect()
    }
}

/// ‖f − centre‖ in f64.
pub(crate) fn distance(f: ArrayView1<f32>, centre: Option<&Array1<f64>>) -> f64 {
    match centre {
        Some(c) => f
            .iter()
            .zip(c)
            .map(|(&v, &m)| (f64::from(v) - m).powi(2))
            .sum::<f64>()
            .sqrt(),
        None => f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbest_keeps_the_k_smallest() {
        let mut best = KBest::new(3);
        for (i, v) in [9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 0.5, 5.0]
            .into_iter()
            .enumerate()
        {
            best.offer(v, i);
        }
        let mut kept = best.indices();
        kept.sort();
        assert_eq!(kept, [1, 5, 7]);
        let mut one = KBest::new(1);
        for (i, v) in [4.0, 4.0, 3.0].into_iter().enumerate() {
            one.offer(v, i);
        }
        assert_eq!(one.indices(), [2]);
    }

    #[test]
    fn distances_offered_in_groups_keep_the_k_smallest() {
        // 37 stored features (two groups of 16 and a tail of 5).
        let dots: Vec<f32> = (0..37).map(|j| ((j * 7) % 37) as f32 / 37.0).collect();
        let norms: Vec<f32> = (0..37).map(|j| 1.0 + (j % 3) as f32 * 0.1).collect();
        let mut best = KBest::new(4);
        best.offer_distances(1.0, &dots, &norms, 100);
        let mut expected: Vec<(f32, usize)> = (0..37)
            .map(|j| (1.0 + norms[j] - 2.0 * dots[j], 100 + j))
            .collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut kept = best.indices();
        kept.sort();
        let mut want: Vec<usize> = expected[..4].iter().map(|e| e.1).collect();
        want.sort();
        assert_eq!(kept, want);
    }

    #[test]
    fn parts_absorbed_keep_the_k_smallest_of_all() {
        let values = [5.0, 0.1, 4.0, 2.0, 9.0, 0.3, 7.0, 1.0];
        let (mut first, mut second) = (KBest::new(3), KBest::new(3));
        for (i, &v) in values.iter().enumerate() {
            if i < 4 {
                first.offer(v, i);
            } else {
                second.offer(v, i);
            }
        }
        first.absorb(second);
        let mut kept = first.indices();
        kept.sort();
        assert_eq!(kept, [1, 5, 7]);
    }
}
