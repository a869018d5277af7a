"""The Python package against pytorch-ood's detectors on the same
features, where PyTorch and pytorch-ood are installed: the same ranking of
ID against OOD (AUROC to 1e-6) for KNN, Mahalanobis and ViM."""

import numpy as np
import pytest

import oodkit
from oodkit.metrics import auroc

from conftest import head

torch = pytest.importorskip("torch")
detector = pytest.importorskip("pytorch_ood.detector")


def areas(ours, theirs, id_x, ood_x):
    a = auroc(ours(id_x), ours(ood_x))
    b = auroc(
        theirs(torch.from_numpy(id_x)).double().numpy().astype(np.float32),
        theirs(torch.from_numpy(ood_x)).double().numpy().astype(np.float32),
    )
    return a, b


def test_knn_mahalanobis_and_vim_rank_as_pytorch_ood(fit_set, id_set, ood_set):
    fit, _, labels = fit_set
    id_x, ood_x = id_set[0], ood_set[0]
    y = torch.from_numpy(labels)

    knn = oodkit.Knn(k=10).fit(fit, labels)
    theirs = detector.KNN(None, k=10).fit_features(torch.from_numpy(fit), y)
    a, b = areas(knn.score, theirs.predict_features, id_x, ood_x)
    assert abs(a - b) <= 1e-6, (a, b)

    maha = oodkit.Mahalanobis().fit(fit, labels)
    theirs = detector.Mahalanobis(None).fit_features(torch.from_numpy(fit), y)
    a, b = areas(maha.score, theirs.predict_features, id_x, ood_x)
    assert abs(a - b) <= 1e-6, (a, b)

    w, bias = head()
    vim = oodkit.Vim(dims=6).fit(fit, labels, head=(w, bias))
    theirs = detector.ViM(None, d=6, w=torch.from_numpy(w), b=torch.from_numpy(bias))
    theirs.fit_features(torch.from_numpy(fit), y)
    a, b = areas(lambda x: vim.score(x, head=(w, bias)), theirs.predict_features, id_x, ood_x)
    assert abs(a - b) <= 1e-6, (a, b)
