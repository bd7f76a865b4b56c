"""The outputs of `medssl evaluate`: metrics.json, results.md, plots and a self-contained report.html."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medssl import __version__, html
from medssl.errors import MedsslError
from medssl.evaluate.checks import describe_fraction, percent

LABELS = {"linear": "linear probe", "knn": "kNN", "finetune": "fine-tune (pretrained)",
          "scratch": "fine-tune (scratch)", "linear_scratch": "linear probe (random init)",
          "knn_scratch": "kNN (random init)", "segment": "U-Net (pretrained)", "segment_scratch": "U-Net (scratch)"}
COLUMNS = (("roc_auc_macro", "AUC"), ("accuracy", "ACC"), ("balanced_accuracy", "BalACC"), ("f1_macro", "F1"),
           ("dice_macro", "Dice"))
CI_COLUMN = "AUC 95 % CI"
ORDER = ("protocol", "labels asked", "labels used", "AUC", CI_COLUMN, "ACC", "BalACC", "F1", "Dice", "seeds")


def mean_spread(stats: dict[str, Any] | None) -> str:
    """Mean ± std over seeds; one seed: the mean alone (one value has no spread to show)."""
    if not stats or stats.get("mean") is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return ""
    if stats.get("n", 0) <= 1:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def used_text(stats: dict[str, Any]) -> str:
    """What a label fraction holds: "22 img, 11 pat (8.33%)" (a range of images where seeds differ)."""
    counts = [p["images"] for p in stats["per_seed"]]
    images = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}"
    return f"{images} img, {stats['patients']} pat ({percent(stats['actual'])})"


def ci_text(runs: Sequence[dict[str, Any]], protocol: str, fraction: float, metric: str = "roc_auc_macro") -> str:
    """The runs' 95 % bootstrap CI, bounds averaged over seeds, and how many resamples it came from when the
    metric was undefined on some ("[0.61, 0.83] from 61 of 100 resamples")."""
    same = [r for r in runs if r["protocol"] == protocol and abs(r["fraction"] - fraction) < 1e-12
            and metric in r.get("ci95", {})]
    bounds = [r["ci95"][metric] for r in same if all(b is not None and math.isfinite(b) for b in r["ci95"][metric])]
    if not bounds:
        return "undefined" if same else ""
    text = f"[{np.mean([b[0] for b in bounds]):.3f}, {np.mean([b[1] for b in bounds]):.3f}]"
    used = [r["bootstrap"]["resamples"][metric] for r in same if "bootstrap" in r]
    n_boot = max((r["bootstrap"]["n_boot"] for r in same if "bootstrap" in r), default=0)
    if used and min(used) < n_boot:
        count = str(min(used)) if min(used) == max(used) else f"{min(used)}-{max(used)}"
        text += f" from {count} of {n_boot} resamples"
    return text


def table_rows(summary: dict[str, dict[str, dict[str, Any]]], runs: Sequence[dict[str, Any]] = (),
               fractions: Sequence[dict[str, Any]] = ()) -> list[dict[str, str]]:
    """One row per protocol and label fraction: the fraction asked and what it holds, mean ± std over seeds of
    the headline metrics (the mean alone for one seed) and the AUC's bootstrap CI; columns in ORDER."""
    info = {f"{f['asked']:g}": f for f in fractions}
    rows = []
    for protocol, by_fraction in summary.items():
        for fraction, metrics in by_fraction.items():
            row = {"protocol": LABELS.get(protocol, protocol), "labels asked": percent(float(fraction))}
            if fraction in info:
                row["labels used"] = used_text(info[fraction])
            row.update({name: mean_spread(metrics.get(key)) for key, name in COLUMNS if key in metrics})
            if "roc_auc_macro" in metrics and runs:
                row[CI_COLUMN] = ci_text(runs, protocol, float(fraction))
            row["seeds"] = str(max((m.get("n", 0) for m in metrics.values() if isinstance(m, dict)), default=0))
            rows.append(row)
    present = [c for c in ORDER if any(c in r for r in rows)]
    return [{c: r.get(c, "") for c in present} for r in rows]


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


