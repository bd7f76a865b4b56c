"""A report run's page (OUT/report.html) and its terminal summary: the scores with patient bootstrap CIs, the
findings each report states, training and cache costs, and a gallery of test studies with the generated
(or retrieved) report beside the reference."""

from __future__ import annotations

import html as _html
import json
from pathlib import Path
from typing import Any

from medssl.html import image, paragraph, table, write_report

NLG = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "meteor")


def _ci(scores: dict[str, Any], key: str) -> str:
    iv = (scores.get("ci95") or {}).get(key)
    return f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv and all(v == v for v in iv[:2]) else ""


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def score_row(name: str, scores: dict[str, Any]) -> dict[str, str]:
    """One table row: NLG scores and clinical micro P / R / F1 (CIs where computed)."""
    nlg, clin = scores.get("nlg", {}), scores.get("clinical", {}).get("micro", {})
    row = {"": name}
    for k in NLG:
        row[k] = _num(nlg.get(k)) + _ci(scores, k)
    for k in ("precision", "recall", "f1"):
        row[f"clinical {k}"] = _num(clin.get(k)) + _ci(scores, f"ce_{k}_micro")
    return row


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What `medssl report train` prints: the test scores, the label agreement, the costs."""
    test = metrics.get("test", {})
    nlg, clin = test.get("nlg", {}), test.get("clinical", {}).get("micro", {})
    lines = [f"report {metrics.get('method')} on {test.get('studies')} test studies ({metrics.get('source')})",
             "  " + "  ".join(f"{k} {_num(nlg.get(k))}" for k in NLG),
             f"  clinical (labeller, reference vs generated): precision {_num(clin.get('precision'))}  recall "
             f"{_num(clin.get('recall'))}  F1 {_num(clin.get('f1'))}{_ci(test, 'ce_f1_micro')}"]
    agree = test.get("label_agreement")
    if agree:
        lines.append(f"  stated findings vs the images' own labels: F1 {_num(agree['f1'])} (another study's labels, "
                     f"chance: {_num(agree['f1_shuffled'])})")
    r = metrics.get("retrieval")
    if r:
        what = f"k={r['k']} sentences per report" if r.get("unit") == "sentence" else "the best whole report"
        lines.append(f"  retrieval: {what} from {r['bank_size']} training {r.get('unit')}s"
                     f"{', centred scores' if r.get('center') else ''} (chosen on validation)")
    cache = metrics.get("cache")
    if cache:
        lines.append(f"  feature cache: {cache['images']} images, {cache['bytes'] / 1e6:.1f} MB, "
                     f"{cache['seconds']:.1f} s{' (reused)' if cache.get('reused') else ''}")
    train = metrics.get("train", {})
    if train.get("studies_per_s"):
        lines.append(f"  decoder training: {train['steps']} steps, {train['studies_per_s']:.0f} studies/s, "
                     f"best validation word loss {train['best_val_word_loss']:.3f} at step {train['best_step']}")
    lines.append(f"  generation: {1000 * test.get('seconds_per_study', float('nan')):.1f} ms per study "
                 f"(beam {metrics.get('generate', {}).get('beam')}, encoder included)")
    missing = test.get("nlg", {}).get("missing") or {}
    lines += [f"note: {k}: {v}" for k, v in missing.items()]
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return lines


def _gallery(out: Path, samples: list[dict[str, Any]]) -> str:
    cells = []
    for s in samples:
        if "images" not in s:
            continue
        pics = "".join(image(out / p, "view") for p in s["images"])
        src = ""
        if s.get("sources"):
            src = "<br><span class=note>sources: " + "; ".join(
                f"{_html.escape(x['sentence'])} ({x['score']:.2f})" for x in s["sources"]) + "</span>"
        cells.append(
            f"<tr><td style='width:180px'>{pics}</td><td style='text-align:left'><b>generated (draft):</b> "
            f"{_html.escape(s['generated'])}<br><span class=note>states: {_html.escape(', '.join(s['stated']) or '-')}"
            f"</span>{src}</td><td style='text-align:left'><b>reference:</b> {_html.escape(s['reference'])}<br>"
            f"<span class=note>states: {_html.escape(', '.join(s['reference_stated']) or '-')}; labels: "
            f"{_html.escape(', '.join(s['labels']) or '-')}</span></td></tr>")
    return ("<style>.gal img{width:80px;margin:2px}</style><table class=gal>" + "".join(cells) + "</table>"
            if cells else paragraph("(no gallery)", note=True))


def write_page(out: Path, metrics: dict[str, Any]) -> Path:
    """OUT/report.html of a report run."""
    out = Path(out)
    samples = json.loads((out / "samples.json").read_text()) if (out / "samples.json").is_file() else []
    rows = [score_row(split, metrics[split]) for split in ("val", "test") if split in metrics]
    per = metrics.get("test", {}).get("clinical", {}).get("per_finding", {})
    per_rows = [{"finding": k, **{m: _num(v.get(m)) for m in ("precision", "recall", "f1")},
                 "support": v.get("support", "")} for k, v in per.items()]
    sections = [
        ("Scores", table(rows) + paragraph(
            "NLG scores by pycocoevalcap (the scorer of the papers) on lower-cased text without punctuation; "
            "clinical precision / recall / F1: the finding labeller on the generated against the reference "
            "report (uncertain counted positive), micro over findings; [95 % CI] from a patient bootstrap.",
            note=True)),
        ("Clinical efficacy per finding (test)", table(per_rows) if per_rows else paragraph("(none)", note=True)),
        ("Summary", "<pre>" + _html.escape("\n".join(summary_lines(metrics))) + "</pre>"),
        ("Test studies: generated against reference", paragraph(
            "Drafts for a radiologist's review, never a final report.", note=True) + _gallery(out, samples)),
    ]
    return write_report(out / "report.html", f"medssl report: {metrics.get('method')}", sections)
