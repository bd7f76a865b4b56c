"""Pictures of a data set: a montage of images with their labels (and masks), and the label balance per split."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medssl.data import io  # noqa: E402
from medssl.data.records import Record  # noqa: E402
from medssl.data.sources import read_record_image  # noqa: E402


TITLE_CHARS = 22  # per line at fontsize 6 on a 1.6-inch panel: neighbouring titles never meet
TITLE_LINES = 4  # of labels; more end in " ..."


def _title(record: Record) -> str:
    """View on the first line, then the labels wrapped to TITLE_CHARS."""
    labels = ", ".join(record.labels).replace("_", " ") or "unlabelled"
    lines = textwrap.wrap(labels, TITLE_CHARS, max_lines=TITLE_LINES, placeholder=" ...")
    return "\n".join(([record.view] if record.view else []) + lines)


def montage_figure(records: Sequence[Record], n: int = 16, cols: int = 8) -> Figure:
    """A grid of the first n images titled with view and labels; mask outlines drawn in red where present."""
    chosen = list(records)[:n]
    cols = max(1, min(cols, len(chosen)))
    rows = (len(chosen) + cols - 1) // cols
    titles = [_title(r) for r in chosen]
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    # constrained layout reserves each row's tallest title (tight_layout let 3-line titles reach the row above)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * (1.5 + 0.12 * lines)), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r, title in zip(axes.ravel(), chosen, titles):
        ax.imshow(read_record_image(r), cmap="gray", vmin=0, vmax=1)
        if r.mask and Path(r.mask).is_file():
            mask = io.read_image(r.mask)[0] > 0
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(title, fontsize=6)
    return fig


def montage(records: Sequence[Record], path: str | os.PathLike, n: int = 16, cols: int = 8) -> Path:
    """montage_figure saved as a PNG."""
    fig = montage_figure(records, n, cols)
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