class Plot(NamedTuple):
    """A figure of the report: its PNG, or why it could not be drawn."""

    title: str
    path: Path | None
    why: str = ""


def _draw(out: list[Plot], title: str, draw: Callable[[], Path]) -> None:
    """Draw one optional plot; one that cannot be drawn becomes a Plot without a path, saying why."""
    try:
        out.append(Plot(title, draw()))
    except (MedsslError, ValueError) as e:  # degenerate data (too few points, one class): say so, go on
        out.append(Plot(title, None, str(e)))


def make_plots(ev: Any, summary: dict, plot_dir: Path) -> list[Plot]:
    """Label-efficiency curve, ROC, confusion matrix, t-SNE and Grad-CAM, each drawn or saying why not."""
    from medssl.evaluate import plots

    d, out = ev.data, []
    plot_dir.mkdir(parents=True, exist_ok=True)
    spread = "mean ± std over seeds" if ev.opts.seeds > 1 else "one seed"
    cls = [p for p in summary if not p.startswith("segment")]
    curves = {LABELS.get(p, p): {float(f): m["roc_auc_macro"] for f, m in summary[p].items()} for p in cls}
    if curves:
        _draw(out, f"Label efficiency (test ROC-AUC, {spread})", lambda: plots.label_efficiency_plot(
            curves, plot_dir / "label_efficiency.png", metric="roc_auc_macro", reference=ev.opts.extra.get("reference")))
    seg = [p for p in summary if p.startswith("segment")]
    if seg:
        _draw(out, "Segmentation transfer (test Dice)", lambda: plots.label_efficiency_plot(
            {LABELS.get(p, p): {float(f): m["dice_macro"] for f, m in summary[p].items()} for p in seg},
            plot_dir / "segment_efficiency.png", metric="dice_macro"))
    scores = ev.artefacts.get("scores", {})

    def auc(key: tuple[str, float]) -> float:
        mean = summary.get(key[0], {}).get(f"{key[1]:g}", {}).get("roc_auc_macro", {}).get("mean")
        return -1.0 if mean is None or math.isnan(mean) else mean

    best = max(scores, key=lambda k: (k[1], auc(k)), default=None)  # the best protocol at the most labels
    if best is not None:
        label = f"{LABELS.get(best[0], best[0])}, {percent(best[1])} labels, seed 0"
        _draw(out, f"ROC curves ({label})",
              lambda: plots.roc_plot(d.y["test"], scores[best], d.task, plot_dir / "roc.png", label))
        _draw(out, f"Confusion matrix ({label})", lambda: plots.confusion_plot(
            d.y["test"], scores[best], d.task, plot_dir / "confusion.png", title=label))
    if ev.features:
        title = "t-SNE of test embeddings (frozen pretrained backbone)"
        n, least = len(ev.features["test"]), plots.TSNE_MIN_POINTS
        if n < least:
            out.append(Plot(title, None, f"t-SNE needs at least {least} test images; the test split has {n}"))
        else:
            _draw(out, title, lambda: plots.tsne_plot(ev.features["test"], _label_strings(d.splits["test"]),
                                                      plot_dir / "tsne.png"))
    model = ev.artefacts.get("model_finetune")
    if model is not None:
        title = "Grad-CAM of the fine-tuned model on test images"
        if _target_layer(model) is None:
            out.append(Plot(title, None, "the backbone has no convolutional feature map (a ViT)"))
        else:
            wrapped = ImagesToLogits(model).eval()
            images = ev.preprocess.to_input(d.images["test"][:8])
            titles = ["+".join(r.labels) for r in d.splits["test"][:8]]
            _draw(out, title, lambda: plots.gradcam_plot(
                wrapped, images, "model." + _target_layer(model), plot_dir / "gradcam.png", titles=titles))
    return out


def embedding_scores(ev: Any) -> tuple[dict[str, float], str]:
    """Silhouette and Davies-Bouldin of the frozen test embeddings, by label (combination); or ({}, why not)."""
    from medssl.evaluate.metrics import embedding_quality

    if not ev.features:
        return {}, ""
    labels = _label_strings(ev.data.splits["test"])
    codes = {n: i for i, n in enumerate(sorted(set(labels)))}
    try:
        return embedding_quality(ev.features["test"], np.array([codes[n] for n in labels])), ""
    except MedsslError as e:
        return {}, f"embedding quality not computed: {e}"


