"""The demo's one page: every arm's label-efficiency curve on shared axes, the metric table with CIs, the
pretraining curves, ROC, embedding and Grad-CAM plots of the evaluation, and the predictions; plus metrics.json."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from medssl import __version__, html
from medssl.evaluate.checks import percent
from medssl.evaluate.outputs import ci_text, mean_spread, used_text

ARMS = (("simclr", "linear", "SimCLR + linear probe"), ("simclr", "finetune", "SimCLR + LP-FT"),
        ("micle", "linear", "MICLe + linear probe"), ("micle", "finetune", "MICLe + LP-FT"),
        ("simclr", "scratch", "scratch (no pretraining)"))


def _curves(evals: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Arm name -> fraction -> aggregate metrics (from each evaluation's metrics.json summary)."""
    out = {}
    for method, protocol, name in ARMS:
        points = evals.get(method, {}).get("summary", {}).get(protocol)
        if points:
            out[name] = points
    return out


def label_fractions(evals: dict[str, dict]) -> list[dict[str, Any]]:
    """Per label fraction: asked, images, patients and actual share (every evaluation draws the same ones)."""
    return next((e["label_fractions"] for e in evals.values() if e.get("label_fractions")), [])


def _table(evals: dict[str, dict], curves: dict[str, dict]) -> list[dict[str, str]]:
    """One row per arm and fraction: asked and actual fraction, test AUC with its patient-level bootstrap CI."""
    rows = []
    by_name = {name: (m, p) for m, p, name in ARMS}
    used = {f"{f['asked']:g}": used_text(f) for f in label_fractions(evals)}
    for name, points in curves.items():
        method, protocol = by_name[name]
        for fraction, stats in sorted(points.items(), key=lambda kv: float(kv[0])):
            auc, acc = stats.get("roc_auc_macro", {}), stats.get("balanced_accuracy", {})
            rows.append({"arm": name, "labels asked": percent(float(fraction)), "labels used": used.get(fraction, ""),
                         "test AUC (mean ± std)": mean_spread(auc),
                         "AUC 95 % CI (patients)": ci_text(evals.get(method, {}).get("runs", []), protocol,
                                                           float(fraction)),
                         "balanced accuracy": mean_spread(acc), "seeds": str(auc.get("n", ""))})
    return rows


