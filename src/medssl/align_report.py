"""report.html of a `medssl align` run: the loss curve and an image-text similarity matrix on a test batch.

The test batch is up to MAX_STUDIES studies of the source's test split (else its val split, else the training
records, said on the page): the first image of each study and its whole cleaned report, tokenized by the run's
tokenizer. The model is rebuilt from the run's spec with the weights of checkpoints/last.pt (what a later command
loads, also after a spawned DDP run whose trained copy lived in another process), and scores every image against
every report: cosine similarity of encode_image(x) (B, D) and encode_text(ids, mask) (B, D). A model that has
learnt the pairing shows a bright diagonal; the page gives the top-1 retrieval accuracy both ways against chance.

Figures use matplotlib's object API (Figure, Agg canvas), never pyplot, as evaluate/plots.py does.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from medssl import html
from medssl.checkpoint import last_checkpoint, load_checkpoint
from medssl.data.datasets import ImageDataset, study_groups
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.methods import build_model
from medssl.models.factory import ModelSpec
from medssl.text.reports import filter_reports, training_text

MAX_STUDIES = 8
DPI = 120
REPORT = "report.html"
PLOTS = "plots"


def test_studies(records: Sequence[Record], train_split: str | None, limit: int = MAX_STUDIES
                 ) -> tuple[list[Record], list[str], str]:
    """(one record per study, its whole cleaned report, where they come from) for the similarity matrix.

    The test split if it holds two studies with a usable report, else the val split, else the training split
    (named so on the page): the first `limit` such studies in the source's order, each by its first image.
    """
    candidates = [(f"{split} split", [r for r in records if r.split == split]) for split in ("test", "val")
                  if split != train_split]
    candidates.append(("training images (the source has no test or val split to show)",
                       [r for r in records if train_split is None or not r.split or r.split == train_split]))
    for where, chosen in candidates:
        try:
            chosen, _ = filter_reports(chosen, source=where) if chosen else ([], 0)
        except MedsslError:
            continue
        groups = study_groups(chosen)
        if len(groups) >= 2:
            firsts = [chosen[g[0]] for g in groups[:limit]]
            return firsts, [training_text(r.report) for r in firsts], where
    return [], [], "data"


def similarity(model: torch.nn.Module, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(N, N) cosine similarity: row i = image i, column j = report j; images (N, C, S, S), ids / mask (N, L)."""
    model.eval()
    with torch.no_grad():
        zi = torch.nn.functional.normalize(model.encode_image(images).float(), dim=1)  # (N, D)
        zt = torch.nn.functional.normalize(model.encode_text(ids, mask).float(), dim=1)  # (N, D)
    return (zi @ zt.T).numpy()


