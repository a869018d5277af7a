//! Exact OOD metrics on millions of scores: generates `N` synthetic scores
//! (half ID uniform on [0, 1), half OOD on [0.3, 1.3)), computes AUROC,
//! FPR@95%TPR, AUPR-In and AUPR-Out with one sort, and prints them with the
//! time taken.
//!
//! ```sh
//! cargo run --release --example metrics_at_scale -- 10000000
//! ```

use std::time::Instant;

use oodkit::metrics::bench_metrics;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("the argument is the number of scores, got {arg:?}: {e}"))?,
        None => 10_000_000,
    };
    let mut rng = StdRng::seed_from_u64(0);
    let scores_in: Vec<f32> = (0..n / 2).map(|_| rng.random::<f32>()).collect();
    let scores_out: Vec<f32> = (0..n - n / 2).map(|_| rng.random::<f32>() + 0.3).collect();

    let start = Instant::now();
    let report = bench_metrics(
        &scores_in,
        &scores_out,
        &["auroc", "fpr95tpr", "aupr_in", "aupr_out"],
    )?;
    let elapsed = start.elapsed();
    println!("{report}");
    println!("{n} scores in {:.1} ms", elapsed.as_secs_f64() * 1e3);
    Ok(())
}
