//! Mahalanobis / RMDS / KNN / ViM / SHE / Gram against direct (slow)
//! formulas, streaming vs one-shot fits, multi-layer aggregation, the
//! Gaussian-blob problem, singular covariances and bad input.

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4, Axis, array, s};
use oodkit::Error;
use oodkit::datasets::{OodDataset, PrepareConfig};
use oodkit::detectors::{
    Aggregation, Aggregator, Detector, FeatureDetector, Gram, Knn, Mahalanobis, PrincipalDims,
    Rmds, ScoreFeatures, She, Vim,
};
use oodkit::metrics::auroc;
use oodkit::model::{FeatureModel, FnFeatureModel, LayerId, ModelOutput, from_fn_with_features};
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

/// `n` rows of `d` features: class `i % classes`, centred at a class
/// offset, with per-dimension spreads so the covariance is well
/// conditioned but not isotropic.
fn labelled(n: usize, d: usize, classes: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Array1<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        let c = labels[i] as f64;
        let centre = 3.0 * ((c + 1.0) * (j as f64 + 1.0)).sin();
        (centre + (0.5 + 0.3 * j as f64) * normal(&mut rng)) as f32
    });
    (x, labels)
}

fn assert_close(found: &Array1<f32>, expected: &[f64], rel: f64) {
    assert_eq!(found.len(), expected.len());
    for (i, (&f, &e)) in found.iter().zip(expected).enumerate() {
        assert!(
            (f as f64 - e).abs() <= rel * e.abs().max(1.0),
            "sample {i}: found {f}, expected {e}"
        );
    }
}

/// Gauss-Jordan inverse with partial pivoting.
fn inverse(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut m = ndarray::concatenate![Axis(1), a.clone(), Array2::eye(n)];
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[[i, col]].abs().total_cmp(&m[[j, col]].abs()))
            .unwrap();
        for k in 0..2 * n {
            m.swap([col, k], [pivot, k]);
        }
        let p = m[[col, col]];
        m.row_mut(col).mapv_inplace(|v| v / p);
        for r in 0..n {
            if r != col {
                let f = m[[r, col]];
                let row = m.row(col).to_owned();
                m.row_mut(r).scaled_add(-f, &row);
            }
        }
    }
    m.slice(s![.., n..]).to_owned()
}

fn quad(x: &[f64], mu: &[f64], p: &Array2<f64>) -> f64 {
    let d: Vec<f64> = x.iter().zip(mu).map(|(a, b)| a - b).collect();
    let mut q = 0.0;
    for i in 0..d.len() {
        for j in 0..d.len() {
            q += d[i] * p[[i, j]] * d[j];
        }
    }
    q
}

/// Class means and the (1/N) pooled within-class covariance, directly.
fn class_gaussians(x: &Array2<f32>, labels: &Array1<i64>) -> (Vec<Vec<f64>>, Array2<f64>) {
    let x = x.mapv(f64::from);
    let classes = labels.iter().max().unwrap() + 1;
    let d = x.ncols();
    let means: Vec<Vec<f64>> = (0..classes)
        .map(|c| {
            let rows: Vec<usize> = (0..x.nrows()).filter(|&i| labels[i] == c).collect();
            x.select(Axis(0), &rows)
                .mean_axis(Axis(0))
                .unwrap()
                .to_vec()
        })
        .collect();
    let mut cov = Array2::zeros((d, d));
    for i in 0..x.nrows() {
        let mu = &means[labels[i] as usize];
        for a in 0..d {
            for b in 0..d {
                cov[[a, b]] += (x[[i, a]] - mu[a]) * (x[[i, b]] - mu[b]);
            }
        }
    }
    (means, cov / x.nrows() as f64)
}

