"""Classification metrics (scikit-learn), patient-level bootstrap confidence intervals, embedding quality, seeds.

Targets and scores have the shapes of the table in `data.tasks`: scores are always (N, K), K = task.n_outputs
(binary: K = 1, the positive class); y is (N,) for binary and multiclass, (N, C) for multilabel. Score column k
is ranked against column k of `outcomes(y, task)`, so no AUC needs a branch per kind; only hard binary predictions
read the single column as one score per image (`positive_scores`). Metric names are spelled here and nowhere else,
so that "accuracy" and "roc_auc_macro" cannot trade places on the way to a table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    davies_bouldin_score,
    precision_recall_fscore_support,
    roc_auc_score,
    silhouette_score,
    top_k_accuracy_score,
)

from medssl.errors import MedsslError
from medssl.data.tasks import KINDS, Task

# metrics the bootstrap computes for all resamples at once from image weights; others rebuild each resample
VECTORISED = ("accuracy", "top1", "exact_match", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
              "roc_auc_macro")
_CHUNK_ELEMENTS = 4_000_000  # bootstrap weights are (resamples, images): about 32 MB of float64 at a time


def check_inputs(y: np.ndarray, scores: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Targets (int64) and scores (float64) in the task's shapes, or MedsslError saying what does not fit."""
    if task.kind not in KINDS:
        raise MedsslError(f"task kind {task.kind!r} is not one of {', '.join(KINDS)}")
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    n, c = (y.shape[0] if y.ndim else 0), len(task.classes)
    y_shape, s_shape = ((n, c) if task.kind == "multilabel" else (n,)), (n, task.n_outputs)
    if y.shape != y_shape or scores.shape != s_shape:
        raise MedsslError(
            f"{task.kind} task with {c} classes needs targets of shape {y_shape} and scores of shape {s_shape} "
            f"(N = {n}), got targets {y.shape} and scores {scores.shape}")
    if n == 0:
        raise MedsslError("no samples: targets and scores are empty")
    n_values = c if task.kind == "multiclass" else 2
    if not np.isin(y, np.arange(n_values)).all():
        raise MedsslError(f"{task.kind} targets must be integers in [0, {n_values}), got values {np.unique(y)[:10]}")
    if not np.isfinite(scores).all():
        raise MedsslError("scores contain NaN or infinity")
    return y.astype(np.int64), scores


def outcomes(y: np.ndarray, task: Task) -> np.ndarray:
    """Targets as 0/1 columns (N, K) matching the score columns: binary y as one column, multi-class one-hot
    (one-vs-rest), multi-label as is."""
    y = np.asarray(y)
    if task.kind == "binary":
        return y.reshape(-1, 1).astype(np.int64)
    if task.kind == "multiclass":
        return np.eye(len(task.classes), dtype=np.int64)[y]
    return y.astype(np.int64)


def positive_scores(scores: np.ndarray) -> np.ndarray:
    """Binary scores (N, 1) -> (N,) probability of classes[1]: one score per image, shaped like binary y."""
    return np.asarray(scores)[:, 0]


def predictions(scores: np.ndarray, task: Task, threshold: float = 0.5) -> np.ndarray:
    """Hard predictions shaped like y: score >= threshold (binary (N,), multilabel (N, C)), argmax (multiclass)."""
    if task.kind == "multiclass":
        return scores.argmax(axis=1)
    return ((positive_scores(scores) if task.kind == "binary" else scores) >= threshold).astype(np.int64)


