//! The OpenOOD post-hoc feature detectors (DICE, VRA, fDBD, NCI, NNGuide,
//! GradNorm, Residual, GMM) against direct formulas in f64 on small random
//! data, GradNorm's closed form against burn's autodiff, the Gaussian-blob
//! problem, streaming vs one-shot fits, and bad input.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView4, Axis, array};
use oodkit::Error;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{
    Detector, Dice, Fdbd, FdbdNormalizer, FeatureDetector, Gmm, GradNorm, Nci, NnGuide,
    PrincipalDims, Rectification, Residual, ScoreFeatures, Vim, Vra,
};
use oodkit::metrics::bench_metrics;
use oodkit::model::{FnFeatureModel, from_fn_with_features};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

type Forward =
    Box<dyn Fn(ArrayView4<f32>) -> oodkit::Result<(Vec<Array2<f32>>, Array2<f32>)> + Send + Sync>;

/// A normal sample (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `n` non-negative rows of `d` features (as after a ReLU), class
/// `i % classes` centred on 3 in unit `class`, spread 0.5.
fn features(n: usize, d: usize, classes: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        let centre = if j as i64 == labels[i] { 3.0 } else { 0.5 };
        (centre + 0.5 * normal(&mut rng)).max(0.0) as f32
    });
    (x, labels)
}

/// A head reading class c off unit c, with small weights elsewhere.
fn head(classes: usize, d: usize) -> (Array2<f32>, Array1<f32>) {
    let w = Array2::from_shape_fn((classes, d), |(c, j)| {
        if c == j {
            1.5
        } else {
            0.2 * (((c + 2 * j) % 5) as f32 - 2.0) / 2.0
        }
    });
    let b = Array1::from_shape_fn(classes, |c| 0.1 * c as f32 - 0.1);
    (w, b)
}

fn to64(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

fn logits64(x: &Array2<f64>, w: &Array2<f32>, b: &Array1<f32>) -> Array2<f64> {
    x.dot(&to64(w).t()) + &b.mapv(f64::from)
}

fn lse(row: ArrayView1<f64>) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn argmax(row: ArrayView1<f64>) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap()
}

/// NumPy's `percentile` (linear), by a full sort.
fn numpy_quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

fn assert_close(found: &Array1<f32>, expected: &[f64], rel: f64, what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}");
    for (i, (&f, &e)) in found.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(f) - e).abs() <= rel * e.abs().max(1.0),
            "{what}: sample {i}: found {f}, expected {e}"
        );
    }
}

const D: usize = 6;
const C: usize = 3;

#[test]
fn dice_matches_its_formula() {
    let (fit, labels) = features(120, D, C, 1);
    let (test, _) = features(30, D, C, 2);
    let (w, b) = head(C, D);
    for sparsity in [0.0, 0.5, 0.9] {
        let dice = Dice::new(sparsity)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        let mean = to64(&fit).mean_axis(Axis(0)).unwrap();
        let contrib = &to64(&w) * &mean;
        let threshold = numpy_quantile(contrib.iter().copied().collect(), sparsity);
        let masked = Array2::from_shape_fn((C, D), |(c, j)| {
            if contrib[[c, j]] > threshold {
                f64::from(w[[c, j]])
            } else {
                0.0
            }
        });
        let logits = to64(&test).dot(&masked.t()) + &b.mapv(f64::from);
        let expected: Vec<f64> = logits.rows().into_iter().map(|r| -lse(r)).collect();
        assert_close(
            &dice.score_features(test.view()).unwrap(),
            &expected,
            1e-5,
            &format!("DICE p = {sparsity}"),
        );
        let kept = masked.iter().filter(|&&m| m != 0.0).count();
        assert_eq!(dice.kept(), kept, "{sparsity}");
    }
}

