"""The demo's one page: every arm's label-efficiency curve on shared axes, the metric table with CIs, the
pretraining curves, the image-text part (similarity matrix, zero-shot AUC beside chance, retrieval scores and
examples), ROC, embedding and Grad-CAM plots of the evaluation, and the predictions; plus metrics.json."""

from __future__ import annotations

import csv
import json

import numpy as np
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from medssl import __version__, html
from medssl.evaluate.checks import percent
from medssl.evaluate.outputs import ci_text, mean_spread, used_text

ARMS = (("simclr", "linear", "SimCLR + linear probe"), ("simclr", "finetune", "SimCLR + LP-FT"),
        ("micle", "linear", "MICLe + linear probe"), ("micle", "finetune", "MICLe + LP-FT"),
        ("convirt", "linear", "SimCLR+ConVIRT + linear probe"), ("convirt", "finetune", "SimCLR+ConVIRT + LP-FT"),
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
    for log in [*sorted((out / "pretrain").glob("*/log.csv")), *sorted((out / "align").glob("*/log.csv"))]:
        rows = list(csv.DictReader(log.open()))
        if rows:
            what = "image-report pairs" if log.parent.parent.name == "align" else "images"
            ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows],
                    label=f"{log.parent.name} ({what})")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss (NT-Xent / InfoNCE)")
    ax.set_title("Pretraining losses")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "plots" / "pretraining.png"
    fig.savefig(path, dpi=120)
    return path