fn rows(x: &Array2<f32>) -> Vec<Vec<f64>> {
    x.rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

#[test]
fn mahalanobis_and_rmds_match_the_explicit_inverse() {
    let (x, labels) = labelled(90, 4, 3, 1);
    let (test, _) = labelled(20, 4, 3, 2);
    let (means, cov) = class_gaussians(&x, &labels);
    let precision = inverse(&cov);
    let x64 = x.mapv(f64::from);
    let overall = x64.mean_axis(Axis(0)).unwrap().to_vec();
    let mut bg = Array2::zeros((4, 4));
    for r in x64.rows() {
        for a in 0..4 {
            for b in 0..4 {
                bg[[a, b]] += (r[a] - overall[a]) * (r[b] - overall[b]);
            }
        }
    }
    let bg_precision = inverse(&(bg / 90.0));
    let mut expected_md = Vec::new();
    let mut expected_rmds = Vec::new();
    for f in rows(&test) {
        let nearest = means
            .iter()
            .map(|mu| quad(&f, mu, &precision))
            .fold(f64::INFINITY, f64::min);
        expected_md.push(0.5 * nearest);
        expected_rmds.push(0.5 * (nearest - quad(&f, &overall, &bg_precision)));
    }
    let md = Mahalanobis::new()
        .fit_features(x.view(), labels.view())
        .unwrap();
    assert_close(&md.score_features(test.view()).unwrap(), &expected_md, 1e-5);
    let rmds = Rmds::new().fit_features(x.view(), labels.view()).unwrap();
    assert_close(
        &rmds.score_features(test.view()).unwrap(),
        &expected_rmds,
        1e-5,
    );
    // One row at a time (the few-row path, no matrix product).
    for (i, row) in test.rows().into_iter().enumerate() {
        let one = row.insert_axis(Axis(0));
        assert_close(&md.score_features(one).unwrap(), &expected_md[i..=i], 1e-5);
        assert_close(
            &rmds.score_features(one).unwrap(),
            &expected_rmds[i..=i],
            1e-5,
        );
    }
}

/// Spearman's rank correlation (ties, absent here, would count arbitrarily).
fn rank_correlation(a: &[f64], b: &[f64]) -> f64 {
    let ranks = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (rank, i) in order.into_iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn mahalanobis_in_f32_ranks_as_the_f64_formula() {
    // Mahalanobis scores in f32 through a factor of the precision; the
    // scores the f64 formula gives (what scoring computed before, cast to
    // f32) must keep their ranking (Spearman ≥ 0.99999) and AUROC (to
    // 1e-6). RMDS scores in f64 (its difference of two distances moved
    // the AUROC by 1.5e-6 here in f32): it must agree too.
    let (d, classes) = (48, 12);
    let (x, labels) = labelled(3000, d, classes, 11);
    let (id, _) = labelled(1000, d, classes, 12);
    let ood = labelled(1000, d, classes, 13).0.mapv(|v| 1.3 * v + 0.4);
    let (means, cov) = class_gaussians(&x, &labels);
    let precision = inverse(&cov);
    let x64 = x.mapv(f64::from);
    let overall = x64.mean_axis(Axis(0)).unwrap();
    let centred = &x64 - &overall;
    let bg_precision = inverse(&(centred.t().dot(&centred) / x.nrows() as f64));
    let overall = overall.to_vec();
    let reference = |q: &Array2<f32>| -> (Vec<f64>, Vec<f64>) {
        rows(q)
            .iter()
            .map(|f| {
                let nearest = means
                    .iter()
                    .map(|mu| quad(f, mu, &precision))
                    .fold(f64::INFINITY, f64::min);
                (
                    0.5 * nearest,
                    0.5 * (nearest - quad(f, &overall, &bg_precision)),
                )
            })
            .unzip()
    };
    let (md_id, rmds_id) = reference(&id);
    let (md_ood, rmds_ood) = reference(&ood);
    let md = Mahalanobis::new()
        .fit_features(x.view(), labels.view())
        .unwrap();
    let rmds = Rmds::new().fit_features(x.view(), labels.view()).unwrap();
    for (name, fitted, expected_id, expected_ood) in [
        ("Mahalanobis", &md, &md_id, &md_ood),
        ("RMDS", &rmds, &rmds_id, &rmds_ood),
    ] {
        let (got_id, got_ood) = (
            fitted.score_features(id.view()).unwrap(),
            fitted.score_features(ood.view()).unwrap(),
        );
        let got: Vec<f64> = got_id
            .iter()
            .chain(&got_ood)
            .map(|&v| f64::from(v))
            .collect();
        let expected: Vec<f64> = expected_id.iter().chain(expected_ood).copied().collect();
        let rho = rank_correlation(&got, &expected);
        assert!(rho >= 0.99999, "{name}: rank correlation {rho}");
        let as_f32 = |v: &[f64]| Array1::from_iter(v.iter().map(|&s| s as f32));
        let area = auroc(got_id.view(), got_ood.view()).unwrap();
        let reference_area =
            auroc(as_f32(expected_id).view(), as_f32(expected_ood).view()).unwrap();
        assert!(
            (area - reference_area).abs() <= 1e-6,
            "{name}: AUROC {area} in f32, {reference_area} by the f64 formula"
        );
        // The data separates, but not perfectly: the AUROC can move.
        assert!((0.6..0.999).contains(&area), "{name}: AUROC {area}");
    }
}

#[test]
fn knn_matches_brute_force_across_search_blocks() {
    // More fit rows than two index blocks (8192) and queries than one
    // query block (256); one query at a time searches the index in parts,
    // one per core.
    let (x, labels) = labelled(17_000, 6, 3, 3);
    let (test, _) = labelled(300, 6, 3, 4);
    let unit = |r: Vec<f64>| {
        let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        r.into_iter().map(|v| v / n).collect::<Vec<_>>()
    };
    let fit: Vec<Vec<f64>> = rows(&x).into_iter().map(unit).collect();
    for k in [1, 50] {
        let expected: Vec<f64> = rows(&test)
            .into_iter()
            .map(|q| {
                let q = unit(q);
                let mut d: Vec<f64> = fit
                    .iter()
                    .map(|f| f.iter().zip(&q).map(|(a, b)| (a - b).powi(2)).sum())
                    .collect();
                d.sort_by(f64::total_cmp);
                d[k - 1]
            })
            .collect();
        let knn = Knn::new(k)
            .unwrap()
            .fit_features(x.view(), labels.view())
            .unwrap();
        let found = knn.score_features(test.view()).unwrap();
        for (f, e) in found.iter().zip(&expected) {
            assert!((*f as f64 - e).abs() < 2e-5, "k = {k}: {f} vs {e}");
        }
        for (i, e) in expected.iter().enumerate().take(40) {
            let one = knn
                .score_features(test.slice(ndarray::s![i..=i, ..]))
                .unwrap()[0];
            assert!(
                (one as f64 - e).abs() < 2e-5,
                "k = {k}, query {i}: {one} vs {e}"
            );
        }
        let few = knn
            .score_features(test.slice(ndarray::s![..5, ..]))
            .unwrap();
        for (f, e) in few.iter().zip(&expected) {
            assert!((*f as f64 - e).abs() < 2e-5, "k = {k}: {f} vs {e}");
        }
    }
}

#[test]
fn vim_matches_its_formula_on_an_exact_subspace() {
    // Points u + (±10, ±5, ±0.3, ±0.2): second moment about u is exactly
    // diag(100, 25, 0.09, 0.04), so 2 principal dims leave coordinates 2, 3.
    let w = array![[1.0_f32, 0.5, 0.0, 0.0], [-0.5, 1.0, 0.0, 0.0]];
    let b = array![1.0_f32, -2.0];
    // u = −W⁺ b; W has full row rank: W⁺ = Wᵀ (W Wᵀ)⁻¹.
    let w64 = w.mapv(f64::from);
    let u = -w64
        .t()
        .dot(&inverse(&w64.dot(&w64.t())))
        .dot(&b.mapv(f64::from));
    let mut fit = Vec::new();
    for signs in 0..16 {
        let sign = |k: usize| if signs >> k & 1 == 1 { 1.0 } else { -1.0 };
        let p = [10.0 * sign(0), 5.0 * sign(1), 0.3 * sign(2), 0.2 * sign(3)];
        fit.extend((0..4).map(|j| (u[j] + p[j]) as f32));
    }
    let fit = Array2::from_shape_vec((16, 4), fit).unwrap();
    let logits = |f: &Array2<f32>| f.mapv(f64::from).dot(&w64.t()) + &b.mapv(f64::from);
    let residual =
        |r: ndarray::ArrayView1<f64>| ((r[2] - u[2]).powi(2) + (r[3] - u[3]).powi(2)).sqrt();
    let mean_max: f64 = logits(&fit)
        .rows()
        .into_iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .sum::<f64>()
        / 16.0;
    let alpha = mean_max / 0.13_f64.sqrt();
    let test = array![
        [1.0_f32, 2.0, 3.0, -1.0],
        [0.0, 0.0, 0.0, 0.0],
        [5.0, -5.0, 0.5, 0.5]
    ];
    let test_logits = logits(&test);
    let expected: Vec<f64> = test
        .mapv(f64::from)
        .rows()
        .into_iter()
        .zip(test_logits.rows())
        .map(|(f, l)| {
            let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
            alpha * residual(f) - lse
        })
        .collect();
    for dims in [PrincipalDims::Count(2), PrincipalDims::Explained(0.99)] {
        let vim = Vim::new(dims)
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
            .fit_features(fit.view(), Array1::zeros(16).view())
            .unwrap();
        let (k, a) = (vim.principal_dims(), vim.alpha());
        assert_eq!(k, 2, "{dims:?}");
        // The points are f32, so the moment's off-diagonals are ~1e-7.
        assert!((a - alpha).abs() < 1e-5 * alpha, "{a} vs {alpha}");
        assert_close(&vim.score_features(test.view()).unwrap(), &expected, 1e-5);
    }
    // Without a head on precomputed features: an error saying what to do.
    let err = Vim::default()
        .fit_features(fit.view(), Array1::zeros(16).view())
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // All dimensions principal: no residual left.
    let all = Vim::new(PrincipalDims::Count(4))
        .unwrap()
        .with_head(w, b)
        .unwrap();
    assert!(
        all.fit_features(fit.view(), Array1::zeros(16).view())
            .is_err()
    );
}

#[test]
fn she_matches_the_direct_class_means() {
    let (x, labels) = labelled(60, 5, 3, 5);
    let (test, _) = labelled(10, 5, 3, 6);
    let (means, _) = class_gaussians(&x, &labels);
    let expected: Vec<f64> = rows(&test)
        .into_iter()
        .map(|f| {
            -means
                .iter()
                .map(|mu| f.iter().zip(mu).map(|(a, b)| a * b).sum::<f64>() / 5.0)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let she = She::new().fit_features(x.view(), labels.view()).unwrap();
    assert_close(&she.score_features(test.view()).unwrap(), &expected, 1e-5);
}

/// The Gram statistics of `f` for order `p` by the definition: the
/// sign-rooted p-th order Gram matrix, its lower triangle, row sums.
fn gram_stats(f: &[f64], p: i32) -> Vec<f64> {
    let d = f.len();
    (0..d)
        .map(|i| {
            (0..=i)
                .map(|j| {
                    let g = f[i].powi(p) * f[j].powi(p);
                    g.signum() * g.abs().powf(1.0 / p as f64)
                })
                .sum()
        })
        .collect()
}

/// The q-quantile by linear interpolation between order statistics.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * q;
    v[h.floor() as usize] + (h - h.floor()) * (v[h.ceil() as usize] - v[h.floor() as usize])
}

#[test]
fn gram_matches_its_definition() {
    let (x, labels) = labelled(80, 4, 2, 7);
    let (test, _) = labelled(12, 4, 2, 8);
    let q = 0.1;
    let orders = [1, 2, 3];
    // Bounds[class][order][dim] = (lo, hi).
    let bounds: Vec<Vec<Vec<(f64, f64)>>> = (0..2)
        .map(|c| {
            let members: Vec<Vec<f64>> = rows(&x)
                .into_iter()
                .zip(&labels)
                .filter(|(_, l)| **l == c)
                .map(|(r, _)| r)
                .collect();
            orders
                .iter()
                .map(|&p| {
                    let stats: Vec<Vec<f64>> = members.iter().map(|f| gram_stats(f, p)).collect();
                    (0..4)
                        .map(|j| {
                            let col: Vec<f64> = stats.iter().map(|s| s[j]).collect();
                            (quantile(col.clone(), q), quantile(col, 1.0 - q))
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let deviation = |f: &[f64], c: usize| -> f64 {
        let mut total = 0.0;
        for (o, &p) in orders.iter().enumerate() {
            for (j, s) in gram_stats(f, p).into_iter().enumerate() {
                let (lo, hi) = bounds[c][o][j];
                if s < lo {
                    total += (lo - s) / (lo.abs() + 1e-6);
                } else if s > hi {
                    total += (s - hi) / (hi.abs() + 1e-6);
                }
            }
        }
        total
    };
    let expected: Vec<f64> = rows(&test)
        .iter()
        .map(|f| deviation(f, 0).min(deviation(f, 1)))
        .collect();
    let gram = Gram::new(orders.map(|p| p as u32), q)
        .unwrap()
        .fit_features(x.view(), labels.view())
        .unwrap();
    assert_close(&gram.score_features(test.view()).unwrap(), &expected, 1e-4);
    assert!(expected.iter().any(|&e| e > 0.0));
}

/// A feature model over "images" `(N, 1, 1, D)` whose features are the
/// pixels and, as a second layer, their squares; logits = f Wᵀ + b.
fn pixel_model(w: Array2<f32>, b: Array1<f32>) -> FnFeatureModel<Forward> {
    let d = w.ncols();
    let (wf, bf) = (w.clone(), b.clone());
    let forward: Forward = Box::new(move |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, d))?.to_owned();
        let logits = f.dot(&wf.t()) + &bf;
        Ok((vec![f.mapv(|v| v * v), f], logits))
    });
    from_fn_with_features(["squares", "pixels"], forward)
        .with_head(w, b)
        .unwrap()
}

fn as_images(x: &Array2<f32>) -> Array4<f32> {
    x.clone()
        .into_shape_with_order((x.nrows(), 1, 1, x.ncols()))
        .unwrap()
}

fn argmax_labels(x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>) -> Array1<i64> {
    (x.dot(&w.t()) + b)
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |m, (i, &v)| if v > m.1 { (i, v) } else { m },
                )
                .0 as i64
        })
        .collect()
}

/// Each detector, fitted through a model in batches of 7 and on the whole
/// array at once, gives the same scores.
#[test]
fn streaming_fit_equals_one_shot_fit() {
    let (x, _) = labelled(200, 5, 3, 9);
    let (test, _) = labelled(40, 5, 3, 10);
    let w = array![
        [1.0_f32, 0.5, -0.2, 0.0, 0.3],
        [-0.4, 1.0, 0.2, 0.1, 0.0],
        [0.1, -0.3, 1.0, 0.4, -0.2]
    ];
    let b = array![0.1_f32, -0.2, 0.05];
    // Labels = the model's predictions, so SHE's "correctly classified"
    // filter keeps all and Gram's classes agree.
    let labels = argmax_labels(&x, &w, &b);
    let model = pixel_model(w.clone(), b.clone());
    let data = OodDataset::from_arrays(as_images(&x), labels.clone()).unwrap();
    let batches = data.prepare(&PrepareConfig::new(7)).unwrap();

    macro_rules! check {
        ($make:expr) => {{
            let streamed = $make.fit(&model, Some(&batches)).unwrap();
            let whole = $make.fit_features(x.view(), labels.view()).unwrap();
            let a = streamed.fitted().score_features(test.view()).unwrap();
            let b = whole.score_features(test.view()).unwrap();
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-6 * q.abs().max(1.0),
                    "{}: sample {i}: {p} vs {q}",
                    streamed.name()
                );
            }
        }};
    }
    check!(Mahalanobis::new());
    check!(Rmds::new());
    check!(Knn::new(5).unwrap());
    check!(She::new());
    check!(
        Vim::new(PrincipalDims::Count(2))
            .unwrap()
            .with_head(w.clone(), b.clone())
            .unwrap()
    );
    check!(Gram::default());
}

#[test]
fn several_layers_aggregate_their_single_layer_scores() {
    let (x, _) = labelled(150, 4, 2, 11);
    let labels_of = |n: usize, classes: usize| -> Array1<i64> {
        (0..n).map(|i| (i % classes) as i64).collect()
    };
    let (test, _) = labelled(30, 4, 2, 12);
    let (x, labels) = (x, labels_of(150, 2));
    let w = array![[1.0_f32, -0.5, 0.2, 0.0], [-1.0, 0.5, 0.0, 0.3]];
    let b = array![0.0_f32, 0.1];
    let model = pixel_model(w.clone(), b.clone());
    let data = OodDataset::from_arrays(as_images(&x), labels.clone()).unwrap();
    let out: ModelOutput = model
        .forward_features(as_images(&x).view(), &[LayerId::from(0), LayerId::from(1)])
        .unwrap();
    let test_data = OodDataset::from_arrays(as_images(&test), Array1::zeros(30)).unwrap();
    let test_squares = test.mapv(|v| v * v);

    for aggregation in [
        Aggregation::StdNormalized,
        Aggregation::MeanNormalized,
        Aggregation::Fisher,
    ] {
        let both = Mahalanobis::new()
            .with_layers([0, 1])
            .unwrap()
            .with_aggregation(aggregation)
            .fit(&model, Some(&data))
            .unwrap();
        let found = both.score(&test_data).unwrap().scores;

        let mut per_layer = Vec::new();
        let mut fit_scores = Vec::new();
        for (features, test_features) in
            [(&out.features[0], &test_squares), (&out.features[1], &test)]
        {
            let one = Mahalanobis::new()
                .fit_features(features.view(), labels.view())
                .unwrap();
            fit_scores.push(one.score_features(features.view()).unwrap());
            per_layer.push(one.score_features(test_features.view()).unwrap());
        }
        let views: Vec<_> = fit_scores.iter().map(|s| s.view()).collect();
        let agg = Aggregator::fit(aggregation, &views).unwrap();
        let views: Vec<_> = per_layer.iter().map(|s| s.view()).collect();
        let expected = agg.aggregate(&views).unwrap();
        for (f, e) in found.iter().zip(&expected) {
            assert!(
                (f - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{aggregation:?}: {f} vs {e}"
            );
        }
        // One layer's features cannot be scored alone on a two-layer fit.
        assert!(both.fitted().score_features(test.view()).is_err());
    }
}

#[test]
fn a_constant_feature_leaves_mahalanobis_finite_and_unchanged() {
    let (x, labels) = labelled(90, 3, 3, 13);
    let (test, _) = labelled(10, 3, 3, 14);
    let widen = |a: &Array2<f32>, fill: f32| {
        ndarray::concatenate![Axis(1), a.clone(), Array2::from_elem((a.nrows(), 1), fill)]
    };
    for relative in [false, true] {
        let score = |fit: &Array2<f32>, test: &Array2<f32>| {
            if relative {
                let d = Rmds::new().fit_features(fit.view(), labels.view()).unwrap();
                d.score_features(test.view()).unwrap()
            } else {
                let d = Mahalanobis::new()
                    .fit_features(fit.view(), labels.view())
                    .unwrap();
                d.score_features(test.view()).unwrap()
            }
        };
        let plain = score(&x, &test);
        // The constant column (and a query off it) is ignored by Σ⁺.
        let widened = score(&widen(&x, 2.5), &widen(&test, 7.0));
        for (p, w) in plain.iter().zip(&widened) {
            assert!(w.is_finite());
            assert!((p - w).abs() <= 1e-3 * p.abs().max(1.0), "{p} vs {w}");
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let (x, labels) = labelled(30, 3, 3, 15);
    let w = Array2::from_shape_fn((3, 3), |(i, j)| if i == j { 1.0 } else { 0.0 });
    let model = pixel_model(w, Array1::zeros(3));
    let data = OodDataset::from_arrays(as_images(&x), labels.clone()).unwrap();

    // No fit data.
    let err = Mahalanobis::new().fit(&model, None).unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }), "{err}");
    // Features of the wrong width.
    let md = Mahalanobis::new()
        .fit_features(x.view(), labels.view())
        .unwrap();
    let err = md.score_features(Array2::zeros((2, 4)).view()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A class with one sample.
    let mut lonely = labels.clone();
    lonely[0] = 9;
    let err = Mahalanobis::new()
        .fit_features(x.view(), lonely.view())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidLabel { label: 9, .. }), "{err}");
    assert!(Rmds::new().fit_features(x.view(), lonely.view()).is_err());
    assert!(She::new().fit_features(x.view(), lonely.view()).is_err());
    assert!(
        Gram::default()
            .fit_features(x.view(), lonely.view())
            .is_err()
    );
    // NaN, no rows, labels of another length, k above the fit size.
    let mut nan = x.clone();
    nan[[4, 1]] = f32::NAN;
    let err = Knn::new(3)
        .unwrap()
        .fit_features(nan.view(), labels.view())
        .unwrap_err();
    assert!(matches!(err, Error::NotANumber { index: 4, .. }), "{err}");
    assert!(md.score_features(nan.view()).is_err());
    assert!(
        Knn::new(3)
            .unwrap()
            .fit_features(x.slice(s![..0, ..]), labels.slice(s![..0]))
            .is_err()
    );
    assert!(
        Knn::new(3)
            .unwrap()
            .fit_features(x.view(), labels.slice(s![..5]))
            .is_err()
    );
    assert!(
        Knn::new(31)
            .unwrap()
            .fit_features(x.view(), labels.view())
            .is_err()
    );
    // Fit data without labels for a class-conditional detector.
    let no_labels = data
        .prepare(&PrepareConfig::new(8).with_labels(false))
        .unwrap();
    let err = Mahalanobis::new()
        .fit(&model, Some(&no_labels))
        .unwrap_err();
    assert!(err.to_string().contains("labelled"), "{err}");
    // KNN needs no labels.
    Knn::new(3).unwrap().fit(&model, Some(&no_labels)).unwrap();
    // Empty layer list, bad parameters, an unknown layer.
    assert!(Mahalanobis::new().with_layers(Vec::<i32>::new()).is_err());
    assert!(Gram::new([], 0.01).is_err());
    assert!(Gram::new([1], 0.5).is_err());
    assert!(Vim::new(PrincipalDims::Explained(1.0)).is_err());
    // A head whose weights and bias disagree on the number of classes.
    let err = Vim::default()
        .with_head(Array2::zeros((2, 3)), Array1::zeros(3))
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let far = Mahalanobis::new().with_layers([7]).unwrap();
    assert!(far.fit(&model, Some(&data)).is_err());
    // ViM through a model without a head.
    let headless = from_fn_with_features(["pixels"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        let f = x.to_shape((n, 3))?.to_owned();
        Ok((vec![f.clone()], f))
    });
    let err = Vim::default().fit(&headless, Some(&data)).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let _: ArrayView2<f32> = x.view();
}

