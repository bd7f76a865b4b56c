"""Evaluation figures as PNG files: label efficiency, ROC curves, confusion matrices, t-SNE, Grad-CAM overlays.

Figures use matplotlib's object API (`Figure`, saved through the Agg canvas), never pyplot: no global state to
leak between plots, safe in the web service's threads, and no window ever opens. Every function returns the path.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from monai.visualize import GradCAM
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, roc_curve
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.evaluate.metrics import check_inputs, classification_metrics, outcomes, predictions
from medssl.data.tasks import Task

DPI = 120
MAX_CAM_IMAGES = 8
TSNE_MIN_POINTS = 5
METRIC_NAMES = {
    "roc_auc_macro": "ROC-AUC (macro)", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
    "f1_macro": "F1 (macro)", "precision_macro": "precision (macro)", "recall_macro": "recall (macro)",
    "top1": "top-1 accuracy", "top5": "top-5 accuracy", "exact_match": "exact match", "dice": "Dice",
}


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG of exactly figsize x DPI pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _point(point: dict, metric: str) -> dict:
    """An over_seeds dict, given either itself or an aggregate_runs dict holding `metric`."""
    if "mean" in point:
        return point
    if isinstance(point.get(metric), dict) and "mean" in point[metric]:
        return point[metric]
    raise MedsslError(f"a curve point needs 'mean' and 'std' (over_seeds) or a {metric!r} entry, got {list(point)}")


def _percent(fraction: float, _pos: object = None) -> str:
    return f"{100 * fraction:g} %"


def label_efficiency_plot(curves: dict[str, dict[float, dict]], path: str | os.PathLike,
                          metric: str = "roc_auc_macro", reference: dict[str, float] | None = None,
                          title: str = "") -> Path:
    """Metric against the labelled fraction (log x): mean with std error bars per method, reference lines.

    curves: {method: {fraction: over_seeds dict}} (an aggregate_runs dict per point works too: `metric` is taken);
    fractions may be strings, as they come back from metrics.json.
    reference: {name: value} drawn as horizontal dashed lines, e.g. a published baseline.
    """
    curves = {method: {float(f): p for f, p in points.items()} for method, points in curves.items()}
    fractions = sorted({f for points in curves.values() for f in points})
    if not fractions or min(fractions) <= 0:
        raise MedsslError(f"label_efficiency_plot needs positive label fractions, got {fractions}")
    name = METRIC_NAMES.get(metric, metric)
    crowded = len(curves) + len(reference or {}) > 6  # a legend that would cover the curves goes beside them
    fig = Figure(figsize=(9.6 if crowded else 6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (method, points) in enumerate(curves.items()):
        xs = sorted(points)
        stats = [_point(points[f], metric) for f in xs]
        shift = 1.04 ** (i - (len(curves) - 1) / 2)  # nudge methods apart so error bars do not hide each other
        ax.errorbar([f * shift for f in xs], [s["mean"] for s in stats], yerr=[s["std"] for s in stats],
                    marker="o", capsize=3, label=method)
    for j, (ref_name, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color="0.35", linestyle=("--", ":", "-.")[j % 3], linewidth=1,
                   label=f"{ref_name}: {value:.3f}")
    ax.set_xscale("log")
    ax.set_xlim(fractions[0] / 1.6, fractions[-1] * 1.6)
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("labelled training images")
    one_seed = all(_point(p, metric).get("n") == 1 for points in curves.values() for p in points.values())
    ax.set_ylabel(f"{name} (one seed)" if one_seed else f"{name} (mean ± std over seeds)")
    ax.set_title(title or f"Label efficiency: {name}")
    ax.grid(alpha=0.3)
    if crowded:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize="small")
    return _save(fig, path)


def _roc_axes(ax: Axes, title: str, n_curves: int) -> None:
    """Chance diagonal, unit square, labels and legend of a ROC plot."""
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=title,
           xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small" if n_curves <= 8 else "x-small")


def roc_plot(y: np.ndarray, scores: np.ndarray, task: Task, path: str | os.PathLike, title: str = "") -> Path:
    """ROC curves, one per score column (N, K): the positive class (binary), or each class and their macro mean.

    The macro curve is the mean TPR over classes at each FPR; its legend gives the mean of the class AUCs
    (roc_auc_macro). Classes whose AUC is undefined (one value of y) are left out and named in the title.
    """
    y, scores = check_inputs(y, scores, task)
    m = classification_metrics(y, scores, task)
    fig = Figure(figsize=(5.6, 5.4), layout="constrained")
    ax = fig.add_subplot()
    title = title or f"ROC ({task.kind}, n = {m['n']})"
    names = task.classes[1:] if task.kind == "binary" else task.classes   # one per score column
    truth = outcomes(y, task)                                              # (N, K), like scores
    pairs = [(name, truth[:, k], scores[:, k]) for k, name in enumerate(names)]
    grid, tprs = np.linspace(0, 1, 201), []
    for name, truth, s in pairs:
        auc = m["per_class"][name]["roc_auc"]
        if math.isnan(auc):
            continue
        fpr, tpr, _ = roc_curve(truth, s)
        ax.plot(fpr, tpr, linewidth=2 if len(pairs) == 1 else 1, label=f"{name} (AUC = {auc:.3f})")
        tprs.append(np.interp(grid, fpr, tpr))
    if len(pairs) > 1 and tprs:
        ax.plot(grid, np.mean(tprs, axis=0), color="black", linewidth=2.2,
                label=f"macro mean (AUC = {m['roc_auc_macro']:.3f})")
    undefined = [name for name, *_ in pairs if math.isnan(m["per_class"][name]["roc_auc"])]
    if undefined:
        title += f"\nno AUC (one value of y): {', '.join(undefined)}"
    _roc_axes(ax, title, len(pairs))
    return _save(fig, path)


def _draw_matrix(ax: Axes, counts: np.ndarray, names: Sequence[str], annotate_rates: bool = True):
    """Counts as text over row-normalised colours (each true class sums to 1); returns the image for a colourbar."""
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        text = f"{count}\n{rates[i, j]:.0%}" if annotate_rates else f"{count}"
        ax.text(j, i, text, ha="center", va="center", fontsize="small",
                color="white" if rates[i, j] > 0.5 else "black")
    ticks = np.arange(len(names))
    long_names = max(len(n) for n in names) > 6
    ax.set_xticks(ticks, names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return image


def confusion_plot(y: np.ndarray, scores: np.ndarray, task: Task, path: str | os.PathLike, threshold: float = 0.5,
                   title: str = "") -> Path:
    """Confusion matrix: counts over row-normalised colours; multilabel: one 2x2 matrix per class in a grid."""
    y, scores = check_inputs(y, scores, task)
    preds = predictions(scores, task, threshold)
    rule = "argmax" if task.kind == "multiclass" else f"score ≥ {threshold:g}"
    title = title or f"Confusion matrix ({rule}, n = {len(y)})"
    if task.kind == "multilabel":
        return _save(_multilabel_confusion(y, preds, task, title), path)
    c = len(task.classes)
    size = max(4.0, 0.6 * c + 2.5)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = _draw_matrix(ax, confusion_matrix(y, preds, labels=np.arange(c)), task.classes, annotate_rates=c <= 8)
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.8)
    ax.set_title(title)
    return _save(fig, path)


def _multilabel_confusion(y: np.ndarray, preds: np.ndarray, task: Task, title: str) -> Figure:
    """A grid of per-class 2x2 matrices (rows: truly absent / present; columns: predicted)."""
    c = len(task.classes)
    ncols = min(4, c)
    nrows = math.ceil(c / ncols)
    fig = Figure(figsize=(2.8 * ncols + 1.0, 2.8 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, counts in enumerate(multilabel_confusion_matrix(y, preds)):  # (C, 2, 2): [[tn, fp], [fn, tp]]
        image = _draw_matrix(axes[k], counts, ("absent", "present"))
        axes[k].set_title(task.classes[k], fontsize="medium")
    for ax in axes[c:]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes[:c].tolist(), label="fraction of the true row", shrink=0.8)
    fig.suptitle(title)
    return fig


def tsne_plot(features: np.ndarray, labels: Sequence[str], path: str | os.PathLike, seed: int = 0,
              max_points: int = 2000, title: str = "") -> Path:
    """t-SNE (van der Maaten & Hinton 2008; sklearn, PCA init) of embeddings, coloured by label, seeded sample."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray([str(label) for label in labels])
    if features.ndim != 2 or labels.shape != (len(features),):
        raise MedsslError(f"need features (N, D) and one label per row, got {features.shape} and {len(labels)} labels")
    if len(features) < TSNE_MIN_POINTS:
        raise MedsslError(f"t-SNE needs at least {TSNE_MIN_POINTS} points, got {len(features)}")
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    n = len(features)
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, n / 4), random_state=seed).fit_transform(features)
    names = sorted(set(labels))
    colours = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    for k, name in enumerate(names):
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, alpha=0.75, color=colours(k % colours.N),
                   label=f"{name} ({sel.sum()})")
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2", title=title or f"t-SNE of {n} embeddings")
    ax.legend(title="label (count)", markerscale=1.5, fontsize="small")
    return _save(fig, path)