#[test]
fn vra_matches_its_formula_both_ways() {
    let (fit, labels) = features(100, D, C, 3);
    let (test, _) = features(30, D, C, 4);
    let (w, b) = head(C, D);
    let all: Vec<f64> = fit.iter().map(|&v| f64::from(v)).collect();
    let (lo, hi) = (
        numpy_quantile(all.clone(), 0.1),
        numpy_quantile(all.clone(), 0.9),
    );
    for rectification in [
        Rectification::Clip,
        Rectification::Piecewise { gamma: 0.25 },
    ] {
        let vra = Vra::default()
            .with_rectification(rectification)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        let (l, h) = vra.thresholds();
        assert!((f64::from(l) - lo).abs() < 1e-6 && (f64::from(h) - hi).abs() < 1e-6);
        let rect = to64(&test).mapv(|z| match rectification {
            Rectification::Clip => z.clamp(lo, hi),
            Rectification::Piecewise { gamma } => {
                if z < lo {
                    0.0
                } else if z > hi {
                    hi
                } else {
                    z + f64::from(gamma)
                }
            }
        });
        let expected: Vec<f64> = logits64(&rect, &w, &b)
            .rows()
            .into_iter()
            .map(|r| -lse(r))
            .collect();
        assert_close(
            &vra.score_features(test.view()).unwrap(),
            &expected,
            1e-5,
            &format!("VRA {rectification:?}"),
        );
    }
}

#[test]
fn fdbd_and_nci_match_their_formulas() {
    let (fit, labels) = features(90, D, C, 5);
    let (test, _) = features(25, D, C, 6);
    let (w, b) = head(C, D);
    let mean = to64(&fit).mean_axis(Axis(0)).unwrap();
    let w64 = to64(&w);
    let logits = logits64(&to64(&test), &w, &b);
    for normalizer in [FdbdNormalizer::DistanceToMean, FdbdNormalizer::FeatureNorm] {
        let fdbd = Fdbd::new(normalizer)
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        let expected: Vec<f64> = (0..test.nrows())
            .map(|i| {
                let l = logits.row(i);
                let p = argmax(l);
                let mut sum = 0.0;
                for j in 0..C {
                    if j != p {
                        let gap = &w64.row(p) - &w64.row(j);
                        sum += (l[p] - l[j]).abs() / gap.dot(&gap).sqrt();
                    }
                }
                let f = test.row(i).mapv(f64::from);
                let centred = match normalizer {
                    FdbdNormalizer::DistanceToMean => &f - &mean,
                    FdbdNormalizer::FeatureNorm => f,
                };
                -sum / centred.dot(&centred).sqrt()
            })
            .collect();
        assert_close(
            &fdbd.score_features(test.view()).unwrap(),
            &expected,
            1e-5,
            &format!("fDBD {normalizer:?}"),
        );
    }
    for alpha in [0.0, 1e-4, 0.3] {
        let nci = Nci::new(alpha)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        let expected: Vec<f64> = (0..test.nrows())
            .map(|i| {
                let p = argmax(logits.row(i));
                let f = test.row(i).mapv(f64::from);
                let centred = &f - &mean;
                let align = w64.row(p).dot(&centred) / centred.dot(&centred).sqrt();
                -(align + alpha * f.mapv(f64::abs).sum())
            })
            .collect();
        assert_close(
            &nci.score_features(test.view()).unwrap(),
            &expected,
            1e-5,
            &format!("NCI α = {alpha}"),
        );
    }
}

