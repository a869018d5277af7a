"""The detectors from Python: scores against NumPy reference formulas,
every registered kind by name, files and pickles that round-trip bit for
bit, calibration, errors as Python exceptions, threads."""

import pickle
import threading

import numpy as np
import pytest

import oodkit
from oodkit.metrics import auroc

from conftest import CLASSES, head


def normalised(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def test_knn_is_the_kth_squared_distance_of_normalised_features(fit_set, id_set, ood_set):
    fit, _, labels = fit_set
    queries = np.concatenate([id_set[0], ood_set[0]])
    knn = oodkit.Knn(k=7).fit(fit, labels)
    scores = knn.score(queries)
    assert scores.dtype == np.float32 and scores.shape == (600,)
    d = ((normalised(queries)[:, None, :] - normalised(fit)[None, :, :]) ** 2).sum(-1)
    expected = np.sort(d, axis=1)[:, 6]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    a, e = auroc(scores[:300], scores[300:]), auroc(expected[:300], expected[300:])
    assert abs(a - e) <= 1e-6


def test_mahalanobis_is_half_the_least_class_distance_under_the_shared_covariance(fit_set, id_set):
    fit, _, labels = fit_set
    x = id_set[0]
    scores = oodkit.detector("mahalanobis").fit(fit, labels).score(x)
    f = fit.astype(np.float64)
    means = np.stack([f[labels == c].mean(0) for c in range(CLASSES)])
    centred = f - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(f))
    diff = x.astype(np.float64)[:, None, :] - means[None]
    distances = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    np.testing.assert_allclose(scores, 0.5 * distances.min(1), rtol=1e-4)


def test_logit_detectors_match_their_formulas(id_set):
    _, logits, _ = id_set
    z = logits.astype(np.float64)
    top = z.max(1, keepdims=True)
    lse = (top + np.log(np.exp(z - top).sum(1, keepdims=True)))[:, 0]
    msp = oodkit.Msp().fit(logits=logits).score(logits=logits)
    np.testing.assert_allclose(msp, -np.exp(z.max(1) - lse), rtol=1e-5)
    energy = oodkit.Energy(temperature=2.0).fit(logits=logits).score(logits=logits)
    zt = z / 2.0
    t = zt.max(1, keepdims=True)
    np.testing.assert_allclose(energy, -2.0 * (t + np.log(np.exp(zt - t).sum(1, keepdims=True)))[:, 0], rtol=1e-5)
    mls = oodkit.Mls().fit(logits=logits).score(logits=logits)
    np.testing.assert_allclose(mls, -z.max(1), rtol=1e-6)


# Kinds that need more of the network than arrays give.
NEEDS_THE_NETWORK = {"rankfeat", "mcdropout"}
# Parameters that fit this small set (and ODIN without its input step,
# which needs input gradients).
PARAMS = {"odin": {"epsilon": 0.0}, "nnguide": {"k": 10, "bank_fraction": 1.0}}


@pytest.mark.parametrize("kind", [k.name for k in oodkit.kinds()])
def test_every_kind_fits_by_name_and_separates_id_from_ood(kind, fit_set, id_set, ood_set):
    fit, fit_logits, labels = fit_set
    w, b = head()
    detector = oodkit.detector(kind, **PARAMS.get(kind, {}))
    if kind in NEEDS_THE_NETWORK:
        with pytest.raises(oodkit.InvalidInput):
            detector.fit(fit, labels, logits=fit_logits, head=(w, b))
        return
    fitted = detector.fit(fit, labels, logits=fit_logits, head=(w, b))
    scores = [fitted.score(s[0], logits=s[1], head=(w, b)) for s in (id_set, ood_set)]
    for s in scores:
        assert s.shape == (300,) and np.all(np.isfinite(s)), kind
    # Every detector sees the shift (some rank it the other way round:
    # what matters here is that the scores carry it).
    assert abs(auroc(*scores) - 0.5) > 0.05, kind