def _auc(y01: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's ROC-AUC; NaN when y holds one value only (the AUC is undefined)."""
    return math.nan if y01.min() == y01.max() else float(roc_auc_score(y01, s))


def class_aucs(y: np.ndarray, scores: np.ndarray, task: Task) -> np.ndarray:
    """One-vs-rest ROC-AUC per class (C,); binary: both classes share the one ranking, so the same AUC twice."""
    truth = outcomes(y, task)                                    # (N, K), like scores
    aucs = np.array([_auc(truth[:, k], scores[:, k]) for k in range(truth.shape[1])])
    return np.repeat(aucs, len(task.classes)) if task.kind == "binary" else aucs


def _label_metrics(y: np.ndarray, preds: np.ndarray, task: Task) -> dict:
    """Accuracy, balanced accuracy and macro precision / recall / F1 (sklearn's macro: over the labels seen)."""
    p, r, f, _ = precision_recall_fscore_support(y, preds, average="macro", zero_division=0)
    out = {"precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f)}
    if task.kind == "multilabel":
        out["accuracy"] = float((preds == y).mean())  # mean per-label accuracy; exact_match is the strict one
        out["exact_match"] = float(accuracy_score(y, preds))
        out["balanced_accuracy"] = float(np.mean([balanced_accuracy_score(y[:, k], preds[:, k])
                                                  for k in range(y.shape[1])]))
    else:
        out["accuracy"] = float(accuracy_score(y, preds))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, preds))
    return out