/// GradNorm's closed form against the gradient burn's autodiff takes of
/// the same loss with respect to the same weights.
#[cfg(feature = "burn")]
#[test]
fn gradnorm_equals_the_autodiff_gradient_norm() {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Tensor, TensorData};

    let (test, _) = features(12, D, C, 7);
    let (w, b) = head(C, D);
    let grad = GradNorm::new()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(test.view(), Array1::zeros(12).view())
        .unwrap();
    let scores = grad.score_features(test.view()).unwrap();
    let device = Device::flex().autodiff();
    for (i, row) in test.rows().into_iter().enumerate() {
        let weights = Tensor::<2>::from_data(
            TensorData::new(w.iter().copied().collect::<Vec<f32>>(), [C, D]),
            &device,
        )
        .require_grad();
        let bias = Tensor::<2>::from_data(TensorData::new(b.to_vec(), [1, C]), &device);
        let f = Tensor::<2>::from_data(TensorData::new(row.to_vec(), [1, D]), &device);
        let logits = f.matmul(weights.clone().transpose()) + bias;
        // All-ones targets: L = −Σ_c log p_c.
        let loss = log_softmax(logits, 1).sum().neg();
        let grads = loss.backward();
        let g: Vec<f32> = weights
            .grad(&grads)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        let l1: f64 = g.iter().map(|v| f64::from(v.abs())).sum();
        assert!(
            (f64::from(-scores[i]) - l1).abs() <= 1e-4 * l1.max(1.0),
            "sample {i}: closed form {}, autodiff {l1}",
            -scores[i]
        );
    }
}

#[test]
fn residual_is_vims_residual_and_matches_an_exact_subspace() {
    // Fit features on the plane z = 0 of three dimensions, head origin 0:
    // the residual of (x, y, z) is |z|.
    let mut rng = StdRng::seed_from_u64(8);
    let fit = Array2::from_shape_fn(
        (50, 3),
        |(_, j)| {
            if j == 2 { 0.0 } else { normal(&mut rng) as f32 }
        },
    );
    let w = array![[1.0_f32, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let b = Array1::zeros(2);
    let residual = Residual::new(PrincipalDims::Count(2))
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(fit.view(), Array1::zeros(50).view())
        .unwrap();
    assert_eq!(residual.principal_dims(), 2);
    let test = array![[1.0_f32, 2.0, 0.0], [0.0, 0.0, -4.0], [3.0, -1.0, 0.5]];
    assert_close(
        &residual.score_features(test.view()).unwrap(),
        &[0.0, 4.0, 0.5],
        1e-5,
        "Residual plane",
    );
    // On general data: ViM = α·residual − energy, for the same subspace.
    let (fit, labels) = features(150, D, C, 9);
    let (test, _) = features(30, D, C, 10);
    let (w, b) = head(C, D);
    let dims = PrincipalDims::Count(3);
    let residual = Residual::new(dims)
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    let vim = Vim::new(dims)
        .unwrap()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    let logits = logits64(&to64(&test), &w, &b);
    let r = residual.score_features(test.view()).unwrap();
    let expected: Vec<f64> = logits
        .rows()
        .into_iter()
        .zip(&r)
        .map(|(l, &r)| vim.alpha() * f64::from(r) - lse(l))
        .collect();
    assert_close(
        &vim.score_features(test.view()).unwrap(),
        &expected,
        1e-4,
        "ViM from Residual",
    );
}

#[test]
fn nnguide_matches_a_brute_force_search() {
    let (fit, labels) = features(300, D, C, 11);
    let (test, _) = features(20, D, C, 12);
    let (w, b) = head(C, D);
    let unit = |x: &Array2<f32>| -> Array2<f64> {
        let mut x = to64(x);
        for mut r in x.rows_mut() {
            let n = r.dot(&r).sqrt();
            r /= n;
        }
        x
    };
    for (k, fraction) in [(1, 1.0), (5, 0.1), (7, 0.35)] {
        let guide = NnGuide::new(k, fraction)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        // The bank: sample i when ⌊(i+1)·fraction⌋ > ⌊i·fraction⌋.
        let kept: Vec<usize> = (0..fit.nrows())
            .filter(|&i| ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor())
            .collect();
        assert_eq!(guide.len(), kept.len(), "fraction {fraction}");
        let fit_logits = logits64(&to64(&fit), &w, &b);
        let fit_unit = unit(&fit);
        let bank: Vec<Array1<f64>> = kept
            .iter()
            .map(|&i| &fit_unit.row(i) * lse(fit_logits.row(i)))
            .collect();
        let test_unit = unit(&test);
        let test_logits = logits64(&to64(&test), &w, &b);
        let expected: Vec<f64> = (0..test.nrows())
            .map(|i| {
                let mut sims: Vec<f64> = bank.iter().map(|g| g.dot(&test_unit.row(i))).collect();
                sims.sort_by(|a, b| b.total_cmp(a));
                let guidance = sims[..k].iter().sum::<f64>() / k as f64;
                -guidance * lse(test_logits.row(i))
            })
            .collect();
        assert_close(
            &guide.score_features(test.view()).unwrap(),
            &expected,
            1e-5,
            &format!("NNGuide k = {k}"),
        );
    }
}

/// Gauss-Jordan inverse and determinant, with partial pivoting.
fn inverse_and_det(a: &Array2<f64>) -> (Array2<f64>, f64) {
    let n = a.nrows();
    let mut m = ndarray::concatenate![Axis(1), a.clone(), Array2::eye(n)];
    let mut det = 1.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[[i, col]].abs().total_cmp(&m[[j, col]].abs()))
            .unwrap();
        if pivot != col {
            det = -det;
            for k in 0..2 * n {
                m.swap([col, k], [pivot, k]);
            }
        }
        let p = m[[col, col]];
        det *= p;
        m.row_mut(col).mapv_inplace(|v| v / p);
        for r in 0..n {
            if r != col {
                let f = m[[r, col]];
                let row = m.row(col).to_owned();
                m.row_mut(r).scaled_add(-f, &row);
            }
        }
    }
    (m.slice(ndarray::s![.., n..]).to_owned(), det)
}

