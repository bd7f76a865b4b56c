"""Agreement of medssl's rule-based finding labeller (medssl.report.labeler) with the MeSH major headings of the
IU X-ray (Open-i) reports: how well does it read real reports, and where it disagrees, why.

Reads ../shared/data/iu_xray_reports.csv (columns findings, impression, mesh_major; skipped with a message when
absent), labels the FINDINGS + IMPRESSION of each report (join_sections) and compares, per observation, the
labeller (uncertain counted positive, the clinical-efficacy convention, and also strictly) with the MeSH tags
mapped to the 14 observations by MESH_TO_OBSERVATION: precision, recall, F1 and Cohen's kappa, then for each
observation the counted reasons of false positives and false negatives with example sentences.

MeSH indexing is not a gold standard for every mention: indexers tagged the major findings of a study, "normal" for
1,391 studies that may still mention incidental findings; "No Indexing" reports and reports without text are left
out. Granulomas and calcified granulomas are not mapped (the labeller does not call them lung_lesion: healed
infection, not a lesion to work up); their count beside the labeller's lung_lesion calls is printed. Markings map
only when interstitial: Markings/bronchovascular indexes the "bronchovascular crowding" of low lung volumes.
MeSH "normal" is stricter than CheXpert's No Finding (which allows granulomas, spine changes and devices), so
no_finding is also compared with "MeSH tags none of the 13 pathologies" (the row "no_finding vs no pathology").
Prints one JSON object (and writes it with --json PATH), then a readable table. Nothing of the data is stored.

Example: python bench/labeler_agreement.py --examples 3
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import machine  # noqa: E402

from medssl.report.labeler import (  # noqa: E402
    NEGATIVE, OBSERVATIONS, PATHOLOGIES, POSITIVE, UNCERTAIN, label_report, label_sentence,
)
from medssl.text.reports import join_sections, split_sentences, training_text  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_reports.csv"
# MeSH major heading -> observation. A heading maps whatever its subheadings say unless listed in _SUBHEADED.
MESH_TO_OBSERVATION: dict[str, str] = {
    "normal": "no_finding",
    "Cardiomegaly": "cardiomegaly",
    "Opacity": "lung_opacity", "Infiltrate": "lung_opacity", "Airspace Disease": "lung_opacity",
    "Pulmonary Fibrosis": "lung_opacity", "Fibrosis": "lung_opacity",
    "Lung Diseases, Interstitial": "lung_opacity",
    "Nodule": "lung_lesion", "Mass": "lung_lesion",
    "Pulmonary Edema": "edema", "Pulmonary Congestion": "edema", "Heart Failure": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Pulmonary Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax", "Hydropneumothorax": "pneumothorax", "Hemopneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Fractures, Bone": "fracture",
    "Catheters, Indwelling": "support_devices", "Implanted Medical Device": "support_devices",
    "Medical Device": "support_devices", "Tube, Inserted": "support_devices", "Stents": "support_devices",
    "Surgical Instruments": "support_devices",
}
# Headings that map only with a given first subheading: (heading, subheading) -> observation.
_SUBHEADED: dict[tuple[str, str], str] = {
    ("Cardiac Shadow", "enlarged"): "cardiomegaly", ("Cardiac Shadow", "borderline"): "cardiomegaly",
    ("Mediastinum", "prominent"): "enlarged_cardiomediastinum",
    ("Density", "lung"): "lung_opacity", ("Cicatrix", "lung"): "lung_opacity",
    ("Thickening", "pleura"): "pleural_other", ("Cicatrix", "pleura"): "pleural_other",
    ("Pleura", "*"): "pleural_other",
    ("Thickening", "lung"): "lung_opacity", ("Thickening", "bronchovascular"): "lung_opacity",  # peribronchial
}
# Tags read from any of their subheadings: Markings only when interstitial (in these reports
# Markings/bronchovascular indexes "bronchovascular crowding" of low lung volumes, no opacity); an Opacity or Density
# that is "round" is a nodular opacity, which the CheXpert definition calls a lung lesion.
_ANY_SUBHEADING: dict[tuple[str, str], str] = {
    ("Markings", "interstitial"): "lung_opacity",
    ("Opacity", "round"): "lung_lesion", ("Density", "round"): "lung_lesion",
}
_NOT_LUNG = {"ribs", "thoracic vertebrae", "mediastinum", "adipose tissue", "heart", "supracardiac"}  # Opacity/...
_HYDRO = {"Hydropneumothorax": "pleural_effusion"}  # a second observation of one heading
_CALCIFIED_NODULE = re.compile(r"(?=.*\b(?:nodul|densit|opacit))(?=.*(?:granulom|calcifi))")
GRANULOMA = ("Calcified Granuloma", "Granuloma", "Granulomatous Disease")


def mesh_observations(mesh: str) -> set[str]:
    """The observations a report's mesh_major tags name ('Cardiomegaly/borderline;Opacity/lung/base/left')."""
    found = set()
    for tag in mesh.split(";"):
        parts = [p.strip() for p in tag.split("/")]
        head, sub = parts[0], parts[1].lower() if len(parts) > 1 else ""
        if head == "Opacity" and sub in _NOT_LUNG:
            continue  # an opacity of the ribs or the mediastinum is no lung opacity
        if head in MESH_TO_OBSERVATION:
            found.add(MESH_TO_OBSERVATION[head])
        found.update(o for (h, s), o in _SUBHEADED.items() if h == head and s in (sub, "*"))
        if head in _HYDRO:
            found.add(_HYDRO[head])
        subs = {p.lower() for p in parts[1:]}
        if not (head in ("Opacity", "Density") and sub in _NOT_LUNG):
            found.update(o for (h, s), o in _ANY_SUBHEADING.items() if h == head and s in subs)
    return found


def kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """Cohen's kappa of two binary raters from their 2x2 table."""
    n = tp + fp + fn + tn
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n ** 2
    return None if pe == 1 else (po - pe) / (1 - pe)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def agreement(says: list[bool], truth: list[bool]) -> dict:
    """Precision, recall, F1, kappa and the 2x2 counts of the labeller (says) against MeSH (truth)."""
    tp = sum(s and t for s, t in zip(says, truth))
    fp = sum(s and not t for s, t in zip(says, truth))
    fn = sum(t and not s for s, t in zip(says, truth))
    tn = len(says) - tp - fp - fn
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = 2 * p * r / (p + r) if p and r else None
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": _round(p), "recall": _round(r), "f1": _round(f1),
            "kappa": _round(kappa(tp, fp, fn, tn))}


def sentences_with(sentences: list[str], obs: str, statuses: set[str]) -> list[str]:
    """The sentences whose own label for obs is one of statuses (what made the report's label)."""
    return [s for s in sentences if label_sentence(s).get(obs) in statuses]


def reasons(obs: str, rows: list[dict], examples: int) -> dict:
    """Counted reasons of false positives and false negatives for one observation, with example sentences."""
    fp: Counter = Counter()
    fn: Counter = Counter()
    shown: dict[str, list[str]] = {}
    for row in rows:
        status, mesh, sents = row["labels"].get(obs), row["mesh"], row["sentences"]
        if status in (POSITIVE, UNCERTAIN) and obs not in mesh:
            kind = "uncertain only" if status == UNCERTAIN else "positive"
            why = (f"FP {kind}, MeSH 'normal' study" if "no_finding" in mesh else
                   f"FP {kind}, MeSH tags other findings")
            if obs == "no_finding":
                why = "FP no_finding, MeSH tags " + ", ".join(sorted(mesh - {"no_finding"}) or ["unmapped only"])
                found = [s for s in sents if not label_sentence(s)]
            else:
                found = sentences_with(sents, obs, {status})
            fp[why] += 1
        elif obs in mesh and status not in (POSITIVE, UNCERTAIN):
            why = "FN labelled negative" if status == NEGATIVE else "FN not mentioned"
            if obs == "lung_lesion" and status is None and any(_CALCIFIED_NODULE.search(s) for s in sents):
                why = "FN nodule called calcified or a granuloma (not a lesion by the labeller's definition)"
            if obs == "no_finding":
                why = "FN no_finding, labeller says " + ", ".join(
                    sorted(o for o, s in row["labels"].items() if s in (POSITIVE, UNCERTAIN)))
                found = [s for s in sents if any(v in (POSITIVE, UNCERTAIN) for v in label_sentence(s).values())]
            else:
                negated = sentences_with(sents, obs, {NEGATIVE}) if status == NEGATIVE else []
                found = negated + [s for s in sents if s not in negated]  # the negation first, then the rest
            fn[why] += 1
        else:
            continue
        if len(shown.setdefault(why, [])) < examples and found:
            shown[why].append(" | ".join(found)[:300])
    return {side: [{"reason": r, "n": n, "examples": shown.get(r, [])} for r, n in counts.most_common(6)]
            for side, counts in (("false_positives", fp), ("false_negatives", fn))}


