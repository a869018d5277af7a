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
