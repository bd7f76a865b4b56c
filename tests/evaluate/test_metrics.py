"""Metrics against scikit-learn and by hand; patient-level bootstrap; embedding quality; seed aggregation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from medssl.errors import MedsslError
from medssl.evaluate.metrics import (
    aggregate_runs,
    bootstrap_ci,
    bootstrap_intervals,
    bootstrap_samples,
    classification_metrics,
    embedding_quality,
    fast_auc,
    over_seeds,
    patient_resample_weights,
    predictions,
)
from medssl.data.tasks import Task

BINARY = Task("binary", ("normal", "pneumonia"))
MULTICLASS = Task("multiclass", ("a", "b", "c"))
MULTILABEL = Task("multilabel", ("x", "y", "z"), "no_finding")


def softmax_scores(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Random class probabilities (N, C), rows summing to 1."""
    e = np.exp(rng.normal(size=(n, c)))
    return e / e.sum(axis=1, keepdims=True)


def data(kind: str, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and scores (N, K) of one kind in the shapes of data.tasks, with some signal in the scores."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n)
        return y, np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)[:, None]   # (N, 1)
    if kind == "multiclass":
        y = np.arange(n) % 3
        return y, (softmax_scores(rng, n, 3) + 0.5 * np.eye(3)[y]) / 1.5  # rows sum to 1
    y = rng.integers(0, 2, (n, 3))
    return y, np.clip(0.3 * y + rng.uniform(0, 0.7, (n, 3)), 0, 1)


def sklearn_macros(y: np.ndarray, preds: np.ndarray) -> tuple[float, float, float]:
    """sklearn's macro precision, recall and F1."""
    return precision_recall_fscore_support(y, preds, average="macro", zero_division=0)[:3]


def test_binary_equals_sklearn():
    y, s2 = data("binary")
    m = classification_metrics(y, s2, BINARY)
    s = s2[:, 0]                                             # sklearn's binary functions take one score per image
    preds = (s >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, preds))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, preds))
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx(sklearn_macros(y, preds))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, s))
    assert m["roc_auc_classes_used"] == 1 and m["n"] == 60
    p, r, f, sup = precision_recall_fscore_support(y, preds, labels=[0, 1], zero_division=0)
    for k, name in enumerate(BINARY.classes):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[k], r[k], f[k], sup[k]))
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, s))   # one ranking: the same AUC for both classes


def test_threshold_moves_predictions_not_auc():
    y, s = data("binary")
    low, high = classification_metrics(y, s, BINARY, threshold=0.0), classification_metrics(y, s, BINARY, threshold=2)
    assert low["accuracy"] == pytest.approx(y.mean())        # everything predicted positive
    assert high["accuracy"] == pytest.approx(1 - y.mean())   # everything predicted negative
    assert low["roc_auc_macro"] == high["roc_auc_macro"]


def test_accuracy_and_auc_keep_their_names():
    # perfectly ranked but every score below the threshold: AUC 1, everything predicted negative
    y = np.array([0] * 7 + [1] * 3)
    s = np.linspace(0.01, 0.10, 10)[:, None]
    m = classification_metrics(y, s, BINARY)
    assert m["roc_auc_macro"] == 1.0
    assert m["accuracy"] == pytest.approx(0.7)              # the 7 negatives
    assert m["balanced_accuracy"] == pytest.approx(0.5)     # recall 1 on negatives, 0 on positives
    assert m["recall_macro"] == pytest.approx(0.5)
    assert m["precision_macro"] == pytest.approx(0.35)      # (7/10 + 0) / 2
    assert m["f1_macro"] == pytest.approx(7 / 17)           # F1 of negatives 2*7/(2*7+3), positives 0
    assert m["per_class"]["pneumonia"]["recall"] == 0.0 and m["per_class"]["pneumonia"]["roc_auc"] == 1.0


