//! Metrics against independent expectations: values worked by hand, values
//! from scikit-learn, and properties checked on random data by brute force.

use ndarray::Array1;
use oodkit::Error;
use oodkit::metrics::{
    Metric, aupr_in, aupr_out, auroc, bench_metrics, bench_metrics_labeled, detection_accuracy,
    fpr_at_tpr, roc_curve, tpr_at_fpr,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b): (f64, f64) = ($a, $b);
        assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

#[test]
fn hand_worked_example_with_ties() {
    let s_in = [0.0f32, 0.2, 0.2, 0.2, 0.2];
    let s_out = [0.2f32, 0.2, 1.0, 1.0, 1.0];
    // Thresholds from the top, (fp, tp) = (ID >= t, OOD >= t):
    //   t = inf: (0, 0);  t = 1.0: (0, 3);  t = 0.2: (4, 5);  t = 0.0: (5, 5).
    // AUROC, trapezoids on (fpr, tpr): (0,0)-(0,.6): 0; (0,.6)-(.8,1): .8*(.6+1)/2 = .64;
    //   (.8,1)-(1,1): .2.  Total 0.84 (pairs: 18 OOD > ID wins + 6 ties * 1/2 = 21 / 25).
    assert_close!(auroc(&s_in, &s_out).unwrap(), 0.84);
    // Best cut at t = 1.0: 3 OOD flagged + 5 ID not flagged = 8 of 10.
    assert_close!(detection_accuracy(&s_in, &s_out).unwrap(), 0.8);
    // TPR reaches 0.95 first at t = 0.2 (tpr 1), where FPR = 4/5.
    assert_close!(fpr_at_tpr(&s_in, &s_out, 0.95).unwrap(), 0.8);
    // AUPR-Out: recall steps 3/5 at precision 3/3, then 2/5 at precision 5/9:
    //   0.6 + 2/9 = 0.822222...
    assert_close!(aupr_out(&s_in, &s_out).unwrap(), 0.6 + 2.0 / 9.0);
    // AUPR-In (ID positive, scores negated so the lowest score comes first):
    //   t = 0.0: 1 ID, 0 OOD -> recall 1/5 at precision 1;
    //   t = 0.2: 5 ID, 2 OOD -> recall step 4/5 at precision 5/7.  0.2 + 4/7 = 0.771428...
    assert_close!(aupr_in(&s_in, &s_out).unwrap(), 0.2 + 4.0 / 7.0);
    // With FPR <= 0.05 only t >= 1.0 qualifies: TPR 3/5.
    assert_close!(tpr_at_fpr(&s_in, &s_out, 0.05).unwrap(), 0.6);
    let roc = roc_curve(&s_in, &s_out).unwrap();
    assert_eq!(roc.fpr, vec![0.0, 0.0, 0.8, 1.0]);
    assert_eq!(roc.tpr, vec![0.0, 0.6, 1.0, 1.0]);
    assert_eq!(roc.thresholds, vec![f32::INFINITY, 1.0, 0.2, 0.0]);
}

/// One fixed case, with what scikit-learn 1.9.1 computes for it:
/// `y = [0]*len(in) + [1]*len(out)`, `s = in + out` (as float32, then float64);
/// `roc_auc_score(y, s)`, `average_precision_score(y, s)`,
/// `average_precision_score(1 - y, -s)`, and from
/// `fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)`:
/// `fpr[argmax(tpr >= t)]` for t = 0.95, 0.8 and `tpr[fpr <= f].max()` for f = 0.05, 0.2.
struct Case {
    s_in: &'static [f32],
    s_out: &'static [f32],
    auroc: f64,
    aupr_out: f64,
    aupr_in: f64,
    fpr95: f64,
    fpr80: f64,
    tpr5: f64,
    tpr20: f64,
    roc_len: usize,
}