def _notes(ev: Any, figures: Sequence[Plot], why_no_embedding: str) -> list[str]:
    """Every note of the run, once: the data's, then plots and figures that could not be made."""
    return (list(ev.data.notes) + [f"{f.title}: not drawn: {f.why}" for f in figures if f.path is None]
            + ([why_no_embedding] if why_no_embedding else []))


def _setup_text(ev: Any) -> str:
    d, o = ev.data, ev.opts
    patients = {k: len({r.patient_id for r in v}) for k, v in d.splits.items() if v}
    fractions = "; ".join(f"{percent(f['asked'])} asked: {describe_fraction(f)}" for f in d.fractions)
    return (f"Checkpoint {o.checkpoint}; data {o.data or 'built-in synthetic'}; task {d.task.kind} over "
            f"{', '.join(d.task.classes)}; splits "
            + ", ".join(f"{k} {len(v)} images of {patients[k]} patients" for k, v in d.splits.items() if v)
            + f". Label fractions are drawn per patient, stratified and nested, and every class keeps at least one "
            f"patient: {fractions}. {o.seeds} seed(s); CIs from {o.n_boot} patient-level bootstrap resamples of "
            "the test split, bounds averaged over seeds.")


def results_markdown(rows: Sequence[dict[str, str]], seeds: int, notes: Sequence[str]) -> str:
    """results.md: the table, what its numbers are, and the notes."""
    spread = "mean ± std over seeds" if seeds > 1 else "one seed, so no spread"
    text = (markdown_table(rows) + f"\nTest split; {spread}. {CI_COLUMN}: patient-level bootstrap, bounds averaged "
            "over seeds. Labels used: training images and patients in the fraction (share of the training images).\n")
    if notes:
        text += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes)
    return text


def write_outputs(ev: Any, summary: dict, seconds: float) -> dict[str, Any]:
    """metrics.json, results.md, plots/ and report.html in the run folder; returns the metrics."""
    out_dir, d, o = ev.opts.out, ev.data, ev.opts
    rows = table_rows(summary, ev.runs, d.fractions)
    embedding, why_no_embedding = embedding_scores(ev)
    figures = make_plots(ev, summary, out_dir / "plots")
    notes = _notes(ev, figures, why_no_embedding)
    metrics = {"version": __version__, "checkpoint": str(o.checkpoint), "data": o.data or "synthetic",
               "task": {"kind": d.task.kind, "classes": list(d.task.classes)},
               "split_sizes": {k: len(v) for k, v in d.splits.items() if v},
               "split_patients": {k: len({r.patient_id for r in v}) for k, v in d.splits.items() if v},
               "fractions": list(o.fractions), "label_fractions": d.fractions, "seeds": o.seeds,
               "baseline": o.baseline, "n_boot": o.n_boot, "summary": summary, "embedding": embedding,
               "notes": notes, "skipped": [{"path": p, "error": e} for p, e in d.skipped], "runs": ev.runs,
               "seconds": round(seconds, 1)}
    (out_dir / "metrics.json").write_text(json.dumps(_no_nan(metrics), indent=2, default=_jsonable, allow_nan=False))
    (out_dir / "results.md").write_text(results_markdown(rows, o.seeds, notes))
    spread = "mean ± std over seeds" if o.seeds > 1 else "one seed: no spread"
    sections = [(f"Results (test split; {spread})", html.table(rows))]
    if notes:
        sections.append(("Notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"))
    sections.append(("Set-up", html.paragraph(_setup_text(ev))))
    if d.skipped:
        sections.append((f"Unreadable images left out (--skip-bad): {len(d.skipped)}",
                         html.table([{"file": p, "why": e} for p, e in d.skipped])))
    if embedding:
        sections.append(("Embedding quality (frozen, test split)", html.table([embedding])))
    sections += [(f.title, html.image(f.path, f.title) if f.path is not None
                  else html.paragraph(f"Not drawn: {f.why}.", note=True)) for f in figures]
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
