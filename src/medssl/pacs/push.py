"""`medssl pacs push RUN_DIR --url URL`: the drafts of `medssl report generate ... --out RUN_DIR` stored in the PACS
as DICOM Enhanced SR (pacs.sr), one per study, in the study of its images (STOW-RS).

Cheap checks first, all before anything is sent: RUN_DIR/reports.json is readable and names its model; every
draft's views are DICOM files of one study that carry their UIDs (pulled with `medssl pacs pull`). Then per study:
is the draft's SR (its UID derived from study, model and text) already in the PACS (QIDO-RS)? Then it is not
stored again. Else the source images' metadata is read from the PACS (WADO-RS: the evidence, with the real patient
and study modules, which are never written to disk), the SR is built in memory and stored. A draft that fails stops
the push with one line; the ones stored before it stay stored and are found on the next push.
RUN_DIR/pushed.json (written atomically at the end) lists per study the SR's UIDs and whether it was stored now
or found already there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from medssl.errors import MedsslError
from medssl.pacs.client import Pacs, pacs_errors
from medssl.pacs.pull import SOP_INSTANCE, value_of

REPORTS, PUSHED = "reports.json", "pushed.json"  # REPORTS: written by report.generate_run.write_results


def load_drafts(run_dir: str | Path) -> dict[str, Any]:
    """reports.json of a `medssl report generate --out` folder, checked."""
    run_dir = Path(run_dir)
    path = run_dir / REPORTS
    if not run_dir.is_dir():
        raise MedsslError(f"{run_dir}: no such folder (give the --out folder of `medssl report generate`)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedsslError(f"{run_dir}: no {REPORTS} here (write it with `medssl report generate RUN STUDIES "
                          f"--out {run_dir}`)") from None
    except (OSError, ValueError) as e:
        raise MedsslError(f"{path}: not readable JSON ({type(e).__name__})") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("id", "name", "version")):
        raise MedsslError(f"{path}: no model identity (id, name, version); write it again with medssl report generate")
    if not isinstance(results, list) or not results:
        raise MedsslError(f"{path}: holds no drafts")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not isinstance(r.get("report"), str) or not r.get("views"):
            raise MedsslError(f"{path}: draft {i} has no report text or no views")
    return doc


def source_uids(draft: dict[str, Any]) -> list[dict[str, str]]:
    """The study, series, SOP class and instance UIDs of a draft's view files (headers only); MedsslError when a
    view is missing, not DICOM, without UIDs, or the views span two studies."""
    import pydicom

    out = []
    for v in draft["views"]:
        p = Path(v)
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                "SOPClassUID"])
        except FileNotFoundError:
            raise MedsslError(f"{p}: the draft's source image is gone (moved or deleted since the report was "
                              "generated)") from None
        except Exception:  # noqa: BLE001 - any parse failure: the file is not a DICOM a PACS holds
            raise MedsslError(f"{p}: not a DICOM file; only drafts of DICOM images pulled from a PACS can be "
                              "pushed (medssl pacs pull)") from None
        uids = {k: str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                  "SOPClassUID")}
        if not all(uids.values()):
            raise MedsslError(f"{p}: lacks its study, series or SOP UIDs; it cannot be referenced in the PACS")
        out.append(uids)
    studies = {u["StudyInstanceUID"] for u in out}
    if len(studies) != 1:
        raise MedsslError(f"draft of {draft.get('study')}: its views belong to {len(studies)} studies; one report "
                          "is for one study")
    return out


def _evidence(pacs: Pacs, uids: dict[str, str]) -> Any:
    """The PACS's own header of a source image (WADO-RS metadata; bulk data left out) as a pydicom Dataset."""
    from pydicom import Dataset

    with pacs_errors(pacs, f"reading the metadata of image {uids['SOPInstanceUID']}"):
        meta = pacs.client.retrieve_instance_metadata(uids["StudyInstanceUID"], uids["SeriesInstanceUID"],
                                                      uids["SOPInstanceUID"])
    meta = {k: v for k, v in meta.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
    try:
        return Dataset.from_json(meta)
    except Exception as e:  # noqa: BLE001
        raise MedsslError(f"PACS {pacs.url}: the metadata of image {uids['SOPInstanceUID']} is not valid DICOM "
                          f"JSON ({type(e).__name__})") from None


def _stored(pacs: Pacs, study: str, sop: str) -> bool:
    with pacs_errors(pacs, f"looking for the draft {sop} in study {study}"):
        found = pacs.client.search_for_instances(study_instance_uid=study, search_filters={"SOPInstanceUID": sop})
    return any(value_of(f, SOP_INSTANCE) == sop for f in found)


def positive_findings(draft: dict[str, Any]) -> list[str]:
    """The findings the draft's text states as present ("stated": the labeller's reading, report.labeler.POSITIVE;
    not imported here: the labeller's module loads torch, which a push never needs)."""
    return sorted(k for k, v in (draft.get("stated") or {}).items() if v == "positive")


def run_push(pacs: Pacs, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Store every draft not yet in the PACS; returns what pushed.json says."""
    from tqdm import tqdm

    from medssl.files import atomic_file
    from medssl.pacs.sr import draft_uids, report_sr

    run_dir = Path(run_dir)
    doc = load_drafts(run_dir)
    model = doc["model"]
    plans = []
    for draft in doc["results"]:  # every check that needs no server, before anything is sent
        uids = source_uids(draft)
        study = uids[0]["StudyInstanceUID"]
        series, sop = draft_uids(study, model["id"], draft["report"], [u["SOPInstanceUID"] for u in uids])
        plans.append((draft, uids, study, series, sop))
    t0 = time.perf_counter()
    rows, stored = [], 0
    bar = tqdm(total=len(plans), unit="report", desc="pacs push", disable=not progress, dynamic_ncols=True)
    try:
        for draft, uids, study, series, sop in plans:
            row = {"study": study, "series_instance_uid": series, "sop_instance_uid": sop,
                   "sources": [u["SOPInstanceUID"] for u in uids]}
            if _stored(pacs, study, sop):
                row["status"] = "already in the PACS"
            else:
                evidence = [_evidence(pacs, u) for u in uids]
                sr = report_sr(draft["report"], positive_findings(draft), evidence, model)
                with pacs_errors(pacs, f"storing the draft report of study {study}"):
                    answer = pacs.client.store_instances([sr], study)
                failed = answer.get("FailedSOPSequence") if answer is not None else None
                if failed:
                    reason = failed[0].get("FailureReason")
                    raise MedsslError(f"PACS {pacs.url}: refused the draft report of study {study} (failure reason "
                                      f"{reason}); the drafts stored before it stay stored")
                if not _stored(pacs, study, sop):
                    raise MedsslError(f"PACS {pacs.url}: accepted the draft report of study {study} but does not "
                                      "list it afterwards")
                row["status"] = "stored"
                stored += 1
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {"url": pacs.url, "model": model, "stored": stored, "already_there": len(rows) - stored,
               "seconds": round(seconds, 3), "reports": rows,
               "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with atomic_file(run_dir / PUSHED) as f:
        f.write((json.dumps(summary, indent=2) + "\n").encode())
    return summary
