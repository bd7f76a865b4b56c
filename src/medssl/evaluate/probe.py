"""Protocols on frozen features: logistic-regression linear probe and weighted kNN, plus moco's sanity check.

Scores are always (N, K), K = task.n_outputs, whatever the kind (see medssl.data.tasks). The validation score
that picks the probe's C (and that fine-tuning stops on) is the macro ROC-AUC over the classes (labels) with both
outcomes in the split; where no class has both - a tiny label fraction can leave one class in a split - it is
undefined (NaN) and the probe falls back to validation accuracy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.evaluate.metrics import class_aucs, outcomes
from medssl.data.tasks import Task, task_probabilities
from medssl.models.classifier import Classifier

CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_ITER = 2000  # lbfgs on standardised features converges in a few hundred iterations except on separable data
CERTAIN = 20.0  # logit of a class the training split never showed (or always showed): probability ~2e-9 (or ~1)


@dataclass
class ProbeResult:
    """A fitted linear probe: test and val scores, the chosen C, and weights acting on RAW features."""

    scores: np.ndarray  # (N_test, K), K = task.n_outputs
    val_scores: np.ndarray  # (N_val, K)
    C: float
    weight: np.ndarray  # (K, D), K = task.n_outputs
    bias: np.ndarray  # (K,)
    val_metric: str = "auc"  # "auc", or "accuracy" where the val AUC is undefined
    val_score: float = math.nan


def _both_present(columns: np.ndarray) -> np.ndarray:
    n = columns.sum(axis=0)
    return (n > 0) & (n < len(columns))


def auc_defined(y: np.ndarray, task: Task) -> bool:
    """Whether some class (label) has both outcomes in y, so that macro_auc is a number."""
    return bool(_both_present(outcomes(y, task)).any())


def macro_auc(y: np.ndarray, scores: np.ndarray, task: Task) -> float:
    """Macro ROC-AUC over the classes (one-vs-rest) or labels with both outcomes present; NaN when none has."""
    aucs = class_aucs(np.asarray(y), np.asarray(scores), task)
    return math.nan if np.isnan(aucs).all() else float(np.nanmean(aucs))


def accuracy(y: np.ndarray, scores: np.ndarray, task: Task) -> float:
    """Top-1 accuracy (binary and multi-label: threshold 0.5, multi-label averaged over every label)."""
    if task.kind == "multiclass":
        return float(np.mean(scores.argmax(1) == y))
    return float(np.mean((np.asarray(scores) >= 0.5) == outcomes(y, task)))  # (N, K) against (N, K)


def validation_score(y: np.ndarray, scores: np.ndarray, task: Task) -> tuple[str, float]:
    """("auc", macro ROC-AUC), or ("accuracy", accuracy) where the AUC is undefined on these labels."""
    auc = macro_auc(y, scores, task)
    return ("auc", auc) if not math.isnan(auc) else ("accuracy", accuracy(y, scores, task))


def _fit_binary(z: np.ndarray, y: np.ndarray, C: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression on standardised z, y in {0, 1} -> (w (D,), b ()); constant when y is."""
    if len(np.unique(y)) < 2:
        return np.zeros(z.shape[1]), np.array(CERTAIN if y[0] == 1 else -CERTAIN)
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(z, y)
    return clf.coef_[0].astype(np.float64), clf.intercept_[0].astype(np.float64)