def retrieval_top1(sim: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy of image -> report (rows) and report -> image (columns) on an (N, N) matrix; chance 1/N."""
    n = len(sim)
    truth = np.arange(n)
    return {"studies": n, "image_to_text_top1": float((sim.argmax(1) == truth).mean()),
            "text_to_image_top1": float((sim.argmax(0) == truth).mean()), "chance": 1.0 / n,
            "mean_matching": float(np.diag(sim).mean()),
            "mean_other": float((sim.sum() - np.trace(sim)) / max(n * n - n, 1))}


def similarity_plot(sim: np.ndarray, labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Heat map of the (N, N) similarity matrix with each cell's value; the diagonal holds the matching pairs."""
    n = len(sim)
    lo, hi = float(sim.min()), float(sim.max())
    hi = hi if hi > lo else lo + 1e-6                                 # colours span this matrix's own range
    fig = Figure(figsize=(3.2 + 0.5 * n, 1.4 + 0.5 * n), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(sim, cmap="viridis", vmin=lo, vmax=hi)
    for i in range(n):
        for j in range(n):
            light = (sim[i, j] - lo) / (hi - lo) > 0.6
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if light else "white", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), [f"R{j + 1}" for j in range(n)])
    ax.set_yticks(range(n), [f"I{i + 1} {labels[i]}"[:28] for i in range(n)], fontsize=7)
    ax.set_xlabel("report of study")
    ax.set_ylabel("image of study")
    ax.set_title("cosine similarity, image vs report", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def loss_plot(log_csv: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Training loss against step from log.csv; None when the log has fewer than one row."""
    steps, losses = [], []
    if Path(log_csv).is_file():
        with open(log_csv, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step, loss = int(row["step"]), float(row["loss"])
                except (KeyError, TypeError, ValueError):
                    continue
                if math.isfinite(loss):
                    steps.append(step)
                    losses.append(loss)
    if not steps:
        return None
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, losses, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Image-text alignment loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.1)  # long row labels, colourbar ticks
    return path


def _trained_model(run_dir: Path, spec: ModelSpec) -> torch.nn.Module:
    model = build_model(spec)
    model.load_state_dict(load_checkpoint(last_checkpoint(run_dir))["model"])
    return model


def write_align_report(run_dir: str | os.PathLike, cfg: Any, spec: ModelSpec, text: Any, source: Path,
                       metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Write RUN/report.html (and RUN/plots/*.png); return the test batch's retrieval numbers (None if none).

    cfg: the run's PretrainConfig; spec: its model spec (with the tokenizer's vocabulary size); text: the run's
    TextSide (tokenizer, findings); metrics: the run's metrics so far (steps, final loss, text_note).
    """
    from medssl.data.sources import load_source, with_text_column

    run_dir = Path(run_dir)
    plots = run_dir / PLOTS
    sections: list[tuple[str, str]] = []
    note = metrics.get("text_note")
    summary = [{"method": cfg.method, "backbone": cfg.model.backbone, "steps": metrics.get("steps"),
                "final loss": metrics.get("final_loss"), "training studies": metrics.get("studies"),
                "vocabulary": text.tokenizer.vocab_size, "context": text.tokenizer.context,
                "report sentences": cfg.data.report_sentences or "whole report"}]
    sections.append(("Run", html.table(summary) + html.paragraph(f"data: {cfg.data.source or 'built-in synthetic'}"
                                                                  " chest radiographs", note=True)
                     + (html.paragraph(note) if note else "")))
    curve = loss_plot(run_dir / "log.csv", plots / "loss.png")
    sections.append(("Loss", html.image(curve, "training loss") if curve else
                     html.paragraph("no logged step (log.csv is empty)", note=True)))
    records, _ = load_source(source, skip_bad=True, progress=False)
    if cfg.data.text_column is not None:
        records = with_text_column(records, cfg.data.text_column, source)
    chosen, texts, where = test_studies(records, cfg.data.split)
    result = None
    model = _trained_model(run_dir, spec)
    if len(chosen) < 2:
        sections.append(("Image-text similarity", html.paragraph(
            "not drawn: fewer than two studies with a report in any split of the data", note=True)))
    elif not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
        sections.append(("Image-text similarity", html.paragraph(
            f"not drawn: method {cfg.method!r} has no encode_image / encode_text", note=True)))
    else:
        images = ImageDataset(chosen, Preprocess(cfg.data.size, cfg.data.channels))
        x = images.batch(np.arange(len(chosen)))                              # (N, 1, S, S)
        x = x if cfg.data.channels == 1 else x.expand(-1, cfg.data.channels, -1, -1).contiguous()
        enc = text.tokenizer.encode(texts, pad_to="context")
        sim = similarity(model, x, enc["ids"], enc["mask"])
        result = {"from": where, **retrieval_top1(sim)}
        labels = ["|".join(r.labels) or "-" for r in chosen]
        figure = similarity_plot(sim, labels, plots / "similarity.png")
        rows = [{"": f"I{i + 1} / R{i + 1}", "patient": r.patient_id, "study": r.study_id or r.path,
                 "labels": labels[i], "report (cleaned, start)": t[:90] + ("..." if len(t) > 90 else "")}
                for i, (r, t) in enumerate(zip(chosen, texts))]
        scores = [{"image -> report top-1": result["image_to_text_top1"],
                   "report -> image top-1": result["text_to_image_top1"], "chance": result["chance"],
                   "mean matching": result["mean_matching"], "mean other": result["mean_other"]}]
        sections.append(("Image-text similarity", html.paragraph(
            f"{len(chosen)} studies of the {where}: each image (row) against each whole report (column); the "
            "diagonal holds the matching pairs.") + html.image(figure, "similarity matrix") + html.table(scores)
            + html.table(rows)))
    html.write_report(run_dir / REPORT, f"medssl align: {cfg.method}", sections)
    return result