#[test]
fn gmm_matches_the_mixture_density() {
    let (fit, labels) = features(150, 4, C, 13);
    let (test, _) = features(20, 4, C, 14);
    for reg in [0.0, 1e-3] {
        let gmm = Gmm::new(reg)
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap();
        let x = to64(&fit);
        let mut components = Vec::new();
        for c in 0..C as i64 {
            let rows: Vec<usize> = (0..x.nrows()).filter(|&i| labels[i] == c).collect();
            let xc = x.select(Axis(0), &rows);
            let mu = xc.mean_axis(Axis(0)).unwrap();
            let centred = &xc - &mu;
            let mut cov = centred.t().dot(&centred) / rows.len() as f64;
            let ridge = reg * cov.diag().sum() / 4.0;
            cov.diag_mut().mapv_inplace(|v| v + ridge);
            let (inv, det) = inverse_and_det(&cov);
            let weight = rows.len() as f64 / x.nrows() as f64;
            components.push((mu, inv, det, weight));
        }
        let expected: Vec<f64> = test
            .rows()
            .into_iter()
            .map(|f| {
                let f = f.mapv(f64::from);
                let density: f64 = components
                    .iter()
                    .map(|(mu, inv, det, weight)| {
                        let d = &f - mu;
                        let q = d.dot(&inv.dot(&d));
                        weight * (-0.5 * q).exp()
                            / ((2.0 * std::f64::consts::PI).powi(4) * det).sqrt()
                    })
                    .sum();
                -density.ln()
            })
            .collect();
        assert_close(
            &gmm.score_features(test.view()).unwrap(),
            &expected,
            1e-6,
            &format!("GMM reg = {reg}"),
        );
    }
}

/// A feature model over "images" `(N, 1, 1, D)` whose penultimate features
/// are the pixels; logits = f Wᵀ + b.
fn pixel_model(w: Array2<f32>, b: Array1<f32>) -> FnFeatureModel<Forward> {
    let d = w.ncols();
    let (wf, bf) = (w.clone(), b.clone());
    let forward: Forward = Box::new(move |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, d))?.to_owned();
        let logits = f.dot(&wf.t()) + &bf;
        Ok((vec![f], logits))
    });
    from_fn_with_features(["pixels"], forward)
        .with_head(w, b)
        .unwrap()
}

