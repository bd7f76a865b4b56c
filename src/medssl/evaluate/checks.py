"""What `medssl evaluate` checks before it decodes an image or trains anything, and what it says about the data.

Problems that would end the run late become one MedsslError at the start: an empty split, a test split on which
ROC-AUC is undefined, a label fraction too small to fine-tune on. Limits that leave the run meaningful but weak
become notes, said once in medssl's words in results.md, report.html and metrics.json: a test split too small for
its metrics to mean much, a validation split with one class, a label fraction that holds more (or fewer) images
than asked because every class keeps a patient, two fractions that draw the very same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medssl.data.records import Record
from medssl.data.splits import label_fraction
from medssl.data.tasks import Task
from medssl.errors import MedsslError
from medssl.evaluate.metrics import outcomes

SPLIT_NAMES = ("train", "val", "test")
MIN_TEST_PER_CLASS = 10  # fewer test images of a class (a label: with or without it): its metrics are noise
MIN_TRAIN_IMAGES = 2  # a fine-tuning or segmentation batch needs two images (BatchNorm in train mode)


def percent(fraction: float) -> str:
    """0.01 -> "1%", 0.005 -> "0.5%", 0.0833 -> "8.33%"."""
    return f"{100 * fraction:.3g}%"


def check_split_sizes(splits: dict[str, list[Record]], source: str) -> None:
    """MedsslError naming the first empty split, with every split's size."""
    sizes = ", ".join(f"{n} {len(splits.get(n, []))} images" for n in SPLIT_NAMES)
    for name in SPLIT_NAMES:
        if not splits.get(name):
            n_patients = len({r.patient_id for n in SPLIT_NAMES for r in splits.get(n, [])})
            raise MedsslError(f"{source}: the {name} split is empty ({sizes}; {n_patients} patients): give the "
                              "manifest a 'split' column (medssl data split) or add patients")


def class_counts(y: np.ndarray, task: Task) -> dict[str, tuple[int, int]]:
    """class -> (images with it, images without it); binary and multi-class: one class per image."""
    cols = outcomes(y, task)                                        # (N, K), K = task.n_outputs
    if task.kind == "binary":                                       # one column: classes[1] against classes[0]
        pos = int(cols[:, 0].sum())
        return {task.classes[0]: (len(y) - pos, pos), task.classes[1]: (pos, len(y) - pos)}
    return {c: (int(cols[:, k].sum()), int(len(y) - cols[:, k].sum())) for k, c in enumerate(task.classes)}


def _held(counts: dict[str, tuple[int, int]], task: Task) -> str:
    if task.kind == "multilabel":
        return ", ".join(f"{c} {p}/{p + q}" for c, (p, q) in counts.items())
    return ", ".join(f"{c} {p}" for c, (p, _) in counts.items())


def _auc_defined(counts: dict[str, tuple[int, int]]) -> bool:
    return any(p > 0 and q > 0 for p, q in counts.values())


def check_classes(splits: dict[str, list[Record]], y: dict[str, np.ndarray], task: Task, source: str) -> list[str]:
    """MedsslError when ROC-AUC is undefined on the test split; notes on what else limits the run."""
    notes = []
    test = class_counts(y["test"], task)
    n_test, n_patients = len(y["test"]), len({r.patient_id for r in splits["test"]})
    if not _auc_defined(test):
        raise MedsslError(f"{source}: the test split ({n_test} images: {_held(test, task)}) has no class both "
                          "present and absent, so ROC-AUC is undefined: give the test split images of every class")
    val = class_counts(y["val"], task)
    if not _auc_defined(val):
        notes.append(f"the validation split ({len(y['val'])} images: {_held(val, task)}) has a single class: the "
                     "linear probe's C and fine-tuning's early stopping are chosen on accuracy and the validation "
                     "loss instead of ROC-AUC")
    absent = [c for c, (p, q) in test.items() if p == 0 or q == 0]
    if absent:
        notes.append(f"test split: no AUC for {', '.join(absent)} (always or never present in its {n_test} images); "
                     "the macro AUC averages the other classes")
    small = min(min(p, q) if task.kind == "multilabel" else p for p, q in test.values())
    if small < MIN_TEST_PER_CLASS:
        notes.append(f"the test split is too small for its metrics to mean much ({n_test} images of {n_patients} "
                     f"patients: {_held(test, task)}): under {MIN_TEST_PER_CLASS} test images of a class, one image "
                     f"can be {1 / max(1, small):.0%} of a class, so an AUC of 1.000 or 0.500 may be luck; read the "
                     "95 % CIs, not the means")
    return notes


