//! Distances between features that several detectors share: L2
//! normalisation, the blocked search's block sizes and the running k
//! smallest (KNN, NNGuide), the distance to a centre (fDBD, NCI).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// Queries per block of the search.
pub(crate) const QUERY_BLOCK: usize = 256;
/// Stored features per block of the search: a block of distances is
/// `QUERY_BLOCK × INDEX_BLOCK` floats (8 MiB), whatever the data's size.
pub(crate) const INDEX_BLOCK: usize = 8192;

/// `features` with each row scaled to unit L2 norm (zero rows stay zero).
pub(crate) fn normalised(features: ArrayView2<f32>) -> Array2<f32> {
    let mut out = features.to_owned();
    for mut row in out.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    out
}

/// The k smallest values offered so far (unordered), with a bound that
/// skips most candidates once k have been seen.
pub(crate) struct KBest {
    k: usize,
    values: Vec<f32>,
    bound: f32,
}

impl KBest {
    pub(crate) fn new(k: usize) -> Self {
        KBest {
            k,
            values: Vec::with_capacity(2 * k),
            bound: f32::INFINITY,
        }
    }

    pub(crate) fn offer(&mut self, value: f32) {
        if value >= self.bound {
            return;
        }
        self.values.push(value);
        if self.values.len() == 2 * self.k {
            self.compact();
        }
    }

    /// Takes the values `other` kept (the k smallest of another part of the
    /// same search).
    pub(crate) fn absorb(&mut self, mut other: KBest) {
        other.compact();
        for value in other.values {
            self.offer(value);
        }
    }

    /// Keeps the k smallest; the largest of them bounds later offers.
    fn compact(&mut self) {
        if self.values.len() > self.k {
            self.values
                .select_nth_unstable_by(self.k - 1, f32::total_cmp);
            self.values.truncate(self.k);
        }
        if self.values.len() == self.k {
            self.bound = self
                .values
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }

    /// The mean of the k smallest values offered (of all, with fewer).
    pub(crate) fn mean(mut self) -> f64 {
        self.compact();
        let n = self.values.len().max(1) as f64;
        self.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n
    }

    /// The k-th smallest value offered.
    pub(crate) fn kth(mut self) -> f32 {
        self.compact();
        self.values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
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
        for v in [9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 0.5, 5.0] {
            best.offer(v);
        }
        assert_eq!(best.kth(), 2.0);
        let mut one = KBest::new(1);
        for v in [4.0, 4.0, 3.0] {
            one.offer(v);
        }
        assert_eq!(one.kth(), 3.0);
    }
}