fn as_images(x: &Array2<f32>) -> Array4<f32> {
    x.clone()
        .into_shape_with_order((x.nrows(), 1, 1, x.ncols()))
        .unwrap()
}

/// Fitted through a model in batches of 7 and on the whole array at once,
/// each detector gives the same scores; and the model's head serves when
/// none is given.
#[test]
fn streaming_fit_equals_one_shot_fit() {
    let (x, labels) = features(210, D, C, 15);
    let (test, _) = features(40, D, C, 16);
    let (w, b) = head(C, D);
    let model = pixel_model(w.clone(), b.clone());
    let data = OodDataset::from_arrays(as_images(&x), labels.clone()).unwrap();
    let batches = data.prepare(&PrepareConfig::new(7)).unwrap();

    macro_rules! check {
        ($make:expr) => {{
            let streamed = $make.fit(&model, Some(&batches)).unwrap();
            let whole = $make
                .with_head(w.clone(), b.clone())
                .unwrap()
                .fit_features(x.view(), labels.view())
                .unwrap();
            let a = streamed.fitted().score_features(test.view()).unwrap();
            let e = whole.score_features(test.view()).unwrap();
            for (i, (p, q)) in a.iter().zip(&e).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                    "{}: sample {i}: {p} vs {q}",
                    streamed.name()
                );
            }
            // Through the model, the same scores as on its features.
            let through = streamed
                .score(
                    &OodDataset::from_arrays(as_images(&test), Array1::zeros(40))
                        .unwrap()
                        .prepare(&PrepareConfig::new(16))
                        .unwrap(),
                )
                .unwrap();
            for (p, q) in through.scores.iter().zip(&a) {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0));
            }
        }};
    }
    check!(Dice::default());
    check!(Vra::default());
    check!(Fdbd::default());
    check!(Nci::default());
    check!(NnGuide::new(5, 0.2).unwrap());
    check!(GradNorm::new());
    check!(Residual::new(PrincipalDims::Count(2)).unwrap());
    // GMM has no head.
    let streamed = Gmm::default().fit(&model, Some(&batches)).unwrap();
    let whole = Gmm::default()
        .fit_features(x.view(), labels.view())
        .unwrap();
    let a = streamed.fitted().score_features(test.view()).unwrap();
    let e = whole.score_features(test.view()).unwrap();
    for (p, q) in a.iter().zip(&e) {
        assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "GMM {p} vs {q}");
    }
    // GradNorm learns nothing of the data: no fit data needed.
    let without = GradNorm::new().fit(&model, None).unwrap();
    assert_eq!(
        without.fitted().score_features(test.view()).unwrap(),
        GradNorm::new()
            .fit(&model, Some(&batches))
            .unwrap()
            .fitted()
            .score_features(test.view())
            .unwrap()
    );
}