def _fit_multiclass(z: np.ndarray, y: np.ndarray, C: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression -> (W (K, D), b (K,)); classes absent from y get logit -CERTAIN."""
    w, b = np.zeros((k, z.shape[1])), np.full(k, -CERTAIN)
    present = np.unique(y)
    if len(present) == 1:
        b[present[0]] = 0.0
        return w, b
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(z, y)
    if len(present) == 2:  # sklearn fits one logit for classes_[1] against classes_[0]: softmax([0, l]) = sigmoid(l)
        b[present[0]] = 0.0
        w[present[1]], b[present[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        w[clf.classes_], b[clf.classes_] = clf.coef_, clf.intercept_
    return w, b


def _fit(z: np.ndarray, y: np.ndarray, task: Task, C: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (K, D), b (K,)) on standardised features; multi-label: one independent classifier per label."""
    with warnings.catch_warnings():  # large C on separable features has no finite optimum: lbfgs stops at MAX_ITER
        warnings.simplefilter("ignore", ConvergenceWarning)
        if task.kind == "multiclass":
            return _fit_multiclass(z, y, C, len(task.classes), seed)
        columns = [np.asarray(y)] if task.kind == "binary" else list(np.asarray(y).T)
        fitted = [_fit_binary(z, col, C, seed) for col in columns]
    return np.stack([w for w, _ in fitted]), np.array([b for _, b in fitted])


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 x_test: np.ndarray, task: Task, seed: int = 0, Cs: Sequence[float] = CS) -> ProbeResult:
    """Logistic regression on standardised frozen features, C chosen on validation macro ROC-AUC (else accuracy).

    L2-regularised lbfgs, multinomial for multi-class, one classifier per label for multi-label, no class
    weights. Ties go to the smallest C (the strongest regularisation). Returned weights act on raw features.
    """
    if len(x_train) == 0 or len(x_val) == 0:
        raise MedsslError(f"linear probe needs training and validation images, got {len(x_train)} and {len(x_val)}")
    scaler = StandardScaler().fit(np.asarray(x_train, dtype=np.float64))
    mu, sd = scaler.mean_, scaler.scale_  # scale_ is 1 where a feature is constant
    z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)
    best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for C in sorted(float(c) for c in Cs):
        w, b = _fit(z_train, y_train, task, C, seed)
        val_scores = task_probabilities(z_val @ w.T + b, task)
        metric, score = validation_score(y_val, val_scores, task)  # the metric depends on y_val only: one for all C
        if best is None or score > best[0]:
            best = (score, C, w, b, val_scores)
    if best is None:
        raise MedsslError("linear probe: no regularisation strength C to try")
    score, C, w, b, val_scores = best
    weight = w / sd                                         # w . (x - mu) / sd + b = (w / sd) . x + (b - ...)
    bias = b - weight @ mu
    scores = task_probabilities(np.asarray(x_test, dtype=np.float64) @ weight.T + bias, task)
    return ProbeResult(scores, val_scores, C, weight, bias, metric, score)


def probe_module(backbone: nn.Module, result: ProbeResult, task: Task) -> Classifier:
    """The probe as a Classifier: backbone + a LinearHead holding the probe's weights, images -> logits (B, K),
    eval mode. The backbone is shared, not copied: copy it first to keep the probe apart from later training."""
    model = Classifier(backbone, task)
    model.head.load(result.weight, result.bias)
    return model.eval()


def knn_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, task: Task, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """Weighted kNN on cosine similarity (InstDisc, Wu et al. 2018; DINO, Caron et al. 2021): the k most similar
    training images vote with weights exp(sim / T), normalised to sum to 1; scores (N, K), K = task.n_outputs:
    the weighted mean of the neighbours' outcome columns. k is capped at the training set's size."""
    if len(x_train) == 0:
        raise MedsslError("kNN needs at least one training image")
    k = max(1, min(k, len(x_train)))
    train = _normalise(x_train)
    labels = outcomes(y_train, task).astype(np.float64)    # (N_train, K)
    out = []
    for lo in range(0, len(x_test), chunk):
        sim = _normalise(x_test[lo : lo + chunk]) @ train.T  # (n, N_train)
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]   # (n, k), unordered
        s = np.take_along_axis(sim, idx, axis=1) / temperature
        w = np.exp(s - s.max(axis=1, keepdims=True))        # exp(sim / T) up to a factor that normalising removes
        w /= w.sum(axis=1, keepdims=True)
        out.append(np.einsum("nk,nkc->nc", w, labels[idx]))
    return np.concatenate(out) if out else np.zeros((0, labels.shape[1]))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def backbone_fingerprint(backbone: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the whole state (parameters and buffers: BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def sanity_check(backbone: nn.Module, fingerprint: dict[str, Tensor]) -> None:
    """Raise AssertionError naming the first tensor that differs from the fingerprint (moco's sanity_check):
    a frozen-feature protocol must leave the backbone bit for bit as it found it."""
    state = backbone.state_dict()
    if state.keys() != fingerprint.keys():
        changed = sorted(set(state) ^ set(fingerprint))
        raise AssertionError(f"probing changed the backbone's tensors: {changed[:5]} appeared or disappeared")
    for name, before in fingerprint.items():
        now = state[name].detach().to(before.device)
        if now.shape != before.shape or not torch.equal(now, before):
            raise AssertionError(f"probing changed the backbone: {name} is not what it was before "
                                 "(trained, or BatchNorm statistics updated by a forward pass in train mode)")
