"""Pictures of a data set: a montage of images with their labels (and masks), and the label balance per split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medssl.data import io  # noqa: E402
from medssl.data.records import Record  # noqa: E402
from medssl.data.sources import read_record_image  # noqa: E402


def montage(records: Sequence[Record], path: str | os.PathLike, n: int = 16, cols: int = 8) -> Path:
    """A grid of the first n images titled with view and labels; mask outlines drawn in red where present."""
    chosen = list(records)[:n]
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), chosen):
        ax.imshow(read_record_image(r), cmap="gray", vmin=0, vmax=1)
        if r.mask and Path(r.mask).is_file():
            mask = io.read_image(r.mask)[0] > 0
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.6)
        title = ", ".join(r.labels).replace("_", " ") or "unlabelled"
        ax.set_title(f"{r.view}\n{title}" if r.view else title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def label_balance(summary: dict, path: str | os.PathLike) -> Path:
    """Horizontal bars: images per class, one bar group per split (from data.summary.summarize)."""
    classes = summary["classes"]
    splits = list(summary["label_counts"])
    fig, ax = plt.subplots(figsize=(7, 0.2 * len(classes) * max(1, len(splits)) + 1.5))
    height = 0.8 / max(1, len(splits))
    y = np.arange(len(classes))
    for k, split in enumerate(splits):
        counts = [summary["label_counts"][split][c] for c in classes]
        ax.barh(y + k * height, counts, height=height, label=split)
    ax.set_yticks(y + height * (len(splits) - 1) / 2, [c.replace("_", " ") for c in classes])
    ax.set_xlabel("images")
    ax.legend()
    ax.set_title("label balance per split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