const CASES: [Case; 3] = [
    Case {
        s_in: &[0.1, 0.4, 0.35, 0.8, -1.0, 0.4, 2.5],
        s_out: &[0.9, 0.4, 0.3, 3.0, 0.4, 1.5],
        auroc: 0.6904761904761906,
        aupr_out: 0.6788720538720537,
        aupr_in: 0.75,
        fpr95: 0.7142857142857143,
        fpr80: 0.5714285714285714,
        tpr5: 0.16666666666666666,
        tpr20: 0.5,
        roc_len: 11,
    },
    Case {
        s_in: &[-5.5, -3.25, -3.25, -1.0, -0.5],
        s_out: &[-3.25, -0.5, -0.25, -4.0],
        auroc: 0.625,
        aupr_out: 0.6488095238095238,
        aupr_in: 0.6983333333333333,
        fpr95: 0.8,
        fpr80: 0.8,
        tpr5: 0.25,
        tpr20: 0.5,
        roc_len: 7,
    },
    // numpy default_rng(1234): round(normal(0, 1, 40), 1) vs round(normal(0.7, 1, 30), 1),
    // as float32; it holds both -0.0 and 0.0, one threshold for scikit-learn.
    Case {
        s_in: &[
            -1.6, 0.1, 0.7, 0.2, 0.9, 2.9, -1.5, 0.9, -1.7, 0.3, -0.5, 1.3, -0.9, 0.5, -1.3, -2.2,
            0.4, 1.7, 0.5, -1.0, 0.3, 0.8, 1.2, -1.2, 0.7, 0.4, -0.0, 0.0, -0.7, -0.6, 1.3, 0.3,
            -0.5, -2.5, -0.9, -0.5, -1.3, -1.3, 0.8, -0.2,
        ],
        s_out: &[
            -1.0, -0.6, 0.4, 1.8, -0.8, 2.3, 0.2, -1.0, 1.2, 2.1, 0.5, 1.3, 0.4, 0.7, 2.4, 1.6,
            -0.5, 3.5, -0.3, 1.5, 1.2, 0.6, 0.9, 0.5, 1.5, -0.0, -0.5, 1.2, 2.4, 0.6,
        ],
        auroc: 0.7129166666666666,
        aupr_out: 0.6546517814108757,
        aupr_in: 0.7771888583016202,
        fpr95: 0.775,
        fpr80: 0.575,
        tpr5: 0.3,
        tpr20: 0.4666666666666667,
        roc_len: 37,
    },
];

#[test]
fn fixed_vectors_match_scikit_learn() {
    for (i, c) in CASES.iter().enumerate() {
        let r = bench_metrics(
            c.s_in,
            c.s_out,
            &[
                "auroc", "aupr_out", "aupr_in", "fpr95tpr", "fpr80tpr", "tpr5fpr", "tpr20fpr",
            ],
        )
        .unwrap();
        let got: Vec<f64> = r.iter().map(|(_, v)| v).collect();
        let want = [
            c.auroc, c.aupr_out, c.aupr_in, c.fpr95, c.fpr80, c.tpr5, c.tpr20,
        ];
        for ((name, g), w) in r.iter().map(|(n, _)| n).zip(&got).zip(want) {
            assert!(close(*g, w), "case {i}, {name}: {g} vs scikit-learn {w}");
        }
        assert_eq!(
            roc_curve(c.s_in, c.s_out).unwrap().fpr.len(),
            c.roc_len,
            "case {i}"
        );
    }
}

/// Brute-force Mann-Whitney U: P(out > in) + P(out == in) / 2 over all pairs.
fn mann_whitney(s_in: &[f32], s_out: &[f32]) -> f64 {
    let mut u = 0.0;
    for &o in s_out {
        for &i in s_in {
            if o > i {
                u += 1.0;
            } else if o == i {
                u += 0.5;
            }
        }
    }
    u / (s_in.len() * s_out.len()) as f64
}

fn random_scores(rng: &mut StdRng, n: usize, shift: f32, levels: Option<f32>) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x: f32 = rng.random::<f32>() * 4.0 - 2.0 + shift;
            match levels {
                Some(step) => (x / step).round() * step,
                None => x,
            }
        })
        .collect()
}

