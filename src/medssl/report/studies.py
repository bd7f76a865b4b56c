"""Studies for report generation: a patient visit's views (frontal first, then lateral) with one report and the
union of the views' labels, split by patient; decoded once.

A study is the records of one (patient, study_id); a record without a study id is a study of its own (the COVID
collection has none, so each of its images is one). Views: a frontal view (PA, AP, ...; anything not lateral) takes
slot 0 and a lateral view (L, LL, LAT, LATERAL) slot 1; a study's further images are left out and counted. Records
without a usable report are left out and counted (medssl.text.reports.filter_reports).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medssl.data.preprocess import Preprocess
from medssl.data.records import Record
from medssl.data.splits import assign_splits
from medssl.errors import MedsslError
from medssl.text.reports import training_text

LATERAL = ("L", "LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL")
SPLITS = ("train", "val", "test")


def digest(prefix: str, *parts: str) -> str:
    """The pseudonym medssl writes for an id (as medssl.retrieve_run.digest): a raw patient id is never written."""
    return f"{prefix}-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:12]}"


def is_lateral(view: str) -> bool:
    """Whether a view name is a lateral projection."""
    return " ".join(str(view or "").upper().replace("_", " ").split()) in LATERAL


@dataclass
class Study:
    """One study: its views' records in slot order (None = no such view), report, labels, patient and split.
    key and patient are digests (what outputs show); the records keep the source's ids."""

    key: str
    patient: str
    split: str
    report: str
    labels: tuple[str, ...]
    views: list[Record | None]
    images: list[int] = field(default_factory=list)  # row of each slot's image in the decoded tensor; -1 = none

    @property
    def text(self) -> str:
        """The cleaned FINDINGS + IMPRESSION a model learns to write (the reference of the metrics)."""
        return training_text(self.report)


@dataclass
class StudySet:
    """Studies by split, every image decoded once, and what was left out."""

    studies: dict[str, list[Study]]
    images: torch.Tensor  # (N, 1, S, S) uint8, rows referenced by Study.images
    label_names: tuple[str, ...]
    notes: list[str]
    skipped: list[tuple[str, str]]


def group_studies(records: list[Record], views: int) -> tuple[list[Study], int, int]:
    """(studies, records left out for lack of a report, extra views left out)."""
    groups: dict[tuple[str, str], list[Record]] = {}
    no_report = 0
    for r in records:
        key = (r.patient_id, r.study_id or f"{r.path}#{r.index}")
        groups.setdefault(key, []).append(r)
    studies, extra = [], 0
    for (patient, sid), rs in groups.items():
        report = next((r.report for r in rs if r.report and training_text(r.report)), "")
        if not report:
            no_report += len(rs)
            continue
        slots: list[Record | None] = [None] * views
        for r in rs:
            slot = 1 if views == 2 and is_lateral(r.view) else 0
            if slots[slot] is None:
                slots[slot] = r
            else:
                extra += 1                                   # a second frontal (or lateral) view
        if slots[0] is None:                                 # a lateral view alone takes the first slot
            slots = [s for s in slots if s is not None] + [None] * (views - sum(s is not None for s in slots))
        split = next((r.split for r in rs if r.split), "")
        labels = tuple(sorted({x for r in rs for x in r.labels}))
        studies.append(Study(digest("s", patient, sid), digest("p", patient), split, report, labels, slots))
    return studies, no_report, extra


def load_studies(source: str | Path, preprocess: Preprocess, views: int, skip_bad: bool = False,
                 progress: bool = True, text_column: str | None = None) -> StudySet:
    """Records of a source -> studies split by patient (the source's split column, else a seeded patient-level
    70/10/20 split, as `medssl evaluate`), every image decoded once. Checks that each split has a study before any
    image is decoded."""
    from medssl.data.sources import load_source, with_text_column

    records, bad = load_source(source, skip_bad=skip_bad, progress=progress)
    if text_column:
        records = with_text_column(records, text_column, source)
    if not records:
        raise MedsslError(f"{source}: no images")
    if not all(r.split for r in records):
        records = assign_splits(records, (0.7, 0.1, 0.2), seed=0)
    studies, no_report, extra = group_studies(records, views)
    if not studies:
        raise MedsslError(f"{source}: no record has a report: report generation learns from image-report pairs")
    by = {s: [st for st in studies if st.split == s] for s in SPLITS}
    empty = [s for s in SPLITS if not by[s]]
    if empty:
        raise MedsslError(f"{source}: no study with a report in the {' and '.join(empty)} split(s); report "
                          "training needs train, val and test studies")
    notes = []
    if no_report:
        notes.append(f"{no_report} image(s) without a usable report were left out")
    if extra:
        notes.append(f"{extra} image(s) beyond a study's {views} view slot(s) were left out")
    skipped: list[tuple[str, str]] = list(bad)
    todo = [(st, i) for s in SPLITS for st in by[s] for i in range(views)]
    wanted = [st.views[i] for st, i in todo if st.views[i] is not None]
    images, where, more = _decode(wanted, preprocess, source, skip_bad, progress)
    skipped += more
    for st, i in todo:
        r = st.views[i]
        st.images.append(-1 if r is None else where.get(r.key, -1))
    for s in SPLITS:
        by[s] = [st for st in by[s] if any(i >= 0 for i in st.images)]
        if not by[s]:
            raise MedsslError(f"{source}: none of the {s} split's images could be read")
    names = tuple(sorted({x for st in by["train"] for x in st.labels}))
    return StudySet(by, images, names, notes, skipped)


def _decode(records: list[Record], preprocess: Preprocess, source: str | Path, skip_bad: bool, progress: bool
            ) -> tuple[torch.Tensor, dict[tuple[str, int | None], int], list[tuple[str, str]]]:
    """The records' images (N, 1, S, S) uint8, each readable record's row in them, and (path, why) of the others
    (evaluate.data.decode_split: through the source's decoded-image cache unless it is off)."""
    from medssl.evaluate.data import decode_split

    try:
        kept, images, bad = decode_split(records, preprocess, skip_bad, progress, "study", source)
    except MedsslError as e:  # report configs name the option data.skip_bad
        raise MedsslError(str(e).replace("--skip-bad", "data.skip_bad")) from None
    return images, {r.key: i for i, r in enumerate(kept)}, bad


def study_views(study: Study, images: torch.Tensor, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 1, S, S) uint8 images of a study's slots (zeros where none) and (V,) bool of which exist."""
    size = images.shape[-1]
    out = torch.zeros(views, 1, size, size, dtype=torch.uint8)
    have = torch.zeros(views, dtype=torch.bool)
    for slot, row in enumerate(study.images[:views]):
        if row >= 0:
            out[slot], have[slot] = images[row], True
    return out, have


def study_tensors(studies: list[Study], images: torch.Tensor, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, 1, S, S) uint8 and (N, V) bool of a list of studies."""
    pairs = [study_views(s, images, views) for s in studies]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
