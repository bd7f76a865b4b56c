"""The two baselines every report method is weighed against, on the same test studies and scores: the training
split's most common report (what a model that ignores the image at best writes), and the report of the nearest
training study by aligned image embedding (retrieval of whole reports; the query's patient is never in the training
split). Also `method_row`: what a comparison table keeps of a report run's metrics."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from medssl.aligned import load_image_text
from medssl.report.bundle import aligned_study_embeddings
from medssl.report.evaluation import label_agreement
from medssl.report.metrics import report_scores
from medssl.report.studies import load_studies, study_tensors


def _row(name: str, scores: dict[str, Any]) -> dict[str, Any]:
    return {"method": name, "nlg": {k: v for k, v in scores["nlg"].items() if k != "notes"},
            "clinical": scores["clinical"]["micro"], "clinical_per_finding": scores["clinical"]["per_finding"],
            "ci95": scores["ci95"], "label_agreement": scores.get("label_agreement")}


def method_row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A report run's test scores and costs as one comparison-table row."""
    test = metrics["test"]
    return {**_row(name, test), "ms_per_study_test": round(1000 * test["seconds_per_study"], 2),
            "train": metrics.get("train"), "cache": metrics.get("cache"), "retrieval": metrics.get("retrieval"),
            "studies": metrics.get("studies")}


def baseline_rows(align: str | Path, source: str | Path, views: int, n_boot: int, meteor: Any = True
                  ) -> list[dict[str, Any]]:
    """Rows of the most common training report and of the nearest training study's report (test split)."""
    aligned = load_image_text(align)
    studies = load_studies(source, aligned.preprocess, views, progress=False)
    train, test = studies.studies["train"], studies.studies["test"]
    refs, groups = [s.text for s in test], [s.patient for s in test]
    common = collections.Counter(s.text for s in train).most_common(1)[0][0]
    z_train = aligned_study_embeddings(aligned, *study_tensors(train, studies.images, views))
    z_test = aligned_study_embeddings(aligned, *study_tensors(test, studies.images, views))
    nearest = [train[i].text for i in (z_test @ z_train.T).argmax(1)]
    rows = []
    for name, hyps in (("most common training report", [common] * len(test)),
                       ("nearest training image's report", nearest)):
        scores = report_scores(refs, hyps, groups=groups, n_boot=n_boot, meteor=meteor)
        scores["label_agreement"] = label_agreement(hyps, test)
        rows.append(_row(name, scores))
    return rows