def test_files_and_pickles_round_trip_bit_for_bit(tmp_path, fit_set, id_set):
    fit, logits, labels = fit_set
    w, b = head()
    vim = oodkit.Vim(dims=4).fit(fit, labels, head=(w, b))
    expected = vim.score(id_set[0], head=(w, b))
    path = tmp_path / "vim.oodkit"
    vim.save(path)
    loaded = oodkit.load(path)
    assert loaded.kind == "ViM"
    np.testing.assert_array_equal(loaded.score(id_set[0], head=(w, b)), expected)
    copy = pickle.loads(pickle.dumps(vim))
    np.testing.assert_array_equal(copy.score(id_set[0], head=(w, b)), expected)
    # The bytes a pickle ships load as the file does.
    again = oodkit.Detector.from_bytes(path.read_bytes())
    np.testing.assert_array_equal(again.score(id_set[0], head=(w, b)), expected)


def test_calibration_flags_about_alpha_of_held_out_id(fit_set, id_set, ood_set):
    fit, _, labels = fit_set
    knn = oodkit.Knn(k=5).fit(fit, labels)
    half = id_set[0][:150]
    calibrated = knn.calibrate(half, alpha=0.1)
    assert calibrated.is_calibrated and calibrated.alpha == 0.1 and not knn.is_calibrated
    verdicts = calibrated.decide(id_set[0][150:])
    assert 0.0 <= verdicts.is_ood.mean() <= 0.25
    assert np.all((verdicts.p_values > 0) & (verdicts.p_values <= 1))
    assert np.all(verdicts.classes == -1)  # no logits: no class
    assert calibrated.decide(ood_set[0]).is_ood.mean() > 0.5
    with pytest.raises(oodkit.Error, match="uncalibrated"):
        knn.decide(half)


def test_arrays_of_any_float_type_order_and_torch_tensors_score_alike(fit_set, id_set):
    fit, _, labels = fit_set
    knn = oodkit.Knn(k=5).fit(fit, labels)
    x = id_set[0]
    expected = knn.score(x)
    np.testing.assert_array_equal(knn.score(np.asfortranarray(x)), expected)
    np.testing.assert_array_equal(knn.score(x.astype(np.float64)), expected)
    np.testing.assert_array_equal(knn.score(x.tolist()), expected)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(knn.score(torch.from_numpy(x)), expected)


def test_bad_input_raises_python_exceptions_with_the_rust_message(tmp_path, fit_set):
    fit, _, labels = fit_set
    knn = oodkit.Knn(k=5).fit(fit, labels)
    with pytest.raises(ValueError, match="shape mismatch"):
        knn.score(fit[:, :3])
    bad = fit.copy()
    bad[2, 3] = np.nan
    with pytest.raises(oodkit.InvalidInput):
        knn.score(bad)
    with pytest.raises(oodkit.InvalidInput, match="labels"):
        oodkit.Mahalanobis().fit(fit)
    with pytest.raises(oodkit.InvalidInput, match="nosuch"):
        oodkit.detector("nosuch")
    with pytest.raises(oodkit.InvalidInput, match="k"):
        oodkit.Knn(k=0)
    with pytest.raises(oodkit.InvalidInput, match="takes no parameter"):
        oodkit.Knn(q=3)
    with pytest.raises(oodkit.InvalidInput):
        oodkit.Knn(k=True)
    with pytest.raises(oodkit.InvalidInput, match="2-D"):
        knn.score(fit[0])
    with pytest.raises(OSError) as info:
        oodkit.load(tmp_path / "missing.oodkit")
    assert isinstance(info.value, oodkit.FileError)
    (tmp_path / "junk.oodkit").write_bytes(b"not a detector")
    with pytest.raises(oodkit.FileError):
        oodkit.load(tmp_path / "junk.oodkit")
    with pytest.raises(oodkit.FileError):
        oodkit.Detector.from_bytes(b"\x00" * 64)