def test_binary_metrics_from_n_by_1_scores_by_hand():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([[0.1], [0.3], [0.7], [0.6], [0.9]])      # (N, 1): probability of "pneumonia"
    assert predictions(s, BINARY).tolist() == [0, 0, 1, 1, 1]   # shaped like y: one image wrong (the 0.7)
    m = classification_metrics(y, s, BINARY)
    # positives 0.6 and 0.9 against negatives 0.1, 0.3, 0.7: 0.6 wins 2 of 3, 0.9 wins 3 of 3
    assert m["roc_auc_macro"] == pytest.approx(5 / 6) and m["roc_auc_classes_used"] == 1
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)        # recall of normal 2/3, pneumonia 1
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2)          # predicted normal 2/2, pneumonia 2/3
    assert m["f1_macro"] == pytest.approx(0.8)                             # both classes 2pr/(p+r) = 4/5
    normal, pneumonia = m["per_class"]["normal"], m["per_class"]["pneumonia"]
    assert (normal["precision"], normal["recall"], normal["support"]) == pytest.approx((1, 2 / 3, 3))
    assert (pneumonia["precision"], pneumonia["recall"], pneumonia["support"]) == pytest.approx((2 / 3, 1, 2))
    assert normal["roc_auc"] == pneumonia["roc_auc"] == pytest.approx(5 / 6)
    assert classification_metrics(y, s, BINARY, threshold=0.65)["accuracy"] == pytest.approx(3 / 5)  # 0.6 -> 0
    # one patient: every resample is the whole set, so each interval is the point itself
    ci = bootstrap_ci(y, s, BINARY, ["p"] * 5, n_boot=10)
    assert ci["roc_auc_macro"] == pytest.approx((5 / 6, 5 / 6)) and ci["accuracy"] == pytest.approx((0.8, 0.8))


def test_multiclass_equals_sklearn_and_top1_is_accuracy():
    y, s = data("multiclass")
    m = classification_metrics(y, s, MULTICLASS)
    preds = s.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, preds)) and m["top1"] == m["accuracy"]
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, preds))
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx(sklearn_macros(y, preds))
    norm = s / s.sum(axis=1, keepdims=True)                 # sklearn's ovr insists on rows summing to 1
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, norm, multi_class="ovr"))
    assert m["per_class"]["b"]["roc_auc"] == pytest.approx(roc_auc_score(y == 1, s[:, 1]))
    assert "top5" not in m and m["roc_auc_classes_used"] == 3


def test_multiclass_top5_with_six_classes():
    rng = np.random.default_rng(1)
    y, s = np.arange(30) % 6, softmax_scores(rng, 30, 6)
    m = classification_metrics(y, s, Task("multiclass", tuple("abcdef")))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, s, k=5))
    assert m["top5"] >= m["top1"]


def test_multiclass_absent_class_gets_nan_auc():
    y, s = np.array([0, 0, 1, 1]), softmax_scores(np.random.default_rng(2), 4, 3)
    m = classification_metrics(y, s, MULTICLASS)
    assert math.isnan(m["per_class"]["c"]["roc_auc"]) and m["per_class"]["c"]["support"] == 0
    assert m["roc_auc_macro"] == pytest.approx((roc_auc_score(y == 0, s[:, 0]) + roc_auc_score(y == 1, s[:, 1])) / 2)


def test_multilabel_accuracy_is_per_label_and_exact_match_is_strict():
    y = np.array([[1, 0, 0], [1, 1, 0]])
    s = np.array([[0.9, 0.1, 0.2], [0.9, 0.2, 0.1]])        # second image misses its label y
    m = classification_metrics(y, s, MULTILABEL)
    assert m["accuracy"] == pytest.approx(5 / 6)            # 5 of 6 label decisions right
    assert m["exact_match"] == pytest.approx(0.5)           # 1 of 2 images entirely right


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")   # sklearn's, on column z
def test_multilabel_constant_column_is_left_out_of_macro_auc():
    y, s = data("multilabel")
    y[:, 2] = 0                                              # no image has finding z
    m = classification_metrics(y, s, MULTILABEL)
    preds = (s >= 0.5).astype(int)
    assert math.isnan(m["per_class"]["z"]["roc_auc"]) and m["roc_auc_classes_used"] == 2
    aucs = [roc_auc_score(y[:, k], s[:, k]) for k in (0, 1)]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(aucs))
    assert m["exact_match"] == pytest.approx(accuracy_score(y, preds))
    assert m["accuracy"] == pytest.approx(np.mean([accuracy_score(y[:, k], preds[:, k]) for k in range(3)]))
    assert m["balanced_accuracy"] == pytest.approx(
        np.mean([balanced_accuracy_score(y[:, k], preds[:, k]) for k in range(3)]))
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx(sklearn_macros(y, preds))


