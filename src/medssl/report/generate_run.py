"""`medssl report generate RUN IMAGE_OR_FOLDER...`: a draft report per study.

An image file is a study of one view; a folder is one study of its images (a DICOM's ViewPosition, else a file
name with "lat" in it, says which is lateral; the first frontal and the first lateral are used), at most
MAX_STUDY_IMAGES of them: a folder of a whole collection is refused rather than read as one study. A folder of
`medssl pacs pull` (it holds pull.json) is one study per study folder. Plain text by
default; --json gives per study the findings with probabilities, the report, the findings the report states and,
for the retrieval method, the source sentences with their scores. `--out DIR` also writes DIR/reports.json: the
model (its run, method, a hash of its weights, medssl's version) and every study's draft: what `medssl pacs push
DIR` stores in the PACS. Nothing of a DICOM's patient identity is read into the output: the study is named by its
path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from medssl.data.preprocess import Preprocess
from medssl.errors import MedsslError
from medssl.report.bundle import ReportRun, load_report_run, write_reports
from medssl.report.studies import is_lateral

MAX_STUDY_IMAGES = 4  # a chest radiograph study: PA / AP and lateral, now and then a repeat
_LATERAL_NAME = re.compile(r"(^|[^a-z])lat(eral)?([^a-z]|$)", re.IGNORECASE)


def _view_of(path: Path) -> str:
    """LATERAL or FRONTAL: a DICOM's ViewPosition (header only), else the file name."""
    if path.suffix.lower() in (".dcm", ".dicom", ""):
        try:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["ViewPosition"], force=True)
            view = str(getattr(ds, "ViewPosition", "") or "")
            if view:
                return "LATERAL" if is_lateral(view) else "FRONTAL"
        except Exception:  # noqa: BLE001 - an unreadable header is found when the pixels are read
            pass
    return "LATERAL" if _LATERAL_NAME.search(path.stem) else "FRONTAL"


def _images_in(folder: Path) -> list[Path]:
    from medssl.data.io import IMAGE_SUFFIXES

    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and (f.suffix.lower() in IMAGE_SUFFIXES or f.suffix.lower() in (".dcm", ".dicom")))


def gather(items: list[str], views: int) -> list[tuple[str, list[Path | None]]]:
    """(name, view slots) per study of the command line's images and folders; MedsslError for a missing path
    or an empty folder (checked before any model is loaded)."""
    studies = []
    if not items:
        raise MedsslError("report generate: give at least one image file or folder")
    from medssl.pacs.pull import is_pull_folder, study_folders

    expanded = []
    for item in items:
        p = Path(item)
        if is_pull_folder(p):
            found = study_folders(p)
            if not found:
                raise MedsslError(f"{p}: a pull folder without any study folder of images")
            expanded += [str(f) for f in found]
        else:
            expanded.append(item)
    for item in expanded:
        p = Path(item)
        if p.is_dir():
            files = _images_in(p)
            if not files:
                raise MedsslError(f"{p}: no image files in this folder")
            if len(files) > MAX_STUDY_IMAGES:
                raise MedsslError(f"{p}: {len(files)} images in one folder; a folder is one study's views (at most "
                                  f"{MAX_STUDY_IMAGES}): give one folder per study, or the image files")
            slots: list[Path | None] = [None] * views
            for f in files:
                slot = 1 if views == 2 and _view_of(f) == "LATERAL" else 0
                if slots[slot] is None:
                    slots[slot] = f
            if slots[0] is None:
                slots = [s for s in slots if s is not None] + [None]
            studies.append((str(p), slots))
        elif p.is_file():
            studies.append((str(p), [p] + [None] * (views - 1)))
        else:
            raise MedsslError(f"{p}: no such image file or folder")
    return studies


def decode_study(slots: list[Path | None], preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 1, S, S) uint8 and (V,) bool of a study's view files; MedsslError naming an unreadable file."""
    size = preprocess.size
    images = torch.zeros(len(slots), 1, size, size, dtype=torch.uint8)
    have = torch.zeros(len(slots), dtype=torch.bool)
    for i, f in enumerate(slots):
        if f is not None:
            images[i], have[i] = preprocess.decode(f), True
    return images, have


def run_generate(run_path: str | Path, items: list[str], beam: int | None = None,
                 out: str | Path | None = None) -> list[dict[str, Any]]:
    """Reports of the studies; each {"study", "views": [paths], "report", "findings", "stated", ("sources")};
    with `out`, also OUT/reports.json (write_results)."""
    import dataclasses

    from medssl.report.labeler import NEGATIVE, label_report

    run_probe = Path(run_path)
    if not run_probe.exists():
        raise MedsslError(f"{run_probe}: no such report run")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise MedsslError(f"--out {out}: exists and is not a folder")
    run: ReportRun = load_report_run(run_path)
    studies = gather(items, run.views)
    decoded = [decode_study(slots, run.preprocess) for _, slots in studies]
    cfg = dataclasses.replace(run.generate, beam=beam).validate() if beam is not None else None
    outputs = write_reports(run, torch.stack([d[0] for d in decoded]), torch.stack([d[1] for d in decoded]), cfg)
    results = []
    for (name, slots), o in zip(studies, outputs):
        labels = label_report(o["report"])
        results.append({"study": name, "views": [str(s) for s in slots if s is not None], "method": run.method,
                        "report": o["report"], "findings": {k: round(v, 4) for k, v in o["findings"].items()},
                        "stated": {k: v for k, v in labels.items() if v != NEGATIVE},
                        **({"sources": o["sources"]} if "sources" in o else {})})
    if out is not None:
        write_results(Path(out), model_identity(run_path, run), results)
    return results


def model_identity(run_path: str | Path, run: ReportRun) -> dict[str, str]:
    """What names the model in a report's provenance: its run folder, method, the SHA-256 of its weights file
    (first 16 hex digits) and medssl's version."""
    import hashlib

    from medssl import __version__
    from medssl.checkpoint import resolve_checkpoint
    from medssl.report.bundle import MODEL

    p = Path(run_path)
    f = resolve_checkpoint(p / MODEL if p.is_dir() and (p / MODEL).is_file() else p)
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(2 ** 20), b""):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    return {"id": f"{run.method}:{digest}", "name": f"medssl {run.method} report generator {digest[:8]}",
            "version": f"medssl {__version__}; weights sha256 {digest}", "method": run.method,
            "run": p.resolve().name, "weights_sha256_16": digest}


def write_results(out: Path, model: dict[str, str], results: list[dict[str, Any]]) -> Path:
    """OUT/reports.json (atomically): the model's identity and the drafts, with absolute view paths."""
    import json
    import time

    from medssl.files import atomic_file
    from medssl.pacs.push import REPORTS

    doc = {"model": model, "draft": True, "notice": "Drafts for a radiologist's review; not diagnoses.",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "results": [{**r, "views": [str(Path(v).resolve()) for v in r["views"]]} for r in results]}
    with atomic_file(out / REPORTS) as f:
        f.write((json.dumps(doc, indent=2, default=float) + "\n").encode())
    return out / REPORTS


def result_lines(results: list[dict[str, Any]]) -> list[str]:
    """Plain text: per study its name, the draft report and the findings it states."""
    lines = []
    for r in results:
        lines.append(f"{r['study']} ({r['method']}; draft for a radiologist's review):")
        lines.append(f"  {r['report']}")
        if r["stated"]:
            lines.append("  states: " + ", ".join(f"{k} ({v})" for k, v in sorted(r["stated"].items())))
        if r["findings"]:
            top = sorted(r["findings"].items(), key=lambda kv: -kv[1])
            lines.append("  probabilities: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    return lines
