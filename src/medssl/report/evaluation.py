"""Scoring a report run on its val and test studies: the reports it writes, NLG and clinical metrics with patient
bootstrap CIs (medssl.report.metrics), generation latency, and, where the data's labels name observations the
labeller knows (the synthetic findings do), how often the findings a generated report states match the image's
own labels, against the same with the labels of another study (chance).

Writes OUT/samples.json (the test studies: reference, generated report, stated findings, probabilities, retrieval
sources) and OUT/gallery/*.png (the first test studies' views, for report.html).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.report.bundle import ReportRun, write_reports
from medssl.report.config import ReportConfig
from medssl.report.studies import Study, StudySet, study_tensors

GALLERY = "gallery"


def observation_of(label: str) -> str | None:
    """The labeller observation a data label names (synthetic finding names map; CheXpert names are themselves)."""
    from medssl.report.labeler import OBSERVATIONS, SYNTHETIC_TO_CHEXPERT

    key = label.strip().lower().replace(" ", "_")
    return SYNTHETIC_TO_CHEXPERT.get(key) or (key if key in OBSERVATIONS else None)


def stated(report: str) -> list[str]:
    """The observations a report states as positive or uncertain (no_finding left out)."""
    from medssl.report.labeler import NEGATIVE, label_report

    return sorted(k for k, v in label_report(report).items() if v != NEGATIVE and k != "no_finding")


def label_agreement(hypotheses: list[str], studies: list[Study], seed: int = 0) -> dict[str, Any] | None:
    """Micro F1 of the findings the reports state against the studies' own labels, over the observations the
    labels map to, and the same against a random permutation of the studies' labels (what chance gives a reporter
    that writes plausible reports unrelated to the image). None when no label maps to an observation."""
    from medssl.report.labeler import OBSERVATIONS, label_matrix

    mapped = sorted({o for s in studies for x in s.labels if (o := observation_of(x)) and o != "no_finding"})
    if not mapped:
        return None
    cols = [OBSERVATIONS.index(o) for o in mapped]
    said = label_matrix(hypotheses, uncertain="positive")[:, cols]
    truth = np.zeros_like(said)
    for i, s in enumerate(studies):
        for x in s.labels:
            o = observation_of(x)
            if o in mapped:
                truth[i, mapped.index(o)] = 1

    def f1(y: np.ndarray, p: np.ndarray) -> float:
        tp, fp, fn = float((y * p).sum()), float(((1 - y) * p).sum()), float((y * (1 - p)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")

    rng = np.random.default_rng(seed)
    shuffled = [f1(truth[rng.permutation(len(truth))], said) for _ in range(20)]
    return {"observations": mapped, "f1": f1(truth, said), "f1_shuffled": float(np.mean(shuffled)),
            "exact": float((truth == said).all(axis=1).mean()), "studies": len(studies)}


def _gallery(out: Path, studies: list[Study], images: torch.Tensor, n: int) -> list[list[str]]:
    """PNG files of the first n studies' views (relative to out)."""
    from PIL import Image

    folder = out / GALLERY
    folder.mkdir(exist_ok=True)
    paths = []
    for s in studies[:n]:
        row = []
        for slot, idx in enumerate(s.images):
            if idx >= 0:
                p = folder / f"{s.key}_{slot}.png"
                Image.fromarray(images[idx, 0].numpy()).save(p)
                row.append(str(p.relative_to(out)))
        paths.append(row)
    return paths


def score_split(run: ReportRun, studies: list[Study], images: torch.Tensor, views: int, n_boot: int,
                meteor: Any = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reports for the studies and their scores; (metrics, per-study outputs)."""
    from medssl.report.metrics import report_scores

    x, have = study_tensors(studies, images, views)
    t0 = time.perf_counter()
    outputs = write_reports(run, x, have)
    seconds = time.perf_counter() - t0
    refs, hyps = [s.text for s in studies], [o["report"].lower() for o in outputs]
    metrics = report_scores(refs, hyps, groups=[s.patient for s in studies], n_boot=n_boot, meteor=meteor)
    metrics["label_agreement"] = label_agreement(hyps, studies)
    metrics["seconds_per_study"] = seconds / max(len(studies), 1)
    metrics["studies"] = len(studies)
    return metrics, outputs


def evaluate_run(run: ReportRun, cfg: ReportConfig, studies: StudySet, out: Path, progress: bool = True,
                 meteor: Any = None) -> dict[str, Any]:
    """Val and test scores of the run; samples.json and gallery/ written. One METEOR process (its start loads a
    paraphrase table, about 8 s) serves both splits."""
    import contextlib
    import shutil

    from medssl.report.metrics import MeteorScorer

    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if meteor is None:
            meteor = False
            if cfg.evaluate.meteor:   # without java, report_scores says METEOR is missing and why
                meteor = stack.enter_context(MeteorScorer()) if shutil.which("java") else True
        _score_splits(run, cfg, studies, out, meteor, result)
    result["generate"] = {"beam": run.generate.beam, "max_len": run.generate.max_len,
                          "length_penalty": run.generate.length_penalty,
                          "block_trigrams": run.generate.block_trigrams}
    return result


def _score_splits(run: ReportRun, cfg: ReportConfig, studies: StudySet, out: Path, meteor: Any,
                  result: dict[str, Any]) -> None:
    for split in ("val", "test"):
        metrics, outputs = score_split(run, studies.studies[split], studies.images, cfg.data.views,
                                       cfg.evaluate.n_boot, meteor)
        result[split] = metrics
        if split == "test":
            test = studies.studies["test"]
            pictures = _gallery(out, test, studies.images, cfg.evaluate.gallery)
            samples = []
            for i, (s, o) in enumerate(zip(test, outputs)):
                samples.append({"study": s.key, "patient": s.patient, "labels": list(s.labels),
                                "reference": s.text, "generated": o["report"], "stated": stated(o["report"]),
                                "reference_stated": stated(s.text), "findings": o["findings"],
                                **({"sources": o["sources"]} if "sources" in o else {}),
                                **({"images": pictures[i]} if i < len(pictures) else {})})
            (out / "samples.json").write_text(json.dumps(samples, indent=2, default=float) + "\n")