/// The logit detectors' toy problem (ID blobs at (4, 4) and (-4, -4), OOD
/// at (4, -4) and (-4, 4)) on the penultimate features (150 wide) of the
/// toy MLP trained on the ID blobs with burn, every detector fitted through
/// `BurnModel` (ViM reads the head from the module).
#[cfg(feature = "burn")]
mod trained_mlp {
    use std::sync::{Mutex, MutexGuard};

    use burn::tensor::Device;
    use oodkit::datasets::BatchSource;
    use oodkit::detectors::{FittedFeatures, InputPerturbation};
    use oodkit::metrics::auroc;
    use oodkit::model::{BurnModel, Model};
    use oodkit::nets::{ToyMlp, ToyMlpConfig};
    use oodkit::training::{TrainConfig, train};

    use super::*;

    /// Burn's CPU random numbers are process-wide: initialisations take turns.
    fn exclusive() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `n` points of each blob as (N, 2, 1, 1) images (two channels of one
    /// pixel); label = blob index.
    fn blobs2(centres: &[(f64, f64)], n: usize, rng: &mut StdRng) -> OodDataset {
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for (k, &(cx, cy)) in centres.iter().enumerate() {
            for _ in 0..n {
                values.push((cx + normal(rng)) as f32);
                values.push((cy + normal(rng)) as f32);
                labels.push(k as i64);
            }
        }
        let inputs = Array4::from_shape_vec((labels.len(), 2, 1, 1), values).unwrap();
        OodDataset::from_arrays(inputs, Array1::from(labels)).unwrap()
    }

    fn mlp(seed: u64) -> ToyMlp {
        let _turn = exclusive();
        let device = Device::flex();
        device.seed(seed);
        ToyMlpConfig::new(2, 1, 2).init(&device).unwrap()
    }

    #[test]
    fn gaussian_blobs_every_feature_detector_separates_id_from_ood() {
        let mut rng = StdRng::seed_from_u64(21);
        let fit = blobs2(&[(4.0, 4.0), (-4.0, -4.0)], 500, &mut rng);
        let ds_in = blobs2(&[(4.0, 4.0), (-4.0, -4.0)], 500, &mut rng);
        let ds_out = blobs2(&[(4.0, -4.0), (-4.0, 4.0)], 500, &mut rng);
        let batches = fit.prepare(&PrepareConfig::new(50).shuffle(2)).unwrap();
        let trained = {
            let network = mlp(3);
            let _turn = exclusive();
            train(
                network,
                &batches,
                None,
                &TrainConfig::new(3).with_progress(false),
            )
            .unwrap()
        };
        let device = Device::flex();
        let model = BurnModel::new(trained.model, &device);
        let sets = Blobs {
            fit: &batches,
            ds_in: &ds_in,
            ds_out: &ds_out,
        };
        sets.separate(Mahalanobis::new(), &model);
        sets.separate(Rmds::new(), &model);
        sets.separate(Knn::new(50).unwrap(), &model);
        sets.separate(Vim::default(), &model);
        sets.separate(She::new(), &model);
        sets.separate(Gram::default(), &model);
        sets.separate(Mahalanobis::new().with_layers([0, 1]).unwrap(), &model);
    }

    /// Fit data and the ID and OOD sets of the blob problem.
    struct Blobs<'a> {
        fit: &'a dyn BatchSource,
        ds_in: &'a OodDataset,
        ds_out: &'a OodDataset,
    }