def classification_metrics(y: np.ndarray, scores: np.ndarray, task: Task, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, macro precision / recall / F1 / ROC-AUC, "n", and "per_class" figures.

    binary: prediction = score >= threshold; per_class holds both classes (their AUCs are equal: one ranking).
    multiclass: prediction = argmax; "top1" (== accuracy), "top5" when C >= 5; ROC-AUC one-vs-rest.
    multilabel: score >= threshold per label; "accuracy" is the mean per-label accuracy and "exact_match" the
    fraction of images with every label right (subset accuracy); macros average over labels.
    A class whose AUC is undefined (one value of y) gets NaN and is left out of "roc_auc_macro";
    "roc_auc_classes_used" counts the AUCs that entered it (binary: 1, or 0 when undefined).
    """
    y, scores = check_inputs(y, scores, task)
    preds = predictions(scores, task, threshold)
    c = len(task.classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred has classes not in y_true": expected on small sets
        out = _label_metrics(y, preds, task)
        labels = None if task.kind == "multilabel" else np.arange(c)
        p, r, f, support = precision_recall_fscore_support(y, preds, labels=labels, average=None, zero_division=0)
    aucs = class_aucs(y, scores, task)
    used = aucs[1:] if task.kind == "binary" else aucs
    used = used[~np.isnan(used)]
    out["roc_auc_macro"] = float(used.mean()) if used.size else math.nan
    out["roc_auc_classes_used"] = int(used.size)
    if task.kind == "multiclass":
        out["top1"] = out["accuracy"]
        if c >= 5:
            out["top5"] = float(top_k_accuracy_score(y, scores, k=5, labels=np.arange(c)))
    out["n"] = int(len(y))
    out["per_class"] = {
        name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "roc_auc": float(aucs[k]),
               "support": int(support[k])}
        for k, name in enumerate(task.classes)
    }
    return out


def fast_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Binary ROC-AUC under many image weightings at once: weights (B, N) -> (B,); no weights -> (1,).

    Mann-Whitney form: P(positive scores above negative) + half the ties, each image counted with its weight,
    so integer weights give the AUC of a resample without building it (equals roc_auc_score(sample_weight=w)).
    NaN where the positive or the negative class has no weight.
    """
    y, scores = np.asarray(y).astype(bool), np.asarray(scores, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])    # first index of each run of tied scores
    w, pos = w[:, order], y[order]
    gp = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)  # (B, G) positive weight per tie group
    gn = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)  # (B, G) negative weight per tie group
    below = np.cumsum(gn, axis=1) - gn                           # negative weight strictly below each group
    num, den = (gp * (below + 0.5 * gn)).sum(axis=1), gp.sum(axis=1) * gn.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def _rowwise_nanmean(a: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-NaN entries; NaN for a row with none (without numpy's warning)."""
    ok = ~np.isnan(a)
    count = ok.sum(axis=1)
    return np.divide(np.where(ok, a, 0.0).sum(axis=1), count, out=np.full(len(a), np.nan), where=count > 0)


def _weighted_macro(name: str, w: np.ndarray, y: np.ndarray, preds: np.ndarray, task: Task) -> np.ndarray:
    """Weighted macro precision, recall or F1 (B,), over the classes sklearn's average='macro' would use."""
    c = len(task.classes)
    truth, said = (y, preds) if task.kind == "multilabel" else (np.eye(c)[y], np.eye(c)[preds])  # (N, C)
    tp, support, predicted = w @ (truth * said), w @ truth, w @ said                              # (B, C)
    denominator = {"precision_macro": predicted, "recall_macro": support, "f1_macro": support + predicted}[name]
    per_class = np.divide(tp * (2 if name == "f1_macro" else 1), denominator, out=np.zeros_like(tp),
                          where=denominator > 0)                 # zero_division=0
    if task.kind == "multilabel":                                # sklearn averages over every label column
        return per_class.mean(axis=1)
    seen = (support + predicted) > 0                             # otherwise over the classes in y or predictions
    return (per_class * seen).sum(axis=1) / seen.sum(axis=1)


def _weighted_metric(name: str, w: np.ndarray, y: np.ndarray, scores: np.ndarray, preds: np.ndarray,
                     task: Task) -> np.ndarray:
    """A VECTORISED metric on each weighting of the images: w (B, N) -> (B,), as classification_metrics would."""
    hit = preds == y                                             # (N,) or (N, C)
    total = w.sum(axis=1)
    if name in ("accuracy", "top1"):
        return w @ (hit.mean(axis=1) if hit.ndim == 2 else hit) / total
    if name in ("precision_macro", "recall_macro", "f1_macro"):
        return _weighted_macro(name, w, y, preds, task)
    if name == "exact_match":
        return w @ hit.all(axis=1) / total
    if name == "balanced_accuracy":                              # mean recall over the classes present
        if task.kind == "multilabel":                            # per label, classes 0 and 1: columns (N, 2C)
            truth = np.stack([y == 0, y == 1], axis=2).reshape(len(y), -1)
            right = (truth & np.repeat(hit, 2, axis=1)).astype(float)
        else:
            truth = np.eye(len(task.classes), dtype=bool)[y]
            right = (truth & hit[:, None]).astype(float)
        present = w @ truth
        recall = np.divide(w @ right, present, out=np.full(present.shape, np.nan), where=present > 0)
        if task.kind == "multilabel":                            # every label has a class present: no all-NaN
            return np.nanmean(recall.reshape(len(w), -1, 2), axis=2).mean(axis=1)
        return _rowwise_nanmean(recall)
    truth = outcomes(y, task)                                    # roc_auc_macro over the K score columns
    return _rowwise_nanmean(np.stack([fast_auc(truth[:, k], scores[:, k], w) for k in range(truth.shape[1])], 1))


def patient_resample_weights(groups: Sequence[str], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Image multiplicities of n_boot patient-level resamples (n_boot, N): P patients drawn with replacement.

    An image's weight is the number of times its patient was drawn, so a patient's images come and go together.
    """
    _, pid = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_patients = int(pid.max()) + 1
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)  # (n_boot, P)
    return counts[:, pid].astype(np.float64)


def _numeric_keys(point: dict) -> list[str]:
    """Top-level keys of a metrics dict holding a number (not bool, not per_class)."""
    return [k for k, v in point.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def bootstrap_samples(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str],
                      metrics: Sequence[str] = ("roc_auc_macro", "accuracy"), n_boot: int = 1000, seed: int = 0,
                      threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Each metric on n_boot patient-level resamples: {metric: (n_boot,)}, NaN where undefined on a resample.

    VECTORISED metrics come from image weights for all resamples at once; any other key of
    classification_metrics rebuilds each resample and calls it (about 1000x slower).
    """
    y, scores = check_inputs(y, scores, task)
    if len(groups) != len(y):
        raise MedsslError(f"groups has {len(groups)} entries for {len(y)} images: one patient id per image")
    if n_boot < 1:
        raise MedsslError(f"n_boot must be at least 1, got {n_boot}")
    known = _numeric_keys(classification_metrics(y, scores, task, threshold))
    unknown = [m for m in metrics if m not in known or m == "n"]
    if unknown:
        raise MedsslError(f"cannot bootstrap {unknown}: choose from {[k for k in known if k != 'n']}")
    preds = predictions(scores, task, threshold)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // len(y))
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, n_boot, chunk):
        w = patient_resample_weights(groups, min(chunk, n_boot - start), rng)
        rebuilt = [m for m in metrics if m not in VECTORISED]
        # one classification_metrics call per resample serves every rebuilt metric
        rows = [classification_metrics(y[idx], scores[idx], task, threshold)
                for idx in (np.repeat(np.arange(len(y)), wi.astype(np.int64)) for wi in w)] if rebuilt else []
        for m in metrics:
            values[m].append(_weighted_metric(m, w, y, scores, preds, task) if m in VECTORISED
                             else np.array([r[m] for r in rows], dtype=np.float64))
    return {m: np.concatenate(v) for m, v in values.items()}


class Interval(NamedTuple):
    """A percentile bootstrap interval and how many resamples it came from (those where the metric is defined)."""

    low: float
    high: float
    resamples: int  # resamples the metric was defined on
    n_boot: int  # resamples drawn


def bootstrap_intervals(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str],
                        metrics: Sequence[str] = ("roc_auc_macro", "accuracy"), n_boot: int = 1000,
                        alpha: float = 0.05, seed: int = 0, threshold: float = 0.5) -> dict[str, Interval]:
    """Percentile bootstrap (1 - alpha) interval per metric, resampling patients (groups), not images.

    Resamples where a metric is undefined (e.g. AUC with one class drawn) are left out; `resamples` counts the
    ones kept, so a report can say "CI from 61 of 100 resamples". (NaN, NaN) when none is left. No warning: the
    count is part of the result.
    """
    if not 0 < alpha < 1:
        raise MedsslError(f"alpha must lie in (0, 1), got {alpha}")
    samples = bootstrap_samples(y, scores, task, groups, metrics, n_boot, seed, threshold)
    out = {}
    for m, v in samples.items():
        kept = v[~np.isnan(v)]
        lo, hi = np.percentile(kept, [50 * alpha, 100 - 50 * alpha]) if kept.size else (math.nan, math.nan)
        out[m] = Interval(float(lo), float(hi), int(kept.size), int(v.size))
    return out


def bootstrap_ci(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str],
                 metrics: Sequence[str] = ("roc_auc_macro", "accuracy"), n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, threshold: float = 0.5) -> dict[str, tuple[float, float]]:
    """The bounds (low, high) of bootstrap_intervals per metric (which also says how many resamples each used)."""
    return {m: (iv.low, iv.high) for m, iv in
            bootstrap_intervals(y, scores, task, groups, metrics, n_boot, alpha, seed, threshold).items()}