def _unit_range(maps: Tensor) -> Tensor:
    """Each map scaled to [0, 1] with high = important (MONAI's default normaliser maps max to 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def grad_cam(model: nn.Module, images: Tensor, target_layer: str,
             class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, H, W) in [0, 1] and the class explained per image (N,); `model` is left untouched.

    Runs MONAI's GradCAM on a copy: its hooks stay registered and it zeroes gradients, neither of which
    may reach the caller's model. class_index None explains each image's argmax class.
    """
    layers = dict(model.named_modules())
    if target_layer not in layers:
        similar = [n for n in layers if n.split(".")[-1] == target_layer.split(".")[-1]] or list(layers)[1:6]
        raise MedsslError(f"model has no layer {target_layer!r}; layers such as {similar}")
    clone = copy.deepcopy(model).eval().requires_grad_(False)   # gradients flow to activations, not weights
    device = next(clone.parameters(), images).device
    x = images.detach().to(device, torch.float32).requires_grad_(True)  # a graph even if every weight is frozen
    with torch.no_grad():
        logits = clone(x)                                                 # (N, K)
    if class_index is not None and not 0 <= class_index < logits.shape[1]:
        raise MedsslError(f"class_index {class_index} is outside the model's {logits.shape[1]} outputs")
    classes = logits.argmax(dim=1) if class_index is None else torch.full((len(x),), class_index, device=device)
    cam = GradCAM(nn_module=clone, target_layers=target_layer, postprocessing=_unit_range)
    maps = torch.zeros(len(x), *x.shape[2:])
    with torch.enable_grad():
        for c in classes.unique().tolist():   # MONAI explains one class index per call
            sel = classes == c
            maps[sel.cpu()] = cam(x[sel], class_idx=int(c))[:, 0].detach().float().cpu()
    return maps.numpy(), classes.cpu().numpy()