def test_python_threads_score_at_once(fit_set, id_set):
    fit, _, labels = fit_set
    knn = oodkit.Knn(k=5).fit(fit, labels)
    expected = knn.score(id_set[0])
    results = [None] * 4

    def work(i):
        results[i] = knn.score(id_set[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_several_layers_by_name(fit_set, id_set):
    fit, _, labels = fit_set
    early = np.ascontiguousarray(fit[:, ::-1] * 2.0)
    layers = {"early": early, "late": fit}
    by_name = oodkit.Knn(k=5, layers=["early"]).fit(layers, labels)
    alone = oodkit.Knn(k=5).fit(early, labels)
    q = id_set[0]
    np.testing.assert_array_equal(
        by_name.score({"early": np.ascontiguousarray(q[:, ::-1] * 2.0), "late": q}),
        alone.score(np.ascontiguousarray(q[:, ::-1] * 2.0)),
    )


def test_the_type_stub_lists_every_kind():
    import pathlib

    import stubgen

    written = (pathlib.Path(oodkit.__file__).parent / "__init__.pyi").read_text()
    assert written == stubgen.stub(), "run python python/stubgen.py after changing the registry"


def _interop():
    """The Rust side of the file round trip (examples/interop.rs), when
    built: OODKIT_INTEROP_BIN names the binary."""
    import os

    binary = os.environ.get("OODKIT_INTEROP_BIN")
    if not binary:
        pytest.skip("OODKIT_INTEROP_BIN is not set (cargo build --features cli --example interop)")
    return binary


def test_files_move_between_python_and_rust_bit_for_bit(tmp_path, fit_set, id_set):
    import subprocess

    binary = _interop()
    fit, _, labels = fit_set
    queries = id_set[0]
    np.save(tmp_path / "fit.npy", fit)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "queries.npy", queries)
    for kind in ["knn", "mahalanobis", "she"]:
        detector = oodkit.detector(kind, **({"k": 5} if kind == "knn" else {}))
        # Python fits and saves, Rust loads and scores.
        fitted = detector.fit(fit, labels)
        fitted.save(tmp_path / f"{kind}-py.oodkit")
        subprocess.run(
            [binary, "score", tmp_path / f"{kind}-py.oodkit", tmp_path / "queries.npy", tmp_path / f"{kind}-rs.npy"],
            check=True,
        )
        np.testing.assert_array_equal(np.load(tmp_path / f"{kind}-rs.npy"), fitted.score(queries))
        # Rust fits and saves, Python loads and scores as Rust does.
        subprocess.run(
            [binary, "fit", kind, "5", tmp_path / "fit.npy", tmp_path / "labels.npy", tmp_path / f"{kind}-rs.oodkit"],
            check=True,
        )
        from_rust = oodkit.load(tmp_path / f"{kind}-rs.oodkit")
        assert from_rust.kind == fitted.kind
        np.testing.assert_array_equal(from_rust.score(queries), fitted.score(queries))


@pytest.mark.parametrize("kind,params", [("knn", {"k": 5}), ("mahalanobis", {}), ("vim", {"dims": 4})])
def test_partial_fits_pickle_merge_and_finish_as_the_whole_fit(kind, params, fit_set, id_set):
    fit, _, labels = fit_set
    w, b = head()
    detector = oodkit.detector(kind, **params)
    cuts = [0, 130, 400, 600]
    shards = [(fit[a:z], labels[a:z]) for a, z in zip(cuts, cuts[1:])]
    # Workers fit their shards; their partial fits travel pickled.
    parts = [pickle.loads(pickle.dumps(detector.partial_fit(x, y, head=(w, b)))) for x, y in shards]
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    with pytest.raises(oodkit.InvalidInput, match="merged into another"):
        parts[1].merge(parts[2])
    if merged.end_first_pass():
        copies = [pickle.loads(pickle.dumps(merged)).update(x, y) for x, y in shards]
        merged = copies[0]
        for other in copies[1:]:
            merged.merge(other)
    sharded = merged.finish()
    whole = detector.fit(fit, labels, head=(w, b))
    np.testing.assert_allclose(
        sharded.score(id_set[0], head=(w, b)), whole.score(id_set[0], head=(w, b)), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(oodkit.InvalidInput, match="merged into another or finished"):
        merged.finish()
