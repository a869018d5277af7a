//! Serving: one scorer shared by several threads gives the same scores as
//! one thread; verdicts one input at a time equal the batch's.

use ndarray::{Array1, Array4, ArrayView4, Axis};
use oodkit::Batch;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, Knn, Mls};
use oodkit::model::from_fn_with_features;

fn model() -> impl oodkit::model::Model + Send + Sync {
    from_fn_with_features(["features"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, 8))?.mapv(|v| (v * 1.7).sin());
        let logits = f.slice(ndarray::s![.., ..4]).to_owned() * 3.0;
        Ok((vec![f], logits))
    })
}

fn inputs(n: usize, shift: f32) -> Array4<f32> {
    Array4::from_shape_fn((n, 1, 2, 4), |(i, _, h, w)| {
        ((i * 13 + h * 5 + w * 3) % 17) as f32 / 9.0 + shift
    })
}

#[test]
fn four_threads_score_as_one() {
    let fit = OodDataset::from_arrays(inputs(300, 0.0), Array1::zeros(300)).unwrap();
    let cal = OodDataset::from_arrays(inputs(200, 0.01), Array1::zeros(200)).unwrap();
    let config = PrepareConfig::new(32);
    let knn = Knn::new(5)
        .unwrap()
        .fit(model(), Some(&fit.prepare(&config).unwrap()))
        .unwrap()
        .calibrate(&cal.prepare(&config).unwrap(), 0.05)
        .unwrap();
    let mls = Mls::new().fit(model(), None).unwrap();
    let queries = inputs(64, 0.3);
    let single = |i: usize| {
        Batch::new(
            queries
                .index_axis(Axis(0), i)
                .insert_axis(Axis(0))
                .to_owned(),
        )
    };
    let one_thread: Vec<_> = (0..64)
        .map(|i| {
            (
                knn.verdict_batch(single(i)).unwrap()[0],
                mls.score_batch(single(i)).unwrap().scores[0],
            )
        })
        .collect();
    let per_thread: Vec<Vec<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..64)
                        .map(|i| {
                            (
                                knn.verdict_batch(single(i)).unwrap()[0],
                                mls.score_batch(single(i)).unwrap().scores[0],
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for results in per_thread {
        assert_eq!(results, one_thread);
    }
    // One at a time = the batch at once (to rounding: the products are
    // blocked differently).
    let batch = knn.verdict_batch(Batch::new(queries.clone())).unwrap();
    for (b, (single, _)) in batch.iter().zip(&one_thread) {
        assert!((b.score - single.score).abs() <= 1e-5 * single.score.abs().max(1.0));
        assert_eq!(b.class, single.class);
    }
}
