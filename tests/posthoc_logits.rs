//! The logit detectors that learn from in-distribution logits —
//! temperature scaling, KL matching, OpenMax — against direct formulas in
//! f64, optimality of what they fit, the blob problem, fitting through a
//! model vs on precomputed logits, bad input, and files.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, array};
use oodkit::Error;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{
    AnyDetector, Detector, FittedDetector, FittedKlm, FittedOpenMax, FittedTemperatureScaling, Klm,
    Mls, OpenMax, Persist, ScoreLogits, TemperatureScaling, Weibull,
};
use oodkit::metrics::bench_metrics;
use oodkit::model::{from_fn, from_fn_with_features};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

const C: usize = 4;

/// Logits of `n` samples of class `i % C`: the class's logit `gap` above
/// the others, noise 1; a tenth of them mislabelled (so the temperature is
/// finite).
fn logits(n: usize, gap: f64, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let classes: Vec<usize> = (0..n).map(|i| i % C).collect();
    let x = Array2::from_shape_fn((n, C), |(i, j)| {
        ((if j == classes[i] { gap } else { 0.0 }) + normal(&mut rng)) as f32
    });
    let labels = (0..n)
        .map(|i| {
            if i % 10 == 3 {
                ((classes[i] + 1) % C) as i64
            } else {
                classes[i] as i64
            }
        })
        .collect();
    (x, labels)
}