    impl Blobs<'_> {
        /// Asserts that `detector`, fitted through `model`, keeps its
        /// accuracy and separates ID from OOD (any feature detector).
        fn separate<D>(&self, detector: D, model: &BurnModel<ToyMlp>)
        where
            D: FeatureDetector + Detector<Fitted = FittedFeatures<<D as FeatureDetector>::Fitted>>,
        {
            let name = FeatureDetector::name(&detector);
            let scorer = detector.fit(model, Some(self.fit)).unwrap();
            let scored_in = scorer.score(self.ds_in).unwrap();
            let accuracy = (scored_in.predictions() - scored_in.labels.as_ref().unwrap())
                .iter()
                .filter(|&&d| d == 0)
                .count() as f64
                / 1000.0;
            assert!(accuracy > 0.99, "{name}: accuracy {accuracy}");
            let scores_out = scorer.score(self.ds_out).unwrap().scores;
            let auc = auroc(&scored_in.scores, &scores_out).unwrap();
            assert!(auc >= 0.95, "{name}: AUROC {auc}");
        }
    }

    /// With ODIN's step, the scores are those of the features of the
    /// stepped inputs, computed here by hand through
    /// `InputPerturbation::perturb`.
    #[test]
    fn input_perturbation_scores_the_features_of_odins_step() {
        let mut rng = StdRng::seed_from_u64(5);
        let fit = blobs2(&[(1.0, 1.0), (-1.0, -1.0)], 40, &mut rng);
        let test = blobs2(&[(1.0, -1.0)], 30, &mut rng);
        let device = Device::flex();
        let model = BurnModel::new(mlp(4), &device);
        let (eps, t) = (0.05, 10.0);

        let plain = Mahalanobis::new().fit(&model, Some(&fit)).unwrap();
        let step = InputPerturbation::new(t, eps).unwrap();
        let stepped = Mahalanobis::new()
            .with_input_perturbation(step)
            .fit(&model, Some(&fit))
            .unwrap();

        let inputs = test.inputs().clone();
        let logits = model.forward(inputs.view()).unwrap();
        let moved = step.perturb(&model, inputs, logits.view()).unwrap();
        let features = model
            .forward_features(moved.view(), &[LayerId::from(-2)])
            .unwrap();
        let expected = plain
            .fitted()
            .score_features(features.features[0].view())
            .unwrap();
        let found = stepped.score(&test).unwrap();
        for (f, e) in found.scores.iter().zip(&expected) {
            assert!((f - e).abs() <= 1e-4 * e.abs().max(1.0), "{f} vs {e}");
        }
        // The logits returned are the unperturbed ones, and the step moved
        // the scores.
        assert_eq!(found.logits, logits);
        let unperturbed = plain.score(&test).unwrap().scores;
        assert!(
            unperturbed
                .iter()
                .zip(&found.scores)
                .any(|(a, b)| (a - b).abs() > 1e-3)
        );

        // A closure model has no input gradient: fitting says so.
        let closure = pixel_model(Array2::eye(2), Array1::zeros(2));
        let flat = |d: &OodDataset| {
            let (x, y, _) = d.clone().into_arrays();
            let n = y.len();
            OodDataset::from_arrays(x.into_shape_with_order((n, 1, 1, 2)).unwrap(), y).unwrap()
        };
        let err = Mahalanobis::new()
            .with_input_perturbation(step)
            .fit(&closure, Some(&flat(&fit)))
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("input step"), "{err}");
    }
}