/// The blob problem: three classes in the first three units, read off by
/// the head; OOD inputs are a blob in the units the head ignores (large
/// activations, no class evidence). Every method separates them.
#[test]
fn every_detector_separates_the_blobs() {
    let d = 8;
    let mut rng = StdRng::seed_from_u64(17);
    let mut blob = |n: usize, ood: bool| -> (Array2<f32>, Array1<i64>) {
        let labels: Array1<i64> = (0..n).map(|i| (i % C) as i64).collect();
        let x = Array2::from_shape_fn((n, d), |(i, j)| {
            let on = if ood { j == 5 } else { j as i64 == labels[i] };
            ((if on { 4.0 } else { 0.3 }) + 0.4 * normal(&mut rng)).max(0.0) as f32
        });
        (x, labels)
    };
    let (fit, labels) = blob(600, false);
    let (id, _) = blob(300, false);
    let (ood, _) = blob(300, true);
    let w = Array2::from_shape_fn((C, d), |(c, j)| if c == j { 1.0 } else { 0.0 });
    let b = Array1::zeros(C);
    let check = |name: &str, scores: (Array1<f32>, Array1<f32>)| {
        let report = bench_metrics(&scores.0, &scores.1, &["auroc"]).unwrap();
        let auroc = report.get("auroc").unwrap();
        assert!(auroc >= 0.95, "{name}: AUROC {auroc}");
    };
    macro_rules! blobs {
        ($name:expr, $detector:expr) => {{
            let fitted = $detector.fit_features(fit.view(), labels.view()).unwrap();
            check(
                $name,
                (
                    fitted.score_features(id.view()).unwrap(),
                    fitted.score_features(ood.view()).unwrap(),
                ),
            );
        }};
    }
    let with_head = |weights: &Array2<f32>| (weights.clone(), b.clone());
    let (hw, hb) = with_head(&w);
    blobs!(
        "DICE",
        Dice::default().with_head(hw.clone(), hb.clone()).unwrap()
    );
    blobs!(
        "VRA",
        Vra::default().with_head(hw.clone(), hb.clone()).unwrap()
    );
    blobs!(
        "fDBD",
        Fdbd::default().with_head(hw.clone(), hb.clone()).unwrap()
    );
    blobs!(
        "NCI",
        Nci::default().with_head(hw.clone(), hb.clone()).unwrap()
    );
    blobs!(
        "NNGuide",
        NnGuide::new(10, 0.1)
            .unwrap()
            .with_head(hw.clone(), hb.clone())
            .unwrap()
    );
    blobs!(
        "GradNorm",
        GradNorm::new().with_head(hw.clone(), hb.clone()).unwrap()
    );
    blobs!(
        "Residual",
        Residual::new(PrincipalDims::Count(3))
            .unwrap()
            .with_head(hw.clone(), hb.clone())
            .unwrap()
    );
    blobs!("GMM", Gmm::default());
}

