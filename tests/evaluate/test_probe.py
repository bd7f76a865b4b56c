"""Frozen-feature protocols: feature extraction, logistic probe, kNN, and the backbone sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from conftest import TinyNet
from medssl.evaluate.features import extract_features
from medssl.errors import MedsslError
from medssl.evaluate.probe import (CS, accuracy, backbone_fingerprint, knn_scores, linear_probe, macro_auc,
                                   probe_module, sanity_check)
from medssl.data.tasks import Task, task_probabilities

BINARY = Task("binary", ("normal", "pneumonia"))
MULTICLASS = Task("multiclass", ("a", "b", "c"))
MULTILABEL = Task("multilabel", ("effusion", "nodule"), "no_finding")



def _images(n: int = 20, size: int = 16) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 1, size, size), dtype=np.uint8))


# ---- features and sanity check ---------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_extract_features_is_deterministic_and_leaves_the_backbone_alone(training):
    net = TinyNet(dim=6, pool=2).train(training)
    before = backbone_fingerprint(net)
    images = _images()
    a = extract_features(net, images, batch_size=7)             # 3 batches, the last one short
    assert a.shape == (20, 6) and a.dtype == np.float32
    assert np.array_equal(a, extract_features(net, images, batch_size=64))
    # uint8 is scaled to [0, 1]: the same images as floats give the same features
    assert np.allclose(a, extract_features(net, images.float() / 255), atol=1e-6)
    assert net.training is training
    sanity_check(net, before)


def test_sanity_check_catches_batchnorm_statistics_and_weight_changes():
    net = TinyNet(dim=6, pool=2).eval()
    fingerprint = backbone_fingerprint(net)
    net.train()
    with torch.no_grad():
        net(_images().float() / 255)                            # no gradient, yet running_mean moves
    with pytest.raises(AssertionError, match=r"net\.1\.running_mean"):
        sanity_check(net, fingerprint)
    net = TinyNet(dim=6, pool=2)
    fingerprint = backbone_fingerprint(net)
    with torch.no_grad():
        net.net[5].weight[0, 0] += 1e-3
    with pytest.raises(AssertionError, match=r"net\.5\.weight"):
        sanity_check(net, fingerprint)
    fingerprint["net.5.weight"][0, 0] -= 1                      # the fingerprint is a copy, not a view
    assert not torch.equal(fingerprint["net.5.weight"], net.net[5].weight)


# ---- linear probe ----------------------------------------------------------------------------------------------

def _separable(task: Task, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 5) whose targets are linear functions of them with a margin of at least 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * np.array([1, 1, 1, 3, 0.1]) + np.array([0, 0, 0, 5, 0])  # unequal scales
    if task.kind == "binary":
        y = (x[:, 0] > 0).astype(np.int64)
        x[:, 0] += np.where(y == 1, 1.0, -1.0)
    elif task.kind == "multiclass":
        y = np.arange(n) % 3
        x[:, :3] = 0.3 * np.abs(x[:, :3]) + 4 * np.eye(3)[y]      # the class's coordinate is the largest
    else:
        y = np.stack([np.arange(n) % 2, (np.arange(n) // 2) % 2], axis=1)
        x[:, :2] = (2 * y - 1) * (1 + np.abs(x[:, :2]))           # label c is the sign of coordinate c
    return x.astype(np.float32), y


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_linear_probe_separates_separable_features(task):
    (xt, yt), (xv, yv), (xs, ys) = (_separable(task, n, s) for n, s in ((60, 0), (30, 1), (40, 2)))
    r = linear_probe(xt, yt, xv, yv, xs, task)
    assert r.C in CS and r.val_metric == "auc" and r.val_score == 1.0
    assert macro_auc(yv, r.val_scores, task) == 1.0 and macro_auc(ys, r.scores, task) == 1.0
    assert r.weight.shape == (task.n_outputs, 5) and r.bias.shape == (task.n_outputs,)
    assert r.scores.shape == (40, task.n_outputs) and r.val_scores.shape == (30, task.n_outputs)


def _noisy(task: Task, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _separable(task, n, seed)
    return x + np.random.default_rng(seed + 10).normal(scale=3.0, size=x.shape).astype(np.float32), y


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_folded_weights_reproduce_sklearn_on_raw_features(task):
    (xt, yt), (xv, yv), (xs, _) = (_noisy(task, n, s) for n, s in ((80, 0), (40, 1), (30, 2)))
    r = linear_probe(xt, yt, xv, yv, xs, task, Cs=(0.01, 1.0))
    scaler = StandardScaler().fit(xt.astype(np.float64))
    fit = lambda y: LogisticRegression(C=r.C, max_iter=2000).fit(scaler.transform(xt), y)  # noqa: E731
    z = scaler.transform(xs)
    if task.kind == "binary":
        expected = fit(yt).predict_proba(z)[:, 1:]              # (N, 1): the positive class
    elif task.kind == "multiclass":
        expected = fit(yt).predict_proba(z)
    else:
        expected = np.stack([fit(yt[:, c]).predict_proba(z)[:, 1] for c in range(2)], axis=1)
    assert np.allclose(r.scores, expected, atol=1e-5)
    logits = xs.astype(np.float64) @ r.weight.T + r.bias        # the raw-feature form gives the same scores
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True) if task.kind == "multiclass"
             else 1 / (1 + np.exp(-logits)))
    assert np.allclose(probs, expected, atol=1e-5)


def test_probe_module_gives_the_logits_of_the_folded_weights():
    net = TinyNet(dim=6, pool=2).eval()
    images = _images(30)
    feats = extract_features(net, images)
    y = (feats[:, 0] > np.median(feats[:, 0])).astype(np.int64)
    r = linear_probe(feats[:20], y[:20], feats[20:], y[20:], feats, BINARY)
    module = probe_module(net, r, BINARY)
    with torch.no_grad():
        logits = module.logits(images.float() / 255).numpy()    # (30, 1)
    assert logits.shape == (30, 1)
    assert np.allclose(logits, feats.astype(np.float64) @ r.weight.T + r.bias, atol=1e-4)
    assert np.allclose(1 / (1 + np.exp(-logits)), r.scores, atol=1e-5)  # both (30, 1)
    assert module.backbone is net and not module.training     # the one LinearHead, on the shared backbone


def test_one_class_in_validation_falls_back_to_accuracy():
    (xt, yt), (xv, yv) = _noisy(BINARY, 60, 0), _noisy(BINARY, 20, 1)
    keep = yv == 1
    r = linear_probe(xt, yt, xv[keep], yv[keep], xv, BINARY)
    assert math.isnan(macro_auc(yv[keep], r.val_scores, BINARY))
    assert r.val_metric == "accuracy" and r.val_score == accuracy(yv[keep], r.val_scores, BINARY)


def test_a_class_missing_from_training_gets_almost_no_probability():
    x, y = _separable(MULTICLASS, 60, 0)
    keep = y != 2
    r = linear_probe(x[keep], y[keep], x, y, x, MULTICLASS)
    assert np.allclose(r.scores.sum(1), 1) and r.scores[:, 2].max() < 1e-8
    assert (r.scores.argmax(1)[y != 2] == y[y != 2]).all()
    x, y = _separable(MULTILABEL, 60, 0)
    y_train = y.copy()
    y_train[:, 1] = 0                                           # a finding no training image shows
    r = linear_probe(x, y_train, x, y, x, MULTILABEL)
    assert np.allclose(r.weight[1], 0) and r.bias[1] == -20.0 and r.scores[:, 1].max() < 1e-8
    assert macro_auc(y[:, :1], r.scores[:, :1], Task("multilabel", ("effusion",))) == 1.0


# ---- kNN -------------------------------------------------------------------------------------------------------

TRAIN = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -1.0]])  # cosine ignores the lengths
TEST = np.array([[0.9, 0.2], [0.1, 5.0], [-1.0, 0.3], [0.1, -0.5], [2.0, -0.1]])
NEAREST = [0, 1, 2, 3, 0]                                         # by angle, worked out by hand


def test_knn_with_k1_copies_the_nearest_label():
    y = np.array([2, 0, 1, 2])
    p = knn_scores(TRAIN, y, TEST, MULTICLASS, k=1)
    assert np.array_equal(p, np.eye(3)[y[NEAREST]])
    yb = np.array([1, 0, 0, 1])
    assert np.array_equal(knn_scores(TRAIN, yb, TEST, BINARY, k=1), yb[NEAREST, None].astype(float))  # (5, 1)
    ym = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    assert np.array_equal(knn_scores(TRAIN, ym, TEST, MULTILABEL, k=1), ym[NEAREST].astype(float))


@pytest.mark.parametrize("temperature", [1.0, 0.07, 1e6])
def test_knn_weights_are_exp_similarity_over_temperature(temperature):
    train, y = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0])
    p = knn_scores(train, y, np.array([[3.0, 0.0]]), BINARY, k=2, temperature=temperature)
    # similarities 1 and 0: p(positive) = e^(1/T) / (e^(1/T) + e^0) = sigmoid(1 / T)
    assert p.shape == (1, 1) and p[0, 0] == pytest.approx(1 / (1 + math.exp(-1 / temperature)), abs=1e-9)


def test_knn_probabilities_sum_to_one_and_k_is_capped():
    y = np.array([2, 0, 1, 2])
    p = knn_scores(TRAIN, y, TEST, MULTICLASS, k=3)
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1)
    assert np.array_equal(knn_scores(TRAIN, y, TEST, MULTICLASS, k=100), knn_scores(TRAIN, y, TEST, MULTICLASS, k=4))
    ym = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    m = knn_scores(TRAIN, ym, TEST, MULTILABEL, k=4, temperature=1e9)  # uniform weights: the label frequencies
    assert np.allclose(m, np.tile([0.5, 0.5], (5, 1)))


# ---- one score shape for every kind ----------------------------------------------------------------------------

KNN_Y = {"binary": np.array([1, 0, 0, 1]), "multiclass": np.array([2, 0, 1, 2]),
         "multilabel": np.array([[1, 0], [1, 1], [0, 0], [0, 1]])}


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_task_probabilities_and_knn_scores_are_n_by_n_outputs_for_every_kind(task):
    logits = np.random.default_rng(0).normal(size=(7, task.n_outputs))
    assert task_probabilities(logits, task).shape == (7, task.n_outputs)
    assert task_probabilities(logits[:1], task).shape == (1, task.n_outputs)      # one image: still 2-D
    y = KNN_Y[task.kind]
    assert knn_scores(TRAIN, y, TEST, task, k=2).shape == (5, task.n_outputs)
    assert knn_scores(TRAIN, y, TEST[:1], task, k=1).shape == (1, task.n_outputs)
    assert knn_scores(TRAIN, y, TEST[:0], task).shape == (0, task.n_outputs)


def test_task_probabilities_by_hand_and_logits_of_another_width_raise():
    z = np.log([[1.0], [3.0]])                                  # sigmoid(log 3) = 3 / (3 + 1)
    np.testing.assert_allclose(task_probabilities(z, BINARY), [[0.5], [0.75]])
    np.testing.assert_allclose(task_probabilities(np.log([[1.0, 1.0, 2.0]]), MULTICLASS), [[0.25, 0.25, 0.5]])
    np.testing.assert_allclose(task_probabilities(np.log([[1.0, 3.0]]), MULTILABEL), [[0.5, 0.75]])
    with pytest.raises(MedsslError, match=r"logits.*\(2,\)"):
        task_probabilities(np.zeros(2), BINARY)                        # the old (N,) binary form
    with pytest.raises(MedsslError, match=r"logits.*\(2, 2\)"):
        task_probabilities(np.zeros((2, 2)), MULTICLASS)