def embedding_quality(features: np.ndarray, labels: np.ndarray, max_points: int = 5000, seed: int = 0) -> dict:
    """Cosine silhouette (-1..1, high = classes apart) and Davies-Bouldin (>= 0, low = apart) of labelled embeddings.

    Davies-Bouldin runs on L2-normalised features: the cosine geometry of the silhouette and the kNN probe.
    At most max_points points enter (a seeded sample), since the silhouette costs O(N^2).
    """
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise MedsslError(f"need features (N, D) and labels (N,), got {features.shape} and {labels.shape}")
    if len(features) > max_points:
        keep = np.random.default_rng(seed).choice(len(features), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels < len(features):
        raise MedsslError(f"embedding quality needs 2 to N - 1 distinct labels, got {n_labels} for N = {len(features)}")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return {"silhouette": float(silhouette_score(features, labels, metric="cosine")),
            "davies_bouldin": float(davies_bouldin_score(unit, labels)), "n": int(len(features))}


def over_seeds(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (ddof=1; 0 for a single value), count and the values of one metric."""
    v = [float(x) for x in values]
    if not v:
        raise MedsslError("over_seeds needs at least one value")
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "n": len(v), "values": v}


def aggregate_runs(runs: Sequence[dict]) -> dict:
    """Metric dicts of several seeds -> {key: over_seeds(...)} for every numeric top-level key."""
    if not runs:
        raise MedsslError("aggregate_runs needs at least one run")
    keys = _numeric_keys(runs[0])
    for i, run in enumerate(runs[1:], start=1):
        if set(_numeric_keys(run)) != set(keys):
            raise MedsslError(f"run {i} has metrics {_numeric_keys(run)}, run 0 has {keys}: runs must match")
    return {k: over_seeds([run[k] for run in runs]) for k in keys}
