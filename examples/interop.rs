//! Detector files between Rust and Python: this program fits a detector
//! by name on `.npy` features and saves it, or loads any detector file and
//! scores `.npy` features with it. The Python package's tests run it both
//! ways (`OODKIT_INTEROP_BIN`) and compare the scores bit for bit.
//!
//! ```sh
//! cargo run --features cli --example interop -- fit knn 5 features.npy labels.npy knn.oodkit
//! cargo run --features cli --example interop -- score knn.oodkit queries.npy scores.npy
//! cargo run --release --features cli --example interop -- time knn.oodkit queries.npy 5
//! ```
//!
//! `time` prints the best of REPEATS batch scorings in seconds (the Rust
//! side of `python/bench/overhead.py`, which measures what the Python
//! binding adds).

use oodkit::datasets::npy;
use oodkit::detectors::registry::{self, Params};
use oodkit::detectors::{AnyDetector, Precomputed};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fit", kind, k, features, labels, out] => {
            let features = npy::read_matrix(features)?;
            let labels = npy::read_labels(labels)?;
            let k: usize = k.parse()?;
            let data = Precomputed::features(features.view())?.with_labels(labels.view())?;
            let params = if *kind == "knn" {
                Params::new().set("k", k)
            } else {
                Params::new()
            };
            let fitted = registry::find(kind)?
                .build(&params)?
                .fit_precomputed(&data)?;
            fitted.save(out)?;
        }
        ["score", detector, features, out] => {
            let detector = AnyDetector::load(detector)?;
            let features = npy::read_matrix(features)?;
            let out_scores =
                detector.score_precomputed(&Precomputed::features(features.view())?)?;
            npy::write_vector(out, out_scores.scores.view())?;
        }
        ["time", detector, features, repeats] => {
            let detector = AnyDetector::load(detector)?;
            let features = npy::read_matrix(features)?;
            let data = Precomputed::features(features.view())?;
            let mut best = f64::INFINITY;
            for _ in 0..repeats.parse::<usize>()? {
                let start = std::time::Instant::now();
                std::hint::black_box(detector.score_precomputed(&data)?);
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!("{best}");
        }
        _ => {
            return Err(
                "usage: interop fit KIND K FEATURES.npy LABELS.npy OUT.oodkit | \
                        interop score DETECTOR.oodkit FEATURES.npy SCORES.npy | \
                 interop time DETECTOR.oodkit FEATURES.npy REPEATS"
                    .into(),
            );
        }
    }
    Ok(())
}
