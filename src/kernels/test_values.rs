//! Test inputs shared by the kernels' tests.

/// Deterministic values in [-1, 1), different for each seed.
pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let v = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 40_503)) % 2000;
            v as f32 / 1000.0 - 1.0
        })
        .collect()
}