/// Softmax of a row at temperature `t`, in f64.
fn softmax(row: ArrayView1<f32>, t: f64) -> Vec<f64> {
    let m = row.iter().map(|&v| f64::from(v)).fold(f64::MIN, f64::max);
    let e: Vec<f64> = row
        .iter()
        .map(|&v| ((f64::from(v) - m) / t).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn nll(x: ArrayView2<f32>, labels: ArrayView1<i64>, t: f64) -> f64 {
    x.rows()
        .into_iter()
        .zip(labels)
        .map(|(r, &y)| -softmax(r, t)[y as usize].ln())
        .sum::<f64>()
        / x.nrows() as f64
}

#[test]
fn the_fitted_temperature_minimises_the_likelihood() {
    for (gap, seed) in [(1.0, 1), (3.0, 2), (6.0, 3)] {
        let (x, labels) = logits(400, gap, seed);
        let fitted = TemperatureScaling::new()
            .fit_logits(x.view(), labels.view())
            .unwrap();
        let t = f64::from(fitted.temperature());
        let best = nll(x.view(), labels.view(), t);
        // A fine grid around it, and far away, is never better.
        for factor in [0.5, 0.9, 0.99, 0.999, 1.001, 1.01, 1.1, 2.0] {
            let other = nll(x.view(), labels.view(), t * factor);
            assert!(
                best <= other + 1e-9,
                "gap {gap}: T = {t}, ×{factor}: {other} < {best}"
            );
        }
        // The score is MSP at T.
        let (test, _) = logits(30, gap, seed + 10);
        let expected: Vec<f64> = test
            .rows()
            .into_iter()
            .map(|r| -softmax(r, t).into_iter().fold(0.0, f64::max))
            .collect();
        let scores = fitted.score_logits(test.view()).unwrap();
        for (s, e) in scores.iter().zip(&expected) {
            assert!((f64::from(*s) - e).abs() < 1e-5, "{s} vs {e}");
        }
    }
    // Every fit sample right by a wide margin: the smallest temperature.
    let x = array![[10.0_f32, 0.0], [0.0, 10.0]];
    let fitted = TemperatureScaling::new()
        .fit_logits(x.view(), array![0_i64, 1].view())
        .unwrap();
    assert!((fitted.temperature() - TemperatureScaling::MIN_TEMPERATURE).abs() < 1e-6);
}

#[test]
fn klm_matches_its_formula() {
    let (x, _) = logits(200, 2.0, 4);
    // No sample predicted as class 3: shift its logit down.
    let mut x = x;
    x.column_mut(3).mapv_inplace(|v| v - 100.0);
    let klm = Klm::new().fit_logits(x.view()).unwrap();
    let mut templates = Array2::<f64>::zeros((C, C));
    let mut counts = [0usize; C];
    for r in x.rows() {
        let p = softmax(r, 1.0);
        let k = (0..C).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        counts[k] += 1;
        for c in 0..C {
            templates[[k, c]] += p[c];
        }
    }
    for k in 0..C {
        if counts[k] == 0 {
            templates[[k, k]] = 1.0;
        } else {
            templates.row_mut(k).mapv_inplace(|v| v / counts[k] as f64);
        }
    }
    assert_eq!(counts[3], 0);
    for (a, b) in klm.templates().iter().zip(&templates) {
        assert!((a - b).abs() < 1e-9);
    }
    let (test, _) = logits(30, 1.0, 5);
    let expected: Vec<f64> = test
        .rows()
        .into_iter()
        .map(|r| {
            let p = softmax(r, 1.0);
            (0..C)
                .map(|k| {
                    (0..C)
                        .map(|c| p[c] * (p[c] / templates[[k, c]]).ln())
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let scores = klm.score_logits(test.view()).unwrap();
    for (s, e) in scores.iter().zip(&expected) {
        assert!(
            (f64::from(*s) - e).abs() < 1e-5 * e.abs().max(1.0),
            "{s} vs {e}"
        );
    }
}

/// The Weibull log-likelihood of `x` at (k, λ).
fn weibull_ll(x: &[f64], k: f64, l: f64) -> f64 {
    x.iter()
        .map(|&v| k.ln() - l.ln() + (k - 1.0) * (v / l).ln() - (v / l).powf(k))
        .sum()
}

#[test]
fn weibull_fits_are_maximum_likelihood_on_libmr_shifted_tails() {
    let mut rng = StdRng::seed_from_u64(6);
    let distances: Vec<f64> = (0..60).map(|_| 2.0 + normal(&mut rng).abs()).collect();
    let mut tail = distances.clone();
    tail.sort_by(|a, b| b.total_cmp(a));
    tail.truncate(20);
    let smallest = *tail.last().unwrap();
    // libMR >= 0.1.9 (translate 1, OpenOOD's) and before (10 000): the
    // tail shifted to start there, then the maximum-likelihood fit.
    for translate in [1.0, 10_000.0] {
        let w = Weibull::fit_high(&distances, 20, translate).unwrap();
        assert!((w.shift() - (translate - smallest)).abs() < 1e-9);
        let shifted: Vec<f64> = tail.iter().map(|v| v + w.shift()).collect();
        assert!((shifted.last().unwrap() - translate).abs() < 1e-9);
        let best = weibull_ll(&shifted, w.shape(), w.scale());
        for (dk, dl) in [
            (1.001, 1.0),
            (0.999, 1.0),
            (1.0, 1.000_001),
            (1.0, 0.999_999),
        ] {
            let other = weibull_ll(&shifted, w.shape() * dk, w.scale() * dl);
            assert!(best >= other - 1e-6, "({dk}, {dl}): {other} > {best}");
        }
    }
    let w = Weibull::fit_high(&distances, 20, 1.0).unwrap();
    // The CDF rises across the tail: 0 well below it, 1 well above.
    assert!(w.cdf(smallest - 20.0) < 1e-6);
    assert!(w.cdf(tail[0] + 20.0) > 1.0 - 1e-6);
    assert!(w.cdf(smallest) < w.cdf(tail[0]));
    // No spread, no fit.
    assert!(Weibull::fit_high(&[1.0, 1.0, 1.0], 20, 1.0).is_err());
    assert!(Weibull::fit_high(&[1.0], 20, 1.0).is_err());
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(Weibull::fit_high(&distances, 20, bad).is_err(), "{bad}");
    }
}

#[test]
fn openmax_matches_its_formula() {
    let (x, labels) = logits(400, 4.0, 7);
    let openmax = OpenMax::default()
        .fit_logits(x.view(), labels.view())
        .unwrap();
    // Class means of the correctly classified samples.
    for k in 0..C {
        let rows: Vec<usize> = (0..x.nrows())
            .filter(|&i| {
                labels[i] == k as i64
                    && (0..C)
                        .max_by(|&a, &b| x[[i, a]].total_cmp(&x[[i, b]]))
                        .unwrap()
                        == k
            })
            .collect();
        let mean = x
            .select(Axis(0), &rows)
            .mapv(f64::from)
            .mean_axis(Axis(0))
            .unwrap();
        for (a, b) in openmax.means().row(k).iter().zip(&mean) {
            assert!((a - b).abs() < 1e-9);
        }
    }
    let (test, _) = logits(40, 2.0, 8);
    let expected: Vec<f64> = test
        .rows()
        .into_iter()
        .map(|r| {
            let mut order: Vec<usize> = (0..C).collect();
            order.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
            let mut revised = [0.0; C];
            let mut unknown = 0.0;
            for k in 0..C {
                let rank = order.iter().position(|&o| o == k).unwrap();
                let omega = if rank < 3 {
                    (3 - rank) as f64 / 3.0
                } else {
                    0.0
                };
                let d = (0..C)
                    .map(|c| (f64::from(r[c]) - openmax.means()[[k, c]]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let w = openmax.weibulls()[k].unwrap().cdf(d);
                revised[k] = f64::from(r[k]) * (1.0 - w * omega);
                unknown += f64::from(r[k]) - revised[k];
            }
            let denom: f64 = revised.iter().map(|v| v.exp()).sum::<f64>() + unknown.exp();
            unknown.exp() / denom
        })
        .collect();
    let scores = openmax.score_logits(test.view()).unwrap();
    for (s, e) in scores.iter().zip(&expected) {
        assert!((f64::from(*s) - e).abs() < 1e-6, "{s} vs {e}");
    }
    // Each tail starts at 1 once shifted (libMR >= 0.1.9, OpenOOD's);
    // 10 000 reproduces older libMR: the same tail, shifted 9 999 further.
    assert_eq!(OpenMax::default().translate(), 1.0);
    let old = OpenMax::default()
        .with_translate(10_000.0)
        .unwrap()
        .fit_logits(x.view(), labels.view())
        .unwrap();
    for k in 0..C {
        let (new, old) = (openmax.weibulls()[k].unwrap(), old.weibulls()[k].unwrap());
        assert!((old.shift() - new.shift() - 9_999.0).abs() < 1e-6);
    }
    assert_ne!(old.score_logits(test.view()).unwrap(), scores);
    assert!(OpenMax::default().with_translate(0.0).is_err());
    assert!(OpenMax::default().with_translate(f64::NAN).is_err());
}

/// ID logits: one class well above the others. OOD logits: flat and low,
/// or two classes high together (far from every class's mean logits,
/// where OpenMax is meant to work: flat low logits have little mass to
/// move to its unknown class).
#[test]
fn every_detector_separates_confident_from_ambiguous_logits() {
    let (fit, labels) = logits(800, 5.0, 9);
    let (id, _) = logits(300, 5.0, 10);
    let mut rng = StdRng::seed_from_u64(11);
    let flat = Array2::from_shape_fn((300, C), |_| (0.5 * normal(&mut rng)) as f32);
    let two = Array2::from_shape_fn((300, C), |(i, j)| {
        let high = j == i % C || j == (i + 1) % C;
        ((if high { 6.0 } else { 0.0 }) + 0.3 * normal(&mut rng)) as f32
    });
    let auroc = |d: &dyn ScoreLogits, ood: &Array2<f32>| {
        let r = bench_metrics(
            &d.score_logits(id.view()).unwrap(),
            &d.score_logits(ood.view()).unwrap(),
            &["auroc"],
        )
        .unwrap();
        r.get("auroc").unwrap()
    };
    let ts = TemperatureScaling::new()
        .fit_logits(fit.view(), labels.view())
        .unwrap();
    let klm = Klm::new().fit_logits(fit.view()).unwrap();
    let openmax = OpenMax::default()
        .fit_logits(fit.view(), labels.view())
        .unwrap();
    for (name, d, ood) in [
        ("temperature scaling", &ts as &dyn ScoreLogits, &flat),
        ("temperature scaling", &ts, &two),
        ("KLM", &klm, &flat),
        ("KLM", &klm, &two),
        ("OpenMax", &openmax, &two),
    ] {
        let a = auroc(d, ood);
        assert!(a >= 0.95, "{name}: {a}");
    }
}

/// A "network" whose logits are its inputs `(N, 1, 1, C)`.
fn identity_model() -> impl oodkit::model::Model + Send + Sync {
    from_fn(|x: ArrayView4<f32>| Ok(x.to_shape((x.shape()[0], C))?.to_owned()))
}

fn images(x: &Array2<f32>) -> Array4<f32> {
    x.clone()
        .into_shape_with_order((x.nrows(), 1, 1, C))
        .unwrap()
}

#[test]
fn fitting_through_a_model_equals_fitting_its_logits() {
    let (x, labels) = logits(300, 3.0, 12);
    let data = OodDataset::from_arrays(images(&x), labels.clone()).unwrap();
    let batches = data.prepare(&PrepareConfig::new(7)).unwrap();
    let model = identity_model();
    let ts = TemperatureScaling::new()
        .fit(&model, Some(&batches))
        .unwrap();
    assert_eq!(
        ts.fitted(),
        &TemperatureScaling::new()
            .fit_logits(x.view(), labels.view())
            .unwrap()
    );
    let klm = Klm::new().fit(&model, Some(&batches)).unwrap();
    assert_eq!(klm.fitted(), &Klm::new().fit_logits(x.view()).unwrap());
    let openmax = OpenMax::default().fit(&model, Some(&batches)).unwrap();
    assert_eq!(
        openmax.fitted(),
        &OpenMax::default()
            .fit_logits(x.view(), labels.view())
            .unwrap()
    );
    // Scoring through the model scores its logits.
    let scored = openmax.score(&batches).unwrap();
    assert_eq!(
        scored.scores,
        openmax.fitted().score_logits(x.view()).unwrap()
    );
}

#[test]
fn bad_input_is_an_error() {
    let (x, labels) = logits(100, 3.0, 13);
    let model = identity_model();
    // No fit data; fit data without labels (KLM needs none).
    assert!(matches!(
        TemperatureScaling::new().fit(&model, None).map(drop),
        Err(Error::MissingInput { .. })
    ));
    assert!(matches!(
        Klm::new().fit(&model, None).map(drop),
        Err(Error::MissingInput { .. })
    ));
    let batches = oodkit::Batch::new(images(&x));
    for err in [
        TemperatureScaling::new()
            .fit(&model, Some(&batches))
            .map(drop)
            .unwrap_err(),
        OpenMax::default()
            .fit(&model, Some(&batches))
            .map(drop)
            .unwrap_err(),
    ] {
        assert!(err.to_string().contains("labels"), "{err}");
    }
    Klm::new().fit(&model, Some(&batches)).unwrap();
    // Labels out of range, of another length; NaN and empty logits.
    let bad_labels = labels.mapv(|l| if l == 2 { 9 } else { l });
    assert!(matches!(
        TemperatureScaling::new().fit_logits(x.view(), bad_labels.view()),
        Err(Error::InvalidLabel { label: 9, .. })
    ));
    assert!(matches!(
        OpenMax::default().fit_logits(x.view(), labels.slice(ndarray::s![..50])),
        Err(Error::LengthMismatch { .. })
    ));
    let mut nan = x.clone();
    nan[[5, 1]] = f32::NAN;
    assert!(matches!(
        Klm::new().fit_logits(nan.view()),
        Err(Error::NotANumber { .. })
    ));
    assert!(matches!(
        Klm::new().fit_logits(Array2::zeros((0, C)).view()),
        Err(Error::Empty { .. })
    ));
    // OpenMax: absurd parameters; a class without two right samples.
    assert!(OpenMax::new(1, 3).is_err() && OpenMax::new(20, 0).is_err());
    assert!(matches!(
        OpenMax::new(20, C + 1)
            .unwrap()
            .fit_logits(x.view(), labels.view()),
        Err(Error::InvalidParameter { .. })
    ));
    let mut lonely = labels.clone();
    lonely.mapv_inplace(|l| if l == 1 { 0 } else { l });
    lonely[1] = 1;
    let err = OpenMax::default()
        .fit_logits(x.view(), lonely.view())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidLabel { label: 1, .. }), "{err}");
    // A class absent from the fit labels has no model: w = 1.
    let absent = labels.mapv(|l| if l == 3 { 0 } else { l });
    let fitted = OpenMax::default()
        .fit_logits(x.view(), absent.view())
        .unwrap();
    assert!(fitted.weibulls()[3].is_none() && fitted.weibulls()[0].is_some());
    // Scoring logits of another width.
    let klm = Klm::new().fit_logits(x.view()).unwrap();
    assert!(matches!(
        klm.score_logits(Array2::zeros((2, C + 1)).view()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(
        FittedTemperatureScaling::new(0.0).is_err()
            && FittedTemperatureScaling::new(f32::NAN).is_err()
    );
    assert!(FittedKlm::new(array![[0.5, 0.6], [0.5, 0.5]]).is_err());
}

#[test]
fn fitted_logit_detectors_round_trip_and_load_as_any() {
    let (x, labels) = logits(200, 3.0, 14);
    let (test, _) = logits(50, 2.0, 15);
    let dir = tempfile::tempdir().unwrap();
    let model = from_fn_with_features(["logits"], |x: ArrayView4<f32>| {
        let l = x.to_shape((x.shape()[0], C))?.to_owned();
        Ok((vec![l.clone()], l))
    });
    let batch = || oodkit::Batch::new(images(&test));
    let bits = |a: &Array1<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    macro_rules! round_trip {
        ($fitted:expr, $ty:ty, $kind:expr) => {{
            let fitted = $fitted;
            let path = dir.path().join(format!("{}.oodkit", $kind));
            fitted.save(&path).unwrap();
            let loaded = <$ty>::load(&path).unwrap();
            assert_eq!(loaded, fitted);
            let expected = fitted.score_logits(test.view()).unwrap();
            assert_eq!(
                bits(&loaded.score_logits(test.view()).unwrap()),
                bits(&expected)
            );
            let any = AnyDetector::load(&path).unwrap();
            assert_eq!(any.kind(), $kind);
            assert_eq!(
                bits(&any.score_batch(&model, batch()).unwrap().scores),
                bits(&expected)
            );
            assert_eq!(fitted.kind(), $kind);
        }};
    }
    round_trip!(
        TemperatureScaling::new()
            .fit_logits(x.view(), labels.view())
            .unwrap(),
        FittedTemperatureScaling,
        "TemperatureScaling"
    );
    round_trip!(Klm::new().fit_logits(x.view()).unwrap(), FittedKlm, "KLM");
    let absent = labels.mapv(|l| if l == 2 { 1 } else { l });
    round_trip!(
        OpenMax::default()
            .fit_logits(x.view(), absent.view())
            .unwrap(),
        FittedOpenMax,
        "OpenMax"
    );
    round_trip!(
        OpenMax::default()
            .fit_logits(x.view(), labels.view())
            .unwrap(),
        FittedOpenMax,
        "OpenMax"
    );
}

/// Many logits are scored in parts on every core: the scores are those of
/// the rows one at a time, in order, and the NaN reported is the first.
#[test]
fn many_logits_score_in_parts_as_row_by_row() {
    let mut rng = StdRng::seed_from_u64(35);
    let logits = Array2::from_shape_simple_fn((30_000, 10), || 4.0 * rng.random::<f32>());
    let mls = Mls::new();
    let all = mls.score_logits(logits.view()).unwrap();
    for i in [0, 1, 6_553, 6_554, 17_000, 29_999] {
        let one = mls
            .score_logits(logits.slice(ndarray::s![i..=i, ..]))
            .unwrap();
        assert_eq!(all[i], one[0], "row {i}");
    }
    let mut nan = logits.clone();
    nan[[21_000, 3]] = f32::NAN;
    nan[[27_000, 0]] = f32::NAN;
    assert!(matches!(
        mls.score_logits(nan.view()),
        Err(Error::NotANumber { index: 21_000, .. })
    ));
}