def measure(path: Path, examples: int) -> dict:
    """Every figure as one dict: per-observation counts, agreement in both uncertainty policies, and reasons."""
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    rows, left_out = [], Counter()
    for r in raw:
        report = join_sections({"findings": r.get("findings"), "impression": r.get("impression")})
        sentences = split_sentences(training_text(report))
        if r["mesh_major"].strip() == "No Indexing":
            left_out["no indexing"] += 1
        elif not sentences:
            left_out["no findings or impression text"] += 1
        else:
            rows.append({"labels": label_report(report), "mesh": mesh_observations(r["mesh_major"]),
                         "sentences": sentences, "granuloma": any(g in r["mesh_major"] for g in GRANULOMA)})
    per: dict[str, dict] = {}
    for obs in OBSERVATIONS:
        truth = [obs in r["mesh"] for r in rows]
        loose = [r["labels"].get(obs) in (POSITIVE, UNCERTAIN) for r in rows]
        strict = [r["labels"].get(obs) == POSITIVE for r in rows]
        per[obs] = {"mesh_n": sum(truth), "labeller_n": sum(loose), "labeller_positive_n": sum(strict),
                    "labeller_uncertain_n": sum(loose) - sum(strict),
                    "labeller_negative_n": sum(r["labels"].get(obs) == NEGATIVE for r in rows),
                    "uncertain_as_positive": agreement(loose, truth), "uncertain_as_negative": agreement(strict, truth),
                    **reasons(obs, rows, examples)}
    # MeSH "normal" is stricter than CheXpert's No Finding (no pathology among the 13; granulomas, degenerative spine
    # and devices allowed), so no_finding is also compared with "MeSH tags none of the 13 pathologies".
    no_pathology = [not (r["mesh"] & set(PATHOLOGIES)) for r in rows]
    per["no_finding"]["vs_no_mapped_pathology"] = {
        "mesh_n": sum(no_pathology),
        **agreement([r["labels"].get("no_finding") == POSITIVE for r in rows], no_pathology)}
    granuloma = [r for r in rows if r["granuloma"]]
    return {"benchmark": "labeler_agreement", "machine": {**machine(), "platform": platform.platform()},
            "data": str(path), "reports": len(raw), "evaluated": len(rows), "left_out": dict(left_out),
            "mesh_to_observation": MESH_TO_OBSERVATION,
            "mesh_subheaded": {f"{h}/{s}": o for (h, s), o in _SUBHEADED.items()},
            "mesh_any_subheading": {f"{h}/.../{s}": o for (h, s), o in _ANY_SUBHEADING.items()},
            "granuloma_reports": {"n": len(granuloma), "labeller_lung_lesion": sum(
                r["labels"].get("lung_lesion") in (POSITIVE, UNCERTAIN) for r in granuloma)},
            "observations": per}


def table(result: dict) -> str:
    """The agreement table and the disagreement reasons as text."""
    header = (f"{'observation':<27}{'MeSH n':>7}{'lab n':>7}{'unc n':>7}{'P':>7}{'R':>7}{'F1':>7}{'kappa':>7}"
              f"{'F1 strict':>10}{'k strict':>9}")
    lines = [f"{result['evaluated']} of {result['reports']} reports evaluated (left out: {result['left_out']})", "",
             header]

    def row(name: str, mesh_n: int, lab_n: int, unc_n: int, a: dict, s: dict) -> str:
        return (f"{name:<27}{mesh_n:>7}{lab_n:>7}{unc_n:>7}{_fmt(a['precision']):>7}{_fmt(a['recall']):>7}"
                f"{_fmt(a['f1']):>7}{_fmt(a['kappa']):>7}{_fmt(s['f1']):>10}{_fmt(s['kappa']):>9}")

    for obs, d in result["observations"].items():
        lines.append(row(obs, d["mesh_n"], d["labeller_n"], d["labeller_uncertain_n"], d["uncertain_as_positive"],
                         d["uncertain_as_negative"]))
    d = result["observations"]["no_finding"]
    v = d["vs_no_mapped_pathology"]
    lines.append(row("no_finding vs no pathology", v["mesh_n"], d["labeller_n"], 0, v, v))
    g = result["granuloma_reports"]
    lines += ["", f"granuloma-tagged reports (unmapped): {g['n']}, labeller lung_lesion in {g['labeller_lung_lesion']}",
              "", "where it disagrees (lab n and P/R/F1/kappa count uncertain as positive):"]
    for obs, d in result["observations"].items():
        lines.append(f"- {obs}")
        for item in d["false_positives"] + d["false_negatives"]:
            lines.append(f"    {item['n']:>4}  {item['reason']}")
            lines += [f"          e.g. {e}" for e in item["examples"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the IU X-ray reports CSV")
    parser.add_argument("--examples", type=int, default=3, help="example sentences per disagreement reason")
    parser.add_argument("--json", type=Path, help="also write the JSON object here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"labeler_agreement: {args.data} not found; nothing to measure (skipped)")
        return 0
    result = measure(args.data, args.examples)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