/// What fitting learns is a value: `Send + Sync`, `'static` (it borrows no
/// model), for every detector of both families, and so is a scorer that
/// owns its model.
#[test]
fn fitted_states_are_send_sync_values_that_hold_no_model() {
    fn value<T: Send + Sync + 'static>() {}
    use oodkit::detectors::features::{
        FittedGram, FittedKnn, FittedMahalanobis, FittedShe, FittedVim,
    };
    use oodkit::detectors::{
        Energy, Entropy, FittedDetector, FittedFeatures, Gen, Mls, Odin, Scorer,
    };
    value::<Mls>();
    value::<Energy>();
    value::<Entropy>();
    value::<Gen>();
    value::<Odin>();
    value::<FittedFeatures<FittedMahalanobis>>();
    value::<FittedFeatures<FittedKnn>>();
    value::<FittedFeatures<FittedVim>>();
    value::<FittedFeatures<FittedShe>>();
    value::<FittedFeatures<FittedGram>>();
    value::<Scorer<'static, FittedFeatures<FittedKnn>>>();
    value::<Scorer<'static, Mls>>();

    // Detached from its model and attached to another instance of the same
    // network, a fit scores the same; a model without its layer is refused.
    let (x, labels) = labelled(40, 3, 2, 31);
    let w = Array2::from_shape_fn((2, 3), |(i, j)| if i == j { 1.0 } else { 0.1 });
    let b = Array1::zeros(2);
    let data = OodDataset::from_arrays(as_images(&x), labels).unwrap();
    let scorer = Knn::new(3)
        .unwrap()
        .with_layers(["pixels"])
        .unwrap()
        .fit(pixel_model(w.clone(), b.clone()), Some(&data))
        .unwrap();
    let before = scorer.score(&data).unwrap().scores;
    let fitted = scorer.into_fitted();
    assert_eq!(fitted.layers(), &[LayerId::from("pixels")]);
    assert_eq!(fitted.widths(), vec![3]);
    let again = fitted.clone().attach(pixel_model(w, b)).unwrap();
    assert_eq!(again.score(&data).unwrap().scores, before);
    let other = from_fn_with_features(["other"], |x: ArrayView4<f32>| {
        let f = x.to_shape((x.shape()[0], 3))?.to_owned();
        Ok((vec![f.clone()], f))
    });
    let err = fitted.attach(other).unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter { name: "layer", .. }),
        "{err}"
    );
}

