"""The one page of a `medssl run` (and `medssl demo`) folder: the comparison table (arm x protocol x fraction, mean
and t-interval over seeds, the best of each column marked), every arm's label-efficiency curve on shared axes, the
metric table with patient-level CIs, the pretraining curves, per image-text arm its similarity matrix, zero-shot
AUC beside chance and retrieval scores and examples, the report-generation table and gallery, ROC, embedding and
Grad-CAM plots of the first arm's evaluation, and the predictions; plus metrics.json."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medssl import __version__, html
from medssl.evaluate.checks import percent
from medssl.evaluate.outputs import ci_text, mean_spread, used_text
from medssl.pipeline_config import RunConfig

NAMES = {"simclr": "SimCLR", "micle": "MICLe", "moco": "MoCo v2", "byol": "BYOL", "mae": "MAE",
         "convirt": "ConVIRT", "clip": "CLIP", "gloria": "GLoRIA"}
BACKBONES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}  # ViTs keep their names
PROTOCOL_NAMES = {"linear": "linear probe", "finetune": "LP-FT", "knn": "kNN"}
SCRATCH = "scratch (no pretraining)"
RANDOM = "random network (no pretraining)"
GALLERY_NAMES = {"lstm": "attention LSTM", "transformer": "Transformer", "retrieval": "retrieval-based"}
REPORT_NAMES = {"lstm": "attention LSTM", "transformer": "Transformer decoder", "retrieval": "retrieval-based (CXR-RePaiR)"}


def arm_label(name: str, cfg: RunConfig) -> str:
    """What the page calls an arm: its method's name (or the arm's own, for an ablation arm), an image-text arm
    prefixed by the arm it started from ("SimCLR+ConVIRT")."""
    arm = cfg.arm(name)
    label = NAMES.get(arm.method, arm.method) if arm.name == arm.method else arm.name
    if cfg.is_align(arm) and cfg.align.init:
        label = f"{arm_label(cfg.align.init, cfg)}+{label}"
    return label


def report_label(method: str, cfg: RunConfig) -> str:
    """A report method's row name: what it is and which encoder it reads."""
    encoder = arm_label(cfg.report_encoder, cfg) if cfg.report_encoder else "?"
    what = "frozen" if method != "retrieval" else "joint space"
    return f"{REPORT_NAMES.get(method, method)} ({encoder} encoder, {what})"