def gradcam_plot(model: nn.Module, images: Tensor, target_layer: str, path: str | os.PathLike,
                 class_index: int | None = None, titles: Sequence[str] | None = None) -> Path:
    """Grad-CAM (Selvaraju et al. 2017, MONAI) heat maps (jet, alpha 0.4) over up to 8 grey images in a row.

    model maps (B, C, H, W) to logits (B, K); target_layer is a name from model.named_modules() whose output is a
    feature map (B, D, h, w), e.g. "0.layer4" of a ResNet (not ViT tokens). A one-logit binary head is explained
    for its positive class.
    """
    if images.ndim != 4 or len(images) == 0:
        raise MedsslError(f"gradcam_plot needs images (B, C, H, W) with B >= 1, got {tuple(images.shape)}")
    images = images[:MAX_CAM_IMAGES]
    if titles is not None and len(titles) < len(images):
        raise MedsslError(f"{len(titles)} titles for {len(images)} images")
    maps, classes = grad_cam(model, images, target_layer, class_index)
    n = len(images)
    fig = Figure(figsize=(2.2 * n, 2.7), layout="constrained")
    for i, ax in enumerate(fig.subplots(1, n, squeeze=False)[0]):
        grey = images[i].detach().float().mean(dim=0).cpu().numpy()   # channels averaged into one grey picture
        ax.imshow(grey, cmap="gray", interpolation="nearest")
        ax.imshow(maps[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(titles[i] if titles is not None else f"class {classes[i]}", fontsize="small")
        ax.set_axis_off()
    fig.suptitle(f"Grad-CAM at {target_layer}", fontsize="medium")
    return _save(fig, path)