def fraction_subsets(train: Sequence[Record], fractions: Sequence[float],
                     seeds: int) -> dict[tuple[float, int], np.ndarray]:
    """(fraction, seed) -> row numbers (into the training split) of that seed's label fraction."""
    out = {}
    for seed in range(seeds):
        for fraction in fractions:
            keep = {r.key for r in label_fraction(train, fraction, seed)}
            out[(fraction, seed)] = np.array([i for i, r in enumerate(train) if r.key in keep], dtype=np.int64)
    return out


def _number(values: Sequence[int]) -> int | float:
    """One seed's count, or the mean over seeds where they differ."""
    return int(values[0]) if len(set(values)) == 1 else round(float(np.mean(values)), 1)


def fraction_stats(train: Sequence[Record], subsets: dict[tuple[float, int], np.ndarray]) -> list[dict[str, Any]]:
    """Per label fraction: asked, images and patients (mean over seeds where they differ), actual share of the
    training images, and each seed's counts."""
    patients = np.array([r.patient_id for r in train])
    out = []
    for fraction in dict.fromkeys(f for f, _ in subsets):
        seeds = sorted(s for f, s in subsets if f == fraction)
        per_seed = [{"seed": s, "images": len(subsets[(fraction, s)]),
                     "patients": len(set(patients[subsets[(fraction, s)]]))} for s in seeds]
        images = [p["images"] for p in per_seed]
        out.append({"asked": fraction, "images": _number(images),
                    "patients": _number([p["patients"] for p in per_seed]),
                    "actual": round(float(np.mean(images)) / len(train), 4), "train_images": len(train),
                    "train_patients": len(set(patients)), "per_seed": per_seed})
    return out


def describe_fraction(stats: dict[str, Any]) -> str:
    """"1% asked: 22 images of 11 patients (8.3%)"-style text of one fraction_stats entry."""
    counts = [p["images"] for p in stats["per_seed"]]
    images = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}"
    return f"{images} images of {stats['patients']} patients ({percent(stats['actual'])})"


def check_fractions(train: Sequence[Record], y_train: np.ndarray, task: Task,
                    subsets: dict[tuple[float, int], np.ndarray], trains: bool) -> list[str]:
    """MedsslError when a label fraction leaves too few images to train on (trains: fine-tuning or segmentation
    runs); notes on fractions that hold other than asked, draw the same images, or leave a class out."""
    notes = []
    for (fraction, seed), idx in subsets.items():
        if trains and len(idx) < MIN_TRAIN_IMAGES:
            raise MedsslError(f"--fractions {fraction:g}: seed {seed} draws {len(idx)} training image(s) of "
                              f"{len(train)}; fine-tuning batches need at least {MIN_TRAIN_IMAGES} (BatchNorm): "
                              "use a larger fraction or more training patients")
    for stats in fraction_stats(train, subsets):
        asked, actual = stats["asked"], stats["actual"]
        if abs(actual / asked - 1) > 0.25:
            notes.append(f"label fraction {percent(asked)} asked is {describe_fraction(stats)} of the "
                         f"{stats['train_images']} training images: every class keeps at least one patient")
    seeds = sorted({s for _, s in subsets})
    fractions = sorted({f for f, _ in subsets})
    for a, b in zip(fractions, fractions[1:]):
        if all(np.array_equal(subsets[(a, s)], subsets[(b, s)]) for s in seeds):
            notes.append(f"label fractions {percent(a)} and {percent(b)} draw the same {len(subsets[(a, seeds[0])])} "
                         "training images, so their rows match")
    for fraction in fractions:
        missing = {c: [s for s in seeds if class_counts(y_train[subsets[(fraction, s)]], task)[c][0] == 0]
                   for c in task.classes}
        missing = {c: s for c, s in missing.items() if s}
        if missing:
            notes.append(f"label fraction {percent(fraction)} holds no training image of "
                         + ", ".join(f"{c} (seed {', '.join(map(str, s))})" for c, s in missing.items())
                         + ": the scores for such a class are constant")
    return notes