@pytest.mark.parametrize("task, y, s, match", [
    (BINARY, np.zeros(4), np.zeros((4, 2)), r"scores of shape \(4, 1\)"),
    (BINARY, np.zeros(4), np.zeros(4), r"scores of shape \(4, 1\)"),      # the old (N,) binary form
    (BINARY, np.zeros(4), np.zeros((5, 1)), "scores of shape"),
    (MULTICLASS, np.zeros(4), np.zeros((4, 4)), "3 classes"),
    (MULTILABEL, np.zeros(4), np.zeros((4, 3)), "targets of shape"),
    (BINARY, np.array([0, 1, 2]), np.zeros((3, 1)), "integers in"),
    (MULTICLASS, np.array([0, 3]), np.zeros((2, 3)), "integers in"),
    (BINARY, np.array([0, 1]), np.array([[0.5], [np.nan]]), "NaN"),
    (BINARY, np.zeros(0), np.zeros((0, 1)), "no samples"),
])
def test_bad_shapes_and_values_raise(task, y, s, match):
    with pytest.raises(MedsslError, match=match):
        classification_metrics(y, s, task)


def test_fast_auc_equals_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 200), rng.integers(0, 5, 200) / 4   # five distinct scores: many ties
    assert fast_auc(y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, (3, 200)).astype(float)
    expected = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    assert fast_auc(y, s, w) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(fast_auc(np.zeros(5), np.arange(5.0))[0])


def test_resample_draws_whole_patients():
    groups = [f"p{i // 4}" for i in range(40)]               # 10 patients of 4 images
    w = patient_resample_weights(groups, 50, np.random.default_rng(0))
    per_patient = w.reshape(50, 10, 4)
    assert (per_patient == per_patient[:, :, :1]).all()      # a patient's images share one multiplicity
    assert (per_patient[:, :, 0].sum(axis=1) == 10).all()    # 10 patients drawn each time


MACROS = ("balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_macro")


@pytest.mark.parametrize("kind, task, metrics", [
    ("binary", BINARY, ("accuracy", *MACROS)),
    ("multiclass", MULTICLASS, ("accuracy", "top1", *MACROS)),
    ("multilabel", MULTILABEL, ("accuracy", "exact_match", *MACROS)),
])
@pytest.mark.parametrize("n, n_patients", [(40, 20), (9, 3)])  # 3 patients: resamples lose classes
def test_vectorised_bootstrap_equals_metrics_of_the_built_resample(kind, task, metrics, n, n_patients):
    y, s = data(kind, n=n)
    groups = [f"p{i % n_patients}" for i in range(n)]
    samples = bootstrap_samples(y, s, task, groups, metrics, n_boot=20, seed=5)
    w = patient_resample_weights(groups, 20, np.random.default_rng(5))   # the same draws
    for i in range(20):
        idx = np.repeat(np.arange(n), w[i].astype(int))
        built = classification_metrics(y[idx], s[idx], task)
        for m in metrics:
            assert samples[m][i] == pytest.approx(built[m], abs=1e-12, nan_ok=True), (m, i)


def binary_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images from one fixed distribution: AUC about 0.8; scores (n, 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=n))))[:, None]


def width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_ci_contains_point_estimate_and_narrows_with_more_patients():
    small, large = binary_sample(100, 0), binary_sample(2000, 0)
    ci_small = bootstrap_ci(*small, BINARY, [str(i) for i in range(100)], n_boot=300)
    ci_large = bootstrap_ci(*large, BINARY, [str(i) for i in range(2000)], n_boot=300)
    for (y, s), ci in ((small, ci_small), (large, ci_large)):
        point = classification_metrics(y, s, BINARY)
        for m in ("roc_auc_macro", "accuracy"):
            assert ci[m][0] <= point[m] <= ci[m][1]
    for m in ("roc_auc_macro", "accuracy"):              # width ~ 1/sqrt(n): expected ratio sqrt(20) ~ 4.5
        assert width(ci_large[m]) < width(ci_small[m]) / 2.5


def test_ci_resamples_patients_not_images():
    y, s = binary_sample(40, 1)
    patients = [f"p{i:02d}" for i in range(40)]
    y10, s10, groups10 = np.repeat(y, 10), np.repeat(s, 10, axis=0), np.repeat(patients, 10)  # 10 copies of each
    by_patient = bootstrap_ci(y10, s10, BINARY, list(groups10), n_boot=400)
    one_each = bootstrap_ci(y, s, BINARY, patients, n_boot=400)
    by_image = bootstrap_ci(y10, s10, BINARY, [str(i) for i in range(400)], n_boot=400)
    for m in ("roc_auc_macro", "accuracy"):
        assert by_patient[m] == pytest.approx(one_each[m], abs=1e-12)   # copies add no information
        assert width(by_image[m]) < 0.6 * width(by_patient[m])          # expected ratio 1/sqrt(10) ~ 0.32