def _read(path: Path) -> dict[str, Any] | list[Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def zeroshot_rows(zs: dict[str, Any], linear: dict[str, Any] | None) -> list[dict[str, str]]:
    """Per finding: zero-shot test AUC with its patient CI, beside chance (0.5) and, for scale, the ConVIRT linear
    probe's macro AUC at the fewest labels."""
    rows = []
    for name, m in (zs.get("per_class") or {}).items():
        auc, ci = m.get("roc_auc", float("nan")), m.get("roc_auc_ci95") or [float("nan")] * 2
        rows.append({"finding": name, "test images with it": str(m.get("support", "")),
                     "zero-shot AUC": "undefined (one class)" if auc != auc else f"{auc:.3f}",
                     "95 % CI (patients)": "" if ci[0] != ci[0] else f"{ci[0]:.3f}-{ci[1]:.3f}", "chance": "0.500"})
    ci = (zs.get("ci95") or {}).get("roc_auc_macro")
    rows.append({"finding": "macro (classes with both outcomes)", "test images with it": str(zs.get("test_images")),
                 "zero-shot AUC": f"{zs.get('roc_auc_macro', float('nan')):.3f}",
                 "95 % CI (patients)": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "", "chance": "0.500"})
    if linear:
        rows.append({"finding": f"for scale: SimCLR+ConVIRT + linear probe at {linear['fraction']} labels (macro)",
                     "test images with it": "", "zero-shot AUC": linear["text"], "95 % CI (patients)": "",
                     "chance": ""})
    return rows


def retrieval_rows(ev: dict[str, Any]) -> list[dict[str, str]]:
    """Per direction: P@K per K, mAP and the chance precision (a random ranking's P@K)."""
    rows = []
    for name, m in ev.get("directions", {}).items():
        row = {"direction": name.replace("_to_", " -> ")}
        row.update({f"P@{k}": f"{m[f'precision@{k}']:.3f}" for k in ev["ks"]})
        row.update({"mAP": f"{m['map']:.3f}", "chance P@K": f"{m['chance_precision']:.3f}"})
        rows.append(row)
    return rows


def retrieval_figure(examples: list[dict[str, Any]], path: Path, root: Path) -> Path | None:
    """One row per query (words, or a test image): the query, then the images found, titled with their findings;
    image paths are relative to root (the run folder)."""
    from PIL import Image

    rows = [e for e in examples if e.get("images")]
    if not rows:
        return None
    cols = 1 + max(len(e["images"]) for e in rows)
    fig = Figure(figsize=(1.9 * cols, 2.1 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, example in enumerate(rows):
        for ax in axes[r]:
            ax.set_axis_off()
        q = example["query"]
        if "text" in q:
            axes[r][0].text(0.5, 0.5, f"query:\n\"{q['text']}\"", ha="center", va="center", wrap=True, fontsize=9)
        else:
            axes[r][0].imshow(np.asarray(Image.open(root / q["image"]).convert("L")), cmap="gray", vmin=0, vmax=255)
            axes[r][0].set_title("query image\n" + ("+".join(q.get("labels", [])) or "no finding"), fontsize=8)
        for c, hit in enumerate(example["images"], start=1):
            axes[r][c].imshow(np.asarray(Image.open(root / hit["path"]).convert("L")), cmap="gray", vmin=0, vmax=255)
            axes[r][c].set_title(f"#{hit['rank']} {hit['score']:.2f}\n" + ("+".join(hit["labels"]) or "no finding"),
                                 fontsize=8)
    fig.suptitle("ConVIRT retrieval (cosine similarity; the image query's own patient left out)", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def image_text_sections(out: Path, curves: dict[str, dict]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The ConVIRT part of the page and of metrics.json: similarity matrix, zero-shot, retrieval."""
    sections: list[tuple[str, str]] = []
    found: dict[str, Any] = {}
    similarity = out / "align" / "convirt" / "plots" / "similarity.png"
    if similarity.is_file():
        sections.append(("Image-text similarity (ConVIRT, test studies)", html.paragraph(
            "Each test image (row) against each whole report (column), cosine similarity in the joint space; the "
            "diagonal holds the matching pairs.") + html.image(similarity, "image-text similarity matrix")))
    zs = _read(out / "zeroshot" / "zeroshot.json")
    if isinstance(zs, dict):
        linear = curves.get("SimCLR+ConVIRT + linear probe")
        fewest = None
        if linear:
            f = min(linear, key=float)
            fewest = {"fraction": percent(float(f)), "text": mean_spread(linear[f]["roc_auc_macro"])}
        found["zeroshot"] = {"roc_auc_macro": zs.get("roc_auc_macro"), "ci95": (zs.get("ci95") or {}).get(
            "roc_auc_macro"), "per_class": {k: v.get("roc_auc") for k, v in (zs.get("per_class") or {}).items()}}
        sections.append(("Zero-shot classification (ConVIRT, no labels)", html.paragraph(
            f"Each finding scored on the {zs.get('test_images')} test images of {zs.get('test_patients')} patients by "
            "the similarity of the image to prompts that state the finding against prompts that deny it (several "
            "templates averaged); no label was used.") + html.table(zeroshot_rows(zs, fewest))))
    ev = _read(out / "align" / "convirt" / "retrieval" / "evaluate.json")
    if isinstance(ev, dict):
        found["retrieval"] = {d: {k: v for k, v in m.items() if k.startswith(("precision@", "map", "chance"))}
                              for d, m in ev.get("directions", {}).items()}
        q, g = ev["queries"], ev["gallery"]
        body = html.paragraph(
            f"{q['images']} test images and {q['reports']} test reports queried against {g['images']} images and "
            f"{g['sentences']} report sentences of the train and validation patients; the query's own patient is "
            "left out, and a hit shares a finding with the query.") + html.table(retrieval_rows(ev))
        examples = _read(out / "retrieval_examples.json")
        if isinstance(examples, list):
            figure = retrieval_figure(examples, out / "plots" / "retrieval_examples.png", out)
            if figure:
                body += html.image(figure, "retrieval examples")
            sentences = [s for e in examples for s in e.get("sentences", [])]
            if sentences:
                body += html.paragraph("Report sentences nearest to the query image (other patients):") + html.table(
                    [{"rank": str(s["rank"]), "cosine": f"{s['score']:.2f}", "sentence": s["sentence"],
                      "its study's findings": "+".join(s["labels"]) or "no finding"} for s in sentences])
        sections.append(("Retrieval (ConVIRT)", body))
    return sections, found


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def report_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The report-generation table: text scores, clinical efficacy with its CI, stated findings against chance."""
    out = []
    for r in rows:
        n, c, a, ci = r["nlg"], r["clinical"], r.get("label_agreement") or {}, r.get("ci95", {}).get("ce_f1_micro")
        out.append({"method": r["method"], "BLEU-1": _num(n.get("bleu1")), "BLEU-4": _num(n.get("bleu4")),
                    "ROUGE-L": _num(n.get("rouge_l")), "CIDEr": _num(n.get("cider")), "METEOR": _num(n.get("meteor")),
                    "clinical P": _num(c.get("precision")), "clinical R": _num(c.get("recall")),
                    "clinical F1 (95 % CI)": _num(c.get("f1")) + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""),
                    "stated vs image labels F1": _num(a.get("f1")), "chance": _num(a.get("f1_shuffled"))})
    return out


def report_gallery(out: Path, n: int = 6) -> str:
    """Test studies: their views, the LSTM's and the retrieval-based draft and the reference, each with the
    findings it states (the labeller's reading) and the study's own labels."""
    import html as _h

    lstm = _read(out / "report" / "lstm" / "samples.json") or []
    repair = {x["study"]: x for x in (_read(out / "report" / "retrieval" / "samples.json") or [])}
    rows = []
    for x in [x for x in lstm if x.get("images")][:n]:
        pics = "".join(html.image(out / "report" / "lstm" / p, "view") for p in x["images"])
        other = repair.get(x["study"], {})

        def cell(title: str, text: str, stated: list[str]) -> str:
            return (f"<td style='text-align:left;vertical-align:top'><b>{title}</b><br>{_h.escape(text)}<br>"
                    f"<span class=note>states: {_h.escape(', '.join(stated) or 'no finding')}</span></td>")
        rows.append(f"<tr><td style='width:140px'>{pics}<br><span class=note>labels: "
                    f"{_h.escape(', '.join(x['labels']) or '-')}</span></td>"
                    + cell("attention LSTM (draft)", x["generated"], x["stated"])
                    + cell("retrieval-based (draft)", other.get("generated", "-"), other.get("stated", []))
                    + cell("reference", x["reference"], x["reference_stated"]) + "</tr>")
    if not rows:
        return ""
    return ("<style>.rg img{width:64px;margin:1px;image-rendering:pixelated}.rg td{font-size:.85em}</style>"
            "<table class=rg>" + "".join(rows) + "</table>")


def write_demo_report(out: Path, settings: Any, stages: dict[str, float], seconds: float) -> dict[str, Any]:
    """metrics.json and report.html of a demo run folder; returns the metrics."""
    from medssl.evaluate.checks import describe_fraction
    from medssl.evaluate.plots import label_efficiency_plot

    evals = {m.name: json.loads((m / "metrics.json").read_text())
             for m in sorted((out / "evaluate").glob("*")) if (m / "metrics.json").is_file()}
    curves = _curves(evals)
    rows = _table(evals, curves)
    found = verdict(curves, label_fractions(evals))
    predictions = _read(out / "predictions.json") or []
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    text_sections, image_text = image_text_sections(out, curves)
    report_generation = (_read(out / "report_generation.json") or {}).get("rows", [])
    metrics = {"version": __version__, "settings": vars(settings) if hasattr(settings, "__dict__") else settings,
               "stage_seconds": stages, "total_stage_seconds": round(sum(stages.values()), 1),
               "seconds_this_run": round(seconds, 1), "curves": curves, "label_fractions": label_fractions(evals),
               "verdict": found, "predictions": predictions, "image_text": image_text,
               "report_generation": report_generation}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    le = label_efficiency_plot(curves, plots / "label_efficiency.png", title="Label efficiency on the synthetic "
                               "findings (test macro ROC-AUC)") if curves else None
    asked = {f["asked"]: describe_fraction(f) for f in metrics["label_fractions"]}
    fractions = "; ".join(f"{percent(f)} asked: {asked[f]}" if f in asked else percent(f) for f in settings.fractions)
    sections = [("What ran", html.paragraph(
        f"{settings.patients} synthetic patients at {settings.size} px, split by patient 70/10/20. SimCLR and MICLe "
        f"pretrained a ResNet-18 ({settings.stem} stem, first-stage width {settings.width}) for "
        f"{settings.pretrain_steps} steps of {settings.pretrain_batch} images on the training patients only, and "
        f"ConVIRT aligned the SimCLR network with a small text encoder for {settings.align_steps} steps "
        f"of {settings.pretrain_batch} image-report pairs (whole reports); then a linear probe and LP-FT fine-tuning "
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
    sections += text_sections
    if report_generation:
        sections.append(("Report generation (drafts for a radiologist's review)", html.paragraph(
            f"On the frozen ConVIRT encoder: an attention LSTM trained for {settings.report_steps} steps on the "
            "encoder's cached feature maps of each study's frontal and lateral views (beam 3, trigram blocking), "
            "and retrieval-based reports (the k training-report sentences nearest the image, near-duplicates and "
            "contradictions skipped, or the nearest whole report: unit, k and hub-centring chosen on validation), "
            "against the training set's most common report and the nearest "
            "training image's report. Text scores by pycocoevalcap; clinical precision / recall / F1: the finding "
            "labeller on each draft against its reference (CI: patient bootstrap); last two columns: the findings "
            "a draft states against the study's own labels, and against another study's labels (chance).", note=True)
            + html.table(report_rows(report_generation)) + report_gallery(out)))
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
    html.write_report(out / "report.html",
                      "medssl demo: self-supervised and image-text pretraining, few labels, draft reports", sections)
    return metrics