#[test]
fn properties_on_random_data_with_and_without_ties() {
    let mut rng = StdRng::seed_from_u64(2026);
    for trial in 0..60 {
        let ties = if trial % 2 == 0 { Some(0.5) } else { None };
        let (n_in, n_out) = (rng.random_range(1..200), rng.random_range(1..200));
        let s_in = random_scores(&mut rng, n_in, 0.0, ties);
        let s_out = random_scores(&mut rng, n_out, 0.6, ties);

        let a = auroc(&s_in, &s_out).unwrap();
        assert_close!(a, mann_whitney(&s_in, &s_out));
        // Swapping the sides gives the complement.
        assert_close!(auroc(&s_out, &s_in).unwrap(), 1.0 - a);
        // Strictly increasing maps change nothing.
        let shifted = |v: &[f32]| v.iter().map(|x| x + 3.0).collect::<Vec<_>>();
        let cubed = |v: &[f32]| v.iter().map(|x| x * x * x).collect::<Vec<_>>();
        let names = [
            "auroc",
            "fpr95tpr",
            "tpr10fpr",
            "aupr_in",
            "aupr_out",
            "detect_acc",
        ];
        let base = bench_metrics(&s_in, &s_out, &names).unwrap();
        assert_eq!(
            base,
            bench_metrics(&shifted(&s_in), &shifted(&s_out), &names).unwrap()
        );
        assert_eq!(
            base,
            bench_metrics(&cubed(&s_in), &cubed(&s_out), &names).unwrap()
        );
        // Each metric agrees with its own function.
        assert_eq!(base.get("aupr_in"), Some(aupr_in(&s_in, &s_out).unwrap()));
        assert_eq!(
            base.get("detect_acc"),
            Some(detection_accuracy(&s_in, &s_out).unwrap())
        );
        // FPR at TPR never decreases as the TPR asked for grows; TPR at FPR likewise.
        let mut last = (0.0, 0.0);
        for p in 1..=100 {
            let t = p as f64 / 100.0;
            let f = fpr_at_tpr(&s_in, &s_out, t).unwrap();
            let g = tpr_at_fpr(&s_in, &s_out, t).unwrap();
            assert!(f >= last.0 && g >= last.1, "trial {trial}, rate {t}");
            last = (f, g);
        }
        // The ROC curve: monotone, from (0, 0) to (1, 1), one point per distinct score.
        let roc = roc_curve(&s_in, &s_out).unwrap();
        let mut distinct: Vec<f32> = s_in.iter().chain(&s_out).copied().collect();
        distinct.sort_by(f32::total_cmp);
        distinct.dedup();
        assert_eq!(roc.fpr.len(), distinct.len() + 1);
        assert!(roc.fpr.windows(2).all(|w| w[0] <= w[1]));
        assert!(roc.tpr.windows(2).all(|w| w[0] <= w[1]));
        assert!(roc.thresholds.windows(2).all(|w| w[0] > w[1]));
        assert_eq!((roc.fpr.last(), roc.tpr.last()), (Some(&1.0), Some(&1.0)));
    }
}

#[test]
fn infinities_are_valid_scores_and_zero_signs_are_one_threshold() {
    let s_in = [f32::NEG_INFINITY, 0.0, 1.0, f32::INFINITY];
    let s_out = [0.5, f32::INFINITY, 2.0];
    assert_close!(auroc(&s_in, &s_out).unwrap(), mann_whitney(&s_in, &s_out));
    // -0.0 and 0.0 tie, as in scikit-learn.
    assert_close!(auroc(&[-0.0f32], &[0.0f32]).unwrap(), 0.5);
    assert_eq!(
        roc_curve(&[-0.0f32, 0.0], &[0.0f32]).unwrap().fpr,
        vec![0.0, 1.0]
    );
}

#[test]
fn separated_scores_give_perfect_metrics() {
    let s_in: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let s_out: Vec<f32> = (100..150).map(|i| i as f32).collect();
    let r = bench_metrics(
        &s_in,
        &s_out,
        &[
            "auroc",
            "fpr95tpr",
            "tpr1fpr",
            "aupr_in",
            "aupr_out",
            "detect_acc",
        ],
    )
    .unwrap();
    let values: Vec<f64> = r.iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
}

#[test]
fn accepts_arrays_slices_and_vecs() {
    let v_in = vec![0.1f32, 0.5, 0.2];
    let v_out = vec![0.6f32, 0.3];
    let a_in = Array1::from(v_in.clone());
    let expected = 5.0 / 6.0;
    assert_close!(auroc(&v_in, &v_out).unwrap(), expected);
    assert_close!(auroc(&a_in, v_out.as_slice()).unwrap(), expected);
    assert_close!(auroc(a_in.view(), &v_out[..]).unwrap(), expected);
}

#[test]
fn labeled_scores_give_the_same_report() {
    let c = &CASES[0];
    let scores: Vec<f32> = c.s_out.iter().chain(c.s_in).copied().collect();
    let labels: Vec<u8> = std::iter::repeat_n(1u8, c.s_out.len())
        .chain(std::iter::repeat_n(0u8, c.s_in.len()))
        .collect();
    let names = ["auroc", "fpr95tpr", "aupr_in"];
    assert_eq!(
        bench_metrics_labeled(&scores, &labels, &names).unwrap(),
        bench_metrics(c.s_in, c.s_out, &names).unwrap()
    );
    let err = bench_metrics_labeled(&scores, &labels[1..], &names).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err:?}");
    let mut bad = labels.clone();
    bad[3] = 2;
    let err = bench_metrics_labeled(&scores, &bad, &names).unwrap_err();
    assert!(err.to_string().contains("index 3"), "{err}");
    let mut nan = scores.clone();
    nan[4] = f32::NAN;
    let err = bench_metrics_labeled(&nan, &labels, &names).unwrap_err();
    assert!(matches!(err, Error::NotANumber { index: 4, .. }), "{err:?}");
    let err = bench_metrics_labeled(&scores, &vec![0u8; scores.len()], &names).unwrap_err();
    assert!(err.to_string().contains("OOD scores"), "{err}");
}

