//! Quantiles of fit values, by selection (no sort of the whole sample).

/// The `q` quantile of `values` (non-empty), linearly interpolated between
/// order statistics (NumPy's and PyTorch's default), by selection rather
/// than a sort; `values` is reordered.
pub(crate) fn quantile(values: &mut [f32], q: f64) -> f64 {
    let pos = q * (values.len() - 1) as f64;
    let below = pos.floor() as usize;
    let (_, &mut low, rest) = values.select_nth_unstable_by(below, f32::total_cmp);
    // The next order statistic is the smallest of those after it.
    let high = rest.iter().copied().fold(f32::INFINITY, f32::min);
    let t = pos - below as f64;
    if t == 0.0 || rest.is_empty() {
        return f64::from(low);
    }
    f64::from(low) + t * (f64::from(high) - f64::from(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_by_selection_matches_numpy() {
        // np.quantile([3, 1, 2, 2, 10], q) for q = 0, 0.1, 0.5, 0.9, 1.
        let cases = [(0.0, 1.0), (0.1, 1.4), (0.5, 2.0), (0.9, 7.2), (1.0, 10.0)];
        for (q, expected) in cases {
            let mut values = [3.0_f32, 1.0, 2.0, 2.0, 10.0];
            assert!(
                (quantile(&mut values, q) - expected).abs() < 1e-6,
                "q = {q}"
            );
        }
        assert_eq!(quantile(&mut [4.0], 0.3), 4.0);
    }
}
