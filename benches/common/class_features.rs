//! Synthetic penultimate features with class structure, shared by the
//! benches: class centres drawn once (seed 0, N(0, 4) per coordinate), unit
//! normal samples around them, labels cycling through the classes.

use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `n` samples of `dim` features in `classes` classes, drawn with `seed`.
pub fn class_features(
    n: usize,
    dim: usize,
    classes: usize,
    seed: u64,
) -> (Array2<f32>, Array1<i64>) {
    let mut centres_rng = StdRng::seed_from_u64(0);
    let centres = Array2::from_shape_simple_fn((classes, dim), || 2.0 * normal(&mut centres_rng));
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let x = Array2::from_shape_fn((n, dim), |(i, j)| {
        centres[[labels[i] as usize, j]] + normal(&mut rng)
    });
    (x, labels)
}