/// Turns a model's (N, 3) features and (N, 2) logits into something else.
type Corruption = fn(Array2<f32>, Array2<f32>) -> (Vec<Array2<f32>>, Array2<f32>);

/// A feature model that misbehaves from its second batch on.
fn misbehaving(bad: Corruption) -> FnFeatureModel<Forward> {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let forward: Forward = Box::new(move |x: ArrayView4<f32>| {
        let f = x.to_shape((x.shape()[0], 3))?.to_owned();
        let logits = f.slice(s![.., ..2]).to_owned();
        if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            Ok((vec![f], logits))
        } else {
            Ok(bad(f, logits))
        }
    });
    from_fn_with_features(["f"], forward)
}

/// Whether `err` is the checked boundary's refusal of a model output.
fn rejects_output(err: &Error) -> bool {
    matches!(
        err,
        Error::ShapeMismatch { .. } | Error::LengthMismatch { .. } | Error::NotANumber { .. }
    )
}

/// Whatever a feature model returns goes through one check: a width that
/// changes between batches, a missing layer, rows of the wrong count, NaN
/// logits and zero-width features are errors naming the batch, for every
/// detector, when fitting and when scoring.
#[test]
fn model_outputs_are_checked_at_every_batch() {
    let (x, labels) = labelled(24, 3, 2, 17);
    let data = OodDataset::from_arrays(as_images(&x), labels.clone()).unwrap();
    let batches = data.prepare(&PrepareConfig::new(8)).unwrap();
    let wider = |f: Array2<f32>, l| (vec![ndarray::concatenate![Axis(1), f, f]], l);
    let no_layer = |_f, l| (vec![], l);
    let short = |f: Array2<f32>, l| (vec![f.slice(s![1.., ..]).to_owned()], l);
    let nan_logits = |f, l: Array2<f32>| (vec![f], l.mapv(|_| f32::NAN));
    for (what, bad) in [
        ("wider", wider as Corruption),
        ("no layer", no_layer),
        ("short", short),
        ("NaN logits", nan_logits),
    ] {
        // KNN used to read a wider batch as rows of the first width.
        let err = Knn::new(2)
            .unwrap()
            .fit(misbehaving(bad), Some(&batches))
            .unwrap_err();
        let expected = if what == "NaN logits" {
            matches!(err, Error::NotANumber { index: 8, .. })
        } else {
            // (The closure adapter counts layers itself.)
            matches!(
                err,
                Error::ShapeMismatch { .. } | Error::LengthMismatch { .. }
            )
        };
        assert!(expected, "{what}: {err}");
        // Mahalanobis panicked inside ndarray on a wider batch.
        let err = Mahalanobis::new()
            .fit(misbehaving(bad), Some(&batches))
            .unwrap_err();
        assert!(rejects_output(&err), "{what}: {err}");
        // Scoring: fitted on a well-behaved pass (one batch of 24), then the
        // model turns.
        let scorer = Knn::new(2)
            .unwrap()
            .fit(misbehaving(bad), Some(&data))
            .unwrap();
        let err = scorer.score(&batches).unwrap_err();
        assert!(rejects_output(&err), "{what}: {err}");
    }
    // Zero-width features, through a model and precomputed.
    let empty = from_fn_with_features(["none"], |x: ArrayView4<f32>| {
        let n = x.shape()[0];
        Ok((vec![Array2::zeros((n, 0))], Array2::zeros((n, 2))))
    });
    let err = Mahalanobis::new().fit(&empty, Some(&data)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = She::new()
        .fit_features(Array2::zeros((24, 0)).view(), labels.view())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}
