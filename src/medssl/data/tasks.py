"""What is being predicted: binary, multi-class or multi-label, from the records' labels.

Targets and scores have one shape per kind, used by every protocol, metric and plot. Logits and scores are
ALWAYS 2-D, (N, K) with K = task.n_outputs: no function returns a different rank for a different kind.

| kind       | targets y            | logits and scores (N, K)                                      |
|------------|----------------------|---------------------------------------------------------------|
| binary     | (N,) int in {0, 1}   | (N, 1): probability of the positive class, classes[1]         |
| multiclass | (N,) int in [0, C)   | (N, C): class probabilities (softmax, rows sum to 1)          |
| multilabel | (N, C) int in {0, 1} | (N, C): independent probabilities (one sigmoid each)          |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medssl.data.records import Record, label_names
from medssl.errors import MedsslError

NEGATIVE_NAMES = ("normal", "no_finding", "negative", "benign", "0")
KINDS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class Task:
    """The prediction task: its kind and class names (binary: classes[1] is the positive class)."""

    kind: str
    classes: tuple[str, ...]
    none_label: str | None = None  # multi-label: the label meaning "no class present" (e.g. no_finding)

    @property
    def n_outputs(self) -> int:
        """Logits a classifier head needs, and the width K of every scores array: 1 for binary, C otherwise."""
        return 1 if self.kind == "binary" else len(self.classes)

    def to_dict(self) -> dict[str, object]:
        """Plain data (stored in classifier bundles)."""
        return {"kind": self.kind, "classes": list(self.classes), "none_label": self.none_label}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Task":
        """The task of to_dict's output; MedsslError for anything else."""
        try:
            task = cls(str(data["kind"]), tuple(str(c) for c in data["classes"]),  # type: ignore[union-attr]
                       None if data.get("none_label") is None else str(data["none_label"]))
        except (KeyError, TypeError):
            raise MedsslError(f"not a task description: {data!r}") from None
        if task.kind not in KINDS or not task.classes:
            raise MedsslError(f"not a task description: {data!r}")
        return task


def make_task(records: Sequence[Record], kind: str | None = None) -> Task:
    """Infer the task from labels: several labels on one image (or a 'no_finding' beside findings) -> multilabel."""
    labelled = [r for r in records if r.labels]
    if not labelled:
        raise MedsslError("no labelled images: evaluation needs labels (a 'labels' column, or an .npz with labels)")
    names = label_names(labelled)
    multi = any(len(r.labels) > 1 for r in labelled)
    none = next((n for n in names if n in ("no_finding",)), None)
    if kind is None:
        kind = "multilabel" if multi or (none is not None and len(names) > 2) else (
            "binary" if len(names) == 2 else "multiclass")
    if kind not in KINDS:
        raise MedsslError(f"task kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "multilabel":
        return Task(kind, tuple(n for n in names if n != none), none)
    if multi:
        raise MedsslError(f"task kind {kind!r} needs one label per image, but some images have several")
    if len(names) < 2:
        raise MedsslError(f"only one class ({names[0]!r}) in the labels: nothing to classify")
    if kind == "binary":
        if len(names) != 2:
            raise MedsslError(f"binary task needs exactly 2 classes, found {len(names)}: {names}")
        neg = next((n for n in names if n.lower() in NEGATIVE_NAMES), names[0])
        return Task(kind, (neg, next(n for n in names if n != neg)))
    return Task(kind, tuple(names))


def task_probabilities(logits: np.ndarray, task: Task) -> np.ndarray:
    """Logits (N, K) -> probabilities (N, K), K = task.n_outputs: softmax (multiclass), one sigmoid per column."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    if z.ndim != 2 or z.shape[1] != task.n_outputs:
        raise MedsslError(f"logits of shape {tuple(z.shape)} for a {task.kind} task with {task.n_outputs} outputs")
    return (torch.softmax(z, dim=1) if task.kind == "multiclass" else torch.sigmoid(z)).numpy()


def targets(records: Sequence[Record], task: Task) -> np.ndarray:
    """Targets of the records in the task's shape (see the module table)."""
    index = {n: i for i, n in enumerate(task.classes)}
    if task.kind == "multilabel":
        y = np.zeros((len(records), len(task.classes)), dtype=np.int64)
        for i, r in enumerate(records):
            for n in r.labels:
                if n in index:
                    y[i, index[n]] = 1
                elif n != task.none_label:
                    raise MedsslError(f"{r.path}: label {n!r} is not one of the task's classes {list(task.classes)}")
        return y
    y = np.empty(len(records), dtype=np.int64)
    for i, r in enumerate(records):
        if len(r.labels) != 1 or r.labels[0] not in index:
            raise MedsslError(f"{r.path}: labels {list(r.labels)} do not name exactly one of {list(task.classes)}")
        y[i] = index[r.labels[0]]
    return y
