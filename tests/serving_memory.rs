//! Scoring one input allocates nothing proportional to the fit set: a
//! counting allocator measures the peak of live bytes while a KNN index
//! of 20 000 × 64 features (5 MB) scores a single input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array1, Array2, Array4, ArrayView4};
use oodkit::Batch;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{Detector, FeatureDetector, Knn, ScoreFeatures};
use oodkit::model::from_fn_with_features;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak of live bytes above the start while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let start = LIVE.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - start
}

const ROWS: usize = 20_000;
const WIDTH: usize = 64;

#[test]
fn scoring_one_input_allocates_little_beside_the_index() {
    let features = Array2::from_shape_fn((ROWS, WIDTH), |(i, j)| ((i * 31 + j * 7) % 97) as f32);
    let index = Knn::new(50)
        .unwrap()
        .fit_features(features.view(), Array1::zeros(ROWS).view())
        .unwrap();
    let fit_bytes = ROWS * WIDTH * 4;
    let query = Array2::from_elem((1, WIDTH), 3.0_f32);
    let peak = peak_during(|| {
        index.score_features(query.view()).unwrap();
    });
    println!("one query: peak {peak} bytes beside an index of {fit_bytes}");
    // A row of 8 192 products and the k best: about 40 kB.
    assert!(
        peak < fit_bytes / 20,
        "{peak} bytes for one query ({fit_bytes} in the index)"
    );

    // Through a model, one image end to end.
    let model = from_fn_with_features(["features"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, WIDTH))?.to_owned();
        let logits = f.slice(ndarray::s![.., ..10]).to_owned();
        Ok((vec![f], logits))
    });
    let images = features.to_shape((ROWS, 1, 8, 8)).unwrap().to_owned();
    let fit = OodDataset::from_arrays(images, Array1::zeros(ROWS)).unwrap();
    let scorer = Knn::new(50)
        .unwrap()
        .fit(
            &model,
            Some(&fit.prepare(&PrepareConfig::new(1000)).unwrap()),
        )
        .unwrap();
    let image = Array4::from_elem((1, 1, 8, 8), 3.0_f32);
    let peak = peak_during(|| {
        scorer.score_batch(Batch::new(image)).unwrap();
    });
    println!("one image through a model: peak {peak} bytes");
    assert!(
        peak < fit_bytes / 20,
        "{peak} bytes for one image ({fit_bytes} in the index)"
    );
}