def test_bootstrap_is_reproducible_for_a_seed():
    y, s = binary_sample(80, 2)
    groups = [str(i // 2) for i in range(80)]
    first, again, other = (bootstrap_ci(y, s, BINARY, groups, n_boot=100, seed=seed) for seed in (7, 7, 8))
    assert first == again and first != other


def test_undefined_resamples_are_skipped_and_counted():
    y, s = np.array([0, 0, 0, 0, 0, 1]), np.linspace(0, 1, 6)[:, None]   # one positive patient
    groups = list("abcdef")
    samples = bootstrap_samples(y, s, BINARY, groups, ("roc_auc_macro",), n_boot=200, seed=0)
    w = patient_resample_weights(groups, 200, np.random.default_rng(0))
    assert np.isnan(samples["roc_auc_macro"]).sum() == (w[:, 5] == 0).sum() > 0  # exactly the draws missing 'f'
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # the count is in the result, not a warning
        iv = bootstrap_intervals(y, s, BINARY, groups, ("roc_auc_macro",), n_boot=200, seed=0)["roc_auc_macro"]
        ci = bootstrap_ci(y, s, BINARY, groups, ("roc_auc_macro",), n_boot=200, seed=0)
    assert (iv.resamples, iv.n_boot) == (200 - (w[:, 5] == 0).sum(), 200)
    assert ci["roc_auc_macro"] == (iv.low, iv.high) == (1.0, 1.0)   # perfectly ranked whenever defined


def test_bootstrap_rejects_unknown_metric_and_bad_groups():
    y, s = binary_sample(10, 0)
    with pytest.raises(MedsslError, match="cannot bootstrap"):
        bootstrap_ci(y, s, BINARY, [str(i) for i in range(10)], ("auc",))
    with pytest.raises(MedsslError, match="one patient id per image"):
        bootstrap_ci(y, s, BINARY, ["a"] * 9)


def test_embedding_quality_separated_and_mixed():
    # two directions, points of varying length: cosine distance 0 within, 1 across
    feats = np.concatenate([np.outer(np.arange(1, 11), [1, 0, 0]), np.outer(np.arange(1, 11), [0, 1, 0])])
    labels = np.repeat([0, 1], 10)
    q = embedding_quality(feats, labels)
    assert q["silhouette"] == pytest.approx(1.0) and q["davies_bouldin"] == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    mixed = embedding_quality(rng.normal(size=(400, 8)), rng.integers(0, 3, 400))
    assert abs(mixed["silhouette"]) < 0.05 and mixed["davies_bouldin"] > 5
    assert embedding_quality(rng.normal(size=(300, 8)), rng.integers(0, 3, 300), max_points=100)["n"] == 100
    with pytest.raises(MedsslError, match="distinct labels"):
        embedding_quality(feats, np.zeros(20))


def test_over_seeds_by_hand():
    got = over_seeds([0.8, 0.9, 1.0])                       # deviations -0.1, 0, 0.1: variance 0.02 / 2
    assert (got["mean"], got["std"], got["n"], got["values"]) == (pytest.approx(0.9), pytest.approx(0.1), 3,
                                                                   [0.8, 0.9, 1.0])
    assert over_seeds([0.7])["std"] == 0.0
    with pytest.raises(MedsslError):
        over_seeds([])


def test_aggregate_runs_takes_numeric_keys():
    runs = [{"accuracy": 0.8, "roc_auc_macro": 0.9, "n": 10, "per_class": {}},
            {"accuracy": 0.6, "roc_auc_macro": 0.7, "n": 10, "per_class": {}}]
    agg = aggregate_runs(runs)
    assert set(agg) == {"accuracy", "roc_auc_macro", "n"}
    assert agg["accuracy"]["mean"] == pytest.approx(0.7) and agg["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert agg["roc_auc_macro"]["values"] == [0.9, 0.7]
    with pytest.raises(MedsslError, match="runs must match"):
        aggregate_runs([runs[0], {"accuracy": 0.5}])


def test_metrics_emit_no_warnings_on_small_sets():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classification_metrics(np.array([0, 0]), np.array([[0.9], [0.1]]), BINARY)   # one class present