def arms(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(arm, protocol, row name) of every evaluated arm and protocol, then the scratch baseline."""
    rows = [(a.name, p, f"{arm_label(a.name, cfg)} + {PROTOCOL_NAMES.get(p, p)}") for a in cfg.arms
            for p in cfg.evaluate.protocols]
    if cfg.evaluate.baseline and "finetune" in cfg.evaluate.protocols:
        rows.append((cfg.arms[0].name, "scratch", SCRATCH))
    elif cfg.evaluate.baseline:  # frozen protocols alone: their baseline is the probe on a random network
        rows += [(cfg.arms[0].name, f"{p}_scratch", f"{RANDOM} + {PROTOCOL_NAMES.get(p, p)}")
                 for p in cfg.evaluate.protocols]
    return rows


def _curves(evals: dict[str, dict], cfg: RunConfig) -> dict[str, dict[str, dict]]:
    """Row name -> fraction -> aggregate metrics (from each evaluation's metrics.json summary)."""
    out = {}
    for arm, protocol, name in arms(cfg):
        points = evals.get(arm, {}).get("summary", {}).get(protocol)
        if points:
            out[name] = points
    return out


def label_fractions(evals: dict[str, dict]) -> list[dict[str, Any]]:
    """Per label fraction: asked, images, patients and actual share (every evaluation draws the same ones)."""
    return next((e["label_fractions"] for e in evals.values() if e.get("label_fractions")), [])


def _table(evals: dict[str, dict], curves: dict[str, dict], cfg: RunConfig) -> list[dict[str, str]]:
    """One row per arm and fraction: asked and actual fraction, test AUC with its patient-level bootstrap CI."""
    rows = []
    by_name = {name: (m, p) for m, p, name in arms(cfg)}
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

    base = SCRATCH if SCRATCH in curves else next((n for n in curves if n.startswith(RANDOM)), None)
    if base is None:
        return {"text": "no scratch baseline was run"}
    scratch = curves[base]
    f = min(scratch, key=float)
    s = scratch[f]["roc_auc_macro"]
    pre = {n: p[f]["roc_auc_macro"] for n, p in curves.items() if not n.startswith((SCRATCH, RANDOM)) and f in p}
    best = max(pre, key=lambda n: pre[n]["mean"] if pre[n]["mean"] is not None else -1)
    b = pre[best]
    gap = b["mean"] - s["mean"]
    spread = max(b["std"], s["std"])
    holds = gap > spread
    held = next((f" ({describe_fraction(x)})" for x in fractions if abs(x["asked"] - float(f)) < 1e-12), "")
    text = (f"At {percent(float(f))} of the labels asked{held}, {best} reaches test AUC {mean_spread(b)} against "
            f"{mean_spread(s)} " + ("from scratch" if base == SCRATCH else f"for the {base}") + f": a gap of {gap:+.3f}, "
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
    """Per finding: zero-shot test AUC with its patient CI, beside chance (0.5) and, for scale, the same arm's
    linear probe's macro AUC at the fewest labels (linear: {name, fraction, text})."""
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
        rows.append({"finding": f"for scale: {linear['name']} at {linear['fraction']} labels (macro)",
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


def retrieval_figure(examples: list[dict[str, Any]], path: Path, root: Path, label: str = "ConVIRT") -> Path | None:
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
    fig.suptitle(f"{label} retrieval (cosine similarity; the image query's own patient left out)", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def image_text_sections(out: Path, curves: dict[str, dict], cfg: RunConfig
                        ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The image-text part of the page and of metrics.json, per align arm: similarity matrix, zero-shot, retrieval."""
    sections: list[tuple[str, str]] = []
    found: dict[str, Any] = {}
    for arm in cfg.align.methods:
        label, name = arm_label(arm.name, cfg), NAMES.get(arm.method, arm.name)
        if arm.name != arm.method:
            name = arm.name
        mine: dict[str, Any] = {}
        similarity = out / "align" / arm.name / "plots" / "similarity.png"
        if similarity.is_file():
            sections.append((f"Image-text similarity ({name}, test studies)", html.paragraph(
                "Each test image (row) against each whole report (column), cosine similarity in the joint space; the "
                "diagonal holds the matching pairs.") + html.image(similarity, "image-text similarity matrix")))
        zs = _read(out / "zeroshot" / arm.name / "zeroshot.json")
        if isinstance(zs, dict):
            linear = curves.get(f"{label} + {PROTOCOL_NAMES['linear']}")
            fewest = None
            if linear:
                f = min(linear, key=float)
                fewest = {"name": f"{label} + linear probe", "fraction": percent(float(f)),
                          "text": mean_spread(linear[f]["roc_auc_macro"])}
            mine["zeroshot"] = {"roc_auc_macro": zs.get("roc_auc_macro"), "ci95": (zs.get("ci95") or {}).get(
                "roc_auc_macro"), "per_class": {k: v.get("roc_auc") for k, v in (zs.get("per_class") or {}).items()}}
            sections.append((f"Zero-shot classification ({name}, no labels)", html.paragraph(
                f"Each finding scored on the {zs.get('test_images')} test images of {zs.get('test_patients')} patients "
                "by the similarity of the image to prompts that state the finding against prompts that deny it "
                "(several templates averaged); no label was used.") + html.table(zeroshot_rows(zs, fewest))))
        ev = _read(out / "align" / arm.name / "retrieval" / "evaluate.json")
        if isinstance(ev, dict):
            mine["retrieval"] = {d: {k: v for k, v in m.items() if k.startswith(("precision@", "map", "chance"))}
                                 for d, m in ev.get("directions", {}).items()}
            q, g = ev["queries"], ev["gallery"]
            body = html.paragraph(
                f"{q['images']} test images and {q['reports']} test reports queried against {g['images']} images and "
                f"{g['sentences']} report sentences of the train and validation patients; the query's own patient is "
                "left out, and a hit shares a finding with the query.") + html.table(retrieval_rows(ev))
            examples = _read(out / "retrieval" / arm.name / "examples.json")
            if isinstance(examples, list):
                figure = retrieval_figure(examples, out / "plots" / f"retrieval_{arm.name}.png", out, name)
                if figure:
                    body += html.image(figure, "retrieval examples")
                sentences = [s for e in examples for s in e.get("sentences", [])]
                if sentences:
                    body += html.paragraph("Report sentences nearest to the query image (other patients):") + \
                        html.table([{"rank": str(s["rank"]), "cosine": f"{s['score']:.2f}", "sentence": s["sentence"],
                                     "its study's findings": "+".join(s["labels"]) or "no finding"}
                                    for s in sentences])
            sections.append((f"Retrieval ({name})", body))
        if mine:
            found[arm.name] = mine
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


def report_gallery(out: Path, cfg: RunConfig, n: int = 6) -> str:
    """Test studies: their views, each method's draft and the reference, each with the findings it states (the
    labeller's reading) and the study's own labels."""
    import html as _h

    methods = list(cfg.report.methods)
    samples = {m: {x["study"]: x for x in (_read(out / "report" / m / "samples.json") or [])} for m in methods}
    first = methods[0] if methods else None
    if first is None:
        return ""
    rows = []
    for study, x in [(k, v) for k, v in samples[first].items() if v.get("images")][:n]:
        pics = "".join(html.image(out / "report" / first / p, "view") for p in x["images"])

        def cell(title: str, text: str, stated: list[str]) -> str:
            return (f"<td style='text-align:left;vertical-align:top'><b>{_h.escape(title)}</b><br>{_h.escape(text)}"
                    f"<br><span class=note>states: {_h.escape(', '.join(stated) or 'no finding')}</span></td>")
        drafts = "".join(cell(f"{GALLERY_NAMES.get(m, m)} (draft)", samples[m].get(study, {}).get("generated", "-"),
                              samples[m].get(study, {}).get("stated", [])) for m in methods)
        rows.append(f"<tr><td style='width:140px'>{pics}<br><span class=note>labels: "
                    f"{_h.escape(', '.join(x['labels']) or '-')}</span></td>" + drafts
                    + cell("reference", x["reference"], x["reference_stated"]) + "</tr>")
    if not rows:
        return ""
    return ("<style>.rg img{width:64px;margin:1px;image-rendering:pixelated}.rg td{font-size:.85em}</style>"
            "<table class=rg>" + "".join(rows) + "</table>")


def kept_bundle(out: Path, cfg: RunConfig) -> Path | None:
    """The first arm's kept classifier: fine-tuned if it was, else the linear probe, else kNN."""
    folder = Path(out) / "evaluate" / cfg.arms[0].name / "bundles"
    return next((folder / f"{p}.pt" for p in ("finetune", "linear", "knn") if (folder / f"{p}.pt").is_file()), None)


def seed_interval(stats: dict[str, Any]) -> tuple[float, float] | None:
    """The 95 % t-interval of a mean over seeds (None for one seed: no spread to weigh)."""
    from scipy import stats as st

    n, mean, std = stats.get("n", 0), stats.get("mean"), stats.get("std")
    if n < 2 or mean is None or std is None or mean != mean:
        return None
    half = float(st.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)  # an AUC's bounds


def comparison(curves: dict[str, dict], cfg: RunConfig) -> tuple[list[dict[str, str]], set[tuple[int, str]]]:
    """The comparison table: one row per arm and protocol, one column per label fraction, each cell the mean test
    macro AUC over seeds with its 95 % t-interval; the best mean of each column is marked (bold and *)."""
    fractions = sorted({float(f) for points in curves.values() for f in points})
    rows, best = [], set()
    columns = [f"{percent(f)} labels" for f in fractions]
    for name, points in curves.items():
        row = {"method + protocol": name}
        by_f = {float(f): p.get("roc_auc_macro", {}) for f, p in points.items()}
        for f, col in zip(fractions, columns):
            stats = by_f.get(f)
            if not stats or stats.get("mean") is None:
                row[col] = ""
                continue
            ci = seed_interval(stats)
            row[col] = f"{stats['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        rows.append(row)
    for f, col in zip(fractions, columns):
        means = [(float(r[col].split()[0]), i) for i, r in enumerate(rows) if r[col]]
        if means:
            top = max(m for m, _ in means)
            for m, i in means:
                if m == top:
                    best.add((i, col))
                    rows[i][col] += " *"
    return rows, best


def write_run_report(out: Path, cfg: RunConfig, stages: dict[str, float], seconds: float) -> dict[str, Any]:
    """metrics.json and report.html of a run folder; returns the metrics."""
    from medssl.evaluate.checks import describe_fraction
    from medssl.evaluate.plots import label_efficiency_plot
    from medssl.pipeline_config import to_dict

    evals = {m.name: json.loads((m / "metrics.json").read_text())
             for m in sorted((out / "evaluate").glob("*")) if (m / "metrics.json").is_file()}
    curves = _curves(evals, cfg)
    rows = _table(evals, curves, cfg)
    found = verdict(curves, label_fractions(evals))
    predictions = _read(out / "predictions.json") or []
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    text_sections, image_text = image_text_sections(out, curves, cfg)
    report_generation = (_read(out / "report_generation.json") or {}).get("rows", [])
    table, best = comparison(curves, cfg)
    data_summary = _read(out / "data_summary.json") or {}
    metrics = {"version": __version__, "config": to_dict(cfg),
               "stage_seconds": stages, "total_stage_seconds": round(sum(stages.values()), 1),
               "seconds_this_run": round(seconds, 1), "curves": curves, "comparison": table,
               "label_fractions": label_fractions(evals), "verdict": found, "predictions": predictions,
               "image_text": image_text, "report_generation": report_generation}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    reference = dict(cfg.evaluate.reference)
    data_name = "the synthetic findings" if cfg.synthetic else cfg.data.name or Path(cfg.data.source).name
    le = label_efficiency_plot(curves, plots / "label_efficiency.png", reference=reference,
                               title=f"Label efficiency on {data_name}") if curves else None
    asked = {f["asked"]: describe_fraction(f) for f in metrics["label_fractions"]}
    fractions = "; ".join(f"{percent(f)} asked: {asked[f]}" if f in asked else percent(f)
                          for f in cfg.evaluate.fractions)
    sections = [("What ran", html.paragraph(what_ran(cfg, data_summary, fractions, stages))),
                ("Verdict at the fewest labels", html.paragraph(found["text"]))]
    if table:
        sections.append(("Comparison (test macro ROC-AUC, mean over seeds [95 % t-interval over seeds])",
                         html.paragraph("* and bold: the best mean of each column. Seeds change the labelled subset, "
                                        "the head's initialisation and the fine-tuning order; the pretraining ran "
                                        "once per arm.", note=True) + html.table(table, strong=best)))
    if le:
        sections.append(("Label efficiency (mean ± std over seeds)", html.image(le, "label efficiency")
                         + (html.paragraph("Dashed: " + "; ".join(f"{k} {v:.3f}" for k, v in reference.items())
                                           + " (published; other training budget: for orientation)", note=True)
                            if reference else "")))
    sections.append(("Test metrics", html.table(rows)))
    pre = training_curves(out)
    if pre:
        sections.append(("Pretraining curves", html.image(pre, "pretraining loss")))
    sections += text_sections
    if report_generation:
        encoder = arm_label(cfg.report_encoder, cfg)
        sections.append(("Report generation (drafts for a radiologist's review)", html.paragraph(
            f"On the frozen {encoder} encoder: " + ", ".join(
                f"{REPORT_NAMES.get(m, m)}" + (f" ({cfg.report.steps} steps on the encoder's cached feature maps, "
                                               "beam 3, trigram blocking)" if m != "retrieval" else
                                               " (the k training-report sentences nearest the image, or the nearest "
                                               "whole report: unit, k and hub-centring chosen on validation)")
                for m in cfg.report.methods)
            + ", against the training set's most common report and the nearest training image's report. Text scores "
            "by pycocoevalcap; clinical precision / recall / F1: the finding labeller on each draft against its "
            "reference (CI: patient bootstrap); last two columns: the findings a draft states against the study's "
            "own labels, and against another study's labels (chance).", note=True)
            + html.table(report_rows(report_generation)) + report_gallery(out, cfg)))
    first_arm = cfg.arms[0].name
    first, first_label = out / "evaluate" / first_arm / "plots", arm_label(first_arm, cfg)
    for name, title in (("roc.png", f"ROC curves ({first_label} evaluation, best protocol at 100 % labels)"),
                        ("tsne.png", f"t-SNE of the frozen {first_label} test embeddings"),
                        ("gradcam.png", f"Grad-CAM of the {first_label} classifier on test images")):
        if (first / name).is_file():
            sections.append((title, html.image(first / name, title)))
    if predictions:
        bundle = kept_bundle(out, cfg)
        kind = PROTOCOL_NAMES.get(bundle.stem, bundle.stem) if bundle else "?"
        sections.append((f"medssl predict on test images (kept {first_label} {kind} classifier)", html.table([
            {"image": Path(p["image"]).name, "truth": "+".join(p["truth"]) or "no finding",
             "predicted": "+".join(p["predicted"]) or "no finding",
             "top probabilities": ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                 p["probabilities"].items(), key=lambda kv: -kv[1])[:3])} for p in predictions])))
    for name, title in (("samples.png", "Samples (red: finding masks)"), ("label_balance.png", "Label balance")):
        if (plots / name).is_file():
            sections.append((title, html.image(plots / name, title)))
    html.write_report(out / "report.html", cfg.title, sections)
    return metrics


def _and(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def what_ran(cfg: RunConfig, summary: dict[str, Any], fractions: str, stages: dict[str, float]) -> str:
    """The first paragraph: data, arms with their budgets, protocols, fractions, seeds, stage times."""
    d, m = cfg.data, cfg.model
    if cfg.synthetic:
        data = f"{d.patients} synthetic patients at {d.size} px, split by patient 70/10/20"
    else:
        data = (f"{summary.get('name') or d.source}: {summary.get('images', '?')} images of "
                f"{summary.get('patients', '?')} patients at {d.size} px")
    net = BACKBONES.get(m.backbone, m.backbone) + (f" ({m.stem} stem" if m.stem else " (") + (f", first-stage width {m.width})" if m.width
                                                                         else ")")
    text = f"{data}. "
    if cfg.pretrain.methods:
        text += (_and([arm_label(a.name, cfg) for a in cfg.pretrain.methods]) + f" pretrained a {net} for "
                 f"{cfg.pretrain.steps} steps of {cfg.pretrain.batch} images on the training patients only. ")
    if cfg.align.methods:
        start = f"the {arm_label(cfg.align.init, cfg)} network" if cfg.align.init else "random weights"
        text += (_and([NAMES.get(a.method, a.name) if a.name == a.method else a.name for a in cfg.align.methods])
                 + f" aligned {start} with a small text encoder for {cfg.align.steps} steps of {cfg.align.batch} "
                 "image-report pairs. ")
    e = cfg.evaluate
    prose = {"linear": "a linear probe", "knn": "a kNN classifier",
             "finetune": f"LP-FT fine-tuning ({e.finetune_steps} steps)"}
    text += (f"Then {_and([prose.get(p, p) for p in e.protocols])}"
             + f" at each fraction of the training labels ({fractions}; every class keeps at least one patient, so a "
             f"small fraction holds more than asked), {e.seeds} seed{'s' if e.seeds != 1 else ''}"
             + (", against the same network trained from scratch on the same labels. " if e.baseline else ". ")
             + f"Stages took {sum(stages.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
             + ".")
    if cfg.synthetic:
        text += " The data are synthetic phantoms, not patients: this shows the tool, not a medical result."
    return text
