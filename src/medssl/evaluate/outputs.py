"""The outputs of `medssl evaluate`: metrics.json, results.md, plots and a self-contained report.html."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl import __version__, html

LABELS = {"linear": "linear probe", "knn": "kNN", "finetune": "fine-tune (pretrained)",
          "scratch": "fine-tune (scratch)", "segment": "U-Net (pretrained)", "segment_scratch": "U-Net (scratch)"}
COLUMNS = (("roc_auc_macro", "AUC"), ("accuracy", "ACC"), ("balanced_accuracy", "BalACC"), ("f1_macro", "F1"),
           ("dice_macro", "Dice"))


def _pm(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return ""
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def table_rows(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, str]]:
    """One row per protocol and label fraction: mean ± std over seeds of the headline metrics."""
    rows = []
    for protocol, by_fraction in summary.items():
        for fraction, metrics in by_fraction.items():
            row = {"protocol": LABELS.get(protocol, protocol), "labels": f"{float(fraction):.0%}"}
            row.update({name: _pm(metrics.get(key)) for key, name in COLUMNS if key in metrics})
            row["seeds"] = str(max((m.get("n", 0) for m in metrics.values() if isinstance(m, dict)), default=0))
            rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """A GitHub-flavoured Markdown table of the rows."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _label_strings(records: Sequence[Any], limit: int = 8) -> list[str]:
    """A label per record for colouring (multi-label: the combination; rare combinations -> 'other')."""
    names = ["+".join(r.labels) for r in records]
    common = {n for n, _ in Counter(names).most_common(limit)}
    return [n if n in common else "other" for n in names]


def _target_layer(model: nn.Module) -> str | None:
    """Name of the last ResNet stage (Grad-CAM needs a convolutional map); None for a ViT."""
    names = [n for n, _ in model.named_modules() if n.endswith("layer4")]
    return names[-1] if names else None


class ImagesToLogits(nn.Module):
    """Wrap a Classifier (forward on a batch dict) as images -> logits, as Grad-CAM wants."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)  # (B, K), K = task.n_outputs (binary: 1)


def make_plots(ev: Any, summary: dict, plot_dir: Path) -> dict[str, Path]:
    """Label-efficiency curve, ROC, confusion matrix, t-SNE and Grad-CAM; returns title -> PNG."""
    from medssl.evaluate import plots

    d, out = ev.data, {}
    plot_dir.mkdir(parents=True, exist_ok=True)
    cls = [p for p in summary if not p.startswith("segment")]
    curves = {LABELS.get(p, p): {float(f): m["roc_auc_macro"] for f, m in summary[p].items()} for p in cls}
    if curves:
        out["Label efficiency (test ROC-AUC, mean ± std over seeds)"] = plots.label_efficiency_plot(
            curves, plot_dir / "label_efficiency.png", metric="roc_auc_macro", reference=ev.opts.extra.get("reference"))
    seg = [p for p in summary if p.startswith("segment")]
    if seg:
        out["Segmentation transfer (test Dice)"] = plots.label_efficiency_plot(
            {LABELS.get(p, p): {float(f): m["dice_macro"] for f, m in summary[p].items()} for p in seg},
            plot_dir / "segment_efficiency.png", metric="dice_macro")
    scores = ev.artefacts.get("scores", {})
    def auc(key: tuple[str, float]) -> float:
        mean = summary.get(key[0], {}).get(f"{key[1]:g}", {}).get("roc_auc_macro", {}).get("mean")
        return -1.0 if mean is None or math.isnan(mean) else mean

    best = max(scores, key=lambda k: (k[1], auc(k)), default=None)  # the best protocol at the most labels
    if best is not None:
        label = f"{LABELS.get(best[0], best[0])}, {best[1]:.0%} labels, seed 0"
        out[f"ROC curves ({label})"] = plots.roc_plot(d.y["test"], scores[best], d.task, plot_dir / "roc.png", label)
        out[f"Confusion matrix ({label})"] = plots.confusion_plot(d.y["test"], scores[best], d.task,
                                                                  plot_dir / "confusion.png", title=label)
    if ev.features:
        out["t-SNE of test embeddings (frozen pretrained backbone)"] = plots.tsne_plot(
            ev.features["test"], _label_strings(d.splits["test"]), plot_dir / "tsne.png")
    model = ev.artefacts.get("model_finetune")
    if model is not None and _target_layer(model) is not None:
        wrapped = ImagesToLogits(model).eval()
        images = ev.preprocess.to_input(d.images["test"][:8])
        titles = ["+".join(r.labels) for r in d.splits["test"][:8]]
        out["Grad-CAM of the fine-tuned model on test images"] = plots.gradcam_plot(
            wrapped, images, "model." + _target_layer(model), plot_dir / "gradcam.png", titles=titles)
    return out


def embedding_scores(ev: Any) -> dict[str, float]:
    """Silhouette and Davies-Bouldin of the frozen test embeddings, by label (combination)."""
    from medssl.evaluate.metrics import embedding_quality

    if not ev.features:
        return {}
    labels = _label_strings(ev.data.splits["test"])
    codes = {n: i for i, n in enumerate(sorted(set(labels)))}
    if len(codes) < 2:
        return {}
    return embedding_quality(ev.features["test"], np.array([codes[n] for n in labels]))


def write_outputs(ev: Any, summary: dict, seconds: float) -> dict[str, Any]:
    """metrics.json, results.md, plots/ and report.html in the run folder; returns the metrics."""
    out_dir, d = ev.opts.out, ev.data
    rows = table_rows(summary)
    metrics = {"version": __version__, "checkpoint": str(ev.opts.checkpoint), "data": ev.opts.data or "synthetic",
               "task": {"kind": d.task.kind, "classes": list(d.task.classes)},
               "split_sizes": {k: len(v) for k, v in d.splits.items() if v},
               "fractions": list(ev.opts.fractions), "seeds": ev.opts.seeds, "summary": summary,
               "embedding": embedding_scores(ev), "runs": ev.runs, "seconds": round(seconds, 1)}
    (out_dir / "metrics.json").write_text(json.dumps(_no_nan(metrics), indent=2, default=_jsonable, allow_nan=False))
    (out_dir / "results.md").write_text(markdown_table(rows))
    pngs = make_plots(ev, summary, out_dir / "plots")
    sections = [("Results (test split; mean ± std over seeds)", html.table(rows)),
                ("Set-up", html.paragraph(
                    f"Checkpoint {ev.opts.checkpoint}; data {ev.opts.data or 'built-in synthetic'}; task "
                    f"{d.task.kind} over {', '.join(d.task.classes)}; splits "
                    + ", ".join(f"{k} {len(v)}" for k, v in d.splits.items() if v)
                    + f"; label fractions drawn per patient, stratified and nested; {ev.opts.seeds} seed(s)."))]
    if metrics["embedding"]:
        sections.append(("Embedding quality (frozen, test split)", html.table([metrics["embedding"]])))
    sections += [(title, html.image(path, title)) for title, path in pngs.items()]
    html.write_report(out_dir / "report.html", "medssl evaluate", sections)
    return metrics


def _no_nan(x: Any) -> Any:
    """NaN and inf (an AUC undefined on a one-class subset) become null: metrics.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    if isinstance(x, (float, np.floating)) and not math.isfinite(float(x)):
        return None
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