#[test]
fn bad_input_is_an_error() {
    let invalid = |r: Result<(), Error>, what: &str| {
        assert!(
            matches!(r, Err(Error::InvalidParameter { .. })),
            "{what}: {r:?}"
        );
    };
    invalid(Dice::new(1.0).map(drop), "sparsity 1");
    invalid(Dice::new(-0.1).map(drop), "sparsity < 0");
    invalid(Dice::new(f64::NAN).map(drop), "sparsity NaN");
    invalid(Vra::new(0.9, 0.1).map(drop), "VRA quantiles reversed");
    invalid(Vra::new(0.1, 1.5).map(drop), "VRA quantile > 1");
    invalid(
        Vra::default()
            .with_rectification(Rectification::Piecewise { gamma: f32::NAN })
            .map(drop),
        "VRA γ NaN",
    );
    invalid(Nci::new(-1.0).map(drop), "NCI α < 0");
    invalid(Nci::new(f64::INFINITY).map(drop), "NCI α ∞");
    invalid(NnGuide::new(0, 0.1).map(drop), "NNGuide k = 0");
    invalid(NnGuide::new(3, 0.0).map(drop), "NNGuide fraction 0");
    invalid(NnGuide::new(3, 1.5).map(drop), "NNGuide fraction > 1");
    invalid(Gmm::new(-1.0).map(drop), "GMM reg < 0");
    invalid(
        Residual::new(PrincipalDims::Count(0)).map(drop),
        "Residual 0 dims",
    );

    let (fit, labels) = features(60, D, C, 18);
    let (w, b) = head(C, D);
    // A head of another shape, or with NaN.
    assert!(
        Dice::default()
            .with_head(w.clone(), Array1::zeros(2))
            .is_err()
    );
    let mut nan = w.clone();
    nan[[0, 0]] = f32::NAN;
    assert!(Fdbd::default().with_head(nan, b.clone()).is_err());
    // Precomputed features without a head: say how to give one.
    for err in [
        Dice::default()
            .fit_features(fit.view(), labels.view())
            .unwrap_err(),
        Fdbd::default()
            .fit_features(fit.view(), labels.view())
            .unwrap_err(),
        GradNorm::new()
            .fit_features(fit.view(), labels.view())
            .unwrap_err(),
        NnGuide::new(2, 0.5)
            .unwrap()
            .fit_features(fit.view(), labels.view())
            .unwrap_err(),
    ] {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("with_head"), "{err}");
    }
    // A head that does not feed these features.
    let err = Nci::default()
        .with_head(head(C, D + 1).0, b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // fDBD without a boundary: one class, or two equal weight rows.
    let err = Fdbd::default()
        .with_head(Array2::ones((1, D)), Array1::zeros(1))
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
    let mut twins = w.clone();
    let first = twins.row(0).to_owned();
    twins.row_mut(2).assign(&first);
    let err = Fdbd::default()
        .with_head(twins, b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap_err();
    assert!(err.to_string().contains("same weight vector"), "{err}");
    // NNGuide's bank smaller than k (the defaults on 60 samples: a bank of 0).
    let err = NnGuide::default()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap_err();
    assert!(err.to_string().contains("guide bank"), "{err}");
    // GMM: one sample of a class, and a singular class without regularisation.
    let err = Gmm::default()
        .fit_features(
            fit.view(),
            labels.mapv(|l| if l == 2 { 0 } else { l }).view(),
        )
        .map(drop);
    assert!(err.is_ok(), "{err:?}");
    let mut lonely = labels.clone();
    lonely[0] = 7;
    let err = Gmm::default()
        .fit_features(fit.view(), lonely.view())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidLabel { label: 7, .. }), "{err}");
    let mut flat = fit.clone();
    flat.column_mut(3).fill(1.0);
    let err = Gmm::new(0.0)
        .unwrap()
        .fit_features(flat.view(), labels.view())
        .unwrap_err();
    assert!(err.to_string().contains("singular"), "{err}");
    // A regularised GMM fits the same data.
    Gmm::new(1e-3)
        .unwrap()
        .fit_features(flat.view(), labels.view())
        .unwrap();
    // NaN features and the wrong width at scoring.
    let dice = Dice::default()
        .with_head(w.clone(), b.clone())
        .unwrap()
        .fit_features(fit.view(), labels.view())
        .unwrap();
    let mut bad = fit.clone();
    bad[[3, 1]] = f32::NAN;
    assert!(matches!(
        dice.score_features(bad.view()),
        Err(Error::NotANumber { .. })
    ));
    assert!(matches!(
        dice.score_features(Array2::zeros((2, D + 1)).view()),
        Err(Error::ShapeMismatch { .. })
    ));
    // A model without a head: the head-reading detectors say so; GradNorm
    // too, with no fit data.
    let headless = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, D))?.to_owned();
        let logits = f.slice(ndarray::s![.., ..C]).to_owned();
        Ok((vec![f], logits))
    });
    let data = OodDataset::from_arrays(as_images(&fit), labels.clone()).unwrap();
    let batches = data.prepare(&PrepareConfig::new(16)).unwrap();
    assert!(matches!(
        Dice::default().fit(&headless, Some(&batches)).map(drop),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        GradNorm::new().fit(&headless, None).map(drop),
        Err(Error::Unsupported { .. })
    ));
    // NNGuide needs only the model's logits.
    NnGuide::new(3, 0.5)
        .unwrap()
        .fit(&headless, Some(&batches))
        .unwrap();
    // Fit data is required, except by GradNorm.
    assert!(matches!(
        Fdbd::default()
            .fit(pixel_model(w.clone(), b.clone()), None)
            .map(drop),
        Err(Error::MissingInput { .. })
    ));
}