#[test]
fn report_keeps_order_prints_aligned_and_parses_names() {
    let r = bench_metrics(
        &[0.0f32, 0.2, 0.2, 0.2, 0.2],
        &[0.2f32, 0.2, 1.0, 1.0, 1.0],
        &["fpr95tpr", "AUROC", "detect_acc"],
    )
    .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        r.to_string(),
        "fpr95tpr   0.800000\nauroc      0.840000\ndetect_acc 0.800000"
    );
    assert_eq!(r.get("auroc"), r.get("AUROC"));
    assert_eq!(r.get("aupr_in"), None);
    let names: Vec<&str> = (&r).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["fpr95tpr", "auroc", "detect_acc"]);

    assert_eq!("fpr95tpr".parse::<Metric>().unwrap(), Metric::FprAtTpr(95));
    assert_eq!("tpr5fpr".parse::<Metric>().unwrap(), Metric::TprAtFpr(5));
    assert_eq!("tpr05fpr".parse::<Metric>().unwrap(), Metric::TprAtFpr(5));
    assert_eq!(Metric::FprAtTpr(80).to_string(), "fpr80tpr");
    for bad in ["fpr100tpr", "fprtpr", "fpr9xtpr", "roc", ""] {
        let err = bad.parse::<Metric>().unwrap_err().to_string();
        assert!(err.contains("valid metrics are"), "{bad}: {err}");
    }
    let err = "fpr0tpr".parse::<Metric>().unwrap_err().to_string();
    assert!(err.contains("1..=99"), "{err}");
    let err = bench_metrics(&[0.0f32], &[1.0f32], &[Metric::FprAtTpr(0)]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter { name: "metric", .. }),
        "{err:?}"
    );
    let none: [&str; 0] = [];
    assert!(bench_metrics(&[0.0f32], &[1.0f32], &none).is_err());
}

#[test]
fn bad_input_is_an_error_naming_what_is_wrong() {
    let err = auroc(&[] as &[f32], &[1.0f32]).unwrap_err();
    assert!(
        matches!(&err, Error::Empty { what, .. } if what == "ID scores"),
        "{err:?}"
    );
    let err = auroc(&[1.0f32], &[] as &[f32]).unwrap_err();
    assert!(
        matches!(&err, Error::Empty { what, .. } if what == "OOD scores"),
        "{err:?}"
    );
    let err = auroc(&[0.0f32, 1.0], &[0.5f32, 2.0, f32::NAN]).unwrap_err();
    assert!(
        matches!(&err, Error::NotANumber { what, index: 2, .. } if what == "OOD scores"),
        "{err:?}"
    );
    let err = aupr_out(&[f32::NAN], &[0.5f32]).unwrap_err();
    assert!(
        matches!(&err, Error::NotANumber { what, index: 0, .. } if what == "ID scores"),
        "{err:?}"
    );
    for rate in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(
            fpr_at_tpr(&[0.0f32], &[1.0f32], rate).is_err(),
            "tpr {rate}"
        );
        assert!(
            tpr_at_fpr(&[0.0f32], &[1.0f32], rate).is_err(),
            "fpr {rate}"
        );
    }
    assert_close!(fpr_at_tpr(&[0.0f32, 2.0], &[1.0f32], 1.0).unwrap(), 0.5);
}

/// The report as a JSON object, metrics in the order asked (feature
/// `serde`).
#[cfg(feature = "serde")]
#[test]
fn the_report_serialises_as_an_object_of_its_metrics() {
    let report = oodkit::metrics::bench_metrics(
        &[0.0_f32, 0.2, 0.2, 0.2, 0.2],
        &[0.2_f32, 0.2, 1.0, 1.0, 1.0],
        &["fpr95tpr", "auroc"],
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        r#"{"fpr95tpr":0.8,"auroc":0.84}"#
    );
}