def verdict(curves: dict[str, dict], fractions: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """At the smallest fraction: the best pretrained arm against scratch, and whether the gap beats the spread;
    fractions (label_fractions) say what the fraction asked holds."""
    from medssl.evaluate.checks import describe_fraction

    scratch = curves.get("scratch (no pretraining)")
    if not scratch:
        return {"text": "no scratch baseline was run"}
    f = min(scratch, key=float)
    s = scratch[f]["roc_auc_macro"]
    pre = {n: p[f]["roc_auc_macro"] for n, p in curves.items() if n != "scratch (no pretraining)" and f in p}
    best = max(pre, key=lambda n: pre[n]["mean"] if pre[n]["mean"] is not None else -1)
    b = pre[best]
    gap = b["mean"] - s["mean"]
    spread = max(b["std"], s["std"])
    holds = gap > spread
    held = next((f" ({describe_fraction(x)})" for x in fractions if abs(x["asked"] - float(f)) < 1e-12), "")
    text = (f"At {percent(float(f))} of the labels asked{held}, {best} reaches test AUC {mean_spread(b)} against "
            f"{mean_spread(s)} from scratch: a gap of {gap:+.3f}, "
            + (("more than" if holds else "NOT more than") + f" the seeds' spread ({spread:.3f})."
               if min(b.get("n", 2), s.get("n", 2)) > 1 else "from one seed: no spread to weigh it against."))
    return {"fraction": float(f), "best_arm": best, "gap": gap, "spread": spread, "beats_scratch": holds, "text": text}


def training_curves(out: Path) -> Path | None:
    """Pretraining loss against step for every method that ran (from its log.csv)."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for log in sorted((out / "pretrain").glob("*/log.csv")):
        rows = list(csv.DictReader(log.open()))
        if rows:
            ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label=log.parent.name)
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("pretraining loss (NT-Xent)")
    ax.set_title("Self-supervised pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "plots" / "pretraining.png"
    fig.savefig(path, dpi=120)
    return path


def write_demo_report(out: Path, settings: Any, stages: dict[str, float], seconds: float) -> dict[str, Any]:
    """metrics.json and report.html of a demo run folder; returns the metrics."""
    from medssl.evaluate.checks import describe_fraction
    from medssl.evaluate.plots import label_efficiency_plot

    evals = {m.name: json.loads((m / "metrics.json").read_text())
             for m in sorted((out / "evaluate").glob("*")) if (m / "metrics.json").is_file()}
    curves = _curves(evals)
    rows = _table(evals, curves)
    found = verdict(curves, label_fractions(evals))
    predictions = json.loads((out / "predictions.json").read_text()) if (out / "predictions.json").is_file() else []
    metrics = {"version": __version__, "settings": vars(settings) if hasattr(settings, "__dict__") else settings,
               "stage_seconds": stages, "total_stage_seconds": round(sum(stages.values()), 1),
               "seconds_this_run": round(seconds, 1), "curves": curves, "label_fractions": label_fractions(evals),
               "verdict": found, "predictions": predictions}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    le = label_efficiency_plot(curves, plots / "label_efficiency.png", title="Label efficiency on the synthetic "
                               "findings (test macro ROC-AUC)") if curves else None
    asked = {f["asked"]: describe_fraction(f) for f in metrics["label_fractions"]}
    fractions = "; ".join(f"{percent(f)} asked: {asked[f]}" if f in asked else percent(f) for f in settings.fractions)
    sections = [("What ran", html.paragraph(
        f"{settings.patients} synthetic patients at {settings.size} px, split by patient 70/10/20. SimCLR and MICLe "
        f"pretrained a ResNet-18 ({settings.stem} stem) for {settings.pretrain_steps} steps of "
        f"{settings.pretrain_batch} images on the training patients only; then a linear probe and LP-FT fine-tuning "
        f"({settings.finetune_steps} steps) at each fraction of the training labels ({fractions}; every class keeps "
        f"at least one patient, so a small fraction holds more than asked), {settings.seeds} seeds, against the same "
        "network trained from scratch on the same labels. "
        f"Stages took {sum(stages.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
        + ". The data are synthetic phantoms, not patients: this shows the tool, not a medical result.")),
        ("Verdict at the fewest labels", html.paragraph(found["text"]))]
    if le:
        sections.append(("Label efficiency (mean ± std over seeds)", html.image(le, "label efficiency")))
    sections.append(("Test metrics", html.table(rows)))
    pre = training_curves(out)
    if pre:
        sections.append(("Pretraining curves", html.image(pre, "pretraining loss")))
    first = out / "evaluate" / "simclr" / "plots"
    for name, title in (("roc.png", "ROC curves (SimCLR evaluation, best protocol at 100 % labels)"),
                        ("tsne.png", "t-SNE of the frozen SimCLR test embeddings"),
                        ("gradcam.png", "Grad-CAM of the fine-tuned SimCLR classifier on test images")):
        if (first / name).is_file():
            sections.append((title, html.image(first / name, title)))
    if predictions:
        sections.append(("medssl predict on test images (kept SimCLR LP-FT classifier)", html.table([
            {"image": Path(p["image"]).name, "truth": "+".join(p["truth"]) or "no finding",
             "predicted": "+".join(p["predicted"]) or "no finding",
             "top probabilities": ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                 p["probabilities"].items(), key=lambda kv: -kv[1])[:3])} for p in predictions])))
    for name, title in (("samples.png", "Samples (red: finding masks)"), ("label_balance.png", "Label balance")):
        if (plots / name).is_file():
            sections.append((title, html.image(plots / name, title)))
    html.write_report(out / "report.html", "medssl demo: self-supervised pretraining with few labels", sections)
    return metrics
