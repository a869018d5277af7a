"""The metrics from Python against hand-worked values and, where it is
installed, scikit-learn."""

import numpy as np
import pytest

import oodkit
from oodkit import metrics

IN = [0.0, 0.2, 0.2, 0.2, 0.2]
OUT = [0.2, 0.2, 1.0, 1.0, 1.0]


def test_hand_worked_values():
    # 5 x 5 pairs: OOD above ID in 19, ties in 4 (half each), 2 below.
    assert metrics.auroc(IN, OUT) == pytest.approx(0.84, abs=1e-12)
    assert metrics.fpr_at_tpr(IN, OUT, 0.95) == 0.8
    assert metrics.bench_metrics(IN, OUT, ["auroc", "fpr95tpr"]) == {"auroc": pytest.approx(0.84), "fpr95tpr": 0.8}
    fpr, tpr, thresholds = metrics.roc_curve(IN, OUT)
    assert thresholds[0] == np.inf and fpr[0] == 0 and tpr[-1] == 1


def test_against_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000).astype(np.float32)
    b = (rng.normal(size=4000) + 0.7).astype(np.float32)
    y = np.r_[np.zeros(5000), np.ones(4000)]
    s = np.r_[a, b]
    assert metrics.auroc(a, b) == pytest.approx(sklearn.roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr_out(a, b) == pytest.approx(sklearn.average_precision_score(y, s), abs=1e-12)


def test_bad_scores_are_value_errors():
    with pytest.raises(oodkit.InvalidInput):
        metrics.auroc([], [1.0])
    with pytest.raises(ValueError):
        metrics.auroc([np.nan], [1.0])
    with pytest.raises(oodkit.InvalidInput, match="percentage"):
        metrics.fpr_at_tpr(IN, OUT, 0.955)
    with pytest.raises(oodkit.InvalidInput, match="unknown|metric"):
        metrics.bench_metrics(IN, OUT, ["nope"])


def test_calibration_of_any_scores_gives_conformal_p_values():
    rng = np.random.default_rng(5)
    calibration_scores = rng.normal(size=999).astype(np.float32)
    cal = oodkit.Calibration(calibration_scores)
    assert len(cal) == 999
    new = rng.normal(size=20_000).astype(np.float32)
    p, is_ood = cal.decide(new, alpha=0.1)
    # p = (1 + #calibration scores >= s) / (n + 1), by hand.
    expected = (1 + (calibration_scores[None, :] >= new[:, None]).sum(1)) / 1000
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    np.testing.assert_array_equal(is_ood, p <= 0.1)
    # Exchangeable new scores are flagged at about alpha.
    assert abs(is_ood.mean() - 0.1) < 0.01
    with pytest.raises(oodkit.InvalidInput):
        oodkit.Calibration([])
    with pytest.raises(oodkit.InvalidInput):
        cal.decide(new, alpha=1.5)
